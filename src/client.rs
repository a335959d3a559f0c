//! Connecting to the agent's Unix sockets.
//!
//! Used by the `keyward` CLI, the tests and the benchmarks. Connection
//! failures are turned into messages that say what to do.
//!
//! Nothing is sent on a socket before the kernel has said who serves it.
//! Every connection, the first one and each one tonic makes again after the
//! agent restarts, goes through the connector below, which reads the
//! server's `SO_PEERCRED` before tonic gets the stream: the server must be
//! root, this process's effective uid (a development agent run by the same
//! user) or the uid in `KEYWARD_AGENT_UID`. A listener that another user put
//! at the socket's path (e.g. in a runtime directory that user can write)
//! gets not one byte: no request, no secret typed into `keyward put`.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// The service socket of a system install.
pub const DEFAULT_SERVICE_SOCKET: &str = "/run/keyward/keys.sock";
/// The admin socket of a system install.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/keyward/admin.sock";
/// The environment variable naming the uid keywardd runs as, when that is
/// neither root nor the user running the client.
pub const AGENT_UID_ENV: &str = "KEYWARD_AGENT_UID";

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
    #[error("permission denied connecting to {path}: {advice}")]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
        /// What to do, from the socket's group and mode.
        advice: String,
    },
    /// The process serving the socket is not one this client trusts:
    /// nothing was sent to it.
    #[error(transparent)]
    Untrusted(#[from] UntrustedServer),
    /// `KEYWARD_AGENT_UID` is set to something that is not a uid.
    #[error("{AGENT_UID_ENV}={value:?} is not a uid: set it to the number keywardd runs as (e.g. {AGENT_UID_ENV}=998), or unset it")]
    BadAgentUid {
        /// The variable's value.
        value: String,
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

/// The uids whose processes may serve the agent's sockets: root, this
/// process's effective uid, and `KEYWARD_AGENT_UID` when set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedServers {
    /// This process's effective uid.
    pub euid: u32,
    /// The uid keywardd runs as (`KEYWARD_AGENT_UID`), when set.
    pub agent_uid: Option<u32>,
}

impl TrustedServers {
    /// This process's effective uid and `KEYWARD_AGENT_UID`.
    pub fn from_env() -> Result<TrustedServers, ConnectError> {
        Ok(TrustedServers {
            euid: nix::unistd::geteuid().as_raw(),
            agent_uid: parse_agent_uid(std::env::var_os(AGENT_UID_ENV))?,
        })
    }

    /// Whether a server running as `uid` is trusted.
    pub fn trusts(&self, uid: u32) -> bool {
        uid == 0 || uid == self.euid || self.agent_uid == Some(uid)
    }

    /// Checks who serves `stream` (connected to `path`) before anything is
    /// written to it.
    fn check(&self, path: &Path, stream: &UnixStream) -> Result<(), ConnectError> {
        let peer = stream.peer_cred().map_err(|e| ConnectError::Other {
            path: path.to_path_buf(),
            source: format!("cannot read who serves the socket (SO_PEERCRED), so nothing was sent: {e}").into(),
        })?;
        if self.trusts(peer.uid()) {
            return Ok(());
        }
        Err(UntrustedServer {
            path: path.to_path_buf(),
            uid: peer.uid(),
            pid: peer.pid(),
            trusted: *self,
        }
        .into())
    }
}

/// `KEYWARD_AGENT_UID`'s value: unset or empty is none.
fn parse_agent_uid(value: Option<std::ffi::OsString>) -> Result<Option<u32>, ConnectError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    value
        .to_str()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| ConnectError::BadAgentUid {
            value: value.to_string_lossy().into_owned(),
        })
}

/// A socket served by a process of a uid the client does not trust.
#[derive(Debug)]
pub struct UntrustedServer {
    /// The socket path.
    pub path: PathBuf,
    /// The uid of the process that serves it.
    pub uid: u32,
    /// Its pid, when the kernel can name it in this pid namespace.
    pub pid: Option<i32>,
    /// Whom the client trusted.
    pub trusted: TrustedServers,
}

impl fmt::Display for UntrustedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pid = match self.pid {
            Some(p) if p > 0 => format!("pid {p}"),
            _ => "pid unknown: another pid namespace".to_string(),
        };
        let mut trusted = vec!["root".to_string()];
        if self.trusted.euid != 0 {
            trusted.push(format!("this user (uid {})", self.trusted.euid));
        }
        trusted.push(match self.trusted.agent_uid {
            Some(n) => format!("{AGENT_UID_ENV} ({n})"),
            None => format!("{AGENT_UID_ENV} (not set)"),
        });
        write!(
            f,
            "refusing the keyward socket {}: it is served by uid {} ({pid}), which is neither {}; nothing was sent to it. \
             Check that socket and its directory (whoever can write there can stand in for keywardd); \
             if keywardd really runs as uid {}, set {AGENT_UID_ENV}={}",
            self.path.display(),
            self.uid,
            neither_nor(&trusted),
            self.uid,
            self.uid,
        )
    }
}

impl std::error::Error for UntrustedServer {}

/// Opens a gRPC channel to the agent socket at `path`, after checking who
/// serves it (see the module docs).
pub async fn connect(path: &Path) -> Result<Channel, ConnectError> {
    let trusted = TrustedServers::from_env()?;
    let path = path.to_path_buf();
    // Connect once by hand so that the common failures get plain messages
    // (tonic would wrap them in transport errors).
    let first = UnixStream::connect(&path).await.map_err(|e| connect_error(&path, e))?;
    trusted.check(&path, &first)?;
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
                    None => {
                        // A reconnection: the agent restarted, or someone
                        // else now listens at the path.
                        let s = UnixStream::connect(&target).await?;
                        trusted.check(&target, &s).map_err(io::Error::other)?;
                        s
                    }
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
        io::ErrorKind::PermissionDenied => ConnectError::PermissionDenied {
            advice: permission_advice(&path),
            path,
        },
        _ => ConnectError::Other {
            path,
            source: Box::new(e),
        },
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

/// `a nor b`, `a, b nor c`.
fn neither_nor(items: &[String]) -> String {
    match items.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} nor {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_servers() {
        let user = TrustedServers {
            euid: 1000,
            agent_uid: None,
        };
        assert!(user.trusts(0) && user.trusts(1000));
        assert!(!user.trusts(1001) && !user.trusts(998));
        let with_agent = TrustedServers {
            agent_uid: Some(998),
            ..user
        };
        assert!(with_agent.trusts(998) && !with_agent.trusts(1001));
    }

    #[test]
    fn agent_uid_variable() {
        let parse = |v: &str| parse_agent_uid(Some(v.into()));
        assert_eq!(parse_agent_uid(None).unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("998").unwrap(), Some(998));
        for bad in ["keyward", "-1", "99999999999", "9 9"] {
            let msg = parse(bad).unwrap_err().to_string();
            assert!(msg.contains("KEYWARD_AGENT_UID") && msg.contains(bad), "{msg}");
        }
    }

    #[test]
    fn untrusted_message_names_the_server_and_the_fix() {
        let e = UntrustedServer {
            path: "/run/keyward/admin.sock".into(),
            uid: 2031,
            pid: Some(4242),
            trusted: TrustedServers {
                euid: 0,
                agent_uid: None,
            },
        };
        let msg = e.to_string();
        for part in [
            "/run/keyward/admin.sock",
            "uid 2031 (pid 4242)",
            "nothing was sent",
            "KEYWARD_AGENT_UID=2031",
            "its directory",
        ] {
            assert!(msg.contains(part), "{part:?} in {msg}");
        }
        let in_ns = UntrustedServer { pid: Some(0), ..e };
        assert!(in_ns.to_string().contains("pid unknown"), "{in_ns}");
    }
}
