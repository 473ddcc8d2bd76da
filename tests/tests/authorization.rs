//! Roles, the policy floor and quotas, against the real server and engine:
//! each RPC as a tenant and as an admin, another identity's lease, policy
//! fields past their limits, each quota reached, secrets redacted, the
//! audit trail, and the refusal to listen unauthenticated beyond loopback.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use sandpool_client::{Client, proto as pb};
use sandpool_server::ServerConfig;
use sandpool_tests::{TestServer, python_image, python_pool, secs};
use tonic::Code;
use tonic_types::StatusExt;

/// Operator: ops (admin). Tenants: alice (every config pool), bob (only
/// `python`, one lease, one pool, two streams), carol (one waiter).
fn config() -> ServerConfig {
    let text = format!(
        r#"
shutdown_grace = 2.0
[auth]
[[auth.identities]]
name = "ops"
role = "admin"
token = "ops-token"
[[auth.identities]]
name = "alice"
token = "alice-token"
[[auth.identities]]
name = "bob"
token = "bob-token"
pools = ["python"]
max_leases = 1
max_pools = 1
max_streams = 2
[[auth.identities]]
name = "dave"
token = "dave-token"
[[auth.identities]]
name = "carol"
token = "carol-token"
max_waiters = 1

[[pools]]
name = "python"
language = "python"
image = "{image}"
min_pool_size = 1
max_pool_size = 1
acquisition_timeout = 20.0

[[pools]]
name = "secret"
language = "python"
image = "{image}"
min_pool_size = 0
max_pool_size = 1
package_index_url = "https://user:hunter2@index.invalid/simple"
[pools.runtime]
env = {{ API_KEY = "hunter2" }}
"#,
        image = python_image()
    );
    let mut config =
        ServerConfig::from_toml(&text, std::path::Path::new("<authz>")).expect("config");
    config.server_id = Some(format!("authz-{:08x}", rand::random::<u32>()));
    config
}

async fn as_(server: &TestServer, token: &str) -> Client {
    Client::builder(format!("http://{}", server.addr))
        .token(token)
        .connect()
        .await
        .expect("connect")
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

fn status(err: sandpool_client::Error) -> tonic::Status {
    err.status().expect("a status from the server").clone()
}

/// Another identity's lease: NOT_FOUND with LEASE_NOT_FOUND.
fn not_found<T>(result: Result<T, tonic::Status>, rpc: &str) {
    let Err(s) = result else {
        panic!("{rpc} on another identity's lease succeeded");
    };
    assert_eq!(s.code(), Code::NotFound, "{rpc}: {s:?}");
    assert_eq!(reason(&s), "LEASE_NOT_FOUND", "{rpc}");
}

fn assert_denied(err: sandpool_client::Error, want_reason: &str, mentions: &str) {
    let s = status(err);
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert_eq!(reason(&s), want_reason, "{s:?}");
    assert!(
        s.message().contains(mentions),
        "{:?} should mention {mentions}",
        s.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_what_each_caller_may_do() {
    let server = TestServer::start_with_client(config(), |addr| {
        Client::builder(format!("http://{addr}")).token("ops-token")
    })
    .await;
    let ops = &server.client;
    let alice = as_(&server, "alice-token").await;
    let bob = as_(&server, "bob-token").await;

    // Reading pools: each sees what it may use; secrets only for admins.
    let names = |pools: Vec<pb::Pool>| -> Vec<String> {
        pools
            .into_iter()
            .map(|p| p.spec.expect("spec").name)
            .collect()
    };
    assert_eq!(
        names(ops.list_pools().await.expect("ops")),
        ["python", "secret"]
    );
    assert_eq!(
        names(alice.list_pools().await.expect("alice")),
        ["python", "secret"]
    );
    assert_eq!(names(bob.list_pools().await.expect("bob")), ["python"]);
    let shown = alice
        .get_pool("secret")
        .await
        .expect("alice reads")
        .spec
        .expect("spec");
    assert_eq!(
        shown.runtime.as_ref().expect("rt").env["API_KEY"],
        "<redacted>"
    );
    assert!(
        !shown.package_index_url.contains("hunter2"),
        "{}",
        shown.package_index_url
    );
    let full = ops
        .get_pool("secret")
        .await
        .expect("ops reads")
        .spec
        .expect("spec");
    assert_eq!(full.runtime.as_ref().expect("rt").env["API_KEY"], "hunter2");
    assert_denied(
        bob.get_pool("secret").await.expect_err("not on bob's list"),
        "NOT_PERMITTED",
        "secret",
    );
    assert_denied(
        bob.stats("secret").await.expect_err("stats too"),
        "NOT_PERMITTED",
        "secret",
    );
    assert_denied(
        bob.acquire("secret")
            .await
            .map(|_| ())
            .expect_err("nor acquire"),
        "NOT_PERMITTED",
        "secret",
    );

    // The operator's pools: tenants may not delete (nor, so, replace) them.
    assert_denied(
        alice
            .delete_pool("python", false)
            .await
            .expect_err("tenant"),
        "NOT_PERMITTED",
        "operator",
    );

    // A tenant's own pool: within the policy, owned, private, deletable.
    let mine = alice
        .create_pool(python_pool("alice-pool"), true)
        .await
        .expect("alice creates a pool");
    assert_eq!(mine.owner, "alice");
    assert_denied(
        bob.get_pool("alice-pool").await.expect_err("private"),
        "NOT_PERMITTED",
        "alice-pool",
    );
    assert_denied(
        bob.delete_pool("alice-pool", false)
            .await
            .expect_err("not his"),
        "NOT_PERMITTED",
        "alice-pool",
    );
    assert_eq!(
        ops.get_pool("alice-pool")
            .await
            .expect("admins see all")
            .owner,
        "alice"
    );

    // Another identity's lease does not exist for anyone else, on every RPC.
    let lease = alice.acquire("alice-pool").await.expect("alice acquires");
    let id = lease.lease_id().to_string();
    let sessions = bob.sessions();
    not_found(
        sessions
            .clone()
            .run(pb::RunRequest {
                lease_id: id.clone(),
                program: Some(pb::run_request::Program::Command(pb::Command {
                    shell: "true".into(),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await,
        "Run",
    );
    not_found(
        sessions
            .clone()
            .release(pb::ReleaseRequest {
                lease_id: id.clone(),
            })
            .await,
        "Release",
    );
    not_found(
        sessions
            .clone()
            .cancel(pb::CancelRequest {
                lease_id: id.clone(),
                run_id: "0000000000000000".into(),
            })
            .await,
        "Cancel",
    );
    not_found(
        sessions
            .clone()
            .create_context(pb::CreateContextRequest {
                lease_id: id.clone(),
                ..Default::default()
            })
            .await,
        "CreateContext",
    );
    not_found(
        sessions
            .clone()
            .install_libraries(pb::InstallLibrariesRequest {
                lease_id: id.clone(),
                libraries: vec!["/tmp/x.whl".into()],
            })
            .await,
        "InstallLibraries",
    );
    not_found(
        bob.artifacts()
            .list_artifacts(pb::ListArtifactsRequest {
                lease_id: id.clone(),
                ..Default::default()
            })
            .await,
        "ListArtifacts",
    );
    not_found(
        bob.artifacts()
            .download(pb::DownloadRequest {
                lease_id: id.clone(),
                path: "/sandbox".into(),
            })
            .await,
        "Download",
    );
    assert_eq!(
        lease
            .run_collect("print(2 + 2)")
            .await
            .expect("alice runs")
            .stdout_text(),
        "4\n"
    );
    lease.release().await.expect("release");
    alice
        .delete_pool("alice-pool", true)
        .await
        .expect("alice deletes her pool");

    // Admins manage the operator's pools, but even they stay within the
    // policy when they create one at run time.
    let mut wide = python_pool("wide");
    wide.runtime = Some(pb::RuntimeConfig {
        network: Some("bridge".into()),
        ..Default::default()
    });
    let s = status(
        ops.create_pool(wide, false)
            .await
            .expect_err("policy holds for admins"),
    );
    assert_eq!(s.code(), Code::PermissionDenied);
    assert_eq!(reason(&s), "POLICY_VIOLATION");
    let details = s.get_error_details();
    assert_eq!(
        details.bad_request().expect("field").field_violations[0].field,
        "runtime.network"
    );
    ops.delete_pool("secret", true)
        .await
        .expect("admins may delete the operator's pools");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_fields_past_their_limits_are_named() {
    let server = TestServer::start_with_client(config(), |addr| {
        Client::builder(format!("http://{addr}")).token("alice-token")
    })
    .await;
    let rt = |f: fn(&mut pb::RuntimeConfig)| {
        let mut spec = python_pool("p");
        let mut runtime = pb::RuntimeConfig::default();
        f(&mut runtime);
        spec.runtime = Some(runtime);
        spec
    };
    let cases: Vec<(pb::PoolSpec, &str)> = vec![
        (
            pb::PoolSpec {
                image: "alpine:latest".into(),
                ..python_pool("p")
            },
            "image",
        ),
        (rt(|r| r.network = Some("bridge".into())), "runtime.network"),
        (
            rt(|r| r.oci_runtime = Some("runc-debug".into())),
            "runtime.oci_runtime",
        ),
        (
            rt(|r| r.read_only_root = Some(false)),
            "runtime.read_only_root",
        ),
        (
            rt(|r| r.mem_limit = Some("64g".into())),
            "runtime.mem_limit",
        ),
        (rt(|r| r.cpus = Some(64.0)), "runtime.cpus"),
        (rt(|r| r.pids_limit = Some(100_000)), "runtime.pids_limit"),
        (
            rt(|r| r.tmpfs_size = Some("16g".into())),
            "runtime.tmpfs_size",
        ),
        (
            pb::PoolSpec {
                config: Some(pb::PoolConfig {
                    max_pool_size: Some(500),
                    ..Default::default()
                }),
                ..python_pool("p")
            },
            "config.max_pool_size",
        ),
        (
            pb::PoolSpec {
                max_temporary: Some(500),
                ..python_pool("p")
            },
            "max_temporary",
        ),
        (
            pb::PoolSpec {
                libraries: vec!["numpy".into()],
                install_network: "host".into(),
                ..python_pool("p")
            },
            "install_network",
        ),
    ];
    for (spec, field) in cases {
        let s = status(
            server
                .client
                .create_pool(spec, false)
                .await
                .expect_err(field),
        );
        assert!(
            matches!(s.code(), Code::PermissionDenied | Code::InvalidArgument),
            "{field}: {s:?}"
        );
        assert!(s.message().contains(field), "{field}: {}", s.message());
    }
    assert!(
        server
            .client
            .list_pools()
            .await
            .expect("list")
            .iter()
            .all(|p| p.owner.is_empty())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quota_is_enforced_and_given_back() {
    let server = TestServer::start_with_client(config(), |addr| {
        Client::builder(format!("http://{addr}")).token("bob-token")
    })
    .await;
    let bob = &server.client;
    let quota_of = |err: sandpool_client::Error| {
        let s = status(err);
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(reason(&s), "QUOTA_EXCEEDED");
        assert!(
            s.get_error_details().retry_info().is_some(),
            "with RetryInfo"
        );
        s.get_error_details()
            .error_info()
            .and_then(|i| i.metadata.get("quota").cloned())
            .unwrap_or_default()
    };

    // Streams: two at a time; a closed one is given back.
    let first_watch = bob.watch_stats("python").await.expect("a watch");
    let _second_watch = bob.watch_stats("python").await.expect("another");
    let third = bob
        .watch_stats("python")
        .await
        .map(|_| ())
        .expect_err("third stream");
    assert_eq!(quota_of(third), "streams");
    drop(first_watch);
    sandpool_tests::wait_for("a stream given back", Duration::from_secs(5), || async {
        bob.watch_stats("python").await.ok().map(|_| ())
    })
    .await;
    drop(_second_watch);

    // Leases: one at a time.
    let first = bob.acquire("python").await.expect("first lease");
    assert_eq!(
        quota_of(bob.acquire("python").await.map(|_| ()).expect_err("second")),
        "leases"
    );
    first.release().await.expect("release");
    let again = bob
        .acquire("python")
        .await
        .expect("room again after release");

    again.release().await.expect("release");

    // Pools: one.
    bob.create_pool(python_pool("bob-1"), false)
        .await
        .expect("first pool");
    assert_eq!(
        quota_of(
            bob.create_pool(python_pool("bob-2"), false)
                .await
                .expect_err("second pool")
        ),
        "pools"
    );
    bob.delete_pool("bob-1", true).await.expect("delete");

    // Waiters: carol may queue once; a second concurrent wait is refused.
    let carol = as_(&server, "carol-token").await;
    let ops = as_(&server, "alice-token").await;
    let holder = ops.acquire("python").await.expect("the one container");
    let waiting = {
        let carol = carol.clone();
        tokio::spawn(async move { carol.acquire("python").await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        quota_of(
            carol
                .acquire("python")
                .await
                .map(|_| ())
                .expect_err("second waiter")
        ),
        "waiters"
    );
    holder.release().await.expect("release");
    waiting
        .await
        .expect("join")
        .expect("the waiter gets the container");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ends_at_its_max_lifetime_whatever_its_keepalives() {
    let server = TestServer::start().await;
    let mut spec = python_pool("short");
    spec.max_lease_lifetime = secs(3.0);
    server.pool(spec).await;
    let session = server
        .client
        .acquire_with(sandpool_client::AcquireOptions {
            ttl: Some(Duration::from_secs(2)),
            ..sandpool_client::AcquireOptions::new("short")
        })
        .await
        .expect("acquire");
    let id = session.lease_id().to_string();
    // The client's keepalive renews every TTL/3; the lease still ends, and
    // its runs say so.
    sandpool_tests::wait_for("the lease to end", Duration::from_secs(8), || async {
        session.run_collect("print(1)").await.err().map(|_| ())
    })
    .await;
    let ended = server
        .client
        .sessions()
        .release(pb::ReleaseRequest { lease_id: id })
        .await
        .expect("release of an ended lease answers how it ended")
        .into_inner()
        .previous_state;
    assert_eq!(ended, pb::LeaseState::LifetimeExceeded as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporaries_are_bounded_per_pool() {
    let server = TestServer::start().await;
    let mut spec = python_pool("temps");
    spec.max_temporary = Some(1);
    spec.config = Some(pb::PoolConfig {
        max_pool_size: Some(1),
        min_pool_size: Some(1),
        exhaustion_strategy: pb::ExhaustionStrategy::Temporary as i32,
        ..Default::default()
    });
    server.pool(spec).await;
    let pooled = server.client.acquire("temps").await.expect("pooled");
    let temporary = server.client.acquire("temps").await.expect("one temporary");
    let s = status(
        server
            .client
            .acquire("temps")
            .await
            .map(|_| ())
            .expect_err("beyond max_temporary"),
    );
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().contains("max_temporary"), "{}", s.message());
    temporary.release().await.expect("release");
    pooled.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_only_loopback_is_served() {
    let mut config = sandpool_tests::empty_config();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let err = sandpool_server::serve(config.clone(), listener, async {})
        .await
        .expect_err("refused without auth beyond loopback");
    assert!(err.to_string().contains("without authentication"), "{err}");
    assert!(
        err.to_string().contains("insecure"),
        "says how to override: {err}"
    );
    config.auth.insecure = true;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    sandpool_server::serve(config, listener, async {})
        .await
        .expect("insecure was asked for");
}

/// Captures the audit target's records as JSON lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_names_who_ran_what() {
    use tracing_subscriber::{filter::Targets, fmt, prelude::*};
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::registry()
        .with(
            fmt::layer()
                .json()
                .with_writer(move || sink.clone())
                .with_filter(Targets::new().with_target("sandpool::audit", tracing::Level::INFO)),
        )
        .init();
    let server = TestServer::start_with_client(config(), |addr| {
        Client::builder(format!("http://{addr}")).token("dave-token")
    })
    .await;
    let session = server.client.acquire("python").await.expect("acquire");
    session.run_collect("print('audited')").await.expect("run");
    session.release().await.expect("release");
    let _ = server
        .client
        .delete_pool("python", false)
        .await
        .expect_err("refused");
    server.stop().await;
    let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let event = |name: &str| {
        records
            .iter()
            .find(|r| r["fields"]["event"] == name && r["fields"]["identity"] == "dave")
            .unwrap_or_else(|| panic!("no {name} record in {text}"))
            .clone()
    };
    assert_eq!(event("acquire")["fields"]["pool"], "python");
    let run = event("run");
    assert_eq!(run["fields"]["language"], "python");
    assert_eq!(run["fields"]["code_bytes"], "print('audited')".len());
    assert_eq!(run["fields"]["stdout_bytes"], 8);
    assert_eq!(run["fields"]["end_reason"], "Exited");
    let sha = run["fields"]["code_sha256"].as_str().expect("sha");
    assert_eq!(sha.len(), 64);
    event("release");
    let refused = event("refused");
    assert_eq!(refused["fields"]["rpc"], "DeletePool");
    assert_eq!(refused["fields"]["reason"], "NOT_PERMITTED");
    assert!(!text.contains("audited"), "no code or output in the trail");
}
