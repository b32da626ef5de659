//! The worker's own catalog check: every table a logical plan scans, subqueries included, must
//! be readable under the catalog patterns the gateway's grant carries. The gateway checked the
//! statement's text already; this check works on what will actually run, so a disagreement
//! between the two parsers can never become a leak.

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;

use super::engine::EngineError;
use crate::access;

/// Refuses `plan` if it reads anything `catalogs` do not allow.
pub fn check_plan(
    plan: &LogicalPlan,
    catalogs: &[String],
    default_catalog: &str,
    default_schema: &str,
) -> Result<(), EngineError> {
    let mut refused = None;
    let _ = plan.apply_with_subqueries(|node| {
        let table = match node {
            LogicalPlan::TableScan(scan) => {
                let name = scan
                    .table_name
                    .clone()
                    .resolve(default_catalog, default_schema);
                Some(format!("{}.{}.{}", name.catalog, name.schema, name.table))
            }
            // DESCRIBE reads a schema without scanning: metadata, which needs every catalog.
            LogicalPlan::DescribeTable(_) if !access::may_read_metadata(catalogs) => {
                Some("catalog metadata (DESCRIBE)".to_owned())
            }
            _ => None,
        };
        if let Some(table) = table
            && (table.starts_with("catalog metadata") || !access::may_read(catalogs, &table))
        {
            refused = Some(table);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match refused {
        Some(table) => Err(EngineError::Forbidden { table }),
        None => Ok(()),
    }
}
