//! Per-key latest-value channels for `WatchKeys`, and the registry of who
//! is subscribed to which key, what each subscriber has taken, and who was
//! evicted for taking nothing.
//!
//! Every change to a key (put, delete, each rotation step, a hot reload) is
//! committed to the store first and then handed to [`Watchers::publish`].
//! A `WatchKeys` stream ([`crate::server::watch_stream`]) holds a
//! [`Subscription`] and turns what it sees into `KeyEvent`s.
//!
//! # Invariants
//!
//! - **Publishing never waits.** Each key with subscribers has one
//!   `tokio::sync::watch` channel; [`Watchers::publish`] replaces its value,
//!   notes the time on each subscriber that had taken everything so far, and
//!   wakes them, and that is all. A slow or stuck subscriber holds no buffer
//!   and no lock: it may skip intermediate states, but whenever it looks it
//!   sees the latest one.
//! - **Subscribe, then read.** A subscriber joins the key's channel (which
//!   marks the channel's current value as seen) *before* it reads the key's
//!   initial state from the store. Publishers commit before they publish, so
//!   a change committed after that read is always published to it, and one
//!   committed before is already in what it read; what the channel shows
//!   next is therefore newer than the initial state or the same state, and
//!   [`same_state`] lets the stream skip the latter. Because of this, the
//!   channel's own value never has to be right for a new subscriber, and a
//!   key with no subscribers needs no channel: channels are created on the
//!   first subscribe and dropped with the last subscriber, so publishing to
//!   a key nobody watches costs one map lookup.
//! - **The registry is exactly the live subscriptions, capped.** A
//!   [`Subscription`] is registered when it is created and removed when it
//!   is dropped (the client went away, the stream ended, or the agent is
//!   stopping). [`Watchers::subscribe`] refuses one more than
//!   [`WatchCaps::per_uid`] for the uid, or [`WatchCaps::total`] in all, so
//!   what subscriptions cost is bounded per uid and in all. An evicted
//!   subscription still counts until it is dropped: it still holds its
//!   stream.
//! - **"Taken" means handed to gRPC.** A subscription's delivered generation
//!   for a key, and the publish it has taken up to, only move by
//!   [`Subscription::taken`], which the stream calls at the moment tonic
//!   pulls an event from it (or when it skips a publish that changed
//!   nothing). Rotation waits on the delivered generation before promoting a
//!   staged key.
//! - **A subscriber that takes nothing cannot hold up a rotation.** A
//!   subscriber is *pending* on a key from the first publish it has not
//!   taken, and again from each take that still leaves one untaken.
//!   [`Watchers::evict_stalled`] removes every subscription pending on a
//!   key for longer than that key's timeout from every key's subscriber list
//!   (so rotations stop waiting for it), tells its stream why
//!   ([`Subscription::poll_evicted`]), keeps the eviction in a short list per
//!   key ([`Watchers::recent_evictions`]) and returns it to be audited. An
//!   evicted subscription whose stream is still open a timeout later has its
//!   connection closed ([`Watchers::overdue_connections`]): a stream whose
//!   client never reads is never polled again, and the connection is the
//!   only thing that can free it.
//! - **Closing ends every stream.** [`Watchers::close`] (at shutdown) drops
//!   every channel, so every subscription's [`Subscription::changed`]
//!   returns `None`, and later subscriptions start closed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt, StreamMap};

use crate::audit::CallerRecord;
use crate::keyset::KeySetState;
use crate::secret::KeyRef;

mod types;
pub use types::{
    same_state, ClientKind, CloseConnection, Eviction, Published, Reason, SubscriberInfo, WatchCaps, WatchRefused,
};

/// How many evictions [`Watchers::recent_evictions`] keeps per key.
pub const RECENT_EVICTIONS: usize = 16;

/// The subscriber registry and the per-key channels. One per agent.
#[derive(Default)]
pub struct Watchers {
    registry: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    /// Keys with at least one subscriber.
    keys: HashMap<KeyRef, KeyChannel>,
    /// Live subscriptions (evicted ones too, until they are dropped).
    subs: HashMap<u64, Sub>,
    /// Live subscriptions per uid.
    per_uid: HashMap<u32, usize>,
    /// The last [`RECENT_EVICTIONS`] evictions per key, oldest first.
    recent: HashMap<KeyRef, VecDeque<Eviction>>,
    /// Id of the next subscription.
    next_id: u64,
    /// [`Watchers::close`] was called.
    closed: bool,
}

struct KeyChannel {
    tx: watch::Sender<Published>,
    /// Publishes so far.
    seq: u64,
    /// The generation of the last published state (`None`: deleted, or
    /// nothing published yet).
    latest: Option<u64>,
    /// By subscription id, so listings come out in subscription order.
    entries: BTreeMap<u64, Entry>,
}

/// One subscription's registration for one key.
struct Entry {
    who: Arc<CallerRecord>,
    kind: ClientKind,
    /// The last generation handed to gRPC.
    delivered: u64,
    /// The channel's publishes taken so far (handed over, or skipped as
    /// unchanged).
    taken: u64,
    /// Since when a publish has been waiting for it (`None`: it has taken
    /// every publish).
    pending_since: Option<Instant>,
}

/// What the registry keeps of one subscription.
struct Sub {
    uid: u32,
    keys: Arc<[KeyRef]>,
    /// Tells the stream it was evicted (taken at eviction).
    evicted: Option<oneshot::Sender<Eviction>>,
    /// Closes its connection.
    close: Option<CloseConnection>,
    /// Evicted: when to close its connection if it is still open then.
    close_at: Option<Instant>,
}

impl Watchers {
    /// Publishes a key's new state. Never blocks on subscribers and never
    /// waits; a key nobody watches is a no-op.
    pub fn publish(&self, key: &KeyRef, state: Option<Arc<KeySetState>>, reason: Reason) {
        let now = Instant::now();
        let mut reg = self.lock();
        if let Some(ch) = reg.keys.get_mut(key) {
            ch.seq += 1;
            ch.latest = state.as_ref().map(|s| s.generation);
            for entry in ch.entries.values_mut() {
                entry.pending_since.get_or_insert(now);
            }
            ch.tx.send_replace(Published {
                state,
                reason,
                seq: ch.seq,
            });
        }
    }

    /// Subscribes `who` to changes of `keys` (which must be distinct) from
    /// now on, unless that would go over `caps`. Read the keys' current
    /// states only *after* this returns (see the module docs). `close`
    /// closes the subscriber's connection, for when it is evicted and never
    /// reads again.
    pub fn subscribe(
        &self,
        keys: &[KeyRef],
        who: Arc<CallerRecord>,
        kind: ClientKind,
        caps: WatchCaps,
        close: Option<CloseConnection>,
    ) -> Result<Subscription, WatchRefused> {
        debug_assert!(
            keys.iter().enumerate().all(|(i, k)| !keys[..i].contains(k)),
            "duplicate keys in one subscription"
        );
        let mut reg = self.lock();
        let of_uid = reg.per_uid.get(&who.uid).copied().unwrap_or(0);
        if of_uid >= caps.per_uid {
            return Err(WatchRefused::PerUid {
                uid: who.uid,
                open: of_uid,
                limit: caps.per_uid,
            });
        }
        if reg.subs.len() >= caps.total {
            return Err(WatchRefused::Total {
                open: reg.subs.len(),
                limit: caps.total,
            });
        }
        let id = reg.next_id;
        reg.next_id += 1;
        *reg.per_uid.entry(who.uid).or_insert(0) += 1;
        let keys: Arc<[KeyRef]> = keys.into();
        let (evicted_tx, evicted_rx) = oneshot::channel();
        reg.subs.insert(
            id,
            Sub {
                uid: who.uid,
                keys: keys.clone(),
                evicted: Some(evicted_tx),
                close,
                close_at: None,
            },
        );
        let mut changes = StreamMap::with_capacity(keys.len());
        let mut initial_seq = Vec::with_capacity(keys.len());
        let closed = reg.closed;
        for (index, key) in keys.iter().enumerate() {
            if closed {
                initial_seq.push(0);
                continue;
            }
            let ch = reg.keys.entry(key.clone()).or_insert_with(|| KeyChannel {
                // Never read: every subscriber reads the store instead.
                tx: watch::Sender::new(Published {
                    state: None,
                    reason: Reason::Initial,
                    seq: 0,
                }),
                seq: 0,
                latest: None,
                entries: BTreeMap::new(),
            });
            ch.entries.insert(
                id,
                Entry {
                    who: who.clone(),
                    kind,
                    delivered: 0,
                    taken: ch.seq,
                    pending_since: None,
                },
            );
            initial_seq.push(ch.seq);
            changes.insert(index, WatchStream::from_changes(ch.tx.subscribe()));
        }
        Ok(Subscription {
            registry: self.registry.clone(),
            id,
            keys,
            initial_seq,
            changes,
            evicted: Some(evicted_rx),
        })
    }

    /// Live subscribers of `key` and what each was last sent, in the order
    /// they subscribed. Evicted ones are not listed.
    pub fn subscribers(&self, key: &KeyRef) -> Vec<SubscriberInfo> {
        let reg = self.lock();
        let Some(ch) = reg.keys.get(key) else {
            return Vec::new();
        };
        ch.entries
            .values()
            .map(|e| SubscriberInfo {
                uid: e.who.uid,
                pid: e.who.pid,
                exe: e.who.exe.clone(),
                unit: e.who.unit.clone(),
                delivered_generation: e.delivered,
                kind: e.kind,
            })
            .collect()
    }

    /// Number of live subscriptions (all keys; a subscription to several
    /// keys counts once; evicted ones count until their stream ends).
    pub fn count(&self) -> usize {
        self.lock().subs.len()
    }

    /// Live subscriptions of `uid`.
    pub fn count_for_uid(&self, uid: u32) -> usize {
        self.lock().per_uid.get(&uid).copied().unwrap_or(0)
    }

    /// Evicts every subscription that has been pending on a key for at
    /// least that key's timeout (`timeout_of`): it leaves every key's
    /// subscriber list, its stream is told, and its connection is due to be
    /// closed one timeout later unless the stream ends before. Returns one
    /// [`Eviction`] per subscription and key it was pending on, to audit.
    pub fn evict_stalled(&self, timeout_of: impl Fn(&KeyRef) -> Duration) -> Vec<Eviction> {
        let now = Instant::now();
        let at = SystemTime::now();
        let mut reg = self.lock();
        let mut found: Vec<(u64, Eviction)> = Vec::new();
        for (key, ch) in &reg.keys {
            let mut timeout = None;
            for (id, entry) in &ch.entries {
                let Some(since) = entry.pending_since else {
                    continue;
                };
                let timeout = *timeout.get_or_insert_with(|| timeout_of(key));
                let waited = now.saturating_duration_since(since);
                if waited >= timeout {
                    found.push((
                        *id,
                        Eviction {
                            key: key.clone(),
                            who: entry.who.clone(),
                            delivered_generation: entry.delivered,
                            waiting_generation: ch.latest,
                            waited,
                            timeout,
                            at,
                        },
                    ));
                }
            }
        }
        for (id, eviction) in &found {
            let reg = &mut *reg;
            let Some(sub) = reg.subs.get_mut(id) else {
                continue;
            };
            if let Some(tell) = sub.evicted.take() {
                // The stream may be gone already; then Drop cleans up.
                let _ = tell.send(eviction.clone());
                for key in sub.keys.iter() {
                    if let Some(ch) = reg.keys.get_mut(key) {
                        ch.entries.remove(id);
                        if ch.entries.is_empty() {
                            reg.keys.remove(key);
                        }
                    }
                }
            }
            let close_at = now + eviction.timeout;
            sub.close_at = Some(sub.close_at.map_or(close_at, |c| c.max(close_at)));
            let recent = reg.recent.entry(eviction.key.clone()).or_default();
            if recent.len() == RECENT_EVICTIONS {
                recent.pop_front();
            }
            recent.push_back(eviction.clone());
        }
        found.into_iter().map(|(_, e)| e).collect()
    }

    /// The connections of evicted subscriptions whose stream is still open
    /// past their time (see [`Watchers::evict_stalled`]), each returned once.
    pub fn overdue_connections(&self) -> Vec<CloseConnection> {
        let now = Instant::now();
        let mut reg = self.lock();
        let mut due = Vec::new();
        for sub in reg.subs.values_mut() {
            if sub.close_at.is_some_and(|at| at <= now) {
                sub.close_at = None;
                due.extend(sub.close.clone());
            }
        }
        due
    }

    /// The last evictions from `key`, newest first.
    pub fn recent_evictions(&self, key: &KeyRef) -> Vec<Eviction> {
        let reg = self.lock();
        reg.recent
            .get(key)
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Ends every subscription (their [`Subscription::changed`] returns
    /// `None`) and makes later ones start ended. Called at shutdown, so that
    /// long-lived streams do not hold up the drain.
    pub fn close(&self) {
        let mut reg = self.lock();
        reg.closed = true;
        // Dropping the senders closes every receiver.
        reg.keys.clear();
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }
}

/// The registry's lock. Nothing panics while holding it, but a poisoned
/// registry is still consistent between statements.
fn lock(m: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One live subscription to one or more keys. Dropping it unregisters it.
pub struct Subscription {
    registry: Arc<Mutex<Registry>>,
    id: u64,
    keys: Arc<[KeyRef]>,
    /// Per key: the channel's publishes when it subscribed (what its
    /// initial state stands for).
    initial_seq: Vec<u64>,
    /// Changes of each key's channel, by index into `keys`.
    changes: StreamMap<usize, WatchStream<Published>>,
    /// Told once if it is evicted; `None` once that can no longer happen.
    evicted: Option<oneshot::Receiver<Eviction>>,
}

impl Subscription {
    /// The keys, in the order given to [`Watchers::subscribe`].
    pub fn keys(&self) -> &[KeyRef] {
        &self.keys
    }

    /// The publish of key `index` its initial state stands for: hand it to
    /// [`Subscription::taken`] with the initial event.
    pub fn initial_seq(&self, index: usize) -> u64 {
        self.initial_seq[index]
    }

    /// Waits until one of the keys was published, and returns its index and
    /// its *latest* published state (intermediate ones are skipped). `None`
    /// once the watchers are closed. Cancel-safe.
    pub async fn changed(&mut self) -> Option<(usize, Published)> {
        self.changes.next().await
    }

    /// [`Subscription::changed`], for hand-written streams: registers the
    /// task's waker when nothing changed yet.
    pub fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, Published)>> {
        std::pin::Pin::new(&mut self.changes).poll_next(cx)
    }

    /// Ready once this subscription was evicted (see
    /// [`Watchers::evict_stalled`]), with why.
    pub fn poll_evicted(&mut self, cx: &mut Context<'_>) -> Poll<Eviction> {
        let Some(rx) = &mut self.evicted else {
            return Poll::Pending;
        };
        match std::pin::Pin::new(rx).poll(cx) {
            Poll::Ready(Ok(eviction)) => {
                self.evicted = None;
                Poll::Ready(eviction)
            }
            Poll::Ready(Err(_)) => {
                self.evicted = None;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Records that publish `seq` of key `index` was taken: handed to gRPC
    /// (with `generation` when it carried a state) or skipped because it
    /// changed nothing. The subscriber stays pending, from now, if a later
    /// publish is waiting.
    pub fn taken(&self, index: usize, seq: u64, generation: Option<u64>) {
        let mut reg = lock(&self.registry);
        let Some(ch) = reg.keys.get_mut(&self.keys[index]) else {
            return;
        };
        let latest = ch.seq;
        let Some(entry) = ch.entries.get_mut(&self.id) else {
            return;
        };
        entry.taken = entry.taken.max(seq);
        if let Some(g) = generation {
            entry.delivered = g;
        }
        entry.pending_since = (entry.taken < latest).then(Instant::now);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut reg = lock(&self.registry);
        let Some(sub) = reg.subs.remove(&self.id) else {
            return;
        };
        if let Some(n) = reg.per_uid.get_mut(&sub.uid) {
            *n -= 1;
            if *n == 0 {
                reg.per_uid.remove(&sub.uid);
            }
        }
        for key in self.keys.iter() {
            if let Some(ch) = reg.keys.get_mut(key) {
                ch.entries.remove(&self.id);
                if ch.entries.is_empty() {
                    reg.keys.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::keyset::Version;
    use crate::secret::Secret;

    fn who(uid: u32, pid: i32) -> Arc<CallerRecord> {
        Arc::new(CallerRecord {
            uid,
            gid: uid,
            pid,
            exe: Some(format!("/usr/bin/app{uid}")),
            unit: Some("app.service".into()),
        })
    }

    fn key(k: &str) -> KeyRef {
        k.parse().unwrap()
    }

    fn state(k: &str, generation: u64) -> Arc<KeySetState> {
        let v = Version {
            number: generation,
            secret: Secret::copy_from(b"s"),
            fingerprint: format!("fp{generation}"),
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: None,
            promoted_at: None,
        };
        let mut s = KeySetState::create(key(k), v);
        s.generation = generation;
        Arc::new(s)
    }

    const CAPS: WatchCaps = WatchCaps {
        per_uid: 100,
        total: 1000,
    };

    fn subscribe_ok(w: &Watchers, keys: &[KeyRef], who: Arc<CallerRecord>) -> Subscription {
        w.subscribe(keys, who, ClientKind::Other, CAPS, None)
            .expect("under the caps")
    }

    async fn next_change(sub: &mut Subscription) -> Option<(usize, Published)> {
        tokio::time::timeout(Duration::from_secs(5), sub.changed())
            .await
            .expect("a change within 5s")
    }

    #[tokio::test]
    async fn count_and_subscribers_follow_live_subscriptions() {
        let w = Watchers::default();
        let (a, b) = (key("prod/a"), key("prod/b"));
        assert_eq!(w.count(), 0);
        assert!(w.subscribers(&a).is_empty());

        let s1 = subscribe_ok(&w, &[a.clone(), b.clone()], who(1001, 11));
        let s2 = subscribe_ok(&w, std::slice::from_ref(&a), who(1002, 22));
        assert_eq!(w.count(), 2);
        let subs = w.subscribers(&a);
        assert_eq!(
            subs.iter().map(|s| (s.uid, s.pid)).collect::<Vec<_>>(),
            [(1001, 11), (1002, 22)]
        );
        assert_eq!(subs[0].exe.as_deref(), Some("/usr/bin/app1001"));
        assert_eq!(subs[0].unit.as_deref(), Some("app.service"));
        assert!(subs.iter().all(|s| s.delivered_generation == 0));
        assert_eq!(w.subscribers(&b).len(), 1);

        s1.taken(0, 0, Some(7));
        s1.taken(1, 0, Some(3));
        s2.taken(0, 0, Some(6));
        let gens: Vec<u64> = w.subscribers(&a).iter().map(|s| s.delivered_generation).collect();
        assert_eq!(gens, [7, 6]);
        assert_eq!(w.subscribers(&b)[0].delivered_generation, 3);

        drop(s1);
        assert_eq!(w.count(), 1);
        assert_eq!(w.subscribers(&a).len(), 1);
        assert!(w.subscribers(&b).is_empty());
        // The last subscriber of b took its channel with it.
        assert!(!w.lock().keys.contains_key(&b));
        drop(s2);
        assert_eq!(w.count(), 0);
        assert!(w.lock().keys.is_empty());
    }

    #[tokio::test]
    async fn a_subscriber_sees_only_changes_after_it_subscribed_and_the_latest_one() {
        let w = Watchers::default();
        let a = key("prod/a");
        // Nobody watches: a no-op.
        w.publish(&a, Some(state("prod/a", 1)), Reason::Put);
        let mut sub = subscribe_ok(&w, std::slice::from_ref(&a), who(1, 1));
        for g in 2..=50 {
            w.publish(&a, Some(state("prod/a", g)), Reason::Put);
        }
        let (i, p) = next_change(&mut sub).await.unwrap();
        assert_eq!((i, p.reason), (0, Reason::Put));
        assert_eq!(p.state.unwrap().generation, 50, "skips to the latest");
        // Nothing more until the next publish.
        assert!(tokio::time::timeout(Duration::from_millis(50), sub.changed())
            .await
            .is_err());
        w.publish(&a, None, Reason::Deleted);
        let (_, p) = next_change(&mut sub).await.unwrap();
        assert!(p.state.is_none());
        assert_eq!(p.reason, Reason::Deleted);
    }

    #[tokio::test]
    async fn a_stuck_subscriber_does_not_hold_up_others() {
        let w = Watchers::default();
        let a = key("prod/a");
        let _stuck = subscribe_ok(&w, std::slice::from_ref(&a), who(1, 1));
        let mut fast = subscribe_ok(&w, std::slice::from_ref(&a), who(2, 2));
        for g in 1..=100 {
            w.publish(&a, Some(state("prod/a", g)), Reason::Put);
            let (_, p) = next_change(&mut fast).await.unwrap();
            assert_eq!(p.state.unwrap().generation, g);
        }
    }

    #[tokio::test]
    async fn multi_key_subscription_reports_which_key_changed() {
        let w = Watchers::default();
        let (a, b) = (key("prod/a"), key("staging/b"));
        let mut sub = subscribe_ok(&w, &[a.clone(), b.clone()], who(1, 1));
        w.publish(&b, Some(state("staging/b", 4)), Reason::Staged);
        let (i, p) = next_change(&mut sub).await.unwrap();
        assert_eq!((i, p.reason), (1, Reason::Staged));
        assert_eq!(sub.keys()[i], b);
        w.publish(&a, Some(state("prod/a", 9)), Reason::Promoted);
        let (i, p) = next_change(&mut sub).await.unwrap();
        assert_eq!((i, p.reason), (0, Reason::Promoted));
    }

    #[tokio::test]
    async fn close_ends_every_subscription_and_later_ones() {
        let w = Watchers::default();
        let a = key("prod/a");
        let mut sub = subscribe_ok(&w, std::slice::from_ref(&a), who(1, 1));
        w.close();
        assert!(next_change(&mut sub).await.is_none());
        let mut late = subscribe_ok(&w, std::slice::from_ref(&a), who(1, 2));
        assert!(next_change(&mut late).await.is_none());
        assert_eq!(w.count(), 2);
        drop((sub, late));
        assert_eq!(w.count(), 0);
    }

    #[tokio::test]
    async fn caps_refuse_the_watch_over_the_uid_or_total_limit_until_one_ends() {
        let w = Watchers::default();
        let a = key("prod/a");
        let caps = WatchCaps { per_uid: 2, total: 3 };
        let s1 = w
            .subscribe(std::slice::from_ref(&a), who(7, 1), ClientKind::Other, caps, None)
            .unwrap();
        let _s2 = w
            .subscribe(std::slice::from_ref(&a), who(7, 2), ClientKind::Other, caps, None)
            .unwrap();
        let refused = w
            .subscribe(std::slice::from_ref(&a), who(7, 3), ClientKind::Other, caps, None)
            .err()
            .unwrap();
        assert_eq!(
            refused,
            WatchRefused::PerUid {
                uid: 7,
                open: 2,
                limit: 2
            }
        );
        assert!(refused.to_string().contains("limits.max_watches_per_uid"), "{refused}");
        // Another uid is not held back by uid 7's cap...
        let _s3 = w
            .subscribe(std::slice::from_ref(&a), who(8, 4), ClientKind::Other, caps, None)
            .unwrap();
        // ...but by the total.
        let refused = w
            .subscribe(std::slice::from_ref(&a), who(9, 5), ClientKind::Other, caps, None)
            .err()
            .unwrap();
        assert_eq!(refused, WatchRefused::Total { open: 3, limit: 3 });
        assert!(refused.to_string().contains("limits.max_watches)"), "{refused}");
        assert_eq!((w.count(), w.count_for_uid(7), w.count_for_uid(9)), (3, 2, 0));
        // A refusal registers nothing.
        assert_eq!(w.subscribers(&a).len(), 3);
        drop(s1);
        assert_eq!(w.count_for_uid(7), 1);
        w.subscribe(std::slice::from_ref(&a), who(7, 6), ClientKind::Other, caps, None)
            .unwrap();
    }

    /// A closure counting how often it was called.
    fn counter() -> (Arc<std::sync::atomic::AtomicUsize>, CloseConnection) {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let m = n.clone();
        (
            n,
            Arc::new(move || {
                m.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        )
    }

    fn evicted_now(sub: &mut Subscription) -> Option<Eviction> {
        let waker = std::task::Waker::noop();
        match sub.poll_evicted(&mut Context::from_waker(waker)) {
            Poll::Ready(e) => Some(e),
            Poll::Pending => None,
        }
    }

    const TWO_S: Duration = Duration::from_secs(2);

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_that_takes_nothing_is_evicted_after_the_timeout_and_its_connection_closed_later() {
        let w = Watchers::default();
        let a = key("prod/a");
        let (closes, close) = counter();
        let mut stuck = w
            .subscribe(
                std::slice::from_ref(&a),
                who(1, 1),
                ClientKind::Other,
                CAPS,
                Some(close),
            )
            .unwrap();
        let mut reader = subscribe_ok(&w, std::slice::from_ref(&a), who(2, 2));
        // Nothing published yet: nobody is waited for, however long.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(w.evict_stalled(|_| TWO_S).is_empty());

        w.publish(&a, Some(state("prod/a", 2)), Reason::Staged);
        let (i, p) = next_change(&mut reader).await.unwrap();
        reader.taken(i, p.seq, Some(2));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(w.evict_stalled(|_| TWO_S).is_empty(), "not before the timeout");
        assert!(evicted_now(&mut stuck).is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        let evicted = w.evict_stalled(|_| TWO_S);
        assert_eq!(evicted.len(), 1, "only the one that took nothing");
        let e = &evicted[0];
        assert_eq!((e.key.clone(), e.who.uid, e.who.pid), (a.clone(), 1, 1));
        assert_eq!((e.delivered_generation, e.waiting_generation), (0, Some(2)));
        assert_eq!((e.waited, e.timeout), (TWO_S, TWO_S));

        // Rotation no longer waits for it; its stream is told; it still
        // counts (it holds its stream) until it is dropped.
        let listed: Vec<(u32, u64)> = w
            .subscribers(&a)
            .iter()
            .map(|s| (s.uid, s.delivered_generation))
            .collect();
        assert_eq!(listed, [(2, 2)]);
        let told = evicted_now(&mut stuck).expect("the stream is told");
        assert_eq!(told.waiting_generation, Some(2));
        assert!(evicted_now(&mut stuck).is_none(), "told once");
        assert_eq!((w.count(), w.count_for_uid(1)), (2, 1));
        let recent = w.recent_evictions(&a);
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].who.uid, 1);
        assert!(w.evict_stalled(|_| TWO_S).is_empty(), "evicted once");

        // Its stream still open a timeout later: its connection is closed,
        // once.
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(w.overdue_connections().is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        let due = w.overdue_connections();
        assert_eq!(due.len(), 1);
        due[0]();
        assert_eq!(closes.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(w.overdue_connections().is_empty());
        drop(stuck);
        assert_eq!((w.count(), w.count_for_uid(1)), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicted_stream_that_ends_in_time_keeps_its_connection() {
        let w = Watchers::default();
        let a = key("prod/a");
        let (closes, close) = counter();
        let stuck = w
            .subscribe(
                std::slice::from_ref(&a),
                who(1, 1),
                ClientKind::Other,
                CAPS,
                Some(close),
            )
            .unwrap();
        w.publish(&a, Some(state("prod/a", 2)), Reason::Staged);
        tokio::time::advance(TWO_S).await;
        assert_eq!(w.evict_stalled(|_| TWO_S).len(), 1);
        drop(stuck);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(w.overdue_connections().is_empty());
        assert_eq!(closes.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(w.count(), 0);
        assert!(
            w.lock().keys.is_empty(),
            "the key's channel went with its last subscriber"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn taking_an_older_state_restarts_the_clock_and_skipping_an_unchanged_one_counts() {
        let w = Watchers::default();
        let a = key("prod/a");
        let mut slow = subscribe_ok(&w, std::slice::from_ref(&a), who(1, 1));
        assert_eq!(slow.initial_seq(0), 0);
        // Handing over the initial state (publish 0) leaves nothing pending.
        slow.taken(0, slow.initial_seq(0), Some(1));
        w.publish(&a, Some(state("prod/a", 2)), Reason::Staged);
        let (_, first) = next_change(&mut slow).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        w.publish(&a, Some(state("prod/a", 3)), Reason::Promoted);
        tokio::time::advance(Duration::from_millis(500)).await;
        // It takes generation 2 only now: 3 is still waiting, from now on.
        slow.taken(0, first.seq, Some(2));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(w.evict_stalled(|_| TWO_S).is_empty(), "the clock restarted at its take");
        tokio::time::advance(Duration::from_millis(1)).await;
        let evicted = w.evict_stalled(|_| TWO_S);
        assert_eq!(evicted.len(), 1);
        assert_eq!(
            (evicted[0].delivered_generation, evicted[0].waiting_generation),
            (2, Some(3))
        );

        // A publish skipped as unchanged is taken too.
        let mut other = subscribe_ok(&w, std::slice::from_ref(&a), who(2, 2));
        w.publish(&a, Some(state("prod/a", 3)), Reason::Reloaded);
        let (i, p) = next_change(&mut other).await.unwrap();
        other.taken(i, p.seq, None);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(w.evict_stalled(|_| TWO_S).is_empty());
        // A deletion waits like any other publish, and names no generation.
        w.publish(&a, None, Reason::Deleted);
        tokio::time::advance(TWO_S).await;
        let evicted = w.evict_stalled(|_| TWO_S);
        assert_eq!(evicted.len(), 1);
        assert_eq!((evicted[0].who.uid, evicted[0].waiting_generation), (2, None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_multi_key_subscription_stuck_on_one_key_leaves_every_key_and_each_key_has_its_timeout() {
        let w = Watchers::default();
        let (a, b) = (key("prod/a"), key("prod/b"));
        let mut both = subscribe_ok(&w, &[a.clone(), b.clone()], who(1, 1));
        let _only_b = subscribe_ok(&w, std::slice::from_ref(&b), who(2, 2));
        let timeout = |k: &KeyRef| {
            if k.name() == "a" {
                TWO_S
            } else {
                Duration::from_secs(10)
            }
        };
        w.publish(&a, Some(state("prod/a", 2)), Reason::Staged);
        w.publish(&b, Some(state("prod/b", 2)), Reason::Staged);
        tokio::time::advance(TWO_S).await;
        let evicted = w.evict_stalled(timeout);
        assert_eq!(evicted.len(), 1, "b's timeout is longer: {evicted:?}");
        assert_eq!((evicted[0].key.clone(), evicted[0].who.uid), (a.clone(), 1));
        assert!(w.subscribers(&a).is_empty());
        assert_eq!(w.subscribers(&b).iter().map(|s| s.uid).collect::<Vec<_>>(), [2]);
        assert!(evicted_now(&mut both).is_some());
        // Its takes no longer count anywhere.
        both.taken(1, 1, Some(2));
        assert!(w.subscribers(&a).is_empty());
        tokio::time::advance(Duration::from_secs(8)).await;
        let evicted = w.evict_stalled(timeout);
        assert_eq!(evicted.iter().map(|e| e.who.uid).collect::<Vec<_>>(), [2]);
    }

    #[tokio::test(start_paused = true)]
    async fn recent_evictions_keep_the_last_few_per_key_newest_first() {
        let w = Watchers::default();
        let a = key("prod/a");
        let mut held = Vec::new();
        for pid in 0..(RECENT_EVICTIONS as i32 + 3) {
            held.push(subscribe_ok(&w, std::slice::from_ref(&a), who(1, pid)));
            w.publish(&a, Some(state("prod/a", pid as u64 + 2)), Reason::Put);
            tokio::time::advance(TWO_S).await;
            assert_eq!(w.evict_stalled(|_| TWO_S).len(), 1);
        }
        let recent = w.recent_evictions(&a);
        assert_eq!(recent.len(), RECENT_EVICTIONS);
        assert_eq!(recent[0].who.pid, RECENT_EVICTIONS as i32 + 2, "newest first");
        assert_eq!(recent[RECENT_EVICTIONS - 1].who.pid, 3);
        assert!(w.recent_evictions(&key("prod/b")).is_empty());
    }

    #[test]
    fn same_state_compares_generation_and_versions() {
        let s = state("prod/a", 3);
        assert!(same_state(&s, &s));
        assert!(same_state(&s, &state("prod/a", 3)));
        assert!(!same_state(&s, &state("prod/a", 4)));
        let mut other = (*s).clone();
        other.primary.fingerprint = "different".into();
        assert!(
            !same_state(&s, &other),
            "a key deleted and created again at the same generation"
        );
    }
}
