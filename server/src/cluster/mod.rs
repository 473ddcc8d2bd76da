//! Several replicas behind one address: which replica owns a lease, and the
//! peers a call is forwarded to when it reaches a replica that does not.
//!
//! A lease belongs to the replica that granted it, and its id says which:
//! `<replica>.<32 hex digits>` (a server without `[cluster]` keeps plain
//! ids). Peers come from a static list in the config; they prove themselves
//! to each other with a shared peer token, and pass the caller's identity
//! in a header only a peer may set (`caller`). The forwarding of each call
//! is the api layer's (`api::forward`); this module knows the replicas and
//! how to reach them, not the RPCs.

pub mod caller;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How long connecting to a peer may take before the call is UNAVAILABLE:
/// a replica on the same network answers within milliseconds, and a caller
/// waiting on a dead one should hear so soon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on idle peer connections, so a peer that vanished without
/// closing them is noticed before the next call.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// `[cluster]`, validated: this replica and the peers it forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This replica's name: the prefix of its lease ids.
    pub replica: String,
    /// The other replicas (an entry naming this replica is left out, so one
    /// list can serve every replica).
    pub peers: Vec<PeerConfig>,
    /// The secret replicas show each other; required when there are peers.
    pub peer_token: Option<String>,
    /// CA (PEM) of the peers' certificates, for `https://` peers.
    pub peer_ca: Option<PathBuf>,
}

/// A peer as the config names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub name: String,
    /// `http://host:port` or `https://host:port`.
    pub address: String,
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
}

impl Peer {
    /// The channel to the peer; connecting happens on the first call, so a
    /// peer that is down costs nothing until a lease of it is used.
    pub fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
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

/// Where a lease-scoped call runs.
#[derive(Debug)]
pub enum Route {
    /// Here: the lease is this replica's (or names no replica, and then it
    /// is unknown here as anywhere).
    Local,
    /// At its owner.
    Peer(Arc<Peer>),
}

/// This replica among its peers; a server without `[cluster]` is alone and
/// routes everything to itself.
#[derive(Debug, Default)]
pub struct Cluster {
    replica: Option<String>,
    peers: BTreeMap<String, Arc<Peer>>,
    peer_token: Option<String>,
}

impl Cluster {
    /// A server on its own.
    pub fn alone() -> Self {
        Self::default()
    }

    /// The replicas of `config`, their endpoints checked (nothing connects
    /// yet).
    pub fn new(config: &ClusterConfig) -> anyhow::Result<Self> {
        let tls = match &config.peer_ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("cannot read cluster.peer_ca {}: {e}", path.display())
                })?;
                Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            }
            None => None,
        };
        let mut peers = BTreeMap::new();
        for peer in &config.peers {
            let mut endpoint = Endpoint::from_shared(peer.address.clone())
                .map_err(|e| anyhow::anyhow!("cluster peer {:?}: {e}", peer.name))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_while_idle(true);
            if peer.address.starts_with("https://") {
                let tls = tls.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "cluster peer {:?} is https: set cluster.peer_ca to the CA of its certificate",
                        peer.name
                    )
                })?;
                endpoint = endpoint.tls_config(tls)?;
            }
            peers.insert(
                peer.name.clone(),
                Arc::new(Peer {
                    name: peer.name.clone(),
                    address: peer.address.clone(),
                    endpoint,
                    channel: OnceLock::new(),
                }),
            );
        }
        Ok(Self {
            replica: Some(config.replica.clone()),
            peers,
            peer_token: config.peer_token.clone(),
        })
    }

    /// This replica's name, if it is one of several.
    pub fn replica(&self) -> Option<&str> {
        self.replica.as_deref()
    }

    /// The other replicas, by name.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.peers.values()
    }

    /// The peer called `name`.
    pub fn peer(&self, name: &str) -> Option<&Arc<Peer>> {
        self.peers.get(name)
    }

    /// The token this replica shows its peers.
    pub fn peer_token(&self) -> Option<&str> {
        self.peer_token.as_deref()
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
        match self.peers.get(owner) {
            Some(_) if forwarded => Err(ForwardError::Misrouted {
                lease_id: lease_id.to_string(),
                replica: owner.to_string(),
                this: this.to_string(),
            }),
            Some(peer) => Ok(Route::Peer(Arc::clone(peer))),
            None => Err(ForwardError::UnknownReplica {
                lease_id: lease_id.to_string(),
                replica: owner.to_string(),
                this: this.to_string(),
                known: if self.peers.is_empty() {
                    "none".to_string()
                } else {
                    self.peers.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            }),
        }
    }
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
