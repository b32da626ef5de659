//! Prepared-statement parameters: how the parameter schema and a bound row travel inside a
//! signed handle, and how a client's parameter batch is checked against the schema.
//!
//! ```text
//!  worker: CreatePreparedStatement ──► parameter schema ──► handle { sql, param_schema }
//!  gateway: DoPut(handle, batch) ──► bind (check, cast) ──► handle { sql, param_schema, params }
//!  worker: GetFlightInfo / DoGet(handle) ──► scalars ──► DataFusion placeholders $1..$n
//! ```
//!
//! The gateway checks bound values because it is the cheapest place to refuse them: a worker
//! would only plan the statement to fail in the same way.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::{CastOptions, can_cast_types, cast_with_options};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use datafusion::scalar::ScalarValue;

/// Why a parameter batch or an encoded parameter value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    /// The client bound a different number of values than the statement has placeholders.
    #[error("the statement takes {expected} parameter(s), {got} were bound")]
    Count {
        /// Placeholders in the statement.
        expected: usize,
        /// Columns in the bound batch.
        got: usize,
    },
    /// A value's type cannot stand for its placeholder.
    #[error("parameter {name} expects {expected}, got {got}")]
    Type {
        /// The placeholder (`$1`, …).
        name: String,
        /// Its type, as the statement's plan infers it.
        expected: DataType,
        /// The bound column's type.
        got: DataType,
    },
    /// A value does not convert to its placeholder's type (e.g. `'abc'` for an integer).
    #[error("parameter {name}: {reason}")]
    Value {
        /// The placeholder.
        name: String,
        /// Arrow's explanation.
        reason: String,
    },
    /// Queries run once per bound row; several rows at once are not supported.
    #[error("bind exactly one row of parameters per execution, got {0} rows")]
    Rows(usize),
    /// The statement has placeholders and nothing has been bound yet.
    #[error("the statement takes {0} parameter(s); bind them with DoPut before executing")]
    Unbound(usize),
    /// Bytes that are not the Arrow IPC this module writes.
    #[error("invalid encoded parameters: {0}")]
    Encoding(String),
}

/// Encodes a schema for a handle (base64 Arrow IPC stream with no batches).
pub fn encode_schema(schema: &Schema) -> Result<String, ParamError> {
    encode(schema, None)
}

/// Decodes a schema written by [`encode_schema`].
pub fn decode_schema(text: &str) -> Result<SchemaRef, ParamError> {
    Ok(reader(text)?.schema())
}

/// Encodes a bound row for a handle.
pub fn encode_row(batch: &RecordBatch) -> Result<String, ParamError> {
    encode(batch.schema_ref(), Some(batch))
}

/// Decodes a bound row into one scalar per placeholder, in order.
pub fn decode_row(text: &str) -> Result<Vec<ScalarValue>, ParamError> {
    let mut reader = reader(text)?;
    let batch = reader
        .next()
        .ok_or_else(|| ParamError::Encoding("no parameter row".into()))?
        .map_err(|e| ParamError::Encoding(e.to_string()))?;
    batch
        .columns()
        .iter()
        .map(|column| {
            ScalarValue::try_from_array(column, 0).map_err(|e| ParamError::Encoding(e.to_string()))
        })
        .collect()
}

fn encode(schema: &Schema, batch: Option<&RecordBatch>) -> Result<String, ParamError> {
    let fail = |e: arrow::error::ArrowError| ParamError::Encoding(e.to_string());
    let mut buf = Vec::new();
    let mut writer = StreamWriter::try_new(&mut buf, schema).map_err(fail)?;
    if let Some(batch) = batch {
        writer.write(batch).map_err(fail)?;
    }
    writer.finish().map_err(fail)?;
    drop(writer);
    Ok(STANDARD.encode(buf))
}

fn reader(text: &str) -> Result<StreamReader<Cursor<Vec<u8>>>, ParamError> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| ParamError::Encoding(e.to_string()))?;
    StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| ParamError::Encoding(e.to_string()))
}

/// Refuses a prepared statement whose placeholders have not been bound.
pub fn check_bound(handle: &crate::ticket::QueryTicket) -> Result<(), ParamError> {
    if handle.params.is_some() {
        return Ok(());
    }
    match &handle.param_schema {
        Some(text) => match decode_schema(text)?.fields().len() {
            0 => Ok(()),
            n => Err(ParamError::Unbound(n)),
        },
        None => Ok(()),
    }
}

/// Checks a client's parameter batches against the statement's parameter schema and returns the
/// one row, cast to the placeholders' types. A placeholder whose type the plan could not infer
/// (type `Null`) takes the bound value as it is.
pub fn bind(expected: &Schema, batches: &[RecordBatch]) -> Result<RecordBatch, ParamError> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let got = batches.first().map_or(0, RecordBatch::num_columns);
    if got != expected.fields().len() {
        return Err(ParamError::Count {
            expected: expected.fields().len(),
            got,
        });
    }
    if rows != 1 {
        return Err(ParamError::Rows(rows));
    }
    let batch = batches
        .iter()
        .find(|b| b.num_rows() == 1)
        .expect("one batch holds the one row");
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut fields = Vec::with_capacity(got);
    let mut columns = Vec::with_capacity(got);
    for (field, column) in expected.fields().iter().zip(batch.columns()) {
        let want = field.data_type();
        let have = column.data_type();
        let column = if want == have || *want == DataType::Null {
            column.clone()
        } else if compatible(want, have) {
            cast_with_options(column, want, &options).map_err(|e| ParamError::Value {
                name: field.name().clone(),
                reason: e.to_string(),
            })?
        } else {
            return Err(ParamError::Type {
                name: field.name().clone(),
                expected: want.clone(),
                got: have.clone(),
            });
        };
        fields.push(Arc::new(
            field
                .as_ref()
                .clone()
                .with_data_type(column.data_type().clone())
                .with_nullable(true),
        ));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| ParamError::Value {
        name: "batch".into(),
        reason: e.to_string(),
    })
}

/// Casts a client may rely on: within numbers (Python ints arrive as Int64 for an Int32
/// column), within strings, within temporal types, and a null for anything. Text for a number
/// or a number for text is refused, so a mistyped bind fails here and not as an odd result.
fn compatible(want: &DataType, have: &DataType) -> bool {
    let family = |t: &DataType| {
        if t.is_numeric() {
            1
        } else if matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            2
        } else if t.is_temporal() {
            3
        } else if *t == DataType::Boolean {
            4
        } else if *t == DataType::Null {
            0
        } else {
            5
        }
    };
    (family(have) == 0 || family(want) == family(have)) && can_cast_types(have, want)
}

/// The parameter schema of a plan: one nullable field per placeholder `$1..$n`, in order, typed
/// as DataFusion inferred it (`Null` where it could not).
pub fn parameter_schema(
    types: std::collections::HashMap<String, Option<DataType>>,
) -> Result<Schema, String> {
    let mut numbered = types
        .into_iter()
        .map(|(name, t)| {
            name.strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| (n, name.clone(), t))
                .ok_or_else(|| format!("named placeholder {name} is not supported; use ? or $1"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    numbered.sort_by_key(|(n, _, _)| *n);
    if let Some(gap) = numbered
        .iter()
        .enumerate()
        .find(|(i, (n, _, _))| *n != i + 1)
    {
        return Err(format!(
            "placeholder ${} is used but ${} is not",
            gap.1.0,
            gap.0 + 1
        ));
    }
    Ok(Schema::new(
        numbered
            .into_iter()
            .map(|(_, name, t)| {
                arrow::datatypes::Field::new(name, t.unwrap_or(DataType::Null), true)
            })
            .collect::<Vec<_>>(),
    ))
}

/// A parameter the statement cannot take is the client's to fix.
impl From<ParamError> for tonic::Status {
    fn from(err: ParamError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray};
    use arrow::datatypes::Field;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("$1", DataType::Int32, true),
            Field::new("$2", DataType::Utf8, true),
        ])
    }

    fn batch(a: Int64Array, b: StringArray) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("a", Arc::new(a) as arrow::array::ArrayRef),
            ("b", Arc::new(b) as _),
        ])
        .unwrap()
    }

    #[test]
    fn binds_and_round_trips_one_row() {
        let row = bind(
            &schema(),
            &[batch(
                Int64Array::from(vec![7]),
                StringArray::from(vec!["x"]),
            )],
        )
        .unwrap();
        assert_eq!(row.column(0).data_type(), &DataType::Int32);
        let text = encode_row(&row).unwrap();
        assert_eq!(
            decode_row(&text).unwrap(),
            vec![
                ScalarValue::Int32(Some(7)),
                ScalarValue::Utf8(Some("x".into()))
            ]
        );
        let s = encode_schema(&schema()).unwrap();
        assert_eq!(decode_schema(&s).unwrap().as_ref(), &schema());
    }

    #[test]
    fn refuses_wrong_count_type_rows_and_values() {
        let one = RecordBatch::try_from_iter([(
            "a",
            Arc::new(Int32Array::from(vec![1])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        assert_eq!(
            bind(&schema(), &[one]),
            Err(ParamError::Count {
                expected: 2,
                got: 1
            })
        );
        let swapped = RecordBatch::try_from_iter([
            (
                "b",
                Arc::new(StringArray::from(vec!["x"])) as arrow::array::ArrayRef,
            ),
            ("a", Arc::new(Int64Array::from(vec![1])) as _),
        ])
        .unwrap();
        assert!(matches!(
            bind(&schema(), &[swapped]),
            Err(ParamError::Type { name, .. }) if name == "$1"
        ));
        let two = batch(
            Int64Array::from(vec![1, 2]),
            StringArray::from(vec!["x", "y"]),
        );
        assert_eq!(bind(&schema(), &[two]), Err(ParamError::Rows(2)));
        let too_big = batch(
            Int64Array::from(vec![1 << 40]),
            StringArray::from(vec!["x"]),
        );
        assert!(matches!(
            bind(&schema(), &[too_big]),
            Err(ParamError::Value { name, .. }) if name == "$1"
        ));
    }

    #[test]
    fn parameter_schema_is_ordered_and_gapless() {
        let types = [
            ("$2".to_owned(), Some(DataType::Utf8)),
            ("$1".to_owned(), None),
        ]
        .into_iter()
        .collect();
        let s = parameter_schema(types).unwrap();
        assert_eq!(s.field(0).name(), "$1");
        assert_eq!(s.field(0).data_type(), &DataType::Null);
        assert_eq!(s.field(1).data_type(), &DataType::Utf8);
        let gap = [("$2".to_owned(), None)].into_iter().collect();
        assert!(parameter_schema(gap).is_err());
    }
}
