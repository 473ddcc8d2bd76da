//! A run's events as they arrive, and a collector for the common case.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use sandpool_proto::v1::{self as pb, run_response::Event};
use tonic::{Code, Status, Streaming};

use crate::{Error, client::SessionsClient, keepalive::Held};

/// First wait before calling again after the connection broke; it doubles
/// up to `RECONNECT_MAX_DELAY`. The lease's own TTL bounds the whole retry.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// Options of a run, for `Session::run_with` and `Context::run_with`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Bytes fed to standard input (not in a context).
    pub stdin: Bytes,
    /// Extra environment variables (not in a context).
    pub env: Vec<(String, String)>,
    /// Working directory; default /sandbox (not in a context).
    pub working_dir: Option<String>,
    /// Kill the run after this long; default: the pool's default_run_timeout.
    pub timeout: Option<Duration>,
    /// Format of captured figures; default PNG.
    pub plot_format: Option<pb::PlotFormat>,
    /// Output cap per stream; default and maximum: the pool's.
    pub output_limit_bytes: Option<u64>,
    /// Language of the code; default: the pool's.
    pub language: Option<String>,
}

impl RunOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stdin(mut self, stdin: impl Into<Bytes>) -> Self {
        self.stdin = stdin.into();
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn working_dir(mut self, dir: impl Into<String>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Save captured figures as PNG (default), SVG or PDF.
    pub fn plot_format(mut self, format: pb::PlotFormat) -> Self {
        self.plot_format = Some(format);
        self
    }

    pub fn output_limit_bytes(mut self, limit: u64) -> Self {
        self.output_limit_bytes = Some(limit);
        self
    }

    pub fn language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// The RunRequest for `code` (the lease id is filled in by the session).
    pub fn request(self, code: impl Into<String>) -> pb::RunRequest {
        pb::RunRequest {
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Text(code.into())),
                language: self.language.unwrap_or_default(),
            })),
            stdin: self.stdin,
            env: self.env.into_iter().collect(),
            working_dir: self.working_dir.unwrap_or_default(),
            timeout: self.timeout.map(duration_pb),
            output_limit_bytes: self.output_limit_bytes,
            plot_format: self.plot_format.unwrap_or(pb::PlotFormat::Unspecified) as i32,
            ..Default::default()
        }
    }
}

pub(crate) fn duration_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// One event of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Started {
        run_id: String,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    Artifact(pb::RunArtifact),
    Exit(pb::RunExit),
    /// Events the server no longer had when the stream was resumed after a
    /// broken connection (its buffer for the run overflowed meanwhile):
    /// how many bytes of each kind were lost.
    Gap(pb::RunGap),
}

/// The events of a run, in order, as the server streams them.
pub struct RunStream {
    held: Arc<Held>,
    /// `None` while the connection is being made again.
    inner: Option<Streaming<pb::RunResponse>>,
    last_seq: u64,
    /// How to pick the run up again after a broken connection (runs with a
    /// run id; interactive runs are not resumable).
    resume: Option<Resume>,
    /// The exit arrived (or the stream failed for good).
    finished: bool,
}

/// A resumable run: its request (sent again, with the same run id, when
/// the first call broke before the run's stream came) and where to Attach.
struct Resume {
    sessions: SessionsClient,
    request: pb::RunRequest,
    /// The Run call answered: the run exists on the server.
    started: bool,
}

impl RunStream {
    pub(crate) fn new(held: Arc<Held>, inner: Streaming<pb::RunResponse>) -> Self {
        Self {
            held,
            inner: Some(inner),
            last_seq: 0,
            resume: None,
            finished: false,
        }
    }

    /// Starts `request` (its lease id and run id set): the stream survives
    /// broken connections by calling again (Run with the same run id before
    /// the run answered, Attach after) until the lease is lost.
    pub(crate) async fn start(
        held: Arc<Held>,
        sessions: SessionsClient,
        request: pb::RunRequest,
    ) -> Result<Self, Error> {
        held.check()?;
        let mut stream = Self {
            held,
            inner: None,
            last_seq: 0,
            resume: Some(Resume {
                sessions,
                request,
                started: false,
            }),
            finished: false,
        };
        stream.reconnect(None).await?;
        Ok(stream)
    }

    /// The run's id (chosen by the client for a resumable run).
    pub fn run_id(&self) -> Option<&str> {
        self.resume.as_ref().map(|r| r.request.run_id.as_str())
    }

    /// The next event; `None` after the exit event. Ends with `LeaseLost`
    /// when the session's keepalive gives up on the lease. A resumable run
    /// whose connection breaks is picked up where it was, transparently.
    pub async fn next(&mut self) -> Option<Result<RunEvent, Error>> {
        if self.finished {
            return None;
        }
        loop {
            let message = match self.inner.as_mut() {
                Some(inner) => tokio::select! {
                    message = inner.message() => message,
                    lost = self.held.cut() => return Some(self.fail(lost)),
                },
                None => Ok(None),
            };
            let broken = match message {
                Ok(Some(m)) => return Some(self.accept(m)),
                // The stream ended without the exit: cut short.
                Ok(None) if self.resume.is_some() => None,
                Ok(None) => {
                    self.finished = true;
                    return None;
                }
                Err(status) if self.resume.is_some() && transport_failure(&status) => Some(status),
                Err(status) => return Some(self.fail(self.held.fail(status))),
            };
            self.inner = None;
            if let Err(e) = self.reconnect(broken).await {
                return Some(self.fail(e));
            }
        }
    }

    fn fail(&mut self, e: Error) -> Result<RunEvent, Error> {
        self.finished = true;
        Err(e)
    }

    fn accept(&mut self, message: pb::RunResponse) -> Result<RunEvent, Error> {
        let expected = match &message.event {
            Some(Event::Gap(gap)) => gap.from_seq == self.last_seq + 1 && gap.to_seq == message.seq,
            _ => message.seq == self.last_seq + 1,
        };
        if !expected {
            return self.fail(Error::Protocol(format!(
                "event {} arrived after event {}",
                message.seq, self.last_seq
            )));
        }
        self.last_seq = message.seq;
        match message.event {
            Some(Event::Started(s)) => Ok(RunEvent::Started { run_id: s.run_id }),
            Some(Event::Stdout(c)) => Ok(RunEvent::Stdout(c.data)),
            Some(Event::Stderr(c)) => Ok(RunEvent::Stderr(c.data)),
            Some(Event::Artifact(a)) => Ok(RunEvent::Artifact(a)),
            Some(Event::Gap(g)) => Ok(RunEvent::Gap(g)),
            Some(Event::Exit(e)) => {
                self.finished = true;
                Ok(RunEvent::Exit(e))
            }
            None => self.fail(Error::Protocol("an event without content".into())),
        }
    }

    /// Calls again until the run's stream is back: Run (same run id: it
    /// never runs twice) until the run answered, then Attach after the last
    /// event. Gives up when the lease is lost (its TTL passed without a
    /// renewal) or on an answer that is not a broken connection.
    async fn reconnect(&mut self, broken: Option<Status>) -> Result<(), Error> {
        let Some(resume) = self.resume.as_mut() else {
            return Err(Error::Protocol("the run's stream broke".into()));
        };
        if let Some(status) = &broken {
            tracing::debug!(run = %resume.request.run_id, after_seq = self.last_seq, %status, "the run's stream broke; resuming it");
        }
        let mut delay = RECONNECT_FIRST_DELAY;
        loop {
            let mut sessions = resume.sessions.clone();
            let call = async {
                if resume.started {
                    sessions
                        .attach(pb::AttachRequest {
                            lease_id: resume.request.lease_id.clone(),
                            run_id: resume.request.run_id.clone(),
                            after_seq: self.last_seq,
                        })
                        .await
                } else {
                    sessions.run(resume.request.clone()).await
                }
            };
            let answer = tokio::select! {
                answer = call => answer,
                lost = self.held.cut() => return Err(lost),
            };
            match answer {
                Ok(stream) => {
                    resume.started = true;
                    self.inner = Some(stream.into_inner());
                    return Ok(());
                }
                Err(status) if transport_failure(&status) => {}
                Err(status) => return Err(self.held.fail(status)),
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                lost = self.held.cut() => return Err(lost),
            }
            delay = (delay * 2).min(RECONNECT_MAX_DELAY);
        }
    }

    /// Reads the run to its end.
    pub async fn collect(mut self) -> Result<RunOutput, Error> {
        let mut out = RunOutput::default();
        let (mut stdout, mut stderr) = (BytesMut::new(), BytesMut::new());
        let mut files = FileAssembler::default();
        while let Some(event) = self.next().await {
            match event? {
                RunEvent::Started { run_id } => out.run_id = run_id,
                RunEvent::Stdout(d) => stdout.extend_from_slice(&d),
                RunEvent::Stderr(d) => stderr.extend_from_slice(&d),
                RunEvent::Artifact(a) => {
                    files.add(&a);
                    out.artifacts.push(a);
                }
                RunEvent::Gap(g) => out.gaps.push(g),
                RunEvent::Exit(e) => out.exit = Some(e),
            }
        }
        out.stdout = stdout.freeze();
        out.stderr = stderr.freeze();
        out.files = files.finish();
        if out.exit.is_none() {
            return Err(Error::Protocol(
                "the run ended without an exit event".into(),
            ));
        }
        Ok(out)
    }
}

/// A whole file a run produced: its description (from its last chunk, with
/// the SHA-256) and its bytes, reassembled from the chunks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArtifactFile {
    pub info: pb::ArtifactInfo,
    /// Empty when `omitted`.
    pub data: Bytes,
    /// The server left the bytes out of the stream (over its cap):
    /// `Session::download(&file.info.path)` fetches them.
    pub omitted: bool,
}

impl ArtifactFile {
    /// Path relative to the output directory, e.g. `plots/<run>-001.png`.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn mime_type(&self) -> &str {
        &self.info.mime_type
    }

    /// A figure captured from a plotting library (matplotlib...).
    pub fn is_plot(&self) -> bool {
        self.info.plot
    }
}

/// Puts artifact chunks together, file by file, in the order files begin.
#[derive(Default)]
struct FileAssembler {
    order: Vec<String>,
    files: HashMap<String, (pb::ArtifactInfo, Vec<u8>, bool)>,
}

impl FileAssembler {
    fn add(&mut self, chunk: &pb::RunArtifact) {
        let info = chunk.info.clone().unwrap_or_default();
        let key = if info.path.is_empty() {
            info.name.clone()
        } else {
            info.path.clone()
        };
        let entry = self.files.entry(key.clone()).or_insert_with(|| {
            self.order.push(key);
            (info.clone(), Vec::new(), false)
        });
        let end = chunk.offset as usize + chunk.data.len();
        if entry.1.len() < end {
            entry.1.resize(end, 0);
        }
        entry.1[chunk.offset as usize..end].copy_from_slice(&chunk.data);
        entry.2 |= chunk.omitted;
        if chunk.last {
            entry.0 = info;
        }
    }

    fn finish(mut self) -> Vec<ArtifactFile> {
        self.order
            .iter()
            .filter_map(|k| self.files.remove(k))
            .map(|(info, data, omitted)| ArtifactFile {
                info,
                data: Bytes::from(data),
                omitted,
            })
            .collect()
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOutput {
    pub run_id: String,
    pub stdout: Bytes,
    pub stderr: Bytes,
    /// The artifact events as they came (files in chunks); `files` has them whole.
    pub artifacts: Vec<pb::RunArtifact>,
    /// The files the run produced, each reassembled from its chunks.
    pub files: Vec<ArtifactFile>,
    pub exit: Option<pb::RunExit>,
    /// Output the server no longer had when a broken stream was resumed.
    pub gaps: Vec<pb::RunGap>,
}

impl RunOutput {
    /// The captured figures among `files` (`plt.show()` and figures left open).
    pub fn plots(&self) -> Vec<&ArtifactFile> {
        self.files.iter().filter(|f| f.is_plot()).collect()
    }

    /// The run's context had to be restarted to stop it: its state is gone.
    pub fn context_restarted(&self) -> bool {
        self.exit.as_ref().is_some_and(|e| e.context_restarted)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Exit code; -1 if unknown.
    pub fn exit_code(&self) -> i32 {
        self.exit.as_ref().map_or(-1, |e| e.exit_code)
    }

    pub fn end_reason(&self) -> pb::EndReason {
        self.exit
            .as_ref()
            .and_then(|e| pb::EndReason::try_from(e.end_reason).ok())
            .unwrap_or(pb::EndReason::Unspecified)
    }

    pub fn duration(&self) -> Duration {
        self.exit
            .as_ref()
            .and_then(|e| e.duration)
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default()
    }
}

impl Drop for RunStream {
    /// A resumable run outlives its stream on the server: one dropped
    /// before its exit is cancelled, as a plain run would be.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (Some(resume), Ok(runtime)) = (&self.resume, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        if !resume.started {
            return;
        }
        let mut sessions = resume.sessions.clone();
        let request = pb::CancelRequest {
            lease_id: resume.request.lease_id.clone(),
            run_id: resume.request.run_id.clone(),
        };
        runtime.spawn(async move {
            let _ = sessions.cancel(request).await;
        });
    }
}

/// A status that says the connection broke rather than anything about the
/// run: UNAVAILABLE, UNKNOWN, INTERNAL or CANCELLED made up by the
/// transport. The server's own errors carry a sandpool ErrorInfo and are
/// final (its UNAVAILABLE says the engine is down or the server stopping).
fn transport_failure(status: &Status) -> bool {
    use tonic_types::StatusExt;
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled => {
            let info = status.get_error_details().error_info().cloned();
            info.is_none_or(|i| i.domain != crate::error::ERROR_DOMAIN)
        }
        _ => false,
    }
}

/// A run id for a resumable run: unique within the process (and random
/// across processes), so a lease never sees one twice.
pub(crate) fn new_run_id() -> String {
    use std::{
        hash::{BuildHasher, RandomState},
        sync::atomic::{AtomicU64, Ordering},
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // RandomState is seeded from the OS once per process and thread.
    let salt = RandomState::new().hash_one(n);
    format!("c{salt:016x}{n:08x}")
}
