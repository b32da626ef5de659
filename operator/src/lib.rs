//! Quiver operator: keeps each pool of query workers at the size its demand needs.
//!
//! ```text
//!  gateway GET /v1/pools ──► controller ──► scaling (pure, quiver-core) ──► Deployment replicas
//!                              │                                            + deletion cost on idle pods
//!                              └─► QueryPool status, Events
//! ```
//!
//! - `crd`: the `QueryPool` resource.
//! - `controller`: the reconciler that turns pools into workers.
//! - `cli`, `admin`, `metrics`: the `quiver-operator` binary's flags, admin port and metrics.
//!
//! The scaling policy and its simulation live in `quiver-core`, shared with `quiver up`.

pub mod admin;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod metrics;
