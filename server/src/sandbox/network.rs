//! Network only where intended: a pool whose leased network is "none" has
//! its containers on no network whenever one is idle or leased. Checked
//! with the engine after warm-up, after every reset and after every install
//! on a lease; a container found on a network is destroyed, never leased.
//! An install on a lease joins the install network inside a guard that takes
//! it away again even when the caller cancels or its deadline passes.

use super::{Container, Error, Result, RunGroup};

/// Checks with the engine that the container is on no network, if its pool
/// has none while leased. (Pools with a network keep it; what an engine
/// calls it differs, Podman's "podman" for Docker's "bridge".)
pub async fn verify(c: &Container) -> Result<()> {
    if c.spec().runtime.network != "none" {
        return Ok(());
    }
    let networks = c.backend().inspect(c.id()).await?.networks;
    if networks.is_empty() {
        return Ok(());
    }
    tracing::error!(container = %c.id(), ?networks, "a container of a pool without network is on a network");
    Err(Error::OnNetwork {
        container: c.id().to_string(),
        networks,
    })
}

/// What must happen when an install on a lease ends, however it ends: its
/// processes killed, the network it joined taken away, and the engine asked
/// that the container is on no network (if that fails, the container is
/// destroyed). `finish` does it in line;
/// dropping the guard unfinished (the caller went away mid-install) does it
/// in a task of its own.
pub struct InstallGuard {
    container: Container,
    group: Option<RunGroup>,
    joined: bool,
}

impl InstallGuard {
    pub fn new(container: &Container, group: RunGroup) -> Self {
        Self {
            container: container.clone(),
            group: Some(group),
            joined: false,
        }
    }

    /// Joins `network` for the install.
    pub async fn join(&mut self, network: &str) -> Result<()> {
        // Set first: a connect that fails half way is undone too.
        self.joined = true;
        self.container
            .backend()
            .set_network(self.container.id(), Some(network))
            .await?;
        Ok(())
    }

    pub async fn finish(mut self) -> Result<()> {
        let group = self.group.take();
        let joined = std::mem::take(&mut self.joined);
        clean_up(self.container.clone(), group, joined, false).await
    }
}

impl Drop for InstallGuard {
    fn drop(&mut self) {
        let group = self.group.take();
        if group.is_none() && !self.joined {
            return;
        }
        let container = self.container.clone();
        let joined = self.joined;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = clean_up(container, group, joined, true).await {
                    tracing::warn!(error = %e, "cleaning up after a cancelled install");
                }
            });
        }
    }
}

/// How long after a cancelled install its group is killed again: an exec
/// the engine was asked to start just before the call went away may start
/// after the first kill.
const LATE_EXEC: std::time::Duration = std::time::Duration::from_millis(300);

async fn clean_up(
    c: Container,
    group: Option<RunGroup>,
    joined: bool,
    cancelled: bool,
) -> Result<()> {
    // The installer first: it must not run on once the network is gone (nor
    // keep it busy while it goes).
    let killed = match &group {
        Some(g) => c.kill_group(g.gid()).await,
        None => Ok(()),
    };
    let checked = if joined {
        leave_install_network(&c).await
    } else {
        verify(&c).await
    };
    if let Err(e) = checked {
        tracing::error!(container = %c.id(), error = %e, "the container is on a network after an install; destroying it");
        c.destroy().await;
        return Err(e);
    }
    if cancelled && let Some(g) = &group {
        tokio::time::sleep(LATE_EXEC).await;
        c.kill_group(g.gid()).await?;
    }
    // Only now may another run have this group.
    drop(group);
    killed
}

/// Off every network, back on the pool's own (if it has one), checked.
async fn leave_install_network(c: &Container) -> Result<()> {
    c.backend().set_network(c.id(), None).await?;
    let leased = &c.spec().runtime.network;
    if leased != "none" {
        c.backend().set_network(c.id(), Some(leased)).await?;
    }
    verify(c).await
}
