//! The worker's own catalog check: every table a logical plan scans, subqueries included, must
//! be readable under the catalog patterns the gateway's grant carries. The gateway checked the
//! statement's text already; this check works on what will actually run, so a disagreement
//! between the two parsers can never become a leak.

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;

use quiver_core::access;

/// What a logical plan reads.
#[derive(Debug, Default, PartialEq)]
pub struct Reads {
    /// Every table it scans, subqueries included, as `catalog.schema.table`.
    pub tables: Vec<String>,
    /// It describes a table (`DESCRIBE`): reads a schema without scanning it.
    pub describes: bool,
}

/// The tables `plan` scans and whether it describes one, names resolved against the defaults.
pub fn reads(plan: &LogicalPlan, default_catalog: &str, default_schema: &str) -> Reads {
    let mut reads = Reads::default();
    let _ = plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::TableScan(scan) => {
                let name = scan
                    .table_name
                    .clone()
                    .resolve(default_catalog, default_schema);
                reads
                    .tables
                    .push(format!("{}.{}.{}", name.catalog, name.schema, name.table));
            }
            LogicalPlan::DescribeTable(_) => reads.describes = true,
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    reads.tables.sort();
    reads.tables.dedup();
    reads
}

/// What a plan may not read: a table, or catalog metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    /// The table (`catalog.schema.table`) or "catalog metadata (DESCRIBE)".
    pub table: String,
}

/// Refuses `plan` if it reads anything `catalogs` do not allow.
pub fn check_plan(
    plan: &LogicalPlan,
    catalogs: &[String],
    default_catalog: &str,
    default_schema: &str,
) -> Result<(), Forbidden> {
    let reads = reads(plan, default_catalog, default_schema);
    // DESCRIBE is metadata, which needs every catalog.
    if reads.describes && !access::may_read_metadata(catalogs) {
        return Err(Forbidden {
            table: "catalog metadata (DESCRIBE)".to_owned(),
        });
    }
    match reads
        .tables
        .into_iter()
        .find(|table| !access::may_read(catalogs, table))
    {
        Some(table) => Err(Forbidden { table }),
        None => Ok(()),
    }
}
