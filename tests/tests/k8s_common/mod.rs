//! The Kubernetes test API server (tests/k8s-apiserver) in-process, and a
//! sandpool configuration that puts pools on it.
//!
//! Opt-in, a real cluster instead: with `SANDPOOL_KUBECONFIG=<kubeconfig>`
//! the same suites (conformance, kubernetes) run against the cluster that
//! kubeconfig names. Their namespaces (`sandpool-it-<name>`) are created
//! when missing; the sandbox image must be pullable by the nodes
//! (`SANDPOOL_TEST_PYTHON_IMAGE`). Observations are then made through the
//! API (pods listed by label) instead of the test API server's containers.

#![allow(dead_code)]

use std::{path::PathBuf, process::Child};

use sandpool_server::{
    ServerConfig,
    backend::{Backend, KubernetesBackend, KubernetesSettings},
};

/// The kubeconfig of a real cluster to test against, if one is given.
pub fn real_cluster() -> Option<PathBuf> {
    std::env::var_os("SANDPOOL_KUBECONFIG").map(PathBuf::from)
}

/// Namespace `name` of a test, as it is on the cluster under test.
pub fn namespace(name: &str) -> String {
    if real_cluster().is_some() {
        format!("sandpool-it-{name}")
    } else {
        name.to_string()
    }
}

pub struct K8s {
    /// The test API server; `None` on a real cluster.
    pub api: Option<sandpool_k8s_testserver::TestServer>,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    _dir: tempfile::TempDir,
}

impl K8s {
    /// A test API server on loopback with a kubeconfig for it, and a
    /// namespace of the test's own (or the real cluster, see above).
    pub async fn start(namespace: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(kubeconfig) = real_cluster() {
            let k8s = Self {
                api: None,
                kubeconfig,
                namespace: self::namespace(namespace),
                _dir: dir,
            };
            k8s.ensure_namespace(&k8s.namespace).await;
            return k8s;
        }
        let api = sandpool_k8s_testserver::serve(Default::default())
            .await
            .expect("the test API server starts (the docker engine must run)");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, namespace)
            .expect("write kubeconfig");
        Self {
            api: Some(api),
            kubeconfig,
            namespace: namespace.to_string(),
            _dir: dir,
        }
    }

    /// On a real cluster: creates namespace `name` unless it exists (the
    /// test API server has every namespace).
    pub async fn ensure_namespace(&self, name: &str) {
        use k8s_openapi::api::core::v1::Namespace;
        use kube::api::{Api, ObjectMeta, PostParams};
        if self.api.is_some() {
            return;
        }
        let api: Api<Namespace> = Api::all(self.kube_client().await);
        if api
            .get_opt(name)
            .await
            .expect("read the namespace")
            .is_none()
        {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            api.create(&PostParams::default(), &ns)
                .await
                .expect("create the test namespace");
        }
    }

    pub fn settings(&self) -> KubernetesSettings {
        KubernetesSettings {
            kubeconfig: Some(self.kubeconfig.clone()),
            namespace: Some(self.namespace.clone()),
            ..Default::default()
        }
    }

    pub fn backend(&self) -> KubernetesBackend {
        KubernetesBackend::new(self.settings())
    }

    /// A server config with no pools whose Kubernetes pools go here.
    pub fn config(&self) -> ServerConfig {
        let mut config = sandpool_tests::empty_config();
        config.kubernetes = self.settings();
        config
    }

    /// A sandpool server process of its own (for killing) with id
    /// `server_id` and a two-pod Python pool `pool` here.
    pub async fn spawn_server(&self, server_id: &str, pool: &str) -> ServerProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("sandpool.toml");
        std::fs::write(
            &config,
            format!(
                "shutdown_grace = 1.0\n\
                 [kubernetes]\nkubeconfig = {:?}\nnamespace = {:?}\n\
                 [[pools]]\nname = {pool:?}\nlanguage = \"python\"\nimage = {:?}\n\
                 backend = \"kubernetes\"\nmin_pool_size = 2\nmax_pool_size = 2\n",
                self.kubeconfig.display().to_string(),
                self.namespace,
                sandpool_tests::python_image(),
            ),
        )
        .expect("config");
        let (child, _) = sandpool_tests::spawn_server(&config, server_id);
        ServerProcess { child, _dir: dir }
    }

    /// A kube client for this API server, to look at what the backend made.
    pub async fn kube_client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kube config");
        kube::Client::try_from(config).expect("kube client")
    }

    /// `namespace/name` of the pods of sandpool server `server_id`, sorted:
    /// as the test API server records them on their Docker containers (its
    /// own view, not the backend's), or on a real cluster as the API lists
    /// them.
    pub async fn pods_of(&self, server_id: &str) -> Vec<String> {
        use sandpool_k8s_testserver::{LABEL_INSTANCE, LABEL_POD, LABEL_POD_LABEL};
        use sandpool_server::backend::LABEL_SERVER;
        let Some(api) = &self.api else {
            use k8s_openapi::api::core::v1::Pod;
            use kube::api::{Api, ListParams};
            let pods: Api<Pod> = Api::all(self.kube_client().await);
            let listed = pods
                .list(&ListParams::default().labels(&format!("{LABEL_SERVER}={server_id}")))
                .await
                .expect("list pods");
            let mut pods: Vec<String> = listed
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| Some(format!("{}/{}", p.metadata.namespace?, p.metadata.name?)))
                .collect();
            pods.sort();
            return pods;
        };
        let label = format!("{LABEL_POD_LABEL}{LABEL_SERVER}");
        let listed = sandpool_tests::docker()
            .list_containers(&label, Some(server_id))
            .await
            .expect("list the test API server's containers");
        let mut pods: Vec<String> = listed
            .into_iter()
            .filter(|c| c.labels.get(LABEL_INSTANCE).map(String::as_str) == Some(api.instance_id()))
            .filter_map(|c| c.labels.get(LABEL_POD).cloned())
            .collect();
        pods.sort();
        pods
    }
}

/// A server process; killed with SIGKILL by `kill` or when dropped.
pub struct ServerProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
