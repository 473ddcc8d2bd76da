//! Scenario 4: how long the first stdout byte takes to reach the reader
//! after the program wrote it. The program prints the wall clock (the
//! container shares the host's), the reader subtracts it from its own on
//! arrival. Floor: the bollard exec's own output stream; then a leased run
//! on each path, read by the client.

use anyhow::Context as _;

use super::{
    context::{Ctx, PY_POOL},
    model::{FirstByte, Series},
};
use crate::{first_byte_lag, raw_first_byte_lag};

pub async fn measure(ctx: &Ctx) -> anyhow::Result<FirstByte> {
    let (mut floor, mut exec, mut runner) = (Vec::new(), Vec::new(), Vec::new());
    // One of each to warm up, then measured rounds in rotating order.
    for i in 0..=ctx.plan.first_byte {
        for step in 0..3 {
            // No reset running beside the measurement (nor on the floor's
            // container, which it would kill).
            ctx.settle_python().await?;
            let (which, lag) = match (i + step) % 3 {
                0 => (
                    &mut floor,
                    raw_first_byte_lag(&ctx.docker, &ctx.floor_container)
                        .await
                        .context("floor")?,
                ),
                1 => (
                    &mut exec,
                    first_byte_lag(&ctx.exec.client, PY_POOL)
                        .await
                        .context("exec path")?,
                ),
                _ => (
                    &mut runner,
                    first_byte_lag(&ctx.runner.client, PY_POOL)
                        .await
                        .context("runner path")?,
                ),
            };
            if i > 0 {
                which.push(lag);
            }
        }
    }
    ctx.settle_python().await?;
    Ok(FirstByte {
        floor: Series::of(&floor),
        exec: Series::of(&exec),
        runner: Series::of(&runner),
    })
}
