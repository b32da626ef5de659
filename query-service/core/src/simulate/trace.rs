//! Demand traces: the arrival rate over time of four shapes a query pool meets.
//!
//! Each trace is a function of time rather than a recorded table, so it reads as what it models
//! and costs nothing to store; the arrivals drawn from it are what makes a run look recorded.
//! The runs are short (7–10 simulated minutes) so the whole report takes well under a second.

use std::f64::consts::PI;
use std::time::Duration;

/// One demand trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Short name for the report.
    pub name: &'static str,
    /// What it models, for the report's legend.
    pub about: &'static str,
    /// Simulated length.
    pub length: Duration,
    /// Mean time one query runs on a worker.
    pub mean_service: Duration,
    /// Arrivals per second at a time in seconds since the start.
    pub rate: fn(f64) -> f64,
    /// Sudden rises: (time in seconds, arrival rate just after). Reaction times are measured
    /// from these; a trace that only changes smoothly has none.
    pub jumps: &'static [(f64, f64)],
    /// Bursts on top of `rate`: (start, end, arrivals per second), in seconds. Lets the many
    /// pools of [`fleet`](super::fleet) share one `rate` function and differ in data.
    pub bursts: &'static [(f64, f64, f64)],
}

impl Trace {
    /// Arrivals per second at `secs`: the curve plus the bursts under way.
    pub fn rate_at(&self, secs: f64) -> f64 {
        let bursts: f64 = self
            .bursts
            .iter()
            .filter(|(start, end, _)| (*start..*end).contains(&secs))
            .map(|(_, _, rate)| rate)
            .sum();
        (self.rate)(secs) + bursts
    }

    /// Concurrent queries the trace offers at `secs` (Little's law: rate × mean time).
    pub fn offered(&self, secs: f64) -> f64 {
        self.rate_at(secs) * self.mean_service.as_secs_f64()
    }
}

/// Mean query time of every trace: short analytical queries.
pub(super) const MEAN_SERVICE: Duration = Duration::from_millis(500);

/// The four traces of the report, in its order.
pub fn all() -> Vec<Trace> {
    vec![step(), spike(), sawtooth(), diurnal()]
}

/// 5 → 60 queries/s at 60 s, back to 5 at 240 s: a new dashboard goes live, then closes.
pub fn step() -> Trace {
    Trace {
        name: "step",
        about: "5 -> 60 q/s at 60 s, back to 5 at 240 s",
        length: Duration::from_secs(600),
        mean_service: MEAN_SERVICE,
        rate: |t| {
            if (60.0..240.0).contains(&t) {
                60.0
            } else {
                5.0
            }
        },
        jumps: &[(60.0, 60.0)],
        bursts: &[],
    }
}

/// 6 queries/s with a 10x burst for 20 s at 60 s: a scheduled report fans out.
pub fn spike() -> Trace {
    Trace {
        name: "spike",
        about: "6 q/s, 10x burst (60 q/s) for 20 s at 60 s",
        length: Duration::from_secs(420),
        mean_service: MEAN_SERVICE,
        rate: |t| if (60.0..80.0).contains(&t) { 60.0 } else { 6.0 },
        jumps: &[(60.0, 60.0)],
        bursts: &[],
    }
}

/// Start of the first tooth of [`sawtooth`] and the length of each, in seconds.
const TOOTH: (f64, f64) = (30.0, 60.0);

/// Five teeth from 30 s: a jump to 50 queries/s decaying linearly to 5 over 60 s — batch
/// jobs that start together and finish one by one.
pub fn sawtooth() -> Trace {
    Trace {
        name: "sawtooth",
        about: "5 teeth from 30 s: jump to 50 q/s, linear decay to 5 over 60 s",
        length: Duration::from_secs(420),
        mean_service: MEAN_SERVICE,
        rate: |t| {
            let (start, len) = TOOTH;
            let since = t - start;
            if !(0.0..5.0 * len).contains(&since) {
                return 5.0;
            }
            let into = since % len / len;
            50.0 - 45.0 * into
        },
        jumps: &[
            (30.0, 50.0),
            (90.0, 50.0),
            (150.0, 50.0),
            (210.0, 50.0),
            (270.0, 50.0),
        ],
        bursts: &[],
    }
}

/// Simulated seconds per hour of [`diurnal`]'s day.
const HOUR: f64 = 20.0;

/// A working day compressed into 8 minutes (20 s an hour): 3 queries/s at 02:00 rising
/// smoothly to 45 at 14:00 and back.
pub fn diurnal() -> Trace {
    Trace {
        name: "diurnal",
        about: "a day in 480 s: 3 q/s at 02:00, 45 q/s at 14:00",
        length: Duration::from_secs_f64(24.0 * HOUR),
        mean_service: MEAN_SERVICE,
        rate: |t| {
            let hour = t / HOUR;
            3.0 + 42.0 * (1.0 - (2.0 * PI * (hour - 2.0) / 24.0).cos()) / 2.0
        },
        jumps: &[],
        bursts: &[],
    }
}
