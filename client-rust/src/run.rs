//! A run's events as they arrive, and a collector for the common case.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use sandpool_proto::v1::{self as pb, run_response::Event};
use tonic::Streaming;

use crate::{Error, keepalive::Held};

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
    Started { run_id: String },
    Stdout(Bytes),
    Stderr(Bytes),
    Artifact(pb::RunArtifact),
    Exit(pb::RunExit),
}

/// The events of a run, in order, as the server streams them.
pub struct RunStream {
    held: Arc<Held>,
    inner: Streaming<pb::RunResponse>,
    last_seq: u64,
}

impl RunStream {
    pub(crate) fn new(held: Arc<Held>, inner: Streaming<pb::RunResponse>) -> Self {
        Self {
            held,
            inner,
            last_seq: 0,
        }
    }

    /// The next event; `None` after the exit event. Ends with `LeaseLost`
    /// when the session's keepalive gives up on the lease.
    pub async fn next(&mut self) -> Option<Result<RunEvent, Error>> {
        let message = tokio::select! {
            message = self.inner.message() => message,
            lost = self.held.cut() => return Some(Err(lost)),
        };
        let message = match message {
            Ok(Some(m)) => m,
            Ok(None) => return None,
            Err(status) => return Some(Err(self.held.fail(status))),
        };
        if message.seq != self.last_seq + 1 {
            return Some(Err(Error::Protocol(format!(
                "event {} arrived after event {}",
                message.seq, self.last_seq
            ))));
        }
        self.last_seq = message.seq;
        Some(match message.event {
            Some(Event::Started(s)) => Ok(RunEvent::Started { run_id: s.run_id }),
            Some(Event::Stdout(c)) => Ok(RunEvent::Stdout(c.data)),
            Some(Event::Stderr(c)) => Ok(RunEvent::Stderr(c.data)),
            Some(Event::Artifact(a)) => Ok(RunEvent::Artifact(a)),
            Some(Event::Exit(e)) => Ok(RunEvent::Exit(e)),
            None => Err(Error::Protocol("an event without content".into())),
        })
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
