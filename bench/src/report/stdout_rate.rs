//! Scenario 6: stdout throughput. A Python program writes `bytes` to
//! stdout in 1 MiB writes; timed from the request to the exit, all output
//! read: a bollard exec of it (the floor), and a Run on a held lease of
//! each path (the pool's output cap is raised above it).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sandpool_client::{RunEvent, Session};

use super::{
    context::{Ctx, PY_POOL, PY_POOL_SIZE},
    model::{Series, StdoutRate},
};
use crate::{raw_exec_with, settle};

fn program(bytes: u64) -> String {
    format!(
        "import sys\nchunk = b'x' * (1 << 20)\nleft = {bytes}\nwhile left > 0:\n    n = min(left, len(chunk))\n    sys.stdout.buffer.write(chunk[:n])\n    left -= n\nsys.stdout.flush()\n"
    )
}

async fn floor(ctx: &Ctx, container: &str, code: &str, bytes: u64) -> anyhow::Result<Duration> {
    let argv = ["python3", "-c", code].map(String::from);
    let mut seen = 0u64;
    let run = raw_exec_with(&ctx.docker, container, &argv, &[], |c| {
        seen += c.len() as u64
    })
    .await?;
    if seen != bytes || run.exit_code != Some(0) {
        bail!(
            "the floor read {seen} of {bytes} bytes, exit {:?}: {}",
            run.exit_code,
            String::from_utf8_lossy(&run.stderr)
        );
    }
    Ok(run.took)
}

async fn leased(session: &Session, code: &str, bytes: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut events = session.run(code).await?;
    let (mut seen, mut exit) = (0u64, None);
    while let Some(event) = events.next().await {
        match event? {
            RunEvent::Stdout(data) => seen += data.len() as u64,
            RunEvent::Exit(e) => exit = Some(e),
            RunEvent::Gap(g) => bail!("output was lost: {g:?}"),
            _ => {}
        }
    }
    let took = started.elapsed();
    let exit = exit.context("the run ended without an exit event")?;
    if seen != bytes || exit.exit_code != 0 || exit.truncated {
        bail!("the run sent {seen} of {bytes} bytes: {exit:?}");
    }
    Ok(took)
}

pub async fn measure(ctx: &Ctx) -> anyhow::Result<StdoutRate> {
    let bytes = ctx.plan.bytes;
    let code = program(bytes);
    let on_exec = ctx.exec.client.acquire(PY_POOL).await?;
    let on_runner = ctx.runner.client.acquire(PY_POOL).await?;
    let container = on_exec.container_id().to_string();
    let (mut f, mut e, mut r) = (Vec::new(), Vec::new(), Vec::new());
    let mut result = Ok(());
    // Round 0 warms up; not counted.
    'rounds: for i in 0..=ctx.plan.rate_runs {
        for step in 0..3 {
            let (which, took) = match (i + step) % 3 {
                0 => (
                    &mut f,
                    floor(ctx, &container, &code, bytes).await.context("floor"),
                ),
                1 => (
                    &mut e,
                    leased(&on_exec, &code, bytes).await.context("exec path"),
                ),
                _ => (
                    &mut r,
                    leased(&on_runner, &code, bytes)
                        .await
                        .context("runner path"),
                ),
            };
            match took {
                Ok(t) if i > 0 => which.push(t),
                Ok(_) => {}
                Err(err) => {
                    result = Err(err);
                    break 'rounds;
                }
            }
        }
    }
    on_exec.release().await?;
    on_runner.release().await?;
    settle(&ctx.exec.client, PY_POOL, PY_POOL_SIZE).await?;
    settle(&ctx.runner.client, PY_POOL, PY_POOL_SIZE).await?;
    result?;
    Ok(StdoutRate {
        bytes,
        floor: Series::of(&f),
        exec: Series::of(&e),
        runner: Series::of(&r),
    })
}
