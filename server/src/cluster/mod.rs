//! Several replicas behind one address: which replica owns a lease, and the
//! peers a call is forwarded to when it reaches a replica that does not.
//!
//! A lease belongs to the replica that granted it, and its id says which:
//! `<replica>.<instance><random>` (see `lease_id`; a server without
//! `[cluster]` keeps plain ids). Peers come from a static list in the
//! config, or from the Kubernetes API (`discovery`: the EndpointSlices of a
//! headless Service, watched, so the set changes at run time); they prove
//! themselves to each other with a shared peer token or client certificates
//! (`tls`), and pass the caller's identity in a header only a peer may set
//! (`caller`). The forwarding of each call is the api layer's
//! (`api::forward`); this module knows the replicas and how to reach them,
//! not the RPCs.

pub mod caller;
pub mod discovery;
pub mod lease_id;
pub mod liveness;
pub mod tls;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, OnceLock, RwLock},
    time::Duration,
};

use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::sync::{read, write};
pub use discovery::{DiscoveryConfig, PortRef, Scheme};

/// How long connecting to a peer may take before the call is UNAVAILABLE:
/// a replica on the same network answers within milliseconds, and a caller
/// waiting on a dead one should hear so soon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on idle peer connections, so a peer that vanished without
/// closing them is noticed before the next call.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long after start a call for a peer's lease may wait for discovery's
/// first list: before it, a replica missing from the set may just not be
/// listed yet, and must not be reported gone. After it, calls no longer
/// wait (the API server is down): such a lease is UNAVAILABLE, retryable.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);

/// `[cluster]`, validated: this replica and the peers it forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This replica's name: the prefix of its lease ids.
    pub replica: String,
    /// The other replicas (an entry naming this replica is left out, so one
    /// list can serve every replica).
    pub peers: Vec<PeerConfig>,
    /// The secret replicas show each other; required when there are peers,
    /// unless they prove themselves with `peer_cert` (mutual TLS).
    pub peer_token: Option<String>,
    /// CA (PEM) of the peers' certificates, for `https://` peers; on a TLS
    /// listener, a client certificate it signed proves a peer (`tls`).
    pub peer_ca: Option<PathBuf>,
    /// Peers found through the Kubernetes API instead of `peers`
    /// (`[cluster.kubernetes]`; the two exclude each other).
    pub kubernetes: Option<DiscoveryConfig>,
    /// This replica's client certificate and key (PEM) for `https://`
    /// peers (mutual TLS): set together, or neither.
    pub peer_cert: Option<PathBuf>,
    pub peer_key: Option<PathBuf>,
    /// How long a peer may answer nothing before its leases are presumed
    /// ended with it (`liveness`); `None`: never.
    pub peer_dead_after: Option<Duration>,
}

/// A peer as the config names it (or discovery finds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub name: String,
    /// `http://host:port` or `https://host:port`.
    pub address: String,
}

/// Why a peer cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The CA, or this replica's certificate or key, for peers.
    #[error(transparent)]
    Credentials(#[from] tls::TlsError),
    #[error("cluster peer {name:?}: {address:?} is not an address: {detail}")]
    Address {
        name: String,
        address: String,
        detail: String,
    },
    #[error("cluster peer {name:?} is https: set cluster.peer_ca to the CA of its certificate")]
    NoCa { name: String },
    #[error("cluster peer {name:?}: TLS: {detail}")]
    Tls { name: String, detail: String },
}

/// Why a replica name cannot be one: it is the prefix of lease ids, up to
/// the first dot, so it has no dot; and it is short and plain, because it
/// travels in every id.
pub fn check_replica_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a replica name (1 to 63 of a-z, 0-9 and '-', starting with a letter or digit)"
        ))
    }
}

/// The replica a lease id names, if it names one.
pub fn replica_of(lease_id: &str) -> Option<&str> {
    lease_id.split_once('.').map(|(replica, _)| replica)
}

/// A call for a lease could not reach the lease's owner.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(
        "lease {lease_id} belongs to replica {replica:?}, which replica {this:?} does not know \
         (its peers: {known}); every replica's [cluster] peers must list every replica"
    )]
    UnknownReplica {
        lease_id: String,
        replica: String,
        this: String,
        known: String,
    },
    #[error(
        "replica {replica:?} ({address}), which owns lease {lease_id}, does not answer: {detail}; \
         retry, or acquire a new lease if it stays down"
    )]
    Unreachable {
        lease_id: String,
        replica: String,
        address: String,
        detail: String,
    },
    /// Nothing listens at the owner's address: the process that held the
    /// lease is gone. A lease lives only in its replica's memory (a replica
    /// restarted under the same name does not know it either, and a
    /// draining one keeps listening until its leases are done), so the
    /// lease ended with it.
    #[error(
        "replica {replica:?} ({address}), which owned lease {lease_id}, is gone (nothing \
         listens there): the lease ended with it; acquire a new lease"
    )]
    OwnerGone {
        lease_id: String,
        replica: String,
        address: String,
    },
    /// Discovery lists the replicas, and the owner is not among them any
    /// more (or never was since this replica started): its pod is gone, and
    /// the lease, which lived only in its memory, with it. Answered at once,
    /// not after a connect timeout to an address that may stop answering
    /// at all.
    #[error(
        "replica {replica:?}, which owned lease {lease_id}, is gone (no EndpointSlice of {listing} \
         lists it): the lease ended with it; acquire a new lease"
    )]
    OwnerLeft {
        lease_id: String,
        replica: String,
        listing: String,
    },
    /// The owner has answered nothing (not even its health check) for
    /// `peer_dead_after`: presumed dead (see `liveness`), and the lease,
    /// which lived only in its memory, with it.
    #[error(
        "replica {replica:?} ({address}), which owned lease {lease_id}, has answered nothing for \
         {silent_s} s and is presumed gone: the lease ended with it; acquire a new lease"
    )]
    OwnerSilent {
        lease_id: String,
        replica: String,
        address: String,
        silent_s: u64,
    },
    /// Discovery has not listed the replicas yet (the API server did not
    /// answer in time), so whether the owner lives is unknown.
    #[error(
        "lease {lease_id} belongs to replica {replica:?}, and the EndpointSlices of {listing} could not be \
         listed yet: retry"
    )]
    NotListed {
        lease_id: String,
        replica: String,
        listing: String,
    },
    /// A caller asked for one replica's own answer, and it does not answer.
    #[error("replica {replica:?} ({address}) does not answer: {detail}")]
    ReplicaUnreachable {
        replica: String,
        address: String,
        detail: String,
    },
    /// A peer forwarded a call here for a lease of a third replica: the
    /// peer lists disagree. Not forwarded again, so a loop cannot form.
    #[error(
        "lease {lease_id} belongs to replica {replica:?}, but a peer forwarded the call to \
         replica {this:?}: the replicas' [cluster] peers lists disagree"
    )]
    Misrouted {
        lease_id: String,
        replica: String,
        this: String,
    },
}

/// A peer replica and its channel, made on first use and shared by every
/// call after it (tonic multiplexes them over one HTTP/2 connection and
/// reconnects when it breaks).
pub struct Peer {
    pub name: String,
    pub address: String,
    endpoint: Endpoint,
    channel: OnceLock<Channel>,
    /// What its health probes found.
    pub liveness: liveness::Liveness,
    dead_after: Option<Duration>,
}

impl Peer {
    /// The channel to the peer; connecting happens on the first call, so a
    /// peer that is down costs nothing until a lease of it is used.
    pub fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }

    /// Whether it has answered nothing for `peer_dead_after`: its leases
    /// are presumed ended with it (see `liveness`).
    pub fn presumed_dead(&self) -> bool {
        self.dead_after
            .zip(self.liveness.silent_for())
            .is_some_and(|(after, silent)| silent >= after)
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.name)
            .field("address", &self.address)
            .finish()
    }
}

/// One peer's endpoint: its timeouts and keepalives, and TLS for `https://`
/// peers. Nothing connects yet.
fn endpoint(
    name: &str,
    address: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, PeerError> {
    let mut endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|e| PeerError::Address {
            name: name.to_string(),
            address: address.to_string(),
            detail: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_while_idle(true);
    if address.starts_with("https://") {
        let tls = tls.cloned().ok_or_else(|| PeerError::NoCa {
            name: name.to_string(),
        })?;
        endpoint = endpoint.tls_config(tls).map_err(|e| PeerError::Tls {
            name: name.to_string(),
            detail: e.to_string(),
        })?;
    }
    Ok(endpoint)
}

/// The client TLS of `https://` peers: `peer_ca`, and the name their
/// certificates are checked against when discovery reaches them by IP.
fn peer_tls(config: &ClusterConfig) -> Result<Option<ClientTlsConfig>, PeerError> {
    let Some(mut tls) = tls::client_tls(config)? else {
        return Ok(None);
    };
    if let Some(name) = config.kubernetes.as_ref().and_then(|k| k.tls_name.as_ref()) {
        tls = tls.domain_name(name.clone());
    }
    Ok(Some(tls))
}

/// Where a lease-scoped call runs.
#[derive(Debug)]
pub enum Route {
    /// Here: the lease is this replica's (or names no replica, and then it
    /// is unknown here as anywhere).
    Local,
    /// At its owner.
    Peer(Arc<Peer>),
}

type PeerSet = Arc<BTreeMap<String, Arc<Peer>>>;

/// Discovery's state as routing needs it: what it lists, and whether it
/// has listed once.
#[derive(Debug)]
struct Listing {
    /// `Service NS/NAME` (its EndpointSlices), for messages.
    source: String,
    listed: tokio::sync::watch::Sender<bool>,
    /// Until when a call waits for the first list.
    first_list_by: Instant,
}

/// This replica among its peers; a server without `[cluster]` is alone and
/// routes everything to itself. The peers are a snapshot, replaced as a
/// whole when discovery sees the set change; a call works on the snapshot
/// it took.
#[derive(Debug, Default)]
pub struct Cluster {
    replica: Option<String>,
    peers: RwLock<PeerSet>,
    peer_token: Option<String>,
    tls: Option<ClientTlsConfig>,
    listing: Option<Listing>,
    dead_after: Option<Duration>,
}

impl Cluster {
    /// A server on its own.
    pub fn alone() -> Self {
        Self::default()
    }

    /// The replicas of `config`, their endpoints checked (nothing connects
    /// yet). With `[cluster.kubernetes]` the set starts empty, and
    /// `discovery` fills it.
    pub fn new(config: &ClusterConfig) -> Result<Self, PeerError> {
        let tls = peer_tls(config)?;
        let mut peers = BTreeMap::new();
        for peer in &config.peers {
            peers.insert(
                peer.name.clone(),
                Arc::new(Self::make_peer(tls.as_ref(), config.peer_dead_after, peer)?),
            );
        }
        let listing = config.kubernetes.as_ref().map(|k| Listing {
            source: k.source(),
            listed: tokio::sync::watch::Sender::new(false),
            first_list_by: Instant::now() + FIRST_LIST_WAIT,
        });
        Ok(Self {
            replica: Some(config.replica.clone()),
            peers: RwLock::new(Arc::new(peers)),
            peer_token: config.peer_token.clone(),
            tls,
            listing,
            dead_after: config.peer_dead_after,
        })
    }

    fn make_peer(
        tls: Option<&ClientTlsConfig>,
        dead_after: Option<Duration>,
        peer: &PeerConfig,
    ) -> Result<Peer, PeerError> {
        Ok(Peer {
            name: peer.name.clone(),
            address: peer.address.clone(),
            endpoint: endpoint(&peer.name, &peer.address, tls)?,
            channel: OnceLock::new(),
            liveness: liveness::Liveness::default(),
            dead_after,
        })
    }

    /// This replica's name, if it is one of several.
    pub fn replica(&self) -> Option<&str> {
        self.replica.as_deref()
    }

    fn snapshot(&self) -> PeerSet {
        Arc::clone(&read(&self.peers))
    }

    /// The other replicas, by name, as they are now.
    pub fn peers(&self) -> Vec<Arc<Peer>> {
        self.snapshot().values().cloned().collect()
    }

    /// Whether there are other replicas now.
    pub fn has_peers(&self) -> bool {
        !self.snapshot().is_empty()
    }

    /// The peer called `name`, if it is one now.
    pub fn peer(&self, name: &str) -> Option<Arc<Peer>> {
        self.snapshot().get(name).cloned()
    }

    /// The token this replica shows its peers.
    pub fn peer_token(&self) -> Option<&str> {
        self.peer_token.as_deref()
    }

    /// Replaces the peers with `found` (discovery's whole current list):
    /// this replica is left out, a peer whose address did not change keeps
    /// its channel, and one that cannot be set up is left out with a
    /// warning. The first call marks the replicas listed.
    pub fn set_peers(&self, found: &[PeerConfig]) {
        let current = self.snapshot();
        let mut next = BTreeMap::new();
        for peer in found {
            if Some(peer.name.as_str()) == self.replica() || next.contains_key(&peer.name) {
                continue;
            }
            let kept = current
                .get(&peer.name)
                .filter(|p| p.address == peer.address)
                .cloned();
            let made = match kept {
                Some(kept) => kept,
                None => match Self::make_peer(self.tls.as_ref(), self.dead_after, peer) {
                    Ok(made) => Arc::new(made),
                    Err(e) => {
                        tracing::warn!(error = %e, "a discovered peer is left out");
                        continue;
                    }
                },
            };
            next.insert(peer.name.clone(), made);
        }
        let changed = next.len() != current.len()
            || next
                .iter()
                .any(|(name, p)| current.get(name).is_none_or(|c| !Arc::ptr_eq(c, p)));
        if changed {
            let describe = |set: &BTreeMap<String, Arc<Peer>>| {
                set.values()
                    .map(|p| format!("{}={}", p.name, p.address))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            tracing::info!(
                peers = %describe(&next),
                before = %describe(&current),
                "the peers changed"
            );
            *write(&self.peers) = Arc::new(next);
        }
        if let Some(listing) = &self.listing {
            listing
                .listed
                .send_if_modified(|listed| !std::mem::replace(listed, true));
        }
    }

    /// Waits, within `FIRST_LIST_WAIT` of start, for discovery's first
    /// list; at once without discovery or once listed.
    pub async fn listed(&self) {
        let Some(listing) = &self.listing else {
            return;
        };
        let mut listed = listing.listed.subscribe();
        let _ = tokio::time::timeout_at(listing.first_list_by, listed.wait_for(|l| *l)).await;
    }

    /// Where a call for `lease_id` runs. `forwarded`: a peer sent it here,
    /// so it is never sent on (a disagreement between peer lists must not
    /// become a loop).
    pub fn route(&self, lease_id: &str, forwarded: bool) -> Result<Route, ForwardError> {
        let Some(this) = self.replica.as_deref() else {
            return Ok(Route::Local);
        };
        let Some(owner) = replica_of(lease_id) else {
            return Ok(Route::Local);
        };
        if owner == this {
            return Ok(Route::Local);
        }
        let peers = self.snapshot();
        match peers.get(owner) {
            Some(_) if forwarded => Err(ForwardError::Misrouted {
                lease_id: lease_id.to_string(),
                replica: owner.to_string(),
                this: this.to_string(),
            }),
            // Silent for too long: presumed dead, and its leases with it.
            Some(peer) if peer.presumed_dead() => Err(ForwardError::OwnerSilent {
                lease_id: lease_id.to_string(),
                replica: owner.to_string(),
                address: peer.address.clone(),
                silent_s: peer
                    .liveness
                    .silent_for()
                    .map_or(0, |silent| silent.as_secs()),
            }),
            Some(peer) => Ok(Route::Peer(Arc::clone(peer))),
            // Discovery lists every replica whose pod exists: one it does
            // not list is gone (or, before the first list, unknown yet).
            None => match &self.listing {
                Some(listing) if *listing.listed.borrow() => Err(ForwardError::OwnerLeft {
                    lease_id: lease_id.to_string(),
                    replica: owner.to_string(),
                    listing: listing.source.clone(),
                }),
                Some(listing) => Err(ForwardError::NotListed {
                    lease_id: lease_id.to_string(),
                    replica: owner.to_string(),
                    listing: listing.source.clone(),
                }),
                None => Err(ForwardError::UnknownReplica {
                    lease_id: lease_id.to_string(),
                    replica: owner.to_string(),
                    this: this.to_string(),
                    known: if peers.is_empty() {
                        "none".to_string()
                    } else {
                        peers.keys().cloned().collect::<Vec<_>>().join(", ")
                    },
                }),
            },
        }
    }
}

/// An UNAVAILABLE without sandpool's ErrorInfo: the channel's own failure
/// to reach a peer, not an answer of the peer's.
pub fn unreached(status: &tonic::Status) -> bool {
    use tonic_types::StatusExt;
    status.code() == tonic::Code::Unavailable && status.get_error_details().error_info().is_none()
}

/// Whether a failed call to a peer found nothing listening at its address
/// (connection refused), as opposed to a peer that is slow, unreachable
/// over the network, or broke a connection: only the first says that the
/// process is gone.
pub fn refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        Cluster::new(&ClusterConfig {
            replica: "a".into(),
            peers: vec![PeerConfig {
                name: "b".into(),
                address: "http://127.0.0.1:1".into(),
            }],
            peer_token: Some("0123456789abcdef".into()),
            peer_ca: None,
            kubernetes: None,
            peer_cert: None,
            peer_key: None,
            peer_dead_after: None,
        })
        .expect("valid")
    }

    #[test]
    fn lease_ids_name_their_replica() {
        assert_eq!(replica_of("a.0123"), Some("a"));
        assert_eq!(replica_of("0123"), None);
        assert_eq!(replica_of(""), None);
    }

    #[test]
    fn routes_follow_the_owner() {
        let c = cluster();
        assert!(matches!(c.route("a.ff", false), Ok(Route::Local)));
        assert!(matches!(c.route("ff", false), Ok(Route::Local)));
        match c.route("b.ff", false) {
            Ok(Route::Peer(p)) => assert_eq!(p.name, "b"),
            other => panic!("{other:?}"),
        }
        let err = c.route("z.ff", false).expect_err("unknown").to_string();
        assert!(err.contains("\"z\"") && err.contains("peers: b"), "{err}");
        assert!(matches!(
            c.route("b.ff", true),
            Err(ForwardError::Misrouted { .. })
        ));
    }

    fn discovering() -> Cluster {
        Cluster::new(&ClusterConfig {
            replica: "a".into(),
            peers: Vec::new(),
            peer_token: Some("0123456789abcdef".into()),
            peer_ca: None,
            kubernetes: Some(DiscoveryConfig {
                service: "sandpool-peers".into(),
                namespace: Some("ns".into()),
                port: PortRef::Name("grpc".into()),
                scheme: Scheme::Http,
                tls_name: None,
            }),
            peer_cert: None,
            peer_key: None,
            peer_dead_after: None,
        })
        .expect("valid")
    }

    fn found(peers: &[(&str, &str)]) -> Vec<PeerConfig> {
        peers
            .iter()
            .map(|(name, address)| PeerConfig {
                name: name.to_string(),
                address: address.to_string(),
            })
            .collect()
    }

    #[test]
    fn discovered_peers_come_and_go() {
        let c = discovering();
        // Before the first list, a replica not known is not called gone.
        assert!(matches!(
            c.route("b.ff", false),
            Err(ForwardError::NotListed { .. })
        ));
        c.set_peers(&found(&[
            ("a", "http://10.0.0.1:1"),
            ("b", "http://10.0.0.2:1"),
        ]));
        assert_eq!(c.peers().len(), 1, "this replica is not its own peer");
        let b = c.peer("b").expect("b");
        assert!(matches!(c.route("a.ff", false), Ok(Route::Local)));
        assert!(matches!(c.route("b.ff", false), Ok(Route::Peer(_))));
        // Listed now: a replica missing from the list is gone.
        let err = c.route("c.ff", false).expect_err("not listed");
        assert!(matches!(err, ForwardError::OwnerLeft { .. }), "{err}");
        assert!(
            err.to_string().contains("Service ns/sandpool-peers"),
            "{err}"
        );
        // An unchanged peer keeps its channel; a moved one gets a new one.
        c.set_peers(&found(&[
            ("b", "http://10.0.0.2:1"),
            ("c", "http://10.0.0.3:1"),
        ]));
        assert!(Arc::ptr_eq(&b, &c.peer("b").expect("b")));
        assert!(matches!(c.route("c.ff", false), Ok(Route::Peer(_))));
        c.set_peers(&found(&[("b", "http://10.0.0.9:1")]));
        let moved = c.peer("b").expect("b");
        assert!(!Arc::ptr_eq(&b, &moved));
        assert_eq!(moved.address, "http://10.0.0.9:1");
        assert!(matches!(
            c.route("c.ff", false),
            Err(ForwardError::OwnerLeft { .. })
        ));
        // A forwarded call for a listed third replica is never sent on.
        assert!(matches!(
            c.route("b.ff", true),
            Err(ForwardError::Misrouted { .. })
        ));
        // A peer that cannot be set up is left out, the others kept.
        c.set_peers(&found(&[
            ("b", "http://10.0.0.9:1"),
            ("d", "https://10.0.0.4:1"),
        ]));
        assert_eq!(c.peers().len(), 1);
    }

    #[tokio::test]
    async fn calls_wait_for_the_first_list_only() {
        let c = Arc::new(discovering());
        let waiting = tokio::spawn({
            let c = Arc::clone(&c);
            async move { c.listed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "waits for the first list");
        c.set_peers(&[]);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("listed")
            .expect("joined");
        // Without discovery nothing waits.
        tokio::time::timeout(Duration::from_millis(10), cluster().listed())
            .await
            .expect("no wait");
    }

    #[test]
    fn alone_everything_is_local() {
        let c = Cluster::alone();
        assert!(matches!(c.route("b.ff", false), Ok(Route::Local)));
        assert_eq!(c.replica(), None);
    }

    #[test]
    fn replica_names_have_no_dots() {
        assert!(check_replica_name("sandpool-0").is_ok());
        assert!(check_replica_name("a.b").is_err());
        assert!(check_replica_name("").is_err());
        assert!(check_replica_name("-a").is_err());
        assert!(check_replica_name("A").is_err());
    }
}
