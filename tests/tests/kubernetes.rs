//! A short end-to-end pass on a Kubernetes pool through the Rust client
//! (the test API server in-process; its pods are real Docker containers):
//! acquire, run, files, artifacts, a context, isolation, leftovers. The full
//! end-to-end suites stay on Docker. Also measures warm Acquire + Run(print)
//! + Release against the same on Docker.
//!
//! And pools in a namespace of their own: one the operator listed works end
//! to end, one it did not is refused.

mod k8s_common;

use std::time::{Duration, Instant};

use sandpool_client::proto as pb;
use sandpool_server::backend::{Backend, LABEL_MARKER, LABEL_SERVER};
use sandpool_tests::{TestServer, python_pool, wait_for};
use tonic::Code;
use tonic_types::StatusExt;

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
    if k8s.api.is_some() {
        // The test API server's pods on no network have only loopback; on
        // a cluster the pod has its interface and the policy filters.
        assert_eq!(lines[2], "['lo']");
    }

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

    // Interactive runs: a terminal over the exec websocket (its size, a
    // resize, Ctrl-C) and a signal through the warden.
    sandpool_tests::interactive::terminal_session(&session).await;

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
    // Create to ready (warm-up included), one container each.
    let t0 = Instant::now();
    server.pool(kubernetes_pool("k1", 1)).await;
    let k_ready = t0.elapsed();
    let mut one = python_pool("d1");
    one.config.as_mut().expect("config").min_pool_size = Some(1);
    let t0 = Instant::now();
    server.pool(one).await;
    let d_ready = t0.elapsed();
    eprintln!(
        "a pool of one, created to ready: kubernetes (test API server) {k_ready:?}, docker {d_ready:?}"
    );
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

/// The namespace the operator allows besides the server's own.
fn team() -> String {
    k8s_common::namespace("team-a")
}

/// A pool in a second namespace the operator listed: its pods and its
/// deny-all NetworkPolicy are there (the pods have no network, which the
/// test API server gives only to pods a policy of their own namespace
/// isolates), code runs in them, a pod deleted there behind the pool's back
/// is replaced (the pod watch covers that namespace), and the server leaves
/// nothing behind in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_in_a_second_allowed_namespace() {
    let k8s = k8s_common::K8s::start("ns-home").await;
    let team = team();
    k8s.ensure_namespace(&team).await;
    let mut config = k8s.config();
    config.kubernetes.namespaces = vec![team.clone()];
    let server = TestServer::start_with(config).await;
    let id = server.server_id.clone();
    let mut spec = kubernetes_pool("team", 2);
    spec.namespace = Some(team.clone());
    let pool = server.pool(spec).await;
    assert_eq!(
        pool.spec.as_ref().and_then(|s| s.namespace.as_deref()),
        Some(team.as_str()),
        "the effective spec names the namespace"
    );
    let pods = k8s.pods_of(&id).await;
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(
        pods.iter().all(|p| p.starts_with(&format!("{team}/"))),
        "every pod in {team}: {pods:?}"
    );

    let session = server.client.acquire("team").await.expect("acquire");
    let container = session.container_id().to_string();
    let out = session
        .run_collect(
            "import os, socket\nprint(socket.gethostname(), os.getuid())\n\
             print(sorted(os.listdir('/sys/class/net')))",
        )
        .await
        .expect("run");
    assert_eq!(out.exit_code(), 0, "{}", out.stderr_text());
    let stdout = out.stdout_text();
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or_default().to_string();
    let (pod, uid) = first.split_once(' ').unwrap_or_default();
    assert_eq!(uid, "1000");
    assert_eq!(
        container,
        format!("{team}/{pod}"),
        "the id names the namespace"
    );
    assert!(pods.contains(&container), "{container} in {pods:?}");
    if k8s.api.is_some() {
        // The test API server gives no network to the pods a policy of
        // their own namespace isolates (a cluster's CNI filters instead).
        assert_eq!(
            lines.next(),
            Some("['lo']"),
            "no network: the policy is in {team}"
        );
    }

    // An idle pod deleted behind the pool's back (through the API server):
    // the watch of that namespace reports it and the pool refills there.
    let idle = pods
        .iter()
        .find(|p| **p != container)
        .expect("an idle pod")
        .clone();
    k8s.backend()
        .remove_container(&idle)
        .await
        .expect("delete the idle pod");
    let refilled = wait_for(
        "the deleted pod replaced in its namespace",
        Duration::from_secs(30),
        || async {
            let now = k8s.pods_of(&id).await;
            (now.len() == 2 && !now.contains(&idle)).then_some(now)
        },
    )
    .await;
    assert!(
        refilled.iter().all(|p| p.starts_with(&format!("{team}/"))),
        "{refilled:?}"
    );
    session.release().await.expect("release");

    server.stop().await;
    let left = k8s.pods_of(&id).await;
    assert!(left.is_empty(), "pods left behind: {left:?}");
}

/// Namespaces are the operator's: by default only the server's own, and a
/// caller naming another (or naming one for a pool that is not on
/// Kubernetes) is refused before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_the_operator_did_not_list_is_refused() {
    let k8s = k8s_common::K8s::start("ns-only").await;
    let (home, team) = (k8s.namespace.clone(), team());
    let server = TestServer::start_with(k8s.config()).await;
    let id = server.server_id.clone();

    let mut spec = kubernetes_pool("elsewhere", 1);
    spec.namespace = Some(team.clone());
    let err = server
        .client
        .create_pool(spec, true)
        .await
        .expect_err("a namespace nobody listed");
    let status = err.status().expect("a status from the server").clone();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("error info");
    assert_eq!(info.reason, "POLICY_VIOLATION");
    assert_eq!(
        info.metadata.get("field").map(String::as_str),
        Some("namespace")
    );
    let limit = info.metadata.get("limit").cloned().unwrap_or_default();
    assert!(
        limit.contains(&home) && !limit.contains(&team),
        "only the server's namespace is allowed: {limit}"
    );
    assert_eq!(
        details.bad_request().expect("field").field_violations[0].field,
        "namespace"
    );
    assert!(status.message().contains(&team), "{}", status.message());

    // The server's own namespace, named or not, is fine.
    let mut spec = kubernetes_pool("home", 1);
    spec.namespace = Some(home.clone());
    server.pool(spec).await;

    // Only Kubernetes pools have a namespace.
    let mut docker = python_pool("docker-ns");
    docker.namespace = Some(home.clone());
    let err = server
        .client
        .create_pool(docker, false)
        .await
        .expect_err("a Docker pool with a namespace");
    let status = err.status().expect("a status from the server").clone();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status
            .get_error_details()
            .bad_request()
            .expect("field")
            .field_violations[0]
            .field,
        "namespace"
    );

    let names: Vec<String> = server
        .client
        .list_pools()
        .await
        .expect("list")
        .into_iter()
        .filter_map(|p| p.spec.map(|s| s.name))
        .collect();
    assert_eq!(names, vec!["home".to_string()]);
    let pods = k8s.pods_of(&id).await;
    assert!(
        pods.len() == 1 && pods[0].starts_with(&format!("{home}/")),
        "{pods:?}"
    );
    server.stop().await;
    assert!(k8s.pods_of(&id).await.is_empty());
}

/// A server killed with SIGKILL renews its instance Lease no more: once the
/// Lease has run out, another server on the same cluster removes the dead
/// one's pods, its NetworkPolicy and its Lease (owner references cannot do
/// this across namespaces), and leaves its own alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_servers_pods_are_removed_through_its_expired_lease() {
    use k8s_openapi::api::{coordination::v1::Lease, networking::v1::NetworkPolicy};
    use kube::api::{Api, ListParams};

    let k8s = k8s_common::K8s::start("swept").await;
    let dead_id = format!("doomed-{:08x}", rand::random::<u32>());
    let mut doomed = k8s.spawn_server(&dead_id, "doomed").await;
    wait_for(
        "the doomed server's pods to be up",
        Duration::from_secs(60),
        || async { (k8s.pods_of(&dead_id).await.len() == 2).then_some(()) },
    )
    .await;
    let client = k8s.kube_client().await;
    let selector = ListParams::default().labels(&format!("{LABEL_SERVER}={dead_id}"));
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &k8s.namespace);
    let leases: Api<Lease> = Api::namespaced(client, &k8s.namespace);
    assert_eq!(
        count(&policies, &selector).await,
        1,
        "the pool's deny-all policy"
    );
    assert_eq!(count(&leases, &selector).await, 1, "the instance Lease");

    doomed.kill();
    let killed = Instant::now();
    let successor = TestServer::start_with(k8s.config()).await;
    successor.pool(kubernetes_pool("successor", 1)).await;
    wait_for(
        "the dead instance's pods to go",
        Duration::from_secs(30),
        || async { k8s.pods_of(&dead_id).await.is_empty().then_some(()) },
    )
    .await;
    println!(
        "kubernetes: dead instance's pods removed {:?} after SIGKILL",
        killed.elapsed()
    );
    wait_for(
        "the dead instance's policy and Lease to go",
        Duration::from_secs(10),
        || async {
            (count(&policies, &selector).await == 0 && count(&leases, &selector).await == 0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        k8s.pods_of(&successor.server_id).await.len(),
        1,
        "the live server's pod stays"
    );
    let id = successor.server_id.clone();
    successor.stop().await;
    assert!(k8s.pods_of(&id).await.is_empty());
}

/// How many objects `api` lists with `selector`.
async fn count<K>(api: &kube::Api<K>, selector: &kube::api::ListParams) -> usize
where
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.list(selector).await.expect("list").items.len()
}
