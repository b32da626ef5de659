//! Quiver operator: keeps each pool of query workers at the size its demand needs.
//!
//! ```text
//!  gateway GET /v1/pools ──► controller ──► scaling (pure) ──► Deployment replicas
//!                              │                                 + deletion cost on idle pods
//!                              └─► QueryPool status, Events
//! ```
//!
//! - [`scaling`]: the policy as pure code, shared with the local supervisor of `quiver up`.
//! - [`simulate`]: the policy against Knative- and HPA-style policies over demand traces.
//! - `crd`: the `QueryPool` resource (feature `controller`).
//! - `controller`: the reconciler that turns pools into workers (feature `controller`).
//! - `cli`, `admin`, `metrics`: the `quiver-operator` binary's flags, admin port and metrics
//!   (feature `controller`).

pub mod scaling;
pub mod simulate;

#[cfg(feature = "controller")]
pub mod admin;
#[cfg(feature = "controller")]
pub mod cli;
#[cfg(feature = "controller")]
pub mod controller;
#[cfg(feature = "controller")]
pub mod crd;
#[cfg(feature = "controller")]
pub mod metrics;
