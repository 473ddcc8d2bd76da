//! Scenario 7: upload and download of one file through the client's file
//! API, against the engine doing the same on the same container.
//!
//! The engine's archive API (`docker cp`: upload_to_container,
//! download_from_container) cannot reach a pool's container: its root is
//! read-only and its workspace a tmpfs, which the daemon does not see (it
//! answers "container rootfs is marked read-only" / "Could not find the
//! file"). So the floor on the same container is what the engine can do
//! there: a bollard exec of `cat` with the bytes on its stdin (up) and
//! `cat` of the file read from its stdout (down). `docker cp` itself is
//! measured on a scratch container of the same image with a writable root,
//! which the bench removes again.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bollard::{
    body_full,
    exec::{StartExecOptions, StartExecResults},
    models::{ContainerCreateBody, ExecConfig},
    query_parameters::{
        CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
        UploadToContainerOptionsBuilder,
    },
};
use bytes::Bytes;
use futures::StreamExt;
use sandpool_client::Session;
use tokio::io::AsyncWriteExt;

use super::{
    context::{Ctx, PY_POOL, PY_POOL_SIZE, remove_labelled},
    model::{Series, Transfer},
};
use crate::{raw_exec_with, settle};

/// The label of the scratch container, so that it can be found and removed
/// whatever happens.
fn scratch_label() -> String {
    format!("sandpool.bench.report={}", std::process::id())
}

/// Bytes no filter compresses (xorshift), so no layer can cheat.
fn payload(len: u64) -> Bytes {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len as usize);
    Bytes::from(out)
}

async fn upload(session: &Session, data: &Bytes) -> anyhow::Result<Duration> {
    let started = Instant::now();
    session.upload("/sandbox/blob", data.clone()).await?;
    Ok(started.elapsed())
}

async fn download(session: &Session, data: &Bytes) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (_, body) = session.download("/sandbox/blob").await?;
    let took = started.elapsed();
    if body != *data {
        bail!(
            "downloaded {} bytes, not the {} uploaded",
            body.len(),
            data.len()
        );
    }
    Ok(took)
}

/// The floor up: `cat > /sandbox/floor-blob` with the bytes on stdin.
async fn floor_upload(ctx: &Ctx, container: &str, data: &Bytes) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(
            ["sh", "-c", "cat > /sandbox/floor-blob"]
                .map(String::from)
                .to_vec(),
        ),
        user: Some("1000:1000".into()),
        working_dir: Some("/sandbox".into()),
        ..Default::default()
    };
    let exec = ctx.docker.create_exec(container, config).await?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = ctx
        .docker
        .start_exec(&exec.id, None::<StartExecOptions>)
        .await?
    else {
        bail!("the exec started detached");
    };
    // Write and read at once: an exec whose output is not read can stall.
    let writer = async {
        input.write_all(data).await?;
        input.shutdown().await?;
        anyhow::Ok(())
    };
    let reader = async {
        let mut said = Vec::new();
        while let Some(item) = output.next().await {
            said.extend_from_slice(&item?.into_bytes());
        }
        anyhow::Ok(said)
    };
    let (wrote, said) = tokio::join!(writer, reader);
    wrote?;
    let said = said?;
    let code = ctx.docker.inspect_exec(&exec.id).await?.exit_code;
    let took = started.elapsed();
    if code != Some(0) {
        bail!(
            "cat > file exited {code:?}: {}",
            String::from_utf8_lossy(&said)
        );
    }
    Ok(took)
}

/// The floor down: `cat /sandbox/floor-blob`, all of stdout read.
async fn floor_download(ctx: &Ctx, container: &str, len: u64) -> anyhow::Result<Duration> {
    let argv = ["cat", "/sandbox/floor-blob"].map(String::from);
    let mut seen = 0u64;
    let run = raw_exec_with(&ctx.docker, container, &argv, &[], |c| {
        seen += c.len() as u64
    })
    .await?;
    if seen != len || run.exit_code != Some(0) {
        bail!("cat read {seen} of {len} bytes, exit {:?}", run.exit_code);
    }
    Ok(run.took)
}

/// A tar holding `data` as `name`.
fn tar_of(name: &str, data: &[u8]) -> anyhow::Result<Bytes> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, data)?;
    Ok(Bytes::from(builder.into_inner()?))
}

/// `docker cp` up: the archive API unpacking a tar into `dir`.
async fn cp_upload(
    docker: &bollard::Docker,
    container: &str,
    dir: &str,
    tar: &Bytes,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    docker
        .upload_to_container(
            container,
            Some(UploadToContainerOptionsBuilder::default().path(dir).build()),
            body_full(tar.clone()),
        )
        .await?;
    Ok(started.elapsed())
}

/// `docker cp` down: the archive API's tar of `path`, read to the end.
async fn cp_download(
    docker: &bollard::Docker,
    container: &str,
    path: &str,
    len: u64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut stream = docker.download_from_container(
        container,
        Some(
            DownloadFromContainerOptionsBuilder::default()
                .path(path)
                .build(),
        ),
    );
    let mut seen = 0u64;
    while let Some(chunk) = stream.next().await {
        seen += chunk?.len() as u64;
    }
    let took = started.elapsed();
    if seen < len {
        bail!("docker cp brought {seen} bytes, less than the file's {len}");
    }
    Ok(took)
}

/// A scratch container of the pool's image with a writable root, for
/// `docker cp`.
async fn scratch(ctx: &Ctx) -> anyhow::Result<String> {
    let body = ContainerCreateBody {
        image: Some(ctx.plan.image.clone()),
        cmd: Some(vec!["sleep".into(), "infinity".into()]),
        labels: Some(std::collections::HashMap::from([(
            "sandpool.bench.report".to_string(),
            std::process::id().to_string(),
        )])),
        network_disabled: Some(true),
        ..Default::default()
    };
    let created = ctx
        .docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(&format!("sandpool-bench-cp-{}", std::process::id()))
                    .build(),
            ),
            body,
        )
        .await
        .context("creating the scratch container")?;
    ctx.docker
        .start_container(&created.id, None)
        .await
        .context("starting the scratch container")?;
    Ok(created.id)
}

pub async fn measure(ctx: &Ctx) -> anyhow::Result<Transfer> {
    let data = payload(ctx.plan.bytes);
    let tar = tar_of("blob", &data)?;
    let session = ctx.exec.client.acquire(PY_POOL).await?;
    let container = session.container_id().to_string();
    // What the archive API says on the pool's own container (reported).
    let archive_api_on_pool_container =
        match cp_upload(&ctx.docker, &container, "/sandbox", &tar).await {
            Ok(_) => "accepted".to_string(),
            Err(e) => format!("{e:#}"),
        };
    let scratch_id = scratch(ctx).await;
    let result = rounds(
        ctx,
        &session,
        &container,
        &data,
        &tar,
        scratch_id.as_deref(),
    )
    .await;
    let removed = remove_labelled(&ctx.docker, &scratch_label()).await;
    session.release().await?;
    settle(&ctx.exec.client, PY_POOL, PY_POOL_SIZE).await?;
    removed.context("removing the scratch container")?;
    let mut transfer = result?;
    transfer.archive_api_on_pool_container = archive_api_on_pool_container;
    if let Err(e) = scratch_id {
        transfer.docker_cp_error = Some(format!("{e:#}"));
    }
    Ok(transfer)
}

async fn rounds(
    ctx: &Ctx,
    session: &Session,
    container: &str,
    data: &Bytes,
    tar: &Bytes,
    scratch: Result<&str, &anyhow::Error>,
) -> anyhow::Result<Transfer> {
    let len = data.len() as u64;
    let mut times: [Vec<Duration>; 6] = Default::default();
    let kinds = if scratch.is_ok() { 3 } else { 2 };
    // Round 0 warms up; not counted.
    for i in 0..=ctx.plan.rate_runs {
        for step in 0..kinds {
            let (up, down) = match (i + step) % kinds {
                0 => (
                    upload(session, data).await.context("upload")?,
                    download(session, data).await.context("download")?,
                ),
                1 => (
                    floor_upload(ctx, container, data)
                        .await
                        .context("floor upload")?,
                    floor_download(ctx, container, len)
                        .await
                        .context("floor download")?,
                ),
                _ => {
                    let id = scratch.map_err(|e| anyhow::anyhow!("{e:#}"))?;
                    (
                        cp_upload(&ctx.docker, id, "/tmp", tar)
                            .await
                            .context("docker cp upload")?,
                        cp_download(&ctx.docker, id, "/tmp/blob", len)
                            .await
                            .context("docker cp download")?,
                    )
                }
            };
            if i > 0 {
                let k = (i + step) % kinds;
                times[2 * k].push(up);
                times[2 * k + 1].push(down);
            }
        }
    }
    let [up, down, floor_up, floor_down, cp_up, cp_down] = times.map(|t| Series::of(&t));
    Ok(Transfer {
        bytes: len,
        upload: up,
        download: down,
        floor_upload: floor_up,
        floor_download: floor_down,
        docker_cp_upload: scratch.is_ok().then_some(cp_up),
        docker_cp_download: scratch.is_ok().then_some(cp_down),
        docker_cp_error: None,
        archive_api_on_pool_container: String::new(),
    })
}
