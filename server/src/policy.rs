//! The policy floor for pools created at run time. The config file's pools
//! are the operator's and trusted; a pool that a caller creates through
//! CreatePool (admin or tenant alike) must fit this policy, so that nobody
//! can make a pool that reaches the host, the network or another tenant's
//! runs.

use crate::{
    backend::BackendKind,
    error::Error,
    identity::glob_match,
    spec::{IDLE_UID, PoolSpec},
};

/// The Kubernetes namespaces pools may put their pods in: the server's own
/// (`[kubernetes] namespace`, where pools that name none go) and the
/// operator's list (`[kubernetes] namespaces`). Which ones is the
/// operator's decision, never a caller's: it holds for every pool, the
/// config file's included, since the server watches and cleans up only
/// these namespaces (and its RBAC reaches only these).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespaces {
    /// The server's namespace when the config names it; `None`: the
    /// kubeconfig's default, which pools reach by naming no namespace.
    pub home: Option<String>,
    /// The further namespaces the operator allows.
    pub extra: Vec<String>,
}

impl Namespaces {
    /// Whether a pool may name `namespace`.
    pub fn allows(&self, namespace: &str) -> bool {
        self.home.as_deref() == Some(namespace) || self.extra.iter().any(|n| n == namespace)
    }

    /// The allowed values, as an error names them.
    pub fn describe(&self) -> String {
        let mut names: Vec<String> = vec![match &self.home {
            Some(home) => format!("{home} (or empty: the server's namespace)"),
            None => "empty (the server's namespace)".to_string(),
        }];
        names.extend(
            self.extra
                .iter()
                .filter(|n| self.home.as_ref() != Some(*n))
                .cloned(),
        );
        names.join(", ")
    }

    /// Checks the namespace of a validated spec (only Kubernetes pools have
    /// one; `PoolSpec::validate` refuses it on others).
    pub fn check(&self, spec: &PoolSpec) -> Result<(), Error> {
        let Some(namespace) = &spec.namespace else {
            return Ok(());
        };
        if spec.backend != BackendKind::Kubernetes {
            return Err(Error::invalid(
                "namespace",
                "only Kubernetes pools have a namespace",
            ));
        }
        if self.allows(namespace) {
            return Ok(());
        }
        Err(Error::PolicyViolation {
            field: "namespace".to_string(),
            limit: self.describe(),
            message: format!(
                "namespace {namespace:?} is not one the server's operator allows for pods \
                 ([kubernetes] namespaces)"
            ),
        })
    }
}

/// What a pool created at run time may ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Image patterns (glob) besides the project's own `sandpool/*` images
    /// and the images of the config file's pools.
    pub images: Vec<String>,
    /// Networks a container may be on while leased (`runtime.network`).
    pub networks: Vec<String>,
    /// Networks a container may join to install libraries.
    pub install_networks: Vec<String>,
    /// OCI runtimes besides the engine's default (e.g. "runsc").
    pub runtimes: Vec<String>,
    pub max_memory_bytes: i64,
    pub max_cpus: f64,
    pub max_pids: i64,
    pub max_tmpfs_bytes: i64,
    pub max_pool_size: u32,
    pub max_temporary: u32,
}

/// The project's own images, always allowed.
const OWN_IMAGES: &str = "sandpool/*";

impl Default for Policy {
    fn default() -> Self {
        Self {
            images: Vec::new(),
            networks: vec!["none".to_string()],
            // The engine's default bridge: pools with libraries keep working.
            install_networks: vec!["bridge".to_string()],
            runtimes: Vec::new(),
            max_memory_bytes: 2 << 30,
            max_cpus: 2.0,
            max_pids: 1024,
            max_tmpfs_bytes: 1 << 30,
            max_pool_size: 10,
            max_temporary: 10,
        }
    }
}

/// Network values that would share another namespace with the container:
/// never allowed for a pool made at run time, whatever the policy lists.
pub fn shares_a_namespace(network: &str) -> bool {
    network == "host" || network.contains(':')
}

impl Policy {
    /// Adds what the operator's own pools use: their images and install
    /// networks are trusted by definition.
    pub fn trust_config_pools<'a>(&mut self, pools: impl IntoIterator<Item = &'a PoolSpec>) {
        for pool in pools {
            if !self.images.contains(&pool.image) {
                self.images.push(pool.image.clone());
            }
            if !self.install_networks.contains(&pool.install_network) {
                self.install_networks.push(pool.install_network.clone());
            }
        }
    }

    /// Checks a validated spec of a pool made at run time.
    pub fn check(&self, spec: &PoolSpec) -> Result<(), Error> {
        let rt = &spec.runtime;
        let deny = |field: &str, limit: String, message: String| Error::PolicyViolation {
            field: field.to_string(),
            limit,
            message,
        };
        let image_ok = glob_match(OWN_IMAGES, &spec.image)
            || self.images.iter().any(|p| glob_match(p, &spec.image));
        if !image_ok {
            return Err(deny(
                "image",
                self.image_list(),
                format!(
                    "image {:?} is not allowed by the server's policy",
                    spec.image
                ),
            ));
        }
        if shares_a_namespace(&rt.network) || !self.networks.contains(&rt.network) {
            return Err(deny(
                "runtime.network",
                self.networks.join(", "),
                format!("network {:?} is not allowed while leased", rt.network),
            ));
        }
        let installs = !spec.libraries.is_empty() || spec.lease_installs;
        if installs
            && (shares_a_namespace(&spec.install_network)
                || !self.install_networks.contains(&spec.install_network))
        {
            return Err(deny(
                "install_network",
                self.install_networks.join(", "),
                format!(
                    "install network {:?} is not one of the operator's",
                    spec.install_network
                ),
            ));
        }
        if let Some(runtime) = &rt.oci_runtime
            && !self.runtimes.contains(runtime)
        {
            return Err(deny(
                "runtime.oci_runtime",
                if self.runtimes.is_empty() {
                    "the engine's default".to_string()
                } else {
                    self.runtimes.join(", ")
                },
                format!("OCI runtime {runtime:?} is not allowed"),
            ));
        }
        if !rt.read_only_root {
            return Err(deny(
                "runtime.read_only_root",
                "true".into(),
                "pools made at run time have a read-only root".into(),
            ));
        }
        if rt.uid == IDLE_UID || rt.gid == IDLE_UID {
            return Err(deny(
                "runtime.user",
                format!("not {IDLE_UID}"),
                "the idle user never runs code".into(),
            ));
        }
        let cpus = match (rt.cpu_quota, rt.cpu_period) {
            (Some(quota), period) => quota as f64 / period.unwrap_or(100_000) as f64,
            (None, _) => rt.cpus,
        };
        let limits: [(&str, bool, String); 6] = [
            (
                "runtime.mem_limit",
                rt.mem_limit_bytes > self.max_memory_bytes,
                format!("{} bytes", self.max_memory_bytes),
            ),
            (
                "runtime.cpus",
                cpus > self.max_cpus,
                format!("{} CPUs", self.max_cpus),
            ),
            (
                "runtime.pids_limit",
                rt.pids_limit > self.max_pids,
                self.max_pids.to_string(),
            ),
            (
                "runtime.tmpfs_size",
                rt.tmpfs_size_bytes > self.max_tmpfs_bytes,
                format!("{} bytes", self.max_tmpfs_bytes),
            ),
            (
                "config.max_pool_size",
                spec.config.max_pool_size > self.max_pool_size,
                self.max_pool_size.to_string(),
            ),
            (
                "max_temporary",
                spec.temporary_limit() > self.max_temporary,
                self.max_temporary.to_string(),
            ),
        ];
        for (field, over, limit) in limits {
            if over {
                return Err(deny(
                    field,
                    limit.clone(),
                    format!("{field} is above the server's limit of {limit}"),
                ));
            }
        }
        Ok(())
    }

    fn image_list(&self) -> String {
        std::iter::once(OWN_IMAGES)
            .chain(self.images.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PoolSpec {
        PoolSpec::new("p", "python").validate().expect("valid")
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::PolicyViolation { field, .. } => field,
            other => panic!("not a policy violation: {other}"),
        }
    }

    #[test]
    fn the_default_pool_fits() {
        Policy::default().check(&spec()).expect("fits");
    }

    #[test]
    fn each_field_past_its_limit_is_named() {
        let policy = Policy::default();
        type Change = Box<dyn Fn(&mut PoolSpec)>;
        let mut cases: Vec<(&str, Change)> = vec![
            ("image", Box::new(|s| s.image = "evil/miner:latest".into())),
            (
                "runtime.network",
                Box::new(|s| s.runtime.network = "bridge".into()),
            ),
            (
                "runtime.network",
                Box::new(|s| s.runtime.network = "host".into()),
            ),
            (
                "runtime.oci_runtime",
                Box::new(|s| s.runtime.oci_runtime = Some("runc-unsafe".into())),
            ),
            (
                "runtime.read_only_root",
                Box::new(|s| s.runtime.read_only_root = false),
            ),
            (
                "runtime.mem_limit",
                Box::new(|s| s.runtime.mem_limit_bytes = 64 << 30),
            ),
            ("runtime.cpus", Box::new(|s| s.runtime.cpus = 16.0)),
            (
                "runtime.pids_limit",
                Box::new(|s| s.runtime.pids_limit = 100_000),
            ),
            (
                "runtime.tmpfs_size",
                Box::new(|s| s.runtime.tmpfs_size_bytes = 8 << 30),
            ),
            (
                "config.max_pool_size",
                Box::new(|s| s.config.max_pool_size = 1000),
            ),
            ("max_temporary", Box::new(|s| s.max_temporary = Some(500))),
        ];
        cases.push((
            "install_network",
            Box::new(|s| {
                s.libraries = vec!["numpy".into()];
                s.install_network = "container:abc".into();
            }),
        ));
        for (field, change) in cases {
            let mut s = spec();
            change(&mut s);
            assert_eq!(field_of(policy.check(&s).expect_err(field)), field);
        }
    }

    #[test]
    fn namespaces_are_the_operators() {
        let allowed = Namespaces {
            home: Some("sandpool-sandboxes".into()),
            extra: vec!["llm-sandbox".into()],
        };
        let mut s = spec();
        s.backend = BackendKind::Kubernetes;
        allowed.check(&s).expect("no namespace: the server's");
        for ok in ["sandpool-sandboxes", "llm-sandbox"] {
            s.namespace = Some(ok.into());
            allowed.check(&s).expect(ok);
        }
        s.namespace = Some("kube-system".into());
        match allowed.check(&s).expect_err("not listed") {
            Error::PolicyViolation { field, limit, .. } => {
                assert_eq!(field, "namespace");
                assert!(
                    limit.contains("sandpool-sandboxes") && limit.contains("llm-sandbox"),
                    "{limit}"
                );
            }
            other => panic!("not a policy violation: {other}"),
        }
        // By default only the server's own namespace.
        let default = Namespaces {
            home: Some("sandpool-sandboxes".into()),
            extra: Vec::new(),
        };
        s.namespace = Some("llm-sandbox".into());
        assert!(default.check(&s).is_err());
        let unnamed = Namespaces::default();
        s.namespace = Some("default".into());
        assert!(
            unnamed.check(&s).is_err(),
            "an unnamed home is reached by naming none"
        );
        s.backend = BackendKind::Docker;
        s.namespace = Some("sandpool-sandboxes".into());
        assert!(matches!(
            allowed.check(&s),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn the_operator_can_widen_it() {
        let mut policy = Policy {
            runtimes: vec!["runsc".into()],
            networks: vec!["none".into(), "sandbox-net".into()],
            ..Policy::default()
        };
        let mut config_pool = spec();
        config_pool.image = "corp/python:3.12".into();
        policy.trust_config_pools([&config_pool]);
        let mut s = spec();
        s.runtime.oci_runtime = Some("runsc".into());
        s.runtime.network = "sandbox-net".into();
        s.image = "corp/python:3.12".into();
        policy.check(&s).expect("allowed by the operator");
    }
}
