//! What a sandbox pod is made of: the pod for a `ContainerSpec`, and the
//! deny-all NetworkPolicy of a pool without network.
//!
//! Kubernetes exec cannot choose a user, an environment, a working directory
//! or privileges per exec: every exec runs as the container's user with its
//! capabilities. The Backend contract needs all four (the server's warden
//! runs as root with a few capabilities, a lease's runs as the sandbox user
//! with a group of their own), so the pod's container runs as root with
//! only the helper capabilities (no-new-privileges, read-only root, seccomp
//! RuntimeDefault), and every exec that is not the server's privileged one
//! is wrapped in `setpriv` to its user before anything of the caller's runs
//! (see `exec::command`). That is Docker's root-exec mode (`privilege`), the
//! only mode here. PID 1 is a shell that starts the idle process as the idle
//! user and reaps orphans (there is no init in a pod without a shared PID
//! namespace).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            Capabilities, Container, EmptyDirVolumeSource, EnvVar, Pod, PodSecurityContext,
            PodSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
        },
        networking::v1::{NetworkPolicy, NetworkPolicySpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
    },
};

use super::{KubeError, settings::KubernetesSettings};
use crate::backend::{ContainerSpec, LABEL_POOL, LABEL_SERVER};

/// The sandbox container's name in its pod.
pub const CONTAINER: &str = "sandbox";
/// Label of a pod that its pool's deny-all NetworkPolicy selects.
pub const LABEL_ISOLATED: &str = "sandpool.isolated";
/// Capabilities the pod keeps for the server's own root execs: Docker's
/// helper capabilities without SYS_NICE, so that the pod fits Pod Security
/// "baseline" (the warden then runs at normal priority).
const NOT_ON_KUBERNETES: &[&str] = &["SYS_NICE"];

/// PID 1: starts the idle process as `$1:$2` and reaps every orphan (a
/// shell's `wait` reaps any child, adopted ones too) until SIGTERM.
const INIT: &str = "trap 'exit 0' TERM INT; /usr/bin/setpriv --reuid=\"$1\" --regid=\"$2\" \
                    --clear-groups --inh-caps=-all -- /bin/sleep infinity & wait";

/// A pod name from `name`: lower case, [a-z0-9-], at most 63 characters
/// (the pod's hostname).
pub fn pod_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    if out.len() > 63 {
        // Keep the random tail that makes it unique.
        let tail = out.split_off(out.len() - 30);
        out.truncate(32);
        out.push('-');
        out.push_str(&tail);
    }
    out.trim_matches('-').to_string()
}

/// The container id of pod `name` in `namespace`: the bare name in the
/// backend's own namespace `home` (the ids of pods there are what they were
/// before pools had namespaces of their own, and what kubectl shows), and
/// `namespace/name` in any other. Neither part can contain '/', so an id
/// says where its pod is; a server restarted with the same `home` finds the
/// same ids by listing.
pub fn pod_id(home: &str, namespace: &str, name: &str) -> String {
    if namespace == home {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// The namespace and name of the pod with container id `id` (see `pod_id`).
pub fn split_id<'a>(home: &'a str, id: &'a str) -> (&'a str, &'a str) {
    id.split_once('/').unwrap_or((home, id))
}

/// "uid:gid" (numeric) as two numbers; a lone uid is its own gid.
pub fn parse_user(user: &str) -> Result<(u32, u32), KubeError> {
    let bad = || KubeError::BadExec {
        what: format!("as user {user:?}: Kubernetes pods here need a numeric uid[:gid]"),
    };
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, g),
        None => (user, user),
    };
    Ok((
        uid.parse().map_err(|_| bad())?,
        gid.parse().map_err(|_| bad())?,
    ))
}

/// The pod of one sandbox container.
pub fn pod(
    spec: &ContainerSpec,
    settings: &KubernetesSettings,
    name: &str,
    isolated: bool,
) -> Result<Pod, KubeError> {
    let (idle_uid, idle_gid) = parse_user(&spec.main_user)?;
    let mut labels: BTreeMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_ISOLATED.to_string(), isolated.to_string());

    let mut limits = BTreeMap::new();
    if let Some(bytes) = spec.memory_bytes {
        limits.insert("memory".to_string(), Quantity(bytes.to_string()));
    }
    let millicores = match (spec.cpu_quota, spec.cpu_period, spec.nano_cpus) {
        (Some(quota), period, _) => Some(quota * 1000 / period.unwrap_or(100_000).max(1)),
        (None, _, Some(nano)) => Some(nano / 1_000_000),
        _ => None,
    };
    if let Some(m) = millicores.filter(|m| *m > 0) {
        limits.insert("cpu".to_string(), Quantity(format!("{m}m")));
    }

    let volumes: Vec<Volume> = spec
        .tmpfs
        .iter()
        .enumerate()
        .map(|(i, m)| Volume {
            name: format!("scratch-{i}"),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_string()),
                size_limit: Some(Quantity(m.size_bytes.to_string())),
            }),
            ..Default::default()
        })
        .collect();
    let mounts: Vec<VolumeMount> = spec
        .tmpfs
        .iter()
        .enumerate()
        .map(|(i, m)| VolumeMount {
            name: format!("scratch-{i}"),
            mount_path: m.path.clone(),
            ..Default::default()
        })
        .collect();
    let env = spec
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| EnvVar {
            name: k.to_string(),
            value: Some(v.to_string()),
            ..Default::default()
        })
        .collect();
    let caps: Vec<String> = spec
        .helper_caps
        .iter()
        .filter(|c| !NOT_ON_KUBERNETES.contains(&c.as_str()))
        .cloned()
        .collect();

    let container = Container {
        name: CONTAINER.to_string(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(
            settings
                .image_pull_policy
                .clone()
                .unwrap_or_else(|| "IfNotPresent".to_string()),
        ),
        command: Some(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            INIT.to_string(),
            "sandpool-init".to_string(),
            idle_uid.to_string(),
            idle_gid.to_string(),
        ]),
        env: Some(env),
        working_dir: Some("/".to_string()),
        resources: Some(ResourceRequirements {
            // Requests equal limits: the Guaranteed QoS class.
            requests: Some(limits.clone()),
            limits: Some(limits),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(spec.read_only_root),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: Some(caps),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let runtime_class = spec
        .oci_runtime
        .clone()
        .or_else(|| settings.runtime_class.clone());
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            // A sandbox that dies is replaced by its pool, never restarted
            // in place.
            restart_policy: Some("Never".to_string()),
            termination_grace_period_seconds: Some(1),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            share_process_namespace: Some(false),
            host_network: Some(false),
            host_pid: Some(false),
            host_ipc: Some(false),
            runtime_class_name: runtime_class,
            node_selector: (!settings.node_selector.is_empty())
                .then(|| settings.node_selector.clone()),
            tolerations: (!settings.tolerations.is_empty()).then(|| settings.tolerations.clone()),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Name of the deny-all policy of `pool` of instance `server`.
pub fn policy_name(server: &str, pool: &str) -> String {
    let name = format!("sandpool-deny-{server}-{pool}");
    let mut name: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    name.truncate(253);
    name.trim_matches(|c| c == '-' || c == '.').to_string()
}

/// The policy that takes every network away from the isolated pods of
/// `pool` of instance `server`: both directions, no rules.
pub fn deny_all(server: &str, pool: &str) -> NetworkPolicy {
    let selected = BTreeMap::from([
        (LABEL_SERVER.to_string(), server.to_string()),
        (LABEL_POOL.to_string(), pool.to_string()),
        (LABEL_ISOLATED.to_string(), "true".to_string()),
    ]);
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(policy_name(server, pool)),
            labels: Some(BTreeMap::from([
                (LABEL_SERVER.to_string(), server.to_string()),
                (LABEL_POOL.to_string(), pool.to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selected),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".to_string(), "Egress".to_string()]),
            ingress: None,
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_fit() {
        assert_eq!(
            pod_name("sandpool-my_pool-w-00ff"),
            "sandpool-my-pool-w-00ff"
        );
        let long = format!("sandpool-{}-w-0123456789abcdef", "p".repeat(63));
        let name = pod_name(&long);
        assert!(name.len() <= 63, "{name}");
        assert!(name.ends_with("0123456789abcdef"));
    }

    #[test]
    fn ids_say_where_their_pod_is() {
        assert_eq!(pod_id("home", "home", "p-1"), "p-1");
        assert_eq!(pod_id("home", "team-a", "p-1"), "team-a/p-1");
        assert_eq!(split_id("home", "p-1"), ("home", "p-1"));
        assert_eq!(split_id("home", "team-a/p-1"), ("team-a", "p-1"));
    }

    #[test]
    fn users_parse() {
        assert_eq!(parse_user("1000:20001").unwrap(), (1000, 20001));
        assert_eq!(parse_user("65534").unwrap(), (65534, 65534));
        assert!(parse_user("sandbox").is_err());
    }
}
