//! The kubelet of this server: runs each pod as a Docker container, writes
//! the pod's status from the container's state, follows Docker's events
//! (a container that dies or is removed behind the server's back), stops
//! and removes containers when pods are deleted, and applies deny-all
//! NetworkPolicies by cutting containers off their networks.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bollard::{
    errors::Error as BollardError,
    models::{
        ContainerCreateBody, ContainerInspectResponse, HostConfig, NetworkConnectRequest,
        NetworkDisconnectRequest, RestartPolicy, RestartPolicyNameEnum,
    },
    query_parameters::{
        CreateContainerOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions,
        ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
        StopContainerOptionsBuilder,
    },
};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{
    app::{App, LABEL_INSTANCE, LABEL_POD, LABEL_POD_LABEL, LABEL_UID, lock},
    kinds::Kind,
    netpol,
    pods::{self, ContainerPlan, ContainerView},
    store::{now, uid_of},
};

/// How often a pod waits again for a missing image (a kubelet backs off
/// the same way: ErrImagePull, then ImagePullBackOff, then retries).
const IMAGE_RETRY: Duration = Duration::from_secs(3);
/// How often Docker's state is compared with the pods, in case an event
/// was missed (the event stream reconnects after an engine restart).
const RECONCILE_EVERY: Duration = Duration::from_secs(10);

pub fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Whether the pod (this uid) still exists and is not being deleted.
fn alive(app: &App, ns: &str, name: &str, uid: &str) -> bool {
    app.store
        .get(Kind::Pod, ns, name)
        .is_ok_and(|p| uid_of(&p) == uid && p["metadata"]["deletionTimestamp"].is_null())
}

/// Writes a pod's status (if the pod is still this uid and not being
/// deleted). Unchanged status is no event.
fn set_status(app: &App, ns: &str, name: &str, uid: &str, status: impl FnOnce(&Value) -> Value) {
    let _ = app.store.update(Kind::Pod, ns, name, |pod| {
        if uid_of(pod) != uid || !pod["metadata"]["deletionTimestamp"].is_null() {
            return Ok(None);
        }
        let mut next = pod.clone();
        next["status"] = status(pod);
        Ok(Some(next))
    });
}

fn container_name(ns: &str, name: &str, uid: &str) -> String {
    format!("k8s-testserver_{ns}_{name}_{}", &uid[..uid.len().min(8)])
}

/// Runs a new pod: waits for its image, creates and starts its container,
/// and writes its status. Returns when the container runs or the pod
/// cannot run; events take over from there.
pub async fn run_pod(app: Arc<App>, ns: String, name: String, uid: String) {
    let mut attempts = 0u32;
    let (plan, image_user) = loop {
        let Ok(pod) = app.store.get(Kind::Pod, &ns, &name) else {
            return;
        };
        if !alive(&app, &ns, &name, &uid) {
            return;
        }
        let plan = match pods::parse(&pod).and_then(|p| pods::plan(&p)) {
            Ok(plan) => plan,
            Err(e) => {
                set_status(&app, &ns, &name, &uid, |p| {
                    pods::status_failed(p, "CreateContainerConfigError", &e.message)
                });
                return;
            }
        };
        if let Some(runtime) = &plan.runtime
            && !app.runtimes.contains(runtime)
        {
            let msg = format!(
                "runtime class {runtime:?}: Docker has no runtime of that name (it has {:?})",
                app.runtimes
            );
            set_status(&app, &ns, &name, &uid, |p| {
                pods::status_failed(p, "RuntimeClassNotFound", &msg)
            });
            return;
        }
        // Images are never pulled: a missing one waits like a failed pull.
        match app.docker.inspect_image(&plan.image).await {
            Ok(image) => {
                let user = image.config.and_then(|c| c.user).unwrap_or_default();
                break (plan, user);
            }
            Err(e) => {
                let reason = if attempts == 0 {
                    "ErrImagePull"
                } else {
                    "ImagePullBackOff"
                };
                let msg = match status_of(&e) {
                    Some(404) => format!(
                        "image {:?} is not present in the local Docker engine (the test server never pulls)",
                        plan.image
                    ),
                    _ => format!("inspecting image {:?}: {e}", plan.image),
                };
                set_status(&app, &ns, &name, &uid, |p| {
                    pods::status_waiting(p, reason, &msg)
                });
                attempts += 1;
                tokio::select! {
                    _ = app.cancel.cancelled() => return,
                    _ = tokio::time::sleep(IMAGE_RETRY) => {}
                }
            }
        }
    };

    let user = match effective_user(&plan, &image_user) {
        Ok(u) => u,
        Err(msg) => {
            set_status(&app, &ns, &name, &uid, |p| {
                pods::status_waiting(p, "CreateContainerConfigError", &msg)
            });
            return;
        }
    };

    let lifecycle = app.pod_lock(&uid);
    let _guard = lifecycle.lock().await;
    if !alive(&app, &ns, &name, &uid) {
        return;
    }
    let labels = match app.store.get(Kind::Pod, &ns, &name) {
        Ok(pod) => container_labels(&app, &pod),
        Err(_) => return,
    };
    let body = container_body(&plan, user, labels);
    let options = CreateContainerOptionsBuilder::default()
        .name(&container_name(&ns, &name, &uid))
        .build();
    let id = match app.docker.create_container(Some(options), body).await {
        Ok(created) => created.id,
        Err(e) => {
            let msg = e.to_string();
            set_status(&app, &ns, &name, &uid, |p| {
                pods::status_waiting(p, "CreateContainerError", &msg)
            });
            return;
        }
    };
    if app.cancel.is_cancelled() {
        // Shutting down: the sweep may already have run.
        remove_container(&app, &id).await;
        return;
    }
    {
        // Cut the network before the container ever runs when a deny-all
        // policy selects the pod; register it so later policies see it.
        let _net = app.net_lock.lock().await;
        if let Ok(pod) = app.store.get(Kind::Pod, &ns, &name) {
            let (policies, _) = app.store.list(Kind::NetworkPolicy, Some(&ns), |_| true);
            if netpol::isolated(&pod, &policies)
                && let Err(e) = set_network(&app, &id, true).await
            {
                tracing::warn!(pod = %format!("{ns}/{name}"), "cutting network: {e}");
            }
        }
        lock(&app.containers).insert(uid.clone(), id.clone());
    }
    if let Err(e) = app
        .docker
        .start_container(&id, None::<StartContainerOptions>)
        .await
    {
        let msg = e.to_string();
        set_status(&app, &ns, &name, &uid, |p| {
            pods::status_waiting(p, "RunContainerError", &msg)
        });
        return;
    }
    refresh(&app, &ns, &name, &uid).await;
}

/// The Docker user: runAsUser/runAsGroup over the image's user, checked
/// against runAsNonRoot as the kubelet does.
fn effective_user(plan: &ContainerPlan, image_user: &str) -> Result<String, String> {
    let image_uid = image_user.split(':').next().unwrap_or_default();
    let uid = match plan.run_as_user {
        Some(u) => u.to_string(),
        None if image_uid.is_empty() => "0".to_string(),
        None => image_uid.to_string(),
    };
    if plan.run_as_non_root {
        match uid.parse::<i64>() {
            Ok(0) => {
                return Err("container has runAsNonRoot and image will run as root".into());
            }
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "container has runAsNonRoot and image has non-numeric user ({uid}), cannot verify user is non-root"
                ));
            }
        }
    }
    Ok(match plan.run_as_group {
        Some(g) => format!("{uid}:{g}"),
        None if plan.run_as_user.is_none() && image_user.contains(':') => image_user.to_string(),
        None => uid,
    })
}

fn container_labels(app: &App, pod: &Value) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = crate::selector::labels_of(pod)
        .into_iter()
        .map(|(k, v)| (format!("{LABEL_POD_LABEL}{k}"), v))
        .collect();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    labels.insert(LABEL_POD.into(), format!("{ns}/{name}"));
    labels.insert(LABEL_UID.into(), uid_of(pod).to_string());
    labels.insert(LABEL_INSTANCE.into(), app.instance.clone());
    labels
}

fn container_body(
    plan: &ContainerPlan,
    user: String,
    labels: HashMap<String, String>,
) -> ContainerCreateBody {
    let mut security_opt = Vec::new();
    if plan.no_new_privileges {
        security_opt.push("no-new-privileges".to_string());
    }
    if plan.seccomp_unconfined {
        security_opt.push("seccomp=unconfined".to_string());
    }
    let host_config = HostConfig {
        memory: plan.memory,
        // No swap beyond the limit, as on a kubelet node.
        memory_swap: plan.memory,
        nano_cpus: plan.nano_cpus,
        readonly_rootfs: Some(plan.read_only_root),
        tmpfs: Some(plan.tmpfs.clone()),
        runtime: plan.runtime.clone(),
        cap_add: Some(plan.cap_add.clone()),
        cap_drop: Some(plan.cap_drop.clone()),
        privileged: Some(plan.privileged),
        security_opt: Some(security_opt),
        group_add: Some(plan.group_add.clone()),
        network_mode: Some("bridge".to_string()),
        restart_policy: Some(RestartPolicy {
            name: Some(match plan.restart {
                "always" => RestartPolicyNameEnum::ALWAYS,
                "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
                _ => RestartPolicyNameEnum::NO,
            }),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(plan.image.clone()),
        entrypoint: plan.entrypoint.clone(),
        cmd: plan.cmd.clone(),
        env: Some(plan.env.clone()),
        working_dir: plan.working_dir.clone(),
        user: Some(user),
        hostname: Some(plan.hostname.clone()),
        labels: Some(labels),
        stop_timeout: Some(plan.stop_timeout),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn view_of(info: &ContainerInspectResponse) -> ContainerView {
    let state = info.state.clone().unwrap_or_default();
    let ip = info
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .and_then(|n| n.values().find_map(|e| e.ip_address.clone()))
        .filter(|ip| !ip.is_empty());
    let started_at = pods::docker_time(state.started_at.as_deref());
    ContainerView {
        id: info.id.clone().unwrap_or_default(),
        image_id: format!("docker://{}", info.image.clone().unwrap_or_default()),
        running: state.running == Some(true),
        restarting: state.restarting == Some(true),
        ever_started: started_at.is_some(),
        exit_code: state.exit_code.unwrap_or_default(),
        oom_killed: state.oom_killed == Some(true),
        started_at,
        finished_at: pods::docker_time(state.finished_at.as_deref()),
        restart_count: info.restart_count.unwrap_or_default(),
        ip,
        error: state.error.filter(|e| !e.is_empty()),
    }
}

/// Re-reads a pod's container and writes the pod's status. A container
/// that no longer exists makes the pod go away.
pub async fn refresh(app: &App, ns: &str, name: &str, uid: &str) {
    let Some(id) = app.container_of(uid) else {
        return;
    };
    match app
        .docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
    {
        Ok(info) => {
            let view = view_of(&info);
            set_status(app, ns, name, uid, |p| {
                pods::status_from_container(p, &view)
            });
        }
        Err(e) if status_of(&e) == Some(404) => vanished(app, ns, name, uid),
        Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), "inspect: {e}"),
    }
}

/// The container of a live pod was removed behind the server's back (a
/// `docker rm -f`): the pod goes away with a DELETED event, as a pod on a
/// lost node is eventually removed.
fn vanished(app: &App, ns: &str, name: &str, uid: &str) {
    if !alive(app, ns, name, uid) {
        return;
    }
    lock(&app.containers).remove(uid);
    lock(&app.pod_locks).remove(uid);
    if app.store.remove(Kind::Pod, ns, name, Some(uid)).is_ok() {
        tracing::info!(pod = %format!("{ns}/{name}"), "container removed outside the server: pod deleted");
    }
}

/// Deletes a pod for real: stops its container within the grace period,
/// removes it, and then removes the pod (DELETED). Runs after the pod got
/// its deletionTimestamp.
pub async fn terminate(app: Arc<App>, ns: String, name: String, uid: String, grace: i64) {
    let lifecycle = app.pod_lock(&uid);
    let _guard = lifecycle.lock().await;
    let mut ids: Vec<String> = app.container_of(&uid).into_iter().collect();
    // Also any container of this uid not registered yet.
    ids.extend(list_ids(&app, &format!("{LABEL_UID}={uid}")).await);
    ids.sort();
    ids.dedup();
    for id in &ids {
        if grace > 0 {
            let options = StopContainerOptionsBuilder::default()
                .t(i32::try_from(grace).unwrap_or(i32::MAX))
                .build();
            let stop = app.docker.stop_container(id, Some(options));
            tokio::select! {
                _ = app.cancel.cancelled() => {}
                r = stop => if let Err(e) = r && !matches!(status_of(&e), Some(304 | 404)) {
                    tracing::warn!(pod = %format!("{ns}/{name}"), "stop: {e}");
                }
            }
        }
        remove_container(&app, id).await;
    }
    lock(&app.containers).remove(&uid);
    lock(&app.pod_locks).remove(&uid);
    let _ = app.store.remove(Kind::Pod, &ns, &name, Some(&uid));
}

async fn remove_container(app: &App, id: &str) {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match app.docker.remove_container(id, Some(options)).await {
        Ok(()) => {}
        Err(e) if matches!(status_of(&e), Some(404 | 409)) => {}
        Err(e) => tracing::warn!(container = id, "remove: {e}"),
    }
}

/// Ids of this instance's containers that also carry `label` (`k=v`).
async fn list_ids(app: &App, label: &str) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_INSTANCE}={}", app.instance),
            label.to_string(),
        ],
    )]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    match app.docker.list_containers(Some(options)).await {
        Ok(list) => list.into_iter().filter_map(|c| c.id).collect(),
        Err(e) => {
            tracing::warn!("list containers: {e}");
            Vec::new()
        }
    }
}

/// Removes every container this instance created (shutdown).
pub async fn remove_all(app: &App) {
    let ids = list_ids(app, LABEL_INSTANCE).await;
    futures::future::join_all(ids.iter().map(|id| remove_container(app, id))).await;
}

/// Connects a container to the default bridge, or cuts it off every
/// network (`isolated`). Idempotent.
pub async fn set_network(app: &App, id: &str, isolated: bool) -> Result<(), BollardError> {
    let info = app
        .docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await?;
    let networks: Vec<String> = info
        .network_settings
        .and_then(|n| n.networks)
        .map(|n| n.into_keys().collect())
        .unwrap_or_default();
    if isolated {
        for network in networks {
            let request = NetworkDisconnectRequest {
                container: id.to_string(),
                force: Some(true),
            };
            app.docker.disconnect_network(&network, request).await?;
        }
    } else if networks.is_empty() {
        let request = NetworkConnectRequest {
            container: id.to_string(),
            endpoint_config: None,
        };
        app.docker.connect_network("bridge", request).await?;
    }
    Ok(())
}

/// Applies the namespace's NetworkPolicies to every pod in it that has a
/// container. Called after a policy is created, changed or deleted, and
/// after a pod's labels change; returns once Docker has applied them.
pub async fn enforce_namespace(app: &App, ns: &str) {
    let _net = app.net_lock.lock().await;
    let (policies, _) = app.store.list(Kind::NetworkPolicy, Some(ns), |_| true);
    let (pods, _) = app.store.list(Kind::Pod, Some(ns), |_| true);
    for pod in pods {
        let Some(id) = app.container_of(uid_of(&pod)) else {
            continue;
        };
        let isolate = netpol::isolated(&pod, &policies);
        if let Err(e) = set_network(app, &id, isolate).await
            && status_of(&e) != Some(404)
        {
            tracing::warn!(container = %id, isolate, "network: {e}");
        }
    }
}

/// Follows Docker's container events for this instance until shutdown,
/// resubscribing (and reconciling) when the stream breaks, and reconciling
/// now and then in case an event was missed.
pub async fn follow_events(app: Arc<App>) {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        (
            "label".to_string(),
            vec![format!("{LABEL_INSTANCE}={}", app.instance)],
        ),
    ]);
    loop {
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        let mut events = app.docker.events(Some(options));
        reconcile(&app).await;
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = app.cancel.cancelled() => return,
                _ = tick.tick() => reconcile(&app).await,
                event = events.next() => match event {
                    Some(Ok(event)) => on_event(&app, event).await,
                    Some(Err(e)) => {
                        tracing::warn!("docker events: {e}");
                        break;
                    }
                    None => break,
                },
            }
        }
        tokio::select! {
            _ = app.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn on_event(app: &App, event: bollard::models::EventMessage) {
    let Some(attributes) = event.actor.and_then(|a| a.attributes) else {
        return;
    };
    let (Some(pod), Some(uid)) = (attributes.get(LABEL_POD), attributes.get(LABEL_UID)) else {
        return;
    };
    let Some((ns, name)) = pod.split_once('/') else {
        return;
    };
    match event.action.as_deref() {
        Some("destroy") => vanished(app, ns, name, uid),
        Some("start" | "die" | "oom" | "restart" | "pause" | "unpause") => {
            refresh(app, ns, name, uid).await
        }
        _ => {}
    }
}

/// Compares the pods with Docker's containers: a pod whose container is
/// gone goes away; a pod whose container changed state gets a fresh
/// status.
async fn reconcile(app: &App) {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_INSTANCE}={}", app.instance)],
    )]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(list) = app.docker.list_containers(Some(options)).await else {
        return;
    };
    let present: HashMap<String, String> = list
        .into_iter()
        .filter_map(|c| Some((c.id?, format!("{:?}", c.state?).to_lowercase())))
        .collect();
    let (pods, _) = app.store.list(Kind::Pod, None, |_| true);
    for pod in pods {
        let uid = uid_of(&pod).to_string();
        let Some(id) = app.container_of(&uid) else {
            continue;
        };
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        match present.get(&id) {
            None => vanished(app, ns, name, &uid),
            Some(state) => {
                let running = state.contains("running");
                if running
                    != (pod["status"]["phase"] == "Running"
                        && pod["status"]["containerStatuses"][0]["ready"] == json!(true))
                {
                    refresh(app, ns, name, &uid).await;
                }
            }
        }
    }
}

/// Marks a pod as terminating (deletionTimestamp, grace period) and
/// returns it; the caller starts `terminate`.
pub fn mark_deleting(
    app: &App,
    ns: &str,
    name: &str,
    grace: i64,
) -> crate::error::ApiResult<Value> {
    app.store.update(Kind::Pod, ns, name, |pod| {
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            return Ok(None);
        }
        let mut next = pod.clone();
        next["metadata"]["deletionTimestamp"] = json!(now());
        next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        Ok(Some(next))
    })
}
