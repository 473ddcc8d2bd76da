//! sandpool-server: warm pools of sandbox containers, leased over gRPC.
//!
//! Dependencies point one way: `api` -> `run` -> `files` -> `pool` ->
//! `sandbox` -> `lang`/`backend`. Below them all sit the shared vocabulary:
//! `spec` (what a pool is), `policy` (what a pool made at run time may
//! be), `identity` (who calls, with what rights and quotas), `artifact`
//! (what a run leaves), `error` and `sync`. The pool layer knows nothing of gRPC; a backend knows nothing of
//! pools or leases; `server` wires the pieces (engines included) together.

pub mod api;
pub mod artifact;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod error;
pub mod files;
pub mod identity;
pub mod lang;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod run;
pub mod sandbox;
pub mod server;
pub mod spec;
pub mod supervise;
pub mod sync;
pub mod telemetry;
#[cfg(test)]
mod testkit;

pub use config::ServerConfig;
pub use server::serve;
