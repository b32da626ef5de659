use std::sync::OnceLock;
use std::time::Duration;

use super::*;

/// The fleet report of the default setup, run once for all the tests that read it.
fn default_report() -> &'static FleetReport {
    static REPORT: OnceLock<FleetReport> = OnceLock::new();
    REPORT.get_or_init(|| FleetReport::run(&FleetSetup::default()))
}

fn row(report: &FleetReport, policy: FleetPolicy) -> &FleetOutcome {
    report.get(policy).expect("every policy has a row")
}

#[test]
fn every_policy_serves_every_query() {
    let report = default_report();
    let queries = row(report, FleetPolicy::PerPoolSpares).queries;
    assert!(
        queries > 3000,
        "too few queries to mean anything: {queries}"
    );
    for (policy, o) in &report.rows {
        // Same arrivals under every policy, and every queue empties before the end.
        assert_eq!(o.queries, queries, "{}", policy.name());
        assert!(o.idle_pod_secs <= o.pod_secs, "{}", policy.name());
        assert!(o.wakes >= 10, "{}: {} wakes", policy.name(), o.wakes);
    }
}

#[test]
fn shared_standby_halves_idle_pods_without_longer_waits() {
    // The targets: at equal or lower p99 wait than per-pool spares, at most half their
    // idle pod-seconds and at most 0.7x Knative-with-scale-to-zero's.
    let report = default_report();
    let ours = row(report, FleetPolicy::SharedStandby);
    let spares = row(report, FleetPolicy::PerPoolSpares);
    let knative = row(report, FleetPolicy::KnativeToZero);
    assert!(
        ours.p99_wait <= spares.p99_wait,
        "p99 {:?} against {:?}",
        ours.p99_wait,
        spares.p99_wait
    );
    assert!(
        ours.idle_pod_secs <= 0.5 * spares.idle_pod_secs,
        "idle {:.0} pod-s against per-pool spares' {:.0}",
        ours.idle_pod_secs,
        spares.idle_pod_secs
    );
    assert!(
        ours.idle_pod_secs <= 0.7 * knative.idle_pod_secs,
        "idle {:.0} pod-s against knative's {:.0}",
        ours.idle_pod_secs,
        knative.idle_pod_secs
    );
}

#[test]
fn a_pool_at_zero_answers_its_first_query_within_a_second() {
    let report = default_report();
    let setup = &report.setup;
    let ours = row(report, FleetPolicy::SharedStandby);
    let p50 = ours.wake_p50.expect("wake-ups");
    assert!(p50 <= Duration::from_secs(1), "p50 {p50:?}");
    // Every wake-up found a standby worker: none waited for a cold start.
    let max = ours.wake_max.expect("wake-ups");
    assert!(max < setup.base.cold_start.0, "max {max:?}");
    assert!(ours.claims >= ours.wakes as u64, "{ours:?}");
    // Knative's wake-up is a cold start.
    let knative = row(report, FleetPolicy::KnativeToZero);
    assert!(knative.wake_p50.expect("wake-ups") >= setup.base.cold_start.0);
}

#[test]
fn the_standby_pool_stays_within_its_bounds() {
    let report = default_report();
    let setup = &report.setup;
    let ours = row(report, FleetPolicy::SharedStandby);
    let length = trace::LENGTH.as_secs_f64();
    assert!(ours.standby_pod_secs >= f64::from(setup.standby.min) * length * 0.9);
    assert!(ours.standby_pod_secs <= f64::from(setup.standby.max) * length);
    for policy in [
        FleetPolicy::PerPoolSpares,
        FleetPolicy::KnativeToZero,
        FleetPolicy::Hpa,
    ] {
        let o = row(report, policy);
        assert_eq!(
            (o.standby_pod_secs, o.claims),
            (0.0, 0),
            "{}",
            policy.name()
        );
    }
}

#[test]
fn without_standby_workers_a_wake_up_is_a_cold_start() {
    // The standby pool is what makes the wake-up fast: with none kept, claims find nothing.
    let setup = FleetSetup {
        standby: StandbyConfig {
            min: 0,
            max: 0,
            ..FleetSetup::default().standby
        },
        ..FleetSetup::default()
    };
    let o = run(&trace::pools(), FleetPolicy::SharedStandby, &setup);
    assert_eq!(o.claims, 0);
    assert!(
        o.wake_p50.expect("wake-ups") >= setup.base.cold_start.0,
        "{o:?}"
    );
}

#[test]
fn same_seed_same_report_other_seed_other_report() {
    let a = default_report();
    assert_eq!(report(), a.to_string());
    let mut setup = FleetSetup::default();
    setup.base.seed = 2;
    let b = FleetReport::run(&setup);
    assert_ne!(a.rows, b.rows);
}

#[test]
fn the_report_lists_every_pool_and_policy() {
    let text = default_report().to_string();
    for pool in trace::pools() {
        assert!(text.contains(pool.name), "{} missing", pool.name);
    }
    for policy in FleetPolicy::ALL {
        assert!(text.contains(policy.name()), "{} missing", policy.name());
    }
}

#[test]
fn targets_hold_over_other_seeds() {
    // The idle-capacity targets are structural (one shared standby pool against a spare per
    // pool, a 30 s idle time against Knative's 60 s mean), so they hold whatever the draws.
    // The p99 target depends on the standby pool's minimum: with 2 it was missed on one seed
    // in ten (by 0.2 s), with 3 it holds on all ten.
    for seed in 2..=6 {
        let mut setup = FleetSetup::default();
        setup.base.seed = seed;
        let pools = trace::pools();
        let shared = run(&pools, FleetPolicy::SharedStandby, &setup);
        let per_pool = run(&pools, FleetPolicy::PerPoolSpares, &setup);
        assert!(
            shared.p99_wait <= per_pool.p99_wait,
            "seed {seed}: p99 {:?} against {:?}",
            shared.p99_wait,
            per_pool.p99_wait
        );
        let (ours, spares) = (shared.idle_pod_secs, per_pool.idle_pod_secs);
        let knative = run(&pools, FleetPolicy::KnativeToZero, &setup).idle_pod_secs;
        assert!(
            ours <= 0.5 * spares,
            "seed {seed}: {ours:.0} against {spares:.0}"
        );
        assert!(
            ours <= 0.7 * knative,
            "seed {seed}: {ours:.0} against {knative:.0}"
        );
    }
}
