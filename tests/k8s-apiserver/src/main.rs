//! `k8s-testserver`: the test API server as a program, for kubectl and
//! manual use. Prints its URL (and writes a kubeconfig when asked), serves
//! until SIGINT/SIGTERM, then removes every container it created.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(about = "Kubernetes test API server that runs each Pod as a Docker container")]
struct Args {
    /// Address to listen on (loopback: there is no authentication).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Default namespace of the kubeconfig's context.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 5)]
    bookmark_interval: u64,
    /// Label value for this instance's containers (random by default).
    #[arg(long)]
    instance_id: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let server = sandpool_k8s_testserver::serve(sandpool_k8s_testserver::Config {
        bind: args.bind,
        instance_id: args.instance_id,
        bookmark_interval: Duration::from_secs(args.bookmark_interval.max(1)),
        ..Default::default()
    })
    .await?;
    if let Some(path) = &args.kubeconfig {
        server.write_kubeconfig(path, &args.namespace)?;
        eprintln!("kubeconfig: {}", path.display());
    }
    // The URL alone on stdout, so scripts can read it.
    println!("{}", server.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("shutting down; removing containers");
    server.shutdown().await;
    Ok(())
}
