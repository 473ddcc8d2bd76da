//! The state every request handler and background task shares.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use bollard::Docker;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::store::Store;

/// Docker labels on every container of this server.
pub const LABEL_INSTANCE: &str = "k8s-testserver.instance";
/// `<namespace>/<name>` of the pod a container runs.
pub const LABEL_POD: &str = "k8s-testserver.pod";
/// The pod's uid: tells two pods of the same name apart.
pub const LABEL_UID: &str = "k8s-testserver.uid";
/// Prefix of the Docker labels that carry the pod's own labels. Not the
/// labels themselves: a sandpool server on the same Docker engine would take
/// a pod labelled `sandpool.server=<id>` for a container of a dead instance
/// of its own (no liveness marker) and remove it.
pub const LABEL_POD_LABEL: &str = "k8s-testserver.label.";

pub struct App {
    pub store: Store,
    pub docker: Docker,
    pub instance: String,
    /// `host:port` this server answers on (for `/api`'s server address).
    pub address: String,
    /// OCI runtimes Docker knows (`runc`, maybe `runsc`): the runtime
    /// classes a pod may name.
    pub runtimes: BTreeSet<String>,
    pub bookmark_interval: Duration,
    pub cancel: CancellationToken,
    /// Pod starts and deletions in flight: shutdown waits for them before
    /// it removes containers, so none is created after the sweep.
    pub tasks: TaskTracker,
    /// Pod uid -> Docker container id, once the container exists.
    pub containers: Mutex<HashMap<String, String>>,
    /// One lifecycle lock per pod uid: creating a pod's container and
    /// deleting the pod never interleave.
    pub pod_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes network enforcement with pod start, so a policy that
    /// appears while a pod starts is applied to it.
    pub net_lock: tokio::sync::Mutex<()>,
    /// Namespaces seen (any name is accepted; these are listed).
    pub namespaces: Mutex<BTreeSet<String>>,
    pub started: String,
}

impl App {
    pub fn container_of(&self, uid: &str) -> Option<String> {
        lock(&self.containers).get(uid).cloned()
    }

    pub fn pod_lock(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.pod_locks)
            .entry(uid.to_string())
            .or_default()
            .clone()
    }

    pub fn saw_namespace(&self, ns: &str) {
        lock(&self.namespaces).insert(ns.to_string());
    }
}

/// Locks a std mutex, ignoring poisoning: the maps stay consistent since
/// every change to them is a single insert or remove.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
