//! What the sandpool Kubernetes backend will use, through kube 5: pods
//! created and watched to Running, exec with stdin and the exit status from
//! `take_status()`, output streamed as it is produced, a watcher that sees
//! a pod removed behind its back, Leases with optimistic concurrency, list
//! by label, and 410 Gone for a watch from a compacted resourceVersion.

mod common;

use std::time::{Duration, Instant};

use common::{client, create_running, docker_ps, eventually, pod, require_image};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Status,
};
use kube::{
    Api,
    api::{AttachParams, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams},
    runtime::{WatchStreamExt, watcher},
};
use sandpool_k8s_testserver::{Config, LABEL_INSTANCE, LABEL_POD, serve};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn exit_code(status: &Status) -> Option<String> {
    if status.status.as_deref() == Some("Success") {
        return Some("0".into());
    }
    status
        .details
        .as_ref()?
        .causes
        .as_ref()?
        .iter()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))?
        .message
        .clone()
}

#[tokio::test]
async fn pods_exec_and_limits() {
    require_image();
    let server = serve(Config::default()).await.unwrap();
    let instance = format!("{LABEL_INSTANCE}={}", server.instance_id());
    let api: Api<Pod> = Api::namespaced(client(&server), "kube-test");
    let started = Instant::now();
    let name = create_running(&api, "exec").await;
    eprintln!("pod create to Running: {:?}", started.elapsed());

    // pods/status answers too.
    let status = api.get_status(&name).await.unwrap().status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.qos_class.as_deref(), Some("Guaranteed"));

    // stdin in, stdout and stderr apart, exit status through take_status.
    let params = AttachParams::default()
        .stdin(true)
        .stdout(true)
        .stderr(true);
    let mut proc = api
        .exec(&name, ["sh", "-c", "cat; echo oops >&2; exit 7"], &params)
        .await
        .unwrap();
    let mut stdin = proc.stdin().unwrap();
    stdin.write_all(b"ping\n").await.unwrap();
    // kube sends the v5 close signal when stdin is shut down.
    stdin.shutdown().await.unwrap();
    let mut out = String::new();
    let mut err = String::new();
    let (mut o, mut e) = (proc.stdout().unwrap(), proc.stderr().unwrap());
    let status = proc.take_status().unwrap();
    let (r1, r2) = tokio::join!(o.read_to_string(&mut out), e.read_to_string(&mut err));
    r1.unwrap();
    r2.unwrap();
    let status = status.await.expect("a status");
    assert_eq!(out, "ping\n");
    assert_eq!(err, "oops\n");
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    assert_eq!(exit_code(&status).as_deref(), Some("7"));
    proc.join().await.unwrap();

    // The pod's security context and limits are the container's.
    let params = AttachParams::default().stdout(true).stderr(true);
    let script = "id -u; id -g; cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
                  touch /sandbox/ok && echo sandbox-writable; touch /nope 2>/dev/null || echo root-read-only; \
                  grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; pwd";
    let mut proc = api
        .exec(&name, ["sh", "-c", script], &params)
        .await
        .unwrap();
    let mut out = String::new();
    let status = proc.take_status().unwrap();
    proc.stdout()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(exit_code(&status.await.unwrap()).as_deref(), Some("0"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["1000", "1000", "268435456"], "{out}");
    assert!(
        out.contains("sandbox-writable") && out.contains("root-read-only"),
        "{out}"
    );
    assert!(
        out.contains("CapEff:\t0000000000000000") && out.contains("NoNewPrivs:\t1"),
        "{out}"
    );
    assert!(out.ends_with("/sandbox\n"), "{out}");

    // Output arrives as it is produced, not at the end.
    let mut proc = api
        .exec(
            &name,
            ["sh", "-c", "echo first; sleep 3; echo second"],
            &params,
        )
        .await
        .unwrap();
    let mut stdout = proc.stdout().unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 6];
    stdout.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"first\n");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "first line held back {:?}",
        t0.elapsed()
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "second\n");

    // The round trip of a trivial exec (API server hop + Docker exec).
    let t0 = Instant::now();
    for _ in 0..10 {
        let mut proc = api.exec(&name, ["true"], &params).await.unwrap();
        let status = proc.take_status().unwrap();
        assert_eq!(exit_code(&status.await.unwrap()).as_deref(), Some("0"));
    }
    eprintln!("exec round trip: {:?} per exec", t0.elapsed() / 10);

    // Pod labels are on the container (sandpool's leftover check).
    assert_eq!(
        docker_ps(&["k8s-testserver.label.sandpool.server=test", &instance]).len(),
        1
    );
    api.delete(&name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(api.get_opt(&name).await.unwrap().is_none());
    assert!(docker_ps(&[&instance]).is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn watcher_sees_a_pod_removed_behind_its_back() {
    require_image();
    let server = serve(Config::default()).await.unwrap();
    let instance = format!("{LABEL_INSTANCE}={}", server.instance_id());
    let api: Api<Pod> = Api::namespaced(client(&server), "watch-test");
    let name = create_running(&api, "watched").await;

    // list by label selector
    let listed = api
        .list(&ListParams::default().labels("app=watched"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(
        api.list(&ListParams::default().labels("app=other"))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A watcher (list, then watch from its resourceVersion, with bookmarks).
    let mut events = watcher(
        api.clone(),
        watcher::Config::default().labels("app=watched"),
    )
    .default_backoff()
    .boxed();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !matches!(
            events.try_next().await.unwrap(),
            Some(watcher::Event::InitDone)
        ) {}
    })
    .await
    .expect("the watcher's initial list");

    // The streaming-list strategy (sendInitialEvents, then a bookmark that
    // ends the initial events) reaches the same state.
    let mut streamed = watcher(
        api.clone(),
        watcher::Config::default()
            .labels("app=watched")
            .streaming_lists(),
    )
    .boxed();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match streamed.try_next().await.unwrap() {
                Some(watcher::Event::InitApply(p)) => seen.extend(p.metadata.name),
                Some(watcher::Event::InitDone) => break,
                _ => {}
            }
        }
    })
    .await
    .expect("the streaming list's initial events");
    assert_eq!(seen, std::slice::from_ref(&name));

    // `docker rm -f` the pod's container, as an operator or a crash would.
    let container = docker_ps(&[&format!("{LABEL_POD}=watch-test/{name}")]);
    assert_eq!(container.len(), 1);
    let rm = std::process::Command::new("docker")
        .args(["rm", "-f", &container[0]])
        .output()
        .unwrap();
    assert!(rm.status.success());
    let deleted = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.try_next().await.unwrap() {
                Some(watcher::Event::Delete(p)) => break p,
                _ => continue,
            }
        }
    })
    .await
    .expect("a Delete event within 20s");
    assert_eq!(deleted.metadata.name.as_deref(), Some(name.as_str()));
    assert!(api.get_opt(&name).await.unwrap().is_none());

    server.shutdown().await;
    assert!(docker_ps(&[&instance]).is_empty());
}

fn lease(name: &str, holder: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"sandpool.io/instance-lease": "true"}},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": "2026-01-01T00:00:00.000000Z"},
    }))
    .unwrap()
}

#[tokio::test]
async fn leases_conflicts_and_gone() {
    // A short history, so that a watch can fall off its end.
    let server = serve(Config {
        history_limit: 8,
        ..Default::default()
    })
    .await
    .unwrap();
    let api: Api<Lease> = Api::namespaced(client(&server), "lease-test");
    let created = api
        .create(&PostParams::default(), &lease("server-a", "a"))
        .await
        .unwrap();
    let first_rv = created.metadata.resource_version.clone().unwrap();
    let dup = api
        .create(&PostParams::default(), &lease("server-a", "a"))
        .await
        .unwrap_err();
    assert!(matches!(&dup, kube::Error::Api(s) if s.code == 409 && s.is_already_exists()));

    // Replace with the current resourceVersion: ok; with a stale one: 409.
    let mut renewed = created.clone();
    renewed.spec.as_mut().unwrap().renew_time = None;
    renewed.spec.as_mut().unwrap().holder_identity = Some("a2".into());
    let replaced = api
        .replace("server-a", &PostParams::default(), &renewed)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(first_rv.as_str())
    );
    assert_eq!(
        replaced.spec.unwrap().holder_identity.as_deref(),
        Some("a2")
    );
    let stale = api
        .replace("server-a", &PostParams::default(), &created)
        .await
        .unwrap_err();
    assert!(
        matches!(&stale, kube::Error::Api(s) if s.code == 409 && s.is_conflict()),
        "{stale:?}"
    );

    // List by label selector.
    api.create(&PostParams::default(), &{
        let mut other = lease("other", "b");
        other.metadata.labels = None;
        other
    })
    .await
    .unwrap();
    let listed = api
        .list(&ListParams::default().labels("sandpool.io/instance-lease=true"))
        .await
        .unwrap();
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|l| l.metadata.name.clone())
        .collect();
    assert_eq!(names, ["server-a"]);

    // Churn past the kept history: a watch from the first version is Gone.
    for i in 0..10 {
        let mut current = api.get("other").await.unwrap();
        current.spec.as_mut().unwrap().lease_duration_seconds = Some(i);
        api.replace("other", &PostParams::default(), &current)
            .await
            .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default(), &first_rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }

    // A watch from now sees the change, and a bookmark.
    let now = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default(), &now)
        .await
        .unwrap()
        .boxed();
    api.delete("other", &DeleteParams::default()).await.unwrap();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Deleted(l)) => assert_eq!(l.metadata.name.as_deref(), Some("other")),
        other => panic!("expected DELETED, got {other:?}"),
    }
    server.shutdown().await;
}

/// The phase and the container's waiting reason or exit code of a pod.
async fn state_of(api: &Api<Pod>, name: &str) -> (String, String) {
    let pod = api.get(name).await.unwrap();
    let status = pod.status.unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    let state = status
        .container_statuses
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state)
        .unwrap_or_default();
    let detail = match (state.waiting, state.terminated) {
        (Some(w), _) => w.reason.unwrap_or_default(),
        (_, Some(t)) => format!("exit {}", t.exit_code),
        _ => status.reason.unwrap_or_default(),
    };
    (phase, detail)
}

#[tokio::test]
async fn pods_that_cannot_run() {
    require_image();
    let server = serve(Config::default()).await.unwrap();
    let instance = format!("{LABEL_INSTANCE}={}", server.instance_id());
    let api: Api<Pod> = Api::namespaced(client(&server), "failing");

    // Refused at once: host namespaces, a second container.
    let mut p = pod("refused");
    p.spec.as_mut().unwrap().host_network = Some(true);
    let err = api.create(&PostParams::default(), &p).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.is_invalid()),
        "{err:?}"
    );
    let mut p = pod("refused");
    let second = p.spec.as_ref().unwrap().containers[0].clone();
    p.spec.as_mut().unwrap().containers.push(second);
    let err = api.create(&PostParams::default(), &p).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );

    let create = |mutate: fn(&mut Pod)| {
        let api = api.clone();
        async move {
            let mut p = pod("failing");
            mutate(&mut p);
            let created = api.create(&PostParams::default(), &p).await.unwrap();
            created.metadata.name.unwrap()
        }
    };
    let no_image = create(|p| {
        p.spec.as_mut().unwrap().containers[0].image = Some("sandpool/absent:never".into())
    })
    .await;
    let no_runtime =
        create(|p| p.spec.as_mut().unwrap().runtime_class_name = Some("no-such-runtime".into()))
            .await;
    let exits = create(|p| {
        p.spec.as_mut().unwrap().containers[0].command =
            Some(vec!["sh".into(), "-c".into(), "exit 4".into()])
    })
    .await;
    let root = create(|p| {
        p.spec.as_mut().unwrap().security_context =
            Some(serde_json::from_value(json!({"runAsUser": 0, "runAsNonRoot": true})).unwrap())
    })
    .await;
    for (name, want) in [
        (&no_image, ("Pending", "ImagePullBackOff")),
        (&no_runtime, ("Failed", "RuntimeClassNotFound")),
        (&exits, ("Failed", "exit 4")),
        (&root, ("Pending", "CreateContainerConfigError")),
    ] {
        eventually(
            &format!("{name} in {want:?}"),
            Duration::from_secs(30),
            || async {
                let (phase, detail) = state_of(&api, name).await;
                (phase == want.0 && detail == want.1).then_some(())
            },
        )
        .await;
    }

    // Delete them all by label (deletecollection): pods and containers go.
    api.delete_collection(
        &DeleteParams::default().grace_period(0),
        &ListParams::default().labels("app=failing"),
    )
    .await
    .unwrap();
    eventually("pods gone", Duration::from_secs(20), || async {
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(docker_ps(&[&instance]).is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_while_pods_start_leaves_nothing() {
    require_image();
    for drop_it in [false, true] {
        let server = serve(Config::default()).await.unwrap();
        let instance = format!("{LABEL_INSTANCE}={}", server.instance_id());
        let api: Api<Pod> = Api::namespaced(client(&server), "racing");
        for _ in 0..3 {
            api.create(&PostParams::default(), &pod("racing"))
                .await
                .unwrap();
        }
        if drop_it {
            drop(server);
        } else {
            server.shutdown().await;
        }
        assert!(
            docker_ps(&[&instance]).is_empty(),
            "left behind (drop: {drop_it})"
        );
    }
}
