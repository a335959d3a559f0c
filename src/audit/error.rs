//! Why a record was not written ([`AuditError`]).

use std::io;
use std::path::{Path, PathBuf};

/// Why a record was not written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Opening, reading, writing or syncing the log failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// [`super::Audit::close`] was called, or the writer has stopped.
    #[error("audit log is closed (the agent is shutting down)")]
    Closed,
}

impl AuditError {
    /// An [`AuditError::Io`] for `path`.
    pub(super) fn io(path: &Path, source: io::Error) -> AuditError {
        AuditError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// An [`AuditError::Io`] with a copy of `source` (io::Error is not
    /// Clone, and every caller in a failed batch gets its own error).
    pub(super) fn io_copy(path: &Path, source: &io::Error) -> AuditError {
        let copy = match source.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(source.kind(), source.to_string()),
        };
        AuditError::io(path, copy)
    }
}
