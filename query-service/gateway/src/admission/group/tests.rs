use std::collections::VecDeque;

use super::*;

fn limits(hard: u32, weight: u32) -> GroupLimits {
    GroupLimits {
        hard_concurrency: hard,
        max_queued: 10_000,
        queue_timeout: Duration::from_secs(5),
        weight,
        priority: 0,
        scheduling: Scheduling::WeightedFair,
    }
}

/// Keeps every group's queue full, completes the oldest running query `rounds` times, and
/// returns how many queries each group got started.
fn saturate(s: &mut Scheduler, groups: &[GroupId], rounds: usize) -> Vec<usize> {
    let mut running: VecDeque<GroupId> = VecDeque::new();
    let mut waiting: std::collections::HashMap<WaiterId, GroupId> = Default::default();
    let mut counts = vec![0; groups.len()];
    let top_up = |s: &mut Scheduler,
                  waiting: &mut std::collections::HashMap<_, _>,
                  running: &mut VecDeque<_>,
                  counts: &mut Vec<usize>| {
        for (i, g) in groups.iter().enumerate() {
            while s.queued(*g) < 50 {
                match s.submit(*g) {
                    Decision::Run => {
                        running.push_back(*g);
                        counts[i] += 1;
                    }
                    Decision::Queued(id) => {
                        waiting.insert(id, *g);
                    }
                    Decision::Rejected(r) => panic!("{r:?}"),
                }
            }
        }
    };
    top_up(s, &mut waiting, &mut running, &mut counts);
    for _ in 0..rounds {
        let g = running.pop_front().expect("something runs");
        for id in s.release(g, Duration::from_millis(10)) {
            let g = waiting.remove(&id).unwrap();
            running.push_back(g);
            counts[groups.iter().position(|x| *x == g).unwrap()] += 1;
        }
        top_up(s, &mut waiting, &mut running, &mut counts);
    }
    counts
}

#[test]
fn weights_3_to_1_give_3_to_1_shares() {
    let mut s = Scheduler::new(limits(4, 1));
    let a = s.ensure(0, "dashboards", limits(100, 3));
    let b = s.ensure(0, "adhoc", limits(100, 1));
    let counts = saturate(&mut s, &[a, b], 8000);
    let ratio = counts[0] as f64 / counts[1] as f64;
    assert!(
        (ratio - 3.0).abs() / 3.0 <= 0.05,
        "{counts:?} ratio {ratio}"
    );
}

#[test]
fn fair_policy_evens_out_running() {
    let mut root = limits(4, 1);
    root.scheduling = Scheduling::Fair;
    let mut s = Scheduler::new(root);
    let a = s.ensure(0, "a", limits(100, 5));
    let b = s.ensure(0, "b", limits(100, 1));
    let counts = saturate(&mut s, &[a, b], 4000);
    let ratio = counts[0] as f64 / counts[1] as f64;
    assert!((ratio - 1.0).abs() <= 0.05, "{counts:?}");
}

#[test]
fn priority_runs_higher_priority_first() {
    let mut root = limits(1, 1);
    root.scheduling = Scheduling::Priority;
    let mut s = Scheduler::new(root);
    let mut high = limits(10, 1);
    high.priority = 10;
    let low = s.ensure(0, "low", limits(10, 1));
    let high = s.ensure(0, "high", high);
    assert_eq!(s.submit(low), Decision::Run);
    let Decision::Queued(l) = s.submit(low) else {
        panic!()
    };
    let Decision::Queued(h) = s.submit(high) else {
        panic!()
    };
    assert_eq!(s.release(low, Duration::ZERO), vec![h]);
    assert_eq!(s.release(high, Duration::ZERO), vec![l]);
}

#[test]
fn parent_limit_bounds_children_together() {
    let mut s = Scheduler::default();
    let adhoc = s.ensure(0, "adhoc", limits(2, 1));
    let alice = s.ensure(adhoc, "alice", limits(2, 1));
    let bob = s.ensure(adhoc, "bob", limits(2, 1));
    assert_eq!(s.submit(alice), Decision::Run);
    assert_eq!(s.submit(bob), Decision::Run);
    let Decision::Queued(third) = s.submit(alice) else {
        panic!("parent full")
    };
    assert_eq!(s.running(adhoc), 2);
    assert_eq!(s.release(bob, Duration::ZERO), vec![third]);
    assert_eq!(s.running(alice), 2);
}

#[test]
fn templated_subgroups_isolate_users() {
    let mut s = Scheduler::default();
    let adhoc = s.ensure(0, "adhoc", limits(10, 1));
    let alice = s.ensure(adhoc, "alice", limits(1, 1));
    let bob = s.ensure(adhoc, "bob", limits(1, 1));
    assert_eq!(s.ensure(adhoc, "alice", limits(1, 1)), alice);
    assert_eq!(s.path(alice), "adhoc.alice");
    assert_eq!(s.submit(alice), Decision::Run);
    assert!(matches!(s.submit(alice), Decision::Queued(_)));
    // Alice's backlog does not hold Bob back.
    assert_eq!(s.submit(bob), Decision::Run);
}

#[test]
fn queue_full_and_cancel() {
    let mut s = Scheduler::default();
    let mut l = limits(1, 1);
    l.max_queued = 1;
    let g = s.ensure(0, "g", l);
    assert_eq!(s.submit(g), Decision::Run);
    let Decision::Queued(w) = s.submit(g) else {
        panic!()
    };
    assert!(matches!(
        s.submit(g),
        Decision::Rejected(Rejection::QueueFull { max_queued: 1, .. })
    ));
    // A timed-out waiter leaves the queue and frees its place.
    assert!(s.cancel(g, w));
    assert!(!s.cancel(g, w));
    assert_eq!(s.queued(g), 0);
    assert!(matches!(s.submit(g), Decision::Queued(_)));
}

#[test]
fn sheds_when_expected_wait_exceeds_timeout() {
    let mut s = Scheduler::default();
    let mut l = limits(1, 1);
    l.queue_timeout = Duration::from_secs(1);
    let g = s.ensure(0, "g", l);
    // Teach it that queries take 400 ms.
    assert_eq!(s.submit(g), Decision::Run);
    s.release(g, Duration::from_millis(400));
    assert_eq!(s.submit(g), Decision::Run);
    assert!(matches!(s.submit(g), Decision::Queued(_)));
    assert!(matches!(s.submit(g), Decision::Queued(_)));
    // A third waiter would expect 3 × 400 ms > 1 s.
    let d = s.submit(g);
    assert!(
        matches!(d, Decision::Rejected(Rejection::ExpectedWaitTooLong { .. })),
        "{d:?}"
    );
}

#[test]
fn capacity_growth_starts_waiters() {
    let mut s = Scheduler::new(limits(0, 1));
    let g = s.ensure(0, "g", limits(10, 1));
    let Decision::Queued(a) = s.submit(g) else {
        panic!()
    };
    let Decision::Queued(b) = s.submit(g) else {
        panic!()
    };
    assert_eq!(s.set_capacity(1), vec![a]);
    assert_eq!(s.set_capacity(4), vec![b]);
}

#[test]
fn bounded_subgroups_recycle_idle_ones_and_overflow_when_busy() {
    let mut s = Scheduler::new(limits(100, 1));
    let adhoc = s.ensure(s.root(), "adhoc", limits(100, 1));
    let user =
        |s: &mut Scheduler, name: &str| s.ensure_bounded(adhoc, name, limits(1, 1), 3, "_overflow");
    let a = user(&mut s, "a");
    let b = user(&mut s, "b");
    let c = user(&mut s, "c");
    assert_eq!(user(&mut s, "a"), a, "a value keeps its group");
    // a and c are busy, b is idle: a new value takes over b, the least recently used idle one.
    assert_eq!(s.submit(a), Decision::Run);
    assert_eq!(s.submit(c), Decision::Run);
    let d = user(&mut s, "d");
    assert_eq!(d, b);
    assert_eq!(s.path(d), "adhoc.d");
    assert_eq!(s.find("adhoc.b"), None);
    // Every subgroup busy: the next value waits in the overflow group, which is one more node.
    assert_eq!(s.submit(d), Decision::Run);
    let e = user(&mut s, "e");
    assert_eq!(s.path(e), "adhoc._overflow");
    assert_eq!(user(&mut s, "f"), e);
    // Once a is done it is the least recently used idle subgroup and goes first.
    s.release(a, Duration::from_millis(5));
    let g = user(&mut s, "g");
    assert_eq!(g, a);
    assert_eq!(s.path(g), "adhoc.g");
    assert_eq!(
        s.snapshot().len(),
        1 + 4,
        "adhoc, three users and the overflow group"
    );
    // Many distinct values never grow the tree past the cap plus the overflow group.
    for i in 0..10_000 {
        user(&mut s, &format!("user{i}"));
    }
    assert_eq!(s.snapshot().len(), 1 + 4);
}
