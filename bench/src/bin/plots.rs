//! `cargo run --release -p sandpool-bench --bin plots`: what capturing a
//! matplotlib figure costs a run. Interleaved on one warm lease:
//!   - a program that makes data and plots it (plt.show()), with sandpool's
//!     capture: the figure is saved and comes back as an artifact;
//!   - the same program with matplotlib's Agg backend: show() does nothing,
//!     nothing comes back (the capture's own cost is the difference);
//!   - the same program without the plotting lines (no matplotlib at all).

use std::time::Duration;

use clap::Parser;
use sandpool_bench::{
    BenchServer, median,
    plot_capture::{Variant, run_variant},
};
use sandpool_client::proto as pb;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 40)]
    iterations: usize,
    #[arg(long, default_value = "sandpool/python:bookworm")]
    image: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = BenchServer::start("plots").await?;
    let client = server.client.clone();
    client
        .create_pool(
            pb::PoolSpec {
                name: "plots".into(),
                language: "python".into(),
                image: args.image.clone(),
                config: Some(pb::PoolConfig {
                    min_pool_size: Some(1),
                    max_pool_size: Some(1),
                    ..Default::default()
                }),
                ..Default::default()
            },
            true,
        )
        .await?;
    let session = client.acquire("plots").await?;
    let variants = Variant::ALL;
    for _ in 0..5 {
        for v in variants {
            run_variant(&session, v).await?;
        }
    }
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut bytes = 0;
    for i in 0..args.iterations {
        // Rotate the order so that drift in the machine's load hits all alike.
        for k in 0..3 {
            let v = variants[(i + k) % 3];
            let (t, b) = run_variant(&session, v).await?;
            if v == Variant::Captured {
                bytes = b;
            }
            times[variants.iter().position(|x| *x == v).unwrap_or(0)].push(t);
        }
    }
    let [c, a, n] = times.map(|mut t| median(&mut t).as_secs_f64() * 1e3);
    println!(
        "plot capture, {} runs each on one warm lease:",
        args.iterations
    );
    println!("  plot + plt.show(), captured (PNG of {bytes} bytes back): median {c:7.1} ms");
    println!("  same, Agg backend (nothing saved or sent):             median {a:7.1} ms");
    println!("  same program without the plotting lines:               median {n:7.1} ms");
    println!(
        "  capture overhead: {:.1} ms per run ({:.2}x the Agg run)",
        c - a,
        c / a
    );
    println!(
        "  plotting plus capture against no plotting: {:.1} ms ({:.2}x)",
        c - n,
        c / n
    );
    session.release().await?;
    server.stop().await
}
