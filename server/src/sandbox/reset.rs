//! The reset between leases: nothing of a lease survives it. The warden
//! kills every process but the container's init and idle process (any uid),
//! removes SysV IPC objects and POSIX message queues, empties every place
//! the sandbox user can write (never following a symlink) and gives each
//! back the owner and mode it had at warm-up, and makes the output directory
//! again, and runs the language's after-reset snippet as the sandbox user;
//! then the engine confirms the container is on no network it should not
//! be. One line over the warden's open stream and one inspect: no engine
//! exec.
//! Pool libraries and support files (under /opt/sandpool, owned by others,
//! not writable by the sandbox user) stay.

use std::time::{Duration, Instant};

use super::{Container, Result, WRITABLE, network};

/// How long the warden may take to reset (emptying a full tmpfs of small
/// files takes a while).
const RESET_TIMEOUT: Duration = Duration::from_secs(120);
/// How long discovering the writable places may take (a search of the whole
/// root file system when it is writable).
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(120);

/// Records, once per container at warm-up, what the sandbox user can write:
/// the pool's own mounts, and every other directory it can write on a file
/// system mounted writable (searched as the sandbox user: with a read-only
/// root that is the engine's tmpfs mounts, a quick search; with a writable
/// root, the whole root file system). Writable files outside those (which no
/// reset can restore) are counted and reported.
pub async fn discover(c: &Container) -> Result<()> {
    let mut command = String::from("discover");
    for dir in WRITABLE {
        command.push(' ');
        command.push_str(dir);
    }
    let answer = c.warden_until_done(&command, DISCOVER_TIMEOUT).await?;
    let mut counts = answer.split_whitespace();
    let dirs = counts.next().unwrap_or("?");
    let files = counts.next().unwrap_or("0");
    tracing::debug!(container = %c.id(), dirs, "writable places recorded");
    if files != "0" {
        tracing::warn!(
            pool = %c.spec().name,
            container = %c.id(),
            files,
            "the sandbox user can write files of the image (a writable root) that no reset can \
             restore; make the root read-only or fix the image's permissions"
        );
    }
    Ok(())
}

/// The warden's part of the reset (also run once at warm-up). The reset
/// always has a warden: a new one if the last is gone.
pub async fn wipe(c: &Container) -> Result<()> {
    c.revive_warden().await;
    c.warden_until_done("reset", RESET_TIMEOUT).await?;
    Ok(())
}

/// The reset (the after-reset snippet is the warden's too), then the
/// engine's word that the container is on no network it should not be.
pub async fn reset(c: &Container) -> Result<()> {
    let started = Instant::now();
    // The lease's runner goes with the wipe: a replacement the lease's last
    // run scheduled must not start now (see `runner::REPLACE_DELAY`).
    c.runner().stop();
    wipe(c).await?;
    let wiped = started.elapsed();
    // The wipe killed the last runner with everything else.
    c.start_runner().await;
    network::verify(c).await?;
    tracing::debug!(
        container = %c.id(),
        wiped_ms = wiped.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "reset"
    );
    Ok(())
}
