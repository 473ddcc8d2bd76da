//! Leases: who holds which container, until when. A lease ends by release,
//! by expiry (no keepalive within its TTL) or by revocation (pool deleted,
//! server stopping). Ending one stops its runs and other operations, waits
//! for them, then hands the container back to its pool for a reset.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};
use tracing::Instrument;

// tokio's clock (see `pool.rs`).
use tokio::time::Instant;

use tokio_util::{
    sync::CancellationToken,
    task::{TaskTracker, task_tracker::TaskTrackerToken},
};

use super::{Error, LeaseEnd, Result, pool::Holding, pool::Pool};
use crate::{
    artifact::ArtifactInfo,
    cluster::lease_id::{Incarnation, Origin},
    identity::QuotaGuard,
    lang::Language,
    sandbox,
    spec::PoolSpec,
    sync::lock,
};

/// How often expiry is checked: a dead client holds its container for at
/// most TTL plus this.
const REAP_INTERVAL: Duration = Duration::from_millis(100);
/// How long an ended lease is remembered, to tell "released" and "expired"
/// from "never existed".
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// How long the operations of an ended lease may take to stop before its
/// container is destroyed instead of reset.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Artifact records kept per lease.
const MAX_RECORDED_ARTIFACTS: usize = 10_000;
/// Finished runs a lease remembers, so that a late Cancel of one is told
/// "already finished" rather than "no such run".
const MAX_FINISHED_RUNS: usize = 1_000;

/// A run's id: 64 random bits as 16 hex digits. It also marks the run's
/// processes in the container (`sandbox::RUN_MARKER`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunId(String);

impl RunId {
    pub fn new() -> Self {
        Self(format!("{:016x}", rand::random::<u64>()))
    }

    /// A run id the client chose: 1 to 64 ASCII letters, digits, '-' or
    /// '_' (it is written into the run's environment and matched in the
    /// container's process list, so nothing else is let in).
    pub fn chosen(id: &str) -> std::result::Result<Self, &'static str> {
        if id.is_empty() || id.len() > 64 {
            return Err("must be 1 to 64 characters");
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("may hold only ASCII letters, digits, '-' and '_'");
        }
        Ok(Self(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The runs of a lease: those going on, and the most recent finished ones.
#[derive(Default)]
struct Runs {
    active: HashMap<RunId, RunControl>,
    finished: std::collections::VecDeque<RunId>,
}

impl Runs {
    fn finish(&mut self, id: &RunId) {
        if self.active.remove(id).is_some() {
            if self.finished.len() >= MAX_FINISHED_RUNS {
                self.finished.pop_front();
            }
            self.finished.push_back(id.clone());
        }
    }
}

/// What a caller sees of a lease.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    pub id: String,
    pub pool: String,
    pub container_id: String,
    pub ttl: Duration,
    pub expire_time: SystemTime,
    /// When it was granted: its TTL runs from (just after) here.
    pub granted: Instant,
    pub temporary: bool,
    pub language: String,
}

struct Life {
    deadline: Instant,
    expire_time: SystemTime,
    ended: Option<LeaseEnd>,
}

impl Life {
    /// Renews the deadline to `ttl` from now, but never past `last`.
    fn renew(&mut self, ttl: Duration, last: Instant) {
        let now = Instant::now();
        let deadline = (now + ttl).min(last);
        self.expire_time = SystemTime::now() + deadline.saturating_duration_since(now);
        self.deadline = deadline;
    }
}

/// Why a run was stopped from outside the run itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    Cancelled,
    LeaseEnded(LeaseEnd),
}

/// Handle to stop one run.
#[derive(Clone)]
pub struct RunControl {
    token: CancellationToken,
    cause: Arc<Mutex<Option<StopCause>>>,
}

impl RunControl {
    fn new() -> Self {
        Self {
            token: CancellationToken::new(),
            cause: Arc::new(Mutex::new(None)),
        }
    }

    /// Stops the run; the first cause wins.
    pub fn stop(&self, cause: StopCause) {
        lock(&self.cause).get_or_insert(cause);
        self.token.cancel();
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn cause(&self) -> Option<StopCause> {
        *lock(&self.cause)
    }
}

pub struct LeaseEntry {
    id: String,
    pool: Arc<Pool>,
    holding: Holding,
    /// The held container, for the operations of the lease.
    sandbox: sandbox::Container,
    ttl: Duration,
    /// When it was granted (before its first deadline was set).
    granted: Instant,
    /// The identity that acquired it: the only one that may use it.
    owner: String,
    /// When it ends whatever its keepalives (its pool's max_lease_lifetime).
    last: Instant,
    life: Mutex<Life>,
    /// Its place in the owner's lease quota, given back when it ends.
    quota: Mutex<Option<QuotaGuard>>,
    /// Operations in flight (runs, uploads, downloads).
    ops: TaskTracker,
    runs: Mutex<Runs>,
    /// Environment for every run, from Acquire.
    env: Vec<(String, String)>,
    /// Artifacts the lease's runs produced, in order.
    artifacts: Mutex<Vec<ArtifactInfo>>,
    /// State that other layers keep with the lease (contexts), by type.
    attachments: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl LeaseEntry {
    pub(super) fn info(&self) -> LeaseInfo {
        LeaseInfo {
            id: self.id.clone(),
            pool: self.pool.name().to_string(),
            container_id: self.holding.container().to_string(),
            ttl: self.ttl,
            expire_time: lock(&self.life).expire_time,
            granted: self.granted,
            temporary: matches!(self.holding, Holding::Temporary { .. }),
            language: self.pool.spec.language.clone(),
        }
    }
}

/// Access to a live lease for one operation. While it exists, the lease's
/// container is not reset: ending the lease waits for every guard to drop.
pub struct LeaseGuard {
    entry: Arc<LeaseEntry>,
    _token: TaskTrackerToken,
}

impl LeaseGuard {
    pub fn id(&self) -> &str {
        &self.entry.id
    }

    pub fn container_id(&self) -> &str {
        self.entry.sandbox.id()
    }

    /// The lease's container, for work in it.
    pub fn sandbox(&self) -> &sandbox::Container {
        &self.entry.sandbox
    }

    pub fn spec(&self) -> &Arc<PoolSpec> {
        self.entry.sandbox.spec()
    }

    pub fn lang(&self) -> &'static dyn Language {
        self.entry.sandbox.lang()
    }

    /// The meters of the lease's pool, for its runs to record in.
    pub fn meters(&self) -> &super::stats::Meters {
        &self.entry.pool.meters
    }

    /// The same meters, for what records after the lease's guard is gone.
    pub fn meters_handle(&self) -> Arc<super::stats::Meters> {
        Arc::clone(&self.entry.pool.meters)
    }

    /// Whether `run_id` names a run of this lease, going on or among the
    /// last finished ones.
    pub fn has_run(&self, run_id: &RunId) -> bool {
        let runs = lock(&self.entry.runs);
        runs.active.contains_key(run_id) || runs.finished.contains(run_id)
    }

    /// Registers a run so that Cancel and the lease's end can stop it. The
    /// registration ends when the returned value is dropped.
    pub fn register_run(&self, run_id: &RunId) -> RunRegistration {
        let control = RunControl::new();
        let ended = lock(&self.entry.life).ended;
        if let Some(end) = ended {
            control.stop(StopCause::LeaseEnded(end));
        }
        lock(&self.entry.runs)
            .active
            .insert(run_id.clone(), control.clone());
        self.entry.pool.count(|c| c.runs += 1);
        RunRegistration {
            entry: Arc::clone(&self.entry),
            run_id: run_id.clone(),
            control,
        }
    }

    /// An engine error in terms of this lease: a vanished container is the
    /// lease's `ContainerGone`.
    pub fn engine_error(&self, e: sandbox::EngineError) -> Error {
        match e {
            sandbox::EngineError::ContainerGone { .. } => Error::ContainerGone {
                lease_id: self.id().to_string(),
            },
            other => Error::from(other),
        }
    }

    /// A sandbox error in terms of this lease (see `engine_error`).
    pub fn sandbox_error(&self, e: sandbox::Error) -> Error {
        match e {
            sandbox::Error::Backend(b) => self.engine_error(b),
            other => Error::Sandbox(other),
        }
    }

    /// Environment variables for every run, from Acquire.
    pub fn env(&self) -> &[(String, String)] {
        &self.entry.env
    }

    /// Remembers artifacts a run produced (for ListArtifacts), the most
    /// recent `MAX_RECORDED_ARTIFACTS`: a long lease must not grow memory.
    pub fn record_artifacts(&self, found: Vec<ArtifactInfo>) {
        let mut recorded = lock(&self.entry.artifacts);
        recorded.extend(found);
        let excess = recorded.len().saturating_sub(MAX_RECORDED_ARTIFACTS);
        recorded.drain(..excess);
    }

    /// Artifacts the lease's runs produced so far.
    pub fn artifacts(&self) -> Vec<ArtifactInfo> {
        lock(&self.entry.artifacts).clone()
    }

    /// The lease's value of type `T` (made on first use), for state another
    /// layer keeps with the lease and that goes away with it.
    pub fn attachment<T: Any + Default + Send + Sync>(&self) -> Arc<T> {
        let mut attachments = lock(&self.entry.attachments);
        let value = attachments
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()) as Arc<dyn Any + Send + Sync>);
        match Arc::clone(value).downcast::<T>() {
            Ok(typed) => typed,
            // Keyed by its own TypeId: it is a T.
            Err(_) => Arc::new(T::default()),
        }
    }

    /// How the lease ended, if it has.
    pub fn ended(&self) -> Option<LeaseEnd> {
        lock(&self.entry.life).ended
    }

    /// A new guard on the same lease, for work that outlives this one's
    /// holder (a run's pump task).
    pub fn share(&self) -> LeaseGuard {
        LeaseGuard {
            entry: Arc::clone(&self.entry),
            _token: self.entry.ops.token(),
        }
    }
}

/// A run's entry in its lease; removed on drop.
pub struct RunRegistration {
    entry: Arc<LeaseEntry>,
    run_id: RunId,
    control: RunControl,
}

impl RunRegistration {
    pub fn control(&self) -> &RunControl {
        &self.control
    }
}

impl Drop for RunRegistration {
    fn drop(&mut self) {
        lock(&self.entry.runs).finish(&self.run_id);
    }
}

/// The answer to a keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Active {
        expire_time: SystemTime,
        ttl: Duration,
    },
    Ended(LeaseEnd),
    NotFound,
}

#[derive(Default)]
struct Leases {
    active: HashMap<String, Arc<LeaseEntry>>,
    ended: HashMap<String, (LeaseEnd, Instant)>,
}

/// Every lease of the server.
#[derive(Default)]
pub struct LeaseTable {
    leases: Mutex<Leases>,
    /// This process of its replica when the server is one of several:
    /// every lease id then names its owner, so any replica can forward a
    /// call for it, and its process, so a restart knows its predecessor's
    /// ids (see `cluster::lease_id`). `None` for a server on its own: ids
    /// are plain, as they always were.
    incarnation: Option<Incarnation>,
    /// Lease ends whose container is still being handed back.
    releasing: TaskTracker,
}

impl LeaseTable {
    /// A table whose lease ids start with `<replica>.` (`None`: plain ids).
    pub fn for_replica(replica: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            incarnation: replica.map(Incarnation::new),
            ..Self::default()
        })
    }

    fn new_id(&self) -> String {
        match &self.incarnation {
            Some(me) => me.mint(),
            None => format!("{:032x}", rand::random::<u128>()),
        }
    }

    /// The error for a lease id this table does not know.
    fn unknown(&self, id: &str) -> Error {
        match self.incarnation.as_ref().map(|me| me.origin(id)) {
            Some(Origin::PreviousProcess) => Error::LeaseEnded {
                id: id.to_string(),
                end: LeaseEnd::ReplicaGone,
            },
            Some(Origin::Here) | None => Error::LeaseNotFound(id.to_string()),
        }
    }

    /// Records a new lease on `holding`.
    pub(super) fn insert(
        &self,
        pool: Arc<Pool>,
        holding: Holding,
        ttl: Duration,
        owner: String,
        quota: QuotaGuard,
        env: Vec<(String, String)>,
    ) -> Arc<LeaseEntry> {
        let id = self.new_id();
        let granted = Instant::now();
        let last = granted + pool.spec.max_lease_lifetime;
        let mut life = Life {
            deadline: last,
            expire_time: SystemTime::now(),
            ended: None,
        };
        life.renew(ttl, last);
        let sandbox = pool.sandbox(holding.container());
        let entry = Arc::new(LeaseEntry {
            id: id.clone(),
            pool,
            holding,
            sandbox,
            ttl,
            granted,
            owner,
            last,
            life: Mutex::new(life),
            quota: Mutex::new(Some(quota)),
            ops: TaskTracker::new(),
            runs: Mutex::new(Runs::default()),
            env,
            artifacts: Mutex::new(Vec::new()),
            attachments: Mutex::new(HashMap::new()),
        });
        lock(&self.leases).active.insert(id, Arc::clone(&entry));
        entry
    }

    /// The live lease `id`, if `owner` may use it.
    fn entry(&self, id: &str, owner: &str) -> Result<Arc<LeaseEntry>> {
        let leases = lock(&self.leases);
        if let Some(entry) = leases.active.get(id) {
            if entry.owner == owner {
                return Ok(Arc::clone(entry));
            }
            return Err(Error::LeaseNotFound(id.to_string()));
        }
        match leases.ended.get(id) {
            Some((end, _)) => Err(Error::LeaseEnded {
                id: id.to_string(),
                end: *end,
            }),
            None => Err(self.unknown(id)),
        }
    }

    /// A guard for one operation on lease `id`.
    pub fn guard(&self, id: &str, owner: &str) -> Result<LeaseGuard> {
        let entry = self.entry(id, owner)?;
        let life = lock(&entry.life);
        if let Some(end) = life.ended {
            return Err(Error::LeaseEnded {
                id: id.to_string(),
                end,
            });
        }
        // Taken under the life lock: an end that has not happened yet will
        // wait for this token.
        let token = entry.ops.token();
        drop(life);
        Ok(LeaseGuard {
            entry,
            _token: token,
        })
    }

    /// Stops one run of lease `id`. `Ok(false)` when it had already ended.
    pub fn cancel_run(&self, id: &str, owner: &str, run_id: &str) -> Result<bool> {
        let entry = self.entry(id, owner)?;
        let run_id = RunId(run_id.to_string());
        let runs = lock(&entry.runs);
        if let Some(control) = runs.active.get(&run_id) {
            let already = control.token().is_cancelled();
            control.stop(StopCause::Cancelled);
            return Ok(!already);
        }
        if runs.finished.contains(&run_id) {
            return Ok(false);
        }
        Err(Error::RunNotFound {
            lease_id: id.to_string(),
            run_id: run_id.0,
        })
    }

    pub fn renew(&self, id: &str, owner: &str) -> Renewal {
        match self.entry(id, owner) {
            Ok(entry) => {
                let mut life = lock(&entry.life);
                if let Some(end) = life.ended {
                    return Renewal::Ended(end);
                }
                life.renew(entry.ttl, entry.last);
                Renewal::Active {
                    expire_time: life.expire_time,
                    ttl: entry.ttl,
                }
            }
            Err(Error::LeaseEnded { end, .. }) => Renewal::Ended(end),
            Err(_) => Renewal::NotFound,
        }
    }

    /// Ends lease `id` by its client's wish. Returns how it had already ended,
    /// or `None` if this call ended it.
    pub fn release(&self, id: &str, owner: &str) -> Result<Option<LeaseEnd>> {
        match self.entry(id, owner) {
            Ok(entry) => Ok(if self.end(&entry, LeaseEnd::Released) {
                None
            } else {
                lock(&entry.life).ended
            }),
            Err(Error::LeaseEnded { end, .. }) => Ok(Some(end)),
            Err(e) => Err(e),
        }
    }

    /// Ends a lease: marks it, stops its runs, and (in the background) waits
    /// for its operations before handing the container back. Returns false if
    /// it had already ended.
    fn end(&self, entry: &Arc<LeaseEntry>, end: LeaseEnd) -> bool {
        {
            let mut life = lock(&entry.life);
            if life.ended.is_some() {
                return false;
            }
            life.ended = Some(end);
            entry.ops.close();
        }
        // The lease no longer counts against its owner, even while its
        // container is still being handed back.
        drop(lock(&entry.quota).take());
        {
            let mut leases = lock(&self.leases);
            leases.active.remove(&entry.id);
            leases.ended.insert(entry.id.clone(), (end, Instant::now()));
        }
        entry.pool.lease_ended(end);
        for control in lock(&entry.runs).active.values() {
            control.stop(StopCause::LeaseEnded(end));
        }
        let entry = Arc::clone(entry);
        let hand_back = async move {
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, entry.ops.wait())
                .await
                .is_ok();
            if !drained {
                tracing::warn!(lease = %entry.id, "operations of an ended lease did not stop; destroying its container");
            }
            entry.pool.hand_back(entry.holding.clone(), !drained);
        };
        // In the span that ended the lease (its Release), so that the reset
        // it causes is linked to it.
        if crate::telemetry::enabled() {
            self.releasing.spawn(hand_back.in_current_span());
        } else {
            self.releasing.spawn(hand_back);
        }
        true
    }

    /// Expires the leases whose deadline passed, and forgets old tombstones.
    fn reap(&self) {
        let now = Instant::now();
        let due: Vec<Arc<LeaseEntry>> = lock(&self.leases)
            .active
            .values()
            .filter(|e| lock(&e.life).deadline <= now)
            .cloned()
            .collect();
        for entry in due {
            let end = if now >= entry.last {
                LeaseEnd::LifetimeExceeded
            } else {
                LeaseEnd::Expired
            };
            tracing::info!(lease = %entry.id, pool = %entry.pool.name(), ?end, "lease ended by the server");
            self.end(&entry, end);
        }
        lock(&self.leases)
            .ended
            .retain(|_, (_, at)| now.duration_since(*at) < TOMBSTONE_TTL);
    }

    pub fn spawn_reaper(self: &Arc<Self>, stop: CancellationToken) {
        let table = Arc::clone(self);
        crate::supervise::spawn("lease reaper", move || {
            let table = Arc::clone(&table);
            let stop = stop.clone();
            async move {
                let mut tick = tokio::time::interval(REAP_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => table.reap(),
                        _ = stop.cancelled() => return,
                    }
                }
            }
        });
    }

    /// Ends the leases that hold `container` (it died).
    pub fn end_by_container(&self, container: &str, end: LeaseEnd) {
        let holders: Vec<Arc<LeaseEntry>> = lock(&self.leases)
            .active
            .values()
            .filter(|e| e.holding.container() == container)
            .cloned()
            .collect();
        for entry in holders {
            tracing::warn!(lease = %entry.id, %container, ?end, "the lease's container is gone; ending the lease");
            self.end(&entry, end);
        }
    }

    /// Ends the leases on pool `pool` (it is being deleted).
    pub fn end_by_pool(&self, pool: &str, end: LeaseEnd) {
        let on_pool: Vec<Arc<LeaseEntry>> = lock(&self.leases)
            .active
            .values()
            .filter(|e| e.pool.name() == pool)
            .cloned()
            .collect();
        for entry in on_pool {
            self.end(&entry, end);
        }
    }

    /// The containers of leases on temporary containers.
    pub fn temporary_containers(&self) -> Vec<String> {
        lock(&self.leases)
            .active
            .values()
            .filter(|e| matches!(e.holding, Holding::Temporary { .. }))
            .map(|e| e.holding.container().to_string())
            .collect()
    }

    /// Revokes every lease (server stopping).
    pub fn revoke_all(&self) {
        let all: Vec<Arc<LeaseEntry>> = lock(&self.leases).active.values().cloned().collect();
        for entry in all {
            self.end(&entry, LeaseEnd::Revoked);
        }
    }

    /// Leases alive now.
    pub fn active(&self) -> usize {
        lock(&self.leases).active.len()
    }

    /// Runs going on in any lease.
    pub fn running(&self) -> usize {
        lock(&self.leases)
            .active
            .values()
            .map(|e| lock(&e.runs).active.len())
            .sum()
    }

    /// Waits until every ended lease has handed its container back.
    pub async fn settle(&self) {
        self.releasing.close();
        self.releasing.wait().await;
        self.releasing.reopen();
    }
}
