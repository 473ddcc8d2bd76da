//! Shutdown, start-up cleanup and pool deletion leave nothing behind.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sandpool_client::{Client, RunEvent, proto as pb};
use sandpool_tests::{
    TestServer, code_of, containers_of, docker_cli, empty_config, python_image, python_pool,
    terminate, wait_for, workspace_binary,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_runs_and_removes_every_container() {
    let server = TestServer::start().await;
    let mut spec = python_pool("down");
    spec.config.as_mut().expect("config").min_pool_size = Some(2);
    spec.config.as_mut().expect("config").max_pool_size = Some(3);
    server.pool(spec).await;
    let session = server.client.acquire("down").await.expect("acquire");
    let mut events = session
        .run("import time\nprint('up', flush=True)\ntime.sleep(600)")
        .await
        .expect("run");
    assert!(matches!(
        events.next().await,
        Some(Ok(RunEvent::Started { .. }))
    ));
    assert!(containers_of(&server.server_id).await.len() >= 2);
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut last = None;
        while let Some(e) = events.next().await {
            if let Ok(RunEvent::Exit(exit)) = e {
                last = Some(exit.end_reason);
            }
        }
        last
    });
    server.stop().await; // asserts that no container is left
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let reason = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the run stream ends")
        .expect("reader");
    assert_eq!(
        reason,
        Some(pb::EndReason::LeaseExpired as i32),
        "the run was revoked"
    );
    drop(session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_removes_what_an_earlier_run_left() {
    let config = empty_config();
    let id = config.server_id.clone().expect("id");
    let image = python_image();
    let leftover = docker_cli(&[
        "run",
        "-d",
        "--label",
        &format!("sandpool.server={id}"),
        "--label",
        "sandpool.pool=old",
        &image,
        "sleep",
        "infinity",
    ]);
    assert_eq!(containers_of(&id).await, vec![leftover.clone()]);
    let server = TestServer::start_with(config).await;
    wait_for(
        "the leftover to be removed",
        Duration::from_secs(10),
        || async { containers_of(&id).await.is_empty().then_some(()) },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_pool_drains_idle_now_and_busy_on_release() {
    let server = TestServer::start().await;
    let mut spec = python_pool("drain");
    spec.config.as_mut().expect("config").min_pool_size = Some(2);
    spec.config.as_mut().expect("config").max_pool_size = Some(3);
    server.pool(spec).await;
    let session = server.client.acquire("drain").await.expect("acquire");
    let busy = server
        .client
        .delete_pool("drain", false)
        .await
        .expect("delete");
    assert_eq!(busy, 1);
    let err = server
        .client
        .acquire("drain")
        .await
        .err()
        .expect("no new leases");
    assert_eq!(code_of(&err), tonic::Code::FailedPrecondition, "{err}");
    wait_for("idle containers to go", Duration::from_secs(15), || async {
        (containers_of(&server.server_id).await.len() == 1).then_some(())
    })
    .await;
    // The lease still works until released.
    assert_eq!(
        session
            .run_collect("print(5)")
            .await
            .expect("run")
            .stdout_text(),
        "5\n"
    );
    session.release().await.expect("release");
    wait_for("the pool to disappear", Duration::from_secs(15), || async {
        let gone = server.client.list_pools().await.ok()?.is_empty();
        (gone && containers_of(&server.server_id).await.is_empty()).then_some(())
    })
    .await;
    // The name is free again.
    server.pool(python_pool("drain")).await;
    let ok = server
        .client
        .delete_pool("drain", true)
        .await
        .expect("delete and wait");
    assert_eq!(ok, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stops_cleanly_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("sandpool-test-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "shutdown_grace = 1.0\n[[pools]]\nname = \"py\"\nlanguage = \"python\"\nimage = \"{}\"\nmin_pool_size = 2\n",
            python_image()
        ),
    )
    .expect("write config");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let id = format!("bin-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let child = Command::new(workspace_binary("sandpool-server"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(&config)
        .args(["--server-id", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
    let client = wait_for("the server to answer", Duration::from_secs(20), || async {
        Client::connect(format!("http://127.0.0.1:{port}"))
            .await
            .ok()
    })
    .await;
    wait_for("the pool to warm", Duration::from_secs(30), || async {
        let stats = client.stats("py").await.ok()?;
        (stats.state_counts?.idle == 2).then_some(())
    })
    .await;
    let session = client.acquire("py").await.expect("acquire");
    assert_eq!(containers_of(&id).await.len(), 2);
    terminate(child).await;
    assert!(
        containers_of(&id).await.is_empty(),
        "containers left after SIGTERM"
    );
    drop(session);
    let _ = std::fs::remove_dir_all(dir);
}
