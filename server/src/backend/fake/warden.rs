//! The warden's side of its line protocol (warden.sh; the server's side is
//! `sandbox::warden`), as the fake engine plays it: "ok PID IDLE" when it
//! starts, then one answer per command line. Kills and resets end the
//! fake's execs (never the warden's own), so a run that is killed really
//! stops producing output. A test may script the answer to a command
//! (`FakeBackend::warden_answer`) to make a reset or a kill fail.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::{
    io::{AsyncBufReadExt, BufReader, DuplexStream},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use super::{State, WardenRecord, program::KILLED};
use crate::{
    backend::{Output, Result},
    sync::lock,
};

/// The pid the fake warden reports for the container's idle process.
const IDLE_PID: u32 = 7;

/// A scripted answer to the commands that start with `prefix`.
pub(super) struct ScriptedAnswer {
    pub prefix: String,
    pub answer: String,
    pub times: u32,
}

/// Whether `argv` is the warden's fixed command line (the word
/// "sandpool-warden", then UID GID OUT SNIPPET N and N environment
/// entries). `Some(None)`: a resident warden reading commands from stdin;
/// `Some(Some(command))`: a one-shot run of `command`.
pub(super) fn detect(argv: &[String]) -> Option<Option<String>> {
    let at = argv.iter().position(|a| a == "sandpool-warden")?;
    let n: usize = argv.get(at + 5)?.parse().ok()?;
    let extra = argv.get(at + 6 + n..)?;
    Some((!extra.is_empty()).then(|| extra.join(" ")))
}

fn line(text: String) -> Result<Output> {
    Ok(Output::Stdout(Bytes::from(text + "\n")))
}

/// A resident warden: the ready line, then an answer per line of input,
/// until its input closes (exit 0) or its container goes (killed).
pub(super) async fn resident(
    state: Arc<Mutex<State>>,
    container: String,
    pid: u64,
    stdin: Option<DuplexStream>,
    out: &mpsc::Sender<Result<Output>>,
    stop: &CancellationToken,
) -> i64 {
    let _ = out.send(line(format!("ok {pid} {IDLE_PID}"))).await;
    let Some(stdin) = stdin else { return 0 };
    let mut lines = BufReader::new(stdin).lines();
    loop {
        let next = tokio::select! {
            next = lines.next_line() => next,
            _ = stop.cancelled() => return KILLED,
        };
        let Ok(Some(command)) = next else { return 0 };
        let answer = lock(&state).warden_answer(&container, command.trim(), pid);
        let _ = out.send(line(answer)).await;
    }
}

/// A one-shot warden: one answer, exit 0.
pub(super) async fn one_shot(
    state: Arc<Mutex<State>>,
    container: String,
    pid: u64,
    command: String,
    out: &mpsc::Sender<Result<Output>>,
) -> i64 {
    let answer = lock(&state).warden_answer(&container, &command, pid);
    let _ = out.send(line(answer)).await;
    0
}

/// "uid:gid" as numbers.
fn ids(user: &str) -> Option<(u32, u32)> {
    let (uid, gid) = user.split_once(':')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

impl State {
    fn warden_answer(&mut self, container: &str, command: &str, pid: u64) -> String {
        self.journal.warden.push(WardenRecord {
            container: container.to_string(),
            command: command.to_string(),
        });
        if let Some(i) = self
            .warden_answers
            .iter()
            .position(|s| command.starts_with(&s.prefix))
        {
            let scripted = &mut self.warden_answers[i];
            let answer = scripted.answer.clone();
            scripted.times = scripted.times.saturating_sub(1);
            if scripted.times == 0 {
                self.warden_answers.remove(i);
            }
            return answer;
        }
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["ping"] => format!("ok {pid} {IDLE_PID}"),
            ["kill", how @ ("gid" | "uid"), id] => match id.parse::<u32>() {
                Ok(id) => {
                    let by_gid = *how == "gid";
                    let killed =
                        self.kill_execs(
                            container,
                            |(uid, gid)| {
                                if by_gid { gid == id } else { uid == id }
                            },
                        );
                    format!("ok {killed}")
                }
                Err(_) => format!("err not a number: {id}"),
            },
            ["reset"] => {
                self.kill_execs(container, |_| true);
                "ok".to_string()
            }
            ["discover", dirs @ ..] => format!("ok {} 0", dirs.len()),
            ["install-begin", _] | ["install-end", _] => "ok".to_string(),
            _ => format!("err unknown command {command}"),
        }
    }

    /// Kills the live execs of `container` (the warden's own excepted)
    /// whose user `which` selects; returns how many.
    fn kill_execs(&mut self, container: &str, which: impl Fn((u32, u32)) -> bool) -> usize {
        let mut killed = 0;
        for exec in self.execs.values() {
            let selected = exec.container == container
                && !exec.warden
                && exec.exit.is_none()
                && !exec.stop.is_cancelled()
                && ids(&exec.user).is_some_and(&which);
            if selected {
                exec.stop.cancel();
                killed += 1;
            }
        }
        killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::argv;

    #[test]
    fn resident_and_one_shot_command_lines() {
        let resident = argv(&[
            "/bin/sh",
            "-c",
            "S",
            "sandpool-warden",
            "1000",
            "1000",
            "/o",
            "",
            "1",
            "A=b",
        ]);
        assert_eq!(detect(&resident), Some(None));
        let once = argv(&[
            "sandpool-warden",
            "1000",
            "1000",
            "/o",
            "",
            "0",
            "kill",
            "gid",
            "20001",
        ]);
        assert_eq!(detect(&once), Some(Some("kill gid 20001".to_string())));
        assert_eq!(detect(&argv(&["bash", "-c", "x"])), None);
    }
}
