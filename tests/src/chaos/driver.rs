//! The parent of the chaos clients: starts them (separate processes), lets
//! them take one step each per round, kills some with SIGKILL at a random
//! moment of a round, and checks invariants between rounds, continuously for
//! what has a deadline, and at the end.
//!
//! Invariants:
//! - no container is held by two leases the server calls active;
//! - each pool's stats agree with what the clients hold: `active_leases` is
//!   at least the leases the server confirms active and at most the leases
//!   anyone may hold; every lease has a busy container or a temporary one;
//!   sizes within bounds;
//! - a lease the server ended is known lost by its client within its TTL;
//! - every abandoned lease, and every lease of a killed or vanished client,
//!   ends within TTL + 2 s; every owned pool of a killed or vanished creator
//!   is gone within its owner TTL + 2 s;
//! - what the clients check themselves (output, files of earlier leases,
//!   cancelled runs, calls on held leases);
//! - at the end, once everyone is gone: no slot busy, no lease, no
//!   temporary, only the shared pools left, and no container on the engine
//!   that no pool accounts for.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sandpool_client::{Client, proto as pb};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
};
use tonic_types::StatusExt;

use super::{LeaseView, Line, Rng, StepReport, client::ClientArgs};

/// How the chaos is sized.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Clients running at once.
    pub slots: usize,
    /// Clients started in all (at least).
    pub clients: usize,
    /// Keep starting clients until this many leases were served.
    pub min_leases: u64,
    /// Steps of each client.
    pub steps: u32,
    /// Share of clients killed with SIGKILL at a random moment.
    pub kill_fraction: f64,
    /// No new client after this long (a bound on the test's time).
    pub budget: Duration,
    /// The chaos client: program and the arguments before its own.
    pub program: PathBuf,
    pub program_args: Vec<String>,
    /// Names of the pools this run creates start with this.
    pub tag: String,
    pub image: String,
    /// The engine every pool of the run lives on.
    pub engine: crate::Engine,
    /// The server's id (its containers' label).
    pub server_id: String,
    /// Print every step.
    pub verbose: bool,
}

/// How far past its TTL a lease (or owned pool) may live.
pub const GRACE: Duration = Duration::from_secs(2);
/// How long a client may take for one step before it counts as hung.
const ROUND_LIMIT: Duration = Duration::from_secs(40);
/// How often pending leases and orphaned pools are polled.
const POLL: Duration = Duration::from_millis(100);
/// A run id no run has: Cancel with it tells an active lease ("no such
/// run") from an ended one, without renewing it.
const NO_RUN: &str = "0000000000000000";

/// What a run measured and found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub seed: u64,
    pub rounds: u64,
    pub clients: u64,
    pub killed: u64,
    pub vanished: u64,
    pub steps: u64,
    pub leases_served: u64,
    pub released: u64,
    pub abandoned: u64,
    /// Leases that had to be reclaimed (abandoned, of killed or vanished
    /// clients) and how long each took, from its client's last sign of life
    /// to its end.
    pub reclaim_times: Vec<Duration>,
    pub owned_pools: u64,
    /// Owned pools of killed or vanished creators and how long each took
    /// to go.
    pub pool_gone_times: Vec<Duration>,
    /// Leases the server ended while their (live) client kept them alive:
    /// allowed when the keepalive could not get through within the TTL.
    pub lost_under_live_client: u64,
    /// Containers on the engine that no pool accounted for, at the end.
    pub leaked_containers: usize,
    /// Busy slots, leases, temporaries and waiters left at the end.
    pub stuck_slots: u32,
    pub violations: Vec<String>,
    /// Digest of every decision (the parent's and the clients'): the same
    /// seed gives the same digest.
    pub digest: u64,
    /// The time budget stopped new clients early (a slow or loaded
    /// machine): fewer clients than asked, and another digest.
    pub budget_hit: bool,
    pub elapsed: Duration,
}

impl Report {
    /// The `q` quantile of `samples`.
    pub fn quantile(samples: &[Duration], q: f64) -> Duration {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    pub fn summary(&self) -> String {
        let q = |s: &[Duration], q: f64| format!("{:.2}s", Self::quantile(s, q).as_secs_f64());
        format!(
            "seed {} | {} rounds, {} clients ({} killed, {} vanished), {} steps in {:.1}s\n\
             leases served {}, released {}, abandoned {}, reclaimed {} (p50 {}, p99 {}, max {})\n\
             owned pools {}, of dead creators gone {} (p50 {}, max {})\n\
             leases lost under a live client {}, containers leaked {}, slots stuck {}\n\
             decision digest {:016x}{}, violations {}",
            self.seed,
            self.rounds,
            self.clients,
            self.killed,
            self.vanished,
            self.steps,
            self.elapsed.as_secs_f64(),
            self.leases_served,
            self.released,
            self.abandoned,
            self.reclaim_times.len(),
            q(&self.reclaim_times, 0.5),
            q(&self.reclaim_times, 0.99),
            q(&self.reclaim_times, 1.0),
            self.owned_pools,
            self.pool_gone_times.len(),
            q(&self.pool_gone_times, 0.5),
            q(&self.pool_gone_times, 1.0),
            self.lost_under_live_client,
            self.leaked_containers,
            self.stuck_slots,
            self.digest,
            if self.budget_hit {
                " (time budget hit: fewer clients)"
            } else {
                ""
            },
            self.violations.len(),
        )
    }
}

/// The seed: `SANDPOOL_CHAOS_SEED` if set, else a random one.
pub fn seed_from_env() -> u64 {
    match std::env::var("SANDPOOL_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SANDPOOL_CHAOS_SEED={s:?} is not a number")),
        Err(_) => rand::random::<u64>() % 1_000_000_000,
    }
}

/// What the server says of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Active,
    Ended(pb::LeaseState),
    /// No answer worth believing (the server or engine is busy elsewhere).
    Unknown,
}

async fn probe(client: &Client, lease: &str) -> Probe {
    let request = pb::CancelRequest {
        lease_id: lease.to_string(),
        run_id: NO_RUN.into(),
    };
    let status = match client.sessions().cancel(request).await {
        Ok(_) => return Probe::Active,
        Err(status) => status,
    };
    let Some(info) = status.get_error_details().error_info().cloned() else {
        return Probe::Unknown;
    };
    match info.reason.as_str() {
        "RUN_NOT_FOUND" => Probe::Active,
        "LEASE_NOT_FOUND" => Probe::Ended(pb::LeaseState::NotFound),
        "LEASE_ENDED" => Probe::Ended(
            info.metadata
                .get("end")
                .and_then(|e| pb::LeaseState::from_str_name(e))
                .unwrap_or(pb::LeaseState::Unspecified),
        ),
        _ => Probe::Unknown,
    }
}

/// Why a lease is no longer its client's to end.
#[derive(Debug, Clone)]
struct Orphan {
    why: &'static str,
    since: Instant,
    deadline: Instant,
    late: bool,
}

#[derive(Debug, Clone)]
struct Tracked {
    view: LeaseView,
    client: u32,
    /// `None` while a live client holds it.
    orphan: Option<Orphan>,
}

#[derive(Debug, Clone)]
struct OwnedTrack {
    client: u32,
    /// Set when its creator died or vanished: it must be gone by then.
    orphan: Option<Orphan>,
    /// Its creator deleted it (it goes once its leases end).
    deleted: bool,
}

/// A window in which a lease may exist that no client reported (a client
/// killed in the middle of an Acquire, or an Acquire that gave up while the
/// server granted it).
#[derive(Debug, Clone)]
struct Unknown {
    pool: String,
    until: Instant,
}

#[derive(Default)]
struct Tracker {
    leases: HashMap<String, Tracked>,
    /// Leases the server ended while their client held them: (client, when
    /// seen, TTL, state).
    ended_held: HashMap<String, (u32, Instant, Duration, pb::LeaseState)>,
    owned: HashMap<String, OwnedTrack>,
    unknown: Vec<Unknown>,
    report: Report,
}

impl Tracker {
    fn violation(&mut self, what: String) {
        eprintln!("chaos violation: {what}");
        self.report.violations.push(what);
    }
}

type Shared = Arc<Mutex<Tracker>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client process.
struct Proc {
    no: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Steps done.
    step: u32,
    /// Killed at this step, this long after it began.
    kill: Option<(u32, Duration)>,
    /// The intent of the step in flight.
    intent: Option<super::Intent>,
    /// Leases and pools held, as last reported.
    held: Vec<LeaseView>,
    owned: Vec<super::OwnedView>,
}

enum Ending {
    /// Still running.
    Alive,
    /// Finished cleanly.
    Done,
    /// Gone holding what it held (killed, vanished, died).
    Gone(&'static str, Instant),
}

/// FNV-1a over the decisions, in a fixed order.
fn digest(decisions: &BTreeMap<(u32, u32), String>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for ((client, step), d) in decisions {
        for b in format!("{client}/{step}:{d};").bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The pools every client uses.
fn shared_pools(tag: &str, image: &str, engine: crate::Engine) -> Vec<pb::PoolSpec> {
    let pool = |suffix: &str, strategy: pb::ExhaustionStrategy, max: u32| pb::PoolSpec {
        name: format!("{tag}-{suffix}"),
        language: "python".into(),
        image: image.to_string(),
        backend: engine.proto() as i32,
        default_lease_ttl: crate::secs(3.0),
        max_temporary: Some(2),
        config: Some(pb::PoolConfig {
            min_pool_size: Some(1),
            max_pool_size: Some(max),
            acquisition_timeout: crate::secs(1.0),
            exhaustion_strategy: strategy as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        pool("wait", pb::ExhaustionStrategy::Wait, 2),
        pool("fast", pb::ExhaustionStrategy::FailFast, 1),
        pool("temp", pb::ExhaustionStrategy::Temporary, 1),
    ]
}

/// Runs the chaos against the server at `addr` (reached by `client`).
pub async fn run(config: Config, addr: std::net::SocketAddr, client: Client) -> Report {
    let started = Instant::now();
    println!(
        "chaos seed {} (SANDPOOL_CHAOS_SEED={0} reproduces the decisions)",
        config.seed
    );
    let tracker: Shared = Arc::new(Mutex::new(Tracker::default()));
    lock(&tracker).report.seed = config.seed;
    let specs = shared_pools(&config.tag, &config.image, config.engine);
    let shared: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    for spec in specs {
        if let Err(e) = client.create_pool(spec.clone(), true).await {
            lock(&tracker).violation(format!("creating shared pool {}: {e}", spec.name));
            return lock(&tracker).report.clone();
        }
    }
    let poller = tokio::spawn(poll(client.clone(), Arc::clone(&tracker)));

    let mut rng = Rng::new(config.seed);
    let mut decisions: BTreeMap<(u32, u32), String> = BTreeMap::new();
    let mut procs: Vec<Proc> = Vec::new();
    let mut spawned = 0u32;
    loop {
        // Fill the slots.
        let more = |spawned: u32, t: &Shared| {
            let wanted = (spawned as usize) < config.clients
                || lock(t).report.leases_served < config.min_leases;
            if wanted && started.elapsed() >= config.budget {
                lock(t).report.budget_hit = true;
                return false;
            }
            wanted
        };
        while procs.len() < config.slots && more(spawned, &tracker) {
            let no = spawned;
            spawned += 1;
            // Exactly `kill_fraction` of the clients, spread evenly; when
            // and where in its life each one dies is drawn.
            let (r2, r3) = (rng.next_u64(), rng.next_u64());
            let share = |n: u32| (f64::from(n) * config.kill_fraction).floor();
            let kill = share(no + 1) > share(no);
            let kill = kill.then(|| {
                (
                    // Not the last step: it dies while it still holds things.
                    1 + (r2 % u64::from(config.steps.saturating_sub(1).max(1))) as u32,
                    Duration::from_millis(r3 % 700),
                )
            });
            decisions.insert((no, 0), format!("spawn kill={kill:?}"));
            let args = ClientArgs {
                addr: format!("http://{addr}"),
                seed: Rng::derive(config.seed, u64::from(no)),
                steps: config.steps,
                client: no,
                pools: shared.clone(),
                prefix: config.tag.clone(),
                image: config.image.clone(),
                backend: config.engine.name().to_string(),
                lockstep: true,
            };
            match spawn(&config, args, kill) {
                Ok(p) => procs.push(p),
                Err(e) => {
                    lock(&tracker).violation(format!("cannot start a chaos client: {e}"));
                    break;
                }
            }
            lock(&tracker).report.clients += 1;
        }
        if procs.is_empty() {
            break;
        }
        lock(&tracker).report.rounds += 1;

        // One step each, all at once; kills land during the step.
        let endings =
            futures::future::join_all(procs.iter_mut().map(|p| round(p, &tracker, config.verbose)))
                .await;
        let mut next = Vec::new();
        for (mut p, (ending, steps)) in procs.drain(..).zip(endings) {
            for (key, d) in steps {
                decisions.insert(key, d);
            }
            match ending {
                Ending::Alive => next.push(p),
                Ending::Done => {
                    let _ = p.child.wait().await;
                }
                Ending::Gone(why, at) => {
                    let _ = p.child.wait().await;
                    orphan(&tracker, &p, why, at);
                }
            }
        }
        procs = next;
        check_round(&client, &tracker, &procs).await;
    }

    // Everyone is gone: what they left must go by its deadline.
    let last = {
        let t = lock(&tracker);
        t.leases
            .values()
            .filter_map(|l| l.orphan.as_ref().map(|o| o.deadline))
            .chain(
                t.owned
                    .values()
                    .filter_map(|o| o.orphan.as_ref().map(|o| o.deadline)),
            )
            .chain(t.unknown.iter().map(|u| u.until))
            .max()
    };
    if let Some(last) = last {
        tokio::time::sleep_until((last + Duration::from_millis(300)).into()).await;
    }
    poller.abort();
    let _ = poller.await;
    // One last poll, with its verdicts.
    poll_once(&client, &tracker).await;
    settle(&client, &tracker, &config, &shared).await;

    let mut report = lock(&tracker).report.clone();
    // Decisions of a killed client from its kill step on may or may not have
    // been printed: left out.
    let kills: HashMap<u32, u32> = decisions
        .iter()
        .filter(|((_, step), _)| *step == 0)
        .filter_map(|((no, _), d)| {
            d.strip_prefix("spawn kill=Some((")
                .and_then(|rest| rest.split(',').next())
                .and_then(|s| s.parse().ok())
                .map(|at: u32| (*no, at))
        })
        .collect();
    decisions.retain(|(no, step), _| kills.get(no).is_none_or(|at| *step < *at));
    report.digest = digest(&decisions);
    report.elapsed = started.elapsed();
    report
}

fn spawn(
    config: &Config,
    args: ClientArgs,
    kill: Option<(u32, Duration)>,
) -> std::io::Result<Proc> {
    let mut child = Command::new(&config.program)
        .args(&config.program_args)
        .args(args.to_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take();
    let (tx, lines) = mpsc::unbounded_channel();
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    let stderr = Arc::new(Mutex::new(String::new()));
    if let Some(err) = child.stderr.take() {
        let keep = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut reader = BufReader::new(err).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut kept = keep.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() < 16 << 10 {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
        });
    }
    Ok(Proc {
        no: args.client,
        child,
        stdin,
        lines,
        stderr,
        step: 0,
        kill,
        intent: None,
        held: Vec::new(),
        owned: Vec::new(),
    })
}

/// One step of one client: tells it to go, kills it if its time has come,
/// and takes in what it printed. Returns how it ends and its decisions.
async fn round(
    p: &mut Proc,
    tracker: &Shared,
    verbose: bool,
) -> (Ending, Vec<((u32, u32), String)>) {
    let step = p.step + 1;
    let mut decisions = Vec::new();
    let kill_after = p.kill.and_then(|(at, after)| (at == step).then_some(after));
    let go_sent = match p.stdin.as_mut() {
        Some(stdin) => stdin
            .write_all(b"go\n")
            .await
            .and(stdin.flush().await)
            .is_ok(),
        None => false,
    };
    let began = Instant::now();
    let limit = tokio::time::sleep(kill_after.unwrap_or(ROUND_LIMIT));
    tokio::pin!(limit);
    let mut reported = None;
    let mut killed = None;
    let mut eof = false;
    while go_sent && killed.is_none() {
        tokio::select! {
            line = p.lines.recv(), if !eof && reported.is_none() => match line {
                Some(line) => {
                    if let Some(r) = take_line(p, tracker, &line, &mut decisions, verbose) {
                        reported = Some(r);
                        if kill_after.is_none() {
                            break;
                        }
                    }
                }
                None => eof = true,
            },
            _ = &mut limit => {
                if kill_after.is_none() && reported.is_none() && !eof {
                    lock(tracker).violation(format!(
                        "client {} did not finish step {step} within {ROUND_LIMIT:?}",
                        p.no
                    ));
                }
                let _ = p.child.start_kill();
                killed = Some(Instant::now());
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(20)), if eof => {
                // Its stdout closed: it is exiting; a kill is no longer
                // needed but its time comes anyway.
                if p.child.try_wait().ok().flatten().is_some() {
                    break;
                }
            }
        }
    }
    if killed.is_some() {
        // What it printed before it died still counts.
        let _ = p.child.wait().await;
        while let Some(line) = p.lines.recv().await {
            if let Some(r) = take_line(p, tracker, &line, &mut decisions, verbose) {
                reported = Some(r);
            }
        }
    }
    if verbose {
        println!(
            "  client {} step {step}: {:?} ({:?})",
            p.no,
            reported.as_ref().map(|r: &StepReport| r.outcome.clone()),
            began.elapsed()
        );
    }
    p.step = step;
    if let Some(at) = killed
        && kill_after.is_some()
    {
        lock(tracker).report.killed += 1;
        return (Ending::Gone("killed", at), decisions);
    }
    match reported {
        Some(r) if r.vanished => {
            lock(tracker).report.vanished += 1;
            (Ending::Gone("vanished", Instant::now()), decisions)
        }
        Some(r) if r.done => (Ending::Done, decisions),
        Some(_) => (Ending::Alive, decisions),
        None => {
            let status = p.child.try_wait().ok().flatten();
            let stderr = p.stderr.lock().map(|s| s.clone()).unwrap_or_default();
            lock(tracker).violation(format!(
                "client {} died at step {step} ({status:?}): {stderr}",
                p.no
            ));
            (Ending::Gone("died", Instant::now()), decisions)
        }
    }
}

/// Takes in one line of a client; returns its step report, if it is one.
fn take_line(
    p: &mut Proc,
    tracker: &Shared,
    line: &str,
    decisions: &mut Vec<((u32, u32), String)>,
    verbose: bool,
) -> Option<StepReport> {
    let parsed: Line = match serde_json::from_str(line) {
        Ok(l) => l,
        Err(e) => {
            lock(tracker).violation(format!("client {} printed {line:?}: {e}", p.no));
            return None;
        }
    };
    let report = match parsed {
        Line::Intent { intent, .. } => {
            p.intent = Some(intent);
            return None;
        }
        Line::Step(r) => *r,
    };
    if verbose {
        println!("  {line}");
    }
    decisions.push(((p.no, report.step), report.decision.clone()));
    let now = Instant::now();
    let mut t = lock(tracker);
    t.report.steps += 1;
    for v in &report.violations {
        t.violation(format!(
            "client {} step {} ({}): {v}",
            p.no, report.step, report.decision
        ));
    }
    if let Some(view) = &report.acquired {
        t.report.leases_served += 1;
        t.leases.insert(
            view.id.clone(),
            Tracked {
                view: view.clone(),
                client: p.no,
                orphan: None,
            },
        );
    }
    // An Acquire that failed for want of time may have been granted all
    // the same, to nobody.
    if let Some(intent) = &p.intent
        && intent.op == "acquire"
        && report.acquired.is_none()
        && report.outcome.starts_with("not acquired")
        && !report.outcome.contains("exhausted")
        && let Some(pool) = &intent.pool
    {
        t.unknown.push(Unknown {
            pool: pool.clone(),
            until: now + Duration::from_millis(intent.ttl_ms) + GRACE,
        });
    }
    if let Some(intent) = &p.intent
        && intent.op == "create_pool"
        && let Some(pool) = report
            .owned
            .iter()
            .find(|o| Some(&o.name) == intent.pool.as_ref())
    {
        t.report.owned_pools += 1;
        t.owned.insert(
            pool.name.clone(),
            OwnedTrack {
                client: p.no,
                orphan: None,
                deleted: false,
            },
        );
    }
    for id in &report.released {
        t.report.released += 1;
        t.leases.remove(id);
        t.ended_held.remove(id);
    }
    for (id, _) in &report.lost {
        t.leases.remove(id);
        t.ended_held.remove(id);
    }
    for view in &report.abandoned {
        t.report.abandoned += 1;
        if let Some(l) = t.leases.get_mut(&view.id) {
            l.orphan = Some(Orphan {
                why: "abandoned",
                since: now,
                deadline: now + Duration::from_millis(view.ttl_ms) + GRACE,
                late: false,
            });
        }
        t.ended_held.remove(&view.id);
    }
    for name in &report.deleted_pools {
        if let Some(o) = t.owned.get_mut(name) {
            o.deleted = true;
        }
    }
    for (name, reason) in &report.lost_pools {
        t.violation(format!(
            "client {} lost its pool {name} while keeping it alive: {reason}",
            p.no
        ));
    }
    // A lease the server ended must be known lost by its client within its
    // TTL (the keepalive's contract).
    let held: HashSet<&str> = report.held.iter().map(|l| l.id.as_str()).collect();
    let mut late = Vec::new();
    t.ended_held.retain(|id, (client, seen, ttl, state)| {
        if *client != p.no {
            return true;
        }
        if !held.contains(id.as_str()) {
            return false;
        }
        if now > *seen + *ttl + Duration::from_millis(500) {
            late.push(format!(
                "client {} still holds lease {id} {:?} after the server ended it ({state:?})",
                p.no,
                now - *seen
            ));
            return false;
        }
        true
    });
    for v in late {
        t.violation(v);
    }
    drop(t);
    p.held = report.held.clone();
    p.owned = report.owned.clone();
    p.intent = None;
    Some(report)
}

/// A client is gone holding what it held: its leases and pools are
/// orphans, and what it was doing may have left something unknown.
fn orphan(tracker: &Shared, p: &Proc, why: &'static str, at: Instant) {
    let mut t = lock(tracker);
    for view in &p.held {
        if let Some(l) = t.leases.get_mut(&view.id) {
            l.orphan.get_or_insert(Orphan {
                why,
                since: at,
                deadline: at + Duration::from_millis(view.ttl_ms) + GRACE,
                late: false,
            });
        }
    }
    for view in &p.owned {
        let deadline = at + Duration::from_millis(view.owner_ttl_ms) + GRACE;
        t.owned
            .entry(view.name.clone())
            .or_insert(OwnedTrack {
                client: p.no,
                orphan: None,
                deleted: false,
            })
            .orphan
            .get_or_insert(Orphan {
                why,
                since: at,
                deadline,
                late: false,
            });
    }
    if let Some(intent) = &p.intent
        && let Some(pool) = &intent.pool
    {
        let until = at + Duration::from_millis(intent.ttl_ms) + GRACE;
        match intent.op.as_str() {
            "acquire" => t.unknown.push(Unknown {
                pool: pool.clone(),
                until,
            }),
            "create_pool" => {
                t.report.owned_pools += 1;
                t.owned.entry(pool.clone()).or_insert(OwnedTrack {
                    client: p.no,
                    orphan: Some(Orphan {
                        why,
                        since: at,
                        deadline: until,
                        late: false,
                    }),
                    deleted: false,
                });
            }
            _ => {}
        }
    }
}

/// Polls orphaned leases and pools until they are gone, and judges them.
async fn poll(client: Client, tracker: Shared) {
    loop {
        poll_once(&client, &tracker).await;
        tokio::time::sleep(POLL).await;
    }
}

async fn poll_once(client: &Client, tracker: &Shared) {
    let leases: Vec<String> = lock(tracker)
        .leases
        .iter()
        .filter(|(_, l)| l.orphan.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    for id in leases {
        let answer = probe(client, &id).await;
        let now = Instant::now();
        let mut t = lock(tracker);
        let Some(lease) = t.leases.get_mut(&id) else {
            continue;
        };
        let Some(orphan) = lease.orphan.as_mut() else {
            continue;
        };
        match answer {
            Probe::Ended(_) => {
                let took = now - orphan.since;
                t.leases.remove(&id);
                t.report.reclaim_times.push(took);
            }
            Probe::Active if now > orphan.deadline && !orphan.late => {
                orphan.late = true;
                let what = format!(
                    "lease {id} ({}, client {}, TTL {} ms, pool {}) still active {:?} after its client stopped",
                    orphan.why,
                    lease.client,
                    lease.view.ttl_ms,
                    lease.view.pool,
                    now - orphan.since
                );
                t.violation(what);
            }
            _ => {}
        }
    }
    let pools: Vec<String> = lock(tracker)
        .owned
        .iter()
        .filter(|(_, o)| o.orphan.is_some())
        .map(|(name, _)| name.clone())
        .collect();
    for name in pools {
        let gone = matches!(
            client.get_pool(&name).await,
            Err(sandpool_client::Error::NotFound(_))
        );
        let now = Instant::now();
        let mut t = lock(tracker);
        let Some(owned) = t.owned.get_mut(&name) else {
            continue;
        };
        let Some(orphan) = owned.orphan.as_mut() else {
            continue;
        };
        if gone {
            let took = now - orphan.since;
            t.owned.remove(&name);
            t.report.pool_gone_times.push(took);
        } else if now > orphan.deadline && !orphan.late {
            orphan.late = true;
            let what = format!(
                "owned pool {name} of {} client {} still there {:?} after its creator stopped",
                orphan.why,
                owned.client,
                now - orphan.since
            );
            t.violation(what);
        }
    }
    let now = Instant::now();
    lock(tracker).unknown.retain(|u| u.until > now);
}

/// The checks between rounds, while no client is in a step.
async fn check_round(client: &Client, tracker: &Shared, live: &[Proc]) {
    // Stats first: leases only end after, so what the probes find active
    // was active when the stats were taken.
    let pools = match client.list_pools().await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("chaos: ListPools failed ({e}); checks skipped this round");
            return;
        }
    };
    let tracked: Vec<(String, Tracked)> = lock(tracker)
        .leases
        .iter()
        .map(|(id, l)| (id.clone(), l.clone()))
        .collect();
    let mut answers = Vec::new();
    for (id, lease) in &tracked {
        answers.push((id, lease, probe(client, id).await));
    }
    let now = Instant::now();
    let mut t = lock(tracker);

    // No container held by two active leases.
    let mut holders: HashMap<&str, &str> = HashMap::new();
    for (id, lease, answer) in &answers {
        if *answer != Probe::Active {
            continue;
        }
        if let Some(other) = holders.insert(lease.view.container.as_str(), id.as_str()) {
            let what = format!(
                "container {} leased twice at once: leases {other} and {id} (client {})",
                lease.view.container, lease.client
            );
            t.violation(what);
        }
    }
    // Leases the server ended under a live client.
    for (id, lease, answer) in &answers {
        if let Probe::Ended(state) = answer {
            if lease.orphan.is_some() {
                continue;
            }
            if !t.ended_held.contains_key(id.as_str()) {
                if *state == pb::LeaseState::Expired {
                    t.report.lost_under_live_client += 1;
                }
                t.ended_held.insert(
                    id.to_string(),
                    (
                        lease.client,
                        now,
                        Duration::from_millis(lease.view.ttl_ms),
                        *state,
                    ),
                );
            }
            t.leases.remove(id.as_str());
        }
    }
    // Stats against what is held.
    let live_owned: HashSet<&str> = live
        .iter()
        .flat_map(|p| p.owned.iter().map(|o| o.name.as_str()))
        .collect();
    for pool in &pools {
        let Some(stats) = pool.stats.as_ref() else {
            continue;
        };
        let name = stats.pool.as_str();
        let counts = stats.state_counts.unwrap_or_default();
        let confirmed = answers
            .iter()
            .filter(|(_, l, a)| l.view.pool == name && *a == Probe::Active)
            .count() as u32;
        let possible = tracked.iter().filter(|(_, l)| l.view.pool == name).count() as u32;
        let unknown = t.unknown.iter().any(|u| u.pool == name);
        let mut bad = Vec::new();
        if stats.active_leases < confirmed {
            bad.push(format!(
                "{} active leases but {confirmed} confirmed active",
                stats.active_leases
            ));
        }
        if !unknown && stats.active_leases > possible {
            bad.push(format!(
                "{} active leases but only {possible} anyone may hold",
                stats.active_leases
            ));
        }
        if counts.busy + stats.temporary_containers < stats.active_leases {
            bad.push(format!(
                "{} active leases on {} busy containers and {} temporaries",
                stats.active_leases, counts.busy, stats.temporary_containers
            ));
        }
        let sum = counts.initializing
            + counts.idle
            + counts.busy
            + counts.resetting
            + counts.unhealthy
            + counts.removing;
        if stats.total_size != sum {
            bad.push(format!(
                "total_size {} but states sum to {sum}",
                stats.total_size
            ));
        }
        let live_size = counts.initializing + counts.idle + counts.busy + counts.resetting;
        if live_size > stats.max_size {
            bad.push(format!(
                "{live_size} live containers, max {}",
                stats.max_size
            ));
        }
        let max_temporary = pool
            .spec
            .as_ref()
            .and_then(|s| s.max_temporary)
            .unwrap_or(stats.max_size);
        if stats.temporary_containers > max_temporary {
            bad.push(format!(
                "{} temporaries, max {max_temporary}",
                stats.temporary_containers
            ));
        }
        // An owned pool of a live client that did not delete it is open.
        if live_owned.contains(name) && stats.closed {
            bad.push("closed while its owner keeps it alive".into());
        }
        for b in bad {
            t.violation(format!("pool {name}: {b} ({stats:?})"));
        }
    }
}

/// At the end: waits for the pools to settle, then counts what is stuck or
/// leaked.
async fn settle(client: &Client, tracker: &Shared, config: &Config, shared: &[String]) {
    let until = Instant::now() + Duration::from_secs(20);
    let (stuck, leaked, last) = loop {
        let pools = client.list_pools().await.unwrap_or_default();
        // An engine restarting (another suite's doing) is not an answer:
        // asked again until the deadline.
        let engine = match config.engine.try_containers_of(&config.server_id).await {
            Ok(found) => found.len(),
            Err(e) if Instant::now() < until => {
                eprintln!("chaos: the engine does not answer ({e}); asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => {
                lock(tracker).violation(format!("the engine does not answer: {e}"));
                break (0, 0, String::new());
            }
        };
        let mut accounted = 0usize;
        let mut stuck = 0;
        let mut extra = Vec::new();
        for pool in &pools {
            let s = pool.stats.clone().unwrap_or_default();
            let c = s.state_counts.unwrap_or_default();
            accounted += (s.total_size + s.temporary_containers) as usize;
            stuck += c.busy + s.temporary_containers + s.active_leases + s.waiting;
            if !shared.contains(&s.pool) {
                extra.push(s.pool.clone());
            }
        }
        let leaked = engine.saturating_sub(accounted);
        let last = format!(
            "stuck {stuck}, {engine} containers on the engine for {accounted} in pools, pools left over {extra:?}: {:?}",
            pools.iter().map(|p| p.stats.clone()).collect::<Vec<_>>()
        );
        let settled = pools.iter().all(|p| {
            let s = p.stats.clone().unwrap_or_default();
            let c = s.state_counts.unwrap_or_default();
            c.initializing + c.resetting + c.removing + c.unhealthy == 0
        });
        if stuck == 0 && leaked == 0 && extra.is_empty() && settled {
            break (stuck, leaked, last);
        }
        if Instant::now() > until {
            lock(tracker).violation(format!("the server did not settle: {last}"));
            break (stuck, leaked, last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut t = lock(tracker);
    t.report.stuck_slots = stuck;
    t.report.leaked_containers = leaked;
    if config.verbose {
        println!("settled: {last}");
    }
}
