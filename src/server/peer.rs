//! Who is calling: identity from the kernel, attached to each connection.
//!
//! Invariants: every request reaching a handler carries a [`Caller`] built
//! from the connection's `SO_PEERCRED` (uid, gid, pid) and, where readable,
//! the process's supplementary groups, executable and systemd unit from
//! `/proc`. Nothing the client sends can change it. It is read once, when
//! the connection is accepted, and only while the pid is pinned: read
//! between two looks at the peer's pidfd (`SO_PEERPIDFD`) where the kernel
//! has one, else between two equal readings of the process's start time. A
//! pid that changed under the agent (the caller exited and another process
//! got its pid) leaves only what the kernel vouched for: uid and gid.
//!
//! The executable and unit read here are for messages and the audit log.
//! Policy selectors match only a verified identity
//! ([`Caller::process_identity`], see [`super::identity`]).

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

use super::identity::{self, cgroup, pidfd, procfs, ProcessIdentity};

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
    /// `/proc/<pid>/exe`, where readable (for messages and the audit: the
    /// policy matches only a verified identity).
    pub exe: Option<PathBuf>,
    /// The systemd unit of `/proc/<pid>/cgroup` by systemd's rules, where
    /// there is one (for messages and the audit, as `exe`).
    pub unit: Option<String>,
    /// The same, as the audit records it.
    pub record: Arc<CallerRecord>,
    /// This connection is over the per-uid connection limit: every call on
    /// it is refused with `RESOURCE_EXHAUSTED`.
    pub over_limit: Option<String>,
    /// The process's start time, read while its pid was pinned; `None`
    /// when it could not be (then nothing from `/proc` is used).
    start_time: Option<u64>,
    /// The inode of the agent's end of the connection (for `sock_diag`).
    socket_inode: Option<u64>,
    /// The verified executable and unit, once a grant needed them.
    identity: tokio::sync::OnceCell<Arc<ProcessIdentity>>,
}

impl Caller {
    /// Reads the peer's identity off an accepted connection.
    pub fn identify(stream: &UnixStream) -> io::Result<Caller> {
        use std::os::fd::AsRawFd;
        let cred = stream.peer_cred()?;
        let pid = cred.pid().unwrap_or(0);
        // A pidfd pins the process that connected; without one (Linux
        // before 6.5) the start time read twice does.
        let pidfd = pidfd::peer_pidfd(stream).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "no pidfd for the peer; pinning it by its start time");
            pidfd::PeerPidfd::Unsupported
        });
        let socket_inode = nix::sys::stat::fstat(stream.as_raw_fd()).ok().map(|s| s.st_ino);
        let mut caller = Caller::from_parts(cred.uid(), cred.gid(), pid, |start| match &pidfd {
            pidfd::PeerPidfd::Fd(fd) => pidfd::still_holds(fd, pid).unwrap_or(false),
            pidfd::PeerPidfd::Gone => false,
            pidfd::PeerPidfd::Unsupported => procfs::start_time(&procfs::dir(pid)).is_ok_and(|t| t == start),
        });
        caller.socket_inode = socket_inode;
        Ok(caller)
    }

    /// Builds a caller from credentials, reading `/proc` for the rest;
    /// `still_pinned(start_time)` says, after the reads, whether the pid
    /// still names the process that connected.
    pub fn from_parts(uid: u32, gid: u32, pid: i32, still_pinned: impl FnOnce(u64) -> bool) -> Caller {
        /// What `/proc` said, while the pid was pinned.
        struct Read {
            start: u64,
            groups: Vec<u32>,
            exe: Option<PathBuf>,
            unit: Option<String>,
        }
        let proc_dir = procfs::dir(pid);
        let read = || -> Option<Read> {
            let start = procfs::start_time(&proc_dir).ok()?;
            let read = Read {
                start,
                groups: procfs::status(&proc_dir).map(|s| s.groups).unwrap_or_default(),
                exe: std::fs::read_link(proc_dir.join("exe")).ok(),
                unit: std::fs::read_to_string(proc_dir.join("cgroup"))
                    .ok()
                    .and_then(|c| unit_from_cgroup(&c)),
            };
            still_pinned(start).then_some(read)
        };
        let (start_time, groups, exe, unit) = match (pid > 0).then(read).flatten() {
            Some(r) => (Some(r.start), r.groups, r.exe, r.unit),
            None => {
                if pid > 0 {
                    tracing::debug!(
                        uid,
                        pid,
                        "the peer's pid changed while it was read: only its uid and gid are used"
                    );
                }
                (None, Vec::new(), None, None)
            }
        };
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
            start_time,
            socket_inode: None,
            identity: tokio::sync::OnceCell::new(),
        }
    }

    /// A caller the service manager vouches for (`creds.sock`): the
    /// kernel's credentials and the unit it names, nothing read from
    /// `/proc`.
    pub fn from_service_manager(uid: u32, gid: u32, pid: i32, unit: String) -> Caller {
        let record = Arc::new(CallerRecord {
            uid,
            gid,
            pid,
            exe: None,
            unit: Some(unit.clone()),
        });
        Caller {
            uid,
            gid,
            pid,
            groups: Vec::new(),
            exe: None,
            unit: Some(unit),
            record,
            over_limit: None,
            start_time: None,
            socket_inode: None,
            identity: tokio::sync::OnceCell::new(),
        }
    }

    /// The caller as the kernel vouches for it: uid and groups. No
    /// executable or unit selector matches it.
    pub fn principal(&self) -> Principal<'_> {
        Principal::of_credentials(self.uid, self.gid, &self.groups)
    }

    /// The caller's executable and unit, verified (see
    /// [`super::identity`]): done once per connection, off the async
    /// workers, the first time a grant needs it.
    pub async fn process_identity(&self) -> Arc<ProcessIdentity> {
        self.identity
            .get_or_init(|| async {
                let (Some(start), Some(inode)) = (self.start_time, self.socket_inode) else {
                    return Arc::new(ProcessIdentity::refused(format!(
                        "pid {} could not be pinned when it connected (it exited, or is outside the agent's pid namespace)",
                        self.pid
                    )));
                };
                let pid = self.pid;
                // A check reads all of /proc/*/fd: at most a few at once, so
                // that callers who open connection after connection cannot
                // take the machine's CPU; the others wait their turn.
                static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
                let _turn = CHECKS.acquire().await;
                let started = std::time::Instant::now();
                let identity = tokio::task::spawn_blocking(move || identity::verify(pid, start, inode))
                    .await
                    .unwrap_or_else(|e| ProcessIdentity::refused(format!("the check of pid {pid} failed ({e})")));
                tracing::debug!(uid = self.uid, pid, took = ?started.elapsed(), refused = ?identity.why_not(), "caller's executable and unit checked");
                Arc::new(identity)
            })
            .await
            .clone()
    }

    /// The verified identity, if [`Caller::process_identity`] has run.
    pub fn checked_identity(&self) -> Option<&Arc<ProcessIdentity>> {
        self.identity.get()
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

/// The systemd unit named by a `/proc/<pid>/cgroup` file, by systemd's
/// rules (see [`cgroup::unit_of`]); a process inside a user manager is
/// shown as that manager's unit.
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    let (_, path) = procfs::parse_cgroup(text)?;
    match cgroup::unit_of(&path) {
        Ok(unit) => unit.map(|u| u.name),
        Err(_) => path
            .split('/')
            .find(|c| c.starts_with("user@") && c.ends_with(".service"))
            .map(str::to_owned),
    }
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
            unit_from_cgroup("0::/user.slice/user-2002.slice/user@2002.service/app.slice/billing-worker.service\n")
                .as_deref(),
            Some("user@2002.service")
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
    fn identifies_this_process_while_pinned() {
        let me = std::process::id() as i32;
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        let c = Caller::from_parts(uid, gid, me, |_| true);
        assert_eq!(c.exe.as_deref(), std::env::current_exe().ok().as_deref());
        assert!(c.describe().contains(&format!("pid {me}")));
        assert!(c.start_time.is_some());
        // A pid that changed while it was read: nothing from /proc stays.
        let c = Caller::from_parts(uid, gid, me, |_| false);
        assert_eq!((c.exe, c.unit, c.groups.len(), c.start_time), (None, None, 0, None));
        assert_eq!((c.uid, c.gid), (uid, gid));
    }
}
