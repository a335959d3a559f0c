//! The agent's two sockets, as the CLI finds and opens them.
//!
//! Nothing is sent on a socket before the kernel has said who serves it:
//! every connection, the first one and each one made again after the agent
//! restarts, goes through keyward-client's checked channel, which accepts
//! root, this process's effective uid (a development agent run by the same
//! user) or `KEYWARD_AGENT_UID`. A listener that another user put at the
//! socket's path gets not one byte: no request, no secret typed into
//! `keyward put`.
//!
//! A socket that cannot be opened is explained in the CLI's own words,
//! which name its flags (`--dev`, `--socket`) and the socket's group.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use keyward::proto::admin_client::AdminClient;
use keyward_client::{Client, Trust};
use tonic::transport::Channel;

use crate::cli::Cli;

/// The service socket of a system install.
const DEFAULT_SERVICE_SOCKET: &str = "/run/keyward/keys.sock";
/// The admin socket of a system install.
const DEFAULT_ADMIN_SOCKET: &str = "/run/keyward/admin.sock";

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

/// keyward-client on the service socket.
pub(crate) async fn service(cli: &Cli) -> Result<Client, String> {
    let path = service_socket(cli);
    Client::connect_with_trust(&path, trust()?)
        .await
        .map_err(|e| refusal(&path, e))
}

/// The admin stubs on the admin socket.
pub(crate) async fn admin(cli: &Cli) -> Result<AdminClient<Channel>, String> {
    Ok(AdminClient::new(channel(&admin_socket(cli)).await?))
}

/// A checked channel to the socket at `path`.
pub(crate) async fn channel(path: &Path) -> Result<Channel, String> {
    keyward_client::checked_channel(path, trust()?)
        .await
        .map_err(|e| refusal(path, e))
}

/// Root, this user and `KEYWARD_AGENT_UID`.
fn trust() -> Result<Trust, String> {
    Trust::new(None).map_err(|e| e.to_string())
}

/// Why the socket at `path` could not be opened, and what to do.
fn refusal(path: &Path, e: io::Error) -> String {
    let shown = path.display();
    match e.kind() {
        io::ErrorKind::NotFound => format!(
            "no keyward agent socket at {shown}: start keywardd (or pass --dev DIR / --socket PATH, or set KEYWARD_SOCKET)"
        ),
        io::ErrorKind::ConnectionRefused => {
            format!("no keyward agent is listening on {shown} (stale socket): start keywardd")
        }
        io::ErrorKind::PermissionDenied => {
            format!("permission denied connecting to {shown}: {}", permission_advice(path))
        }
        // An untrusted server (nothing was sent to it), or anything else:
        // keyward-client's words.
        _ => keyward_client::Error::from_socket_io(path, e).to_string(),
    }
}

/// What to do when connecting to `path` was refused, from the socket's own
/// group and mode.
fn permission_advice(path: &Path) -> String {
    let Ok(meta) = std::fs::metadata(path) else {
        return "a directory on the way is closed to this user: run as root, or ask for access to it".to_string();
    };
    let mode = meta.mode() & 0o7777;
    if mode & 0o020 == 0 {
        let who = match meta.uid() {
            0 => "root".to_string(),
            uid => format!("uid {uid} or root"),
        };
        return format!("its mode ({mode:04o}) lets only its owner connect: run as {who}");
    }
    format!(
        "add this user to the socket's group ({}) or run as root",
        group_name(meta.gid())
    )
}

/// The group's name, else `gid N`.
fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => format!("gid {gid}"),
    }
}
