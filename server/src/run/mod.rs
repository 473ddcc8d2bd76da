//! Runs: one program in a leased container, its output streamed as it is
//! produced, bounded in time and in output, killable as a whole process tree.

pub mod artifacts;
pub mod context;
pub mod install;
pub mod interactive;
mod request;
mod resident;
/// Runs over the fake engine, in paused time.
#[cfg(test)]
mod tests;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

// tokio's clock, which `tokio::time::pause` drives in the unit tests.
use tokio::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tracing::Instrument;

pub use interactive::Controls;
pub use request::{PlotFormat, Program, RunLimits, RunSpec};

use self::{
    artifacts::{ArtifactWatch, FrameScanner},
    request::Stdin,
};
use crate::{
    artifact::ArtifactInfo,
    error::{Error, LeaseEnd, Result},
    pool::{
        LeaseGuard,
        lease::{RunId, RunRegistration, StopCause},
    },
    sandbox::{self, EngineError, Exec, ExecSpec, Output, TerminalSize, runner::RunnerRun},
};

/// After a kill, output still in flight is drained for at most this long.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(10);
/// How long after a kill whose run still writes it is killed again.
const REKILL_INTERVAL: Duration = Duration::from_millis(200);
/// Events buffered between a run and its client; beyond this the run's
/// output waits for the client (and the program for its pipe).
const EVENT_BUFFER: usize = 16;
/// Exit codes a shell reports for a process killed by signal N: 128 + N.
const SIGNAL_EXIT_CODES: std::ops::RangeInclusive<i32> = 129..=159;
/// What a shell adds to a signal's number in an exit code.
const SIGNAL_EXIT_BASE: i32 = 128;

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Exited,
    Signaled,
    Timeout,
    Cancelled,
    OutputLimit,
    LeaseExpired,
    /// The resident runner broke its protocol mid-run (`sandbox::runner`).
    RunnerLost,
}

impl EndReason {
    /// Its index in `pool::stats::END_REASONS` (the proto's order).
    pub fn metric_index(self) -> usize {
        match self {
            EndReason::Exited => 0,
            EndReason::Signaled => 1,
            EndReason::Timeout => 2,
            EndReason::Cancelled => 3,
            EndReason::OutputLimit => 4,
            EndReason::LeaseExpired => 5,
            EndReason::RunnerLost => 6,
        }
    }
}

/// The last event of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunExit {
    pub exit_code: i32,
    pub reason: EndReason,
    pub signal: i32,
    pub duration: Duration,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub truncated: bool,
    pub message: String,
    /// The run's context was restarted to stop it.
    pub context_restarted: bool,
}

/// A piece of a file the run produced.
#[derive(Debug, Clone)]
pub struct ArtifactChunk {
    pub info: ArtifactInfo,
    pub offset: u64,
    pub data: Bytes,
    pub last: bool,
    pub omitted: bool,
}

/// One event of a run, in order.
#[derive(Debug)]
pub enum RunEvent {
    Started {
        run_id: RunId,
        start_time: SystemTime,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    Artifact(ArtifactChunk),
    Exit(RunExit),
    /// The engine failed mid-run; the stream ends with this error.
    Failed(Error),
}

/// Starts a run on a lease and returns its events. Fails before anything
/// starts on bad input or when the container cannot run anything.
pub async fn start(
    lease: LeaseGuard,
    spec: RunSpec,
    limits: &RunLimits,
) -> Result<mpsc::Receiver<RunEvent>> {
    // The run's span lasts until its last event: the pump runs in it.
    let span = crate::otel_span!("run");
    let (events, _) = start_in(lease, spec, limits, Stdin::Given, span.clone())
        .instrument(span)
        .await?;
    Ok(events)
}

/// Starts an interactive run: its input is streamed through the returned
/// controls (which also signal it and resize its terminal), with a
/// terminal of `terminal`'s size if given. Always a process of its own
/// (never the resident runner, never a context's cell).
pub async fn start_interactive(
    lease: LeaseGuard,
    spec: RunSpec,
    limits: &RunLimits,
    terminal: Option<TerminalSize>,
) -> Result<(mpsc::Receiver<RunEvent>, Controls)> {
    let span = crate::otel_span!("run");
    let (events, controls) = start_in(lease, spec, limits, Stdin::Live { terminal }, span.clone())
        .instrument(span)
        .await?;
    // Only a context's cell runs without a process of its own, and `plan`
    // refuses those already.
    let controls = controls
        .ok_or_else(|| Error::invalid("context_id", "a context's cells are not interactive"))?;
    Ok((events, controls))
}

/// `stdin`: live for an interactive run (which then has controls).
async fn start_in(
    lease: LeaseGuard,
    mut spec: RunSpec,
    limits: &RunLimits,
    stdin: Stdin,
    span: tracing::Span,
) -> Result<(mpsc::Receiver<RunEvent>, Option<Controls>)> {
    let (interactive, terminal) = match stdin {
        Stdin::Live { terminal } => (true, terminal),
        Stdin::Given => (false, None),
    };
    let run_id = spec.run_id.take().unwrap_or_default();
    let mut plan = request::plan(&lease, spec, limits, stdin)?;
    let registration = lease.register_run(&run_id);
    if let Some(cause) = registration.control().cause() {
        return Err(ended_error(&lease, cause));
    }
    let watch = ArtifactWatch::start();
    // A cell runs in its context's kernel, under the context's group.
    let mut group = None;
    let mut controls = None;
    let mut live_input = None;
    let source = match plan.cell.take() {
        Some((context_id, code)) => {
            let context = context::find(&lease, &context_id)?;
            // The cell continues the trace from the run's span, as a
            // program of its own does.
            let trace_env = crate::telemetry::trace_env();
            let cell = context::Cell::begin(
                context,
                run_id.as_str(),
                &code,
                plan.plot_format.extension(),
                &watch,
                &trace_env,
            )
            .await?;
            Source::Cell(Box::new(cell))
        }
        None => {
            let run_group = lease
                .sandbox()
                .run_group()
                .map_err(|e| lease.sandbox_error(e))?;
            // The program continues the trace from the run's span.
            let trace_env = crate::telemetry::trace_env();
            let mut exec_spec = exec_spec(
                &lease, &plan, &run_id, &run_group, &watch, trace_env, terminal,
            );
            let resident = if !interactive {
                resident::start(&lease, &exec_spec, &plan.input)
                    .instrument(crate::otel_span!("runner.start"))
                    .await
            } else {
                exec_spec.stdin = true;
                exec_spec.terminal = terminal;
                None
            };
            match resident {
                Some(run) => Source::Runner(Box::new(run)),
                None => {
                    let mut exec = lease
                        .sandbox()
                        .start(exec_spec)
                        .instrument(crate::otel_span!("engine.exec"))
                        .await
                        .map_err(|e| lease.engine_error(e))?;
                    let run_group = Arc::new(run_group);
                    if interactive {
                        let (tx, rx) = mpsc::channel(interactive::STDIN_BUFFER);
                        live_input = Some(rx);
                        controls = Some(Controls::new(
                            tx,
                            exec.resize.take(),
                            Arc::downgrade(&run_group),
                            lease.sandbox().clone(),
                        ));
                    }
                    group = Some(run_group);
                    Source::Exec(exec)
                }
            }
        }
    };
    let started = Instant::now();
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    // The buffer is empty: this cannot fail.
    let _ = tx.try_send(RunEvent::Started {
        run_id: run_id.clone(),
        start_time: SystemTime::now(),
    });
    crate::otel_event!("run.start", sandpool.run = %run_id);
    let pump = Pump {
        lease,
        registration,
        run_id,
        group,
        terminal: terminal.is_some(),
        started,
        timeout: plan.timeout,
        limit: plan.output_limit,
        tx,
        counts: [0, 0],
        truncated: false,
        stop: None,
        kill: None,
        drain_until: None,
        scanner: watch.scanner(),
        watch,
        artifact_budget: limits.max_artifact_bytes,
    };
    let input = match live_input {
        Some(rx) => Input::Live {
            prefix: plan.input,
            rx,
        },
        None => Input::Given(plan.input),
    };
    tokio::spawn(pump.run(source, input).instrument(span));
    Ok((rx, controls))
}

/// A run's standard input.
enum Input {
    /// All of it, then end of file.
    Given(Bytes),
    /// `prefix`, then what the client streams until it closes stdin.
    Live {
        prefix: Bytes,
        rx: mpsc::Receiver<Bytes>,
    },
}

/// The run's own process, in its own group (see `sandbox::RunGroup`).
fn exec_spec(
    lease: &LeaseGuard,
    plan: &request::Plan,
    run_id: &RunId,
    group: &sandbox::RunGroup,
    watch: &ArtifactWatch,
    trace_env: Vec<(String, String)>,
    terminal: Option<TerminalSize>,
) -> ExecSpec {
    let out_dir = lease.spec().output_dir.clone();
    // Layers, later ones winning: the pool's runtime.env (the lease's
    // processes get it, never the server's own), the server's own, the
    // language's library paths, the lease's (from Acquire), the language's
    // and the run's.
    let env = sandbox::merge_env(
        lease
            .spec()
            .runtime
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(watch.env(&out_dir))
            .chain([(
                "SANDPOOL_PLOT_FORMAT".to_string(),
                plan.plot_format.extension().to_string(),
            )])
            .chain(lease.lang().library_env())
            .chain(lease.env().iter().cloned())
            .chain(trace_env)
            .chain(plan.env.iter().cloned())
            .chain([(sandbox::RUN_MARKER.to_string(), run_id.to_string())]),
    );
    let argv = if plan.reports_artifacts {
        plan.argv.clone()
    } else {
        watch.wrap(plan.argv.clone(), &out_dir)
    };
    let argv = match terminal {
        Some(size) => interactive::sized_terminal(size, argv),
        None => argv,
    };
    ExecSpec {
        argv: lease.sandbox().user_argv(argv),
        env,
        user: lease.sandbox().run_user(group),
        working_dir: Some(plan.working_dir.clone()),
        // Without input, no stdin is attached (the program reads EOF): the
        // engine spends a few milliseconds less per exec.
        stdin: !plan.input.is_empty(),
        privileged: false,
        terminal: None,
    }
}

/// Where a run's output comes from, and how it is stopped.
enum Source {
    /// A process of its own.
    Exec(Exec),
    /// A cell in a persistent context.
    Cell(Box<context::Cell>),
    /// A program started by the container's resident runner.
    Runner(Box<RunnerRun>),
}

impl Source {
    async fn next(&mut self) -> Option<Result<Output, sandbox::Error>> {
        match self {
            Source::Exec(exec) => exec.output.next().await.map(|o| o.map_err(Into::into)),
            Source::Cell(cell) => cell.next().await.map(|o| o.map_err(Into::into)),
            Source::Runner(run) => run.next().await,
        }
    }
}

fn ended_error(lease: &LeaseGuard, cause: StopCause) -> Error {
    match cause {
        StopCause::LeaseEnded(end) => Error::LeaseEnded {
            id: lease.id().to_string(),
            end,
        },
        StopCause::Cancelled => Error::LeaseEnded {
            id: lease.id().to_string(),
            end: LeaseEnd::Released,
        },
    }
}

struct Pump {
    lease: LeaseGuard,
    registration: RunRegistration,
    run_id: RunId,
    /// The run's group (a cell's is its context's); given back when the
    /// run is over, its kill included (an interactive run's controls only
    /// hold it weakly).
    group: Option<Arc<sandbox::RunGroup>>,
    /// The program has a terminal: its one output stream is stdout, which
    /// then carries the artifact report too.
    terminal: bool,
    started: Instant,
    timeout: Duration,
    limit: u64,
    tx: mpsc::Sender<RunEvent>,
    /// Bytes written to stdout and stderr, including any beyond the cap.
    counts: [u64; 2],
    truncated: bool,
    stop: Option<(EndReason, String)>,
    /// The kill in flight: true when it found the container gone (or had to
    /// destroy it), whose output then never ends.
    kill: Option<tokio::task::JoinHandle<bool>>,
    drain_until: Option<Instant>,
    /// Takes the artifact report out of stderr.
    scanner: FrameScanner,
    watch: ArtifactWatch,
    artifact_budget: u64,
}

impl Pump {
    async fn run(mut self, mut source: Source, input: Input) {
        if let Source::Exec(exec) = &mut source
            && let Some(mut stdin) = exec.stdin.take()
        {
            // In its own task: a program that never reads its input must not
            // hold up its output.
            match input {
                Input::Given(input) => {
                    tokio::spawn(async move {
                        let _ = stdin.write_all(&input).await;
                        let _ = stdin.shutdown().await;
                    });
                }
                Input::Live { prefix, rx } => {
                    tokio::spawn(interactive::feed(stdin, prefix, rx));
                }
            }
        }
        let deadline = self.started + self.timeout;
        let control = self.registration.control().clone();
        let mut pending: Option<RunEvent> = None;
        let mut failure: Option<sandbox::Error> = None;
        let mut output_done = false;
        let mut rekill_at: Option<Instant> = None;
        let tx = self.tx.clone();
        while !(output_done && pending.is_none()) {
            let drain_until = self.drain_until;
            tokio::select! {
                biased;
                permit = tx.reserve(), if pending.is_some() => match permit {
                    Ok(permit) => {
                        if let Some(event) = pending.take() {
                            permit.send(event);
                        }
                    }
                    Err(_) => {
                        pending = None;
                        self.request_stop(&source, EndReason::Cancelled, "the client went away".into());
                    }
                },
                item = source.next(), if pending.is_none() && !output_done => match item {
                    Some(Ok(Output::Stdout(data))) if self.terminal => {
                        let own = self.scanner.feed(&data);
                        pending = self.accept(&source, 0, own);
                    }
                    Some(Ok(Output::Stdout(data))) => pending = self.accept(&source, 0, data),
                    Some(Ok(Output::Stderr(data))) => {
                        let own = self.scanner.feed(&data);
                        pending = self.accept(&source, 1, own);
                    }
                    // Something in the sandbox wrote into the runner's
                    // stream, or the runner crashed: the run ends (killed)
                    // with a reason of its own, not as a server failure.
                    Some(Err(e @ sandbox::Error::RunnerLost { .. })) => {
                        tracing::warn!(run = %self.run_id, error = %e, "the runner broke its protocol; killing the run");
                        self.request_stop(&source, EndReason::RunnerLost, format!("killed: {e}; the lease's later runs start by exec"));
                        output_done = true;
                    }
                    Some(Err(e)) => {
                        failure = Some(e);
                        output_done = true;
                    }
                    None => {
                        output_done = true;
                        if self.stop.is_some() {
                            tracing::debug!(run = %self.run_id, after_start_ms = self.started.elapsed().as_millis() as u64, "output ended after the stop");
                        }
                        let held = self.scanner.finish();
                        let stream = if self.terminal { 0 } else { 1 };
                        pending = self.accept(&source, stream, held);
                    }
                },
                _ = tokio::time::sleep_until(deadline), if self.stop.is_none() => {
                    let message = format!("killed after the {} timeout", human(self.timeout));
                    self.request_stop(&source, EndReason::Timeout, message);
                }
                _ = control.token().cancelled(), if self.stop.is_none() => {
                    let (reason, message) = match control.cause() {
                        Some(StopCause::LeaseEnded(LeaseEnd::Expired)) => {
                            (EndReason::LeaseExpired, "killed: the lease expired".to_string())
                        }
                        Some(StopCause::LeaseEnded(LeaseEnd::Revoked)) => (
                            EndReason::LeaseExpired,
                            "killed: the lease was revoked (the server is stopping)".to_string(),
                        ),
                        Some(StopCause::LeaseEnded(LeaseEnd::LifetimeExceeded)) => (
                            EndReason::LeaseExpired,
                            "killed: the lease reached its pool's max_lease_lifetime".to_string(),
                        ),
                        Some(StopCause::LeaseEnded(LeaseEnd::ContainerLost)) => (
                            EndReason::LeaseExpired,
                            "stopped: the lease's container died".to_string(),
                        ),
                        // Not an end of a lease this process holds; named
                        // for the match's sake.
                        Some(StopCause::LeaseEnded(LeaseEnd::ReplicaGone)) => (
                            EndReason::LeaseExpired,
                            "killed: the lease's replica is gone".to_string(),
                        ),
                        Some(StopCause::LeaseEnded(LeaseEnd::PoolDeleted)) => (
                            EndReason::LeaseExpired,
                            "killed: the lease's pool was deleted (its owner went away)".to_string(),
                        ),
                        Some(StopCause::LeaseEnded(LeaseEnd::Released)) => {
                            (EndReason::Cancelled, "killed: the lease was released".to_string())
                        }
                        Some(StopCause::Cancelled) | None => {
                            (EndReason::Cancelled, "cancelled by the client".to_string())
                        }
                    };
                    self.request_stop(&source, reason, message);
                }
                _ = tx.closed(), if self.stop.is_none() && pending.is_none() => {
                    self.request_stop(&source, EndReason::Cancelled, "the client went away".into());
                }
                gone = kill_outcome(&mut self.kill), if self.kill.is_some() => {
                    tracing::debug!(run = %self.run_id, after_start_ms = self.started.elapsed().as_millis() as u64, gone, "kill done");
                    self.kill = None;
                    // The engine may start an exec's process a moment after
                    // its start call returned: a kill that early finds
                    // nothing. Kill again until the output ends.
                    if !gone && !output_done && !matches!(source, Source::Cell(_)) {
                        rekill_at = Some(Instant::now() + REKILL_INTERVAL);
                    }
                    if gone {
                        tracing::warn!(run = %self.run_id, "the container is gone; the run's output will not end");
                        failure = Some(EngineError::ContainerGone {
                            id: self.lease.sandbox().id().to_string(),
                        }.into());
                        break;
                    }
                }
                _ = sleep_until_opt(rekill_at), if rekill_at.is_some() && self.kill.is_none() => {
                    rekill_at = None;
                    if !output_done {
                        tracing::debug!(run = %self.run_id, "output goes on after the kill; killing again");
                        self.kill = Some(self.kill_group(&source));
                    }
                }
                _ = sleep_until_opt(drain_until), if drain_until.is_some() => {
                    tracing::warn!(run = %self.run_id, "output did not end after the kill; giving up on it");
                    break;
                }
            }
        }
        if let Some(kill) = self.kill.take() {
            let _ = tokio::time::timeout(DRAIN_AFTER_KILL, kill).await;
        }
        let event = match failure {
            Some(e) => {
                self.lease.meters().run_failed();
                resident::failed(&self.lease, source).await;
                RunEvent::Failed(self.lease.sandbox_error(e))
            }
            None => {
                let (exit, no_exit_code) = self.exit(source).await;
                if self.container_died(&exit).await {
                    self.lease.meters().run_failed();
                    RunEvent::Failed(self.lease.engine_error(EngineError::ContainerGone {
                        id: self.lease.sandbox().id().to_string(),
                    }))
                } else if let Some(e) = no_exit_code {
                    // The output ended but the engine (or the runner)
                    // cannot say how: the run's end is unknown, and says why.
                    self.lease.meters().run_failed();
                    RunEvent::Failed(self.lease.sandbox_error(e))
                } else {
                    self.collect_artifacts()
                        .instrument(crate::otel_span!("run.artifacts"))
                        .await;
                    crate::otel_event!(
                        "run.exit",
                        exit_code = exit.exit_code,
                        end_reason = ?exit.reason,
                        stdout_bytes = exit.stdout_bytes,
                        stderr_bytes = exit.stderr_bytes,
                        truncated = exit.truncated
                    );
                    self.lease
                        .meters()
                        .run_ended(exit.reason.metric_index(), exit.duration);
                    RunEvent::Exit(exit)
                }
            }
        };
        tracing::debug!(run = %self.run_id, after_start_ms = self.started.elapsed().as_millis() as u64, "run over");
        let _ = self.tx.send(event).await;
    }

    /// Whether the run ended because its container died (a gVisor sandbox
    /// can, under a fork bomb): the engine then reports an exit code of its
    /// own (126 and up, or none), and the container no longer runs. runsc
    /// reports 128 a moment before the engine calls the container stopped:
    /// for that code (or none), ask once more after a moment.
    async fn container_died(&self, exit: &RunExit) -> bool {
        if (0..126).contains(&exit.exit_code) || exit.signal != 0 {
            return false;
        }
        let container = self.lease.sandbox();
        if matches!(container.is_running().await, Ok(false)) {
            return true;
        }
        if exit.exit_code == 128 || exit.exit_code < 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            return matches!(container.is_running().await, Ok(false));
        }
        false
    }

    /// Streams the files the run left in the output directory, unless its
    /// report says there are none or its lease is over.
    async fn collect_artifacts(&mut self) {
        if self.scanner.verdict == Some(false)
            || self.lease.ended().is_some()
            || self.tx.is_closed()
        {
            return;
        }
        match artifacts::collect(
            &self.lease,
            &self.run_id,
            &self.watch,
            self.artifact_budget,
            &self.tx,
        )
        .await
        {
            Ok(found) => self.lease.record_artifacts(found),
            Err(e) => tracing::warn!(run = %self.run_id, error = %e, "could not collect artifacts"),
        }
    }

    /// Counts a chunk and returns what of it goes to the client: nothing
    /// beyond the cap. Crossing the cap stops the run.
    fn accept(&mut self, source: &Source, stream: usize, data: Bytes) -> Option<RunEvent> {
        let before = self.counts[stream];
        self.counts[stream] += data.len() as u64;
        let room = self.limit.saturating_sub(before);
        let data = if (data.len() as u64) > room {
            self.truncated = true;
            let name = if stream == 0 { "stdout" } else { "stderr" };
            let message = format!("{name} exceeded the output cap of {} bytes", self.limit);
            self.request_stop(source, EndReason::OutputLimit, message);
            data.slice(..room as usize)
        } else {
            data
        };
        if data.is_empty() {
            return None;
        }
        self.lease.meters().streamed(stream, data.len());
        Some(if stream == 0 {
            RunEvent::Stdout(data)
        } else {
            RunEvent::Stderr(data)
        })
    }

    /// Stops the run (in the background: output keeps draining): kills its
    /// processes, or interrupts its cell.
    fn request_stop(&mut self, source: &Source, reason: EndReason, message: String) {
        if self.stop.is_some() {
            return;
        }
        tracing::debug!(run = %self.run_id, ?reason, %message, "stopping run");
        self.stop = Some((reason, message));
        self.drain_until = Some(Instant::now() + DRAIN_AFTER_KILL);
        self.kill = Some(match source {
            Source::Cell(cell) => cell.stop(&self.lease, reason == EndReason::LeaseExpired),
            Source::Exec(_) | Source::Runner(_) => self.kill_group(source),
        });
    }

    /// Kills the run's group (in the background); the task says whether
    /// the container is gone.
    fn kill_group(&self, source: &Source) -> tokio::task::JoinHandle<bool> {
        let container = self.lease.sandbox().clone();
        let run_id = self.run_id.clone();
        let gid = match source {
            Source::Runner(run) => Some(run.gid()),
            _ => self.group.as_ref().map(|g| g.gid()),
        };
        tokio::spawn(async move {
            let Some(gid) = gid else { return false };
            match container.kill_group(gid).await {
                Ok(()) => false,
                Err(e) => {
                    // Gone, or destroyed because the kill failed.
                    tracing::warn!(run = %run_id, error = %e, "could not kill the run");
                    true
                }
            }
        })
    }

    /// How the run ended, and why its exit code is unknown when it is.
    async fn exit(&mut self, source: Source) -> (RunExit, Option<sandbox::Error>) {
        let mut no_exit_code = None;
        // A run sandpool stopped (timeout, cancel, output cap, lease end) has
        // its end reason whatever the engine says of its exit code.
        let stopped = self.stop.is_some();
        let (code, context_restarted) = match source {
            Source::Exec(exec) => match self.lease.sandbox().exit_code(&exec.id).await {
                Ok(code) => (i32::try_from(code).unwrap_or(-1), false),
                Err(e) => {
                    tracing::warn!(run = %self.run_id, error = %e, "no exit code");
                    if !stopped {
                        no_exit_code = Some(e.into());
                    }
                    (-1, false)
                }
            },
            Source::Cell(cell) => cell.finish(&self.lease).await,
            Source::Runner(run) => (resident::exit_code(&self.lease, *run, stopped).await, false),
        };
        let signal = if SIGNAL_EXIT_CODES.contains(&code) {
            code - SIGNAL_EXIT_BASE
        } else {
            0
        };
        let (reason, mut message) = match self.stop.take() {
            Some(stop) => stop,
            None if signal != 0 => (EndReason::Signaled, format!("killed by signal {signal}")),
            None => (EndReason::Exited, format!("exited with code {code}")),
        };
        if context_restarted {
            message.push_str("; the context's interpreter was restarted and its state is gone");
        }
        let exit = RunExit {
            exit_code: code,
            reason,
            signal,
            duration: self.started.elapsed(),
            stdout_bytes: self.counts[0],
            stderr_bytes: self.counts[1],
            truncated: self.truncated,
            message,
            context_restarted,
        };
        (exit, no_exit_code)
    }
}

/// Whether the kill in flight found the container gone; never resolves
/// without one.
async fn kill_outcome(kill: &mut Option<tokio::task::JoinHandle<bool>>) -> bool {
    match kill {
        Some(handle) => handle.await.unwrap_or(false),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// "2s", "1.5s", "250ms".
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
