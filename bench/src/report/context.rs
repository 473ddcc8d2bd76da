//! What the scenarios share: two servers in this process (one running
//! programs by engine exec, one on resident runners), a warm Python pool on
//! each, the engine's API client, and the floor's container.

use anyhow::Context as _;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use sandpool_client::proto as pb;

use super::options::Plan;
use crate::{BenchServer, ServerOptions, create_ready_pool, pool_spec, settle};

/// The shared Python pool's name (on both servers).
pub const PY_POOL: &str = "py";
/// Its warm containers.
pub const PY_POOL_SIZE: u32 = 2;
/// Its output cap: above what the stdout scenario writes.
pub const OUTPUT_LIMIT: u64 = 256 << 20;

pub struct Ctx {
    pub plan: Plan,
    /// Runs by one engine exec each (`resident_runner = false`).
    pub exec: BenchServer,
    /// Runs on resident runners.
    pub runner: BenchServer,
    pub docker: bollard::Docker,
    /// A container of the exec server's Python pool: the floor runs there.
    pub floor_container: String,
}

impl Ctx {
    pub async fn start(plan: Plan) -> anyhow::Result<Self> {
        let largest = plan
            .sweep_pools
            .iter()
            .copied()
            .chain([plan.scale_max, PY_POOL_SIZE])
            .max()
            .unwrap_or(PY_POOL_SIZE);
        let options = |resident_runner| ServerOptions {
            resident_runner,
            metrics: true,
            max_pool_size: Some(largest),
        };
        let exec = BenchServer::start_opts("report-exec", options(false))
            .await
            .context("starting the exec-path server")?;
        let runner = BenchServer::start_opts("report-runner", options(true))
            .await
            .context("starting the runner-path server")?;
        let docker = crate::docker().await.context("connecting to Docker")?;
        let mut ctx = Self {
            plan,
            exec,
            runner,
            docker,
            floor_container: String::new(),
        };
        if let Err(e) = ctx.prepare().await {
            ctx.stop().await;
            return Err(e);
        }
        Ok(ctx)
    }

    async fn prepare(&mut self) -> anyhow::Result<()> {
        let spec = pb::PoolSpec {
            output_limit_bytes: Some(OUTPUT_LIMIT),
            ..pool_spec(PY_POOL, "python", &self.plan.image, PY_POOL_SIZE)
        };
        let (a, b) = tokio::join!(
            create_ready_pool(&self.exec.client, spec.clone()),
            create_ready_pool(&self.runner.client, spec),
        );
        a.context("the exec server's Python pool")?;
        b.context("the runner server's Python pool")?;
        let holder = self.exec.client.acquire(PY_POOL).await?;
        self.floor_container = holder.container_id().to_string();
        holder.release().await?;
        settle(&self.exec.client, PY_POOL, PY_POOL_SIZE).await?;
        Ok(())
    }

    /// Waits until both servers' Python pools are idle: no reset still
    /// running (on the floor's container, or eating CPU beside a timed run).
    pub async fn settle_python(&self) -> anyhow::Result<()> {
        settle(&self.exec.client, PY_POOL, PY_POOL_SIZE).await?;
        settle(&self.runner.client, PY_POOL, PY_POOL_SIZE).await
    }

    /// Both clients with their labels, exec first.
    pub fn paths(&self) -> [(&'static str, &sandpool_client::Client); 2] {
        [("exec", &self.exec.client), ("runner", &self.runner.client)]
    }

    /// Stops both servers (they remove their containers), then removes
    /// whatever of theirs is still on the engine; returns what it had to
    /// remove, as an error, when anything was left.
    pub async fn stop(self) -> Vec<String> {
        let mut problems = Vec::new();
        let ids = [self.exec.server_id.clone(), self.runner.server_id.clone()];
        for (name, server) in [("exec", self.exec), ("runner", self.runner)] {
            if let Err(e) = server.stop().await {
                problems.push(format!("stopping the {name} server: {e:#}"));
            }
        }
        for id in ids {
            match remove_labelled(&self.docker, &format!("sandpool.server={id}")).await {
                Ok(0) => {}
                Ok(n) => problems.push(format!("{n} containers of server {id} were left")),
                Err(e) => problems.push(format!("listing containers of {id}: {e:#}")),
            }
        }
        problems
    }
}

/// Removes every container (running or not) carrying `label` (`key=value`);
/// returns how many there were.
pub async fn remove_labelled(docker: &bollard::Docker, label: &str) -> anyhow::Result<usize> {
    let ids = containers_labelled(docker, &[label.to_string()]).await?;
    for id in &ids {
        docker
            .remove_container(
                id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await
            .with_context(|| format!("removing container {id}"))?;
    }
    Ok(ids.len())
}

/// Full ids of the containers carrying every label in `labels`.
pub async fn containers_labelled(
    docker: &bollard::Docker,
    labels: &[String],
) -> anyhow::Result<Vec<String>> {
    let filters = std::collections::HashMap::from([("label".to_string(), labels.to_vec())]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    Ok(list.into_iter().filter_map(|c| c.id).collect())
}
