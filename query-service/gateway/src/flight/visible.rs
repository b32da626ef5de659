//! What a tenant may see of the catalog: `GetCatalogs`, `GetDbSchemas` and `GetTables` answers
//! lose the rows outside the tenant's allowed catalogs, so a BI tool only offers what its
//! queries may read.
//!
//! Workers answer metadata for the whole catalog and know nothing of tenants; the gateway
//! filters. Metadata answers are a few rows, so decoding and re-encoding them here costs little,
//! unlike query results, which the gateway never decodes.

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::DataType;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use futures::{StreamExt, TryStreamExt};
use tonic::Status;

use crate::admission::config::Policy;
use crate::auth::Identity;
use crate::dispatch::FlightDataStream;

/// The catalog patterns a tenant is limited to, lower-cased; `None` when it may see everything.
pub fn scope(policy: &Policy, identity: &Identity) -> Option<Vec<String>> {
    let tenant = policy.tenant(&identity.tenant)?;
    if tenant.catalogs.iter().any(|p| p == "*") {
        return None;
    }
    Some(
        tenant
            .catalogs
            .iter()
            .map(|p| p.to_ascii_lowercase())
            .collect(),
    )
}

/// True when an object at `path` (catalog, then schema and table if known) is, or leads to,
/// something a pattern allows: `quiver` allows the catalog and all below it; `quiver.public`
/// allows that schema, its tables, and the catalog that holds it.
pub fn visible(patterns: &[String], path: &[&str]) -> bool {
    let name = path.join(".").to_ascii_lowercase();
    patterns.iter().any(|p| {
        p == "*"
            || *p == name
            || name.starts_with(&format!("{p}."))
            || p.starts_with(&format!("{name}."))
    })
}

/// Drops the rows of a metadata answer the patterns do not allow.
pub fn filter(stream: FlightDataStream, patterns: Vec<String>) -> FlightDataStream {
    let batches = FlightRecordBatchStream::new_from_flight_data(
        stream.map_err(|status| FlightError::Tonic(Box::new(status))),
    )
    .map(move |batch| batch.and_then(|b| keep(&b, &patterns).map_err(FlightError::from)));
    Box::pin(
        FlightDataEncoderBuilder::new()
            .build(batches)
            .map_err(Status::from),
    )
}

fn keep(batch: &RecordBatch, patterns: &[String]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .filter(|c| *c.data_type() == DataType::Utf8)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
    };
    let Some(catalogs) = column("catalog_name") else {
        return Ok(batch.clone());
    };
    let schemas = column("db_schema_name");
    let tables = column("table_name");
    let mask: BooleanArray = (0..batch.num_rows())
        .map(|row| {
            let mut path = vec![catalogs.value(row)];
            if let Some(s) = schemas.filter(|s| !s.is_null(row)) {
                path.push(s.value(row));
                if let Some(t) = tables.filter(|t| !t.is_null(row)) {
                    path.push(t.value(row));
                }
            }
            Some(visible(patterns, &path))
        })
        .collect();
    filter_record_batch(batch, &mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn patterns_allow_their_subtree_and_the_path_to_it() {
        let p = vec!["quiver.public".to_owned()];
        assert!(visible(&p, &["quiver"]));
        assert!(visible(&p, &["quiver", "public"]));
        assert!(visible(&p, &["QUIVER", "public", "nation"]));
        assert!(!visible(&p, &["quiver", "information_schema"]));
        assert!(!visible(&p, &["other"]));
        assert!(!visible(&p, &["quiver", "public_x"]));
        let all = vec!["quiver".to_owned()];
        assert!(visible(&all, &["quiver", "anything", "t"]));
    }

    #[test]
    fn filters_rows_by_catalog_schema_and_table() {
        let batch = RecordBatch::try_from_iter([
            (
                "catalog_name",
                Arc::new(StringArray::from(vec!["quiver", "quiver", "other"])) as _,
            ),
            (
                "db_schema_name",
                Arc::new(StringArray::from(vec!["public", "private", "public"])) as _,
            ),
            (
                "table_name",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as Arc<dyn Array>,
            ),
        ])
        .unwrap();
        let kept = keep(&batch, &["quiver.public".to_owned()]).unwrap();
        assert_eq!(kept.num_rows(), 1);
        let names = kept
            .column_by_name("table_name")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_owned();
        assert_eq!(names, "a");
    }
}
