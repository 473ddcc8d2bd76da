//! How the server's privileged execs get their capabilities on a Docker-API
//! engine. The container drops every capability; the server's own fixed
//! commands (its root helper, see `sandbox::warden`) need a few. The normal
//! way is a privileged exec: the container keeps none, the exec gets them.
//!
//! Docker 20.10 gives a privileged exec every capability the *kernel* knows,
//! and the exec fails ("unable to apply caps: operation not permitted") where
//! the daemon itself runs without one of them (in some VMs and nested
//! containers; Podman asks only for its own bounding set, gVisor grants its
//! own). There the engine keeps the helper's capabilities in the container's
//! bounding set instead, runs its idle process as root (Docker grants a root
//! exec the container's capabilities only when its main user is root), and a
//! "privileged" exec becomes a plain root exec. The sandbox user still has
//! no capability: it is not root, and no-new-privileges stops setuid and
//! file capabilities. Which way works is learned once per OCI runtime, by
//! the first container that asks.

use std::collections::{HashMap, HashSet};

use crate::sync::lock;

/// What the engine does with a privileged exec, per OCI runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Not tried yet.
    Unknown,
    /// Privileged execs work: containers keep no capability.
    PrivilegedExec,
    /// Refused: containers keep the helper's capabilities for root execs.
    RootExec,
}

/// The exit code and message of an exec the runtime could not start because
/// it could not grant the capabilities asked for.
pub fn refused(exit_code: i64, output: &[u8]) -> bool {
    exit_code == 126 && String::from_utf8_lossy(output).contains("apply caps")
}

#[derive(Default)]
pub struct Privileges {
    modes: std::sync::Mutex<HashMap<Option<String>, Mode>>,
    /// Containers made for root execs (`Mode::RootExec`).
    root_exec: std::sync::Mutex<HashSet<String>>,
}

impl Privileges {
    pub fn mode(&self, runtime: &Option<String>) -> Mode {
        lock(&self.modes)
            .get(runtime)
            .copied()
            .unwrap_or(Mode::Unknown)
    }

    pub fn learn(&self, runtime: &Option<String>, mode: Mode) {
        let before = lock(&self.modes).insert(runtime.clone(), mode);
        if mode == Mode::RootExec && before != Some(Mode::RootExec) {
            tracing::warn!(
                runtime = runtime.as_deref().unwrap_or("default"),
                "the engine refuses privileged execs (its daemon lacks a capability the kernel \
                 knows); containers keep the server's helper capabilities in their bounding set \
                 for root execs instead (the sandbox user still has none)"
            );
        }
    }

    pub fn made_for_root_exec(&self, container: &str) {
        lock(&self.root_exec).insert(container.to_string());
    }

    pub fn uses_root_exec(&self, container: &str) -> bool {
        lock(&self.root_exec).contains(container)
    }

    pub fn forget(&self, container: &str) {
        lock(&self.root_exec).remove(container);
    }
}
