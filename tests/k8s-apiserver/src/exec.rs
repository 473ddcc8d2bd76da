//! `pods/exec` over a websocket, in the channel protocol of the API server
//! (`v5.channel.k8s.io`, else `v4.channel.k8s.io`), backed by a Docker exec
//! with the same argv, run as the container's user.
//!
//! Every binary message starts with a channel byte: 0 stdin (client to
//! server), 1 stdout, 2 stderr, 3 error/status, 4 resize (`{"Width":..,
//! "Height":..}`, applied when `tty`). In v5, `[255, 0]` closes stdin (the
//! process sees EOF); in v4 the client can only close the whole websocket,
//! which also closes stdin. Output is forwarded as Docker delivers it. At
//! the end one `Status` goes on channel 3 (`Success`, or `Failure` with
//! reason `NonZeroExitCode` and the code in `details.causes[ExitCode]`),
//! then a close frame. stdout and stderr are complete before the status:
//! kube's client stops reading at the status.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{HeaderMap, Request, StatusCode, header},
    response::Response,
};
use bollard::{
    container::LogOutput,
    exec::{StartExecOptions, StartExecResults},
    models::ExecConfig,
    query_parameters::ResizeExecOptions,
};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use crate::{
    app::App,
    error::{ApiError, ApiResult},
    kinds::Kind,
    query::Query,
    runner::status_of,
    store::uid_of,
};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";

/// How long after its output ends an exec may still report itself running.
const EXIT_WAIT: Duration = Duration::from_secs(5);

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .unwrap_or_default()
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// The subprotocol to speak: v5 when offered, else v4.
fn choose_protocol(headers: &HeaderMap) -> Option<&'static str> {
    [V5, V4]
        .into_iter()
        .find(|p| header_has(headers, header::SEC_WEBSOCKET_PROTOCOL, p))
}

struct Options {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// Checks the request and the pod, creates the Docker exec, and answers
/// 101; the session runs on the upgraded connection.
pub async fn handle(
    app: Arc<App>,
    mut req: Request<Body>,
    ns: &str,
    name: &str,
) -> ApiResult<Response> {
    let q = Query::parse(req.uri().query());
    let pod = app.store.get(Kind::Pod, ns, name)?;
    let container = pod["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(asked) = q.get("container").filter(|c| !c.is_empty())
        && asked != container
    {
        return Err(ApiError::bad_request(format!(
            "container {asked} is not valid for pod {name}"
        )));
    }
    let opts = Options {
        command: q.all("command"),
        stdin: q.flag("stdin", false),
        stdout: q.flag("stdout", false),
        stderr: q.flag("stderr", false),
        tty: q.flag("tty", false),
    };
    if opts.command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let headers = req.headers();
    if !header_has(headers, header::UPGRADE, "websocket") {
        // SPDY (kubectl's fallback) and plain requests land here.
        return Err(ApiError::bad_request(
            "Upgrade request required: the test server serves pods/exec over websocket only (v5.channel.k8s.io, v4.channel.k8s.io)",
        ));
    }
    let Some(protocol) = choose_protocol(headers) else {
        return Err(ApiError::bad_request(
            "websocket subprotocol: offer v5.channel.k8s.io or v4.channel.k8s.io",
        ));
    };
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(ApiError::bad_request("missing Sec-WebSocket-Key"));
    };
    let accept = derive_accept_key(key.as_bytes());

    let running = pod["status"]["phase"] == "Running"
        && pod["status"]["containerStatuses"][0]["state"]["running"].is_object();
    let id = match app.container_of(uid_of(&pod)) {
        Some(id) if running => id,
        _ => {
            return Err(ApiError::bad_request(format!(
                "unable to upgrade connection: container not found (\"{container}\")"
            )));
        }
    };
    let config = ExecConfig {
        attach_stdin: Some(opts.stdin),
        attach_stdout: Some(opts.stdout),
        attach_stderr: Some(opts.stderr),
        tty: Some(opts.tty),
        cmd: Some(opts.command.clone()),
        ..Default::default()
    };
    let exec_id = match app.docker.create_exec(&id, config).await {
        Ok(created) => created.id,
        Err(e) if matches!(status_of(&e), Some(404 | 409)) => {
            return Err(ApiError::bad_request(format!(
                "unable to upgrade connection: container not found (\"{container}\"): {e}"
            )));
        }
        Err(e) => return Err(ApiError::internal(format!("exec create: {e}"))),
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    let v5 = protocol == V5;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                session(app, ws, exec_id, opts, v5).await;
            }
            Err(e) => tracing::warn!("exec upgrade: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// The exit status as the kubelet writes it on channel 3.
pub fn exit_status(code: Option<i64>, command: &[String], error: Option<&str>) -> Value {
    match (code, error) {
        (_, Some(err)) => json!({
            "metadata": {},
            "status": "Failure",
            "message": err,
            "reason": "InternalError",
            "code": 500,
        }),
        (Some(0), None) => json!({"metadata": {}, "status": "Success"}),
        (Some(n), None) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {n}",
                command.join(" ")
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": n.to_string()}]},
        }),
        (None, None) => json!({
            "metadata": {},
            "status": "Failure",
            "message": "the exit code of the command is unknown",
            "reason": "InternalError",
            "code": 500,
        }),
    }
}

async fn session(
    app: Arc<App>,
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    exec_id: String,
    opts: Options,
    v5: bool,
) {
    let (mut sink, mut stream) = ws.split();
    // One writer owns the sink: output frames, then the status, then close.
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        // A normal-closure code: client-go reads a close without one
        // (1005) as a broken stream.
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
    });

    let start = StartExecOptions {
        detach: false,
        tty: opts.tty,
        output_capacity: Some(64 * 1024),
    };
    let (mut output, input) = match app.docker.start_exec(&exec_id, Some(start)).await {
        Ok(StartExecResults::Attached { output, input }) => (output, input),
        Ok(StartExecResults::Detached) => {
            let status = exit_status(None, &opts.command, Some("exec started detached"));
            let _ = out_tx
                .send(frame(STATUS, status.to_string().as_bytes()))
                .await;
            drop(out_tx);
            let _ = writer.await;
            return;
        }
        Err(e) => {
            let status = exit_status(None, &opts.command, Some(&format!("exec start: {e}")));
            let _ = out_tx
                .send(frame(STATUS, status.to_string().as_bytes()))
                .await;
            drop(out_tx);
            let _ = writer.await;
            return;
        }
    };

    // stdin: its own task, so a process that does not read its stdin never
    // holds up its output. `None` is EOF.
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Option<Bytes>>(32);
    let stdin_task = tokio::spawn(async move {
        let mut input = input;
        while let Some(chunk) = stdin_rx.recv().await {
            match chunk {
                Some(data) => {
                    if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                        return;
                    }
                }
                None => break,
            }
        }
        // Half-closes the hijacked connection: Docker closes the process's
        // stdin.
        let _ = input.shutdown().await;
    });

    // The client's messages: stdin data, stdin close (v5), resize.
    let docker = app.docker.clone();
    let reader_exec = exec_id.clone();
    let wants_stdin = opts.stdin;
    let reader = tokio::spawn(async move {
        let mut stdin_open = wants_stdin;
        while let Some(message) = stream.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            match (data.first().copied(), data.get(1).copied()) {
                (Some(STDIN), _) if stdin_open && data.len() > 1 => {
                    stdin_open = stdin_tx.send(Some(data.slice(1..))).await.is_ok();
                }
                (Some(CLOSE), Some(STDIN)) if v5 && stdin_open => {
                    let _ = stdin_tx.send(None).await;
                    stdin_open = false;
                }
                (Some(RESIZE), _) => {
                    #[derive(serde::Deserialize)]
                    #[serde(rename_all = "PascalCase")]
                    struct Size {
                        width: u16,
                        height: u16,
                    }
                    if let Ok(size) = serde_json::from_slice::<Size>(&data[1..]) {
                        let resize = ResizeExecOptions {
                            w: i32::from(size.width),
                            h: i32::from(size.height),
                        };
                        let _ = docker.resize_exec(&reader_exec, resize).await;
                    }
                }
                _ => {}
            }
        }
        // The client closed the websocket (v4's only way to end stdin).
        if stdin_open {
            let _ = stdin_tx.send(None).await;
        }
    });

    let mut client_gone = false;
    let mut error = None;
    while let Some(item) = output.next().await {
        let message = match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                frame(STDOUT, &message)
            }
            Ok(LogOutput::StdErr { message }) => frame(STDERR, &message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                error = Some(format!("exec output: {e}"));
                break;
            }
        };
        if out_tx.send(message).await.is_err() {
            client_gone = true;
            break;
        }
    }
    drop(output);
    if !client_gone {
        let code = exit_code(&app, &exec_id).await;
        let status = exit_status(code, &opts.command, error.as_deref());
        let _ = out_tx
            .send(frame(STATUS, status.to_string().as_bytes()))
            .await;
    }
    drop(out_tx);
    let _ = writer.await;
    reader.abort();
    stdin_task.abort();
}

/// The exit code, once Docker says the exec finished.
async fn exit_code(app: &App, exec_id: &str) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + EXIT_WAIT;
    // Docker usually knows the code when the output ends, or a moment
    // later: poll fast first, this is on every exec's path.
    let mut pause = Duration::from_millis(1);
    loop {
        match app.docker.inspect_exec(exec_id).await {
            Ok(info) if info.running != Some(true) => return info.exit_code,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!("exec inspect: {e}");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            exit_status(Some(0), &[], None),
            json!({"metadata": {}, "status": "Success"})
        );
        let s = exit_status(Some(3), &["sh".into(), "-c".into()], None);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"][0],
            json!({"reason": "ExitCode", "message": "3"})
        );
        assert_eq!(exit_status(None, &[], Some("x"))["status"], "Failure");
    }

    #[test]
    fn protocol_choice() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "v4.channel.k8s.io, v5.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(choose_protocol(&h), Some(V5));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "v4.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(choose_protocol(&h), Some(V4));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(choose_protocol(&h), None);
    }
}
