//! `tracing_cost`: what OpenTelemetry tracing costs on the warm path.
//!
//! One server in-process with OTLP export on (to an OTLP receiver in the
//! same process, over real OTLP/gRPC) and a warm pool; Acquire + Run of
//! `print('test')` + Release cycles on a settled pool (the wait for it
//! untraced), alternating rounds with tracing on and paused (`telemetry::set_tracing`: paused, the server
//! makes no span at all, as with OpenTelemetry unconfigured), so both sides
//! see the same machine noise. Prints the medians and their ratio.
//!
//! Run: `cargo run --release -p sandpool-bench --bin tracing_cost -- --rounds 10 --per-round 20`.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use sandpool_bench::{median, python_pool, settle};
use sandpool_client::Client;
use sandpool_server::{
    ServerConfig,
    config::LogFormat,
    telemetry::{self, Telemetry, TelemetrySettings},
};
use sandpool_tests::otlp::Receiver;

#[derive(Debug, Parser)]
struct Args {
    /// Rounds of each kind, alternating.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Cycles per round.
    #[arg(long, default_value_t = 20)]
    per_round: usize,
    /// Image of the pool.
    #[arg(long, default_value = "sandpool/python:bookworm")]
    image: String,
}

/// One measured cycle, traced or not. The wait for the pool to settle
/// (GetPoolStats every 2 ms) is left untraced either way: its spans would
/// load the exporter with work no real client causes.
async fn cycle(client: &Client, telemetry: &Telemetry, traced: bool) -> anyhow::Result<Duration> {
    telemetry::set_tracing(false, telemetry);
    settle(client, "bench", 2).await?;
    telemetry::set_tracing(traced, telemetry);
    let started = Instant::now();
    let session = client.acquire("bench").await?;
    let out = session.run_collect("print('test')").await?;
    session.release().await?;
    let took = started.elapsed();
    if &out.stdout[..] != b"test\n" {
        bail!("unexpected output {:?}", out.stdout);
    }
    Ok(took)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let receiver = Receiver::start().await;
    let settings = TelemetrySettings {
        otlp_endpoint: Some(receiver.endpoint()),
        service_name: Some("sandpool-bench".into()),
        metrics_interval: Some(5.0),
    };
    // Only the settings above: no OTEL_* variable of the caller's.
    let telemetry = telemetry::init_with(LogFormat::Text, &settings, |_| None)?;
    let mut config = ServerConfig::from_toml("", std::path::Path::new("<bench>"))?;
    config.server_id = Some(format!("bench-otel-{}", std::process::id()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sandpool_server::serve(config, listener, async move {
        let _ = stopped.await;
    }));
    let client = Client::connect(format!("http://{addr}")).await?;
    python_pool(&client, "bench", &args.image, 2).await?;
    // Warm-up on both settings.
    for on in [true, false] {
        for _ in 0..5 {
            cycle(&client, &telemetry, on).await?;
        }
    }
    let (mut traced, mut untraced) = (Vec::new(), Vec::new());
    for round in 0..args.rounds * 2 {
        let on = round % 2 == 0;
        for _ in 0..args.per_round {
            let took = cycle(&client, &telemetry, on).await?;
            if on { &mut traced } else { &mut untraced }.push(took);
        }
    }
    let spans_before_stop = receiver.spans().len();
    let (n_on, n_off) = (traced.len(), untraced.len());
    let (on, off) = (median(&mut traced), median(&mut untraced));
    println!("warm Acquire + Run + Release, median of {n_on} traced and {n_off} untraced cycles:");
    println!("  tracing on     {:8.3} ms", on.as_secs_f64() * 1e3);
    println!("  tracing off    {:8.3} ms", off.as_secs_f64() * 1e3);
    println!(
        "  ratio on/off   {:8.3}",
        on.as_secs_f64() / off.as_secs_f64()
    );
    println!("  spans received {spans_before_stop} (by OTLP, before shutdown)");
    let _ = stop.send(());
    server.await??;
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    receiver.stop().await;
    Ok(())
}
