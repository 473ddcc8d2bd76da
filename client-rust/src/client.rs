//! The client: one channel, one accessor per service, bearer token on every call.

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

/// Adds `authorization: Bearer <token>` when a token is set.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Bearer>;

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: String,
    token: Option<String>,
    connect_timeout: Duration,
}

impl ClientBuilder {
    /// A bearer token for servers that require one.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub async fn connect(self) -> Result<Client, Error> {
        let uri = if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|_| Error::InvalidAddress(self.addr.clone()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
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
        Ok(Client {
            channel,
            bearer: Bearer(token),
        })
    }
}

/// A connection to a sandpool server. Cheap to clone (one shared channel).
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    bearer: Bearer,
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
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The raw PoolService client.
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
            .create_pool(pb::CreatePoolRequest {
                spec: Some(spec),
                wait_ready,
            })
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
            .delete_pool(pb::DeletePoolRequest {
                name: name.to_string(),
                wait,
            })
            .await?;
        Ok(response.into_inner().busy_remaining)
    }

    /// Every pool.
    pub async fn list_pools(&self) -> Result<Vec<pb::Pool>, Error> {
        Ok(self
            .pools()
            .list_pools(pb::ListPoolsRequest {})
            .await?
            .into_inner()
            .pools)
    }

    /// A pool's statistics.
    pub async fn stats(&self, name: &str) -> Result<pb::PoolStats, Error> {
        self.pools()
            .get_pool_stats(pb::GetPoolStatsRequest {
                name: name.to_string(),
            })
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
            })
            .await?
            .into_inner())
    }
}
