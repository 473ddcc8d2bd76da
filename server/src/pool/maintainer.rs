//! The background work of one pool, off the hot path: recycling idle
//! containers by idle_timeout and max_container_lifetime, health-checking idle
//! containers every health_check_interval, and refilling to min_pool_size
//! (with backoff while creation fails).

use std::{sync::Arc, time::Duration};

// tokio's clock (see `pool.rs`).
use tokio::time::Instant;

use super::{
    pool::{Pool, SlotState, live},
    stats::RecycleReason,
};
use crate::{sandbox, telemetry};
use tracing::Instrument;

/// The maintainer looks at the pool at least this often.
const TICK: Duration = Duration::from_secs(1);
/// A health check that takes longer than this fails.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

impl Pool {
    pub(super) fn spawn_maintainer(self: &Arc<Self>) {
        // Weak: a deleted pool's maintainer must not keep it alive.
        let pool = Arc::downgrade(self);
        let stop = self.stop.clone();
        crate::supervise::spawn(format!("maintainer ({})", self.name()), move || {
            let pool = pool.clone();
            let stop = stop.clone();
            async move {
                loop {
                    let Some(pool) = pool.upgrade() else { return };
                    let (checks, next) = pool.sweep();
                    if !checks.is_empty() {
                        pool.check_health(checks).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => {}
                        _ = pool.wake.notified() => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        });
    }

    /// Recycles what is due, refills, and picks the idle containers whose
    /// health check is due. Returns them with the time of the next sweep.
    fn sweep(self: &Arc<Self>) -> (Vec<(u64, String)>, Instant) {
        let now = Instant::now();
        let config = &self.spec.config;
        let mut st = self.lock();
        if st.closed {
            return (Vec::new(), now + TICK);
        }
        let mut live_now = live(&st.counts());
        let min_target = config.min_pool_size;
        // Oldest idle first: `idle` is ordered by when slots became idle.
        let mut due = Vec::new();
        for &slot in &st.idle {
            let Some(s) = st.slots.get(&slot) else {
                continue;
            };
            if config
                .max_container_lifetime
                .is_some_and(|max| now.duration_since(s.created) >= max)
            {
                due.push((slot, RecycleReason::Lifetime));
            } else if live_now > min_target
                && config
                    .idle_timeout
                    .is_some_and(|max| now.duration_since(s.idle_since) >= max)
            {
                // Idle timeout trims the pool down to min_pool_size; it does
                // not churn the containers that keep the pool warm.
                live_now -= 1;
                due.push((slot, RecycleReason::IdleTimeout));
            }
        }
        for (slot, reason) in due {
            self.begin_remove(&mut st, slot, reason);
        }
        self.fill(&mut st);

        let mut checks = Vec::new();
        if now >= st.next_health {
            st.next_health = now + config.health_check_interval;
            checks = st
                .idle
                .iter()
                .filter_map(|slot| {
                    let container = st.slots.get(slot)?.container.clone()?;
                    Some((*slot, container))
                })
                .collect();
        }
        let mut next = (now + TICK).min(st.next_health);
        if let Some(retry) = st.retry_at {
            next = next.min(retry.max(now));
        }
        drop(st);
        self.changed();
        (checks, next)
    }

    /// Checks containers concurrently; a failed one is replaced (or, if it was
    /// leased meanwhile, removed when its lease ends).
    async fn check_health(self: &Arc<Self>, checks: Vec<(u64, String)>) {
        let results = futures::future::join_all(checks.into_iter().map(|(slot, container)| {
            let pool = Arc::clone(self);
            async move {
                let sandbox = pool.sandbox(&container);
                let check = sandbox::check_health(&sandbox)
                    .instrument(telemetry::background("container.health", &pool.spec.name));
                let outcome = match tokio::time::timeout(HEALTH_CHECK_TIMEOUT, check).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!(
                        "no answer within {}s",
                        HEALTH_CHECK_TIMEOUT.as_secs()
                    )),
                };
                (slot, container, outcome)
            }
        }))
        .await;
        let mut st = self.lock();
        for (slot, container, failure) in results {
            let Some(reason) = failure else { continue };
            tracing::warn!(pool = %self.spec.name, %container, %reason, "health check failed");
            st.counters.health_failures += 1;
            match st.slots.get_mut(&slot).map(|s| (s.state, s)) {
                Some((SlotState::Idle, _)) => {
                    self.begin_remove(&mut st, slot, RecycleReason::Unhealthy)
                }
                Some((SlotState::Busy, s)) => s.poisoned = true,
                _ => {}
            }
        }
        self.fill(&mut st);
        drop(st);
        self.changed();
    }
}
