//! Calls for another replica's lease, sent on to the replica that owns it
//! (see `cluster`), streams included, as the caller who made them: the
//! owner hears the caller's identity from the forwarded-caller header and
//! believes it because the call carries the peer token, or comes with this
//! replica's client certificate (`cluster::tls`).
//!
//! The owner's answers (its errors too) come back unchanged; only a failure
//! to reach the owner becomes an error of this replica's own.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures::{Stream, StreamExt, future::ready};
use sandpool_proto::v1::{
    self as pb, artifact_service_client::ArtifactServiceClient,
    session_service_client::SessionServiceClient,
};
use tonic::{
    Request, Response, Status, Streaming,
    metadata::{MetadataMap, MetadataValue},
    transport::Channel,
};

use super::{AppState, auth::Forwarded};
use crate::{
    cluster::{ForwardError, Peer, Route, caller, unreached as not_reached},
    error::Error,
    identity::Identity,
    server::MAX_MESSAGE_BYTES,
};

/// What of the caller's metadata the owner needs too: the deadline and the
/// trace context. Nothing else: the caller's own credentials stay here.
const PASSED_ON: [&str; 3] = ["grpc-timeout", "traceparent", "tracestate"];

pub(super) type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The owner of a lease, for the errors of reaching it.
#[derive(Clone)]
struct Owner {
    peer: Arc<Peer>,
    lease_id: String,
}

impl Owner {
    /// The owner's own answers carry sandpool's ErrorInfo; an UNAVAILABLE
    /// without it is the channel's: the owner was not reached, or the
    /// connection to it broke.
    fn failed(&self, status: Status) -> Status {
        if not_reached(&status) && self.peer.presumed_dead() {
            return Error::from(ForwardError::OwnerSilent {
                lease_id: self.lease_id.clone(),
                replica: self.peer.name.clone(),
                address: self.peer.address.clone(),
                silent_s: self
                    .peer
                    .liveness
                    .silent_for()
                    .map_or(0, |silent| silent.as_secs()),
            })
            .into();
        }
        if self.gone(&status) {
            return Error::from(ForwardError::OwnerGone {
                lease_id: self.lease_id.clone(),
                replica: self.peer.name.clone(),
                address: self.peer.address.clone(),
            })
            .into();
        }
        if not_reached(&status) {
            return Error::from(ForwardError::Unreachable {
                lease_id: self.lease_id.clone(),
                replica: self.peer.name.clone(),
                address: self.peer.address.clone(),
                detail: status.message().to_string(),
            })
            .into();
        }
        status
    }

    /// The owner was not reached because nothing listens at its address,
    /// or it has been silent too long: it is gone, and its leases with it
    /// (see `ForwardError::OwnerGone`, `OwnerSilent`).
    fn gone(&self, status: &Status) -> bool {
        not_reached(status) && (crate::cluster::refused(status) || self.peer.presumed_dead())
    }
}

/// The metadata of a forwarded call: the peer token, the caller, and what
/// `PASSED_ON` names of the caller's own.
pub(super) fn outgoing(state: &AppState, who: &Identity, metadata: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for key in PASSED_ON {
        if let Some(value) = metadata.get(key) {
            out.insert(key, value.clone());
        }
    }
    // The config admits only visible ASCII tokens; without one the owner
    // refuses the call, which is the right answer to a missing secret.
    if let Some(value) = state
        .cluster
        .peer_token()
        .and_then(|t| format!("Bearer {t}").parse().ok())
    {
        out.insert("authorization", value);
    }
    out.insert_bin(
        caller::HEADER,
        MetadataValue::from_bytes(&caller::encode(who)),
    );
    out
}

/// A call on its way to the owner of its lease.
pub(super) struct Forward {
    owner: Owner,
    metadata: MetadataMap,
}

/// `Some` when the call for `lease_id` belongs to a peer: the caller's
/// request is then the owner's to answer. `extensions`: the request's, to
/// tell a call a peer forwarded here (never forwarded again). With peer
/// discovery, waits (bounded) for its first list, so that a replica not
/// listed yet is not taken for a gone one.
pub(super) async fn to_owner(
    state: &AppState,
    method: &'static str,
    who: &Identity,
    metadata: &MetadataMap,
    extensions: &tonic::Extensions,
    lease_id: &str,
) -> Result<Option<Forward>, Status> {
    let forwarded = extensions.get::<Forwarded>().is_some();
    state.cluster.listed().await;
    match state
        .cluster
        .route(lease_id, forwarded)
        .map_err(Error::from)?
    {
        Route::Local => Ok(None),
        Route::Peer(peer) => {
            tracing::info!(
                method,
                lease_id,
                owner = %peer.name,
                caller = %who.name,
                "forwarding to the lease's owner"
            );
            Ok(Some(Forward {
                owner: Owner {
                    peer,
                    lease_id: lease_id.to_string(),
                },
                metadata: outgoing(state, who, metadata),
            }))
        }
    }
}

impl Forward {
    pub(super) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        *request.metadata_mut() = self.metadata.clone();
        request
    }

    fn channel(&self) -> Channel {
        self.owner.peer.channel()
    }

    pub(super) fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(super) fn artifacts(&self) -> ArtifactServiceClient<Channel> {
        ArtifactServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The owner's answer to a unary call.
    pub(super) fn unary<T>(
        &self,
        answer: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        answer
            .map(|r| Response::new(r.into_inner()))
            .map_err(|s| self.owner.failed(s))
    }

    /// The owner's answer to a call that streams its response, passed on
    /// message by message as it comes.
    pub(super) fn stream<T: Send + 'static>(
        &self,
        answer: Result<Response<Streaming<T>>, Status>,
    ) -> Result<Response<Answers<T>>, Status> {
        let answers = answer.map_err(|s| self.owner.failed(s))?.into_inner();
        let owner = self.owner.clone();
        Ok(Response::new(Box::pin(
            answers.map(move |item| item.map_err(|s| owner.failed(s))),
        )))
    }

    /// An upload: `first` (its header, read here to find the lease) and the
    /// rest of the caller's stream. If the caller's stream breaks, the
    /// forwarded one must not look complete to the owner (it would keep a
    /// truncated file): the call is dropped instead, which resets it.
    pub(super) async fn upload(
        &self,
        first: pb::UploadRequest,
        rest: Streaming<pb::UploadRequest>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        let (broken_tx, broken) = tokio::sync::oneshot::channel::<Status>();
        let rest = futures::stream::unfold(
            (rest, Some(broken_tx)),
            |(mut rest, mut broken)| async move {
                match rest.next().await {
                    Some(Ok(message)) => Some((message, (rest, broken))),
                    None => None,
                    Some(Err(status)) => {
                        if let Some(tx) = broken.take() {
                            let _ = tx.send(status);
                        }
                        futures::future::pending().await
                    }
                }
            },
        );
        let body = futures::stream::once(ready(first)).chain(rest);
        let mut client = self.artifacts();
        let call = client.upload(self.request(body));
        tokio::select! {
            answer = call => self.unary(answer),
            Ok(status) = broken => {
                Err(Error::UploadBroken(status.message().to_string()).into())
            }
        }
    }

    /// An interactive run: its start (read here to find the lease) and the
    /// caller's later requests. A broken request stream ends the forwarded
    /// one, as it ends a local run's input.
    pub(super) async fn interact(
        &self,
        start: pb::InteractRequest,
        rest: Streaming<pb::InteractRequest>,
    ) -> Result<Response<Answers<pb::RunResponse>>, Status> {
        let rest = rest
            .take_while(|r| ready(r.is_ok()))
            .filter_map(|r| ready(r.ok()));
        let body = futures::stream::once(ready(start)).chain(rest);
        let answer = self.sessions().interact(self.request(body)).await;
        self.stream(answer)
    }
}

/// The keepalive answer of a lease whose owner is gone.
fn replica_gone(lease_id: &str) -> pb::KeepAliveResponse {
    pb::KeepAliveResponse {
        lease_id: lease_id.to_string(),
        state: pb::LeaseState::ReplicaGone as i32,
        ..Default::default()
    }
}

/// The keepalives of one KeepAlive stream whose leases belong to peers: one
/// forwarded KeepAlive stream per owner, opened at its first lease and
/// kept for the caller's stream's life. Each request has exactly one
/// answer, in order, on both streams, so a renewal is a send and a read.
pub(super) struct KeepAlives {
    state: Arc<AppState>,
    who: Arc<Identity>,
    metadata: MetadataMap,
    forwarded: bool,
    open: HashMap<String, OpenKeepAlive>,
}

struct OpenKeepAlive {
    requests: tokio::sync::mpsc::Sender<pb::KeepAliveRequest>,
    answers: Streaming<pb::KeepAliveResponse>,
}

impl KeepAlives {
    pub(super) fn new<T>(state: Arc<AppState>, who: Arc<Identity>, request: &Request<T>) -> Self {
        Self {
            state,
            who,
            metadata: request.metadata().clone(),
            forwarded: request.extensions().get::<Forwarded>().is_some(),
            open: HashMap::new(),
        }
    }

    /// The owner's answer to `req` when a peer owns its lease; `None`: it
    /// is answered here (a lease of an unknown replica is not found here as
    /// anywhere, and says so like any unknown lease).
    pub(super) async fn renew(
        &mut self,
        req: &pb::KeepAliveRequest,
    ) -> Option<Result<pb::KeepAliveResponse, Status>> {
        self.state.cluster.listed().await;
        let peer = match self.state.cluster.route(&req.lease_id, self.forwarded) {
            Ok(Route::Peer(peer)) => peer,
            // Discovery no longer lists its owner: ended with it, answered
            // as below for an owner found gone by a refused connection.
            Err(
                ForwardError::OwnerLeft { replica, .. } | ForwardError::OwnerSilent { replica, .. },
            ) => {
                tracing::info!(lease_id = %req.lease_id, owner = %replica, "the lease's owner is gone");
                return Some(Ok(replica_gone(&req.lease_id)));
            }
            _ => return None,
        };
        let owner = Owner {
            peer,
            lease_id: req.lease_id.clone(),
        };
        let answer = self.renew_at(&owner, req.clone()).await;
        let Err(status) = answer else {
            return Some(answer);
        };
        self.open.remove(&owner.peer.name);
        if owner.gone(&status) {
            // Its owner is gone and the lease with it: an answer like any
            // ended lease's, and the stream goes on for the caller's
            // other leases.
            tracing::info!(lease_id = %req.lease_id, owner = %owner.peer.name, "the lease's owner is gone");
            return Some(Ok(replica_gone(&req.lease_id)));
        }
        Some(Err(owner.failed(status)))
    }

    /// The answer of the replica a pool made at run time lives on to a
    /// keepalive of its owner's, when it is a peer's; `None`: answered here.
    pub(super) async fn renew_pool(
        &mut self,
        req: &pb::KeepAliveRequest,
    ) -> Option<Result<pb::KeepAliveResponse, Status>> {
        let home = super::pool_homes::home_unless_forwarded(
            &self.state,
            &self.who,
            &self.metadata,
            self.forwarded,
            &req.pool,
        )
        .await?;
        let peer = Arc::clone(home.peer());
        let owner = Owner {
            peer: Arc::clone(&peer),
            lease_id: String::new(),
        };
        match self.renew_at(&owner, req.clone()).await {
            Ok(answer) => Some(Ok(answer)),
            Err(status) => {
                self.open.remove(&peer.name);
                Some(Err(super::peer_pools::unreached(&peer, status)))
            }
        }
    }

    async fn renew_at(
        &mut self,
        owner: &Owner,
        req: pb::KeepAliveRequest,
    ) -> Result<pb::KeepAliveResponse, Status> {
        let name = owner.peer.name.clone();
        // Raw statuses: `renew` tells a gone owner from an unreachable one.
        let ended = || Status::unavailable("the forwarded keepalive stream ended");
        if let Some(open) = self.open.get_mut(&name) {
            open.requests.send(req).await.map_err(|_| ended())?;
            return match open.answers.message().await {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => Err(ended()),
                Err(status) => Err(status),
            };
        }
        tracing::info!(
            lease_id = %owner.lease_id,
            owner = %name,
            caller = %self.who.name,
            "forwarding keepalives to the lease's owner"
        );
        let (requests, outgoing_rx) = tokio::sync::mpsc::channel(4);
        // Queued before the call: the owner answers it first.
        requests.send(req).await.map_err(|_| ended())?;
        let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing_rx));
        *request.metadata_mut() = outgoing(&self.state, &self.who, &self.metadata);
        let mut answers = SessionServiceClient::new(owner.peer.channel())
            .keep_alive(request)
            .await?
            .into_inner();
        let answer = match answers.message().await {
            Ok(Some(answer)) => answer,
            Ok(None) => return Err(ended()),
            Err(status) => return Err(status),
        };
        self.open.insert(name, OpenKeepAlive { requests, answers });
        Ok(answer)
    }
}
