//! Whether a silent peer is presumed dead. A replica whose process is gone
//! but whose host remains refuses connections, and one that left the
//! EndpointSlices is gone (`discovery`); but a peer whose host vanished,
//! froze or was cut off answers nothing at all, and its leases would stay
//! UNAVAILABLE for as long as callers retry. So every peer is asked for its
//! gRPC health every `PROBE_EVERY`, and one that has answered nothing for
//! `[cluster] peer_dead_after` is presumed dead: calls for its leases answer
//! that they ended (REPLICA_GONE), as for a refused connection.
//!
//! Any answer counts as alive, NOT_SERVING too (a draining replica still
//! serves its leases). A presumed-dead peer that answers again is alive
//! again; its leases, if it kept them, expire there by their TTL, since
//! their callers were told they ended and stopped keeping them alive.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Cluster, Peer};

/// How often each peer is asked.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one answer may take: a health check is answered at once by a
/// replica that runs at all.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the probes found of one peer.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Since when every probe failed (`None`: the last one was answered,
    /// or none ran yet).
    silent_since: Mutex<Option<Instant>>,
}

impl Liveness {
    fn answered(&self) {
        *self.lock() = None;
    }

    fn unanswered(&self) {
        self.lock().get_or_insert_with(Instant::now);
    }

    /// How long the peer has answered nothing, if it is silent.
    pub fn silent_for(&self) -> Option<Duration> {
        self.lock().map(|since| since.elapsed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.silent_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One health check of `peer`: whether it answered at all.
async fn answers(peer: &Peer) -> bool {
    let mut health = tonic_health::pb::health_client::HealthClient::new(peer.channel());
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(PROBE_TIMEOUT);
    match tokio::time::timeout(PROBE_TIMEOUT, health.check(request)).await {
        Ok(Ok(_)) => true,
        // An answer of the server's own (say, the service is unknown) is
        // an answer; the channel's failures and timeouts are silence.
        Ok(Err(status)) => !matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        Err(_) => false,
    }
}

/// Probes every peer of `cluster` until `stop`.
pub fn start(cluster: Arc<Cluster>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let peers = cluster.peers();
            let probed = join_all(peers.iter().map(|peer| async move {
                let alive = answers(peer).await;
                let was_silent = peer.liveness.silent_for();
                if alive {
                    if let Some(silent) = was_silent {
                        tracing::info!(peer = %peer.name, silent_s = silent.as_secs_f64(), "a silent peer answers again");
                    }
                    peer.liveness.answered();
                } else {
                    if was_silent.is_none() {
                        tracing::warn!(peer = %peer.name, address = %peer.address, "a peer does not answer its health check");
                    }
                    peer.liveness.unanswered();
                }
            }));
            tokio::select! {
                _ = probed => {}
                _ = stop.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
    });
}
