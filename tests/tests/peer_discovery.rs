//! Replicas that find each other through the Kubernetes API: three server
//! processes with `[cluster.kubernetes]` against the test API server
//! (tests/k8s-apiserver, in-process), their pools on Docker (discovery is
//! what is under test, not the pools' backend). There is no endpoint
//! controller there: the test writes the EndpointSlice of the headless
//! Service `sandpool-peers` itself, playing the controller's part, with
//! each replica at an address of its own on loopback (127.0.0.2, .3, .4,
//! one port, as pod IPs behind one Service port).
//!
//! Checked: a lease of one replica used through another (a forwarded run);
//! a replica added to the slice later is reached; once its endpoint is
//! removed (and its process killed) its lease answers FAILED_PRECONDITION
//! `LEASE_ENDED` at once, where the address it had would have made the
//! caller wait; nothing is left on the engine.

use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use sandpool_client::{Client, proto as pb};
use sandpool_tests::{
    labelled, python_image,
    replicas::{FORWARDED, Replica},
    shell_run, unique_id, wait_for,
};
use serde_json::json;
use tonic_types::StatusExt;

const NAMESPACE: &str = "sandpool";
const SERVICE: &str = "sandpool-peers";
const SLICE: &str = "sandpool-peers-x7k2p";
/// What the log line of every forwarded call says (api::forward).
/// And of a change of the peer set (cluster::Cluster::set_peers).
const PEERS_CHANGED: &str = "the peers changed";

/// A server process, SIGKILLed if the test ends before it is stopped.
/// The Service's EndpointSlice listing `endpoints` (pod name, IP) at
/// `port`, as the endpoint controller writes it for a Service with
/// `publishNotReadyAddresses`.
fn slice(port: u16, endpoints: &[(&str, &str)]) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(pod, ip)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": pod},
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": SLICE,
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": SERVICE},
        },
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("an EndpointSlice")
}

/// Writes the slice (an update replaces the endpoints, as the controller's
/// does).
async fn write_slice(api: &Api<EndpointSlice>, port: u16, endpoints: &[(&str, &str)]) {
    let mut next = slice(port, endpoints);
    match api.get_opt(SLICE).await.expect("read the slice") {
        None => {
            api.create(&PostParams::default(), &next)
                .await
                .expect("create the slice");
        }
        Some(current) => {
            next.metadata.resource_version = current.metadata.resource_version;
            api.replace(SLICE, &PostParams::default(), &next)
                .await
                .expect("update the slice");
        }
    }
}

async fn serving(addr: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| {
            r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        })
}

async fn client_at(addr: &str, token: &str) -> Client {
    Client::builder(format!("http://{addr}"))
        .token(token)
        .connect()
        .await
        .expect("connect to the replica")
}

/// A lease of `pool` without a session's keepalives, TTL 60 s.
async fn raw_acquire(client: &Client, pool: &str) -> pb::Lease {
    client
        .sessions()
        .acquire(pb::AcquireRequest {
            pool: pool.to_string(),
            ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("a lease")
}

/// `echo` in the lease's container, through `client`'s replica: its
/// stdout, or the status the call failed with. `timeout`: the call's
/// deadline.
async fn echo(
    client: &Client,
    lease_id: &str,
    text: &str,
    timeout: Duration,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(pb::RunRequest {
        lease_id: lease_id.to_string(),
        ..shell_run(&format!("echo {text}"), 10.0)
    });
    request.set_timeout(timeout);
    let call = async {
        let mut stream = client.sessions().run(request).await?.into_inner();
        let mut out = Vec::new();
        while let Some(event) = stream.message().await? {
            if let Some(pb::run_response::Event::Stdout(chunk)) = event.event {
                out.extend_from_slice(&chunk.data);
            }
        }
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    };
    // The server ends the call at its deadline; this only keeps a broken
    // one from hanging the test.
    tokio::time::timeout(timeout + Duration::from_secs(2), call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the test's own timeout")))
}

/// Asserts that `status` says the lease of `replica` ended with it.
fn assert_ended(status: &tonic::Status, replica: &str) {
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("error info");
    assert_eq!(info.reason, "LEASE_ENDED", "{status:?}");
    assert_eq!(
        info.metadata.get("end").map(String::as_str),
        Some("LEASE_STATE_REPLICA_GONE")
    );
    assert_eq!(
        info.metadata.get("replica").map(String::as_str),
        Some(replica)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_find_each_other_through_endpoint_slices() {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(unique_id("sandpool-discovery"));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let k8s = sandpool_k8s_testserver::serve(Default::default())
        .await
        .expect("the test API server starts (the docker engine must run)");
    let kubeconfig = dir.join("kubeconfig");
    k8s.write_kubeconfig(&kubeconfig, NAMESPACE)
        .expect("kubeconfig");
    let kube = kube::Client::try_from(kube::Config::new(k8s.url().parse().expect("url")))
        .expect("kube client");
    let slices: Api<EndpointSlice> = Api::namespaced(kube, NAMESPACE);

    let token = format!("{:032x}", rand::random::<u128>());
    let peer_token = format!("{:032x}", rand::random::<u128>());
    // One port for every replica, each on an IP of its own, as pods behind
    // one Service port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = dir.join("sandpool.toml");
    // The namespace of the Service is the [kubernetes] lease namespace, as
    // in the manifests; the replica and the peer token come from the
    // environment.
    std::fs::write(
        &config,
        format!(
            "shutdown_grace = 2.0\n\
             [auth]\ntokens = [\"{token}\"]\n\
             [kubernetes]\nkubeconfig = {:?}\nlease_namespace = \"{NAMESPACE}\"\n\
             [cluster.kubernetes]\nservice = \"{SERVICE}\"\nport = \"grpc\"\n\
             [[pools]]\nname = \"py\"\nlanguage = \"python\"\nimage = \"{}\"\n\
             min_pool_size = 1\nmax_pool_size = 2\n",
            kubeconfig.display().to_string(),
            python_image()
        ),
    )
    .expect("write config");

    // The controller lists a and b (c's pod does not exist yet for it).
    write_slice(&slices, port, &[("a", "127.0.0.2"), ("b", "127.0.0.3")]).await;
    let mut replicas = vec![
        Replica::start(
            "a",
            format!("127.0.0.2:{port}"),
            &config,
            &dir,
            Some(&peer_token),
        ),
        Replica::start(
            "b",
            format!("127.0.0.3:{port}"),
            &config,
            &dir,
            Some(&peer_token),
        ),
        Replica::start(
            "c",
            format!("127.0.0.4:{port}"),
            &config,
            &dir,
            Some(&peer_token),
        ),
    ];
    for r in &replicas {
        wait_for(
            &format!("replica {} to serve", r.name),
            Duration::from_secs(40),
            || async { serving(&r.addr).await.then_some(()) },
        )
        .await;
    }
    let at_a = client_at(&replicas[0].addr, &token).await;
    let at_b = client_at(&replicas[1].addr, &token).await;
    let at_c = client_at(&replicas[2].addr, &token).await;

    // A lease of a, used through b: forwarded.
    let lease_a = raw_acquire(&at_a, "py").await;
    assert!(lease_a.id.starts_with("a."), "{lease_a:?}");
    let out = echo(&at_b, &lease_a.id, "through-b", Duration::from_secs(20))
        .await
        .expect("a's lease through b");
    assert_eq!(out, "through-b");
    assert!(
        replicas[1]
            .log_lines(FORWARDED, "")
            .iter()
            .any(|l| l.contains(&lease_a.id)),
        "b forwarded the run to a"
    );

    // c joins the slice later; then a reaches it for c's lease.
    let lease_c = raw_acquire(&at_c, "py").await;
    assert!(lease_c.id.starts_with("c."), "{lease_c:?}");
    write_slice(
        &slices,
        port,
        &[("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")],
    )
    .await;
    let out = wait_for("a to reach c", Duration::from_secs(10), || async {
        echo(&at_a, &lease_c.id, "through-a", Duration::from_secs(20))
            .await
            .ok()
    })
    .await;
    assert_eq!(out, "through-a");
    let out = echo(&at_b, &lease_c.id, "through-b", Duration::from_secs(20))
        .await
        .expect("c's lease through b");
    assert_eq!(out, "through-b");

    // c dies; for a moment the slice still names it, at an address where
    // something takes connections and never answers (a tarpit: a socket
    // that is never accepted from; the addresses usually blackholed, such
    // as TEST-NET or 10.255.255.x, are refused by some networks, this
    // machine's included, and a refusal says "gone" by itself). Calls for
    // c's lease then wait for their deadline: nothing but the slice can
    // say that c is gone.
    replicas[2].kill();
    let tarpit = std::net::TcpListener::bind(("127.0.0.5", port)).expect("tarpit");
    let changes = replicas[0].log_lines(PEERS_CHANGED, "").len();
    write_slice(
        &slices,
        port,
        &[("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.5")],
    )
    .await;
    wait_for(
        "a to see c's new address",
        Duration::from_secs(10),
        || async { (replicas[0].log_lines(PEERS_CHANGED, "").len() > changes).then_some(()) },
    )
    .await;
    let t0 = Instant::now();
    let waited = echo(&at_a, &lease_c.id, "x", Duration::from_millis(1500))
        .await
        .expect_err("c does not answer");
    assert_ne!(waited.code(), tonic::Code::FailedPrecondition, "{waited:?}");
    assert!(t0.elapsed() >= Duration::from_millis(1400), "{waited:?}");

    // The controller removes c's endpoint: its lease ended, and every
    // replica says so at once.
    let changes = [0, 1].map(|i| replicas[i].log_lines(PEERS_CHANGED, "").len());
    write_slice(&slices, port, &[("a", "127.0.0.2"), ("b", "127.0.0.3")]).await;
    for (i, before) in changes.into_iter().enumerate() {
        wait_for(
            &format!("{} to see c leave", replicas[i].name),
            Duration::from_secs(10),
            || async { (replicas[i].log_lines(PEERS_CHANGED, "").len() > before).then_some(()) },
        )
        .await;
    }
    for client in [&at_a, &at_b] {
        let t0 = Instant::now();
        let ended = echo(client, &lease_c.id, "x", Duration::from_secs(5))
            .await
            .expect_err("c's lease ended");
        let took = t0.elapsed();
        assert_ended(&ended, "c");
        assert!(
            ended.message().contains(SERVICE),
            "says where it looked: {ended:?}"
        );
        assert!(
            took < Duration::from_millis(500),
            "answered in {took:?}, not after a connect timeout"
        );
    }
    // A keepalive of it through b: REPLICA_GONE, the stream goes on.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    for id in [&lease_c.id, &lease_a.id] {
        tx.send(pb::KeepAliveRequest {
            lease_id: id.clone(),
            pool: String::new(),
        })
        .await
        .expect("queue");
    }
    let mut answers = at_b
        .sessions()
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("keepalive stream")
        .into_inner();
    let first = answers.message().await.expect("an answer").expect("one");
    assert_eq!(first.state, pb::LeaseState::ReplicaGone as i32, "{first:?}");
    let second = answers.message().await.expect("an answer").expect("two");
    assert_eq!(second.state, pb::LeaseState::Active as i32, "{second:?}");
    drop(tx);
    drop(tarpit);

    // The survivors remove the killed replica's containers (its liveness
    // marker died with it); the others remove their own when stopped.
    let dead = replicas[2].server_id.clone();
    wait_for(
        "c's containers to be removed by the survivors",
        Duration::from_secs(20),
        || {
            let id = dead.clone();
            async move { labelled(&id).await.is_empty().then_some(()) }
        },
    )
    .await;
    at_a.sessions()
        .release(pb::ReleaseRequest {
            lease_id: lease_a.id.clone(),
        })
        .await
        .expect("release a's lease");
    for r in &mut replicas {
        r.stop().await;
    }
    for r in &replicas {
        let id = r.server_id.clone();
        wait_for(
            &format!("replica {}'s containers to be removed", r.name),
            Duration::from_secs(10),
            || {
                let id = id.clone();
                async move { labelled(&id).await.is_empty().then_some(()) }
            },
        )
        .await;
    }
    k8s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("peer discovery test took {:?}", started.elapsed());
}
