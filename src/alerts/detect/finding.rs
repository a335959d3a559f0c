//! What an active signal says ([`Finding`]), and what every key signal
//! reads to say it ([`KeyView`]): the key's state, its window of reports,
//! its thresholds and the time. Also the wording shared by the signals.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::window::{Classification, KeyReports, Now, Report};
use crate::config::alerts::{DetectSettings, Severity};
use crate::keyset::KeySetState;

/// Most distinct callers or services named in one alert.
const MAX_NAMED: usize = 5;

/// What a signal says now: the alert's content, without its life.
pub(super) struct Finding {
    pub(super) severity: Severity,
    pub(super) version: Option<u64>,
    pub(super) service: String,
    pub(super) summary: String,
    pub(super) error: String,
    pub(super) details: BTreeMap<String, String>,
}

/// One key as its signals see it at one evaluation.
pub(super) struct KeyView<'a> {
    /// The key's current state.
    pub(super) state: &'a KeySetState,
    /// Its reports over the window (pruned), if it has any.
    pub(super) reports: Option<&'a KeyReports>,
    /// Its thresholds.
    pub(super) settings: &'a DetectSettings,
    /// Where whole windows are counted from.
    pub(super) anchor: Instant,
    /// The time of the evaluation.
    pub(super) now: Now,
}

impl KeyView<'_> {
    /// How many of the window's reports are of class `c`.
    pub(super) fn count(&self, c: Classification) -> u64 {
        self.reports.map_or(0, |r| r.count(c))
    }

    /// The window's reports, oldest first.
    pub(super) fn recent(&self) -> Vec<&Report> {
        self.reports.map(|r| r.recent.iter().collect()).unwrap_or_default()
    }

    /// The window's reports of the classes `keep` accepts, oldest first.
    pub(super) fn of(&self, keep: impl Fn(Classification) -> bool) -> Vec<&Report> {
        self.recent().into_iter().filter(|r| keep(r.class)).collect()
    }

    /// The counts per whole window, if they rise (see
    /// [`KeyReports::rising_counts`]).
    pub(super) fn rising_counts(&self) -> Option<Vec<u64>> {
        (self.reports).and_then(|r| r.rising_counts(self.settings, self.anchor, self.now.mono))
    }

    /// The window, for messages: `1m`.
    pub(super) fn window(&self) -> String {
        human(self.settings.window)
    }

    /// The details every key alert carries: the number of reports it is
    /// about, the window, the primary and the fallback.
    pub(super) fn details(&self, reports: usize) -> BTreeMap<String, String> {
        let state = self.state;
        let mut d = BTreeMap::new();
        d.insert("reports".to_owned(), reports.to_string());
        d.insert("window".to_owned(), self.window());
        d.insert("primary_version".to_owned(), state.primary.number.to_string());
        d.insert("primary_fingerprint".to_owned(), state.primary.fingerprint.clone());
        if let Some(f) = &state.fallback {
            d.insert("fallback_version".to_owned(), f.number.to_string());
        }
        d
    }
}

/// The services that sent `reports`, named up to a limit.
pub(super) fn services(reports: &[&Report]) -> String {
    named(reports.iter().map(|r| r.service.as_str()))
}

/// The two largest units: `90d`, `6d 23h`, `2h 5m`, `1m`, `30s`.
pub(super) fn human(d: Duration) -> String {
    let s = d.as_secs().max(1);
    let (days, hours, mins, secs) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    let two = |a: u64, ua: &str, b: u64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua} {b}{ub}")
        }
    };
    if days > 0 {
        two(days, "d", hours, "h")
    } else if hours > 0 {
        two(hours, "h", mins, "m")
    } else if mins > 0 {
        two(mins, "m", secs, "s")
    } else {
        format!("{secs}s")
    }
}

/// Up to [`MAX_NAMED`] distinct values, in first-seen order, then `and N more`.
pub(super) fn named<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    let mut more = 0;
    for v in values {
        if seen.contains(&v) {
            continue;
        }
        if seen.len() < MAX_NAMED {
            seen.push(v);
        } else {
            more += 1;
        }
    }
    let mut s = seen.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// The HTTP statuses of `reports`, counted: `HTTP 401 ×3, HTTP 403 ×1`.
pub(super) fn statuses<'a>(reports: impl Iterator<Item = &'a Report>) -> String {
    let mut codes: BTreeMap<u32, u64> = BTreeMap::new();
    for r in reports {
        *codes.entry(r.status_code).or_default() += 1;
    }
    codes
        .iter()
        .map(|(c, n)| format!("HTTP {c} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
