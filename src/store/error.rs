//! What went wrong in the store.

use std::path::PathBuf;

/// What went wrong in the store. Every message names the path or key and
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file or directory is not private to the agent's user.
    #[error("{path} is not private to the agent's user (mode {mode:04o}, owner uid {uid}); keyward refuses to use it: {fix}")]
    Permissions {
        /// The file or directory.
        path: PathBuf,
        /// Its mode bits (`& 0o7777`).
        mode: u32,
        /// Its owner.
        uid: u32,
        /// The command that fixes it, e.g. "run `chmod 600 /path`".
        fix: String,
    },
    /// The key is not in the store.
    #[error("key {key} does not exist")]
    NotFound {
        /// The key, `ENV/NAME`.
        key: String,
    },
    /// A value, file or state is not acceptable; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// The key's file exists but was not loaded (undecryptable, a bad
    /// record...): it may be the only copy of a secret, so nothing replaces
    /// it.
    #[error(
        "{path} exists but the agent did not load it (the agent's log says why, e.g. it is encrypted to another identity); it may be the only copy of {key}: restore the identity it was encrypted to, or move the file away, then retry; nothing was changed"
    )]
    Unloaded {
        /// The key, `ENV/NAME`.
        key: String,
        /// Its file.
        path: PathBuf,
    },
}
