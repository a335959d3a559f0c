//! How the client reaches and authenticates to OpenBao.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach and authenticate to OpenBao.
#[derive(Debug, Clone)]
pub struct KvOptions {
    /// `http://127.0.0.1:8200` or `https://…`; a trailing `/` is ignored.
    pub address: String,
    /// The KV v2 mount, e.g. `secret`.
    pub mount: String,
    /// Sent as `X-Vault-Namespace` when set.
    pub namespace: Option<String>,
    /// A PEM bundle of CA certificates trusted for https, in addition to
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Where the token comes from.
    pub auth: KvAuth,
    /// The limit on each request (connecting, and the whole exchange).
    pub timeout: Duration,
}

/// Where the token comes from. Holds file paths only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvAuth {
    /// A token read from a file (trimmed). Read again when the server says
    /// 403, so that a rotated file is picked up.
    TokenFile(PathBuf),
    /// AppRole login: `POST /v1/auth/{mount}/login {role_id, secret_id}`,
    /// the ids read from files (trimmed).
    AppRole {
        /// The AppRole auth mount, e.g. `approle`.
        mount: String,
        /// The file holding the role_id.
        role_id_file: PathBuf,
        /// The file holding the secret_id.
        secret_id_file: PathBuf,
    },
}
