//! The agent's two sockets, as the CLI finds and opens them.

use std::path::PathBuf;

use keyward::client::{self, DEFAULT_ADMIN_SOCKET, DEFAULT_SERVICE_SOCKET};
use keyward::proto::admin_client::AdminClient;

use crate::cli::Cli;

/// The service socket: `--socket` (or `KEYWARD_SOCKET`), else the dev
/// dir's, else the system one.
pub(crate) fn service_socket(cli: &Cli) -> PathBuf {
    match (&cli.socket, &cli.dev) {
        (Some(s), _) => s.clone(),
        (None, Some(dir)) => dir.join("keys.sock"),
        (None, None) => DEFAULT_SERVICE_SOCKET.into(),
    }
}

/// The admin socket: `--admin-socket` (or `KEYWARD_ADMIN_SOCKET`), else the
/// dev dir's, else the system one.
pub(crate) fn admin_socket(cli: &Cli) -> PathBuf {
    match (&cli.admin_socket, &cli.dev) {
        (Some(s), _) => s.clone(),
        (None, Some(dir)) => dir.join("admin.sock"),
        (None, None) => DEFAULT_ADMIN_SOCKET.into(),
    }
}

pub(crate) async fn admin(cli: &Cli) -> Result<AdminClient<tonic::transport::Channel>, String> {
    let channel = client::connect(&admin_socket(cli)).await.map_err(|e| e.to_string())?;
    Ok(AdminClient::new(channel))
}
