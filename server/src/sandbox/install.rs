//! Libraries, with the language's installer: for the pool at warm-up, or for
//! one lease.
//!
//! A pool install runs as a throwaway uid of its own (neither root, the
//! sandbox user nor the idle user), into directories the warden hands to it;
//! afterwards the warden kills every process of that uid (an install script
//! may leave a daemon), removes its scratch files and gives the libraries to
//! root, readable and not writable by anyone else. A lease install runs as
//! the sandbox user in a run group of its own, inside a guard that kills it
//! and takes the install network away however the call ends.

use std::time::Duration;

use super::{
    Container, Error, HOME, INTERNAL_OUTPUT_LIMIT, Result, SUPPORT_ROOT, network::InstallGuard, sh,
};
use crate::{
    backend::{self, ExecSpec},
    lang::{InstallScope, POOL_LIBRARY_DIR},
};

/// How long installing libraries may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Keep this much of an installer's output for messages.
const INSTALL_LOG_LIMIT: usize = 256 * 1024;
/// How long the warden may take to prepare or seal a pool install.
const WARDEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs the pool's libraries at warm-up (the container is on the install
/// network, if the pool has libraries).
pub async fn pool_libraries(c: &Container) -> Result<()> {
    let uid = c.install_uid();
    c.warden_until_done(&format!("install-begin {uid}"), WARDEN_TIMEOUT)
        .await?;
    let installed = install_libraries(c, &c.spec().libraries, InstallScope::Pool, None).await;
    // Whatever happened: nothing of the install runs on.
    c.warden_until_done(&format!("install-end {uid}"), WARDEN_TIMEOUT)
        .await?;
    installed.map(|_| ())
}

/// Installs `packages` and returns the installer's output. With `network`,
/// the container joins that network for the install (a lease install).
pub async fn install_libraries(
    c: &Container,
    packages: &[String],
    scope: InstallScope,
    network: Option<&str>,
) -> Result<String> {
    let spec = c.spec();
    let group = match scope {
        InstallScope::Pool => None,
        InstallScope::Lease => Some(c.run_group()?),
    };
    let user = match &group {
        Some(group) => c.run_user(group),
        None => format!("{0}:{0}", c.install_uid()),
    };
    // From here on, whatever ends the call ends the install too.
    let mut guard = group.map(|g| InstallGuard::new(c, g));
    // A pool's containers sit on its leased network already when that is the
    // install network too.
    let network = network.filter(|n| *n != spec.runtime.network);
    let result = install(c, packages, scope, user, guard.as_mut(), network).await;
    if let Some(guard) = guard {
        guard.finish().await?;
    }
    result
}

async fn install(
    c: &Container,
    packages: &[String],
    scope: InstallScope,
    user: String,
    guard: Option<&mut InstallGuard>,
    network: Option<&str>,
) -> Result<String> {
    let spec = c.spec();
    let lang = c.lang();
    let (home, tmp) = match scope {
        InstallScope::Lease => (HOME.to_string(), "/tmp".to_string()),
        InstallScope::Pool => (
            format!("{SUPPORT_ROOT}/.install"),
            format!("{SUPPORT_ROOT}/.install/tmp"),
        ),
    };
    // The installer is the lease's (or, for the pool, the operator's): it
    // gets the pool's environment, under the server's own settings.
    let mut env: Vec<String> = spec
        .runtime
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push(format!("HOME={home}"));
    env.push(format!("TMPDIR={tmp}"));
    env.extend(
        lang.library_env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    // The installer runs code of the packages' (setup scripts): as the
    // lease's own code does.
    let exec = |argv: Vec<String>| ExecSpec {
        argv: c.user_argv(argv),
        env: env.clone(),
        user: user.clone(),
        working_dir: Some("/".to_string()),
        stdin: false,
        privileged: false,
        terminal: None,
    };
    // What the image (or an earlier install) has already needs neither the
    // installer nor an index.
    let missing = match lang.missing_libraries_command(packages) {
        Some(argv) => missing_libraries(c, exec(argv), packages).await?,
        None => packages.to_vec(),
    };
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
        InstallScope::Pool => POOL_LIBRARY_DIR,
        InstallScope::Lease => HOME,
    };
    // The installer runs without a shell: the script only makes the
    // directories, then execs the installer's argv as given.
    let mut full = sh(
        "mkdir -p \"$HOME\" \"$TMPDIR\" \"$1\" 2>/dev/null; shift; exec \"$@\"",
        &[target],
    );
    full.extend(argv);
    if let (Some(guard), Some(net)) = (guard, network) {
        guard.join(net).await?;
    }
    let out = tokio::time::timeout(
        INSTALL_TIMEOUT,
        backend::exec_collect(c.backend(), c.id(), exec(full), None, INSTALL_LOG_LIMIT),
    )
    .await
    .map_err(|_| Error::CommandFailed {
        what: "installing libraries",
        exit_code: -1,
        detail: format!(
            "the installer did not finish within {}s",
            INSTALL_TIMEOUT.as_secs()
        ),
    })??;
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
    c: &Container,
    exec: ExecSpec,
    packages: &[String],
) -> Result<Vec<String>> {
    let out = backend::exec_collect(c.backend(), c.id(), exec, None, INTERNAL_OUTPUT_LIMIT).await?;
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
