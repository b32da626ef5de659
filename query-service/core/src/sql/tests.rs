use super::*;
use datafusion::sql::sqlparser::ast::visit_relations;
use std::ops::ControlFlow;

fn chain(op: &str, terms: usize) -> String {
    format!("SELECT 1{}", format!(" {op} 1").repeat(terms - 1))
}

#[test]
fn placeholders_are_spliced_and_nothing_else_changes() {
    let cases = [
        (
            "SELECT ? AS a, 'it''s' AS b",
            "SELECT $1 AS a, 'it''s' AS b",
        ),
        (
            "SELECT ?, 'x'' UNION SELECT l_comment, ''y'' FROM lineitem --'",
            "SELECT $1, 'x'' UNION SELECT l_comment, ''y'' FROM lineitem --'",
        ),
        (
            "SELECT '?' AS q, \"a?\" FROM t -- what?\nWHERE a = ? /* ? */ AND b < ?",
            "SELECT '?' AS q, \"a?\" FROM t -- what?\nWHERE a = $1 /* ? */ AND b < $2",
        ),
        ("SELECT 'é…' || ?, ?", "SELECT 'é…' || $1, $2"),
        ("SELECT $1", "SELECT $1"),
        ("SELECT 1", "SELECT 1"),
    ];
    for (sql, want) in cases {
        assert_eq!(number_placeholders(sql).unwrap(), want, "{sql}");
    }
    assert_eq!(
        number_placeholders("SELECT ?, $1"),
        Err(SqlError::MixedPlaceholders)
    );
}

#[test]
fn numbers_question_marks_outside_strings() {
    assert_eq!(
        number_placeholders("SELECT '?' AS q, a FROM t WHERE a = ? AND b < ?").unwrap(),
        "SELECT '?' AS q, a FROM t WHERE a = $1 AND b < $2"
    );
    assert_eq!(number_placeholders("SELECT $1").unwrap(), "SELECT $1");
}

#[test]
fn size_and_emptiness_are_checked() {
    assert!(matches!(
        check_shape("SELECT 1", 4),
        Err(SqlError::TooLarge { bytes: 8, limit: 4 })
    ));
    assert_eq!(
        check_shape("  -- only a comment\n", 100),
        Err(SqlError::Empty)
    );
    assert_eq!(check_shape("", 100), Err(SqlError::Empty));
    assert!(matches!(
        check_shape("SELECT 'open", 100),
        Err(SqlError::Syntax(_))
    ));
}

#[test]
fn deep_shapes_are_refused_before_parsing() {
    let deep = [
        chain("+", 5_000),
        chain("AND", 5_000),
        format!(
            "SELECT {}1{}",
            "(".repeat(MAX_SQL_DEPTH + 1),
            ")".repeat(MAX_SQL_DEPTH + 1)
        ),
        format!("SELECT {}true", "NOT ".repeat(MAX_SQL_DEPTH + 1)),
        format!("SELECT {}1", "- ".repeat(MAX_SQL_DEPTH + 1)),
        vec!["SELECT 1"; MAX_SQL_DEPTH + 1].join(" UNION ALL "),
        format!(
            "SELECT {}1{}",
            "CASE WHEN true THEN ".repeat(MAX_SQL_DEPTH),
            " END".repeat(MAX_SQL_DEPTH)
        ),
        format!("SELECT 1{}", "::int".repeat(MAX_SQL_DEPTH + 1)),
    ];
    for sql in &deep {
        assert_eq!(
            check_shape(sql, usize::MAX),
            Err(SqlError::TooDeep {
                limit: MAX_SQL_DEPTH
            }),
            "{}",
            &sql[..60]
        );
    }
    // Siblings are not nesting: a long select list or IN list is fine.
    let wide = format!("SELECT {}", vec!["a + b"; 5_000].join(", "));
    check_shape(&wide, usize::MAX).unwrap();
    let in_list = format!("SELECT 1 WHERE 1 IN ({})", vec!["1"; 10_000].join(","));
    check_shape(&in_list, usize::MAX).unwrap();
}

#[test]
fn every_tpch_query_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries/tpch");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let sql = std::fs::read_to_string(&path).unwrap();
        check_shape(&sql, DEFAULT_MAX_SQL_BYTES).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        parse_one(&sql).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        n += 1;
    }
    assert_eq!(n, 22);
}

#[test]
fn one_statement_only() {
    assert_eq!(
        parse_one("SELECT 1; SELECT 2"),
        Err(SqlError::MultipleStatements(2))
    );
    assert!(parse_one("SELECT 1;").is_ok());
    assert!(matches!(parse_one("SELEC 1"), Err(SqlError::Syntax(_))));
}

/// The bound is safe: the deepest trees it lets through parse, are walked and drop on a thread
/// with the default 2 MiB stack.
#[test]
fn the_deepest_accepted_trees_fit_a_small_stack() {
    let shapes = [
        chain("+", MAX_SQL_DEPTH - 2),
        chain("OR", MAX_SQL_DEPTH - 2),
        format!("SELECT {}true", "NOT ".repeat(MAX_SQL_DEPTH - 2)),
        vec!["SELECT 1"; MAX_SQL_DEPTH - 2].join(" UNION ALL "),
    ];
    for sql in shapes {
        check_shape(&sql, usize::MAX).unwrap();
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let statement = parse_one(&sql);
                if let Ok(datafusion::sql::parser::Statement::Statement(statement)) = &statement {
                    let _ = visit_relations(&**statement, |_| ControlFlow::<()>::Continue(()));
                }
                drop(statement);
            })
            .unwrap();
        handle.join().expect("no stack overflow");
    }
}
