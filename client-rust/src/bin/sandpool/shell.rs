//! `sandpool shell`: an interactive program (a shell by default) in a
//! sandbox, on this terminal. With a terminal on stdin the program gets a
//! terminal of the same size: ours goes raw (every key, Ctrl-C included,
//! travels as a byte and the sandbox's terminal interprets it) and follows
//! resizes (SIGWINCH). Without one, input is piped and Ctrl-C is sent to
//! the program as SIGINT.

use std::{io::Write, process::ExitCode, time::Duration};

use bytes::Bytes;
use sandpool_client::{Client, Error, InteractInput, Interaction, RunEvent, proto as pb};
use tokio::sync::mpsc;

/// What `sandpool shell` was asked for.
pub struct Options {
    pub pool: String,
    pub timeout: Option<f64>,
    /// The program and its arguments; empty: bash, or sh without bash.
    pub command: Vec<String>,
}

/// An interactive shell where there is bash, a POSIX one where there is not.
const DEFAULT_SHELL: &str =
    "if command -v bash >/dev/null 2>&1; then exec bash -i; else exec sh -i; fi";

const SIGINT: i32 = 2;

pub async fn shell(client: &Client, options: Options) -> Result<ExitCode, Error> {
    let timeout = match super::timeout_arg(options.timeout)? {
        Some(t) => t,
        // As long as the pool lets a run last.
        None => client
            .get_pool(&options.pool)
            .await?
            .spec
            .and_then(|s| s.max_run_timeout)
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(3600)),
    };
    let program = if options.command.is_empty() {
        pb::Command {
            argv: Vec::new(),
            shell: DEFAULT_SHELL.to_string(),
        }
    } else {
        pb::Command {
            argv: options.command,
            shell: String::new(),
        }
    };
    let request = pb::RunRequest {
        program: Some(pb::run_request::Program::Command(program)),
        timeout: Some(super::prost_types_duration(timeout)),
        ..Default::default()
    };
    let terminal = tty::size();
    let session = client.acquire(&options.pool).await?;
    let Interaction { input, mut events } = session.interact(request, terminal).await?;
    // Raw from here until the program ends (restored when dropped).
    let raw = terminal.and_then(|_| tty::Raw::enter());
    let forwarding = forward_stdin(input.clone());
    let resizing = terminal.map(|_| tokio::spawn(follow_resizes(input.clone())));
    let mut exit = None;
    let mut failure = None;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            // Only without a raw terminal does Ctrl-C reach us as a signal.
            _ = tokio::signal::ctrl_c(), if raw.is_none() => {
                let _ = input.signal(SIGINT).await;
                continue;
            }
        };
        let Some(event) = event else { break };
        match event {
            Ok(RunEvent::Stdout(d)) => write_all(&mut std::io::stdout().lock(), &d),
            Ok(RunEvent::Stderr(d)) => write_all(&mut std::io::stderr().lock(), &d),
            Ok(RunEvent::Exit(e)) => exit = Some(e),
            // An interactive run is never resumed: it has no gaps.
            Ok(RunEvent::Started { .. } | RunEvent::Artifact(_) | RunEvent::Gap(_)) => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(raw);
    forwarding.abort();
    if let Some(task) = resizing {
        task.abort();
    }
    drop(events);
    session.release().await?;
    if let Some(e) = failure {
        return Err(e);
    }
    let Some(exit) = exit else {
        return Err(Error::Protocol(
            "the run ended without an exit event".into(),
        ));
    };
    // A shell ended by a signal (a hangup, a kill typed in it) needs no
    // explanation beyond its exit code.
    Ok(super::exit_code(
        &exit,
        &[pb::EndReason::Exited, pb::EndReason::Signaled],
    ))
}

fn write_all(out: &mut impl Write, data: &[u8]) {
    let _ = out.write_all(data);
    let _ = out.flush();
}

/// Our stdin, chunk by chunk as it comes, to the program; closed at end of
/// file. Read on a thread of its own: a blocking read of a terminal must
/// not keep the runtime from ending (tokio's stdin would).
fn forward_stdin(input: InteractInput) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if input.write(chunk).await.is_err() {
                return;
            }
        }
        let _ = input.close_stdin().await;
    })
}

/// Sends our terminal's size to the program's whenever ours changes.
async fn follow_resizes(input: InteractInput) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut changes) = signal(SignalKind::window_change()) else {
        return;
    };
    while changes.recv().await.is_some() {
        if let Some((rows, columns)) = tty::size()
            && input.resize(rows, columns).await.is_err()
        {
            return;
        }
    }
}

/// The local terminal, through termios.
mod tty {
    use std::os::fd::AsRawFd;

    /// Rows and columns of the terminal on stdin, if stdin is one.
    pub fn size() -> Option<(u16, u16)> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only reads the descriptor's state.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
        let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0;
        // A terminal that reports no size (0x0) gets the classic 24x80.
        Some(if ok && size.ws_row > 0 && size.ws_col > 0 {
            (size.ws_row, size.ws_col)
        } else {
            (24, 80)
        })
    }

    /// The terminal in raw mode until dropped.
    pub struct Raw {
        fd: i32,
        saved: libc::termios,
    }

    impl Raw {
        pub fn enter() -> Option<Self> {
            let fd = std::io::stdin().as_raw_fd();
            // SAFETY: termios is plain data; tcgetattr fills it or fails.
            let mut saved: libc::termios = unsafe { std::mem::zeroed() };
            if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
                return None;
            }
            let mut raw = saved;
            // SAFETY: cfmakeraw edits the struct we own.
            unsafe { libc::cfmakeraw(&mut raw) };
            if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
                return None;
            }
            Some(Self { fd, saved })
        }
    }

    impl Drop for Raw {
        fn drop(&mut self) {
            // SAFETY: restores the settings read in `enter`.
            unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
        }
    }
}
