//! What every Quiver role shares, with no I/O: the one grammar for sizes and durations, the
//! demand report gateways publish, the scaling policy the operator and `quiver up` both run, and
//! the simulation that compares that policy with others.
//!
//! ```text
//!  gateway ──/v1/pools: demand::DemandReport──► operator, quiver up
//!                                                    └─► scaling::ScalingPolicy (pure)
//!  simulate: the same policy, Knative- and HPA-style policies, over demand traces
//! ```

pub mod demand;
pub mod scaling;
pub mod simulate;
pub mod units;
