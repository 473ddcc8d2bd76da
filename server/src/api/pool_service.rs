//! PoolService: create, inspect, watch and delete pools.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use sandpool_proto::v1::{self as pb, pool_service_server::PoolService};
use tonic::{Request, Response, Status};

use super::{
    AppState, audit, caller, convert, deadline, peer_pools, required, session_service::open_stream,
};
use crate::error::Error;

/// WatchPoolStats sends at most one message per this interval.
const WATCH_MIN_INTERVAL: Duration = Duration::from_millis(100);

pub struct PoolApi {
    state: Arc<AppState>,
}

impl PoolApi {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchPoolStatsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PoolService for PoolApi {
    async fn create_pool(
        &self,
        request: Request<pb::CreatePoolRequest>,
    ) -> Result<Response<pb::CreatePoolResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let deadline = deadline(&request);
            let req = request.into_inner();
            let spec = req
                .spec
                .ok_or_else(|| Status::from(Error::invalid("spec", "is missing")))?;
            let spec = convert::spec_from_pb(spec)?;
            let owner_ttl = convert::duration("owner_ttl", req.owner_ttl)?;
            let view = self
                .state
                .manager
                .create_pool(&who, spec, owner_ttl, req.wait_ready, deadline)
                .await?;
            audit::pool_created(&who, &view.spec);
            Ok(Response::new(pb::CreatePoolResponse {
                pool: Some(convert::pool_to_pb(&view, !who.is_admin())),
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
        let result = (|| {
            let name = request.into_inner().name;
            required("name", &name)?;
            let view = self.state.manager.get_pool(&who, &name)?;
            Ok(Response::new(pb::GetPoolResponse {
                pool: Some(convert::pool_to_pb(&view, !who.is_admin())),
            }))
        })();
        audit::outcome(&who, "GetPool", result)
    }

    async fn list_pools(
        &self,
        request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let who = caller(&request)?;
        let pools = self
            .state
            .manager
            .list_pools(&who)
            .iter()
            .map(|view| convert::pool_to_pb(view, !who.is_admin()))
            .collect();
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }

    async fn delete_pool(
        &self,
        request: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::DeletePoolResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let deadline = deadline(&request);
            let req = request.into_inner();
            required("name", &req.name)?;
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
            let name = req.name;
            required("name", &name)?;
            // One replica's own, when the caller names a peer.
            if let Some(stats) =
                peer_pools::one_replica(&self.state, &who, &metadata, &name).await?
            {
                return Ok(Response::new(pb::GetPoolStatsResponse {
                    stats: Some(stats),
                }));
            }
            let local = convert::stats_to_pb(&self.state.manager.stats(&who, &name)?);
            let stats = if metadata.contains_key(peer_pools::REPLICA_HEADER) {
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
        let name = request.into_inner().name;
        let opened = required("name", &name)
            .and_then(|()| Ok(self.state.manager.watch(&who, &name)?))
            .and_then(|watch| Ok((watch, open_stream(&self.state, &who)?)));
        let ((mut changes, read), held) = audit::outcome(&who, "WatchPoolStats", opened)?;
        let stop = self.state.streams.clone();
        let stream = async_stream(move |tx| async move {
            let _held = held;
            loop {
                let stats = read();
                let closed =
                    stats.closed && stats.total_size == 0 && stats.temporary_containers == 0;
                let message = pb::WatchPoolStatsResponse {
                    stats: Some(convert::stats_to_pb(&stats)),
                };
                if tx.send(Ok(message)).await.is_err() || closed {
                    return;
                }
                // At most one message per interval; changes during it are
                // folded into the next message.
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_MIN_INTERVAL) => {}
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
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(stream))
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
