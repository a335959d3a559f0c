//! Binding the agent's Unix sockets and holding the single-agent lock.
//!
//! Invariants: a socket file is created with its final mode and group before
//! it appears at its path (bound under a temporary name, then linked into
//! place), so there is no moment at which it is reachable with looser
//! permissions, and a socket another agent put there meanwhile is never
//! replaced; a stale socket is replaced, but a socket on which a live agent
//! answers, or a path that is not a socket, is never touched.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A live agent already serves this path.
    #[error("another keywardd is already serving {path}: stop it first (or use another --dev DIR)")]
    AlreadyServing {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the path.
    #[error("{path} exists and is not a socket; keyward will not remove it: move it away")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Another agent holds the state directory's lock.
    #[error(
        "another keywardd holds the lock {path}: only one agent may serve a state directory; stop the other one first"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An I/O failure, with what was being done.
    #[error("{what} {path}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BindError + 'a {
    move |source| BindError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Takes the exclusive lock that keeps a second agent off the same state.
/// The lock lives as long as the returned value.
pub fn lock_state(path: &Path) -> Result<Flock<File>, BindError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err("cannot open lock file", path))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            BindError::Locked {
                path: path.to_path_buf(),
            }
        } else {
            BindError::Io {
                what: "cannot lock",
                path: path.to_path_buf(),
                source: errno.into(),
            }
        }
    })
}

/// Binds a listening socket at `path` with `mode` and, if given, group `gid`.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<UnixListener, BindError> {
    clear_stale(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io_err("cannot bind socket", &tmp))?;
    let finish = || -> Result<(), BindError> {
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err("cannot set mode of", &tmp))?;
        if let Some(gid) = gid {
            nix::unistd::chown(&tmp, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| io_err("cannot set group of", &tmp)(e.into()))?;
        }
        // link(2), not rename(2): a socket another agent put at the path
        // since clear_stale looked (both starting at once) is never replaced.
        match fs::hard_link(&tmp, path) {
            Ok(()) => {
                let _ = fs::remove_file(&tmp);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(BindError::AlreadyServing {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(io_err("cannot move socket into place at", path)(e)),
        }
    };
    if let Err(e) = finish() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    listener
        .set_nonblocking(true)
        .map_err(io_err("cannot configure socket", path))?;
    Ok(listener)
}

/// Removes a socket file left by an agent that is gone.
fn clear_stale(path: &Path) -> Result<(), BindError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot inspect", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(BindError::AlreadyServing {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale socket");
            fs::remove_file(path).map_err(io_err("cannot remove stale socket", path))
        }
        Err(e) => Err(io_err("cannot probe existing socket", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_mode_and_replaces_stale_but_not_live_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.sock");
        let live = bind(&path, 0o660, None).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(
            bind(&path, 0o660, None),
            Err(BindError::AlreadyServing { .. })
        ));
        drop(live);
        // The listener is gone but its file stays: stale, so replaced.
        let _again = bind(&path, 0o600, None).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn never_removes_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.sock");
        fs::write(&path, b"data").unwrap();
        let err = bind(&path, 0o660, None).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keywardd.lock");
        let _held = lock_state(&path).unwrap();
        assert!(matches!(lock_state(&path), Err(BindError::Locked { .. })));
    }
}
