//! `soak`: the randomised protocol test of `tests/tests/chaos.rs`, longer.
//!
//! Starts a server in-process, then runs chaos clients (this binary again,
//! as `soak client ...`, in separate processes) until `--leases` leases were
//! served, SIGKILLing `--kill-fraction` of them at a random moment, with the
//! same invariant checks as the test. Prints leases served, containers
//! leaked, slots stuck, reclaim times, and every violation; exits 1 if there
//! was any.
//!
//! `cargo run -p sandpool-bench --release --bin soak -- --leases 1000 --kill-fraction 0.1`
//! (`--engine podman` for Podman pools)

use std::time::Duration;

use clap::Parser;
use sandpool_tests::{
    Engine, TestServer,
    chaos::{
        client::{self, ClientArgs},
        driver::{self, Config, Report},
    },
};

#[derive(Debug, Parser)]
struct Args {
    /// Run until this many leases were served.
    #[arg(long, default_value_t = 1000)]
    leases: u64,
    /// Share of the clients killed with SIGKILL.
    #[arg(long, default_value_t = 0.1)]
    kill_fraction: f64,
    /// Clients running at once.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Steps of each client.
    #[arg(long, default_value_t = 30)]
    steps: u32,
    /// Seed (default: SANDPOOL_CHAOS_SEED, else random).
    #[arg(long)]
    seed: Option<u64>,
    /// Start no new client after this many seconds.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
    /// Image of the pools.
    #[arg(long, default_value = "sandpool/python:bookworm")]
    image: String,
    /// Engine of the pools: docker or podman.
    #[arg(long, default_value = "docker")]
    engine: String,
    /// Print every step.
    #[arg(long)]
    verbose: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args();
    let program = argv.next().unwrap_or_default();
    let rest: Vec<String> = argv.collect();
    if rest.first().map(String::as_str) == Some("client") {
        // One chaos client (started by the soak itself).
        let args = ClientArgs::parse(rest.into_iter().skip(1))
            .map_err(|e| anyhow::anyhow!("{e}\n{}", ClientArgs::USAGE))?;
        return client::run(args).await;
    }
    let args = Args::parse_from(std::iter::once(program).chain(rest));
    let engine = match args.engine.as_str() {
        "docker" => Engine::Docker,
        "podman" => Engine::Podman,
        other => anyhow::bail!("--engine {other:?}: docker or podman"),
    };
    let seed = args.seed.unwrap_or_else(driver::seed_from_env);
    let server = TestServer::start().await;
    let config = Config {
        seed,
        slots: args.clients,
        clients: 0,
        min_leases: args.leases,
        steps: args.steps,
        kill_fraction: args.kill_fraction,
        budget: Duration::from_secs(args.max_secs),
        program: std::env::current_exe()?,
        program_args: vec!["client".into()],
        tag: "soak".into(),
        image: args.image,
        engine,
        server_id: server.server_id.clone(),
        verbose: args.verbose,
    };
    let report = driver::run(config, server.addr, server.client.clone()).await;
    let left = server.stop_and_list().await;
    print(&report, left.len());
    if !report.violations.is_empty() || !left.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

fn print(report: &Report, left: usize) {
    let q = |q: f64| Report::quantile(&report.reclaim_times, q).as_secs_f64();
    println!("{}", report.summary());
    println!();
    println!("leases served        {}", report.leases_served);
    println!(
        "clients              {} ({} SIGKILLed, {} vanished)",
        report.clients, report.killed, report.vanished
    );
    println!(
        "containers leaked    {} before shutdown, {left} after",
        report.leaked_containers
    );
    println!("slots stuck          {}", report.stuck_slots);
    println!(
        "reclaim time         p50 {:.2}s  p99 {:.2}s  max {:.2}s  ({} leases: abandoned or of dead clients)",
        q(0.5),
        q(0.99),
        q(1.0),
        report.reclaim_times.len()
    );
    println!(
        "owned pools gone     {} of dead creators, max {:.2}s",
        report.pool_gone_times.len(),
        Report::quantile(&report.pool_gone_times, 1.0).as_secs_f64()
    );
    println!("violations           {}", report.violations.len());
    for v in &report.violations {
        println!("  {v}");
    }
}
