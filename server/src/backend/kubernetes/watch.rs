//! Engine events on Kubernetes: a pod watch (kube's watcher, resourceVersion
//! and bookmarks) that reports pods that died (failed, evicted, being
//! deleted) or were removed behind the pool's back, in every namespace the
//! backend uses, plus a look at the
//! instance Leases every `lease::RENEW` that reports an instance whose
//! Leases ran out the way Docker reports a marker that exited. Read on a
//! thread of its own, as Docker's events are, so that a busy server runtime
//! never delays them.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{Api, Client, api::ListParams, runtime::watcher};

use super::{lease, pod::pod_id};
use crate::backend::{
    ContainerEvent, ContainerEventKind, Error, LABEL_MARKER, LABEL_SERVER, Result,
};

/// Whether a pod can no longer be used: being deleted, ended, or its
/// container terminated.
pub fn pod_dead(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return true;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    if matches!(status.phase.as_deref(), Some("Failed" | "Succeeded")) {
        return true;
    }
    status
        .container_statuses
        .iter()
        .flatten()
        .any(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()) || c.restart_count > 0)
}

/// Whether a pod runs and may be used.
pub fn pod_running(pod: &Pod) -> bool {
    !pod_dead(pod)
        && pod.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.container_statuses
                    .iter()
                    .flatten()
                    .any(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
        })
}

fn labels(pod: &Pod) -> HashMap<String, String> {
    pod.metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Starts following pods labelled `label` in each of `namespaces` (ids as
/// `pod::pod_id` makes them, `home` being the backend's own namespace) and
/// the Leases in `lease_namespace`.
///
/// One watch per namespace, not one across the cluster: the namespaces are
/// the operator's fixed list, a cluster-wide pod watch would need a
/// ClusterRole that reads every pod of the cluster (more than the server
/// may see), and each namespace's watch keeps its own resourceVersion, as
/// the API server keeps one per list.
pub async fn events(
    config: kube::Config,
    home: String,
    namespaces: Vec<String>,
    lease_namespace: String,
    label: String,
) -> Result<BoxStream<'static, Result<ContainerEvent>>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let failed = |detail: String| Error::Engine {
        op: "pod watch",
        detail,
    };
    std::thread::Builder::new()
        .name("sandpool-kubernetes-watch".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let endpoint = config.cluster_url.to_string();
                let client = match Client::try_from(config) {
                    Ok(client) => client,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                if let Err(e) = client.apiserver_version().await {
                    let _ = ready_tx.send(Err(format!("{endpoint}: {e}")));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                let pods: Vec<(String, Api<Pod>)> = namespaces
                    .into_iter()
                    .map(|ns| {
                        let api = Api::namespaced(client.clone(), &ns);
                        (ns, api)
                    })
                    .collect();
                let leases: Api<Lease> = Api::namespaced(client, &lease_namespace);
                tokio::select! {
                    _ = follow(home, pods, leases, label, tx) => {}
                    _ = stopped => {}
                }
            });
        })
        .map_err(|e| failed(e.to_string()))?;
    match ready.await {
        Ok(Ok(())) => {}
        Ok(Err(detail)) => {
            return Err(Error::Unreachable {
                backend: crate::backend::BackendKind::Kubernetes,
                endpoint: "the API server".into(),
                detail,
            });
        }
        Err(_) => return Err(failed("the watch ended before it started".into())),
    }
    let stream = futures::stream::unfold((rx, stop), |(mut rx, stop)| async move {
        rx.recv().await.map(|event| (event, (rx, stop)))
    });
    Ok(stream.boxed())
}

type Sender = tokio::sync::mpsc::UnboundedSender<Result<ContainerEvent>>;

async fn follow(
    home: String,
    pods: Vec<(String, Api<Pod>)>,
    leases: Api<Lease>,
    label: String,
    tx: Sender,
) {
    // Each namespace's watcher, its items tagged with the namespace's
    // index, merged into one stream.
    let namespaces: Vec<String> = pods.iter().map(|(ns, _)| ns.clone()).collect();
    let mut watch =
        futures::stream::select_all(pods.into_iter().enumerate().map(|(i, (_, api))| {
            watcher(api, watcher::Config::default().labels(&label))
                .map(move |item| (i, item))
                .boxed()
        }));
    let id_of = |i: usize, pod: &Pod| {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        pod_id(
            &home,
            namespaces.get(i).map_or(home.as_str(), String::as_str),
            name,
        )
    };
    let mut reported: HashSet<String> = HashSet::new();
    let mut expired_reported: HashSet<String> = HashSet::new();
    let mut inits: HashMap<usize, u32> = HashMap::new();
    let mut every = tokio::time::interval(lease::RENEW);
    loop {
        tokio::select! {
            item = watch.next() => {
                let (i, event) = match item {
                    Some((i, Ok(event))) => (i, event),
                    Some((_, Err(e))) => {
                        // The stream ends like Docker's when its connection
                        // does: the watcher of the engine probes, reconnects
                        // and reconciles.
                        let _ = tx.send(Err(Error::Engine { op: "pod watch", detail: e.to_string() }));
                        return;
                    }
                    None => return,
                };
                let sent = match event {
                    watcher::Event::Init => {
                        // Each namespace's watch starts with one Init.
                        let count = inits.entry(i).or_insert(0);
                        *count += 1;
                        if *count > 1 {
                            // A relist: deletions in the gap are not
                            // reported one by one, so start over (the
                            // reconcile after a reconnect finds them).
                            let _ = tx.send(Err(Error::Engine { op: "pod watch", detail: "the watch was restarted".into() }));
                            return;
                        }
                        Ok(())
                    }
                    watcher::Event::InitDone => Ok(()),
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                        let id = id_of(i, &pod);
                        if pod_dead(&pod) && reported.insert(id.clone()) {
                            tx.send(Ok(ContainerEvent { id, labels: labels(&pod), kind: ContainerEventKind::Died }))
                        } else {
                            Ok(())
                        }
                    }
                    watcher::Event::Delete(pod) => {
                        let id = id_of(i, &pod);
                        reported.remove(&id);
                        tx.send(Ok(ContainerEvent { id, labels: labels(&pod), kind: ContainerEventKind::Removed }))
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            _ = every.tick() => {
                let Ok(listed) = leases.list(&ListParams::default().labels(LABEL_MARKER)).await else {
                    continue;
                };
                let expired = lease::expired(&listed.items, lease::now_secs());
                for server in expired.iter().filter(|s| !expired_reported.contains(*s)) {
                    let event = ContainerEvent {
                        id: format!("lease/{server}"),
                        labels: HashMap::from([
                            (LABEL_SERVER.to_string(), server.clone()),
                            (LABEL_MARKER.to_string(), "true".to_string()),
                        ]),
                        kind: ContainerEventKind::Died,
                    };
                    if tx.send(Ok(event)).is_err() {
                        return;
                    }
                }
                expired_reported = expired;
            }
        }
    }
}
