//! `languages`: per language, what a leased hello world costs against the
//! raw engine doing the same work.
//!
//! Starts a server in-process on 127.0.0.1:0 and, one language at a time, a
//! warm pool of one container. Measures, interleaved on that container:
//!   (i)   the first run on a fresh lease, right after the reset;
//!   (ii)  steady-state runs of the same hello world on the same lease;
//!   (iii) the floor for each: a bollard exec, as uid 1000 on the same
//!         container, of exactly what sandpool executes for that code (the
//!         language plan's argv and environment: bootstrap, or the
//!         compile-and-run shell line), first after a reset and steady.
//!
//! Run times are taken from the Run call to its exit event (client side);
//! Acquire is not included (see `sandpool-bench` for that). What sandpool
//! adds on top of the floor is all of its per-run work: gRPC, the lease
//! check, the run marker, the artifact report around the program. Even iterations
//! give the lease's first run, odd ones the floor's first exec after a reset.
//!
//! Run: `cargo run --release -p sandpool-bench --bin languages [-- --iterations 10]`.

use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use sandpool_bench::{
    BenchServer, create_ready_pool, docker,
    hello::{HELLO, HELLO_OUTPUT, Hello},
    median, pool_spec, raw_exec, settle,
    stats::ms,
};
use sandpool_client::Client;

#[derive(Debug, Parser)]
struct Args {
    /// Leases per language (half give the first-run samples of sandpool,
    /// half those of the floor).
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Steady-state pairs (sandpool run, raw exec) per lease.
    #[arg(long, default_value_t = 3)]
    steady: usize,
    /// Languages to measure (default: all but python).
    #[arg(long, value_delimiter = ',')]
    languages: Vec<String>,
}

#[derive(Default)]
struct Samples {
    first: Vec<Duration>,
    first_raw: Vec<Duration>,
    steady: Vec<Duration>,
    steady_raw: Vec<Duration>,
}

async fn measure(
    client: &Client,
    docker: &bollard::Docker,
    args: &Args,
    hello: &Hello,
) -> anyhow::Result<Samples> {
    let language = hello.language;
    create_ready_pool(client, pool_spec(language, language, &hello.image_ref(), 1)).await?;
    let (argv, env) = hello.floor_command()?;

    // One lease to find the container and warm the page cache of both paths.
    let session = client.acquire(language).await?;
    let container = session.container_id().to_string();
    for _ in 0..2 {
        hello.leased_run(&session).await?;
        raw_exec(docker, &container, &argv, &env, HELLO_OUTPUT).await?;
    }
    session.release().await?;
    let raw = || raw_exec(docker, &container, &argv, &env, HELLO_OUTPUT);

    let mut s = Samples::default();
    for i in 0..args.iterations {
        settle(client, language, 1).await?;
        let ours_first = i % 2 == 0;
        if !ours_first {
            s.first_raw.push(raw().await?);
        }
        let session = client.acquire(language).await?;
        if session.container_id() != container {
            bail!("{language}: the pool of one changed its container");
        }
        if ours_first {
            s.first.push(hello.leased_run(&session).await?);
        }
        for j in 0..args.steady {
            // Alternate which goes first, so that drift hits both alike.
            if j % 2 == 0 {
                s.steady_raw.push(raw().await?);
                s.steady.push(hello.leased_run(&session).await?);
            } else {
                s.steady.push(hello.leased_run(&session).await?);
                s.steady_raw.push(raw().await?);
            }
        }
        session.release().await?;
    }
    client.delete_pool(language, true).await?;
    Ok(s)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = BenchServer::start("languages").await?;
    let client = server.client.clone();
    let docker = docker().await?;

    let chosen: Vec<_> = HELLO
        .iter()
        .filter(|h| {
            if args.languages.is_empty() {
                h.language != "python"
            } else {
                args.languages.iter().any(|a| a == h.language)
            }
        })
        .collect();
    if chosen.is_empty() {
        bail!("no known language in {:?}", args.languages);
    }
    println!(
        "languages: hello world, median ms over {} leases ({} first runs each way) and {} steady pairs; floor = bollard exec of the same argv as uid 1000 on the same container",
        args.iterations,
        args.iterations / 2,
        args.iterations * args.steady
    );
    println!(
        "{:<11} {:>9} {:>9} {:>7}   {:>9} {:>9} {:>7}   {:>12}",
        "language", "first", "floor", "ratio", "steady", "floor", "ratio", "first/steady"
    );
    let mut result = Ok(());
    for entry in chosen {
        match measure(&client, &docker, &args, entry).await {
            Ok(mut s) => {
                let (f, fr) = (median(&mut s.first), median(&mut s.first_raw));
                let (st, sr) = (median(&mut s.steady), median(&mut s.steady_raw));
                println!(
                    "{:<11} {:>9.1} {:>9.1} {:>6.2}x   {:>9.1} {:>9.1} {:>6.2}x   {:>11.2}x",
                    entry.language,
                    ms(f),
                    ms(fr),
                    ms(f) / ms(fr),
                    ms(st),
                    ms(sr),
                    ms(st) / ms(sr),
                    ms(f) / ms(st)
                );
            }
            Err(e) => {
                println!("{:<11} failed: {e:#}", entry.language);
                result = Err(e);
            }
        }
    }
    server.stop().await?;
    result
}
