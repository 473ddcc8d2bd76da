//! Client errors: gRPC statuses mapped to what a caller acts on.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    #[error("pool exhausted: {}", .0.message())]
    PoolExhausted(Status),
    #[error("lease {lease_id} is lost: {reason}")]
    LeaseLost { lease_id: String, reason: String },
    #[error("not found: {}", .0.message())]
    NotFound(Status),
    #[error("invalid argument: {}", .0.message())]
    InvalidArgument(Status),
    #[error("failed precondition: {}", .0.message())]
    FailedPrecondition(Status),
    #[error("deadline exceeded: {}", .0.message())]
    DeadlineExceeded(Status),
    #[error("unauthenticated: {}", .0.message())]
    Unauthenticated(Status),
    #[error("server unavailable: {}", .0.message())]
    Unavailable(Status),
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(Status),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        match status.code() {
            Code::ResourceExhausted => Error::PoolExhausted(status),
            Code::NotFound => Error::NotFound(status),
            Code::InvalidArgument => Error::InvalidArgument(status),
            Code::FailedPrecondition => Error::FailedPrecondition(status),
            Code::DeadlineExceeded => Error::DeadlineExceeded(status),
            Code::Unauthenticated => Error::Unauthenticated(status),
            Code::Unavailable => Error::Unavailable(status),
            _ => Error::Rpc(status),
        }
    }
}

impl Error {
    /// The gRPC status behind this error, if any.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::PoolExhausted(s)
            | Error::NotFound(s)
            | Error::InvalidArgument(s)
            | Error::FailedPrecondition(s)
            | Error::DeadlineExceeded(s)
            | Error::Unauthenticated(s)
            | Error::Unavailable(s)
            | Error::Rpc(s) => Some(s),
            _ => None,
        }
    }

    /// An error of a call on a lease: the server saying the lease ended (or
    /// never existed) becomes `LeaseLost`.
    pub(crate) fn on_lease(lease_id: &str, status: Status) -> Self {
        let ended = status.code() == Code::FailedPrecondition
            && status.message().starts_with(&format!("lease {lease_id}"));
        let unknown = status.code() == Code::NotFound
            && status.message().starts_with(&format!("lease {lease_id}"));
        if ended || unknown {
            return Error::LeaseLost {
                lease_id: lease_id.to_string(),
                reason: status.message().to_string(),
            };
        }
        Error::from(status)
    }
}
