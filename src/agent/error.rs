//! The agent's errors: what a caller is told when an operation fails.
//!
//! Each variant names the gRPC code the transport maps it to
//! (`crate::server::error`), and every message says what was wrong and what
//! to do. Messages never
//! contain secret material: no variant carries any.

use crate::audit::AuditError;
use crate::secret::NameError;
use crate::store::StoreError;

/// An error a caller sees.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input (`INVALID_ARGUMENT`).
    #[error("{0}")]
    InvalidArgument(String),
    /// No such key (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The policy or socket rules refuse the caller (`PERMISSION_DENIED`).
    #[error("{0}")]
    PermissionDenied(String),
    /// The key exists and overwrite was not asked for (`ALREADY_EXISTS`).
    #[error("{0}")]
    AlreadyExists(String),
    /// Compare-and-swap mismatch (`ABORTED`).
    #[error("{0}")]
    Aborted(String),
    /// The key's state does not allow this (`FAILED_PRECONDITION`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was hit (`RESOURCE_EXHAUSTED`).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A rotation hook failed (`FAILED_PRECONDITION`, like a refusal, but
    /// counted as a failed step and raised as an agent-health alert).
    #[error("{0}")]
    HookFailed(String),
    /// The audit log or the store cannot be written (`UNAVAILABLE`).
    #[error("{0}")]
    Unavailable(String),
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> ApiError {
        ApiError::InvalidArgument(e.to_string())
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> ApiError {
        ApiError::Unavailable(format!(
            "the audit log cannot be written ({e}); keys are withheld until it can: check the disk and the audit file's permissions"
        ))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::Invalid(_) => ApiError::InvalidArgument(e.to_string()),
            StoreError::Unloaded { .. } => ApiError::FailedPrecondition(e.to_string()),
            other => ApiError::Unavailable(format!(
                "the key store could not be written ({other}); nothing was changed: check the disk and the store's permissions"
            )),
        }
    }
}
