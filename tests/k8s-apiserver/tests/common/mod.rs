//! Shared by the integration tests: the sandbox image, polling with a
//! deadline, and the leftover check against the Docker engine.

#![allow(dead_code)]

use std::{future::Future, process::Command, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::PostParams,
    runtime::wait::{await_condition, conditions},
};
use sandpool_k8s_testserver::TestServer;
use serde_json::json;

/// A small local sandbox image (built by scripts/build-images.sh; never
/// pulled).
pub const IMAGE: &str = "sandpool/bash:bookworm";

/// Polls `check` until it returns Some, or panics after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Containers (any state) that carry every one of `labels`, by the docker
/// CLI: what an operator's leftover check sees.
pub fn docker_ps(labels: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.args(["ps", "-aq"]);
    for label in labels {
        cmd.args(["--filter", &format!("label={label}")]);
    }
    let out = cmd.output().expect("docker ps");
    assert!(out.status.success(), "docker ps: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

pub fn require_image() {
    let ok = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "image {IMAGE} is missing: build it with scripts/build-images.sh"
    );
}

/// A kube client for the server (no credentials, namespace "default").
pub fn client(server: &TestServer) -> Client {
    let config = kube::Config::new(server.url().parse().unwrap());
    Client::try_from(config).unwrap()
}

/// A sandbox pod as sandpool's backend makes one: non-root, read-only
/// root, no capabilities, limits, a size-limited in-memory emptyDir.
pub fn pod(app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"generateName": format!("{app}-"), "labels": {"app": app, "sandpool.server": "test"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true},
            "containers": [{
                "name": "sandbox",
                "image": IMAGE,
                "command": ["sleep", "infinity"],
                "workingDir": "/sandbox",
                "securityContext": {
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}},
                "volumeMounts": [{"name": "sandbox", "mountPath": "/sandbox"}],
            }],
            "volumes": [{"name": "sandbox", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
        },
    }))
    .unwrap()
}

/// Creates `pod(app)` and waits (through a watch) until it runs.
pub async fn create_running(api: &Api<Pod>, app: &str) -> String {
    let created = api.create(&PostParams::default(), &pod(app)).await.unwrap();
    let name = created.metadata.name.unwrap();
    let running = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(api.clone(), &name, conditions::is_pod_running()),
    )
    .await
    .expect("pod Running within 60s")
    .unwrap();
    assert!(running.is_some());
    name
}
