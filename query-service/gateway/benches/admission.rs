//! The admission decision on the hot path: classify, every rate-limit policy, and a slot taken
//! from and returned to the resource-group scheduler, with 10,000 tenants configured.
//!
//! Run: `cargo bench --workspace --bench admission`. Reports time per query for a repeated
//! statement (a dashboard's) and for a new one (ad hoc), and the time to parse the SQL alone as
//! the baseline of the same run.

use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use quiver_gateway::Admission;
use quiver_gateway::ClientHints;
use quiver_gateway::Identity;
use quiver_gateway::Policy;

const TENANTS: usize = 10_000;

fn config() -> String {
    let mut yaml = String::from("tenants:\n");
    for i in 0..TENANTS {
        writeln!(yaml, "  - {{name: t{i}, tokens: ['sha256:{i:064x}']}}").unwrap();
    }
    yaml.push_str(
        "rate_limits:
  - {name: global, key: [global], qps: 1000000000, burst: 1000000}
  - {name: per-tenant, key: [tenant], qps: 1000000, burst: 1000}
  - {name: per-user-group, key: [user, group], qps: 1000000, burst: 1000}
resource_groups:
  - name: dashboards
    hard_concurrency: 100
    weight: 3
  - name: adhoc
    hard_concurrency: 50
    subgroups:
      - {name: '${user}', hard_concurrency: 2}
selectors:
  - {tenant: t1, group: adhoc}
  - {user: 't2.*', group: adhoc}
  - {source: 'grafana.*', group: dashboards}
  - {group: dashboards}
",
    );
    yaml
}

fn admission(c: &mut Criterion) {
    let policy = Policy::parse(&config(), Path::new("bench.yaml"), &["default"]).unwrap();
    let admission = Admission::new(policy, 1);
    let identities: Vec<Identity> = (0..TENANTS)
        .map(|i| Identity {
            tenant: format!("t{i}"),
            user: format!("t{i}"),
        })
        .collect();
    let hints = ClientHints {
        source: Some("grafana-prod".into()),
        tags: vec![],
    };
    let sql = "SELECT sum(l_extendedprice) FROM lineitem WHERE l_shipdate >= date '1994-01-01'";
    // Baseline measured in the same run: parsing the statement alone, the least any SQL-aware
    // admission must do. The figure that matters is the ratio of the two.
    c.bench_function("baseline: parse the SQL only", |b| {
        b.iter(|| {
            let dialect = GenericDialect {};
            black_box(Parser::parse_sql(&dialect, black_box(sql)).expect("parses"))
        })
    });
    let mut i = 0;
    c.bench_function(
        "admit a repeated statement (classify + 3 policies + enqueue/dequeue), 10k tenants",
        |b| {
            b.iter(|| {
                i = (i + 1) % TENANTS;
                let permit = futures::executor::block_on(admission.admit(
                    &identities[i],
                    &hints,
                    sql,
                    false,
                ))
                .expect("admitted");
                drop(black_box(permit));
            })
        },
    );
    // Every statement new: the parse is paid each time, as for ad-hoc queries.
    let mut n = 0u64;
    let mut fresh = String::new();
    c.bench_function(
        "admit a new statement (parse + classify + 3 policies + enqueue/dequeue), 10k tenants",
        |b| {
            b.iter(|| {
                n += 1;
                i = (i + 1) % TENANTS;
                fresh.clear();
                write!(fresh, "{sql} AND l_orderkey > {n}").unwrap();
                let permit = futures::executor::block_on(admission.admit(
                    &identities[i],
                    &hints,
                    &fresh,
                    false,
                ))
                .expect("admitted");
                drop(black_box(permit));
            })
        },
    );
}

criterion_group!(benches, admission);
criterion_main!(benches);
