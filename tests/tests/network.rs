//! Network only where intended: network settings that would share another
//! container's or the host's network are refused, and a container found on a
//! network where its pool has none is destroyed, never leased.

use std::time::Duration;

use sandpool_client::proto as pb;
use sandpool_tests::{TestServer, code_of, docker_cli, docker_networks, python_pool, wait_for};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_of_other_namespaces_are_refused() {
    let server = TestServer::start().await;
    for (install, leased) in [
        ("container:abc", "none"),
        ("host", "none"),
        ("ns:/proc/1/ns/net", "none"),
        ("none", "none"),
        ("bridge", "container:abc"),
        ("bridge", "ns:/proc/1/ns/net"),
        ("bridge", "host"),
        ("bridge", "a b"),
    ] {
        let mut spec = python_pool("netcheck");
        spec.install_network = install.to_string();
        spec.runtime = Some(pb::RuntimeConfig {
            network: Some(leased.to_string()),
            ..Default::default()
        });
        let err = server
            .client
            .create_pool(spec, false)
            .await
            .err()
            .unwrap_or_else(|| panic!("install_network {install:?}, network {leased:?} accepted"));
        assert_eq!(code_of(&err), Code::InvalidArgument, "{err}");
        let field = err.field().unwrap_or_default();
        let expected = if install != "bridge" {
            "install_network"
        } else {
            "runtime.network"
        };
        assert_eq!(field, expected, "{install:?} {leased:?}: {err}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_found_on_a_network_after_its_reset_is_destroyed() {
    let server = TestServer::start().await;
    let mut spec = python_pool("netleak");
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    // Its containers start on the install network (leases may install) and
    // leave it before the first lease: only such a container can be put on a
    // network again (an engine keeps a container created without one off
    // every network).
    spec.lease_installs = Some(true);
    server.pool(spec).await;
    let session = server.client.acquire("netleak").await.expect("acquire");
    let container = session.container_id().to_string();
    assert!(docker_networks(&container).is_empty());
    // Something outside sandpool (or a bug) puts the container on a network.
    docker_cli(&["network", "connect", "bridge", &container]);
    assert_eq!(docker_networks(&container), ["bridge"]);
    session.release().await.expect("release");

    let next = server
        .client
        .acquire("netleak")
        .await
        .expect("acquire again");
    assert_ne!(
        next.container_id(),
        container,
        "a container on a network was leased again"
    );
    let out = next
        .run_collect("import os; print(sorted(os.listdir('/sys/class/net')))")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "['lo']\n");
    next.release().await.expect("release");
    wait_for(
        "the container to be gone",
        Duration::from_secs(10),
        || async {
            let out = std::process::Command::new("docker")
                .args(["inspect", &container])
                .output()
                .ok()?;
            (!out.status.success()).then_some(())
        },
    )
    .await;
    let stats = server.stats("netleak").await;
    let recycled = stats
        .counters
        .unwrap_or_default()
        .recycled
        .unwrap_or_default();
    assert!(recycled.unhealthy >= 1, "{recycled:?}");
    server.stop().await;
}
