//! The fleet's demand: ten pools, most of them idle most of the time, each busy in its own
//! bursts at its own times — dashboards opened, a scheduled report, an analyst's session.
//!
//! Each pool is a [`Trace`] with no base rate (one has a steady trickle) and a list of bursts,
//! so the pools read as data and every policy sees the same arrivals on the same pool.

use std::time::Duration;

use super::super::trace::{MEAN_SERVICE, Trace};

/// Length of the fleet's run: fifteen simulated minutes.
pub const LENGTH: Duration = Duration::from_secs(900);

/// A pool that only has its bursts.
fn pool(name: &'static str, about: &'static str, bursts: &'static [(f64, f64, f64)]) -> Trace {
    Trace {
        name,
        about,
        length: LENGTH,
        mean_service: MEAN_SERVICE,
        rate: |_| 0.0,
        jumps: &[],
        bursts,
    }
}

/// The ten pools of the fleet report, in its order.
pub fn pools() -> Vec<Trace> {
    vec![
        pool(
            "dash-a",
            "a dashboard opened three times: 8-12 q/s for 30 s",
            &[(30.0, 60.0, 8.0), (400.0, 430.0, 8.0), (700.0, 730.0, 12.0)],
        ),
        pool(
            "reports",
            "a scheduled report fanning out twice: 30 q/s for 20 s",
            &[(120.0, 140.0, 30.0), (720.0, 740.0, 30.0)],
        ),
        pool(
            "analyst",
            "an analyst's session: 1 q/s for 3 minutes",
            &[(200.0, 380.0, 1.0)],
        ),
        pool(
            "dash-b",
            "a dashboard, then its refresh storm: 5 q/s for 60 s, 20 q/s for 20 s",
            &[(90.0, 150.0, 5.0), (500.0, 520.0, 20.0)],
        ),
        pool(
            "etl-check",
            "a data-quality job: 40 q/s for 10 s",
            &[(300.0, 310.0, 40.0)],
        ),
        pool(
            "adhoc",
            "three short ad-hoc sessions: 2-3 q/s",
            &[(50.0, 70.0, 2.0), (260.0, 300.0, 3.0), (610.0, 640.0, 2.0)],
        ),
        Trace {
            rate: |_| 0.3,
            ..pool(
                "embedded",
                "an embedded chart polled all along: 0.3 q/s",
                &[],
            )
        },
        pool(
            "finance",
            "a finance team's 2-minute session: 6 q/s",
            &[(450.0, 570.0, 6.0)],
        ),
        pool(
            "ops",
            "an incident, twice: 15 q/s for 10-30 s",
            &[(150.0, 160.0, 15.0), (800.0, 830.0, 15.0)],
        ),
        pool(
            "archive",
            "queried once: 2 q/s for 5 s",
            &[(620.0, 625.0, 2.0)],
        ),
    ]
}
