//! Shared by the integration tests: the sandbox image, polling with a
//! deadline, and the leftover check against the Docker engine.

#![allow(dead_code)]

use std::{future::Future, process::Command, time::Duration};

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
