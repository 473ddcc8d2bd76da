//! The resident runner: one small process per warm container, started by
//! the server over one long-lived exec with stdin attached, that starts
//! each run's program on a frame of that stream and sends its output back
//! as frames. A run then costs no engine call: the exec is already there.
//!
//! How it gets into any image: a static binary (`bin.rs`, std only, glibc
//! linked in with `crt-static`), built by this crate's build.rs and carried
//! inside the server, written at warm-up into the support directory (owned
//! by the idle user: the sandbox user can run it but not replace it). It
//! needs nothing of the image (no libc of a given version, no interpreter,
//! no shell once placed). A POSIX sh runner would need no binary, but sh
//! cannot multiplex a program's stdout and stderr into frames, forward
//! stdin or report an exit status without a helper per run, which is the
//! fork it is meant to save.
//!
//! It is an accelerator, not a trust boundary. It runs as the sandbox user
//! in a run group of its own (`groups`), and its program inherits that
//! group (an unprivileged process cannot give it another): the server's
//! kill of a run (the warden's `kill gid`) kills the runner with it. So a
//! runner serves one run: when the run ends a fresh runner, with a fresh
//! group, starts in the background unless the lease is released first (its
//! reset starts one anyway), and runs that come before it says hello take
//! the exec path. Fresh runners are forks of the container's runner host
//! (`host`: root's, started once at warm-up, spared by the reset), not an
//! engine exec each; without a host, each starts by an exec of its own. Everything it sends is untrusted:
//! frames are bounded (`protocol::MAX_OUTPUT_FRAME`), output caps and
//! timeouts stay the run's (`run::Pump`). A stream that breaks the
//! protocol (a program can write into it: same uid and group) ends the run
//! with `Error::RunnerLost` after the server kills the run's group; one
//! that ends without an exit status (a program that ran `kill -9 -1`) ends
//! it as killed by SIGKILL, as the exec path does then; never a hang. A runner found gone before a run starts costs nothing: the run
//! takes the exec path. The reset kills it with everything else and starts
//! a new one from the image.
//!
//! A language may have a pre-started interpreter (`lang::Zygote`; Python
//! does): the runner starts it right after it says hello, so that the
//! interpreter's start-up (most of a short run) is done before the run
//! comes, and hands it the run (`protocol`). It is a fresh process, not a
//! fork of a shared parent: nothing a program can observe (pid, hash seed,
//! random state, threads, modules) is shared between runs, and there is
//! no fork-safety question for what it has loaded. It takes a run only
//! when the run's environment agrees with its own on everything the
//! interpreter reads at start-up and no site directory changed since it
//! started (a library installed meanwhile); otherwise it execs the run's
//! program itself, which is a cold start. Being started with the runner,
//! it is in the runner's group and goes with it.

#[cfg(test)]
mod drain;
mod host;
pub mod protocol;

pub use host::{ExecEnvironment, probe_then, split_probe};

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, StreamExt, stream::BoxStream};
use tokio::io::AsyncWriteExt;

use super::{Container, Error, RunGroup, SUPPORT_ROOT};
use crate::backend::{self, ExecSpec, ExecStdin, Output};

/// The runner binary, built by build.rs.
const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sandpool-runner"));
/// Where warm-up puts it.
pub const PATH: &str = "/opt/sandpool/bin/sandpool-runner";
/// How long a new runner may take to say hello.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a run its runner's replacement waits. Most leases run
/// once and are released at once (agent loops: Acquire, Run, Release); their
/// reset starts a runner anyway, so a replacement started right after the
/// run would be an engine exec and an interpreter start paid twice. A lease
/// that runs again within this (rare: a person or a model is thinking
/// between runs) takes the exec path for that run.
const REPLACE_DELAY: Duration = Duration::from_millis(200);

const _: () = assert!(PATH.len() > SUPPORT_ROOT.len());

/// The script that writes, as the idle user, each support file (path and
/// content as arguments: small text) and, with `runner`, the runner binary
/// (its bytes on stdin): one exec at warm-up, where each costs the engine a
/// process.
fn install_argv(files: &[(&str, &str)], runner: bool) -> Vec<String> {
    // "Make the parent directory of argument `p`, then write it": each
    // file's path is an argument, never part of the script.
    let into = |p: usize, write: &str| format!("mkdir -p \"$(dirname \"${{{p}}}\")\" && {write}");
    let mut steps = Vec::new();
    let mut args: Vec<&str> = Vec::new();
    for (path, content) in files {
        let (p, c) = (args.len() + 1, args.len() + 2);
        steps.push(into(p, &format!("printf '%s' \"${{{c}}}\" > \"${{{p}}}\"")));
        args.push(path);
        args.push(content);
    }
    if runner {
        let p = args.len() + 1;
        steps.push(into(
            p,
            &format!("cat > \"${{{p}}}\" && chmod 755 \"${{{p}}}\""),
        ));
        args.push(PATH);
    }
    if steps.is_empty() {
        steps.push("true".to_string());
    }
    super::sh(&steps.join(" && "), &args)
}

/// Places the language's support files and, on a pool with the resident
/// runner, the runner binary in a new container (warm-up), in one exec.
pub(super) async fn install(c: &Container, runner: bool) -> super::Result<()> {
    let files = c.lang().support_files();
    if files.is_empty() && !runner {
        return Ok(());
    }
    let exec = ExecSpec {
        stdin: runner,
        ..super::internal_as(super::IDLE_USER.to_string(), install_argv(files, runner))
    };
    let out = backend::exec_collect(
        c.backend(),
        c.id(),
        exec,
        runner.then(|| Bytes::from_static(BINARY)),
        super::INTERNAL_OUTPUT_LIMIT,
    )
    .await?;
    if out.success() {
        Ok(())
    } else {
        Err(Error::CommandFailed {
            what: "placing support files and the runner",
            exit_code: out.exit_code,
            detail: out.diagnostic(),
        })
    }
}

/// Takes a whole frame off `pending` (bytes read from a stream of frames:
/// the runner's, or its host's), if one is there; an error when its header
/// announces a frame that `fits` refuses (its kind and length: bounded
/// before any of it is buffered).
fn take_frame(
    pending: &mut BytesMut,
    fits: impl Fn(u8, usize) -> bool,
) -> Result<Option<(u8, Bytes)>, String> {
    if pending.len() < protocol::HEADER {
        return Ok(None);
    }
    let mut head = [0u8; protocol::HEADER];
    head.copy_from_slice(&pending[..protocol::HEADER]);
    let (kind, len) = (head[0], protocol::payload_len(&head));
    if !fits(kind, len) {
        return Err(format!("a frame of kind {kind} with {len} bytes"));
    }
    if pending.len() < protocol::HEADER + len {
        return Ok(None);
    }
    pending.advance(protocol::HEADER);
    Ok(Some((kind, pending.split_to(len).freeze())))
}

/// How a runner's stream reaches the server.
enum Transport {
    /// The runner's own engine exec.
    Exec {
        stdin: ExecStdin,
        output: BoxStream<'static, backend::Result<Output>>,
    },
    /// Relayed by the container's runner host (`host`), whose stream this
    /// runner holds while it lives. `None` inside: the host's stream broke.
    Hosted(tokio::sync::OwnedMutexGuard<Option<host::HostLink>>),
}

/// The open stream to one running runner.
struct Conn {
    transport: Transport,
    /// Bytes of the runner's stream not yet taken as frames.
    pending: BytesMut,
    /// The runner's group, and its programs'.
    group: RunGroup,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Half-closing stdin is what ends an exec's runner (it exits at
        // EOF). A hosted one ends when the host starts the next.
        if let Transport::Exec { stdin, .. } = &mut self.transport {
            let mut stdin = std::mem::replace(stdin, Box::pin(tokio::io::sink()));
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = stdin.shutdown().await;
                });
            }
        }
    }
}

/// What went wrong with a runner's stream.
#[derive(Debug)]
enum StreamError {
    Engine(backend::Error),
    Protocol(String),
}

/// What a read of the runner's stream gave.
enum Read {
    Data(Bytes),
    /// Nothing for the run (the exec's stderr).
    Nothing,
    Ended,
}

impl Conn {
    async fn send(&mut self, kind: u8, payload: &[u8]) -> std::io::Result<()> {
        match &mut self.transport {
            Transport::Exec { stdin, .. } => {
                stdin
                    .write_all(&protocol::header(kind, payload.len()))
                    .await?;
                stdin.write_all(payload).await?;
                stdin.flush().await
            }
            Transport::Hosted(link) => match link.as_mut() {
                Some(link) => link.relay(kind, payload).await,
                None => Err(std::io::ErrorKind::BrokenPipe.into()),
            },
        }
    }

    /// The next piece of the runner's stream.
    async fn read(&mut self) -> Result<Read, StreamError> {
        match &mut self.transport {
            Transport::Exec { output, .. } => match output.next().await {
                Some(Ok(Output::Stdout(data))) => Ok(Read::Data(data)),
                // The runner writes nothing there; whatever it is, it is
                // not for the run.
                Some(Ok(Output::Stderr(_))) => Ok(Read::Nothing),
                Some(Err(e)) => Err(StreamError::Engine(e)),
                None => Ok(Read::Ended),
            },
            Transport::Hosted(slot) => {
                let Some(link) = slot.as_mut() else {
                    return Ok(Read::Ended);
                };
                match link.next().await {
                    Ok(host::HostFrame::Relay(data)) => Ok(Read::Data(data)),
                    Ok(host::HostFrame::RunnerEnded) => Ok(Read::Ended),
                    Ok(other) => {
                        let kind = match other {
                            host::HostFrame::Spawned => "spawned",
                            _ => "spawn failed",
                        };
                        **slot = None;
                        Err(StreamError::Protocol(format!(
                            "the runner host answered {kind} to nothing"
                        )))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the runner host is gone; runners start by exec");
                        **slot = None;
                        Ok(Read::Ended)
                    }
                }
            }
        }
    }

    /// A whole frame from what was read so far, if there is one.
    fn parse(&mut self) -> Result<Option<(u8, Bytes)>, StreamError> {
        take_frame(&mut self.pending, |kind, len| match kind {
            protocol::STDOUT | protocol::STDERR => len <= protocol::MAX_OUTPUT_FRAME,
            protocol::EXIT => len == 4,
            protocol::HELLO => len <= 64,
            _ => false,
        })
        .map_err(StreamError::Protocol)
    }

    /// The next frame; `None` when the stream ended.
    async fn next_frame(&mut self) -> Result<Option<(u8, Bytes)>, StreamError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            match self.read().await? {
                Read::Data(data) => self.pending.extend_from_slice(&data),
                Read::Nothing => {}
                Read::Ended => return Ok(None),
            }
        }
    }

    /// Whether the idle runner still looks alive: its stream has neither
    /// ended nor carried anything since its last run.
    fn alive(&mut self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        match &mut self.transport {
            Transport::Exec { output, .. } => output.next().now_or_never().is_none(),
            // Anything the host sent since is this runner's (more of its
            // stream, or its end): not idle any more. What was read stays
            // in the host's buffer; its frames are skipped at the next spawn.
            Transport::Hosted(slot) => {
                let Some(link) = slot.as_mut() else {
                    return false;
                };
                if link.open() {
                    link.idle()
                } else {
                    **slot = None;
                    false
                }
            }
        }
    }
}

/// The server's side of one container's runner.
#[derive(Default)]
pub struct Runner {
    state: std::sync::Mutex<State>,
    /// The container's runner host, once started (warm-up): runners start
    /// by a fork of it rather than an engine exec.
    host: std::sync::OnceLock<host::Host>,
}

#[derive(Default)]
struct State {
    /// Counts the runners started: one that comes back from a run after a
    /// newer one started is not kept.
    generation: u64,
    idle: Option<Conn>,
}

impl Runner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Starts a new runner, replacing (and ending) any earlier one. When it
    /// cannot start, runs take the exec path.
    pub async fn start(&self, c: &Container) {
        self.start_unless_superseded(c, None).await
    }

    /// `start`, unless a runner was started or stopped since `seen` (a
    /// generation) was read: a reset came first and has its own.
    async fn start_unless_superseded(&self, c: &Container, seen: Option<u64>) {
        let generation = {
            let mut state = self.state();
            if seen.is_some_and(|seen| seen != state.generation) {
                return;
            }
            state.generation += 1;
            state.idle = None;
            state.generation
        };
        match tokio::time::timeout(START_TIMEOUT, self.connect(c)).await {
            Ok(Ok(conn)) => {
                let mut state = self.state();
                if state.generation == generation {
                    state.idle = Some(conn);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(container = %c.id(), error = %e, "the runner did not start; runs take the exec path");
            }
            Err(_) => {
                tracing::warn!(container = %c.id(), "the runner did not say hello in time; runs take the exec path");
            }
        }
    }

    /// Starts the container's runner host (warm-up, before the first
    /// runner). Without one, runners start by exec.
    pub async fn start_host(&self, c: &Container) {
        match host::start(c).await {
            Ok(started) => {
                let _ = self.host.set(started);
            }
            Err(e) => {
                tracing::warn!(container = %c.id(), error = %e, "no runner host: runners start by exec");
            }
        }
    }

    /// A fresh runner in `group`, started by the runner host; `None` when
    /// there is none, a runner of the lease still holds it (its stream), or
    /// it could not start one: the runner then starts by exec.
    async fn hosted(&self, c: &Container, group: &RunGroup) -> Option<Transport> {
        let host = self.host.get()?;
        let mut slot = std::sync::Arc::clone(&host.link).try_lock_owned().ok()?;
        let link = slot.as_mut()?;
        if link.out_of_step() {
            tracing::warn!(container = %c.id(), "the runner host's last spawn went unanswered; runners start by exec");
            *slot = None;
            return None;
        }
        match link.spawn(c, host, group).await {
            Ok(Ok(())) => Some(Transport::Hosted(slot)),
            Ok(Err(why)) => {
                tracing::warn!(container = %c.id(), %why, "the runner host could not start a runner; this one starts by exec");
                None
            }
            Err(e) => {
                tracing::warn!(container = %c.id(), error = %e, "the runner host is gone; runners start by exec");
                *slot = None;
                None
            }
        }
    }

    async fn connect(&self, c: &Container) -> super::Result<Conn> {
        let group = c.run_group()?;
        let transport = match self.hosted(c, &group).await {
            Some(hosted) => hosted,
            None => exec_transport(c, &group).await?,
        };
        handshake(
            c,
            Conn {
                transport,
                pending: BytesMut::new(),
                group,
            },
        )
        .await
    }

    /// The count of runners started or stopped so far.
    fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Ends the runner (if any): later runs take the exec path.
    pub fn stop(&self) {
        let mut state = self.state();
        state.generation += 1;
        state.idle = None;
    }

    /// Whether an idle runner is there and looks alive (a dead one is let
    /// go: runs take the exec path until the reset starts another).
    pub fn idle_and_alive(&self) -> bool {
        let mut state = self.state();
        let alive = state.idle.as_mut().is_some_and(Conn::alive);
        if !alive {
            state.idle = None;
        }
        alive
    }

    /// The idle runner, if there is one and it looks alive.
    fn take(&self) -> Option<Conn> {
        let mut conn = self.state().idle.take()?;
        conn.alive().then_some(conn)
    }
}

/// A runner started by its own engine exec.
async fn exec_transport(c: &Container, group: &RunGroup) -> super::Result<Transport> {
    let spec = ExecSpec {
        argv: vec![PATH.to_string()],
        // The engine's environment of any exec (the image's and the
        // container's): what a run's program starts from.
        env: Vec::new(),
        user: c.run_user(group),
        working_dir: Some("/".to_string()),
        stdin: true,
        privileged: false,
        terminal: None,
    };
    let mut exec = c.start(spec).await?;
    let stdin = exec.stdin.take().ok_or_else(|| Error::RunnerLost {
        container: c.id().to_string(),
        detail: "the engine attached no stdin".into(),
    })?;
    Ok(Transport::Exec {
        stdin,
        output: exec.output,
    })
}

/// A new runner's hello, then the pre-started interpreter it is to start.
async fn handshake(c: &Container, mut conn: Conn) -> super::Result<Conn> {
    let lost = |detail: String| Error::RunnerLost {
        container: c.id().to_string(),
        detail,
    };
    match conn.next_frame().await {
        Ok(Some((protocol::HELLO, version))) if version.as_ref() == protocol::VERSION => {}
        Ok(Some((kind, _))) => return Err(lost(format!("it began with a frame of kind {kind}"))),
        Ok(None) => return Err(lost("it exited at once".into())),
        Err(StreamError::Engine(e)) => return Err(e.into()),
        Err(StreamError::Protocol(p)) => return Err(lost(p)),
    }
    if let Some(zygote) = zygote_request(c) {
        conn.send(protocol::PREPARE, &zygote.encode())
            .await
            .map_err(|e| lost(format!("it took no zygote: {e}")))?;
    }
    Ok(conn)
}

/// The pre-started interpreter of the container's language, if it has one
/// (`lang::Zygote`): started by the runner ahead of the next run, as the
/// run's program would be (under the same scheduling wrapper), with the
/// parts of a run's environment that are the same for every run of the
/// pool, merged in the order the run layer merges them (`run::exec_spec`):
/// the pool's (but its PATH), the language's libraries, the language's own, and a run
/// mark. What a run adds (the lease's, the run's) the zygote applies when
/// the run comes, or starts cold when that is something the interpreter
/// reads at start-up.
fn zygote_request(c: &Container) -> Option<Request> {
    let zygote = c.lang().zygote()?;
    let command = c.user_argv(zygote.command.clone());
    let argv = command
        .iter()
        .cloned()
        .chain([zygote.code.to_string()])
        .chain(command.iter().cloned())
        .map(String::into_bytes)
        .collect();
    let env = super::merge_env(
        c.spec()
            .runtime
            .env
            .iter()
            // The interpreter is found through the image's PATH, never the
            // pool's (whose directories the lease may write: a program it
            // planted would stand in for every later run, whatever its
            // argv). A pool that sets PATH then starts its runs cold: the
            // zygote sees PATH differ and execs the run's program instead.
            .filter(|(k, _)| k.as_str() != "PATH")
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(c.lang().library_env())
            .chain(zygote.env)
            // What it imports ahead (always set, so that no pool env
            // chooses it): the zygote takes it out of its environment.
            .chain([("SANDPOOL_PRELOAD".to_string(), c.spec().preload.join(","))])
            // It is a process of the lease (the next run's, before it knows
            // which): marked as one, as a context's kernel is; the run's
            // own id replaces the mark when it takes the run.
            .chain([(super::RUN_MARKER.to_string(), "prepared".to_string())]),
    );
    Some(Request {
        working_dir: b"/".to_vec(),
        stdin: true,
        argv,
        env: env.into_iter().map(String::into_bytes).collect(),
    })
}

/// What a run sends the runner.
pub use protocol::Request;

/// A run on the runner.
pub struct RunnerRun {
    conn: Conn,
    container: Container,
    exit: Option<i32>,
    /// The stream ended or broke: nothing more comes from it.
    broken: bool,
    /// The stream broke the protocol (not merely ended).
    protocol_broken: bool,
}

impl Container {
    /// Starts a run on the container's runner; `None` when there is no
    /// runner ready (none started, busy, or gone): the run takes the exec
    /// path.
    pub async fn run_on_runner(&self, request: &Request, input: &[u8]) -> Option<RunnerRun> {
        let mut conn = self.runner().take()?;
        let sent = async {
            conn.send(protocol::RUN, &request.encode()).await?;
            if request.stdin {
                for piece in input.chunks(protocol::MAX_OUTPUT_FRAME) {
                    conn.send(protocol::STDIN, piece).await?;
                }
                conn.send(protocol::STDIN_END, &[]).await?;
            }
            std::io::Result::Ok(())
        };
        match sent.await {
            Ok(()) => Some(RunnerRun {
                conn,
                container: self.clone(),
                exit: None,
                broken: false,
                protocol_broken: false,
            }),
            Err(e) => {
                tracing::warn!(container = %self.id(), error = %e, "the runner is gone; the run takes the exec path");
                None
            }
        }
    }
}

impl RunnerRun {
    /// The run's group: the runner's.
    pub fn gid(&self) -> u32 {
        self.conn.group.gid()
    }

    /// The run's next piece of output; `None` once it exited (or the
    /// runner's stream ended: see `exit_code`).
    pub async fn next(&mut self) -> Option<Result<Output, Error>> {
        if self.exit.is_some() || self.broken {
            return None;
        }
        let lost = |detail: String| Error::RunnerLost {
            container: self.container.id().to_string(),
            detail,
        };
        match self.conn.next_frame().await {
            Ok(Some((protocol::STDOUT, data))) => Some(Ok(Output::Stdout(data))),
            Ok(Some((protocol::STDERR, data))) => Some(Ok(Output::Stderr(data))),
            Ok(Some((protocol::EXIT, code))) => {
                let code: [u8; 4] = code.as_ref().try_into().unwrap_or_default();
                self.exit = Some(i32::from_be_bytes(code));
                None
            }
            Ok(Some((kind, _))) => {
                self.broken = true;
                self.protocol_broken = true;
                Some(Err(lost(format!("a frame of kind {kind} mid-run"))))
            }
            Ok(None) => {
                self.broken = true;
                None
            }
            Err(StreamError::Engine(e)) => {
                self.broken = true;
                Some(Err(e.into()))
            }
            Err(StreamError::Protocol(p)) => {
                self.broken = true;
                self.protocol_broken = true;
                Some(Err(lost(p)))
            }
        }
    }

    /// Whether the runner's stream broke the protocol (a program wrote
    /// into it, or the runner crashed): it is not to be trusted again.
    pub fn broke_protocol(&self) -> bool {
        self.protocol_broken
    }

    /// The program's exit status, once the runner reported it.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit
    }

    /// What happened to a run whose runner's stream ended before its exit.
    pub fn lost(&self) -> Error {
        Error::RunnerLost {
            container: self.container.id().to_string(),
            detail: "its stream ended mid-run (killed by the program, or crashed)".into(),
        }
    }

    /// Ends the run, and its runner with it: the next run must get a group
    /// of its own (see `groups`: whatever this run left behind keeps this
    /// one), so a fresh runner, with a fresh group, starts in the background
    /// `REPLACE_DELAY` later unless the lease's reset started one first;
    /// until it says hello, runs take the exec path. A runner that was lost
    /// or broke the protocol (`replace` false) is not replaced before the
    /// reset: the lease's later runs take the exec path.
    pub fn finish(self, replace: bool) {
        let RunnerRun {
            conn, container, ..
        } = self;
        drop(conn);
        if replace {
            let seen = container.runner().generation();
            tokio::spawn(async move {
                tokio::time::sleep(REPLACE_DELAY).await;
                container
                    .runner()
                    .start_unless_superseded(&container, Some(seen))
                    .await
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::install_argv;

    /// The placing script, run by a real sh: every file lands whole in its
    /// own new directory, whatever its path and content hold.
    #[test]
    fn install_script_places_files_verbatim() {
        let dir = std::env::temp_dir().join(format!("sandpool-install-{}", std::process::id()));
        let a = dir.join("a dir/with $HOME/x.txt");
        let b = dir.join("b/'quoted'/y");
        let (a_text, b_text) = ("it's \"$PATH\" %s\n`id`\\n", "");
        let files = [
            (a.to_str().unwrap_or_default(), a_text),
            (b.to_str().unwrap_or_default(), b_text),
        ];
        let argv = install_argv(&files, false);
        let status = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .status()
            .expect("sh runs");
        let placed = (std::fs::read_to_string(&a), std::fs::read_to_string(&b));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(status.success(), "{argv:?}");
        assert_eq!(placed.0.expect("a placed"), a_text);
        assert_eq!(placed.1.expect("b placed"), b_text);
        assert_eq!(install_argv(&[], false)[2], "true");
    }
}
