//! Kills that end a run's whole tree in time: a fork bomb against its
//! timeout, a daemon that cleared its environment against Cancel, and one
//! run's kill leaving the lease's other runs and contexts alone.

use std::time::{Duration, Instant};

use sandpool_client::{RunEvent, Session, proto as pb};
use sandpool_tests::{
    TestServer, docker_cli, fork_bomb_run, python_pool, runsc_available, shell_run,
};

/// How long after its deadline a killed run may take to end.
const KILL_SLACK: Duration = Duration::from_secs(1);

async fn session(
    server: &TestServer,
    name: &str,
    tweak: impl FnOnce(&mut pb::PoolSpec),
) -> Session {
    let mut spec = python_pool(name);
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    tweak(&mut spec);
    server.pool(spec).await;
    server.client.acquire(name).await.expect("acquire")
}

/// Runs a fork bomb with a 3 s timeout and checks that it ends within a
/// second of it, and that the next run starts promptly. Returns both times.
async fn fork_bomb(session: &Session) -> (Duration, Duration) {
    let timeout = Duration::from_secs(3);
    let started = Instant::now();
    let out = session
        .run_request(fork_bomb_run(3.0))
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    let ended = started.elapsed();
    // Until a run works again (a run may fail while the bomb's processes
    // still hold the pids limit).
    let started = Instant::now();
    let mut failures = 0;
    let next_took = loop {
        let next = session.shell("echo next").await.expect("next run");
        if next.stdout_text() == "next\n" {
            break started.elapsed();
        }
        failures += 1;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no run works a minute after the fork bomb: {}",
            next.stderr_text()
        );
    };
    // The run's own clock (the server's, from the start of its process to
    // its exit event) against the deadline; the client's adds the exec's
    // start and the calls, which a loaded machine stretches.
    let run_took = out.duration();
    println!(
        "fork bomb: the run ended {run_took:?} after it started by its own clock, {ended:?} \
         by the client's (timeout {timeout:?}, {:?}); a run worked again {next_took:?} later \
         ({failures} failed before)",
        out.end_reason()
    );
    assert_eq!(out.end_reason(), pb::EndReason::Timeout, "{:?}", out.exit);
    assert!(
        run_took <= timeout + KILL_SLACK,
        "the fork bomb ended {run_took:?} after it started; its timeout was {timeout:?}"
    );
    assert!(ended <= timeout + KILL_SLACK * 2, "{ended:?}");
    assert!(
        next_took < Duration::from_secs(1) && failures == 0,
        "the next run worked only after {next_took:?} ({failures} failed)"
    );
    (ended, next_took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_ends_within_a_second_of_its_timeout() {
    let server = TestServer::start().await;
    let session = session(&server, "bomb", |_| {}).await;
    fork_bomb(&session).await;
    // Nothing of it is left running. (On the resident runner's path a
    // pre-started python3 waits for the next run: its parent is the runner,
    // while the bomb's processes have a bomb process or init as theirs.)
    let out = session
        .shell(
            "n=0; for p in /proc/[0-9]*; do read -r c < $p/comm 2>/dev/null || continue; \
             [ \"$c\" = python3 ] || continue; pp=$(cut -d' ' -f4 $p/stat); \
             pc=; read -r pc < /proc/$pp/comm 2>/dev/null; \
             [ \"$pc\" = sandpool-runner ] || n=$((n+1)); done; echo $n",
        )
        .await
        .expect("ps");
    assert_eq!(out.stdout_text().trim(), "0", "{}", out.stderr_text());
    session.release().await.expect("release");
    server.stop().await;
}

/// Starts a run that leaves a daemon which cleared its environment and sits
/// in its own session, waits until it says so, then stops it with `stop`
/// and checks that the daemon is gone too.
async fn daemon_after_env_i_is_killed(session: &Session, cancel: bool) {
    let line = "env -i /usr/bin/setsid /bin/sh -c 'exec sleep 1003' </dev/null >/dev/null 2>&1 & \
                echo started; exec sleep 1004";
    let mut events = session
        .run_request(shell_run(line, if cancel { 60.0 } else { 2.0 }))
        .await
        .expect("run");
    let run_id = match events.next().await.expect("event").expect("ok") {
        RunEvent::Started { run_id } => run_id,
        other => panic!("first event must be Started, got {other:?}"),
    };
    let mut stopped_at = None;
    let mut reason = None;
    while let Some(event) = events.next().await {
        match event.expect("event") {
            RunEvent::Stdout(d) if cancel && d.starts_with(b"started") => {
                // Give the daemon a moment to detach.
                tokio::time::sleep(Duration::from_millis(200)).await;
                stopped_at = Some(Instant::now());
                assert!(session.cancel(&run_id).await.expect("cancel"));
            }
            RunEvent::Exit(e) => reason = Some(e.end_reason),
            _ => {}
        }
    }
    let expected = if cancel {
        pb::EndReason::Cancelled
    } else {
        pb::EndReason::Timeout
    };
    assert_eq!(reason, Some(expected as i32));
    if let Some(at) = stopped_at {
        let took = at.elapsed();
        println!("cancel: the run ended {took:?} after Cancel");
        assert!(took <= KILL_SLACK, "the run ended {took:?} after Cancel");
    }
    let out = session
        .shell("ps -eo args= | grep -c '^sleep 100[34]$' || true")
        .await
        .expect("ps");
    assert_eq!(
        out.stdout_text().trim(),
        "0",
        "the daemon survived: {}",
        out.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_daemon_that_cleared_its_environment() {
    let server = TestServer::start().await;
    let session = session(&server, "envi", |_| {}).await;
    daemon_after_env_i_is_killed(&session, true).await;
    daemon_after_env_i_is_killed(&session, false).await;
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runs_kill_spares_the_leases_other_runs_and_contexts() {
    let server = TestServer::start().await;
    let session = session(&server, "spare", |_| {}).await;
    let context = session.create_context().await.expect("context");
    let out = context.run_collect("x = 41").await.expect("cell");
    assert_eq!(out.exit_code(), 0, "{}", out.stderr_text());
    // A long run, and a daemon an earlier run left on purpose.
    let out = session
        .shell("setsid sh -c 'exec sleep 1005' </dev/null >/dev/null 2>&1 & echo ok")
        .await
        .expect("daemon");
    assert_eq!(out.stdout_text(), "ok\n");
    let long = session
        .run_request(shell_run("sleep 3; echo survived", 30.0))
        .await
        .expect("long run");
    let long = tokio::spawn(long.collect());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = session
        .run_request(shell_run("sleep 1000 & sleep 1000", 1.0))
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.end_reason(), pb::EndReason::Timeout);
    let long = long.await.expect("join").expect("long run");
    assert_eq!(
        (long.stdout_text(), long.end_reason()),
        ("survived\n".to_string(), pb::EndReason::Exited),
        "{}",
        long.stderr_text()
    );
    let out = context.run_collect("print(x + 1)").await.expect("cell");
    assert_eq!(out.stdout_text(), "42\n", "{}", out.stderr_text());
    assert!(!out.context_restarted());
    let out = session
        .shell("ps -eo args= | grep -c '^sleep 100[05]$' || true")
        .await
        .expect("ps");
    assert_eq!(
        out.stdout_text().trim(),
        "1",
        "the earlier run's daemon lives, the killed run's sleeps do not"
    );
    // Each run has a group of its own; files stay the sandbox user's.
    let a = session
        .shell("id -g; touch /sandbox/f; stat -c %u /sandbox/f")
        .await
        .expect("id");
    let b = session.shell("id -g").await.expect("id");
    let a_text = a.stdout_text();
    let mut lines = a_text.lines();
    let gid_a = lines.next().expect("gid");
    assert_ne!(gid_a, b.stdout_text().trim(), "runs share a group");
    assert_eq!(
        lines.next(),
        Some("1000"),
        "files belong to the sandbox user"
    );
    context.delete().await.expect("delete");
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_cap_kills_the_tree() {
    let server = TestServer::start().await;
    let session = session(&server, "capkill", |spec| {
        spec.output_limit_bytes = Some(64 * 1024);
    })
    .await;
    let started = Instant::now();
    let out = session
        .run_request(shell_run(
            "env -i /bin/sh -c 'exec sleep 1006' </dev/null >/dev/null 2>&1 & yes",
            60.0,
        ))
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.end_reason(), pb::EndReason::OutputLimit);
    assert!(started.elapsed() < Duration::from_secs(5));
    let out = session
        .shell("ps -eo args= | grep -c '^sleep 1006$' || true")
        .await
        .expect("ps");
    assert_eq!(out.stdout_text().trim(), "0");
    session.release().await.expect("release");
    server.stop().await;
}

/// The same on gVisor: a fork bomb either ends like on runc, is SIGKILLed
/// by gVisor before its timeout, or takes the sandbox down with it (its
/// processes' memory: at the pool's memory limit the host's OOM killer
/// takes gVisor's kernel); then the run (or the lease's next call) ends
/// with the container gone, never hangs, and the pool replaces the
/// container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_on_gvisor() {
    if !runsc_available() {
        return;
    }
    let server = TestServer::start().await;
    let session = session(&server, "gvkill", |spec| {
        let rt = spec.runtime.get_or_insert_with(Default::default);
        rt.oci_runtime = Some("runsc".into());
    })
    .await;
    daemon_after_env_i_is_killed(&session, true).await;
    let timeout = Duration::from_secs(3);
    let started = Instant::now();
    let result = session
        .run_request(fork_bomb_run(3.0))
        .await
        .expect("run")
        .collect()
        .await;
    let ended = started.elapsed();
    println!(
        "gvisor fork bomb: {:?} after {ended:?}",
        result
            .as_ref()
            .map(|o| o.end_reason())
            .map_err(|e| e.reason())
    );
    // gVisor's ptrace platform runs a host process per guest address space
    // and host threads for its kernel, all under the pids limit: a fork bomb
    // may wedge or crash the sandbox. Then the kill fails, the server gives
    // up on the container after its kill deadlines (4 s for the warden's
    // answer, 2 s for a one-shot exec) and the run ends with the container
    // gone.
    assert!(
        ended <= timeout + Duration::from_millis(6500),
        "ended after {ended:?}"
    );
    match result {
        Ok(out) if out.end_reason() == pb::EndReason::Timeout => {
            let started = Instant::now();
            let next = session.shell("echo next").await.expect("next run");
            assert_eq!(next.stdout_text(), "next\n");
            println!("gvisor: the next run took {:?}", started.elapsed());
            session.release().await.expect("release");
        }
        Err(e) => {
            // A typed end: the container is gone (never a plain exit).
            assert_eq!(
                e.reason().as_deref(),
                Some("CONTAINER_GONE"),
                "the fork bomb's run ended with {e:?}"
            );
            println!("gvisor: the fork bomb took the sandbox down; the run ended CONTAINER_GONE");
            drop(session);
            a_replacement_runs(&server, "gvkill").await;
        }
        Ok(out) if out.end_reason() == pb::EndReason::Signaled => {
            // gVisor's own memory accounting may SIGKILL the bomb's parent
            // before the timeout (seen with the resident runner): contained
            // too, as long as no forked child outlives the run and the
            // sandbox still runs the next program.
            // Or the sandbox goes down a moment later all the same (the
            // bomb's memory: the host's OOM killer takes gVisor's kernel,
            // the biggest process of the container's cgroup), which the
            // lease reports as its container lost.
            assert_eq!(out.exit.as_ref().map(|e| e.signal), Some(9), "{out:?}");
            let mut left = String::new();
            let mut lost = false;
            for _ in 0..20 {
                let ps = match session
                    .shell("ps -eo comm= | grep -c '^python3' || true")
                    .await
                {
                    Ok(ps) => ps,
                    Err(sandpool_client::Error::LeaseLost { state, .. }) => {
                        assert_eq!(state, Some(pb::LeaseState::ContainerLost));
                        lost = true;
                        break;
                    }
                    Err(e) => panic!("ps after the bomb: {e:?}"),
                };
                left = ps.stdout_text().trim().to_string();
                if left == "0" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if lost {
                println!(
                    "gvisor: the fork bomb was killed by signal 9, then the sandbox went down"
                );
                drop(session);
                a_replacement_runs(&server, "gvkill").await;
            } else {
                assert_eq!(left, "0", "the fork bomb's children outlived its run");
                let next = session.shell("echo next").await.expect("next run");
                assert_eq!(next.stdout_text(), "next\n");
                println!("gvisor: the fork bomb was killed by signal 9; nothing of it was left");
                session.release().await.expect("release");
            }
        }
        Ok(out) => panic!("the fork bomb's run ended {:?}", out.exit),
    }
    server.stop().await;
}

/// After a sandbox went down: the pool's next lease is on a replacement
/// that runs.
async fn a_replacement_runs(server: &TestServer, pool: &str) {
    let again = server.client.acquire(pool).await.expect("a replacement");
    let out = again.shell("echo fresh").await.expect("run");
    assert_eq!(out.stdout_text(), "fresh\n");
    again.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_released_during_a_fork_bomb_is_reset_quickly() {
    let server = TestServer::start().await;
    let session = session(&server, "bombrel", |_| {}).await;
    let container = session.container_id().to_string();
    let run = session.run_request(fork_bomb_run(60.0)).await.expect("run");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let released = Instant::now();
    session.release().await.expect("release");
    drop(run);
    let again = server
        .client
        .acquire("bombrel")
        .await
        .expect("acquire again");
    let took = released.elapsed();
    println!("release during a fork bomb: the container was leased again {took:?} later");
    assert_eq!(again.container_id(), container, "reset, not replaced");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let out = again
        .shell("ps -eo comm= | grep -c '^python3$' || true")
        .await
        .expect("ps");
    assert_eq!(out.stdout_text().trim(), "0");
    again.release().await.expect("release");
    server.stop().await;
}

/// The warden's pid in a container, found from outside.
fn warden_pid(container: &str) -> String {
    docker_cli(&[
        "exec",
        "-u",
        "0",
        container,
        "pgrep",
        "-u",
        "0",
        "-f",
        "sandpool-[w]arden",
    ])
}

/// With its warden gone, a kill falls back to a one-shot privileged exec of
/// the same script; under a fork bomb even that cannot start (no pid left),
/// and the server destroys the container rather than lease it on. The next
/// reset starts a new warden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_warden_a_kill_falls_back() {
    let server = TestServer::start().await;
    let session = session(&server, "nowarden", |_| {}).await;
    let container = session.container_id().to_string();
    let first = warden_pid(&container);
    docker_cli(&["exec", "-u", "0", &container, "kill", "-9", &first]);
    let started = Instant::now();
    let out = session
        .run_request(shell_run(
            "env -i /bin/sh -c 'sleep 1000' & sleep 1000",
            1.0,
        ))
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    let ended = started.elapsed();
    println!("no warden: a 1 s timeout ended the run after {ended:?}");
    assert_eq!(out.end_reason(), pb::EndReason::Timeout);
    assert!(ended < Duration::from_secs(2), "{ended:?}");
    let out = session
        .shell("ps -eo args= | grep -c '^sleep 1000$' || true")
        .await
        .expect("ps");
    assert_eq!(out.stdout_text().trim(), "0");

    // Still no warden (the next reset starts one): a fork bomb now holds
    // every pid, and no one-shot exec can start.
    let started = Instant::now();
    let result = session
        .run_request(fork_bomb_run(3.0))
        .await
        .expect("run")
        .collect()
        .await;
    let ended = started.elapsed();
    println!(
        "no warden, fork bomb: {:?} after {ended:?}",
        result.as_ref().map(|o| o.end_reason())
    );
    // The timeout, the one-shot exec's 2 s, the container's removal.
    assert!(ended < Duration::from_secs(6), "{ended:?}");
    drop(session);
    let again = server.client.acquire("nowarden").await.expect("acquire");
    let out = again.shell("echo fresh").await.expect("run");
    assert_eq!(out.stdout_text(), "fresh\n");
    again.release().await.expect("release");
    server.stop().await;
}

/// A program that kills every process its user may signal (`kill -9 -1`):
/// its run ends (as SIGKILLed, or by itself once alone) within its timeout,
/// never a hang, on whichever path it took (the exec-path lane runs this
/// file with SANDPOOL_RESIDENT_RUNNER=0); the container survives, the
/// lease's next run works, and the next lease gets the container reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_everything_ends_the_run_and_the_lease_goes_on() {
    let server = TestServer::start().await;
    let s = session(&server, "kill-all", |_| {}).await;
    let container = s.container_id().to_string();
    let started = Instant::now();
    let out = s
        .run_request(shell_run("sleep 100 & kill -9 -1; wait; echo alone", 20.0))
        .await
        .expect("run starts")
        .collect()
        .await
        .expect("the run ends with an exit");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let exit = (out.end_reason(), out.exit_code());
    assert!(
        exit == (pb::EndReason::Signaled, 137)
            || (exit == (pb::EndReason::Exited, 0) && out.stdout_text() == "alone\n"),
        "{:?} {:?}",
        out.exit,
        out.stdout_text()
    );
    let next = s.shell("echo next").await.expect("next run");
    assert_eq!(next.stdout_text(), "next\n");
    s.release().await.expect("release");
    let again = server
        .client
        .acquire("kill-all")
        .await
        .expect("acquire again");
    assert_eq!(again.container_id(), container, "the same container, reset");
    let out = again.shell("echo fresh").await.expect("run");
    assert_eq!(out.stdout_text(), "fresh\n");
    again.release().await.expect("release");
    server.stop().await;
}
