//! `sandpool-bench`: how much slower than a raw engine exec is a leased run?
//!
//! Starts a server in-process on 127.0.0.1:0 with a warm pool, then measures,
//! interleaved in one run (these machines are noisy, so only ratios taken in
//! the same run mean much):
//!   (a) the floor: a bollard exec of `python3 -c "print('test')"` on a
//!       running container of the pool (same image, limits and user);
//!   (b) Acquire + Run of the same code + Release through gRPC with the Rust
//!       client, on a settled pool (earlier resets finished);
//!   (b') the same cycles back to back, resets running behind them;
//!   (c) Acquire alone, as the client sees it.
//!
//! Run: `cargo run --release -p sandpool-bench -- --iterations 200`.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use sandpool_bench::{BenchServer, docker, python_pool, raw_exec, settle};
use sandpool_client::{Client, proto as pb};

#[derive(Debug, Parser)]
struct Args {
    /// Measured iterations of each kind.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Warm containers in the pool.
    #[arg(long, default_value_t = 4)]
    pool_size: u32,
    /// Image of the pool.
    #[arg(long, default_value = "sandpool/python:bookworm")]
    image: String,
}

const CODE: &str = "print('test')";

#[derive(Debug, Clone, Copy)]
struct Summary {
    median: Duration,
    p95: Duration,
    p99: Duration,
    min: Duration,
}

fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        min: samples[0],
    }
}

fn ms(d: Duration) -> String {
    format!("{:8.3} ms", d.as_secs_f64() * 1e3)
}

/// The floor: what one exec costs through the engine API alone.
async fn floor_exec(docker: &bollard::Docker, container: &str) -> anyhow::Result<Duration> {
    let argv = ["python3", "-c", CODE].map(String::from);
    raw_exec(docker, container, &argv, &[], b"test\n").await
}

/// One client cycle: Acquire, Run, Release.
async fn cycle(client: &Client) -> anyhow::Result<Duration> {
    sandpool_bench::cycle(client, "bench", CODE, b"test\n").await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = BenchServer::start("main").await?;
    let client = server.client.clone();
    python_pool(&client, "bench", &args.image, args.pool_size).await?;
    let docker = docker().await?;
    // A container of the pool for the floor: same image, limits and user.
    let holder = client.acquire("bench").await?;
    let floor_container = holder.container_id().to_string();
    holder.release().await?;
    settle(&client, "bench", args.pool_size).await?;

    // Warm-up: first execs pay for caches on both paths.
    for _ in 0..20 {
        floor_exec(&docker, &floor_container).await?;
        cycle(&client).await?;
        settle(&client, "bench", args.pool_size).await?;
    }

    // Interleaved, alternating which goes first, so that drift in the
    // machine's load hits both alike; each pair also gives a ratio.
    let (mut floor, mut leased, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.iterations {
        let (a, b) = if i % 2 == 0 {
            let a = floor_exec(&docker, &floor_container).await?;
            (a, cycle(&client).await?)
        } else {
            let b = cycle(&client).await?;
            settle(&client, "bench", args.pool_size)
                .await
                .context("settling")?;
            (floor_exec(&docker, &floor_container).await?, b)
        };
        settle(&client, "bench", args.pool_size)
            .await
            .context("settling")?;
        floor.push(a);
        leased.push(b);
        ratios.push(b.as_secs_f64() / a.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let paired = ratios[ratios.len() / 2];
    let mut back_to_back = Vec::new();
    let started = Instant::now();
    for _ in 0..args.iterations {
        back_to_back.push(cycle(&client).await?);
    }
    let b2b_total = started.elapsed();
    settle(&client, "bench", args.pool_size).await?;
    let mut acquire = Vec::new();
    for _ in 0..args.iterations {
        let started = Instant::now();
        let lease = client
            .sessions()
            .acquire(pb::AcquireRequest {
                pool: "bench".into(),
                ttl: None,
                ..Default::default()
            })
            .await?
            .into_inner()
            .lease
            .context("lease")?;
        acquire.push(started.elapsed());
        client
            .sessions()
            .release(pb::ReleaseRequest { lease_id: lease.id })
            .await?;
        settle(&client, "bench", args.pool_size).await?;
    }
    let server_side = client
        .stats("bench")
        .await?
        .acquire_latency
        .unwrap_or_default();

    let a = summarize(&mut floor);
    let b = summarize(&mut leased);
    let b2 = summarize(&mut back_to_back);
    let c = summarize(&mut acquire);
    println!(
        "sandpool-bench: {} iterations each, pool of {} warm containers, image {}, code {CODE:?}",
        args.iterations, args.pool_size, args.image
    );
    println!(
        "{:<46} {:>11} {:>11} {:>11} {:>11}",
        "", "median", "p95", "p99", "min"
    );
    let row = |name: &str, s: Summary| {
        println!(
            "{name:<46} {} {} {} {}",
            ms(s.median),
            ms(s.p95),
            ms(s.p99),
            ms(s.min)
        );
    };
    row("(a) floor: bollard exec on a running container", a);
    row("(b) Acquire + Run + Release over gRPC", b);
    row("(b') the same, back to back (resets behind)", b2);
    row("(c) Acquire alone over gRPC", c);
    println!(
        "ratio (b)/(a): medians {:.3}x, p95s {:.3}x, median of paired ratios {paired:.3}x    (b')/(a) medians {:.3}x",
        b.median.as_secs_f64() / a.median.as_secs_f64(),
        b.p95.as_secs_f64() / a.p95.as_secs_f64(),
        b2.median.as_secs_f64() / a.median.as_secs_f64()
    );
    println!(
        "back-to-back throughput: {:.1} cycles/s; server-side acquire p50 {} p99 {}",
        args.iterations as f64 / b2b_total.as_secs_f64(),
        ms(server_side
            .p50
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default()),
        ms(server_side
            .p99
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default()),
    );
    server.stop().await
}
