//! Per-key latest-value channels for `WatchKeys`, and the registry of who
//! is subscribed to which key and what each subscriber has been sent.
//!
//! Every change to a key (put, delete, each rotation step, a hot reload) is
//! committed to the store first and then handed to [`Watchers::publish`].
//! A `WatchKeys` stream ([`crate::server::watch_stream`]) holds a
//! [`Subscription`] and turns what it sees into `KeyEvent`s.
//!
//! # Invariants
//!
//! - **Publishing never waits.** Each key with subscribers has one
//!   `tokio::sync::watch` channel; [`Watchers::publish`] replaces its value
//!   and wakes the subscribers, and that is all. A slow or stuck subscriber
//!   holds no buffer and no lock: it may skip intermediate states, but
//!   whenever it looks it sees the latest one.
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
//! - **The registry is exactly the live subscriptions.** A [`Subscription`]
//!   registers one entry per key when it is created and removes them when it
//!   is dropped (the client went away, the stream ended, or the agent is
//!   stopping). [`Watchers::subscribers`] and [`Watchers::count`] read the
//!   registry and nothing else.
//! - **"Delivered" means handed to gRPC.** A subscription's delivered
//!   generation for a key is only raised by [`Subscription::mark_delivered`],
//!   which the stream calls at the moment tonic pulls the event from it.
//!   Rotation waits on it before promoting a staged key.
//! - **Closing ends every stream.** [`Watchers::close`] (at shutdown) drops
//!   every channel, so every subscription's [`Subscription::changed`]
//!   returns `None`, and later subscriptions start closed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt, StreamMap};

use crate::audit::CallerRecord;
use crate::keyset::{KeySetState, Version};
use crate::secret::KeyRef;

/// One published state of a key.
#[derive(Clone)]
pub struct Published {
    /// The key's new state; `None` when the key was deleted.
    pub state: Option<Arc<KeySetState>>,
    /// Why it changed: `put`, `deleted`, `staged`, `promoted`, …
    pub reason: &'static str,
}

/// A live subscriber, as `GetRotationStatus` reports it.
#[derive(Clone, Debug)]
pub struct SubscriberInfo {
    /// The subscriber's uid (from the kernel).
    pub uid: u32,
    /// Its pid.
    pub pid: i32,
    /// Its executable, where readable.
    pub exe: Option<String>,
    /// Its systemd unit, where known.
    pub unit: Option<String>,
    /// The last generation of the key handed to its stream (0: none yet).
    pub delivered_generation: u64,
}

/// The subscriber registry and the per-key channels. One per agent.
#[derive(Default)]
pub struct Watchers {
    registry: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    /// Keys with at least one subscriber.
    keys: HashMap<KeyRef, KeyChannel>,
    /// Id of the next subscription.
    next_id: u64,
    /// Live subscriptions.
    live: usize,
    /// [`Watchers::close`] was called.
    closed: bool,
}

struct KeyChannel {
    tx: watch::Sender<Published>,
    /// By subscription id, so listings come out in subscription order.
    entries: BTreeMap<u64, Arc<Entry>>,
}

/// One subscription's registration for one key.
struct Entry {
    who: Arc<CallerRecord>,
    delivered: AtomicU64,
}

impl Watchers {
    /// Publishes a key's new state. Never blocks on subscribers and never
    /// waits; a key nobody watches is a no-op.
    pub fn publish(&self, key: &KeyRef, state: Option<Arc<KeySetState>>, reason: &'static str) {
        let reg = self.lock();
        if let Some(ch) = reg.keys.get(key) {
            ch.tx.send_replace(Published { state, reason });
        }
    }

    /// Subscribes `who` to changes of `keys` (which must be distinct) from
    /// now on. Read the keys' current states only *after* this returns (see
    /// the module docs).
    pub fn subscribe(&self, keys: &[KeyRef], who: Arc<CallerRecord>) -> Subscription {
        debug_assert!(
            keys.iter().enumerate().all(|(i, k)| !keys[..i].contains(k)),
            "duplicate keys in one subscription"
        );
        let mut reg = self.lock();
        let id = reg.next_id;
        reg.next_id += 1;
        reg.live += 1;
        let mut changes = StreamMap::with_capacity(keys.len());
        let mut entries = Vec::with_capacity(keys.len());
        let closed = reg.closed;
        for (index, key) in keys.iter().enumerate() {
            let entry = Arc::new(Entry {
                who: who.clone(),
                delivered: AtomicU64::new(0),
            });
            if !closed {
                let ch = reg.keys.entry(key.clone()).or_insert_with(|| KeyChannel {
                    // Never read: every subscriber reads the store instead.
                    tx: watch::Sender::new(Published {
                        state: None,
                        reason: "initial",
                    }),
                    entries: BTreeMap::new(),
                });
                ch.entries.insert(id, entry.clone());
                changes.insert(index, WatchStream::from_changes(ch.tx.subscribe()));
            }
            entries.push(entry);
        }
        Subscription {
            registry: self.registry.clone(),
            id,
            keys: keys.to_vec(),
            entries,
            changes,
        }
    }

    /// Live subscribers of `key` and what each was last sent, in the order
    /// they subscribed.
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
                delivered_generation: e.delivered.load(Ordering::Acquire),
            })
            .collect()
    }

    /// Number of live subscriptions (all keys; a subscription to several
    /// keys counts once).
    pub fn count(&self) -> usize {
        self.lock().live
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
    keys: Vec<KeyRef>,
    /// Parallel to `keys`.
    entries: Vec<Arc<Entry>>,
    /// Changes of each key's channel, by index into `keys`.
    changes: StreamMap<usize, WatchStream<Published>>,
}

impl Subscription {
    /// The keys, in the order given to [`Watchers::subscribe`].
    pub fn keys(&self) -> &[KeyRef] {
        &self.keys
    }

    /// Waits until one of the keys was published, and returns its index and
    /// its *latest* published state (intermediate ones are skipped). `None`
    /// once the watchers are closed. Cancel-safe.
    pub async fn changed(&mut self) -> Option<(usize, Published)> {
        self.changes.next().await
    }

    /// [`Subscription::changed`], for hand-written streams: registers the
    /// task's waker when nothing changed yet.
    pub fn poll_changed(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<(usize, Published)>> {
        std::pin::Pin::new(&mut self.changes).poll_next(cx)
    }

    /// Records that generation `generation` of key `index` was handed to the
    /// subscriber.
    pub fn mark_delivered(&self, index: usize, generation: u64) {
        self.entries[index].delivered.store(generation, Ordering::Release);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut reg = lock(&self.registry);
        reg.live -= 1;
        for key in &self.keys {
            if let Some(ch) = reg.keys.get_mut(key) {
                ch.entries.remove(&self.id);
                if ch.entries.is_empty() {
                    reg.keys.remove(key);
                }
            }
        }
    }
}

/// Whether two states of a key are the same state, so that the second need
/// not be sent: the same committed state (the usual case: the store and the
/// channel share it), or one with the same generation and the same versions.
/// The versions matter because a key deleted and created again starts over
/// at generation 1.
pub fn same_state(a: &KeySetState, b: &KeySetState) -> bool {
    fn same_version(a: &Version, b: &Version) -> bool {
        a.number == b.number && a.fingerprint == b.fingerprint && a.created_at == b.created_at
    }
    std::ptr::eq(a, b)
        || (a.generation == b.generation
            && a.state == b.state
            && same_version(&a.primary, &b.primary)
            && match (&a.fallback, &b.fallback) {
                (Some(x), Some(y)) => same_version(x, y),
                (None, None) => true,
                _ => false,
            })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
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

        let s1 = w.subscribe(&[a.clone(), b.clone()], who(1001, 11));
        let s2 = w.subscribe(std::slice::from_ref(&a), who(1002, 22));
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

        s1.mark_delivered(0, 7);
        s1.mark_delivered(1, 3);
        s2.mark_delivered(0, 6);
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
        w.publish(&a, Some(state("prod/a", 1)), "put");
        let mut sub = w.subscribe(std::slice::from_ref(&a), who(1, 1));
        for g in 2..=50 {
            w.publish(&a, Some(state("prod/a", g)), "put");
        }
        let (i, p) = next_change(&mut sub).await.unwrap();
        assert_eq!((i, p.reason), (0, "put"));
        assert_eq!(p.state.unwrap().generation, 50, "skips to the latest");
        // Nothing more until the next publish.
        assert!(tokio::time::timeout(Duration::from_millis(50), sub.changed())
            .await
            .is_err());
        w.publish(&a, None, "deleted");
        let (_, p) = next_change(&mut sub).await.unwrap();
        assert!(p.state.is_none());
        assert_eq!(p.reason, "deleted");
    }

    #[tokio::test]
    async fn a_stuck_subscriber_does_not_hold_up_others() {
        let w = Watchers::default();
        let a = key("prod/a");
        let _stuck = w.subscribe(std::slice::from_ref(&a), who(1, 1));
        let mut fast = w.subscribe(std::slice::from_ref(&a), who(2, 2));
        for g in 1..=100 {
            w.publish(&a, Some(state("prod/a", g)), "put");
            let (_, p) = next_change(&mut fast).await.unwrap();
            assert_eq!(p.state.unwrap().generation, g);
        }
    }

    #[tokio::test]
    async fn multi_key_subscription_reports_which_key_changed() {
        let w = Watchers::default();
        let (a, b) = (key("prod/a"), key("staging/b"));
        let mut sub = w.subscribe(&[a.clone(), b.clone()], who(1, 1));
        w.publish(&b, Some(state("staging/b", 4)), "staged");
        let (i, p) = next_change(&mut sub).await.unwrap();
        assert_eq!((i, p.reason), (1, "staged"));
        assert_eq!(sub.keys()[i], b);
        w.publish(&a, Some(state("prod/a", 9)), "promoted");
        let (i, p) = next_change(&mut sub).await.unwrap();
        assert_eq!((i, p.reason), (0, "promoted"));
    }

    #[tokio::test]
    async fn close_ends_every_subscription_and_later_ones() {
        let w = Watchers::default();
        let a = key("prod/a");
        let mut sub = w.subscribe(std::slice::from_ref(&a), who(1, 1));
        w.close();
        assert!(next_change(&mut sub).await.is_none());
        let mut late = w.subscribe(std::slice::from_ref(&a), who(1, 2));
        assert!(next_change(&mut late).await.is_none());
        assert_eq!(w.count(), 2);
        drop((sub, late));
        assert_eq!(w.count(), 0);
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
