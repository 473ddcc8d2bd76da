//! The errors of sandpool's core (pools, leases, runs, files), below the api
//! layer; mapped to gRPC statuses in one place, `api::status`.

use std::time::Duration;

use crate::{backend, sandbox};

/// How a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    Released,
    Expired,
    /// The server is stopping. (A deleted pool lets its leases run to their end.)
    Revoked,
    /// It reached its pool's max_lease_lifetime.
    LifetimeExceeded,
    /// Its container died or was removed behind the pool's back.
    ContainerLost,
    /// Its pool was deleted because the pool's owner stopped keeping it
    /// alive.
    PoolDeleted,
    /// The replica that granted it is gone: it died (a peer's answer), or
    /// it restarted under the same name and the lease ended with its old
    /// process (this process's answer for its predecessor's ids). Never
    /// the end of a lease this process holds.
    ReplicaGone,
}

impl LeaseEnd {
    pub fn describe(self) -> &'static str {
        match self {
            LeaseEnd::Released => "was released",
            LeaseEnd::Expired => "expired (no keepalive within its TTL)",
            LeaseEnd::Revoked => "was revoked (the server is stopping)",
            LeaseEnd::LifetimeExceeded => {
                "reached its pool's max_lease_lifetime; acquire a new one"
            }
            LeaseEnd::ContainerLost => {
                "lost its container (it died or was removed outside sandpool); acquire a new one"
            }
            LeaseEnd::PoolDeleted => "ended with its pool, whose owner stopped keeping it alive",
            LeaseEnd::ReplicaGone => {
                "ended with the replica that granted it (the replica restarted since); acquire a new one"
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("pool {0:?} does not exist")]
    PoolNotFound(String),
    #[error("pool {0:?} already exists")]
    PoolExists(String),
    /// Another replica has a pool of that name (made at run time there).
    #[error("pool {pool:?} already exists, on replica {replica:?}")]
    PoolExistsOnReplica { pool: String, replica: String },
    #[error("pool {0:?} is being deleted and grants no new leases")]
    PoolClosed(String),
    #[error("pool {pool:?} cannot create containers: {message}")]
    PoolFailing { pool: String, message: String },
    #[error("pool {pool:?} is exhausted: {detail}")]
    Exhausted {
        pool: String,
        detail: String,
        /// Time the caller waited before giving up (zero for FAIL_FAST).
        waited: Duration,
    },
    #[error("lease {0} does not exist (never granted, or ended long ago)")]
    LeaseNotFound(String),
    #[error("lease {id} {}", end.describe())]
    LeaseEnded { id: String, end: LeaseEnd },
    #[error("run {run_id} does not exist in lease {lease_id}")]
    RunNotFound { lease_id: String, run_id: String },
    #[error(
        "run {run_id} of lease {lease_id} cannot be attached: only runs started with a run_id can (the lease keeps its last 1000)"
    )]
    NotResumable { lease_id: String, run_id: String },
    #[error("run id {run_id:?} is taken in lease {lease_id}: {why}")]
    RunIdTaken {
        lease_id: String,
        run_id: String,
        why: &'static str,
    },
    #[error("another Attach of run {run_id} took over its output from this stream")]
    StreamSuperseded { run_id: String },
    #[error("context {context_id} does not exist in lease {lease_id} (CreateContext makes one)")]
    ContextNotFound {
        lease_id: String,
        context_id: String,
    },
    /// A context's interpreter did not start, or is gone.
    #[error("context {context_id}: {message}")]
    ContextFailed { context_id: String, message: String },
    #[error("path {path:?}: {message}")]
    PathNotFound { path: String, message: String },
    #[error("{0}")]
    TooLarge(String),
    #[error("{path}: {message}")]
    FileFailed { path: String, message: String },
    /// The client's upload stream broke before it ended.
    #[error("the upload stream broke: {0}")]
    UploadBroken(String),
    #[error("the installer failed: {0}")]
    InstallFailed(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error(
        "the container of lease {lease_id} is gone (removed outside sandpool); release the lease and acquire another"
    )]
    ContainerGone { lease_id: String },
    #[error(
        "the server is shutting down; retry (another replica, or this server restarted, takes the call)"
    )]
    ShuttingDown,
    /// The pool's container engine does not answer (retryable).
    #[error("the {backend} engine is unavailable: {detail}")]
    EngineUnavailable {
        backend: crate::backend::BackendKind,
        detail: String,
    },
    /// The caller's role or pool list does not allow the operation.
    #[error("{message}")]
    PermissionDenied {
        identity: String,
        pool: Option<String>,
        message: String,
    },
    /// A pool made at run time is outside the server's policy.
    #[error("invalid {field}: {message} (allowed: {limit})")]
    PolicyViolation {
        field: String,
        limit: String,
        message: String,
    },
    #[error(
        "{} holds as many {} as its quota allows ({}); give some back first",
        .0.identity, .0.quota.as_str(), .0.limit
    )]
    QuotaExceeded(crate::identity::QuotaExceeded),
    #[error("{0}")]
    Sandbox(#[from] sandbox::Error),
    /// A call for another replica's lease could not be forwarded to it.
    #[error("{0}")]
    Forward(#[from] crate::cluster::ForwardError),
}

impl Error {
    /// A request field at fault, named as the caller wrote it.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<backend::Error> for Error {
    fn from(e: backend::Error) -> Self {
        Error::Sandbox(sandbox::Error::Backend(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
