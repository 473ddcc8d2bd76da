//! `cargo run --release -p sandpool-bench --bin plots`: what capturing a
//! matplotlib figure costs a run. The same program (build a figure, call
//! plt.show()) runs with sandpool's capture (the figure is saved and comes
//! back as an artifact) and with matplotlib's Agg backend (show() does
//! nothing, nothing comes back), interleaved on one warm lease.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use sandpool_client::{Client, proto as pb};
use sandpool_server::ServerConfig;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 40)]
    iterations: usize,
    #[arg(long, default_value = "sandpool/python:bookworm")]
    image: String,
}

const CODE: &str = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2, 5, 4])\nplt.title('bench')\nplt.show()\nprint('ok')";

async fn once(session: &sandpool_client::Session, capture: bool) -> anyhow::Result<(Duration, usize)> {
    let mut request = pb::RunRequest {
        program: Some(pb::run_request::Program::Code(pb::Code {
            source: Some(pb::code::Source::Text(CODE.into())),
            language: String::new(),
        })),
        ..Default::default()
    };
    if !capture {
        request.env.insert("MPLBACKEND".into(), "agg".into());
    }
    let started = Instant::now();
    let out = session.run_request(request).await?.collect().await?;
    let took = started.elapsed();
    if out.stdout_text() != "ok\n" {
        bail!("unexpected output {:?} / {:?}", out.stdout_text(), out.stderr_text());
    }
    let plots = out.artifacts.iter().filter(|a| a.last && a.info.as_ref().is_some_and(|i| i.plot)).count();
    if capture != (plots == 1) {
        bail!("capture={capture} but {plots} plots came back");
    }
    Ok((took, out.artifacts.iter().map(|a| a.data.len()).sum()))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = ServerConfig::from_toml("", std::path::Path::new("<bench>"))?;
    config.server_id = Some(format!("bench-plots-{}", std::process::id()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sandpool_server::serve(config, listener, async move {
        let _ = stopped.await;
    }));
    let client = Client::connect(format!("http://{addr}")).await?;
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
    for _ in 0..5 {
        once(&session, true).await?;
        once(&session, false).await?;
    }
    let (mut with, mut without, mut bytes) = (Vec::new(), Vec::new(), 0);
    for i in 0..args.iterations {
        if i % 2 == 0 {
            let (t, b) = once(&session, true).await?;
            with.push(t);
            bytes = b;
            without.push(once(&session, false).await?.0);
        } else {
            without.push(once(&session, false).await?.0);
            let (t, b) = once(&session, true).await?;
            with.push(t);
            bytes = b;
        }
    }
    let (w, wo) = (median(&mut with), median(&mut without));
    println!("plot capture, {} runs each on one warm lease (a figure and plt.show()):", args.iterations);
    println!("  with capture (PNG of {bytes} bytes back as an artifact): median {:.1} ms", w.as_secs_f64() * 1e3);
    println!("  without (Agg backend, nothing back):                 median {:.1} ms", wo.as_secs_f64() * 1e3);
    println!(
        "  overhead: {:.1} ms per run ({:.2}x)",
        (w.as_secs_f64() - wo.as_secs_f64()) * 1e3,
        w.as_secs_f64() / wo.as_secs_f64()
    );
    session.release().await?;
    let _ = stop.send(());
    server.await??;
    Ok(())
}
