//! Who is calling: identity from the kernel, attached to each connection.
//!
//! Invariant: every request reaching a handler carries a [`Caller`] built
//! from the connection's `SO_PEERCRED` (uid, gid, pid) and, where readable,
//! the process's executable, systemd unit and supplementary groups from
//! `/proc`. Nothing the client sends can change it. It is read once, when
//! the connection is accepted.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use crate::audit::CallerRecord;
use crate::policy::Principal;

/// The identity of the process at the other end of a connection.
#[derive(Debug)]
pub struct Caller {
    /// Effective uid of the peer when it connected.
    pub uid: u32,
    /// Effective gid of the peer when it connected.
    pub gid: u32,
    /// Its pid.
    pub pid: i32,
    /// Supplementary groups, from `/proc/<pid>/status` (empty if unreadable).
    pub groups: Vec<u32>,
    /// `/proc/<pid>/exe`, where readable.
    pub exe: Option<PathBuf>,
    /// The systemd unit from `/proc/<pid>/cgroup`, where there is one.
    pub unit: Option<String>,
    /// The same, as the audit records it.
    pub record: Arc<CallerRecord>,
    /// This connection is over the per-uid connection limit: every call on
    /// it is refused with `RESOURCE_EXHAUSTED`.
    pub over_limit: Option<String>,
}

impl Caller {
    /// Reads the peer's identity off an accepted connection.
    pub fn identify(stream: &UnixStream) -> io::Result<Caller> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid().unwrap_or(0);
        Ok(Caller::from_parts(cred.uid(), cred.gid(), pid))
    }

    /// Builds a caller from credentials, reading `/proc` for the rest.
    pub fn from_parts(uid: u32, gid: u32, pid: i32) -> Caller {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let exe = (pid > 0)
            .then(|| std::fs::read_link(proc_dir.join("exe")).ok())
            .flatten();
        let unit = (pid > 0)
            .then(|| std::fs::read_to_string(proc_dir.join("cgroup")).ok())
            .flatten()
            .and_then(|c| unit_from_cgroup(&c));
        let groups = (pid > 0)
            .then(|| std::fs::read_to_string(proc_dir.join("status")).ok())
            .flatten()
            .map(|s| groups_from_status(&s))
            .unwrap_or_default();
        let record = Arc::new(CallerRecord {
            uid,
            gid,
            pid,
            exe: exe.as_ref().map(|p| p.display().to_string()),
            unit: unit.clone(),
        });
        Caller {
            uid,
            gid,
            pid,
            groups,
            exe,
            unit,
            record,
            over_limit: None,
        }
    }

    /// The view the policy matches against.
    pub fn principal(&self) -> Principal<'_> {
        Principal {
            uid: self.uid,
            gid: self.gid,
            groups: &self.groups,
            exe: self.exe.as_deref(),
            unit: self.unit.as_deref(),
        }
    }

    /// "uid 1001 (pid 42, /usr/bin/worker, billing.service)", for messages.
    pub fn describe(&self) -> String {
        let mut s = format!("uid {} (pid {}", self.uid, self.pid);
        if let Some(exe) = &self.exe {
            s.push_str(&format!(", {}", exe.display()));
        }
        if let Some(unit) = &self.unit {
            s.push_str(&format!(", {unit}"));
        }
        s.push(')');
        s
    }
}

/// The systemd unit named by a `/proc/<pid>/cgroup` file: the last path
/// component that is a service or scope (cgroup v2 `0::/…`, or v1's
/// `name=systemd` hierarchy).
pub fn unit_from_cgroup(cgroup: &str) -> Option<String> {
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::")).or_else(|| {
        cgroup
            .lines()
            .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
    })?;
    path.rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

/// Supplementary gids from a `/proc/<pid>/status` file.
pub fn groups_from_status(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// Counts open connections per uid and in total.
#[derive(Debug, Default)]
pub struct ConnectionTracker {
    per_uid: Mutex<HashMap<u32, usize>>,
}

impl ConnectionTracker {
    /// Open connections in total.
    pub fn total(&self) -> usize {
        self.per_uid.lock().expect("tracker lock").values().sum()
    }

    /// Registers a connection from `uid`; returns its guard and how many
    /// connections that uid has now (including this one).
    pub fn register(self: &Arc<Self>, uid: u32) -> (ConnectionGuard, usize, usize) {
        let mut map = self.per_uid.lock().expect("tracker lock");
        let n = map.entry(uid).or_insert(0);
        *n += 1;
        let count = *n;
        let total = map.values().sum();
        (
            ConnectionGuard {
                tracker: self.clone(),
                uid,
            },
            count,
            total,
        )
    }
}

/// Decrements the tracker when the connection closes.
#[derive(Debug)]
pub struct ConnectionGuard {
    tracker: Arc<ConnectionTracker>,
    uid: u32,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut map = self.tracker.per_uid.lock().expect("tracker lock");
        if let Some(n) = map.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

/// An accepted connection with its caller attached.
pub struct PeerStream {
    inner: UnixStream,
    caller: Arc<Caller>,
    _guard: ConnectionGuard,
}

impl PeerStream {
    /// Wraps an accepted stream.
    pub fn new(inner: UnixStream, caller: Arc<Caller>, guard: ConnectionGuard) -> PeerStream {
        PeerStream {
            inner,
            caller,
            _guard: guard,
        }
    }
}

impl Connected for PeerStream {
    type ConnectInfo = Arc<Caller>;

    fn connect_info(&self) -> Arc<Caller> {
        self.caller.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The caller attached to a request (always present on our listeners).
pub fn caller_of<T>(req: &tonic::Request<T>) -> Result<Arc<Caller>, tonic::Status> {
    req.extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| tonic::Status::internal("request without peer credentials; this is a keyward bug"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_from_cgroup_v2_and_v1() {
        assert_eq!(
            unit_from_cgroup("0::/system.slice/billing-worker.service\n").as_deref(),
            Some("billing-worker.service")
        );
        assert_eq!(
            unit_from_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n").as_deref(),
            Some("session-2.scope")
        );
        assert_eq!(
            unit_from_cgroup("12:cpu:/\n1:name=systemd:/system.slice/crm.service\n").as_deref(),
            Some("crm.service")
        );
        assert_eq!(unit_from_cgroup("0::/\n"), None);
        assert_eq!(unit_from_cgroup(""), None);
    }

    #[test]
    fn groups_from_status_parses_the_groups_line() {
        let status = "Name:\tx\nUid:\t0\t0\t0\t0\nGroups:\t4 24 27 1001 \nVmPeak:\t1 kB\n";
        assert_eq!(groups_from_status(status), vec![4, 24, 27, 1001]);
        assert!(groups_from_status("Groups:\t\n").is_empty());
    }

    #[test]
    fn tracker_counts_and_releases() {
        let t = Arc::new(ConnectionTracker::default());
        let (a, n1, _) = t.register(5);
        let (b, n2, total) = t.register(5);
        assert_eq!((n1, n2, total), (1, 2, 2));
        drop(a);
        assert_eq!(t.total(), 1);
        drop(b);
        assert_eq!(t.total(), 0);
    }

    #[test]
    fn identifies_this_process() {
        let me = std::process::id() as i32;
        let c = Caller::from_parts(nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw(), me);
        assert_eq!(c.exe.as_deref(), std::env::current_exe().ok().as_deref());
        assert!(c.describe().contains(&format!("pid {me}")));
    }
}
