//! One container as the layers above the sandbox see it: its engine, the
//! pool spec it was made from, its language and its id, plus what the
//! server keeps for it while it lives (its warden, its runs' groups). Runs,
//! transfers, contexts and installs reach the engine only through this
//! handle. Clones share that state: get the handle of a pool's container
//! from the pool's `Sandboxes`, never make a second one.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use rand::Rng;

use super::{
    Error, INTERNAL_OUTPUT_LIMIT, Result,
    groups::{Groups, RunGroup},
    internal, sh,
    warden::{self, Wait, Warden},
};
use crate::{
    backend::{self, Backend, Collected, Exec, ExecSpec, ExecStdin, SharedBackend},
    lang::{InstallScope, Language},
    spec::PoolSpec,
};

/// Writes standard input to a path: a file (parents made, mode set), or a
/// tar unpacked into a directory. Exit 45: the file path is a directory.
const WRITE_SCRIPT: &str = r#"p="$1"
if [ "$2" = tar ]; then
  mkdir -p -- "$p" && exec tar -x -f - -C "$p" --no-same-owner
fi
if [ -d "$p" ]; then echo "$p is a directory" >&2; exit 45; fi
mkdir -p -- "$(dirname -- "$p")" && cat > "$p" && chmod "$2" -- "$p""#;

/// What `start_write` makes of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    File { mode: u32 },
    Tar,
}

/// Output of the server's own listing scripts is kept up to this size.
const SCRIPT_OUTPUT_LIMIT: usize = 4 << 20;
/// How long the warden may take to kill a run (it does not wait for the
/// killed to exit), and then a one-shot exec; after that the container is
/// destroyed. Under a fork bomb the warden answers in 0.2-0.5 s, but in a
/// container at its CPU quota on a busy machine the command can take over
/// a second to reach it (measured up to 1.5 s on Podman, more beside other
/// suites): a slow answer is no reason to take the lease's container away.
/// A one-shot exec either starts at once or not at all (the bomb holds
/// every pid): it gets less.
const KILL_WAIT: Wait = Wait {
    answer: Duration::from_secs(4),
    one_shot: Duration::from_secs(2),
};
/// How long a health check's ping may take.
const PING_WAIT: Wait = Wait {
    answer: Duration::from_secs(2),
    one_shot: Duration::from_secs(2),
};
/// Throwaway uids for pool installs: neither root, the sandbox user, the
/// idle user nor a run's group number.
const INSTALL_UIDS: std::ops::RangeInclusive<u32> = 40_000..=49_999;

/// What the server keeps for one container while it lives.
struct Resident {
    warden: Warden,
    groups: Arc<Groups>,
    /// The uid pool libraries are installed as (see `install`).
    install_uid: u32,
    /// Whether code of the lease runs under SCHED_IDLE (found at warm-up;
    /// see `user_argv`).
    idle_scheduling: OnceLock<bool>,
    /// The resident runner (see `runner`), on pools that use one.
    runner: super::runner::Runner,
    /// What an engine exec of the sandbox user's gets, when the warm-up's
    /// toolchain check found it (for the runner host).
    exec_environment: OnceLock<super::runner::ExecEnvironment>,
}

/// What starts a program under SCHED_IDLE (util-linux, beside the `setpriv`
/// the warden needs).
const IDLE_SCHEDULING: [&str; 3] = ["/usr/bin/chrt", "--idle", "0"];

/// `argv` started under SCHED_IDLE.
pub(super) fn at_idle_priority(argv: Vec<String>) -> Vec<String> {
    IDLE_SCHEDULING
        .iter()
        .map(|s| s.to_string())
        .chain(argv)
        .collect()
}

#[derive(Clone)]
pub struct Container {
    backend: SharedBackend,
    spec: Arc<PoolSpec>,
    lang: &'static dyn Language,
    id: String,
    resident: Arc<Resident>,
}

impl Container {
    pub fn new(
        backend: SharedBackend,
        spec: Arc<PoolSpec>,
        lang: &'static dyn Language,
        id: impl Into<String>,
    ) -> Self {
        let mut rng = rand::rng();
        let install_uid = loop {
            let uid = rng.random_range(INSTALL_UIDS);
            if uid != spec.runtime.uid && uid != spec.runtime.gid {
                break uid;
            }
        };
        Self {
            backend,
            spec,
            lang,
            id: id.into(),
            resident: Arc::new(Resident {
                warden: Warden::default(),
                groups: Arc::new(Groups::default()),
                install_uid,
                idle_scheduling: OnceLock::new(),
                runner: Default::default(),
                exec_environment: OnceLock::new(),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn spec(&self) -> &Arc<PoolSpec> {
        &self.spec
    }

    pub fn lang(&self) -> &'static dyn Language {
        self.lang
    }

    pub(super) fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub(super) fn install_uid(&self) -> u32 {
        self.resident.install_uid
    }

    /// An exec of the server's own in this container: as the sandbox user, in
    /// /, without stdin, with a fixed environment.
    pub fn internal(&self, argv: Vec<String>) -> ExecSpec {
        internal(&self.spec, argv)
    }

    /// The argv that starts `argv`, code of the lease (a run, a context's
    /// kernel, an install), under SCHED_IDLE where the container allows it.
    /// Within the container's own CPU share (the engine gives each its
    /// cgroup), the lease's code then yields to anything else the container
    /// runs: the warden above all. Measured on Podman: a fork bomb in a
    /// container at its CPU quota kept the warden (at nice -20) from reading
    /// its kill command for 0.2-2.7 s at the ordinary policy (the run ended
    /// 5-8 s after a 3 s timeout in one test in three); under SCHED_IDLE the
    /// run ends 0.2-0.35 s after it, now and then 1-1.7 s. Code cannot
    /// leave SCHED_IDLE (it would need
    /// CAP_SYS_NICE or an RLIMIT_NICE above 0); against other containers
    /// nothing changes (their shares are their cgroups'). gVisor refuses
    /// the policy: there code runs as before.
    pub fn user_argv(&self, argv: Vec<String>) -> Vec<String> {
        if self.resident.idle_scheduling.get() == Some(&true) {
            at_idle_priority(argv)
        } else {
            argv
        }
    }

    /// Records whether SCHED_IDLE works here (warm-up, once).
    pub(super) fn set_exec_environment(&self, found: super::runner::ExecEnvironment) {
        let _ = self.resident.exec_environment.set(found);
    }

    pub(super) fn exec_environment(&self) -> Option<super::runner::ExecEnvironment> {
        self.resident.exec_environment.get().cloned()
    }

    pub(super) fn set_idle_scheduling(&self, works: bool) {
        let _ = self.resident.idle_scheduling.set(works);
    }

    /// A group for a new run (or kernel, or install) of the lease.
    pub fn run_group(&self) -> Result<RunGroup> {
        self.resident
            .groups
            .allocate()
            .ok_or_else(|| Error::NoRunGroup(self.id.clone()))
    }

    /// "uid:gid" of a process of the lease in `group`.
    pub fn run_user(&self, group: &RunGroup) -> String {
        format!("{}:{}", self.spec.runtime.uid, group.gid())
    }

    /// Starts a process (a run's program, a kernel, a transfer) and returns
    /// its streams.
    pub async fn start(&self, exec: ExecSpec) -> backend::Result<Exec> {
        self.backend.exec(&self.id, exec).await
    }

    /// Whether the container exists and runs.
    pub async fn is_running(&self) -> backend::Result<bool> {
        self.backend.container_running(&self.id).await
    }

    /// The exit code of a process whose output has ended.
    pub async fn exit_code(&self, exec_id: &str) -> backend::Result<i64> {
        backend::wait_exit_code(&*self.backend, exec_id).await
    }

    /// Starts writing to `path` as the sandbox user: what goes into the
    /// returned stdin becomes the file (or the tar to unpack). The caller
    /// shuts stdin down, drains the output and checks the exit code.
    pub async fn start_write(
        &self,
        path: &str,
        kind: WriteKind,
    ) -> backend::Result<(Exec, ExecStdin)> {
        let how = match kind {
            WriteKind::File { mode } => format!("{mode:o}"),
            WriteKind::Tar => "tar".to_string(),
        };
        let exec = ExecSpec {
            stdin: true,
            ..self.internal(sh(WRITE_SCRIPT, &[path, &how]))
        };
        let mut started = self.start(exec).await?;
        let stdin = started.stdin.take().ok_or_else(|| backend::Error::Engine {
            op: "exec start",
            detail: "the engine attached no stdin to a write".into(),
        })?;
        Ok((started, stdin))
    }

    /// Writes `content` to the file `path` (parents made) with `mode`.
    pub async fn write_file(&self, path: &str, content: Bytes, mode: u32) -> Result<()> {
        let how = format!("{:o}", mode & 0o777);
        let out = self
            .collect(
                self.internal(sh(WRITE_SCRIPT, &[path, &how])),
                Some(content),
                INTERNAL_OUTPUT_LIMIT,
            )
            .await?;
        if out.success() {
            return Ok(());
        }
        Err(super::Error::CommandFailed {
            what: "writing a file",
            exit_code: out.exit_code,
            detail: format!("{path}: {}", out.diagnostic()),
        })
    }

    /// Runs a process to completion, keeping at most `limit` bytes of each
    /// output stream.
    pub async fn collect(
        &self,
        exec: ExecSpec,
        stdin: Option<Bytes>,
        limit: usize,
    ) -> backend::Result<Collected> {
        backend::exec_collect(&*self.backend, &self.id, exec, stdin, limit).await
    }

    /// Runs a command of the server's own as the sandbox user.
    pub async fn run_command(&self, argv: Vec<String>) -> Result<Collected> {
        Ok(self
            .collect(self.internal(argv), None, INTERNAL_OUTPUT_LIMIT)
            .await?)
    }

    /// Runs a shell script of the server's own as the sandbox user, its
    /// arguments as positional parameters, and returns its output (for
    /// listing files and the like).
    pub async fn run_script(
        &self,
        script: &str,
        args: &[&str],
        stdin: Option<Bytes>,
    ) -> Result<Collected> {
        Ok(self
            .collect(self.internal(sh(script, args)), stdin, SCRIPT_OUTPUT_LIMIT)
            .await?)
    }

    /// Kills every process of a run, a context's kernel or an install: every
    /// process with the group `gid`, wherever it went (other sessions, an
    /// emptied environment). A run that cannot be killed must not outlive
    /// its lease in a container that is used again: if neither the warden
    /// nor a one-shot exec manages, the container is destroyed.
    pub async fn kill_group(&self, gid: u32) -> Result<()> {
        let command = format!("kill gid {gid}");
        match self.warden_command(&command, KILL_WAIT).await {
            Ok(_) => Ok(()),
            Err(e @ Error::Backend(backend::Error::ContainerGone { .. })) => Err(e),
            Err(e) => {
                tracing::warn!(container = %self.id, error = %e, "cannot kill a run; destroying the container");
                // In the background: the run ends now (its container is
                // doomed), not once a loaded engine has removed it.
                let doomed = self.clone();
                tokio::spawn(async move { doomed.destroy().await });
                Err(e)
            }
        }
    }

    /// Sends `signal` to every process of a run's group; returns how many
    /// got it. Unlike a kill, a failure leaves the container alone: the
    /// signal was the client's wish, not the server's need.
    pub async fn signal_group(&self, gid: u32, signal: i32) -> Result<u32> {
        let command = format!("signal {gid} {signal}");
        match self.warden_command(&command, KILL_WAIT).await? {
            warden::Answer::Done(sent) => Ok(sent.trim().parse().unwrap_or(0)),
            warden::Answer::Busy => Ok(0),
        }
    }

    /// Installs libraries for the lease that holds this container.
    pub async fn install_libraries(
        &self,
        packages: &[String],
        network: Option<&str>,
    ) -> Result<String> {
        super::install::install_libraries(self, packages, InstallScope::Lease, network).await
    }

    /// Removes the container from the engine (what a pool does with one it
    /// can no longer trust); the lease that holds it sees it gone.
    pub async fn destroy(&self) {
        if let Err(e) = self.backend.remove_container(&self.id).await {
            tracing::warn!(container = %self.id, error = %e, "could not remove a container");
        }
    }

    pub(super) fn runner(&self) -> &super::runner::Runner {
        &self.resident.runner
    }

    /// Starts the runner host (warm-up) on pools that use a runner.
    pub(super) async fn start_runner_host(&self) {
        if self.spec.resident_runner {
            self.resident.runner.start_host(self).await;
        }
    }

    /// Starts a fresh resident runner (warm-up, reset) on pools that use
    /// one; until it is up, or when it cannot start, runs take the exec path.
    pub(super) async fn start_runner(&self) {
        if self.spec.resident_runner {
            self.resident.runner.start(self).await;
        } else {
            self.resident.runner.stop();
        }
    }

    /// Starts the warden (warm-up: before anything else runs).
    pub(super) async fn start_warden(&self) -> Result<()> {
        self.resident.warden.ensure_started(self).await
    }

    /// Checks that the warden answers, starting a new one if it is gone.
    pub(super) async fn ping_warden(&self) -> Result<()> {
        self.resident.warden.ensure_started(self).await?;
        self.warden_command("ping", PING_WAIT).await.map(|_| ())
    }

    /// Starts a new warden if the last one is gone; if that fails, commands
    /// go by one-shot execs.
    pub(super) async fn revive_warden(&self) {
        if let Err(e) = self.resident.warden.ensure_started(self).await {
            tracing::warn!(container = %self.id, error = %e, "could not start a warden; one-shot execs instead");
        }
    }

    /// One command to the warden (see `warden::Warden::command`).
    pub(super) async fn warden_command(&self, command: &str, wait: Wait) -> Result<warden::Answer> {
        self.resident.warden.command(self, command, wait).await
    }

    /// A command to the warden, asked again while it answers "busy".
    pub(super) async fn warden_until_done(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.resident
            .warden
            .until_done(self, command, timeout)
            .await
    }
}
