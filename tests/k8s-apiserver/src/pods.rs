//! Pods: validation and defaulting on create (what the API server does),
//! the plan of the Docker container that runs a pod (what the kubelet
//! decides), and the pod status written from the container's state.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_json::{Value, json};

use crate::{
    error::{ApiError, ApiResult},
    kinds::Kind,
    quantity,
    store::{name_of, now},
};

/// The one node this server pretends to have.
pub const NODE_NAME: &str = "k8s-testserver";
pub const HOST_IP: &str = "127.0.0.1";

/// Everything the Docker runner needs to create a pod's container, decided
/// from the pod alone (the image's own user is filled in by the runner).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerPlan {
    pub container_name: String,
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    pub group_add: Vec<String>,
    pub read_only_root: bool,
    pub no_new_privileges: bool,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub seccomp_unconfined: bool,
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    /// Mount path -> Docker tmpfs options.
    pub tmpfs: HashMap<String, String>,
    pub runtime: Option<String>,
    pub hostname: String,
    /// Docker restart policy name: "no", "always" or "on-failure".
    pub restart: &'static str,
    pub stop_timeout: i64,
}

type Causes = Vec<(String, String)>;

/// Parses a request body as a Pod (400 when it is not one).
pub fn parse(body: &Value) -> ApiResult<Pod> {
    serde_json::from_value(body.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "Pod in version \"v1\" cannot be handled as a Pod: {e}"
        ))
    })
}

fn spec_of(pod: &Pod) -> ApiResult<&PodSpec> {
    pod.spec.as_ref().ok_or_else(|| {
        ApiError::invalid(
            Kind::Pod,
            pod.metadata.name.as_deref().unwrap_or_default(),
            &[("spec".into(), "Required value".into())],
        )
    })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Validates a new pod and fills in the defaults the API server and the
/// scheduler would (restartPolicy, grace period, requests from limits, the
/// node), with status Pending. The body must already be a Pod.
pub fn prepare(body: Value) -> ApiResult<Value> {
    let pod = parse(&body)?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    // generateName pods are named by the store; check the prefix instead.
    let check_name = if name.is_empty() {
        pod.metadata
            .generate_name
            .clone()
            .unwrap_or_default()
            .trim_end_matches('-')
            .to_string()
            + "-x"
    } else {
        name.clone()
    };
    if !is_dns_subdomain(&check_name) {
        return Err(ApiError::invalid(
            Kind::Pod,
            &name,
            &[(
                "metadata.name".into(),
                format!(
                    "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
                ),
            )],
        ));
    }
    plan(&pod)?;
    let mut pod = serde_json::to_value(&pod).map_err(|e| ApiError::internal(e.to_string()))?;
    let spec = &mut pod["spec"];
    let defaults = [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("serviceAccountName", json!("default")),
        ("serviceAccount", json!("default")),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
        ("priority", json!(0)),
    ];
    for (field, value) in defaults {
        if spec.get(field).is_none_or(Value::is_null) {
            spec[field] = value;
        }
    }
    // "Scheduled" at once onto the only node.
    spec["nodeName"] = json!(NODE_NAME);
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in containers {
            default_container(c);
        }
    }
    let qos = qos_class(&pod);
    pod["status"] = json!({
        "phase": "Pending",
        "conditions": [condition("PodScheduled", true, None, None, &Value::Null)],
        "qosClass": qos,
    });
    Ok(pod)
}

fn default_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default();
    let tag = image.rsplit('/').next().unwrap_or_default();
    let pull = if !tag.contains(':') || tag.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    };
    for (field, value) in [
        ("imagePullPolicy", json!(pull)),
        ("terminationMessagePath", json!("/dev/termination-log")),
        ("terminationMessagePolicy", json!("File")),
        ("resources", json!({})),
    ] {
        if c.get(field).is_none_or(Value::is_null) {
            c[field] = value;
        }
    }
    // Requests default to limits, as the API server does.
    let limits = c["resources"]["limits"].clone();
    if let Some(limits) = limits.as_object() {
        for (resource, value) in limits {
            if c["resources"]["requests"][resource].is_null() {
                c["resources"]["requests"][resource] = value.clone();
            }
        }
    }
}

fn qos_class(pod: &Value) -> &'static str {
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let r = &c["resources"];
        for res in ["cpu", "memory"] {
            let (l, q) = (&r["limits"][res], &r["requests"][res]);
            any |= !l.is_null() || !q.is_null();
            guaranteed &= !l.is_null() && l == q;
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Field references the test server can resolve in `env[].valueFrom`.
fn field_ref(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => Some(NODE_NAME.into()),
        "spec.serviceAccountName" => Some(
            pod.spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
        ),
        "status.hostIP" => Some(HOST_IP.into()),
        p => {
            let key = p
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))?;
            Some(
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(key).cloned())
                    .unwrap_or_default(),
            )
        }
    }
}

/// The container of a pod as Docker will run it, or 422 naming every field
/// this server cannot honour. Called on create (so a client learns at
/// once) and again by the runner.
pub fn plan(pod: &Pod) -> ApiResult<ContainerPlan> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = spec_of(pod)?;
    let mut causes: Causes = Vec::new();
    let mut bad = |field: &str, msg: &str| causes.push((field.to_string(), msg.to_string()));
    if spec.containers.len() != 1 {
        bad(
            "spec.containers",
            "Unsupported value: the test server runs exactly one container per pod",
        );
    }
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        bad(
            "spec.initContainers",
            "Unsupported value: not supported by the test server",
        );
    }
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|c| !c.is_empty())
    {
        bad(
            "spec.ephemeralContainers",
            "Unsupported value: not supported by the test server",
        );
    }
    for (field, on) in [
        ("spec.hostNetwork", spec.host_network),
        ("spec.hostPID", spec.host_pid),
        ("spec.hostIPC", spec.host_ipc),
    ] {
        if on == Some(true) {
            bad(
                field,
                "Forbidden: host namespaces are not allowed by the test server",
            );
        }
    }
    let Some(container) = spec.containers.first() else {
        return Err(ApiError::invalid(Kind::Pod, &name, &causes));
    };
    let c: &Container = container;
    if !is_dns_label(&c.name) {
        bad(
            "spec.containers[0].name",
            "Invalid value: must be a DNS label",
        );
    }
    let image = c.image.clone().unwrap_or_default();
    if image.is_empty() {
        bad("spec.containers[0].image", "Required value");
    }

    let psc = spec.security_context.clone().unwrap_or_default();
    let csc = c.security_context.clone().unwrap_or_default();
    let run_as_user = csc.run_as_user.or(psc.run_as_user);
    let run_as_group = csc.run_as_group.or(psc.run_as_group);
    let seccomp = csc
        .seccomp_profile
        .as_ref()
        .or(psc.seccomp_profile.as_ref())
        .map(|p| p.type_.clone());
    if seccomp.as_deref() == Some("Localhost") {
        bad(
            "spec.containers[0].securityContext.seccompProfile.type",
            "Unsupported value: Localhost profiles are not supported by the test server",
        );
    }
    let mut group_add: Vec<String> = psc
        .supplemental_groups
        .clone()
        .unwrap_or_default()
        .iter()
        .map(i64::to_string)
        .collect();
    if let Some(fs_group) = psc.fs_group {
        group_add.push(fs_group.to_string());
    }
    let caps = csc.capabilities.clone().unwrap_or_default();

    let mut env = Vec::new();
    for (i, e) in c.env.clone().unwrap_or_default().iter().enumerate() {
        let value = match &e.value_from {
            None => e.value.clone().unwrap_or_default(),
            Some(from) => match from
                .field_ref
                .as_ref()
                .and_then(|f| field_ref(pod, &f.field_path))
            {
                Some(v) => v,
                None => {
                    bad(
                        &format!("spec.containers[0].env[{i}].valueFrom"),
                        "Unsupported value: the test server resolves only fieldRef to metadata.name/namespace/uid/labels['k'], spec.nodeName, spec.serviceAccountName, status.hostIP",
                    );
                    continue;
                }
            },
        };
        env.push(format!("{}={value}", e.name));
    }
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        bad(
            "spec.containers[0].envFrom",
            "Unsupported value: not supported by the test server",
        );
    }

    let limits = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    let memory = match limits.get("memory") {
        None => None,
        Some(q) => {
            let m = quantity::bytes(&q.0);
            if m.is_none() {
                bad(
                    "spec.containers[0].resources.limits.memory",
                    "Invalid value: not a quantity",
                );
            }
            m
        }
    };
    let nano_cpus = match limits.get("cpu") {
        None => None,
        Some(q) => {
            let n = quantity::nano_cpus(&q.0);
            if n.is_none() {
                bad(
                    "spec.containers[0].resources.limits.cpu",
                    "Invalid value: not a quantity",
                );
            }
            n
        }
    };

    // emptyDir volumes become tmpfs mounts at each of their mount paths.
    let mut empty_dirs: BTreeMap<String, (Option<i64>, Option<String>)> = BTreeMap::new();
    for (i, v) in spec.volumes.clone().unwrap_or_default().iter().enumerate() {
        match &v.empty_dir {
            Some(ed) => {
                let size = match &ed.size_limit {
                    None => None,
                    Some(q) => {
                        let s = quantity::bytes(&q.0);
                        if s.is_none() {
                            bad(
                                &format!("spec.volumes[{i}].emptyDir.sizeLimit"),
                                "Invalid value: not a quantity",
                            );
                        }
                        s
                    }
                };
                empty_dirs.insert(v.name.clone(), (size, ed.medium.clone()));
            }
            None => bad(
                &format!("spec.volumes[{i}]"),
                "Unsupported value: the test server supports only emptyDir volumes",
            ),
        }
    }
    let owner_uid = run_as_user;
    let owner_gid = psc.fs_group.or(run_as_group);
    let mut tmpfs = HashMap::new();
    for (i, m) in c
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let Some((size, _medium)) = empty_dirs.get(&m.name) else {
            bad(
                &format!("spec.containers[0].volumeMounts[{i}].name"),
                "Not found: no volume of that name",
            );
            continue;
        };
        if m.sub_path.as_ref().is_some_and(|s| !s.is_empty()) {
            bad(
                &format!("spec.containers[0].volumeMounts[{i}].subPath"),
                "Unsupported value: not supported by the test server",
            );
        }
        // Writable by anyone (as an emptyDir is), owned by the pod's user
        // and fsGroup when set, and not noexec (Docker's tmpfs default).
        let mut options = String::from(if m.read_only == Some(true) {
            "ro"
        } else {
            "rw"
        });
        options.push_str(",exec,nosuid,nodev,mode=1777");
        if let Some(size) = size {
            options.push_str(&format!(",size={size}"));
        }
        if let Some(uid) = owner_uid {
            options.push_str(&format!(",uid={uid}"));
        }
        if let Some(gid) = owner_gid {
            options.push_str(&format!(",gid={gid}"));
        }
        tmpfs.insert(m.mount_path.clone(), options);
    }

    let restart = match spec.restart_policy.as_deref().unwrap_or("Always") {
        "Never" => "no",
        "OnFailure" => "on-failure",
        "Always" => "always",
        _ => {
            bad(
                "spec.restartPolicy",
                "Unsupported value: must be Always, OnFailure or Never",
            );
            "no"
        }
    };
    if !causes.is_empty() {
        return Err(ApiError::invalid(Kind::Pod, &name, &causes));
    }
    Ok(ContainerPlan {
        container_name: c.name.clone(),
        image,
        // Kubernetes semantics: `command` replaces the entrypoint (and then
        // the image's CMD is not used), `args` replaces CMD.
        entrypoint: c.command.clone(),
        cmd: match (&c.command, &c.args) {
            (_, Some(args)) => Some(args.clone()),
            (Some(_), None) => Some(Vec::new()),
            (None, None) => None,
        },
        env,
        working_dir: c.working_dir.clone(),
        run_as_user,
        run_as_group,
        run_as_non_root: csc.run_as_non_root.or(psc.run_as_non_root) == Some(true),
        group_add,
        read_only_root: csc.read_only_root_filesystem == Some(true),
        no_new_privileges: csc.allow_privilege_escalation == Some(false),
        privileged: csc.privileged == Some(true),
        cap_add: caps.add.unwrap_or_default(),
        cap_drop: caps.drop.unwrap_or_default(),
        seccomp_unconfined: seccomp.as_deref() == Some("Unconfined"),
        memory,
        nano_cpus,
        tmpfs,
        runtime: spec.runtime_class_name.clone(),
        hostname: spec
            .hostname
            .clone()
            .unwrap_or_else(|| name.chars().take(63).collect()),
        restart,
        stop_timeout: spec.termination_grace_period_seconds.unwrap_or(30),
    })
}

/// A pod condition, keeping the previous transition time when its status
/// did not change (so a refresh that changes nothing is no new version).
fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<&str>,
    previous: &Value,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let old = previous["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    let since = match old {
        Some(o) if o["status"] == status => o["lastTransitionTime"].clone(),
        _ => json!(now()),
    };
    let mut c =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

/// What the runner saw of a pod's container.
#[derive(Debug, Clone, Default)]
pub struct ContainerView {
    pub id: String,
    pub image_id: String,
    pub running: bool,
    pub restarting: bool,
    pub ever_started: bool,
    pub exit_code: i64,
    pub oom_killed: bool,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub restart_count: i64,
    pub ip: Option<String>,
    pub error: Option<String>,
}

/// Docker's RFC 3339 time with nanoseconds, cut to seconds as the API
/// writes it; Docker's zero time is no time.
pub fn docker_time(t: Option<&str>) -> Option<String> {
    let t = t?;
    if t.starts_with("0001-") || t.len() < 19 {
        return None;
    }
    Some(format!("{}Z", &t[..19]))
}

fn restart_policy(pod: &Value) -> &str {
    pod["spec"]["restartPolicy"].as_str().unwrap_or("Always")
}

fn container_name(pod: &Value) -> String {
    pod["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The status of a pod whose container is in the state `view`.
pub fn status_from_container(pod: &Value, view: &ContainerView) -> Value {
    let prev = &pod["status"];
    let cname = container_name(pod);
    let image = pod["spec"]["containers"][0]["image"].clone();
    let exited = !view.running && !view.restarting && view.ever_started;
    let will_restart = match restart_policy(pod) {
        "Never" => false,
        "OnFailure" => view.exit_code != 0,
        _ => true,
    };
    let terminated = json!({
        "exitCode": view.exit_code,
        "reason": if view.oom_killed { "OOMKilled" } else if view.exit_code == 0 { "Completed" } else { "Error" },
        "startedAt": view.started_at,
        "finishedAt": view.finished_at,
        "containerID": format!("docker://{}", view.id),
    });
    let mut terminated = terminated;
    if let Some(message) = &view.error {
        terminated["message"] = json!(message);
    }
    let (phase, state, ready) = if view.running {
        (
            "Running",
            json!({"running": {"startedAt": view.started_at}}),
            true,
        )
    } else if view.restarting || (exited && will_restart) {
        (
            "Running",
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting failed container {cname}")}}),
            false,
        )
    } else if exited {
        let phase = if view.exit_code == 0 {
            "Succeeded"
        } else {
            "Failed"
        };
        (phase, json!({"terminated": terminated}), false)
    } else {
        (
            "Pending",
            json!({"waiting": {"reason": "ContainerCreating"}}),
            false,
        )
    };
    let unready = format!("containers with unready status: [{cname}]");
    let not_ready_reason = if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let mut status = json!({
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", view.ever_started || view.running, None, None, prev),
            condition("Initialized", true, None, None, prev),
            condition("Ready", ready, (!ready).then_some(not_ready_reason), (!ready).then_some(unready.as_str()), prev),
            condition("ContainersReady", ready, (!ready).then_some(not_ready_reason), (!ready).then_some(unready.as_str()), prev),
            condition("PodScheduled", true, None, None, prev),
        ],
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "startTime": prev.get("startTime").cloned().unwrap_or_else(|| json!(now())),
        "containerStatuses": [{
            "name": cname,
            "state": state,
            "lastState": if view.restart_count > 0 && view.running { json!({"terminated": terminated}) } else { json!({}) },
            "ready": ready,
            "restartCount": view.restart_count,
            "image": image,
            "imageID": view.image_id,
            "containerID": format!("docker://{}", view.id),
            "started": view.running,
        }],
        "qosClass": prev["qosClass"].clone(),
    });
    if let Some(ip) = view.ip.as_deref().filter(|ip| !ip.is_empty()) {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    } else if let Some(ip) = prev.get("podIP") {
        // A pod keeps its IP for life, even when a policy cuts it off.
        status["podIP"] = ip.clone();
        status["podIPs"] = prev["podIPs"].clone();
    }
    status
}

/// Status of a pod whose container cannot be created yet or at all:
/// Pending with the container waiting for `reason` (ErrImagePull,
/// ImagePullBackOff, CreateContainerConfigError, CreateContainerError).
pub fn status_waiting(pod: &Value, reason: &str, message: &str) -> Value {
    let prev = &pod["status"];
    let cname = container_name(pod);
    let unready = format!("containers with unready status: [{cname}]");
    json!({
        "phase": "Pending",
        "conditions": [
            condition("PodReadyToStartContainers", false, None, None, prev),
            condition("Initialized", true, None, None, prev),
            condition("Ready", false, Some("ContainersNotReady"), Some(&unready), prev),
            condition("ContainersReady", false, Some("ContainersNotReady"), Some(&unready), prev),
            condition("PodScheduled", true, None, None, prev),
        ],
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "startTime": prev.get("startTime").cloned().unwrap_or_else(|| json!(now())),
        "containerStatuses": [{
            "name": cname,
            "state": {"waiting": {"reason": reason, "message": message}},
            "lastState": {},
            "ready": false,
            "restartCount": 0,
            "image": pod["spec"]["containers"][0]["image"].clone(),
            "imageID": "",
            "started": false,
        }],
        "qosClass": prev["qosClass"].clone(),
    })
}

/// Status of a pod that can never run here (an unknown runtime class):
/// phase Failed with a reason, as an eviction or admission failure reads.
pub fn status_failed(pod: &Value, reason: &str, message: &str) -> Value {
    let mut status = status_waiting(pod, reason, message);
    status["phase"] = json!("Failed");
    status["reason"] = json!(reason);
    status["message"] = json!(message);
    status
}

/// A pod may change only its labels and annotations here (a real server
/// also allows image and a few scheduling fields).
pub fn check_update(old: &Value, new: &Value) -> ApiResult<()> {
    if old["spec"] != new["spec"] {
        return Err(ApiError::invalid(
            Kind::Pod,
            name_of(old),
            &[(
                "spec".into(),
                "Forbidden: pod updates may not change fields other than metadata labels and annotations on the test server".into(),
            )],
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}}, "spec": spec})
    }

    #[test]
    fn plan_maps_the_spec() {
        let p = pod(json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000},
            "containers": [{
                "name": "main", "image": "img:1", "command": ["sleep"], "args": ["infinity"],
                "env": [{"name": "A", "value": "1"}, {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": true},
                "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
            "restartPolicy": "Never",
        }));
        let plan = plan(&parse(&p).unwrap()).unwrap();
        assert_eq!(plan.entrypoint, Some(vec!["sleep".to_string()]));
        assert_eq!(plan.cmd, Some(vec!["infinity".to_string()]));
        assert_eq!(plan.env, vec!["A=1".to_string(), "N=p".to_string()]);
        assert_eq!(plan.run_as_user, Some(1000));
        assert!(plan.run_as_non_root && plan.read_only_root && plan.no_new_privileges);
        assert_eq!(plan.cap_drop, vec!["ALL".to_string()]);
        assert_eq!(plan.memory, Some(256 << 20));
        assert_eq!(plan.nano_cpus, Some(500_000_000));
        assert_eq!(plan.group_add, vec!["2000".to_string()]);
        assert_eq!(
            plan.tmpfs["/tmp"],
            "rw,exec,nosuid,nodev,mode=1777,size=67108864,uid=1000,gid=2000"
        );
        assert_eq!(plan.restart, "no");
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let p = pod(json!({
            "hostNetwork": true,
            "containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "i"}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        }));
        let err = plan(&parse(&p).unwrap()).unwrap_err();
        assert_eq!(err.code, 422);
        let fields: Vec<String> = err.details.unwrap()["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            fields,
            ["spec.containers", "spec.hostNetwork", "spec.volumes[0]"]
        );
    }

    #[test]
    fn defaults_and_status() {
        let p = prepare(pod(
            json!({"containers": [{"name": "main", "image": "img:1",
            "resources": {"limits": {"memory": "1Gi", "cpu": "1"}}}]}),
        ))
        .unwrap();
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["nodeName"], NODE_NAME);
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "1"
        );
        assert_eq!(p["status"]["qosClass"], "Guaranteed");
        assert_eq!(p["status"]["phase"], "Pending");
        let view = ContainerView {
            id: "abc".into(),
            running: true,
            ever_started: true,
            ip: Some("172.17.0.2".into()),
            ..Default::default()
        };
        let s = status_from_container(&p, &view);
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        assert_eq!(s["podIP"], "172.17.0.2");
        let mut p2 = p.clone();
        p2["status"] = s.clone();
        // Same state again: identical status (stable transition times).
        assert_eq!(status_from_container(&p2, &view), s);
        let exited = ContainerView {
            running: false,
            exit_code: 3,
            ..view
        };
        p2["spec"]["restartPolicy"] = json!("Never");
        let s = status_from_container(&p2, &exited);
        assert_eq!(s["phase"], "Failed");
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            3
        );
    }
}
