//! The warden: the server's root helper in one container (the script is
//! warden.sh). Started by the server's own privileged exec of a fixed
//! command, with a fixed environment, from the read-only image; its stdin
//! held open by the server, one command per line, one answer per line. It
//! kills a run's processes (by their group, see `groups`), resets the
//! container (every process of any uid, IPC, message queues, every writable
//! place) and prepares and seals pool installs, all without an engine exec
//! per operation. Since it is already running, a kill needs no fork: it
//! works while a fork bomb holds the container's pids limit.
//!
//! The sandbox user can neither signal, trace nor replace it (another uid,
//! no capabilities of its own). When the server's connection dies its stdin
//! closes and it exits. When it is gone, a command runs as a one-shot
//! privileged exec of the same script (tried until a deadline: under a fork
//! bomb no exec may start), and the next reset or health check starts a new
//! warden.

use std::{sync::OnceLock, time::Duration};

use bytes::BytesMut;
use futures::StreamExt;
use tokio::{
    io::AsyncWriteExt,
    sync::{Mutex, mpsc},
};

use super::{Container, Error, INTERNAL_OUTPUT_LIMIT, Result};
use crate::{
    backend::{self, ExecSpec, ExecStdin, Output},
    spec::{PoolSpec, validate_env_name},
};

/// The capabilities the warden keeps (the bounding set `setpriv` leaves it):
/// chown and fowner to give the writable mounts back their owner and mode,
/// dac_override to empty directories a run made unreadable, kill for every
/// uid, setuid and setgid to remove IPC objects as their creators (root
/// would need CAP_SYS_ADMIN) and to look at the file system as the sandbox
/// user.
const WARDEN_CAPS: &str = "-all,+chown,+dac_override,+fowner,+kill,+setgid,+setuid";

/// What an engine must grant the server's privileged execs: the warden's
/// capabilities, plus sys_nice for the `nice -n -20` it starts under (a
/// warden that must wait its turn behind a fork bomb's processes answers
/// late). Docker's names.
pub const HELPER_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "KILL",
    "SETGID",
    "SETUID",
    "SYS_NICE",
];

/// The only environment of the server's own commands.
pub const FIXED_PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// How long the warden may take to start and say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer line kept.
const MAX_LINE: usize = 64 * 1024;

/// The script as it travels (an argument, shown by `ps`): without comments
/// and indentation.
fn script() -> &'static str {
    static SCRIPT: OnceLock<String> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        include_str!("warden.sh")
            .lines()
            .map(str::trim_start)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// What the warden's command line carries besides the fixed parts: the
/// language's after-reset snippet and the environment it runs in (the
/// image's, as the engine reports the container's: the pool's runtime.env is
/// not in it, see `container_spec`).
struct Launch {
    snippet: String,
    env: Vec<String>,
}

async fn launch(c: &Container) -> Result<Launch> {
    let env = c
        .backend()
        .inspect(c.id())
        .await?
        .env
        .into_iter()
        .filter(|kv| {
            // One entry a line in the warden's file: none with a newline.
            kv.split_once('=')
                .is_some_and(|(k, _)| validate_env_name(k).is_ok())
                && !kv.contains('\n')
        })
        .collect();
    Ok(Launch {
        snippet: c.lang().after_reset().unwrap_or_default().to_string(),
        env,
    })
}

/// The fixed command that runs the warden script (with `extra` arguments:
/// a command for a one-shot run).
fn command_line(spec: &PoolSpec, launch: &Launch, extra: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = [
        "/usr/bin/env",
        "-i",
        FIXED_PATH,
        "/usr/bin/nice",
        "-n",
        "-20",
        "/usr/bin/setpriv",
        "--inh-caps=-all",
        &format!("--bounding-set={WARDEN_CAPS}"),
        "--",
        "/bin/sh",
        "-c",
        script(),
        "sandpool-warden",
        &spec.runtime.uid.to_string(),
        &spec.runtime.gid.to_string(),
        output_dir(spec),
        &launch.snippet,
        &launch.env.len().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(launch.env.iter().cloned());
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv
}

/// The pool's output directory as the warden compares paths: without a
/// trailing slash.
fn output_dir(spec: &PoolSpec) -> &str {
    let out = spec.output_dir.trim_end_matches('/');
    if out.is_empty() { "/" } else { out }
}

/// A privileged exec of the server's own, as root, in /, with a fixed
/// environment (the warden's, the runner host's).
pub(super) fn privileged_exec(argv: Vec<String>, stdin: bool) -> ExecSpec {
    ExecSpec {
        argv,
        // Overrides what the image's environment may say; `env -i` then
        // leaves nothing else.
        env: vec![
            FIXED_PATH.to_string(),
            "LD_PRELOAD=".to_string(),
            "LD_LIBRARY_PATH=".to_string(),
            "LD_AUDIT=".to_string(),
        ],
        user: "0:0".to_string(),
        working_dir: Some("/".to_string()),
        stdin,
        privileged: true,
        terminal: None,
    }
}

/// A warden's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Done; the words after "ok".
    Done(String),
    /// Killed processes still exit: ask again in a moment.
    Busy,
}

fn parse(command: &str, line: &str) -> Result<Answer> {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "ok" => Ok(Answer::Done(rest.to_string())),
        "busy" => Ok(Answer::Busy),
        _ => Err(Error::Warden {
            command: command.to_string(),
            detail: if word == "err" {
                rest.to_string()
            } else {
                format!("unexpected answer {line:?}")
            },
        }),
    }
}

/// The connection to a running warden.
struct Conn {
    stdin: Option<ExecStdin>,
    lines: mpsc::Receiver<String>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing stdin (a half-close of the engine connection) is what
        // ends the warden; dropping the writer alone may not.
        if let Some(mut stdin) = self.stdin.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = stdin.shutdown().await;
            });
        }
    }
}

/// How long a warden command may take: the running warden's answer, then
/// (the warden gone or silent) the one-shot exec that stands in for it.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub answer: Duration,
    pub one_shot: Duration,
}

impl Wait {
    /// The same bound for both.
    pub fn both(timeout: Duration) -> Self {
        Wait {
            answer: timeout,
            one_shot: timeout,
        }
    }
}

/// The server's side of one container's warden.
#[derive(Default)]
pub struct Warden {
    conn: Mutex<Option<Conn>>,
}

impl Warden {
    /// Sends `command` to the container's warden and returns its answer. A
    /// warden that is gone, or that does not answer within `wait.answer`, is
    /// dropped, and the command is run once by a privileged exec of the
    /// same script instead, for at most `wait.one_shot`. No new warden is
    /// started here (under a fork bomb that fails anyway): the reset and the
    /// health check do that.
    pub async fn command(&self, c: &Container, command: &str, wait: Wait) -> Result<Answer> {
        let mut conn = self.conn.lock().await;
        if let Some(running) = conn.as_mut() {
            match tokio::time::timeout(wait.answer, ask(running, command)).await {
                Ok(Ok(line)) => return parse(command, &line),
                Ok(Err(e)) => {
                    tracing::warn!(container = %c.id(), %command, error = %e, "the warden is gone");
                }
                Err(_) => {
                    tracing::warn!(container = %c.id(), %command, "the warden did not answer in time");
                }
            }
            *conn = None;
        }
        drop(conn);
        once(c, command, wait.one_shot).await
    }

    /// Starts a warden if none runs: at warm-up (before anything else runs
    /// in the container), before a reset and at a health check.
    pub async fn ensure_started(&self, c: &Container) -> Result<()> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            let started = tokio::time::timeout(START_TIMEOUT, start(c))
                .await
                .map_err(|_| Error::Warden {
                    command: "start".into(),
                    detail: format!("not ready within {}s", START_TIMEOUT.as_secs()),
                })??;
            *conn = Some(started);
        }
        Ok(())
    }

    /// Sends `command` until the warden stops answering "busy" (killed
    /// processes still exiting), for at most `timeout`.
    pub async fn until_done(
        &self,
        c: &Container,
        command: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(2);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.command(c, command, Wait::both(left)).await? {
                Answer::Done(rest) => return Ok(rest),
                Answer::Busy if tokio::time::Instant::now() + delay < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
                Answer::Busy => {
                    return Err(Error::Warden {
                        command: command.to_string(),
                        detail: format!(
                            "killed processes did not exit within {}s",
                            timeout.as_secs()
                        ),
                    });
                }
            }
        }
    }
}

/// Starts a warden and waits for its ready line.
async fn start(c: &Container) -> Result<Conn> {
    let (backend, id) = (c.backend(), c.id());
    let launch = launch(c).await?;
    let mut exec = backend
        .exec(
            id,
            privileged_exec(command_line(c.spec(), &launch, &[]), true),
        )
        .await?;
    let stdin = exec.stdin.take().ok_or_else(|| Error::Warden {
        command: "start".into(),
        detail: "the engine attached no stdin".into(),
    })?;
    let (tx, mut lines) = mpsc::channel(4);
    let container = id.to_string();
    let mut output = exec.output;
    tokio::spawn(async move {
        let mut pending = BytesMut::new();
        while let Some(item) = output.next().await {
            match item {
                Ok(Output::Stdout(data)) => {
                    pending.extend_from_slice(&data);
                    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                        let line = pending.split_to(end + 1);
                        let text = String::from_utf8_lossy(&line[..end]).into_owned();
                        if tx.send(text).await.is_err() {
                            return;
                        }
                    }
                    if pending.len() > MAX_LINE {
                        pending.clear();
                    }
                }
                Ok(Output::Stderr(data)) => {
                    tracing::debug!(%container, stderr = %String::from_utf8_lossy(&data), "warden");
                }
                Err(e) => {
                    tracing::debug!(%container, error = %e, "warden output");
                    return;
                }
            }
        }
    });
    let ready = tokio::time::timeout(START_TIMEOUT, lines.recv()).await;
    match ready {
        Ok(Some(line)) => match parse("start", &line)? {
            // "ok PID IDLE": without the idle process known, a reset would
            // kill it (and with it the container).
            Answer::Done(ids)
                if ids
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|idle| idle != "0") =>
            {
                Ok(Conn {
                    stdin: Some(stdin),
                    lines,
                })
            }
            Answer::Done(ids) => Err(Error::Warden {
                command: "start".into(),
                detail: format!("found no idle process (answered {ids:?})"),
            }),
            Answer::Busy => Err(Error::Warden {
                command: "start".into(),
                detail: "answered busy".into(),
            }),
        },
        Ok(None) => {
            let code = backend::wait_exit_code(backend, &exec.id)
                .await
                .unwrap_or(-1);
            Err(Error::Warden {
                command: "start".into(),
                detail: format!("it exited at once (exit code {code})"),
            })
        }
        Err(_) => Err(Error::Warden {
            command: "start".into(),
            detail: format!("not ready within {}s", START_TIMEOUT.as_secs()),
        }),
    }
}

async fn ask(conn: &mut Conn, command: &str) -> std::io::Result<String> {
    let stdin = conn
        .stdin
        .as_mut()
        .ok_or_else(|| std::io::Error::other("no stdin"))?;
    stdin.write_all(format!("{command}\n").as_bytes()).await?;
    stdin.flush().await?;
    conn.lines
        .recv()
        .await
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the warden exited"))
}

/// Runs one command by a privileged exec of the warden script, retried
/// until `timeout` while the engine cannot start it (a fork bomb may hold
/// every pid). The whole of it is bounded: a loaded engine answers late.
async fn once(c: &Container, command: &str, timeout: Duration) -> Result<Answer> {
    match tokio::time::timeout(timeout, once_until_done(c, command)).await {
        Ok(answer) => answer,
        Err(_) => Err(Error::Warden {
            command: command.to_string(),
            detail: format!(
                "no warden, and no one-shot exec managed within {}s",
                timeout.as_secs_f64()
            ),
        }),
    }
}

async fn once_until_done(c: &Container, command: &str) -> Result<Answer> {
    let extra: Vec<&str> = command.split(' ').collect();
    let launch = launch(c).await?;
    let mut delay = Duration::from_millis(20);
    loop {
        let exec = privileged_exec(command_line(c.spec(), &launch, &extra), false);
        match backend::exec_collect(c.backend(), c.id(), exec, None, INTERNAL_OUTPUT_LIMIT).await {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                if let (Some(line), 0) = (text.lines().next(), out.exit_code) {
                    return parse(command, line);
                }
                tracing::debug!(container = %c.id(), code = out.exit_code, error = %out.diagnostic(), "one-shot warden exec failed");
            }
            // Gone, or the engine is: trying again will not help.
            Err(
                e @ (backend::Error::ContainerGone { .. } | backend::Error::Unreachable { .. }),
            ) => {
                return Err(e.into());
            }
            Err(e) => {
                tracing::debug!(container = %c.id(), error = %e, "one-shot warden exec failed")
            }
        }
        // A container that died (a gVisor sandbox can, under a fork bomb)
        // answers execs with runtime errors: no point trying again.
        if let Ok(false) = c.backend().container_running(c.id()).await {
            return Err(backend::Error::ContainerGone {
                id: c.id().to_string(),
            }
            .into());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(parse("x", "ok 3").unwrap(), Answer::Done("3".into()));
        assert_eq!(parse("x", "ok").unwrap(), Answer::Done(String::new()));
        assert_eq!(parse("x", "busy 4").unwrap(), Answer::Busy);
        assert!(matches!(parse("x", "err no"), Err(Error::Warden { .. })));
        assert!(matches!(parse("x", "what"), Err(Error::Warden { .. })));
    }

    #[test]
    fn the_script_travels_without_comments() {
        let s = script();
        assert!(!s.lines().any(|l| l.trim_start().starts_with('#')));
        assert!(s.contains("kill -STOP -1"));
        // The one `#` that is code, not a comment, survives.
        assert!(s.contains("${pnd#????????}"));
        assert!(s.contains("0x40000"));
    }

    #[test]
    fn the_command_line_is_fixed() {
        let spec = PoolSpec::new("p", "python");
        let launch = Launch {
            snippet: "true".into(),
            env: vec!["A=b c".into()],
        };
        let argv = command_line(&spec, &launch, &["kill", "gid", "20001"]);
        assert_eq!(&argv[..3], ["/usr/bin/env", "-i", FIXED_PATH]);
        assert!(argv.iter().all(|a| !a.contains("LD_")));
        let tail = [
            "1000",
            "1000",
            "/sandbox/outputs",
            "true",
            "1",
            "A=b c",
            "kill",
            "gid",
            "20001",
        ];
        assert_eq!(&argv[argv.len() - tail.len()..], tail);
    }
}
