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
//!
//! The [`PeerStream`] owns the connection, so it is also where a connection
//! ends: when its [`Connection`] is closed by the agent (an evicted watch
//! whose client never reads), and when no call has been open on it for the
//! idle timeout (the calls are counted by [`super::streams`]).

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use crate::agent::caller::{Caller, ProcessIdentity, Verify};
pub use crate::agent::connections::{Connection, ConnectionGuard, ConnectionTracker};

use super::identity::{self, cgroup, pidfd, procfs};

/// A connection's peer: the caller the agent sees, and what the transport
/// keeps about the connection.
#[derive(Debug)]
pub struct Peer {
    /// Who is calling.
    pub caller: Arc<Caller>,
    /// This connection is over the per-uid connection limit: every call on
    /// it is refused with `RESOURCE_EXHAUSTED`.
    pub over_limit: Option<String>,
    /// The connection itself: its open calls, and a way to close it.
    pub connection: Arc<Connection>,
}

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
    Ok(from_parts(
        cred.uid(),
        cred.gid(),
        pid,
        |start| match &pidfd {
            pidfd::PeerPidfd::Fd(fd) => pidfd::still_holds(fd, pid).unwrap_or(false),
            pidfd::PeerPidfd::Gone => false,
            pidfd::PeerPidfd::Unsupported => procfs::start_time(&procfs::dir(pid)).is_ok_and(|t| t == start),
        },
        socket_inode,
    ))
}

/// Builds a caller from credentials, reading `/proc` for the rest;
/// `still_pinned(start_time)` says, after the reads, whether the pid still
/// names the process that connected. Its process can be verified only when
/// it was pinned and the agent's end of the connection (`socket_inode`) is
/// known.
pub fn from_parts(
    uid: u32,
    gid: u32,
    pid: i32,
    still_pinned: impl FnOnce(u64) -> bool,
    socket_inode: Option<u64>,
) -> Caller {
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
    let verify: Verify = match (start_time, socket_inode) {
        (Some(start), Some(inode)) => Arc::new(move || identity::verify(pid, start, inode)),
        _ => unpinned(pid),
    };
    Caller::new(uid, gid, pid, groups, exe, unit, verify)
}

/// A caller the service manager vouches for (`creds.sock`): the kernel's
/// credentials and the unit it names, nothing read from `/proc`.
pub fn from_service_manager(uid: u32, gid: u32, pid: i32, unit: String) -> Caller {
    Caller::new(uid, gid, pid, Vec::new(), None, Some(unit), unpinned(pid))
}

/// The verification of a caller whose pid could not be pinned: nothing may
/// match.
fn unpinned(pid: i32) -> Verify {
    Arc::new(move || {
        ProcessIdentity::refused(format!(
            "pid {pid} could not be pinned when it connected (it exited, or is outside the agent's pid namespace)"
        ))
    })
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

/// An accepted connection with its caller attached. It ends (reads see the
/// end of the stream) once no call has been open on it for the idle
/// timeout, and fails every read and write once [`Connection::close`] was
/// called.
pub struct PeerStream {
    inner: UnixStream,
    peer: Arc<Peer>,
    idle_timeout: Option<Duration>,
    /// Always armed (see [`PeerStream::idle_expired`]).
    idle_timer: Pin<Box<Sleep>>,
    /// Reads that brought something, and their number when the idle timer
    /// last fired: a read since then counts as recent.
    reads: u64,
    reads_at_timer: u64,
    /// The waker [`Connection::close`] wakes, as last registered (kept here
    /// so that the lock is taken only when the task's waker changes).
    close_waker: Option<Waker>,
    _guard: ConnectionGuard,
}

/// When the client sent something since the idle timer last looked, it
/// looks again this much later before ending the connection: a call whose
/// headers were just read is counted only once its task runs, and must not
/// find its connection gone. Short, because the client's answers to the
/// agent's keepalive pings are reads too.
const IDLE_READ_GRACE: Duration = Duration::from_millis(200);

impl PeerStream {
    /// Wraps an accepted stream.
    pub fn new(inner: UnixStream, peer: Arc<Peer>, guard: ConnectionGuard) -> PeerStream {
        PeerStream {
            inner,
            peer,
            idle_timeout: None,
            idle_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            reads: 0,
            reads_at_timer: 0,
            close_waker: None,
            _guard: guard,
        }
    }

    /// Ends the connection once no call has been open on it for `timeout`.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> PeerStream {
        self.idle_timeout = Some(timeout);
        self.idle_timer = Box::pin(tokio::time::sleep(timeout));
        self
    }

    /// `Err` once the connection was closed by the agent.
    fn check_open(&self) -> io::Result<()> {
        if self.peer.connection.is_closing() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed by keywardd",
            ));
        }
        Ok(())
    }

    /// Whether the idle timeout has passed. The timer is always armed: at
    /// `idle_timeout` from when the connection was last seen busy, so that
    /// the end of a call costs nothing (no wake-up, no timer reset); when it
    /// fires and the connection was busy meanwhile, it is set again.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.idle_timeout else {
            return false;
        };
        if self.idle_timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let now = Instant::now();
        let mut due = match self.peer.connection.idle_since() {
            Some(since) => since + timeout,
            // A call is open: look again a whole timeout from now.
            None => now + timeout,
        };
        if due <= now && self.reads != self.reads_at_timer {
            due = now + IDLE_READ_GRACE;
        }
        self.reads_at_timer = self.reads;
        if due <= now {
            return true;
        }
        self.idle_timer.as_mut().reset(due);
        // Registers the waker for the new deadline.
        let _ = self.idle_timer.as_mut().poll(cx);
        false
    }
}

impl Connected for PeerStream {
    type ConnectInfo = Arc<Peer>;

    fn connect_info(&self) -> Arc<Peer> {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.check_open()?;
        // Whatever the client sent first: a call arriving as the timer
        // fires is read, not cut off.
        let before = buf.filled().len();
        if let ready @ Poll::Ready(_) = Pin::new(&mut self.inner).poll_read(cx, buf) {
            if buf.filled().len() > before {
                self.reads += 1;
            }
            return ready;
        }
        // Waiting for the client: be woken if the agent closes the
        // connection meanwhile (a close that came before this is seen now).
        if !self.close_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.peer.connection.wake_on_close(cx.waker());
            self.close_waker = Some(cx.waker().clone());
            self.check_open()?;
        }
        if self.idle_expired(cx) {
            tracing::debug!(
                uid = self.peer.caller.uid,
                pid = self.peer.caller.pid,
                "closing an idle connection"
            );
            // The end of the stream: the HTTP/2 server ends the connection.
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check_open()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_open()?;
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
        self.check_open()?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The peer attached to a request (always present on our listeners).
pub fn caller_of<T>(req: &tonic::Request<T>) -> Result<Arc<Peer>, tonic::Status> {
    req.extensions()
        .get::<Arc<Peer>>()
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

    #[tokio::test]
    async fn identifies_this_process_while_pinned() {
        let me = std::process::id() as i32;
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        let c = from_parts(uid, gid, me, |_| true, Some(1));
        assert_eq!(c.exe.as_deref(), std::env::current_exe().ok().as_deref());
        assert!(c.describe().contains(&format!("pid {me}")));
        // Pinned: verification runs (and finds no holder of socket inode 1).
        let why = c.process_identity().await.why_not().unwrap_or_default();
        assert!(!why.contains("could not be pinned"), "{why}");
        // A pid that changed while it was read: nothing from /proc stays.
        let c = from_parts(uid, gid, me, |_| false, None);
        assert_eq!((c.exe.clone(), c.unit.clone(), c.groups.len()), (None, None, 0));
        assert_eq!((c.uid, c.gid), (uid, gid));
        let why = c.process_identity().await.why_not().unwrap_or_default();
        assert!(why.contains("could not be pinned"), "{why}");
    }
}
