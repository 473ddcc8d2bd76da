//! Peers found through the Kubernetes API: the EndpointSlices
//! (discovery.k8s.io/v1) of a headless Service over the replicas, watched,
//! so that replicas come and go at run time.
//!
//! A peer is an endpoint's `targetRef.name` (its pod's name, which is the
//! replica name each pod gets from the downward API) at its first address
//! and the Service's port. Every listed endpoint counts, whatever its
//! conditions: the Service lists not-ready pods too
//! (`publishNotReadyAddresses`), a replica that drains reports NOT_SERVING
//! (`serving: false`, `terminating: true`) and still owns leases, and a pod
//! that is listed exists. A replica no slice lists any more is gone: its
//! pod was deleted, and its leases with it (`ForwardError::OwnerLeft`).
//!
//! The watch is kube's watcher (list, then watch from its resourceVersion,
//! relist on 410, with backoff while the API server does not answer); the
//! set is replaced at each change, and after a relist only once it is
//! complete, so peers do not flicker.

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use tokio_util::sync::CancellationToken;

use super::{Cluster, PeerConfig, check_replica_name};
use crate::backend::{KubeError, KubernetesSettings};

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";
/// The Service port peers are reached on when the config names none: the
/// gRPC port's name in deploy/kubernetes/base/services.yaml.
pub const DEFAULT_PORT: &str = "grpc";

/// `[cluster.kubernetes]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The headless Service over the replicas.
    pub service: String,
    /// Its namespace; else `[kubernetes] lease_namespace`, else the client
    /// configuration's namespace (in a pod: the pod's own).
    pub namespace: Option<String>,
    pub port: PortRef,
    pub scheme: Scheme,
    /// The name `https://` peers' certificates are checked against: they are
    /// reached by pod IP, which a certificate rarely names.
    pub tls_name: Option<String>,
}

/// Which port of an endpoint: the slice's port of that name, or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Name(String),
    Number(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl DiscoveryConfig {
    /// What is watched, for messages.
    pub fn source(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("Service {ns}/{}", self.service),
            None => format!("Service {}", self.service),
        }
    }
}

/// Why discovery cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("[cluster.kubernetes] peer discovery: {0}")]
    Client(#[from] KubeError),
}

/// The peers one slice lists: each endpoint with a pod name that can be a
/// replica name and an address, at the configured port (a slice without
/// the named port lists none).
pub fn peers_of(slice: &EndpointSlice, config: &DiscoveryConfig) -> Vec<PeerConfig> {
    let slice_name = slice.metadata.name.as_deref().unwrap_or_default();
    let port = match &config.port {
        PortRef::Number(n) => Some(*n),
        PortRef::Name(name) => slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok()),
    };
    let Some(port) = port else {
        if !slice.endpoints.is_empty() {
            tracing::warn!(slice = slice_name, port = ?config.port, "an EndpointSlice without the peers' port: its endpoints are left out");
        }
        return Vec::new();
    };
    let scheme = config.scheme.as_str();
    slice
        .endpoints
        .iter()
        .filter_map(|endpoint| {
            let name = endpoint.target_ref.as_ref()?.name.clone()?;
            if let Err(why) = check_replica_name(&name) {
                tracing::warn!(slice = slice_name, %why, "an endpoint whose pod cannot be a replica is left out");
                return None;
            }
            let host = endpoint.addresses.first()?;
            let address = match slice.address_type.as_str() {
                "IPv6" => format!("{scheme}://[{host}]:{port}"),
                _ => format!("{scheme}://{host}:{port}"),
            };
            Some(PeerConfig { name, address })
        })
        .collect()
}

/// Every slice's peers, by slice name, as one list (a pod in two slices,
/// as in a dual-stack Service, counts once: `Cluster::set_peers` keeps its
/// first).
fn all_peers(slices: &BTreeMap<String, Vec<PeerConfig>>) -> Vec<PeerConfig> {
    slices.values().flatten().cloned().collect()
}

/// Starts watching the replicas' EndpointSlices for `cluster`, until
/// `stop`. Fails only on a client configuration that cannot work; an API
/// server that does not answer is retried with backoff (the first list is
/// waited for by `Cluster::listed`).
pub async fn start(
    cluster: Arc<Cluster>,
    config: DiscoveryConfig,
    kubernetes: &KubernetesSettings,
    stop: CancellationToken,
) -> Result<(), DiscoveryError> {
    let client_config = crate::backend::client_config(kubernetes).await?;
    let namespace = config
        .namespace
        .clone()
        .or_else(|| kubernetes.lease_namespace.clone())
        .unwrap_or_else(|| client_config.default_namespace.clone());
    let endpoint = client_config.cluster_url.to_string();
    let client = kube::Client::try_from(client_config)
        .map_err(|e| KubeError::from_kube("peer discovery client", &endpoint, e))?;
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    tracing::info!(
        %endpoint,
        %namespace,
        service = %config.service,
        "finding peers through the EndpointSlices of the Service"
    );
    crate::supervise::spawn("peer discovery", move || {
        let (cluster, config, api, stop) = (
            Arc::clone(&cluster),
            config.clone(),
            api.clone(),
            stop.clone(),
        );
        async move {
            tokio::select! {
                _ = follow(api, &cluster, &config) => {}
                _ = stop.cancelled() => {}
            }
        }
    });
    Ok(())
}

async fn follow(api: Api<EndpointSlice>, cluster: &Cluster, config: &DiscoveryConfig) {
    let selector = format!("{SERVICE_LABEL}={}", config.service);
    let mut events = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut slices: BTreeMap<String, Vec<PeerConfig>> = BTreeMap::new();
    // The slices of a (re)list in progress: they replace `slices` whole
    // once complete.
    let mut relist: Option<BTreeMap<String, Vec<PeerConfig>>> = None;
    let name_of = |slice: &EndpointSlice| slice.metadata.name.clone().unwrap_or_default();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => relist = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(slice)) => {
                if let Some(relist) = relist.as_mut() {
                    relist.insert(name_of(&slice), peers_of(&slice, config));
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(listed) = relist.take() {
                    slices = listed;
                }
                cluster.set_peers(&all_peers(&slices));
            }
            Ok(watcher::Event::Apply(slice)) => {
                slices.insert(name_of(&slice), peers_of(&slice, config));
                cluster.set_peers(&all_peers(&slices));
            }
            Ok(watcher::Event::Delete(slice)) => {
                slices.remove(&name_of(&slice));
                cluster.set_peers(&all_peers(&slices));
            }
            // The peers known stay as they are; the watcher retries with
            // backoff and relists.
            Err(e) => {
                tracing::warn!(error = %e, service = %config.service, "peer discovery: the EndpointSlice watch failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::{
        core::v1::ObjectReference,
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
    };

    fn config(port: PortRef) -> DiscoveryConfig {
        DiscoveryConfig {
            service: "sandpool-peers".into(),
            namespace: None,
            port,
            scheme: Scheme::Http,
            tls_name: None,
        }
    }

    fn endpoint(pod: Option<&str>, ip: &str, serving: bool, ready: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(!serving),
            }),
            target_ref: pod.map(|name| ObjectReference {
                kind: Some("Pod".into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(address_type: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: address_type.into(),
            endpoints,
            ports: Some(vec![EndpointPort {
                name: Some("grpc".into()),
                port: Some(50051),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_become_peers_by_pod_name() {
        let s = slice(
            "IPv4",
            vec![
                endpoint(Some("sandpool-1"), "10.0.0.1", true, true),
                // Draining: not serving, still listed, still a peer.
                endpoint(Some("sandpool-2"), "10.0.0.2", false, true),
                endpoint(Some("sandpool-3"), "10.0.0.3", true, false),
                endpoint(None, "10.0.0.4", true, true),
                endpoint(Some("Not.A.Replica"), "10.0.0.5", true, true),
            ],
        );
        let peers = peers_of(&s, &config(PortRef::Name("grpc".into())));
        let got: Vec<(&str, &str)> = peers
            .iter()
            .map(|p| (p.name.as_str(), p.address.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("sandpool-1", "http://10.0.0.1:50051"),
                ("sandpool-2", "http://10.0.0.2:50051"),
                ("sandpool-3", "http://10.0.0.3:50051"),
            ]
        );
    }

    #[test]
    fn ports_by_name_or_number_and_ipv6() {
        let s = slice("IPv6", vec![endpoint(Some("a"), "fd00::1", true, true)]);
        assert_eq!(
            peers_of(&s, &config(PortRef::Number(7000)))[0].address,
            "http://[fd00::1]:7000"
        );
        let mut https = config(PortRef::Name("grpc".into()));
        https.scheme = Scheme::Https;
        assert_eq!(peers_of(&s, &https)[0].address, "https://[fd00::1]:50051");
        assert!(peers_of(&s, &config(PortRef::Name("metrics".into()))).is_empty());
    }
}
