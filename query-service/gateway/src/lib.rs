//! The gateway role: authenticates each Flight SQL call, admits it through the rate limits and
//! its resource group's queue, signs it, and dispatches it to a ready worker of its pool,
//! streaming the answer back.
//!
//! A query travels through the modules in this order:
//!
//! ```text
//!  server (HTTP/2 limits, TLS, drain) ──► io_threads (a connection's calls stay on one thread;
//!      accepted: a place per connection, closed if it does not begin in time)
//!      ──► flight::authenticate ──► flight (the Flight SQL service)
//!      ──► admission (classify, rate limits, resource groups) ──► dispatch (pool, least-loaded
//!          worker, retry before the first row) ──► flight::recorded (deadline, metrics)
//! ```
//!
//! `auth` checks credentials; `status` is where the gateway's errors become gRPC statuses;
//! `admin` serves metrics and the demand report; `tls` serves the Flight port over TLS.

mod admin;
mod admission;
mod auth;
mod dispatch;
mod flight;
mod io_threads;
mod metrics;
mod server;
mod status;
mod tls;

pub use admission::Admission;
pub use admission::DEFAULT_WORKER_SLOTS;
pub use admission::classify::ClientHints;
pub use admission::config::{ConfigError, DEFAULT_POOL, Policy};
pub use auth::{Identity, hash_password};
pub use dispatch::claim::{CLAIM_TIMEOUT, ClaimOutcome, Claimer, RecordClaim, send_claim};
pub use dispatch::discovery;
pub use dispatch::pool::WorkerPool;
pub use dispatch::querypools;
pub use dispatch::registry::Pools;
pub use metrics::GatewayMetrics;
pub use server::{GatewayConfig, GatewayError, load_policy, run};
pub use tls::TlsFiles;

/// What tests outside the crate compare the gateway's decisions with.
pub mod testing {
    /// The gateway's reading of a statement: its kind and the tables it names.
    pub use crate::admission::classify::inspect;
}
