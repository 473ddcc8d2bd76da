//! The one place where errors become gRPC statuses. Exhaustive on purpose: a
//! new error variant must decide its status here. Every status carries a
//! `google.rpc.ErrorInfo` (domain "sandpool") whose reason is an
//! `ErrorReason` of the contract, so clients tell errors apart without
//! parsing messages; further details (bad-request field, retry delay,
//! precondition) travel as the standard rich error details, readable from
//! every gRPC language.

use std::time::Duration;

use sandpool_proto::v1::{ErrorReason, LeaseState};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{backend, cluster::ForwardError, error::Error, sandbox};

/// Suggested wait before retrying an exhausted pool.
const EXHAUSTED_RETRY: Duration = Duration::from_secs(1);
/// Suggested wait before retrying when a quota is full.
const QUOTA_RETRY: Duration = Duration::from_secs(1);
/// Suggested wait before retrying while the engine does not answer.
const ENGINE_RETRY: Duration = Duration::from_secs(1);
/// Suggested wait before retrying while a lease's replica does not answer.
const REPLICA_RETRY: Duration = Duration::from_secs(1);

/// Suggested wait before retrying an Acquire a stopping server refused.
const SHUTDOWN_RETRY: Duration = Duration::from_millis(200);

/// The ErrorInfo domain of sandpool's reasons.
pub const DOMAIN: &str = "sandpool";

/// A status with its reason, the reason's metadata and any further details.
struct Failure {
    code: Code,
    reason: ErrorReason,
    metadata: Vec<(&'static str, String)>,
    details: ErrorDetails,
}

impl Failure {
    fn new(code: Code, reason: ErrorReason) -> Self {
        Self {
            code,
            reason,
            metadata: Vec::new(),
            details: ErrorDetails::new(),
        }
    }

    fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.metadata.push((key, value.into()));
        self
    }

    /// A PreconditionFailure violation of `kind` about `subject`.
    fn precondition(mut self, kind: &str, subject: &str, message: &str) -> Self {
        self.details
            .add_precondition_failure_violation(kind, subject, message);
        self
    }

    fn retry_after(mut self, delay: Duration) -> Self {
        self.details.set_retry_info(Some(delay));
        self
    }

    fn into_status(mut self, message: String) -> Status {
        self.details.set_error_info(
            self.reason.as_str_name(),
            DOMAIN,
            self.metadata
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<std::collections::HashMap<_, _>>(),
        );
        Status::with_error_details(self.code, message, self.details)
    }
}

/// UNAUTHENTICATED, with its reason.
pub fn unauthenticated(message: &str) -> Status {
    Failure::new(Code::Unauthenticated, ErrorReason::Unauthenticated).into_status(message.into())
}

/// PERMISSION_DENIED for a caller that claims what only a peer replica may
/// (the forwarded-caller header).
pub fn not_a_peer(message: &str) -> Status {
    Failure::new(Code::PermissionDenied, ErrorReason::NotPermitted)
        .with("header", crate::cluster::caller::HEADER)
        .into_status(message.into())
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        use Code as C;
        use ErrorReason as R;
        let failure = match err {
            Error::InvalidArgument {
                field,
                message: why,
            } => {
                let mut f = Failure::new(C::InvalidArgument, R::InvalidField).with("field", &field);
                f.details.add_bad_request_violation(field, why);
                f
            }
            Error::TooLarge(_) => Failure::new(C::InvalidArgument, R::TooLarge),
            Error::PoolNotFound(pool) => {
                Failure::new(C::NotFound, R::PoolNotFound).with("pool", pool)
            }
            Error::PoolExists(pool) => {
                Failure::new(C::AlreadyExists, R::PoolExists).with("pool", pool)
            }
            Error::PoolExistsOnReplica { pool, replica } => {
                Failure::new(C::AlreadyExists, R::PoolExists)
                    .with("pool", pool)
                    .with("replica", replica)
            }
            Error::PoolClosed(pool) => Failure::new(C::FailedPrecondition, R::PoolClosed)
                .precondition("POOL_CLOSED", &pool, &message)
                .with("pool", pool),
            Error::PoolFailing { pool, .. } => Failure::new(C::FailedPrecondition, R::PoolFailing)
                .precondition("POOL_FAILING", &pool, &message)
                .with("pool", pool),
            Error::Exhausted { pool, .. } => Failure::new(C::ResourceExhausted, R::PoolExhausted)
                .retry_after(EXHAUSTED_RETRY)
                .with("pool", pool),
            Error::LeaseNotFound(id) => {
                Failure::new(C::NotFound, R::LeaseNotFound).with("lease_id", id)
            }
            Error::LeaseEnded { id, end } => Failure::new(C::FailedPrecondition, R::LeaseEnded)
                .precondition("LEASE_ENDED", &id, &message)
                .with("lease_id", id)
                .with("end", LeaseState::from(end).as_str_name()),
            Error::RunNotFound { lease_id, run_id } | Error::NotResumable { lease_id, run_id } => {
                Failure::new(C::NotFound, R::RunNotFound)
                    .with("lease_id", lease_id)
                    .with("run_id", run_id)
            }
            Error::RunIdTaken {
                lease_id, run_id, ..
            } => Failure::new(C::AlreadyExists, R::RunIdTaken)
                .with("lease_id", lease_id)
                .with("run_id", run_id),
            Error::StreamSuperseded { run_id } => {
                Failure::new(C::Aborted, R::StreamSuperseded).with("run_id", run_id)
            }
            Error::ContextNotFound {
                lease_id,
                context_id,
            } => Failure::new(C::NotFound, R::ContextNotFound)
                .with("lease_id", lease_id)
                .with("context_id", context_id),
            Error::ContextFailed { context_id, .. } => {
                Failure::new(C::FailedPrecondition, R::ContextFailed).with("context_id", context_id)
            }
            Error::PathNotFound { path, .. } => {
                Failure::new(C::NotFound, R::PathNotFound).with("path", path)
            }
            Error::FileFailed { path, .. } => {
                Failure::new(C::FailedPrecondition, R::FileOperationFailed)
                    .precondition("FILE_OPERATION_FAILED", &path, &message)
                    .with("path", path)
            }
            Error::UploadBroken(_) => Failure::new(C::FailedPrecondition, R::FileOperationFailed),
            Error::InstallFailed(_) => Failure::new(C::FailedPrecondition, R::InstallFailed)
                .precondition("INSTALL_FAILED", "", &message),
            Error::NotAllowed(_) => Failure::new(C::FailedPrecondition, R::NotAllowed)
                .precondition("NOT_ALLOWED", "", &message),
            Error::ContainerGone { lease_id } => {
                Failure::new(C::FailedPrecondition, R::ContainerGone)
                    .precondition("CONTAINER_GONE", &lease_id, &message)
                    .with("lease_id", lease_id)
            }
            // Retryable: behind a balancer the retry reaches another
            // replica, and a restarted server takes it too.
            Error::ShuttingDown => {
                Failure::new(C::Unavailable, R::ShuttingDown).retry_after(SHUTDOWN_RETRY)
            }
            Error::EngineUnavailable { backend, .. } => {
                Failure::new(C::Unavailable, R::EngineUnavailable)
                    .retry_after(ENGINE_RETRY)
                    .with("backend", backend.as_str())
            }
            Error::PermissionDenied { identity, pool, .. } => {
                let f =
                    Failure::new(C::PermissionDenied, R::NotPermitted).with("identity", identity);
                match pool {
                    Some(pool) => f.with("pool", pool),
                    None => f,
                }
            }
            Error::PolicyViolation { field, limit, .. } => {
                let mut f = Failure::new(C::PermissionDenied, R::PolicyViolation)
                    .with("field", &field)
                    .with("limit", limit);
                f.details.add_bad_request_violation(field, &message);
                f
            }
            Error::QuotaExceeded(q) => Failure::new(C::ResourceExhausted, R::QuotaExceeded)
                .retry_after(QUOTA_RETRY)
                .with("identity", q.identity)
                .with("quota", q.quota.as_str())
                .with("limit", q.limit.to_string()),
            Error::Sandbox(e) => from_sandbox(e, &message),
            Error::Forward(e) => from_forward(e, &message),
        };
        failure.into_status(message)
    }
}

/// The contract has no error reason of its own for replicas: an unknown or
/// misrouted lease is LEASE_NOT_FOUND, an owner that does not answer is
/// retryable like an engine that does not, an owner that is gone ended the
/// lease (LEASE_ENDED with end REPLICA_GONE, which the clients turn into
/// their lease-lost error), and the metadata name the replica.
fn from_forward(err: ForwardError, message: &str) -> Failure {
    use Code as C;
    use ErrorReason as R;
    match err {
        ForwardError::UnknownReplica {
            lease_id, replica, ..
        }
        | ForwardError::Misrouted {
            lease_id, replica, ..
        } => Failure::new(C::NotFound, R::LeaseNotFound)
            .with("lease_id", lease_id)
            .with("replica", replica),
        ForwardError::Unreachable {
            lease_id, replica, ..
        } => Failure::new(C::Unavailable, R::EngineUnavailable)
            .retry_after(REPLICA_RETRY)
            .with("lease_id", lease_id)
            .with("replica", replica),
        ForwardError::ReplicaUnreachable { replica, .. } => {
            Failure::new(C::Unavailable, R::EngineUnavailable)
                .retry_after(REPLICA_RETRY)
                .with("replica", replica)
        }
        ForwardError::NotListed {
            lease_id, replica, ..
        } => Failure::new(C::Unavailable, R::EngineUnavailable)
            .retry_after(REPLICA_RETRY)
            .with("lease_id", lease_id)
            .with("replica", replica),
        // Gone by a refused connection or by discovery's list: one answer.
        ForwardError::OwnerGone {
            lease_id, replica, ..
        }
        | ForwardError::OwnerLeft {
            lease_id, replica, ..
        }
        | ForwardError::OwnerSilent {
            lease_id, replica, ..
        } => Failure::new(C::FailedPrecondition, R::LeaseEnded)
            .precondition("LEASE_ENDED", &lease_id, message)
            .with("lease_id", lease_id)
            .with("end", LeaseState::ReplicaGone.as_str_name())
            .with("replica", replica),
    }
}

fn from_sandbox(err: sandbox::Error, message: &str) -> Failure {
    use Code as C;
    use ErrorReason as R;
    match err {
        sandbox::Error::Backend(b) => match b {
            backend::Error::Unreachable { .. } => {
                Failure::new(C::Unavailable, R::EngineUnavailable).retry_after(ENGINE_RETRY)
            }
            backend::Error::ImageMissing { image, .. } => {
                Failure::new(C::FailedPrecondition, R::ImageMissing)
                    .precondition("IMAGE_MISSING", &image, message)
                    .with("image", image)
            }
            backend::Error::ContainerGone { id } => {
                Failure::new(C::FailedPrecondition, R::ContainerGone)
                    .precondition("CONTAINER_GONE", &id, message)
                    .with("container_id", id)
            }
            backend::Error::Engine { .. } => Failure::new(C::Unavailable, R::EngineFailed),
            backend::Error::Unsupported(kind) => {
                Failure::new(C::Unimplemented, R::BackendUnsupported).with("backend", kind.as_str())
            }
        },
        sandbox::Error::CommandFailed { .. } => Failure::new(C::Internal, R::SandboxCommandFailed),
        sandbox::Error::Warden { .. } => Failure::new(C::Internal, R::SandboxCommandFailed),
        sandbox::Error::OnNetwork { container, .. } => {
            Failure::new(C::FailedPrecondition, R::ContainerGone)
                .precondition("CONTAINER_GONE", &container, message)
                .with("container_id", container)
        }
        sandbox::Error::RunnerLost { container, .. } => {
            Failure::new(C::Aborted, R::SandboxCommandFailed).with("container_id", container)
        }
        sandbox::Error::NoRunGroup(_) => Failure::new(C::FailedPrecondition, R::NotAllowed)
            .precondition("NOT_ALLOWED", "", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LeaseEnd;

    fn reason_of(status: &Status) -> String {
        let details = status.get_error_details();
        let info = details
            .error_info()
            .expect("every status carries ErrorInfo");
        assert_eq!(info.domain, DOMAIN);
        info.reason.clone()
    }

    #[test]
    fn codes_and_reasons_follow_the_contract() {
        let cases = [
            (
                Error::invalid("config.min_pool_size", "too big"),
                Code::InvalidArgument,
                "INVALID_FIELD",
            ),
            (
                Error::PoolNotFound("x".into()),
                Code::NotFound,
                "POOL_NOT_FOUND",
            ),
            (
                Error::LeaseNotFound("x".into()),
                Code::NotFound,
                "LEASE_NOT_FOUND",
            ),
            (
                Error::LeaseEnded {
                    id: "x".into(),
                    end: LeaseEnd::Expired,
                },
                Code::FailedPrecondition,
                "LEASE_ENDED",
            ),
            (
                Error::Exhausted {
                    pool: "p".into(),
                    detail: "d".into(),
                    waited: Duration::ZERO,
                },
                Code::ResourceExhausted,
                "POOL_EXHAUSTED",
            ),
            (
                Error::InstallFailed("pip said no".into()),
                Code::FailedPrecondition,
                "INSTALL_FAILED",
            ),
            (Error::ShuttingDown, Code::Unavailable, "SHUTTING_DOWN"),
        ];
        for (err, code, reason) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(reason_of(&status), reason);
        }
    }

    #[test]
    fn lease_errors_name_the_lease_and_how_it_ended() {
        let status = Status::from(Error::LeaseEnded {
            id: "abc".into(),
            end: LeaseEnd::Released,
        });
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "LEASE_ENDED");
        assert_eq!(
            info.metadata.get("lease_id").map(String::as_str),
            Some("abc")
        );
        assert_eq!(
            info.metadata.get("end").map(String::as_str),
            Some("LEASE_STATE_RELEASED")
        );
        let status = Status::from(Error::LeaseNotFound("abc".into()));
        assert_eq!(reason_of(&status), "LEASE_NOT_FOUND");
    }

    #[test]
    fn invalid_argument_names_the_field_in_details() {
        let status = Status::from(Error::invalid("config.min_pool_size", "too big"));
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations[0].field, "config.min_pool_size");
        assert!(status.message().contains("config.min_pool_size"));
    }

    #[test]
    fn forwarding_failures_name_the_replica() {
        let status = Status::from(Error::from(ForwardError::UnknownReplica {
            lease_id: "z.00".into(),
            replica: "z".into(),
            this: "a".into(),
            known: "b".into(),
        }));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(reason_of(&status), "LEASE_NOT_FOUND");
        let status = Status::from(Error::from(ForwardError::Unreachable {
            lease_id: "b.00".into(),
            replica: "b".into(),
            address: "http://127.0.0.1:1".into(),
            detail: "refused".into(),
        }));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("replica \"b\""),
            "{}",
            status.message()
        );
        let details = status.get_error_details();
        let info = details.error_info().expect("info");
        assert_eq!(info.metadata.get("replica").map(String::as_str), Some("b"));
        assert!(details.retry_info().is_some());
        let status = Status::from(Error::from(ForwardError::OwnerGone {
            lease_id: "b.00".into(),
            replica: "b".into(),
            address: "http://127.0.0.1:1".into(),
        }));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&status), "LEASE_ENDED");
        let details = status.get_error_details();
        let info = details.error_info().expect("info");
        assert_eq!(
            info.metadata.get("end").map(String::as_str),
            Some("LEASE_STATE_REPLICA_GONE")
        );
        assert_eq!(
            info.metadata.get("lease_id").map(String::as_str),
            Some("b.00")
        );
        assert_eq!(info.metadata.get("replica").map(String::as_str), Some("b"));
        // Gone from discovery's list: the same answer, at once.
        let status = Status::from(Error::from(ForwardError::OwnerLeft {
            lease_id: "b.00".into(),
            replica: "b".into(),
            listing: "Service ns/sandpool-peers".into(),
        }));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&status), "LEASE_ENDED");
        let details = status.get_error_details();
        let info = details.error_info().expect("info");
        assert_eq!(
            info.metadata.get("end").map(String::as_str),
            Some("LEASE_STATE_REPLICA_GONE")
        );
        assert_eq!(info.metadata.get("replica").map(String::as_str), Some("b"));
        let status = Status::from(Error::from(ForwardError::NotListed {
            lease_id: "b.00".into(),
            replica: "b".into(),
            listing: "Service ns/sandpool-peers".into(),
        }));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.get_error_details().retry_info().is_some());
    }

    #[test]
    fn an_unreachable_engine_is_retryable() {
        let status = Status::from(Error::from(backend::Error::Unreachable {
            backend: backend::BackendKind::Docker,
            endpoint: "unix:///nowhere".into(),
            detail: "refused".into(),
        }));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(reason_of(&status), "ENGINE_UNAVAILABLE");
        assert!(status.get_error_details().retry_info().is_some());
    }
}
