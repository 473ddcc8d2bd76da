//! `runner`: the resident runner against the exec path and the floor, in
//! one run. Two servers in-process, one with `resident_runner` and one
//! without, each with a warm Python pool; interleaved (the order rotating,
//! so that drift in the machine's load hits all alike):
//!   (a) the floor: a bollard exec of `python3 -c "print('test')"` on a
//!       running container of the exec server's pool;
//!   (b) Acquire + Run + Release over gRPC on the exec path;
//!   (r) the same on the runner path.
//! Then, on each path, how long the first stdout byte takes to reach the
//! client after the program wrote it (the program prints the wall clock,
//! which the container shares with the host).
//!
//! Run: `cargo run --release -p sandpool-bench --bin runner -- --iterations 100`.

use std::time::Duration;

use clap::Parser;
use sandpool_bench::{
    BenchServer, docker, first_byte_lag, median, python_pool, raw_exec, settle, stats::p95,
};
use sandpool_client::Client;

#[derive(Debug, Parser)]
struct Args {
    /// Measured iterations of each kind.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Warm containers in each pool.
    #[arg(long, default_value_t = 2)]
    pool_size: u32,
    /// Image of the pools.
    #[arg(long, default_value = "sandpool/python:bookworm")]
    image: String,
}

const CODE: &str = "print('test')";

/// Acquire + Run + Release on a settled pool.
async fn cycle(client: &Client, pool_size: u32) -> anyhow::Result<Duration> {
    let took = sandpool_bench::cycle(client, "bench", CODE, b"test\n").await?;
    settle(client, "bench", pool_size).await?;
    Ok(took)
}

fn ms(d: Duration) -> String {
    format!("{:8.3} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exec_server = BenchServer::start_with("exec", false).await?;
    let runner_server = BenchServer::start_with("runner", true).await?;
    let (exec, runner) = (exec_server.client.clone(), runner_server.client.clone());
    python_pool(&exec, "bench", &args.image, args.pool_size).await?;
    python_pool(&runner, "bench", &args.image, args.pool_size).await?;
    let docker = docker().await?;
    let holder = exec.acquire("bench").await?;
    let floor_container = holder.container_id().to_string();
    holder.release().await?;
    settle(&exec, "bench", args.pool_size).await?;
    let argv = ["python3", "-c", CODE].map(String::from);

    for _ in 0..10 {
        raw_exec(&docker, &floor_container, &argv, &[], b"test\n").await?;
        cycle(&exec, args.pool_size).await?;
        cycle(&runner, args.pool_size).await?;
    }
    let (mut floor, mut on_exec, mut on_runner) = (Vec::new(), Vec::new(), Vec::new());
    let mut paired = Vec::new();
    for i in 0..args.iterations {
        let (mut a, mut b, mut r) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for step in 0..3 {
            match (i + step) % 3 {
                0 => a = raw_exec(&docker, &floor_container, &argv, &[], b"test\n").await?,
                1 => b = cycle(&exec, args.pool_size).await?,
                _ => r = cycle(&runner, args.pool_size).await?,
            }
        }
        paired.push(r.as_secs_f64() / a.as_secs_f64());
        floor.push(a);
        on_exec.push(b);
        on_runner.push(r);
    }
    paired.sort_by(f64::total_cmp);
    let (fa, fb, fr) = (
        p95(&mut floor.clone()),
        p95(&mut on_exec.clone()),
        p95(&mut on_runner.clone()),
    );
    let (ma, mb, mr) = (
        median(&mut floor),
        median(&mut on_exec),
        median(&mut on_runner),
    );
    println!(
        "runner bench: {} iterations each, pools of {} warm containers, image {}, code {CODE:?}",
        args.iterations, args.pool_size, args.image
    );
    println!("{:<52} {:>11} {:>11}", "", "median", "p95");
    println!(
        "{:<52} {} {}",
        "(a) floor: bollard exec on a running container",
        ms(ma),
        ms(fa)
    );
    println!(
        "{:<52} {} {}",
        "(b) Acquire + Run + Release, exec path",
        ms(mb),
        ms(fb)
    );
    println!(
        "{:<52} {} {}",
        "(r) Acquire + Run + Release, resident runner",
        ms(mr),
        ms(fr)
    );
    let ratio = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64();
    println!(
        "(r)/(a): median {:.3}x, p95 {:.3}x, median of paired ratios {:.3}x; (b)/(a) median {:.3}x; (r)/(b) median {:.3}x",
        ratio(mr, ma),
        ratio(fr, fa),
        paired[paired.len() / 2],
        ratio(mb, ma),
        ratio(mr, mb),
    );
    let (mut exec_lag, mut runner_lag) = (Vec::new(), Vec::new());
    for _ in 0..args.iterations.min(30) {
        exec_lag.push(first_byte_lag(&exec, "bench").await?);
        settle(&exec, "bench", args.pool_size).await?;
        runner_lag.push(first_byte_lag(&runner, "bench").await?);
        settle(&runner, "bench", args.pool_size).await?;
    }
    println!(
        "{:<52} {} {}",
        "first stdout byte after the program wrote it, exec",
        ms(median(&mut exec_lag.clone())),
        ms(p95(&mut exec_lag))
    );
    println!(
        "{:<52} {} {}",
        "the same, resident runner",
        ms(median(&mut runner_lag.clone())),
        ms(p95(&mut runner_lag))
    );
    runner_server.stop().await?;
    exec_server.stop().await
}
