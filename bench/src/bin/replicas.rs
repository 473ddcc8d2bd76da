//! `replicas`: warm Acquire + Run + Release throughput through one address,
//! one replica against three, in one run, beside the floor.
//!
//! Each setup is N `sandpool-server` processes (the build beside this
//! binary) with a static peer list behind a real nginx (`grpc_pass`,
//! round-robin), one config pool of Python with the same number of warm
//! containers in all (divided over the replicas: per-replica sizes, as the
//! config documents them), and `clients` concurrent client tasks, each on a
//! connection of its own (so nginx spreads them), doing Acquire, Run
//! `print('test')`, Release for `seconds`. The floor is the same number of
//! tasks doing a raw engine exec of the same program (bollard) on the
//! one-replica setup's containers. The setups run one after the other, the
//! floor first and last (its two runs show the drift of the machine).
//!
//! Needs nginx (scripts/lb-up.sh) and a release build:
//! `cargo build --release -p sandpool-server --bins &&
//!  cargo run --release -p sandpool-bench --bin replicas`.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use sandpool_bench::{
    docker, raw_exec,
    stats::{median, p95},
};
use sandpool_client::Client;
use sandpool_tests::{labelled, replicas::ReplicaSet};

#[derive(Debug, Parser)]
struct Args {
    /// Warm containers in all, divided over the replicas.
    #[arg(long, default_value_t = 6)]
    containers: u32,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 12)]
    clients: usize,
    /// How long each setup is measured, after a warm-up of 3 s.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Image of the pool.
    #[arg(long, default_value = "sandpool/python:bookworm")]
    image: String,
    /// Clients connect to the replicas straight (spread over them), not
    /// through nginx: what the balancer costs.
    #[arg(long)]
    direct: bool,
}

const CODE: &str = "print('test')";

/// What one setup measured.
struct Measured {
    cycles: usize,
    took: Duration,
    latencies: Vec<Duration>,
    errors: usize,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.cycles as f64 / self.took.as_secs_f64()
    }
}

/// `tasks` tasks each doing `work` over and over for `warm_up` (not
/// counted) and then `measure`.
async fn load<F, Fut>(tasks: usize, warm_up: Duration, measure: Duration, work: F) -> Measured
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Duration>> + Send,
{
    let work = Arc::new(work);
    let start = Instant::now() + warm_up;
    let end = start + measure;
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let work = Arc::clone(&work);
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    match work(i).await {
                        Ok(took) if began >= start && Instant::now() <= end => latencies.push(took),
                        Ok(_) => {}
                        Err(e) => {
                            errors += 1;
                            eprintln!("task {i}: {e:#}");

                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Measured {
        cycles: 0,
        took: measure,
        latencies: Vec::new(),
        errors: 0,
    };
    for handle in handles {
        if let Ok((latencies, errors)) = handle.await {
            all.cycles += latencies.len();
            all.latencies.extend(latencies);
            all.errors += errors;
        }
    }
    all
}

/// The replicas `names`, each with its share of `containers`, warm.
async fn start(server: &Path, names: &[&'static str], args: &Args) -> anyhow::Result<ReplicaSet> {
    let share = args.containers / names.len() as u32;
    let pools = format!(
        "[[pools]]\nname = \"py\"\nlanguage = \"python\"\nimage = \"{}\"\n\
         min_pool_size = {share}\nmax_pool_size = {share}\n",
        args.image
    );
    let set = ReplicaSet::start(server, names, &pools).await;
    eprintln!("{} replica(s), logs in {}", names.len(), set.dir.display());
    let client = connect(&set).await?;
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = client.stats("py").await?;
        if stats
            .state_counts
            .is_some_and(|c| c.idle == share * names.len() as u32)
        {
            return Ok(set);
        }
        anyhow::ensure!(Instant::now() < until, "the pool did not warm: {stats:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn connect(set: &ReplicaSet) -> anyhow::Result<Client> {
    Client::builder(set.url())
        .token(&set.token)
        .connect()
        .await
        .context("connect through the balancer")
}

/// Acquire + Run + Release through the balancer, from `clients` tasks on
/// connections of their own.
async fn cycles(set: &ReplicaSet, args: &Args) -> anyhow::Result<Measured> {
    let mut clients = Vec::new();
    for i in 0..args.clients {
        clients.push(if args.direct {
            let replica = &set.replicas[i % set.replicas.len()];
            Client::builder(format!("http://{}", replica.addr))
                .token(&set.token)
                .connect()
                .await
                .context("connect to a replica")?
        } else {
            connect(set).await?
        });
    }
    let clients = Arc::new(clients);
    Ok(load(
        args.clients,
        Duration::from_secs(3),
        Duration::from_secs(args.seconds),
        move |i| {
            let clients = Arc::clone(&clients);
            async move { sandpool_bench::cycle(&clients[i], "py", CODE, b"test\n").await }
        },
    )
    .await)
}

/// The floor: raw engine execs of the same program on `containers`.
async fn floor(containers: &[String], args: &Args) -> anyhow::Result<Measured> {
    let docker = docker().await?;
    let containers = Arc::new(containers.to_vec());
    let argv: Arc<Vec<String>> = Arc::new(["python3", "-c", CODE].map(String::from).to_vec());
    Ok(load(
        args.clients,
        Duration::from_secs(3),
        Duration::from_secs(args.seconds),
        move |i| {
            let (docker, containers, argv) =
                (docker.clone(), Arc::clone(&containers), Arc::clone(&argv));
            async move {
                let container = &containers[i % containers.len()];
                raw_exec(&docker, container, &argv, &[], b"test\n").await
            }
        },
    )
    .await)
}

fn line(what: &str, m: &mut Measured, floor: f64) {
    let (p50, p95) = if m.latencies.is_empty() {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (median(&mut m.latencies.clone()), p95(&mut m.latencies))
    };
    println!(
        "{what:<44} {:>9.1} {:>9.1} ms {:>9.1} ms {:>7.2}x {:>6}",
        m.rate(),
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3,
        m.rate() / floor,
        m.errors
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = std::env::current_exe()?
        .parent()
        .context("the binary's directory")?
        .join("sandpool-server");
    anyhow::ensure!(
        server.exists(),
        "{} is missing: cargo build --release -p sandpool-server --bins",
        server.display()
    );

    let one = start(&server, &["a"], &args).await?;
    let containers: Vec<String> = labelled(&one.replicas[0].server_id)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut floor_before = floor(&containers, &args).await?;
    let mut on_one = cycles(&one, &args).await?;
    one.stop().await;

    let three = start(&server, &["a", "b", "c"], &args).await?;
    let mut on_three = cycles(&three, &args).await?;
    let forwarded: usize = three
        .replicas
        .iter()
        .map(|r| {
            r.log_lines("forwarding Acquire to a peer with an idle container", "")
                .len()
        })
        .sum();
    let containers: Vec<String> = {
        let mut all = Vec::new();
        for r in &three.replicas {
            all.extend(labelled(&r.server_id).await.into_iter().map(|c| c.id));
        }
        all
    };
    let mut floor_after = floor(&containers, &args).await?;
    three.stop().await;

    let floor_rate = (floor_before.rate() + floor_after.rate()) / 2.0;
    println!(
        "replicas bench: {} warm containers in all, {} client tasks, {} s each, {CODE:?}, {} cores",
        args.containers,
        args.clients,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<44} {:>9} {:>12} {:>12} {:>8} {:>6}",
        "", "cycles/s", "p50", "p95", "/floor", "errors"
    );
    line(
        "floor: raw engine exec, before",
        &mut floor_before,
        floor_rate,
    );
    let via = if args.direct { "straight" } else { "via nginx" };
    line(
        &format!("1 replica: Acquire + Run + Release {via}"),
        &mut on_one,
        floor_rate,
    );
    line(
        &format!("3 replicas: Acquire + Run + Release {via}"),
        &mut on_three,
        floor_rate,
    );
    line(
        "floor: raw engine exec, after",
        &mut floor_after,
        floor_rate,
    );
    println!(
        "3 replicas / 1 replica: {:.2}x; Acquires forwarded to a peer with an idle container: {forwarded} of {}",
        on_three.rate() / on_one.rate(),
        on_three.cycles
    );
    Ok(())
}
