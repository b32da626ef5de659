//! Classification: which resource group a query belongs to, and whether its tenant may read the
//! tables it names. Runs after authentication and before rate limiting, because group-keyed
//! policies need the group.
//!
//! The SQL is parsed once here with DataFusion's own parser (the same the worker uses) to find
//! the statement kind and the tables it reads; planning stays on the worker.

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{ObjectName, ObjectNamePart, Statement, visit_relations};
use std::ops::ControlFlow;
use std::sync::Arc;

use super::config::Identity;
use super::config::{GroupNode, Policy, StatementKind};
use super::group::GroupLimits;
use quiver_core::cache::TextCache;
use quiver_core::protocol::{DEFAULT_CATALOG, DEFAULT_SCHEMA};
use quiver_core::sql::SqlError;

/// What a selector can see of a query besides its SQL.
#[derive(Debug, Clone, Default)]
pub struct ClientHints {
    /// `x-quiver-source` (e.g. a dashboard's name).
    pub source: Option<String>,
    /// `x-quiver-tags`, comma-separated.
    pub tags: Vec<String>,
}

/// The facts of a statement the gateway needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementFacts {
    /// The text a worker runs: as the client sent it, with `?` placeholders numbered.
    pub sql: Arc<str>,
    /// Kind, for selectors.
    pub kind: StatementKind,
    /// Every name the statement reads from, fully qualified (`catalog.schema.table`). CTE
    /// names are kept (qualified like tables): that can only refuse more.
    pub tables: Vec<String>,
    /// `SHOW …` or `DESCRIBE`: answers list catalog objects, so they need every catalog.
    pub metadata: bool,
}

/// Checks `sql`'s shape, numbers its placeholders and parses the result with the worker's parser
/// for its kind and tables.
///
/// Fail closed: whatever is not a query, `EXPLAIN` of a query, or a catalog metadata statement
/// is refused here, so nothing the gateway cannot classify reaches a worker.
pub fn inspect(sql: &str, max_bytes: usize) -> Result<StatementFacts, SqlError> {
    let sql: Arc<str> = quiver_core::sql::normalise(sql, max_bytes)?.into();
    let statement = quiver_core::sql::parse_one(&sql)?;
    let mut facts = StatementFacts {
        sql: sql.clone(),
        kind: StatementKind::Select,
        tables: Vec::new(),
        metadata: false,
    };
    match &statement {
        DFStatement::Statement(inner) => sql_facts(inner, &mut facts, false)?,
        DFStatement::Explain(explain) => {
            facts.kind = StatementKind::Explain;
            match &*explain.statement {
                DFStatement::Statement(inner) => sql_facts(inner, &mut facts, true)?,
                _ => return Err(SqlError::NotAQuery("EXPLAIN of a non-query".into())),
            }
        }
        DFStatement::CreateExternalTable(_) => {
            return Err(SqlError::NotAQuery("CREATE EXTERNAL TABLE".into()));
        }
        DFStatement::CopyTo(_) => return Err(SqlError::NotAQuery("COPY".into())),
        #[allow(unreachable_patterns)]
        _ => return Err(SqlError::NotAQuery("this kind of".into())),
    }
    facts.tables.sort();
    facts.tables.dedup();
    Ok(facts)
}

/// Facts of one sqlparser statement; `explained` when it sits under `EXPLAIN`, which may wrap
/// only a query.
fn sql_facts(
    statement: &Statement,
    facts: &mut StatementFacts,
    explained: bool,
) -> Result<(), SqlError> {
    match statement {
        Statement::Query(_) => {}
        Statement::Explain { statement, .. } if !explained => {
            facts.kind = StatementKind::Explain;
            return sql_facts(statement, facts, true);
        }
        Statement::ExplainTable { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowFunctions { .. }
            if !explained =>
        {
            facts.kind = StatementKind::Show;
            facts.metadata = true;
        }
        other => return Err(SqlError::NotAQuery(statement_word(other))),
    }
    let _ = visit_relations(statement, |name| {
        facts.tables.push(qualified(name));
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}

/// `catalog.schema.table` of a relation as DataFusion resolves it: unquoted parts fold to lower
/// case, quoted ones stay as written, missing parts are the defaults.
fn qualified(name: &ObjectName) -> String {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) if ident.quote_style.is_some() => ident.value.clone(),
            ObjectNamePart::Identifier(ident) => ident.value.to_lowercase(),
            other => other.to_string(),
        })
        .collect();
    match parts.as_slice() {
        [t] => format!("{DEFAULT_CATALOG}.{DEFAULT_SCHEMA}.{t}"),
        [s, t] => format!("{DEFAULT_CATALOG}.{s}.{t}"),
        _ => parts.join("."),
    }
}

/// The first words of a statement, to name it in a refusal.
fn statement_word(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    let mut word = words.join(" ");
    word.truncate(40);
    word
}

/// How much SQL text (and the table names found in it) [`FactsCache`] keeps.
const FACTS_CACHE_BYTES: usize = 4 << 20;

/// Statement facts by SQL text. Dashboards send the same statements again and again, and
/// parsing is most of the cost of an admission decision, so repeats skip it.
#[derive(Debug)]
pub struct FactsCache {
    by_sql: TextCache<Result<Arc<StatementFacts>, SqlError>>,
}

impl Default for FactsCache {
    fn default() -> Self {
        Self {
            by_sql: TextCache::new(FACTS_CACHE_BYTES),
        }
    }
}

impl FactsCache {
    /// [`inspect`], remembered (refusals too: a client repeating a bad statement costs a lookup).
    pub fn inspect(&self, sql: &str, max_bytes: usize) -> Result<Arc<StatementFacts>, SqlError> {
        if sql.len() > max_bytes {
            return Err(SqlError::TooLarge {
                bytes: sql.len(),
                limit: max_bytes,
            });
        }
        if let Some(hit) = self.by_sql.get(sql) {
            return hit;
        }
        // Parsed outside any lock: a long statement must not hold up every other query.
        let facts = inspect(sql, max_bytes).map(Arc::new);
        let size = facts.as_ref().map_or(64, |f| {
            f.sql.len() + f.tables.iter().map(String::len).sum::<usize>()
        });
        self.by_sql.insert(sql, facts.clone(), size);
        facts
    }

    /// Bytes of SQL and table names held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.by_sql.bytes()
    }
}

/// What of a statement `identity`'s tenant may not read, if anything. A tenant the policy no
/// longer has may read nothing.
pub fn forbidden<'a>(
    policy: &Policy,
    identity: &Identity,
    facts: &'a StatementFacts,
) -> Option<&'a str> {
    const METADATA: &str = "catalog metadata (SHOW, DESCRIBE; the Flight SQL metadata commands \
                            list the tenant's own catalogs)";
    let Some(tenant) = policy.tenant(&identity.tenant) else {
        return Some("any table (the tenant is no longer configured)");
    };
    if facts.metadata && !quiver_core::access::may_read_metadata(&tenant.catalogs) {
        return Some(METADATA);
    }
    facts
        .tables
        .iter()
        .find(|table| !quiver_core::access::may_read(&tenant.catalogs, table))
        .map(String::as_str)
}

/// The group chain a query runs in, from top-level group to leaf, with templates expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// `(name, limits, templated)` from the top-level group down to the leaf; a templated level
    /// is named by a client-chosen value.
    pub chain: Vec<(String, GroupLimits, bool)>,
    /// Dotted path of the leaf (the scheduler may place a templated value in the overflow
    /// group instead; the admitted query's placement says where it ran).
    pub path: String,
    /// Pool the group runs on.
    pub pool: String,
    /// Per-query memory limit of the leaf group, if set.
    pub memory_limit: Option<u64>,
}

/// Distinct values one templated group (`${user}`, `${source}`, …) keeps a subgroup for at a
/// time; a new value past it takes over the least recently used idle subgroup, or shares one
/// overflow subgroup while all are busy, so client-chosen values cannot grow the scheduler or
/// the metric label sets without bound.
pub const MAX_TEMPLATE_VALUES: usize = 1_000;
/// Longest template value kept; longer ones are cut.
const MAX_TEMPLATE_VALUE_CHARS: usize = 64;
/// The subgroup values share while every one of [`MAX_TEMPLATE_VALUES`] subgroups is busy.
pub const OVERFLOW_GROUP: &str = "_overflow";

/// The subgroup name for a template value: safe for a dotted path and a metric label, and cut
/// to [`MAX_TEMPLATE_VALUE_CHARS`].
fn template_name(value: &str) -> String {
    let mut name: String = value
        .chars()
        .take(MAX_TEMPLATE_VALUE_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        name.push('_');
    }
    name
}

/// Picks the group for a query: the first matching selector, else the default group.
pub fn classify(
    policy: &Policy,
    identity: &Identity,
    hints: &ClientHints,
    kind: StatementKind,
) -> Placement {
    let target = policy
        .selectors
        .iter()
        .find(|s| {
            s.tenant.as_ref().is_none_or(|t| *t == identity.tenant)
                && s.user.as_ref().is_none_or(|r| r.is_match(&identity.user))
                && s.source
                    .as_ref()
                    .is_none_or(|r| hints.source.as_deref().is_some_and(|src| r.is_match(src)))
                && s.tags.iter().all(|t| hints.tags.contains(t))
                && s.statement.is_none_or(|k| k == kind)
        })
        .map(|s| s.group.as_str())
        .unwrap_or(&policy.default_group);
    place(&policy.groups, target, identity, hints)
}

fn place(
    groups: &[GroupNode],
    target: &str,
    identity: &Identity,
    hints: &ClientHints,
) -> Placement {
    let mut chain = Vec::new();
    let mut level = groups;
    let mut node: Option<&GroupNode> = None;
    for part in target.split('.') {
        let Some(n) = level.iter().find(|g| g.name == part) else {
            break;
        };
        chain.push((n.name.clone(), n.limits, false));
        level = &n.subgroups;
        node = Some(n);
    }
    let mut node = node.expect("selectors and the default group are validated at load");
    // Descend through templated subgroups: `adhoc` with `${user}` becomes `adhoc.alice`.
    while let Some(t) = node.subgroups.iter().find(|g| g.name.contains("${")) {
        let value = match t.name.as_str() {
            "${user}" => identity.user.as_str(),
            "${tenant}" => identity.tenant.as_str(),
            _ => hints.source.as_deref().unwrap_or("unknown"),
        };
        chain.push((template_name(value), t.limits, true));
        node = t;
    }
    Placement {
        path: chain
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect::<Vec<_>>()
            .join("."),
        chain,
        pool: node.pool.clone(),
        memory_limit: node.memory_limit,
    }
}

#[cfg(test)]
mod tests {
    const MAX: usize = quiver_core::sql::DEFAULT_MAX_SQL_BYTES;

    #[test]
    fn the_facts_cache_answers_as_inspect_does_and_stays_bounded() {
        let cache = FactsCache::default();
        for sql in [
            "SELECT * FROM lineitem",
            "SELECT * FROM lineitem",
            "not sql at all",
        ] {
            assert_eq!(
                cache.inspect(sql, MAX).map(|f| (*f).clone()),
                inspect(sql, MAX),
                "{sql}"
            );
        }
        for i in 0..50_000 {
            let sql = format!("SELECT {i} FROM orders, tpch.public.nation");
            assert_eq!(cache.inspect(&sql, MAX).unwrap().tables.len(), 2);
            assert!(cache.bytes() <= FACTS_CACHE_BYTES);
        }
        let huge = format!("SELECT 1{}", " ".repeat(FACTS_CACHE_BYTES));
        assert!(cache.inspect(&huge, usize::MAX).is_ok());
        assert!(cache.bytes() <= FACTS_CACHE_BYTES);
        assert!(matches!(
            cache.inspect(&huge, MAX),
            Err(SqlError::TooLarge { .. })
        ));
    }

    use super::*;
    use std::path::Path;

    fn example() -> Policy {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/admission.yaml");
        Policy::load(&path, &["default"]).unwrap()
    }

    fn id(tenant: &str, user: &str) -> Identity {
        Identity {
            tenant: tenant.into(),
            user: user.into(),
        }
    }

    #[test]
    fn selectors_and_templates() {
        let p = example();
        let noisy = classify(
            &p,
            &id("noisy", "bob"),
            &ClientHints::default(),
            StatementKind::Select,
        );
        assert_eq!(noisy.path, "adhoc.bob");
        assert_eq!(noisy.chain[1].1.hard_concurrency, 1);
        let quiet = classify(
            &p,
            &id("quiet", "quiet"),
            &ClientHints::default(),
            StatementKind::Select,
        );
        assert_eq!(quiet.path, "dashboards");
        assert_eq!(quiet.pool, "default");
    }

    #[test]
    fn template_values_are_made_safe() {
        let p = example();
        let place = |user: &str| {
            let placement = classify(
                &p,
                &id("noisy", user),
                &ClientHints::default(),
                StatementKind::Select,
            );
            assert!(placement.chain.last().unwrap().2, "the leaf is templated");
            placement.path
        };
        assert_eq!(place("a.b c"), "adhoc.a_b_c");
        assert_eq!(place(""), "adhoc._");
        assert!(place(&"x".repeat(1000)).len() <= "adhoc.".len() + 64);
    }

    #[test]
    fn inspect_finds_kind_and_tables() {
        let s = inspect(
            "SELECT * FROM lineitem l JOIN quiver.public.orders o ON l.l_orderkey = o.o_orderkey",
            MAX,
        )
        .unwrap();
        assert_eq!(s.kind, StatementKind::Select);
        assert_eq!(
            s.tables,
            vec!["quiver.public.lineitem", "quiver.public.orders"]
        );
        assert_eq!(
            inspect("EXPLAIN SELECT 1", MAX).unwrap().kind,
            StatementKind::Explain
        );
        assert!(matches!(inspect("SELEC 1", MAX), Err(SqlError::Syntax(_))));
    }

    #[test]
    fn what_cannot_be_classified_is_refused() {
        for sql in [
            "CREATE TABLE t (a INT)",
            "INSERT INTO lineitem VALUES (1)",
            "SET datafusion.execution.batch_size = 1",
            "COPY lineitem TO '/tmp/x'",
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'",
            "DROP TABLE lineitem",
            "EXPLAIN COPY lineitem TO '/tmp/x'",
            "SELECT 1; SELECT 2",
            "",
        ] {
            assert!(inspect(sql, MAX).is_err(), "{sql}");
        }
        for sql in [
            "SHOW TABLES",
            "DESCRIBE lineitem",
            "SHOW COLUMNS FROM lineitem",
        ] {
            let facts = inspect(sql, MAX).unwrap();
            assert!(facts.metadata, "{sql}");
            assert_eq!(facts.kind, StatementKind::Show);
        }
        // Forms of EXPLAIN the worker's parser accepts are classified, not passed through.
        for sql in [
            "EXPLAIN FORMAT indent SELECT * FROM lineitem",
            "EXPLAIN ANALYZE SELECT * FROM lineitem",
            "EXPLAIN VERBOSE SELECT * FROM lineitem",
        ] {
            let facts = inspect(sql, MAX).unwrap();
            assert_eq!(facts.tables, vec!["quiver.public.lineitem"], "{sql}");
        }
    }

    #[test]
    fn names_fold_as_datafusion_folds_them() {
        let facts = inspect(
            "SELECT * FROM LineItem, \"Orders\", QUIVER.PUBLIC.nation, public.region",
            MAX,
        )
        .unwrap();
        assert_eq!(
            facts.tables,
            vec![
                "quiver.public.Orders",
                "quiver.public.lineitem",
                "quiver.public.nation",
                "quiver.public.region"
            ]
        );
    }

    #[test]
    fn catalogs_restrict_tables() {
        let mut p = example();
        p.tenants[0].catalogs = vec!["other".into()];
        let facts = inspect("SELECT * FROM lineitem", MAX).unwrap();
        assert_eq!(
            forbidden(&p, &id("quiet", "quiet"), &facts),
            Some("quiver.public.lineitem")
        );
        assert_eq!(forbidden(&p, &id("noisy", "noisy"), &facts), None);
        // A tenant the policy no longer has reads nothing, and metadata needs every catalog.
        assert!(forbidden(&p, &id("gone", "gone"), &facts).is_some());
        let show = inspect("SHOW TABLES", MAX).unwrap();
        assert!(forbidden(&p, &id("quiet", "quiet"), &show).is_some());
        assert!(forbidden(&p, &id("noisy", "noisy"), &show).is_none());
        let schema = inspect("SELECT * FROM information_schema.tables", MAX).unwrap();
        p.tenants[0].catalogs = vec!["quiver".into()];
        assert!(forbidden(&p, &id("quiet", "quiet"), &schema).is_some());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Tokens SQL is made of, weighted towards the ones that nest.
        fn token() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "SELECT",
                "FROM",
                "WHERE",
                "WITH",
                "AS",
                "UNION",
                "ALL",
                "EXPLAIN",
                "SHOW",
                "TABLES",
                "DESCRIBE",
                "(",
                "(",
                "(",
                ")",
                ")",
                "[",
                "]",
                "+",
                "-",
                "*",
                "/",
                "||",
                "AND",
                "OR",
                "NOT",
                "CASE",
                "WHEN",
                "THEN",
                "ELSE",
                "END",
                "IN",
                "EXISTS",
                "1",
                "'a''b'",
                "\"q\"\"x\"",
                "?",
                "$1",
                "::",
                "INT",
                ",",
                ";",
                ".",
                "lineitem",
                "secret.data.t",
                "information_schema",
                "--c\n",
                "/*",
                "*/",
                "'",
                "\"",
                "$$",
                "E'\\''",
                "x'00'",
                "ARRAY",
                "STRUCT",
                "{",
                "}",
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            /// Token soup of any length and nesting: facts or a refusal, never a panic or a
            /// stack overflow (tests run on 2 MiB thread stacks, a quarter of the gateway's).
            #[test]
            fn token_soup_is_classified_or_refused(tokens in prop::collection::vec(token(), 0..1200)) {
                let sql = tokens.join(" ");
                if let Ok(facts) = inspect(&sql, MAX) {
                    prop_assert!(matches!(facts.kind, StatementKind::Select | StatementKind::Explain | StatementKind::Show));
                    prop_assert!(facts.tables.iter().all(|t| t.split('.').count() >= 3), "{:?}", facts.tables);
                }
            }

            /// Any text, including invalid UTF-8 turned lossy and control characters.
            #[test]
            fn arbitrary_text_is_classified_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
                let sql = String::from_utf8_lossy(&bytes);
                let _ = inspect(&sql, MAX);
            }

            /// Deep nesting of every kind is refused as too deep or parsed, never overflows.
            #[test]
            fn deep_nesting_is_refused_or_parsed(open in prop::sample::select(vec!["(", "[", "CASE WHEN ", "NOT ", "- ", "(SELECT "]), depth in 1usize..3000) {
                let sql = format!("SELECT {}1", open.repeat(depth));
                let _ = inspect(&sql, MAX);
            }
        }
    }
}
