//! A Kubernetes test API server that runs each Pod as a Docker container.
//!
//! Test infrastructure for sandpool's Kubernetes backend: it serves the
//! part of the Kubernetes API the backend uses (discovery, pods with watch
//! and exec, NetworkPolicies, Leases) over plain HTTP on loopback, and runs
//! real code. Real `kubectl` and `kube` accept it. See README.md for what is
//! faithful and what is simplified.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = sandpool_k8s_testserver::serve(Default::default()).await?;
//! println!("{}", server.url()); // http://127.0.0.1:PORT, no auth
//! server.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"), "default")?;
//! server.shutdown().await; // removes every container it created
//! # Ok(()) }
//! ```

mod api;
mod app;
mod decode;
mod discovery;
mod error;
mod exec;
mod kinds;
mod logs;
mod netpol;
mod openapi;
mod pods;
mod quantity;
mod query;
mod resources;
mod runner;
mod selector;
mod store;
mod watch;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::Router;
use bollard::{Docker, query_parameters::ListContainersOptionsBuilder};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use app::{LABEL_INSTANCE, LABEL_POD, LABEL_POD_LABEL, LABEL_UID};

/// How long shutdown waits for open requests before removing containers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free one. Loopback only: no auth.
    pub bind: SocketAddr,
    /// The `k8s-testserver.instance` label value; random when None.
    pub instance_id: Option<String>,
    /// How often a watch with `allowWatchBookmarks` gets a BOOKMARK (a
    /// real server sends one about every minute).
    pub bookmark_interval: Duration,
    /// Events kept for watches that resume from a resourceVersion; a watch
    /// from before them gets 410 Gone.
    pub history_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            instance_id: None,
            bookmark_interval: Duration::from_secs(5),
            history_limit: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
}

/// A running server. Dropping it (or `shutdown`) stops it and removes
/// every container it created.
pub struct TestServer {
    addr: SocketAddr,
    instance: String,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    docker: Docker,
}

/// Starts a server on `config.bind` against the Docker engine at
/// DOCKER_HOST (or the local socket).
pub async fn serve(config: Config) -> Result<TestServer, Error> {
    let docker = Docker::connect_with_defaults()?.negotiate_version().await?;
    let runtimes: BTreeSet<String> = docker
        .info()
        .await?
        .runtimes
        .map(|r| r.into_keys().collect())
        .unwrap_or_default();
    let listener = TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    let instance = config
        .instance_id
        .clone()
        .unwrap_or_else(|| format!("kts-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff));
    let cancel = CancellationToken::new();
    let app = Arc::new(app::App {
        store: store::Store::new(config.history_limit),
        docker: docker.clone(),
        instance: instance.clone(),
        address: addr.to_string(),
        runtimes,
        bookmark_interval: config.bookmark_interval,
        cancel: cancel.clone(),
        tasks: tokio_util::task::TaskTracker::new(),
        containers: Mutex::new(HashMap::new()),
        pod_locks: Mutex::new(HashMap::new()),
        net_lock: tokio::sync::Mutex::new(()),
        namespaces: Mutex::new(BTreeSet::from(["default".to_string()])),
        started: store::now(),
    });
    let events = tokio::spawn(runner::follow_events(app.clone()));
    let router = Router::new()
        .fallback(api::dispatch)
        .with_state(app.clone());
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await });
        let server = tokio::spawn(async move { server.await });
        app.cancel.cancelled().await;
        // Open watches and log streams end on cancel; anything else gets
        // a short grace.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
        let _ = events.await;
        app.tasks.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, app.tasks.wait()).await;
        runner::remove_all(&app).await;
        tracing::info!(instance = %app.instance, "stopped; containers removed");
    });
    tracing::info!(%addr, %instance, "k8s test API server listening");
    Ok(TestServer {
        addr,
        instance,
        cancel,
        task: Some(task),
        docker,
    })
}

impl TestServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the cluster `server` of a kubeconfig, or
    /// `kube::Config::new(url)`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The value of the `k8s-testserver.instance` label on its containers.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// A kubeconfig (JSON, which kubectl and kube read as YAML) with one
    /// context whose user has no credentials.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "k8s-testserver", "cluster": {"server": self.url()}}],
            "users": [{"name": "k8s-testserver", "user": {}}],
            "contexts": [{"name": "k8s-testserver", "context": {
                "cluster": "k8s-testserver", "user": "k8s-testserver", "namespace": namespace}}],
            "current-context": "k8s-testserver",
            "preferences": {},
        })
        .to_string()
    }

    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig(namespace))
    }

    /// Ids of the Docker containers of this instance (running or not): a
    /// test's leftover check.
    pub async fn containers(&self) -> Result<Vec<String>, Error> {
        instance_containers(&self.docker, &self.instance).await
    }

    /// Stops serving and removes every container this instance created.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn instance_containers(docker: &Docker, instance: &str) -> Result<Vec<String>, Error> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_INSTANCE}={instance}")],
    )]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    Ok(docker
        .list_containers(Some(options))
        .await?
        .into_iter()
        .filter_map(|c| c.id)
        .collect())
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        self.cancel.cancel();
        task.abort();
        // The caller's runtime may be shutting down (end of a test), so the
        // cleanup runs on a runtime of its own, on its own thread.
        let instance = self.instance.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(docker) = Docker::connect_with_defaults() else {
                    return;
                };
                let Ok(docker) = docker.negotiate_version().await else {
                    return;
                };
                let options = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build();
                // Twice: a create the engine was still doing when the
                // runtime stopped shows up a moment later.
                for pass in 0..2 {
                    if pass > 0 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let ids = instance_containers(&docker, &instance)
                        .await
                        .unwrap_or_default();
                    for id in ids {
                        let _ = docker.remove_container(&id, Some(options.clone())).await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}
