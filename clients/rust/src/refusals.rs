//! What [`Client::call_with_fallback`](crate::Client::call_with_fallback)
//! remembers of the versions a provider refused: the sticky fallback, and
//! one auth-failure report per version per interval.
//!
//! While a provider refuses the primary (an early revocation, a rotation
//! it has not caught up with), trying the primary first on every call
//! doubles its traffic (which can trigger its lockouts) and reports every
//! refusal, until the agent's per-uid report limit drops them. So a refusal
//! of version V of key K is remembered, against the primary and fallback
//! versions of the key's state at that moment, for the fallback
//! *cool-down*; while it lasts, calls whose key state is still that one
//! skip V and go straight to the fallback, as `keyward proxy` does with
//! `--fallback-cooldown`.
//!
//! Invariants:
//!
//! - A mark is consulted only while the key's state has the primary and
//!   fallback versions it was made against: a new state (from `get`, a
//!   handle's current state, or a handle's push, which forgets the key's
//!   marks at once) forgets the key's marks. A success with a marked
//!   version forgets its mark too.
//! - The primary is skipped only when the fallback is not marked itself:
//!   with no fallback, or both marked, calls go as without the memory
//!   (primary, then fallback). After the cool-down the primary is tried
//!   again, once; a new refusal marks it again. So a revoked primary gets
//!   at most one call per caller per cool-down.
//! - A cool-down of zero turns the memory off: every call tries the
//!   primary first.
//! - Reports: the first refusal of (K, V) is reported at once; those that
//!   follow within the report interval (the cool-down, or
//!   [`MIN_REPORT_INTERVAL`] with a cool-down of zero) are counted, and the
//!   next report of (K, V) carries the count.
//! - Bounded: at most [`ENTRIES_KEPT`] (key, version) pairs; past it the one
//!   touched longest ago is forgotten.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a refused version is skipped for, unless the client or the
/// call says otherwise ([`Client::with_fallback_cooldown`](crate::Client::with_fallback_cooldown)).
pub const DEFAULT_FALLBACK_COOLDOWN: Duration = Duration::from_secs(10);

/// With a cool-down of zero (no memory), the shortest time between two
/// auth-failure reports of one version (`keyward proxy`'s).
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(200);

/// (key, version) pairs remembered at most.
const ENTRIES_KEPT: usize = 1024;

/// Which version a call tries first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// The primary, then the fallback if there is one.
    PrimaryFirst,
    /// The fallback (the primary is cooling down), then the primary.
    FallbackFirst,
}

/// A key's state as far as marks go: its primary's and fallback's
/// versions.
pub(crate) type Versions = (u64, Option<u64>);

/// The refusals remembered by one client (and its clones and handles).
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    keys: HashMap<String, KeyRefusals>,
    /// (key, version) pairs in `keys`.
    entries: usize,
}

/// The refusals of one key.
#[derive(Debug)]
struct KeyRefusals {
    /// The state the marks were made against.
    against: Versions,
    versions: Vec<(u64, Entry)>,
}

#[derive(Debug)]
struct Entry {
    /// When the version was last refused, while that counts.
    marked: Option<Instant>,
    /// When a refusal of it was last reported.
    reported: Option<Instant>,
    /// Refusals since then that were not reported.
    held: u64,
    touched: Instant,
}

impl Refusals {
    /// The order a call with `key` in state `versions` tries them in.
    /// Forgets the key's marks if its state is not the one they were made
    /// against.
    pub(crate) fn plan(&mut self, key: &str, versions: Versions, cooldown: Duration, now: Instant) -> Order {
        if self.keys.is_empty() {
            return Order::PrimaryFirst;
        }
        self.forget_unless(key, versions);
        let (primary, fallback) = versions;
        let (Some(fallback), false) = (fallback, cooldown.is_zero()) else {
            return Order::PrimaryFirst;
        };
        let Some(k) = self.keys.get(key) else {
            return Order::PrimaryFirst;
        };
        let cooling = |version| {
            k.versions
                .iter()
                .any(|(v, e)| *v == version && e.marked.is_some_and(|at| now.saturating_duration_since(at) < cooldown))
        };
        if cooling(primary) && !cooling(fallback) {
            Order::FallbackFirst
        } else {
            Order::PrimaryFirst
        }
    }

    /// `version` of `key` (in state `versions`) was refused at `now`:
    /// marked (unless the cool-down is zero). Returns the count of earlier
    /// refusals to report with this one, or `None` if it is not to be
    /// reported (it is counted into the next report).
    pub(crate) fn refused(
        &mut self,
        key: &str,
        version: u64,
        versions: Versions,
        cooldown: Duration,
        now: Instant,
    ) -> Option<u64> {
        self.forget_unless(key, versions);
        let entry = self.entry(key, version, versions, now);
        if !cooldown.is_zero() {
            entry.marked = Some(now);
        }
        let interval = if cooldown.is_zero() {
            MIN_REPORT_INTERVAL
        } else {
            cooldown
        };
        match entry.reported {
            Some(at) if now.saturating_duration_since(at) < interval => {
                entry.held = entry.held.saturating_add(1);
                None
            }
            _ => {
                entry.reported = Some(now);
                Some(std::mem::take(&mut entry.held))
            }
        }
    }

    /// A call with `version` of `key` succeeded: its mark, if any, goes.
    pub(crate) fn worked(&mut self, key: &str, version: u64) {
        if let Some(k) = self.keys.get_mut(key) {
            for (_, e) in k.versions.iter_mut().filter(|(v, _)| *v == version) {
                e.marked = None;
            }
        }
    }

    /// The agent pushed a new state of `key`: its marks go (the report
    /// counts stay).
    pub(crate) fn forget(&mut self, key: &str) {
        if let Some(k) = self.keys.get_mut(key) {
            for (_, e) in &mut k.versions {
                e.marked = None;
            }
        }
    }

    /// Forgets the marks of `key` unless they were made against `versions`.
    fn forget_unless(&mut self, key: &str, versions: Versions) {
        if let Some(k) = self.keys.get_mut(key) {
            if k.against != versions {
                k.against = versions;
                for (_, e) in &mut k.versions {
                    e.marked = None;
                }
            }
        }
    }

    /// The entry of `version` of `key`, made if needed (forgetting the
    /// entry touched longest ago when [`ENTRIES_KEPT`] are kept).
    fn entry(&mut self, key: &str, version: u64, versions: Versions, now: Instant) -> &mut Entry {
        let known = self
            .keys
            .get(key)
            .is_some_and(|k| k.versions.iter().any(|(v, _)| *v == version));
        if !known {
            if self.entries >= ENTRIES_KEPT {
                self.forget_oldest();
            }
            self.entries += 1;
            self.keys
                .entry(key.to_owned())
                .or_insert_with(|| KeyRefusals {
                    against: versions,
                    versions: Vec::new(),
                })
                .versions
                .push((
                    version,
                    Entry {
                        marked: None,
                        reported: None,
                        held: 0,
                        touched: now,
                    },
                ));
        }
        let k = self.keys.get_mut(key).expect("made above");
        let (_, entry) = k.versions.iter_mut().find(|(v, _)| *v == version).expect("made above");
        entry.touched = now;
        entry
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .keys
            .iter()
            .flat_map(|(key, k)| k.versions.iter().map(move |(v, e)| (e.touched, key, *v)))
            .min_by_key(|(touched, _, _)| *touched)
            .map(|(_, key, v)| (key.clone(), v));
        let Some((key, version)) = oldest else { return };
        if let Some(k) = self.keys.get_mut(&key) {
            k.versions.retain(|(v, _)| *v != version);
            if k.versions.is_empty() {
                self.keys.remove(&key);
            }
        }
        self.entries -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "prod/billing-api";
    const COOL: Duration = Duration::from_secs(30);
    /// v1 primary, v2 fallback (promoted; v1 revoked early).
    const SET: Versions = (1, Some(2));

    #[test]
    fn a_refused_primary_is_skipped_for_the_cool_down_then_tried_once_more() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        assert_eq!(r.plan(K, SET, COOL, t0), Order::PrimaryFirst);
        assert_eq!(r.refused(K, 1, SET, COOL, t0), Some(0), "the first refusal is reported");
        for s in [1, 10, 29] {
            assert_eq!(r.plan(K, SET, COOL, t0 + Duration::from_secs(s)), Order::FallbackFirst);
        }
        let later = t0 + COOL;
        assert_eq!(r.plan(K, SET, COOL, later), Order::PrimaryFirst, "after the cool-down");
        assert_eq!(r.refused(K, 1, SET, COOL, later), Some(0), "one report per interval");
        assert_eq!(
            r.plan(K, SET, COOL, later + Duration::from_secs(1)),
            Order::FallbackFirst
        );
    }

    #[test]
    fn no_fallback_both_refused_or_no_cool_down_keep_the_primary_first() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        r.refused(K, 1, (1, None), COOL, t0);
        assert_eq!(r.plan(K, (1, None), COOL, t0), Order::PrimaryFirst, "no fallback");

        let mut r = Refusals::default();
        r.refused(K, 1, SET, COOL, t0);
        r.refused(K, 2, SET, COOL, t0);
        assert_eq!(r.plan(K, SET, COOL, t0), Order::PrimaryFirst, "both refused");

        let mut r = Refusals::default();
        r.refused(K, 1, SET, Duration::ZERO, t0);
        assert_eq!(r.plan(K, SET, Duration::ZERO, t0), Order::PrimaryFirst, "memory off");
        assert_eq!(
            r.plan(K, SET, COOL, t0),
            Order::PrimaryFirst,
            "nothing was marked with it off"
        );
    }

    #[test]
    fn a_new_state_a_push_or_a_success_forgets_the_marks() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        r.refused(K, 1, SET, COOL, t0);
        // Staged again: v2 primary, v3 fallback. v1 is gone, and so are the
        // marks of the old state (a rollback to it starts afresh).
        assert_eq!(r.plan(K, (2, Some(3)), COOL, t0), Order::PrimaryFirst);
        assert_eq!(r.plan(K, SET, COOL, t0), Order::PrimaryFirst);

        r.refused(K, 1, SET, COOL, t0);
        assert_eq!(r.plan(K, SET, COOL, t0), Order::FallbackFirst);
        r.forget(K);
        assert_eq!(r.plan(K, SET, COOL, t0), Order::PrimaryFirst, "pushed");

        r.refused(K, 1, SET, COOL, t0);
        r.worked(K, 1);
        assert_eq!(r.plan(K, SET, COOL, t0), Order::PrimaryFirst, "it works again");
        // Other keys are not touched.
        r.refused(K, 1, SET, COOL, t0);
        r.forget("prod/other");
        assert_eq!(r.plan(K, SET, COOL, t0), Order::FallbackFirst);
    }

    #[test]
    fn refusals_within_the_interval_are_counted_into_the_next_report() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // No cool-down: the minimum interval.
        let mut r = Refusals::default();
        assert_eq!(r.refused(K, 1, SET, Duration::ZERO, ms(0)), Some(0));
        for n in 1..50 {
            assert_eq!(r.refused(K, 1, SET, Duration::ZERO, ms(n)), None);
        }
        assert_eq!(r.refused(K, 1, SET, Duration::ZERO, ms(199)), None);
        assert_eq!(r.refused(K, 1, SET, Duration::ZERO, ms(200)), Some(50));
        assert_eq!(r.refused(K, 1, SET, Duration::ZERO, ms(401)), Some(0));
        // Per version: the fallback's first refusal is reported at once.
        assert_eq!(r.refused(K, 2, SET, Duration::ZERO, ms(402)), Some(0));
        // With a cool-down, the interval is the cool-down; a new state
        // does not reset the count.
        let mut r = Refusals::default();
        assert_eq!(r.refused(K, 1, SET, COOL, t0), Some(0));
        assert_eq!(r.refused(K, 1, SET, COOL, t0 + Duration::from_secs(5)), None);
        assert_eq!(r.refused(K, 1, (1, None), COOL, t0 + Duration::from_secs(6)), None);
        assert_eq!(r.refused(K, 1, SET, COOL, t0 + COOL), Some(2));
    }

    #[test]
    fn at_most_entries_kept_the_oldest_forgotten_first() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        for n in 0..ENTRIES_KEPT as u64 + 10 {
            let key = format!("prod/k{n}");
            r.refused(&key, 1, SET, COOL, t0 + Duration::from_millis(n));
        }
        assert_eq!(r.entries, ENTRIES_KEPT);
        assert_eq!(r.keys.values().map(|k| k.versions.len()).sum::<usize>(), ENTRIES_KEPT);
        let late = t0 + Duration::from_millis(ENTRIES_KEPT as u64 + 10);
        assert_eq!(r.plan("prod/k0", SET, COOL, late), Order::PrimaryFirst, "forgotten");
        assert_eq!(
            r.plan(&format!("prod/k{}", ENTRIES_KEPT + 9), SET, COOL, late),
            Order::FallbackFirst
        );
    }
}
