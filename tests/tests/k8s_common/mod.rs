//! The Kubernetes test API server (tests/k8s-apiserver) in-process, and a
//! sandpool configuration that puts pools on it.

#![allow(dead_code)]

use std::path::PathBuf;

use sandpool_server::{
    ServerConfig,
    backend::{Backend, KubernetesBackend, KubernetesSettings},
};

pub struct K8s {
    pub api: sandpool_k8s_testserver::TestServer,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    _dir: tempfile::TempDir,
}

impl K8s {
    /// A test API server on loopback with a kubeconfig for it, and a
    /// namespace of the test's own.
    pub async fn start(namespace: &str) -> Self {
        let api = sandpool_k8s_testserver::serve(Default::default())
            .await
            .expect("the test API server starts (the docker engine must run)");
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, namespace)
            .expect("write kubeconfig");
        Self {
            api,
            kubeconfig,
            namespace: namespace.to_string(),
            _dir: dir,
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

    /// `namespace/name` of the pods of sandpool server `server_id`, as the
    /// test API server records them on their Docker containers (its own
    /// view, not the backend's), sorted.
    pub async fn pods_of(&self, server_id: &str) -> Vec<String> {
        use sandpool_k8s_testserver::{LABEL_INSTANCE, LABEL_POD, LABEL_POD_LABEL};
        let label = format!(
            "{LABEL_POD_LABEL}{}",
            sandpool_server::backend::LABEL_SERVER
        );
        let listed = sandpool_tests::docker()
            .list_containers(&label, Some(server_id))
            .await
            .expect("list the test API server's containers");
        let mut pods: Vec<String> = listed
            .into_iter()
            .filter(|c| {
                c.labels.get(LABEL_INSTANCE).map(String::as_str) == Some(self.api.instance_id())
            })
            .filter_map(|c| c.labels.get(LABEL_POD).cloned())
            .collect();
        pods.sort();
        pods
    }
}
