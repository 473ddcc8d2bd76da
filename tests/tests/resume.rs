//! Resumable runs against a real engine, over real sockets: a run started
//! with a run id survives its connection being cut (the client resumes it
//! with Attach and loses nothing), reports what its buffer could not keep
//! as a gap, never runs twice when its Run is repeated, goes on when its
//! stream drops, and every bad Attach gets a clear status.

use std::time::Duration;

use futures::StreamExt;
use sandpool_client::{AcquireOptions, Client, RunEvent, Session, proto as pb};
use sandpool_tests::{TestServer, code_of, code_run, proxy::CutProxy, python_pool, shell_run};

/// Python that prints `n` numbered lines, one every `every` seconds.
fn counting(n: u32, every: f64) -> pb::RunRequest {
    code_run(
        &format!(
            "import time\nfor i in range({n}):\n    print(f'line {{i}}', flush=True)\n    time.sleep({every})\n"
        ),
        60.0,
    )
}

/// A proxy in front of `server`, and a lease on `pool` (TTL 20 s) taken by
/// a client that connects through it.
async fn session_through_proxy(server: &TestServer, pool: &str) -> (CutProxy, Session) {
    let proxy = CutProxy::start(server.addr).await;
    let client = Client::builder(format!("http://{}", proxy.addr))
        .connect()
        .await
        .expect("connect through the proxy");
    let session = client
        .acquire_with(AcquireOptions {
            ttl: Some(Duration::from_secs(20)),
            ..AcquireOptions::new(pool)
        })
        .await
        .expect("acquire");
    (proxy, session)
}

fn expected_lines(n: u32) -> String {
    (0..n).map(|i| format!("line {i}\n")).collect()
}

async fn collect_raw(
    mut stream: tonic::Streaming<pb::RunResponse>,
) -> Result<Vec<pb::RunResponse>, tonic::Status> {
    let mut all = Vec::new();
    while let Some(event) = stream.message().await? {
        all.push(event);
    }
    Ok(all)
}

fn stdout_of(events: &[pb::RunResponse]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(pb::run_response::Event::Stdout(c)) => Some(String::from_utf8_lossy(&c.data)),
            _ => None,
        })
        .collect()
}

fn exit_of(events: &[pb::RunResponse]) -> pb::RunExit {
    match events.last().and_then(|e| e.event.clone()) {
        Some(pb::run_response::Event::Exit(exit)) => exit,
        other => panic!("the last event is not the exit: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_its_connection_being_cut_twice_and_loses_nothing() {
    let server = TestServer::start().await;
    server.pool(python_pool("cut")).await;
    let (proxy, session) = session_through_proxy(&server, "cut").await;
    let mut run = session.run_request(counting(30, 0.05)).await.expect("run");
    let mut stdout = String::new();
    let mut exit = None;
    let mut gaps = Vec::new();
    while let Some(event) = run.next().await {
        match event.expect("the run's events, resumed after each cut") {
            RunEvent::Stdout(d) => {
                stdout.push_str(&String::from_utf8_lossy(&d));
                // Cut in the middle of the run, twice.
                if stdout.contains("line 5\n") && proxy.forwarded() == 1
                    || stdout.contains("line 15\n") && proxy.forwarded() == 2
                {
                    proxy.cut();
                }
            }
            RunEvent::Gap(g) => gaps.push(g),
            RunEvent::Exit(e) => exit = Some(e),
            _ => {}
        }
    }
    let exit = exit.expect("the exit");
    println!(
        "connections through the proxy: {}; stdout {} bytes",
        proxy.forwarded(),
        stdout.len()
    );
    assert!(
        proxy.forwarded() >= 3,
        "the client reconnected after each cut ({} connections)",
        proxy.forwarded()
    );
    assert_eq!(stdout, expected_lines(30), "every line once, in order");
    assert!(gaps.is_empty(), "nothing was lost: {gaps:?}");
    assert_eq!(exit.end_reason, pb::EndReason::Exited as i32, "{exit:?}");
    assert_eq!(exit.exit_code, 0);
    // The lease lived through the cuts.
    let after = session.shell("echo still here").await.expect("run after");
    assert_eq!(after.stdout_text(), "still here\n");
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_buffer_is_reported_as_a_gap_of_exact_size() {
    let server = TestServer::start().await;
    let mut spec = python_pool("gap");
    spec.run_buffer_bytes = Some(4096);
    server.pool(spec).await;
    let (proxy, session) = session_through_proxy(&server, "gap").await;
    // 200 lines of 100 bytes while nobody reads, then the last line.
    let code = "import time, sys\nprint('start', flush=True)\ntime.sleep(1)\n\
                for i in range(200):\n    sys.stdout.write(f'{i:04d}' + 'x' * 95 + '\\n')\n    sys.stdout.flush()\n\
                time.sleep(0.5)\nprint('end', flush=True)\n";
    let mut run = session
        .run_request(code_run(code, 60.0))
        .await
        .expect("run");
    let mut stdout = String::new();
    let mut gaps = Vec::new();
    let mut exit = None;
    while let Some(event) = run.next().await {
        match event.expect("events") {
            RunEvent::Stdout(d) => {
                stdout.push_str(&String::from_utf8_lossy(&d));
                if stdout == "start\n" {
                    // An outage: every connection drops and new ones fail
                    // for 3 s, while the program writes 20 kB.
                    proxy.refuse(true);
                    proxy.cut();
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    proxy.refuse(false);
                }
            }
            RunEvent::Gap(g) => gaps.push(g),
            RunEvent::Exit(e) => exit = Some(e),
            _ => {}
        }
    }
    let exit = exit.expect("the exit");
    println!("gaps: {gaps:?}; received {} bytes of stdout", stdout.len());
    assert_eq!(gaps.len(), 1, "one gap: {gaps:?}");
    let gap = &gaps[0];
    assert!(gap.stdout_bytes > 0, "{gap:?}");
    assert!(gap.from_seq <= gap.to_seq, "{gap:?}");
    assert_eq!(
        stdout.len() as u64 + gap.stdout_bytes,
        exit.stdout_bytes,
        "what arrived plus the gap is all the program wrote"
    );
    assert!(stdout.starts_with("start\n"), "{stdout:?}");
    assert!(
        stdout.ends_with("end\n"),
        "the tail after the gap: {stdout:?}"
    );
    assert_eq!(exit.end_reason, pb::EndReason::Exited as i32, "{exit:?}");
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_run_never_runs_twice_and_bad_attaches_are_refused() {
    let server = TestServer::start().await;
    server.pool(python_pool("once")).await;
    let session = server.client.acquire("once").await.expect("acquire");
    let mut raw = server.client.sessions();
    let lease_id = session.lease().id.clone();
    let request = pb::RunRequest {
        lease_id: lease_id.clone(),
        run_id: "once-1".into(),
        ..shell_run("echo ran >> /tmp/count; echo hi", 10.0)
    };
    let first = collect_raw(raw.run(request.clone()).await.expect("run").into_inner())
        .await
        .expect("events");
    let again = collect_raw(raw.run(request.clone()).await.expect("again").into_inner())
        .await
        .expect("events again");
    assert_eq!(
        first, again,
        "the repeated Run answers with the same events"
    );
    assert_eq!(stdout_of(&first), "hi\n");
    match &first[0].event {
        Some(pb::run_response::Event::Started(s)) => assert_eq!(s.run_id, "once-1"),
        other => panic!("first event {other:?}"),
    }
    let count = session.shell("wc -l < /tmp/count").await.expect("count");
    assert_eq!(count.stdout_text().trim(), "1", "the program ran once");

    // Attach from the middle: the rest, ending with the exit.
    let rest = collect_raw(
        raw.attach(pb::AttachRequest {
            lease_id: lease_id.clone(),
            run_id: "once-1".into(),
            after_seq: 1,
        })
        .await
        .expect("attach")
        .into_inner(),
    )
    .await
    .expect("rest");
    assert_eq!(rest, first[1..].to_vec());

    // The same id for another program.
    let other = pb::RunRequest {
        lease_id: lease_id.clone(),
        run_id: "once-1".into(),
        ..shell_run("echo other", 10.0)
    };
    let err = raw.run(other).await.expect_err("another program");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("different program"), "{err:?}");

    // The id of a run that was not resumable.
    let plain_events = collect_raw(
        raw.run(pb::RunRequest {
            lease_id: lease_id.clone(),
            ..shell_run("echo plain", 10.0)
        })
        .await
        .expect("a plain run")
        .into_inner(),
    )
    .await
    .expect("its events");
    let plain = match &plain_events[0].event {
        Some(pb::run_response::Event::Started(s)) => s.run_id.clone(),
        other => panic!("first event {other:?}"),
    };
    let reuse = pb::RunRequest {
        lease_id: lease_id.clone(),
        run_id: plain,
        ..shell_run("echo plain", 10.0)
    };
    let err = raw.run(reuse).await.expect_err("a plain run's id");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");

    // Bad ids and attaches.
    let bad = pb::RunRequest {
        lease_id: lease_id.clone(),
        run_id: "no spaces".into(),
        ..shell_run("true", 10.0)
    };
    let err = raw.run(bad).await.expect_err("bad id");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("run_id"), "{err:?}");
    let err = raw
        .attach(pb::AttachRequest {
            lease_id: lease_id.clone(),
            run_id: "never".into(),
            after_seq: 0,
        })
        .await
        .expect_err("unknown run");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = raw
        .attach(pb::AttachRequest {
            lease_id: lease_id.clone(),
            run_id: "once-1".into(),
            after_seq: 99,
        })
        .await
        .expect_err("beyond the end");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("after_seq"), "{err:?}");
    let err = raw
        .attach(pb::AttachRequest {
            lease_id: "0".repeat(32),
            run_id: "once-1".into(),
            after_seq: 0,
        })
        .await
        .expect_err("unknown lease");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // Interactive runs are not resumable.
    let err = session
        .interact(
            pb::RunRequest {
                run_id: "live".into(),
                ..shell_run("cat", 10.0)
            },
            None,
        )
        .await
        .err()
        .expect("an interactive run with a run id");
    assert_eq!(code_of(&err), tonic::Code::InvalidArgument, "{err}");

    // The server still serves.
    let out = session.shell("echo fine").await.expect("run");
    assert_eq!(out.stdout_text(), "fine\n");
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_leaves_the_run_going_until_the_client_comes_back() {
    let server = TestServer::start().await;
    server.pool(python_pool("detach")).await;
    let session = server.client.acquire("detach").await.expect("acquire");
    let mut raw = server.client.sessions();
    let lease_id = session.lease().id.clone();
    let mut first = raw
        .run(pb::RunRequest {
            lease_id: lease_id.clone(),
            run_id: "detached".into(),
            ..counting(10, 0.1)
        })
        .await
        .expect("run")
        .into_inner();
    let started = first.message().await.expect("started").expect("an event");
    assert_eq!(started.seq, 1);
    drop(first);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rest = collect_raw(
        raw.attach(pb::AttachRequest {
            lease_id: lease_id.clone(),
            run_id: "detached".into(),
            after_seq: 1,
        })
        .await
        .expect("attach")
        .into_inner(),
    )
    .await
    .expect("rest");
    assert_eq!(stdout_of(&rest), expected_lines(10));
    let exit = exit_of(&rest);
    assert_eq!(exit.end_reason, pb::EndReason::Exited as i32, "{exit:?}");
    let seqs: Vec<u64> = rest.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (2..2 + rest.len() as u64).collect::<Vec<_>>());

    // A newer Attach takes over from an older one.
    let mut older = raw
        .attach(pb::AttachRequest {
            lease_id: lease_id.clone(),
            run_id: "detached".into(),
            after_seq: 0,
        })
        .await
        .expect("older")
        .into_inner();
    // The run is over: the older stream gets everything and its end.
    let all: Vec<_> = (&mut older).collect::<Vec<_>>().await;
    assert!(all.iter().all(|e| e.is_ok()), "{all:?}");

    // The client's stream, dropped before the exit, cancels its run.
    let mut run = session.run_request(counting(600, 0.1)).await.expect("run");
    let run_id = run.run_id().expect("a run id").to_string();
    assert!(matches!(
        run.next().await,
        Some(Ok(RunEvent::Started { .. }))
    ));
    drop(run);
    let events = collect_raw(
        raw.attach(pb::AttachRequest {
            lease_id: lease_id.clone(),
            run_id: run_id.clone(),
            after_seq: 0,
        })
        .await
        .expect("attach the dropped run")
        .into_inner(),
    )
    .await
    .expect("events");
    let exit = exit_of(&events);
    assert_eq!(
        exit.end_reason,
        pb::EndReason::Cancelled as i32,
        "dropping the client's stream cancelled the run: {exit:?}"
    );
    assert!(exit.duration.is_some_and(|d| d.seconds < 10), "{exit:?}");
    session.release().await.expect("release");
    server.stop().await;
}
