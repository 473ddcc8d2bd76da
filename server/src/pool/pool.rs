//! One pool: its containers' states, the idle stack, the FIFO of waiting
//! acquirers, and the transitions between them. All state sits behind one
//! std mutex that is never held across an await: engine work (create, reset,
//! remove) runs in spawned tasks that take the lock only to record results.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

// tokio's clock, not std's: the same in production, and under
// `tokio::time::pause` (the unit tests over `backend::fake`) the one the
// timers follow. Every deadline here ends in a tokio timer; on std's clock a
// paused test's timers would fire against instants that never advance.
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    Error, LeaseEnd, Result,
    stats::{Counters, LatencyWindow, Meters, PoolStats, RecycleReason, StateCounts},
};
use crate::{
    backend::SharedBackend,
    identity::QuotaGuard,
    lang::Language,
    sandbox,
    spec::{ExhaustionStrategy, PoolSpec},
    telemetry,
};

/// Longest pause between attempts to create a container while creation fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The TEMPORARY containers the whole server may run at once, shared by
/// every pool (each pool also has its own `max_temporary`).
#[derive(Debug)]
pub struct TemporaryBudget {
    max: u32,
    used: std::sync::atomic::AtomicU32,
}

impl TemporaryBudget {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: Default::default(),
        })
    }

    fn try_take(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        use std::sync::atomic::Ordering;
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }
}

/// Whether an engine answers, shared by every pool on it and kept by the
/// manager's engine watcher.
#[derive(Debug)]
pub struct EngineHealth {
    pub kind: crate::backend::BackendKind,
    up: std::sync::atomic::AtomicBool,
    /// Something suspects the engine is down: the watcher probes at once.
    pub(super) suspect: Notify,
    /// Tells watchers of the server's health when `up` changes.
    changes: watch::Sender<bool>,
    /// Asks the engine watcher to handle every event already received.
    catch_up: tokio::sync::mpsc::Sender<oneshot::Sender<()>>,
    /// The watcher's end of `catch_up`, taken when it starts.
    pub(super) catch_up_requests: Mutex<Option<tokio::sync::mpsc::Receiver<oneshot::Sender<()>>>>,
}

/// Longest an acquire waits for the engine watcher to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_millis(20);

impl EngineHealth {
    pub fn new(kind: crate::backend::BackendKind) -> Arc<Self> {
        let (catch_up, requests) = tokio::sync::mpsc::channel(64);
        Arc::new(Self {
            kind,
            up: std::sync::atomic::AtomicBool::new(true),
            suspect: Notify::new(),
            changes: watch::channel(true).0,
            catch_up,
            catch_up_requests: Mutex::new(Some(requests)),
        })
    }

    /// Waits (briefly) until the watcher handled every engine event that has
    /// reached this process: a container the engine reported dead a moment
    /// ago must not be handed out. An in-memory round trip to the watcher,
    /// no engine call; skipped when no watcher runs or it is busy.
    pub(super) async fn catch_up(&self) {
        let (done, handled) = oneshot::channel();
        if self.catch_up.try_send(done).is_ok() {
            let _ = tokio::time::timeout(CATCH_UP_TIMEOUT, handled).await;
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn set_up(&self, up: bool) {
        if self.up.swap(up, std::sync::atomic::Ordering::AcqRel) != up {
            tracing::warn!(backend = %self.kind, up, "engine availability changed");
            self.changes.send_replace(up);
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.changes.subscribe()
    }
}

/// How many container creations of pools filling themselves run at once,
/// server-wide (a TEMPORARY container, which a caller waits for, is not
/// held back). A creation is a burst of engine work (create, start, a few
/// execs, an interpreter start): 200 at once on 2 cores had the engine stop
/// answering for seconds and made creations time out (the warden's start),
/// each then retried; in waves they finish sooner, and the first containers
/// of a large pool are ready in seconds, not when all are. Enough per core
/// that a pool of 10 still warms all at once.
pub fn creation_permits() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).max(16)
}

/// What a pool shares with the rest of the server.
pub struct PoolContext {
    pub server_id: Arc<str>,
    pub temporary_budget: Arc<TemporaryBudget>,
    /// Permits for a pool's own creations (its fill), server-wide.
    pub creations: Arc<tokio::sync::Semaphore>,
    pub engine: Arc<EngineHealth>,
    /// Cancelled when the server stops: removals stop retrying then (the
    /// shutdown removes what is left by label).
    pub server_stop: CancellationToken,
}

/// Where the engine reported a container gone, as the pool saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Not one of the pool's (anymore).
    Unknown,
    /// It was idle: taken out and replaced; no lease ever sees it.
    Idle,
    /// A lease holds it: the lease must end.
    Leased,
    /// Being created, reset or removed: that work finds out by itself.
    InFlight,
}

/// Longest pause between attempts to remove a container while removal fails.
const MAX_REMOVE_BACKOFF: Duration = Duration::from_secs(5);

/// Who a pool belongs to.
pub struct Ownership {
    /// The identity that created it at run time; `None`: the config file's.
    pub owner: Option<String>,
    /// Its place in the owner's pool quota, held as long as the pool lives.
    pub quota: Option<QuotaGuard>,
    /// The pool lapses unless its owner keeps it alive within this TTL.
    pub ttl: Option<Duration>,
}

/// When an owned pool lapses.
#[derive(Debug, Clone, Copy)]
pub struct OwnerDeadline {
    pub at: Instant,
    pub expire_time: SystemTime,
}

impl OwnerDeadline {
    fn after(ttl: Duration) -> Self {
        Self {
            at: Instant::now() + ttl,
            expire_time: SystemTime::now() + ttl,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    Initializing,
    Idle,
    Busy,
    Resetting,
    Unhealthy,
    Removing,
}

pub(super) struct Slot {
    pub state: SlotState,
    pub container: Option<String>,
    pub created: Instant,
    pub idle_since: Instant,
    pub uses: u32,
    /// Failed a health check while leased: removed, not reset, on release.
    pub poisoned: bool,
}

/// What a lease holds: a container of the pool, or a temporary one.
#[derive(Debug, Clone)]
pub enum Holding {
    Pooled { slot: u64, container: String },
    Temporary { container: String },
}

impl Holding {
    pub fn container(&self) -> &str {
        match self {
            Holding::Pooled { container, .. } | Holding::Temporary { container } => container,
        }
    }
}

enum WaitFailure {
    Closed,
    Failing(String),
    EngineDown(String),
}

/// What the synchronous part of an acquire decided.
enum Attempt {
    Granted(Holding),
    Failed(Error),
    Temporary,
    Wait(WaitTicket),
}

struct Grant {
    slot: u64,
    container: String,
}

struct Waiter {
    id: u64,
    since: Instant,
    tx: oneshot::Sender<Result<Grant, WaitFailure>>,
}

pub(super) struct State {
    pub slots: HashMap<u64, Slot>,
    /// Idle slots, most recently idle last: acquire takes the warmest, idle
    /// timeout trims the coldest.
    pub idle: Vec<u64>,
    waiters: VecDeque<Waiter>,
    next_id: u64,
    pub closed: bool,
    warmed: bool,
    /// Why the last creation failed; cleared by the next success.
    pub failure: Option<String>,
    /// The last failure was the engine not answering.
    pub engine_down: bool,
    pub retry_at: Option<Instant>,
    backoff: Duration,
    image_checked: bool,
    /// An acquire happened: without prewarming, min_pool_size applies from then on.
    lazy_started: bool,
    temporaries: u32,
    active_leases: u32,
    pub counters: Counters,
    latency: LatencyWindow,
    pub next_health: Instant,
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn counts(&self) -> StateCounts {
        let mut c = StateCounts::default();
        for slot in self.slots.values() {
            match slot.state {
                SlotState::Initializing => c.initializing += 1,
                SlotState::Idle => c.idle += 1,
                SlotState::Busy => c.busy += 1,
                SlotState::Resetting => c.resetting += 1,
                SlotState::Unhealthy => c.unhealthy += 1,
                SlotState::Removing => c.removing += 1,
            }
        }
        c
    }
}

/// Containers that exist or are on their way, i.e. not on their way out.
pub(super) fn live(c: &StateCounts) -> u32 {
    c.initializing + c.idle + c.busy + c.resetting
}

/// Where a pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Warming,
    Ready,
    Failing,
    Draining,
}

pub(crate) struct Pool {
    pub spec: Arc<PoolSpec>,
    pub lang: &'static dyn Language,
    pub backend: SharedBackend,
    pub created: SystemTime,
    pub ownership: Ownership,
    /// For a pool with an owner TTL: when it lapses.
    owner_deadline: Mutex<Option<OwnerDeadline>>,
    pub(super) context: PoolContext,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    /// Wakes the maintainer early (a failure to retry, a slot to refill).
    pub(super) wake: Notify,
    /// Engine work in flight (creations, resets, removals).
    pub(super) tasks: TaskTracker,
    /// Stops the maintainer.
    pub(super) stop: CancellationToken,
    /// The live containers, with what the server keeps for each.
    sandboxes: sandbox::Sandboxes,
    /// Durations and counts recorded where the work happens, without the
    /// lock (runs record theirs through their lease).
    /// Shared with what outlives a lease's borrow of the pool (a
    /// resumable run's buffer).
    pub(crate) meters: Arc<Meters>,
}

impl Pool {
    pub fn new(
        spec: PoolSpec,
        lang: &'static dyn Language,
        backend: SharedBackend,
        context: PoolContext,
        ownership: Ownership,
    ) -> Arc<Self> {
        let now = Instant::now();
        let interval = spec.config.health_check_interval;
        Arc::new(Self {
            spec: Arc::new(spec),
            lang,
            backend,
            created: SystemTime::now(),
            // The owner's clock starts when CreatePool answers (or is
            // abandoned): a warm-up longer than the TTL must not delete the
            // pool before its creator even knows it exists.
            owner_deadline: Mutex::new(None),
            ownership,
            context,
            state: Mutex::new(State {
                slots: HashMap::new(),
                idle: Vec::new(),
                waiters: VecDeque::new(),
                next_id: 0,
                closed: false,
                warmed: false,
                failure: None,
                engine_down: false,
                retry_at: None,
                backoff: Duration::ZERO,
                image_checked: false,
                lazy_started: false,
                temporaries: 0,
                active_leases: 0,
                counters: Counters::default(),
                latency: LatencyWindow::default(),
                next_health: now + interval,
            }),
            changes: watch::channel(0).0,
            wake: Notify::new(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            sandboxes: sandbox::Sandboxes::default(),
            meters: Arc::default(),
        })
    }

    /// The handle of one of the pool's containers (shared by everyone who
    /// uses it: see `sandbox::Container`).
    pub fn sandbox(&self, id: &str) -> sandbox::Container {
        self.sandboxes.get_or_insert(id, || {
            sandbox::Container::new(
                Arc::clone(&self.backend),
                Arc::clone(&self.spec),
                self.lang,
                id,
            )
        })
    }

    /// Starts prewarming and the maintainer.
    pub fn start(self: &Arc<Self>) {
        {
            let mut st = self.lock();
            self.update_warmed(&mut st);
            self.fill(&mut st);
        }
        self.spawn_maintainer();
        self.changed();
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Tells watchers that the statistics changed.
    pub(super) fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn phase(&self) -> (Phase, String) {
        let st = self.lock();
        let phase = if st.closed {
            Phase::Draining
        } else if st.failure.is_some() {
            Phase::Failing
        } else if !st.warmed {
            Phase::Warming
        } else {
            Phase::Ready
        };
        (phase, st.failure.clone().unwrap_or_default())
    }

    /// Warm (min_pool_size containers came up once) or failing: either way
    /// waiting longer for it to warm up is pointless.
    pub fn settled(&self) -> bool {
        let st = self.lock();
        st.warmed || st.failure.is_some() || st.closed
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Closed, and every container it had is gone.
    pub fn is_drained(&self) -> bool {
        let st = self.lock();
        st.closed && st.slots.is_empty() && st.temporaries == 0
    }

    pub fn busy_count(&self) -> u32 {
        self.lock().counts().busy
    }

    /// Idle containers now: what `stats` counts, without the rest.
    pub fn idle(&self) -> u32 {
        self.lock().counts().idle
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.lock();
        let counts = st.counts();
        PoolStats {
            pool: self.spec.name.clone(),
            total_size: counts.total(),
            max_size: self.spec.config.max_pool_size,
            min_size: self.spec.config.min_pool_size,
            state_counts: counts,
            closed: st.closed,
            counters: st.counters,
            acquire_latency: st.latency.summary(),
            meters: self.meters.snapshot(),
            temporary_containers: st.temporaries,
            waiting: st.waiters.len() as u32,
            active_leases: st.active_leases,
            created: self.created,
            time: SystemTime::now(),
        }
    }

    pub(super) fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.lock().counters);
        self.changed();
    }

    /// Takes a container for a new lease, per the exhaustion strategy.
    /// `deadline` is the caller's own (its gRPC deadline), if any.
    pub async fn acquire(self: &Arc<Self>, deadline: Option<Instant>) -> Result<Holding> {
        let arrived = Instant::now();
        loop {
            self.context.engine.catch_up().await;
            let holding = match self.try_acquire(arrived) {
                Attempt::Granted(holding) => holding,
                Attempt::Failed(e) => return Err(e),
                Attempt::Temporary => return self.acquire_temporary(arrived).await,
                Attempt::Wait(ticket) => {
                    self.wait(ticket, arrived, deadline)
                        .instrument(crate::otel_span!("pool.wait"))
                        .await?
                }
            };
            match holding {
                Holding::Pooled { slot, container } if self.backend.removal_events_late() => {
                    // Cancelled while asking: the grant is undone.
                    let pending = PendingGrant { pool: self, slot };
                    let running = self.backend.container_running(&container).await;
                    // Answered: the grant stands (or is discarded below).
                    std::mem::forget(pending);
                    // An engine that does not answer is no reason to refuse:
                    // the lease's first call will say what is wrong.
                    if matches!(running, Ok(false)) {
                        self.discard_gone(slot, &container);
                    } else {
                        return Ok(Holding::Pooled { slot, container });
                    }
                }
                holding => return Ok(holding),
            }
        }
    }

    /// A container granted but found gone before it reached its caller
    /// (removed behind the pool's back, the engine not having said so yet):
    /// the grant is undone, the container replaced like any that died, and
    /// the caller takes another.
    fn discard_gone(self: &Arc<Self>, slot: u64, container: &str) {
        tracing::warn!(pool = %self.spec.name, %container, "an idle container is gone; replacing it");
        let mut st = self.lock();
        st.counters.acquisitions = st.counters.acquisitions.saturating_sub(1);
        st.active_leases = st.active_leases.saturating_sub(1);
        st.counters.health_failures += 1;
        self.begin_remove(&mut st, slot, RecycleReason::Unhealthy);
        self.fill(&mut st);
        drop(st);
        self.changed();
    }

    /// The synchronous part of acquire, under the lock.
    fn try_acquire(self: &Arc<Self>, arrived: Instant) -> Attempt {
        let config = &self.spec.config;
        let mut st = self.lock();
        if st.closed {
            return Attempt::Failed(Error::PoolClosed(self.spec.name.clone()));
        }
        if !self.context.engine.is_up() {
            // Whatever is idle died with the engine or cannot be reached:
            // handing it out would only fail the first run.
            return Attempt::Failed(self.engine_down(String::new()));
        }
        st.lazy_started = true;
        if let Some(slot) = st.idle.pop() {
            let container = self.grant(&mut st, slot, arrived);
            drop(st);
            self.changed();
            return Attempt::Granted(Holding::Pooled { slot, container });
        }
        let counts = st.counts();
        if live(&counts) == 0
            && let Some(message) = st.failure.clone()
        {
            if st.engine_down {
                return Attempt::Failed(self.engine_down(message));
            }
            return Attempt::Failed(Error::PoolFailing {
                pool: self.spec.name.clone(),
                message,
            });
        }
        let can_grow = live(&counts) < config.max_pool_size;
        // Containers being reset or created are free in moments: a pool with
        // one on its way that no waiter has claimed is not exhausted, so
        // FAIL_FAST and TEMPORARY wait for it rather than refuse or start a
        // temporary right after a release.
        let on_the_way =
            (counts.resetting + counts.initializing).saturating_sub(st.waiters.len() as u32);
        let exhausted = !can_grow && on_the_way == 0;
        match config.exhaustion_strategy {
            ExhaustionStrategy::FailFast if exhausted => {
                st.counters.fail_fast_refusals += 1;
                drop(st);
                self.changed();
                return Attempt::Failed(Error::Exhausted {
                    pool: self.spec.name.clone(),
                    detail: format!(
                        "all {} containers are leased and the strategy is FAIL_FAST",
                        config.max_pool_size
                    ),
                    waited: Duration::ZERO,
                });
            }
            ExhaustionStrategy::Temporary if exhausted => {
                let limit = self.spec.temporary_limit();
                if st.temporaries >= limit || !self.context.temporary_budget.try_take() {
                    st.counters.fail_fast_refusals += 1;
                    st.counters.temporary_refusals += 1;
                    let detail = if st.temporaries >= limit {
                        format!(
                            "all {} containers are leased and so are the pool's {limit} temporary ones (max_temporary)",
                            config.max_pool_size
                        )
                    } else {
                        "all containers are leased and the server runs as many temporary containers as it allows".to_string()
                    };
                    drop(st);
                    self.changed();
                    return Attempt::Failed(Error::Exhausted {
                        pool: self.spec.name.clone(),
                        detail,
                        waited: Duration::ZERO,
                    });
                }
                st.counters.temporaries += 1;
                st.temporaries += 1;
                drop(st);
                self.changed();
                return Attempt::Temporary;
            }
            _ => {}
        }
        let (tx, rx) = oneshot::channel();
        let id = st.next_id();
        st.waiters.push_back(Waiter {
            id,
            since: arrived,
            tx,
        });
        if !can_grow {
            st.counters.waits += 1;
        }
        self.fill(&mut st);
        drop(st);
        self.changed();
        Attempt::Wait(WaitTicket {
            pool: Arc::clone(self),
            id,
            rx: Some(rx),
        })
    }

    async fn wait(
        &self,
        mut ticket: WaitTicket,
        arrived: Instant,
        deadline: Option<Instant>,
    ) -> Result<Holding> {
        let limit = self.spec.config.acquisition_timeout.map(|t| arrived + t);
        let until = match (limit, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(rx) = ticket.rx.as_mut() else {
            return Err(Error::ShuttingDown);
        };
        let outcome = match until {
            Some(until) => tokio::time::timeout_at(until, rx).await.ok(),
            None => Some(rx.await),
        };
        match outcome {
            Some(Ok(Ok(grant))) => {
                ticket.rx = None;
                Ok(Holding::Pooled {
                    slot: grant.slot,
                    container: grant.container,
                })
            }
            Some(Ok(Err(WaitFailure::Closed))) | Some(Err(_)) => {
                ticket.rx = None;
                Err(Error::PoolClosed(self.spec.name.clone()))
            }
            Some(Ok(Err(WaitFailure::Failing(message)))) => {
                ticket.rx = None;
                Err(Error::PoolFailing {
                    pool: self.spec.name.clone(),
                    message,
                })
            }
            Some(Ok(Err(WaitFailure::EngineDown(detail)))) => {
                ticket.rx = None;
                Err(self.engine_down(detail))
            }
            None => {
                // The ticket's drop hands back a container granted at the
                // last moment.
                drop(ticket);
                self.count(|c| c.wait_timeouts += 1);
                let waited = arrived.elapsed();
                let bound = match (limit, deadline) {
                    (Some(l), Some(d)) if d < l => "the call's deadline",
                    (Some(_), _) => "acquisition_timeout",
                    _ => "the call's deadline",
                };
                Err(Error::Exhausted {
                    pool: self.spec.name.clone(),
                    detail: format!(
                        "no container became free within {:.1}s ({bound}); all {} are leased",
                        waited.as_secs_f64(),
                        self.spec.config.max_pool_size
                    ),
                    waited,
                })
            }
        }
    }

    /// Makes a temporary container for an Acquire, in a task of its own: if
    /// the caller goes away meanwhile (its deadline passes, its connection
    /// drops), the task still finishes, and what the caller never got is
    /// given back (see `TemporaryTicket`): no temporary stays counted, no
    /// container stays on the engine.
    async fn acquire_temporary(self: &Arc<Self>, arrived: Instant) -> Result<Holding> {
        let (tx, rx) = oneshot::channel();
        let pool = Arc::clone(self);
        // The Acquire waits for it: a child of its span, not a root.
        let span = crate::otel_span!("container.create", temporary = true);
        self.tasks.spawn(async move {
            let began = Instant::now();
            let created = pool.provision(true).instrument(span).await;
            if created.is_ok() {
                pool.meters.create.record(began.elapsed());
            }
            let made = pool.temporary_made(created, arrived);
            if let Err(Ok(Holding::Temporary { container })) = tx.send(made) {
                pool.ungrant_temporary(container);
            }
        });
        let mut ticket = TemporaryTicket {
            pool: Arc::clone(self),
            rx: Some(rx),
        };
        let Some(rx) = ticket.rx.as_mut() else {
            return Err(Error::ShuttingDown);
        };
        let made = rx.await;
        ticket.rx = None;
        made.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Gives back a temporary container made for an Acquire whose caller
    /// went away: as if it had never been granted.
    fn ungrant_temporary(self: &Arc<Self>, container: String) {
        let mut st = self.lock();
        st.counters.acquisitions = st.counters.acquisitions.saturating_sub(1);
        st.active_leases = st.active_leases.saturating_sub(1);
        st.temporaries = st.temporaries.saturating_sub(1);
        self.context.temporary_budget.give_back();
        drop(st);
        self.spawn_remove_container(container);
        self.changed();
    }

    /// The accounting of a temporary container made (or not) for an Acquire.
    fn temporary_made(
        &self,
        created: std::result::Result<String, sandbox::Error>,
        arrived: Instant,
    ) -> Result<Holding> {
        let mut st = self.lock();
        let result = match created {
            Ok(container) => {
                st.counters.containers_created += 1;
                st.counters.acquisitions += 1;
                st.active_leases += 1;
                let latency = arrived.elapsed();
                st.latency.record(latency);
                self.meters.acquire.record(latency);
                Ok(Holding::Temporary { container })
            }
            Err(e) => {
                st.counters.create_failures += 1;
                st.temporaries -= 1;
                self.context.temporary_budget.give_back();
                if engine_unreachable(&e) {
                    self.context.engine.suspect.notify_one();
                    Err(self.engine_down(e.to_string()))
                } else {
                    Err(Error::PoolFailing {
                        pool: self.spec.name.clone(),
                        message: describe_failure(&self.spec, &e),
                    })
                }
            }
        };
        drop(st);
        self.changed();
        result
    }

    /// Marks an available slot busy for a new lease and does the accounting.
    fn grant(&self, st: &mut State, slot: u64, since: Instant) -> String {
        st.counters.acquisitions += 1;
        st.active_leases += 1;
        let latency = since.elapsed();
        st.latency.record(latency);
        self.meters.acquire.record(latency);
        match st.slots.get_mut(&slot) {
            Some(s) => {
                s.state = SlotState::Busy;
                s.uses += 1;
                s.container.clone().unwrap_or_default()
            }
            None => String::new(),
        }
    }

    /// Undoes `grant` for a lease that never reached its caller.
    fn ungrant(&self, st: &mut State, slot: u64) {
        st.counters.acquisitions = st.counters.acquisitions.saturating_sub(1);
        st.active_leases = st.active_leases.saturating_sub(1);
        if let Some(s) = st.slots.get_mut(&slot) {
            s.uses = s.uses.saturating_sub(1);
        }
        self.make_available(st, slot);
    }

    /// A warm container is free: the longest waiter gets it, else it goes idle.
    fn make_available(&self, st: &mut State, slot: u64) {
        let Some(container) = st.slots.get(&slot).and_then(|s| s.container.clone()) else {
            return;
        };
        while let Some(waiter) = st.waiters.pop_front() {
            let grant = Grant {
                slot,
                container: container.clone(),
            };
            if waiter.tx.send(Ok(grant)).is_ok() {
                self.grant(st, slot, waiter.since);
                return;
            }
        }
        if let Some(s) = st.slots.get_mut(&slot) {
            s.state = SlotState::Idle;
            s.idle_since = Instant::now();
            st.idle.push(slot);
        }
        self.update_warmed(st);
    }

    fn update_warmed(&self, st: &mut State) {
        if st.warmed {
            return;
        }
        let target = if self.spec.config.enable_prewarming {
            self.spec.config.min_pool_size
        } else {
            0
        };
        let c = st.counts();
        if c.idle + c.busy + c.resetting >= target {
            st.warmed = true;
        }
    }

    /// Starts as many creations as the pool needs: up to min_pool_size, and one
    /// per waiter not already covered by a container on its way.
    pub(super) fn fill(self: &Arc<Self>, st: &mut State) {
        if st.closed || st.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let config = &self.spec.config;
        let counts = st.counts();
        let live = live(&counts);
        let min_target = if config.enable_prewarming || st.lazy_started {
            config.min_pool_size
        } else {
            0
        };
        let pending = counts.initializing + counts.resetting;
        let for_min = min_target.saturating_sub(live);
        let for_waiters = (st.waiters.len() as u32).saturating_sub(pending);
        // Containers on their way out still exist on the engine: the pool
        // never holds more than max_pool_size of them at once.
        let mut n = for_min
            .max(for_waiters)
            .min(config.max_pool_size.saturating_sub(counts.total()));
        if st.failure.is_some() {
            // While creation fails, probe with one container, not a burst.
            n = n.min(u32::from(counts.initializing == 0));
        }
        for _ in 0..n {
            let id = st.next_id();
            let now = Instant::now();
            st.slots.insert(
                id,
                Slot {
                    state: SlotState::Initializing,
                    container: None,
                    created: now,
                    idle_since: now,
                    uses: 0,
                    poisoned: false,
                },
            );
            let pool = Arc::clone(self);
            let span = telemetry::background("container.create", &self.spec.name);
            self.tasks
                .spawn(async move { pool.create(id).await }.instrument(span));
        }
    }

    async fn provision(&self, temporary: bool) -> Result<String, sandbox::Error> {
        let checked = self.lock().image_checked;
        if !checked {
            self.backend.ensure_image(&self.spec.image).await?;
            self.lock().image_checked = true;
        }
        let container = sandbox::container_spec(&self.spec, &self.context.server_id, temporary);
        let result = sandbox::provision(
            Arc::clone(&self.backend),
            Arc::clone(&self.spec),
            self.lang,
            &container,
        )
        .await;
        if let Err(sandbox::Error::Backend(crate::backend::Error::ImageMissing { .. })) = &result {
            self.lock().image_checked = false;
        }
        let sandbox = result?;
        self.sandboxes.insert(&sandbox);
        Ok(sandbox.id().to_string())
    }

    async fn create(self: Arc<Self>, slot: u64) {
        // Never closed: a permit, always.
        let _permit = self.context.creations.acquire().await;
        let began = Instant::now();
        let result = self.provision(false).await;
        if result.is_ok() {
            self.meters.create.record(began.elapsed());
        }
        let mut st = self.lock();
        match result {
            Ok(container) => {
                st.counters.containers_created += 1;
                st.failure = None;
                st.engine_down = false;
                st.retry_at = None;
                st.backoff = Duration::ZERO;
                let Some(s) = st.slots.get_mut(&slot) else {
                    drop(st);
                    self.spawn_remove_container(container);
                    return;
                };
                s.container = Some(container);
                s.created = Instant::now();
                if st.closed {
                    self.begin_remove(&mut st, slot, RecycleReason::Drained);
                } else {
                    self.make_available(&mut st, slot);
                }
            }
            Err(e) => {
                let message = describe_failure(&self.spec, &e);
                tracing::warn!(pool = %self.spec.name, error = %message, "container creation failed");
                st.slots.remove(&slot);
                st.counters.create_failures += 1;
                st.failure = Some(message.clone());
                st.engine_down = engine_unreachable(&e);
                st.backoff = (st.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                st.retry_at = Some(Instant::now() + st.backoff);
                if st.engine_down {
                    // The engine watcher probes it and calls `engine_back`
                    // the moment it answers: no need to sit out the backoff.
                    self.context.engine.suspect.notify_one();
                }
                if live(&st.counts()) == 0 {
                    // Nothing is on its way: waiting acquirers would only
                    // time out. Tell them why now.
                    let engine_down = st.engine_down;
                    for w in st.waiters.drain(..) {
                        let failure = if engine_down {
                            WaitFailure::EngineDown(message.clone())
                        } else {
                            WaitFailure::Failing(message.clone())
                        };
                        let _ = w.tx.send(Err(failure));
                    }
                }
                self.wake.notify_one();
            }
        }
        drop(st);
        self.changed();
    }

    /// A lease on this pool ended. It stops counting as active at once: its
    /// Release has answered, and stats taken after it must not show it.
    /// Its container is handed back later (`hand_back`), once the lease's
    /// operations have stopped.
    pub fn lease_ended(&self, end: LeaseEnd) {
        let mut st = self.lock();
        st.active_leases = st.active_leases.saturating_sub(1);
        match end {
            LeaseEnd::Released => st.counters.releases += 1,
            LeaseEnd::Expired | LeaseEnd::LifetimeExceeded => st.counters.lease_expirations += 1,
            LeaseEnd::Revoked
            | LeaseEnd::ContainerLost
            | LeaseEnd::PoolDeleted
            | LeaseEnd::ReplicaGone => {}
        }
        drop(st);
        self.changed();
    }

    /// The container of an ended lease (see `lease_ended`) comes back: reset
    /// for the next lease, or removed.
    pub fn hand_back(self: &Arc<Self>, holding: Holding, poisoned: bool) {
        let mut st = self.lock();
        match holding {
            Holding::Temporary { container } => {
                st.temporaries = st.temporaries.saturating_sub(1);
                self.context.temporary_budget.give_back();
                drop(st);
                self.spawn_remove_container(container);
            }
            Holding::Pooled { slot, .. } => {
                let closed = st.closed;
                let Some(s) = st.slots.get_mut(&slot) else {
                    return;
                };
                let config = &self.spec.config;
                let reason = if poisoned || s.poisoned {
                    Some(RecycleReason::Unhealthy)
                } else if closed {
                    Some(RecycleReason::Drained)
                } else if !self.spec.reuse {
                    Some(RecycleReason::NoReuse)
                } else if config.max_container_uses.is_some_and(|max| s.uses >= max) {
                    Some(RecycleReason::Uses)
                } else if config
                    .max_container_lifetime
                    .is_some_and(|max| s.created.elapsed() >= max)
                {
                    Some(RecycleReason::Lifetime)
                } else {
                    None
                };
                match reason {
                    Some(reason) => self.begin_remove(&mut st, slot, reason),
                    None => {
                        s.state = SlotState::Resetting;
                        let container = s.container.clone().unwrap_or_default();
                        let pool = Arc::clone(self);
                        let span = telemetry::background("container.reset", &self.spec.name);
                        self.tasks.spawn(
                            async move { pool.reset(slot, container).await }.instrument(span),
                        );
                    }
                }
                self.fill(&mut st);
                drop(st);
            }
        }
        self.changed();
    }

    async fn reset(self: Arc<Self>, slot: u64, container: String) {
        let began = Instant::now();
        let result = sandbox::reset(&self.sandbox(&container)).await;
        self.meters.reset_done(began.elapsed(), result.is_ok());
        let mut st = self.lock();
        let died = st.slots.get(&slot).is_some_and(|s| s.poisoned);
        match result {
            Ok(()) if died => self.begin_remove(&mut st, slot, RecycleReason::Unhealthy),
            Ok(()) if st.closed => self.begin_remove(&mut st, slot, RecycleReason::Drained),
            Ok(()) => self.make_available(&mut st, slot),
            Err(e) => {
                tracing::warn!(pool = %self.spec.name, %container, error = %e, "reset failed; replacing the container");
                // A container lost with its engine (an outage mid-reset) is
                // unhealthy like one that died; a failed reset is a reset
                // that ran and could not clear the container.
                let reason = match e {
                    sandbox::Error::Backend(
                        crate::backend::Error::ContainerGone { .. }
                        | crate::backend::Error::Unreachable { .. },
                    )
                    | sandbox::Error::OnNetwork { .. } => RecycleReason::Unhealthy,
                    _ => RecycleReason::ResetFailed,
                };
                self.begin_remove(&mut st, slot, reason);
            }
        }
        self.fill(&mut st);
        drop(st);
        self.changed();
    }

    /// Takes a slot out of service and removes its container in the background.
    pub(super) fn begin_remove(self: &Arc<Self>, st: &mut State, slot: u64, reason: RecycleReason) {
        let Some(s) = st.slots.get_mut(&slot) else {
            return;
        };
        s.state = if reason == RecycleReason::Unhealthy {
            SlotState::Unhealthy
        } else {
            SlotState::Removing
        };
        st.counters.recycled.count(reason);
        st.idle.retain(|&id| id != slot);
        let container = s.container.clone();
        let pool = Arc::clone(self);
        let span = telemetry::background("container.recycle", &self.spec.name);
        self.tasks.spawn(async move {
            if let Some(container) = container {
                pool.remove_until_gone(&container).instrument(span).await;
            }
            let mut st = pool.lock();
            st.slots.remove(&slot);
            pool.fill(&mut st);
            drop(st);
            pool.changed();
        });
    }

    /// Removes a container, and what the server kept for it (its warden's
    /// stdin closes).
    fn spawn_remove_container(self: &Arc<Self>, container: String) {
        let pool = Arc::clone(self);
        self.tasks.spawn(async move {
            pool.remove_until_gone(&container).await;
            pool.changed();
        });
    }

    /// Removes a container, retrying with backoff until the engine confirms
    /// or the server stops (whose shutdown removes what is left by label).
    /// Its slot stays on the books meanwhile: the container still exists.
    async fn remove_until_gone(&self, container: &str) {
        self.sandboxes.remove(container);
        let mut delay = Duration::from_millis(100);
        loop {
            match self.backend.remove_container(container).await {
                Ok(()) => {
                    tracing::debug!(pool = %self.spec.name, %container, "container removed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(pool = %self.spec.name, %container, error = %e, retry_in = ?delay, "could not remove container; retrying");
                    if engine_unreachable(&sandbox::Error::Backend(e)) {
                        self.context.engine.suspect.notify_one();
                    }
                }
            }
            // An engine that is down is waited for: the moment it answers
            // again, the removal is retried (the slot still counts, and the
            // pool cannot refill past it).
            let mut changes = self.context.engine.subscribe();
            let back = async {
                if self.context.engine.is_up() {
                    std::future::pending::<()>().await;
                }
                let _ = changes.wait_for(|up| *up).await;
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => delay = (delay * 2).min(MAX_REMOVE_BACKOFF),
                _ = back => delay = Duration::from_millis(100),
                _ = self.context.server_stop.cancelled() => return,
            }
        }
    }

    /// When the pool lapses unless its owner keeps it alive.
    pub fn owner_deadline(&self) -> Option<OwnerDeadline> {
        *crate::sync::lock(&self.owner_deadline)
    }

    /// The owner kept it alive: returns the new deadline (`None`: the pool
    /// has no owner TTL).
    pub(super) fn renew_owner(&self) -> Option<OwnerDeadline> {
        let ttl = self.ownership.ttl?;
        let mut deadline = crate::sync::lock(&self.owner_deadline);
        let renewed = OwnerDeadline::after(ttl);
        *deadline = Some(renewed);
        Some(renewed)
    }

    /// The engine reported `container` gone (died or removed behind our back).
    pub(super) fn container_gone(self: &Arc<Self>, container: &str) -> Gone {
        let mut st = self.lock();
        let found = st
            .slots
            .iter()
            .find(|(_, s)| s.container.as_deref() == Some(container))
            .map(|(&slot, s)| (slot, s.state));
        let Some((slot, state)) = found else {
            return Gone::Unknown;
        };
        let gone = match state {
            SlotState::Idle => {
                tracing::warn!(pool = %self.spec.name, %container, "an idle container died; replacing it");
                st.counters.health_failures += 1;
                self.begin_remove(&mut st, slot, RecycleReason::Unhealthy);
                Gone::Idle
            }
            SlotState::Busy => {
                if let Some(s) = st.slots.get_mut(&slot) {
                    s.poisoned = true;
                }
                Gone::Leased
            }
            SlotState::Resetting => {
                if let Some(s) = st.slots.get_mut(&slot) {
                    s.poisoned = true;
                }
                Gone::InFlight
            }
            SlotState::Initializing | SlotState::Unhealthy | SlotState::Removing => Gone::InFlight,
        };
        self.fill(&mut st);
        drop(st);
        self.changed();
        gone
    }

    /// The containers the pool holds on the engine (for reconciling with
    /// what the engine says).
    pub(super) fn containers(&self) -> Vec<String> {
        self.lock()
            .slots
            .values()
            .filter(|s| !matches!(s.state, SlotState::Unhealthy | SlotState::Removing))
            .filter_map(|s| s.container.clone())
            .collect()
    }

    /// The engine answers again: retry creating at once instead of after the
    /// backoff.
    pub(super) fn engine_back(self: &Arc<Self>) {
        let mut st = self.lock();
        st.retry_at = None;
        st.backoff = Duration::ZERO;
        if st.engine_down {
            // The failure was the engine's absence, which is over: refill
            // with every container at once, not one probe at a time (that
            // made two containers take twice as long to come back).
            st.failure = None;
            st.engine_down = false;
        }
        self.fill(&mut st);
        drop(st);
        self.wake.notify_one();
        self.changed();
    }

    /// The engine stopped answering: nothing can be created, reset or run
    /// until it is back, so acquirers waiting for a container are told now
    /// (UNAVAILABLE, retryable) rather than left to time out.
    pub(super) fn engine_gone(self: &Arc<Self>) {
        let mut st = self.lock();
        let waiters: Vec<_> = st.waiters.drain(..).collect();
        drop(st);
        for w in waiters {
            let _ = w.tx.send(Err(WaitFailure::EngineDown(
                "it stopped answering while this call waited for a container; retrying".into(),
            )));
        }
        self.changed();
    }

    /// The error for a call while the pool's engine does not answer.
    fn engine_down(&self, detail: String) -> Error {
        Error::EngineUnavailable {
            backend: self.spec.backend,
            detail: if detail.is_empty() {
                "it does not answer; retrying".to_string()
            } else {
                detail
            },
        }
    }

    /// Stops granting leases: waiters are told, idle containers removed now,
    /// busy ones when their lease ends. Returns how many are busy.
    pub fn close(self: &Arc<Self>) -> u32 {
        let mut st = self.lock();
        if !st.closed {
            st.closed = true;
            for w in st.waiters.drain(..) {
                let _ = w.tx.send(Err(WaitFailure::Closed));
            }
            for slot in std::mem::take(&mut st.idle) {
                self.begin_remove(&mut st, slot, RecycleReason::Drained);
            }
            self.stop.cancel();
        }
        let busy = st.counts().busy;
        drop(st);
        self.changed();
        busy
    }
}

/// A place in the queue of waiting acquirers. Dropping it (the caller gave up
/// or went away) leaves the queue, and gives back a container granted after
/// the caller stopped listening.
struct WaitTicket {
    pool: Arc<Pool>,
    id: u64,
    rx: Option<oneshot::Receiver<Result<Grant, WaitFailure>>>,
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut st = self.pool.lock();
        st.waiters.retain(|w| w.id != self.id);
        rx.close();
        if let Ok(Ok(grant)) = rx.try_recv() {
            self.pool.ungrant(&mut st, grant.slot);
        }
        drop(st);
        self.pool.changed();
    }
}

/// The caller's side of a temporary container being made: dropped before
/// the container reached the caller, it gives the container back.
struct TemporaryTicket {
    pool: Arc<Pool>,
    rx: Option<oneshot::Receiver<Result<Holding>>>,
}

impl Drop for TemporaryTicket {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        rx.close();
        if let Ok(Ok(Holding::Temporary { container })) = rx.try_recv() {
            self.pool.ungrant_temporary(container);
        }
    }
}

/// A grant whose container is being confirmed with the engine (see
/// `Backend::removal_events_late`): dropped before that is done (the
/// acquire was cancelled), it undoes the grant.
struct PendingGrant<'a> {
    pool: &'a Arc<Pool>,
    slot: u64,
}

impl Drop for PendingGrant<'_> {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        self.pool.ungrant(&mut st, self.slot);
        drop(st);
        self.pool.changed();
    }
}

/// Whether a failure means the engine itself does not answer.
fn engine_unreachable(e: &sandbox::Error) -> bool {
    matches!(
        e,
        sandbox::Error::Backend(crate::backend::Error::Unreachable { .. })
    )
}

/// A creation failure as a person can act on it.
fn describe_failure(spec: &PoolSpec, e: &sandbox::Error) -> String {
    match e {
        sandbox::Error::Backend(crate::backend::Error::ImageMissing { image, detail }) => format!(
            "image {image} is not on the {} engine and could not be pulled ({detail}). \
             Build it from Debian packages with `scripts/build-images.sh {}` (no registry needed), \
             or set the pool's image to one the engine has",
            spec.backend, spec.language
        ),
        other => other.to_string(),
    }
}
