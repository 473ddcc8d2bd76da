//! Scenario 11, the peer column: llm-sandbox's container pooling against
//! sandpool's llm-sandbox layer (`sandpool.llm_sandbox`, on this run's two
//! servers), the same workloads through the same calls, driven by
//! bench/peer/peer_driver.py in a venv the bench makes and installs both
//! into (llm-sandbox from the package index, sandpool's client from
//! clients/python, editable). The driver prints its samples as JSON.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::{
    context::{Ctx, remove_labelled},
    model::{Peer, PeerImpl, Series},
};

pub const TASKS: usize = 40;
pub const THREADS: usize = 10;
pub const POOL_SIZE: usize = 5;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs `command`, failing with its output when it fails.
fn run(command: &mut Command, what: &str) -> anyhow::Result<Vec<u8>> {
    let out = command
        .output()
        .with_context(|| format!("{what}: cannot start {command:?}"))?;
    if !out.status.success() {
        let tail = |b: &[u8]| {
            let text = String::from_utf8_lossy(b);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(25)..].join("\n")
        };
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            tail(&out.stdout),
            tail(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The venv's python, made and filled on first use (a later run finds both
/// packages importable and installs nothing).
fn prepare_venv(venv: &Path) -> anyhow::Result<PathBuf> {
    let python = venv.join("bin").join("python");
    if !python.exists() {
        eprintln!("report:   making the peer venv {}", venv.display());
        run(
            Command::new("python3").arg("-m").arg("venv").arg(venv),
            "python3 -m venv",
        )?;
    }
    let ready = Command::new(&python)
        .args([
            "-c",
            "import llm_sandbox.pool, docker, sandpool.llm_sandbox",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!("report:   installing llm-sandbox[docker] and clients/python into it");
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "llm-sandbox[docker]",
                    "-e",
                ])
                .arg(workspace().join("clients").join("python")),
            "pip install",
        )?;
    }
    Ok(python)
}

#[derive(Deserialize)]
struct DriverOutput {
    llm_sandbox_version: String,
    implementations: Vec<DriverImpl>,
}

#[derive(Deserialize)]
struct DriverImpl {
    name: String,
    hello_ms: Vec<f64>,
    numpy_ms: Vec<f64>,
    concurrent: Vec<ConcurrentRun>,
}

#[derive(Deserialize)]
struct ConcurrentRun {
    seconds: f64,
    latencies_ms: Vec<f64>,
}

pub async fn measure(ctx: &Ctx) -> anyhow::Result<Peer> {
    let venv = ctx.plan.peer_venv.clone();
    let python = tokio::task::spawn_blocking(move || prepare_venv(&venv)).await??;
    let label = format!("sandpool.bench.peer={}", std::process::id());
    let mut command = Command::new(python);
    command
        .arg(
            workspace()
                .join("bench")
                .join("peer")
                .join("peer_driver.py"),
        )
        .args(["--image", &ctx.plan.image])
        .args(["--iterations", &ctx.plan.peer_iterations.to_string()])
        .args(["--tasks", &TASKS.to_string()])
        .args(["--threads", &THREADS.to_string()])
        .args(["--pool-size", &POOL_SIZE.to_string()])
        .args(["--label", &label])
        .args([
            "--sandpool",
            &format!("sandpool exec path={}", ctx.exec.addr),
        ])
        .args([
            "--sandpool",
            &format!("sandpool resident runner={}", ctx.runner.addr),
        ]);
    eprintln!("report:   running the peer driver");
    let output = tokio::task::spawn_blocking(move || run(&mut command, "the peer driver")).await?;
    // llm-sandbox removes its pool's containers on close; whatever a failure
    // left goes here.
    let left = remove_labelled(&ctx.docker, &label).await;
    let output = output?;
    let left = left.context("removing llm-sandbox's containers")?;
    if left > 0 {
        eprintln!("report:   removed {left} containers llm-sandbox left");
    }
    let parsed: DriverOutput =
        serde_json::from_slice(&output).context("reading the peer driver's JSON")?;
    Ok(Peer {
        llm_sandbox_version: parsed.llm_sandbox_version,
        tasks: TASKS,
        threads: THREADS,
        pool_size: POOL_SIZE,
        implementations: parsed
            .implementations
            .into_iter()
            .map(|i| {
                let seconds: Vec<f64> = i.concurrent.iter().map(|r| r.seconds).collect();
                let latencies: Vec<f64> = i
                    .concurrent
                    .iter()
                    .flat_map(|r| r.latencies_ms.iter().copied())
                    .collect();
                let total: f64 = seconds.iter().sum();
                PeerImpl {
                    name: i.name,
                    hello: Series::of_ms(&i.hello_ms),
                    numpy: Series::of_ms(&i.numpy_ms),
                    concurrent_tasks_per_second: (TASKS * seconds.len()) as f64 / total,
                    concurrent_seconds: seconds,
                    concurrent_latency: Series::of_ms(&latencies),
                }
            })
            .collect(),
    })
}
