//! systemd integration: sockets passed by socket activation (`LISTEN_FDS`)
//! and readiness notification (`NOTIFY_SOCKET`, `Type=notify`).
//!
//! Invariants: a passed fd is used only if it is a listening `AF_UNIX`
//! stream socket (anything else is an error, never served); the `LISTEN_*`
//! and `NOTIFY_SOCKET` variables are read once at start and removed, so
//! that no child process mistakes them for its own; sockets systemd passed
//! stay systemd's: the agent never unlinks their files.
//!
//! The library stays free of `unsafe`: turning the raw fd numbers 3.. into
//! owned fds is the binary's job (it alone knows they are its to own); this
//! module only checks and sorts what it is given.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage};

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;

/// Why passed sockets could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_FDS` / `LISTEN_FDNAMES` do not make sense.
    #[error("socket activation: {0}; check the .socket unit (ListenStream= and FileDescriptorName=)")]
    Environment(String),
    /// A passed fd is not what the agent can serve.
    #[error(
        "socket activation: fd {fd} ({name}) {problem}; the .socket unit must use ListenStream= with a filesystem path"
    )]
    NotAUnixListener {
        /// The fd number.
        fd: i32,
        /// Its name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// What the `LISTEN_*` variables announce for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenEnv {
    /// How many fds, starting at [`LISTEN_FDS_START`].
    pub count: usize,
    /// Their names, one per fd (defaults filled in).
    pub names: Vec<String>,
}

/// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` and removes them
/// from the environment. `None` when the fds are not meant for `pid` (or
/// there are none). Call it before any thread starts: it changes the
/// environment.
pub fn take_listen_env(pid: u32) -> Result<Option<ListenEnv>, ActivationError> {
    let get = |name: &str| std::env::var_os(name);
    let (listen_pid, listen_fds, names) = (get("LISTEN_PID"), get("LISTEN_FDS"), get("LISTEN_FDNAMES"));
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    parse_listen_env(pid, listen_pid, listen_fds, names)
}

/// The pure part of [`take_listen_env`].
pub fn parse_listen_env(
    pid: u32,
    listen_pid: Option<OsString>,
    listen_fds: Option<OsString>,
    names: Option<OsString>,
) -> Result<Option<ListenEnv>, ActivationError> {
    let text = |v: OsString, what: &str| {
        v.into_string()
            .map_err(|_| ActivationError::Environment(format!("{what} is not UTF-8")))
    };
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    // Not for us (inherited from a parent that was activated): ignore.
    if text(listen_pid, "LISTEN_PID")?.trim().parse::<u32>().ok() != Some(pid) {
        return Ok(None);
    }
    let fds = text(listen_fds, "LISTEN_FDS")?;
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| ActivationError::Environment(format!("LISTEN_FDS={fds:?} is not a number")))?;
    if count == 0 {
        return Ok(None);
    }
    let names = match names {
        Some(n) => {
            let n = text(n, "LISTEN_FDNAMES")?;
            let names: Vec<String> = n.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(ActivationError::Environment(format!(
                    "LISTEN_FDNAMES={n:?} names {} fds but LISTEN_FDS={count}",
                    names.len()
                )));
            }
            names
        }
        None => (0..count)
            .map(|i| match i {
                0 => "keys".to_owned(),
                1 => "admin".to_owned(),
                _ => format!("fd{}", LISTEN_FDS_START as usize + i),
            })
            .collect(),
    };
    Ok(Some(ListenEnv { count, names }))
}

/// The listeners systemd passed, by role. A role left `None` is bound by
/// the agent itself.
#[derive(Default)]
pub struct Inherited {
    /// `keys`: the service socket.
    pub service: Option<UnixListener>,
    /// `admin`: the admin socket.
    pub admin: Option<UnixListener>,
    /// `creds`: the `LoadCredential=` socket (see [`super::creds`]).
    pub credentials: Option<UnixListener>,
}

impl Inherited {
    /// The roles filled, for the log.
    pub fn roles(&self) -> Vec<&'static str> {
        let mut r = Vec::new();
        if self.service.is_some() {
            r.push("keys");
        }
        if self.admin.is_some() {
            r.push("admin");
        }
        if self.credentials.is_some() {
            r.push("creds");
        }
        r
    }
}

/// Checks each passed fd (in order, `names[i]` for fd 3+i) and sorts them
/// by name into roles. Every fd is checked, then set close-on-exec and
/// non-blocking. An unknown name or a duplicate role is an error: a
/// misconfigured socket unit should stop the agent, not be half-used.
pub fn sort(fds: Vec<OwnedFd>, names: &[String]) -> Result<Inherited, ActivationError> {
    let mut inherited = Inherited::default();
    for (fd, name) in fds.into_iter().zip(names) {
        let raw = fd.as_raw_fd();
        let bad = |problem: String| ActivationError::NotAUnixListener {
            fd: raw,
            name: name.clone(),
            problem,
        };
        check_unix_listener(&fd).map_err(bad)?;
        fcntl(raw, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| bad(format!("cannot set close-on-exec: {e}")))?;
        let listener = UnixListener::from(fd);
        listener
            .set_nonblocking(true)
            .map_err(|e| bad(format!("cannot make non-blocking: {e}")))?;
        let slot = match name.as_str() {
            "keys" => &mut inherited.service,
            "admin" => &mut inherited.admin,
            "creds" => &mut inherited.credentials,
            other => {
                return Err(ActivationError::Environment(format!(
                    "fd {raw} is named {other:?}; keywardd knows \"keys\", \"admin\" and \"creds\""
                )))
            }
        };
        if slot.replace(listener).is_some() {
            return Err(ActivationError::Environment(format!("two fds are named {name:?}")));
        }
    }
    Ok(inherited)
}

fn check_unix_listener(fd: &OwnedFd) -> Result<(), String> {
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(|e| format!("is not a socket ({e})"))?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(format!("is not a Unix socket (family {:?})", addr.family()));
    }
    match getsockopt(fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(t) => return Err(format!("is a {t:?} socket, not a stream socket")),
        Err(e) => return Err(format!("cannot read its type: {e}")),
    }
    match getsockopt(fd, sockopt::AcceptConn) {
        Ok(true) => Ok(()),
        Ok(false) => Err("is not listening".to_owned()),
        Err(e) => Err(format!("cannot tell whether it listens: {e}")),
    }
}

/// The service manager's notification socket (`NOTIFY_SOCKET`), for
/// `Type=notify`. Sends are best effort: a lost message is logged, never
/// fatal (systemd's own timeout then reports it).
pub struct Notifier {
    socket: UnixDatagram,
    target: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and removes it from the environment. `None`
    /// when it is unset or unusable (logged). A leading `@` names an
    /// abstract address.
    pub fn take_from_env() -> Option<Notifier> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        std::env::remove_var("NOTIFY_SOCKET");
        match Notifier::new(&value) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(notify_socket = ?value, error = %e, "cannot use NOTIFY_SOCKET; systemd will not hear that the agent is ready");
                None
            }
        }
    }

    /// A notifier for the address `path` (`@name` for an abstract one).
    pub fn new(path: &std::ffi::OsStr) -> io::Result<Notifier> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_bytes();
        let target = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(path)?,
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
        })
    }

    /// Sends `state` (newline-separated `KEY=value` lines).
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.target) {
            tracing::warn!(error = %e, state, "cannot notify systemd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(s.into())
    }

    #[test]
    fn listen_env_is_for_this_pid_only_and_names_default_to_keys_then_admin() {
        assert_eq!(parse_listen_env(7, os("8"), os("1"), None).unwrap(), None);
        assert_eq!(parse_listen_env(7, None, os("1"), None).unwrap(), None);
        assert_eq!(parse_listen_env(7, os("7"), os("0"), None).unwrap(), None);
        let env = parse_listen_env(7, os("7"), os("2"), None).unwrap().unwrap();
        assert_eq!(env.names, ["keys", "admin"]);
        let env = parse_listen_env(7, os("7"), os("2"), os("admin:keys"))
            .unwrap()
            .unwrap();
        assert_eq!(env.names, ["admin", "keys"]);
        assert!(parse_listen_env(7, os("7"), os("2"), os("keys")).is_err());
        assert!(parse_listen_env(7, os("7"), os("x"), None).is_err());
    }

    #[test]
    fn only_listening_unix_stream_sockets_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("k.sock")).unwrap();
        let got = sort(vec![OwnedFd::from(listener)], &["keys".to_owned()]).unwrap();
        assert_eq!(got.roles(), ["keys"]);

        let datagram = UnixDatagram::bind(dir.path().join("d.sock")).unwrap();
        let err = sort(vec![OwnedFd::from(datagram)], &["keys".to_owned()]).err().unwrap();
        assert!(err.to_string().contains("not a stream socket"), "{err}");

        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let err = sort(vec![OwnedFd::from(file)], &["keys".to_owned()]).err().unwrap();
        assert!(err.to_string().contains("not a socket"), "{err}");

        let other = UnixListener::bind(dir.path().join("o.sock")).unwrap();
        let err = sort(vec![OwnedFd::from(other)], &["vault".to_owned()]).err().unwrap();
        assert!(err.to_string().contains("\"vault\""), "{err}");
    }
}
