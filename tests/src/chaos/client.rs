//! One chaos client: a process that plays a random client of sandpool
//! through the real Rust client, and prints what it holds after each step
//! (one JSON [`Line`] per line on stdout).
//!
//! With `--lockstep` it waits for a line on stdin before each step, so that
//! the parent can check invariants between steps; without it, it runs
//! through its steps on its own.

use std::{
    collections::HashMap,
    io::Write,
    time::{Duration, Instant},
};

use bytes::Bytes;
use sandpool_client::{
    AcquireOptions, Client, Error, OwnedPool, RunEvent, RunOptions, Session, proto as pb,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{Intent, LeaseView, Line, OwnedView, Rng, StepReport};

/// What the parent tells a client.
#[derive(Debug, Clone)]
pub struct ClientArgs {
    pub addr: String,
    pub seed: u64,
    pub steps: u32,
    /// The client's number (in pool names and reports).
    pub client: u32,
    /// Pools every client may use.
    pub pools: Vec<String>,
    /// Prefix of the pools this client creates.
    pub prefix: String,
    /// Image of the pools this client creates.
    pub image: String,
    /// Engine of the pools this client creates ("docker", "podman").
    pub backend: String,
    pub lockstep: bool,
}

impl ClientArgs {
    pub const USAGE: &'static str = "usage: chaos_client --addr ADDR --seed N --steps N --client N \
        --pools P1,P2 --prefix NAME --image IMAGE [--backend docker|podman] [--lockstep]";

    /// Parses `--key value` arguments.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut map = HashMap::new();
        let mut lockstep = false;
        let mut args = args.into_iter();
        while let Some(key) = args.next() {
            if key == "--lockstep" {
                lockstep = true;
                continue;
            }
            let Some(name) = key.strip_prefix("--") else {
                return Err(format!("unexpected argument {key:?}"));
            };
            let value = args.next().ok_or_else(|| format!("{key} needs a value"))?;
            map.insert(name.to_string(), value);
        }
        let mut take = |name: &str| {
            map.remove(name)
                .ok_or_else(|| format!("--{name} is missing"))
        };
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("--{name}: {v:?} is not a number"))
        };
        Ok(Self {
            addr: take("addr")?,
            seed: number("seed", take("seed")?)?,
            steps: number("steps", take("steps")?)? as u32,
            client: number("client", take("client")?)? as u32,
            pools: take("pools")?
                .split(',')
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect(),
            prefix: take("prefix")?,
            image: take("image")?,
            backend: map.remove("backend").unwrap_or_else(|| "docker".into()),
            lockstep,
        })
    }

    /// The arguments as a command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--addr".into(),
            self.addr.clone(),
            "--seed".into(),
            self.seed.to_string(),
            "--steps".into(),
            self.steps.to_string(),
            "--client".into(),
            self.client.to_string(),
            "--pools".into(),
            self.pools.join(","),
            "--prefix".into(),
            self.prefix.clone(),
            "--image".into(),
            self.image.clone(),
            "--backend".into(),
            self.backend.clone(),
        ];
        if self.lockstep {
            args.push("--lockstep".into());
        }
        args
    }
}

/// The operations, with their weights out of 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Acquire,
    Run,
    Cancel,
    Upload,
    Download,
    KeepAlive,
    Hold,
    Release,
    Abandon,
    CreatePool,
    DeletePool,
    Stats,
}

const OPS: [(Op, u64); 12] = [
    (Op::Acquire, 33),
    (Op::Run, 13),
    (Op::Cancel, 7),
    (Op::Upload, 9),
    (Op::Download, 9),
    (Op::KeepAlive, 4),
    (Op::Hold, 3),
    (Op::Release, 9),
    (Op::Abandon, 5),
    (Op::CreatePool, 4),
    (Op::DeletePool, 2),
    (Op::Stats, 2),
];

impl Op {
    fn pick(roll: u64) -> Op {
        let mut at = roll % 100;
        for (op, weight) in OPS {
            if at < weight {
                return op;
            }
            at -= weight;
        }
        Op::Stats
    }

    fn name(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Run => "run",
            Op::Cancel => "cancel",
            Op::Upload => "upload",
            Op::Download => "download",
            Op::KeepAlive => "keepalive",
            Op::Hold => "hold",
            Op::Release => "release",
            Op::Abandon => "abandon",
            Op::CreatePool => "create_pool",
            Op::DeletePool => "delete_pool",
            Op::Stats => "stats",
        }
    }
}

/// Most leases one client holds at once.
const MAX_HELD: usize = 3;
/// Most pools one client owns at once.
const MAX_OWNED: usize = 1;
/// How long an Acquire may wait: usually long enough for a warm container
/// to come back or a temporary one to start; one in four is impatient.
fn acquire_wait(b: u64) -> Duration {
    if (b / 2).is_multiple_of(4) {
        Duration::from_millis(300)
    } else {
        Duration::from_millis(1500)
    }
}
/// Bound of any one step (a hung call is a failure, not a hung test).
const STEP_LIMIT: Duration = Duration::from_secs(20);
/// Where uploads go.
const UPLOAD_PATH: &str = "/sandbox/chaos.bin";

struct Held {
    session: Session,
    view: LeaseView,
    /// What this lease uploaded to `UPLOAD_PATH`.
    uploaded: Option<Bytes>,
}

struct Owned {
    pool: OwnedPool,
    view: OwnedView,
}

struct State {
    args: ClientArgs,
    client: Client,
    held: Vec<Held>,
    owned: Vec<Owned>,
    pools_made: u32,
}

fn out(line: &Line) {
    let mut stdout = std::io::stdout().lock();
    // Nothing to do about a closed stdout but stop: the parent is gone.
    if serde_json::to_writer(&mut stdout, line).is_err()
        || stdout.write_all(b"\n").is_err()
        || stdout.flush().is_err()
    {
        std::process::exit(3);
    }
}

/// Errors a client is told to expect: the lease or pool is gone (a reason
/// the parent checks), or nothing was free.
fn expected(err: &Error) -> bool {
    matches!(
        err,
        Error::LeaseLost { .. } | Error::PoolLost { .. } | Error::PoolExhausted(_)
    )
}

/// Bytes for an upload: the lease id first (so a leak says whose it was),
/// then `len` bytes from `seed`.
fn payload(lease: &str, seed: u64, len: usize) -> Bytes {
    let mut rng = Rng::new(seed);
    let mut data = lease.as_bytes().to_vec();
    while data.len() < lease.len() + len {
        data.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    data.truncate(lease.len() + len);
    Bytes::from(data)
}

impl State {
    /// Drops the leases and pools found lost since the last step.
    fn sweep(&mut self, report: &mut StepReport) {
        let mut kept = Vec::new();
        for held in self.held.drain(..) {
            match held.session.lost() {
                Some(reason) => report.lost.push((held.view.id.clone(), reason)),
                None => kept.push(held),
            }
        }
        self.held = kept;
        let mut kept = Vec::new();
        for owned in self.owned.drain(..) {
            match owned.pool.lost() {
                Some(reason) => report.lost_pools.push((owned.view.name.clone(), reason)),
                None => kept.push(owned),
            }
        }
        self.owned = kept;
    }

    fn fill(&self, report: &mut StepReport) {
        report.held = self.held.iter().map(|h| h.view.clone()).collect();
        report.owned = self.owned.iter().map(|o| o.view.clone()).collect();
    }

    /// A call on a held lease failed: expected if the lease is lost.
    fn on_error(&self, i: usize, what: &str, err: Error, report: &mut StepReport) {
        let lost = self.held.get(i).and_then(|h| h.session.lost());
        if expected(&err) || lost.is_some() {
            report.outcome = format!("{what}: lease gone: {err}");
        } else {
            report.outcome = format!("{what}: {err}");
            report
                .violations
                .push(format!("{what} on a held lease failed: {err}"));
        }
    }

    /// The intent of an operation, for the parent to know before it runs.
    fn intent(&self, op: Op, a: u64, b: u64) -> Intent {
        let mut intent = Intent {
            op: op.name().into(),
            ..Default::default()
        };
        match op {
            Op::Acquire if self.held.len() < MAX_HELD => {
                let pools = self.acquirable();
                intent.pool = Some(pools[(a % pools.len() as u64) as usize].clone());
                intent.ttl_ms = 2000 + 1000 * (b % 2);
            }
            Op::CreatePool if self.owned.len() < MAX_OWNED => {
                intent.pool = Some(self.pool_name(self.pools_made));
                intent.ttl_ms = 2000 + 1000 * (b % 2);
            }
            _ => {}
        }
        intent
    }

    fn acquirable(&self) -> Vec<String> {
        let mut pools = self.args.pools.clone();
        pools.extend(self.owned.iter().map(|o| o.view.name.clone()));
        pools
    }

    fn pool_name(&self, n: u32) -> String {
        format!("{}-c{}-o{}", self.args.prefix, self.args.client, n)
    }

    async fn step(&mut self, op: Op, a: u64, b: u64, intent: &Intent, report: &mut StepReport) {
        let n = self.held.len();
        let pick = (a % n.max(1) as u64) as usize;
        match op {
            Op::Acquire => {
                let Some(pool) = intent.pool.clone() else {
                    report.outcome = format!("skipped: holding {n}");
                    return;
                };
                let options = AcquireOptions::new(pool.clone())
                    .ttl(Duration::from_millis(intent.ttl_ms))
                    .wait(acquire_wait(b));
                let owned = self.owned.iter().find(|o| o.view.name == pool);
                let result = match owned {
                    Some(o) => o.pool.acquire_with(options).await,
                    None => self.client.acquire_with(options).await,
                };
                match result {
                    Ok(session) => {
                        let view = LeaseView {
                            id: session.lease_id().to_string(),
                            container: session.container_id().to_string(),
                            pool,
                            ttl_ms: intent.ttl_ms,
                            temporary: session.lease().temporary,
                        };
                        report.outcome = format!("acquired {}", view.id);
                        report.acquired = Some(view.clone());
                        self.held.push(Held {
                            session,
                            view,
                            uploaded: None,
                        });
                    }
                    Err(e) => {
                        // Nothing free within the wait, or the pool is on
                        // its way out or not warm yet: all fine here. The
                        // parent checks the pools' state itself.
                        report.outcome = format!("not acquired: {e}");
                    }
                }
            }
            Op::Run if n > 0 => {
                let (x, y) = (a % 1000, b % 1000);
                let held = &self.held[pick];
                match held.session.run_collect(format!("print({x}*{y})")).await {
                    Ok(output) => {
                        let want = format!("{}\n", x * y);
                        report.outcome = format!("ran on {}", held.view.id);
                        if output.stdout_text() != want || output.exit_code() != 0 {
                            report.violations.push(format!(
                                "run printed {:?} (exit {}, stderr {:?}), not {want:?}",
                                output.stdout_text(),
                                output.exit_code(),
                                output.stderr_text()
                            ));
                        }
                    }
                    Err(e) => self.on_error(pick, "run", e, report),
                }
            }
            Op::Cancel if n > 0 => match self.cancel(pick).await {
                Ok(outcome) => report.outcome = outcome,
                Err(e) => self.on_error(pick, "cancel", e, report),
            },
            Op::Upload if n > 0 => {
                let len = (b % 32768) as usize;
                let data = payload(&self.held[pick].view.id, a, len);
                match self.held[pick]
                    .session
                    .upload(UPLOAD_PATH, data.clone())
                    .await
                {
                    Ok(_) => {
                        report.outcome = format!("uploaded {} bytes", data.len());
                        self.held[pick].uploaded = Some(data);
                    }
                    Err(e) => self.on_error(pick, "upload", e, report),
                }
            }
            Op::Download if n > 0 => {
                let held = &self.held[pick];
                match (held.session.download(UPLOAD_PATH).await, &held.uploaded) {
                    (Ok((_, data)), Some(sent)) => {
                        report.outcome = format!("downloaded {} bytes", data.len());
                        if data != *sent {
                            report.violations.push(format!(
                                "downloaded {} bytes, not the {} uploaded",
                                data.len(),
                                sent.len()
                            ));
                        }
                    }
                    (Ok((_, data)), None) => {
                        let whose = String::from_utf8_lossy(&data[..data.len().min(32)]);
                        report.violations.push(format!(
                            "lease {} on {} sees a file an earlier lease wrote (lease {whose})",
                            held.view.id, held.view.container
                        ));
                    }
                    (Err(Error::NotFound(_)), None) => {
                        report.outcome = "nothing uploaded, nothing there".into();
                    }
                    (Err(e), _) => self.on_error(pick, "download", e, report),
                }
            }
            Op::KeepAlive if n > 0 => match self.keepalive(pick).await {
                Ok(pb::LeaseState::Active) => report.outcome = "renewed".into(),
                // The parent checks that the session finds out in time.
                Ok(state) => report.outcome = format!("renewal answered {state:?}"),
                Err(e) => self.on_error(pick, "keepalive", e, report),
            },
            Op::Hold => {
                let pause = Duration::from_millis(1000 + b % 1500);
                tokio::time::sleep(pause).await;
                report.outcome = format!("held {pause:?}");
            }
            Op::Release if n > 0 => {
                let held = self.held.remove(pick);
                let id = held.view.id.clone();
                match held.session.release().await {
                    Ok(()) => {
                        report.outcome = format!("released {id}");
                        report.released.push(id);
                    }
                    Err(e) => {
                        report.outcome = format!("release failed: {e}");
                        report
                            .violations
                            .push(format!("release of {id} failed: {e}"));
                    }
                }
            }
            Op::Abandon if n > 0 => {
                let held = self.held.remove(pick);
                report.outcome = format!("abandoned {}", held.view.id);
                report.abandoned.push(held.view.clone());
                abandon(held.session);
            }
            Op::CreatePool => {
                let Some(name) = intent.pool.clone() else {
                    report.outcome = "skipped: owns a pool already".into();
                    return;
                };
                self.pools_made += 1;
                let strategy = match b % 3 {
                    0 => pb::ExhaustionStrategy::Wait,
                    1 => pb::ExhaustionStrategy::Temporary,
                    _ => pb::ExhaustionStrategy::FailFast,
                };
                let spec = owned_spec(&name, &self.args.image, &self.args.backend, strategy);
                let ttl = Duration::from_millis(intent.ttl_ms);
                match self.client.create_owned_pool(spec, ttl, false).await {
                    Ok(pool) => {
                        report.outcome = format!("created {name} ({strategy:?})");
                        self.owned.push(Owned {
                            pool,
                            view: OwnedView {
                                name,
                                owner_ttl_ms: intent.ttl_ms,
                            },
                        });
                    }
                    Err(e) => {
                        report.outcome = format!("create failed: {e}");
                        report
                            .violations
                            .push(format!("CreatePool {name} failed: {e}"));
                    }
                }
            }
            Op::DeletePool if !self.owned.is_empty() => {
                let owned = self.owned.remove(0);
                // A deleted pool lets its leases run to their end: they stay.
                match owned.pool.delete().await {
                    Ok(busy) => {
                        report.outcome = format!("deleted {} ({busy} busy)", owned.view.name);
                        report.deleted_pools.push(owned.view.name);
                    }
                    Err(e) => {
                        report.outcome = format!("delete failed: {e}");
                        report
                            .violations
                            .push(format!("DeletePool {} failed: {e}", owned.view.name));
                    }
                }
            }
            Op::Stats => {
                let pool = &self.args.pools[(a % self.args.pools.len() as u64) as usize];
                match self.client.stats(pool).await {
                    Ok(stats) => {
                        report.outcome = format!("{pool}: {} leases", stats.active_leases);
                    }
                    Err(e) => report.violations.push(format!("stats of {pool}: {e}")),
                }
            }
            _ => report.outcome = "skipped: nothing to do it on".into(),
        }
    }

    /// A run that waits, cancelled once it has started: it must end as
    /// cancelled, and the lease stays usable.
    async fn cancel(&self, i: usize) -> Result<String, Error> {
        let session = &self.held[i].session;
        let code = "import time\nprint('go', flush=True)\ntime.sleep(30)\n";
        let mut stream = session
            .run_with(code, RunOptions::new().timeout(Duration::from_secs(40)))
            .await?;
        let mut run_id = String::new();
        let mut cancelled = None;
        let mut end = None;
        while let Some(event) = stream.next().await {
            match event? {
                RunEvent::Started { run_id: id } => run_id = id,
                RunEvent::Stdout(data) if cancelled.is_none() && data.starts_with(b"go") => {
                    cancelled = Some(session.cancel(&run_id).await?);
                }
                RunEvent::Exit(exit) => end = Some(exit),
                _ => {}
            }
        }
        let end = end.ok_or_else(|| Error::Protocol("no exit event".into()))?;
        let reason = pb::EndReason::try_from(end.end_reason).unwrap_or_default();
        if cancelled != Some(true) || reason != pb::EndReason::Cancelled {
            return Err(Error::Protocol(format!(
                "cancel answered {cancelled:?}, the run ended {reason:?}"
            )));
        }
        Ok(format!("cancelled run {run_id}"))
    }

    /// One renewal on a KeepAlive stream of our own.
    async fn keepalive(&self, i: usize) -> Result<pb::LeaseState, Error> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let request = pb::KeepAliveRequest {
            lease_id: self.held[i].view.id.clone(),
            ..Default::default()
        };
        tx.send(request)
            .await
            .map_err(|_| Error::Protocol("keepalive channel closed".into()))?;
        let mut answers = self
            .client
            .sessions()
            .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(Error::from)?
            .into_inner();
        let answer = answers
            .message()
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::Protocol("the keepalive stream ended".into()))?;
        Ok(pb::LeaseState::try_from(answer.state).unwrap_or_default())
    }

    /// Last step, clean: release everything, delete the pools.
    async fn finish(&mut self, report: &mut StepReport) {
        for held in std::mem::take(&mut self.held) {
            let id = held.view.id.clone();
            match held.session.release().await {
                Ok(()) => report.released.push(id),
                Err(e) => report
                    .violations
                    .push(format!("release of {id} failed: {e}")),
            }
        }
        for owned in std::mem::take(&mut self.owned) {
            match owned.pool.delete().await {
                Ok(_) => report.deleted_pools.push(owned.view.name),
                Err(e) => report
                    .violations
                    .push(format!("DeletePool {} failed: {e}", owned.view.name)),
            }
        }
        report.outcome = "finished: released everything".into();
    }
}

/// Drops a session without releasing it: dropped outside the runtime, its
/// keepalive stops and no release is sent (as when its process hangs).
fn abandon(session: Session) {
    let _ = std::thread::spawn(move || drop(session)).join();
}

/// The spec of a pool a client owns: one container.
pub fn owned_spec(
    name: &str,
    image: &str,
    backend: &str,
    strategy: pb::ExhaustionStrategy,
) -> pb::PoolSpec {
    let backend = match backend {
        "podman" => pb::Backend::Podman,
        _ => pb::Backend::Docker,
    };
    pb::PoolSpec {
        name: name.to_string(),
        language: "python".into(),
        image: image.to_string(),
        backend: backend as i32,
        default_lease_ttl: crate::secs(3.0),
        max_temporary: Some(1),
        config: Some(pb::PoolConfig {
            min_pool_size: Some(1),
            max_pool_size: Some(1),
            acquisition_timeout: crate::secs(1.0),
            exhaustion_strategy: strategy as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs a client to its end.
pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let client = Client::builder(args.addr.clone())
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let mut rng = Rng::new(args.seed);
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut state = State {
        args,
        client,
        held: Vec::new(),
        owned: Vec::new(),
        pools_made: 0,
    };
    let steps = state.args.steps;
    for step in 1..=steps {
        if state.args.lockstep {
            // The parent says when; without it (stdin closed) we vanish.
            match stdin.next_line().await {
                Ok(Some(_)) => {}
                _ => std::process::exit(0),
            }
        }
        // Three draws a step, whatever the step: the decisions stay the
        // same when outcomes differ.
        let (roll, a, b) = (rng.next_u64(), rng.next_u64(), rng.next_u64());
        let client = state.args.client;
        let mut report = StepReport {
            client,
            step,
            ..Default::default()
        };
        state.sweep(&mut report);
        let started = Instant::now();
        if step == steps {
            let vanish = roll % 100 >= 70;
            report.decision = if vanish { "vanish" } else { "finish" }.into();
            report.done = true;
            out(&Line::Intent {
                client,
                step,
                intent: Intent {
                    op: report.decision.clone(),
                    ..Default::default()
                },
            });
            if vanish {
                report.vanished = true;
                report.outcome = "vanished: exits holding everything".into();
                state.fill(&mut report);
                out(&Line::Step(Box::new(report)));
                std::process::exit(0);
            }
            state.finish(&mut report).await;
        } else {
            let op = Op::pick(roll);
            report.decision = format!("{} {} {}", op.name(), a % 1000, b % 1000);
            let intent = state.intent(op, a, b);
            out(&Line::Intent {
                client,
                step,
                intent: intent.clone(),
            });
            let step_done =
                tokio::time::timeout(STEP_LIMIT, state.step(op, a, b, &intent, &mut report)).await;
            if step_done.is_err() {
                report
                    .violations
                    .push(format!("{} took longer than {STEP_LIMIT:?}", op.name()));
            }
        }
        if started.elapsed() > STEP_LIMIT {
            report.outcome.push_str(" (slow)");
        }
        state.fill(&mut report);
        out(&Line::Step(Box::new(report)));
    }
    Ok(())
}
