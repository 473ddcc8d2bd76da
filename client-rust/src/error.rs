//! Client errors: gRPC statuses mapped to what a caller acts on.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The ErrorInfo domain of the server's own reasons.
pub const ERROR_DOMAIN: &str = "sandpool";

/// ErrorInfo reasons saying that the call's lease is gone: `LEASE_NOT_FOUND`
/// (with NOT_FOUND) and `LEASE_ENDED` (with FAILED_PRECONDITION).
pub const LEASE_REASONS: [&str; 2] = ["LEASE_NOT_FOUND", "LEASE_ENDED"];

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
    /// The session's lease is gone (released, expired, revoked, or not kept
    /// alive within its TTL). `status` is the server's answer when a call
    /// found out; `None` when the client knew already.
    #[error("lease {lease_id} is lost: {reason}")]
    LeaseLost {
        lease_id: String,
        reason: String,
        status: Option<Box<Status>>,
    },
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

/// Whether a status is the client's own deadline passing (tonic reports it
/// as CANCELLED caused by `TimeoutExpired`).
fn client_deadline_passed(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        if status.code() == Code::Cancelled && client_deadline_passed(&status) {
            return Error::DeadlineExceeded(status);
        }
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
            Error::LeaseLost { status, .. } => status.as_deref(),
            _ => None,
        }
    }

    /// The server's machine-readable reason (google.rpc.ErrorInfo), e.g.
    /// `LEASE_ENDED`, if it sent one.
    pub fn reason(&self) -> Option<String> {
        self.status()
            .and_then(|s| s.get_error_details().error_info().map(|i| i.reason.clone()))
    }

    /// The field at fault of an INVALID_ARGUMENT (google.rpc.BadRequest).
    pub fn field(&self) -> Option<String> {
        self.status().and_then(|s| {
            s.get_error_details()
                .bad_request()
                .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        })
    }

    /// How long the server suggests waiting before retrying (RESOURCE_EXHAUSTED).
    pub fn retry_after(&self) -> Option<Duration> {
        self.status().and_then(|s| {
            s.get_error_details()
                .retry_info()
                .and_then(|r| r.retry_delay)
        })
    }

    /// An error of a call on a lease: the server saying that the lease is
    /// gone becomes `LeaseLost`. The server says so with an ErrorInfo
    /// (domain "sandpool", reason `LEASE_NOT_FOUND` or `LEASE_ENDED`,
    /// metadata `lease_id`); a container that vanished under the lease is a
    /// `CONTAINER_GONE` precondition violation about it. A status without
    /// details falls back to the message ("lease <id> ...").
    pub(crate) fn on_lease(lease_id: &str, status: Status) -> Self {
        if lease_is_gone(lease_id, &status) {
            return Error::LeaseLost {
                lease_id: lease_id.to_string(),
                reason: status.message().to_string(),
                status: Some(Box::new(status)),
            };
        }
        Error::from(status)
    }
}

fn lease_is_gone(lease_id: &str, status: &Status) -> bool {
    if !matches!(status.code(), Code::NotFound | Code::FailedPrecondition) {
        return false;
    }
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        if info.domain == ERROR_DOMAIN && LEASE_REASONS.contains(&info.reason.as_str()) {
            return info
                .metadata
                .get("lease_id")
                .is_none_or(|id| id == lease_id);
        }
        if details.precondition_failure().is_none() {
            return false;
        }
    }
    if let Some(failure) = details.precondition_failure()
        && failure
            .violations
            .iter()
            .any(|v| v.r#type == "CONTAINER_GONE" && v.subject == lease_id)
    {
        return true;
    }
    // A server without details: its messages start with the lease.
    details.error_info().is_none()
        && (status.message().starts_with(&format!("lease {lease_id} "))
            || status
                .message()
                .starts_with(&format!("the container of lease {lease_id} is gone")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    const LEASE: &str = "abababababababababababababababab";

    fn with_reason(code: Code, message: &str, reason: &str, lease: &str) -> Status {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            reason,
            ERROR_DOMAIN,
            [("lease_id".to_string(), lease.to_string())],
        );
        Status::with_error_details(code, message, details)
    }

    #[test]
    fn the_error_info_reason_decides_not_the_message() {
        let status = with_reason(
            Code::FailedPrecondition,
            "something else",
            "LEASE_ENDED",
            LEASE,
        );
        let err = Error::on_lease(LEASE, status);
        assert!(matches!(err, Error::LeaseLost { .. }), "{err:?}");
        assert_eq!(err.reason().as_deref(), Some("LEASE_ENDED"));
        assert_eq!(
            err.status().map(|s| s.code()),
            Some(Code::FailedPrecondition)
        );

        // Another lease's reason is not this lease being lost.
        let status = with_reason(Code::NotFound, "x", "LEASE_NOT_FOUND", "cd");
        assert!(matches!(Error::on_lease(LEASE, status), Error::NotFound(_)));
        // A reason that is not a lease's wins over a message that looks like one.
        let status = with_reason(Code::NotFound, &format!("lease {LEASE} x"), "OTHER", LEASE);
        assert!(matches!(Error::on_lease(LEASE, status), Error::NotFound(_)));
    }

    #[test]
    fn without_details_the_message_is_the_fallback() {
        let old = Status::not_found(format!("lease {LEASE} does not exist"));
        assert!(matches!(
            Error::on_lease(LEASE, old),
            Error::LeaseLost {
                status: Some(_),
                ..
            }
        ));
        let run = Status::not_found(format!("run 1 of lease {LEASE} does not exist"));
        assert!(matches!(Error::on_lease(LEASE, run), Error::NotFound(_)));
        let gone = Status::with_error_details(
            Code::FailedPrecondition,
            "the container vanished",
            ErrorDetails::with_precondition_failure_violation("CONTAINER_GONE", LEASE, "gone"),
        );
        assert!(matches!(
            Error::on_lease(LEASE, gone),
            Error::LeaseLost { .. }
        ));
    }
}
