//! Finding the agent's service socket and opening a gRPC channel over it.
//!
//! The first connection is made by hand, so that "no agent" and "not
//! allowed" come back as plain errors instead of tonic transport errors. After that the channel reconnects by itself, through the same
//! connector, whenever the agent restarts. Each connection, the first and
//! every later one, is checked (`trust.rs`) before tonic writes to it.

use std::io;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::error::{from_io, Error};
use crate::trust::Trust;

/// The service socket of a system install.
pub const DEFAULT_SOCKET: &str = "/run/keyward/keys.sock";
/// The environment variable naming the service socket.
pub const SOCKET_ENV: &str = "KEYWARD_SOCKET";

/// The socket to use: `explicit` if given, else `$KEYWARD_SOCKET` if set
/// and not empty, else [`DEFAULT_SOCKET`].
///
/// ```
/// use std::path::Path;
/// let p = keyward_client::socket_path(Some(Path::new("/tmp/dev/keys.sock")));
/// assert_eq!(p, Path::new("/tmp/dev/keys.sock"));
/// ```
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// Opens a channel to the socket at `path`, served by root, this user or
/// `agent_uid` (else `$KEYWARD_AGENT_UID`).
pub(crate) async fn open(path: &Path, agent_uid: Option<u32>) -> Result<Channel, Error> {
    let trust = Trust::new(agent_uid)?;
    checked_channel(path, trust).await.map_err(|e| from_io(path, e))
}

/// A gRPC channel to either of the agent's sockets (service or admin) at
/// `path`, served by root, this user or `$KEYWARD_AGENT_UID`; failures
/// come with the messages of [`Error`].
///
/// For the admin socket's stubs (`keyward_proto::admin_client`) and for
/// tests; a service is better served by [`Client`](crate::Client).
pub async fn channel(path: &Path) -> Result<Channel, Error> {
    open(path, None).await
}

/// A gRPC channel to the socket at `path`, every connection of which (the
/// first, and each one made again after the agent restarts) is checked by
/// `trust` before anything is written to it.
///
/// The first connection's failure comes back as it happened, for a caller
/// that words its own messages: the socket's `io::Error` (`NotFound`,
/// `ConnectionRefused`, `PermissionDenied`…), or one of kind `Other` when
/// the server is not trusted. [`Error::from_socket_io`] maps any of them.
pub async fn checked_channel(path: &Path, trust: Trust) -> io::Result<Channel> {
    let first = UnixStream::connect(path).await?;
    trust.check(&first)?;
    let mut first = Some(first);
    let target = path.to_path_buf();
    // The authority is never resolved; it only fills HTTP/2's :authority.
    Endpoint::from_static("http://keyward.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let taken = first.take();
            let target = target.clone();
            async move {
                let stream = match taken {
                    Some(s) => s,
                    None => {
                        // The agent restarted, or someone else listens
                        // at the path now.
                        let s = UnixStream::connect(&target).await?;
                        trust.check(&s)?;
                        s
                    }
                };
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(io::Error::other)
}
