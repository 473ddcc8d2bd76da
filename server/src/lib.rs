//! sandpool-server: warm pools of sandbox containers, leased over gRPC.
//!
//! Dependencies point one way: `api` -> `pool`/`run`/`files` -> `sandbox` ->
//! `backend`. The pool layer knows nothing of gRPC; a backend knows nothing of
//! pools or leases.

pub mod api;
pub mod backend;
pub mod config;
pub mod files;
pub mod lang;
pub mod metrics;
pub mod pool;
pub mod run;
pub mod sandbox;
pub mod server;
pub mod telemetry;

pub use config::ServerConfig;
pub use server::serve;
