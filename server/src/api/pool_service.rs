//! PoolService: create, inspect, watch and delete pools.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use sandpool_proto::v1::{self as pb, pool_service_server::PoolService};
use tonic::{Request, Response, Status};

use super::{
    AppState, audit,
    auth::Forwarded,
    caller, convert, deadline, peer_pools, pool_homes,
    pool_watch::{self, WatchStream},
    required,
    session_service::open_stream,
};
use crate::{error::Error, identity::Identity, pool::PoolView};

pub struct PoolApi {
    state: Arc<AppState>,
}

impl PoolApi {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl PoolApi {
    /// `view` as the caller sees it: secrets redacted for all but admins,
    /// and a pool made at run time naming the replica it lives on.
    fn pool_pb(&self, view: &PoolView, who: &Identity) -> pb::Pool {
        let mut pool = convert::pool_to_pb(view, !who.is_admin());
        if view.owner.is_some() {
            pool.replica = self.state.cluster.replica().unwrap_or_default().to_string();
        }
        pool
    }
}

#[tonic::async_trait]
impl PoolService for PoolApi {
    async fn create_pool(
        &self,
        request: Request<pb::CreatePoolRequest>,
    ) -> Result<Response<pb::CreatePoolResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let deadline = deadline(&request);
            let (metadata, extensions, req) = request.into_parts();
            let spec = req
                .spec
                .ok_or_else(|| Status::from(Error::invalid("spec", "is missing")))?;
            let spec = convert::spec_from_pb(spec)?;
            // A name a peer's pool has is taken, as on one server.
            pool_homes::check_name_free(&self.state, &who, &metadata, &extensions, &spec.name)
                .await?;
            let owner_ttl = convert::duration("owner_ttl", req.owner_ttl)?;
            let view = self
                .state
                .manager
                .create_pool(&who, spec, owner_ttl, req.wait_ready, deadline)
                .await?;
            audit::pool_created(&who, &view.spec);
            Ok(Response::new(pb::CreatePoolResponse {
                pool: Some(self.pool_pb(&view, &who)),
            }))
        }
        .await;
        audit::outcome(&who, "CreatePool", result)
    }

    async fn get_pool(
        &self,
        request: Request<pb::GetPoolRequest>,
    ) -> Result<Response<pb::GetPoolResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            required("name", &req.name)?;
            if let Some(home) =
                pool_homes::home_of(&self.state, &who, &metadata, &extensions, &req.name).await
            {
                return home.unary(home.pools().get_pool(home.request(req)).await);
            }
            let view = self.state.manager.get_pool(&who, &req.name)?;
            let mut pool = self.pool_pb(&view, &who);
            if let Some(local) = pool.stats.take() {
                pool.stats = Some(
                    peer_pools::pool_stats(&self.state, &who, &metadata, &extensions, local).await,
                );
            }
            Ok(Response::new(pb::GetPoolResponse { pool: Some(pool) }))
        }
        .await;
        audit::outcome(&who, "GetPool", result)
    }

    async fn list_pools(
        &self,
        request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let who = caller(&request)?;
        let (metadata, extensions, _) = request.into_parts();
        let local = self
            .state
            .manager
            .list_pools(&who)
            .iter()
            .map(|view| self.pool_pb(view, &who))
            .collect();
        let pools = peer_pools::list_across(&self.state, &who, &metadata, &extensions, local).await;
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }

    async fn delete_pool(
        &self,
        request: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::DeletePoolResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let deadline = deadline(&request);
            let (metadata, extensions, req) = request.into_parts();
            required("name", &req.name)?;
            if let Some(home) =
                pool_homes::home_of(&self.state, &who, &metadata, &extensions, &req.name).await
            {
                // The caller's deadline goes along (see `forward::outgoing`).
                return home.unary(home.pools().delete_pool(home.request(req)).await);
            }
            let busy = self
                .state
                .manager
                .delete_pool(&who, &req.name, req.wait, deadline)
                .await?;
            audit::pool_deleted(&who, &req.name);
            Ok(Response::new(pb::DeletePoolResponse {
                busy_remaining: busy,
            }))
        }
        .await;
        audit::outcome(&who, "DeletePool", result)
    }

    async fn get_pool_stats(
        &self,
        request: Request<pb::GetPoolStatsRequest>,
    ) -> Result<Response<pb::GetPoolStatsResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            required("name", &req.name)?;
            let asked = peer_pools::replica_asked(&req.replica, &metadata);
            if let Some(replica) = asked {
                // One replica's own, when the caller names a peer.
                if let Some(stats) =
                    peer_pools::one_replica(&self.state, &who, &metadata, replica, &req.name)
                        .await?
                {
                    return Ok(Response::new(pb::GetPoolStatsResponse {
                        stats: Some(stats),
                    }));
                }
            } else if let Some(home) =
                pool_homes::home_of(&self.state, &who, &metadata, &extensions, &req.name).await
            {
                return home.unary(home.pools().get_pool_stats(home.request(req)).await);
            }
            let local = convert::stats_to_pb(&self.state.manager.stats(&who, &req.name)?);
            let stats = if asked.is_some() {
                local
            } else {
                peer_pools::pool_stats(&self.state, &who, &metadata, &extensions, local).await
            };
            Ok(Response::new(pb::GetPoolStatsResponse {
                stats: Some(stats),
            }))
        }
        .await;
        audit::outcome(&who, "GetPoolStats", result)
    }

    type WatchPoolStatsStream = WatchStream;

    async fn watch_pool_stats(
        &self,
        request: Request<pb::WatchPoolStatsRequest>,
    ) -> Result<Response<Self::WatchPoolStatsStream>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            required("name", &req.name)?;
            let asked = peer_pools::replica_asked(&req.replica, &metadata);
            // Another replica's: its own watch, passed on.
            let elsewhere = match asked {
                Some(replica) => peer_pools::named_peer(&self.state, replica)?.map(|peer| {
                    pool_homes::ToHome::at(&self.state, &who, &metadata, peer, &req.name)
                }),
                None => {
                    pool_homes::home_of(&self.state, &who, &metadata, &extensions, &req.name).await
                }
            };
            if let Some(home) = elsewhere {
                let mut forwarded = home.request(req);
                forwarded.get_mut().replica = String::new();
                let answer = home.pools().watch_pool_stats(forwarded).await;
                return home.stream(answer);
            }
            let opened = self
                .state
                .manager
                .watch(&who, &req.name)
                .map_err(Status::from)
                .and_then(|watch| Ok((watch, open_stream(&self.state, &who)?)));
            let (watch, held) = opened?;
            // A config pool's stats are summed over the replicas, unless one
            // was asked for or a peer asks.
            let summed = asked.is_none()
                && extensions.get::<Forwarded>().is_none()
                && self.state.manager.is_config_pool(&req.name);
            let peers = if summed {
                self.state.cluster.peers()
            } else {
                Vec::new()
            };
            Ok(Response::new(pool_watch::stream(
                &self.state,
                &who,
                &metadata,
                &req.name,
                watch,
                held,
                peers,
            )))
        }
        .await;
        audit::outcome(&who, "WatchPoolStats", result)
    }
}

/// A stream fed by a task; the task sees the receiver go away through
/// `tx.closed()`.
pub(super) fn async_stream<T, F, Fut>(body: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
