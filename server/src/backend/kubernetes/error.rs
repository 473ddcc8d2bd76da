//! Errors of the Kubernetes backend, and their one mapping onto the engine
//! errors the layers above know (`backend::Error`).

use crate::backend::{BackendKind, Error as EngineError};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable client configuration (kubeconfig, in-cluster).
    #[error("cannot load the Kubernetes client configuration: {0}")]
    Config(String),
    /// The API server could not be reached at all.
    #[error("cannot reach the Kubernetes API server {endpoint} ({op}): {detail}")]
    Transport {
        op: &'static str,
        endpoint: String,
        detail: String,
    },
    /// The API server answered with an error status.
    #[error("{op}: the API server answered {code} {reason}: {message}")]
    Api {
        op: &'static str,
        code: u16,
        reason: String,
        message: String,
    },
    /// The pod is gone (deleted, evicted, failed).
    #[error("pod {pod} is gone (deleted, evicted or failed outside sandpool)")]
    PodGone { pod: String },
    /// The pod's image cannot be pulled.
    #[error("image {image} cannot be pulled: {detail}")]
    ImagePull { image: String, detail: String },
    /// The pod did not become ready.
    #[error("pod {pod} did not start: {detail}")]
    NotReady { pod: String, detail: String },
    /// A command or user that Kubernetes exec cannot express.
    #[error("cannot exec {what}")]
    BadExec { what: String },
    /// A pool without network where nobody enforces NetworkPolicy.
    #[error(
        "pool {pool:?} asks for network \"none\", but the [kubernetes] config says this cluster does \
         not enforce NetworkPolicy (network_policy_enforced = false): refused, since its pods would \
         have the cluster network"
    )]
    NetworkNotEnforced { pool: String },
    /// A pod in a namespace the operator did not list.
    #[error(
        "namespace {namespace:?} is not one of the [kubernetes] namespaces this server uses \
         ({allowed})"
    )]
    NamespaceNotAllowed { namespace: String, allowed: String },
    /// Something else went wrong talking to the API server.
    #[error("{op}: {detail}")]
    Other { op: &'static str, detail: String },
}

impl KubeError {
    /// Maps a kube client error of the operation `op`.
    pub fn from_kube(op: &'static str, endpoint: &str, e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => KubeError::Api {
                op,
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            kube::Error::HyperError(e) => KubeError::Transport {
                op,
                endpoint: endpoint.to_string(),
                detail: e.to_string(),
            },
            kube::Error::Service(e) => KubeError::Transport {
                op,
                endpoint: endpoint.to_string(),
                detail: e.to_string(),
            },
            kube::Error::UpgradeConnection(e) => match e {
                kube::client::UpgradeConnectionError::ProtocolSwitch(code) => KubeError::Api {
                    op,
                    code: code.as_u16(),
                    reason: code.canonical_reason().unwrap_or_default().to_string(),
                    message: "the exec upgrade was refused".into(),
                },
                other => KubeError::Other {
                    op,
                    detail: other.to_string(),
                },
            },
            other => KubeError::Other {
                op,
                detail: other.to_string(),
            },
        }
    }

    /// The HTTP status of an API error.
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<KubeError> for EngineError {
    fn from(e: KubeError) -> Self {
        let detail = e.to_string();
        match e {
            KubeError::Transport { endpoint, .. } => EngineError::Unreachable {
                backend: BackendKind::Kubernetes,
                endpoint,
                detail,
            },
            KubeError::PodGone { pod } => EngineError::ContainerGone { id: pod },
            KubeError::ImagePull { image, detail } => EngineError::ImageMissing { image, detail },
            KubeError::Api { op, .. } | KubeError::Other { op, .. } => {
                EngineError::Engine { op, detail }
            }
            KubeError::Config(_) => EngineError::Unreachable {
                backend: BackendKind::Kubernetes,
                endpoint: "(no configuration)".into(),
                detail,
            },
            KubeError::NotReady { .. } => EngineError::Engine {
                op: "pod start",
                detail,
            },
            KubeError::BadExec { .. } => EngineError::Engine { op: "exec", detail },
            KubeError::NetworkNotEnforced { .. } | KubeError::NamespaceNotAllowed { .. } => {
                EngineError::Engine {
                    op: "pod create",
                    detail,
                }
            }
        }
    }
}
