//! Scenarios 1 and 2: one Python program three ways, interleaved with the
//! order rotating (so that drift in the machine's load hits all alike):
//! the floor (a bollard exec of `python3 -c CODE` on a container of the
//! exec server's pool), Acquire + Run + Release on the exec path, and the
//! same on the resident runner path. Each of them starts once both
//! servers' pools are settled (earlier resets done), so that no reset
//! runs beside it.

use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{
    context::{Ctx, PY_POOL, PY_POOL_SIZE},
    model::{Latency, Series, paired_ratio},
};
use crate::{cycle, raw_exec_with, settle};

pub const PRINT: &str = "print('test')";
pub const NUMPY: &str = "import numpy; print(numpy.__version__)";

/// What `code` prints, learnt from one leased run (numpy's version is the
/// image's), so that all three ways are checked against the same output.
async fn expected_output(ctx: &Ctx, code: &str) -> anyhow::Result<Vec<u8>> {
    let session = ctx.exec.client.acquire(PY_POOL).await?;
    let out = session.run_collect(code).await?;
    session.release().await?;
    settle(&ctx.exec.client, PY_POOL, PY_POOL_SIZE).await?;
    if out.exit_code() != 0 || out.stdout.is_empty() {
        bail!(
            "{code:?} printed {:?}, exit {}: {}",
            out.stdout_text(),
            out.exit_code(),
            out.stderr_text()
        );
    }
    Ok(out.stdout.to_vec())
}

/// The floor for `code`: `python3 -c CODE` through bollard, once no reset
/// runs (a reset of its container would kill it; one elsewhere would take
/// CPU from it).
pub async fn floor(ctx: &Ctx, code: &str, expect: &[u8]) -> anyhow::Result<Duration> {
    ctx.settle_python().await?;
    let argv = ["python3", "-c", code].map(String::from);
    crate::raw_exec(&ctx.docker, &ctx.floor_container, &argv, &[], expect).await
}

/// A cycle of `client` once no reset runs on either server.
async fn settled_cycle(
    ctx: &Ctx,
    client: &sandpool_client::Client,
    code: &str,
    expect: &[u8],
) -> anyhow::Result<Duration> {
    ctx.settle_python().await?;
    cycle(client, PY_POOL, code, expect).await
}

pub async fn measure(ctx: &Ctx, code: &str) -> anyhow::Result<Latency> {
    let expect = expected_output(ctx, code).await?;
    // The floor prints what the leased run printed, or the comparison is off.
    let argv = ["python3", "-c", code].map(String::from);
    ctx.settle_python().await?;
    let mut floor_out = Vec::new();
    raw_exec_with(&ctx.docker, &ctx.floor_container, &argv, &[], |c| {
        floor_out.extend_from_slice(c)
    })
    .await
    .context("floor")?;
    if floor_out != expect {
        bail!(
            "the floor printed {:?}, the leased run {:?}",
            String::from_utf8_lossy(&floor_out),
            String::from_utf8_lossy(&expect)
        );
    }
    let warm_up = (ctx.plan.iterations / 10).clamp(1, 10);
    for _ in 0..warm_up {
        floor(ctx, code, &expect).await?;
        settled_cycle(ctx, &ctx.exec.client, code, &expect).await?;
        settled_cycle(ctx, &ctx.runner.client, code, &expect).await?;
    }
    let (mut f, mut e, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ctx.plan.iterations {
        for step in 0..3 {
            match (i + step) % 3 {
                0 => f.push(floor(ctx, code, &expect).await.context("floor")?),
                1 => e.push(
                    settled_cycle(ctx, &ctx.exec.client, code, &expect)
                        .await
                        .context("exec path")?,
                ),
                _ => r.push(
                    settled_cycle(ctx, &ctx.runner.client, code, &expect)
                        .await
                        .context("runner path")?,
                ),
            }
        }
    }
    Ok(Latency {
        code: code.to_string(),
        exec_paired: paired_ratio(&e, &f),
        runner_paired: paired_ratio(&r, &f),
        floor: Series::of(&f),
        exec: Series::of(&e),
        runner: Series::of(&r),
    })
}
