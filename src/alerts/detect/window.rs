//! The sliding window the counting signals share: one key's reports of the
//! last window, counted per class, and per whole window for the
//! rising-rate signal. Memory is bounded: a key keeps at most
//! [`MAX_KEPT_REPORTS`] reports, and only those of the last window.
//!
//! Windows follow the monotonic clock ([`Now::mono`]), so a wall clock set
//! back or forward neither keeps old reports in the window nor drops new
//! ones.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::config::alerts::DetectSettings;
use crate::keyset::KeySetState;

/// Most reports kept per key for the sliding window.
pub const MAX_KEPT_REPORTS: usize = 10_000;

/// The time of a call, on both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// The wall clock: compared with key timestamps, written into alerts.
    pub wall: SystemTime,
    /// The monotonic clock: windows, buckets, repeat and resolve timers.
    pub mono: Instant,
}

/// What the reported version is to the key now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    /// The current primary.
    Primary,
    /// The current fallback.
    Fallback,
    /// A version the key no longer serves (a client missed a rotation).
    Stale,
    /// A version the key never had.
    Unknown,
}

impl Classification {
    /// For the audit, metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Primary => "primary",
            Classification::Fallback => "fallback",
            Classification::Stale => "stale",
            Classification::Unknown => "unknown",
        }
    }

    /// Classifies `version` against `state`.
    pub fn of(state: &KeySetState, version: u64) -> Classification {
        if state.primary.number == version {
            Classification::Primary
        } else if state.fallback.as_ref().is_some_and(|f| f.number == version) {
            Classification::Fallback
        } else if version != 0 && version <= state.max_version() {
            Classification::Stale
        } else {
            Classification::Unknown
        }
    }

    /// The index of this class in [`KeyReports`]' counts.
    fn index(self) -> usize {
        match self {
            Classification::Primary => 0,
            Classification::Fallback => 1,
            Classification::Stale => 2,
            Classification::Unknown => 3,
        }
    }
}

/// One accepted report, as the detectors keep it.
#[derive(Clone, Debug)]
pub struct Report {
    /// When it arrived, on the monotonic clock.
    pub at: Instant,
    /// Its version, classified.
    pub class: Classification,
    /// The version the client used.
    pub version: u64,
    /// The HTTP status the provider answered.
    pub status_code: u32,
    /// Who reported (`uid 1001 (pid 42, /usr/bin/worker)`).
    pub caller: String,
    /// The service name the client gave.
    pub service: String,
}

/// One key's reports over the window.
#[derive(Default)]
pub(super) struct KeyReports {
    /// The reports of the last window, oldest first.
    pub(super) recent: VecDeque<Report>,
    /// How many of `recent` are of each class ([`Classification::index`]).
    counts: [u64; 4],
    /// Reports per whole window (index = time since the detectors' monotonic
    /// anchor / W), last few only.
    pub(super) buckets: VecDeque<(u64, u64)>,
}

impl KeyReports {
    /// Adds `report`, counted in its whole window; the oldest report goes
    /// when [`MAX_KEPT_REPORTS`] are kept.
    pub(super) fn push(&mut self, report: Report, anchor: Instant, settings: &DetectSettings) {
        let bucket = bucket_of(anchor, report.at, settings.window);
        match self.buckets.back_mut() {
            Some((b, n)) if *b == bucket => *n += 1,
            _ => {
                self.buckets.push_back((bucket, 1));
                while self.buckets.len() > settings.rising_windows as usize + 2 {
                    self.buckets.pop_front();
                }
            }
        }
        if self.recent.len() == MAX_KEPT_REPORTS {
            if let Some(old) = self.recent.pop_front() {
                self.counts[old.class.index()] -= 1;
            }
        }
        self.counts[report.class.index()] += 1;
        self.recent.push_back(report);
    }

    /// Drops the reports older than `window` at `now`, and the whole-window
    /// counts too old to matter.
    pub(super) fn prune(&mut self, anchor: Instant, now: Instant, window: Duration) {
        while self
            .recent
            .front()
            .is_some_and(|rep| now.saturating_duration_since(rep.at) >= window)
        {
            if let Some(old) = self.recent.pop_front() {
                self.counts[old.class.index()] -= 1;
            }
        }
        // Buckets older than the rising-rate look-back are useless; a bucket
        // more than one window behind the current one means the rate fell.
        let current = bucket_of(anchor, now, window);
        while self
            .buckets
            .front()
            .is_some_and(|(b, _)| current.saturating_sub(*b) > 64)
        {
            self.buckets.pop_front();
        }
    }

    /// Nothing left to remember.
    pub(super) fn is_empty(&self) -> bool {
        self.recent.is_empty() && self.buckets.is_empty()
    }

    /// How many of the window's reports are of class `c`.
    pub(super) fn count(&self, c: Classification) -> u64 {
        self.counts[c.index()]
    }

    /// The counts of the last `rising_windows` whole windows, oldest first,
    /// if they rise and the last reaches `rising_min`.
    pub(super) fn rising_counts(&self, s: &DetectSettings, anchor: Instant, now: Instant) -> Option<Vec<u64>> {
        let k = s.rising_windows.max(2) as u64;
        let current = bucket_of(anchor, now, s.window);
        // Windows without a report count as zero.
        let counts: Vec<u64> = (1..=k)
            .rev()
            .map(|back| {
                let b = current.saturating_sub(back);
                self.buckets.iter().find(|(i, _)| *i == b).map_or(0, |(_, n)| *n)
            })
            .collect();
        let rising = counts.windows(2).all(|w| w[1] > w[0]);
        (rising && *counts.last().unwrap_or(&0) >= s.rising_min).then_some(counts)
    }
}

/// The whole-window index of `at`, counted from `anchor`.
fn bucket_of(anchor: Instant, at: Instant, window: Duration) -> u64 {
    let ms = at.saturating_duration_since(anchor).as_millis();
    (ms / window.as_millis().max(1)) as u64
}
