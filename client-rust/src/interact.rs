//! Interactive runs: input streamed while the program runs, signals, and a
//! terminal that can be resized; the output arrives as a [`RunStream`].

use bytes::Bytes;
use sandpool_proto::v1::{self as pb, interact_request::Action};
use tokio::sync::mpsc;

use crate::{Error, RunStream};

/// Requests queued between the caller and the call: beyond this, `write`
/// waits (the server in turn waits for the program to read).
pub(crate) const REQUEST_BUFFER: usize = 8;

/// An interactive run: what to send it (`input`) and what it produces
/// (`events`), usable from two tasks.
pub struct Interaction {
    pub input: InteractInput,
    pub events: RunStream,
}

/// The sending half of an interactive run. Clones send to the same run.
/// Dropping every clone closes the program's standard input.
#[derive(Clone)]
pub struct InteractInput {
    tx: mpsc::Sender<pb::InteractRequest>,
}

impl InteractInput {
    pub(crate) fn new(tx: mpsc::Sender<pb::InteractRequest>) -> Self {
        Self { tx }
    }

    async fn send(&self, action: Action) -> Result<(), Error> {
        self.tx
            .send(pb::InteractRequest {
                action: Some(action),
            })
            .await
            // The call is over: its events say how it ended.
            .map_err(|_| Error::Protocol("the interactive run is over".into()))
    }

    /// Writes to the program's standard input.
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        self.send(Action::Stdin(data.into())).await
    }

    /// Closes the program's standard input (it reads end of file).
    pub async fn close_stdin(&self) -> Result<(), Error> {
        self.send(Action::CloseStdin(pb::CloseStdin {})).await
    }

    /// Sends a signal (its Linux number, e.g. 2 for SIGINT) to every
    /// process of the run.
    pub async fn signal(&self, signal: i32) -> Result<(), Error> {
        self.send(Action::Signal(signal)).await
    }

    /// Resizes the run's terminal (runs started with one).
    pub async fn resize(&self, rows: u16, columns: u16) -> Result<(), Error> {
        self.send(Action::Resize(pb::TerminalSize {
            rows: rows.into(),
            columns: columns.into(),
        }))
        .await
    }
}

/// The first request of an interactive run.
pub(crate) fn start(run: pb::RunRequest, terminal: Option<(u16, u16)>) -> pb::InteractRequest {
    pb::InteractRequest {
        action: Some(Action::Start(pb::InteractStart {
            run: Some(run),
            terminal: terminal.map(|(rows, columns)| pb::TerminalSize {
                rows: rows.into(),
                columns: columns.into(),
            }),
        })),
    }
}
