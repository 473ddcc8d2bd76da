//! Config pools across replicas. Every replica has the config file's pools,
//! each with its own share of containers, so:
//!
//! - an Acquire that finds no idle container here asks the peers how many
//!   they have (their own GetPoolStats, concurrently, with a short timeout)
//!   and goes to the one with the most before it waits or creates here; the
//!   lease is then that peer's, and its id says so;
//! - a pool's stats are the sum over the replicas that answer (in
//!   GetPoolStats, GetPool and ListPools; WatchPoolStats sums them in
//!   `pool_watch`);
//! - ListPools adds the peers' pools made at run time (see `pool_homes`).
//!
//! A call a peer forwarded here is answered here alone: a forwarded Acquire
//! is never forwarded again, and a peer asking for stats hears this
//! replica's own. A peer that does not answer in time is left out.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use prost_types::Duration as PbDuration;
use sandpool_proto::v1::{
    self as pb, pool_service_client::PoolServiceClient,
    session_service_client::SessionServiceClient,
};
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};

use super::{AppState, auth::Forwarded, forward::outgoing};
use crate::{cluster::Peer, identity::Identity, server::MAX_MESSAGE_BYTES};

/// How long a peer may take to say how many idle containers it has: an
/// Acquire waits for this at worst before it is served here, and a peer on
/// the same network answers within milliseconds.
const ASK_TIMEOUT: Duration = Duration::from_millis(300);

/// The metadata key by which a caller asks for one replica's stats (its
/// name) instead of the sum.
pub const REPLICA_HEADER: &str = "sandpool-replica";

/// Whether the call was forwarded here by a peer.
fn forwarded(extensions: &tonic::Extensions) -> bool {
    extensions.get::<Forwarded>().is_some()
}

/// A forwarded request to `peer`, as `who`, with `timeout`.
pub(super) fn to_peer<T>(
    state: &AppState,
    who: &Identity,
    metadata: &MetadataMap,
    message: T,
    timeout: Option<Duration>,
) -> Request<T> {
    let mut request = Request::new(message);
    *request.metadata_mut() = outgoing(state, who, metadata);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// `peer`'s own stats of `pool`, or `None` when it does not answer in time
/// (or has no such pool, or refuses `who`).
async fn stats_of(
    state: &AppState,
    who: &Identity,
    metadata: &MetadataMap,
    peer: &Arc<Peer>,
    pool: &str,
) -> Option<pb::PoolStats> {
    let request = to_peer(
        state,
        who,
        metadata,
        pb::GetPoolStatsRequest {
            name: pool.to_string(),
            replica: String::new(),
        },
        Some(ASK_TIMEOUT),
    );
    let mut client = PoolServiceClient::new(peer.channel());
    match tokio::time::timeout(ASK_TIMEOUT, client.get_pool_stats(request)).await {
        Ok(Ok(answer)) => answer.into_inner().stats,
        Ok(Err(status)) => {
            tracing::debug!(peer = %peer.name, pool, %status, "a peer's stats are left out");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer.name, pool, "a peer's stats are left out: no answer in time");
            None
        }
    }
}

/// Every peer's own stats of `pool`, asked at once.
async fn peers_stats(
    state: &AppState,
    who: &Identity,
    metadata: &MetadataMap,
    pool: &str,
) -> Vec<(Arc<Peer>, pb::PoolStats)> {
    let peers = state.cluster.peers();
    let answers = join_all(
        peers
            .iter()
            .map(|peer| stats_of(state, who, metadata, peer, pool)),
    )
    .await;
    peers
        .into_iter()
        .zip(answers)
        .filter_map(|(peer, stats)| stats.map(|s| (peer, s)))
        .collect()
}

/// The peer with the most idle containers of `pool`, if any has one.
fn best_peer(answers: Vec<(Arc<Peer>, pb::PoolStats)>) -> Option<(Arc<Peer>, u32)> {
    answers
        .into_iter()
        .filter_map(|(peer, stats)| {
            let idle = stats.state_counts.map_or(0, |c| c.idle);
            (idle > 0 && !stats.closed).then_some((peer, idle))
        })
        .max_by_key(|(_, idle)| *idle)
}

/// An Acquire of a config pool with no idle container here (or any, while
/// this replica drains), served by a peer that has one: `None` when it is
/// this replica's to answer (a call a peer forwarded, a pool made at run
/// time, an idle container here, no peer with one, or the chosen peer
/// turned out to be unavailable).
pub(super) async fn acquire_at_peer(
    state: &AppState,
    who: &Identity,
    metadata: &MetadataMap,
    extensions: &tonic::Extensions,
    req: &pb::AcquireRequest,
) -> Option<Result<Response<pb::AcquireResponse>, Status>> {
    if forwarded(extensions) || !state.cluster.has_peers() {
        return None;
    }
    // A draining replica grants nothing: any peer that answers takes the
    // Acquire, idle container or not (it waits or creates there).
    let draining = state.manager.draining();
    let idle_here = state.manager.config_pool_idle(who, &req.pool)?;
    if idle_here > 0 && !draining {
        return None;
    }
    let answers = peers_stats(state, who, metadata, &req.pool).await;
    let any = answers.first().map(|(peer, _)| (Arc::clone(peer), 0));
    let (peer, idle) = best_peer(answers).or(if draining { any } else { None })?;
    tracing::info!(
        pool = %req.pool,
        peer = %peer.name,
        peer_idle = idle,
        draining,
        caller = %who.name,
        "forwarding Acquire to a peer with an idle container"
    );
    // The caller's deadline goes along (in `outgoing`).
    let request = to_peer(state, who, metadata, req.clone(), None);
    let mut client = SessionServiceClient::new(peer.channel())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    match client.acquire(request).await {
        Ok(answer) => Some(Ok(Response::new(answer.into_inner()))),
        // Gone since it answered, or draining: served here instead.
        Err(status) if status.code() == Code::Unavailable => {
            tracing::info!(peer = %peer.name, %status, "the peer is unavailable; acquiring here");
            None
        }
        Err(status) => Some(Err(status)),
    }
}

/// What GetPoolStats of `pool` answers: `local` (this replica's), or the
/// sum over the replicas when `pool` is a config pool, the call was not
/// forwarded here and the caller did not ask for one replica (see
/// `one_replica`).
pub(super) async fn pool_stats(
    state: &AppState,
    who: &Identity,
    metadata: &MetadataMap,
    extensions: &tonic::Extensions,
    local: pb::PoolStats,
) -> pb::PoolStats {
    if forwarded(extensions)
        || !state.cluster.has_peers()
        || !state.manager.is_config_pool(&local.pool)
    {
        return local;
    }
    let others = peers_stats(state, who, metadata, &local.pool).await;
    others
        .into_iter()
        .fold(local, |sum, (_, stats)| add(sum, &stats))
}

/// The replica whose own stats a caller asked for: the request's
/// `replica` field, or else the `REPLICA_HEADER` metadata (which came
/// first, and still works). `None`: the caller asked for no one replica.
pub(super) fn replica_asked<'a>(field: &'a str, metadata: &'a MetadataMap) -> Option<&'a str> {
    if !field.is_empty() {
        return Some(field);
    }
    metadata
        .get(REPLICA_HEADER)
        .map(|value| value.to_str().unwrap_or_default())
}

/// The peer a caller named as the replica to answer: `Ok(None)` when it
/// names this replica; INVALID_ARGUMENT when no replica has that name.
pub(super) fn named_peer(state: &AppState, name: &str) -> Result<Option<Arc<Peer>>, Status> {
    if state.cluster.replica() == Some(name) {
        return Ok(None);
    }
    if let Some(peer) = state.cluster.peer(name) {
        return Ok(Some(peer));
    }
    let peers = state.cluster.peers();
    let known: Vec<&str> = state
        .cluster
        .replica()
        .into_iter()
        .chain(peers.iter().map(|p| p.name.as_str()))
        .collect();
    Err(crate::error::Error::invalid(
        "replica",
        format!(
            "{name:?} is not a replica of this cluster (replicas: {})",
            if known.is_empty() {
                "none: this server is alone".to_string()
            } else {
                known.join(", ")
            }
        ),
    )
    .into())
}

/// The stats of `pool` of the replica `replica` names, when it names a
/// peer: its own, asked as a forwarded call. `Ok(None)`: it names this
/// replica.
pub(super) async fn one_replica(
    state: &AppState,
    who: &Identity,
    metadata: &MetadataMap,
    replica: &str,
    pool: &str,
) -> Result<Option<pb::PoolStats>, Status> {
    let Some(peer) = named_peer(state, replica)? else {
        return Ok(None);
    };
    let request = to_peer(
        state,
        who,
        metadata,
        pb::GetPoolStatsRequest {
            name: pool.to_string(),
            replica: String::new(),
        },
        None,
    );
    let answer = PoolServiceClient::new(peer.channel())
        .get_pool_stats(request)
        .await
        .map_err(|status| unreached(&peer, status))?;
    Ok(answer.into_inner().stats)
}

/// `status` as the caller hears it: the peer's own answers (a pool it
/// lacks) carry ErrorInfo and come back as they are; the channel's failures
/// say which replica was not reached.
pub(super) fn unreached(peer: &Peer, status: Status) -> Status {
    if crate::cluster::unreached(&status) {
        return Status::from(crate::error::Error::from(
            crate::cluster::ForwardError::ReplicaUnreachable {
                replica: peer.name.clone(),
                address: peer.address.clone(),
                detail: status.message().to_string(),
            },
        ));
    }
    status
}

/// How long a peer may take to list its pools before ListPools answers
/// without them.
const LIST_TIMEOUT: Duration = Duration::from_secs(1);

/// ListPools across the replicas: `local` (this replica's pools), with the
/// pools made at run time on the peers added and the config pools' stats
/// summed, as GetPoolStats sums them. A peer that does not answer in time
/// is left out.
pub(super) async fn list_across(
    state: &AppState,
    who: &Identity,
    metadata: &MetadataMap,
    extensions: &tonic::Extensions,
    mut local: Vec<pb::Pool>,
) -> Vec<pb::Pool> {
    if forwarded(extensions) || !state.cluster.has_peers() {
        return local;
    }
    let peers: Vec<Arc<Peer>> = state.cluster.peers();
    let answers = join_all(peers.iter().map(|peer| async {
        let request = to_peer(
            state,
            who,
            metadata,
            pb::ListPoolsRequest {},
            Some(LIST_TIMEOUT),
        );
        let mut client = PoolServiceClient::new(peer.channel());
        match tokio::time::timeout(LIST_TIMEOUT, client.list_pools(request)).await {
            Ok(Ok(answer)) => answer.into_inner().pools,
            Ok(Err(status)) => {
                tracing::debug!(peer = %peer.name, %status, "a peer's pools are left out");
                Vec::new()
            }
            Err(_) => {
                tracing::debug!(peer = %peer.name, "a peer's pools are left out: no answer in time");
                Vec::new()
            }
        }
    }))
    .await;
    for theirs in answers.into_iter().flatten() {
        let name = theirs
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let mine = local
            .iter_mut()
            .find(|p| p.spec.as_ref().is_some_and(|s| s.name == name));
        match mine {
            // A config pool: every replica has it; its stats add up.
            Some(mine) if mine.replica.is_empty() && theirs.replica.is_empty() => {
                if let (Some(sum), Some(stats)) = (mine.stats.take(), theirs.stats.as_ref()) {
                    mine.stats = Some(add(sum, stats));
                }
            }
            // A name taken both here and there (see pool_homes): this
            // replica's answers for it.
            Some(_) => {}
            None if !theirs.replica.is_empty() => local.push(theirs),
            // A config pool of a peer's that this replica's config lacks:
            // calls for it here would not find it, so it is not listed.
            None => {}
        }
    }
    local.sort_by(|a, b| {
        let name = |p: &pb::Pool| p.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        name(a).cmp(&name(b))
    });
    local
}

/// `a` with `b` added: counts and counters summed; sizes summed too (each
/// replica keeps its own share, so the pool's capacity is the sum);
/// latencies are the slowest replica's (percentiles of different replicas
/// cannot be combined exactly: the max of each is an upper bound), with
/// the samples summed; `closed` if any replica's is; the time is `a`'s.
pub(super) fn add(mut a: pb::PoolStats, b: &pb::PoolStats) -> pb::PoolStats {
    a.total_size += b.total_size;
    a.max_size += b.max_size;
    a.min_size += b.min_size;
    a.closed |= b.closed;
    a.temporary_containers += b.temporary_containers;
    a.waiting += b.waiting;
    a.active_leases += b.active_leases;
    if let (Some(x), Some(y)) = (a.state_counts.as_mut(), b.state_counts.as_ref()) {
        x.initializing += y.initializing;
        x.idle += y.idle;
        x.busy += y.busy;
        x.resetting += y.resetting;
        x.unhealthy += y.unhealthy;
        x.removing += y.removing;
    }
    if let (Some(x), Some(y)) = (a.counters.as_mut(), b.counters.as_ref()) {
        x.acquisitions += y.acquisitions;
        x.waits += y.waits;
        x.wait_timeouts += y.wait_timeouts;
        x.fail_fast_refusals += y.fail_fast_refusals;
        x.temporaries += y.temporaries;
        x.releases += y.releases;
        x.lease_expirations += y.lease_expirations;
        x.health_failures += y.health_failures;
        x.containers_created += y.containers_created;
        x.create_failures += y.create_failures;
        x.runs += y.runs;
        if let (Some(r), Some(s)) = (x.recycled.as_mut(), y.recycled.as_ref()) {
            r.idle_timeout += s.idle_timeout;
            r.lifetime += s.lifetime;
            r.uses += s.uses;
            r.unhealthy += s.unhealthy;
            r.no_reuse += s.no_reuse;
            r.reset_failed += s.reset_failed;
            r.drained += s.drained;
        }
    }
    if let (Some(x), Some(y)) = (a.acquire_latency.as_mut(), b.acquire_latency.as_ref()) {
        x.samples += y.samples;
        for (mine, theirs) in [
            (&mut x.p50, &y.p50),
            (&mut x.p90, &y.p90),
            (&mut x.p99, &y.p99),
            (&mut x.max, &y.max),
        ] {
            *mine = slower(mine.take(), *theirs);
        }
    }
    a
}

fn slower(a: Option<PbDuration>, b: Option<PbDuration>) -> Option<PbDuration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if (b.seconds, b.nanos) > (a.seconds, a.nanos) {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(idle: u32, acquisitions: u64, p99_ms: i32) -> pb::PoolStats {
        pb::PoolStats {
            pool: "py".into(),
            total_size: idle + 1,
            max_size: 2,
            min_size: 1,
            state_counts: Some(pb::StateCounts {
                idle,
                busy: 1,
                ..Default::default()
            }),
            counters: Some(pb::PoolCounters {
                acquisitions,
                recycled: Some(pb::RecycleCounts {
                    uses: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            acquire_latency: Some(pb::LatencySummary {
                samples: acquisitions,
                p99: Some(PbDuration {
                    seconds: 0,
                    nanos: p99_ms * 1_000_000,
                }),
                ..Default::default()
            }),
            active_leases: 1,
            ..Default::default()
        }
    }

    #[test]
    fn stats_add_up_and_latency_is_the_slowest() {
        let sum = add(add(stats(1, 10, 5), &stats(0, 3, 40)), &stats(2, 1, 7));
        assert_eq!(sum.total_size, 6);
        assert_eq!(sum.max_size, 6);
        assert_eq!(sum.min_size, 3);
        assert_eq!(sum.active_leases, 3);
        let counts = sum.state_counts.expect("counts");
        assert_eq!((counts.idle, counts.busy), (3, 3));
        let counters = sum.counters.expect("counters");
        assert_eq!(counters.acquisitions, 14);
        assert_eq!(counters.recycled.expect("recycled").uses, 3);
        let latency = sum.acquire_latency.expect("latency");
        assert_eq!(latency.samples, 14);
        assert_eq!(latency.p99.expect("p99").nanos, 40_000_000);
        assert_eq!(sum.pool, "py");
    }

    fn peer(name: &str) -> Arc<Peer> {
        crate::cluster::Cluster::new(&crate::cluster::ClusterConfig {
            replica: "a".into(),
            peers: vec![crate::cluster::PeerConfig {
                name: name.into(),
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
        .peer(name)
        .expect("the peer")
    }

    #[test]
    fn the_peer_with_most_idle_containers_is_chosen() {
        let mut closed = stats(5, 0, 1);
        closed.closed = true;
        let chosen = best_peer(vec![
            (peer("b"), stats(1, 0, 1)),
            (peer("c"), stats(3, 0, 1)),
            (peer("d"), closed),
        ])
        .expect("one has idle containers");
        assert_eq!((chosen.0.name.as_str(), chosen.1), ("c", 3));
        assert!(best_peer(vec![(peer("b"), stats(0, 0, 1))]).is_none());
        assert!(best_peer(Vec::new()).is_none());
    }
}
