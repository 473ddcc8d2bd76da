//! The runner host: one long-lived process per warm container (the runner
//! binary with `--host`) that starts each fresh runner with a fork, where
//! starting it by an engine exec cost the engine a process of its own and a
//! round trip for every lease (the reset kills the runner with everything
//! else, and so does a run's kill). On 2 cores that exec was most of what a
//! lease cost besides the run.
//!
//! Started at warm-up by the server's own privileged exec of a fixed
//! command with a fixed environment (as the warden is), as root with
//! CAP_SETUID, CAP_SETGID and CAP_SETPCAP alone: what it needs to start a
//! runner as the sandbox user in the run group the server names, with the
//! empty bounding set an exec of that user has. The sandbox user can
//! neither signal nor trace it (another uid), nor replace its binary (the
//! idle user's). The reset spares it (the warden's `spare`); a runner it
//! started is the sandbox user's and goes with the reset like any other.
//!
//! A runner it starts gets exactly what a runner started by an engine exec
//! gets: the environment and supplementary groups such an exec has (read
//! once at warm-up from an exec of the sandbox user's), the uid, the run
//! group, `/` as its working directory. Its stream comes back wrapped in
//! the host's frames (`protocol`): the host is the only writer of its own
//! stream, so nothing a lease does can forge the end of a runner or reach
//! the next one. When the host is gone, runners start by exec again.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt, stream::BoxStream};
use tokio::io::AsyncWriteExt;

use super::protocol::{self, Request, Spawn};
use crate::{
    backend::{self, ExecStdin, Output},
    sandbox::{Container, Error, INTERNAL_OUTPUT_LIMIT, Result, RunGroup, warden},
};

/// The capabilities the host keeps (the bounding set `setpriv` leaves it):
/// setuid and setgid to start a runner as the sandbox user in its run
/// group, setpcap to empty the runner's bounding set first.
const HOST_CAPS: &str = "-all,+setgid,+setuid,+setpcap";
/// How long the host may take to say hello.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame taken from the host: a runner's piece of stream, or a
/// reason.
const MAX_HOST_FRAME: usize = protocol::MAX_OUTPUT_FRAME + protocol::HEADER;

/// Prints the supplementary groups of an exec of the sandbox user's (the
/// first line), then its environment exactly as the engine made it
/// (the shell's own, as it started: NUL-separated).
const ENVIRONMENT_PROBE: &str = "while read -r k v; do [ \"$k\" = Groups: ] && { echo \"$v\"; \
     break; }; done </proc/$$/status; [ \"$k\" = Groups: ] || echo; /bin/cat /proc/$$/environ";

/// The open stream to a runner host.
pub struct HostLink {
    stdin: ExecStdin,
    output: BoxStream<'static, backend::Result<Output>>,
    /// Bytes of the stream not yet taken as frames.
    pending: BytesMut,
    /// A spawn was sent and its answer not yet read: set while `spawn`
    /// waits, so still set when that wait was given up (the runner's start
    /// timed out). The host's late answer would then be taken for the next
    /// spawn's, and the next one's would arrive in the middle of a run: such
    /// a link is not used again.
    spawning: bool,
}

/// What goes wrong on a host's stream: it is then not used again.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the runner host's stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("the runner host's stream: {0}")]
    Engine(#[from] backend::Error),
    #[error("the runner host broke its protocol: {0}")]
    Protocol(String),
    #[error("the runner host's stream ended")]
    Ended,
}

/// A frame from the host.
pub enum HostFrame {
    /// A piece of the current runner's stream.
    Relay(Bytes),
    /// The current runner's stream ended.
    RunnerEnded,
    Spawned,
    SpawnFailed(String),
}

impl HostLink {
    async fn send(&mut self, kind: u8, parts: &[&[u8]]) -> std::io::Result<()> {
        let len = parts.iter().map(|p| p.len()).sum();
        self.stdin.write_all(&protocol::header(kind, len)).await?;
        for part in parts {
            self.stdin.write_all(part).await?;
        }
        self.stdin.flush().await
    }

    /// Sends a runner frame to the current runner.
    pub async fn relay(&mut self, kind: u8, payload: &[u8]) -> std::io::Result<()> {
        let header = protocol::header(kind, payload.len());
        self.send(protocol::RELAY, &[&header, payload]).await
    }

    fn parse(&mut self) -> std::result::Result<Option<(u8, Bytes)>, HostError> {
        super::take_frame(&mut self.pending, |_, len| len <= MAX_HOST_FRAME)
            .map_err(HostError::Protocol)
    }

    async fn next_raw(&mut self) -> std::result::Result<(u8, Bytes), HostError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            match self.output.next().await {
                Some(Ok(Output::Stdout(data))) => self.pending.extend_from_slice(&data),
                Some(Ok(Output::Stderr(_))) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(HostError::Ended),
            }
        }
    }

    /// The host's next frame.
    pub async fn next(&mut self) -> std::result::Result<HostFrame, HostError> {
        let (kind, payload) = self.next_raw().await?;
        match kind {
            protocol::RELAY => Ok(HostFrame::Relay(payload)),
            protocol::RUNNER_ENDED => Ok(HostFrame::RunnerEnded),
            protocol::SPAWNED => Ok(HostFrame::Spawned),
            protocol::SPAWN_FAILED => Ok(HostFrame::SpawnFailed(
                String::from_utf8_lossy(&payload).into_owned(),
            )),
            other => Err(HostError::Protocol(format!("a frame of kind {other}"))),
        }
    }

    /// Whether nothing read from the host is waiting to be taken.
    pub fn idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether the host's stream is still open, without waiting. What was
    /// ready is kept (it may be a frame's beginning).
    pub fn open(&mut self) -> bool {
        loop {
            match self.output.next().now_or_never() {
                None => return true,
                Some(Some(Ok(Output::Stdout(data)))) => self.pending.extend_from_slice(&data),
                Some(Some(Ok(Output::Stderr(_)))) => {}
                Some(Some(Err(_)) | None) => return false,
            }
        }
    }

    /// Whether a spawn's answer was never read (see `spawning`).
    pub fn out_of_step(&self) -> bool {
        self.spawning
    }

    /// Starts a fresh runner as the sandbox user in `group`; returns once
    /// the host answered, with nothing of an earlier runner left to read.
    pub async fn spawn(
        &mut self,
        c: &Container,
        host: &Host,
        group: &RunGroup,
    ) -> std::result::Result<std::result::Result<(), String>, HostError> {
        let spawn = Spawn {
            uid: c.spec().runtime.uid,
            gid: group.gid(),
            groups: host.groups.clone(),
            request: Request {
                working_dir: b"/".to_vec(),
                stdin: true,
                argv: vec![super::PATH.as_bytes().to_vec()],
                env: host.env.clone(),
            },
        };
        self.spawning = true;
        self.send(protocol::SPAWN, &[&spawn.encode()]).await?;
        let answer = loop {
            match self.next().await? {
                HostFrame::Spawned => break Ok(()),
                HostFrame::SpawnFailed(why) => break Err(why),
                // An earlier runner's, sent before the host read the spawn.
                HostFrame::Relay(_) | HostFrame::RunnerEnded => {}
            }
        };
        self.spawning = false;
        Ok(answer)
    }
}

/// A container's runner host, as the server keeps it.
pub struct Host {
    /// The stream; `None` once it broke (runners then start by exec). A
    /// runner's connection holds it while the runner is alive.
    pub link: Arc<tokio::sync::Mutex<Option<HostLink>>>,
    /// What an engine exec of the sandbox user's gets.
    env: Vec<Vec<u8>>,
    groups: Vec<u32>,
}

/// What an engine exec of the sandbox user's gets: its environment (as
/// `KEY=value` entries) and supplementary groups.
pub type ExecEnvironment = (Vec<Vec<u8>>, Vec<u32>);

/// Ends the probe's part of an output that goes on with a program's (see
/// `probe_then`): no environment entry is this (it has no `=`).
const PROBE_END: &[u8] = b"--sandpool-probe-end--\0";

/// `argv` run after the environment probe, in one exec: the warm-up's
/// toolchain check learns what the host needs without an exec of its own.
/// Its output is the probe's, `PROBE_END`, then `argv`'s (`split_probe`).
pub fn probe_then(argv: Vec<String>) -> Vec<String> {
    let script = format!("{ENVIRONMENT_PROBE}; printf '%s\\0' --sandpool-probe-end--; exec \"$@\"");
    let mut full = crate::sandbox::sh(&script, &[]);
    full.extend(argv);
    full
}

/// The probe's findings and the rest of an output of `probe_then`; `None`
/// when the probe's part is not there whole.
pub fn split_probe(out: &[u8]) -> Option<(ExecEnvironment, &[u8])> {
    let newline = out.iter().position(|&b| b == b'\n')?;
    // The end mark where an entry would begin: right after the groups line
    // (no environment at all) or after an entry's NUL.
    let end = (newline + 1..=out.len().checked_sub(PROBE_END.len())?)
        .find(|&i| out[i..].starts_with(PROBE_END) && (i == newline + 1 || out[i - 1] == 0))?;
    let found = parse_probe(&out[..end]).ok()?;
    Some((found, &out[end + PROBE_END.len()..]))
}

/// The groups line, then the NUL-separated environment.
fn parse_probe(out: &[u8]) -> std::result::Result<ExecEnvironment, String> {
    let newline = out
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| "no groups line".to_string())?;
    let groups = String::from_utf8_lossy(&out[..newline])
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<Vec<u32>, _>>()
        .map_err(|e| format!("groups: {e}"))?;
    let env = out[newline + 1..]
        .split(|&b| b == 0)
        .filter(|kv| kv.contains(&b'='))
        .map(<[u8]>::to_vec)
        .collect();
    Ok((env, groups))
}

/// The environment and supplementary groups of an engine exec of the
/// sandbox user's, by an exec of its own (when the warm-up's toolchain
/// check did not find them: see `probe_then`).
async fn probe_environment(c: &Container) -> Result<ExecEnvironment> {
    let exec = backend::ExecSpec {
        argv: crate::sandbox::sh(ENVIRONMENT_PROBE, &[]),
        env: Vec::new(),
        user: c.spec().runtime.user(),
        working_dir: Some("/".to_string()),
        stdin: false,
        privileged: false,
        terminal: None,
    };
    let out = backend::exec_collect(c.backend(), c.id(), exec, None, INTERNAL_OUTPUT_LIMIT).await?;
    let failed = |detail: String| Error::CommandFailed {
        what: "reading an exec's environment",
        exit_code: out.exit_code,
        detail,
    };
    if !out.success() {
        return Err(failed(out.diagnostic()));
    }
    parse_probe(&out.stdout).map_err(failed)
}

/// Starts the container's runner host (warm-up) and has the warden spare
/// it.
pub async fn start(c: &Container) -> Result<Host> {
    let (env, groups) = match c.exec_environment() {
        Some(found) => found,
        None => probe_environment(c).await?,
    };
    let argv = [
        "/usr/bin/env",
        "-i",
        warden::FIXED_PATH,
        "/usr/bin/setpriv",
        "--inh-caps=-all",
        &format!("--bounding-set={HOST_CAPS}"),
        "--",
        super::PATH,
        "--host",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let lost = |detail: String| Error::RunnerLost {
        container: c.id().to_string(),
        detail: format!("the runner host: {detail}"),
    };
    let mut exec = c.start(warden::privileged_exec(argv, true)).await?;
    let stdin = exec
        .stdin
        .take()
        .ok_or_else(|| lost("the engine attached no stdin".into()))?;
    let mut link = HostLink {
        stdin,
        output: exec.output,
        pending: BytesMut::new(),
        spawning: false,
    };
    let hello = tokio::time::timeout(START_TIMEOUT, link.next_raw())
        .await
        .map_err(|_| lost(format!("no hello within {}s", START_TIMEOUT.as_secs())))?
        .map_err(|e| lost(e.to_string()))?;
    let pid = match hello {
        (protocol::HELLO, payload) => payload
            .strip_prefix(protocol::HOST_VERSION)
            .and_then(|rest| std::str::from_utf8(rest).ok())
            .and_then(|rest| rest.trim().parse::<u32>().ok())
            .ok_or_else(|| lost(format!("a hello of {payload:?}")))?,
        (kind, _) => return Err(lost(format!("it began with a frame of kind {kind}"))),
    };
    c.warden_until_done(&format!("spare {pid}"), START_TIMEOUT)
        .await?;
    Ok(Host {
        link: Arc::new(tokio::sync::Mutex::new(Some(link))),
        env,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::split_probe;

    #[test]
    fn the_probe_and_the_programs_output_come_apart() {
        let out = b"1000 20001\nHOME=/home/sandbox\0X=--sandpool-probe-end--\0PATH=/bin\0--sandpool-probe-end--\0sandpool-ok\n";
        let ((env, groups), rest) = split_probe(out).expect("split");
        assert_eq!(groups, vec![1000, 20001]);
        assert_eq!(
            env,
            vec![
                b"HOME=/home/sandbox".to_vec(),
                b"X=--sandpool-probe-end--".to_vec(),
                b"PATH=/bin".to_vec()
            ]
        );
        assert_eq!(rest, b"sandpool-ok\n");
    }

    #[test]
    fn no_environment_and_no_groups() {
        let ((env, groups), rest) = split_probe(b"\n--sandpool-probe-end--\0ok").expect("split");
        assert!(env.is_empty() && groups.is_empty());
        assert_eq!(rest, b"ok");
    }

    #[test]
    fn a_probe_cut_short_is_not_taken() {
        assert!(split_probe(b"1000\nHOME=/x\0").is_none());
        assert!(split_probe(b"").is_none());
        assert!(split_probe(b"1000\nHOME=/x\0--sandpool-probe-en").is_none());
    }
}
