//! The demand report: what a gateway says about each pool at `GET /v1/pools`, and what the
//! operator and the local supervisor scale from. One definition for the writer and the readers.
//!
//! ```text
//!  {"pools":[{"pool","workers","ready","in_flight","queued","arrivals_per_sec",
//!             "worker_loads":[{"endpoint","ready","in_flight"}]}]}
//! ```

use serde::{Deserialize, Serialize};

use crate::scaling::DemandSample;

/// The `/v1/pools` document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DemandReport {
    /// One entry per pool.
    pub pools: Vec<PoolDemand>,
}

/// Demand of one pool, as one gateway sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PoolDemand {
    /// Pool name (the QueryPool's name in Kubernetes).
    pub pool: String,
    /// Workers in the pool.
    #[serde(default)]
    pub workers: u32,
    /// Workers reporting SERVING.
    #[serde(default)]
    pub ready: u32,
    /// Queries running on the pool.
    pub in_flight: u32,
    /// Queries admitted but waiting for a slot, and calls held while the pool wakes from zero.
    pub queued: u32,
    /// Arrivals over the last second.
    pub arrivals_per_sec: f64,
    /// Per-worker load, so scale-down can pick the least busy workers.
    #[serde(default)]
    pub worker_loads: Vec<WorkerLoad>,
}

/// One worker's load, as one gateway sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerLoad {
    /// `grpc://IP:PORT`.
    pub endpoint: String,
    /// Reporting SERVING.
    pub ready: bool,
    /// Queries this gateway runs on it.
    pub in_flight: u32,
}

impl PoolDemand {
    /// The scaling policy's input.
    pub fn sample(&self) -> DemandSample {
        DemandSample {
            in_flight: self.in_flight,
            queued: self.queued,
            arrivals_per_sec: self.arrivals_per_sec,
        }
    }
}

impl DemandReport {
    /// The policy's input for `pool`: zero demand when the report does not name it.
    pub fn sample_of(&self, pool: &str) -> DemandSample {
        self.pools
            .iter()
            .find(|p| p.pool == pool)
            .map(PoolDemand::sample)
            .unwrap_or_default()
    }
}

/// A count as the report carries it, saturating.
pub fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_a_gateway_writes_and_older_reports() {
        let report = DemandReport {
            pools: vec![PoolDemand {
                pool: "default".into(),
                workers: 2,
                ready: 2,
                in_flight: 5,
                queued: 3,
                arrivals_per_sec: 12.5,
                worker_loads: vec![WorkerLoad {
                    endpoint: "grpc://10.0.0.1:50051".into(),
                    ready: true,
                    in_flight: 5,
                }],
            }],
        };
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<DemandReport>(&text).unwrap(), report);
        let minimal: DemandReport = serde_json::from_str(
            r#"{"pools":[{"pool":"p","in_flight":1,"queued":0,"arrivals_per_sec":0.5}]}"#,
        )
        .unwrap();
        assert_eq!(minimal.sample_of("p").in_flight, 1);
        assert_eq!(minimal.sample_of("other").in_flight, 0);
        assert_eq!(count(usize::MAX), u32::MAX);
    }
}
