//! The one place where errors become gRPC statuses. Exhaustive on purpose: a
//! new error variant must decide its status here. Details (bad-request field,
//! retry delay, precondition) travel as standard rich error details, readable
//! from every gRPC language.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{backend, pool::Error, sandbox};

/// Suggested wait before retrying an exhausted pool.
const EXHAUSTED_RETRY: Duration = Duration::from_secs(1);

/// Machine-readable reasons (ErrorInfo, domain "sandpool"), so that clients
/// tell a lost lease from other errors without parsing messages.
const DOMAIN: &str = "sandpool";

fn with_reason(
    code: Code,
    message: String,
    reason: &str,
    lease_id: &str,
    mut details: ErrorDetails,
) -> Status {
    details.set_error_info(
        reason,
        DOMAIN,
        [("lease_id".to_string(), lease_id.to_string())],
    );
    Status::with_error_details(code, message, details)
}

fn precondition(kind: &str, subject: &str, message: String) -> Status {
    Status::with_error_details(
        Code::FailedPrecondition,
        message.clone(),
        ErrorDetails::with_precondition_failure_violation(kind, subject, message),
    )
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::InvalidArgument {
                field,
                message: why,
            } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, why),
            ),
            Error::TooLarge(_) => Status::invalid_argument(message),
            Error::LeaseNotFound(id) => with_reason(
                Code::NotFound,
                message,
                "LEASE_NOT_FOUND",
                &id,
                ErrorDetails::new(),
            ),
            Error::LeaseEnded { id, .. } => {
                let mut details = ErrorDetails::new();
                details.add_precondition_failure_violation("LEASE_ENDED", &id, &message);
                with_reason(
                    Code::FailedPrecondition,
                    message,
                    "LEASE_ENDED",
                    &id,
                    details,
                )
            }
            Error::PoolNotFound(_)
            | Error::RunNotFound { .. }
            | Error::ContextNotFound { .. }
            | Error::PathNotFound { .. } => Status::not_found(message),
            Error::PoolExists(_) => Status::already_exists(message),
            Error::Exhausted { .. } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(EXHAUSTED_RETRY)),
            ),
            Error::PoolClosed(pool) => precondition("POOL_CLOSED", &pool, message),
            Error::PoolFailing { pool, .. } => precondition("POOL_FAILING", &pool, message),
            Error::ContainerGone { lease_id } => precondition("CONTAINER_GONE", &lease_id, message),
            Error::FileFailed { path, .. } => precondition("FILE_OPERATION_FAILED", &path, message),
            Error::NotAllowed(_) => precondition("NOT_ALLOWED", "", message),
            Error::ShuttingDown => Status::unavailable(message),
            Error::Sandbox(e) => from_sandbox(e, message),
        }
    }
}

fn from_sandbox(err: sandbox::Error, message: String) -> Status {
    match err {
        sandbox::Error::Backend(b) => match b {
            backend::Error::Unreachable { .. } => Status::unavailable(message),
            backend::Error::ImageMissing { image, .. } => {
                precondition("IMAGE_MISSING", &image, message)
            }
            backend::Error::ContainerGone { id } => precondition("CONTAINER_GONE", &id, message),
            backend::Error::Engine { .. } => Status::unavailable(message),
            backend::Error::Unsupported(_) => Status::unimplemented(message),
        },
        sandbox::Error::CommandFailed { .. } => Status::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::LeaseEnd;

    #[test]
    fn codes_follow_the_contract() {
        let cases = [
            (
                Error::InvalidArgument {
                    field: "config.min_pool_size".into(),
                    message: "too big".into(),
                },
                Code::InvalidArgument,
            ),
            (Error::PoolNotFound("x".into()), Code::NotFound),
            (Error::LeaseNotFound("x".into()), Code::NotFound),
            (
                Error::LeaseEnded {
                    id: "x".into(),
                    end: LeaseEnd::Expired,
                },
                Code::FailedPrecondition,
            ),
            (
                Error::Exhausted {
                    pool: "p".into(),
                    detail: "d".into(),
                    waited: Duration::ZERO,
                },
                Code::ResourceExhausted,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }

    #[test]
    fn lease_errors_carry_a_reason() {
        for (err, reason) in [
            (Error::LeaseNotFound("abc".into()), "LEASE_NOT_FOUND"),
            (
                Error::LeaseEnded {
                    id: "abc".into(),
                    end: LeaseEnd::Released,
                },
                "LEASE_ENDED",
            ),
        ] {
            let status = Status::from(err);
            let details = status.get_error_details();
            let info = details.error_info().expect("error info");
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, "sandpool");
            assert_eq!(
                info.metadata.get("lease_id").map(String::as_str),
                Some("abc")
            );
        }
    }

    #[test]
    fn invalid_argument_names_the_field_in_details() {
        let status = Status::from(Error::InvalidArgument {
            field: "config.min_pool_size".into(),
            message: "too big".into(),
        });
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations[0].field, "config.min_pool_size");
        assert!(status.message().contains("config.min_pool_size"));
    }
}
