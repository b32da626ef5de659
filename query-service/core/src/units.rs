//! Sizes and durations: one grammar for every flag, environment variable, config file, chart
//! value and QueryPool field, so a value accepted in one place is accepted everywhere.
//!
//! Sizes: a number (decimals allowed) and an optional unit, case-insensitive, space allowed
//! between: `b`; `k`/`kb`, `m`/`mb`, `g`/`gb`, `t`/`tb` (powers of 1000); `ki`/`kib`, `mi`/`mib`,
//! `gi`/`gib`, `ti`/`tib` (powers of 1024), so Kubernetes quantities such as `2Gi` read as
//! they do in a pod spec. (`m` is mega here, never Kubernetes' milli: nobody sizes memory in
//! thousandths of a byte.)
//!
//! Durations: `humantime`'s grammar (`500ms`, `30s`, `2m`, `1h30m`).

use std::time::Duration;

/// The size grammar as a regular expression, for schemas (the CRD, the chart's values schema);
/// a test checks that both carry exactly this and that it agrees with [`parse_size`].
pub const SIZE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?\s*([kKmMgGtT][iI]?[bB]?|[bB])?$";

/// The duration forms schemas accept: whole numbers with a unit, run together (`1h30m`). A
/// subset of what [`parse_duration`] reads.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ns|us|µs|ms|s|m|h))+$";

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No number where one was expected.
    #[error("{0:?} is not a size such as 512MiB or 2Gi")]
    NotASize(String),
    /// A unit outside the grammar.
    #[error(
        "unknown size unit {unit:?} in {value:?} (use B, KiB/Ki, MiB/Mi, GiB/Gi, TiB/Ti, KB, MB, GB or TB)"
    )]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole value.
        value: String,
    },
    /// Less than one byte.
    #[error("{0:?} must be at least one byte")]
    TooSmall(String),
}

/// Bytes in a size such as `512MiB`, `2Gi`, `1.5GB` or `1048576`.
pub fn parse_size(value: &str) -> Result<u64, SizeError> {
    let s = value.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(SizeError::NotASize(value.to_owned()));
    }
    let number: f64 = number
        .parse()
        .map_err(|_| SizeError::NotASize(value.to_owned()))?;
    let scale: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        other => {
            return Err(SizeError::UnknownUnit {
                unit: other.to_owned(),
                value: value.to_owned(),
            });
        }
    };
    let bytes = number * scale as f64;
    if bytes < 1.0 {
        return Err(SizeError::TooSmall(value.to_owned()));
    }
    Ok(bytes.min(u64::MAX as f64) as u64)
}

/// A size as an operator writes it: `256 KiB`, `512 MiB`, `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration such as `30s`, `2m` or `1h30m`.
pub fn parse_duration(value: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(value.trim())
}

/// A duration as [`parse_duration`] reads it back (`1m 15s`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests;
