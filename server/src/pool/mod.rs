//! Pools of warm containers and the leases on them. Knows nothing of gRPC;
//! works over any backend.

mod error;
pub mod lease;
mod maintainer;
mod manager;
#[allow(clippy::module_inception)]
mod pool;
pub mod spec;
pub mod stats;

pub use error::{Error, LeaseEnd, Result};
pub use lease::{LeaseGuard, LeaseInfo};
pub use manager::{PoolManager, PoolView};
pub use pool::Holding;
pub use pool::Phase;
