//! The exec channel protocol byte by byte, with a bare websocket client:
//! v4 (no stdin close signal), v5's close signal, and the refusals a client
//! falls back on (no subprotocol offered, SPDY, a pod that does not run).

mod common;

use std::time::Duration;

use common::{client, create_running, require_image};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use sandpool_k8s_testserver::{Config, serve};
use serde_json::Value;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

fn exec_url(addr: std::net::SocketAddr, ns: &str, pod: &str, argv: &[&str], stdin: bool) -> String {
    let mut url =
        format!("ws://{addr}/api/v1/namespaces/{ns}/pods/{pod}/exec?stdout=true&stderr=true");
    if stdin {
        url.push_str("&stdin=true");
    }
    for arg in argv {
        let arg: String = form_urlencoded::byte_serialize(arg.as_bytes()).collect();
        url.push_str(&format!("&command={arg}"));
    }
    url
}

/// What came back on each channel until the server closed.
#[derive(Default, Debug)]
struct Channels {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<Value>,
}

async fn collect<S>(ws: &mut S) -> Channels
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut got = Channels::default();
    let read = async {
        while let Some(message) = ws.next().await {
            match message.unwrap() {
                Message::Binary(data) if !data.is_empty() => match data[0] {
                    1 => got.stdout.extend_from_slice(&data[1..]),
                    2 => got.stderr.extend_from_slice(&data[1..]),
                    3 => got.status = Some(serde_json::from_slice(&data[1..]).unwrap()),
                    c => panic!("unexpected channel {c}"),
                },
                Message::Close(frame) => {
                    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
                    break;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("exec ended");
    got
}

#[tokio::test]
async fn channel_protocol_v4_v5_and_refusals() {
    require_image();
    let server = serve(Config::default()).await.unwrap();
    let api: Api<Pod> = Api::namespaced(client(&server), "proto");
    let pod = create_running(&api, "proto").await;
    let addr = server.addr();

    // v4 only: output and a Failure status with the exit code.
    let argv = ["sh", "-c", "echo out; echo err >&2; exit 2"];
    let mut req = exec_url(addr, "proto", &pod, &argv, false)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("v4.channel.k8s.io"),
    );
    let (mut ws, response) = connect_async(req).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "v4.channel.k8s.io"
    );
    let got = collect(&mut ws).await;
    assert_eq!(got.stdout, b"out\n");
    assert_eq!(got.stderr, b"err\n");
    let status = got.status.unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "2");

    // v5 preferred; stdin data, then the close signal [255, 0] ends it.
    let mut req = exec_url(addr, "proto", &pod, &["cat"], true)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("v4.channel.k8s.io, v5.channel.k8s.io"),
    );
    let (ws, response) = connect_async(req).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::binary(b"\x00abc".to_vec())).await.unwrap();
    tx.send(Message::binary(b"\x00def\n".to_vec()))
        .await
        .unwrap();
    tx.send(Message::binary(vec![255, 0])).await.unwrap();
    let got = collect(&mut rx).await;
    assert_eq!(got.stdout, b"abcdef\n");
    assert_eq!(
        got.status.unwrap(),
        serde_json::json!({"metadata": {}, "status": "Success"})
    );

    // Refusals answer before any upgrade, so clients fall back or report.
    let http = |url: String, protocol: Option<&'static str>| async move {
        let mut req = url.into_client_request().unwrap();
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        }
        match connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
            other => panic!("expected an HTTP refusal, got {:?}", other.map(|r| r.1)),
        }
    };
    let v5 = Some("v5.channel.k8s.io");
    assert_eq!(
        http(exec_url(addr, "proto", &pod, &["true"], false), None).await,
        400
    );
    assert_eq!(
        http(
            exec_url(addr, "proto", &pod, &["true"], false),
            Some("base64.channel.k8s.io")
        )
        .await,
        400
    );
    assert_eq!(
        http(exec_url(addr, "proto", &pod, &[], false), v5).await,
        400
    );
    assert_eq!(
        http(exec_url(addr, "proto", "no-such-pod", &["true"], false), v5).await,
        404
    );
    let spdy = spdy_upgrade(addr, &pod).await;
    assert!(spdy.starts_with("HTTP/1.1 400"), "{spdy}");

    // Dropping the handle (no shutdown) removes the containers too.
    let instance = format!(
        "{}={}",
        sandpool_k8s_testserver::LABEL_INSTANCE,
        server.instance_id()
    );
    assert_eq!(common::docker_ps(&[&instance]).len(), 1);
    drop(server);
    assert!(common::docker_ps(&[&instance]).is_empty());
}

/// A SPDY upgrade attempt (kubectl's fallback) by hand: the status line.
async fn spdy_upgrade(addr: std::net::SocketAddr, pod: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /api/v1/namespaces/proto/pods/{pod}/exec?command=true&stdout=true HTTP/1.1\r\n\
         Host: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
