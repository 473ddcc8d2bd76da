//! The `sandpool` command line against a live server.

use std::process::Command;

use sandpool_tests::{TestServer, python_pool, workspace_binary};

fn cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("sandpool"))
        .env("SANDPOOL_ADDR", server.addr.to_string())
        .args(args)
        .output()
        .expect("run the cli")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pools_and_stats() {
    let server = TestServer::start().await;
    server.pool(python_pool("python")).await;
    let out = tokio::task::spawn_blocking({
        let addr = server.addr;
        move || {
            Command::new(workspace_binary("sandpool"))
                .env("SANDPOOL_ADDR", addr.to_string())
                .args([
                    "run",
                    "--pool",
                    "python",
                    "import sys; print('out'); print('err', file=sys.stderr); sys.exit(7)",
                ])
                .output()
                .expect("cli")
        }
    })
    .await
    .expect("join");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(7));

    let out = cli(&server, &["run", "--timeout", "1", "while True: pass"]);
    assert_eq!(out.status.code(), Some(124), "timeout exit code");
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout"));

    let out = cli(&server, &["pools"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("python") && text.contains("READY"), "{text}");
    let out = cli(&server, &["stats", "python"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("acquisitions 2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = cli(
        &server,
        &[
            "create-pool",
            "extra",
            "--language",
            "python",
            "--min",
            "0",
            "--max",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&server, &["delete-pool", "extra", "--wait"]);
    assert!(out.status.success());
    // --backend and --namespace reach the server: a Docker pool has no
    // namespace, and the server says which field is wrong.
    let out = cli(
        &server,
        &[
            "create-pool",
            "ns",
            "--backend",
            "docker",
            "--namespace",
            "team-a",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid namespace"), "{stderr}");
    let out = cli(&server, &["create-pool", "ns", "--backend", "lxc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backend"));
    let out = cli(&server, &["run", "--pool", "nope", "print(1)"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    server.stop().await;
}
