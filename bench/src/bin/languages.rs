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

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use sandpool_bench::{BenchServer, docker, median, raw_exec, settle};
use sandpool_client::{Client, Session, proto as pb};

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

/// Language, image, hello world (prints exactly "hello\n").
const HELLO: &[(&str, &str, &str)] = &[
    ("javascript", "node", "console.log('hello')"),
    (
        "typescript",
        "node",
        "const greeting: string = 'hello';\nconsole.log(greeting);",
    ),
    (
        "go",
        "go",
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello\") }\n",
    ),
    (
        "java",
        "java",
        "public class Main {\n  public static void main(String[] args) {\n    System.out.println(\"hello\");\n  }\n}\n",
    ),
    (
        "cpp",
        "cpp",
        "#include <iostream>\nint main() { std::cout << \"hello\" << std::endl; }\n",
    ),
    (
        "c",
        "cpp",
        "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
    ),
    ("rust", "rust", "fn main() {\n    println!(\"hello\");\n}\n"),
    ("ruby", "ruby", "puts 'hello'"),
    ("r", "r", "cat('hello\\n')"),
    ("bash", "bash", "echo hello"),
    ("python", "python", "print('hello')"),
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One leased run of `code`, from the request to the exit event.
async fn leased_run(session: &Session, code: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = session.run_collect(code).await?;
    let took = started.elapsed();
    if out.stdout_text() != "hello\n" || out.exit_code() != 0 {
        bail!(
            "run printed {:?}, exit {}: {}",
            out.stdout_text(),
            out.exit_code(),
            out.stderr_text()
        );
    }
    Ok(took)
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
    (language, image, code): (&str, &str, &str),
) -> anyhow::Result<Samples> {
    let pool = client
        .create_pool(
            pb::PoolSpec {
                name: language.into(),
                language: language.into(),
                image: format!("sandpool/{image}:bookworm"),
                config: Some(pb::PoolConfig {
                    min_pool_size: Some(1),
                    max_pool_size: Some(1),
                    ..Default::default()
                }),
                ..Default::default()
            },
            true,
        )
        .await?;
    if pool.phase != pb::PoolPhase::Ready as i32 {
        bail!("pool {language} is not ready: {}", pool.status_message);
    }
    let handler = sandpool_server::lang::lookup(language).context("unknown language")?;
    let plan = handler.plan(code.as_bytes(), false);
    if !plan.stdin_prefix.is_empty() {
        bail!("{language}: hello world should travel as an argument");
    }
    let env: Vec<String> = plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect();

    // One lease to find the container and warm the page cache of both paths.
    let session = client.acquire(language).await?;
    let container = session.container_id().to_string();
    for _ in 0..2 {
        leased_run(&session, code).await?;
        raw_exec(docker, &container, &plan.argv, &env, b"hello\n").await?;
    }
    session.release().await?;

    let mut s = Samples::default();
    for i in 0..args.iterations {
        settle(client, language, 1).await?;
        let ours_first = i % 2 == 0;
        if !ours_first {
            s.first_raw
                .push(raw_exec(docker, &container, &plan.argv, &env, b"hello\n").await?);
        }
        let session = client.acquire(language).await?;
        if session.container_id() != container {
            bail!("{language}: the pool of one changed its container");
        }
        if ours_first {
            s.first.push(leased_run(&session, code).await?);
        }
        for j in 0..args.steady {
            // Alternate which goes first, so that drift hits both alike.
            if j % 2 == 0 {
                s.steady_raw
                    .push(raw_exec(docker, &container, &plan.argv, &env, b"hello\n").await?);
                s.steady.push(leased_run(&session, code).await?);
            } else {
                s.steady.push(leased_run(&session, code).await?);
                s.steady_raw
                    .push(raw_exec(docker, &container, &plan.argv, &env, b"hello\n").await?);
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
        .filter(|(l, ..)| {
            if args.languages.is_empty() {
                *l != "python"
            } else {
                args.languages.iter().any(|a| a == l)
            }
        })
        .copied()
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
    for &entry in &chosen {
        match measure(&client, &docker, &args, entry).await {
            Ok(mut s) => {
                let (f, fr) = (median(&mut s.first), median(&mut s.first_raw));
                let (st, sr) = (median(&mut s.steady), median(&mut s.steady_raw));
                println!(
                    "{:<11} {:>9.1} {:>9.1} {:>6.2}x   {:>9.1} {:>9.1} {:>6.2}x   {:>11.2}x",
                    entry.0,
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
                println!("{:<11} failed: {e:#}", entry.0);
                result = Err(e);
            }
        }
    }
    server.stop().await?;
    result
}
