//! Wiring: the gRPC server with its services, health and reflection, start-up
//! cleanup, and a graceful shutdown that cannot hang.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use sandpool_proto::v1::{
    artifact_service_server::ArtifactServiceServer, pool_service_server::PoolServiceServer,
    session_service_server::SessionServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming},
};
use tonic_health::ServingStatus;

use crate::{
    api::{AppState, ArtifactApi, PoolApi, SessionApi, auth::Auth},
    backend::{BackendKind, DockerBackend, Engines, KubernetesBackend, SharedBackend},
    cluster::{self, Cluster},
    config::{ServerConfig, TlsConfig},
    pool::{ManagerSettings, PoolManager},
};

/// Largest request message: room for the biggest accepted code and stdin,
/// so that oversized ones get a clear INVALID_ARGUMENT from our checks.
pub(crate) const MAX_MESSAGE_BYTES: usize = 32 << 20;
/// How long tonic may take to close connections after the manager stopped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `<hostname>-<port>`: stable across restarts of the same server, distinct
/// for servers side by side on one host.
pub fn default_server_id(addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sandpool".to_string());
    format!("{host}-{}", addr.port())
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting, lets
/// runs finish within the grace period, and removes every container it made.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let server_id = config
        .server_id
        .clone()
        .unwrap_or_else(|| default_server_id(addr));
    let cluster_config = config.cluster()?;
    let cluster = match &cluster_config {
        Some(c) => {
            tracing::info!(
                replica = %c.replica,
                peers = %c.peers.iter().map(|p| format!("{}={}", p.name, p.address)).collect::<Vec<_>>().join(","),
                discovery = %c.kubernetes.as_ref().map(|k| k.source()).unwrap_or_default(),
                "one replica of several: lease ids start with `{}.`",
                c.replica
            );
            Cluster::new(c)?
        }
        None => Cluster::alone(),
    };
    // A TLS listener trusts the peers' CA for client certificates too: a
    // peer may prove itself with one (cluster::tls).
    let client_roots = match &config.tls {
        Some(tls) => cluster::tls::listener_client_roots(
            tls.client_ca.as_deref(),
            cluster_config.as_ref().and_then(|c| c.peer_ca.as_deref()),
        )?,
        None => None,
    };
    let cluster = Arc::new(cluster);
    // Ends the long-lived streams (and the peer watch) once the manager has
    // stopped.
    let streams = CancellationToken::new();
    // Whether each peer answers, so that one that went silent is given up
    // on (cluster::liveness); until the server stops.
    if cluster.replica().is_some() {
        crate::cluster::liveness::start(Arc::clone(&cluster), streams.clone());
    }
    // Peers from the Kubernetes API: watched from now, before the pools
    // warm, so the first list is there when calls come; and until the
    // server stops, so peers that come and go during a drain are seen too.
    if let Some(discovery) = cluster_config.and_then(|c| c.kubernetes) {
        crate::cluster::discovery::start(
            Arc::clone(&cluster),
            discovery,
            &config.kubernetes,
            streams.clone(),
        )
        .await?;
    }
    let auth = Auth::new(
        &config.auth,
        config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        cluster.peer_token(),
        client_roots.as_ref().and_then(|r| r.peer_certs.clone()),
    );
    let insecure = check_exposure(addr, auth.enabled(), config.auth.insecure)?;
    let settings = ManagerSettings {
        policy: config.policy.clone(),
        max_temporaries: config.max_temporaries,
        namespaces: config.namespaces(),
        resident_runner: config.resident_runner,
        replica: cluster.replica().map(str::to_string),
    };
    let manager = PoolManager::new(server_id.clone(), engines(&config), settings);
    crate::telemetry::metrics_export::register(&manager);

    let mut kinds = vec![BackendKind::Docker];
    kinds.extend(config.pools.iter().map(|p| p.backend));
    kinds.sort_by_key(|k| k.as_str());
    kinds.dedup();
    manager.remove_leftovers(&kinds).await;

    for spec in config.pools.iter().cloned() {
        let name = spec.name.clone();
        if let Err(e) = manager.create_config_pool(spec).await {
            tracing::error!(pool = %name, error = %e, "could not create pool");
        }
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sandpool_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sandpool_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    if insecure {
        warn_insecure(addr, streams.clone());
    }
    {
        let health = health.clone();
        let manager = Arc::clone(&manager);
        let stop = streams.clone();
        crate::supervise::spawn("health poller", move || {
            let health = health.clone();
            let manager = Arc::clone(&manager);
            let stop = stop.clone();
            async move {
                while !manager.all_settled() {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
                set_health(&health, ServingStatus::Serving).await;
                tracing::info!("pools are warm; serving");
                // Per engine: NOT_SERVING while it does not answer.
                let engines = [
                    BackendKind::Docker,
                    BackendKind::Podman,
                    BackendKind::Kubernetes,
                ]
                .map(|kind| manager.engine_health(kind));
                let mut watches = engines.each_ref().map(|e| e.subscribe());
                loop {
                    for (engine, watch) in engines.iter().zip(watches.iter_mut()) {
                        let status = if *watch.borrow_and_update() {
                            ServingStatus::Serving
                        } else {
                            ServingStatus::NotServing
                        };
                        health
                            .set_service_status(format!("sandpool.backend.{}", engine.kind), status)
                            .await;
                    }
                    let [a, b, c] = &mut watches;
                    tokio::select! {
                        r = a.changed() => if r.is_err() { return },
                        r = b.changed() => if r.is_err() { return },
                        r = c.changed() => if r.is_err() { return },
                        _ = stop.cancelled() => return,
                    }
                }
            }
        });
    }

    let state = Arc::new(AppState {
        manager: Arc::clone(&manager),
        run_limits: config.run_limits.clone(),
        file_limits: config.file_limits.clone(),
        journals: crate::api::resume::Budget::new(config.run_limits.max_buffer_bytes),
        streams: streams.clone(),
        cluster: Arc::clone(&cluster),
        pool_homes: Default::default(),
    });
    if auth.enabled() {
        tracing::info!(
            identities = config.auth.identities.len(),
            "authentication is on"
        );
    }
    let pools = PoolServiceServer::new(PoolApi::new(Arc::clone(&state)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let sessions = SessionServiceServer::new(SessionApi::new(Arc::clone(&state)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let artifacts = ArtifactServiceServer::new(ArtifactApi::new(Arc::clone(&state)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);

    tracing::info!(%addr, server_id = %server_id, "sandpool-server listening");
    if let Some(metrics_addr) = config.metrics_listen {
        let listener = TcpListener::bind(metrics_addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "metrics at /metrics");
        let manager = Arc::clone(&manager);
        let streams = streams.clone();
        tokio::spawn(async move {
            let stop = async move { streams.cancelled().await };
            if let Err(e) = crate::metrics::serve(manager, listener, stop).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }

    // Shutdown: stop accepting at once; the manager lets runs finish, then
    // revokes leases and removes containers; then long-lived streams end, so
    // tonic's graceful close (which waits for open streams) can complete.
    let stop_accepting = CancellationToken::new();
    let stopped = CancellationToken::new();
    let stopper = {
        let manager = Arc::clone(&manager);
        let stop_accepting = stop_accepting.clone();
        let stopped = stopped.clone();
        let streams = streams.clone();
        let health = health.clone();
        let grace = config.shutdown_grace;
        let cluster = Arc::clone(&state.cluster);
        tokio::spawn(async move {
            let told = tokio::select! {
                _ = shutdown => true,
                _ = stopped.cancelled() => false,
            };
            // The peers of now: with discovery they change at run time.
            let drains = cluster.has_peers();
            tracing::info!("shutting down");
            set_health(&health, ServingStatus::NotServing).await;
            let mut grace = grace;
            if told && drains {
                // One replica of several drains before it stops: it grants
                // no new leases (Acquires go to peers), and keeps
                // listening so that calls for its leases, direct or
                // forwarded by peers, keep working until they end.
                let until = tokio::time::Instant::now() + grace;
                tracing::info!(
                    leases = manager.active_leases(),
                    grace = grace.as_secs_f64(),
                    "draining: no new leases; the granted ones go on until released or the grace ends"
                );
                manager.drain(until).await;
                grace = until.saturating_duration_since(tokio::time::Instant::now());
                tracing::info!(leases = manager.active_leases(), "drained");
            }
            stop_accepting.cancel();
            manager.shutdown(grace).await;
            streams.cancel();
            tracing::info!("containers removed");
        })
    };

    let mut builder = Server::builder().layer(crate::telemetry::rpc::RpcSpanLayer);
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls_config(tls, client_roots.as_ref())?)?;
        tracing::info!(
            mutual = tls.client_ca.is_some(),
            peer_certificates = client_roots
                .as_ref()
                .is_some_and(|r| r.peer_certs.is_some()),
            "TLS is on"
        );
    }
    let serving = builder
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(pools, auth.clone()))
        .add_service(InterceptedService::new(sessions, auth.clone()))
        .add_service(InterceptedService::new(artifacts, auth))
        // tonic applies `tcp_nodelay` only to listeners it binds itself: set
        // it on the accepted connections here, or Nagle holds a run's output
        // event back until the client acknowledges the one before it (40 ms
        // with delayed ACKs, whenever events come close together).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), {
            let stop_accepting = stop_accepting.clone();
            let streams = streams.clone();
            async move {
                stop_accepting.cancelled().await;
                // Let the cleanup end the streams; do not wait on stubborn
                // connections forever.
                streams.cancelled().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    let result = tokio::select! {
        r = serving => r,
        _ = async {
            streams.cancelled().await;
            tokio::time::sleep(CLOSE_TIMEOUT).await;
        } => Ok(()),
    };
    // Whatever ended the server (shutdown or an error), clean up.
    stopped.cancel();
    stopper.await?;
    result.map_err(Into::into)
}

/// How often a server that accepts every caller as admin on a non-loopback
/// address says so again.
const INSECURE_WARNING_EVERY: Duration = Duration::from_secs(600);

/// Without authentication every caller is the admin: that is only safe where
/// only this machine can connect. Anything else is refused unless the
/// operator said `insecure`, and then warned about, now and every 10 minutes.
/// Returns whether the server runs insecure (and must keep saying so).
fn check_exposure(addr: SocketAddr, auth: bool, insecure: bool) -> anyhow::Result<bool> {
    if auth || addr.ip().is_loopback() {
        return Ok(false);
    }
    if !insecure {
        anyhow::bail!(
            "refusing to listen on {addr} without authentication: every caller would be an admin. \
             Configure [auth] tokens or [[auth.identities]] (or SANDPOOL_TOKENS), or mutual TLS \
             (tls.client_ca); listen on 127.0.0.1; or, to accept anyone anyway, set \
             auth.insecure = true (--insecure)"
        );
    }
    Ok(true)
}

/// Warns now and every 10 minutes until `stop`.
fn warn_insecure(addr: SocketAddr, stop: CancellationToken) {
    let warn = move || tracing::warn!(%addr, "INSECURE: no authentication on a non-loopback address; every caller is an admin");
    warn();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(INSECURE_WARNING_EVERY);
        every.tick().await;
        loop {
            tokio::select! {
                _ = every.tick() => warn(),
                _ = stop.cancelled() => return,
            }
        }
    });
}

/// The engines pools may run on, each reached where the config (or the
/// engine's own environment variables) says. Nothing connects before a pool
/// needs it.
fn engines(config: &ServerConfig) -> Engines {
    let docker_api = [BackendKind::Docker, BackendKind::Podman].map(|kind| {
        let endpoint = config
            .engines
            .get(&kind)
            .cloned()
            .unwrap_or_else(|| DockerBackend::default_endpoint(kind));
        Arc::new(DockerBackend::new(kind, endpoint)) as SharedBackend
    });
    let kubernetes = Arc::new(KubernetesBackend::new(config.kubernetes.clone())) as SharedBackend;
    Engines::new(docker_api.into_iter().chain([kubernetes]))
}

/// The listener's TLS from PEM files; with a client CA, client certificates
/// are required (mTLS); with only the peers' CA they are optional: peers
/// show theirs, ordinary clients have none.
fn tls_config(
    tls: &TlsConfig,
    client_roots: Option<&cluster::tls::ListenerRoots>,
) -> anyhow::Result<ServerTlsConfig> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the TLS {what} {}: {e}", path.display()))
    };
    let identity = Identity::from_pem(read("certificate", &tls.cert)?, read("key", &tls.key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(roots) = client_roots {
        config = config
            .client_ca_root(Certificate::from_pem(&roots.pem))
            .client_auth_optional(tls.client_ca.is_none());
    }
    Ok(config)
}

async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for service in [
        "",
        "sandpool.v1.PoolService",
        "sandpool.v1.SessionService",
        "sandpool.v1.ArtifactService",
    ] {
        health.set_service_status(service, status).await;
    }
}
