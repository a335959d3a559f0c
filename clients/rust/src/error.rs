//! [`Error`]: every way a call to the agent fails, mapped once from the
//! socket's `io::Error` or the agent's gRPC status.
//!
//! Messages say what was wrong and what to do. They never hold secret bytes:
//! they are built from paths, key names and the agent's own messages, which
//! never contain secrets either.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::trust::{untrusted_message, UntrustedPeer};

/// Why a call to the keyward agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing answers on the socket: the agent is not running, or the
    /// socket path is wrong.
    #[error(
        "no keyward agent answers at {}: is keywardd running? Start it (for development: `keywardd --dev DIR`); if it listens elsewhere, set KEYWARD_SOCKET to its keys.sock",
        socket.display()
    )]
    AgentUnavailable {
        /// The socket that was tried.
        socket: PathBuf,
    },
    /// This process may not use the socket (its mode and group keep it
    /// out), or the agent's policy does not let it read the key. Holds the
    /// agent's message, which names the caller and the key.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The key does not exist (or was deleted).
    #[error("not found: {0}")]
    NotFound(String),
    /// The key name is malformed, or its environment is not configured.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// [`Client::handle`](crate::Client::handle) got no state of the key in
    /// time.
    #[error("no state of {key} arrived within {waited:?}: is keywardd running and answering?")]
    Timeout {
        /// The key.
        key: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The process serving the socket runs as a uid this client does not
    /// trust: not root, not this process's user, not the agent's uid
    /// ([`Client::connect_trusting`](crate::Client::connect_trusting) or
    /// `$KEYWARD_AGENT_UID`). Nothing was sent to it.
    #[error("{}", untrusted_message(socket, *uid, *pid, *euid, *agent_uid))]
    UntrustedSocket {
        /// The socket.
        socket: PathBuf,
        /// The uid of the process that serves it.
        uid: u32,
        /// Its pid, when the kernel can name it in this pid namespace.
        pid: Option<i32>,
        /// This process's effective uid.
        euid: u32,
        /// The agent's uid the client trusted, if any.
        agent_uid: Option<u32>,
    },
    /// `$KEYWARD_AGENT_UID` is set to something that is not a uid.
    #[error("KEYWARD_AGENT_UID={value:?} is not a uid: set it to the number keywardd runs as (e.g. KEYWARD_AGENT_UID=998), or unset it")]
    InvalidAgentUid {
        /// The variable's value.
        value: String,
    },
    /// The socket could not be opened for another reason.
    #[error("cannot connect to the keyward agent at {}: {source}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Any other answer of the agent (e.g. `UNAVAILABLE` when it cannot
    /// write its audit log, `RESOURCE_EXHAUSTED` over a limit).
    #[error("keyward agent: {}: {}", .0.code(), .0.message())]
    Rpc(tonic::Status),
}

impl Error {
    /// The error for a failure to open `socket`, as
    /// [`checked_channel`](crate::checked_channel) returns it (the refusal
    /// of an untrusted server included).
    pub fn from_socket_io(socket: &Path, e: io::Error) -> Error {
        from_io(socket, e)
    }
}

/// Maps a failure to open `socket` (or the refusal of its server, see
/// `trust.rs`).
pub(crate) fn from_io(socket: &Path, e: io::Error) -> Error {
    if let Some(peer) = untrusted_peer(&e) {
        return untrusted(socket, peer);
    }
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Error::AgentUnavailable {
            socket: socket.to_path_buf(),
        },
        io::ErrorKind::PermissionDenied => Error::PermissionDenied(format!(
            "this user may not connect to {}: add it to the socket's group (service_group, usually keyward) or ask for the socket's mode to be widened",
            socket.display()
        )),
        _ => Error::Connect {
            socket: socket.to_path_buf(),
            source: e,
        },
    }
}

/// Maps a gRPC status. A status that tonic made from a transport failure
/// carries its cause as `source` (the agent's own statuses never do): a
/// lost or refused connection is [`Error::AgentUnavailable`].
pub(crate) fn from_status(socket: &Path, s: tonic::Status) -> Error {
    use tonic::Code;
    match s.code() {
        Code::NotFound => Error::NotFound(s.message().to_string()),
        Code::PermissionDenied => Error::PermissionDenied(s.message().to_string()),
        Code::InvalidArgument => Error::InvalidKey(s.message().to_string()),
        Code::Unavailable | Code::Unknown | Code::Cancelled if std::error::Error::source(&s).is_some() => {
            let cause = io_cause(&s);
            if let Some(peer) = cause.and_then(untrusted_peer) {
                return untrusted(socket, peer);
            }
            match cause.map(io::Error::kind) {
                Some(io::ErrorKind::PermissionDenied) => from_io(socket, io::ErrorKind::PermissionDenied.into()),
                _ => Error::AgentUnavailable {
                    socket: socket.to_path_buf(),
                },
            }
        }
        _ => Error::Rpc(s),
    }
}

fn untrusted(socket: &Path, peer: &UntrustedPeer) -> Error {
    Error::UntrustedSocket {
        socket: socket.to_path_buf(),
        uid: peer.uid,
        pid: peer.pid,
        euid: peer.euid,
        agent_uid: peer.agent_uid,
    }
}

/// The refusal of an untrusted server, when `e` is one.
fn untrusted_peer(e: &io::Error) -> Option<&UntrustedPeer> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<UntrustedPeer>())
}

fn io_cause(s: &tonic::Status) -> Option<&io::Error> {
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_statuses_keep_their_message() {
        let p = Path::new("/s");
        let m = |code| from_status(p, tonic::Status::new(code, "uid 7 may not read prod/x"));
        assert!(
            matches!(m(tonic::Code::PermissionDenied), Error::PermissionDenied(s) if s == "uid 7 may not read prod/x")
        );
        assert!(matches!(m(tonic::Code::NotFound), Error::NotFound(_)));
        assert!(matches!(m(tonic::Code::InvalidArgument), Error::InvalidKey(_)));
        // The agent's own UNAVAILABLE (audit log) is not "agent not running".
        assert!(matches!(m(tonic::Code::Unavailable), Error::Rpc(_)));
    }

    #[test]
    fn socket_errors() {
        let p = Path::new("/run/keyward/keys.sock");
        let e = from_io(p, io::ErrorKind::NotFound.into());
        let msg = e.to_string();
        assert!(
            msg.contains("is keywardd running?") && msg.contains("KEYWARD_SOCKET"),
            "{msg}"
        );
        assert!(matches!(
            from_io(p, io::ErrorKind::PermissionDenied.into()),
            Error::PermissionDenied(_)
        ));
    }
}
