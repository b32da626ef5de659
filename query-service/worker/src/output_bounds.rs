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
use datafusion::arrow::datatypes::{
    DataType, FieldRef, Int64Type, IntervalMonthDayNano, IntervalMonthDayNanoType, IntervalUnit,
    TimeUnit,
};
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
    /// `range`/`generate_series([start,] stop[, step])` as array functions: the elements
    /// between start and stop, per row.
    Series,
}

/// Copies of a function's output a query holds at once, counted against its memory limit.
const COPIES: usize = 4;

/// Replaces the built-in `repeat`, `lpad`, `rpad`, `array_repeat`, `range` and
/// `generate_series` in `state` with guarded ones that refuse an output estimated above a
/// quarter of `memory_limit`. (The table functions of the last two stream in batches and need
/// no guard.)
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
        (
            datafusion::functions_nested::range::range_udf(),
            Growth::Series,
        ),
        (
            datafusion::functions_nested::range::gen_series_udf(),
            Growth::Series,
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
        let per_row: Box<dyn Fn(usize) -> u128> = match self.growth {
            Growth::Series => return self.check_series(args, rows),
            Growth::Repeat => text_lengths(&args[0], rows),
            Growth::Pad => Box::new(|_| 4),
            Growth::ArrayRepeat => {
                let size = element_size(&args[0]) as u128;
                Box::new(move |_| size)
            }
        };
        let Some(counts) = args.get(1).map(|n| counts(n, rows)).transpose()? else {
            return Ok(());
        };
        self.within_limit(
            (0..rows).map(|row| (counts(row).max(0) as u128).saturating_mul(per_row(row))),
        )
    }

    /// `range` and `generate_series`: element counts from the bounds and the step, each row's
    /// at least what the built-in makes.
    fn check_series(&self, args: &[ColumnarValue], rows: usize) -> Result<()> {
        match args.first().map(ColumnarValue::data_type) {
            Some(DataType::Int64) => self.within_limit(integer_series(args, rows)?.into_iter()),
            Some(DataType::Date32 | DataType::Date64) => {
                self.check_time_series(args, rows, Clock::Dates)
            }
            Some(DataType::Timestamp(..)) => self.check_time_series(args, rows, Clock::Timestamps),
            // Nulls and anything the signature did not coerce: the built-in answers.
            _ => Ok(()),
        }
    }

    /// A series of dates or timestamps, `(start, stop, step)`. A step whose months, days and
    /// time could add up to nothing on some calendar day is refused: the built-in would loop
    /// on it.
    fn check_time_series(&self, args: &[ColumnarValue], rows: usize, clock: Clock) -> Result<()> {
        let [start, stop, step] = args else {
            return Ok(());
        };
        let start = instants(start, clock, rows)?;
        let stop = instants(stop, clock, rows)?;
        let step = steps(step, rows)?;
        let mut bytes = Vec::with_capacity(rows);
        for row in 0..rows {
            let (Some(start), Some(stop), Some(step)) = (start[row], stop[row], step[row]) else {
                bytes.push(0);
                continue;
            };
            let (months, days, nanos) = (step.months, step.days, step.nanoseconds);
            if months == 0 && days == 0 && (clock == Clock::Dates || nanos == 0) {
                // The built-in refuses a step that is no step.
                bytes.push(0);
                continue;
            }
            let Some(smallest) = clock.smallest_step(months, days, nanos) else {
                return Err(DataFusionError::Execution(format!(
                    "{}() step {months} months {days} days {nanos} ns could be zero on some \
                     dates; give the months, days and time of a step the same sign",
                    self.inner.name()
                )));
            };
            let span = (start - stop).unsigned_abs();
            bytes.push((span / smallest + 1).saturating_mul(clock.width()));
        }
        self.within_limit(bytes.into_iter())
    }

    /// Refuses once the per-row output sizes add up past the limit.
    fn within_limit(&self, mut bytes: impl Iterator<Item = u128>) -> Result<()> {
        let mut total: u128 = 0;
        bytes.try_for_each(|b| {
            total = total.saturating_add(b);
            if total > self.max_bytes as u128 {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "{}() would return more than {} bytes, a quarter of a query's memory limit",
                    self.inner.name(),
                    self.max_bytes
                )));
            }
            Ok(())
        })
    }
}

const NANOS_PER_HOUR: i128 = 3_600_000_000_000;
const NANOS_PER_DAY: i128 = 24 * NANOS_PER_HOUR;

/// Bytes per row of `range`/`generate_series([start,] stop[, step])` over integers: 8 per
/// element, none when the step points away from the stop.
fn integer_series(args: &[ColumnarValue], rows: usize) -> Result<Vec<u128>> {
    let (start, stop, step) = match args {
        [stop] => (None, counts(stop, rows)?, None),
        [start, stop] => (Some(counts(start, rows)?), counts(stop, rows)?, None),
        [start, stop, step] => (
            Some(counts(start, rows)?),
            counts(stop, rows)?,
            Some(counts(step, rows)?),
        ),
        _ => return Ok(Vec::new()),
    };
    Ok((0..rows)
        .map(|row| {
            let (start, stop) = (start.as_ref().map_or(0, |s| s(row)), stop(row));
            let step = step.as_ref().map_or(1, |s| s(row));
            if (stop > start && step < 0) || (stop < start && step > 0) {
                return 0;
            }
            let span = start.abs_diff(stop) as u128;
            (span / step.unsigned_abs().max(1) as u128 + 1).saturating_mul(8)
        })
        .collect())
}

/// What a date or time series counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// Dates: whole days of 24 hours, 4 bytes an element.
    Dates,
    /// Timestamps: nanoseconds, over days of 23 to 25 hours (daylight saving), 8 bytes an
    /// element.
    Timestamps,
}

impl Clock {
    fn width(self) -> u128 {
        match self {
            Clock::Dates => 4,
            Clock::Timestamps => 8,
        }
    }

    /// Nanoseconds per stored unit, once dates are Date32 and timestamps nanoseconds.
    fn unit(self) -> i128 {
        match self {
            Clock::Dates => NANOS_PER_DAY,
            Clock::Timestamps => 1,
        }
    }

    /// The smallest distance a step can cover, in nanoseconds; `None` when it could be zero
    /// or turn around on some date.
    fn smallest_step(self, months: i32, days: i32, nanos: i64) -> Option<u128> {
        match self {
            Clock::Timestamps => smallest_step(
                months,
                days,
                nanos,
                23 * NANOS_PER_HOUR,
                25 * NANOS_PER_HOUR,
            ),
            Clock::Dates => {
                // A date moves by whole days: the time of a step counts only as whole days,
                // and the built-in takes its direction from the signs of the months and days.
                let whole_days = nanos / NANOS_PER_DAY as i64;
                let parts = [months as i64, days as i64, whole_days];
                let mixed = parts.iter().any(|&p| p > 0) && parts.iter().any(|&p| p < 0);
                let nanos = (whole_days as i128 * NANOS_PER_DAY) as i64;
                smallest_step(months, days, nanos, NANOS_PER_DAY, NANOS_PER_DAY).filter(|_| !mixed)
            }
        }
    }
}

/// The smallest distance a step of `months`, `days` and `nanos` can cover, in nanoseconds, over
/// months of 28 to 31 days and days of `day_low` to `day_high` nanoseconds; `None` when some
/// combination could make it zero or turn it around.
fn smallest_step(
    months: i32,
    days: i32,
    nanos: i64,
    day_low: i128,
    day_high: i128,
) -> Option<u128> {
    let (months, days, nanos) = (months as i128, days as i128, nanos as i128);
    let range = |n: i128, low: i128, high: i128| {
        if n >= 0 {
            (n * low, n * high)
        } else {
            (n * high, n * low)
        }
    };
    let (m_low, m_high) = range(months, 28 * day_low, 31 * day_high);
    let (d_low, d_high) = range(days, day_low, day_high);
    let (low, high) = (m_low + d_low + nanos, m_high + d_high + nanos);
    if low > 0 {
        Some(low as u128)
    } else if high < 0 {
        Some(high.unsigned_abs())
    } else {
        None
    }
}

/// A date or timestamp argument per row, in nanoseconds (dates as Date32, timestamps cast to
/// nanoseconds first).
fn instants(value: &ColumnarValue, clock: Clock, rows: usize) -> Result<Vec<Option<i128>>> {
    let array = value.to_array(rows)?;
    let array = match array.data_type() {
        DataType::Date32 | DataType::Date64 => cast(&array, &DataType::Date32)?,
        DataType::Timestamp(_, tz) => cast(
            &array,
            &DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()),
        )?,
        _ => return Ok(vec![None; rows]),
    };
    let array = cast(&array, &DataType::Int64)?;
    let unit = clock.unit();
    Ok(array
        .as_primitive::<Int64Type>()
        .iter()
        .map(|v| v.map(|v| v as i128 * unit))
        .collect())
}

/// The interval argument per row, as months, days and nanoseconds.
fn steps(value: &ColumnarValue, rows: usize) -> Result<Vec<Option<IntervalMonthDayNano>>> {
    let array = value.to_array(rows)?;
    let array = cast(&array, &DataType::Interval(IntervalUnit::MonthDayNano))?;
    Ok(array
        .as_primitive::<IntervalMonthDayNanoType>()
        .iter()
        .collect())
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
        let out = run(
            &ctx,
            "SELECT range(3) AS a, generate_series(1, 3) AS b, range(5, 0, -2) AS c, \
             cardinality(range(0, 1000000000, -1)) AS empty, \
             range(DATE '2020-01-30', DATE '2020-04-01', INTERVAL '1 month') AS d, \
             generate_series(TIMESTAMP '2020-01-01 00:00:00', TIMESTAMP '2020-01-01 02:00:00', \
                             INTERVAL '1 hour') AS t",
        )
        .await
        .unwrap();
        for expected in [
            "[0, 1, 2]",
            "[1, 2, 3]",
            "[5, 3, 1]",
            "| 0 ",
            "[2020-01-30, 2020-02-29]",
            "2020-01-01T02:00:00]",
        ] {
            assert!(out.contains(expected), "{expected} in {out}");
        }
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
        for sql in [
            "SELECT cardinality(range(1000000000))",
            "SELECT cardinality(generate_series(-500000000, 500000000, 3))",
            "SELECT cardinality(range(DATE '1900-01-01', DATE '9999-01-01', INTERVAL '1 day'))",
            "SELECT cardinality(generate_series(TIMESTAMP '2020-01-01', \
             TIMESTAMP '2021-01-01', INTERVAL '1 second'))",
        ] {
            let name = if sql.contains("range(") {
                "range"
            } else {
                "generate_series"
            };
            refused(run(&ctx, sql).await, name);
        }
        // A step that could be zero on some day (the built-in would loop): refused as invalid.
        let err = run(
            &ctx,
            "SELECT range(DATE '2020-03-01', DATE '2020-01-01', INTERVAL '1 month -29 days')",
        )
        .await
        .expect_err("refused");
        assert!(
            matches!(err.find_root(), DataFusionError::Execution(m) if m.contains("same sign")),
            "{err}"
        );
        // Column arguments: refused at run time, by the sum over the batch's rows.
        refused(
            run(
                &ctx,
                "SELECT cardinality(range(n)) FROM (VALUES (100000), (100000)) t(n)",
            )
            .await,
            "range",
        );
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
