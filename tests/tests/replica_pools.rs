//! Pools across replicas: three server processes with a static peer list
//! behind a real nginx. A pool made at run time lives on the replica whose
//! CreatePool made it, and every call naming it, through any replica,
//! reaches it; a config pool's stats are summed over the replicas in
//! GetPool, GetPoolStats, ListPools and WatchPoolStats, unless one replica
//! is asked for.
//!
//! Needs nginx (scripts/lb-up.sh installs it; scripts/test.sh runs it).

use std::time::Duration;

use sandpool_client::{Client, proto as pb};
use sandpool_tests::{
    labelled, python_image, replicas::ReplicaSet, unique_id, wait_for, workspace_binary,
};
use tonic::Code;
use tonic_types::StatusExt;

async fn client_of(url: String, token: &str) -> Client {
    Client::builder(url)
        .token(token)
        .connect()
        .await
        .expect("connect")
}

fn spec(name: &str) -> pb::PoolSpec {
    pb::PoolSpec {
        name: name.to_string(),
        language: "python".into(),
        image: python_image(),
        config: Some(pb::PoolConfig {
            min_pool_size: Some(1),
            max_pool_size: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn get_pool(client: &Client, name: &str) -> Result<pb::Pool, tonic::Status> {
    Ok(client
        .pools()
        .get_pool(pb::GetPoolRequest {
            name: name.to_string(),
        })
        .await?
        .into_inner()
        .pool
        .expect("a pool"))
}

async fn stats(client: &Client, name: &str, replica: &str) -> Result<pb::PoolStats, tonic::Status> {
    Ok(client
        .pools()
        .get_pool_stats(pb::GetPoolStatsRequest {
            name: name.to_string(),
            replica: replica.to_string(),
        })
        .await?
        .into_inner()
        .stats
        .expect("stats"))
}

async fn list(client: &Client) -> Vec<pb::Pool> {
    client
        .pools()
        .list_pools(pb::ListPoolsRequest {})
        .await
        .expect("list pools")
        .into_inner()
        .pools
}

fn named<'a>(pools: &'a [pb::Pool], name: &str) -> Option<&'a pb::Pool> {
    pools
        .iter()
        .find(|p| p.spec.as_ref().is_some_and(|s| s.name == name))
}

/// The first message of a watch of `name` (through `client`) for which
/// `done` holds, within 30 s.
async fn watch_until(
    client: &Client,
    name: &str,
    replica: &str,
    done: impl Fn(&pb::PoolStats) -> bool,
) -> pb::PoolStats {
    let mut stream = client
        .pools()
        .watch_pool_stats(pb::WatchPoolStatsRequest {
            name: name.to_string(),
            replica: replica.to_string(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = stream.message().await.expect("a watch message") {
            let stats = message.stats.expect("stats");
            if done(&stats) {
                return Some(stats);
            }
            last = Some(stats);
        }
        None
    })
    .await;
    match found {
        Ok(Some(stats)) => stats,
        other => panic!("the watch of {name} never showed it: {other:?}, last {last:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_are_reached_through_any_replica() {
    let pools = format!(
        "[[pools]]\nname = \"py\"\nlanguage = \"python\"\nimage = \"{}\"\n\
         min_pool_size = 1\nmax_pool_size = 2\n",
        python_image()
    );
    let set = ReplicaSet::start(
        &workspace_binary("sandpool-server"),
        &["a", "b", "c"],
        &pools,
    )
    .await;
    let token = set.token.clone();
    let direct: Vec<Client> = {
        let mut clients = Vec::new();
        for r in &set.replicas {
            clients.push(client_of(format!("http://{}", r.addr), &token).await);
        }
        clients
    };
    let (a, b, c) = (&direct[0], &direct[1], &direct[2]);
    let lb = client_of(set.url(), &token).await;

    // A config pool's stats are summed: one warm container per replica.
    let summed = wait_for(
        "every replica's py to be warm",
        Duration::from_secs(60),
        || async {
            stats(b, "py", "")
                .await
                .ok()
                .filter(|s| s.state_counts.as_ref().is_some_and(|c| c.idle == 3))
        },
    )
    .await;
    assert_eq!((summed.total_size, summed.max_size), (3, 6), "{summed:?}");
    // One replica's own, by the request's field, whichever replica answers.
    let own = stats(b, "py", "c").await.expect("c's own stats");
    assert_eq!(own.total_size, 1, "{own:?}");
    let own = stats(c, "py", "c")
        .await
        .expect("c's own stats, asked of c");
    assert_eq!(own.total_size, 1, "{own:?}");
    let err = stats(b, "py", "zz").await.expect_err("no replica zz");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("\"zz\"") && err.message().contains("replicas: b, a, c"),
        "{err:?}"
    );
    // GetPool and ListPools sum them too; the spec's sizes stay each
    // replica's own share.
    let pool = get_pool(a, "py").await.expect("get py");
    assert_eq!(
        pool.stats.as_ref().map(|s| s.total_size),
        Some(3),
        "{pool:?}"
    );
    let config = pool.spec.as_ref().and_then(|s| s.config.as_ref());
    assert_eq!(config.and_then(|c| c.min_pool_size), Some(1), "{pool:?}");
    assert!(
        pool.replica.is_empty(),
        "a config pool lives everywhere: {pool:?}"
    );
    let listed = list(c).await;
    let py = named(&listed, "py").expect("py listed");
    assert_eq!(py.stats.as_ref().map(|s| s.total_size), Some(3), "{py:?}");
    // WatchPoolStats sums them: through the balancer, a lease anywhere
    // shows as one busy container of three.
    let lease = lb
        .sessions()
        .acquire(pb::AcquireRequest {
            pool: "py".into(),
            ..Default::default()
        })
        .await
        .expect("acquire py")
        .into_inner()
        .lease
        .expect("a lease");
    let busy = watch_until(&lb, "py", "", |s| {
        s.state_counts
            .as_ref()
            .is_some_and(|c| c.busy == 1 && c.idle + c.busy + c.resetting + c.initializing >= 3)
    })
    .await;
    assert_eq!(busy.total_size, 3, "{busy:?}");
    lb.sessions()
        .release(pb::ReleaseRequest {
            lease_id: lease.id.clone(),
        })
        .await
        .expect("release");

    // A pool made at run time on a: it says so, and every replica finds it.
    let name = unique_id("rt").replace('_', "-");
    let made = a
        .pools()
        .create_pool(pb::CreatePoolRequest {
            spec: Some(spec(&name)),
            wait_ready: true,
            ..Default::default()
        })
        .await
        .expect("create on a")
        .into_inner()
        .pool
        .expect("the pool");
    assert_eq!(made.replica, "a", "{made:?}");
    for (client, via) in [(b, "b"), (c, "c"), (&lb, "the balancer")] {
        let pool = get_pool(client, &name)
            .await
            .unwrap_or_else(|e| panic!("GetPool {name} through {via}: {e:?}"));
        assert_eq!(pool.replica, "a", "through {via}: {pool:?}");
        let s = stats(client, &name, "")
            .await
            .unwrap_or_else(|e| panic!("GetPoolStats {name} through {via}: {e:?}"));
        assert_eq!(
            s.total_size, 1,
            "its own stats, not a sum, through {via}: {s:?}"
        );
        let listed = list(client).await;
        let pool = named(&listed, &name)
            .unwrap_or_else(|| panic!("ListPools through {via} lacks {name}: {listed:?}"));
        assert_eq!(pool.replica, "a");
        assert!(named(&listed, "py").is_some());
        assert_eq!(
            listed
                .iter()
                .filter(|p| p.spec.as_ref().is_some_and(|s| s.name == name))
                .count(),
            1,
            "listed once through {via}"
        );
    }
    // Its name is taken on every replica.
    let err = b
        .pools()
        .create_pool(pb::CreatePoolRequest {
            spec: Some(spec(&name)),
            ..Default::default()
        })
        .await
        .expect_err("the name is a's");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let info = err
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "POOL_EXISTS");
    assert_eq!(info.metadata.get("replica").map(String::as_str), Some("a"));

    // Acquire through c: the lease is a's; its runs go there through c,
    // and a watch through b shows it busy.
    let session = c
        .acquire(&name)
        .await
        .expect("acquire the runtime pool through c");
    assert!(
        session.lease_id().starts_with("a."),
        "{}",
        session.lease_id()
    );
    let busy = watch_until(b, &name, "", |s| {
        s.state_counts.as_ref().is_some_and(|c| c.busy == 1)
    })
    .await;
    assert_eq!(busy.total_size, 1, "{busy:?}");
    let out = session.run_collect("print(6 * 7)").await.expect("run");
    assert_eq!(out.stdout_text().trim(), "42");
    session.release().await.expect("release");

    // Deleted through c, it is gone everywhere, and its name free again.
    c.pools()
        .delete_pool(pb::DeletePoolRequest {
            name: name.clone(),
            wait: true,
        })
        .await
        .expect("delete through c");
    for (client, via) in [(a, "a"), (b, "b"), (c, "c")] {
        let err = get_pool(client, &name).await.expect_err("deleted");
        assert_eq!(err.code(), Code::NotFound, "through {via}: {err:?}");
        assert!(named(&list(client).await, &name).is_none(), "through {via}");
    }
    let again = b
        .pools()
        .create_pool(pb::CreatePoolRequest {
            spec: Some(spec(&name)),
            ..Default::default()
        })
        .await
        .expect("the name is free again")
        .into_inner()
        .pool
        .expect("the pool");
    assert_eq!(again.replica, "b");
    let pool = get_pool(a, &name).await.expect("a finds it on b now");
    assert_eq!(pool.replica, "b", "a's memory of the old home is gone");
    b.pools()
        .delete_pool(pb::DeletePoolRequest {
            name: name.clone(),
            wait: true,
        })
        .await
        .expect("delete on b");

    let ids: Vec<String> = set.replicas.iter().map(|r| r.server_id.clone()).collect();
    set.stop().await;
    for id in ids {
        assert!(
            labelled(&id).await.is_empty(),
            "containers of {id} left behind"
        );
    }
}
