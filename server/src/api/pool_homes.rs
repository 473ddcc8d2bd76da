//! Pools made at run time, across replicas. Such a pool lives on the replica
//! whose CreatePool made it (its `replica` field says which); a call naming
//! it that reaches another replica (Acquire, GetPool, GetPoolStats,
//! WatchPoolStats, DeletePool, the owner's keepalive) is sent there, as the
//! caller, and answered there.
//!
//! Which replica that is, is asked rather than derived from the name: every
//! peer at once, with GetPool as the caller (forwarded, so each answers for
//! itself alone). The answer is remembered until that replica says it has
//! no such pool, so a pool in steady use costs one question per replica,
//! not one per call; and a replica joining or leaving does not move any
//! pool.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::join_all;
use sandpool_proto::v1::{
    self as pb, pool_service_client::PoolServiceClient,
    session_service_client::SessionServiceClient,
};
use tonic::{
    Code, Request, Response, Status, Streaming, metadata::MetadataMap, transport::Channel,
};

use super::{AppState, auth::Forwarded, forward::outgoing};
use crate::{cluster::Peer, error::Error, identity::Identity, server::MAX_MESSAGE_BYTES};

/// How long a peer may take to say whether it has a pool: a call naming a
/// pool of another replica waits this at worst the first time.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// The replica each pool made at run time on a peer was last found on.
#[derive(Debug, Default)]
pub struct PoolHomes {
    known: Mutex<HashMap<String, String>>,
}

impl PoolHomes {
    fn get(&self, pool: &str) -> Option<String> {
        self.lock().get(pool).cloned()
    }

    fn remember(&self, pool: &str, replica: &str) {
        self.lock().insert(pool.to_string(), replica.to_string());
    }

    /// The pool is not (or no longer) where it was found.
    fn forget(&self, pool: &str) {
        self.lock().remove(pool);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A panic while holding it leaves a plain map, still consistent.
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A call naming a pool that lives on a peer, on its way there.
pub(super) struct ToHome {
    peer: Arc<Peer>,
    pool: String,
    metadata: MetadataMap,
    state: Arc<AppState>,
}

/// Whether `who` may see a pool of this replica called `name`.
fn here(state: &AppState, who: &Identity, name: &str) -> bool {
    state.manager.get_pool(who, name).is_ok()
}

/// The peer on which the pool `name`, made at run time, lives, when this
/// replica has no pool of that name `who` may use, the call was not
/// forwarded here, and a peer has one. `None`: the call is this replica's
/// to answer (NOT_FOUND, if the pool is nowhere).
pub(super) async fn home_of(
    state: &Arc<AppState>,
    who: &Identity,
    metadata: &MetadataMap,
    extensions: &tonic::Extensions,
    name: &str,
) -> Option<ToHome> {
    let forwarded = extensions.get::<Forwarded>().is_some();
    home_unless_forwarded(state, who, metadata, forwarded, name).await
}

/// `home_of`, for a call whose request is gone (a keepalive stream's).
pub(super) async fn home_unless_forwarded(
    state: &Arc<AppState>,
    who: &Identity,
    metadata: &MetadataMap,
    forwarded: bool,
    name: &str,
) -> Option<ToHome> {
    if forwarded || !state.cluster.has_peers() || here(state, who, name) {
        return None;
    }
    let to = |peer: Arc<Peer>| ToHome::at(state, who, metadata, peer, name);
    if let Some(peer) = state
        .pool_homes
        .get(name)
        .and_then(|replica| state.cluster.peer(&replica))
    {
        return Some(to(peer));
    }
    let peer = find(state, who, metadata, name).await?;
    state.pool_homes.remember(name, &peer.name);
    tracing::info!(pool = name, replica = %peer.name, "a pool made at run time lives on a peer");
    Some(to(peer))
}

/// The peer that says it has the pool `name` made at run time, asked all
/// at once; `None` when none does (or none answers in time).
pub(super) async fn find(
    state: &AppState,
    who: &Identity,
    metadata: &MetadataMap,
    name: &str,
) -> Option<Arc<Peer>> {
    let peers: Vec<Arc<Peer>> = state.cluster.peers();
    let answers = join_all(peers.iter().map(|peer| async {
        let request = super::peer_pools::to_peer(
            state,
            who,
            metadata,
            pb::GetPoolRequest {
                name: name.to_string(),
            },
            Some(ASK_TIMEOUT),
        );
        let mut client = PoolServiceClient::new(peer.channel());
        match tokio::time::timeout(ASK_TIMEOUT, client.get_pool(request)).await {
            Ok(Ok(answer)) => answer
                .into_inner()
                .pool
                .is_some_and(|p| p.replica == peer.name),
            _ => false,
        }
    }))
    .await;
    peers
        .into_iter()
        .zip(answers)
        .find_map(|(peer, has)| has.then_some(peer))
}

impl ToHome {
    /// A call naming `pool`, for `peer`.
    pub(super) fn at(
        state: &Arc<AppState>,
        who: &Identity,
        metadata: &MetadataMap,
        peer: Arc<Peer>,
        pool: &str,
    ) -> Self {
        Self {
            peer,
            pool: pool.to_string(),
            metadata: outgoing(state, who, metadata),
            state: Arc::clone(state),
        }
    }

    pub(super) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        *request.metadata_mut() = self.metadata.clone();
        request
    }

    fn channel(&self) -> Channel {
        self.peer.channel()
    }

    pub(super) fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    pub(super) fn pools(&self) -> PoolServiceClient<Channel> {
        PoolServiceClient::new(self.channel())
    }

    pub(super) fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The home's answer to a unary call.
    pub(super) fn unary<T>(
        &self,
        answer: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        answer
            .map(|r| Response::new(r.into_inner()))
            .map_err(|s| self.failed(s))
    }

    /// The home's answer to a call that streams its response.
    pub(super) fn stream<T: Send + 'static>(
        &self,
        answer: Result<Response<Streaming<T>>, Status>,
    ) -> Result<Response<super::forward::Answers<T>>, Status> {
        use futures::StreamExt;
        let answers = answer.map_err(|s| self.failed(s))?.into_inner();
        let peer = Arc::clone(&self.peer);
        Ok(Response::new(Box::pin(answers.map(move |item| {
            item.map_err(|s| super::peer_pools::unreached(&peer, s))
        }))))
    }

    /// The home's own NOT_FOUND means the pool left it (deleted, or the
    /// replica restarted): the next call asks again. A failure to reach it
    /// says which replica was not reached.
    fn failed(&self, status: Status) -> Status {
        if status.code() == Code::NotFound || crate::cluster::unreached(&status) {
            self.state.pool_homes.forget(&self.pool);
        }
        super::peer_pools::unreached(&self.peer, status)
    }
}

/// CreatePool of `name` while a peer has a pool of that name `who` may
/// see: ALREADY_EXISTS, as on one server. (Two CreatePools of one name
/// racing on two replicas can both succeed; each replica then serves its
/// own, and calls through a third reach the one found first.)
pub(super) async fn check_name_free(
    state: &AppState,
    who: &Identity,
    metadata: &MetadataMap,
    extensions: &tonic::Extensions,
    name: &str,
) -> Result<(), Status> {
    if extensions.get::<Forwarded>().is_some() || !state.cluster.has_peers() {
        return Ok(());
    }
    match find(state, who, metadata, name).await {
        Some(peer) => {
            state.pool_homes.remember(name, &peer.name);
            Err(Error::PoolExistsOnReplica {
                pool: name.to_string(),
                replica: peer.name.clone(),
            }
            .into())
        }
        None => Ok(()),
    }
}
