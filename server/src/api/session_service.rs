//! SessionService: leases (acquire, keep alive, release) and runs.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use sandpool_proto::v1::{self as pb, session_service_server::SessionService};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{
    AppState, audit, caller, convert, deadline, forward, peer_pools, pool_homes,
    pool_service::async_stream, required, resume,
};
use crate::{
    error::Error,
    files,
    identity::{Identity, Quota, QuotaGuard},
    pool::{
        AcquireRequest, LeaseFile, LeaseGuard,
        lease::{Renewal, RunId},
    },
    run::{self, Program, RunEvent, context, install, interactive},
    telemetry,
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

/// The files of an Acquire request, checked.
fn lease_files(files: Vec<pb::LeaseFile>, roots: &[String]) -> Result<Vec<LeaseFile>, Status> {
    let mut checked = Vec::with_capacity(files.len());
    for (i, file) in files.into_iter().enumerate() {
        let mode = file.mode.unwrap_or(0o644);
        if mode > 0o7777 {
            return Err(Error::invalid(
                format!("files[{i}].mode"),
                format!("{mode:o} is not a file mode"),
            )
            .into());
        }
        checked.push(LeaseFile {
            path: files::check_path(&format!("files[{i}].path"), &file.path, roots)?,
            content: file.content,
            mode,
        });
    }
    Ok(checked)
}

/// What a run's audit record says it ran.
fn run_subject(lease_id: &str, pool_language: &str, program: &Program) -> audit::RunSubject {
    match program {
        Program::Code { source, language } => audit::RunSubject::new(
            lease_id,
            language.as_deref().unwrap_or(pool_language),
            source,
        ),
        Program::Argv(argv) => {
            audit::RunSubject::new(lease_id, "command", argv.join("\0").as_bytes())
        }
        Program::Shell(line) => audit::RunSubject::new(lease_id, "shell", line.as_bytes()),
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let received = Instant::now();
        let who = caller(&request)?;
        let result = async {
            let deadline = deadline(&request);
            let (metadata, extensions, req) = request.into_parts();
            required("pool", &req.pool)?;
            telemetry::record_pool(&req.pool);
            // No idle container of a config pool here: a peer with one
            // serves it, before this replica waits or creates.
            if let Some(answer) =
                peer_pools::acquire_at_peer(&self.state, &who, &metadata, &extensions, &req).await
            {
                return answer;
            }
            // A pool made at run time on a peer: the lease is that peer's.
            if let Some(home) =
                pool_homes::home_of(&self.state, &who, &metadata, &extensions, &req.pool).await
            {
                return home.unary(home.sessions().acquire(home.request(req)).await);
            }
            let request = AcquireRequest {
                pool: req.pool,
                ttl: convert::duration("ttl", req.ttl)?,
                env: {
                    let mut env: Vec<(String, String)> = req.env.into_iter().collect();
                    env.sort();
                    env
                },
                files: lease_files(req.files, &self.state.file_limits.allowed_roots)?,
            };
            let lease = self.state.manager.acquire(&who, request, deadline).await?;
            telemetry::record_lease(&lease.id);
            audit::acquired(&who, &lease);
            Ok(Response::new(pb::AcquireResponse {
                lease: Some(convert::lease_to_pb(&lease)),
                queued: Some(convert::pb_duration(
                    lease.granted.saturating_duration_since(received),
                )),
            }))
        }
        .await;
        audit::outcome(&who, "Acquire", result)
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let who = caller(&request)?;
        let result = open_stream(&self.state, &who).map(|held| {
            // Keepalives of other replicas' leases go on to their owners.
            let mut owners =
                forward::KeepAlives::new(Arc::clone(&self.state), Arc::clone(&who), &request);
            let mut incoming = request.into_inner();
            let manager = Arc::clone(&self.state.manager);
            let stop = self.state.streams.clone();
            let who = Arc::clone(&who);
            let stream = async_stream(move |tx| async move {
                let _held = held;
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
                        Some(Ok(req)) if req.lease_id.is_empty() && !req.pool.is_empty() => {
                            match manager.keepalive_pool(&who, &req.pool) {
                                // Not here: a pool of a peer's, maybe.
                                Renewal::NotFound => match owners.renew_pool(&req).await {
                                    Some(Ok(reply)) => reply,
                                    Some(Err(status)) => {
                                        let _ = tx.send(Err(status)).await;
                                        return;
                                    }
                                    None => convert::renewal_to_pb(
                                        String::new(),
                                        req.pool,
                                        Renewal::NotFound,
                                    ),
                                },
                                renewal => convert::renewal_to_pb(String::new(), req.pool, renewal),
                            }
                        }
                        Some(Ok(req)) => match owners.renew(&req).await {
                            Some(Ok(reply)) => reply,
                            Some(Err(status)) => {
                                // The owner is out of reach: the caller's
                                // stream ends with why, and it reconnects.
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                            None => convert::renewal_to_pb(
                                req.lease_id.clone(),
                                String::new(),
                                manager.keepalive(&req.lease_id, &who.name),
                            ),
                        },
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(stream)
        });
        audit::outcome(&who, "KeepAlive", result)
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            required("lease_id", &req.lease_id)?;
            telemetry::record_lease(&req.lease_id);
            if let Some(to) = forward::to_owner(
                &self.state,
                "Release",
                &who,
                &metadata,
                &extensions,
                &req.lease_id,
            )
            .await?
            {
                return to.unary(to.sessions().release(to.request(req)).await);
            }
            let before = self.state.manager.release(&req.lease_id, &who.name)?;
            if before.is_none() {
                audit::released(&who, &req.lease_id);
            }
            Ok(Response::new(pb::ReleaseResponse {
                previous_state: convert::lease_state(before) as i32,
            }))
        }
        .await;
        audit::outcome(&who, "Release", result)
    }

    type RunStream = RunStream;

    async fn run(
        &self,
        request: Request<pb::RunRequest>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            if let Some(to) = forward::to_owner(
                &self.state,
                "Run",
                &who,
                &metadata,
                &extensions,
                &req.lease_id,
            )
            .await?
            {
                let answer = to.sessions().run(to.request(req)).await;
                return to.stream(answer);
            }
            let call = RunCall::open(&self.state, &who, req, "lease_id")?;
            if let Some(run_id) = call.spec.run_id.clone() {
                return self.run_resumable(call, run_id, &who).await;
            }
            let events = run::start(call.lease, call.spec, &self.state.run_limits).await?;
            let stream = event_stream(events, Arc::clone(&who), call.subject, call.held);
            Ok(Response::new(Box::pin(stream) as RunStream))
        }
        .await;
        audit::outcome(&who, "Run", result)
    }

    type AttachStream = RunStream;

    async fn attach(
        &self,
        request: Request<pb::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            required("lease_id", &req.lease_id)?;
            required("run_id", &req.run_id)?;
            telemetry::record_lease(&req.lease_id);
            if let Some(to) = forward::to_owner(
                &self.state,
                "Attach",
                &who,
                &metadata,
                &extensions,
                &req.lease_id,
            )
            .await?
            {
                let answer = to.sessions().attach(to.request(req)).await;
                return to.stream(answer);
            }
            let lease = self.state.manager.lease(&req.lease_id, &who.name)?;
            let journal = resume::Journals::of(&lease).get(&lease, &req.run_id)?;
            // The stream holds the journal, not the lease: an ending lease
            // stops the run, whose exit then ends the stream.
            drop(lease);
            let held = open_stream(&self.state, &who)?;
            let stream = journal.attach(req.after_seq, Some(held))?;
            Ok(Response::new(Box::pin(stream) as RunStream))
        }
        .await;
        audit::outcome(&who, "Attach", result)
    }

    type InteractStream = RunStream;

    async fn interact(
        &self,
        request: Request<Streaming<pb::InteractRequest>>,
    ) -> Result<Response<Self::InteractStream>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, mut requests) = request.into_parts();
            let start = match requests.message().await? {
                Some(pb::InteractRequest {
                    action: Some(pb::interact_request::Action::Start(start)),
                }) => start,
                Some(_) => {
                    return Err(Error::invalid(
                        "start",
                        "must be the first request of an interactive run",
                    )
                    .into());
                }
                None => {
                    return Err(
                        Error::invalid("start", "the requests ended before the start").into(),
                    );
                }
            };
            let lease_id = start
                .run
                .as_ref()
                .map(|r| r.lease_id.as_str())
                .unwrap_or("");
            if let Some(to) = forward::to_owner(
                &self.state,
                "Interact",
                &who,
                &metadata,
                &extensions,
                lease_id,
            )
            .await?
            {
                let start = pb::InteractRequest {
                    action: Some(pb::interact_request::Action::Start(start)),
                };
                return to.interact(start, requests).await;
            }
            let req = start
                .run
                .ok_or_else(|| Error::invalid("start.run", "is required: what to run"))?;
            if !req.run_id.is_empty() {
                return Err(Error::invalid(
                    "start.run.run_id",
                    "must be empty: interactive runs are not resumable (their input is live)",
                )
                .into());
            }
            let terminal = start
                .terminal
                .map(|t| interactive::terminal_size("start.terminal", t.rows, t.columns))
                .transpose()?;
            let call = RunCall::open(&self.state, &who, req, "start.run.lease_id")?;
            let (events, controls) =
                run::start_interactive(call.lease, call.spec, &self.state.run_limits, terminal)
                    .await?;
            let (refused_tx, refused_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(apply_interactions(requests, controls, refused_tx));
            let events = event_stream(events, Arc::clone(&who), call.subject, call.held);
            // A bad request ends the call with its status (tonic sends
            // nothing after an error; the run, its stream dropped, is
            // killed). The call ends with the run's last event even while
            // the client still sends (`None` marks the end).
            let refused = futures::stream::once(refused_rx)
                .filter_map(|r| futures::future::ready(r.ok().map(|status| Some(Err(status)))));
            let events = events
                .map(Some)
                .chain(futures::stream::once(futures::future::ready(None)));
            let stream = futures::stream::select(events, refused)
                .scan((), |(), item| futures::future::ready(item));
            Ok(Response::new(Box::pin(stream) as RunStream))
        }
        .await;
        audit::outcome(&who, "Interact", result)
    }

    async fn install_libraries(
        &self,
        request: Request<pb::InstallLibrariesRequest>,
    ) -> Result<Response<pb::InstallLibrariesResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            required("lease_id", &req.lease_id)?;
            if let Some(to) = forward::to_owner(
                &self.state,
                "InstallLibraries",
                &who,
                &metadata,
                &extensions,
                &req.lease_id,
            )
            .await?
            {
                return to.unary(to.sessions().install_libraries(to.request(req)).await);
            }
            let lease = self.state.manager.lease(&req.lease_id, &who.name)?;
            let started = Instant::now();
            telemetry::record_lease(&req.lease_id);
            let log = install::install_for_lease(&lease, req.libraries, &self.state.file_limits)
                .instrument(crate::otel_span!("lease.install"))
                .await?;
            Ok(Response::new(pb::InstallLibrariesResponse {
                log,
                duration: Some(convert::pb_duration(started.elapsed())),
            }))
        }
        .await;
        audit::outcome(&who, "InstallLibraries", result)
    }

    async fn create_context(
        &self,
        request: Request<pb::CreateContextRequest>,
    ) -> Result<Response<pb::CreateContextResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            required("lease_id", &req.lease_id)?;
            if let Some(to) = forward::to_owner(
                &self.state,
                "CreateContext",
                &who,
                &metadata,
                &extensions,
                &req.lease_id,
            )
            .await?
            {
                return to.unary(to.sessions().create_context(to.request(req)).await);
            }
            let lease = self.state.manager.lease(&req.lease_id, &who.name)?;
            let context_id = context::create(&lease, Some(&req.language)).await?;
            Ok(Response::new(pb::CreateContextResponse { context_id }))
        }
        .await;
        audit::outcome(&who, "CreateContext", result)
    }

    async fn delete_context(
        &self,
        request: Request<pb::DeleteContextRequest>,
    ) -> Result<Response<pb::DeleteContextResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            required("lease_id", &req.lease_id)?;
            required("context_id", &req.context_id)?;
            if let Some(to) = forward::to_owner(
                &self.state,
                "DeleteContext",
                &who,
                &metadata,
                &extensions,
                &req.lease_id,
            )
            .await?
            {
                return to.unary(to.sessions().delete_context(to.request(req)).await);
            }
            let lease = self.state.manager.lease(&req.lease_id, &who.name)?;
            context::delete(&lease, &req.context_id).await?;
            Ok(Response::new(pb::DeleteContextResponse {}))
        }
        .await;
        audit::outcome(&who, "DeleteContext", result)
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let who = caller(&request)?;
        let result = async {
            let (metadata, extensions, req) = request.into_parts();
            required("lease_id", &req.lease_id)?;
            required("run_id", &req.run_id)?;
            if let Some(to) = forward::to_owner(
                &self.state,
                "Cancel",
                &who,
                &metadata,
                &extensions,
                &req.lease_id,
            )
            .await?
            {
                return to.unary(to.sessions().cancel(to.request(req)).await);
            }
            let cancelled = self
                .state
                .manager
                .cancel_run(&req.lease_id, &who.name, &req.run_id)?;
            Ok(Response::new(pb::CancelResponse { cancelled }))
        }
        .await;
        audit::outcome(&who, "Cancel", result)
    }
}

impl SessionApi {
    /// A Run with a client-chosen id: started and journaled the first time,
    /// attached to (from its first event) when repeated.
    async fn run_resumable(
        &self,
        call: RunCall,
        run_id: RunId,
        who: &Arc<Identity>,
    ) -> Result<Response<RunStream>, Status> {
        let journals = resume::Journals::of(&call.lease);
        let fingerprint = call.spec.fingerprint();
        let journal =
            match journals.claim(&call.lease, &run_id, fingerprint, &self.state.journals)? {
                resume::Claim::Existing(journal) => journal,
                resume::Claim::New(journal) => {
                    let events =
                        match run::start(call.lease, call.spec, &self.state.run_limits).await {
                            Ok(events) => events,
                            Err(e) => {
                                // Nothing ran: the id is free again, and a Run
                                // that attached meanwhile gets the same answer.
                                let status = Status::from(e);
                                journals.forget(&run_id);
                                journal.fail(status.clone());
                                return Err(status);
                            }
                        };
                    let (who, subject) = (Arc::clone(who), call.subject);
                    let id = run_id.to_string();
                    tokio::spawn(resume::record(Arc::clone(&journal), events, move |event| {
                        if let RunEvent::Exit(exit) = event {
                            audit::run_ended(&who, &subject, &id, exit);
                        }
                    }));
                    journal
                }
            };
        let stream = journal.attach(0, Some(call.held))?;
        Ok(Response::new(Box::pin(stream) as RunStream))
    }
}

/// A run request checked against its caller: the caller's lease, the run,
/// what the audit record says it ran, and the caller's stream slot (held
/// until the run's stream ends).
struct RunCall {
    lease: LeaseGuard,
    spec: run::RunSpec,
    subject: audit::RunSubject,
    held: QuotaGuard,
}

impl RunCall {
    /// `lease_field`: how the request names its lease id, for the error.
    fn open(
        state: &AppState,
        who: &Identity,
        req: pb::RunRequest,
        lease_field: &str,
    ) -> Result<Self, Status> {
        required(lease_field, &req.lease_id)?;
        telemetry::record_lease(&req.lease_id);
        let lease = state.manager.lease(&req.lease_id, &who.name)?;
        telemetry::record_pool(&lease.spec().name);
        let held = open_stream(state, who)?;
        let lease_id = req.lease_id.clone();
        let spec = convert::run_spec_from_pb(req)?;
        let subject = run_subject(&lease_id, &lease.spec().language, &spec.program);
        Ok(Self {
            lease,
            spec,
            subject,
            held,
        })
    }
}

/// A run's events as responses, numbered from 1; its end goes to the
/// audit log, and the caller's stream slot is held until the stream ends.
fn event_stream(
    events: tokio::sync::mpsc::Receiver<RunEvent>,
    who: Arc<Identity>,
    subject: audit::RunSubject,
    held: QuotaGuard,
) -> impl Stream<Item = Result<pb::RunResponse, Status>> + Send + 'static {
    let mut run_id = String::new();
    tokio_stream::wrappers::ReceiverStream::new(events)
        .enumerate()
        .map(move |(i, event)| {
            let _held = &held;
            match &event {
                RunEvent::Started { run_id: id, .. } => run_id = id.to_string(),
                RunEvent::Exit(exit) => audit::run_ended(&who, &subject, &run_id, exit),
                _ => {}
            }
            convert::run_event_to_pb(i as u64 + 1, event)
        })
}

/// Applies an interactive run's requests after its start, in order, until
/// the client stops sending or the run's response is over. The first bad
/// request is sent to `refused` and ends the call.
async fn apply_interactions(
    mut requests: Streaming<pb::InteractRequest>,
    mut controls: run::Controls,
    mut refused: tokio::sync::oneshot::Sender<Status>,
) {
    use pb::interact_request::Action;
    loop {
        let next = tokio::select! {
            next = requests.message() => next,
            // The response is over (the run ended, or the client left).
            () = refused.closed() => return,
        };
        // Ended (or broken): stdin closes with the controls.
        let Ok(Some(request)) = next else { return };
        let outcome = match request.action {
            None => Err(Error::invalid(
                "action",
                "is empty; send stdin, close_stdin, signal or resize",
            )),
            Some(Action::Start(_)) => Err(Error::invalid(
                "start",
                "was sent already; an interactive run starts once",
            )),
            Some(Action::Stdin(data)) => tokio::select! {
                written = controls.write(data) => written,
                () = refused.closed() => return,
            },
            Some(Action::CloseStdin(_)) => {
                controls.close_stdin();
                Ok(())
            }
            Some(Action::Signal(signal)) => controls.signal(signal).await,
            Some(Action::Resize(size)) => {
                match interactive::terminal_size("resize", size.rows, size.columns) {
                    Ok(size) => controls.resize(size).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = outcome {
            let _ = refused.send(e.into());
            return;
        }
    }
}

pub(super) fn open_stream(state: &AppState, who: &Identity) -> Result<QuotaGuard, Status> {
    state
        .manager
        .quotas()
        .take(who, Quota::Streams)
        .map_err(|e| Status::from(Error::QuotaExceeded(e)))
}
