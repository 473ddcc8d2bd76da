//! Keeping the books in step with the engine: one watcher per engine in use
//! follows its event stream, so that a container that dies or is removed
//! behind a pool's back is taken out (idle) or its lease ended (leased)
//! within milliseconds; notices the engine going away (the stream breaks and
//! it stops answering pings), probes it with backoff capped at 1 s, and when
//! it is back reconciles (containers that died with it are removed, their
//! leases ended) and has the pools refill at once. It also holds this
//! instance's liveness marker on the engine and removes the containers of
//! instances that are no longer alive.

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};

use super::{
    LeaseEnd, PoolManager,
    pool::{EngineHealth, Gone},
};
use crate::backend::{
    ContainerEvent, LABEL_MARKER, LABEL_POOL, LABEL_SERVER, Liveness, SharedBackend,
};

/// Longest pause between probes of an engine that does not answer (a
/// refused connection costs nothing; the pools refill the moment it is back).
const MAX_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// First pause between probes.
const FIRST_PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How often an engine whose event stream is open is pinged anyway: an
/// engine may stop serving without closing the connections it has (the
/// podman service, stopped, waits for them to end; a remote engine's host
/// may vanish without a FIN).
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long after the engine came back the containers of dead instances
/// are removed.
const SWEEP_AFTER_RECONNECT: Duration = Duration::from_secs(3);
/// How long after a sweep asked for by a marker's death another follows.
const SWEEP_AGAIN: Duration = Duration::from_secs(1);
/// How long a ping may take before the engine counts as not answering.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the engine answers a ping in time.
async fn answers(backend: &SharedBackend) -> bool {
    matches!(
        tokio::time::timeout(PING_TIMEOUT, backend.ping()).await,
        Ok(Ok(()))
    )
}
/// `answers` as a future that owns what it needs (held across the watcher's
/// loop).
fn ping_owned(backend: &SharedBackend) -> futures::future::BoxFuture<'static, bool> {
    let backend = Arc::clone(backend);
    async move { answers(&backend).await }.boxed()
}

/// A container of ours that has not run for this long after its creation is
/// dead, not being created.
const CREATION_GRACE_SECS: i64 = 60;
/// How long announcing this instance may take before pools go ahead.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(10);

/// One engine's watcher state.
pub(super) struct Watch {
    pub backend: SharedBackend,
    pub health: Arc<EngineHealth>,
    /// An image the engine has, for the liveness marker.
    pub image: std::sync::Mutex<String>,
    /// Held while this instance is announced on the engine.
    pub liveness: std::sync::Mutex<Option<Liveness>>,
}

impl PoolManager {
    /// Makes sure the engine of `backend` is watched and this instance
    /// announced on it before the first container is made there.
    pub(super) async fn ensure_watched(self: &Arc<Self>, backend: &SharedBackend, image: &str) {
        let kind = backend.kind();
        let watch = {
            let mut watches = crate::sync::lock(&self.watches);
            if let Some(watch) = watches.get(&kind) {
                if crate::sync::lock(&watch.liveness).is_none() {
                    // Not announced yet (its image may have been missing):
                    // try again with this pool's.
                    *crate::sync::lock(&watch.image) = image.to_string();
                    self.reannounce.notify_one();
                }
                return;
            }
            let watch = Arc::new(Watch {
                backend: Arc::clone(backend),
                health: self.engine_health(kind),
                image: std::sync::Mutex::new(image.to_string()),
                liveness: std::sync::Mutex::new(None),
            });
            watches.insert(kind, Arc::clone(&watch));
            watch
        };
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, self.announce(&watch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(backend = %kind, error = %e, "could not announce this instance on the engine; will retry")
            }
            Err(_) => {
                tracing::warn!(backend = %kind, "announcing this instance timed out; will retry")
            }
        }
        let manager = Arc::downgrade(self);
        let stop = self.stop.clone();
        crate::supervise::spawn(format!("engine watcher ({kind})"), move || {
            let manager = manager.clone();
            let watch = Arc::clone(&watch);
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = watch_engine(manager, watch) => {}
                    _ = stop.cancelled() => {}
                }
            }
        });
    }

    /// Puts up a new marker for this instance, then lets the old one go.
    async fn announce(&self, watch: &Watch) -> crate::backend::Result<()> {
        let image = crate::sync::lock(&watch.image).clone();
        let liveness = watch.backend.announce(&self.server_id, &image).await?;
        let old = crate::sync::lock(&watch.liveness).replace(liveness);
        if let Some(old) = old {
            drop(old.hold);
            if let Err(e) = watch.backend.remove_container(&old.id).await {
                tracing::debug!(marker = %old.id, error = %e, "could not remove an old marker");
            }
        }
        Ok(())
    }

    /// What the engine says about a container of ours, or a marker.
    fn on_event(&self, event: ContainerEvent) {
        tracing::debug!(container = %event.id, kind = ?event.kind, "engine event");
        let server = event.labels.get(LABEL_SERVER).map(String::as_str);
        if event.labels.contains_key(LABEL_MARKER) {
            if server != Some(&*self.server_id) {
                // Another instance died: its containers are orphans now.
                self.sweep_requested.notify_one();
            } else {
                // Ours is gone (removed by hand?): announce again.
                self.reannounce.notify_one();
            }
            return;
        }
        if server != Some(&*self.server_id) {
            return;
        }
        self.container_gone(&event.id, event.labels.get(LABEL_POOL).map(String::as_str));
    }

    /// A container of ours is gone: its pool takes it out, and a lease that
    /// held it ends with a typed reason.
    pub(super) fn container_gone(&self, container: &str, pool: Option<&str>) {
        let gone = pool
            .and_then(|name| self.pools_read().get(name).cloned())
            .map_or(Gone::Unknown, |p| p.container_gone(container));
        if matches!(gone, Gone::Leased | Gone::Unknown) {
            // Temporaries are in no slot; leases name them.
            self.leases
                .end_by_container(container, LeaseEnd::ContainerLost);
        }
    }

    /// After a reconnect: anything of ours that the engine no longer runs is
    /// gone (it died while we were not listening), and the engine holds no
    /// dead container of ours afterwards.
    async fn reconcile(&self, watch: &Watch) {
        let listed = match watch
            .backend
            .list_containers(LABEL_SERVER, Some(&self.server_id))
            .await
        {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(backend = %watch.health.kind, error = %e, "could not list containers to reconcile");
                return;
            }
        };
        let running: std::collections::HashSet<&str> = listed
            .iter()
            .filter(|c| c.running)
            .map(|c| c.id.as_str())
            .collect();
        let pools: Vec<_> = self
            .pools_read()
            .values()
            .filter(|p| p.backend.kind() == watch.health.kind)
            .cloned()
            .collect();
        for pool in &pools {
            for container in pool.containers() {
                if !running.contains(container.as_str()) {
                    self.container_gone(&container, Some(pool.name()));
                }
            }
        }
        for container in self.leases.temporary_containers() {
            if !running.contains(container.as_str()) {
                self.container_gone(&container, None);
            }
        }
        let marker = crate::sync::lock(&watch.liveness)
            .as_ref()
            .map(|l| l.id.clone());
        // A container that does not run yet may be one a pool is creating
        // right now (its slot does not know the id yet): only old ones are
        // dead for sure.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // Refill first (the pools' replacements start now), then remove
        // the dead, all at once: the engine just came back, and the pools
        // should not wait for the removals.
        for pool in &pools {
            pool.engine_back();
        }
        let dead = listed.iter().filter(|c| {
            !c.running && Some(&c.id) != marker.as_ref() && now - c.created > CREATION_GRACE_SECS
        });
        let removals = dead.map(|c| async {
            if let Err(e) = watch.backend.remove_container(&c.id).await {
                tracing::warn!(container = %c.id, error = %e, "could not remove a dead container");
            }
        });
        futures::future::join_all(removals).await;
    }

    /// Removes the containers of every instance on the engine that is no
    /// longer alive (its marker exited or is missing).
    pub(super) async fn sweep_dead_instances(&self, backend: &SharedBackend) {
        let dead = match backend.dead_instances().await {
            Ok(dead) => dead,
            Err(e) => {
                tracing::warn!(backend = %backend.kind(), error = %e, "could not look for dead instances");
                return;
            }
        };
        for id in dead.iter().filter(|id| **id != *self.server_id) {
            match super::manager::remove_labelled(&**backend, id).await {
                Ok(n) => {
                    tracing::info!(backend = %backend.kind(), instance = %id, removed = n, "removed the containers of a dead instance")
                }
                Err(e) => {
                    tracing::warn!(backend = %backend.kind(), instance = %id, error = %e, "could not remove a dead instance's containers")
                }
            }
        }
    }
}

/// Follows one engine until the manager is gone.
async fn watch_engine(manager: std::sync::Weak<PoolManager>, watch: Arc<Watch>) {
    let Some(mut catch_up) = crate::sync::lock(&watch.health.catch_up_requests).take() else {
        return;
    };
    // `ensure_watched` announced already: the first connection need not.
    let mut announced = crate::sync::lock(&watch.liveness).is_some();
    loop {
        let Some(m) = manager.upgrade() else { return };
        let events = watch.backend.events(LABEL_SERVER).await;
        match events {
            Ok(mut events) => {
                watch.health.set_up(true);
                // After a break the old marker may have died with the
                // connection (or the engine): put up a fresh one.
                let reconnected = !std::mem::take(&mut announced);
                // The fresh marker and the pools' refill at once: the marker
                // is one engine call, well before any container is warm, and
                // the other servers' sweeps wait a moment after a reconnect.
                let announce = async {
                    if reconnected && let Err(e) = m.announce(&watch).await {
                        tracing::warn!(backend = %watch.health.kind, error = %e, "could not announce this instance");
                    }
                };
                tokio::join!(announce, m.reconcile(&watch));
                if reconnected {
                    // The engine is back: the pools' refill goes first, the
                    // dead instances' removals (every server on the engine
                    // sees them at once) a moment later.
                    let m = Arc::downgrade(&m);
                    tokio::spawn(async move {
                        tokio::time::sleep(SWEEP_AFTER_RECONNECT).await;
                        if let Some(m) = m.upgrade() {
                            m.sweep_requested.notify_one();
                        }
                    });
                } else {
                    m.sweep_dead_instances(&watch.backend).await;
                }
                drop(m);
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                heartbeat.reset();
                // A ping in flight (the heartbeat's, or a suspicion's) is
                // awaited beside the events, never in a branch: a busy engine
                // with hundreds of containers takes tens of milliseconds to
                // answer, and every Acquire's catch-up would wait behind it.
                let mut ping: Option<futures::future::BoxFuture<'static, bool>> = None;
                loop {
                    let Some(m) = manager.upgrade() else { return };
                    tokio::select! {
                        biased;
                        Some(done) = catch_up.recv() => {
                            // Handle what has arrived already, then answer.
                            while let Some(Some(event)) = events.next().now_or_never() {
                                match event {
                                    Ok(event) => m.on_event(event),
                                    Err(_) => break,
                                }
                            }
                            let _ = done.send(());
                        }
                        event = events.next() => match event {
                            Some(Ok(event)) => m.on_event(event),
                            Some(Err(e)) => {
                                tracing::warn!(backend = %watch.health.kind, error = %e, "engine event stream failed");
                                break;
                            }
                            None => break,
                        },
                        _ = m.sweep_requested.notified() => {
                            m.sweep_dead_instances(&watch.backend).await;
                            // Docker may report a marker's death before its
                            // list shows the marker exited: the sweep that
                            // the death asked for then finds the instance
                            // alive, and a server killed outright (SIGKILL)
                            // left its containers until the next death. A
                            // second sweep shortly after catches it.
                            let again = Arc::downgrade(&m);
                            let backend = Arc::clone(&watch.backend);
                            tokio::spawn(async move {
                                tokio::time::sleep(SWEEP_AGAIN).await;
                                if let Some(m) = again.upgrade() {
                                    m.sweep_dead_instances(&backend).await;
                                }
                            });
                        }
                        _ = m.reannounce.notified() => {
                            if let Err(e) = m.announce(&watch).await {
                                tracing::warn!(backend = %watch.health.kind, error = %e, "could not announce this instance again");
                            }
                        }
                        alive = async {
                            match ping.as_mut() {
                                Some(answer) => answer.await,
                                None => std::future::pending().await,
                            }
                        } => {
                            ping = None;
                            if !alive {
                                tracing::warn!(backend = %watch.health.kind, "engine stopped answering pings");
                                break;
                            }
                        }
                        // A ping already in flight answers a suspicion too.
                        _ = watch.health.suspect.notified() => {
                            if ping.is_none() {
                                ping = Some(ping_owned(&watch.backend));
                            }
                        }
                        _ = heartbeat.tick(), if ping.is_none() => {
                            ping = Some(ping_owned(&watch.backend));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(backend = %watch.health.kind, error = %e, "engine events unavailable");
            }
        }
        // The stream ended: a blip, or the engine is gone. Probe until it
        // answers; meanwhile it counts as down.
        let mut delay = FIRST_PROBE_INTERVAL;
        while !answers(&watch.backend).await {
            if watch.health.is_up() {
                watch.health.set_up(false);
                if let Some(m) = manager.upgrade() {
                    for pool in m.pools_read().values() {
                        if pool.backend.kind() == watch.health.kind {
                            pool.engine_gone();
                        }
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_PROBE_INTERVAL);
        }
    }
}
