//! Several replicas, one address: three server processes with a static peer
//! list behind a real nginx (`grpc_pass`, round-robin over the three,
//! HTTP/2 without TLS). Every call through the balancer lands on the next
//! replica; those that reach a replica which does not own the lease are
//! forwarded to the owner, streams included, and the caller sees the same
//! answers as from one server.
//!
//! Needs nginx (scripts/lb-up.sh installs it; scripts/test.sh runs it).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sandpool_client::{AcquireOptions, Client, Interaction, proto as pb};
use sandpool_server::{cluster::caller, identity::Identity};
use sandpool_tests::{
    labelled, python_image, shell_run, terminate, unique_id, wait_for, workspace_binary,
};
use tonic::metadata::MetadataValue;

const REPLICAS: [&str; 3] = ["a", "b", "c"];
/// What the log line of every forwarded call says (api::forward).
const FORWARDED: &str = "forwarding to the lease's owner";
/// And of a KeepAlive stream's first keepalive sent on to a peer.
const KEEPALIVES_FORWARDED: &str = "forwarding keepalives to the lease's owner";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A server process; SIGKILLed if the test ends before it is stopped.
struct Replica {
    name: &'static str,
    server_id: String,
    addr: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn start(
        name: &'static str,
        addr: String,
        config: &Path,
        dir: &Path,
        peer_token: &str,
    ) -> Self {
        let server_id = unique_id(&format!("scale-{name}"));
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(workspace_binary("sandpool-server"))
            .args(["--listen", &addr, "--config"])
            .arg(config)
            .args(["--server-id", &server_id, "--log-format", "json"])
            // One config for all three: the environment names the replica,
            // and carries the secret.
            .env("SANDPOOL_REPLICA", name)
            .env("SANDPOOL_PEER_TOKEN", peer_token)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start sandpool-server");
        Self {
            name,
            server_id,
            addr,
            log,
            child: Some(child),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines of calls for `lease_id` it forwarded.
    fn forwarded(&self, lease_id: &str) -> Vec<String> {
        self.log_lines(FORWARDED, lease_id)
    }

    fn log_lines(&self, message: &str, lease_id: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(message) && l.contains(lease_id))
            .map(String::from)
            .collect()
    }

    async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The test failed midway: SIGTERM (the server removes its
            // containers), then SIGKILL if it lingers.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let until = Instant::now() + Duration::from_secs(15);
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// nginx in front of the replicas, with a prefix directory of its own; in
/// one process (`master_process off`), so that killing the child leaves no
/// worker behind.
struct Balancer {
    addr: String,
    child: Child,
}

impl Balancer {
    fn start(dir: &Path, replicas: &[Replica]) -> Self {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is missing: run scripts/lb-up.sh (scripts/test.sh does)");
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("tmp")).expect("nginx dir");
        let port = free_port();
        let servers: String = replicas
            .iter()
            .map(|r| format!("    server {};\n", r.addr))
            .collect();
        let p = prefix.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
             error_log {p}/error.log info;\nevents {{ worker_connections 256; }}\nhttp {{\n\
             access_log {p}/access.log;\n\
             client_body_temp_path {p}/tmp/body;\nproxy_temp_path {p}/tmp/proxy;\n\
             fastcgi_temp_path {p}/tmp/fastcgi;\nuwsgi_temp_path {p}/tmp/uwsgi;\n\
             scgi_temp_path {p}/tmp/scgi;\n\
             upstream replicas {{\n{servers}  }}\n\
             server {{\n    listen 127.0.0.1:{port} http2;\n    client_max_body_size 0;\n\
             grpc_read_timeout 300s;\n    grpc_send_timeout 300s;\n\
             location / {{ grpc_pass grpc://replicas; }}\n  }}\n}}\n"
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        Self {
            addr: format!("127.0.0.1:{port}"),
            child,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_one_balancer() {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(unique_id("sandpool-scale-out"));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let token = format!("{:032x}", rand::random::<u128>());
    let peer_token = format!("{:032x}", rand::random::<u128>());
    let addrs: Vec<String> = REPLICAS
        .iter()
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers: Vec<String> = REPLICAS
        .iter()
        .zip(&addrs)
        .map(|(name, addr)| format!("{{ name = \"{name}\", address = \"http://{addr}\" }}"))
        .collect();
    let config = dir.join("sandpool.toml");
    std::fs::write(
        &config,
        format!(
            "shutdown_grace = 1.0\n\
             [auth]\ntokens = [\"{token}\"]\n\
             [cluster]\npeers = [{}]\n\
             [[pools]]\nname = \"py\"\nlanguage = \"python\"\nimage = \"{}\"\n\
             min_pool_size = 1\nmax_pool_size = 2\n",
            peers.join(", "),
            python_image()
        ),
    )
    .expect("write config");
    let mut replicas: Vec<Replica> = REPLICAS
        .iter()
        .zip(addrs)
        .map(|(name, addr)| Replica::start(name, addr, &config, &dir, &peer_token))
        .collect();
    for r in &replicas {
        wait_for(
            &format!("replica {} to serve", r.name),
            Duration::from_secs(40),
            || async { serving(&r.addr).await.then_some(()) },
        )
        .await;
    }
    let balancer = Balancer::start(&dir, &replicas);
    let lb = format!("http://{}", balancer.addr);
    let client = wait_for(
        "the balancer to answer",
        Duration::from_secs(10),
        || async {
            let client = Client::builder(lb.clone())
                .token(&token)
                .connect()
                .await
                .ok()?;
            client.stats("py").await.ok().map(|_| client)
        },
    )
    .await;

    // A lease, owned by the replica that granted it, whose name it carries.
    // A short TTL: the session's keepalives (every 0.5 s, on a stream of
    // their own that the balancer puts on another replica) must reach the
    // owner for the lease to live through the test.
    let session = client
        .acquire_with(AcquireOptions::new("py").ttl(Duration::from_millis(1500)))
        .await
        .expect("acquire through the balancer");
    let leased = Instant::now();
    let lease_id = session.lease_id().to_string();
    let (owner, _) = lease_id
        .split_once('.')
        .expect("the lease id names its replica");
    assert!(REPLICAS.contains(&owner), "{lease_id}");

    // Runs: round-robin puts each on the next replica; all reach the lease.
    for i in 1..=6 {
        let out = session
            .run_collect(format!("print({i} * 7)"))
            .await
            .unwrap_or_else(|e| panic!("run {i}: {e}"));
        assert_eq!(out.stdout_text().trim(), (i * 7).to_string(), "run {i}");
        assert_eq!(out.exit_code(), 0);
    }

    // Files in and out (a client stream and a server stream).
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let uploaded = session
        .upload("/tmp/scale/data.bin", data.clone())
        .await
        .expect("upload");
    assert_eq!(uploaded.size, data.len() as u64);
    let out = session
        .run_collect("import hashlib; print(hashlib.sha256(open('/tmp/scale/data.bin','rb').read()).hexdigest())")
        .await
        .expect("hash");
    assert_eq!(out.stdout_text().trim(), hex::encode(sha2_256(&data)));
    let (_, body) = session
        .download("/tmp/scale/data.bin")
        .await
        .expect("download");
    assert_eq!(body.as_ref(), data.as_slice(), "downloaded as uploaded");

    // A context: its state lives in the owner's container.
    let context = session.create_context().await.expect("create context");
    context.run_collect("x = 41").await.expect("cell 1");
    let out = context.run_collect("print(x + 1)").await.expect("cell 2");
    assert_eq!(out.stdout_text().trim(), "42");
    context.delete().await.expect("delete context");

    // Artifacts: what a run wrote under the output directory, listed by
    // whichever replica the call reaches.
    session
        .run_collect("open('/sandbox/outputs/hello.txt', 'w').write('hi')")
        .await
        .expect("artifact run");
    for _ in REPLICAS {
        let listed = client
            .artifacts()
            .list_artifacts(pb::ListArtifactsRequest {
                lease_id: lease_id.clone(),
                run_id: String::new(),
            })
            .await
            .expect("list artifacts")
            .into_inner();
        assert!(
            listed
                .artifacts
                .iter()
                .any(|a| a.name.ends_with("hello.txt")),
            "{listed:?}"
        );
    }

    // A resumable run, attached to again through every replica: the same
    // events from the owner's journal.
    let resumable = pb::RunRequest {
        lease_id: lease_id.clone(),
        run_id: "scale-1".into(),
        ..shell_run("echo resumable", 30.0)
    };
    let first = collect(client.sessions().run(resumable).await.expect("run")).await;
    assert!(first.len() > 2, "{first:?}");
    for _ in REPLICAS {
        let again = client
            .sessions()
            .attach(pb::AttachRequest {
                lease_id: lease_id.clone(),
                run_id: "scale-1".into(),
                after_seq: 0,
            })
            .await
            .expect("attach");
        assert_eq!(collect(again).await, first, "attached, the same events");
    }

    // An interactive run: both directions stream through the forwarder.
    let Interaction { input, events } = session
        .interact(shell_run("cat; echo done", 30.0), None)
        .await
        .expect("interact");
    input.write("over the balancer\n").await.expect("stdin");
    input.close_stdin().await.expect("close stdin");
    let out = events.collect().await.expect("interactive output");
    assert_eq!(out.stdout_text(), "over the balancer\ndone\n");
    drop(input);

    // Only a peer may name the caller: the header without the peer token is
    // refused, with the caller's own token or with none.
    let forged = || {
        let mut request = tonic::Request::new(pb::ReleaseRequest {
            lease_id: lease_id.clone(),
        });
        request.metadata_mut().insert_bin(
            caller::HEADER,
            MetadataValue::from_bytes(&caller::encode(&Identity::local_admin())),
        );
        request
    };
    for _ in REPLICAS {
        let refused = client
            .sessions()
            .release(forged())
            .await
            .expect_err("a forged caller is refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }
    let mut bare =
        sandpool_proto::v1::session_service_client::SessionServiceClient::connect(lb.clone())
            .await
            .expect("connect");
    let refused = bare.release(forged()).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // A lease of a replica nobody knows: NOT_FOUND naming it.
    for _ in REPLICAS {
        let unknown = client
            .sessions()
            .release(pb::ReleaseRequest {
                lease_id: format!("zz.{:032x}", 1),
            })
            .await
            .expect_err("unknown replica");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        assert!(
            unknown.message().contains("replica \"zz\"")
                && unknown.message().contains("does not know"),
            "{unknown:?}"
        );
    }

    // The lease survived all of that, kept alive through a non-owner for
    // more than twice its TTL; it is released through the balancer.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(leased.elapsed())).await;
    let out = session
        .run_collect("print('still here')")
        .await
        .expect("run");
    assert_eq!(out.stdout_text().trim(), "still here");
    assert!(session.lost().is_none(), "{:?}", session.lost());
    assert!(session.renewals() > 0, "no keepalive was answered");
    let keepalives: Vec<String> = replicas
        .iter()
        .flat_map(|r| r.log_lines(KEEPALIVES_FORWARDED, &lease_id))
        .collect();
    assert!(
        !keepalives.is_empty(),
        "the keepalive stream was not forwarded"
    );
    session.release().await.expect("release");

    // Calls really reached replicas that do not own the lease, and were
    // forwarded from each of them; the owner forwarded none.
    for r in &replicas {
        let forwarded = r.forwarded(&lease_id);
        if r.name == owner {
            assert!(forwarded.is_empty(), "the owner forwarded: {forwarded:?}");
        } else {
            assert!(
                !forwarded.is_empty(),
                "replica {} forwarded nothing; its log:\n{}",
                r.name,
                r.log_text()
            );
            assert!(
                forwarded
                    .iter()
                    .all(|l| l.contains(&format!("\"owner\":\"{owner}\""))),
                "{forwarded:?}"
            );
        }
    }
    let methods: std::collections::BTreeSet<&str> = [
        "Run",
        "Attach",
        "ListArtifacts",
        "Interact",
        "Upload",
        "Download",
        "CreateContext",
        "DeleteContext",
        "Release",
    ]
    .into_iter()
    .filter(|m| {
        replicas.iter().any(|r| {
            r.forwarded(&lease_id)
                .iter()
                .any(|l| l.contains(&format!("\"method\":\"{m}\"")))
        })
    })
    .collect();
    // Three or more calls in a row of these: at least two met a non-owner.
    for method in ["Run", "Attach", "ListArtifacts"] {
        assert!(methods.contains(method), "{method} forwarded: {methods:?}");
    }
    for r in &replicas {
        eprintln!(
            "replica {}{}: forwarded {} calls",
            r.name,
            if r.name == owner { " (owner)" } else { "" },
            r.forwarded(&lease_id).len()
        );
    }
    eprintln!("forwarded methods: {methods:?}");

    // An owner that is gone: calls for its lease through the others are
    // UNAVAILABLE, naming it (nginx skips the dead replica itself).
    let doomed = client.acquire("py").await.expect("a second lease");
    let doomed_id = doomed.lease_id().to_string();
    let (gone, _) = doomed_id.split_once('.').expect("named");
    let index = replicas
        .iter()
        .position(|r| r.name == gone)
        .expect("a replica of ours");
    replicas[index].stop().await;
    for _ in REPLICAS {
        let err = client
            .sessions()
            .run(pb::RunRequest {
                lease_id: doomed_id.clone(),
                ..shell_run("true", 10.0)
            })
            .await
            .expect_err("its owner is gone");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(
            err.message().contains(&format!("replica \"{gone}\"")),
            "{err:?}"
        );
    }
    drop(doomed);

    // Stopped, each replica removes what it made: nothing is left.
    drop(balancer);
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
    let _ = std::fs::remove_dir_all(&dir);
    let took = started.elapsed();
    eprintln!("scale-out test took {took:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

fn sha2_256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Every message of a response stream; panics on an error.
async fn collect<T>(response: tonic::Response<tonic::Streaming<T>>) -> Vec<T> {
    let mut stream = response.into_inner();
    let mut all = Vec::new();
    while let Some(message) = stream.message().await.expect("a message") {
        all.push(message);
    }
    all
}
