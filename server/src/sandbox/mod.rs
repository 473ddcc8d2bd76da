//! What sandpool does to one container: create and warm it, reset it between
//! leases, check its health, kill a run's processes. Pools decide *when*;
//! this module knows *how*, on any backend.

use std::collections::HashMap;

use bytes::Bytes;
use rand::Rng;

mod container;

pub use container::{Container, WriteKind};

use crate::{
    backend::{self, Backend, ContainerSpec, Tmpfs},
    lang::{InstallScope, Language},
    spec::PoolSpec,
};

/// What the layers above use of the engine's types, so that they need not
/// reach past the sandbox.
pub use crate::backend::{
    Collected, Error as EngineError, Exec, ExecSpec, ExecStdin, Output, Result as EngineResult,
};

pub use crate::backend::{LABEL_POOL, LABEL_SERVER, LABEL_TEMPORARY};

/// The workspace: writable, wiped on reset, the default working directory.
pub const WORKSPACE: &str = "/sandbox";
/// Home of the sandbox user: writable, wiped on reset.
pub const HOME: &str = "/home/sandbox";
/// Environment variable that marks every process of a run, so that the whole
/// tree (forked, double-forked, setsid'd children included) can be found and
/// killed.
pub const RUN_MARKER: &str = "SANDPOOL_RUN_ID";
/// The container's idle main process runs as this user, which is not the
/// sandbox user: a reset kills every process of the sandbox user without
/// killing the container.
const IDLE_USER: &str = "65534:65534";
/// Support files and pool-wide libraries: a tmpfs owned by the idle user,
/// so the sandbox user can use but not change it, and the reset leaves it.
pub const SUPPORT_ROOT: &str = "/opt/sandpool";
/// How long installing libraries may take.
const INSTALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// Keep this much of an installer's output for messages.
const INSTALL_LOG_LIMIT: usize = 256 * 1024;
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
            owner: Some((65534, 65534)),
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
    let mut env = vec![format!("HOME={HOME}"), "LANG=C.UTF-8".to_string()];
    env.extend(rt.env.iter().map(|(k, v)| format!("{k}={v}")));
    ContainerSpec {
        name,
        image: spec.image.clone(),
        labels,
        main_user: IDLE_USER.to_string(),
        memory_bytes: Some(rt.mem_limit_bytes),
        nano_cpus,
        cpu_period,
        cpu_quota,
        pids_limit: Some(rt.pids_limit),
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
        env,
    }
}

/// An exec of the server's own, as the sandbox user, in /, without stdin.
pub fn internal(spec: &PoolSpec, argv: Vec<String>) -> ExecSpec {
    ExecSpec {
        argv,
        env: Vec::new(),
        user: spec.runtime.user(),
        working_dir: Some("/".to_string()),
        stdin: false,
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

/// Creates a container and warms it: started, the toolchain verified, the
/// output directory made. A container that fails to warm is removed.
pub async fn provision(
    backend: &dyn Backend,
    spec: &PoolSpec,
    lang: &dyn Language,
    container: &ContainerSpec,
) -> Result<String> {
    let id = backend.create_container(container).await?;
    match warm(backend, spec, lang, &id).await {
        Ok(()) => Ok(id),
        Err(e) => {
            if let Err(rm) = backend.remove_container(&id).await {
                tracing::warn!(container = %id, error = %rm, "could not remove a container that failed to warm");
            }
            Err(e)
        }
    }
}

async fn warm(backend: &dyn Backend, spec: &PoolSpec, lang: &dyn Language, id: &str) -> Result<()> {
    for (path, content) in lang.support_files() {
        write_as_idle_user(backend, id, path, content).await?;
    }
    if !spec.libraries.is_empty() {
        install_libraries(
            backend,
            spec,
            lang,
            id,
            &spec.libraries,
            InstallScope::Pool,
            None,
        )
        .await?;
    }
    if installs_need_network(spec) {
        // Cut the install network before any client code can run.
        backend.set_network(id, None).await?;
        if spec.runtime.network != "none" {
            backend.set_network(id, Some(&spec.runtime.network)).await?;
        }
    }
    let prepare = sh("mkdir -p \"$1\"", &[&spec.output_dir]);
    run_checked(
        backend,
        id,
        internal(spec, prepare),
        "preparing the workspace",
    )
    .await?;
    check_toolchain(backend, spec, lang, id).await?;
    if let Some(script) = lang.warm_up() {
        run_checked(backend, id, internal(spec, sh(script, &[])), "the warm-up").await?;
    }
    Ok(())
}

/// Whether the container starts on the install network (and leaves it
/// before the first lease).
fn installs_need_network(spec: &PoolSpec) -> bool {
    !spec.libraries.is_empty() || spec.lease_installs
}

/// Writes a support file as the idle user (readable, not writable, by code).
async fn write_as_idle_user(
    backend: &dyn Backend,
    id: &str,
    path: &str,
    content: &'static str,
) -> Result<()> {
    let exec = ExecSpec {
        argv: sh("mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\"", &[path]),
        env: Vec::new(),
        user: IDLE_USER.to_string(),
        working_dir: Some("/".to_string()),
        stdin: true,
    };
    let out = backend::exec_collect(
        backend,
        id,
        exec,
        Some(Bytes::from_static(content.as_bytes())),
        INTERNAL_OUTPUT_LIMIT,
    )
    .await?;
    if out.success() {
        Ok(())
    } else {
        Err(Error::CommandFailed {
            what: "placing support files",
            exit_code: out.exit_code,
            detail: out.diagnostic(),
        })
    }
}

/// Installs libraries with the language's installer: for the pool (as the
/// idle user, into the support tmpfs) or for a lease (as the sandbox user,
/// into its home). With `network`, the container joins that network for the
/// install and leaves it afterwards, whatever happened. Returns the
/// installer's output.
pub async fn install_libraries(
    backend: &dyn Backend,
    spec: &PoolSpec,
    lang: &dyn Language,
    id: &str,
    packages: &[String],
    scope: InstallScope,
    network: Option<&str>,
) -> Result<String> {
    // A pool install runs as the idle user, whose files the sandbox user
    // could not delete: its home and temporary files stay out of the places
    // the reset wipes.
    let (user, home, tmp) = match scope {
        InstallScope::Pool => (
            IDLE_USER.to_string(),
            format!("{SUPPORT_ROOT}/.install"),
            format!("{SUPPORT_ROOT}/.install/tmp"),
        ),
        InstallScope::Lease => (spec.runtime.user(), HOME.to_string(), "/tmp".to_string()),
    };
    let mut env = vec![format!("HOME={home}"), format!("TMPDIR={tmp}")];
    env.extend(
        lang.library_env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    // What the image (or an earlier install) has already needs neither the
    // installer nor an index.
    let missing = missing_libraries(backend, lang, id, packages, &user, &env).await?;
    if missing.is_empty() {
        return Ok("every library is installed already\n".to_string());
    }
    let Some(argv) = lang.install_command(&missing, scope, spec.package_index_url.as_deref())
    else {
        return Err(Error::CommandFailed {
            what: "installing libraries",
            exit_code: -1,
            detail: format!("sandpool has no library installer for {}", lang.name()),
        });
    };
    let target = match scope {
        InstallScope::Pool => crate::lang::POOL_LIBRARY_DIR,
        InstallScope::Lease => HOME,
    };
    // The installer runs without a shell: the script only makes the
    // directories, then execs the installer's argv as given.
    let mut full = sh(
        "mkdir -p \"$HOME\" \"$TMPDIR\" \"$1\" 2>/dev/null; shift; exec \"$@\"",
        &[target],
    );
    full.extend(argv);
    let exec = ExecSpec {
        argv: full,
        env,
        user,
        working_dir: Some("/".to_string()),
        stdin: false,
    };
    if let Some(net) = network {
        backend.set_network(id, Some(net)).await?;
    }
    let result = tokio::time::timeout(
        INSTALL_TIMEOUT,
        backend::exec_collect(backend, id, exec, None, INSTALL_LOG_LIMIT),
    )
    .await;
    if network.is_some() {
        backend.set_network(id, None).await?;
    }
    let out = match result {
        Ok(out) => out?,
        Err(_) => {
            return Err(Error::CommandFailed {
                what: "installing libraries",
                exit_code: -1,
                detail: format!(
                    "the installer did not finish within {}s",
                    INSTALL_TIMEOUT.as_secs()
                ),
            });
        }
    };
    let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
    log.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.success() {
        Ok(log)
    } else {
        Err(Error::CommandFailed {
            what: "installing libraries",
            exit_code: out.exit_code,
            detail: tail(&out.diagnostic(), 4000),
        })
    }
}

/// Those of `packages` the container does not have yet (all of them when
/// the language cannot tell).
async fn missing_libraries(
    backend: &dyn Backend,
    lang: &dyn Language,
    id: &str,
    packages: &[String],
    user: &str,
    env: &[String],
) -> Result<Vec<String>> {
    let Some(argv) = lang.missing_libraries_command(packages) else {
        return Ok(packages.to_vec());
    };
    let exec = ExecSpec {
        argv,
        env: env.to_vec(),
        user: user.to_string(),
        working_dir: Some("/".to_string()),
        stdin: false,
    };
    let out = backend::exec_collect(backend, id, exec, None, INTERNAL_OUTPUT_LIMIT).await?;
    if !out.success() {
        // Cannot tell: let the installer decide.
        return Ok(packages.to_vec());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// The end of a long text, where installers say what went wrong.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// Runs the language's check command: the container is alive and its
/// toolchain works.
pub async fn check_toolchain(
    backend: &dyn Backend,
    spec: &PoolSpec,
    lang: &dyn Language,
    id: &str,
) -> Result<()> {
    let (argv, expect) = lang.check();
    let out = run_checked(backend, id, internal(spec, argv), "the toolchain check").await?;
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

/// Kills every process of the sandbox user, twice (a process forking during
/// the first sweep is caught by the second), then empties every writable
/// place but keeps the output directory itself. One `find` does the common
/// case (this runs after every lease, beside the next client's runs); only if
/// something resisted deletion (a directory without write permission) does
/// it fix permissions and try again, and fail if that does not help. Runs as
/// the sandbox user, so it can neither touch the container's main process nor
/// anything outside the sandbox's own files.
const RESET_SCRIPT: &str = r#"kill -9 -1 2>/dev/null; kill -9 -1 2>/dev/null
out="$1"; shift
if ! find "$@" -mindepth 1 ! \( -path "$out" -type d \) -delete 2>/dev/null; then
  chmod -R u+rwX "$@" 2>/dev/null
  find "$@" -mindepth 1 ! \( -path "$out" -type d \) -delete || { echo "could not empty $*" >&2; exit 1; }
fi
[ -d "$out" ] || mkdir -p "$out""#;

/// Returns the container to the state of a fresh one: no process of the
/// sandbox user, empty workspace, /tmp, home and /dev/shm.
pub async fn reset(
    backend: &dyn Backend,
    spec: &PoolSpec,
    lang: &dyn Language,
    id: &str,
) -> Result<()> {
    let script = match lang.after_reset() {
        Some(extra) => format!("{RESET_SCRIPT}\n{extra}"),
        None => RESET_SCRIPT.to_string(),
    };
    let argv = sh(
        &script,
        &[&spec.output_dir, WORKSPACE, "/tmp", HOME, "/dev/shm"],
    );
    run_checked(backend, id, internal(spec, argv), "the reset").await?;
    Ok(())
}

/// Kills every process of one run, found by its marker in their environment,
/// until none is left (processes may fork while being killed).
const KILL_RUN_SCRIPT: &str = r#"i=0
while [ $i -lt 50 ]; do
  found=
  for p in /proc/[0-9]*; do
    if grep -qxz "$1" "$p/environ" 2>/dev/null; then
      kill -9 "${p#/proc/}" 2>/dev/null && found=1
    fi
  done
  [ -z "$found" ] && exit 0
  i=$((i+1))
done
echo "processes of the run kept appearing" >&2
exit 1"#;

/// Kills every process of run `run_id` in the container.
pub async fn kill_run(
    backend: &dyn Backend,
    spec: &PoolSpec,
    id: &str,
    run_id: &str,
) -> Result<()> {
    let marker = format!("{RUN_MARKER}={run_id}");
    run_checked(
        backend,
        id,
        internal(spec, sh(KILL_RUN_SCRIPT, &[&marker])),
        "killing the run",
    )
    .await?;
    Ok(())
}

/// The environment entry that marks a run's processes.
pub fn run_marker(run_id: &str) -> String {
    format!("{RUN_MARKER}={run_id}")
}
