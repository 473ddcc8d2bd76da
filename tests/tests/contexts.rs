//! Persistent interpreter contexts: state survives between runs, errors and
//! interrupts keep the context, and contexts are private to their lease.

use std::time::{Duration, Instant};

use sandpool_client::{RunOutput, Session, proto as pb};
use sandpool_tests::{TestServer, python_pool, secs};

async fn create(session: &Session, server: &TestServer) -> String {
    server
        .client
        .sessions()
        .create_context(pb::CreateContextRequest {
            lease_id: session.lease_id().into(),
            language: String::new(),
        })
        .await
        .expect("create context")
        .into_inner()
        .context_id
}

async fn cell(session: &Session, context: &str, code: &str, timeout: Option<f64>) -> RunOutput {
    session
        .run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Text(code.into())),
                language: String::new(),
            })),
            context_id: context.into(),
            timeout: timeout.and_then(secs),
            ..Default::default()
        })
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_survive_and_errors_and_interrupts_keep_the_context() {
    let server = TestServer::start().await;
    server.pool(python_pool("ctx")).await;
    let session = server.client.acquire("ctx").await.expect("acquire");
    let ctx = create(&session, &server).await;

    let out = cell(
        &session,
        &ctx,
        "import math\nx = 41\ndef inc(v):\n    return v + 1\nprint('set')",
        None,
    )
    .await;
    assert_eq!((out.stdout_text().as_str(), out.exit_code()), ("set\n", 0));
    let out = cell(&session, &ctx, "print(inc(x), math.pi > 3)", None).await;
    assert_eq!(out.stdout_text(), "42 True\n");

    // An exception: traceback on stderr, exit 1, context kept.
    let out = cell(&session, &ctx, "y = 1\nraise ValueError('nope')", None).await;
    assert_eq!(out.exit_code(), 1);
    assert_eq!(out.end_reason(), pb::EndReason::Exited);
    assert!(
        out.stderr_text().contains("ValueError: nope"),
        "{}",
        out.stderr_text()
    );
    assert!(
        out.stderr_text().contains("<cell 3>"),
        "{}",
        out.stderr_text()
    );
    let out = cell(&session, &ctx, "print(x, y)", None).await;
    assert_eq!(out.stdout_text(), "41 1\n");

    // A timeout interrupts the cell, not the context.
    let started = Instant::now();
    let out = cell(
        &session,
        &ctx,
        "import time\nz = 7\nwhile True:\n    time.sleep(0.01)",
        Some(1.0),
    )
    .await;
    assert_eq!(out.end_reason(), pb::EndReason::Timeout);
    assert!(!out.exit.as_ref().expect("exit").context_restarted);
    assert!(started.elapsed() < Duration::from_secs(5));
    let out = cell(&session, &ctx, "print(x, z)", None).await;
    assert_eq!(
        out.stdout_text(),
        "41 7\n",
        "state kept after the interrupt: {:?} {}",
        out.exit,
        out.stderr_text()
    );

    // A cell that ignores interrupts costs the context its state, and says so.
    let out = cell(
        &session,
        &ctx,
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
        Some(1.0),
    )
    .await;
    assert_eq!(out.end_reason(), pb::EndReason::Timeout);
    assert!(
        out.exit.as_ref().expect("exit").context_restarted,
        "{:?}",
        out.exit
    );
    let out = cell(&session, &ctx, "print('x' in globals())", None).await;
    assert_eq!(
        out.stdout_text(),
        "False\n",
        "a fresh interpreter after the restart: {:?} {}",
        out.exit,
        out.stderr_text()
    );

    // Figures from a cell come back as that cell's artifacts.
    let out = cell(
        &session,
        &ctx,
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])",
        None,
    )
    .await;
    let plots: Vec<_> = out
        .artifacts
        .iter()
        .filter(|a| a.info.as_ref().is_some_and(|i| i.plot))
        .collect();
    assert_eq!(
        plots.len(),
        1,
        "the figure left open at the end of the cell"
    );

    // Contexts are private to their lease.
    let other = server.client.acquire("ctx").await.expect("another lease");
    let err = other
        .run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Text("print(x)".into())),
                language: String::new(),
            })),
            context_id: ctx.clone(),
            ..Default::default()
        })
        .await
        .err()
        .expect("another lease cannot use the context");
    assert_eq!(err.status().expect("status").code(), tonic::Code::NotFound);
    other.release().await.expect("release");

    server
        .client
        .sessions()
        .delete_context(pb::DeleteContextRequest {
            lease_id: session.lease_id().into(),
            context_id: ctx.clone(),
        })
        .await
        .expect("delete");
    let err = session
        .run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Text("print(1)".into())),
                language: String::new(),
            })),
            context_id: ctx,
            ..Default::default()
        })
        .await
        .err()
        .expect("deleted");
    assert_eq!(err.status().expect("status").code(), tonic::Code::NotFound);
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_contexts_keep_state_too() {
    let server = TestServer::start().await;
    server
        .pool(sandpool_tests::language_pool("js", "javascript"))
        .await;
    let session = server.client.acquire("js").await.expect("acquire");
    let ctx = create(&session, &server).await;

    let out = cell(
        &session,
        &ctx,
        "let x = 41;\nfunction inc(v) { return v + 1; }\nconsole.log('set');",
        None,
    )
    .await;
    assert_eq!(out.stdout_text(), "set\n", "{}", out.stderr_text());
    let out = cell(&session, &ctx, "console.log(inc(x));", None).await;
    assert_eq!(out.stdout_text(), "42\n", "{}", out.stderr_text());

    let out = cell(&session, &ctx, "null.boom;", None).await;
    assert_eq!(out.exit_code(), 1);
    assert!(
        out.stderr_text().contains("TypeError"),
        "{}",
        out.stderr_text()
    );

    let out = cell(
        &session,
        &ctx,
        "await new Promise((r) => setTimeout(r, 20));\nconsole.log('awaited', x);",
        None,
    )
    .await;
    assert_eq!(out.stdout_text(), "awaited 41\n", "{}", out.stderr_text());

    let out = cell(&session, &ctx, "while (true) {}", Some(1.0)).await;
    assert_eq!(out.end_reason(), pb::EndReason::Timeout);
    assert!(
        !out.exit.as_ref().expect("exit").context_restarted,
        "the loop was interrupted, not the context"
    );
    let out = cell(&session, &ctx, "console.log(x + 1);", None).await;
    assert_eq!(
        out.stdout_text(),
        "42\n",
        "state kept after the interrupt: {}",
        out.stderr_text()
    );
    session.release().await.expect("release");
    server.stop().await;
}
