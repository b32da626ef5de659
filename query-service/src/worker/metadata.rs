//! Answers to the Flight SQL metadata commands, read from the worker's warmed catalog.
//!
//! BI tools and ADBC call these before any query (server facts, catalogs, schemas, tables with
//! their Arrow schemas), so they are answered from memory without planning anything.

use std::sync::LazyLock;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, SqlInfo, SqlSupportedTransaction,
};
use datafusion::execution::context::SessionState;
use tonic::Status;

/// The schema that holds DataFusion's own views; listed only when asked for by name.
const INFORMATION_SCHEMA: &str = "information_schema";
/// Table types this server has.
const TABLE_TYPES: [&str; 2] = ["TABLE", "VIEW"];

/// Static server facts for `GetSqlInfo`, built once.
pub static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Quiver");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.build().expect("static SqlInfo values are valid")
});

/// `GetSqlInfo`.
pub fn sql_info(cmd: CommandGetSqlInfo) -> Result<(SchemaRef, RecordBatch), Status> {
    let builder = cmd.into_builder(&SQL_INFO);
    let schema = builder.schema();
    let batch = builder.build().map_err(arrow_status)?;
    Ok((schema, batch))
}

/// `GetCatalogs`.
pub fn catalogs(state: &SessionState) -> Result<(SchemaRef, RecordBatch), Status> {
    let mut builder = CommandGetCatalogs {}.into_builder();
    for name in state.catalog_list().catalog_names() {
        builder.append(name);
    }
    let schema = builder.schema();
    Ok((schema, builder.build().map_err(arrow_status)?))
}

/// `GetDbSchemas`.
pub fn db_schemas(
    state: &SessionState,
    cmd: CommandGetDbSchemas,
) -> Result<(SchemaRef, RecordBatch), Status> {
    let show_info = cmd.db_schema_filter_pattern.as_deref() == Some(INFORMATION_SCHEMA);
    let mut builder = cmd.into_builder();
    for (catalog, schema) in schemas(state, show_info) {
        builder.append(catalog, schema);
    }
    let schema = builder.schema();
    Ok((schema, builder.build().map_err(arrow_status)?))
}

/// `GetTables`, with each table's Arrow schema when asked.
pub async fn tables(
    state: &SessionState,
    cmd: CommandGetTables,
) -> Result<(SchemaRef, RecordBatch), Status> {
    let show_info = cmd.db_schema_filter_pattern.as_deref() == Some(INFORMATION_SCHEMA);
    let mut builder = cmd.into_builder();
    for (catalog, schema_name) in schemas(state, show_info) {
        let Some(schema) = state
            .catalog_list()
            .catalog(&catalog)
            .and_then(|c| c.schema(&schema_name))
        else {
            continue;
        };
        let mut names = schema.table_names();
        names.sort();
        for name in names {
            let Some(table) = schema.table(&name).await.map_err(|e| {
                Status::internal(format!(
                    "cannot read table {catalog}.{schema_name}.{name}: {e}"
                ))
            })?
            else {
                continue;
            };
            let table_type = match table.table_type() {
                datafusion::datasource::TableType::View => "VIEW",
                _ => "TABLE",
            };
            builder
                .append(&catalog, &schema_name, &name, table_type, &table.schema())
                .map_err(arrow_status)?;
        }
    }
    let schema = builder.schema();
    Ok((schema, builder.build().map_err(arrow_status)?))
}

/// `GetTableTypes`.
pub fn table_types() -> Result<(SchemaRef, RecordBatch), Status> {
    let mut builder = CommandGetTableTypes {}.into_builder();
    for t in TABLE_TYPES {
        builder.append(t);
    }
    let schema = builder.schema();
    Ok((schema, builder.build().map_err(arrow_status)?))
}

/// Every (catalog, schema) pair, sorted; DataFusion's `information_schema` only on request.
fn schemas(state: &SessionState, include_information_schema: bool) -> Vec<(String, String)> {
    let list = state.catalog_list();
    let mut out = Vec::new();
    for catalog in list.catalog_names() {
        if let Some(c) = list.catalog(&catalog) {
            for schema in c.schema_names() {
                if schema != INFORMATION_SCHEMA || include_information_schema {
                    out.push((catalog.clone(), schema));
                }
            }
        }
    }
    out.sort();
    out
}

fn arrow_status(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("cannot build metadata result: {e}"))
}
