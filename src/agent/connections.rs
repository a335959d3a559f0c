//! Open connections and calls, counted per uid and in total: what the
//! connection and stream limits (`[limits]`) are checked against, and what
//! status and metrics report.
//!
//! A [`Connection`] is one connection as the agent's parts see it: how many
//! calls are open on it (and on all its uid's connections), since when none
//! is, and a way to close it (an evicted watch whose client never reads).
//! The transport (`crate::server::peer`) ends the connection when it is
//! closed or idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;

use tokio::time::Instant;

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
/// of requests being read (counted by the transport).
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
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Registers `waker` to be woken when the connection is closed.
    pub fn wake_on_close(&self, waker: &Waker) {
        let mut s = self.state();
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.waker = Some(waker.clone());
        }
    }

    /// Since when no call is open (`None`: one is).
    pub fn idle_since(&self) -> Option<Instant> {
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
