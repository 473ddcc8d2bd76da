//! Pools of warm containers and the leases on them. Knows nothing of gRPC;
//! works over any backend.

mod engine_watch;
pub mod lease;
mod maintainer;
mod manager;
#[allow(clippy::module_inception)]
mod pool;
pub mod stats;
/// The state machines over the fake engine, in paused time.
#[cfg(test)]
mod tests;

pub use crate::error::{Error, LeaseEnd, Result};
pub use lease::{LeaseGuard, LeaseInfo};
pub use manager::{AcquireRequest, LeaseFile, ManagerSettings, PoolManager, PoolView, StatsReader};
pub use pool::Phase;
pub use pool::{EngineHealth, Holding, Ownership, TemporaryBudget};
