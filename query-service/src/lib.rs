//! Quiver: a serverless OLAP query service over Arrow Flight SQL. This crate is the `quiver`
//! command: its flags (`cli`), `quiver up` (`local`: a gateway and supervised worker processes
//! on one machine), TPC-H data (`datagen`), a client (`client`) and the benchmark (`bench`).
//!
//! ```text
//!  quiver-core (units, tickets, SQL checks, demand report, scaling policy)
//!     ├── quiver-worker  (catalog, engine, the worker's Flight SQL service)
//!     ├── quiver-gateway (auth, admission, dispatch, the gateway's Flight service, admin)
//!     ├── quiver-operator (QueryPool, controller)
//!     └── quiver (this crate: the binary, on top of worker and gateway)
//! ```

pub mod bench;
pub mod cli;
pub mod client;
pub mod datagen;
pub mod local;
pub mod shutdown;
pub mod telemetry;
