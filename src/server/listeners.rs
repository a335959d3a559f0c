//! The listening sockets: bound by the agent, or passed by systemd.

use std::path::Path;

use crate::config::Config;

use super::activation;
use crate::sockets::{self, BindError};

/// The listening sockets.
pub struct Listeners {
    /// `keys.sock`: the `Keys` service.
    pub service: std::os::unix::net::UnixListener,
    /// `admin.sock`: the `Admin` service.
    pub admin: std::os::unix::net::UnixListener,
    /// The Prometheus endpoint, when `[metrics] listen` is set.
    pub metrics: Option<crate::metrics::http::MetricsListener>,
    /// `creds.sock`, when `[sockets] credentials` is on.
    pub credentials: Option<std::os::unix::net::UnixListener>,
    /// The socket files the agent bound itself (not those systemd passed,
    /// which its .socket units own): removed at shutdown if still its own.
    pub files: Vec<sockets::SocketFile>,
}

/// Binds both sockets with the configured modes and groups.
pub fn bind_listeners(config: &Config) -> Result<Listeners, BindError> {
    bind_listeners_with(config, activation::Inherited::default())
}

/// Like [`bind_listeners`], but uses the sockets systemd passed where there
/// are any and binds only the others. On failure, the files bound so far
/// are removed again.
pub fn bind_listeners_with(config: &Config, inherited: activation::Inherited) -> Result<Listeners, BindError> {
    let p = &config.paths;
    if inherited.credentials.is_some() && !config.credentials_socket {
        tracing::warn!("systemd passed a \"creds\" socket but [sockets] credentials is off: it is closed, not served");
    }
    let mut files = Vec::new();
    let mut bind = |path: &Path, mode: u32, gid: Option<u32>| -> Result<std::os::unix::net::UnixListener, BindError> {
        let (listener, file) = sockets::bind(path, mode, gid)?;
        files.push(file);
        Ok(listener)
    };
    let service = match inherited.service {
        Some(l) => l,
        None => bind(
            &p.service_socket,
            config.service_socket_mode,
            config.service_socket_group,
        )?,
    };
    let (admin_mode, admin_gid) = match config.admin_group {
        Some(g) => (0o660, Some(g)),
        None => (0o600, None),
    };
    let admin = match inherited.admin {
        Some(l) => l,
        None => bind(&p.admin_socket, admin_mode, admin_gid)?,
    };
    // 0600: only root (systemd, PID 1) and the agent's own user connect.
    let credentials = match (config.credentials_socket, inherited.credentials) {
        (false, _) => None,
        (true, Some(l)) => Some(l),
        (true, None) => Some(bind(&p.credentials_socket, 0o600, None)?),
    };
    let metrics = match &config.metrics_listen {
        None => None,
        Some(listen) => Some(crate::metrics::http::bind(listen).map_err(|source| BindError::Io {
            what: "[metrics] listen",
            path: listen.to_string().into(),
            source,
        })?),
    };
    Ok(Listeners {
        service,
        admin,
        metrics,
        credentials,
        files,
    })
}
