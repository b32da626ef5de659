//! Who may read what: the one rule for a tenant's catalog patterns, applied by the gateway to
//! the tables a statement names and by the worker to the tables its plan scans.
//!
//! A pattern is `*` (everything), `catalog` or `catalog.schema`. Catalog metadata that lists
//! other tenants' objects (`SHOW`, `DESCRIBE`, `information_schema`) needs `*`: the Flight SQL
//! metadata commands answer everyone else with their own catalogs only.

/// The schema DataFusion serves catalog metadata from.
pub const INFORMATION_SCHEMA: &str = "information_schema";

/// True when `patterns` let their holder read `table` (`catalog.schema.table`). Names compare
/// without regard to ASCII case; a quoted name that differs only in case then reads as the
/// same object, which can only refuse more.
pub fn may_read(patterns: &[String], table: &str) -> bool {
    let table = table.to_ascii_lowercase();
    if table
        .split('.')
        .nth(1)
        .is_some_and(|schema| schema == INFORMATION_SCHEMA)
    {
        return may_read_metadata(patterns);
    }
    patterns.iter().any(|pattern| {
        pattern == "*" || {
            let pattern = pattern.to_ascii_lowercase();
            table
                .strip_prefix(&pattern)
                .is_some_and(|rest| rest.starts_with('.'))
        }
    })
}

/// True when `patterns` may read catalog metadata of every catalog.
pub fn may_read_metadata(patterns: &[String]) -> bool {
    patterns.iter().any(|p| p == "*")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn patterns_match_whole_name_parts() {
        assert!(may_read(&p(&["*"]), "quiver.public.lineitem"));
        assert!(may_read(&p(&["quiver"]), "quiver.public.lineitem"));
        assert!(may_read(&p(&["QUIVER.public"]), "quiver.PUBLIC.lineitem"));
        assert!(!may_read(&p(&["quiver.pub"]), "quiver.public.lineitem"));
        assert!(!may_read(&p(&["quiv"]), "quiver.public.lineitem"));
        assert!(!may_read(&p(&["other"]), "quiver.public.lineitem"));
        assert!(!may_read(&p(&[]), "quiver.public.lineitem"));
    }

    #[test]
    fn information_schema_needs_every_catalog() {
        assert!(!may_read(
            &p(&["quiver"]),
            "quiver.information_schema.tables"
        ));
        assert!(!may_read(
            &p(&["quiver.information_schema"]),
            "quiver.information_schema.tables"
        ));
        assert!(may_read(&p(&["*"]), "quiver.information_schema.tables"));
    }
}
