//! The `sandpool-server` binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use sandpool_server::{ServerConfig, config::LogFormat, serve, telemetry};

/// Warm pools of sandbox containers, leased over gRPC.
#[derive(Debug, Parser)]
#[command(name = "sandpool-server", version)]
struct Args {
    /// Address to listen on [default: 127.0.0.1:50051, or the config's `listen`].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics (a bare port means
    /// 127.0.0.1:PORT).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Accept every caller as admin even on a non-loopback address without
    /// authentication (warned about at start and every 10 minutes).
    #[arg(long)]
    insecure: bool,
    /// TOML config file; without it, the built-in default (one `python` pool).
    #[arg(long, env = "SANDPOOL_CONFIG")]
    config: Option<PathBuf>,
    /// Identity written into container labels [default: <hostname>-<port>].
    #[arg(long)]
    server_id: Option<String>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// TLS certificate (PEM) for the gRPC listener; needs --tls-key.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates are required (mutual TLS).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Check the configuration, print the effective pools and exit.
    #[arg(long)]
    check_config: bool,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = match ServerConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sandpool-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(metrics) = args.metrics_listen {
        match sandpool_server::config::parse_metrics_listen("--metrics-listen", &metrics) {
            Ok(addr) => config.metrics_listen = Some(addr),
            Err(e) => {
                eprintln!("sandpool-server: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if args.insecure {
        config.auth.insecure = true;
    }
    match (args.tls_cert, args.tls_key, args.tls_client_ca) {
        (None, None, None) => {}
        (Some(cert), Some(key), client_ca) => {
            config.tls = Some(sandpool_server::config::TlsConfig {
                cert,
                key,
                client_ca,
            });
        }
        _ => {
            eprintln!(
                "sandpool-server: TLS needs --tls-cert and --tls-key (and --tls-client-ca only with them)"
            );
            return ExitCode::from(2);
        }
    }
    if let Some(id) = args.server_id {
        config.server_id = Some(id);
    }
    match args.log_format.as_deref() {
        None => {}
        Some("text") => config.log_format = LogFormat::Text,
        Some("json") => config.log_format = LogFormat::Json,
        Some(other) => {
            eprintln!("sandpool-server: --log-format {other:?} is not text or json");
            return ExitCode::from(2);
        }
    }
    if args.check_config {
        for pool in &config.pools {
            println!(
                "pool {}: {} on {} image {} (min {}, max {})",
                pool.name,
                pool.language,
                pool.backend,
                pool.image,
                pool.config.min_pool_size,
                pool.config.max_pool_size
            );
        }
        // `load` checked the cluster settings already.
        if let Ok(Some(cluster)) = config.cluster() {
            let peers: Vec<String> = cluster
                .peers
                .iter()
                .map(|p| format!("{} at {}", p.name, p.address))
                .collect();
            let peers = match (&cluster.kubernetes, peers.is_empty()) {
                (Some(k), _) => format!("from the EndpointSlices of {}", k.source()),
                (None, true) => "none".to_string(),
                (None, false) => peers.join(", "),
            };
            println!("replica {}: peers {peers}", cluster.replica);
        }
        println!("config OK");
        return ExitCode::SUCCESS;
    }
    let telemetry = match telemetry::init_with(config.log_format, &config.telemetry, |name| {
        std::env::var(name).ok()
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sandpool-server: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.listen, error = %e, "cannot listen");
            return ExitCode::from(1);
        }
    };
    let code = match serve(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::from(1)
        }
    };
    // The last spans and metrics (the shutdown's own included) go out now;
    // the SDK's flush blocks, so off the async workers.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}
