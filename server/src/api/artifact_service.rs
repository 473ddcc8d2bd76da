//! ArtifactService: files in and out of a lease's container.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use sandpool_proto::v1::{self as pb, artifact_service_server::ArtifactService};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{AppState, audit, caller, convert, forward, required, session_service::open_stream};
use crate::{
    error::Error,
    files::{self, DownloadKind, UploadTarget},
};

/// Download chunks are at most this large.
const MAX_CHUNK: usize = 256 * 1024;

pub struct ArtifactApi {
    state: Arc<AppState>,
}

impl ArtifactApi {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ArtifactService for ArtifactApi {
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let _held = open_stream(&self.state, &who)?;
            let (metadata, extensions, mut incoming) = request.into_parts();
            let header = match incoming.next().await {
                Some(Ok(pb::UploadRequest {
                    part: Some(pb::upload_request::Part::Header(h)),
                })) => h,
                Some(Err(status)) => return Err(status),
                _ => {
                    return Err(Status::from(Error::invalid(
                        "header",
                        "the first message of an upload must be its header",
                    )));
                }
            };
            required("header.lease_id", &header.lease_id)?;
            crate::telemetry::record_lease(&header.lease_id);
            if let Some(to) = forward::to_owner(
                &self.state,
                "Upload",
                &who,
                &metadata,
                &extensions,
                &header.lease_id,
            )
            .await?
            {
                let first = pb::UploadRequest {
                    part: Some(pb::upload_request::Part::Header(header)),
                };
                return to.upload(first, incoming).await;
            }
            let lease = self.state.manager.lease(&header.lease_id, &who.name)?;
            let target = UploadTarget {
                path: header.path,
                mode: header.mode.unwrap_or(0o644),
                tar: header.tar,
            };
            let chunks = incoming.map(|message| match message {
                Ok(pb::UploadRequest {
                    part: Some(pb::upload_request::Part::Chunk(data)),
                }) => Ok(data),
                Ok(_) => Err(Error::invalid(
                    "chunk",
                    "only the first message of an upload may be a header",
                )),
                Err(status) => Err(Error::UploadBroken(status.message().to_string())),
            });
            let done = files::upload(&lease, target, chunks, &self.state.file_limits)
                .instrument(crate::otel_span!("files.tar", direction = "upload"))
                .await?;
            audit::transfer(&who, lease.id(), "upload", &done.path, done.size);
            Ok(Response::new(pb::UploadResponse {
                path: done.path,
                size: done.size,
                sha256: done.sha256,
            }))
        }
        .await;
        audit::outcome(&who, "Upload", result)
    }

    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            required("lease_id", &req.lease_id)?;
            if let Some(to) = forward::to_owner(
                &self.state,
                "Download",
                &who,
                &metadata,
                &extensions,
                &req.lease_id,
            )
            .await?
            {
                let answer = to.artifacts().download(to.request(req)).await;
                return to.stream(answer);
            }
            let lease = self.state.manager.lease(&req.lease_id, &who.name)?;
            let held = open_stream(&self.state, &who)?;
            let (header, body) = files::download(&lease, &req.path, &self.state.file_limits)
                .instrument(crate::otel_span!("files.tar", direction = "download"))
                .await?;
            audit::transfer(&who, lease.id(), "download", &header.path, header.size);
            let header = pb::DownloadResponse {
                part: Some(pb::download_response::Part::Header(pb::DownloadHeader {
                    path: header.path,
                    kind: match header.kind {
                        DownloadKind::File => pb::DownloadKind::File,
                        DownloadKind::Tar => pb::DownloadKind::Tar,
                    } as i32,
                    mode: header.mode,
                    size: header.size,
                })),
            };
            // The lease stays guarded (no reset) until the download ends.
            let chunks = body
                .flat_map(|item| {
                    let pieces: Vec<Result<pb::DownloadResponse, Status>> = match item {
                        Ok(data) => (0..data.len())
                            .step_by(MAX_CHUNK)
                            .map(|at| {
                                let piece = data.slice(at..(at + MAX_CHUNK).min(data.len()));
                                Ok(pb::DownloadResponse {
                                    part: Some(pb::download_response::Part::Chunk(piece)),
                                })
                            })
                            .collect(),
                        Err(e) => vec![Err(Status::from(e))],
                    };
                    futures::stream::iter(pieces)
                })
                .map(move |item| {
                    let _held = (&lease, &held);
                    item
                });
            Ok(Response::new(
                Box::pin(futures::stream::once(async { Ok(header) }).chain(chunks))
                    as DownloadStream,
            ))
        }
        .await;
        audit::outcome(&who, "Download", result)
    }

    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            required("lease_id", &req.lease_id)?;
            if let Some(to) = forward::to_owner(
                &self.state,
                "ListArtifacts",
                &who,
                &metadata,
                &extensions,
                &req.lease_id,
            )
            .await?
            {
                return to.unary(to.artifacts().list_artifacts(to.request(req)).await);
            }
            let lease = self.state.manager.lease(&req.lease_id, &who.name)?;
            let artifacts = files::list_artifacts(&lease)
                .await?
                .into_iter()
                .filter(|a| req.run_id.is_empty() || a.run_id == req.run_id)
                .map(|a| convert::artifact_to_pb(&a))
                .collect();
            Ok(Response::new(pb::ListArtifactsResponse { artifacts }))
        }
        .await;
        audit::outcome(&who, "ListArtifacts", result)
    }
}
