//! Engine outages under a running server, with the real engines restarted:
//! calls that need the engine are UNAVAILABLE (retryable) while it is down,
//! health says so per backend, and once it is back the pools refill within
//! 2 s, containers that died with it are removed, and leases whose container
//! died end with a typed reason.
//!
//! These restart the engines, which kills every container of any suite
//! running beside them: they are `#[ignore]`d and `scripts/test.sh` runs
//! them alone, last (`cargo test --test engine_restart -- --ignored
//! --test-threads=1`).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use sandpool_client::proto as pb;
use sandpool_tests::{TestServer, containers_of, labelled, python_pool, wait_for};
use tonic::Code;
use tonic_types::StatusExt;

/// The repository's scripts/engine-up.sh, which starts whatever does not
/// answer.
fn engine_up(args: &[&str]) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/engine-up.sh");
    let status = Command::new(script)
        .args(args)
        .status()
        .expect("run engine-up.sh");
    assert!(status.success(), "engine-up.sh {args:?} failed");
}

fn answers(cmd: &[&str]) -> bool {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn health_of(server: &TestServer, service: &str) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

/// Waits until an Acquire on `pool` answers UNAVAILABLE, and checks that
/// it says why (ENGINE_UNAVAILABLE) and when to retry (RetryInfo).
async fn engine_unavailable(server: &TestServer, pool: &str) {
    let status = wait_for(
        "an UNAVAILABLE acquire",
        Duration::from_secs(20),
        || async {
            match server.client.acquire(pool).await {
                Err(e) if e.status().is_some_and(|s| s.code() == Code::Unavailable) => {
                    e.status().cloned()
                }
                Ok(s) => {
                    drop(s);
                    None
                }
                Err(_) => None,
            }
        },
    )
    .await;
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().expect("reason").reason,
        "ENGINE_UNAVAILABLE",
        "{status:?}"
    );
    assert!(details.retry_info().is_some(), "retryable, with RetryInfo");
}

/// How soon after the restarted engine answers the pool must be full again.
const REFILL_BOUND: Duration = Duration::from_secs(4);

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
const NOT_SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts dockerd: run alone (scripts/test.sh does, last)"]
async fn a_docker_restart_is_survived() {
    engine_up(&[]);
    let server = TestServer::start().await;
    let mut spec = python_pool("survivor");
    let config = spec.config.as_mut().expect("config");
    config.min_pool_size = Some(2);
    config.max_pool_size = Some(3);
    server.pool(spec).await;
    let held = server.client.acquire("survivor").await.expect("acquire");
    let lease_id = held.lease_id().to_string();
    let before = containers_of(&server.server_id).await;
    assert_eq!(before.len(), 2);
    assert_eq!(health_of(&server, "sandpool.backend.docker").await, SERVING);

    // A run in flight when the engine goes.
    let running = {
        let held_id = lease_id.clone();
        let sessions = server.client.sessions();
        tokio::spawn(async move {
            let mut stream = sessions
                .clone()
                .run(pb::RunRequest {
                    lease_id: held_id,
                    program: Some(pb::run_request::Program::Command(pb::Command {
                        shell: "sleep 60".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut exit = None;
            while let Some(message) = stream.message().await? {
                if let Some(pb::run_response::Event::Exit(e)) = message.event {
                    exit = Some(e);
                }
            }
            Ok::<_, tonic::Status>(exit)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Down.
    assert!(
        Command::new("pkill")
            .args(["-TERM", "-x", "dockerd"])
            .status()
            .expect("pkill")
            .success()
    );
    let went = Instant::now();
    wait_for(
        "dockerd to stop answering",
        Duration::from_secs(60),
        || async { (!answers(&["docker", "info"])).then_some(()) },
    )
    .await;
    engine_unavailable(&server, "survivor").await;
    wait_for(
        "health NOT_SERVING for docker",
        Duration::from_secs(5),
        || async {
            (health_of(&server, "sandpool.backend.docker").await == NOT_SERVING).then_some(())
        },
    )
    .await;
    println!("engine down noticed {:?} after SIGTERM", went.elapsed());

    // Back. The target is a refill within 2 s of the engine
    // answering: measured 1.6 s for two warm containers since a pool refills
    // with all of them at once after an outage (1.5 to 3.3 s when it probed
    // with one at a time), a raw `docker run` of the image taking 0.5 to 1 s
    // beside it. A restarted dockerd is slow for its first seconds on these
    // 2-core machines, so the test asserts 4 s and prints the time beside
    // the raw engine's.
    engine_up(&[]);
    let back = Instant::now();
    wait_for(
        "the pool refilled with live containers",
        Duration::from_secs(20),
        || async {
            let stats = server.client.stats("survivor").await.ok()?;
            let now = containers_of(&server.server_id).await;
            let fresh = now.iter().filter(|c| !before.contains(c)).count();
            (stats.state_counts?.idle >= 2 && fresh >= 2).then_some(())
        },
    )
    .await;
    let refilled = back.elapsed();
    let image = sandpool_tests::python_image();
    let started = Instant::now();
    assert!(answers(&[
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python3",
        &image,
        "-c",
        "pass",
    ]));
    let floor = started.elapsed();
    println!(
        "pool refilled {refilled:?} after the engine answered again (a raw docker run after it: \
         {floor:?})"
    );
    assert!(
        refilled <= REFILL_BOUND,
        "the pool refilled only {refilled:?} after the engine answered again"
    );
    assert_eq!(health_of(&server, "sandpool.backend.docker").await, SERVING);

    // What died with the engine is gone from it, not just forgotten.
    wait_for(
        "dead containers removed",
        Duration::from_secs(10),
        || async {
            let all = labelled(&server.server_id).await;
            all.iter().all(|c| c.running || c.starting).then_some(())
        },
    )
    .await;
    // The lease on a container that died ended with a typed reason, and its
    // run ended rather than hung.
    let ended = server
        .client
        .sessions()
        .release(pb::ReleaseRequest {
            lease_id: lease_id.clone(),
        })
        .await
        .expect("release answers")
        .into_inner()
        .previous_state;
    assert_eq!(ended, pb::LeaseState::ContainerLost as i32);
    // Its end is typed: an error status, or an exit that says the program
    // was killed (never a normal exit, nor an unknown exit code).
    let run_end = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the run in flight ended")
        .expect("join");
    match &run_end {
        Err(status) => println!(
            "the run in flight ended with {:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(Some(exit)) => {
            println!(
                "the run in flight ended {:?}: {}",
                exit.end_reason(),
                exit.message
            );
            assert_ne!(exit.end_reason(), pb::EndReason::Exited, "{exit:?}");
        }
        Ok(None) => panic!("the run in flight ended without an exit event"),
    }

    // And the server serves as before.
    let session = server
        .client
        .acquire("survivor")
        .await
        .expect("acquire after");
    assert_eq!(
        session
            .run_collect("print('back')")
            .await
            .expect("run")
            .stdout_text(),
        "back\n"
    );
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the podman service: run alone (scripts/test.sh does, last)"]
async fn a_podman_service_restart_is_survived() {
    if !answers(&["podman", "--version"]) {
        assert!(
            std::env::var("SANDPOOL_REQUIRE_PODMAN").is_err(),
            "podman is required"
        );
        return;
    }
    engine_up(&["--podman"]);
    let server = TestServer::start().await;
    let mut spec = python_pool("pod");
    spec.backend = pb::Backend::Podman as i32;
    spec.config.as_mut().expect("config").max_pool_size = Some(2);
    server.pool(spec).await;
    let held = server.client.acquire("pod").await.expect("acquire");

    assert!(
        Command::new("pkill")
            .args(["-TERM", "-f", "podman system service"])
            .status()
            .expect("pkill")
            .success()
    );
    engine_unavailable(&server, "pod").await;
    engine_up(&["--podman"]);
    let back = Instant::now();
    // Podman's containers outlive its API service: the lease goes on.
    wait_for(
        "the lease to work again",
        Duration::from_secs(5),
        || async {
            held.run_collect("print('still here')")
                .await
                .ok()
                .filter(|o| o.stdout_text() == "still here\n")
                .map(|_| ())
        },
    )
    .await;
    let other = wait_for("a second lease", Duration::from_secs(5), || async {
        server.client.acquire("pod").await.ok()
    })
    .await;
    println!(
        "podman pool serving {:?} after the service answered again",
        back.elapsed()
    );
    other.release().await.expect("release");
    held.release().await.expect("release");
    server.stop().await;
}
