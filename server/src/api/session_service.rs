//! SessionService: leases (acquire, keep alive, release) and runs.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use sandpool_proto::v1::{self as pb, session_service_server::SessionService};
use tonic::{Request, Response, Status, Streaming};

use super::{AppState, caller, convert, deadline, pool_service::async_stream, required};
use crate::{
    error::Error,
    files,
    pool::{AcquireRequest, LeaseFile},
    run,
    run::{context, install},
};

pub struct SessionApi {
    state: Arc<AppState>,
}

impl SessionApi {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
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
        let limits = &self.state.file_limits;
        let mut files = Vec::with_capacity(req.files.len());
        for (i, file) in req.files.into_iter().enumerate() {
            let mode = file.mode.unwrap_or(0o644);
            if mode > 0o7777 {
                return Err(Error::invalid(
                    format!("files[{i}].mode"),
                    format!("{mode:o} is not a file mode"),
                )
                .into());
            }
            files.push(LeaseFile {
                path: files::check_path(
                    &format!("files[{i}].path"),
                    &file.path,
                    &limits.allowed_roots,
                )?,
                content: file.content,
                mode,
            });
        }
        let mut env: Vec<(String, String)> = req.env.into_iter().collect();
        env.sort();
        let request = AcquireRequest {
            pool: req.pool,
            ttl,
            env,
            owner,
            files,
        };
        let lease = self.state.manager.acquire(request, deadline).await?;
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
            .map(|(i, event)| convert::run_event_to_pb(i as u64 + 1, event));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn install_libraries(
        &self,
        request: Request<pb::InstallLibrariesRequest>,
    ) -> Result<Response<pb::InstallLibrariesResponse>, Status> {
        let owner = caller(&request);
        let req = request.into_inner();
        required("lease_id", &req.lease_id)?;
        let lease = self.state.manager.lease(&req.lease_id, owner.as_deref())?;
        let started = std::time::Instant::now();
        let log =
            install::install_for_lease(&lease, req.libraries, &self.state.file_limits).await?;
        Ok(Response::new(pb::InstallLibrariesResponse {
            log,
            duration: Some(convert::pb_duration(started.elapsed())),
        }))
    }

    async fn create_context(
        &self,
        request: Request<pb::CreateContextRequest>,
    ) -> Result<Response<pb::CreateContextResponse>, Status> {
        let owner = caller(&request);
        let req = request.into_inner();
        required("lease_id", &req.lease_id)?;
        let lease = self.state.manager.lease(&req.lease_id, owner.as_deref())?;
        let context_id = context::create(&lease, Some(&req.language)).await?;
        Ok(Response::new(pb::CreateContextResponse { context_id }))
    }

    async fn delete_context(
        &self,
        request: Request<pb::DeleteContextRequest>,
    ) -> Result<Response<pb::DeleteContextResponse>, Status> {
        let owner = caller(&request);
        let req = request.into_inner();
        required("lease_id", &req.lease_id)?;
        required("context_id", &req.context_id)?;
        let lease = self.state.manager.lease(&req.lease_id, owner.as_deref())?;
        context::delete(&lease, &req.context_id).await?;
        Ok(Response::new(pb::DeleteContextResponse {}))
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
