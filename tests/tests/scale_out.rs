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
    process::Command,
    time::{Duration, Instant},
};

use sandpool_client::{AcquireOptions, Client, Interaction, proto as pb};
use sandpool_server::{cluster::caller, identity::Identity};
use sandpool_tests::{
    labelled, python_image,
    replicas::{Balancer, Replica, free_port, serving},
    shell_run, unique_id, wait_for,
};
use tonic::metadata::MetadataValue;
use tonic_types::StatusExt;

const REPLICAS: [&str; 3] = ["a", "b", "c"];
/// And of a KeepAlive stream's first keepalive sent on to a peer.
const KEEPALIVES_FORWARDED: &str = "forwarding keepalives to the lease's owner";
/// And of an Acquire sent on to a peer with an idle container.
const ACQUIRE_FORWARDED: &str = "forwarding Acquire to a peer with an idle container";

/// The tests of this file one at a time: each starts several servers, and
/// the first one's time limit holds for it alone.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_one_balancer() {
    let _serial = SERIAL.lock().await;
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
            "shutdown_grace = 15.0\n\
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
        .map(|(name, addr)| Replica::start(name, addr, &config, &dir, Some(&peer_token)))
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
    // The session's stream opens alongside the runs, so the balancer may
    // have put it on the owner: a keepalive sent to a non-owner directly is
    // forwarded whatever the order.
    let other = replicas
        .iter()
        .find(|r| r.name != owner)
        .expect("a non-owner");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::KeepAliveRequest {
        lease_id: lease_id.clone(),
        pool: String::new(),
    })
    .await
    .expect("queue");
    let answer = client_at(&other.addr, &token)
        .await
        .sessions()
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("keepalive at a non-owner")
        .into_inner()
        .message()
        .await
        .expect("an answer")
        .expect("one");
    assert_eq!(answer.state, pb::LeaseState::Active as i32, "{answer:?}");
    drop(tx);
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

    // From here, raw calls (no keepalive streams of a session) through the
    // balancer: round-robin then puts consecutive calls on consecutive
    // replicas. The first replica's idle container is taken by a lease
    // acquired on it directly, with a TTL that outlasts the test.
    let x_name = replicas[0].name;
    let at_x = client_at(&replicas[0].addr, &token).await;
    wait_for(
        "every replica's container idle",
        Duration::from_secs(15),
        || async {
            let stats = client.stats("py").await.ok()?;
            (stats.state_counts.as_ref()?.idle == 3 && stats.total_size == 3).then_some(())
        },
    )
    .await;
    let held = raw_acquire(&at_x, "py").await.expect("a lease on x");
    assert_eq!(owner_of(&held.id), x_name, "{held:?}");
    let mut granted = vec![held.clone()];

    // Stats of a config pool are summed over the replicas (three replicas
    // of max 2, min 1), unless one replica is asked for.
    let summed = wait_for(
        "the summed stats to show the peers' idle containers",
        Duration::from_secs(15),
        || async {
            let stats = client.stats("py").await.ok()?;
            let idle = stats.state_counts.as_ref()?.idle;
            (idle == 2).then_some(stats)
        },
    )
    .await;
    assert_eq!((summed.max_size, summed.min_size), (6, 3), "{summed:?}");
    assert_eq!(summed.active_leases, 1, "{summed:?}");
    assert!(
        summed.counters.as_ref().expect("counters").acquisitions >= 2,
        "{summed:?}"
    );
    for r in &replicas {
        let one = replica_stats(&client, "py", r.name).await;
        assert_eq!(one.max_size, 2, "replica {}: {one:?}", r.name);
        let idle = one.state_counts.expect("counts").idle;
        assert_eq!(
            idle,
            if r.name == x_name { 0 } else { 1 },
            "replica {}",
            r.name
        );
    }

    // An Acquire reaching x, which has no idle container, is forwarded to a
    // peer that has one: the lease is the peer's. Within three calls one
    // reaches x; a lease granted elsewhere is given back, and its
    // container idle again, before the next call.
    let forwarded_by_x = |replicas: &[Replica]| replicas[0].log_lines(ACQUIRE_FORWARDED, "").len();
    let before = forwarded_by_x(&replicas);
    let mut moved = None;
    for _ in 0..6 {
        let lease = raw_acquire(&client, "py")
            .await
            .expect("acquire through the balancer");
        granted.push(lease.clone());
        // The log line is written before the peer is asked; allow the
        // writer a moment.
        let reached_x = tokio::time::timeout(Duration::from_millis(300), async {
            while forwarded_by_x(&replicas) == before {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok();
        if reached_x {
            moved = Some(lease);
            break;
        }
        raw_release(&client, &lease.id).await;
        wait_for(
            "the peers' idle containers",
            Duration::from_secs(15),
            || async {
                let stats = client.stats("py").await.ok()?;
                (stats.state_counts.as_ref()?.idle == 2).then_some(())
            },
        )
        .await;
    }
    let moved = moved.expect("an Acquire reached x within six calls");
    let y_name = owner_of(&moved.id);
    assert_ne!(y_name, x_name, "forwarded to a peer: {moved:?}");
    eprintln!("an Acquire reaching {x_name} was served by {y_name}");

    // A replica killed with its lease: the survivors keep serving, calls
    // for its lease say it ended (LEASE_ENDED, end REPLICA_GONE, naming the
    // replica), and the survivors remove its containers.
    let y = replicas
        .iter()
        .position(|r| r.name == y_name)
        .expect("a replica of ours");
    replicas[y].kill();
    let mut typed = 0;
    for _ in 0..6 {
        let err = client
            .sessions()
            .run(pb::RunRequest {
                lease_id: moved.id.clone(),
                ..shell_run("true", 10.0)
            })
            .await
            .expect_err("its owner is gone");
        let details = err.get_error_details();
        let Some(info) = details.error_info() else {
            // The balancer's own answer: nginx sent the call to the dead
            // replica itself before marking it failed.
            assert!(
                matches!(
                    err.code(),
                    tonic::Code::Unavailable | tonic::Code::Cancelled
                ),
                "{err:?}"
            );
            continue;
        };
        typed += 1;
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert_eq!(info.reason, "LEASE_ENDED", "{err:?}");
        assert_eq!(
            info.metadata.get("end").map(String::as_str),
            Some("LEASE_STATE_REPLICA_GONE")
        );
        assert_eq!(
            info.metadata.get("replica").map(String::as_str),
            Some(y_name)
        );
        assert!(
            err.message().contains(&format!("replica \"{y_name}\"")),
            "{err:?}"
        );
    }
    assert!(typed >= 2, "the survivors answered {typed} of 6 calls");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::KeepAliveRequest {
        lease_id: moved.id.clone(),
        pool: String::new(),
    })
    .await
    .expect("queue");
    let mut answers = client
        .sessions()
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("keepalive stream")
        .into_inner();
    let answer = answers.message().await.expect("an answer").expect("one");
    assert_eq!(
        answer.state,
        pb::LeaseState::ReplicaGone as i32,
        "{answer:?}"
    );
    drop(tx);
    let dead_id = replicas[y].server_id.clone();
    wait_for(
        "the killed replica's containers to be removed by the survivors",
        Duration::from_secs(20),
        || {
            let id = dead_id.clone();
            async move { labelled(&id).await.is_empty().then_some(()) }
        },
    )
    .await;
    for i in 0..2 {
        let lease = raw_acquire(&client, "py")
            .await
            .unwrap_or_else(|e| panic!("a survivor grants lease {i}: {e:?}"));
        assert_ne!(owner_of(&lease.id), y_name, "{lease:?}");
        let out = collect(
            client
                .sessions()
                .run(pb::RunRequest {
                    lease_id: lease.id.clone(),
                    ..shell_run("echo alive", 30.0)
                })
                .await
                .expect("run on a survivor"),
        )
        .await;
        assert!(!out.is_empty());
        granted.push(lease.clone());
        raw_release(&client, &lease.id).await;
    }

    // x drains: told to stop with its lease alive, it reports NOT_SERVING,
    // grants no lease of its own (an Acquire reaching it goes to the other
    // survivor), keeps serving its lease until it is released, then exits.
    let x_index = 0;
    replicas[x_index].signal_term();
    wait_for(
        "x to report NOT_SERVING",
        Duration::from_secs(5),
        || async { (!serving(&replicas[x_index].addr).await).then_some(()) },
    )
    .await;
    let elsewhere = raw_acquire(&at_x, "py").await;
    match &elsewhere {
        Ok(lease) => {
            assert_ne!(
                owner_of(&lease.id),
                x_name,
                "a draining replica granted {lease:?}"
            );
            granted.push(lease.clone());
        }
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert_eq!(
                status
                    .get_error_details()
                    .error_info()
                    .map(|i| i.reason.clone()),
                Some("SHUTTING_DOWN".to_string())
            );
        }
    }
    let out = collect(
        client
            .sessions()
            .run(pb::RunRequest {
                lease_id: held.id.clone(),
                ..shell_run("echo draining", 30.0)
            })
            .await
            .expect("the draining replica's lease still runs"),
    )
    .await;
    assert!(!out.is_empty());
    assert!(replicas[x_index].running(), "x left before its lease ended");
    raw_release(&client, &held.id).await;
    if let Ok(lease) = elsewhere {
        raw_release(&client, &lease.id).await;
    }
    let until = Instant::now() + Duration::from_secs(10);
    while replicas[x_index].running() {
        assert!(Instant::now() < until, "x did not exit once drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // No lease was granted twice, nor a container to two leases at once
    // (those alive together: the held one and the killed replica's).
    let ids: std::collections::BTreeSet<&str> = granted.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        granted.len(),
        "a lease id granted twice: {granted:?}"
    );
    assert_ne!(held.container_id, moved.container_id);

    // Stopped, each replica removes what it made, and the survivors what
    // the killed one left: nothing is left.
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

/// The replica a lease id names.
fn owner_of(lease_id: &str) -> &str {
    lease_id.split_once('.').map_or("", |(r, _)| r)
}

/// A client of one replica, not through the balancer.
async fn client_at(addr: &str, token: &str) -> Client {
    Client::builder(format!("http://{addr}"))
        .token(token)
        .connect()
        .await
        .expect("connect to the replica")
}

/// A lease of `pool` without a session's keepalives, TTL 60 s.
async fn raw_acquire(client: &Client, pool: &str) -> Result<pb::Lease, tonic::Status> {
    let answer = client
        .sessions()
        .acquire(pb::AcquireRequest {
            pool: pool.to_string(),
            ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await?;
    Ok(answer.into_inner().lease.expect("a lease"))
}

async fn raw_release(client: &Client, id: &str) {
    client
        .sessions()
        .release(pb::ReleaseRequest {
            lease_id: id.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("release {id}: {e:?}"));
}

/// One replica's own stats of `pool` (the `sandpool-replica` metadata).
async fn replica_stats(client: &Client, pool: &str, replica: &str) -> pb::PoolStats {
    // The metadata that came before the request's `replica` field, which
    // still works (replica_pools tests the field).
    let mut request = tonic::Request::new(pb::GetPoolStatsRequest {
        name: pool.to_string(),
        replica: String::new(),
    });
    request
        .metadata_mut()
        .insert("sandpool-replica", replica.parse().expect("ascii"));
    client
        .pools()
        .get_pool_stats(request)
        .await
        .unwrap_or_else(|e| panic!("stats of replica {replica}: {e:?}"))
        .into_inner()
        .stats
        .expect("stats")
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

/// `names` started on free ports with one config (made by `config` from
/// the peers' addresses), each serving once `serving` says so.
async fn start_replicas<S, Fut>(
    names: &[&'static str],
    dir: &Path,
    scheme: &str,
    config: impl FnOnce(&str) -> String,
    peer_token: Option<&str>,
    serving: S,
) -> (PathBuf, Vec<Replica>)
where
    S: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let addrs: Vec<String> = names
        .iter()
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers: Vec<String> = names
        .iter()
        .zip(&addrs)
        .map(|(name, addr)| format!("{{ name = \"{name}\", address = \"{scheme}://{addr}\" }}"))
        .collect();
    let path = dir.join("sandpool.toml");
    std::fs::write(&path, config(&peers.join(", "))).expect("write config");
    let replicas: Vec<Replica> = names
        .iter()
        .zip(addrs)
        .map(|(name, addr)| Replica::start(name, addr, &path, dir, peer_token))
        .collect();
    for r in &replicas {
        wait_for(
            &format!("replica {} to serve", r.name),
            Duration::from_secs(40),
            || {
                let up = serving(r.addr.clone());
                async move { up.await.then_some(()) }
            },
        )
        .await;
    }
    (path, replicas)
}

/// A pool that warms nothing: these tests need one container at a time,
/// and a restarted replica serves at once.
fn cold_pool() -> String {
    format!(
        "[[pools]]\nname = \"py\"\nlanguage = \"python\"\nimage = \"{}\"\n\
         min_pool_size = 0\nmax_pool_size = 1\n",
        python_image()
    )
}

/// Asserts that `err` says the lease ended with its replica.
fn assert_replica_gone(err: &tonic::Status) {
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let details = err.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "LEASE_ENDED", "{err:?}");
    assert_eq!(
        info.metadata.get("end").map(String::as_str),
        Some("LEASE_STATE_REPLICA_GONE"),
        "{err:?}"
    );
}

async fn run_error(client: &Client, lease_id: &str) -> tonic::Status {
    client
        .sessions()
        .run(pb::RunRequest {
            lease_id: lease_id.to_string(),
            ..shell_run("true", 10.0)
        })
        .await
        .expect_err("the lease is gone")
}

async fn keepalive_state(client: &Client, lease_id: &str) -> i32 {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::KeepAliveRequest {
        lease_id: lease_id.to_string(),
        pool: String::new(),
    })
    .await
    .expect("queue");
    let mut answers = client
        .sessions()
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("keepalive stream")
        .into_inner();
    answers
        .message()
        .await
        .expect("an answer")
        .expect("one")
        .state
}

/// Stops `replicas` and checks that nothing of theirs (nor of `also`,
/// server ids of processes killed earlier) is left.
async fn stop_all(replicas: &mut [Replica], also: &[String]) {
    for r in replicas.iter_mut() {
        r.stop().await;
    }
    let ids = replicas
        .iter()
        .map(|r| r.server_id.clone())
        .chain(also.iter().cloned());
    for id in ids {
        wait_for(
            &format!("{id}'s containers to be removed"),
            Duration::from_secs(20),
            || {
                let id = id.clone();
                async move { labelled(&id).await.is_empty().then_some(()) }
            },
        )
        .await;
    }
}

/// Two replicas `a` and `b` with a cold pool, clients of each, and a lease
/// of `a`'s.
struct Pair {
    dir: PathBuf,
    config: PathBuf,
    token: String,
    peer_token: String,
    replicas: Vec<Replica>,
    at_a: Client,
    at_b: Client,
    lease: pb::Lease,
}

/// A `Pair` in a new directory named after `prefix`, `cluster` added to
/// their `[cluster]` section.
async fn pair_with_a_lease(prefix: &str, cluster: &str) -> Pair {
    let dir = std::env::temp_dir().join(unique_id(prefix));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let token = format!("{:032x}", rand::random::<u128>());
    let peer_token = format!("{:032x}", rand::random::<u128>());
    let (config, replicas) = start_replicas(
        &["a", "b"],
        &dir,
        "http",
        |peers| {
            format!(
                "shutdown_grace = 5.0\n[auth]\ntokens = [\"{token}\"]\n\
                 [cluster]\n{cluster}peers = [{peers}]\n{}",
                cold_pool()
            )
        },
        Some(&peer_token),
        |addr| async move { serving(&addr).await },
    )
    .await;
    let at_a = client_at(&replicas[0].addr, &token).await;
    let at_b = client_at(&replicas[1].addr, &token).await;
    let lease = raw_acquire(&at_a, "py").await.expect("a lease of a");
    assert_eq!(owner_of(&lease.id), "a", "{lease:?}");
    Pair {
        dir,
        config,
        token,
        peer_token,
        replicas,
        at_a,
        at_b,
        lease,
    }
}

/// A replica that answers nothing at all (its process frozen here; a host
/// powered off or cut off elsewhere) neither refuses connections nor
/// leaves a list: its peers give up on it once it has been silent for
/// `peer_dead_after` (its health check unanswered), and its leases answer
/// LEASE_ENDED / REPLICA_GONE through them from then on, at once. Before
/// that, a call for its lease waits (it may be only slow). Once it answers
/// again, it is alive again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replica_is_presumed_gone_after_peer_dead_after() {
    let _serial = SERIAL.lock().await;
    let Pair {
        dir,
        mut replicas,
        at_a,
        at_b,
        lease,
        ..
    } = pair_with_a_lease("sandpool-silent", "peer_dead_after = 3.0\n").await;

    replicas[0].signal("STOP");
    let frozen = Instant::now();
    // Just frozen: not given up on yet; the call waits for a.
    let early =
        tokio::time::timeout(Duration::from_millis(1500), run_error(&at_b, &lease.id)).await;
    if let Ok(err) = &early {
        assert_ne!(
            err.code(),
            tonic::Code::FailedPrecondition,
            "given up on too soon: {err:?}"
        );
    }
    // Silent for peer_dead_after: gone, and its lease with it, at once.
    let err = wait_for("b to give a up", Duration::from_secs(15), || async {
        match tokio::time::timeout(Duration::from_millis(500), run_error(&at_b, &lease.id)).await {
            Ok(err) if err.code() == tonic::Code::FailedPrecondition => Some(err),
            _ => None,
        }
    })
    .await;
    let after = frozen.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "given up on after {after:?}"
    );
    assert_replica_gone(&err);
    assert!(err.message().contains("answered nothing"), "{err:?}");
    assert_eq!(
        keepalive_state(&at_b, &lease.id).await,
        pb::LeaseState::ReplicaGone as i32
    );

    // It answers again: alive again, and its lease (still in its memory,
    // its TTL not over) is reached again.
    replicas[0].signal("CONT");
    wait_for(
        "a to be reached again through b",
        Duration::from_secs(15),
        || async {
            let run = tokio::time::timeout(
                Duration::from_secs(5),
                at_b.sessions().run(pb::RunRequest {
                    lease_id: lease.id.clone(),
                    ..shell_run("echo back", 10.0)
                }),
            )
            .await;
            matches!(run, Ok(Ok(_))).then_some(())
        },
    )
    .await;
    raw_release(&at_a, &lease.id).await;
    stop_all(&mut replicas, &[]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A replica killed with a lease and restarted under its name on its
/// address (a StatefulSet pod, a systemd restart) does not know the lease,
/// but knows that its predecessor granted it: the lease ended with that
/// process. Asked directly or through a peer, it says so (LEASE_ENDED, end
/// REPLICA_GONE) rather than "no such lease"; a keepalive hears the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_says_its_predecessors_leases_are_gone() {
    let _serial = SERIAL.lock().await;
    let Pair {
        dir,
        config,
        peer_token,
        token,
        mut replicas,
        at_a: _,
        at_b,
        lease,
    } = pair_with_a_lease("sandpool-restart", "").await;

    // Killed: through b, nothing listens at the owner's address.
    let killed = replicas[0].server_id.clone();
    replicas[0].kill();
    let err = run_error(&at_b, &lease.id).await;
    assert_replica_gone(&err);
    assert_eq!(
        err.get_error_details()
            .error_info()
            .and_then(|i| i.metadata.get("replica").cloned())
            .as_deref(),
        Some("a")
    );

    // Restarted under its name, on its address: it answers, and says the
    // lease ended with its predecessor, directly and through b.
    let addr = replicas[0].addr.clone();
    replicas[0] = Replica::start("a", addr, &config, &dir, Some(&peer_token));
    wait_for("a to serve again", Duration::from_secs(40), || async {
        serving(&replicas[0].addr).await.then_some(())
    })
    .await;
    let at_a = client_at(&replicas[0].addr, &token).await;
    for (via, client) in [("a", &at_a), ("b", &at_b)] {
        let err = run_error(client, &lease.id).await;
        assert_replica_gone(&err);
        assert!(
            err.message().contains("replica that granted it"),
            "via {via}: {err:?}"
        );
        assert_eq!(
            keepalive_state(client, &lease.id).await,
            pb::LeaseState::ReplicaGone as i32,
            "via {via}"
        );
    }
    assert!(
        !replicas[1].forwarded(&lease.id).is_empty(),
        "b forwarded the calls to the restarted a"
    );
    // The restarted replica grants new leases, which its peer reaches.
    let fresh = raw_acquire(&at_a, "py").await.expect("a new lease");
    assert_eq!(owner_of(&fresh.id), "a", "{fresh:?}");
    let out = collect(
        at_b.sessions()
            .run(pb::RunRequest {
                lease_id: fresh.id.clone(),
                ..shell_run("echo again", 30.0)
            })
            .await
            .expect("a run on the new lease"),
    )
    .await;
    assert!(!out.is_empty());
    raw_release(&at_a, &fresh.id).await;

    stop_all(&mut replicas, &[killed]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA: `<ca>.pem` and its key.
fn make_ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "1",
            "-subj",
            &format!("/CN={ca}"),
        ],
    );
}

/// A certificate `<name>.pem` (and its key) that `ca` signs, with
/// extensions `ext`.
fn sign(dir: &Path, ca: &str, name: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn read_pem(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).expect("read pem")
}

/// A client over TLS (trusting the replicas' CA) with `token`, presenting
/// the certificate `identity` if named.
async fn tls_client_at(
    dir: &Path,
    addr: &str,
    token: &str,
    identity: Option<&str>,
) -> Result<Client, sandpool_client::Error> {
    let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(read_pem(dir, "peers.pem")),
    );
    if let Some(name) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            read_pem(dir, &format!("{name}.pem")),
            read_pem(dir, &format!("{name}.key")),
        ));
    }
    Client::builder(format!("https://{addr}"))
        .tls_config(tls)
        .token(token)
        .connect()
        .await
}

/// `serving`, over TLS.
async fn serving_tls(addr: &str, dir: &Path) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("https://{addr}")) else {
        return false;
    };
    let Ok(endpoint) =
        endpoint.tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(read_pem(dir, "peers.pem")),
        ))
    else {
        return false;
    };
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| {
            r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        })
}

/// Replicas that prove themselves to each other with client certificates
/// (mutual TLS between peers, no peer token): a call for a peer's lease is
/// forwarded and served; a caller that sets the forwarded-caller header
/// without a peer's certificate is refused, and a certificate of another
/// CA does not get past the TLS handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_prove_themselves_with_client_certificates() {
    let _serial = SERIAL.lock().await;
    let dir = std::env::temp_dir().join(unique_id("sandpool-peer-mtls"));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    make_ca(&dir, "peers");
    // One certificate per replica would do as well; one for both is
    // enough here: it serves the listener and is shown to peers.
    sign(
        &dir,
        "peers",
        "replica",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    make_ca(&dir, "rogue-ca");
    sign(&dir, "rogue-ca", "rogue", "extendedKeyUsage=clientAuth\n");
    let token = format!("{:032x}", rand::random::<u128>());
    let d = dir.display().to_string();
    let (_, mut replicas) = start_replicas(
        &["a", "b"],
        &dir,
        "https",
        |peers| {
            format!(
                "shutdown_grace = 5.0\n[auth]\ntokens = [\"{token}\"]\n\
                 [tls]\ncert = \"{d}/replica.pem\"\nkey = \"{d}/replica.key\"\n\
                 [cluster]\npeer_ca = \"{d}/peers.pem\"\npeer_cert = \"{d}/replica.pem\"\n\
                 peer_key = \"{d}/replica.key\"\npeers = [{peers}]\n{}",
                cold_pool()
            )
        },
        None,
        |addr| {
            let dir = dir.clone();
            async move { serving_tls(&addr, &dir).await }
        },
    )
    .await;
    let at_a = tls_client_at(&dir, &replicas[0].addr, &token, None)
        .await
        .expect("a client of a");
    let at_b = tls_client_at(&dir, &replicas[1].addr, &token, None)
        .await
        .expect("a client of b");
    let lease = raw_acquire(&at_a, "py").await.expect("a lease of a");
    assert_eq!(owner_of(&lease.id), "a", "{lease:?}");

    // Through b: forwarded to a over https, b's certificate its proof.
    let out = collect(
        at_b.sessions()
            .run(pb::RunRequest {
                lease_id: lease.id.clone(),
                ..shell_run("echo forwarded", 30.0)
            })
            .await
            .expect("a forwarded run"),
    )
    .await;
    let stdout: Vec<u8> = out
        .iter()
        .filter_map(|e| match &e.event {
            Some(pb::run_response::Event::Stdout(chunk)) => Some(chunk.data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(String::from_utf8_lossy(&stdout), "forwarded\n");
    assert!(!replicas[1].forwarded(&lease.id).is_empty());

    // The header without a peer's certificate: a client's token is no
    // proof, and neither is no certificate.
    let forged = || {
        let mut request = tonic::Request::new(pb::ReleaseRequest {
            lease_id: lease.id.clone(),
        });
        request.metadata_mut().insert_bin(
            caller::HEADER,
            MetadataValue::from_bytes(&caller::encode(&Identity::local_admin())),
        );
        request
    };
    for client in [&at_a, &at_b] {
        let refused = client
            .sessions()
            .release(forged())
            .await
            .expect_err("a forged caller is refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }
    // A certificate of another CA: the listener checks every certificate
    // shown against the CAs it knows, so the call never reaches a service
    // (the handshake fails: UNAVAILABLE, or CANCELLED when the connection
    // closes under the call).
    match tls_client_at(&dir, &replicas[1].addr, &token, Some("rogue")).await {
        Err(e) => eprintln!("a certificate of another CA: connect failed: {e}"),
        Ok(rogue) => {
            let refused = rogue
                .sessions()
                .release(forged())
                .await
                .expect_err("another CA's certificate is refused");
            eprintln!("a certificate of another CA: {refused:?}");
            assert!(
                matches!(
                    refused.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                        | tonic::Code::PermissionDenied
                ),
                "{refused:?}"
            );
        }
    }
    // The lease lived through it all, and is released through b.
    let out = collect(
        at_a.sessions()
            .run(pb::RunRequest {
                lease_id: lease.id.clone(),
                ..shell_run("true", 30.0)
            })
            .await
            .expect("the lease still runs"),
    )
    .await;
    assert!(!out.is_empty());
    raw_release(&at_b, &lease.id).await;

    stop_all(&mut replicas, &[]).await;
    let _ = std::fs::remove_dir_all(&dir);
}
