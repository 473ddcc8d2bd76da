//! `interactive`: the echo round trip of an interactive run against the
//! same through a raw `docker exec -i` (bollard), in one run. Both talk to
//! a `cat` in a warm container of the same pool: the client writes a line
//! and waits until the line comes back. Interleaved in rounds, so that
//! drift in the machine's load hits both alike:
//!   (a) the floor: one bollard exec of `cat` with stdin attached;
//!   (b) one Interact call running `cat`, through sandpool over gRPC.
//!
//! Run: `cargo run --release -p sandpool-bench --bin interactive -- --rounds 10 --per-round 50`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bollard::{
    exec::{StartExecOptions, StartExecResults},
    models::ExecConfig,
};
use clap::Parser;
use futures::StreamExt;
use sandpool_bench::{BenchServer, docker, median, python_pool, stats::p95};
use sandpool_client::{Interaction, RunEvent, proto as pb};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Parser)]
struct Args {
    /// Rounds (each: one floor session, one sandpool session).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Round trips per session.
    #[arg(long, default_value_t = 50)]
    per_round: usize,
    /// Image of the pool.
    #[arg(long, default_value = "sandpool/python:bookworm")]
    image: String,
}

fn ms(d: Duration) -> String {
    format!("{:8.3} ms", d.as_secs_f64() * 1e3)
}

/// Round trips through a bollard exec of `cat` with stdin attached.
async fn floor(
    docker: &bollard::Docker,
    container: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(vec!["cat".to_string()]),
        user: Some("1000:1000".into()),
        working_dir: Some("/sandbox".into()),
        ..Default::default()
    };
    let exec = docker.create_exec(container, config).await?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = docker
        .start_exec(&exec.id, None::<StartExecOptions>)
        .await?
    else {
        bail!("the exec started detached");
    };
    let mut trips = Vec::with_capacity(n);
    let mut seen = Vec::new();
    for i in 0..n {
        let line = format!("line-{i}\n");
        let sent = Instant::now();
        input.write_all(line.as_bytes()).await?;
        input.flush().await?;
        while !ends_with(&seen, line.as_bytes()) {
            let chunk = output.next().await.context("the exec ended")??;
            seen.extend_from_slice(&chunk.into_bytes());
        }
        trips.push(sent.elapsed());
    }
    input.shutdown().await?;
    while output.next().await.is_some() {}
    Ok(trips)
}

fn ends_with(seen: &[u8], line: &[u8]) -> bool {
    seen.len() >= line.len() && &seen[seen.len() - line.len()..] == line
}

/// Round trips through an Interact call running `cat` on a held lease.
async fn sandpool(session: &sandpool_client::Session, n: usize) -> anyhow::Result<Vec<Duration>> {
    let request = pb::RunRequest {
        program: Some(pb::run_request::Program::Command(pb::Command {
            argv: vec!["cat".into()],
            shell: String::new(),
        })),
        ..Default::default()
    };
    let Interaction { input, mut events } = session.interact(request, None).await?;
    let mut trips = Vec::with_capacity(n);
    let mut seen = Vec::new();
    for i in 0..n {
        let line = format!("line-{i}\n");
        let sent = Instant::now();
        input.write(line.clone()).await?;
        while !ends_with(&seen, line.as_bytes()) {
            match events.next().await.context("the run's events ended")?? {
                RunEvent::Stdout(d) => seen.extend_from_slice(&d),
                RunEvent::Exit(e) => bail!("cat ended: {e:?}"),
                _ => {}
            }
        }
        trips.push(sent.elapsed());
    }
    input.close_stdin().await?;
    while let Some(event) = events.next().await {
        if let RunEvent::Exit(e) = event?
            && e.exit_code != 0
        {
            bail!("cat exited with {}", e.exit_code);
        }
    }
    Ok(trips)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = BenchServer::start("interactive").await?;
    let client = server.client.clone();
    python_pool(&client, "bench", &args.image, 1).await?;
    let docker = docker().await?;
    // One lease for the whole bench: both paths talk to its container.
    let session = client.acquire("bench").await?;
    let container = session.container_id().to_string();
    // Warm-up.
    floor(&docker, &container, 10).await?;
    sandpool(&session, 10).await?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        if round % 2 == 0 {
            a.extend(floor(&docker, &container, args.per_round).await?);
            b.extend(sandpool(&session, args.per_round).await?);
        } else {
            b.extend(sandpool(&session, args.per_round).await?);
            a.extend(floor(&docker, &container, args.per_round).await?);
        }
    }
    session.release().await?;
    let (ma, mb) = (median(&mut a), median(&mut b));
    let (pa, pb95) = (p95(&mut a), p95(&mut b));
    println!(
        "echo round trip, {} rounds x {} lines, a warm `cat` in the same container:",
        args.rounds, args.per_round
    );
    println!(
        "  (a) docker exec -i (bollard)   median {} p95 {}",
        ms(ma),
        ms(pa)
    );
    println!(
        "  (b) sandpool Interact (gRPC)   median {} p95 {}",
        ms(mb),
        ms(pb95)
    );
    println!(
        "  added by sandpool: median {} ({:.2}x the floor), p95 {:.2}x",
        ms(mb.saturating_sub(ma)),
        mb.as_secs_f64() / ma.as_secs_f64(),
        pb95.as_secs_f64() / pa.as_secs_f64()
    );
    server.stop().await?;
    Ok(())
}
