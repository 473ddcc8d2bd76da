//! Many clients on one pool: no container is ever leased twice at once, and
//! waiting acquirers are served first come, first served.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use sandpool_tests::{TestServer, python_pool, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_runs_from_ten_clients_on_a_pool_of_five() {
    let server = TestServer::start().await;
    let mut spec = python_pool("busy");
    let config = spec.config.as_mut().expect("config");
    config.max_pool_size = Some(5);
    config.min_pool_size = Some(5);
    server.pool(spec).await;

    let in_use: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..10 {
        // Ten separate connections, as ten processes would have.
        let client = sandpool_client::Client::connect(format!("http://{}", server.addr))
            .await
            .expect("connect");
        let in_use = Arc::clone(&in_use);
        clients.push(tokio::spawn(async move {
            let mut containers = Vec::new();
            for r in 0..4 {
                let session = client.acquire("busy").await.expect("acquire");
                let container = session.container_id().to_string();
                assert!(
                    in_use.lock().expect("lock").insert(container.clone()),
                    "container {container} leased twice at once"
                );
                let code = format!("import time\ntime.sleep(0.05)\nprint({c} * 100 + {r})");
                let out = session.run_collect(code).await.expect("run");
                assert_eq!(out.stdout_text(), format!("{}\n", c * 100 + r));
                assert_eq!(out.exit_code(), 0);
                in_use.lock().expect("lock").remove(&container);
                session.release().await.expect("release");
                containers.push(container);
            }
            containers
        }));
    }
    let mut used = HashSet::new();
    for client in clients {
        used.extend(client.await.expect("client task"));
    }
    assert!(
        used.len() <= 5,
        "the pool grew past max_pool_size: {} containers",
        used.len()
    );
    let stats = server.stats("busy").await;
    let counters = stats.counters.expect("counters");
    assert_eq!(counters.acquisitions, 40);
    assert_eq!(counters.runs, 40);
    assert_eq!(counters.containers_created, 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_in_arrival_order() {
    let server = TestServer::start().await;
    let mut spec = python_pool("fifo");
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    server.pool(spec).await;
    let held = server.client.acquire("fifo").await.expect("acquire");

    let order: Arc<Mutex<Vec<usize>>> = Arc::default();
    let mut waiters = Vec::new();
    for i in 0..5 {
        let client = server.client.clone();
        let order = Arc::clone(&order);
        waiters.push(tokio::spawn(async move {
            let session = client.acquire("fifo").await.expect("acquire");
            order.lock().expect("lock").push(i);
            session.release().await.expect("release");
        }));
        // The next waiter arrives only once this one is queued.
        wait_for("the waiter to queue", Duration::from_secs(10), || async {
            (server.stats("fifo").await.waiting == i as u32 + 1).then_some(())
        })
        .await;
    }
    held.release().await.expect("release");
    for w in waiters {
        w.await.expect("waiter");
    }
    assert_eq!(*order.lock().expect("lock"), vec![0, 1, 2, 3, 4]);
    let stats = server.stats("fifo").await;
    assert_eq!(stats.waiting, 0);
    assert_eq!(stats.counters.expect("c").waits, 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_loses_no_container() {
    let server = TestServer::start().await;
    let mut spec = python_pool("giveup");
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    server.pool(spec).await;
    let held = server.client.acquire("giveup").await.expect("acquire");
    // Callers that time out or vanish while queued.
    for _ in 0..3 {
        let options =
            sandpool_client::AcquireOptions::new("giveup").wait(Duration::from_millis(200));
        assert!(server.client.acquire_with(options).await.is_err());
    }
    let client = server.client.clone();
    let abandoned = tokio::spawn(async move { client.acquire("giveup").await });
    wait_for("a queued waiter", Duration::from_secs(5), || async {
        (server.stats("giveup").await.waiting == 1).then_some(())
    })
    .await;
    abandoned.abort();
    wait_for(
        "the abandoned waiter to leave the queue",
        Duration::from_secs(5),
        || async { (server.stats("giveup").await.waiting == 0).then_some(()) },
    )
    .await;
    held.release().await.expect("release");
    // The one container is still there for the next caller.
    let again = server
        .client
        .acquire("giveup")
        .await
        .expect("acquire after give-ups");
    let stats = server.stats("giveup").await;
    assert_eq!(stats.total_size, 1);
    assert_eq!(stats.active_leases, 1);
    again.release().await.expect("release");
    server.stop().await;
}
