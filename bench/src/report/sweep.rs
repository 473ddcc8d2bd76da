//! Scenario 8: throughput and latency of Acquire + Run (`print('test')`) +
//! Release with C concurrent clients on a pool of P warm containers, for
//! every C and P asked for; each point a fixed number of tasks shared by
//! the clients (a client takes the next task when it is done with one).
//! The floor of a point: the same tasks as raw bollard execs by
//! min(C, P) workers, one container of the same pool each, which is the
//! most parallelism the pool can give; the two alternate which goes first.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures::future::try_join_all;
use sandpool_client::Client;

use super::{
    context::Ctx,
    model::{Series, Sweep, SweepPoint},
};
use crate::{create_ready_pool, cycle, pool_spec, raw_exec, settle};

const CODE: &str = "print('test')";
const OUTPUT: &[u8] = b"test\n";

/// Runs `tasks` tasks on `workers` concurrent workers; `task(worker)` runs
/// one. Returns the wall time and every task's own time.
async fn run_tasks<F, Fut>(
    workers: usize,
    tasks: usize,
    task: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Duration>>,
{
    let next = AtomicUsize::new(0);
    let times = Mutex::new(Vec::with_capacity(tasks));
    let started = Instant::now();
    try_join_all((0..workers).map(|w| {
        let (next, times, task) = (&next, &times, &task);
        async move {
            while next.fetch_add(1, Ordering::Relaxed) < tasks {
                let took = task(w).await?;
                times
                    .lock()
                    .map_err(|_| anyhow::anyhow!("a worker panicked"))?
                    .push(took);
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    let wall = started.elapsed();
    let times = times
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a worker panicked"))?;
    Ok((wall, times))
}

/// The containers of `pool` (size `size`): all leased at once, then given
/// back.
async fn containers_of(client: &Client, pool: &str, size: u32) -> anyhow::Result<Vec<String>> {
    let sessions = try_join_all((0..size).map(|_| client.acquire(pool))).await?;
    let ids = sessions
        .iter()
        .map(|s| s.container_id().to_string())
        .collect();
    for s in sessions {
        s.release().await?;
    }
    settle(client, pool, size).await?;
    Ok(ids)
}

pub async fn measure(ctx: &Ctx) -> anyhow::Result<Sweep> {
    let (path, server) = if ctx.plan.sweep_runner {
        ("resident runner", &ctx.runner)
    } else {
        ("exec", &ctx.exec)
    };
    let client = &server.client;
    let tasks = ctx.plan.sweep_tasks;
    let (mut points, mut errors) = (Vec::new(), Vec::new());
    // A pool size that fails is reported; the others still count.
    for &size in &ctx.plan.sweep_pools {
        let pool = format!("sweep-{size}");
        let measured = async {
            create_ready_pool(client, pool_spec(&pool, "python", &ctx.plan.image, size)).await?;
            pool_points(ctx, client, &pool, size, tasks, &mut points).await
        }
        .await;
        let _ = client.delete_pool(&pool, true).await;
        if let Err(e) = measured {
            errors.push(format!("pool of {size}: {e:#}"));
        }
    }
    if points.is_empty() && !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(Sweep {
        path: path.to_string(),
        tasks_per_point: tasks,
        points,
        errors,
    })
}

async fn pool_points(
    ctx: &Ctx,
    client: &Client,
    pool: &str,
    size: u32,
    tasks: usize,
    points: &mut Vec<SweepPoint>,
) -> anyhow::Result<()> {
    let containers = Arc::new(containers_of(client, pool, size).await?);
    if containers.is_empty() {
        bail!("pool {pool} has no container");
    }
    // Warm-up: one cycle per container and one raw exec each.
    run_tasks(size as usize, size as usize, |_| {
        cycle(client, pool, CODE, OUTPUT)
    })
    .await?;
    settle(client, pool, size).await?;
    for c in containers.iter() {
        floor_task(ctx, c).await?;
    }
    for (i, &clients) in ctx.plan.sweep_clients.iter().enumerate() {
        eprintln!("report:   sweep pool {size}, {clients} clients");
        let floor_workers = clients.min(containers.len());
        let ours = || async {
            settle(client, pool, size).await?;
            run_tasks(clients, tasks, |_| cycle(client, pool, CODE, OUTPUT))
                .await
                .context("sandpool")
        };
        let floor = || async {
            // The resets of the last cycles would kill the floor's execs.
            settle(client, pool, size).await?;
            run_tasks(floor_workers, tasks, |w| floor_task(ctx, &containers[w]))
                .await
                .context("floor")
        };
        let ((wall, times), (floor_wall, floor_times)) = if i % 2 == 0 {
            let a = ours().await?;
            (a, floor().await?)
        } else {
            let b = floor().await?;
            (ours().await?, b)
        };
        points.push(SweepPoint {
            clients,
            pool_size: size,
            tasks,
            seconds: wall.as_secs_f64(),
            tasks_per_second: tasks as f64 / wall.as_secs_f64(),
            latency: Series::of(&times),
            floor_workers,
            floor_seconds: floor_wall.as_secs_f64(),
            floor_tasks_per_second: tasks as f64 / floor_wall.as_secs_f64(),
            floor_latency: Series::of(&floor_times),
        });
    }
    Ok(())
}

async fn floor_task(ctx: &Ctx, container: &str) -> anyhow::Result<Duration> {
    let argv = ["python3", "-c", CODE].map(String::from);
    raw_exec(&ctx.docker, container, &argv, &[], OUTPUT).await
}
