//! `state_dir`, `runtime_dir` and `audit_file`: where every file and socket
//! of the agent lives ([`Paths`]), all derived from those three.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::value::absolute_path;

/// Default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/keyward";
/// Default `runtime_dir`.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/keyward";
/// Default `audit_file`.
pub const DEFAULT_AUDIT_FILE: &str = "/var/log/keyward/audit.jsonl";

/// Every file and socket the agent uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// Holds the identity, install key, lock file and store.
    pub state_dir: PathBuf,
    /// `state_dir/store`: one age file per key.
    pub store_dir: PathBuf,
    /// `state_dir/identity.txt`: the agent's age identity.
    pub identity_file: PathBuf,
    /// `state_dir/install.key`: the per-install fingerprint salt and audit key.
    pub install_key_file: PathBuf,
    /// `state_dir/signing.key`: the agent's fleet signing key (Ed25519).
    pub signing_key_file: PathBuf,
    /// `state_dir/keywardd.lock`: held while an agent runs.
    pub lock_file: PathBuf,
    /// `runtime_dir/keys.sock`: the service socket.
    pub service_socket: PathBuf,
    /// `runtime_dir/admin.sock`: the admin socket.
    pub admin_socket: PathBuf,
    /// `runtime_dir/creds.sock`: systemd's `LoadCredential=` socket, when
    /// `[sockets] credentials` is on.
    pub credentials_socket: PathBuf,
    /// The audit log.
    pub audit_file: PathBuf,
}

impl Paths {
    /// The paths derived from the three configured locations.
    pub fn new(state_dir: &Path, runtime_dir: &Path, audit_file: &Path) -> Paths {
        Paths {
            state_dir: state_dir.to_owned(),
            store_dir: state_dir.join("store"),
            identity_file: state_dir.join("identity.txt"),
            install_key_file: state_dir.join("install.key"),
            signing_key_file: state_dir.join("signing.key"),
            lock_file: state_dir.join("keywardd.lock"),
            service_socket: runtime_dir.join("keys.sock"),
            admin_socket: runtime_dir.join("admin.sock"),
            credentials_socket: runtime_dir.join("creds.sock"),
            audit_file: audit_file.to_owned(),
        }
    }

    /// Dev mode: everything inside `dir`.
    pub fn dev(dir: &Path) -> Paths {
        Paths::new(dir, dir, &dir.join("audit.jsonl"))
    }
}

impl Default for Paths {
    fn default() -> Paths {
        Paths::new(
            Path::new(DEFAULT_STATE_DIR),
            Path::new(DEFAULT_RUNTIME_DIR),
            Path::new(DEFAULT_AUDIT_FILE),
        )
    }
}

/// The three locations as written at the top of the file (each optional).
pub(super) struct RawPaths {
    pub(super) state_dir: Option<Spanned<PathBuf>>,
    pub(super) runtime_dir: Option<Spanned<PathBuf>>,
    pub(super) audit_file: Option<Spanned<PathBuf>>,
}

impl RawPaths {
    /// Each location must be absolute; an absent one takes its default.
    pub(super) fn validate(self, src: &Source<'_>) -> Result<Paths, ConfigError> {
        let dir = |value: Option<Spanned<PathBuf>>, key: &str, default: &str| match value {
            None => Ok(PathBuf::from(default)),
            Some(v) => absolute_path(src, &v, key),
        };
        let state_dir = dir(self.state_dir, "state_dir", DEFAULT_STATE_DIR)?;
        let runtime_dir = dir(self.runtime_dir, "runtime_dir", DEFAULT_RUNTIME_DIR)?;
        let audit_file = dir(self.audit_file, "audit_file", DEFAULT_AUDIT_FILE)?;
        Ok(Paths::new(&state_dir, &runtime_dir, &audit_file))
    }
}
