//! Runs: streamed output, timeouts that kill whole process trees, output
//! caps, cancellation, stdin/env/working dir, binary safety.

use std::time::{Duration, Instant};

use sandpool_client::{RunEvent, Session, proto as pb};
use sandpool_tests::{TestServer, python_pool, secs, wait_for};

async fn server_and_session(
    name: &str,
    tweak: impl FnOnce(&mut pb::PoolSpec),
) -> (TestServer, Session) {
    let server = TestServer::start().await;
    let mut spec = python_pool(name);
    tweak(&mut spec);
    server.pool(spec).await;
    let session = server.client.acquire(name).await.expect("acquire");
    (server, session)
}

fn code(text: &str) -> Option<pb::run_request::Program> {
    Some(pb::run_request::Program::Code(pb::Code {
        source: Some(pb::code::Source::Text(text.into())),
        language: String::new(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_as_it_is_produced() {
    let (server, session) = server_and_session("stream", |_| {}).await;
    let mut events = session
        .run("import time\nprint('first')\ntime.sleep(1.5)\nprint('second')")
        .await
        .expect("run");
    let mut first_at = None;
    let mut exit_at = None;
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        match event.expect("event") {
            RunEvent::Stdout(d) => {
                first_at.get_or_insert_with(Instant::now);
                seen.push(String::from_utf8_lossy(&d).to_string());
            }
            RunEvent::Exit(e) => {
                exit_at = Some(Instant::now());
                assert_eq!(e.end_reason, pb::EndReason::Exited as i32);
                assert_eq!(e.exit_code, 0);
                assert_eq!(e.stdout_bytes, 13);
            }
            _ => {}
        }
    }
    let gap = exit_at.expect("exit") - first_at.expect("stdout");
    assert!(
        gap >= Duration::from_millis(1200),
        "first chunk came only {gap:?} before the end"
    );
    assert_eq!(seen.concat(), "first\nsecond\n");
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_signals_and_tracebacks() {
    let (server, session) = server_and_session("exits", |_| {}).await;
    let out = session
        .run_collect("import sys\nsys.exit(3)")
        .await
        .expect("run");
    assert_eq!(
        (out.exit_code(), out.end_reason()),
        (3, pb::EndReason::Exited)
    );

    let out = session
        .run_collect("def f():\n    raise ValueError('boom')\nf()")
        .await
        .expect("run");
    assert_eq!(out.exit_code(), 1);
    let err = out.stderr_text();
    assert!(err.contains("File \"main.py\", line 2, in f"), "{err}");
    assert!(
        err.contains("raise ValueError('boom')"),
        "source line shown: {err}"
    );
    assert!(!err.contains("<string>"), "bootstrap frames hidden: {err}");

    let out = session
        .run_collect("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        .await
        .expect("run");
    assert_eq!(out.end_reason(), pb::EndReason::Signaled);
    assert_eq!(out.exit.as_ref().expect("exit").signal, 9);

    let out = session
        .run_collect("print(__name__)\nimport sys\nprint(sys.argv)")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "__main__\n['main.py']\n");
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_tree_and_the_container_stays_usable() {
    let (server, session) = server_and_session("timeout", |_| {}).await;
    // A busy loop, plus a child that escapes into its own session and keeps
    // appending to a file.
    let program = r#"
import os, time
if os.fork() == 0:
    os.setsid()
    while True:
        with open('/tmp/ticks', 'a') as f:
            f.write('x')
        time.sleep(0.05)
while True:
    pass
"#;
    let started = Instant::now();
    let out = session
        .run_request(pb::RunRequest {
            program: code(program),
            timeout: secs(1.0),
            ..Default::default()
        })
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    let took = started.elapsed();
    assert_eq!(out.end_reason(), pb::EndReason::Timeout);
    assert!(out.exit.as_ref().expect("exit").message.contains("timeout"));
    assert!(took < Duration::from_secs(5), "the kill took {took:?}");
    let size = |s: &str| s.trim().parse::<u64>().expect("size");
    let before = session.shell("stat -c %s /tmp/ticks").await.expect("stat");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = session.shell("stat -c %s /tmp/ticks").await.expect("stat");
    assert_eq!(
        size(&before.stdout_text()),
        size(&after.stdout_text()),
        "the forked child still runs"
    );
    let out = session
        .run_collect("print('alive')")
        .await
        .expect("run after timeout");
    assert_eq!(out.stdout_text(), "alive\n");
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_beyond_the_cap_stops_the_run() {
    let (server, session) = server_and_session("cap", |spec| {
        spec.output_limit_bytes = Some(64 * 1024);
    })
    .await;
    let out = session
        .run_collect("import sys\nwhile True:\n    sys.stdout.write('y' * 4096)")
        .await
        .expect("run");
    assert_eq!(out.end_reason(), pb::EndReason::OutputLimit);
    let exit = out.exit.as_ref().expect("exit");
    assert!(exit.truncated);
    assert_eq!(out.stdout.len(), 64 * 1024, "exactly the cap is delivered");
    assert!(exit.stdout_bytes >= 64 * 1024);
    // A smaller per-run cap is allowed; a larger one is not.
    let out = session
        .run_request(pb::RunRequest {
            program: code("print('z' * 5000)"),
            output_limit_bytes: Some(100),
            ..Default::default()
        })
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.stdout.len(), 100);
    assert_eq!(out.end_reason(), pb::EndReason::OutputLimit);
    let err = session
        .run_request(pb::RunRequest {
            program: code("print(1)"),
            output_limit_bytes: Some(1 << 30),
            ..Default::default()
        })
        .await
        .err()
        .expect("above the pool's cap");
    assert_eq!(
        err.status().expect("status").code(),
        tonic::Code::InvalidArgument
    );
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_dropping_the_stream_kill_the_run() {
    let (server, session) = server_and_session("cancel", |_| {}).await;
    let mut events = session
        .run("import time\nprint('go', flush=True)\ntime.sleep(60)")
        .await
        .expect("run");
    let run_id = match events.next().await.expect("event").expect("ok") {
        RunEvent::Started { run_id } => run_id,
        other => panic!("first event must be Started, got {other:?}"),
    };
    assert!(session.cancel(&run_id).await.expect("cancel"));
    let mut reason = None;
    while let Some(event) = events.next().await {
        if let RunEvent::Exit(e) = event.expect("event") {
            reason = Some(e.end_reason);
        }
    }
    assert_eq!(reason, Some(pb::EndReason::Cancelled as i32));
    assert!(
        !session.cancel(&run_id).await.expect("cancel again"),
        "already ended"
    );

    // A client that drops the stream: the process is killed too.
    let events = session
        .run("import time\nwith open('/tmp/alive', 'w') as f: f.write('1')\nwhile True:\n    time.sleep(0.05)\n    open('/tmp/alive', 'a').write('1')")
        .await
        .expect("run");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(events);
    let stable = wait_for(
        "the dropped run to stop",
        Duration::from_secs(5),
        || async {
            let a = session
                .shell("stat -c %s /tmp/alive")
                .await
                .ok()?
                .stdout_text();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let b = session
                .shell("stat -c %s /tmp/alive")
                .await
                .ok()?
                .stdout_text();
            (a == b).then_some(a)
        },
    )
    .await;
    assert!(!stable.trim().is_empty());
    let stats = server.stats("cancel").await;
    assert!(stats.counters.expect("c").runs >= 2);
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_env_working_dir_and_commands() {
    let (server, session) = server_and_session("io", |_| {}).await;
    let out = session
        .run_request(pb::RunRequest {
            program: code("import sys, os\ndata = sys.stdin.read()\nprint(data.upper(), os.environ['GREETING'], os.getcwd())"),
            stdin: bytes::Bytes::from_static(b"from stdin"),
            env: [("GREETING".to_string(), "hello".to_string())].into(),
            working_dir: "/tmp".into(),
            ..Default::default()
        })
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.stdout_text(), "FROM STDIN hello /tmp\n");

    let out = session
        .exec(&["sh", "-c", "echo \"$0\" $1", "a b", "c;d"])
        .await
        .expect("argv");
    assert_eq!(
        out.stdout_text(),
        "a b c;d\n",
        "argv passes through without a shell"
    );
    let out = session
        .shell("echo one | tr a-z A-Z; echo two >&2; exit 4")
        .await
        .expect("shell");
    assert_eq!(
        (out.stdout_text(), out.stderr_text(), out.exit_code()),
        ("ONE\n".into(), "two\n".into(), 4)
    );
    let out = session
        .shell("id -u; echo $HOME; pwd")
        .await
        .expect("shell");
    assert_eq!(
        out.stdout_text(),
        "1000\n/home/sandbox\n/sandbox\n",
        "non-root, home, workspace"
    );
    let out = session
        .shell(
            "cp /bin/echo /sandbox/e && /sandbox/e ws-ok && cp /bin/echo /tmp/e && /tmp/e tmp-ok",
        )
        .await
        .expect("shell");
    assert_eq!(
        out.stdout_text(),
        "ws-ok\ntmp-ok\n",
        "programs may run from the writable mounts: {}",
        out.stderr_text()
    );
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_and_output_are_binary_safe() {
    let (server, session) = server_and_session("binary", |_| {}).await;
    // Latin-1 source with a coding cookie: the bytes must reach Python as they are.
    let mut source = b"# -*- coding: latin-1 -*-\nimport sys\ns = '".to_vec();
    source.extend_from_slice(&[0xe9, 0xe8]);
    source.extend_from_slice(b"'\nsys.stdout.buffer.write(s.encode('utf-8') + bytes(range(256)))\nprint()\nprint('\\u00fcnic\\u00f8de')".as_slice());
    let out = session
        .run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Data(source.into())),
                language: "python".into(),
            })),
            ..Default::default()
        })
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.exit_code(), 0, "{}", out.stderr_text());
    let mut expected = "éè".as_bytes().to_vec();
    expected.extend((0..=255u8).collect::<Vec<_>>());
    expected.extend_from_slice("\nünicøde\n".as_bytes());
    assert_eq!(out.stdout.to_vec(), expected);

    // Code too large for an argument travels on stdin, ahead of the run's own
    // input; so does code with stdin, which must reach the program intact.
    let big = format!(
        "# {}\nimport sys\nprint(len(sys.stdin.read()))",
        "pad ".repeat(50_000)
    );
    let out = session.run_collect(big).await.expect("big code");
    assert_eq!(out.stdout_text(), "0\n", "{}", out.stderr_text());
    let out = session
        .run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Text(
                    "import sys\nprint(sys.stdin.buffer.read().hex())".into(),
                )),
                language: String::new(),
            })),
            stdin: bytes::Bytes::from_static(&[0, 1, 254, 255]),
            ..Default::default()
        })
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.stdout_text(), "0001feff\n");
    session.release().await.expect("release");
    server.stop().await;
}

/// The server's side of every client connection has TCP_NODELAY: without
/// it, Nagle holds an output event back until the client acknowledges the
/// one before it, and a run whose events come close together (Started,
/// output, exit within a millisecond, as on the resident runner) reached
/// the client 40 ms late (the delayed ACK). Read from the server's own
/// sockets: the test server runs in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_connections_send_each_event_at_once() {
    let server = TestServer::start().await;
    server.client.list_pools().await.expect("a call");
    let port = server.addr.port();
    let mut accepted = 0;
    for entry in std::fs::read_dir("/proc/self/fd").expect("fds") {
        let Ok(fd) = entry
            .expect("fd")
            .file_name()
            .to_string_lossy()
            .parse::<i32>()
        else {
            continue;
        };
        // SAFETY: plain getsockname/getpeername/getsockopt on a descriptor of
        // this process into buffers of the right size; a descriptor that is
        // not a socket makes them fail, and it is skipped.
        let (local, peer, nodelay) = unsafe {
            let mut local: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::getsockname(fd, (&raw mut local).cast(), &mut len) != 0
                || i32::from(local.sin_family) != libc::AF_INET
            {
                continue;
            }
            let mut peer: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let connected = libc::getpeername(fd, (&raw mut peer).cast(), &mut len) == 0;
            let mut on: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw mut on).cast(),
                &mut len,
            );
            (u16::from_be(local.sin_port), connected.then_some(peer), on)
        };
        // The server's end of a connection: its local port is the server's.
        if local == port && peer.is_some() {
            accepted += 1;
            assert_eq!(nodelay, 1, "a connection accepted without TCP_NODELAY");
        }
    }
    assert!(accepted >= 1, "no accepted connection found");
    server.stop().await;
}
