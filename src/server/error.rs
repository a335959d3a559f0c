//! The one place where the agent's errors become gRPC statuses.

use crate::agent::error::ApiError;

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        use tonic::Code;
        let code = match &e {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::Aborted(_) => Code::Aborted,
            ApiError::FailedPrecondition(_) | ApiError::HookFailed(_) => Code::FailedPrecondition,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Unavailable(_) => Code::Unavailable,
        };
        tonic::Status::new(code, e.to_string())
    }
}
