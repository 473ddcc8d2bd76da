//! The pool, lease and maintainer state machines, driven through a real
//! `PoolManager` over the fake engine (`backend::fake`) in paused tokio
//! time: every timeout below is the pool's own, reached in microseconds and
//! at the same instant on every run. They add to the real-engine suites in
//! tests/, which check the same behaviour against Docker and Podman.

mod acquire;
mod engine;
mod lease;
mod maintainer;
