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

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::{Instant, Sleep};
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
    /// The connection itself: its open calls, and a way to close it.
    pub connection: Arc<Connection>,
    /// The last key state whose versions were noted as served to this
    /// caller ([`Caller::first_served`]).
    last_served: Mutex<std::sync::Weak<crate::keyset::KeySetState>>,
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
            connection: Arc::default(),
            last_served: Mutex::default(),
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
            connection: Arc::default(),
            last_served: Mutex::default(),
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

    /// Whether `state` is served to this connection for the first time:
    /// false when it is the state last served on it (the same allocation,
    /// held alive by the `Weak`, so never another state at its address).
    /// A client fetching the same key again skips the served-version
    /// bookkeeping with one uncontended lock.
    pub fn first_served(&self, state: &Arc<crate::keyset::KeySetState>) -> bool {
        let mut last = self.last_served.lock().unwrap_or_else(PoisonError::into_inner);
        if std::ptr::eq(last.as_ptr(), Arc::as_ptr(state)) {
            return false;
        }
        *last = Arc::downgrade(state);
        true
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
    /// Connections and what they hold together, per uid.
    per_uid: Mutex<HashMap<u32, (usize, Arc<UidUsage>)>>,
}

impl ConnectionTracker {
    /// Open connections in total.
    pub fn total(&self) -> usize {
        self.per_uid
            .lock()
            .expect("tracker lock")
            .values()
            .map(|(n, _)| n)
            .sum()
    }

    /// Registers a connection from `uid`; returns its guard and how many
    /// connections that uid has now (including this one).
    pub fn register(self: &Arc<Self>, uid: u32) -> (ConnectionGuard, usize, usize) {
        let mut map = self.per_uid.lock().expect("tracker lock");
        let (n, usage) = map.entry(uid).or_insert_with(|| (0, Arc::default()));
        *n += 1;
        let count = *n;
        let usage = usage.clone();
        let total = map.values().map(|(n, _)| n).sum();
        (
            ConnectionGuard {
                tracker: self.clone(),
                uid,
                usage,
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
    usage: Arc<UidUsage>,
}

impl ConnectionGuard {
    /// What all connections of this uid hold together.
    pub fn usage(&self) -> Arc<UidUsage> {
        self.usage.clone()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut map = self.tracker.per_uid.lock().expect("tracker lock");
        if let Some((n, _)) = map.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

/// What the connections of one uid hold together: open calls, and bytes
/// of requests being read (see [`super::streams`]).
#[derive(Debug, Default)]
pub struct UidUsage {
    calls: AtomicUsize,
    request_bytes: AtomicUsize,
}

impl UidUsage {
    /// Open calls on all the uid's connections.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Acquire)
    }

    /// Adds `n` bytes of requests being read; returns the uid's total.
    pub fn add_request_bytes(&self, n: usize) -> usize {
        self.request_bytes.fetch_add(n, Ordering::AcqRel) + n
    }

    /// Removes bytes added by [`UidUsage::add_request_bytes`].
    pub fn remove_request_bytes(&self, n: usize) {
        self.request_bytes.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One connection as the agent's other parts see it: how many calls are
/// open on it (and on all its uid's connections), since when none is, and a
/// way to close it.
#[derive(Debug)]
pub struct Connection {
    state: Mutex<ConnectionState>,
    /// [`Connection::close`] was called: read on every read and write,
    /// without the lock.
    closing: std::sync::atomic::AtomicBool,
    uid: Arc<UidUsage>,
}

#[derive(Debug)]
struct ConnectionState {
    open_calls: usize,
    /// When the last call ended (or the connection was accepted); `None`
    /// while a call is open.
    idle_since: Option<Instant>,
    /// The task serving the connection, to wake when it is closed.
    waker: Option<Waker>,
}

impl Default for Connection {
    /// A connection counted on its own (no other of its uid is known).
    fn default() -> Connection {
        Connection::of_uid(Arc::default())
    }
}

impl Connection {
    /// A connection whose calls also count in `uid`, what all connections
    /// of its uid hold ([`ConnectionGuard::usage`]).
    pub fn of_uid(uid: Arc<UidUsage>) -> Connection {
        Connection {
            state: Mutex::new(ConnectionState {
                open_calls: 0,
                idle_since: Some(Instant::now()),
                waker: None,
            }),
            closing: Default::default(),
            uid,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ConnectionState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What all connections of this connection's uid hold.
    pub fn uid_usage(&self) -> &UidUsage {
        &self.uid
    }

    /// A call was opened on the connection: it counts until the guard
    /// drops, unless the uid already has `max_per_uid` calls open (then
    /// `Err` with how many it has).
    pub fn call_opened(self: &Arc<Self>, max_per_uid: usize) -> Result<CallGuard, usize> {
        let open = self.uid.calls.fetch_add(1, Ordering::AcqRel);
        if open >= max_per_uid {
            self.uid.calls.fetch_sub(1, Ordering::AcqRel);
            return Err(open);
        }
        let mut s = self.state();
        s.open_calls += 1;
        s.idle_since = None;
        Ok(CallGuard(self.clone()))
    }

    /// Calls open now.
    pub fn open_calls(&self) -> usize {
        self.state().open_calls
    }

    /// Closes the connection with every call on it, as soon as the task
    /// serving it runs.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let waker = self.state().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether [`Connection::close`] was called.
    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Registers `waker` to be woken when the connection is closed.
    fn wake_on_close(&self, waker: &Waker) {
        let mut s = self.state();
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.waker = Some(waker.clone());
        }
    }

    /// Since when no call is open (`None`: one is).
    fn idle_since(&self) -> Option<Instant> {
        self.state().idle_since
    }
}

/// Counts one open call of a [`Connection`] (see [`Connection::call_opened`]).
#[derive(Debug)]
pub struct CallGuard(Arc<Connection>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.uid.calls.fetch_sub(1, Ordering::AcqRel);
        let mut s = self.0.state();
        s.open_calls -= 1;
        if s.open_calls == 0 {
            // No wake-up: the serving task's idle timer is always armed and
            // looks at this when it fires (see PeerStream::idle_expired).
            s.idle_since = Some(Instant::now());
        }
    }
}

/// An accepted connection with its caller attached. It ends (reads see the
/// end of the stream) once no call has been open on it for the idle
/// timeout, and fails every read and write once [`Connection::close`] was
/// called.
pub struct PeerStream {
    inner: UnixStream,
    caller: Arc<Caller>,
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
    pub fn new(inner: UnixStream, caller: Arc<Caller>, guard: ConnectionGuard) -> PeerStream {
        PeerStream {
            inner,
            caller,
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
        if self.caller.connection.is_closing() {
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
        let mut due = match self.caller.connection.idle_since() {
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
    type ConnectInfo = Arc<Caller>;

    fn connect_info(&self) -> Arc<Caller> {
        self.caller.clone()
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
            self.caller.connection.wake_on_close(cx.waker());
            self.close_waker = Some(cx.waker().clone());
            self.check_open()?;
        }
        if self.idle_expired(cx) {
            tracing::debug!(
                uid = self.caller.uid,
                pid = self.caller.pid,
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
