//! Exec over the API server's websocket (`v5.channel.k8s.io`, v4 where the
//! server offers no v5: kube picks). Output streams as it arrives; the exit
//! code comes from the status channel and is kept until the caller asks
//! (`Backend::exec_exit_code`).

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use tokio_util::io::ReaderStream;

use super::{KubeError, pod::parse_user};
use crate::{
    backend::{ExecSpec, Output, Resize, TerminalResize, TerminalSize},
    sync::lock,
};

/// Read buffer of an exec's output.
const READ_CAPACITY: usize = 64 * 1024;
/// Exit codes nobody asked for are forgotten after this.
const KEEP_EXIT: Duration = Duration::from_secs(600);

/// The argv that runs `spec` in a pod whose container runs as root with the
/// helper capabilities (see `pod`): the server's privileged commands as they
/// are; anything else dropped to its user first, with no capability, its
/// groups cleared, then its working directory and environment set by `env`.
pub fn command(spec: &ExecSpec) -> Result<Vec<String>, KubeError> {
    let Some(program) = spec.argv.first() else {
        return Err(KubeError::BadExec {
            what: "an empty command".into(),
        });
    };
    if program.contains('=') {
        // `env` would take it for a variable.
        return Err(KubeError::BadExec {
            what: format!("{program:?}: a program name with '='"),
        });
    }
    let mut argv = Vec::with_capacity(spec.argv.len() + spec.env.len() + 10);
    if !spec.privileged {
        let (uid, gid) = parse_user(&spec.user)?;
        if uid == 0 {
            return Err(KubeError::BadExec {
                what: "as root without privileges: not offered on Kubernetes".into(),
            });
        }
        argv.extend([
            "/usr/bin/setpriv".to_string(),
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".to_string(),
            "--inh-caps=-all".to_string(),
            "--".to_string(),
        ]);
    }
    argv.extend([
        "/usr/bin/env".to_string(),
        "-C".to_string(),
        spec.working_dir.clone().unwrap_or_else(|| "/".to_string()),
    ]);
    argv.extend(
        spec.env
            .iter()
            .filter(|kv| kv.split_once('=').is_some_and(|(k, _)| !k.is_empty()))
            .cloned(),
    );
    argv.extend(spec.argv.iter().cloned());
    Ok(argv)
}

/// How an exec ended, as its status says.
pub fn exit_code(status: &Status) -> Result<i64, String> {
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let cause = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|causes| {
            causes
                .iter()
                .find(|c| c.reason.as_deref() == Some("ExitCode"))
        })
        .and_then(|c| c.message.as_deref())
        .and_then(|m| m.trim().parse::<i64>().ok());
    if let Some(code) = cause {
        return Ok(code);
    }
    // A kubelet reports a program that cannot start as an error, where
    // Docker gives 126/127 (and so does the shell).
    let message = status.message.clone().unwrap_or_default();
    let lower = message.to_ascii_lowercase();
    if lower.contains("not found") || lower.contains("no such file") {
        Ok(127)
    } else if lower.contains("permission denied") {
        Ok(126)
    } else {
        Err(message)
    }
}

/// What is known of one exec's end.
enum Ending {
    Running,
    Exited(i64),
    /// No status came (the connection or the pod went away), or a failure
    /// without an exit code.
    Broken(String),
}

struct Entry {
    ending: Ending,
    at: Instant,
    pod: String,
}

/// Why an exit code cannot be had.
pub enum NoExit {
    /// No such exec (or its code was taken already).
    Unknown,
    /// It ended without an exit code; in this pod.
    Broken { why: String, pod: String },
}

/// Exit codes by exec id.
#[derive(Default)]
pub struct Exits {
    next: AtomicU64,
    table: std::sync::Mutex<HashMap<String, Entry>>,
}

impl Exits {
    /// A new exec's id in `pod`, registered as running.
    pub fn register(&self, pod: &str) -> String {
        let id = format!("k8s-exec-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let mut table = lock(&self.table);
        let now = Instant::now();
        table.retain(|_, e| {
            matches!(e.ending, Ending::Running) || now.duration_since(e.at) < KEEP_EXIT
        });
        table.insert(
            id.clone(),
            Entry {
                ending: Ending::Running,
                at: now,
                pod: pod.to_string(),
            },
        );
        id
    }

    pub fn finish(&self, id: &str, status: Option<Status>) {
        let ending = match status {
            Some(status) => match exit_code(&status) {
                Ok(code) => Ending::Exited(code),
                Err(message) => Ending::Broken(message),
            },
            None => Ending::Broken("the exec ended without a status".into()),
        };
        if let Some(entry) = lock(&self.table).get_mut(id) {
            entry.ending = ending;
            entry.at = Instant::now();
        }
    }

    /// `Ok(None)` while it runs; the code (once) when it exited.
    pub fn take(&self, id: &str) -> Result<Option<i64>, NoExit> {
        let mut table = lock(&self.table);
        match table.get(id).map(|e| &e.ending) {
            None => Err(NoExit::Unknown),
            Some(Ending::Running) => Ok(None),
            Some(_) => match table.remove(id) {
                Some(Entry {
                    ending: Ending::Exited(code),
                    ..
                }) => Ok(Some(code)),
                Some(Entry {
                    ending: Ending::Broken(why),
                    pod,
                    ..
                }) => Err(NoExit::Broken { why, pod }),
                _ => Err(NoExit::Unknown),
            },
        }
    }
}

/// The output readers of an attached process as one stream of chunks, in
/// the order they arrive.
pub fn output_stream(
    stdout: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>,
    stderr: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>,
    pod: String,
) -> futures::stream::BoxStream<'static, crate::backend::Result<Output>> {
    let map = move |pod: String, wrap: fn(bytes::Bytes) -> Output| {
        move |item: std::io::Result<bytes::Bytes>| {
            futures::future::ready(match item {
                Ok(data) => Some(Ok(wrap(data))),
                Err(e) => Some(Err(crate::backend::Error::Engine {
                    op: "exec output",
                    detail: format!("pod {pod}: {e}"),
                })),
            })
        }
    };
    let out = stdout
        .map(|r| {
            ReaderStream::with_capacity(r, READ_CAPACITY)
                .filter_map(map(pod.clone(), Output::Stdout))
                .boxed()
        })
        .unwrap_or_else(|| futures::stream::empty().boxed());
    let err = stderr
        .map(|r| {
            ReaderStream::with_capacity(r, READ_CAPACITY)
                .filter_map(map(pod, Output::Stderr))
                .boxed()
        })
        .unwrap_or_else(|| futures::stream::empty().boxed());
    futures::stream::select(out, err).boxed()
}

/// How long a resize is given to reach the API server before the input
/// written after it (see `terminal_resizer`).
const RESIZE_SETTLE: Duration = Duration::from_millis(50);

/// Sends the terminal's first size on the exec's resize channel, then each
/// resize (a task that lives as long as the returned sender). A size is
/// queued on the exec's connection before the input written after it.
pub async fn terminal_resizer(
    first: TerminalSize,
    mut channel: futures::channel::mpsc::Sender<kube::api::TerminalSize>,
) -> TerminalResize {
    use futures::SinkExt;
    let pod_size = |size: TerminalSize| kube::api::TerminalSize {
        height: size.rows,
        width: size.columns,
    };
    let _ = channel.send(pod_size(first)).await;
    tokio::time::sleep(RESIZE_SETTLE).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Resize>();
    tokio::spawn(async move {
        while let Some(request) = rx.recv().await {
            // The exec is over: nothing left to resize.
            let sent = channel.send(pod_size(request.size)).await;
            // kube's exec loop takes resizes and input from two queues in
            // no fixed order: give it a moment to send this one before the
            // input written after the resize.
            tokio::time::sleep(RESIZE_SETTLE).await;
            drop(request.done);
            if sent.is_err() {
                break;
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_execs_drop_to_their_user() {
        let spec = ExecSpec {
            argv: vec!["python3".into(), "-c".into(), "print(1)".into()],
            env: vec!["A=b".into(), "junk".into()],
            user: "1000:20001".into(),
            working_dir: Some("/sandbox".into()),
            stdin: false,
            privileged: false,
            terminal: None,
        };
        let argv = command(&spec).unwrap();
        assert_eq!(argv[0], "/usr/bin/setpriv");
        assert!(argv.contains(&"--reuid=1000".to_string()));
        assert!(argv.contains(&"--regid=20001".to_string()));
        let env_at = argv.iter().position(|a| a == "/usr/bin/env").unwrap();
        assert_eq!(
            &argv[env_at..],
            &[
                "/usr/bin/env",
                "-C",
                "/sandbox",
                "A=b",
                "python3",
                "-c",
                "print(1)"
            ]
        );
    }

    #[test]
    fn privileged_execs_stay_root_and_root_user_execs_are_refused() {
        let privileged = ExecSpec {
            argv: vec!["/bin/true".into()],
            user: "0:0".into(),
            privileged: true,
            ..Default::default()
        };
        assert_eq!(command(&privileged).unwrap()[0], "/usr/bin/env");
        let root = ExecSpec {
            privileged: false,
            ..privileged
        };
        assert!(command(&root).is_err());
        let bad = ExecSpec {
            argv: vec!["A=b".into()],
            user: "1000:1000".into(),
            ..Default::default()
        };
        assert!(command(&bad).is_err());
    }

    #[test]
    fn statuses_give_exit_codes() {
        let ok: Status = serde_json::from_str(r#"{"status":"Success"}"#).unwrap();
        assert_eq!(exit_code(&ok), Ok(0));
        let seven: Status = serde_json::from_str(
            r#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#,
        )
        .unwrap();
        assert_eq!(exit_code(&seven), Ok(7));
        let missing: Status = serde_json::from_str(
            r#"{"status":"Failure","message":"exec: \"nope\": executable file not found in $PATH"}"#,
        )
        .unwrap();
        assert_eq!(exit_code(&missing), Ok(127));
    }
}
