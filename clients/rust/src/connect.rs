//! Finding the agent's service socket and opening a gRPC channel over it.
//!
//! The first connection is made by hand, so that "no agent" and "not
//! allowed" come back as plain [`Error`]s instead of tonic transport
//! errors. After that the channel reconnects by itself, through the same
//! connector, whenever the agent restarts.

use std::io;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::error::{from_io, Error};

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

/// Opens a channel to the socket at `path`.
pub(crate) async fn open(path: &Path) -> Result<Channel, Error> {
    let first = UnixStream::connect(path).await.map_err(|e| from_io(path, e))?;
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
                    None => UnixStream::connect(&target).await?,
                };
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| Error::Connect {
            socket: path.to_path_buf(),
            source: io::Error::other(e),
        })
}
