//! The resident runner (`sandbox::runner`), on Docker and Podman: runs go
//! through it and look as they do on the exec path (output, exit codes,
//! signals, stdin, env, cwd, uid, caps); a timeout's kill takes it down and
//! later runs take the exec path; a program that kills every process of
//! its user (`kill -9 -1`) ends its run with a typed error, never a hang;
//! the reset brings a fresh runner back. Every test checks that no
//! container is left.

use std::time::{Duration, Instant};

use sandpool_client::{RunOptions, Session, proto as pb};
use sandpool_tests::{Engine, TestServer, code_of, empty_config, shell_run};

/// Prints "runner" when an ancestor of the shell is the resident runner,
/// "exec" otherwise (an engine exec's process has no parent in the
/// container's pid namespace).
const WHICH_PATH: &str = r#"p=$$
while [ "$p" -gt 0 ]; do
  read -r c < /proc/$p/comm
  if [ "$c" = sandpool-runner ]; then echo runner; exit 0; fi
  p=$(cut -d' ' -f4 /proc/$p/stat)
done
echo exec"#;

async fn server_and_session(engine: Engine, name: &str) -> (TestServer, Session) {
    let mut config = empty_config();
    config.resident_runner = true;
    let server = TestServer::start_with(config).await;
    let mut spec = engine.python_pool(name);
    let pool_config = spec.config.as_mut().expect("config");
    pool_config.max_pool_size = Some(1);
    pool_config.min_pool_size = Some(1);
    server.pool(spec).await;
    let session = server.client.acquire(name).await.expect("acquire");
    (server, session)
}

async fn path_of(session: &Session) -> String {
    let out = session.shell(WHICH_PATH).await.expect("run");
    assert_eq!(out.exit_code(), 0, "{}", out.stderr_text());
    out.stdout_text().trim().to_string()
}

async fn behaves_as_exec(engine: Engine) {
    let (server, session) = server_and_session(engine, "runner-same").await;
    assert_eq!(path_of(&session).await, "runner");

    // Python as a fresh `python3 main.py`: name, argv, cwd, uid, env.
    let out = session
        .run_with(
            "import os, sys\nprint(__name__, sys.argv, os.getcwd(), os.getuid(), os.environ['GREETING'])\n\
             print('to stderr', file=sys.stderr)\nsys.exit(3)",
            RunOptions::new().env("GREETING", "hello"),
        )
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(
        out.stdout_text(),
        "__main__ ['main.py'] /sandbox 1000 hello\n"
    );
    assert_eq!(out.stderr_text(), "to stderr\n");
    assert_eq!(
        (out.exit_code(), out.end_reason()),
        (3, pb::EndReason::Exited)
    );

    // A signal: the code and reason an exec reports.
    let out = session.shell("kill -TERM $$").await.expect("run");
    assert_eq!(out.end_reason(), pb::EndReason::Signaled, "{:?}", out.exit);
    assert_eq!(out.exit.as_ref().map(|e| e.signal), Some(15));

    // Input larger than one frame, and a working directory of the run's.
    let input = vec![b'x'; 200_000];
    let out = session
        .run_request(pb::RunRequest {
            stdin: input.into(),
            working_dir: "/tmp".into(),
            ..shell_run("wc -c; pwd", 30.0)
        })
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.stdout_text(), "200000\n/tmp\n");

    // The output cap cuts and stops the run.
    let out = session
        .run_with(
            "import sys\nsys.stdout.write('y' * 1_000_000)\nsys.stdout.flush()",
            RunOptions::new().output_limit_bytes(1000),
        )
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.end_reason(), pb::EndReason::OutputLimit);
    assert_eq!(out.stdout.len(), 1000);
    // The cap's kill took the runner (same group): later runs by exec.
    assert_eq!(path_of(&session).await, "exec");

    session.release().await.expect("release");
    server.stop().await;
}

/// A timeout kills the run's tree (and the runner with it: same group);
/// the lease's later runs take the exec path; the reset starts a new one.
async fn timeout_then_fresh_runner(engine: Engine) {
    let (server, session) = server_and_session(engine, "runner-timeout").await;
    assert_eq!(path_of(&session).await, "runner");
    let started = Instant::now();
    let out = session
        .run_request(shell_run("sleep 60 & sleep 60; echo never", 1.0))
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.end_reason(), pb::EndReason::Timeout, "{:?}", out.exit);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!out.stdout_text().contains("never"));
    // The background sleep went with the kill (the sandbox user's; the
    // container's idle process has a sleep of its own).
    let out = session
        .shell("for p in /proc/[0-9]*; do read -r c < $p/comm; [ \"$c\" = sleep ] && grep -q '^Uid:[[:space:]]*1000[[:space:]]' $p/status && cat $p/stat; done; true")
        .await
        .expect("run");
    assert!(
        out.stdout_text().lines().all(|l| l.contains(") Z ")),
        "live processes of the run: {}",
        out.stdout_text()
    );
    assert_eq!(path_of(&session).await, "exec");
    session.release().await.expect("release");

    let session = server
        .client
        .acquire("runner-timeout")
        .await
        .expect("acquire again");
    assert_eq!(
        path_of(&session).await,
        "runner",
        "the reset started a new runner"
    );
    session.release().await.expect("release");
    server.stop().await;
}

/// `kill -9 -1` kills the runner under its own run: the run ends with a
/// typed error (ABORTED), not a hang; the lease goes on by exec.
async fn kill_everything(engine: Engine) {
    let (server, session) = server_and_session(engine, "runner-kill-all").await;
    assert_eq!(path_of(&session).await, "runner");
    let started = Instant::now();
    let result = session
        .run_request(shell_run("kill -9 -1; sleep 1; echo survived", 30.0))
        .await
        .expect("run starts")
        .collect()
        .await;
    let took = started.elapsed();
    let err = result.expect_err("the run lost its runner");
    assert_eq!(code_of(&err), tonic::Code::Aborted, "{err}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let out = session.shell("echo next").await.expect("next run");
    assert_eq!(out.stdout_text(), "next\n");
    assert_eq!(path_of(&session).await, "exec");
    session.release().await.expect("release");

    let session = server
        .client
        .acquire("runner-kill-all")
        .await
        .expect("acquire again");
    assert_eq!(path_of(&session).await, "runner");
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runs_on_the_runner_behave_as_on_exec() {
    behaves_as_exec(Engine::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_runs_on_the_runner_behave_as_on_exec() {
    if let Some(engine) = Engine::Podman.available() {
        behaves_as_exec(engine).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_a_timeout_takes_the_runner_and_the_reset_brings_it_back() {
    timeout_then_fresh_runner(Engine::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_a_timeout_takes_the_runner_and_the_reset_brings_it_back() {
    if let Some(engine) = Engine::Podman.available() {
        timeout_then_fresh_runner(engine).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_kill_everything_ends_the_run_with_a_typed_error() {
    kill_everything(Engine::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_kill_everything_ends_the_run_with_a_typed_error() {
    if let Some(engine) = Engine::Podman.available() {
        kill_everything(engine).await;
    }
}
