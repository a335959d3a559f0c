//! Who may serve the agent's socket: nothing is sent on a connection until
//! the kernel has said which uid serves it.
//!
//! Every connection, the first one and each one tonic makes again after the
//! agent restarts, is checked in the connector (`connect.rs`) with
//! `SO_PEERCRED` before tonic gets the stream. The server must be root, this
//! process's effective uid (a development agent run by the same user), or the
//! agent's uid: the one given to [`Client::connect_trusting`], else
//! `$KEYWARD_AGENT_UID`. So a listener that another user put at the socket's
//! path (say, in a runtime directory that user can write) receives no
//! request, and no key is read from it.
//!
//! The same check serves every channel to the agent's sockets: [`Client`]
//! on the service socket, and, through [`channel`], the `keyward` CLI's
//! admin commands and the project's tests.
//!
//! [`Client`]: crate::Client
//! [`Client::connect_trusting`]: crate::Client::connect_trusting
//! [`channel`]: crate::channel

use std::fmt;
use std::io;

use tokio::net::UnixStream;

use crate::error::Error;

/// The environment variable naming the uid keywardd runs as, when that is
/// neither root nor the user running the client.
pub const AGENT_UID_ENV: &str = "KEYWARD_AGENT_UID";

/// The uids trusted to serve the agent's sockets: root, this process's
/// effective uid, and the agent's uid when one is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trust {
    euid: u32,
    agent_uid: Option<u32>,
}

impl Trust {
    /// Root, this process's effective uid, and `agent_uid` if given, else
    /// `$KEYWARD_AGENT_UID` (an error when that is set to anything but a
    /// uid).
    pub fn new(agent_uid: Option<u32>) -> Result<Trust, Error> {
        let agent_uid = match agent_uid {
            Some(uid) => Some(uid),
            None => parse_agent_uid(std::env::var_os(AGENT_UID_ENV))?,
        };
        Ok(Trust {
            euid: nix::unistd::geteuid().as_raw(),
            agent_uid,
        })
    }

    /// Whether a server running as `uid` is trusted.
    pub fn trusts(&self, uid: u32) -> bool {
        uid == 0 || uid == self.euid || self.agent_uid == Some(uid)
    }

    /// Checks who serves `stream`, before anything is written to it. The
    /// refusal is an `io::Error` (of kind `Other`) naming the server, so that it
    /// travels through tonic's reconnections and is mapped once, by
    /// [`Error::from_socket_io`].
    pub fn check(&self, stream: &UnixStream) -> io::Result<()> {
        let peer = stream.peer_cred()?;
        if self.trusts(peer.uid()) {
            return Ok(());
        }
        Err(io::Error::other(UntrustedPeer {
            uid: peer.uid(),
            pid: peer.pid().filter(|p| *p > 0),
            euid: self.euid,
            agent_uid: self.agent_uid,
        }))
    }
}

/// `$KEYWARD_AGENT_UID`: unset or empty is none; anything but a number is
/// an error.
fn parse_agent_uid(value: Option<std::ffi::OsString>) -> Result<Option<u32>, Error> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match value.to_str().and_then(|v| v.trim().parse::<u32>().ok()) {
        Some(uid) => Ok(Some(uid)),
        None => Err(Error::InvalidAgentUid {
            value: value.to_string_lossy().into_owned(),
        }),
    }
}

/// The process serving the socket runs as a uid the client does not trust.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UntrustedPeer {
    pub(crate) uid: u32,
    pub(crate) pid: Option<i32>,
    pub(crate) euid: u32,
    pub(crate) agent_uid: Option<u32>,
}

impl fmt::Display for UntrustedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the socket is served by uid {}", self.uid)
    }
}

impl std::error::Error for UntrustedPeer {}

/// The message of [`Error::UntrustedSocket`]: who serves the socket, whom
/// the client trusts, and what to do.
pub(crate) fn untrusted_message(
    socket: &std::path::Path,
    uid: u32,
    pid: Option<i32>,
    euid: u32,
    agent_uid: Option<u32>,
) -> String {
    let pid = match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown: another pid namespace".to_string(),
    };
    let mut trusted = vec!["root".to_string()];
    if euid != 0 {
        trusted.push(format!("this user (uid {euid})"));
    }
    trusted.push(match agent_uid {
        Some(n) => format!("{AGENT_UID_ENV} ({n})"),
        None => format!("{AGENT_UID_ENV} (not set)"),
    });
    format!(
        "refusing the keyward socket {}: it is served by uid {uid} ({pid}), which is neither {}; nothing was sent to it. \
         Check that socket and its directory (whoever can write there can stand in for keywardd); \
         if keywardd really runs as uid {uid}, set {AGENT_UID_ENV}={uid}",
        socket.display(),
        neither_nor(&trusted),
    )
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
    fn root_this_user_and_the_agent_uid_are_trusted() {
        let t = Trust {
            euid: 1000,
            agent_uid: None,
        };
        assert!(t.trusts(0) && t.trusts(1000) && !t.trusts(998));
        let t = Trust {
            agent_uid: Some(998),
            ..t
        };
        assert!(t.trusts(998) && !t.trusts(1001));
    }

    #[test]
    fn agent_uid_variable() {
        let parse = |v: &str| parse_agent_uid(Some(v.into()));
        assert_eq!(parse_agent_uid(None).unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("998").unwrap(), Some(998));
        for bad in ["keyward", "-1", "99999999999"] {
            let msg = parse(bad).unwrap_err().to_string();
            assert!(msg.contains(AGENT_UID_ENV) && msg.contains(bad), "{msg}");
        }
    }

    #[test]
    fn the_refusal_says_who_and_what_to_do() {
        let msg = untrusted_message(
            std::path::Path::new("/run/keyward/keys.sock"),
            2034,
            Some(77),
            1000,
            None,
        );
        for part in [
            "/run/keyward/keys.sock",
            "uid 2034 (pid 77)",
            "this user (uid 1000)",
            "nothing was sent",
            "KEYWARD_AGENT_UID=2034",
        ] {
            assert!(msg.contains(part), "{part:?} in {msg}");
        }
    }
}
