//! Planning answers remembered by statement, so a dashboard's repeated statement is planned by
//! a worker once and then answered by the gateway alone: the client's `GetFlightInfo` costs no
//! worker round trip, and only its `DoGet` crosses to a worker.
//!
//! A FlightInfo's content from a worker is the result schema (the gateway puts in its own
//! ticket and the client's descriptor). It depends on the statement, its bound parameters and
//! the pool's catalog, and the worker's authority check on the tenant's catalogs, so those form
//! the key; only successful plans are kept. The catalog of a pool can change when its workers
//! are replaced, so an entry lives [`PLANNED_TTL`]; a stale schema would be corrected by the
//! stream's own, and the worker checks authority again when the query runs.

use std::time::{Duration, Instant};

use arrow_flight::FlightInfo;

use quiver_core::cache::TextCache;

/// Bytes of keys and schemas kept.
const PLANNED_BYTES: usize = 4 << 20;
/// How long a remembered plan answers for its statement.
const PLANNED_TTL: Duration = Duration::from_secs(10);

/// FlightInfos of planned statements.
#[derive(Debug)]
pub struct PlannedInfos {
    by_key: TextCache<(Instant, FlightInfo)>,
}

impl Default for PlannedInfos {
    fn default() -> Self {
        Self {
            by_key: TextCache::new(PLANNED_BYTES),
        }
    }
}

/// The key of a planning answer: everything the worker's answer depends on. Separated by NUL,
/// which checked SQL cannot contain.
pub fn key(pool: &str, sql: &str, params: Option<&str>, catalogs: &[String]) -> String {
    let mut key = String::with_capacity(pool.len() + sql.len() + 64);
    key.push_str(pool);
    key.push('\0');
    key.push_str(sql);
    key.push('\0');
    key.push_str(params.unwrap_or("\u{1}"));
    for catalog in catalogs {
        key.push('\0');
        key.push_str(catalog);
    }
    key
}

impl PlannedInfos {
    /// The answer remembered for `key`, if still fresh.
    pub fn get(&self, key: &str) -> Option<FlightInfo> {
        self.by_key
            .get(key)
            .filter(|(at, _)| at.elapsed() < PLANNED_TTL)
            .map(|(_, info)| info)
    }

    /// Remembers a worker's answer for `key`.
    pub fn insert(&self, key: &str, info: &FlightInfo) {
        let size = info.schema.len() + 256;
        self.by_key
            .insert(key, (Instant::now(), info.clone()), size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_everything_the_answer_depends_on() {
        let all = vec!["*".to_owned()];
        let some = vec!["tpch".to_owned()];
        let base = key("default", "SELECT 1", None, &all);
        for other in [
            key("other", "SELECT 1", None, &all),
            key("default", "SELECT 2", None, &all),
            key("default", "SELECT 1", Some(""), &all),
            key("default", "SELECT 1", Some("[1]"), &all),
            key("default", "SELECT 1", None, &some),
            key("default", "SELECT 1", None, &[]),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base, key("default", "SELECT 1", None, &all));
    }

    #[test]
    fn answers_what_was_kept() {
        let planned = PlannedInfos::default();
        let info = FlightInfo::new().with_total_records(3);
        assert!(planned.get("k").is_none());
        planned.insert("k", &info);
        assert_eq!(planned.get("k"), Some(info));
        assert!(planned.get("other").is_none());
    }
}
