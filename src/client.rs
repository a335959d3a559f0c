//! Connecting to the agent's Unix sockets.
//!
//! Used by the `keyward` CLI, the tests and the benchmarks. Connection
//! failures are turned into messages that say what to do.

use std::io;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// The service socket of a system install.
pub const DEFAULT_SERVICE_SOCKET: &str = "/run/keyward/keys.sock";
/// The admin socket of a system install.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/keyward/admin.sock";

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing at the path.
    #[error(
        "no keyward agent socket at {path}: start keywardd (or pass --dev DIR / --socket PATH, or set KEYWARD_SOCKET)"
    )]
    NoSocket {
        /// The socket path.
        path: PathBuf,
    },
    /// A socket file, but no agent behind it.
    #[error("no keyward agent is listening on {path} (stale socket): start keywardd")]
    NotListening {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket's mode or group keeps this user out.
    #[error("permission denied connecting to {path}: add this user to the socket's group (keyward) or run as root")]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// Anything else.
    #[error("cannot connect to the keyward agent at {path}: {source}")]
    Other {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Opens a gRPC channel to the agent socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, ConnectError> {
    let path = path.to_path_buf();
    // Connect once by hand so that the common failures get plain messages
    // (tonic would wrap them in transport errors).
    let first = UnixStream::connect(&path).await.map_err(|e| connect_error(&path, e))?;
    let mut first = Some(first);
    let target = path.clone();
    // The authority is never resolved; it only fills the HTTP/2 :authority.
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
        .map_err(|e| ConnectError::Other {
            path,
            source: Box::new(e),
        })
}

fn connect_error(path: &Path, e: io::Error) -> ConnectError {
    let path = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => ConnectError::NoSocket { path },
        io::ErrorKind::ConnectionRefused => ConnectError::NotListening { path },
        io::ErrorKind::PermissionDenied => ConnectError::PermissionDenied { path },
        _ => ConnectError::Other {
            path,
            source: Box::new(e),
        },
    }
}
