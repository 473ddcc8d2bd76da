//! A lease held by this process: kept alive in the background (see
//! [`crate::keepalive`] for the contract), released on `release()` or drop.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use sandpool_proto::v1::{self as pb, download_response::Part};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

use crate::{
    Client, Error, RunOptions, RunOutput, RunStream,
    client::{DEFAULT_ACQUIRE_WAIT, TRANSFER_TIMEOUT, with_deadline},
    interact::{self, InteractInput, Interaction},
    keepalive::{Held, keep_alive},
    run::duration_pb,
};

/// Upload chunk size.
const UPLOAD_CHUNK: usize = 1 << 20;

/// How to acquire.
#[derive(Debug, Clone)]
pub struct AcquireOptions {
    pub pool: String,
    /// Lease TTL; default: the pool's.
    pub ttl: Option<Duration>,
    /// How long the call may wait for a container (its deadline; the
    /// pool's acquisition_timeout applies too). Default 300 s.
    pub wait: Option<Duration>,
    /// Environment variables for every run of the lease.
    pub env: Vec<(String, String)>,
    /// Files placed in the container before the lease is handed out.
    pub files: Vec<pb::LeaseFile>,
}

impl AcquireOptions {
    pub fn new(pool: impl Into<String>) -> Self {
        Self {
            pool: pool.into(),
            ttl: None,
            wait: None,
            env: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Sets an environment variable for every run of the lease.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Places a file in the container before the lease is handed out.
    pub fn file(mut self, path: impl Into<String>, content: impl Into<Bytes>) -> Self {
        self.files.push(pb::LeaseFile {
            path: path.into(),
            content: content.into(),
            mode: None,
        });
        self
    }

    /// Places a file with a mode (e.g. 0o755).
    pub fn file_with_mode(
        mut self,
        path: impl Into<String>,
        content: impl Into<Bytes>,
        mode: u32,
    ) -> Self {
        self.files.push(pb::LeaseFile {
            path: path.into(),
            content: content.into(),
            mode: Some(mode),
        });
        self
    }

    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }
}

/// A lease on a warm container.
pub struct Session {
    client: Client,
    lease: pb::Lease,
    held: Arc<Held>,
    keepalive: Option<JoinHandle<()>>,
    released: bool,
}

fn duration_of(d: Option<prost_types::Duration>) -> Duration {
    d.and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::from_secs(30))
}

impl Session {
    pub(crate) async fn acquire(client: Client, options: AcquireOptions) -> Result<Self, Error> {
        let (lease, started) = Self::ask(&client, options).await?;
        Self::hold(client, lease, started)
    }

    /// The Acquire call: the lease, and the earliest it can have been
    /// granted, its TTL counting from then (the session's clock is on the
    /// safe side): when it was asked for, plus how long the server says the
    /// request waited for a container (a lease that waited longer than its
    /// TTL is not lost on arrival).
    pub(crate) async fn ask(
        client: &Client,
        options: AcquireOptions,
    ) -> Result<(Option<pb::Lease>, Instant), tonic::Status> {
        let request = with_deadline(
            pb::AcquireRequest {
                pool: options.pool,
                ttl: options.ttl.map(duration_pb),
                env: options.env.into_iter().collect(),
                files: options.files,
            },
            options.wait.unwrap_or(DEFAULT_ACQUIRE_WAIT),
        );
        let sent = Instant::now();
        let answer = client.sessions().acquire(request).await?.into_inner();
        let queued = answer
            .queued
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        // Never later than the answer: a lease cannot be granted after it.
        let now = Instant::now();
        let granted = sent.checked_add(queued).map_or(now, |at| at.min(now));
        Ok((answer.lease, granted))
    }

    /// The session of a lease that an Acquire sent at `started` granted:
    /// its keepalive starts.
    pub(crate) fn hold(
        client: Client,
        lease: Option<pb::Lease>,
        started: Instant,
    ) -> Result<Self, Error> {
        let lease =
            lease.ok_or_else(|| Error::Protocol("Acquire answered without a lease".into()))?;
        let held = Held::new(lease.id.clone(), duration_of(lease.ttl), started);
        let keepalive = tokio::spawn(keep_alive(client.clone(), Arc::clone(&held), started));
        Ok(Self {
            client,
            lease,
            held,
            keepalive: Some(keepalive),
            released: false,
        })
    }

    pub fn lease(&self) -> &pb::Lease {
        &self.lease
    }

    pub fn lease_id(&self) -> &str {
        &self.lease.id
    }

    pub fn container_id(&self) -> &str {
        &self.lease.container_id
    }

    /// Why the lease is lost, if it is.
    pub fn lost(&self) -> Option<String> {
        self.held.lost()
    }

    /// Keepalives the server confirmed so far.
    pub fn renewals(&self) -> u64 {
        self.held.renewals()
    }

    fn unary<T>(&self, message: T) -> Request<T> {
        with_deadline(message, self.client.timeout())
    }

    /// Runs code in the pool's language; events stream as they are produced.
    pub async fn run(&self, code: impl Into<String>) -> Result<RunStream, Error> {
        self.run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Text(code.into())),
                language: String::new(),
            })),
            ..Default::default()
        })
        .await
    }

    /// Runs code and collects its output: stdout, stderr, exit, and the
    /// files it produced (`files`, whole; `plots()` among them).
    pub async fn run_collect(&self, code: impl Into<String>) -> Result<RunOutput, Error> {
        self.run(code).await?.collect().await
    }

    /// Runs code with options (stdin, env, timeout, plot format...).
    pub async fn run_with(
        &self,
        code: impl Into<String>,
        options: RunOptions,
    ) -> Result<RunStream, Error> {
        self.run_request(options.request(code)).await
    }

    /// Runs a command (argv, no shell) and collects its output.
    pub async fn exec(&self, argv: &[&str]) -> Result<RunOutput, Error> {
        self.run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Command(pb::Command {
                argv: argv.iter().map(|a| a.to_string()).collect(),
                shell: String::new(),
            })),
            ..Default::default()
        })
        .await?
        .collect()
        .await
    }

    /// Runs a shell command line and collects its output.
    pub async fn shell(&self, line: &str) -> Result<RunOutput, Error> {
        self.run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Command(pb::Command {
                argv: Vec::new(),
                shell: line.to_string(),
            })),
            ..Default::default()
        })
        .await?
        .collect()
        .await
    }

    /// Runs a full request (stdin, env, timeout...). The lease id is filled in.
    /// The run is resumable: it gets a run id unless it has one, and a
    /// broken connection is resumed (Attach) without losing output, for as
    /// long as the lease lives.
    pub async fn run_request(&self, mut request: pb::RunRequest) -> Result<RunStream, Error> {
        request.lease_id = self.lease.id.clone();
        if request.run_id.is_empty() {
            request.run_id = crate::run::new_run_id();
        }
        RunStream::start(Arc::clone(&self.held), self.client.sessions(), request).await
    }

    /// Starts an interactive run of `request` (code or a command; the lease
    /// id is filled in, `stdin` must be empty): write its input, close it,
    /// signal it and resize its terminal through `input` while `events`
    /// streams its output. With `terminal` (rows, columns) the program gets
    /// a terminal of that size and its output comes as one stdout stream.
    pub async fn interact(
        &self,
        mut request: pb::RunRequest,
        terminal: Option<(u16, u16)>,
    ) -> Result<Interaction, Error> {
        request.lease_id = self.lease.id.clone();
        let (tx, rx) = mpsc::channel(interact::REQUEST_BUFFER);
        // The buffer is empty: this cannot fail.
        let _ = tx.try_send(interact::start(request, terminal));
        let requests = ReceiverStream::new(rx);
        let stream = self
            .held
            .call(self.client.sessions().interact(requests))
            .await?
            .into_inner();
        Ok(Interaction {
            input: InteractInput::new(tx),
            events: RunStream::new(Arc::clone(&self.held), stream),
        })
    }

    /// Opens a persistent interpreter context in the pool's language:
    /// variables, imports and functions survive between its runs.
    pub async fn create_context(&self) -> Result<Context<'_>, Error> {
        self.create_context_in("").await
    }

    /// Opens a context in `language` (empty: the pool's).
    pub async fn create_context_in(&self, language: &str) -> Result<Context<'_>, Error> {
        let mut sessions = self.client.sessions();
        let response = self
            .held
            .call(sessions.create_context(with_deadline(
                pb::CreateContextRequest {
                    lease_id: self.lease.id.clone(),
                    language: language.to_string(),
                },
                self.client.timeout().max(Duration::from_secs(60)),
            )))
            .await?;
        Ok(Context {
            session: self,
            id: response.into_inner().context_id,
            deleted: false,
        })
    }

    /// Installs libraries for this lease only (the reset removes them).
    /// Absolute paths of package files in the container (a wheel uploaded
    /// with [`Session::upload`]) always work; names need a pool with
    /// `lease_installs` (FAILED_PRECONDITION otherwise).
    pub async fn install_libraries<S: AsRef<str>>(
        &self,
        libraries: &[S],
    ) -> Result<pb::InstallLibrariesResponse, Error> {
        let mut sessions = self.client.sessions();
        let response = self
            .held
            .call(sessions.install_libraries(with_deadline(
                pb::InstallLibrariesRequest {
                    lease_id: self.lease.id.clone(),
                    libraries: libraries.iter().map(|l| l.as_ref().to_string()).collect(),
                },
                self.client.long(),
            )))
            .await?;
        Ok(response.into_inner())
    }

    /// Kills a running run.
    pub async fn cancel(&self, run_id: &str) -> Result<bool, Error> {
        let mut sessions = self.client.sessions();
        let response = self
            .held
            .call(sessions.cancel(self.unary(pb::CancelRequest {
                lease_id: self.lease.id.clone(),
                run_id: run_id.to_string(),
            })))
            .await?;
        Ok(response.into_inner().cancelled)
    }

    /// Writes `data` to `path` in the container (parents created).
    pub async fn upload(
        &self,
        path: &str,
        data: impl Into<Bytes>,
    ) -> Result<pb::UploadResponse, Error> {
        self.upload_with(path, data.into(), None, false).await
    }

    /// Unpacks a tar archive into directory `path`.
    pub async fn upload_tar(
        &self,
        path: &str,
        tar: impl Into<Bytes>,
    ) -> Result<pb::UploadResponse, Error> {
        self.upload_with(path, tar.into(), None, true).await
    }

    /// Writes with an explicit mode, or unpacks a tar.
    pub async fn upload_with(
        &self,
        path: &str,
        data: Bytes,
        mode: Option<u32>,
        tar: bool,
    ) -> Result<pb::UploadResponse, Error> {
        self.held.check()?;
        let (tx, rx) = mpsc::channel(4);
        let header = pb::UploadRequest {
            part: Some(pb::upload_request::Part::Header(pb::UploadHeader {
                lease_id: self.lease.id.clone(),
                path: path.to_string(),
                mode,
                tar,
            })),
        };
        tokio::spawn(async move {
            if tx.send(header).await.is_err() {
                return;
            }
            for at in (0..data.len()).step_by(UPLOAD_CHUNK) {
                let piece = data.slice(at..(at + UPLOAD_CHUNK).min(data.len()));
                let chunk = pb::UploadRequest {
                    part: Some(pb::upload_request::Part::Chunk(piece)),
                };
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut artifacts = self.client.artifacts();
        let response = self
            .held
            .call(artifacts.upload(with_deadline(ReceiverStream::new(rx), TRANSFER_TIMEOUT)))
            .await?;
        Ok(response.into_inner())
    }

    /// Reads a file (or a directory, as a tar) from the container.
    pub async fn download(&self, path: &str) -> Result<(pb::DownloadHeader, Bytes), Error> {
        let mut artifacts = self.client.artifacts();
        let request = with_deadline(
            pb::DownloadRequest {
                lease_id: self.lease.id.clone(),
                path: path.to_string(),
            },
            TRANSFER_TIMEOUT,
        );
        let (header, body) = self
            .held
            .call(async move {
                let mut stream = artifacts.download(request).await?.into_inner();
                let mut header = None;
                let mut body = BytesMut::new();
                while let Some(message) = stream.message().await? {
                    match message.part {
                        Some(Part::Header(h)) => header = Some(h),
                        Some(Part::Chunk(c)) => body.extend_from_slice(&c),
                        None => {}
                    }
                }
                Ok((header, body))
            })
            .await?;
        let header = header.ok_or_else(|| Error::Protocol("download without a header".into()))?;
        Ok((header, body.freeze()))
    }

    /// Files the lease's runs left in the output directory, oldest first.
    pub async fn list_artifacts(&self) -> Result<Vec<pb::ArtifactInfo>, Error> {
        self.list_artifacts_of("").await
    }

    /// Files one run left (all runs' when `run_id` is empty).
    pub async fn list_artifacts_of(&self, run_id: &str) -> Result<Vec<pb::ArtifactInfo>, Error> {
        let mut artifacts = self.client.artifacts();
        let response = self
            .held
            .call(
                artifacts.list_artifacts(self.unary(pb::ListArtifactsRequest {
                    lease_id: self.lease.id.clone(),
                    run_id: run_id.to_string(),
                })),
            )
            .await?;
        Ok(response.into_inner().artifacts)
    }

    /// Ends the lease now. The container is reset for the next client.
    pub async fn release(mut self) -> Result<(), Error> {
        self.released = true;
        self.held.released();
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        match self
            .client
            .sessions()
            .release(self.unary(pb::ReleaseRequest {
                lease_id: self.lease.id.clone(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            // Already gone: releasing is idempotent from the caller's view.
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(Error::from(s)),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        if self.released {
            return;
        }
        // Release in the background if a runtime is there; otherwise the
        // server reclaims the lease when its TTL runs out.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let mut sessions = self.client.sessions();
            let lease_id = self.lease.id.clone();
            handle.spawn(async move {
                let _ = sessions.release(pb::ReleaseRequest { lease_id }).await;
            });
        }
    }
}

/// A persistent interpreter in the session's container (like a notebook
/// kernel): what a run defines stays for the next. An exception ends its run
/// (traceback on stderr, exit code 1) and keeps the context; a timeout
/// interrupts the run, or restarts the context if the code ignores the
/// interrupt ([`RunOutput::context_restarted`]). Private to its lease.
/// [`Context::delete`] ends it; dropping it deletes it in the background.
pub struct Context<'a> {
    session: &'a Session,
    id: String,
    deleted: bool,
}

impl Context<'_> {
    /// The context's id (RunRequest.context_id).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs code in the context; events stream as for [`Session::run`].
    pub async fn run(&self, code: impl Into<String>) -> Result<RunStream, Error> {
        self.run_with(code, RunOptions::default()).await
    }

    /// Runs code with options (timeout, plot format, output cap; a context
    /// takes no stdin, env or working dir).
    pub async fn run_with(
        &self,
        code: impl Into<String>,
        options: RunOptions,
    ) -> Result<RunStream, Error> {
        let mut request = options.request(code);
        request.context_id = self.id.clone();
        self.session.run_request(request).await
    }

    /// Runs code in the context and collects its output.
    pub async fn run_collect(&self, code: impl Into<String>) -> Result<RunOutput, Error> {
        self.run(code).await?.collect().await
    }

    /// Lets go of the handle and keeps the context: its id stays usable in
    /// `RunRequest.context_id` (through [`Session::run_request`]) until it
    /// is deleted or the lease ends. For callers that keep contexts by id
    /// rather than by borrow (the MCP server's).
    pub fn detach(mut self) -> String {
        self.deleted = true;
        std::mem::take(&mut self.id)
    }

    /// Ends the context and its interpreter.
    pub async fn delete(mut self) -> Result<(), Error> {
        self.deleted = true;
        let mut sessions = self.session.client.sessions();
        self.session
            .held
            .call(
                sessions.delete_context(self.session.unary(pb::DeleteContextRequest {
                    lease_id: self.session.lease.id.clone(),
                    context_id: self.id.clone(),
                })),
            )
            .await?;
        Ok(())
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        if self.deleted || self.session.lost().is_some() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let mut sessions = self.session.client.sessions();
            let request = pb::DeleteContextRequest {
                lease_id: self.session.lease.id.clone(),
                context_id: std::mem::take(&mut self.id),
            };
            handle.spawn(async move {
                let _ = sessions.delete_context(request).await;
            });
        }
    }
}
