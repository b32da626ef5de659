//! Answers to the Flight SQL metadata commands, read from the worker's warmed catalog.
//!
//! BI tools and ADBC call these before any query (server facts, catalogs, schemas, tables with
//! their Arrow schemas), so they are answered from memory without planning anything.

use std::sync::LazyLock;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandGetXdbcTypeInfo, Nullable, Searchable, SqlInfo, SqlNullOrdering,
    SqlOuterJoinsSupportLevel, SqlSupportedCaseSensitivity, SqlSupportedGroupBy,
    SqlSupportedResultSetConcurrency, SqlSupportedResultSetType, SqlSupportedSubqueries,
    SqlSupportedTransaction, SqlSupportedUnions, SqlSupportsConvert, SqlTransactionIsolationLevel,
    SupportedSqlGrammar, XdbcDataType, XdbcDatetimeSubcode,
};
use datafusion::execution::context::SessionState;
use tonic::Status;

use quiver_core::ticket::PREPARED_HANDLE_TTL;

/// The schema that holds DataFusion's own views; listed only when asked for by name.
const INFORMATION_SCHEMA: &str = "information_schema";
/// Table types this server has.
const TABLE_TYPES: [&str; 2] = ["TABLE", "VIEW"];

/// Server facts for `GetSqlInfo`, built once: enough for the Flight SQL JDBC driver's
/// `DatabaseMetaData` and ADBC's `GetInfo`, which read most of these on connect.
pub static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    // Server.
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
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(
        SqlInfo::FlightSqlServerStatementTimeout,
        i32::try_from(PREPARED_HANDLE_TTL.as_millis()).unwrap_or(i32::MAX),
    );
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    // Dialect: DataFusion's, read-only.
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(SqlInfo::SqlKeywords, KEYWORDS);
    b.append(SqlInfo::SqlNumericFunctions, NUMERIC_FUNCTIONS);
    b.append(SqlInfo::SqlStringFunctions, STRING_FUNCTIONS);
    b.append(SqlInfo::SqlSystemFunctions, SYSTEM_FUNCTIONS);
    b.append(SqlInfo::SqlDatetimeFunctions, DATETIME_FUNCTIONS);
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsConvert, supports_convert());
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(
        SqlInfo::SqlSupportedGroupBy,
        bits(&[
            SqlSupportedGroupBy::SqlGroupByUnrelated as i32,
            SqlSupportedGroupBy::SqlGroupByBeyondSelect as i32,
        ]),
    );
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(
        SqlInfo::SqlSupportedGrammar,
        bits(&[
            SupportedSqlGrammar::SqlMinimumGrammar as i32,
            SupportedSqlGrammar::SqlCoreGrammar as i32,
        ]),
    );
    b.append(
        SqlInfo::SqlAnsi92SupportedLevel,
        // Bit 0: ANSI92_ENTRY_SQL (arrow-flight does not export that enum).
        bits(&[0]),
    );
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    b.append(
        SqlInfo::SqlOuterJoinsSupportLevel,
        SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32,
    );
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    b.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    b.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(
        SqlInfo::SqlSupportedSubqueries,
        bits(&[
            SqlSupportedSubqueries::SqlSubqueriesInComparisons as i32,
            SqlSupportedSubqueries::SqlSubqueriesInExists as i32,
            SqlSupportedSubqueries::SqlSubqueriesInIns as i32,
        ]),
    );
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(
        SqlInfo::SqlSupportedUnions,
        bits(&[
            SqlSupportedUnions::SqlUnion as i32,
            SqlSupportedUnions::SqlUnionAll as i32,
        ]),
    );
    // Limits: 0 means "no known limit" to JDBC.
    for info in [
        SqlInfo::SqlMaxBinaryLiteralLength,
        SqlInfo::SqlMaxCharLiteralLength,
        SqlInfo::SqlMaxColumnNameLength,
        SqlInfo::SqlMaxColumnsInGroupBy,
        SqlInfo::SqlMaxColumnsInIndex,
        SqlInfo::SqlMaxColumnsInOrderBy,
        SqlInfo::SqlMaxColumnsInSelect,
        SqlInfo::SqlMaxColumnsInTable,
        SqlInfo::SqlMaxConnections,
        SqlInfo::SqlMaxCursorNameLength,
        SqlInfo::SqlMaxIndexLength,
        SqlInfo::SqlDbSchemaNameLength,
        SqlInfo::SqlMaxProcedureNameLength,
        SqlInfo::SqlMaxCatalogNameLength,
        SqlInfo::SqlMaxRowSize,
        SqlInfo::SqlMaxStatementLength,
        SqlInfo::SqlMaxStatements,
        SqlInfo::SqlMaxTableNameLength,
        SqlInfo::SqlMaxTablesInSelect,
        SqlInfo::SqlMaxUsernameLength,
    ] {
        b.append(info, 0i64);
    }
    b.append(SqlInfo::SqlMaxRowSizeIncludesBlobs, false);
    // Transactions: none; every statement reads a consistent snapshot of immutable files.
    b.append(
        SqlInfo::SqlDefaultTransactionIsolation,
        SqlTransactionIsolationLevel::SqlTransactionNone as i32,
    );
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(
        SqlInfo::SqlSupportedTransactionsIsolationLevels,
        bits(&[SqlTransactionIsolationLevel::SqlTransactionNone as i32]),
    );
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, true);
    b.append(
        SqlInfo::SqlSupportedResultSetTypes,
        bits(&[SqlSupportedResultSetType::SqlResultSetTypeForwardOnly as i32]),
    );
    let read_only =
        bits(&[SqlSupportedResultSetConcurrency::SqlResultSetConcurrencyReadOnly as i32]);
    b.append(
        SqlInfo::SqlSupportedConcurrenciesForResultSetUnspecified,
        read_only,
    );
    b.append(
        SqlInfo::SqlSupportedConcurrenciesForResultSetForwardOnly,
        read_only,
    );
    b.append(
        SqlInfo::SqlSupportedConcurrenciesForResultSetScrollSensitive,
        0i32,
    );
    b.append(
        SqlInfo::SqlSupportedConcurrenciesForResultSetScrollInsensitive,
        0i32,
    );
    b.append(SqlInfo::SqlBatchUpdatesSupported, false);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().expect("static SqlInfo values are valid")
});

/// Reserved words beyond SQL:2003 that DataFusion's parser treats specially.
const KEYWORDS: &[&str] = &[
    "ANALYZE", "ARRAY", "EXPLAIN", "ILIKE", "LIMIT", "OFFSET", "QUALIFY", "SHOW", "UNNEST",
];
const NUMERIC_FUNCTIONS: &[&str] = &[
    "ABS", "ACOS", "ASIN", "ATAN", "ATAN2", "CEIL", "COS", "COT", "DEGREES", "EXP", "FLOOR", "LN",
    "LOG", "LOG10", "LOG2", "MOD", "PI", "POWER", "RADIANS", "RANDOM", "ROUND", "SIGN", "SIN",
    "SQRT", "TAN", "TRUNC",
];
const STRING_FUNCTIONS: &[&str] = &[
    "ASCII",
    "BTRIM",
    "CHAR_LENGTH",
    "CHR",
    "CONCAT",
    "CONCAT_WS",
    "INITCAP",
    "LEFT",
    "LENGTH",
    "LOWER",
    "LPAD",
    "LTRIM",
    "MD5",
    "OCTET_LENGTH",
    "REGEXP_REPLACE",
    "REPEAT",
    "REPLACE",
    "REVERSE",
    "RIGHT",
    "RPAD",
    "RTRIM",
    "SPLIT_PART",
    "STARTS_WITH",
    "STRPOS",
    "SUBSTR",
    "SUBSTRING",
    "TO_HEX",
    "TRANSLATE",
    "TRIM",
    "UPPER",
];
const SYSTEM_FUNCTIONS: &[&str] = &["ARROW_TYPEOF", "COALESCE", "NULLIF", "NVL", "VERSION"];
const DATETIME_FUNCTIONS: &[&str] = &[
    "CURRENT_DATE",
    "CURRENT_TIME",
    "DATE_BIN",
    "DATE_PART",
    "DATE_TRUNC",
    "EXTRACT",
    "FROM_UNIXTIME",
    "NOW",
    "TO_DATE",
    "TO_TIMESTAMP",
    "TO_UNIXTIME",
];

/// An int32 bitmask with the given bit positions set.
fn bits(positions: &[i32]) -> i32 {
    positions.iter().fold(0, |mask, bit| mask | (1 << bit))
}

/// `CAST` conversions DataFusion supports, from each type to the types it converts to.
fn supports_convert() -> std::collections::HashMap<i32, Vec<i32>> {
    use SqlSupportsConvert as C;
    let numeric = [
        C::SqlConvertBigint,
        C::SqlConvertDecimal,
        C::SqlConvertFloat,
        C::SqlConvertInteger,
        C::SqlConvertNumeric,
        C::SqlConvertReal,
        C::SqlConvertSmallint,
        C::SqlConvertTinyint,
        C::SqlConvertBit,
    ];
    let text = [
        C::SqlConvertChar,
        C::SqlConvertVarchar,
        C::SqlConvertLongvarchar,
    ];
    let temporal = [C::SqlConvertDate, C::SqlConvertTimestamp, C::SqlConvertTime];
    let to = |groups: &[&[C]]| -> Vec<i32> {
        groups
            .iter()
            .flat_map(|g| g.iter().map(|c| *c as i32))
            .collect()
    };
    let mut map = std::collections::HashMap::new();
    for from in numeric {
        map.insert(from as i32, to(&[&numeric, &text]));
    }
    for from in text {
        map.insert(from as i32, to(&[&numeric, &text, &temporal]));
    }
    for from in temporal {
        map.insert(from as i32, to(&[&text, &temporal]));
    }
    map
}

/// Types for `GetXdbcTypeInfo`: the SQL types DataFusion plans, by their JDBC codes.
static XDBC_TYPES: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let base = |name: &str, data_type: XdbcDataType| XdbcTypeInfo {
        type_name: name.to_owned(),
        data_type,
        column_size: None,
        literal_prefix: None,
        literal_suffix: None,
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: false,
        searchable: Searchable::Full,
        unsigned_attribute: None,
        fixed_prec_scale: false,
        auto_increment: None,
        local_type_name: Some(name.to_owned()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: data_type,
        datetime_subcode: None,
        num_prec_radix: None,
        interval_precision: None,
    };
    let number = |name: &str, t: XdbcDataType, digits: i32| XdbcTypeInfo {
        column_size: Some(digits),
        unsigned_attribute: Some(false),
        num_prec_radix: Some(10),
        ..base(name, t)
    };
    let text = |name: &str, t: XdbcDataType| XdbcTypeInfo {
        column_size: Some(i32::MAX),
        literal_prefix: Some("'".into()),
        literal_suffix: Some("'".into()),
        case_sensitive: true,
        ..base(name, t)
    };
    let temporal = |name: &str, t: XdbcDataType, sub: XdbcDatetimeSubcode| XdbcTypeInfo {
        literal_prefix: Some(format!("{name} '")),
        literal_suffix: Some("'".into()),
        sql_data_type: XdbcDataType::XdbcDatetime,
        datetime_subcode: Some(sub),
        ..base(name, t)
    };
    b.append(base("BOOLEAN", XdbcDataType::XdbcBit));
    b.append(number("TINYINT", XdbcDataType::XdbcTinyint, 3));
    b.append(number("SMALLINT", XdbcDataType::XdbcSmallint, 5));
    b.append(number("INTEGER", XdbcDataType::XdbcInteger, 10));
    b.append(number("BIGINT", XdbcDataType::XdbcBigint, 19));
    b.append(number("REAL", XdbcDataType::XdbcReal, 7));
    b.append(number("DOUBLE", XdbcDataType::XdbcDouble, 15));
    b.append(XdbcTypeInfo {
        create_params: Some(vec!["precision".into(), "scale".into()]),
        fixed_prec_scale: true,
        minimum_scale: Some(0),
        maximum_scale: Some(38),
        ..number("DECIMAL", XdbcDataType::XdbcDecimal, 38)
    });
    b.append(text("VARCHAR", XdbcDataType::XdbcVarchar));
    b.append(XdbcTypeInfo {
        column_size: Some(i32::MAX),
        literal_prefix: Some("X'".into()),
        literal_suffix: Some("'".into()),
        searchable: Searchable::Basic,
        ..base("BYTEA", XdbcDataType::XdbcVarbinary)
    });
    b.append(temporal(
        "DATE",
        XdbcDataType::XdbcDate,
        XdbcDatetimeSubcode::XdbcSubcodeYear,
    ));
    b.append(temporal(
        "TIME",
        XdbcDataType::XdbcTime,
        XdbcDatetimeSubcode::XdbcSubcodeTime,
    ));
    b.append(temporal(
        "TIMESTAMP",
        XdbcDataType::XdbcTimestamp,
        XdbcDatetimeSubcode::XdbcSubcodeTimestamp,
    ));
    b.build().expect("static XdbcTypeInfo values are valid")
});

/// `GetXdbcTypeInfo`, optionally for one JDBC type code.
pub fn xdbc_type_info(cmd: CommandGetXdbcTypeInfo) -> Result<(SchemaRef, RecordBatch), Status> {
    let builder = cmd.into_builder(&XDBC_TYPES);
    let schema = builder.schema();
    Ok((schema, builder.build().map_err(arrow_status)?))
}

/// Which key command an empty answer is for: the catalog declares no primary or foreign keys
/// (Parquet has none), so these answer with no rows in the schema the spec gives.
#[derive(Debug, Clone, Copy)]
pub enum Keys {
    /// `GetPrimaryKeys`.
    Primary,
    /// `GetExportedKeys`, `GetImportedKeys`, `GetCrossReference`.
    Foreign,
}

/// An empty answer for a key command.
pub fn no_keys(kind: Keys) -> Result<(SchemaRef, RecordBatch), Status> {
    use arrow::datatypes::{DataType, Field, Schema};
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let fields = match kind {
        Keys::Primary => vec![
            text("catalog_name", true),
            text("db_schema_name", true),
            text("table_name", false),
            text("column_name", false),
            Field::new("key_sequence", DataType::Int32, false),
            text("key_name", true),
        ],
        Keys::Foreign => vec![
            text("pk_catalog_name", true),
            text("pk_db_schema_name", true),
            text("pk_table_name", false),
            text("pk_column_name", false),
            text("fk_catalog_name", true),
            text("fk_db_schema_name", true),
            text("fk_table_name", false),
            text("fk_column_name", false),
            Field::new("key_sequence", DataType::Int32, false),
            text("fk_key_name", true),
            text("pk_key_name", true),
            Field::new("update_rule", DataType::UInt8, false),
            Field::new("delete_rule", DataType::UInt8, false),
        ],
    };
    let schema = std::sync::Arc::new(Schema::new(fields));
    Ok((schema.clone(), RecordBatch::new_empty(schema)))
}

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
