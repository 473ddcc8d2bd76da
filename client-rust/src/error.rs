//! Client errors: gRPC statuses mapped to what a caller acts on.

use std::time::Duration;

use sandpool_proto::v1::{ErrorReason, LeaseState};
use tonic::{Code, Status};
use tonic_types::{ErrorInfo, StatusExt};

/// The ErrorInfo domain of the server's own reasons.
pub const ERROR_DOMAIN: &str = "sandpool";

/// ErrorInfo reasons saying that the call's lease is gone (on a call about
/// that lease).
pub const LEASE_REASONS: [ErrorReason; 3] = [
    ErrorReason::LeaseNotFound,
    ErrorReason::LeaseEnded,
    ErrorReason::ContainerGone,
];

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
    /// found out; `None` when the client knew already. `state` is how the
    /// lease ended when the server said so (a keepalive answer, or an
    /// error's ErrorInfo); `None` when the client gave up on it.
    #[error("lease {lease_id} is lost: {reason}")]
    LeaseLost {
        lease_id: String,
        reason: String,
        status: Option<Box<Status>>,
        state: Option<LeaseState>,
    },
    /// An owned pool (see [`crate::Client::create_owned_pool`]) is gone:
    /// its owner TTL ran out on the server, someone deleted it, or this
    /// client confirmed no keepalive within the owner TTL (then the server
    /// deletes it by itself). `status` is the server's answer when a call
    /// found out; `state` is `NotFound` when the server said it has no such
    /// pool of this owner, `None` when the client gave up on it (or the
    /// server said it is being deleted).
    #[error("pool {pool} is lost: {reason}")]
    PoolLost {
        pool: String,
        reason: String,
        status: Option<Box<Status>>,
        state: Option<LeaseState>,
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
    /// The caller's role or pool list does not allow the call
    /// (`NOT_PERMITTED`), or a pool it asked for is outside the server's
    /// policy (`POLICY_VIOLATION`).
    #[error("permission denied: {}", .0.message())]
    PermissionDenied(Status),
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

/// What a reason the server gives means to the client.
enum Meaning {
    /// This error (its status code's variant).
    Error(fn(Status) -> Error),
    /// The call's lease is gone: `LeaseLost` on a call about that lease,
    /// else the status code's variant.
    LeaseGone,
}

/// The meaning of every reason: an exhaustive match, so a reason added to
/// errors.proto does not compile until it is mapped here. `None` for
/// `Unspecified` (a reason this client does not know): the status code
/// decides.
fn meaning(reason: ErrorReason) -> Option<Meaning> {
    use ErrorReason as R;
    Some(match reason {
        R::Unspecified => return None,
        R::InvalidField | R::TooLarge => Meaning::Error(Error::InvalidArgument),
        R::PoolNotFound | R::RunNotFound | R::ContextNotFound | R::PathNotFound => {
            Meaning::Error(Error::NotFound)
        }
        R::PoolClosed
        | R::PoolFailing
        | R::ContextFailed
        | R::FileOperationFailed
        | R::NotAllowed
        | R::InstallFailed
        | R::ImageMissing => Meaning::Error(Error::FailedPrecondition),
        R::PoolExhausted => Meaning::Error(Error::PoolExhausted),
        R::LeaseNotFound | R::LeaseEnded | R::ContainerGone => Meaning::LeaseGone,
        R::EngineUnavailable | R::EngineFailed | R::ShuttingDown => {
            Meaning::Error(Error::Unavailable)
        }
        R::Unauthenticated => Meaning::Error(Error::Unauthenticated),
        // A quota is as full as an exhausted pool: wait and retry.
        R::QuotaExceeded => Meaning::Error(Error::PoolExhausted),
        R::NotPermitted | R::PolicyViolation => Meaning::Error(Error::PermissionDenied),
        R::PoolExists
        | R::BackendUnsupported
        | R::SandboxCommandFailed
        | R::RunIdTaken
        | R::StreamSuperseded => Meaning::Error(Error::Rpc),
    })
}

/// The typed reason of an ErrorInfo: `None` outside domain "sandpool",
/// `Unspecified` for a name this client does not know.
fn reason_of(info: &ErrorInfo) -> Option<ErrorReason> {
    (info.domain == ERROR_DOMAIN)
        .then(|| ErrorReason::from_str_name(&info.reason).unwrap_or(ErrorReason::Unspecified))
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        if status.code() == Code::Cancelled && client_deadline_passed(&status) {
            return Error::DeadlineExceeded(status);
        }
        let reason = status.get_error_details().error_info().and_then(reason_of);
        if let Some(Meaning::Error(make)) = reason.and_then(meaning) {
            return make(status);
        }
        match status.code() {
            Code::ResourceExhausted => Error::PoolExhausted(status),
            Code::NotFound => Error::NotFound(status),
            Code::InvalidArgument => Error::InvalidArgument(status),
            Code::FailedPrecondition => Error::FailedPrecondition(status),
            Code::DeadlineExceeded => Error::DeadlineExceeded(status),
            Code::Unauthenticated => Error::Unauthenticated(status),
            Code::PermissionDenied => Error::PermissionDenied(status),
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
            | Error::PermissionDenied(s)
            | Error::Unavailable(s)
            | Error::Rpc(s) => Some(s),
            Error::LeaseLost { status, .. } | Error::PoolLost { status, .. } => status.as_deref(),
            _ => None,
        }
    }

    /// The server's machine-readable reason (google.rpc.ErrorInfo) as it
    /// sent it, e.g. `LEASE_ENDED`, if it sent one.
    pub fn reason(&self) -> Option<String> {
        self.status()
            .and_then(|s| s.get_error_details().error_info().map(|i| i.reason.clone()))
    }

    /// The server's reason, typed: `None` when it sent none, `Unspecified`
    /// for one this client does not know (its name is in [`Error::reason`]).
    pub fn error_reason(&self) -> Option<ErrorReason> {
        self.status()
            .and_then(|s| s.get_error_details().error_info().and_then(reason_of))
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

    /// An error of a call on a lease: the server saying that this lease is
    /// gone becomes `LeaseLost`. It says so with a lease reason
    /// (`LEASE_NOT_FOUND`, `LEASE_ENDED`, `CONTAINER_GONE`) whose metadata
    /// `lease_id` is this lease. Servers without ErrorInfo details: a
    /// `CONTAINER_GONE` precondition violation about the lease, or a message
    /// that starts with the lease.
    pub(crate) fn on_lease(lease_id: &str, status: Status) -> Self {
        if lease_is_gone(lease_id, &status) {
            return Error::LeaseLost {
                lease_id: lease_id.to_string(),
                reason: status.message().to_string(),
                state: end_of(&status),
                status: Some(Box::new(status)),
            };
        }
        Error::from(status)
    }
}

impl Error {
    /// An error of a call about the owned pool `pool`: the server saying
    /// that this pool is gone (reason `POOL_NOT_FOUND` or `POOL_CLOSED`
    /// whose metadata `pool` is this pool; without details, NOT_FOUND)
    /// becomes `PoolLost`.
    pub(crate) fn on_pool(pool: &str, status: Status) -> Self {
        let details = status.get_error_details();
        let gone = match details.error_info().and_then(|info| {
            reason_of(info)
                .filter(|r| *r != ErrorReason::Unspecified)
                .map(|r| (r, info))
        }) {
            Some((reason, info)) => {
                matches!(reason, ErrorReason::PoolNotFound | ErrorReason::PoolClosed)
                    && info.metadata.get("pool").is_none_or(|p| p == pool)
            }
            None => status.code() == Code::NotFound,
        };
        if !gone {
            return Error::from(status);
        }
        Error::PoolLost {
            pool: pool.to_string(),
            reason: status.message().to_string(),
            state: (status.code() == Code::NotFound).then_some(LeaseState::NotFound),
            status: Some(Box::new(status)),
        }
    }
}

fn lease_is_gone(lease_id: &str, status: &Status) -> bool {
    let details = status.get_error_details();
    if let Some(info) = details.error_info()
        && let Some(meaning) = reason_of(info).and_then(meaning)
    {
        return matches!(meaning, Meaning::LeaseGone)
            && info
                .metadata
                .get("lease_id")
                .is_none_or(|id| id == lease_id);
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
        && matches!(status.code(), Code::NotFound | Code::FailedPrecondition)
        && (status.message().starts_with(&format!("lease {lease_id} "))
            || status
                .message()
                .starts_with(&format!("the container of lease {lease_id} is gone")))
}

/// How the lease ended, by the reason and its `end` metadata (a LeaseState
/// name).
fn end_of(status: &Status) -> Option<LeaseState> {
    let details = status.get_error_details();
    let info = details.error_info()?;
    match reason_of(info)? {
        ErrorReason::LeaseNotFound => Some(LeaseState::NotFound),
        ErrorReason::LeaseEnded => info
            .metadata
            .get("end")
            .and_then(|end| LeaseState::from_str_name(end)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    const LEASE: &str = "abababababababababababababababab";

    fn with_reason(code: Code, message: &str, reason: &str, lease: &str) -> Status {
        with_info(code, message, reason, &[("lease_id", lease)])
    }

    fn with_info(code: Code, message: &str, reason: &str, metadata: &[(&str, &str)]) -> Status {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            reason,
            ERROR_DOMAIN,
            metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
        Status::with_error_details(code, message, details)
    }

    #[test]
    fn the_typed_reason_maps_the_error() {
        let ended = || {
            with_info(
                Code::FailedPrecondition,
                "gone",
                "LEASE_ENDED",
                &[("lease_id", LEASE), ("end", "LEASE_STATE_EXPIRED")],
            )
        };
        let err = Error::on_lease(LEASE, ended());
        assert!(
            matches!(
                err,
                Error::LeaseLost {
                    state: Some(LeaseState::Expired),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.error_reason(), Some(ErrorReason::LeaseEnded));
        // Not on a call about that lease: the status code's variant.
        let plain = Error::from(ended());
        assert!(matches!(plain, Error::FailedPrecondition(_)), "{plain:?}");
        assert_eq!(plain.error_reason(), Some(ErrorReason::LeaseEnded));
        let unknown = Error::on_lease(
            LEASE,
            with_reason(Code::NotFound, "x", "LEASE_NOT_FOUND", LEASE),
        );
        assert!(matches!(
            unknown,
            Error::LeaseLost {
                state: Some(LeaseState::NotFound),
                ..
            }
        ));
        let full = with_info(Code::ResourceExhausted, "full", "POOL_EXHAUSTED", &[]);
        assert!(matches!(Error::from(full), Error::PoolExhausted(_)));
        // A reason this client does not know: unspecified, its name kept,
        // mapped by the status code.
        let newer = Error::on_lease(
            LEASE,
            with_reason(
                Code::NotFound,
                &format!("lease {LEASE} x"),
                "SOMETHING_NEW",
                LEASE,
            ),
        );
        assert!(matches!(newer, Error::NotFound(_)), "{newer:?}");
        assert_eq!(newer.error_reason(), Some(ErrorReason::Unspecified));
        assert_eq!(newer.reason().as_deref(), Some("SOMETHING_NEW"));
        // No ErrorInfo: no reason.
        assert_eq!(
            Error::from(Status::unavailable("down")).error_reason(),
            None
        );
    }

    #[test]
    fn a_gone_replica_loses_the_lease() {
        let gone = with_info(
            Code::FailedPrecondition,
            "replica \"a\" is gone",
            "LEASE_ENDED",
            &[
                ("lease_id", LEASE),
                ("end", "LEASE_STATE_REPLICA_GONE"),
                ("replica", "a"),
            ],
        );
        let err = Error::on_lease(LEASE, gone);
        assert!(
            matches!(
                err,
                Error::LeaseLost {
                    state: Some(LeaseState::ReplicaGone),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn the_lease_reasons_are_those_that_mean_a_lost_lease() {
        let gone: Vec<ErrorReason> = (0..=255)
            .filter_map(|n| ErrorReason::try_from(n).ok())
            .filter(|r| matches!(meaning(*r), Some(Meaning::LeaseGone)))
            .collect();
        assert_eq!(gone, LEASE_REASONS);
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
