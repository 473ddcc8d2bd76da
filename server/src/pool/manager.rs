//! The PoolManager: the pools of the server, the engines they run on, and
//! the lease table. The one entry point of the api layer into pools.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

// tokio's clock (see `pool.rs`).
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{
    Error, LeaseEnd, LeaseGuard, LeaseInfo, Result,
    lease::{LeaseTable, Renewal},
    pool::{EngineHealth, Ownership, Phase, Pool, PoolContext, TemporaryBudget},
    stats::PoolStats,
};
use crate::{
    backend::{BackendKind, Engines, SharedBackend},
    identity::{Identity, Quota, QuotaBook, QuotaGuard},
    policy::{Namespaces, Policy},
    sandbox,
    spec::{PoolSpec, validate_env_name},
    sync,
};

/// A pool as the api layer shows it.
#[derive(Debug, Clone)]
pub struct PoolView {
    pub spec: Arc<PoolSpec>,
    pub phase: Phase,
    pub status_message: String,
    pub created: SystemTime,
    pub stats: PoolStats,
    /// The identity that created it at run time; `None`: the config file's.
    pub owner: Option<String>,
    /// When it lapses unless its owner keeps it alive.
    pub owner_expire_time: Option<SystemTime>,
}

/// What the wiring decides for the manager: the policy floor of pools made
/// at run time and the server-wide bounds.
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    pub policy: Policy,
    /// TEMPORARY containers across all pools at once.
    pub max_temporaries: u32,
    /// The Kubernetes namespaces any pool (the config file's too) may use.
    pub namespaces: Namespaces,
    /// Every pool's runs go through a resident runner (`sandbox::runner`).
    pub resident_runner: bool,
    /// This server's replica name when it is one of several (`[cluster]`):
    /// its lease ids start with `<replica>.`.
    pub replica: Option<String>,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            max_temporaries: 100,
            namespaces: Namespaces::default(),
            resident_runner: false,
            replica: None,
        }
    }
}

/// The shortest lease a caller may ask for: keepalives at a third of it must
/// stay meaningful over a real network.
const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
/// How long shutdown waits for engine work in flight before it removes the
/// remaining containers by label.
const SHUTDOWN_SETTLE: Duration = Duration::from_secs(20);
/// How often owned pools are checked for a lapsed owner.
const OWNER_REAP_INTERVAL: Duration = Duration::from_millis(100);
/// How often shutdown looks whether runs finished within the grace period.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// What a caller asks of Acquire.
#[derive(Debug, Clone, Default)]
pub struct AcquireRequest {
    pub pool: String,
    /// `None`: the pool's default TTL.
    pub ttl: Option<Duration>,
    /// Environment for every run of the lease.
    pub env: Vec<(String, String)>,
    /// Files to place in the container before the lease is handed out; their
    /// paths are checked by the caller.
    pub files: Vec<LeaseFile>,
}

/// A file placed in a leased container at Acquire.
#[derive(Debug, Clone)]
pub struct LeaseFile {
    pub path: String,
    pub content: bytes::Bytes,
    pub mode: u32,
}

/// Reads a pool's statistics (for watchers).
pub type StatsReader = Arc<dyn Fn() -> PoolStats + Send + Sync>;

pub struct PoolManager {
    pub(super) server_id: Arc<str>,
    engines: Engines,
    policy: Policy,
    namespaces: Namespaces,
    /// See `ManagerSettings::resident_runner`.
    resident_runner: bool,
    temporaries: Arc<TemporaryBudget>,
    /// Container creations in flight across all pools (`creation_permits`).
    creations: Arc<tokio::sync::Semaphore>,
    quotas: Arc<QuotaBook>,
    /// Per engine: whether it answers.
    health: std::sync::Mutex<std::collections::HashMap<BackendKind, Arc<EngineHealth>>>,
    /// Engines being watched (see `engine_watch`).
    pub(super) watches:
        std::sync::Mutex<std::collections::HashMap<BackendKind, Arc<super::engine_watch::Watch>>>,
    /// Another instance's marker died: remove its containers.
    pub(super) sweep_requested: tokio::sync::Notify,
    /// Our own marker is gone: put up another.
    pub(super) reannounce: tokio::sync::Notify,
    pools: Arc<RwLock<BTreeMap<String, Arc<Pool>>>>,
    pub(super) leases: Arc<LeaseTable>,
    pub(super) stop: CancellationToken,
    /// Draining (one replica of several, stopping): no new leases, while
    /// those granted go on until released or the grace ends.
    draining: CancellationToken,
}

impl PoolManager {
    /// A manager whose containers carry `server_id`, with pools on `engines`.
    pub fn new(
        server_id: impl Into<Arc<str>>,
        engines: Engines,
        settings: ManagerSettings,
    ) -> Arc<Self> {
        let manager = Arc::new(Self {
            server_id: server_id.into(),
            engines,
            policy: settings.policy,
            namespaces: settings.namespaces,
            resident_runner: settings.resident_runner,
            temporaries: TemporaryBudget::new(settings.max_temporaries),
            creations: Arc::new(tokio::sync::Semaphore::new(super::pool::creation_permits())),
            quotas: QuotaBook::new(),
            health: Default::default(),
            watches: Default::default(),
            sweep_requested: Default::default(),
            reannounce: Default::default(),
            pools: Arc::new(RwLock::new(BTreeMap::new())),
            leases: LeaseTable::for_replica(settings.replica.as_deref()),
            stop: CancellationToken::new(),
            draining: CancellationToken::new(),
        });
        manager.leases.spawn_reaper(manager.stop.clone());
        manager.spawn_owner_reaper();
        manager
    }

    /// Removes containers left by an earlier run of this server (same id).
    pub async fn remove_leftovers(&self, kinds: &[BackendKind]) {
        for &kind in kinds {
            let Ok(backend) = self.engines.get(kind) else {
                continue;
            };
            match remove_labelled(&*backend, &self.server_id).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(backend = %kind, removed = n, "removed containers left by an earlier run")
                }
                Err(e) => {
                    tracing::warn!(backend = %kind, error = %e, "could not look for leftover containers")
                }
            }
        }
    }

    /// Whether the engine of `kind` answers, shared by its pools.
    pub fn engine_health(&self, kind: BackendKind) -> Arc<EngineHealth> {
        Arc::clone(
            sync::lock(&self.health)
                .entry(kind)
                .or_insert_with(|| EngineHealth::new(kind)),
        )
    }

    pub(super) fn pools_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Pool>>> {
        sync::read(&self.pools)
    }

    fn pools_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Pool>>> {
        sync::write(&self.pools)
    }

    fn pool(&self, name: &str) -> Result<Arc<Pool>> {
        self.pools_read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::PoolNotFound(name.to_string()))
    }

    fn view(pool: &Pool) -> PoolView {
        let (phase, status_message) = pool.phase();
        PoolView {
            spec: Arc::clone(&pool.spec),
            phase,
            status_message,
            created: pool.created,
            stats: pool.stats(),
            owner: pool.ownership.owner.clone(),
            owner_expire_time: pool.owner_deadline().map(|d| d.expire_time),
        }
    }

    /// The pool `name`, if `who` may use it.
    fn usable_pool(&self, who: &Identity, name: &str) -> Result<Arc<Pool>> {
        let pool = self.pool(name)?;
        if who.may_use(name, pool.ownership.owner.as_deref()) {
            return Ok(pool);
        }
        Err(Error::PermissionDenied {
            identity: who.name.clone(),
            pool: Some(name.to_string()),
            message: format!(
                "{} may not use pool {name:?}: it is neither on its list of pools nor its own",
                who.name
            ),
        })
    }

    /// A unit of `quota` for `who`.
    fn take_quota(&self, who: &Identity, quota: Quota) -> Result<QuotaGuard> {
        self.quotas.take(who, quota).map_err(Error::QuotaExceeded)
    }

    /// The book of what every identity holds (the api layer takes stream
    /// quotas from it).
    pub fn quotas(&self) -> &Arc<QuotaBook> {
        &self.quotas
    }

    /// Creates one of the config file's pools (trusted: no policy, no owner).
    pub async fn create_config_pool(self: &Arc<Self>, spec: PoolSpec) -> Result<PoolView> {
        self.create(
            spec,
            Ownership {
                owner: None,
                quota: None,
                ttl: None,
            },
            false,
            None,
        )
        .await
    }

    /// Creates a pool at `who`'s request: it must fit the policy, counts
    /// against `who`'s pool quota and belongs to `who`. With `wait_ready`,
    /// returns once it is warm or failing, or at `deadline`.
    pub async fn create_pool(
        self: &Arc<Self>,
        who: &Identity,
        spec: PoolSpec,
        owner_ttl: Option<Duration>,
        wait_ready: bool,
        deadline: Option<Instant>,
    ) -> Result<PoolView> {
        let spec = spec.validate()?;
        self.policy.check(&spec)?;
        self.namespaces.check(&spec)?;
        if let Some(ttl) = owner_ttl
            && !(MIN_LEASE_TTL..=spec.max_lease_ttl).contains(&ttl)
        {
            return Err(Error::invalid(
                "owner_ttl",
                format!(
                    "{}s is not between {}s and the pool's max_lease_ttl ({}s)",
                    ttl.as_secs_f64(),
                    MIN_LEASE_TTL.as_secs(),
                    spec.max_lease_ttl.as_secs_f64()
                ),
            ));
        }
        let quota = self.take_quota(who, Quota::Pools)?;
        let ownership = Ownership {
            owner: Some(who.name.clone()),
            quota: Some(quota),
            ttl: owner_ttl,
        };
        let name = spec.name.clone();
        // Whether CreatePool answers or its caller goes away mid-way, the
        // owner's clock starts then.
        let _clock = StartOwnerClock {
            pools: self.pools_weak(),
            name,
        };
        let mut view = self.create(spec, ownership, wait_ready, deadline).await?;
        if let Ok(pool) = self.pool(&view.spec.name) {
            pool.renew_owner();
            view.owner_expire_time = pool.owner_deadline().map(|d| d.expire_time);
        }
        Ok(view)
    }

    async fn create(
        self: &Arc<Self>,
        spec: PoolSpec,
        ownership: Ownership,
        wait_ready: bool,
        deadline: Option<Instant>,
    ) -> Result<PoolView> {
        if self.stop.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let mut spec = spec.validate()?;
        self.namespaces.check(&spec)?;
        let backend = self.engines.get(spec.backend)?;
        let lang = crate::lang::lookup(&spec.language).ok_or_else(|| {
            Error::invalid("language", format!("unknown language {:?}", spec.language))
        })?;
        if self.pools_read().contains_key(&spec.name) {
            return Err(Error::PoolExists(spec.name));
        }
        spec.runtime.gvisor = self.runs_on_gvisor(&backend, &spec).await;
        // A gVisor pool takes the exec path unless it asks for the runner.
        // Under memory pressure (a fork bomb at the pool's memory limit) the
        // host's OOM killer takes gVisor's stub processes one by one, and
        // gVisor SIGKILLs the tasks they ran: on the runner path the
        // runner goes first and the run ends SIGKILLed before the sandbox
        // dies, where the exec path's run ends with its timeout or with the
        // container gone, which is what the hostile suite holds the
        // exec path to. Asked for explicitly, the runner works there (its
        // process limits keep it up under churn: `RuntimeConfig::
        // process_limits`).
        spec.resident_runner = spec
            .runner_choice
            .unwrap_or(self.resident_runner && !spec.runtime.on_gvisor());
        // This instance is announced on the engine before any container of
        // it is: another instance never takes them for a dead one's.
        self.ensure_watched(&backend, &spec.image).await;
        let pool = {
            let mut pools = self.pools_write();
            if pools.contains_key(&spec.name) {
                return Err(Error::PoolExists(spec.name));
            }
            let context = PoolContext {
                server_id: Arc::clone(&self.server_id),
                temporary_budget: Arc::clone(&self.temporaries),
                creations: Arc::clone(&self.creations),
                engine: self.engine_health(backend.kind()),
                server_stop: self.stop.clone(),
            };
            let pool = Pool::new(spec, lang, backend, context, ownership);
            pools.insert(pool.name().to_string(), Arc::clone(&pool));
            pool
        };
        tracing::info!(pool = %pool.name(), image = %pool.spec.image, "pool created");
        pool.start();
        if wait_ready {
            let mut changes = pool.subscribe();
            let settled = async {
                while !pool.settled() {
                    if changes.changed().await.is_err() {
                        break;
                    }
                }
            };
            match deadline {
                Some(d) => {
                    let _ = tokio::time::timeout_at(d, settled).await;
                }
                None => settled.await,
            }
        }
        Ok(Self::view(&pool))
    }

    /// Whether the pool's containers will run on gVisor, as its engine
    /// says; `None` when the engine does not answer now (a server started
    /// before it), which leaves it to the runtime's name
    /// (`RuntimeConfig::on_gvisor`), and says so.
    async fn runs_on_gvisor(&self, backend: &SharedBackend, spec: &PoolSpec) -> Option<bool> {
        let runtime = spec.runtime.oci_runtime.as_deref();
        backend
            .runs_on_gvisor(runtime)
            .await
            .inspect_err(|e| {
                tracing::warn!(
                    pool = %spec.name,
                    runtime = runtime.unwrap_or("(the engine's default)"),
                    error = %e,
                    "could not ask the engine which runtime the pool's containers get; going by its name"
                );
            })
            .ok()
    }

    pub fn get_pool(&self, who: &Identity, name: &str) -> Result<PoolView> {
        Ok(Self::view(&*self.usable_pool(who, name)?))
    }

    /// Every pool, for the server's own reports (metrics).
    pub fn all_pools(&self) -> Vec<PoolView> {
        self.pools_read().values().map(|p| Self::view(p)).collect()
    }

    /// The pools `who` may use.
    pub fn list_pools(&self, who: &Identity) -> Vec<PoolView> {
        self.pools_read()
            .values()
            .filter(|p| who.may_use(p.name(), p.ownership.owner.as_deref()))
            .map(|p| Self::view(p))
            .collect()
    }

    /// Whether every pool is warm (or failing: it will not get warmer).
    pub fn all_settled(&self) -> bool {
        self.pools_read().values().all(|p| p.settled())
    }

    /// Drains a pool; it disappears once its last container is gone. With
    /// `wait`, returns only then (or at `deadline`).
    pub async fn delete_pool(
        &self,
        who: &Identity,
        name: &str,
        wait: bool,
        deadline: Option<Instant>,
    ) -> Result<u32> {
        let pool = self.usable_pool(who, name)?;
        let owner = pool.ownership.owner.as_deref();
        if !who.may_manage(owner) {
            let whose = match owner {
                None => "the operator's (from the config file)".to_string(),
                Some(other) => format!("{other}'s"),
            };
            return Err(Error::PermissionDenied {
                identity: who.name.clone(),
                pool: Some(name.to_string()),
                message: format!(
                    "pool {name:?} is {whose}; only its creator or an admin may delete it"
                ),
            });
        }
        let busy = pool.close();
        if wait {
            self.wait_drained(&pool, deadline).await;
            self.forget_if_drained(&pool);
            return Ok(pool.busy_count());
        }
        self.forget_when_drained(pool);
        Ok(busy)
    }

    /// Waits until `pool`'s last container is gone, or `deadline`.
    async fn wait_drained(&self, pool: &Arc<Pool>, deadline: Option<Instant>) {
        let mut changes = pool.subscribe();
        let drained = async {
            while !pool.is_drained() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        };
        match deadline {
            Some(d) => {
                let _ = tokio::time::timeout_at(d, drained).await;
            }
            None => drained.await,
        }
    }

    /// Takes a closed pool off the map once its last container is gone.
    fn forget_when_drained(&self, pool: Arc<Pool>) {
        let manager_pools = self.pools_weak();
        let name = format!("drain watcher ({})", pool.name());
        crate::supervise::spawn(name, move || {
            let pool = Arc::clone(&pool);
            let manager_pools = manager_pools.clone();
            async move {
                let mut changes = pool.subscribe();
                while !pool.is_drained() {
                    if changes.changed().await.is_err() {
                        break;
                    }
                }
                if let Some(pools) = manager_pools.upgrade() {
                    remove_if_same(&pools, &pool);
                }
            }
        });
    }

    /// Checks owned pools for lapsed owners, as often as leases are reaped.
    fn spawn_owner_reaper(self: &Arc<Self>) {
        let manager = Arc::downgrade(self);
        let stop = self.stop.clone();
        crate::supervise::spawn("owned-pool reaper", move || {
            let manager = manager.clone();
            let stop = stop.clone();
            async move {
                let mut tick = tokio::time::interval(OWNER_REAP_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => return,
                    }
                    let Some(manager) = manager.upgrade() else {
                        return;
                    };
                    manager.lapse_owned_pools();
                }
            }
        });
    }

    /// The owner of `name` keeps it alive. A pool being deleted is gone
    /// for its owner.
    pub fn keepalive_pool(&self, who: &Identity, name: &str) -> Renewal {
        let Ok(pool) = self.pool(name) else {
            return Renewal::NotFound;
        };
        if !who.may_manage(pool.ownership.owner.as_deref()) || pool.is_closed() {
            return Renewal::NotFound;
        }
        match (pool.renew_owner(), pool.ownership.ttl) {
            (Some(deadline), Some(ttl)) => Renewal::Active {
                expire_time: deadline.expire_time,
                ttl,
            },
            _ => Renewal::NotFound,
        }
    }

    /// Deletes the owned pools whose owner stopped keeping them alive; their
    /// leases end with `PoolDeleted`.
    fn lapse_owned_pools(&self) {
        let now = Instant::now();
        let lapsed: Vec<Arc<Pool>> = self
            .pools_read()
            .values()
            .filter(|p| p.owner_deadline().is_some_and(|d| d.at <= now) && !p.is_closed())
            .cloned()
            .collect();
        for pool in lapsed {
            tracing::info!(pool = %pool.name(), owner = ?pool.ownership.owner, "the pool's owner stopped keeping it alive; deleting it");
            pool.close();
            self.leases.end_by_pool(pool.name(), LeaseEnd::PoolDeleted);
            self.forget_when_drained(pool);
        }
    }

    /// A handle on the pool map that does not keep it alive, for drain
    /// watchers that may outlive the manager.
    fn pools_weak(&self) -> std::sync::Weak<RwLock<BTreeMap<String, Arc<Pool>>>> {
        Arc::downgrade(&self.pools)
    }

    fn forget_if_drained(&self, pool: &Arc<Pool>) {
        if pool.is_drained() {
            let mut pools = self.pools_write();
            if pools.get(pool.name()).is_some_and(|p| Arc::ptr_eq(p, pool)) {
                pools.remove(pool.name());
            }
        }
    }

    /// Whether `name` is one of the config file's pools, which every
    /// replica has (a pool made at run time lives on its replica only).
    pub fn is_config_pool(&self, name: &str) -> bool {
        self.pool(name).is_ok_and(|p| p.ownership.owner.is_none())
    }

    /// Idle containers here of the config pool `name`, if `who` may use
    /// it; `None` for any other pool (the local Acquire says why).
    pub fn config_pool_idle(&self, who: &Identity, name: &str) -> Option<u32> {
        let pool = self.usable_pool(who, name).ok()?;
        pool.ownership.owner.is_none().then(|| pool.idle())
    }

    pub fn stats(&self, who: &Identity, name: &str) -> Result<PoolStats> {
        Ok(self.usable_pool(who, name)?.stats())
    }

    /// A stream of change notifications for a pool, with a way to read its
    /// statistics.
    pub fn watch(
        &self,
        who: &Identity,
        name: &str,
    ) -> Result<(tokio::sync::watch::Receiver<u64>, StatsReader)> {
        let pool = self.usable_pool(who, name)?;
        let changes = pool.subscribe();
        let read: StatsReader = Arc::new(move || pool.stats());
        Ok((changes, read))
    }

    /// Grants a lease on a container of `request.pool`, with the request's
    /// files placed in it. If placing them fails, the lease is given back
    /// (its container reset) and the caller gets the error.
    pub async fn acquire(
        &self,
        who: &Identity,
        request: AcquireRequest,
        deadline: Option<Instant>,
    ) -> Result<LeaseInfo> {
        let AcquireRequest {
            pool,
            ttl,
            env,
            files,
        } = request;
        let owner = who.name.as_str();
        for (key, value) in &env {
            validate_env_name(key).map_err(|message| Error::invalid("env", message))?;
            if key == sandbox::RUN_MARKER || value.contains('\0') {
                return Err(Error::invalid(
                    "env",
                    format!("{key} is reserved or its value holds a NUL byte"),
                ));
            }
        }
        if self.stop.is_cancelled() || self.draining.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let pool = self.usable_pool(who, &pool)?;
        let spec = &pool.spec;
        let ttl = match ttl {
            None => spec.default_lease_ttl,
            Some(t) if t < MIN_LEASE_TTL => {
                return Err(Error::invalid(
                    "ttl",
                    format!(
                        "{:.3}s is below the minimum of {}s",
                        t.as_secs_f64(),
                        MIN_LEASE_TTL.as_secs()
                    ),
                ));
            }
            Some(t) if t > spec.max_lease_ttl => {
                return Err(Error::invalid(
                    "ttl",
                    format!(
                        "{}s is above the pool's max_lease_ttl of {}s",
                        t.as_secs_f64(),
                        spec.max_lease_ttl.as_secs_f64()
                    ),
                ));
            }
            Some(t) => t,
        };
        let lease_quota = self.take_quota(who, Quota::Leases)?;
        let holding = {
            let _waiting = self.take_quota(who, Quota::Waiters)?;
            pool.acquire(deadline).await?
        };
        let entry = self
            .leases
            .insert(pool, holding, ttl, owner.to_string(), lease_quota, env);
        let lease = entry.info();
        if !files.is_empty() {
            let placed = async {
                let guard = self.leases.guard(&lease.id, owner)?;
                for file in files {
                    guard
                        .sandbox()
                        .write_file(&file.path, file.content, file.mode)
                        .await
                        .map_err(|e| guard.sandbox_error(e))?;
                }
                Ok::<(), Error>(())
            }
            .await;
            if let Err(e) = placed {
                let _ = self.leases.release(&lease.id, owner);
                return Err(e);
            }
        }
        Ok(lease)
    }

    pub fn keepalive(&self, lease_id: &str, owner: &str) -> Renewal {
        self.leases.renew(lease_id, owner)
    }

    /// Ends a lease. Returns how it had ended before, `None` if this call did.
    pub fn release(&self, lease_id: &str, owner: &str) -> Result<Option<LeaseEnd>> {
        self.leases.release(lease_id, owner)
    }

    /// Access to a live lease for one operation.
    pub fn lease(&self, lease_id: &str, owner: &str) -> Result<LeaseGuard> {
        self.leases.guard(lease_id, owner)
    }

    pub fn cancel_run(&self, lease_id: &str, owner: &str, run_id: &str) -> Result<bool> {
        self.leases.cancel_run(lease_id, owner, run_id)
    }

    /// Drains: no new leases from now on; returns once every lease granted
    /// has ended (released, expired) or at `until`. Containers and pools
    /// stay as they are, for `shutdown` to remove.
    pub async fn drain(&self, until: Instant) {
        self.draining.cancel();
        while self.leases.active() > 0 && Instant::now() < until {
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
    }

    /// Leases alive now, in every pool.
    pub fn active_leases(&self) -> usize {
        self.leases.active()
    }

    /// Whether the manager grants no new leases (draining or stopped).
    pub fn draining(&self) -> bool {
        self.draining.is_cancelled() || self.stop.is_cancelled()
    }

    /// Stops the manager: no new leases; runs get up to `grace` to finish;
    /// then every lease is revoked and every container removed.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        let until = Instant::now() + grace;
        while self.leases.running() > 0 && Instant::now() < until {
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
        self.leases.revoke_all();
        let pools: Vec<Arc<Pool>> = self.pools_read().values().cloned().collect();
        for pool in &pools {
            pool.close();
        }
        let settle = async {
            self.leases.settle().await;
            for pool in &pools {
                pool.tasks.close();
                pool.tasks.wait().await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_SETTLE, settle).await.is_err() {
            tracing::warn!("engine work did not finish in time; removing containers by label");
        }
        for backend in self.engines.used() {
            match remove_labelled(&*backend, &self.server_id).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "removed remaining containers"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "could not remove containers at shutdown"),
            }
        }
        self.pools_write().clear();
    }
}

/// Starts an owned pool's clock when dropped (see `create_pool`).
struct StartOwnerClock {
    pools: std::sync::Weak<RwLock<BTreeMap<String, Arc<Pool>>>>,
    name: String,
}

impl Drop for StartOwnerClock {
    fn drop(&mut self) {
        let Some(pools) = self.pools.upgrade() else {
            return;
        };
        let pool = sync::read(&pools).get(&self.name).cloned();
        if let Some(pool) = pool
            && pool.owner_deadline().is_none()
        {
            pool.renew_owner();
        }
    }
}

fn remove_if_same(pools: &RwLock<BTreeMap<String, Arc<Pool>>>, pool: &Arc<Pool>) {
    let mut map = sync::write(pools);
    if map.get(pool.name()).is_some_and(|p| Arc::ptr_eq(p, pool)) {
        map.remove(pool.name());
    }
}

/// Removes every container labelled with `server_id`; returns how many.
pub(super) async fn remove_labelled(
    backend: &dyn crate::backend::Backend,
    server_id: &str,
) -> crate::backend::Result<usize> {
    let found = backend
        .list_containers(sandbox::LABEL_SERVER, Some(server_id))
        .await?;
    let n = found.len();
    futures::future::join_all(found.iter().map(|c| backend.remove_container(&c.id))).await;
    backend.forget_instance(server_id).await?;
    Ok(n)
}
