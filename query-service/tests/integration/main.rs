//! Integration tests: real workers and gateways in-process on loopback, queried with the Flight
//! SQL client from arrow-flight, and the gateway's classification against the worker's planner.
//! One test binary, a module per area, to save link time.

mod admission;
mod common;
mod differential;
mod errors;
mod fetch;
mod queries;
mod standby;
