//! A pool that belongs to this client: created with an owner TTL, kept alive
//! in the background by the same keepalive as a lease (see
//! [`crate::keepalive`] for the contract), deleted by [`OwnedPool::delete`],
//! in the background when dropped, and by the server when the keepalives
//! stop (this process died, or its connection went silent).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sandpool_proto::v1 as pb;
use tokio::task::JoinHandle;
use tonic::{Code, Status};

use crate::{
    AcquireOptions, Client, Error, Session,
    client::with_deadline,
    keepalive::{Held, keep_alive},
    run::duration_pb,
};

/// A sensible owner TTL for [`Client::create_owned_pool`] (the Python and
/// TypeScript clients' default).
pub const DEFAULT_OWNER_TTL: Duration = Duration::from_secs(30);

/// The keepalive task, aborted when dropped (also when the creating future
/// is dropped half-way).
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A pool that belongs to this client, made by
/// [`Client::create_owned_pool`]: kept alive in the background at a third of
/// its owner TTL; [`OwnedPool::delete`] deletes it at once; dropped
/// undeleted, it is deleted in the background (best effort: the server also
/// deletes it within the owner TTL once the keepalives stop). Once the pool
/// is lost ([`OwnedPool::lost`] says why), every call fails with
/// [`Error::PoolLost`].
pub struct OwnedPool {
    client: Client,
    pool: pb::Pool,
    name: String,
    held: Arc<Held>,
    keepalive: Task,
    deleted: AtomicBool,
}

impl OwnedPool {
    pub(crate) async fn create(
        client: Client,
        spec: pb::PoolSpec,
        owner_ttl: Duration,
        wait_ready: bool,
    ) -> Result<Self, Error> {
        let name = spec.name.clone();
        let request = with_deadline(
            pb::CreatePoolRequest {
                spec: Some(spec),
                wait_ready,
                owner_ttl: Some(duration_pb(owner_ttl)),
            },
            if wait_ready {
                client.long()
            } else {
                client.timeout()
            },
        );
        // The keepalive starts with the call: the server's clock for the
        // pool starts when it makes the pool, and a wait_ready call may
        // outlast the owner TTL. On an error (or a drop of this future) the
        // task ends, and nothing keeps a pool made half-way alive: the
        // server deletes it within the owner TTL.
        let started = Instant::now();
        let held = Held::pending_pool(name.clone(), owner_ttl, started);
        let keepalive = Task(tokio::spawn(keep_alive(
            client.clone(),
            Arc::clone(&held),
            started,
        )));
        let pool = client
            .pools()
            .create_pool(request)
            .await?
            .into_inner()
            .pool
            .ok_or_else(|| Error::Protocol("CreatePool answered without a pool".into()))?;
        held.exists();
        Ok(Self {
            client,
            pool,
            name,
            held,
            keepalive,
            deleted: AtomicBool::new(false),
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool as CreatePool answered (its spec with every default filled
    /// in, phase, `owner`, `owner_expire_time`); [`OwnedPool::get`] asks
    /// again.
    pub fn pool(&self) -> &pb::Pool {
        &self.pool
    }

    /// Without a keepalive for this long, the server deletes the pool.
    pub fn owner_ttl(&self) -> Duration {
        self.held.ttl()
    }

    /// Keepalives the server confirmed so far.
    pub fn renewals(&self) -> u64 {
        self.held.renewals()
    }

    /// True once [`OwnedPool::delete`] was called.
    pub fn closed(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    /// Why the pool is lost (or that this client deleted it); `None` while
    /// it is held.
    pub fn lost(&self) -> Option<String> {
        if self.closed() {
            return Some(DELETED.into());
        }
        self.held.lost()
    }

    /// `Err(PoolLost)` once the pool is lost or deleted.
    pub fn check(&self) -> Result<(), Error> {
        if self.closed() {
            return Err(Error::PoolLost {
                pool: self.name.clone(),
                reason: DELETED.into(),
                status: None,
                state: None,
            });
        }
        self.held.check()
    }

    /// A call about the pool: checked first, its error mapped (one saying
    /// the pool is gone marks it lost), cut when the keepalive gives up.
    async fn call<T>(&self, call: impl Future<Output = Result<T, Status>>) -> Result<T, Error> {
        self.check()?;
        self.held.call(call).await
    }

    /// Leases a warm container of this pool with the pool's default TTL.
    pub async fn acquire(&self) -> Result<Session, Error> {
        self.acquire_with(AcquireOptions::new(self.name.clone()))
            .await
    }

    /// Leases a container of this pool with options (TTL, wait, env,
    /// files); `options.pool` is ignored.
    pub async fn acquire_with(&self, mut options: AcquireOptions) -> Result<Session, Error> {
        options.pool = self.name.clone();
        let (lease, started) = self.call(Session::ask(&self.client, options)).await?;
        Session::hold(self.client.clone(), lease, started)
    }

    /// The pool now: spec, phase, stats, `owner_expire_time`.
    pub async fn get(&self) -> Result<pb::Pool, Error> {
        let request = with_deadline(
            pb::GetPoolRequest {
                name: self.name.clone(),
            },
            self.client.timeout(),
        );
        self.call(self.client.pools().get_pool(request))
            .await?
            .into_inner()
            .pool
            .ok_or_else(|| Error::Protocol("GetPool answered without a pool".into()))
    }

    /// The pool's statistics.
    pub async fn stats(&self) -> Result<pb::PoolStats, Error> {
        let request = with_deadline(
            pb::GetPoolStatsRequest {
                name: self.name.clone(),
                replica: String::new(),
            },
            self.client.timeout(),
        );
        self.call(self.client.pools().get_pool_stats(request))
            .await?
            .into_inner()
            .stats
            .ok_or_else(|| Error::Protocol("GetPoolStats answered without stats".into()))
    }

    /// Deletes the pool now and stops its keepalive (idempotent: later
    /// calls answer `Ok(0)`); returns the containers still busy (their
    /// leases end with the drain). The call waits at most the owner TTL (or
    /// the client's timeout, if shorter): past it the server deletes the
    /// pool by itself. A lost pool is gone already: nothing is sent.
    pub async fn delete(&self) -> Result<u32, Error> {
        self.delete_with(false).await
    }

    /// [`OwnedPool::delete`]; with `wait`, returns once every container of
    /// the pool is removed (with a deadline of at least 600 s).
    pub async fn delete_with(&self, wait: bool) -> Result<u32, Error> {
        if self.deleted.swap(true, Ordering::SeqCst) {
            return Ok(0);
        }
        let lost = self.held.lost();
        self.held.released();
        self.keepalive.0.abort();
        if lost.is_some() {
            return Ok(0);
        }
        let deadline = if wait {
            self.client.long()
        } else {
            self.client
                .timeout()
                .min(self.owner_ttl().max(Duration::from_secs(1)))
        };
        let request = with_deadline(
            pb::DeletePoolRequest {
                name: self.name.clone(),
                wait,
            },
            deadline,
        );
        match self.client.pools().delete_pool(request).await {
            Ok(response) => Ok(response.into_inner().busy_remaining),
            // Gone already: deleting is idempotent from the caller's view.
            Err(s) if s.code() == Code::NotFound => Ok(0),
            Err(s) => Err(Error::from(s)),
        }
    }
}

const DELETED: &str = "the pool was deleted by this client";

impl std::fmt::Debug for OwnedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedPool")
            .field("name", &self.name)
            .field("owner_ttl", &self.owner_ttl())
            .field("renewals", &self.renewals())
            .field("lost", &self.lost())
            .finish()
    }
}

impl Drop for OwnedPool {
    fn drop(&mut self) {
        self.keepalive.0.abort();
        if self.closed() || self.held.lost().is_some() {
            return;
        }
        // Delete in the background if a runtime is there; otherwise the
        // server deletes the pool when its owner TTL runs out.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let mut pools = self.client.pools();
            let request = with_deadline(
                pb::DeletePoolRequest {
                    name: self.name.clone(),
                    wait: false,
                },
                self.client.timeout(),
            );
            handle.spawn(async move {
                let _ = pools.delete_pool(request).await;
            });
        }
    }
}

impl Client {
    /// Creates a pool that belongs to this client, kept alive in the
    /// background over the KeepAlive stream at a third of `owner_ttl` (at
    /// least 1 s, at most the pool's max_lease_ttl), as a lease is. When
    /// this process dies or stops renewing, the server deletes the pool
    /// within `owner_ttl` (its leases end with `LEASE_STATE_POOL_DELETED`);
    /// [`OwnedPool::delete`] deletes it at once, dropping the handle in the
    /// background. A pool the keepalive loses (the server answers that it
    /// has no such pool, or no renewal is confirmed within the TTL) is
    /// reported by [`OwnedPool::lost`], and its calls fail with
    /// [`Error::PoolLost`]. With `wait_ready`, the call answers once
    /// `min_pool_size` containers are warm (or warming failed).
    pub async fn create_owned_pool(
        &self,
        spec: pb::PoolSpec,
        owner_ttl: Duration,
        wait_ready: bool,
    ) -> Result<OwnedPool, Error> {
        OwnedPool::create(self.clone(), spec, owner_ttl, wait_ready).await
    }
}
