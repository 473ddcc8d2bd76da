//! Scenario 5: a matplotlib figure. On one warm lease of the exec path,
//! rotating: the figure captured by sandpool on plt.show() (a PNG artifact
//! back), the same program on the Agg backend (nothing back), the program
//! without its plotting lines, and the floor: a bollard exec of the same
//! figure rendered to PNG on stdout, which is how a caller of a raw exec
//! gets a figure back.

use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{
    context::{Ctx, PY_POOL, PY_POOL_SIZE},
    model::{Plots, Series},
};
use crate::{
    plot_capture::{FLOOR_PROGRAM, Variant, run_variant},
    raw_exec_with, settle,
};

/// The floor: returns its time and the PNG's size.
async fn floor(ctx: &Ctx, container: &str) -> anyhow::Result<(Duration, usize)> {
    let argv = ["python3", "-c", FLOOR_PROGRAM].map(String::from);
    // The environment sandpool gives a Python run (matplotlib's config
    // dir, where the lease's runs left the font cache): without it every
    // floor run would rebuild the cache.
    let env: Vec<String> = sandpool_server::lang::lookup("python")
        .context("no python language")?
        .plan(b"", false)
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut png = Vec::new();
    let run = raw_exec_with(&ctx.docker, container, &argv, &env, |c| {
        png.extend_from_slice(c)
    })
    .await?;
    if run.exit_code != Some(0) || !png.starts_with(b"\x89PNG") {
        bail!(
            "the floor's plot exited {:?} with {} bytes: {}",
            run.exit_code,
            png.len(),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    Ok((run.took, png.len()))
}

pub async fn measure(ctx: &Ctx) -> anyhow::Result<Plots> {
    let session = ctx.exec.client.acquire(PY_POOL).await?;
    let container = session.container_id().to_string();
    let result = rounds(ctx, &session, &container).await;
    session.release().await?;
    settle(&ctx.exec.client, PY_POOL, PY_POOL_SIZE).await?;
    result
}

async fn rounds(
    ctx: &Ctx,
    session: &sandpool_client::Session,
    container: &str,
) -> anyhow::Result<Plots> {
    let mut times: [Vec<Duration>; 4] = Default::default();
    let (mut png, mut floor_png) = (0, 0);
    // The first round warms up matplotlib's font cache; not counted.
    for i in 0..=ctx.plan.plots {
        for step in 0..4 {
            let which = (i + step) % 4;
            let took = if which == 3 {
                let (took, bytes) = floor(ctx, container).await.context("floor")?;
                floor_png = bytes;
                took
            } else {
                let variant = Variant::ALL[which];
                let (took, bytes) = run_variant(session, variant)
                    .await
                    .with_context(|| format!("{variant:?}"))?;
                if variant == Variant::Captured {
                    png = bytes;
                }
                took
            };
            if i > 0 {
                times[which].push(took);
            }
        }
    }
    let [captured, agg, no_plot, floor] = times.map(|t| Series::of(&t));
    Ok(Plots {
        floor,
        captured,
        agg,
        no_plot,
        captured_png_bytes: png,
        floor_png_bytes: floor_png,
    })
}
