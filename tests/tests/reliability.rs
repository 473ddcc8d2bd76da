//! Nothing leaks, whatever dies, against the real engines: pools tied to
//! their creator's keepalives, containers removed behind the pool's back,
//! and the containers of a server killed with SIGKILL. Each test runs on
//! Docker and on Podman (whose events and markers behave differently).

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use sandpool_client::proto as pb;
use sandpool_tests::{Engine, TestServer, python_image, python_pool, secs, wait_for};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

use sandpool_tests::on_both_engines;

on_both_engines!(
    cases::an_owned_pool_lives_while_its_creator_keeps_it_alive =>
    an_owned_pool_lives_while_its_creator_keeps_it_alive,
    an_owned_pool_lives_while_its_creator_keeps_it_alive_on_podman
);
on_both_engines!(
    cases::a_container_removed_behind_the_pools_back_is_never_handed_out =>
    a_container_removed_behind_the_pools_back_is_never_handed_out,
    a_container_removed_behind_the_pools_back_is_never_handed_out_on_podman
);
on_both_engines!(
    cases::a_killed_servers_containers_are_removed_by_the_next_one =>
    a_killed_servers_containers_are_removed_by_the_next_one,
    a_killed_servers_containers_are_removed_by_the_next_one_on_podman
);
on_both_engines!(
    cases::two_live_servers_leave_each_other_alone =>
    two_live_servers_leave_each_other_alone,
    two_live_servers_leave_each_other_alone_on_podman
);

mod cases {
    use super::*;

    pub async fn an_owned_pool_lives_while_its_creator_keeps_it_alive(engine: Engine) {
        let server = TestServer::start().await;
        let name = "owned";
        let created = server
            .client
            .pools()
            .create_pool(pb::CreatePoolRequest {
                spec: Some(engine.python_pool(name)),
                wait_ready: true,
                owner_ttl: secs(2.0),
            })
            .await
            .expect("create an owned pool")
            .into_inner()
            .pool
            .expect("pool");
        assert_eq!(created.owner, "local");
        let first_deadline = created.owner_expire_time.expect("an owned pool lapses");

        // The creator's keepalives, on the same stream as leases.
        let (tx, rx) = mpsc::channel(4);
        let mut answers = server
            .client
            .sessions()
            .keep_alive(ReceiverStream::new(rx))
            .await
            .expect("keepalive stream")
            .into_inner();
        let keeper = tokio::spawn(async move {
            loop {
                let ask = pb::KeepAliveRequest {
                    pool: "owned".into(),
                    ..Default::default()
                };
                if tx.send(ask).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
        });
        let answer = answers.next().await.expect("an answer").expect("ok");
        assert_eq!(answer.pool, name);
        assert_eq!(answer.state, pb::LeaseState::Active as i32);

        // A lease on it, kept alive by the client as usual.
        let session = server.client.acquire(name).await.expect("acquire");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pool = server
            .client
            .get_pool(name)
            .await
            .expect("still there after 2.5 TTLs");
        let later = pool.owner_expire_time.expect("deadline");
        assert!(
            (later.seconds, later.nanos) > (first_deadline.seconds, first_deadline.nanos),
            "the keepalives move the deadline"
        );
        assert_eq!(
            session
                .run_collect("print(7)")
                .await
                .expect("run")
                .stdout_text(),
            "7\n"
        );

        // The creator goes away: within TTL + 2 s the pool is gone and the lease
        // on it ended with a typed reason.
        keeper.abort();
        drop(answers);
        let stopped = Instant::now();
        wait_for("the lapsed pool to go", Duration::from_secs(4), || async {
            let names: Vec<String> = server
                .client
                .list_pools()
                .await
                .ok()?
                .into_iter()
                .filter_map(|p| p.spec.map(|s| s.name))
                .collect();
            (!names.iter().any(|n| n == name)).then_some(())
        })
        .await;
        println!(
            "{engine:?}: owned pool gone {:?} after its last keepalive",
            stopped.elapsed()
        );
        let ended = server
            .client
            .sessions()
            .release(pb::ReleaseRequest {
                lease_id: session.lease_id().into(),
            })
            .await
            .expect("release answers")
            .into_inner()
            .previous_state;
        assert_eq!(ended, pb::LeaseState::PoolDeleted as i32);
        wait_for(
            "its containers removed",
            Duration::from_secs(10),
            || async {
                engine
                    .containers_of(&server.server_id)
                    .await
                    .is_empty()
                    .then_some(())
            },
        )
        .await;

        // A pool without an owner TTL is permanent; a bad TTL names the field.
        let status = server
            .client
            .pools()
            .create_pool(pb::CreatePoolRequest {
                spec: Some(python_pool("bad-ttl")),
                owner_ttl: secs(0.1),
                ..Default::default()
            })
            .await
            .expect_err("too short");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("owner_ttl"),
            "{}",
            status.message()
        );
        server.stop().await;
    }

    pub async fn a_container_removed_behind_the_pools_back_is_never_handed_out(engine: Engine) {
        let server = TestServer::start().await;
        let mut spec = engine.python_pool("events");
        let config = spec.config.as_mut().expect("config");
        config.min_pool_size = Some(1);
        config.max_pool_size = Some(2);
        // Health checks are far away: only the engine's events can tell.
        config.health_check_interval = secs(600.0);
        server.pool(spec).await;
        let mut refill = Vec::new();
        for round in 0..20 {
            let idle = wait_for("an idle container", Duration::from_secs(10), || async {
                let stats = server.stats("events").await;
                let idle = stats.state_counts.expect("counts").idle;
                let ids = engine.containers_of(&server.server_id).await;
                (idle >= 1 && ids.len() == 1).then(|| ids[0].clone())
            })
            .await;
            engine.cli(&["rm", "-f", &idle]);
            let removed = Instant::now();
            let session = server
                .client
                .acquire("events")
                .await
                .unwrap_or_else(|e| panic!("round {round}: acquire: {e}"));
            assert_ne!(
                session.container_id(),
                idle,
                "round {round}: handed out a dead container"
            );
            let out = session
                .run_collect("print('alive')")
                .await
                .unwrap_or_else(|e| panic!("round {round}: run: {e}"));
            assert_eq!(out.stdout_text(), "alive\n");
            session.release().await.expect("release");
            wait_for(
                "the pool back to its size",
                Duration::from_secs(2),
                || async {
                    let c = server.stats("events").await.state_counts.expect("counts");
                    (c.idle + c.resetting >= 1 && c.initializing == 0).then_some(())
                },
            )
            .await;
            refill.push(removed.elapsed());
        }
        refill.sort();
        println!(
            "{engine:?}: removal to refilled pool: median {:?}, max {:?}",
            refill[10], refill[19]
        );
        let counters = server.stats("events").await.counters.expect("counters");
        assert!(
            counters.health_failures >= 20,
            "each death was noticed: {counters:?}"
        );
        server.stop().await;
    }

    /// A server process of our own, for killing.
    struct ServerProcess {
        child: Child,
        id: String,
        addr: String,
        _dir: tempdir::Dir,
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn spawn_server(engine: Engine, id: &str, pool: &str) -> ServerProcess {
        let dir = std::env::temp_dir().join(format!("sandpool-{id}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("sandpool.toml");
        std::fs::write(
        &config,
        format!(
            "shutdown_grace = 1.0\n[[pools]]\nname = \"{pool}\"\nlanguage = \"python\"\nimage = \"{}\"\nbackend = \"{}\"\nmin_pool_size = 2\nmax_pool_size = 2\n",
            python_image(),
            engine.name()
        ),
    )
    .expect("config");
        let (child, addr) = sandpool_tests::spawn_server(&config, id);
        ServerProcess {
            child,
            id: id.to_string(),
            addr,
            _dir: tempdir::Dir(dir),
        }
    }

    async fn warm(server: &ServerProcess, pool: &str) {
        let addr = format!("http://{}", server.addr);
        wait_for("the server's pool to warm", Duration::from_secs(60), || {
            let addr = addr.clone();
            async move {
                let client = sandpool_client::Client::connect(addr).await.ok()?;
                let stats = client.stats(pool).await.ok()?;
                (stats.state_counts?.idle == 2).then_some(())
            }
        })
        .await;
    }

    pub async fn a_killed_servers_containers_are_removed_by_the_next_one(engine: Engine) {
        let dead_id = format!("doomed-{:08x}", rand::random::<u32>());
        let mut doomed = spawn_server(engine, &dead_id, "doomed");
        warm(&doomed, "doomed").await;
        assert_eq!(engine.containers_of(&dead_id).await.len(), 2);

        // A live neighbour: its containers must survive everything below.
        let neighbour = TestServer::start().await;
        neighbour.pool(engine.python_pool("neighbour")).await;
        let before = engine.containers_of(&neighbour.server_id).await;
        assert!(!before.is_empty());

        doomed.child.kill().expect("SIGKILL");
        let _ = doomed.child.wait();
        let killed = Instant::now();
        // A server started under another id finds the dead one's containers.
        let successor = TestServer::start().await;
        successor.pool(engine.python_pool("successor")).await;
        wait_for(
            "the dead instance's containers to go",
            Duration::from_secs(10),
            || async { engine.labelled(&dead_id).await.is_empty().then_some(()) },
        )
        .await;
        println!(
            "{engine:?}: dead instance cleaned up {:?} after SIGKILL",
            killed.elapsed()
        );
        let mut after = engine.containers_of(&neighbour.server_id).await;
        let mut before = before;
        after.sort();
        before.sort();
        assert_eq!(after, before, "a live instance's containers are left alone");
        assert!(!engine.containers_of(&successor.server_id).await.is_empty());
        successor.stop().await;
        neighbour.stop().await;
    }

    pub async fn two_live_servers_leave_each_other_alone(engine: Engine) {
        let one = spawn_server(
            engine,
            &format!("live-a-{:08x}", rand::random::<u32>()),
            "a",
        );
        let two = spawn_server(
            engine,
            &format!("live-b-{:08x}", rand::random::<u32>()),
            "b",
        );
        warm(&one, "a").await;
        warm(&two, "b").await;
        let (a, b) = (
            engine.containers_of(&one.id).await,
            engine.containers_of(&two.id).await,
        );
        // A third server's start sweeps the engine: neither of them is dead.
        let third = TestServer::start().await;
        third.pool(engine.python_pool("c")).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(engine.containers_of(&one.id).await, a);
        assert_eq!(engine.containers_of(&two.id).await, b);
        third.stop().await;
        for mut server in [one, two] {
            // SIGTERM: a clean stop removes everything of its own.
            let _ = Command::new("kill")
                .arg(server.child.id().to_string())
                .status();
            let _ = server.child.wait();
            assert!(
                engine.labelled(&server.id).await.is_empty(),
                "{} cleaned up",
                server.id
            );
        }
    }
}
