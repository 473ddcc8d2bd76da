//! gRPC services: one module per service, each thin: decode, call the core,
//! map errors (in `status`).

mod artifact_service;
pub mod audit;
pub mod auth;
pub mod convert;
mod forward;
mod peer_pools;
mod pool_homes;
mod pool_service;
mod pool_watch;
pub mod resume;
mod session_service;
mod status;

use std::{sync::Arc, time::Duration};

// tokio's clock: the pool layer's deadlines are on it (see `pool::pool`).
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tonic::Request;

pub use artifact_service::ArtifactApi;
pub use pool_homes::PoolHomes;
pub use pool_service::PoolApi;
pub use session_service::SessionApi;

use crate::{files::FileLimits, identity::Identity, pool::PoolManager, run::RunLimits};

/// What every service shares.
pub struct AppState {
    pub manager: Arc<PoolManager>,
    pub run_limits: RunLimits,
    pub file_limits: FileLimits,
    /// What resumable runs keep for Attach, all together.
    pub journals: Arc<resume::Budget>,
    /// Cancelled at shutdown: long-lived streams (keepalive, watch) end.
    pub streams: CancellationToken,
    /// This replica's peers: calls for their leases are forwarded to them.
    pub cluster: Arc<crate::cluster::Cluster>,
    /// Where the peers' pools made at run time were found.
    pub pool_homes: pool_homes::PoolHomes,
}

/// The identity making the call, as the auth interceptor found it. A
/// service reached without the interceptor would be a wiring bug: it is
/// refused rather than trusted.
fn caller<T>(request: &Request<T>) -> Result<Arc<Identity>, tonic::Status> {
    request
        .extensions()
        .get::<auth::Caller>()
        .map(|c| Arc::clone(&c.0))
        .ok_or_else(|| status::unauthenticated("the call reached a service without authentication"))
}

/// A request field that must not be empty: INVALID_ARGUMENT naming it.
fn required(field: &str, value: &str) -> Result<(), tonic::Status> {
    if value.is_empty() {
        return Err(crate::error::Error::invalid(field, "is empty").into());
    }
    Ok(())
}

/// The caller's deadline from the `grpc-timeout` header, a little early so
/// that the server's own answer (say RESOURCE_EXHAUSTED after a wait) reaches
/// the client before its deadline fires.
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(value)?;
    let margin = (timeout / 20).min(Duration::from_millis(50));
    Some(Instant::now() + timeout.saturating_sub(margin))
}

/// Parses the gRPC wire format of a timeout: up to 8 digits and a unit.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(
            parse_grpc_timeout("1500m"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
