//! Test support for the connector host: vendor simulators, deterministic sample data, and the
//! guest connectors built by `build.rs`.

/// Paths of the guest connectors built for wasm32-wasip2.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

pub mod cut;
pub mod harness;
pub mod hostile;
pub mod live;
pub mod sample;
/// A real PostgreSQL server a test process, a database a test.
pub use test_postgres as postgres;
/// The vendor simulators live in their own crate (the kit), with no dependency on the host.
pub use vendor_sim as sim;
