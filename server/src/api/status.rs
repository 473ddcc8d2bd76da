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
            Error::PoolNotFound(_)
            | Error::LeaseNotFound(_)
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
            Error::LeaseEnded { id, .. } => precondition("LEASE_ENDED", &id, message),
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
