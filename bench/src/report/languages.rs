//! Scenario 3: hello world per language, on the exec path and on the
//! resident runner path, against each language's own floor: a bollard exec
//! of exactly the command line and environment sandpool runs for that code
//! (the language plan's), as uid 1000 on a container of the same image.
//! Times are of the Run call (request to exit event) on a held lease;
//! Acquire is scenario 1's. Each language gets a pool of one container on
//! each server; its runs rotate floor, exec and runner.

use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{
    context::Ctx,
    model::{LanguageRow, Series},
};
use crate::{
    create_ready_pool,
    hello::{HELLO, HELLO_OUTPUT, Hello},
    pool_spec, raw_exec,
};

/// Every language the plan names, each measured or failed on its own.
pub async fn measure(ctx: &Ctx) -> anyhow::Result<Vec<LanguageRow>> {
    let mut rows = Vec::new();
    for name in &ctx.plan.languages {
        let hello = HELLO
            .iter()
            .find(|h| h.language == name)
            .with_context(|| format!("no hello world for language {name:?}"))?;
        eprintln!("report:   language {name}");
        let row = match one_language(ctx, hello).await {
            Ok(row) => row,
            Err(e) => LanguageRow {
                language: name.clone(),
                error: Some(format!("{e:#}")),
                ..Default::default()
            },
        };
        rows.push(row);
    }
    Ok(rows)
}

async fn one_language(ctx: &Ctx, hello: &Hello) -> anyhow::Result<LanguageRow> {
    let name = hello.language;
    let spec = pool_spec(name, name, &hello.image_ref(), 1);
    let (a, b) = tokio::join!(
        create_ready_pool(&ctx.exec.client, spec.clone()),
        create_ready_pool(&ctx.runner.client, spec),
    );
    let measured = match (a, b) {
        (Ok(()), Ok(())) => runs(ctx, hello).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    // The pools go whatever happened: the next language wants the memory.
    for (_, client) in ctx.paths() {
        let _ = client.delete_pool(name, true).await;
    }
    let (floor, exec, runner) = measured?;
    Ok(LanguageRow {
        language: name.to_string(),
        floor: Series::of(&floor),
        exec: Series::of(&exec),
        runner: Series::of(&runner),
        error: None,
    })
}

type Samples = (Vec<Duration>, Vec<Duration>, Vec<Duration>);

async fn runs(ctx: &Ctx, hello: &Hello) -> anyhow::Result<Samples> {
    let name = hello.language;
    let (argv, env) = hello.floor_command()?;
    let (mut floor, mut exec, mut runner) = (Vec::new(), Vec::new(), Vec::new());
    for lease in 0..=ctx.plan.language_leases {
        let on_exec = ctx.exec.client.acquire(name).await?;
        let on_runner = ctx.runner.client.acquire(name).await?;
        let container = on_exec.container_id().to_string();
        let raw = || raw_exec(&ctx.docker, &container, &argv, &env, HELLO_OUTPUT);
        // The first lease warms the page cache of all three; not counted.
        let warm_up = lease == 0;
        let rounds = if warm_up { 1 } else { ctx.plan.steady };
        for i in 0..rounds {
            for step in 0..3 {
                let (which, took) = match (lease + i + step) % 3 {
                    0 => (&mut floor, raw().await.context("floor")?),
                    1 => (
                        &mut exec,
                        hello.leased_run(&on_exec).await.context("exec path")?,
                    ),
                    _ => (
                        &mut runner,
                        hello.leased_run(&on_runner).await.context("runner path")?,
                    ),
                };
                if !warm_up {
                    which.push(took);
                }
            }
        }
        on_exec.release().await?;
        on_runner.release().await?;
    }
    if floor.is_empty() {
        bail!("{name}: nothing measured");
    }
    Ok((floor, exec, runner))
}
