//! What sandpool does to one container: create and warm it, reset it between
//! leases, check its health, kill a run's processes. Pools decide *when*;
//! this module knows *how*, on any backend.
//!
//! Who runs what inside a container:
//! - the lease's own processes (runs, context kernels, installs on a lease)
//!   run as the sandbox user with a group of their own (`groups`), with the
//!   pool's `runtime.env` in their environment;
//! - the server's own commands (transfers, listings, support files) run as
//!   the sandbox user or the idle user with a fixed environment (`internal`):
//!   nothing a lease planted (a PATH entry, LD_PRELOAD) runs in them;
//! - toolchain checks and the languages' warm-up and after-reset snippets
//!   run as the sandbox user with the image's environment only;
//! - kills, resets and the sealing of pool installs are the warden's, a
//!   root helper started by a privileged exec of a fixed command (`warden`).

use std::{collections::HashMap, sync::Arc};

use rand::Rng;

mod container;
mod groups;
mod install;
mod network;
mod registry;
mod reset;
pub mod runner;
mod warden;

pub use container::{Container, WriteKind};
pub use groups::RunGroup;
pub use registry::Sandboxes;

use crate::{
    backend::{self, Backend, ContainerSpec, SharedBackend, Tmpfs},
    lang::Language,
    spec::PoolSpec,
};

/// What the layers above use of the engine's types, so that they need not
/// reach past the sandbox.
pub use crate::backend::{
    Collected, Error as EngineError, Exec, ExecSpec, ExecStdin, Output, Resize,
    Result as EngineResult, TerminalResize, TerminalSize,
};

pub use crate::backend::{LABEL_POOL, LABEL_SERVER, LABEL_TEMPORARY};

/// The workspace: writable, wiped on reset, the default working directory.
pub const WORKSPACE: &str = "/sandbox";
/// Home of the sandbox user: writable, wiped on reset.
pub const HOME: &str = "/home/sandbox";
/// Environment variable that carries a run's id into its processes (the R
/// plot profile names files by it). Kills do not rely on it: a process may
/// clear its environment; they go by the run's group (`groups`).
pub const RUN_MARKER: &str = "SANDPOOL_RUN_ID";
/// The container's idle main process runs as this user (`spec::IDLE_UID`),
/// which is not the sandbox user; the server writes support files as it.
const IDLE_USER: &str = "65534:65534";
use crate::spec::IDLE_UID;
/// Support files and pool-wide libraries: a tmpfs owned by the idle user,
/// so the sandbox user can use but not change it, and the reset leaves it.
pub const SUPPORT_ROOT: &str = "/opt/sandpool";
/// Places the sandbox user can write on any pool: the pool's tmpfs mounts
/// and the engine's /dev/shm. The warden adds what else it finds on the
/// writable mounts at warm-up (Podman's /var/tmp, a writable root);
/// /dev/mqueue it empties on its own.
const WRITABLE: &[&str] = &[WORKSPACE, HOME, "/tmp", "/dev/shm"];
/// Keep at most this much of the output of internal commands.
pub(crate) const INTERNAL_OUTPUT_LIMIT: usize = 64 * 1024;

/// Errors of container operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Backend(#[from] backend::Error),
    #[error("{what} failed (exit code {exit_code}): {detail}")]
    CommandFailed {
        what: &'static str,
        exit_code: i64,
        detail: String,
    },
    /// The container's root helper failed a command (and so did the
    /// one-shot exec tried instead).
    #[error("the warden could not {command:?}: {detail}")]
    Warden { command: String, detail: String },
    /// The container is on a network its pool does not allow while leased;
    /// it is destroyed.
    #[error("container {container} is on network(s) {networks:?} where its pool has none")]
    OnNetwork {
        container: String,
        networks: Vec<String>,
    },
    /// The container's resident runner went away or broke its protocol
    /// mid-run (see `runner`); the run's processes were killed.
    #[error("the resident runner of container {container} was lost mid-run: {detail}")]
    RunnerLost { container: String, detail: String },
    /// Every run group of the container is held by a live run.
    #[error("too many runs at once in container {0}")]
    NoRunGroup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Container settings for a pool's container. `name_hint` distinguishes
/// temporaries in `docker ps`.
pub fn container_spec(spec: &PoolSpec, server_id: &str, temporary: bool) -> ContainerSpec {
    let rt = &spec.runtime;
    let suffix: u64 = rand::rng().random();
    let kind = if temporary { "tmp" } else { "w" };
    let name = format!("sandpool-{}-{kind}-{suffix:016x}", spec.name);
    let labels = HashMap::from([
        (LABEL_SERVER.to_string(), server_id.to_string()),
        (LABEL_POOL.to_string(), spec.name.clone()),
        (LABEL_TEMPORARY.to_string(), temporary.to_string()),
    ]);
    let owned = |path: &str| Tmpfs {
        path: path.to_string(),
        size_bytes: rt.tmpfs_size_bytes,
        mode: 0o755,
        owner: Some((rt.uid, rt.gid)),
    };
    let tmpfs = vec![
        owned(WORKSPACE),
        owned(HOME),
        Tmpfs {
            path: SUPPORT_ROOT.to_string(),
            size_bytes: rt.tmpfs_size_bytes,
            mode: 0o755,
            owner: Some((IDLE_UID, IDLE_UID)),
        },
        Tmpfs {
            path: "/tmp".to_string(),
            size_bytes: rt.tmpfs_size_bytes,
            mode: 0o1777,
            owner: None,
        },
    ];
    let (nano_cpus, cpu_period, cpu_quota) = match rt.cpu_quota {
        Some(quota) => (None, Some(rt.cpu_period.unwrap_or(100_000)), Some(quota)),
        None => (Some((rt.cpus * 1e9) as i64), None, None),
    };
    let (pids_limit, nproc_limit) = rt.process_limits();
    ContainerSpec {
        name,
        image: spec.image.clone(),
        labels,
        main_user: IDLE_USER.to_string(),
        memory_bytes: Some(rt.mem_limit_bytes),
        nano_cpus,
        cpu_period,
        cpu_quota,
        pids_limit: Some(pids_limit),
        nproc_limit,
        // Libraries are installed at warm-up with the install network on;
        // it is cut before any client code runs. A container that may join
        // it again for a lease's installs must start on it too: an engine
        // cannot connect a container created without any network.
        network: if installs_need_network(spec) {
            spec.install_network.clone()
        } else {
            rt.network.clone()
        },
        read_only_root: rt.read_only_root,
        tmpfs,
        oci_runtime: rt.oci_runtime.clone(),
        // The pool's runtime.env is not here: every exec would inherit it,
        // the server's own included. The lease's processes get it instead.
        env: vec![format!("HOME={HOME}"), "LANG=C.UTF-8".to_string()],
        helper_caps: warden::HELPER_CAPS.iter().map(|c| c.to_string()).collect(),
        namespace: spec.namespace.clone(),
    }
}

/// The exec-level environment of the server's own commands: what the image
/// may set for the loader is blanked, so that even `env` itself loads clean.
fn fixed_exec_env() -> Vec<String> {
    vec![
        warden::FIXED_PATH.to_string(),
        "LD_PRELOAD=".to_string(),
        "LD_LIBRARY_PATH=".to_string(),
        "LD_AUDIT=".to_string(),
    ]
}

/// An exec of the server's own as `user`, in /, without stdin, with a fixed
/// environment: `env -i` leaves only a PATH of root-owned directories, HOME
/// and LANG, whatever the image's or the pool's environment says.
fn internal_as(user: String, argv: Vec<String>) -> ExecSpec {
    let mut full: Vec<String> = vec![
        "/usr/bin/env".into(),
        "-i".into(),
        warden::FIXED_PATH.into(),
        format!("HOME={HOME}"),
        "LANG=C.UTF-8".into(),
    ];
    full.extend(argv);
    ExecSpec {
        argv: full,
        env: fixed_exec_env(),
        user,
        working_dir: Some("/".to_string()),
        stdin: false,
        privileged: false,
        terminal: None,
    }
}

/// An exec of the server's own as the sandbox user (see `internal_as`).
pub fn internal(spec: &PoolSpec, argv: Vec<String>) -> ExecSpec {
    internal_as(spec.runtime.user(), argv)
}

/// A toolchain command of the server's (a check, a warm-up or after-reset
/// snippet) as the sandbox user, in /: with the image's environment, which
/// finds the toolchain, and nothing of the pool's or a lease's.
fn toolchain(spec: &PoolSpec, argv: Vec<String>) -> ExecSpec {
    ExecSpec {
        argv,
        env: Vec::new(),
        user: spec.runtime.user(),
        working_dir: Some("/".to_string()),
        stdin: false,
        privileged: false,
        terminal: None,
    }
}

/// `/bin/sh -c SCRIPT sh ARGS...`: a script of the server's own, its
/// arguments passed as positional parameters (never spliced into it).
pub fn sh(script: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        script.to_string(),
        "sh".to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

async fn run_checked(
    backend: &dyn Backend,
    id: &str,
    exec: ExecSpec,
    what: &'static str,
) -> Result<backend::Collected> {
    let out = backend::exec_collect(backend, id, exec, None, INTERNAL_OUTPUT_LIMIT).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(Error::CommandFailed {
            what,
            exit_code: out.exit_code,
            detail: out.diagnostic(),
        })
    }
}

/// Creates a container and warms it: started, its warden running, support
/// files and pool libraries in place, the install network gone, reset once,
/// the toolchain verified. A container that fails to warm is removed.
pub async fn provision(
    backend: SharedBackend,
    spec: Arc<PoolSpec>,
    lang: &'static dyn Language,
    container: &ContainerSpec,
) -> Result<Container> {
    let id = backend.create_container(container).await?;
    let sandbox = Container::new(backend, spec, lang, id);
    match warm(&sandbox).await {
        Ok(()) => Ok(sandbox),
        Err(e) => {
            sandbox.destroy().await;
            Err(e)
        }
    }
}

/// The environment of a process of the lease ("NAME=value" entries), from
/// layers: later entries override earlier ones with the same name.
pub fn merge_env(layers: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    for (key, value) in layers {
        match merged.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => merged.push((key, value)),
        }
    }
    merged
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

async fn warm(c: &Container) -> Result<()> {
    let spec = c.spec();
    // First, while the idle process is the only other one: the warden
    // records which it is.
    c.start_warden().await?;
    runner::install(c, spec.resident_runner).await?;
    if !spec.libraries.is_empty() {
        install::pool_libraries(c).await?;
    }
    if installs_need_network(spec) {
        // Cut the install network before any client code can run.
        c.backend().set_network(c.id(), None).await?;
        if spec.runtime.network != "none" {
            c.backend()
                .set_network(c.id(), Some(&spec.runtime.network))
                .await?;
        }
    }
    reset::discover(c).await?;
    // The state every later reset returns to (and anything an install left
    // is gone).
    reset::wipe(c).await?;
    if !toolchain_works_at_idle_priority(c).await {
        check_toolchain(c).await?;
    }
    // The wipe ran the after-reset snippet already: a warm-up that is the
    // same snippet would be an engine exec for nothing.
    if let Some(script) = c.lang().warm_up()
        && c.lang().after_reset() != Some(script)
    {
        run_checked(
            c.backend(),
            c.id(),
            toolchain(spec, sh(script, &[])),
            "the warm-up",
        )
        .await?;
    }
    network::verify(c).await?;
    c.start_runner_host().await;
    c.start_runner().await;
    Ok(())
}

/// Whether the container starts on the install network (and leaves it
/// before the first lease).
fn installs_need_network(spec: &PoolSpec) -> bool {
    !spec.libraries.is_empty() || spec.lease_installs
}

/// Runs the language's check command: the container is alive and its
/// toolchain works.
async fn check_toolchain(c: &Container) -> Result<()> {
    let (argv, expect) = c.lang().check();
    let out = run_checked(
        c.backend(),
        c.id(),
        toolchain(c.spec(), c.user_argv(argv)),
        "the toolchain check",
    )
    .await?;
    if String::from_utf8_lossy(&out.stdout).contains(expect) {
        Ok(())
    } else {
        Err(Error::CommandFailed {
            what: "the toolchain check",
            exit_code: out.exit_code,
            detail: format!("expected {expect:?} on stdout, got {:?}", out.diagnostic()),
        })
    }
}

/// The toolchain check under SCHED_IDLE: whether the lease's code can run
/// under it here (see `Container::user_argv`; the image has chrt, the
/// runtime allows the policy). Recorded for the container's life. When it
/// fails, the ordinary check says whether the toolchain works at all.
async fn toolchain_works_at_idle_priority(c: &Container) -> bool {
    let (argv, expect) = c.lang().check();
    let mut argv = container::at_idle_priority(argv);
    // The runner host needs what an exec of the sandbox user gets: this
    // exec is one, and tells it first (an engine exec less per warm-up).
    let probing = c.spec().resident_runner;
    if probing {
        argv = runner::probe_then(argv);
    }
    let check = run_checked(
        c.backend(),
        c.id(),
        toolchain(c.spec(), argv),
        "the toolchain check",
    );
    let works = match check.await {
        Ok(out) if probing => match runner::split_probe(&out.stdout) {
            Some((found, rest)) => {
                c.set_exec_environment(found);
                String::from_utf8_lossy(rest).contains(expect)
            }
            None => false,
        },
        Ok(out) => String::from_utf8_lossy(&out.stdout).contains(expect),
        Err(_) => false,
    };
    c.set_idle_scheduling(works);
    if !works {
        tracing::info!(container = %c.id(), "no SCHED_IDLE here (no chrt, or the runtime refuses it): code runs at the ordinary priority");
    }
    works
}

/// The health check of an idle container: its warden answers (a new one is
/// started if it is gone), and either its runner is alive or, without one,
/// its toolchain works. A live runner says what the toolchain check's exec
/// said (the engine started a process there since the last reset; the
/// toolchain, checked at warm-up, is the image's, which no lease changes)
/// without an engine exec per check: with hundreds of idle containers on a
/// few cores those execs were what failed healthy containers.
pub async fn check_health(c: &Container) -> Result<()> {
    if !c.runner().idle_and_alive() {
        check_toolchain(c).await?;
    }
    c.ping_warden().await
}

/// Returns a released container to the state of a fresh one: nothing of the
/// lease left (see `reset`), and on no network its pool does not allow.
pub async fn reset(c: &Container) -> Result<()> {
    reset::reset(c).await
}
