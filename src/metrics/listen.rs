//! Where the metrics endpoint listens, and binding it.
//!
//! The endpoint has no authentication, so it is only ever bound where the
//! host already decides who may connect: a loopback address, or a Unix
//! socket whose file mode and directory do. A non-loopback address is
//! refused when the setting is parsed, not when it is bound, so a bad
//! config fails at load with the reason and the way out.
//!
//! A Unix socket is bound under a temporary name, given mode 0660 and
//! renamed into place (the agent's [`crate::sockets::bind`]), so it
//! is never reachable with looser permissions; a stale socket is replaced,
//! a live one or a file that is not a socket is left alone. The socket file
//! is removed when the listener is dropped ([`super::http::serve`] drops it
//! when it stops accepting), unless something else has replaced it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::sockets::{self, BindError};

/// Where the metrics endpoint listens: `127.0.0.1:9464`, `[::1]:9464` or
/// `unix:/run/keyward/metrics.sock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    /// A loopback address and port.
    Tcp(SocketAddr),
    /// An absolute Unix socket path.
    Unix(PathBuf),
}

/// Why a metrics listen setting was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// An address other than loopback.
    #[error(
        "refusing to serve metrics on {0}: the metrics endpoint has no authentication, so it only binds to loopback; \
         use 127.0.0.1:PORT or [::1]:PORT and put an authenticating proxy in front, or use unix:/ABSOLUTE/PATH"
    )]
    NotLoopback(SocketAddr),
    /// A relative Unix socket path.
    #[error("metrics socket path {0} is relative: use an absolute path, e.g. unix:/run/keyward/metrics.sock")]
    RelativePath(PathBuf),
    /// Neither `IP:PORT` nor `unix:PATH`.
    #[error(
        "invalid metrics address {0:?}: expected IP:PORT (127.0.0.1:9464, [::1]:9464; host names such as \
         localhost are not accepted) or unix:/ABSOLUTE/PATH"
    )]
    Invalid(String),
}

impl FromStr for MetricsListen {
    type Err = ListenError;

    fn from_str(s: &str) -> Result<MetricsListen, ListenError> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            return if path.is_absolute() && path.file_name().is_some() {
                Ok(MetricsListen::Unix(path))
            } else if path.is_absolute() || path.as_os_str().is_empty() {
                Err(ListenError::Invalid(s.to_owned()))
            } else {
                Err(ListenError::RelativePath(path))
            };
        }
        let addr: SocketAddr = s.parse().map_err(|_| ListenError::Invalid(s.to_owned()))?;
        // `::ffff:127.0.0.1` is loopback too.
        if !addr.ip().to_canonical().is_loopback() {
            return Err(ListenError::NotLoopback(addr));
        }
        Ok(MetricsListen::Tcp(addr))
    }
}

impl fmt::Display for MetricsListen {
    /// The form [`FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsListen::Tcp(addr) => write!(f, "{addr}"),
            MetricsListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound metrics listener, ready for [`super::http::serve`]. Binding is
/// separate from serving so that the agent fails at start, with the reason,
/// when the address is taken, and so that tests can bind port 0 and ask
/// which port they got.
#[derive(Debug)]
pub struct MetricsListener {
    pub(super) bound: Bound,
}

#[derive(Debug)]
pub(super) enum Bound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, sockets::SocketFile),
}

impl MetricsListener {
    /// Where it listens; for a TCP port 0, the port it got.
    pub fn local_addr(&self) -> io::Result<MetricsListen> {
        match &self.bound {
            Bound::Tcp(listener) => Ok(MetricsListen::Tcp(listener.local_addr()?)),
            Bound::Unix(_, file) => Ok(MetricsListen::Unix(file.path().to_path_buf())),
        }
    }
}

/// Binds the metrics listener and logs where it listens.
pub fn bind(listen: &MetricsListen) -> io::Result<MetricsListener> {
    let bound = match listen {
        MetricsListen::Tcp(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind the metrics listener on {addr}: {e}")))?;
            listener.set_nonblocking(true)?;
            Bound::Tcp(listener)
        }
        MetricsListen::Unix(path) => bind_unix(path)?,
    };
    let listener = MetricsListener { bound };
    tracing::info!(address = %listener.local_addr()?, "metrics endpoint listening");
    Ok(listener)
}

fn bind_unix(path: &Path) -> io::Result<Bound> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "cannot bind the metrics socket {}: its directory {} does not exist; create it first \
                 (e.g. RuntimeDirectory= in the systemd unit) or choose another path",
                path.display(),
                dir.display()
            ),
        ));
    }
    let (listener, file) = sockets::bind(path, 0o660, None).map_err(|e| {
        let kind = match &e {
            BindError::AlreadyServing { .. } => io::ErrorKind::AddrInUse,
            BindError::NotASocket { .. } => io::ErrorKind::AlreadyExists,
            BindError::Io { source, .. } => source.kind(),
            BindError::Locked { .. } => io::ErrorKind::Other,
            BindError::UnsafeDirectory { .. } => io::ErrorKind::PermissionDenied,
        };
        io::Error::new(kind, format!("metrics socket: {e}"))
    })?;
    Ok(Bound::Unix(listener, file))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn parses_loopback_and_absolute_unix_paths_only() {
        let ok = [
            ("127.0.0.1:9464", MetricsListen::Tcp("127.0.0.1:9464".parse().unwrap())),
            ("127.1.2.3:0", MetricsListen::Tcp("127.1.2.3:0".parse().unwrap())),
            ("[::1]:9464", MetricsListen::Tcp("[::1]:9464".parse().unwrap())),
            (
                "[::ffff:127.0.0.1]:9464",
                MetricsListen::Tcp("[::ffff:127.0.0.1]:9464".parse().unwrap()),
            ),
            (
                "unix:/run/keyward/metrics.sock",
                MetricsListen::Unix("/run/keyward/metrics.sock".into()),
            ),
        ];
        for (input, want) in ok {
            let got: MetricsListen = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, want, "{input}");
            assert_eq!(got.to_string(), input, "Display reads back");
        }

        let refused = [
            ("0.0.0.0:9464", "refusing to serve metrics on 0.0.0.0:9464"),
            ("10.1.2.3:9464", "refusing to serve metrics on 10.1.2.3:9464"),
            ("[::]:9464", "refusing to serve metrics on [::]:9464"),
            ("[2001:db8::1]:9464", "authenticating proxy"),
            ("unix:metrics.sock", "metrics.sock is relative"),
            ("unix:./run/m.sock", "is relative"),
            ("unix:", "invalid metrics address"),
            ("unix:/", "invalid metrics address"),
            ("localhost:9464", "host names such as localhost are not accepted"),
            ("127.0.0.1", "invalid metrics address"),
            ("", "invalid metrics address"),
        ];
        for (input, want) in refused {
            let err = input.parse::<MetricsListen>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn unix_socket_has_mode_0660_and_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.sock");
        let listener = bind(&MetricsListen::Unix(path.clone())).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(listener.local_addr().unwrap(), MetricsListen::Unix(path.clone()));

        let err = bind(&MetricsListen::Unix(path.clone())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");

        drop(listener);
        assert!(!path.exists(), "the socket file is removed with the listener");
    }

    #[test]
    fn unix_socket_in_a_missing_directory_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("metrics.sock");
        let err = bind(&MetricsListen::Unix(path)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("absent does not exist"), "{err}");
    }

    #[test]
    fn a_regular_file_at_the_socket_path_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.sock");
        std::fs::write(&path, b"data").unwrap();
        let err = bind(&MetricsListen::Unix(path.clone())).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn a_replaced_socket_is_not_removed_by_the_old_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.sock");
        let old = bind(&MetricsListen::Unix(path.clone())).unwrap();
        std::fs::remove_file(&path).unwrap();
        let new = bind(&MetricsListen::Unix(path.clone())).unwrap();
        drop(old);
        assert!(path.exists(), "the new listener's socket stays");
        drop(new);
        assert!(!path.exists());
    }
}
