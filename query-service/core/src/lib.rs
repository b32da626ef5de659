//! What every Quiver role shares, with no I/O: the one grammar for sizes and durations, the
//! demand report gateways publish, the scaling policy the operator and `quiver up` both run, and
//! the simulation that compares that policy with others. With the `query` feature (gateways and
//! workers), also what both sides of a query agree on: who may read what ([`access`]), the SQL
//! checks done before any parse ([`sql`]), the one sealing primitive ([`seal`]) behind tickets,
//! grants, login tokens and session cookies ([`ticket`], [`protocol`]), prepared-statement
//! parameters ([`prepared`]), and the bounds on a connection both hand to their HTTP/2 server
//! ([`accepted`]).
//!
//! ```text
//!  gateway ──/v1/pools: demand::DemandReport──► operator, quiver up
//!                                                    └─► scaling::ScalingPolicy (pure)
//!  simulate: the same policy, Knative- and HPA-style policies, over demand traces
//! ```

pub mod cache;
pub mod demand;
pub mod scaling;
pub mod simulate;
pub mod units;

#[cfg(feature = "query")]
pub mod accepted;
#[cfg(feature = "query")]
pub mod access;
#[cfg(feature = "query")]
pub mod fetch;
#[cfg(feature = "query")]
pub mod prepared;
#[cfg(feature = "query")]
pub mod protocol;
#[cfg(feature = "query")]
pub mod seal;
#[cfg(feature = "query")]
pub mod sql;
#[cfg(feature = "query")]
pub mod ticket;
