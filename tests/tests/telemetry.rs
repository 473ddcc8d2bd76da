//! OpenTelemetry end to end: the server binary, configured by the standard
//! OTEL_* variables, exports to an OTLP receiver of ours (tests/src/otlp.rs)
//! over real OTLP/gRPC. A call carrying a W3C traceparent yields one trace
//! down to the program, which sees its run's span as TRACEPARENT (a cell of
//! a persistent context too); metrics arrive with the pool's counts, the
//! duration histograms and runs by end reason; with no endpoint nothing is
//! exported.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use sandpool_client::{Client, proto as pb};
use sandpool_tests::{
    containers_of,
    otlp::{Receiver, SpanRecord},
    python_image, terminate, wait_for, workspace_binary,
};

const POOL: &str = "traced";
/// What the program prints: the trace context it was given.
const PRINT_TRACEPARENT: &str = "import os\nprint(os.environ.get('TRACEPARENT', 'none'))\n";

/// The server binary with a one-container python pool and `env` (the
/// OTEL_* variables of this process removed first).
struct ServerProcess {
    /// Taken by `stop`; a test that fails before it leaves the server to
    /// `Drop`.
    child: Option<Child>,
    id: String,
    port: u16,
    dir: PathBuf,
}

impl ServerProcess {
    fn start(env: &[(&str, String)]) -> Self {
        let id = format!("otel-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let config = dir.join("server.toml");
        std::fs::write(
            &config,
            format!(
                "shutdown_grace = 1.0\n[[pools]]\nname = \"{POOL}\"\nlanguage = \"python\"\nimage = \"{}\"\nmin_pool_size = 1\nmax_pool_size = 1\n",
                python_image()
            ),
        )
        .expect("write config");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut command = Command::new(workspace_binary("sandpool-server"));
        for (key, _) in std::env::vars() {
            if key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--config"])
            .arg(&config)
            .args(["--server-id", &id])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("SANDPOOL_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        let child = command.spawn().expect("start the server");
        Self {
            child: Some(child),
            id,
            port,
            dir,
        }
    }

    /// A client once the pool is warm.
    async fn client(&self) -> Client {
        let port = self.port;
        let client = wait_for("the server to answer", Duration::from_secs(20), || async {
            Client::connect(format!("http://127.0.0.1:{port}"))
                .await
                .ok()
        })
        .await;
        wait_for("the pool to warm", Duration::from_secs(60), || async {
            let stats = client.stats(POOL).await.ok()?;
            (stats.state_counts?.idle == 1).then_some(())
        })
        .await;
        client
    }

    /// SIGTERM, a clean exit within 30 s (which flushes the exporters), and
    /// no container left.
    async fn stop(mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        terminate(child).await;
        assert!(
            containers_of(&self.id).await.is_empty(),
            "containers left after SIGTERM"
        );
        let _ = std::fs::remove_dir_all(&self.dir);
        self.dir = PathBuf::new();
    }
}

impl Drop for ServerProcess {
    /// A test that failed before `stop` must not leave its server (and the
    /// server's containers) running: SIGTERM, and the server removes its
    /// containers on its way out.
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }
}

/// A request carrying `traceparent` in its metadata, as any W3C client sends it.
fn traced<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        traceparent.parse().expect("a valid metadata value"),
    );
    request
}

/// Runs Python `code` on `lease` (in `context` unless empty) with
/// `traceparent` (and `tracestate`, if any); what it printed, trimmed, once
/// it exited 0.
async fn run_traced(
    client: &Client,
    lease_id: &str,
    context: &str,
    code: &str,
    traceparent: &str,
    tracestate: Option<&str>,
) -> String {
    let mut request = traced(
        pb::RunRequest {
            lease_id: lease_id.into(),
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Text(code.into())),
                language: String::new(),
            })),
            context_id: context.into(),
            ..Default::default()
        },
        traceparent,
    );
    if let Some(state) = tracestate {
        request
            .metadata_mut()
            .insert("tracestate", state.parse().expect("a valid metadata value"));
    }
    let mut events = client
        .sessions()
        .run(request)
        .await
        .expect("run")
        .into_inner();
    let mut stdout = Vec::new();
    let mut exit_code = None;
    while let Some(event) = events.message().await.expect("run events") {
        match event.event {
            Some(pb::run_response::Event::Stdout(chunk)) => stdout.extend(chunk.data),
            Some(pb::run_response::Event::Stderr(chunk)) => stdout.extend(chunk.data),
            Some(pb::run_response::Event::Exit(exit)) => exit_code = Some(exit.exit_code),
            _ => {}
        }
    }
    let printed = String::from_utf8_lossy(&stdout).trim().to_string();
    assert_eq!(exit_code, Some(0), "{printed}");
    printed
}

/// Acquire, Run (the program prints its TRACEPARENT), Release, each with
/// `traceparent`; returns the lease id and what the program printed. Waits
/// until the container is reset and idle again.
async fn acquire_run_release(client: &Client, traceparent: &str) -> (String, String) {
    let mut sessions = client.sessions();
    let lease = sessions
        .acquire(traced(
            pb::AcquireRequest {
                pool: POOL.into(),
                ..Default::default()
            },
            traceparent,
        ))
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("a lease");
    let mut events = sessions
        .run(traced(
            pb::RunRequest {
                lease_id: lease.id.clone(),
                program: Some(pb::run_request::Program::Code(pb::Code {
                    source: Some(pb::code::Source::Text(PRINT_TRACEPARENT.into())),
                    language: String::new(),
                })),
                ..Default::default()
            },
            traceparent,
        ))
        .await
        .expect("run")
        .into_inner();
    let mut stdout = Vec::new();
    let mut exit_code = None;
    while let Some(event) = events.message().await.expect("run events") {
        match event.event {
            Some(pb::run_response::Event::Stdout(chunk)) => stdout.extend(chunk.data),
            Some(pb::run_response::Event::Exit(exit)) => exit_code = Some(exit.exit_code),
            _ => {}
        }
    }
    assert_eq!(exit_code, Some(0), "{}", String::from_utf8_lossy(&stdout));
    sessions
        .release(traced(
            pb::ReleaseRequest {
                lease_id: lease.id.clone(),
            },
            traceparent,
        ))
        .await
        .expect("release");
    wait_for("the reset", Duration::from_secs(30), || async {
        let stats = client.stats(POOL).await.ok()?;
        (stats.state_counts?.idle == 1).then_some(())
    })
    .await;
    (
        lease.id,
        String::from_utf8_lossy(&stdout).trim().to_string(),
    )
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn rpc<'a>(spans: &'a [SpanRecord], trace_id: &str, method: &str) -> &'a SpanRecord {
    let name = format!("sandpool.v1.SessionService/{method}");
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "one {name} span in the trace: {spans:#?}");
    found[0]
}

fn child<'a>(spans: &'a [SpanRecord], parent: &SpanRecord, name: &str) -> &'a SpanRecord {
    spans
        .iter()
        .find(|s| s.parent_span_id == parent.span_id && s.name == name)
        .unwrap_or_else(|| panic!("no {name} under {}: {spans:#?}", parent.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_caller_to_the_program_and_metrics_over_otlp() {
    let receiver = Receiver::start().await;
    let server = ServerProcess::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_SERVICE_NAME", "sandpool-under-test".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500".into()),
    ]);
    let client = server.client().await;
    let trace_id = random_hex(16);
    let caller_span = random_hex(8);
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let (lease_id, printed) = acquire_run_release(&client, &traceparent).await;
    wait_for(
        "metrics with the run and the reset",
        Duration::from_secs(10),
        || async {
            let run_ended = receiver.points().iter().any(|p| {
                p.metric == "sandpool_runs_ended"
                    && p.attributes
                        .iter()
                        .any(|a| a.0 == "end_reason" && a.1 == "exited")
                    && p.value >= 1.0
            });
            let reset = receiver
                .histograms()
                .iter()
                .any(|h| h.metric == "sandpool_reset_duration_seconds" && h.count >= 1);
            (run_ended && reset).then_some(())
        },
    )
    .await;
    drop(client);
    server.stop().await;

    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| s.service == "sandpool-under-test"),
        "{spans:#?}"
    );
    let lease_tag = sandpool_server::telemetry::lease_tag(&lease_id);
    for method in ["Acquire", "Run", "Release"] {
        let span = rpc(&spans, &trace_id, method);
        assert_eq!(span.parent_span_id, caller_span, "{span:#?}");
        assert_eq!(span.kind, 2, "a server span: {span:#?}");
        assert_eq!(span.attribute("rpc.system"), Some("grpc"));
        assert_eq!(
            span.attribute("rpc.service"),
            Some("sandpool.v1.SessionService")
        );
        assert_eq!(span.attribute("rpc.method"), Some(method));
        assert_eq!(
            span.attribute("rpc.grpc.status_code"),
            Some("0"),
            "{span:#?}"
        );
        assert_eq!(span.attribute("sandpool.lease"), Some(lease_tag.as_str()));
    }
    assert_eq!(
        rpc(&spans, &trace_id, "Acquire").attribute("sandpool.pool"),
        Some(POOL)
    );

    // The work under Run, and the program inside the same trace.
    let run_rpc = rpc(&spans, &trace_id, "Run");
    let run = child(&spans, run_rpc, "run");
    // The program's start: the frame to the resident runner (the server's
    // default; the first run of a lease finds it up), or an engine exec on
    // a server whose environment turns the runner off (the server binary
    // reads SANDPOOL_RESIDENT_RUNNER as this does).
    let on_runner = std::env::var("SANDPOOL_RESIDENT_RUNNER").map_or(true, |v| {
        sandpool_server::config::resident_runner_flag(&v, true)
    });
    child(
        &spans,
        run,
        if on_runner {
            "runner.start"
        } else {
            "engine.exec"
        },
    );
    child(&spans, run, "run.artifacts");
    let events: Vec<&str> = run.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["run.start", "run.exit"], "{run:#?}");
    let exit = &run.events[1];
    assert_eq!(exit.attribute("exit_code"), Some("0"), "{exit:#?}");
    assert_eq!(exit.attribute("end_reason"), Some("Exited"), "{exit:#?}");
    assert_eq!(printed, format!("00-{trace_id}-{}-01", run.span_id));

    // The reset after Release: a trace of its own, linked to the Release.
    let release = rpc(&spans, &trace_id, "Release");
    let reset = spans
        .iter()
        .find(|s| s.name == "container.reset" && s.links.iter().any(|l| l.1 == release.span_id))
        .unwrap_or_else(|| panic!("no reset linked to the Release: {spans:#?}"));
    assert_ne!(reset.trace_id, trace_id);
    assert!(reset.parent_span_id.is_empty(), "a root span: {reset:#?}");

    // Neither the lease id (a capability) nor the code is ever exported.
    for span in &spans {
        for (key, value) in span
            .attributes
            .iter()
            .chain(span.events.iter().flat_map(|e| e.attributes.iter()))
        {
            assert!(!value.contains(&lease_id), "{key} holds the lease id");
            assert!(!value.contains("os.environ"), "{key} holds the code");
        }
    }

    // Metrics: the same families as /metrics, with the pool's counts.
    let points = receiver.points();
    let value = |metric: &str, extra: Option<(&str, &str)>| {
        points
            .iter()
            .rev()
            .find(|p| {
                p.metric == metric
                    && p.attributes.iter().any(|(k, v)| k == "pool" && v == POOL)
                    && extra.is_none_or(|(k, v)| p.attributes.iter().any(|a| a.0 == k && a.1 == v))
            })
            .map(|p| p.value)
            .unwrap_or_else(|| panic!("no {metric} for {POOL}: {points:#?}"))
    };
    assert_eq!(value("sandpool_acquisitions", None), 1.0);
    assert_eq!(value("sandpool_releases", None), 1.0);
    assert_eq!(value("sandpool_runs", None), 1.0);
    assert_eq!(value("sandpool_pool_max_size", None), 1.0);
    assert!(value("sandpool_containers_created", None) >= 1.0);
    assert_eq!(
        value("sandpool_runs_ended", Some(("end_reason", "exited"))),
        1.0
    );
    assert_eq!(
        value("sandpool_runs_ended", Some(("end_reason", "timeout"))),
        0.0
    );
    assert_eq!(value("sandpool_run_failures", None), 0.0);
    assert_eq!(value("sandpool_resets", None), 1.0);
    assert_eq!(value("sandpool_reset_failures", None), 0.0);
    // What the program printed, its newline included.
    assert_eq!(
        value("sandpool_streamed_bytes", Some(("stream", "stdout"))),
        (printed.len() + 1) as f64
    );

    // Histograms: cumulative, the server's bounds, the runs' counts.
    let histograms = receiver.histograms();
    let histogram = |metric: &str| {
        histograms
            .iter()
            .rev()
            .find(|h| {
                h.metric == metric && h.attributes.iter().any(|(k, v)| k == "pool" && v == POOL)
            })
            .unwrap_or_else(|| panic!("no {metric} histogram for {POOL}: {histograms:#?}"))
            .clone()
    };
    for (metric, at_least) in [
        ("sandpool_acquire_latency_seconds", 1),
        ("sandpool_run_duration_seconds", 1),
        ("sandpool_reset_duration_seconds", 1),
        ("sandpool_container_create_duration_seconds", 1),
    ] {
        let h = histogram(metric);
        assert_eq!(h.temporality, 2, "cumulative: {h:#?}");
        assert_eq!(h.unit, "s", "{h:#?}");
        assert_eq!(
            h.bounds,
            sandpool_server::pool::stats::DURATION_BOUNDS,
            "{h:#?}"
        );
        assert_eq!(h.bucket_counts.len(), h.bounds.len() + 1, "{h:#?}");
        assert_eq!(h.bucket_counts.iter().sum::<u64>(), h.count, "{h:#?}");
        assert!(h.count >= at_least, "{h:#?}");
        assert!(h.sum > 0.0, "{h:#?}");
    }
    assert_eq!(histogram("sandpool_acquire_latency_seconds").count, 1);
    assert_eq!(histogram("sandpool_run_duration_seconds").count, 1);
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_cell_sees_the_traceparent_of_its_run() {
    let receiver = Receiver::start().await;
    let server = ServerProcess::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "60000".into()),
    ]);
    let client = server.client().await;
    let setup = format!("00-{}-{}-01", random_hex(16), random_hex(8));
    let lease = client
        .sessions()
        .acquire(traced(
            pb::AcquireRequest {
                pool: POOL.into(),
                ..Default::default()
            },
            &setup,
        ))
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("a lease");
    let context = client
        .sessions()
        .create_context(traced(
            pb::CreateContextRequest {
                lease_id: lease.id.clone(),
                language: String::new(),
            },
            &setup,
        ))
        .await
        .expect("create context")
        .into_inner()
        .context_id;
    const PRINT_BOTH: &str = "import os\nprint(os.environ.get('TRACEPARENT', 'none'), os.environ.get('TRACESTATE', 'none'))\n";
    // Two cells in two traces, the first with a tracestate: each sees its
    // own run's, never the kernel's start or the cell before.
    let first_trace = random_hex(16);
    let first = run_traced(
        &client,
        &lease.id,
        &context,
        PRINT_BOTH,
        &format!("00-{first_trace}-{}-01", random_hex(8)),
        Some("vendor=abc,other=x y"),
    )
    .await;
    let second_trace = random_hex(16);
    let second = run_traced(
        &client,
        &lease.id,
        &context,
        PRINT_BOTH,
        &format!("00-{second_trace}-{}-01", random_hex(8)),
        None,
    )
    .await;
    // A child process of the cell inherits it.
    let from_child = run_traced(
        &client,
        &lease.id,
        &context,
        "import subprocess\nprint(subprocess.run(['sh', '-c', 'echo $TRACEPARENT'], capture_output=True, text=True).stdout.strip())\n",
        &format!("00-{second_trace}-{}-01", random_hex(8)),
        None,
    )
    .await;
    client
        .sessions()
        .release(pb::ReleaseRequest {
            lease_id: lease.id.clone(),
        })
        .await
        .expect("release");
    // The JavaScript kernel does the same.
    let js_pool = client
        .create_pool(
            sandpool_tests::language_pool("traced-js", "javascript"),
            true,
        )
        .await
        .expect("a javascript pool");
    assert_ne!(js_pool.phase, pb::PoolPhase::Failing as i32, "{js_pool:?}");
    let js_trace = random_hex(16);
    let js = {
        let session = client.acquire("traced-js").await.expect("acquire js");
        let context = session.create_context().await.expect("js context");
        let printed = run_traced(
            &client,
            session.lease_id(),
            context.id(),
            "console.log(process.env.TRACEPARENT, process.env.TRACESTATE)",
            &format!("00-{js_trace}-{}-01", random_hex(8)),
            Some("js=1"),
        )
        .await;
        drop(context);
        session.release().await.expect("release js");
        printed
    };
    drop(client);
    server.stop().await;

    let spans = receiver.spans();
    let run_span = |trace_id: &str| {
        let rpc = spans
            .iter()
            .find(|s| s.trace_id == trace_id && s.name == "sandpool.v1.SessionService/Run")
            .unwrap_or_else(|| panic!("no Run span in {trace_id}: {spans:#?}"));
        child(&spans, rpc, "run").span_id.clone()
    };
    assert_eq!(
        first,
        format!(
            "00-{first_trace}-{}-01 vendor=abc,other=x y",
            run_span(&first_trace)
        )
    );
    let (parent, state) = second.split_once(' ').expect("two words");
    assert_eq!(
        state, "none",
        "the first cell's tracestate is gone: {second}"
    );
    assert!(
        parent.starts_with(&format!("00-{second_trace}-")),
        "{second}"
    );
    assert!(
        from_child.starts_with(&format!("00-{second_trace}-")),
        "{from_child}"
    );
    assert_ne!(parent, from_child, "each run its own span");
    assert_eq!(js, format!("00-{js_trace}-{}-01 js=1", run_span(&js_trace)));
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_when_no_endpoint_is_configured() {
    let receiver = Receiver::start().await;
    // The receiver's address is known to the server only through a variable
    // that enables nothing on its own.
    let server = ServerProcess::start(&[
        ("OTEL_SERVICE_NAME", "sandpool-off".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".into()),
        ("SANDPOOL_TEST_UNUSED_ENDPOINT", receiver.endpoint()),
    ]);
    let client = server.client().await;
    let traceparent = format!("00-{}-{}-01", random_hex(16), random_hex(8));
    let (_, printed) = acquire_run_release(&client, &traceparent).await;
    assert_eq!(printed, "none", "no TRACEPARENT for the program when off");
    // Nor for a cell of a persistent context.
    let session = client.acquire(POOL).await.expect("acquire");
    let printed = {
        let context = session.create_context().await.expect("context");
        run_traced(
            &client,
            session.lease_id(),
            context.id(),
            PRINT_TRACEPARENT,
            &traceparent,
            None,
        )
        .await
    };
    assert_eq!(printed, "none", "no TRACEPARENT for a cell when off");
    session.release().await.expect("release");
    drop(client);
    server.stop().await;
    assert_eq!(receiver.exports(), 0);
    receiver.stop().await;
}
