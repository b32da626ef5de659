//! The gateway's classification against the worker's planner: for generated and hand-picked
//! statements, every table the worker's logical plan scans is among the tables the gateway saw in
//! the text (or the statement is metadata, which the gateway lets only `*` read). A statement
//! where this fails would be checked by the gateway against the wrong tables.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use proptest::prelude::*;

use quiver_core::protocol::{DEFAULT_CATALOG, DEFAULT_SCHEMA};
use quiver_gateway::testing::inspect;
use quiver_worker::authorise::reads;
use quiver_worker::engine::{Engine, QueryLimits};

/// Tables of the test catalog, each with one integer column.
const TABLES: &[(&str, &str, &str)] = &[
    (DEFAULT_CATALOG, DEFAULT_SCHEMA, "lineitem"),
    (DEFAULT_CATALOG, DEFAULT_SCHEMA, "orders"),
    (DEFAULT_CATALOG, DEFAULT_SCHEMA, "nation"),
    (DEFAULT_CATALOG, DEFAULT_SCHEMA, "Mixed"),
    (DEFAULT_CATALOG, "private", "salaries"),
    ("secret", "data", "t"),
];

/// An engine over empty in-memory tables, configured as a worker's (default catalog and schema,
/// information_schema on).
fn engine() -> Engine {
    let config = SessionConfig::new()
        .with_default_catalog_and_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA)
        .with_create_default_catalog_and_schema(true)
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    let secret = Arc::new(MemoryCatalogProvider::new());
    secret
        .register_schema("data", Arc::new(MemorySchemaProvider::new()))
        .unwrap();
    ctx.register_catalog("secret", secret);
    ctx.catalog(DEFAULT_CATALOG)
        .unwrap()
        .register_schema("private", Arc::new(MemorySchemaProvider::new()))
        .unwrap();
    for (catalog, schema, table) in TABLES {
        let columns = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let empty = MemTable::try_new(columns, vec![vec![]]).unwrap();
        ctx.register_table(
            TableReference::full(*catalog, *schema, *table),
            Arc::new(empty),
        )
        .unwrap();
    }
    Engine::from_state(
        ctx.state(),
        QueryLimits {
            memory_limit: 64 << 20,
            timeout: Duration::from_secs(10),
        },
    )
}

/// Plans `sql` as the pipeline would (the gateway's normalised text, then the worker's planner)
/// and checks the superset rule. Returns whether the worker could plan it at all.
fn check(engine: &Engine, runtime: &tokio::runtime::Runtime, sql: &str) -> Result<bool, String> {
    let Ok(facts) = inspect(sql, 1 << 20) else {
        return Ok(false);
    };
    let everything = vec!["*".to_owned()];
    let Ok((plan, _)) = runtime.block_on(engine.plan(&facts.sql, None, &everything)) else {
        return Ok(false);
    };
    let planned = reads(&plan, DEFAULT_CATALOG, DEFAULT_SCHEMA);
    if facts.metadata {
        return Ok(true);
    }
    if planned.describes {
        return Err(format!("{sql}: DESCRIBE not classified as metadata"));
    }
    let seen: Vec<String> = facts.tables.iter().map(|t| t.to_lowercase()).collect();
    match planned
        .tables
        .iter()
        .find(|t| !seen.contains(&t.to_lowercase()))
    {
        Some(missed) => Err(format!(
            "{sql}: the worker scans {missed}, the gateway saw only {:?}",
            facts.tables
        )),
        None => Ok(true),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Ways of naming the test tables and the catalog's own metadata: qualified, quoted, case-folded.
fn table_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "lineitem",
        "LINEITEM",
        "\"lineitem\"",
        "public.orders",
        "quiver.public.orders",
        "QUIVER.Public.Orders",
        "\"quiver\".\"public\".\"nation\"",
        "\"Mixed\"",
        "quiver.public.\"Mixed\"",
        "private.salaries",
        "quiver.PRIVATE.salaries",
        "secret.data.t",
        "\"secret\".data.\"t\"",
        "SECRET.DATA.T",
        "information_schema.tables",
        "information_schema.columns",
        "quiver.information_schema.schemata",
        "secret.information_schema.tables",
    ])
    .prop_map(str::to_owned)
}

/// Names a CTE may take, some shadowing real tables.
fn cte_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "c",
        "orders",
        "\"Mixed\"",
        "t",
        "salaries",
        "LINEITEM",
    ])
    .prop_map(str::to_owned)
}

/// Single-column queries built from the forms a statement can read a table through.
fn query() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        table_name().prop_map(|t| format!("SELECT count(*) AS n FROM {t}")),
        table_name().prop_map(|t| format!("SELECT 1 AS n FROM {t} LIMIT 1")),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| format!("SELECT n FROM ({a}) UNION ALL SELECT n FROM ({b})")),
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| format!("SELECT n FROM ({a}) INTERSECT SELECT n FROM ({b})")),
            (cte_name(), inner.clone(), inner.clone()).prop_map(|(c, a, b)| format!(
                "WITH {c} AS ({a}) SELECT n FROM {c} WHERE n IN (SELECT n FROM ({b}) AS s)"
            )),
            (cte_name(), inner.clone())
                .prop_map(|(c, a)| format!("WITH RECURSIVE {c} AS ({a}) SELECT n FROM {c}")),
            (inner.clone(), table_name())
                .prop_map(|(a, t)| format!("SELECT count(*) AS n FROM {t} WHERE EXISTS ({a})")),
            inner
                .clone()
                .prop_map(|a| format!("SELECT (SELECT max(n) FROM ({a}) AS s) AS n")),
            (inner.clone(), table_name())
                .prop_map(|(a, t)| format!("SELECT d.n FROM ({a}) AS d JOIN {t} AS j ON true")),
            (inner.clone(), table_name()).prop_map(|(a, t)| format!(
                "SELECT d.n FROM ({a}) AS d, LATERAL (SELECT count(*) FROM {t}) AS l"
            )),
            inner.prop_map(|a| format!("SELECT n FROM ({a}) AS d ORDER BY n")),
        ]
    })
}

/// Statements: queries, their EXPLAIN forms and the metadata statements.
fn statement() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => query(),
        1 => query().prop_map(|q| format!("EXPLAIN {q}")),
        1 => query().prop_map(|q| format!("EXPLAIN ANALYZE {q}")),
        1 => query().prop_map(|q| format!("EXPLAIN VERBOSE {q}")),
        1 => table_name().prop_map(|t| format!("DESCRIBE {t}")),
        1 => table_name().prop_map(|t| format!("SHOW COLUMNS FROM {t}")),
        1 => Just("SHOW TABLES".to_owned()),
    ]
}

#[test]
fn hand_picked_statements_scan_only_what_the_gateway_saw() {
    let engine = engine();
    let runtime = runtime();
    let statements = [
        "SELECT * FROM secret.data.t",
        "SELECT * FROM \"Mixed\"",
        "WITH orders AS (SELECT * FROM secret.data.t) SELECT * FROM orders",
        "WITH a AS (SELECT * FROM private.salaries), b AS (SELECT * FROM a) SELECT * FROM b",
        "SELECT * FROM lineitem WHERE x IN (SELECT x FROM secret.data.t)",
        "SELECT (SELECT max(x) FROM quiver.private.salaries)",
        "SELECT * FROM orders UNION SELECT * FROM SECRET.DATA.T",
        "EXPLAIN SELECT * FROM secret.data.t",
        "EXPLAIN ANALYZE SELECT * FROM secret.data.t",
        "SELECT * FROM information_schema.tables",
        "SELECT table_name FROM secret.information_schema.tables",
        "SELECT * FROM lineitem, LATERAL (SELECT * FROM secret.data.t) AS s",
        "SELECT * FROM lineitem WHERE x = ?",
        "SELECT * FROM lineitem WHERE x = $1",
        "DESCRIBE secret.data.t",
        "SHOW TABLES",
        "SHOW COLUMNS FROM secret.data.t",
        "SELECT * FROM (VALUES (1)) AS v(x) JOIN secret.data.t USING (x)",
    ];
    let mut planned = 0;
    for sql in statements {
        planned += usize::from(check(&engine, &runtime, sql).unwrap());
    }
    // Nearly all of them plan; the rule is not passed vacuously.
    assert!(planned >= statements.len() - 2, "only {planned} planned");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, ..ProptestConfig::default() })]

    #[test]
    fn generated_statements_scan_only_what_the_gateway_saw(sql in statement()) {
        thread_local! {
            static SETUP: (Engine, tokio::runtime::Runtime) = (engine(), runtime());
        }
        SETUP.with(|(engine, runtime)| {
            let result = check(engine, runtime, &sql);
            prop_assert!(result.is_ok(), "{}", result.unwrap_err());
            Ok(())
        })?;
    }
}

/// The generator reaches the planner: most generated statements plan, so the property above is
/// checked on real plans rather than on refusals.
#[test]
fn most_generated_statements_plan() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let engine = engine();
    let runtime = runtime();
    let mut runner = TestRunner::deterministic();
    let strategy = statement();
    let total = 200;
    let mut planned = 0;
    for _ in 0..total {
        let sql = strategy.new_tree(&mut runner).unwrap().current();
        planned += usize::from(check(&engine, &runtime, &sql).unwrap());
    }
    assert!(planned * 2 > total, "only {planned} of {total} planned");
}
