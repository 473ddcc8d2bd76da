//! A run's events as they arrive, and a collector for the common case.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sandpool_proto::v1::{self as pb, run_response::Event};
use tonic::Streaming;

use crate::Error;

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
    lease_id: String,
    inner: Streaming<pb::RunResponse>,
    last_seq: u64,
}

impl RunStream {
    pub(crate) fn new(lease_id: String, inner: Streaming<pb::RunResponse>) -> Self {
        Self {
            lease_id,
            inner,
            last_seq: 0,
        }
    }

    /// The next event; `None` after the exit event.
    pub async fn next(&mut self) -> Option<Result<RunEvent, Error>> {
        let message = match self.inner.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return None,
            Err(status) => return Some(Err(Error::on_lease(&self.lease_id, status))),
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
        while let Some(event) = self.next().await {
            match event? {
                RunEvent::Started { run_id } => out.run_id = run_id,
                RunEvent::Stdout(d) => stdout.extend_from_slice(&d),
                RunEvent::Stderr(d) => stderr.extend_from_slice(&d),
                RunEvent::Artifact(a) => out.artifacts.push(a),
                RunEvent::Exit(e) => out.exit = Some(e),
            }
        }
        out.stdout = stdout.freeze();
        out.stderr = stderr.freeze();
        if out.exit.is_none() {
            return Err(Error::Protocol(
                "the run ended without an exit event".into(),
            ));
        }
        Ok(out)
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOutput {
    pub run_id: String,
    pub stdout: Bytes,
    pub stderr: Bytes,
    pub artifacts: Vec<pb::RunArtifact>,
    pub exit: Option<pb::RunExit>,
}

impl RunOutput {
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
