//! Scalar functions whose output size an argument chooses (`repeat('x', 1000000000)`), checked
//! before they allocate.
//!
//! DataFusion's memory pool counts what operators reserve, not what a function returns, so one
//! short statement could make a worker allocate gigabytes, at run time or while the planner
//! folds constants. Each function here is the built-in one behind a guard that estimates the
//! output from the arguments and refuses it, as a memory-limit error, past a quarter of the
//! per-query limit: an answer is copied again on its way out (the folded constant, the array
//! built from it, its IPC encoding), so one value may take only part of the limit.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

/// How a guarded function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: the text's bytes times `n`, per row.
    Repeat,
    /// `lpad`/`rpad(text, n[, fill])`: `n` characters of at most 4 bytes, per row.
    Pad,
    /// `array_repeat(element, n)`: the element's size times `n`, per row.
    ArrayRepeat,
}

/// Copies of a function's output a query holds at once, counted against its memory limit.
const COPIES: usize = 4;

/// Replaces the built-in `repeat`, `lpad`, `rpad` and `array_repeat` in `state` with guarded
/// ones that refuse an output estimated above a quarter of `memory_limit`.
pub fn register(state: &mut SessionState, memory_limit: usize) -> Result<()> {
    let max_bytes = memory_limit / COPIES;
    let functions = [
        (datafusion::functions::string::repeat(), Growth::Repeat),
        (datafusion::functions::unicode::lpad(), Growth::Pad),
        (datafusion::functions::unicode::rpad(), Growth::Pad),
        (
            datafusion::functions_nested::repeat::array_repeat_udf(),
            Growth::ArrayRepeat,
        ),
    ];
    for (inner, growth) in functions {
        let guarded = Bounded {
            inner,
            growth,
            max_bytes,
        };
        state.register_udf(Arc::new(ScalarUDF::new_from_impl(guarded)))?;
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    max_bytes: usize,
}

impl Bounded {
    fn check(&self, args: &[ColumnarValue], rows: usize) -> Result<()> {
        let counts = args.get(1).map(|n| counts(n, rows)).transpose()?;
        let Some(counts) = counts else {
            return Ok(());
        };
        let per_row: Box<dyn Fn(usize) -> u128> = match self.growth {
            Growth::Repeat => text_lengths(&args[0], rows),
            Growth::Pad => Box::new(|_| 4),
            Growth::ArrayRepeat => {
                let size = element_size(&args[0]) as u128;
                Box::new(move |_| size)
            }
        };
        let mut total: u128 = 0;
        for row in 0..rows {
            let n = counts(row).max(0) as u128;
            total = total.saturating_add(n.saturating_mul(per_row(row)));
            if total > self.max_bytes as u128 {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "{}() would return more than {} bytes, a quarter of a query's memory limit",
                    self.inner.name(),
                    self.max_bytes
                )));
            }
        }
        Ok(())
    }
}

/// The count argument per row (a null counts as 0).
fn counts(value: &ColumnarValue, rows: usize) -> Result<Box<dyn Fn(usize) -> i64>> {
    Ok(match value {
        ColumnarValue::Scalar(scalar) => {
            let n = match scalar.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(n)) => n,
                _ => 0,
            };
            Box::new(move |_| n)
        }
        ColumnarValue::Array(array) => {
            let array = cast(array, &DataType::Int64)?;
            debug_assert!(array.len() >= rows);
            Box::new(move |row| {
                let array = array.as_primitive::<Int64Type>();
                if array.is_null(row) {
                    0
                } else {
                    array.value(row)
                }
            })
        }
    })
}

/// The text argument's bytes per row; a value of another type counts as its array's average.
fn text_lengths(value: &ColumnarValue, rows: usize) -> Box<dyn Fn(usize) -> u128> {
    match value {
        ColumnarValue::Scalar(scalar) => {
            let len = match scalar {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => s.len(),
                _ => 0,
            } as u128;
            Box::new(move |_| len)
        }
        ColumnarValue::Array(array) => {
            let array = array.clone();
            let average = (array.get_array_memory_size() / rows.max(1)) as u128;
            Box::new(move |row| {
                if array.is_null(row) {
                    return 0;
                }
                (match array.data_type() {
                    DataType::Utf8 => array.as_string::<i32>().value(row).len(),
                    DataType::LargeUtf8 => array.as_string::<i64>().value(row).len(),
                    DataType::Utf8View => array.as_string_view().value(row).len(),
                    _ => return average,
                }) as u128
            })
        }
    }
}

/// Bytes one element of `array_repeat` takes, at most about.
fn element_size(value: &ColumnarValue) -> usize {
    match value {
        ColumnarValue::Scalar(scalar) => scalar.size(),
        ColumnarValue::Array(array) => array.get_array_memory_size() / array.len().max(1),
    }
}

/// Everything but the call itself is the built-in function's.
impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args.args, args.number_rows)?;
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    /// A query's memory limit: one function's output may be a quarter of it, 1 MiB.
    const LIMIT: usize = 4 << 20;

    fn context() -> SessionContext {
        let mut state = SessionStateBuilder::new().with_default_features().build();
        register(&mut state, LIMIT).unwrap();
        SessionContext::new_with_state(state)
    }

    async fn run(ctx: &SessionContext, sql: &str) -> Result<String> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(datafusion::arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
    }

    fn refused(result: Result<String>, name: &str) {
        let err = result.expect_err("refused");
        assert!(
            matches!(err.find_root(), DataFusionError::ResourcesExhausted(m) if m.contains(name)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn small_outputs_are_answered_as_before() {
        let ctx = context();
        let out = run(
            &ctx,
            "SELECT repeat('ab', 3) AS r, lpad('x', 3, '-') AS l, rpad('x', 3) AS p, \
             array_repeat(7, 2) AS a",
        )
        .await
        .unwrap();
        assert!(
            out.contains("ababab") && out.contains("--x") && out.contains("[7, 7]"),
            "{out}"
        );
        let out = run(
            &ctx,
            "SELECT repeat(s, n) AS r FROM (VALUES ('ab', 2), (NULL, 5), ('c', NULL)) t(s, n)",
        )
        .await
        .unwrap();
        assert!(out.contains("abab"), "{out}");
    }

    #[tokio::test]
    async fn outputs_past_the_limit_are_refused_before_they_are_built() {
        let ctx = context();
        // Constant arguments: refused while the planner folds them.
        refused(
            run(&ctx, "SELECT length(repeat('x', 1000000000))").await,
            "repeat",
        );
        refused(run(&ctx, "SELECT lpad('x', 1000000000)").await, "lpad");
        refused(
            run(&ctx, "SELECT rpad('x', 1000000000, 'ab')").await,
            "rpad",
        );
        refused(
            run(&ctx, "SELECT array_repeat(1, 1000000000)").await,
            "array_repeat",
        );
        // Column arguments: refused at run time, by the sum over the batch's rows.
        refused(
            run(
                &ctx,
                "SELECT length(repeat(s, n)) FROM \
                 (VALUES ('xxxx', 100000), ('xxxx', 200000)) t(s, n)",
            )
            .await,
            "repeat",
        );
    }
}
