//! Refusals, coalesced: a caller without a grant cannot make the agent
//! write without bound to the audit log (and so fill its disk and deny
//! every fail-closed fetch), nor grow its memory.
//!
//! Every refusal the agent audits (a denial, an invalid request, a missing
//! key) goes through [`Coalescer::admit`]. Refusals alike — same uid,
//! event, outcome and key — share a bucket for a window
//! (`[audit] coalesce_window`) from the first of them:
//!
//! - the first refusal of a window is written at once, as it is, so an
//!   attack shows in the log the moment it starts;
//! - the others are only counted; when the window ends one record stands
//!   for all of them, with `count`, `first` and `last` (see "Coalesced
//!   records" in [`crate::audit`]). What is still open when the agent stops
//!   is written before its `agent_stop` record.
//!
//! So the sum of the records' counts (1 for a record without one) is the
//! number of refusals, and a window costs a bucket at most two records.
//!
//! Memory and the log stay bounded whatever the caller varies:
//!
//! - the key: a uid has at most [`MAX_KEYS_PER_UID`] buckets of its own
//!   keys open; its refusals of other keys fold into one bucket per (uid,
//!   event, outcome) whose record leaves the key out and says how many
//!   distinct keys it covers (`distinct_keys`, counted up to
//!   [`crate::audit::DISTINCT_KEYS_COUNTED`]). Keys are as the caller sent
//!   them, escaped and cut to a few hundred bytes (`keys::shown_key`);
//!   invalid UTF-8 never gets this far (the request does not decode);
//! - the uid: at most [`MAX_BUCKETS`] buckets are open in all; beyond
//!   them, refusals fold into one bucket per (event, outcome) for every
//!   uid, whose record names no caller and says how many distinct uids it
//!   covers;
//! - the pid, executable or unit: not part of a bucket; a coalesced record
//!   names the caller of the last refusal it counts.
//!
//! Events and outcomes are names from the code (`&'static str`), so the
//! folded buckets are few. The core ([`Coalescer`]) is plain data driven
//! with the time passed in; [`Refusals`] and [`run`] are the edge (clock,
//! lock, timer, audit writes).

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::Agent;
use crate::alerts::detect::Now;
use crate::audit::{AuditEvent, CallerRecord, Coalesced, DISTINCT_KEYS_COUNTED};

/// Keys of its own a uid has coalesced apart in a window; refusals of more
/// keys fold into one bucket per (uid, event, outcome).
pub const MAX_KEYS_PER_UID: usize = 16;
/// Buckets open at once, all uids together; beyond them refusals fold into
/// one bucket per (event, outcome).
pub const MAX_BUCKETS: usize = 1024;

/// One refusal to audit.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// `fetch`, `watch`, `auth_failure`, `credential`, `admin`.
    pub event: &'static str,
    /// Who was refused.
    pub caller: Arc<CallerRecord>,
    /// The key asked for, as shown in the audit (escaped and bounded).
    pub key: Option<String>,
    /// `denied`, `invalid_argument`, `not_found`.
    pub outcome: &'static str,
    /// The message the caller got.
    pub detail: String,
}

impl Refusal {
    /// The refusal's own audit record.
    pub fn into_record(self) -> AuditEvent {
        AuditEvent {
            event: self.event,
            caller: Some(self.caller),
            key: self.key,
            outcome: self.outcome,
            detail: Some(self.detail),
            ..Default::default()
        }
    }
}

/// What refusals a bucket gathers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Scope {
    /// One uid's refusals of one key (or of no key).
    Key { uid: u32, key: Option<String> },
    /// One uid's refusals of keys beyond its [`MAX_KEYS_PER_UID`].
    Uid(u32),
    /// Every uid's refusals beyond [`MAX_BUCKETS`].
    All,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BucketId {
    event: &'static str,
    outcome: &'static str,
    scope: Scope,
}

/// Distinct values seen, counted up to [`DISTINCT_KEYS_COUNTED`].
#[derive(Default)]
struct Distinct(HashSet<u64>);

impl Distinct {
    fn add(&mut self, hash: u64) {
        if (self.0.len() as u64) < DISTINCT_KEYS_COUNTED {
            self.0.insert(hash);
        }
    }

    fn count(&self) -> u64 {
        self.0.len() as u64
    }
}

/// The refusals of one window after the first (written at once).
struct Bucket {
    /// When the window ends.
    closes: Instant,
    /// Refusals counted (not written).
    count: u64,
    first: SystemTime,
    last: SystemTime,
    /// Caller and message of the last refusal counted.
    last_caller: Option<Arc<CallerRecord>>,
    last_detail: String,
    /// Folded buckets: the distinct keys (and for [`Scope::All`], uids)
    /// of the refusals counted.
    keys: Distinct,
    uids: Distinct,
}

impl Bucket {
    fn new(closes: Instant, now: SystemTime) -> Bucket {
        Bucket {
            closes,
            count: 0,
            first: now,
            last: now,
            last_caller: None,
            last_detail: String::new(),
            keys: Distinct::default(),
            uids: Distinct::default(),
        }
    }
}

/// The coalescing state: open buckets, their windows and the caps. Pure:
/// every call takes the time.
pub struct Coalescer {
    window: Duration,
    buckets: HashMap<BucketId, Bucket>,
    /// [`Scope::Key`] buckets open per uid.
    keys_per_uid: HashMap<u32, usize>,
    /// Hashes keys and uids for the distinct counts (seeded per process,
    /// so that a caller cannot aim collisions).
    hasher: RandomState,
}

impl Coalescer {
    /// Coalesces over `window`; a zero window lets every refusal through.
    pub fn new(window: Duration) -> Coalescer {
        Coalescer {
            window,
            buckets: HashMap::new(),
            keys_per_uid: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    /// Takes one refusal at `now`: returns it if it is to be written at
    /// once (the first of its window), `None` if it was counted.
    pub fn admit(&mut self, now: Now, mut refusal: Refusal) -> Option<Refusal> {
        if self.window.is_zero() {
            return Some(refusal);
        }
        let uid = refusal.caller.uid;
        let (event, outcome) = (refusal.event, refusal.outcome);
        let own = BucketId {
            event,
            outcome,
            scope: Scope::Key {
                uid,
                key: refusal.key.take(),
            },
        };
        if let Some(bucket) = self.buckets.get_mut(&own) {
            count(bucket, now, refusal);
            return None;
        }
        let full = self.buckets.len() >= MAX_BUCKETS;
        let keys_of_uid = self.keys_per_uid.get(&uid).copied().unwrap_or(0);
        if !full && keys_of_uid < MAX_KEYS_PER_UID {
            let Scope::Key { key, .. } = &own.scope else {
                unreachable!("built as a key scope")
            };
            refusal.key = key.clone();
            *self.keys_per_uid.entry(uid).or_default() += 1;
            self.buckets.insert(own, Bucket::new(now.mono + self.window, now.wall));
            return Some(refusal);
        }
        let Scope::Key { key, .. } = own.scope else {
            unreachable!("built as a key scope")
        };
        refusal.key = key;
        let key_hash = self.hasher.hash_one(&refusal.key);
        let uid_hash = self.hasher.hash_one(uid);
        let folded = |scope| BucketId { event, outcome, scope };
        let by_uid = folded(Scope::Uid(uid));
        let id = if self.buckets.contains_key(&by_uid) || !full {
            by_uid
        } else {
            folded(Scope::All)
        };
        match self.buckets.entry(id) {
            Entry::Occupied(mut open) => {
                let bucket = open.get_mut();
                bucket.keys.add(key_hash);
                bucket.uids.add(uid_hash);
                count(bucket, now, refusal);
                None
            }
            Entry::Vacant(vacant) => {
                vacant.insert(Bucket::new(now.mono + self.window, now.wall));
                Some(refusal)
            }
        }
    }

    /// Ends the windows that are over at `now` (or all of them, with
    /// `None`): returns the records of those that counted refusals, oldest
    /// first refusal first.
    pub fn close(&mut self, now: Option<Instant>) -> Vec<AuditEvent> {
        let ended: Vec<BucketId> = self
            .buckets
            .iter()
            .filter(|(_, b)| now.is_none_or(|now| b.closes <= now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut closed = Vec::with_capacity(ended.len());
        for id in ended {
            let Some(bucket) = self.buckets.remove(&id) else {
                continue;
            };
            if let Scope::Key { uid, .. } = &id.scope {
                if let Entry::Occupied(mut n) = self.keys_per_uid.entry(*uid) {
                    *n.get_mut() -= 1;
                    if *n.get() == 0 {
                        n.remove();
                    }
                }
            }
            if bucket.count > 0 {
                closed.push((bucket.first, summary(id, bucket)));
            }
        }
        closed.sort_by_key(|(first, _)| *first);
        closed.into_iter().map(|(_, record)| record).collect()
    }

    /// Buckets open now.
    pub fn open(&self) -> usize {
        self.buckets.len()
    }
}

/// Counts `refusal` in `bucket`.
fn count(bucket: &mut Bucket, now: Now, refusal: Refusal) {
    if bucket.count == 0 {
        bucket.first = now.wall;
    }
    bucket.count += 1;
    bucket.last = now.wall;
    bucket.last_caller = Some(refusal.caller);
    bucket.last_detail = refusal.detail;
}

/// The record that stands for a bucket's counted refusals.
fn summary(id: BucketId, b: Bucket) -> AuditEvent {
    let at_least = |d: &Distinct| {
        let n = d.count();
        if n >= DISTINCT_KEYS_COUNTED {
            format!("at least {n}")
        } else {
            n.to_string()
        }
    };
    let (caller, key, detail, distinct_keys) = match id.scope {
        Scope::Key { key, .. } => (b.last_caller, key, b.last_detail, None),
        Scope::Uid(uid) => (
            b.last_caller,
            None,
            format!(
                "refusals of {} distinct keys by uid {uid}, beyond the {MAX_KEYS_PER_UID} keys a uid has counted apart per window; the last: {}",
                at_least(&b.keys),
                b.last_detail
            ),
            Some(b.keys.count()),
        ),
        Scope::All => (
            None,
            None,
            format!(
                "refusals by {} distinct uids, beyond the {MAX_BUCKETS} kinds of refusal the agent counts apart per window; the last: {}",
                at_least(&b.uids),
                b.last_detail
            ),
            Some(b.keys.count()),
        ),
    };
    AuditEvent {
        event: id.event,
        caller,
        key,
        outcome: id.outcome,
        detail: Some(detail),
        coalesced: Some(Coalesced {
            count: b.count,
            first: b.first,
            last: b.last,
            distinct_keys,
        }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// The edge: the clock, the lock, the timer and the audit writes.

/// The agent's coalescer.
pub struct Refusals {
    core: Mutex<Coalescer>,
    window: Duration,
}

impl Refusals {
    /// Coalesces over `window` (`[audit] coalesce_window`, read at start).
    pub fn new(window: Duration) -> Refusals {
        Refusals {
            core: Mutex::new(Coalescer::new(window)),
            window,
        }
    }

    /// The record to write now for `refusal`, if any (see
    /// [`Coalescer::admit`]).
    pub fn admit(&self, refusal: Refusal) -> Option<AuditEvent> {
        let now = Now {
            wall: SystemTime::now(),
            mono: Instant::now(),
        };
        let admitted = self
            .core
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(now, refusal);
        admitted.map(Refusal::into_record)
    }

    /// Writes the records of the windows that are over (every window, when
    /// `all`). A record that cannot be written is lost with its count; the
    /// audit's own failure alert says why.
    pub async fn flush(&self, agent: &Agent, all: bool) {
        let now = (!all).then(Instant::now);
        let records = self.core.lock().unwrap_or_else(PoisonError::into_inner).close(now);
        for record in records {
            let _ = agent.audit.record(record).await;
        }
    }
}

/// Writes the coalesced records as their windows end, until `stop` (the
/// windows still open then are written by the shutdown, see
/// [`super::tasks::Running::finish`]). A window ends at most a tick late: a quarter of it,
/// between 50 ms and 1 s.
pub async fn run(agent: Arc<Agent>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let window = agent.refusals.window;
    if window.is_zero() {
        return;
    }
    let tick = (window / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        agent.refusals.flush(&agent, false).await;
    }
}

#[cfg(test)]
mod tests;
