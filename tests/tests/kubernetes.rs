//! A short end-to-end pass on a Kubernetes pool through the Rust client
//! (the test API server in-process; its pods are real Docker containers):
//! acquire, run, files, artifacts, a context, isolation, leftovers. The full
//! end-to-end suites stay on Docker. Also measures warm Acquire + Run(print)
//! + Release against the same on Docker.

mod k8s_common;

use std::time::{Duration, Instant};

use sandpool_client::proto as pb;
use sandpool_server::backend::{Backend, LABEL_MARKER, LABEL_SERVER};
use sandpool_tests::{TestServer, python_pool};

fn kubernetes_pool(name: &str, size: u32) -> pb::PoolSpec {
    let mut spec = python_pool(name);
    spec.backend = pb::Backend::Kubernetes as i32;
    let config = spec.config.as_mut().expect("config");
    config.min_pool_size = Some(size);
    config.max_pool_size = Some(size);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_pool_end_to_end() {
    let k8s = k8s_common::K8s::start("e2e").await;
    let backend = k8s.backend();
    let server = TestServer::start_with(k8s.config()).await;
    server.pool(kubernetes_pool("kube", 2)).await;
    let id = server.server_id.clone();
    let pods = backend
        .list_containers(LABEL_SERVER, Some(&id))
        .await
        .expect("list pods");
    assert_eq!(pods.len(), 2, "two warm pods: {pods:?}");

    let session = server.client.acquire("kube").await.expect("acquire");
    // Runs as the sandbox user with a group of its own, on no network.
    let out = session
        .run_collect(
            "import os, socket\nprint(os.getuid(), os.getgid() >= 20000)\n\
             try:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    print('online')\n\
             except OSError:\n    print('offline')\n\
             print(sorted(os.listdir('/sys/class/net')))",
        )
        .await
        .expect("run");
    assert_eq!(out.exit_code(), 0, "{}", out.stderr_text());
    let lines: Vec<String> = out.stdout_text().lines().map(String::from).collect();
    assert_eq!(lines[0], "1000 True");
    assert_eq!(lines[1], "offline");
    assert_eq!(lines[2], "['lo']");

    // Files in and out.
    session
        .upload("/sandbox/data/in.txt", "hello from the client")
        .await
        .expect("upload");
    let (_, content) = session
        .download("/sandbox/data/in.txt")
        .await
        .expect("download");
    assert_eq!(&content[..], b"hello from the client");

    // Artifacts: a file under the output directory, and a plot.
    let out = session
        .run_collect(
            "open('/sandbox/outputs/result.csv', 'w').write('a,b\\n1,2\\n')\n\
             import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
        )
        .await
        .expect("run");
    assert_eq!(out.exit_code(), 0, "{}", out.stderr_text());
    assert!(
        out.files.iter().any(|f| f.name().ends_with("result.csv")),
        "{:?}",
        out.files
            .iter()
            .map(|f| f.name().to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(out.plots().len(), 1, "one figure captured");

    // A context keeps state between runs.
    let context = session.create_context().await.expect("context");
    context.run_collect("x = 41").await.expect("cell");
    let out = context.run_collect("print(x + 1)").await.expect("cell");
    assert_eq!(out.stdout_text().trim(), "42");
    context.delete().await.expect("delete context");

    // Isolation between leases: what one lease leaves, the next never sees.
    session
        .shell("echo secret > /sandbox/left; echo secret > /tmp/left; (sleep 600 &)")
        .await
        .expect("plant");
    let container = session.container_id().to_string();
    session.release().await.expect("release");
    let mut seen_again = false;
    for _ in 0..4 {
        let s = server.client.acquire("kube").await.expect("acquire");
        if s.container_id() == container {
            seen_again = true;
            let out = s
                .shell("ls -A /sandbox /tmp; ps -eo args | grep -c '^sleep 600' || true")
                .await
                .expect("look");
            assert!(!out.stdout_text().contains("left"), "{}", out.stdout_text());
            assert!(
                out.stdout_text().trim_end().ends_with('0'),
                "{}",
                out.stdout_text()
            );
        }
        s.release().await.expect("release");
        if seen_again {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    server.stop().await;
    let left: Vec<_> = backend
        .list_containers(LABEL_SERVER, Some(&id))
        .await
        .expect("list")
        .into_iter()
        .filter(|c| !c.labels.contains_key(LABEL_MARKER))
        .collect();
    assert!(left.is_empty(), "pods left behind: {left:?}");
}

/// Warm Acquire + Run(print) + Release, median of `n`.
async fn cycle_median(server: &TestServer, pool: &str, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let session = server.client.acquire(pool).await.expect("acquire");
        let out = session.run_collect("print('test')").await.expect("run");
        assert_eq!(out.stdout_text(), "test\n");
        session.release().await.expect("release");
        times.push(t0.elapsed());
        // Let the reset finish: the warm path, not the reset, is measured.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    times.sort();
    times[n / 2]
}

/// Prints the numbers for the note; asserts only that Kubernetes is
/// in the same range as Docker (its exec goes through the API server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_cycle_on_kubernetes_and_docker() {
    let k8s = k8s_common::K8s::start("bench").await;
    let server = TestServer::start_with(k8s.config()).await;
    server.pool(kubernetes_pool("k", 2)).await;
    let mut docker = python_pool("d");
    let config = docker.config.as_mut().expect("config");
    config.min_pool_size = Some(2);
    config.max_pool_size = Some(2);
    server.pool(docker).await;
    cycle_median(&server, "k", 3).await;
    cycle_median(&server, "d", 3).await;
    let (mut k, mut d) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        k.push(cycle_median(&server, "k", 7).await);
        d.push(cycle_median(&server, "d", 7).await);
    }
    k.sort();
    d.sort();
    let (k, d) = (k[1], d[1]);
    eprintln!(
        "warm Acquire+Run(print)+Release, median: kubernetes (test API server) {k:?}, docker {d:?}, ratio {:.2}",
        k.as_secs_f64() / d.as_secs_f64()
    );
    assert!(
        k < d * 4 + Duration::from_millis(200),
        "kubernetes {k:?} vs docker {d:?}"
    );
    server.stop().await;
}
