//! Quiver: a serverless OLAP query service over Arrow Flight SQL.
//!
//! A query travels through the modules in this order:
//!
//! ```text
//!  flight (gateway protocol) ──► dispatch (pool, least-loaded worker, retry)
//!      ──► worker::flight (protocol) ──► worker::engine (DataFusion) ──► worker::catalog
//! ```
//!
//! `ticket` signs the stateless tickets that let any worker run any query, and `prepared` carries
//! prepared-statement parameters inside them; `status` is the one place errors become gRPC
//! statuses; `tls` serves the gateway over TLS; `local` runs the whole service on one machine.

pub mod access;
pub mod admin;
pub mod admission;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod datagen;
pub mod dispatch;
pub mod flight;
pub mod gateway;
pub mod local;
pub mod metrics;
pub mod prepared;
pub mod shutdown;
pub mod sql;
pub mod status;
pub mod telemetry;
pub mod ticket;
pub mod tls;
pub mod worker;
