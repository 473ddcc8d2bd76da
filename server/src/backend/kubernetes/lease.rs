//! Liveness of server instances on Kubernetes: a coordination.k8s.io Lease
//! per instance, renewed every `RENEW`. An instance whose Leases have all
//! expired (or that has none, and pods older than the grace) is dead, and
//! any server removes its pods and policies.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};

use crate::backend::{LABEL_MARKER, LABEL_SERVER};

/// How long a Lease holds without renewal.
pub const DURATION_SECS: i32 = 6;
/// How often it is renewed.
pub const RENEW: Duration = Duration::from_secs(2);
/// Allowance for clocks that differ between servers.
const SKEW_SECS: i64 = 2;
/// Pods of an instance without any Lease are taken for alive this long
/// after their creation (it may be announcing right now).
pub const NO_LEASE_GRACE_SECS: i64 = 60;

pub fn now_secs() -> i64 {
    Timestamp::now().as_second()
}

/// A fresh Lease object for instance `server_id`.
pub fn lease(name: &str, server_id: &str) -> Lease {
    let now = MicroTime(Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                (LABEL_SERVER.to_string(), server_id.to_string()),
                (LABEL_MARKER.to_string(), "true".to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(server_id.to_string()),
            lease_duration_seconds: Some(DURATION_SECS),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..Default::default()
        }),
    }
}

/// When a Lease runs out (seconds since the epoch); `None` if it says
/// nothing usable.
pub fn expiry(lease: &Lease) -> Option<i64> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())?
        .0
        .as_second();
    Some(renewed + i64::from(spec.lease_duration_seconds.unwrap_or(DURATION_SECS)))
}

/// The instance a Lease belongs to.
pub fn holder(lease: &Lease) -> Option<String> {
    lease
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVER).cloned())
}

/// Instances with a Lease that has not run out.
pub fn alive(leases: &[Lease], now: i64) -> HashSet<String> {
    leases
        .iter()
        .filter(|l| expiry(l).is_some_and(|e| e + SKEW_SECS >= now))
        .filter_map(holder)
        .collect()
}

/// Instances that have Leases, all run out.
pub fn expired(leases: &[Lease], now: i64) -> HashSet<String> {
    let live = alive(leases, now);
    leases
        .iter()
        .filter_map(holder)
        .filter(|h| !live.contains(h))
        .collect()
}

/// Keeps one Lease renewed until dropped; then deletes it.
pub struct Renewal {
    task: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    name: String,
}

impl Renewal {
    /// Creates the Lease and starts renewing it. `retired` stops the
    /// renewal from putting back a Lease that was deleted (shutdown).
    pub async fn start(
        api: Api<Lease>,
        name: String,
        server_id: String,
        retired: Arc<AtomicBool>,
    ) -> kube::Result<Self> {
        api.create(&PostParams::default(), &lease(&name, &server_id))
            .await?;
        let task = {
            let api = api.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(RENEW);
                every.tick().await;
                loop {
                    every.tick().await;
                    if retired.load(Ordering::Relaxed) {
                        return;
                    }
                    let patch = serde_json::json!({
                        "spec": { "renewTime": MicroTime(Timestamp::now()) }
                    });
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {
                            // Removed behind our back: put it back.
                            tracing::warn!(lease = %name, "this instance's Lease was deleted; creating it again");
                            let _ = api
                                .create(&PostParams::default(), &lease(&name, &server_id))
                                .await;
                        }
                        Err(e) => {
                            tracing::warn!(lease = %name, error = %e, "could not renew this instance's Lease")
                        }
                    }
                }
            })
        };
        Ok(Self { task, api, name })
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.task.abort();
        let (api, name) = (self.api.clone(), self.name.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = api.delete(&name, &DeleteParams::default()).await;
            });
        }
    }
}

/// Deletes the Leases of `server_id` (a dead instance, or this one at
/// shutdown).
pub async fn delete_all(api: &Api<Lease>, server_id: &str) -> kube::Result<()> {
    let listed = api
        .list(&ListParams::default().labels(&format!("{LABEL_SERVER}={server_id},{LABEL_MARKER}")))
        .await?;
    for l in listed.items {
        if let Some(name) = l.metadata.name {
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
    }
    Ok(())
}

/// The dead instances among those with pods (`pods`: instance -> newest
/// pod's creation time), given every Lease.
pub fn dead(pods: &HashMap<String, i64>, leases: &[Lease], now: i64) -> Vec<String> {
    let live = alive(leases, now);
    let has_lease: HashSet<String> = leases.iter().filter_map(holder).collect();
    pods.iter()
        .filter(|(id, newest)| {
            !live.contains(*id) && (has_lease.contains(*id) || now - **newest > NO_LEASE_GRACE_SECS)
        })
        .map(|(id, _)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &str, server: &str, renewed: i64) -> Lease {
        let mut l = lease(name, server);
        let spec = l.spec.as_mut().unwrap();
        spec.renew_time = Some(MicroTime(Timestamp::from_second(renewed).unwrap()));
        l
    }

    #[test]
    fn instances_die_when_their_leases_run_out() {
        let now = 1_000_000;
        let leases = vec![
            at("a1", "a", now - 1),
            at("b1", "b", now - 100),
            // b's newer Lease keeps it alive.
            at("b2", "b", now),
            at("c1", "c", now - 100),
        ];
        let pods = HashMap::from([
            ("a".to_string(), now - 500),
            ("b".to_string(), now - 500),
            ("c".to_string(), now - 500),
            // No Lease: dead once its pods are old, alive while young.
            ("d".to_string(), now - 500),
            ("e".to_string(), now - 5),
        ]);
        let mut dead = dead(&pods, &leases, now);
        dead.sort();
        assert_eq!(dead, vec!["c", "d"]);
        assert_eq!(expired(&leases, now), HashSet::from(["c".to_string()]));
    }
}
