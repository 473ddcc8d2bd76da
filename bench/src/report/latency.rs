//! Scenarios 1 and 2: one Python program three ways, interleaved with the
//! order rotating (so that drift in the machine's load hits all alike):
//! the floor (a bollard exec of `python3 -c CODE` on a container of the
//! exec server's pool), Acquire + Run + Release on the exec path, and the
//! same on the resident runner path; for numpy a fourth, the runner on a
//! pool that preloads numpy into its waiting interpreters (an opt-in of
//! the pool's). Each of them starts once both
//! servers' pools are settled (earlier resets done), so that no reset
//! runs beside it.

use std::time::Duration;

use anyhow::{Context as _, bail};

use sandpool_client::proto as pb;

use super::{
    context::{Ctx, OUTPUT_LIMIT, PY_POOL, PY_POOL_SIZE},
    model::{Latency, Series, paired_ratio},
};
use crate::{create_ready_pool, cycle, pool_spec, raw_exec_with, settle};

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

/// The runner server's pool that preloads modules (scenario 2's fourth way).
const PRELOAD_POOL: &str = "py-preload";

/// A cycle of `client` on `pool` once no reset runs on either server's
/// Python pool (nor on the preloading pool, when there is one).
async fn settled_cycle(
    ctx: &Ctx,
    client: &sandpool_client::Client,
    pool: &str,
    code: &str,
    expect: &[u8],
    preloading: bool,
) -> anyhow::Result<Duration> {
    ctx.settle_python().await?;
    if preloading {
        settle(&ctx.runner.client, PRELOAD_POOL, PY_POOL_SIZE).await?;
    }
    cycle(client, pool, code, expect).await
}

/// The scenario for `code`; with `preload`, a fourth way: the resident
/// runner on a pool of the same size that preloads those modules.
pub async fn measure(ctx: &Ctx, code: &str, preload: &[&str]) -> anyhow::Result<Latency> {
    let preloading = !preload.is_empty();
    if preloading {
        let spec = pb::PoolSpec {
            preload: preload.iter().map(|m| m.to_string()).collect(),
            output_limit_bytes: Some(OUTPUT_LIMIT),
            ..pool_spec(PRELOAD_POOL, "python", &ctx.plan.image, PY_POOL_SIZE)
        };
        create_ready_pool(&ctx.runner.client, spec).await?;
    }
    let result = measure_ways(ctx, code, preload).await;
    if preloading {
        let deleted = ctx.runner.client.delete_pool(PRELOAD_POOL, true).await;
        // The measurement's own error says more than the deletion's.
        let latency = result?;
        deleted.context("deleting the preloading pool")?;
        return Ok(latency);
    }
    result
}

/// One of the ways the scenario runs the code.
enum Way<'a> {
    /// A bollard exec of `python3 -c CODE`.
    Floor,
    /// Acquire + Run + Release of a client on a pool (and what to call it
    /// in an error).
    Cycle(&'a sandpool_client::Client, &'static str, &'static str),
}

impl Way<'_> {
    async fn sample(
        &self,
        ctx: &Ctx,
        code: &str,
        expect: &[u8],
        preloading: bool,
    ) -> anyhow::Result<Duration> {
        match self {
            Way::Floor => floor(ctx, code, expect).await.context("floor"),
            Way::Cycle(client, pool, what) => {
                settled_cycle(ctx, client, pool, code, expect, preloading)
                    .await
                    .context(*what)
            }
        }
    }
}

async fn measure_ways(ctx: &Ctx, code: &str, preload: &[&str]) -> anyhow::Result<Latency> {
    let preloading = !preload.is_empty();
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
    let (exec, runner) = (&ctx.exec.client, &ctx.runner.client);
    let mut ways = vec![
        Way::Floor,
        Way::Cycle(exec, PY_POOL, "exec path"),
        Way::Cycle(runner, PY_POOL, "runner path"),
    ];
    if preloading {
        ways.push(Way::Cycle(
            runner,
            PRELOAD_POOL,
            "runner path, preloading pool",
        ));
    }
    for _ in 0..warm_up {
        for way in &ways {
            way.sample(ctx, code, &expect, preloading).await?;
        }
    }
    // Interleaved, each iteration starting one way further on, so that no
    // way always follows the same other.
    let mut samples = vec![Vec::new(); ways.len()];
    for i in 0..ctx.plan.iterations {
        for step in 0..ways.len() {
            let k = (i + step) % ways.len();
            samples[k].push(ways[k].sample(ctx, code, &expect, preloading).await?);
        }
    }
    let mut samples = samples.into_iter();
    let mut next = || samples.next().unwrap_or_default();
    let (f, e, r, p) = (next(), next(), next(), next());
    Ok(Latency {
        code: code.to_string(),
        exec_paired: paired_ratio(&e, &f),
        runner_paired: paired_ratio(&r, &f),
        floor: Series::of(&f),
        exec: Series::of(&e),
        runner: Series::of(&r),
        preload: preload.iter().map(|m| m.to_string()).collect(),
        preloaded_paired: preloading.then(|| paired_ratio(&p, &f)),
        preloaded: preloading.then(|| Series::of(&p)),
    })
}
