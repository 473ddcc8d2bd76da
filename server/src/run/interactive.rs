//! What a client does to its interactive run while it runs: stream standard
//! input, close it, send signals, resize the terminal. The run itself is an
//! ordinary run (`super::Pump`) whose input is live.

use std::sync::Weak;

use bytes::Bytes;
use tokio::{io::AsyncWriteExt, sync::mpsc};

use crate::{
    error::{Error, Result},
    sandbox::{Container, ExecStdin, Resize, RunGroup, TerminalResize, TerminalSize},
};

/// Input chunks buffered between the client's stream and the program's
/// stdin: beyond this the client's stream waits (gRPC flow control then
/// holds the client back) until the program reads.
pub(super) const STDIN_BUFFER: usize = 8;

/// Signal numbers a client may send (Linux: 1-31 and the real-time ones).
const SIGNALS: std::ops::RangeInclusive<i32> = 1..=64;

/// Largest terminal side; a bigger one is a mistake, not a screen.
const MAX_TERMINAL_SIDE: u32 = 1000;

/// The handle on a live interactive run.
pub struct Controls {
    stdin: Option<mpsc::Sender<Bytes>>,
    resize: Option<TerminalResize>,
    /// The run's group while it lives: a signal after the run (whose gid
    /// may then belong to another run) reaches nobody.
    group: Weak<RunGroup>,
    container: Container,
}

impl Controls {
    pub(super) fn new(
        stdin: mpsc::Sender<Bytes>,
        resize: Option<TerminalResize>,
        group: Weak<RunGroup>,
        container: Container,
    ) -> Self {
        Self {
            stdin: Some(stdin),
            resize,
            group,
            container,
        }
    }

    /// Writes more input; waits while the program does not read. Input for
    /// a program that has exited is dropped: its exit event says so.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        let Some(stdin) = &self.stdin else {
            return Err(Error::invalid(
                "stdin",
                "standard input was closed already (close_stdin)",
            ));
        };
        if !data.is_empty() {
            let _ = stdin.send(data).await;
        }
        Ok(())
    }

    /// Closes standard input: the program reads end of file once it has
    /// read what came before.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends `signal` to every process of the run.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        if !SIGNALS.contains(&signal) {
            return Err(Error::invalid(
                "signal",
                format!(
                    "{signal} is not a signal number (1 to 64, e.g. 2 for SIGINT, 15 for SIGTERM)"
                ),
            ));
        }
        let Some(group) = self.group.upgrade() else {
            return Ok(());
        };
        match self.container.signal_group(group.gid(), signal).await {
            Ok(sent) => tracing::debug!(gid = group.gid(), signal, sent, "signal sent"),
            // The run's exit (or the container's loss) tells the client the
            // rest; the signal itself has nobody left to reach.
            Err(e) => {
                tracing::warn!(gid = group.gid(), signal, error = %e, "could not send a signal")
            }
        }
        Ok(())
    }

    /// Resizes the run's terminal; returns once the engine applied it, so
    /// that input after it meets the new size.
    pub async fn resize(&self, size: TerminalSize) -> Result<()> {
        let Some(resize) = &self.resize else {
            return Err(Error::invalid(
                "resize",
                "the run has no terminal; ask for one in its start",
            ));
        };
        let (done, applied) = tokio::sync::oneshot::channel();
        // An exec that is over has nothing to resize: then no wait.
        if resize.send(Resize { size, done }).is_ok() {
            let _ = applied.await;
        }
        Ok(())
    }
}

/// `argv` behind a shell that first gives the terminal its size: engines
/// size an exec's terminal only once it runs (Docker's API before 1.42
/// cannot do it at creation), and a program that asks at once must not see
/// 0x0. Without `stty` in the image the engine's resize still follows.
pub(super) fn sized_terminal(size: TerminalSize, argv: Vec<String>) -> Vec<String> {
    let mut sized = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        r#"stty rows "$1" cols "$2" 2>/dev/null; shift 2; exec "$@""#.to_string(),
        "sh".to_string(),
        size.rows.to_string(),
        size.columns.to_string(),
    ];
    sized.extend(argv);
    sized
}

/// A terminal size from a request, checked.
pub fn terminal_size(field: &str, rows: u32, columns: u32) -> Result<TerminalSize> {
    let side = |name: &str, n: u32| {
        if n == 0 || n > MAX_TERMINAL_SIDE {
            Err(Error::invalid(
                field,
                format!("{name} must be 1 to {MAX_TERMINAL_SIDE}, not {n}"),
            ))
        } else {
            Ok(n as u16)
        }
    };
    Ok(TerminalSize {
        rows: side("rows", rows)?,
        columns: side("columns", columns)?,
    })
}

/// Feeds the program's stdin: `prefix` (code its language reads first),
/// then each chunk the client sends, until it closes stdin or goes away.
/// In its own task: a program that never reads must not hold up its output.
pub(super) async fn feed(mut stdin: ExecStdin, prefix: Bytes, mut rx: mpsc::Receiver<Bytes>) {
    if !prefix.is_empty() && stdin.write_all(&prefix).await.is_err() {
        return;
    }
    while let Some(chunk) = rx.recv().await {
        // The program closed its stdin or exited.
        if stdin.write_all(&chunk).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
    let _ = stdin.shutdown().await;
}
