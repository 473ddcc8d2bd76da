//! The programs in client-rust/examples run against a live server and print
//! what they should (they are built by `cargo build --workspace
//! --all-targets`, which scripts/test.sh runs first).

use std::{process::Command, time::Duration};

use sandpool_tests::{
    TestServer, build_wheel, python_image, python_pool, wait_for, workspace_binary,
};

const POOL: &str = "examples";

/// Runs example `name` against `server` and returns its stdout; panics
/// (with its output) unless it exits 0.
async fn example(server: &TestServer, name: &str, extra: &[(&str, String)]) -> String {
    let binary = workspace_binary(&format!("examples/{name}"));
    let mut command = Command::new(binary);
    command
        .env("SANDPOOL_ADDR", server.addr.to_string())
        .env("SANDPOOL_POOL", POOL)
        .env("SANDPOOL_IMAGE", python_image());
    for (key, value) in extra {
        command.env(key, value);
    }
    let out = tokio::task::spawn_blocking(move || command.output().expect("run the example"))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name} failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_run_against_a_live_server() {
    let server = TestServer::start().await;
    server.pool(python_pool(POOL)).await;

    let out = example(&server, "quickstart", &[]).await;
    assert_eq!(out, "45 3\nexit 0 (Exited)\n");

    let out = example(&server, "streaming", &[]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        // The client's own run id: the run is resumable.
        lines[0].starts_with("started c") && lines[0].len() == "started c".len() + 24,
        "{out}"
    );
    let ticks: Vec<f64> = lines
        .iter()
        .filter(|l| l.contains("] tick "))
        .map(|l| {
            l.trim_start_matches('[')
                .split('s')
                .next()
                .and_then(|t| t.trim().parse().ok())
                .expect("a time")
        })
        .collect();
    assert_eq!(ticks.len(), 3, "{out}");
    assert!(
        ticks[2] - ticks[0] >= 0.5,
        "ticks arrive as printed, not at the end: {out}"
    );
    assert!(lines.contains(&"stderr: done"), "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("exit 0 after ")),
        "{out}"
    );
    assert!(lines.contains(&"SHOUTING sandpool"), "{out}");
    assert_eq!(lines.last(), Some(&"ended by Timeout"), "{out}");

    let out = example(&server, "artifacts", &[]).await;
    let plots: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("plot plots/") && l.contains(" image/png "))
        .collect();
    assert_eq!(plots.len(), 2, "{out}");
    assert!(out.contains("file sum.csv text/csv 11 bytes\n"), "{out}");
    assert!(out.contains("png plots: 2\n"), "{out}");
    assert!(
        out.contains("svg plot image/svg+xml has <svg: true\n"),
        "{out}"
    );
    assert!(out.contains("downloaded: n,sum\n3,14\n"), "{out}");
    assert!(out.contains("listed: 4\n"), "{out}");

    let dir = std::env::temp_dir().join(format!("sandpool-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let wheel = build_wheel(&dir);
    let out = example(
        &server,
        "context",
        &[("SANDPOOL_WHEEL", wheel.display().to_string())],
    )
    .await;
    assert_eq!(
        out,
        "error kept the context: exit 1 (ValueError: oops)\n\
         context: 10 apollo\n\
         Successfully installed sandpooldemo-1.0\n"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let out = example(&server, "errors", &[]).await;
    assert_eq!(
        out,
        "NotFound: pool \"no-such-pool\" does not exist\n\
         LeaseLost, reason LEASE_ENDED\n\
         PoolExhausted, retry after Some(1s)\n"
    );

    // Every lease an example took is back, and its extra pool is gone.
    wait_for("no lease left", Duration::from_secs(10), || async {
        (server.stats(POOL).await.active_leases == 0).then_some(())
    })
    .await;
    let pools: Vec<String> = server
        .client
        .list_pools()
        .await
        .expect("pools")
        .into_iter()
        .filter_map(|p| p.spec.map(|s| s.name))
        .collect();
    assert_eq!(pools, [POOL]);
    server.stop().await;
}
