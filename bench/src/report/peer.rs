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
    /// Per task: when it asked for a container and when it got one (ms).
    #[serde(default)]
    grants_ms: Vec<(f64, f64)>,
}

/// A task that got its container this much after asking waited for it.
const WAITED_MS: f64 = 5.0;
/// Two asks (and two grants) closer than this have no order worth judging:
/// the driver's threads take turns on Python's lock.
const ORDER_MARGIN_MS: f64 = 5.0;

/// FIFO fairness of one round: of the pairs of tasks that both waited and
/// asked clearly one after the other, how many the pool served the other
/// way round (the later one clearly first). Returns (pairs, inversions).
pub fn fifo_inversions(grants: &[(f64, f64)]) -> (usize, usize) {
    let waited: Vec<(f64, f64)> = grants
        .iter()
        .copied()
        .filter(|(asked, got)| got - asked > WAITED_MS)
        .collect();
    let (mut pairs, mut inversions) = (0, 0);
    for a in &waited {
        for b in &waited {
            if a.0 + ORDER_MARGIN_MS < b.0 {
                pairs += 1;
                if a.1 > b.1 + ORDER_MARGIN_MS {
                    inversions += 1;
                }
            }
        }
    }
    (pairs, inversions)
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
                let (fifo_pairs, fifo_inversions) = i
                    .concurrent
                    .iter()
                    .map(|r| fifo_inversions(&r.grants_ms))
                    .fold((0, 0), |(p, n), (a, b)| (p + a, n + b));
                PeerImpl {
                    name: i.name,
                    hello: Series::of_ms(&i.hello_ms),
                    numpy: Series::of_ms(&i.numpy_ms),
                    concurrent_tasks_per_second: (TASKS * seconds.len()) as f64 / total,
                    concurrent_seconds: seconds,
                    concurrent_latency: Series::of_ms(&latencies),
                    fifo_pairs,
                    fifo_inversions,
                }
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::fifo_inversions;

    #[test]
    fn waiters_served_in_order_have_no_inversion() {
        // Three asked at once and got a container at once; three waited,
        // asked 0, 10, 20 ms in, and were served in that order.
        let grants = [
            (0.0, 1.0),
            (0.5, 1.2),
            (0.7, 1.4),
            (0.0, 100.0),
            (10.0, 150.0),
            (20.0, 200.0),
        ];
        assert_eq!(fifo_inversions(&grants), (3, 0));
    }

    #[test]
    fn a_later_waiter_served_first_is_an_inversion() {
        let grants = [(0.0, 300.0), (10.0, 150.0), (20.0, 200.0)];
        assert_eq!(fifo_inversions(&grants), (3, 2));
    }

    #[test]
    fn asks_or_grants_too_close_to_order_are_not_judged() {
        let grants = [(0.0, 102.0), (3.0, 100.0), (20.0, 99.0)];
        // (0, 20) and (3, 20) are pairs; 20 got it 3 ms before 0 (within
        // the margin: no inversion) and 1 ms before 3.
        assert_eq!(fifo_inversions(&grants), (2, 0));
    }
}
