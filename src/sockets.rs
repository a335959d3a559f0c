//! Binding the agent's Unix sockets and holding the single-agent lock.
//!
//! Invariants:
//! - A socket is only bound in a directory that no one but root and the
//!   agent's user can change, up to `/` ([`check_dir`]): otherwise another
//!   user could put a listener of its own at the socket's path and read what
//!   clients send to the agent (an admin's `keyward put`), or swap the path
//!   for a symlink while the agent sets its mode.
//! - A socket file is created with its final mode and group before it
//!   appears at its path: bound in a fresh private directory (0700, inside
//!   the socket's), its mode and group set there, then linked into place. So
//!   there is no moment at which it is reachable with looser permissions,
//!   nothing can be swapped under the mode change, and a socket another
//!   agent put at the path meanwhile is never replaced.
//! - A stale socket is replaced, but a socket on which a live agent answers,
//!   or a path that is not a socket, is never touched.
//! - At shutdown a socket path is removed only if it still is the file the
//!   agent bound (same device and inode, [`SocketFile`]).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
    /// A directory on the socket's path can be changed by another user.
    #[error("{dir} is not a safe place for the agent's sockets: {problem}, so another user could replace a socket in it and read what clients send; {fix}")]
    UnsafeDirectory {
        /// The socket's directory, as configured.
        dir: PathBuf,
        /// What is wrong, naming the directory at fault.
        problem: String,
        /// What to run.
        fix: String,
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

/// Checks that no user but root and `owner` (the agent's user) can change
/// `dir` or any directory above it: each must belong to one of them and be
/// writable by neither group nor others. A directory above `dir` may be
/// world-writable if it is root's and sticky (like `/tmp`): there, others
/// can neither rename nor remove what is not theirs. Both the path as
/// written and the one its symlinks lead to are checked.
pub fn check_dir(dir: &Path, owner: u32) -> Result<(), BindError> {
    let unsafe_dir = |problem: String, fix: String| BindError::UnsafeDirectory {
        dir: dir.to_path_buf(),
        problem,
        fix,
    };
    let resolved = fs::canonicalize(dir).map_err(io_err("cannot resolve the socket directory", dir))?;
    for path in [dir, resolved.as_path()] {
        for (depth, ancestor) in path.ancestors().enumerate() {
            if ancestor.as_os_str().is_empty() {
                continue;
            }
            let meta = fs::symlink_metadata(ancestor).map_err(io_err("cannot inspect", ancestor))?;
            // A symlink's own mode means nothing; who may change it is the
            // directory holding it, checked next.
            if meta.file_type().is_symlink() {
                continue;
            }
            let shown = ancestor.display();
            let (uid, mode) = (meta.uid(), meta.mode());
            if uid != 0 && uid != owner {
                return Err(unsafe_dir(
                    format!("{shown} belongs to uid {uid}"),
                    format!("make it root's (chown root: {shown}) or use another directory"),
                ));
            }
            let sticky_above = depth > 0 && uid == 0 && mode & 0o1000 != 0;
            if mode & 0o022 != 0 && !sticky_above {
                return Err(unsafe_dir(
                    format!("{shown} is writable by its group or others (mode {:o})", mode & 0o7777),
                    format!("run chmod go-w {shown}, or use another directory"),
                ));
            }
        }
    }
    Ok(())
}

/// A socket file the agent bound: removed when dropped, if the path still
/// holds that very file (another agent may have replaced a socket it judged
/// stale; that one is not ours to remove).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` still holds the file that was bound.
    fn is_ours(&self) -> bool {
        fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino)
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.is_ours() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Binds a listening socket at `path` with `mode` and, if given, group `gid`,
/// in a directory [`check_dir`] finds safe for the agent's user. The
/// [`SocketFile`] removes it again when dropped.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<(UnixListener, SocketFile), BindError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    check_dir(dir, nix::unistd::geteuid().as_raw())?;
    clear_stale(path)?;
    // A private directory (0700) of its own: nobody else can reach the
    // socket, or swap it, while its mode and group are set.
    let private = tempfile::Builder::new()
        .prefix(".keyward-bind.")
        .tempdir_in(dir)
        .map_err(io_err("cannot make a private directory in", dir))?;
    let tmp = private.path().join("socket");
    let listener = UnixListener::bind(&tmp).map_err(io_err("cannot bind socket", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err("cannot set mode of", &tmp))?;
    if let Some(gid) = gid {
        nix::unistd::fchownat(
            None,
            &tmp,
            None,
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err("cannot set group of", &tmp)(e.into()))?;
    }
    let meta = fs::symlink_metadata(&tmp).map_err(io_err("cannot inspect", &tmp))?;
    // link(2), not rename(2): a socket another agent put at the path since
    // clear_stale looked (both starting at once) is never replaced.
    match fs::hard_link(&tmp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(BindError::AlreadyServing {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err("cannot move socket into place at", path)(e)),
    }
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    drop(private);
    listener
        .set_nonblocking(true)
        .map_err(io_err("cannot configure socket", path))?;
    Ok((listener, file))
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
        let (live, file) = bind(&path, 0o660, None).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(
            bind(&path, 0o660, None),
            Err(BindError::AlreadyServing { .. })
        ));
        // Nothing but the socket is left in the directory.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keys.sock"]);
        drop(live);
        std::mem::forget(file);
        // The listener is gone but its file stays: stale, so replaced.
        let (_again, again) = bind(&path, 0o600, None).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        drop(again);
        assert!(!path.exists(), "removed with its SocketFile");
    }

    #[test]
    fn a_socket_replaced_by_another_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.sock");
        let (_live, file) = bind(&path, 0o600, None).unwrap();
        fs::remove_file(&path).unwrap();
        let _other = UnixListener::bind(&path).unwrap();
        drop(file);
        assert!(path.exists(), "another's socket stays");
    }

    #[test]
    fn unsafe_directories_are_refused_with_the_fix() {
        let me = nix::unistd::geteuid().as_raw();
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("run");
        fs::create_dir(&dir).unwrap();
        for mode in [0o777, 0o775, 0o757] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let e = check_dir(&dir, me).unwrap_err().to_string();
            assert!(
                e.contains("writable by its group or others") && e.contains("chmod go-w"),
                "{e}"
            );
            let e = bind(&dir.join("keys.sock"), 0o660, None).unwrap_err();
            assert!(matches!(e, BindError::UnsafeDirectory { .. }), "{e}");
            assert!(!dir.join("keys.sock").exists());
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        check_dir(&dir, me).unwrap();
        // The directory itself may not be sticky-and-open; those above may
        // (like /tmp, which holds the temp dir of this test).
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_dir(&dir, me).is_err());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let inner = dir.join("inner");
        fs::create_dir(&inner).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        if me == 0 {
            check_dir(&inner, me).unwrap();
            // Another user's directory on the way is refused, and a symlink
            // is followed to check where it leads too.
            nix::unistd::chown(&inner, Some(nix::unistd::Uid::from_raw(2099)), None).unwrap();
            let e = check_dir(&inner, me).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 2099") && e.contains("chown root:"), "{e}");
            let link = base.path().join("link");
            std::os::unix::fs::symlink(&inner, &link).unwrap();
            assert!(check_dir(&link, me).unwrap_err().to_string().contains("uid 2099"));
        }
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
