//! Key-use reports: telling the agent which versions of a key work.
//!
//! During a rotation the agent retires the old key only once callers have
//! reported successful use of the new primary (`ReportKeyUse`); without
//! that evidence the rotation waits at PROMOTED and alerts `no_evidence`.
//! [`Client::call_with_fallback`](crate::Client::call_with_fallback) and
//! [`KeyHandle::report_use`](crate::KeyHandle::report_use) report here.
//!
//! Invariants:
//!
//! - At most one report per (key, version) per [`USE_REPORT_INTERVAL`]
//!   from one [`Client`](crate::Client) (its clones and handles share the
//!   count). A report carries the successes counted since the previous
//!   one; successes counted after the last report of a version are sent
//!   with the next report, if another success comes once the interval has
//!   passed, and never otherwise.
//! - Nothing here waits on the agent: [`UseCounts`] is plain bookkeeping,
//!   the report is sent from a spawned task, and its failure is only
//!   logged at debug level. A report that fails is not retried sooner: the
//!   next one waits out the interval like any other.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use crate::client::Client;

/// At most one key-use report per (key, version) per this long, from one
/// [`Client`](crate::Client).
pub const USE_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// (key, version) pairs remembered at most. Past it, pairs not reported
/// within the interval are forgotten first, then the one reported longest
/// ago: a process uses a handful of keys, two versions each at a time.
const VERSIONS_KEPT: usize = 256;

/// Successes counted per (key, version), and when each was last reported.
#[derive(Debug, Default)]
pub(crate) struct UseCounts {
    versions: HashMap<(String, u64), Counted>,
}

#[derive(Debug)]
struct Counted {
    last_report: Instant,
    unreported: u64,
}

impl UseCounts {
    /// Counts one success with `version` of `key` at `now`. Returns how
    /// many successes to report now, or `None` while the last report of
    /// this version is younger than [`USE_REPORT_INTERVAL`] (the success is
    /// kept for the next report).
    pub(crate) fn record(&mut self, key: &str, version: u64, now: Instant) -> Option<u64> {
        if let Some(c) = self.versions.get_mut(&(key.to_owned(), version)) {
            c.unreported = c.unreported.saturating_add(1);
            if now.saturating_duration_since(c.last_report) < USE_REPORT_INTERVAL {
                return None;
            }
            c.last_report = now;
            return Some(std::mem::take(&mut c.unreported));
        }
        if self.versions.len() >= VERSIONS_KEPT {
            self.make_room(now);
        }
        self.versions.insert(
            (key.to_owned(), version),
            Counted {
                last_report: now,
                unreported: 0,
            },
        );
        Some(1)
    }

    fn make_room(&mut self, now: Instant) {
        self.versions
            .retain(|_, c| now.saturating_duration_since(c.last_report) < USE_REPORT_INTERVAL);
        if self.versions.len() >= VERSIONS_KEPT {
            let oldest = self
                .versions
                .iter()
                .min_by_key(|(_, c)| c.last_report)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.versions.remove(&k);
            }
        }
    }
}

impl Client {
    /// Counts a success with `version` of `key` and, when that is due,
    /// sends the report from a task on `runtime`; never waits for it.
    pub(crate) fn note_use(&self, runtime: &tokio::runtime::Handle, key: &str, version: u64) {
        let due = self
            .uses()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(key, version, Instant::now());
        let Some(successes) = due else { return };
        let client = self.clone();
        let key = key.to_owned();
        runtime.spawn(async move {
            let service = client.service().to_owned();
            if let Err(e) = client.report_key_use(&key, version, &service, successes).await {
                tracing::debug!(%key, version, error = %e, "could not report key use to keyward");
            }
        });
    }

    /// [`Client::note_use`] on the runtime of the calling task; outside
    /// any tokio runtime, nothing is counted nor sent.
    pub(crate) fn note_use_here(&self, key: &str, version: u64) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => self.note_use(&runtime, key, version),
            Err(_) => tracing::debug!(%key, version, "no tokio runtime: key use not reported"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_report_per_version_per_interval_carrying_the_count() {
        let t0 = Instant::now();
        let mut u = UseCounts::default();
        // (key, version, time, what to report)
        let steps: &[(&str, u64, Duration, Option<u64>)] = &[
            ("prod/a", 1, Duration::ZERO, Some(1)),
            ("prod/a", 1, MS, None),
            ("prod/a", 1, 2 * MS, None),
            // Another version, another key: their own reports.
            ("prod/a", 2, 3 * MS, Some(1)),
            ("prod/b", 1, 4 * MS, Some(1)),
            ("prod/a", 1, USE_REPORT_INTERVAL - MS, None),
            // The interval has passed: the 4 successes since the report,
            // this one included.
            ("prod/a", 1, USE_REPORT_INTERVAL, Some(4)),
            ("prod/a", 1, USE_REPORT_INTERVAL + MS, None),
            ("prod/a", 2, USE_REPORT_INTERVAL + 3 * MS, Some(1)),
            ("prod/a", 1, 3 * USE_REPORT_INTERVAL, Some(2)),
        ];
        for &(key, version, at, want) in steps {
            assert_eq!(u.record(key, version, t0 + at), want, "{key} v{version} at {at:?}");
        }
    }

    #[test]
    fn memory_is_bounded_and_a_forgotten_version_reports_again() {
        let t0 = Instant::now();
        let mut u = UseCounts::default();
        for v in 0..(VERSIONS_KEPT as u64 + 10) {
            assert_eq!(u.record("prod/a", v, t0 + MS * v as u32), Some(1));
            assert!(u.versions.len() <= VERSIONS_KEPT);
        }
        // Version 0 was reported longest ago and forgotten: counted anew.
        assert_eq!(u.record("prod/a", 0, t0 + USE_REPORT_INTERVAL / 2), Some(1));
        // Once the interval has passed, the stale pairs make room at once.
        let later = t0 + 2 * USE_REPORT_INTERVAL;
        assert_eq!(u.record("prod/new", 1, later), Some(1));
        assert_eq!(u.versions.len(), 1);
    }
}
