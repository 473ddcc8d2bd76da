//! What the unit tests over the fake engine share: a real `PoolManager`
//! (pools, lease table, reaper, engine watcher) on a `FakeBackend`, bash
//! pools whose toolchain check the fake answers, and waiting in tokio time,
//! which the tests pause (`#[tokio::test(start_paused = true)]`): a wait of
//! minutes costs microseconds and ends at the same point every run.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    backend::{Engines, SharedBackend, fake::FakeBackend},
    error::Result,
    identity::Identity,
    pool::{AcquireRequest, LeaseGuard, LeaseInfo, ManagerSettings, PoolManager, stats::PoolStats},
    spec::PoolSpec,
};

/// The server id the test manager labels its containers with.
pub const SERVER_ID: &str = "unit";
/// The pools' language: its check is one argv the fake answers.
const LANGUAGE: &str = "bash";
/// How often `until` looks.
const STEP: Duration = Duration::from_millis(10);
/// How long `until_idle` waits at most.
const SETTLE: Duration = Duration::from_secs(30);

pub struct Harness {
    pub fake: Arc<FakeBackend>,
    pub manager: Arc<PoolManager>,
    pub who: Identity,
}

impl Harness {
    /// A manager on a fresh fake engine. Call inside the test's runtime: the
    /// manager starts its background tasks at once.
    pub fn new() -> Self {
        let fake = FakeBackend::new();
        fake.answer_toolchain(crate::lang::lookup(LANGUAGE).expect("bash is a language"));
        let engines = Engines::new([Arc::clone(&fake) as SharedBackend]);
        let manager = PoolManager::new(SERVER_ID, engines, ManagerSettings::default());
        Self {
            fake,
            manager,
            who: Identity::local_admin(),
        }
    }

    /// Creates a bash pool `name`, its spec adjusted by `configure`.
    pub async fn pool(&self, name: &str, configure: impl FnOnce(&mut PoolSpec)) {
        let mut spec = PoolSpec::new(name, LANGUAGE);
        configure(&mut spec);
        self.manager
            .create_config_pool(spec)
            .await
            .expect("the pool is created");
    }

    /// Creates a bash pool of `min` to `max` containers (its spec further
    /// adjusted by `configure`) and waits until its `min` are idle.
    pub async fn warm_pool(
        &self,
        name: &str,
        min: u32,
        max: u32,
        configure: impl FnOnce(&mut PoolSpec),
    ) {
        self.pool(name, |s| {
            s.config.min_pool_size = min;
            s.config.max_pool_size = max;
            configure(s);
        })
        .await;
        self.until_idle(name, min).await;
    }

    pub fn stats(&self, pool: &str) -> PoolStats {
        self.manager
            .stats(&self.who, pool)
            .expect("the pool exists")
    }

    /// A lease with the pool's default TTL.
    pub async fn acquire(&self, pool: &str) -> Result<LeaseInfo> {
        self.acquire_for(pool, None).await
    }

    /// A lease with `ttl` (`None`: the pool's default).
    pub async fn acquire_for(&self, pool: &str, ttl: Option<Duration>) -> Result<LeaseInfo> {
        let request = AcquireRequest {
            pool: pool.to_string(),
            ttl,
            ..Default::default()
        };
        self.manager.acquire(&self.who, request, None).await
    }

    pub fn release(&self, lease: &LeaseInfo) {
        let before = self
            .manager
            .release(&lease.id, &self.who.name)
            .expect("the lease exists");
        assert_eq!(before, None, "the lease had ended before its release");
    }

    /// The lease for an operation, or how it ended.
    pub fn lease(&self, lease: &LeaseInfo) -> Result<LeaseGuard> {
        self.manager.lease(&lease.id, &self.who.name)
    }

    /// Waits until `cond` holds, looking every 10 ms of test time; panics
    /// naming `what` after `limit`. Returns how long it took.
    pub async fn until(
        &self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut() -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if cond() {
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            tokio::time::sleep(STEP).await;
        }
    }

    /// Waits until `pool` has exactly `n` containers, all idle.
    pub async fn until_idle(&self, pool: &str, n: u32) {
        self.until(&format!("{n} idle containers in {pool}"), SETTLE, || {
            let c = self.stats(pool).state_counts;
            c.idle == n && c.total() == n
        })
        .await;
    }
}
