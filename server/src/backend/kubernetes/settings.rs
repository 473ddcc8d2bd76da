//! The `[kubernetes]` section of the server config.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::Toleration;
use serde::Deserialize;

/// Where and how sandbox pods are made. Every field is optional.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSettings {
    /// A kubeconfig file. Without it: in-cluster credentials (the pod's
    /// ServiceAccount), else `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; its current one when unset.
    pub context: Option<String>,
    /// Namespace of the sandbox pods and their NetworkPolicies of pools
    /// that name none; the kubeconfig's default namespace when unset.
    pub namespace: Option<String>,
    /// Further namespaces that pools may name (`PoolSpec.namespace`), for
    /// their pods and NetworkPolicies. The operator's decision, never a
    /// caller's: a pool naming another is refused. The server lists, watches
    /// and cleans up pods in each of them (and in `namespace`), so its
    /// ServiceAccount needs the sandbox Role in every one (README, "The
    /// Kubernetes backend").
    pub namespaces: Vec<String>,
    /// Namespace of this instance's coordination.k8s.io Lease (its
    /// liveness); `namespace` when unset.
    pub lease_namespace: Option<String>,
    /// Whether the cluster's network plugin enforces NetworkPolicy. Pools
    /// with `network = "none"` are refused when it does not: a deny-all
    /// policy would isolate nothing.
    pub network_policy_enforced: bool,
    /// RuntimeClass of pools that name no `oci_runtime` (gVisor, Kata).
    pub runtime_class: Option<String>,
    /// Node selector of every sandbox pod.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of every sandbox pod (Kubernetes' field names).
    pub tolerations: Vec<Toleration>,
    /// imagePullPolicy of sandbox pods (IfNotPresent by default).
    pub image_pull_policy: Option<String>,
    /// How long a new pod may take to run (seconds), image pull included.
    pub pod_ready_timeout: f64,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            namespace: None,
            namespaces: Vec::new(),
            lease_namespace: None,
            network_policy_enforced: true,
            runtime_class: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            image_pull_policy: None,
            pod_ready_timeout: 120.0,
        }
    }
}

impl KubernetesSettings {
    /// Checks what serde cannot; the message names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(self.pod_ready_timeout.is_finite() && self.pod_ready_timeout > 0.0) {
            return Err((
                "kubernetes.pod_ready_timeout".into(),
                format!(
                    "{} is not a positive number of seconds",
                    self.pod_ready_timeout
                ),
            ));
        }
        for (field, value) in [
            ("kubernetes.namespace", &self.namespace),
            ("kubernetes.lease_namespace", &self.lease_namespace),
        ] {
            if let Some(ns) = value
                && !crate::spec::is_namespace_name(ns)
            {
                return Err((
                    field.into(),
                    format!("{ns:?} is not a namespace name (RFC 1123 label)"),
                ));
            }
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !crate::spec::is_namespace_name(ns) {
                return Err((
                    format!("kubernetes.namespaces[{i}]"),
                    format!("{ns:?} is not a namespace name (RFC 1123 label)"),
                ));
            }
        }
        if let Some(policy) = &self.image_pull_policy
            && !["Always", "IfNotPresent", "Never"].contains(&policy.as_str())
        {
            return Err((
                "kubernetes.image_pull_policy".into(),
                format!("{policy:?} is not Always, IfNotPresent or Never"),
            ));
        }
        Ok(())
    }

    pub fn ready_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.pod_ready_timeout)
    }

    /// Every namespace the backend puts pods in, `home` (the resolved
    /// `namespace`) first, each once.
    pub fn all_namespaces(&self, home: &str) -> Vec<String> {
        let mut all = vec![home.to_string()];
        for ns in &self.namespaces {
            if !all.contains(ns) {
                all.push(ns.clone());
            }
        }
        all
    }
}
