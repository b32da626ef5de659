//! The gateway role: authenticates each Flight SQL call, admits it through the rate limits and
//! its resource group's queue, signs it, and dispatches it to a ready worker of its pool,
//! streaming the answer back.
//!
//! A query travels through the modules in this order:
//!
//! ```text
//!  server (HTTP/2 limits, TLS, drain) ──► flight::authenticate ──► flight (the Flight SQL service)
//!      ──► admission (classify, rate limits, resource groups) ──► dispatch (pool, least-loaded
//!          worker, retry before the first row) ──► flight::recorded (deadline, metrics)
//! ```
//!
//! `auth` checks credentials; `status` is where the gateway's errors become gRPC statuses;
//! `admin` serves metrics and the demand report; `tls` serves the Flight port over TLS.

mod admin;
pub mod admission;
pub mod auth;
pub mod dispatch;
mod flight;
pub mod metrics;
pub mod server;
mod status;
pub mod tls;
