//! SessionService: leases (acquire, keep alive, release) and runs.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use sandpool_proto::v1::{self as pb, session_service_server::SessionService};
use tonic::{Request, Response, Status, Streaming};

use super::{AppState, caller, convert, deadline, pool_service::async_stream};
use crate::{
    pool::Error,
    run::{self, RunEvent},
};

pub struct SessionApi {
    state: Arc<AppState>,
}

impl SessionApi {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Error::InvalidArgument {
            field: field.into(),
            message: "is empty".into(),
        }
        .into());
    }
    Ok(())
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::KeepAliveResponse, Status>> + Send>>;
type RunStream = Pin<Box<dyn Stream<Item = Result<pb::RunResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let deadline = deadline(&request);
        let owner = caller(&request);
        let req = request.into_inner();
        required("pool", &req.pool)?;
        let ttl = convert::duration("ttl", req.ttl)?;
        let lease = self
            .state
            .manager
            .acquire(&req.pool, ttl, owner, deadline)
            .await?;
        Ok(Response::new(pb::AcquireResponse {
            lease: Some(convert::lease_to_pb(&lease)),
        }))
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let owner = caller(&request);
        let mut incoming = request.into_inner();
        let manager = Arc::clone(&self.state.manager);
        let stop = self.state.streams.clone();
        let stream = async_stream(move |tx| async move {
            loop {
                let next = tokio::select! {
                    next = incoming.next() => next,
                    _ = stop.cancelled() => return,
                };
                let reply = match next {
                    None => return,
                    Some(Err(status)) => {
                        tracing::debug!(%status, "keepalive stream broke");
                        return;
                    }
                    Some(Ok(req)) => convert::renewal_to_pb(
                        req.lease_id.clone(),
                        manager.keepalive(&req.lease_id, owner.as_deref()),
                    ),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let owner = caller(&request);
        let req = request.into_inner();
        required("lease_id", &req.lease_id)?;
        let before = self
            .state
            .manager
            .release(&req.lease_id, owner.as_deref())?;
        Ok(Response::new(pb::ReleaseResponse {
            previous_state: convert::lease_state(before) as i32,
        }))
    }

    type RunStream = RunStream;

    async fn run(
        &self,
        request: Request<pb::RunRequest>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let owner = caller(&request);
        let req = request.into_inner();
        required("lease_id", &req.lease_id)?;
        let lease = self.state.manager.lease(&req.lease_id, owner.as_deref())?;
        let spec = convert::run_spec_from_pb(req)?;
        let events = run::start(lease, spec, &self.state.run_limits).await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(events)
            .enumerate()
            .map(|(i, event)| {
                let seq = i as u64 + 1;
                let event = match event {
                    RunEvent::Started { run_id, start_time } => {
                        pb::run_response::Event::Started(pb::RunStarted {
                            run_id,
                            start_time: Some(convert::pb_time(start_time)),
                        })
                    }
                    RunEvent::Stdout(data) => {
                        pb::run_response::Event::Stdout(pb::OutputChunk { data })
                    }
                    RunEvent::Stderr(data) => {
                        pb::run_response::Event::Stderr(pb::OutputChunk { data })
                    }
                    RunEvent::Exit(exit) => {
                        pb::run_response::Event::Exit(convert::exit_to_pb(&exit))
                    }
                    RunEvent::Failed(err) => return Err(Status::from(err)),
                };
                Ok(pb::RunResponse {
                    seq,
                    event: Some(event),
                })
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let owner = caller(&request);
        let req = request.into_inner();
        required("lease_id", &req.lease_id)?;
        required("run_id", &req.run_id)?;
        let cancelled =
            self.state
                .manager
                .cancel_run(&req.lease_id, owner.as_deref(), &req.run_id)?;
        Ok(Response::new(pb::CancelResponse { cancelled }))
    }
}
