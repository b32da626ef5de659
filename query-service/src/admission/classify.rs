//! Classification: which resource group a query belongs to, and whether its tenant may read the
//! tables it names. Runs after authentication and before rate limiting, because group-keyed
//! policies need the group.
//!
//! The SQL is parsed once here with DataFusion's own parser (the same the worker uses) to find
//! the statement kind and the tables it reads; planning stays on the worker.

use datafusion::sql::sqlparser::ast::{Statement, visit_relations};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use super::config::{GroupNode, Policy, StatementKind};
use super::group::GroupLimits;
use crate::auth::Identity;
use crate::worker::catalog::{DEFAULT_CATALOG, DEFAULT_SCHEMA};

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
    /// Kind, for selectors.
    pub kind: StatementKind,
    /// Fully qualified tables read (`catalog.schema.table`).
    pub tables: Vec<String>,
}

/// Parses `sql` for its kind and tables; `None` when it does not parse (the worker then
/// reports DataFusion's syntax error).
pub fn inspect(sql: &str) -> Option<StatementFacts> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql).ok()?;
    let mut kind = StatementKind::Other;
    let mut tables = Vec::new();
    for statement in &statements {
        kind = match statement {
            Statement::Query(_) => StatementKind::Select,
            Statement::Explain { .. } | Statement::ExplainTable { .. } => StatementKind::Explain,
            Statement::ShowTables { .. } | Statement::ShowColumns { .. } => StatementKind::Show,
            _ => StatementKind::Other,
        };
        let _ = visit_relations(statement, |name| {
            let parts: Vec<String> = name
                .0
                .iter()
                .map(|p| p.to_string().trim_matches('"').to_ascii_lowercase())
                .collect();
            let qualified = match parts.as_slice() {
                [t] => format!("{DEFAULT_CATALOG}.{DEFAULT_SCHEMA}.{t}"),
                [s, t] => format!("{DEFAULT_CATALOG}.{s}.{t}"),
                _ => parts.join("."),
            };
            tables.push(qualified);
            ControlFlow::<()>::Continue(())
        });
    }
    // CTE names look like tables to the visitor; keep them, they resolve to the default schema
    // where an allowed tenant can read them anyway.
    tables.sort();
    tables.dedup();
    Some(StatementFacts { kind, tables })
}

/// How much SQL text (and the table names found in it) [`FactsCache`] keeps before it starts
/// afresh.
const FACTS_CACHE_BYTES: usize = 4 << 20;

/// Statement facts by SQL text. Dashboards send the same statements again and again, and
/// parsing is most of the cost of an admission decision, so repeats skip it. Bounded by
/// [`FACTS_CACHE_BYTES`]: when full it empties and fills again with what is sent now.
#[derive(Debug, Default)]
pub struct FactsCache {
    entries: Mutex<FactsEntries>,
}

#[derive(Debug, Default)]
struct FactsEntries {
    by_sql: HashMap<Box<str>, Option<Arc<StatementFacts>>>,
    bytes: usize,
}

impl FactsCache {
    /// [`inspect`], remembered.
    pub fn inspect(&self, sql: &str) -> Option<Arc<StatementFacts>> {
        if let Some(hit) = self.entries.lock().expect("facts cache").by_sql.get(sql) {
            return hit.clone();
        }
        // Parse outside the lock: a long statement must not hold up every other query.
        let facts = inspect(sql).map(Arc::new);
        let size = sql.len()
            + facts
                .as_ref()
                .map_or(0, |f| f.tables.iter().map(String::len).sum());
        if size <= FACTS_CACHE_BYTES / 16 {
            let mut entries = self.entries.lock().expect("facts cache");
            if entries.bytes + size > FACTS_CACHE_BYTES {
                entries.by_sql.clear();
                entries.bytes = 0;
            }
            if entries.by_sql.insert(sql.into(), facts.clone()).is_none() {
                entries.bytes += size;
            }
        }
        facts
    }

    /// Bytes of SQL and table names held.
    pub fn bytes(&self) -> usize {
        self.entries.lock().expect("facts cache").bytes
    }
}

/// The first table `tenant` may not read, if any.
pub fn forbidden_table<'a>(
    policy: &Policy,
    identity: &Identity,
    tables: &'a [String],
) -> Option<&'a str> {
    let tenant = policy.tenant(&identity.tenant)?;
    tables
        .iter()
        .find(|table| {
            !tenant.catalogs.iter().any(|pattern| {
                pattern == "*" || table.starts_with(&format!("{}.", pattern.to_ascii_lowercase()))
            })
        })
        .map(String::as_str)
}

/// The group chain a query runs in, from top-level group to leaf, with templates expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// `(name, limits)` from the top-level group down to the leaf.
    pub chain: Vec<(String, GroupLimits)>,
    /// Dotted path of the leaf.
    pub path: String,
    /// Pool the group runs on.
    pub pool: String,
    /// Per-query memory limit of the leaf group, if set.
    pub memory_limit: Option<u64>,
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
        chain.push((n.name.clone(), n.limits));
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
        chain.push((value.replace('.', "_"), t.limits));
        node = t;
    }
    Placement {
        path: chain
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join("."),
        chain,
        pool: node.pool.clone(),
        memory_limit: node.memory_limit,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_facts_cache_answers_as_inspect_does_and_stays_bounded() {
        let cache = FactsCache::default();
        for sql in [
            "SELECT * FROM lineitem",
            "SELECT * FROM lineitem",
            "not sql at all",
        ] {
            assert_eq!(
                cache.inspect(sql).as_deref(),
                inspect(sql).as_ref(),
                "{sql}"
            );
        }
        for i in 0..50_000 {
            let sql = format!("SELECT {i} FROM orders, tpch.public.nation");
            assert_eq!(cache.inspect(&sql).unwrap().tables.len(), 2);
            assert!(cache.bytes() <= FACTS_CACHE_BYTES);
        }
        let huge = format!("SELECT 1{}", " ".repeat(FACTS_CACHE_BYTES));
        assert!(cache.inspect(&huge).is_some());
        assert!(cache.bytes() <= FACTS_CACHE_BYTES);
    }

    use super::*;
    use std::path::Path;

    fn example() -> Policy {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/admission.yaml");
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
    fn inspect_finds_kind_and_tables() {
        let s = inspect(
            "SELECT * FROM lineitem l JOIN quiver.public.orders o ON l.l_orderkey = o.o_orderkey",
        )
        .unwrap();
        assert_eq!(s.kind, StatementKind::Select);
        assert_eq!(
            s.tables,
            vec!["quiver.public.lineitem", "quiver.public.orders"]
        );
        assert_eq!(
            inspect("EXPLAIN SELECT 1").unwrap().kind,
            StatementKind::Explain
        );
        assert!(inspect("SELEC 1").is_none());
    }

    #[test]
    fn catalogs_restrict_tables() {
        let mut p = example();
        p.tenants[0].catalogs = vec!["other".into()];
        let tables = vec!["quiver.public.lineitem".to_owned()];
        assert_eq!(
            forbidden_table(&p, &id("quiet", "quiet"), &tables),
            Some("quiver.public.lineitem")
        );
        assert_eq!(forbidden_table(&p, &id("noisy", "noisy"), &tables), None);
    }
}
