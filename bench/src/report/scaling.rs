//! Scenario 9: idle pools of a few and of many containers (10 and 200 by
//! default), one after the other on the runner server (the default: idle
//! health checks ask the runner and the warden, no engine exec): how long each takes
//! to prewarm, what it costs the server's memory (VmRSS of this process:
//! the server runs in it, beside an idle bench client), and whether
//! Acquire slows down with the pool's size (p99 of Acquire alone, client
//! side, on a settled pool; and the server's own p99).
//!
//! The CPU bound of a prewarm: one container's creation (a pool of one
//! warming) costs some CPU time; n of them cannot take less than n x that
//! / cores of wall time, however well the server overlaps them. That time
//! is the whole machine's busy time over the window, less what the idle
//! machine spends in as long (measured just before): a creation's CPU is
//! also the container's live processes (its init, the warden, the runner
//! host, the pre-started interpreter) and the kernel's own threads, which
//! the per-process count of `engine_cpu` misses (it is reported beside).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sandpool_client::{Client, proto as pb};

use super::{
    context::{Ctx, containers_labelled},
    engine_cpu::{self, CpuMark, rss_kib},
    model::{CpuUse, ScalePoint, Scaling, Series},
};
use crate::{pool_spec, settle};

/// What warming a pool took.
struct Warmed {
    took: Duration,
    cpu: CpuUse,
    curve: Vec<(f64, u32, u64)>,
    create_failures: u64,
    first_failure: Option<String>,
}

/// How long a prewarm may take before the scenario gives up.
const PREWARM_LIMIT: Duration = Duration::from_secs(900);

/// Creates a pool of `size` and waits until all of it is idle, sampling
/// (seconds since the start, idle containers, RSS) meanwhile. Not CreatePool's
/// wait_ready: that answers at the first failed creation, while the pool
/// retries failed creations in the background, and a burst of many creates
/// on a small machine can see some fail; the prewarm is over when all are
/// idle, and the failures are counted.
async fn warm(ctx: &Ctx, name: &str, size: u32) -> anyhow::Result<Warmed> {
    let client = &ctx.runner.client;
    let mark = CpuMark::now();
    let started = Instant::now();
    client
        .create_pool(pool_spec(name, "python", &ctx.plan.image, size), false)
        .await
        .with_context(|| format!("creating pool {name}"))?;
    let mut curve = vec![(0.0, 0, rss_kib())];
    let mut first_failure = None;
    let stats = loop {
        let stats = client.stats(name).await?;
        let idle = stats.state_counts.as_ref().map_or(0, |c| c.idle);
        curve.push((started.elapsed().as_secs_f64(), idle, rss_kib()));
        if first_failure.is_none()
            && stats
                .counters
                .as_ref()
                .is_some_and(|c| c.create_failures > 0)
        {
            first_failure = Some(client.get_pool(name).await?.status_message);
        }
        if idle >= size {
            break stats;
        }
        if started.elapsed() > PREWARM_LIMIT {
            bail!(
                "pool {name}: {idle} of {size} idle after {} s ({})",
                PREWARM_LIMIT.as_secs(),
                first_failure.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed();
    let containers = containers_labelled(
        &ctx.docker,
        &[
            format!("sandpool.server={}", ctx.runner.server_id),
            format!("sandpool.pool={name}"),
        ],
    )
    .await?;
    Ok(Warmed {
        took,
        cpu: mark.spent(&containers),
        curve,
        create_failures: stats.counters.map_or(0, |c| c.create_failures),
        first_failure,
    })
}

/// Acquire alone, as the client sees it, `n` times on a settled pool.
async fn acquires(
    client: &Client,
    pool: &str,
    size: u32,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        settle(client, pool, size).await?;
        let started = Instant::now();
        let lease = client
            .sessions()
            .acquire(pb::AcquireRequest {
                pool: pool.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .lease
            .context("Acquire answered without a lease")?;
        samples.push(started.elapsed());
        client
            .sessions()
            .release(pb::ReleaseRequest { lease_id: lease.id })
            .await?;
    }
    settle(client, pool, size).await?;
    Ok(samples)
}

async fn point(ctx: &Ctx, size: u32) -> anyhow::Result<ScalePoint> {
    let client = &ctx.runner.client;
    let name = format!("scale-{size}");
    let rss_before_kib = rss_kib();
    let result = async {
        let warmed = warm(ctx, &name, size).await?;
        let rss_warm_kib = rss_kib();
        let samples = acquires(client, &name, size, ctx.plan.acquires).await?;
        let server_p99 = client
            .stats(&name)
            .await?
            .acquire_latency
            .and_then(|l| l.p99)
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        anyhow::Ok(ScalePoint {
            containers: size,
            prewarm_seconds: warmed.took.as_secs_f64(),
            create_failures: warmed.create_failures,
            first_failure: warmed.first_failure,
            acquire: Series::of(&samples),
            server_acquire_p99_ms: server_p99.as_secs_f64() * 1e3,
            rss_before_kib,
            rss_warm_kib,
            cpu: warmed.cpu,
            curve: warmed.curve,
        })
    }
    .await;
    let deleted = client
        .delete_pool(&name, true)
        .await
        .with_context(|| format!("deleting pool {name}"));
    // The measurement's own error says more than the deletion's.
    let point = result.with_context(|| format!("pool of {size}"))?;
    deleted?;
    Ok(point)
}

pub async fn measure(ctx: &Ctx) -> anyhow::Result<Scaling> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let idle_busy_cores = idle_machine().await;
    // One container's creation, alone.
    let one = warm(ctx, "scale-one", 1).await;
    ctx.runner.client.delete_pool("scale-one", true).await?;
    let one = one?;
    let mut points = Vec::new();
    for size in [ctx.plan.scale_small, ctx.plan.scale_max] {
        if points.iter().any(|p: &ScalePoint| p.containers == size) {
            continue;
        }
        eprintln!("report:   scaling to {size} containers");
        points.push(point(ctx, size).await?);
    }
    let n = ctx.plan.scale_small;
    let one_seconds = one.took.as_secs_f64();
    let one_cpu = one.cpu.machine.map_or(one.cpu.total, |busy| {
        (busy - idle_busy_cores * one_seconds).max(one.cpu.total)
    });
    let bound = |cpu: f64| f64::from(n) * cpu / cores as f64;
    Ok(Scaling {
        points,
        one_create_seconds: one_seconds,
        one_create_cpu: one.cpu,
        cores,
        idle_busy_cores,
        one_create_cpu_seconds: one_cpu,
        cpu_bound_seconds: bound(one_cpu),
        cpu_bound_counted_seconds: bound(one.cpu.total),
        cpu_bound_containers: n,
    })
}

/// Cores' worth of CPU the machine spends idle (the engine's own
/// housekeeping, this process's idle runtime...), over a second.
async fn idle_machine() -> f64 {
    const WINDOW: Duration = Duration::from_secs(1);
    let before = engine_cpu::machine_busy_seconds();
    tokio::time::sleep(WINDOW).await;
    before
        .zip(engine_cpu::machine_busy_seconds())
        .map_or(0.0, |(then, now)| {
            (now - then).max(0.0) / WINDOW.as_secs_f64()
        })
}
