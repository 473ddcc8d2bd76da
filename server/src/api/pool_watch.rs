//! WatchPoolStats' stream: a pool's stats once at once, then as they
//! change, at most one message per interval.
//!
//! A config pool's stats, on a replica with peers, are summed over the
//! replicas (as GetPoolStats sums them): one watch per peer (forwarded, so
//! each answers for itself alone) keeps that peer's latest stats, and every
//! message adds them to this replica's own. A peer whose watch breaks is
//! left out of the sum until its watch opens again.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sandpool_proto::v1::{self as pb, pool_service_client::PoolServiceClient};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, metadata::MetadataMap};

use super::{AppState, convert, forward::outgoing, peer_pools, pool_service::async_stream};
use crate::{
    cluster::Peer,
    identity::{Identity, QuotaGuard},
    pool::StatsReader,
};

/// At most one message per this interval.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How soon a peer's broken watch is opened again.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

pub(super) type WatchStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::WatchPoolStatsResponse, Status>> + Send>,
>;

/// The latest stats of each peer that is watched, and a signal on change.
struct PeerSums {
    latest: Mutex<BTreeMap<String, pb::PoolStats>>,
    changed: watch::Sender<()>,
}

impl PeerSums {
    fn set(&self, peer: &str, stats: Option<pb::PoolStats>) {
        {
            let mut latest = self
                .latest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match stats {
                Some(stats) => latest.insert(peer.to_string(), stats),
                None => latest.remove(peer),
            };
        }
        self.changed.send_replace(());
    }

    /// `local` with every watched peer's latest stats added.
    fn sum(&self, local: pb::PoolStats) -> pb::PoolStats {
        let latest = self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        latest.values().fold(local, peer_pools::add)
    }
}

/// The stream of this replica's stats of a pool (`changes`, `read`), with
/// `peers`' added when there are any. `held`: the stream's place among the
/// server's open streams, given back when it ends.
pub(super) fn stream(
    state: &Arc<AppState>,
    who: &Identity,
    metadata: &MetadataMap,
    name: &str,
    (mut changes, read): (watch::Receiver<u64>, StatsReader),
    held: QuotaGuard,
    peers: Vec<Arc<Peer>>,
) -> WatchStream {
    let stop = state.streams.clone();
    // Ends the peers' watches when this stream ends, however it ends.
    let peers_stop = stop.child_token();
    let (changed, mut peer_changes) = watch::channel(());
    let sums = Arc::new(PeerSums {
        latest: Mutex::new(BTreeMap::new()),
        changed,
    });
    for peer in peers {
        let metadata = outgoing(state, who, metadata);
        tokio::spawn(watch_peer(
            peer,
            name.to_string(),
            metadata,
            Arc::clone(&sums),
            peers_stop.clone(),
        ));
    }
    async_stream(move |tx| async move {
        let _held = held;
        let _peers = peers_stop.drop_guard();
        loop {
            let stats = read();
            let closed = stats.closed && stats.total_size == 0 && stats.temporary_containers == 0;
            let message = pb::WatchPoolStatsResponse {
                stats: Some(sums.sum(convert::stats_to_pb(&stats))),
            };
            if tx.send(Ok(message)).await.is_err() || closed {
                return;
            }
            // At most one message per interval; changes during it are
            // folded into the next message.
            tokio::select! {
                _ = tokio::time::sleep(MIN_INTERVAL) => {}
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    // The pool is gone; send its last numbers and end.
                    let mut last = read();
                    last.closed = true;
                    let _ = tx.send(Ok(pb::WatchPoolStatsResponse { stats: Some(convert::stats_to_pb(&last)) })).await;
                    return;
                },
                // A peer's stats changed (or its watch broke).
                _ = peer_changes.changed() => {}
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            }
        }
    })
}

/// Keeps `peer`'s latest stats of `pool` in `sums` until `stop`, opening
/// its watch again when it breaks.
async fn watch_peer(
    peer: Arc<Peer>,
    pool: String,
    metadata: MetadataMap,
    sums: Arc<PeerSums>,
    stop: CancellationToken,
) {
    loop {
        let mut request = Request::new(pb::WatchPoolStatsRequest {
            name: pool.clone(),
            replica: String::new(),
        });
        *request.metadata_mut() = metadata.clone();
        let watched = async {
            let mut answers = PoolServiceClient::new(peer.channel())
                .watch_pool_stats(request)
                .await?
                .into_inner();
            while let Some(message) = answers.message().await? {
                if let Some(stats) = message.stats {
                    sums.set(&peer.name, Some(stats));
                }
            }
            Ok::<(), Status>(())
        };
        tokio::select! {
            ended = watched => {
                if let Err(status) = ended {
                    tracing::debug!(peer = %peer.name, pool, %status, "a peer's watch broke; its stats are left out");
                }
            }
            _ = stop.cancelled() => return,
        }
        sums.set(&peer.name, None);
        tokio::select! {
            _ = tokio::time::sleep(REOPEN_AFTER) => {}
            _ = stop.cancelled() => return,
        }
    }
}
