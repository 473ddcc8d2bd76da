//! Programs the fake engine "runs": what a test scripts for an argv (output
//! chunks, pauses, an exit code, or running until killed), and the runner
//! that plays a script into an exec's output stream. Pauses are tokio
//! sleeps, so a paused test clock drives them.

use std::time::Duration;

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, DuplexStream},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::backend::{Output, Result};

/// The exit code of a process the fake killed (128 + SIGKILL, as a shell
/// reports it).
pub const KILLED: i64 = 137;

#[derive(Debug, Clone)]
enum Step {
    Stdout(Bytes),
    Stderr(Bytes),
    Sleep(Duration),
}

#[derive(Debug, Clone, Copy)]
enum End {
    Exit(i64),
    /// Runs until killed (a timeout, a cancel, a reset).
    UntilKilled,
}

/// A scripted program: which execs it answers (those whose argv holds
/// `pattern` as a contiguous run of words), and what they do. Built with
/// `Program::matching(..).stdout(..).exit(..)` and handed to
/// `FakeBackend::program`.
#[derive(Debug, Clone)]
pub struct Program {
    pattern: Vec<String>,
    steps: Vec<Step>,
    end: End,
    /// Answers this many more execs, then is forgotten; `None`: every one.
    times: Option<u32>,
    /// The exec does not even start (the engine refuses it).
    refuse: bool,
}

impl Program {
    /// A program for every exec whose argv contains `words` in a row (an
    /// empty `words` matches every exec). It exits 0 without output until
    /// told otherwise.
    pub fn matching<S: AsRef<str>>(words: &[S]) -> Self {
        Self {
            pattern: words.iter().map(|w| w.as_ref().to_string()).collect(),
            steps: Vec::new(),
            end: End::Exit(0),
            times: None,
            refuse: false,
        }
    }

    pub fn stdout(mut self, data: impl Into<Bytes>) -> Self {
        self.steps.push(Step::Stdout(data.into()));
        self
    }

    pub fn stderr(mut self, data: impl Into<Bytes>) -> Self {
        self.steps.push(Step::Stderr(data.into()));
        self
    }

    pub fn sleep(mut self, pause: Duration) -> Self {
        self.steps.push(Step::Sleep(pause));
        self
    }

    pub fn exit(mut self, code: i64) -> Self {
        self.end = End::Exit(code);
        self
    }

    /// After its steps, runs until something kills it.
    pub fn until_killed(mut self) -> Self {
        self.end = End::UntilKilled;
        self
    }

    /// Answers only the next `n` matching execs.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// The engine refuses to start the exec at all.
    pub fn refuse(mut self) -> Self {
        self.refuse = true;
        self
    }

    pub(super) fn refuses(&self) -> bool {
        self.refuse
    }

    pub(super) fn matches(&self, argv: &[String]) -> bool {
        self.pattern.is_empty()
            || argv
                .windows(self.pattern.len())
                .any(|w| w == self.pattern.as_slice())
    }

    /// Counts one use; returns whether the program is used up.
    pub(super) fn use_once(&mut self) -> bool {
        match &mut self.times {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        }
    }

    /// What an exec that no test scripted does: reads its input (a file
    /// being written) and exits 0.
    pub(super) fn default_for_unscripted() -> Self {
        Self::matching::<&str>(&[])
    }
}

/// The artifact report that `run::artifacts` wraps programs in: the wrapper
/// prints a frame with the run's nonce to stderr after the program. The fake
/// plays the wrapper too (it says "no artifacts"), so runs see the frame a
/// real shell would print, and the server's scanner must strip it.
pub(super) struct ArtifactWrapper {
    nonce: String,
}

impl ArtifactWrapper {
    /// Whether `argv` (after any launcher such as chrt) is the wrapper; the
    /// nonce is its sixth argument (`sh -c SCRIPT sh OUT SINCE NONCE ...`).
    pub(super) fn detect(argv: &[String]) -> Option<Self> {
        let start = argv.iter().position(|a| a == "/bin/sh")?;
        let rest = &argv[start..];
        match rest {
            [_, c, script, _, _out, _since, nonce, ..]
                if c == "-c" && script.contains("sandpool:%s:%s:%s") =>
            {
                Some(Self {
                    nonce: nonce.clone(),
                })
            }
            _ => None,
        }
    }

    pub(super) fn frame(&self) -> Bytes {
        Bytes::from(format!("\x1esandpool:{n}:0:{n}\x1e", n = self.nonce))
    }
}

/// Plays `program` into `out` until it ends or `stop` fires; returns its
/// exit code. Input, if attached, is read and dropped (a scripted program
/// that never reads must not block its writer).
pub(super) async fn run(
    program: Program,
    wrapper: Option<ArtifactWrapper>,
    stdin: Option<DuplexStream>,
    out: &mpsc::Sender<Result<Output>>,
    stop: &CancellationToken,
) -> i64 {
    let unscripted = program.steps.is_empty() && matches!(program.end, End::Exit(0));
    if let Some(mut input) = stdin {
        if unscripted {
            // Like `cat > file`: done once the input ends.
            let mut sink = Vec::new();
            tokio::select! {
                _ = input.read_to_end(&mut sink) => {}
                _ = stop.cancelled() => return KILLED,
            }
        } else {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = input.read_to_end(&mut sink).await;
            });
        }
    }
    for step in program.steps {
        let done = async {
            match step {
                // A reader that went away is the reader's business.
                Step::Stdout(data) => {
                    let _ = out.send(Ok(Output::Stdout(data))).await;
                }
                Step::Stderr(data) => {
                    let _ = out.send(Ok(Output::Stderr(data))).await;
                }
                Step::Sleep(pause) => tokio::time::sleep(pause).await,
            }
        };
        tokio::select! {
            _ = done => {}
            _ = stop.cancelled() => return KILLED,
        }
    }
    let code = match program.end {
        End::Exit(code) => code,
        End::UntilKilled => {
            stop.cancelled().await;
            return KILLED;
        }
    };
    if let Some(wrapper) = wrapper {
        let _ = out.send(Ok(Output::Stderr(wrapper.frame()))).await;
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::argv;

    #[test]
    fn programs_match_a_run_of_words() {
        let p = Program::matching(&["bash", "-c", "x"]);
        assert!(p.matches(&argv(&[
            "/usr/bin/chrt",
            "--idle",
            "0",
            "bash",
            "-c",
            "x",
            "m"
        ])));
        assert!(!p.matches(&argv(&["bash", "x", "-c"])));
        assert!(Program::default_for_unscripted().matches(&argv(&["anything"])));
    }

    #[test]
    fn the_wrapper_is_found_behind_a_launcher() {
        let wrapped = argv(&[
            "/usr/bin/chrt",
            "--idle",
            "0",
            "/bin/sh",
            "-c",
            "printf '\\036sandpool:%s:%s:%s\\036'",
            "sh",
            "/out",
            "1.0",
            "NONCE",
            "bash",
        ]);
        let w = ArtifactWrapper::detect(&wrapped).expect("detected");
        assert_eq!(&w.frame()[..], b"\x1esandpool:NONCE:0:NONCE\x1e");
        assert!(ArtifactWrapper::detect(&argv(&["/bin/sh", "-c", "echo", "sh"])).is_none());
    }
}
