//! Scenario 10: what the reset between leases costs a client. On a pool of
//! ONE container (resident runner, the default path), rotating: the floor (a bollard exec of
//! `print('test')` on that container), one Acquire + Run + Release on the
//! settled pool (its reset runs after it, unseen), and a run of cycles back
//! to back, where every Acquire but the first waits for the reset the
//! previous Release started. The reset's own duration comes from the
//! server's sandpool_reset_duration_seconds histogram (GetPoolStats does
//! not carry it; /metrics does).

use anyhow::Context as _;

use super::{
    context::Ctx,
    metrics::Histogram,
    model::{Reset, Series},
};
use crate::{create_ready_pool, cycle, pool_spec, raw_exec, settle};

const POOL: &str = "reset";
const CODE: &str = "print('test')";
const OUTPUT: &[u8] = b"test\n";
/// Back-to-back cycles per round (the first of each is not counted).
const RUN: usize = 6;

pub async fn measure(ctx: &Ctx) -> anyhow::Result<Reset> {
    let client = &ctx.runner.client;
    create_ready_pool(client, pool_spec(POOL, "python", &ctx.plan.image, 1)).await?;
    let result = rounds(ctx).await;
    let _ = client.delete_pool(POOL, true).await;
    result
}

async fn rounds(ctx: &Ctx) -> anyhow::Result<Reset> {
    let client = &ctx.runner.client;
    let holder = client.acquire(POOL).await?;
    let container = holder.container_id().to_string();
    holder.release().await?;
    let argv = ["python3", "-c", CODE].map(String::from);
    let (mut floor, mut single, mut back_to_back) = (Vec::new(), Vec::new(), Vec::new());
    // Round 0 warms up; not counted.
    for round in 0..=ctx.plan.reset_rounds {
        for step in 0..3 {
            settle(client, POOL, 1).await?;
            match (round + step) % 3 {
                0 => {
                    let t = raw_exec(&ctx.docker, &container, &argv, &[], OUTPUT)
                        .await
                        .context("floor")?;
                    if round > 0 {
                        floor.push(t);
                    }
                }
                1 => {
                    let t = cycle(client, POOL, CODE, OUTPUT)
                        .await
                        .context("single cycle")?;
                    if round > 0 {
                        single.push(t);
                    }
                }
                _ => {
                    for i in 0..RUN {
                        let t = cycle(client, POOL, CODE, OUTPUT)
                            .await
                            .context("back-to-back cycle")?;
                        if round > 0 && i > 0 {
                            back_to_back.push(t);
                        }
                    }
                }
            }
        }
    }
    settle(client, POOL, 1).await?;
    let metrics = ctx.runner.metrics().await?;
    let resets = Histogram::parse(&metrics, "sandpool_reset_duration_seconds", POOL)
        .context("/metrics has no reset histogram for the pool")?;
    Ok(Reset {
        floor: Series::of(&floor),
        single: Series::of(&single),
        back_to_back: Series::of(&back_to_back),
        resets: resets.count,
        reset_mean_ms: resets.mean() * 1e3,
        reset_p50_bucket_ms: resets.quantile_bound(0.5) * 1e3,
        reset_p95_bucket_ms: resets.quantile_bound(0.95) * 1e3,
    })
}
