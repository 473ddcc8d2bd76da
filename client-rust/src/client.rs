//! The client: one channel, one accessor per service, bearer token on every
//! call, a deadline on every unary call, and optional TLS (feature `tls`).

use std::time::Duration;

use sandpool_proto::v1::{
    self as pb, artifact_service_client::ArtifactServiceClient,
    pool_service_client::PoolServiceClient, session_service_client::SessionServiceClient,
};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::{AcquireOptions, Error, Session};

/// Default deadline of unary calls.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default deadline of Acquire (the pool's acquisition_timeout usually ends
/// a wait first).
pub const DEFAULT_ACQUIRE_WAIT: Duration = Duration::from_secs(300);
/// Least deadline of calls that wait by design (warm-up, drain, installs).
const LONG_TIMEOUT: Duration = Duration::from_secs(600);
/// Default deadline of uploads and downloads.
pub(crate) const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// The metadata every call carries: `authorization: Bearer <token>` when a
/// token is set, and the W3C trace context (see
/// [`ClientBuilder::traceparent`] and the `otel` feature).
#[derive(Clone)]
pub struct Bearer {
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    trace: crate::trace::TraceContext,
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        self.trace.apply(request.metadata_mut());
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Bearer>;
/// The SessionService client every session call goes through.
pub(crate) type SessionsClient = SessionServiceClient<Svc>;

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: String,
    token: Option<String>,
    traceparent: Option<(String, Option<String>)>,
    connect_timeout: Duration,
    timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl ClientBuilder {
    /// A bearer token for servers that require one.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A W3C `traceparent` (and `tracestate`) sent on every call, so that
    /// the server's spans join that trace. Without one, with the `otel`
    /// feature, each call carries the current OpenTelemetry context (through
    /// the global propagator), when there is one.
    pub fn traceparent(
        mut self,
        traceparent: impl Into<String>,
        tracestate: Option<String>,
    ) -> Self {
        self.traceparent = Some((traceparent.into(), tracestate));
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline of every unary call (default 30 s). Calls that wait by
    /// design take longer ones: Acquire its `wait` (default 300 s),
    /// CreatePool with `wait_ready`, DeletePool with `wait` and
    /// InstallLibraries at least 600 s, uploads and downloads 300 s. Runs
    /// have none: their own timeout ends them.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// TLS with the system's root certificates (feature `tls`). An
    /// `https://` address turns this on by itself.
    #[cfg(feature = "tls")]
    pub fn tls(self) -> Self {
        self.tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
    }

    /// TLS with explicit settings: a CA (`ca_certificate`), a client
    /// identity for mTLS (`identity`), the name to check (`domain_name`).
    /// Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: tonic::transport::ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    fn endpoint(&self) -> Result<Endpoint, Error> {
        #[cfg(feature = "tls")]
        let tls = self.tls.clone().or_else(|| {
            self.addr
                .starts_with("https://")
                .then(|| tonic::transport::ClientTlsConfig::new().with_native_roots())
        });
        #[cfg(not(feature = "tls"))]
        if self.addr.starts_with("https://") {
            return Err(Error::InvalidAddress(format!(
                "{}: TLS needs the `tls` feature of sandpool-client",
                self.addr
            )));
        }
        let uri = if self.addr.contains("://") {
            self.addr.clone()
        } else {
            #[cfg(feature = "tls")]
            let scheme = if tls.is_some() { "https" } else { "http" };
            #[cfg(not(feature = "tls"))]
            let scheme = "http";
            format!("{scheme}://{}", self.addr)
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|_| Error::InvalidAddress(self.addr.clone()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        #[cfg(feature = "tls")]
        let endpoint = match tls {
            Some(config) => endpoint
                .tls_config(config)
                .map_err(|source| Error::Connect {
                    addr: self.addr.clone(),
                    source,
                })?,
            None => endpoint,
        };
        Ok(endpoint)
    }

    pub async fn connect(self) -> Result<Client, Error> {
        let endpoint = self.endpoint()?;
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            addr: self.addr.clone(),
            source,
        })?;
        let token = match self.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Error::Protocol("the token is not valid header text".into()))?,
            ),
            None => None,
        };
        let trace = match self.traceparent {
            Some((parent, state)) => {
                crate::trace::TraceContext::explicit(&parent, state.as_deref())?
            }
            None => crate::trace::TraceContext::current(),
        };
        Ok(Client {
            channel,
            bearer: Bearer { token, trace },
            timeout: self.timeout,
        })
    }
}

/// A connection to a sandpool server. Cheap to clone (one shared channel).
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    bearer: Bearer,
    timeout: Duration,
}

/// A request with a deadline (sent as `grpc-timeout`, enforced here too).
pub(crate) fn with_deadline<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

impl Client {
    /// Connects to `addr` ("http://host:port" or "host:port").
    pub async fn connect(addr: impl Into<String>) -> Result<Self, Error> {
        Self::builder(addr).connect().await
    }

    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            addr: addr.into(),
            token: None,
            traceparent: None,
            connect_timeout: Duration::from_secs(10),
            timeout: DEFAULT_TIMEOUT,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The deadline of unary calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn unary<T>(&self, message: T) -> Request<T> {
        with_deadline(message, self.timeout)
    }

    /// The deadline of calls that wait by design (at least 600 s).
    pub(crate) fn long(&self) -> Duration {
        self.timeout.max(LONG_TIMEOUT)
    }

    /// The raw PoolService client (no default deadline: set one on the
    /// request).
    pub fn pools(&self) -> PoolServiceClient<Svc> {
        PoolServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// The raw SessionService client.
    pub fn sessions(&self) -> SessionServiceClient<Svc> {
        SessionServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
            .max_decoding_message_size(64 << 20)
    }

    /// The raw ArtifactService client.
    pub fn artifacts(&self) -> ArtifactServiceClient<Svc> {
        ArtifactServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
            .max_decoding_message_size(64 << 20)
    }

    /// Leases a warm container of `pool` with the pool's default TTL.
    pub async fn acquire(&self, pool: &str) -> Result<Session, Error> {
        self.acquire_with(AcquireOptions::new(pool)).await
    }

    /// Leases a container with options (TTL, how long to wait).
    pub async fn acquire_with(&self, options: AcquireOptions) -> Result<Session, Error> {
        Session::acquire(self.clone(), options).await
    }

    /// Creates a pool.
    pub async fn create_pool(
        &self,
        spec: pb::PoolSpec,
        wait_ready: bool,
    ) -> Result<pb::Pool, Error> {
        let response = self
            .pools()
            .create_pool(with_deadline(
                pb::CreatePoolRequest {
                    spec: Some(spec),
                    wait_ready,
                    ..Default::default()
                },
                if wait_ready {
                    self.long()
                } else {
                    self.timeout
                },
            ))
            .await?;
        response
            .into_inner()
            .pool
            .ok_or_else(|| Error::Protocol("CreatePool answered without a pool".into()))
    }

    /// Deletes (drains) a pool.
    pub async fn delete_pool(&self, name: &str, wait: bool) -> Result<u32, Error> {
        let response = self
            .pools()
            .delete_pool(with_deadline(
                pb::DeletePoolRequest {
                    name: name.to_string(),
                    wait,
                },
                if wait { self.long() } else { self.timeout },
            ))
            .await?;
        Ok(response.into_inner().busy_remaining)
    }

    /// One pool: its effective spec, phase and stats.
    pub async fn get_pool(&self, name: &str) -> Result<pb::Pool, Error> {
        self.pools()
            .get_pool(self.unary(pb::GetPoolRequest {
                name: name.to_string(),
            }))
            .await?
            .into_inner()
            .pool
            .ok_or_else(|| Error::Protocol("GetPool answered without a pool".into()))
    }

    /// Every pool.
    pub async fn list_pools(&self) -> Result<Vec<pb::Pool>, Error> {
        Ok(self
            .pools()
            .list_pools(self.unary(pb::ListPoolsRequest {}))
            .await?
            .into_inner()
            .pools)
    }

    /// A pool's statistics (with several replicas behind the address, a
    /// config pool's are summed over them; see `replica_stats`).
    pub async fn stats(&self, name: &str) -> Result<pb::PoolStats, Error> {
        self.replica_stats(name, "").await
    }

    /// One replica's own statistics of a pool (`replica`: its name, as
    /// lease ids carry it; empty: as `stats`).
    pub async fn replica_stats(&self, name: &str, replica: &str) -> Result<pb::PoolStats, Error> {
        self.pools()
            .get_pool_stats(self.unary(pb::GetPoolStatsRequest {
                name: name.to_string(),
                replica: replica.to_string(),
            }))
            .await?
            .into_inner()
            .stats
            .ok_or_else(|| Error::Protocol("GetPoolStats answered without stats".into()))
    }

    /// A stream of a pool's statistics on every change.
    pub async fn watch_stats(
        &self,
        name: &str,
    ) -> Result<tonic::Streaming<pb::WatchPoolStatsResponse>, Error> {
        Ok(self
            .pools()
            .watch_pool_stats(pb::WatchPoolStatsRequest {
                name: name.to_string(),
                replica: String::new(),
            })
            .await?
            .into_inner())
    }
}
