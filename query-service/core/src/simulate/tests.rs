use std::sync::OnceLock;
use std::time::Duration;

use super::rng::Rng;
use super::*;
use crate::scaling::ScalingConfig;

/// The report of the default setup, run once for all the tests that read it.
fn default_report() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| Report::run(&Setup::default()))
}

/// Every trace under every policy, stepped tick by tick, checking `each` after every tick.
fn walk(setup: &Setup, mut each: impl FnMut(&Trace, PolicyKind, &Simulation<'_>)) {
    for trace in trace::all() {
        for policy in PolicyKind::ALL {
            let autoscaler = policy.build(&setup.pool, setup.sample_every);
            let mut sim = Simulation::new(&trace, setup, autoscaler);
            while !sim.done() {
                sim.step();
                each(&trace, policy, &sim);
            }
        }
    }
}

#[test]
fn queries_are_conserved_and_pods_hold_their_bounds() {
    let setup = Setup::default();
    let cfg = setup.pool.clone();
    walk(&setup, |trace, policy, sim| {
        let at = format!("{} / {}", trace.name, policy.name());
        assert_eq!(
            sim.arrived(),
            sim.completed() + sim.waiting() + sim.running(),
            "{at}: arrived = completed + waiting + running"
        );
        assert!(sim.replicas() <= cfg.max_replicas, "{at}: above max");
        assert!(sim.replicas() >= cfg.min_replicas, "{at}: below min");
        assert!(
            sim.busiest_pod() <= cfg.target_concurrency as usize,
            "{at}: a pod ran more than its slots"
        );
        if sim.done() {
            // Every trace ends quiet for long enough that the queue empties.
            assert_eq!(sim.waiting(), 0, "{at}: queries left waiting");
            assert!(
                sim.completed() > 1000,
                "{at}: too few queries to mean anything"
            );
        }
    });
}

#[test]
fn a_low_max_binds_every_policy() {
    let setup = Setup {
        pool: ScalingConfig {
            max_replicas: 4,
            ..ScalingConfig::default()
        },
        ..Setup::default()
    };
    let mut peak = std::collections::HashMap::new();
    walk(&setup, |trace, policy, sim| {
        assert!(sim.replicas() <= 4, "{} / {}", trace.name, policy.name());
        let p = peak.entry((trace.name, policy.name())).or_insert(0);
        *p = sim.replicas().max(*p);
    });
    // The step needs 8 pods: every policy must have run into the bound, or the test proved nothing.
    for policy in PolicyKind::ALL {
        assert_eq!(peak[&("step", policy.name())], 4, "{}", policy.name());
    }
}

#[test]
fn quiver_keeps_fewer_queries_waiting_than_both_baselines_on_step_and_spike() {
    let report = default_report();
    for trace in ["step", "spike"] {
        let ours = report.get(trace, PolicyKind::Quiver).expect("quiver row");
        for base in [PolicyKind::Knative, PolicyKind::Hpa] {
            let theirs = report.get(trace, base).expect("baseline row");
            assert!(
                ours.waited < theirs.waited,
                "{trace}: quiver {} waited, {} {}",
                ours.waited,
                base.name(),
                theirs.waited
            );
            assert!(
                ours.p99_wait <= theirs.p99_wait,
                "{trace}: quiver p99 {:?}, {} {:?}",
                ours.p99_wait,
                base.name(),
                theirs.p99_wait
            );
        }
    }
}

#[test]
fn quiver_idle_capacity_stays_within_two_pods_of_knative() {
    // The bound: over Knative's idle pod-seconds, at most two pods idle for the whole trace —
    // the warm spare, and about one pod of headroom from shrinking only to the peak of the
    // stable window where Knative takes its mean. (Seeds 1 to 10 stay below 1.5 pods.)
    let report = default_report();
    for trace in &report.traces {
        let ours = report.get(trace.name, PolicyKind::Quiver).expect("quiver");
        let theirs = report
            .get(trace.name, PolicyKind::Knative)
            .expect("knative");
        let bound = theirs.idle_pod_secs + 2.0 * trace.length.as_secs_f64();
        assert!(
            ours.idle_pod_secs <= bound,
            "{}: quiver idle {:.0} pod-s, knative {:.0}, bound {bound:.0}",
            trace.name,
            ours.idle_pod_secs,
            theirs.idle_pod_secs
        );
    }
}

#[test]
fn quiver_asks_for_enough_pods_within_a_second_of_a_jump() {
    // The aim: react within one second of a burst; the cold start comes on top.
    let report = default_report();
    for trace in ["step", "spike", "sawtooth"] {
        let outcome = report.get(trace, PolicyKind::Quiver).expect("quiver");
        let decide = outcome
            .decide
            .flatten()
            .expect("enough pods after every jump");
        assert!(decide <= Duration::from_secs(1), "{trace}: {decide:?}");
    }
}

#[test]
fn same_seed_same_report_other_seed_other_report() {
    let a = default_report();
    assert_eq!(report(), a.to_string());
    let other = Report::run(&Setup {
        seed: 2,
        ..Setup::default()
    });
    assert_ne!(a.rows, other.rows);
}

#[test]
fn the_report_lists_every_trace_and_policy_with_ratios() {
    let text = default_report().to_string();
    for name in ["step", "spike", "sawtooth", "diurnal"] {
        assert!(text.contains(name), "{name} missing");
    }
    for name in ["quiver", "knative", "hpa"] {
        assert!(text.contains(name), "{name} missing");
    }
    assert!(text.contains("Quiver / baseline"));
}

#[test]
fn draws_have_their_means() {
    let mut rng = Rng::new(7, 1);
    let n = 20_000;
    let poisson: u32 = (0..n).map(|_| rng.poisson(3.0)).sum();
    let mean = f64::from(poisson) / f64::from(n);
    assert!((mean - 3.0).abs() < 0.05, "poisson mean {mean}");
    let exp: f64 = (0..n).map(|_| rng.exponential(2.0)).sum::<f64>() / f64::from(n);
    assert!((exp - 2.0).abs() < 0.05, "exponential mean {exp}");
    assert_eq!(rng.poisson(0.0), 0);
    assert_eq!(rng.poisson(f64::NAN), 0);
}

fn seen(secs: f64, concurrency: u32, ready: u32) -> Observation {
    Observation {
        now: Duration::from_secs_f64(secs),
        in_flight: concurrency.min(ready * 4),
        queued: concurrency.saturating_sub(ready * 4),
        arrivals_last_sec: 0,
        ready,
        replicas: ready,
    }
}

/// Feeds `policy` 100 ms ticks from `from` to `to` seconds at a fixed concurrency and size.
fn feed(
    policy: &mut dyn Autoscaler,
    from: f64,
    to: f64,
    concurrency: u32,
    ready: u32,
) -> Vec<(f64, u32)> {
    let mut decisions = Vec::new();
    let mut tick = (from * 10.0).round() as u64;
    while (tick as f64) < to * 10.0 {
        let secs = tick as f64 / 10.0;
        if let Some(d) = policy.tick(&seen(secs, concurrency, ready)) {
            decisions.push((secs, d));
        }
        tick += 1;
    }
    decisions
}

#[test]
fn knative_panics_on_a_burst_and_holds_through_the_stable_window() {
    let cfg = ScalingConfig::default();
    let mut kpa = Kpa::new(&cfg);
    assert_eq!(kpa.initial(3.0), 1, "no spare above demand");
    feed(&mut kpa, 0.0, 60.0, 3, 1);
    // 24 concurrent on one ready pod: the 6 s window soon wants 6 pods, 6x the ready one.
    let burst = feed(&mut kpa, 60.0, 67.0, 24, 1);
    assert_eq!(
        burst.iter().map(|d| d.1).collect::<Vec<_>>(),
        vec![1, 3, 5, 6]
    );
    // Demand gone: panic holds the size until 60 s after the last time over the threshold...
    let after = feed(&mut kpa, 67.0, 127.0, 0, 6);
    assert!(after.iter().all(|d| d.1 == 6), "{after:?}");
    // ...then at most halves it per decision (max scale-down rate 2).
    let later = feed(&mut kpa, 127.0, 129.0, 0, 6);
    assert_eq!(later, vec![(128.0, 3)]);
}

#[test]
fn hpa_syncs_every_15s_limits_scale_up_and_stabilises_scale_down() {
    let cfg = ScalingConfig {
        max_replicas: 40,
        ..ScalingConfig::default()
    };
    let mut hpa = Hpa::new(&cfg);
    let quiet = feed(&mut hpa, 0.0, 60.0, 4, 1);
    assert!(quiet.iter().all(|d| d.1 == 1), "{quiet:?}");
    assert_eq!(
        quiet.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![15.0, 30.0, 45.0]
    );
    // 100 concurrent on 1 replica: at most max(2x, +4) = 5 at the first sync that sees it.
    let burst = feed(&mut hpa, 60.0, 91.0, 100, 1);
    assert!(burst.iter().all(|d| d.1 <= 5), "{burst:?}");
    assert_eq!(burst.last().map(|d| d.1), Some(5), "{burst:?}");
    // Quiet again at 25 replicas: held for 300 s by the stabilisation window.
    let held = feed(&mut hpa, 91.0, 380.0, 0, 25);
    assert!(held.iter().all(|d| d.1 == 25), "{held:?}");
    let down = feed(&mut hpa, 380.0, 421.0, 0, 25);
    assert_eq!(down.last().map(|d| d.1), Some(1), "{down:?}");
}
