//! The detectors and the life of an alert. Pure: every call takes the time,
//! so tests drive hours of history in microseconds.
//!
//! Two clocks ([`Now`]): everything measured between two moments of this
//! process (the windows of the counting signals, their per-window buckets,
//! the repeat interval and the resolve hold) uses the monotonic clock, so a
//! wall clock set back or forward neither keeps old reports in the window
//! nor drops new ones. Only what is compared with real timestamps (a key's
//! `expires_at`, `promoted_at`/`created_at`) and the times written into
//! alerts use the wall clock.
//!
//! Inputs:
//! - [`Detectors::report`]: one auth-failure report, already checked and
//!   classified against the key's state ([`Classification`]).
//! - [`Detectors::health`]: one failure of the agent itself (an audit write,
//!   a rejected store reload, a failed rotation step or hook).
//! - [`Detectors::evaluate`]: the current key states, for expiry and
//!   max-age, and the time.
//!
//! Signals, per key (thresholds from [`DetectSettings`], window `W`):
//!
//! | signal | active while |
//! |---|---|
//! | spike | ≥ `spike_threshold` reports against the current primary in the last `W` |
//! | stale_version | any report in the last `W` against a version the key no longer serves (or never had) |
//! | rising_rate | the last `rising_windows` whole windows each had more reports than the one before, the last at least `rising_min` |
//! | fallback_failing | reports against the primary and against the fallback in the last `W` |
//! | expiry_ahead | the primary's `expires_at` is less than `expiry_lead` away (critical once passed) |
//! | max_age_overdue | the primary has served longer than `max_age` |
//! | agent_health | the agent reported a failure of its own in the last `W` |
//!
//! Life of an alert, per (subject, signal): it **opens** (one `firing`
//! notification) when its signal becomes active, is sent again as a
//! **repeat** every `repeat_interval` while the signal stays active, and
//! **resolves** (one `resolved` notification) once the signal has been
//! clear for a whole window. Memory is bounded: a key keeps at most
//! [`MAX_KEPT_REPORTS`] reports, and only those of the last window (plus
//! per-window counts for the rising-rate signal).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use super::{Alert, AlertStatus, DetectSettings, Severity, Signal};
use crate::keyset::KeySetState;
use crate::secret::KeyRef;

/// Most reports kept per key for the sliding window.
pub const MAX_KEPT_REPORTS: usize = 10_000;
/// Most distinct callers or services named in one alert.
const MAX_NAMED: usize = 5;

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
}

/// What an alert is about: a key, or a part of the agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// One key.
    Key(KeyRef),
    /// The agent itself: `audit`, `store`, `config`…
    Agent(&'static str),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Key(k) => write!(f, "{k}"),
            Subject::Agent(part) => write!(f, "agent/{part}"),
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

#[derive(Default)]
struct KeyReports {
    /// The reports of the last window, oldest first.
    recent: VecDeque<Report>,
    /// How many of `recent` are of each class ([`class_index`]).
    counts: [u64; 4],
    /// Reports per whole window (index = time since the detectors' monotonic
    /// anchor / W), last few only.
    buckets: VecDeque<(u64, u64)>,
}

struct Health {
    at: Now,
    severity: Severity,
    message: String,
}

struct Open {
    alert: Alert,
    last_sent: Instant,
    last_active: Instant,
    /// How long the signal must stay clear before the alert resolves.
    hold: Duration,
}

/// What a signal says now.
struct Finding {
    severity: Severity,
    version: Option<u64>,
    service: String,
    summary: String,
    error: String,
    details: BTreeMap<String, String>,
}

/// The detectors' state: recent reports per key, recent health failures,
/// and the open alerts.
pub struct Detectors {
    host: String,
    /// Where whole windows are counted from (rising-rate buckets).
    anchor: Instant,
    reports: HashMap<KeyRef, KeyReports>,
    health: HashMap<Subject, Health>,
    open: BTreeMap<(Subject, Signal), Open>,
}

impl Detectors {
    /// No history, no open alert; alerts name `host` as `agent_host`.
    /// Whole windows (for the rising-rate signal) are counted from `anchor`,
    /// a fixed point of the monotonic clock (the agent's start).
    pub fn new(host: String, anchor: Instant) -> Detectors {
        Detectors {
            host,
            anchor,
            reports: HashMap::new(),
            health: HashMap::new(),
            open: BTreeMap::new(),
        }
    }

    /// Records one report against `key`.
    pub fn report(&mut self, key: &KeyRef, report: Report, settings: &DetectSettings) {
        let entry = self.reports.entry(key.clone()).or_default();
        let bucket = bucket_of(self.anchor, report.at, settings.window);
        match entry.buckets.back_mut() {
            Some((b, n)) if *b == bucket => *n += 1,
            _ => {
                entry.buckets.push_back((bucket, 1));
                while entry.buckets.len() > settings.rising_windows as usize + 2 {
                    entry.buckets.pop_front();
                }
            }
        }
        if entry.recent.len() == MAX_KEPT_REPORTS {
            if let Some(old) = entry.recent.pop_front() {
                entry.counts[class_index(old.class)] -= 1;
            }
        }
        entry.counts[class_index(report.class)] += 1;
        entry.recent.push_back(report);
    }

    /// Records a failure of the agent itself about `subject`; it is active
    /// for a window (`window`, on the monotonic clock) after its last
    /// occurrence.
    pub fn health(&mut self, subject: Subject, at: Now, severity: Severity, message: String) {
        self.health.insert(subject, Health { at, severity, message });
    }

    /// Forgets the failure about `subject`, whose cause is gone: its
    /// alert resolves at the next evaluation instead of a window later.
    pub fn clear_health(&mut self, subject: &Subject) {
        self.health.remove(subject);
    }

    /// The open alerts, as last sent, oldest first.
    pub fn open_alert_list(&self) -> Vec<Alert> {
        let mut out: Vec<Alert> = self.open.values().map(|o| o.alert.clone()).collect();
        out.sort_by_key(|a| a.opened_at);
        out
    }

    /// The open alerts: (signal, severity) of each.
    pub fn open_alerts(&self) -> Vec<(Signal, Severity)> {
        self.open.values().map(|o| (o.alert.signal, o.alert.severity)).collect()
    }

    /// [`Detectors::evaluate`] over every key of the store (`all`), skipping
    /// without allocating the keys that cannot have a signal: no recent
    /// report, no open alert, no expiry and no max age. This is the timed
    /// evaluation; it runs every second over every key.
    pub fn evaluate_all(
        &mut self,
        now: Now,
        all: &[std::sync::Arc<KeySetState>],
        settings_for: impl Fn(&KeyRef) -> DetectSettings,
        repeat_interval: Duration,
        health_window: Duration,
    ) -> Vec<Alert> {
        let open_keys: std::collections::HashSet<KeyRef> = self
            .open
            .keys()
            .filter_map(|(subject, _)| match subject {
                Subject::Key(k) => Some(k.clone()),
                Subject::Agent(_) => None,
            })
            .collect();
        let wanted: Vec<(&KeySetState, DetectSettings)> = all
            .iter()
            .filter_map(|state| {
                let settings = settings_for(&state.key);
                let interesting = state.primary.expires_at.is_some()
                    || settings.max_age.is_some()
                    || self.reports.contains_key(&state.key)
                    || open_keys.contains(&state.key);
                interesting.then_some((state.as_ref(), settings))
            })
            .collect();
        // Keys left out have no alert open, so `complete` only resolves the
        // alerts of keys that are gone.
        self.evaluate(now, wanted, true, repeat_interval, health_window)
    }

    /// Evaluates every signal at `now` and returns the notifications due:
    /// openings, repeats and resolutions. `keys` are the current states of
    /// the keys to check (all keys, or the one just reported against), each
    /// with its settings. Keys not in `keys` keep their alerts as they are,
    /// unless `complete` says `keys` is every key (then alerts of keys that
    /// are gone resolve).
    pub fn evaluate<'a>(
        &mut self,
        now: Now,
        keys: impl IntoIterator<Item = (&'a KeySetState, DetectSettings)>,
        complete: bool,
        repeat_interval: Duration,
        health_window: Duration,
    ) -> Vec<Alert> {
        // Which signals are active is decided from counts; what an alert
        // says (callers, services, statuses) is built only when a
        // notification is due, so that a flood of reports against an open
        // alert costs little.
        let states: Vec<(&KeySetState, DetectSettings)> = keys.into_iter().collect();
        let mut found: Vec<(Subject, Signal, Severity, Duration, Option<usize>)> = Vec::new();
        let checked: std::collections::HashSet<&KeyRef> = states.iter().map(|(s, _)| &s.key).collect();
        for (i, (state, settings)) in states.iter().enumerate() {
            if let Some(r) = self.reports.get_mut(&state.key) {
                prune(r, self.anchor, now.mono, settings.window);
            }
            let reports = self.reports.get(&state.key);
            for (signal, severity) in key_signals(state, reports, settings, self.anchor, now) {
                found.push((
                    Subject::Key(state.key.clone()),
                    signal,
                    severity,
                    settings.window,
                    Some(i),
                ));
            }
            if reports.is_some_and(|r| r.recent.is_empty() && r.buckets.is_empty()) {
                self.reports.remove(&state.key);
            }
        }
        if complete {
            self.reports.retain(|k, _| checked.contains(k));
        }
        self.health
            .retain(|_, h| now.mono.saturating_duration_since(h.at.mono) < health_window);
        for (subject, h) in &self.health {
            found.push((subject.clone(), Signal::AgentHealth, h.severity, health_window, None));
        }

        let mut out = Vec::new();
        let mut active: BTreeSet<(Subject, Signal)> = BTreeSet::new();
        for (subject, signal, severity, window, source) in found {
            let hold = if signal == Signal::AgentHealth {
                Duration::ZERO
            } else {
                window
            };
            active.insert((subject.clone(), signal));
            let key = (subject.clone(), signal);
            let due = match self.open.get_mut(&key) {
                None => true,
                Some(open) => {
                    open.last_active = now.mono;
                    open.hold = hold;
                    // A change of severity (a key that expired) is sent at
                    // once, as a repeat.
                    open.alert.severity != severity
                        || now.mono.saturating_duration_since(open.last_sent) >= repeat_interval
                }
            };
            if !due {
                continue;
            }
            let finding = match source {
                Some(i) => {
                    let (state, settings) = &states[i];
                    key_finding(signal, state, self.reports.get(&state.key), settings, self.anchor, now)
                }
                None => self.health.get(&subject).map(|h| health_finding(&subject, h)),
            };
            let Some(finding) = finding else { continue };
            match self.open.get_mut(&key) {
                None => {
                    let alert = make_alert(&self.host, &subject, signal, finding, now.wall, now.wall);
                    out.push(alert.clone());
                    self.open.insert(
                        key,
                        Open {
                            alert,
                            last_sent: now.mono,
                            last_active: now.mono,
                            hold,
                        },
                    );
                }
                Some(open) => {
                    let mut alert = make_alert(&self.host, &subject, signal, finding, open.alert.opened_at, now.wall);
                    alert.repeat = open.alert.repeat + 1;
                    alert.status = AlertStatus::Repeat;
                    open.last_sent = now.mono;
                    out.push(alert.clone());
                    open.alert = alert;
                }
            }
        }
        // Resolve what is clear: among the subjects evaluated now (or every
        // subject when `complete`), and agent health always.
        let mut resolved = Vec::new();
        for (key, open) in &self.open {
            if active.contains(key) {
                continue;
            }
            let evaluated = match &key.0 {
                Subject::Key(k) => complete || checked.contains(k),
                Subject::Agent(_) => true,
            };
            if !evaluated {
                continue;
            }
            let gone = matches!(&key.0, Subject::Key(k) if !checked.contains(k));
            if gone || now.mono.saturating_duration_since(open.last_active) >= open.hold {
                resolved.push(key.clone());
            }
        }
        for key in resolved {
            if let Some(open) = self.open.remove(&key) {
                let mut alert = open.alert;
                alert.status = AlertStatus::Resolved;
                alert.timestamp = now.wall;
                alert.summary = format!("resolved: {}", alert.summary);
                out.push(alert);
            }
        }
        out
    }
}

fn make_alert(
    host: &str,
    subject: &Subject,
    signal: Signal,
    f: Finding,
    opened_at: SystemTime,
    now: SystemTime,
) -> Alert {
    let key = match subject {
        Subject::Key(k) => Some(k.clone()),
        Subject::Agent(_) => None,
    };
    Alert {
        dedup_key: format!("keyward/{host}/{subject}/{signal}"),
        signal,
        severity: f.severity,
        status: AlertStatus::Firing,
        environment: key.as_ref().map(|k| k.env().to_owned()),
        key,
        version: f.version,
        service: f.service,
        summary: f.summary,
        error: f.error,
        details: f.details,
        timestamp: now,
        opened_at,
        repeat: 0,
        agent_host: host.to_owned(),
    }
}

/// The whole-window index of `at`, counted from `anchor`.
fn bucket_of(anchor: Instant, at: Instant, window: Duration) -> u64 {
    let ms = at.saturating_duration_since(anchor).as_millis();
    (ms / window.as_millis().max(1)) as u64
}

fn class_index(c: Classification) -> usize {
    match c {
        Classification::Primary => 0,
        Classification::Fallback => 1,
        Classification::Stale => 2,
        Classification::Unknown => 3,
    }
}

fn prune(r: &mut KeyReports, anchor: Instant, now: Instant, window: Duration) {
    while r
        .recent
        .front()
        .is_some_and(|rep| now.saturating_duration_since(rep.at) >= window)
    {
        if let Some(old) = r.recent.pop_front() {
            r.counts[class_index(old.class)] -= 1;
        }
    }
    // Buckets older than the rising-rate look-back are useless; a bucket
    // more than one window behind the current one means the rate fell.
    let current = bucket_of(anchor, now, window);
    while r.buckets.front().is_some_and(|(b, _)| current.saturating_sub(*b) > 64) {
        r.buckets.pop_front();
    }
}

/// The two largest units: `90d`, `6d 23h`, `2h 5m`, `1m`, `30s`.
fn human(d: Duration) -> String {
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
fn named<'a>(values: impl Iterator<Item = &'a str>) -> String {
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

fn statuses<'a>(reports: impl Iterator<Item = &'a Report>) -> String {
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

/// The signals active for one key and their severity, from counts only.
fn key_signals(
    state: &KeySetState,
    reports: Option<&KeyReports>,
    s: &DetectSettings,
    anchor: Instant,
    now: Now,
) -> Vec<(Signal, Severity)> {
    let mut out = Vec::new();
    let counts = reports.map_or([0; 4], |r| r.counts);
    let count = |c: Classification| counts[class_index(c)];
    let primary = count(Classification::Primary);
    if primary >= s.spike_threshold {
        out.push((Signal::Spike, Severity::Critical));
    }
    if primary > 0 && count(Classification::Fallback) > 0 {
        out.push((Signal::FallbackFailing, Severity::Critical));
    }
    if count(Classification::Stale) + count(Classification::Unknown) > 0 {
        out.push((Signal::StaleVersion, Severity::Warning));
    }
    if reports.is_some_and(|r| rising_counts(r, s, anchor, now.mono).is_some()) {
        out.push((Signal::RisingRate, Severity::Warning));
    }
    if let Some(expires) = state.primary.expires_at {
        match expires.duration_since(now.wall) {
            Err(_) => out.push((Signal::ExpiryAhead, Severity::Critical)),
            Ok(left) if left < s.expiry_lead => out.push((Signal::ExpiryAhead, Severity::Warning)),
            Ok(_) => {}
        }
    }
    if let Some(max_age) = s.max_age {
        let since = state.primary.promoted_at.unwrap_or(state.primary.created_at);
        if now.wall.duration_since(since).unwrap_or_default() > max_age {
            out.push((Signal::MaxAgeOverdue, Severity::Warning));
        }
    }
    out
}

/// The counts of the last `rising_windows` whole windows, oldest first, if
/// they rise and the last reaches `rising_min`.
fn rising_counts(r: &KeyReports, s: &DetectSettings, anchor: Instant, now: Instant) -> Option<Vec<u64>> {
    let k = s.rising_windows.max(2) as u64;
    let current = bucket_of(anchor, now, s.window);
    // Windows without a report count as zero.
    let counts: Vec<u64> = (1..=k)
        .rev()
        .map(|back| {
            let b = current.saturating_sub(back);
            r.buckets.iter().find(|(i, _)| *i == b).map_or(0, |(_, n)| *n)
        })
        .collect();
    let rising = counts.windows(2).all(|w| w[1] > w[0]);
    (rising && *counts.last().unwrap_or(&0) >= s.rising_min).then_some(counts)
}

/// What one active signal says: scans the window's reports.
fn key_finding(
    signal: Signal,
    state: &KeySetState,
    reports: Option<&KeyReports>,
    s: &DetectSettings,
    anchor: Instant,
    now: Now,
) -> Option<Finding> {
    key_findings(state, reports, s, anchor, now)
        .into_iter()
        .find(|(g, _)| *g == signal)
        .map(|(_, f)| f)
}

fn key_findings(
    state: &KeySetState,
    reports: Option<&KeyReports>,
    s: &DetectSettings,
    anchor: Instant,
    now: Now,
) -> Vec<(Signal, Finding)> {
    let key = &state.key;
    let mut out = Vec::new();
    let window = human(s.window);
    let recent: Vec<&Report> = reports.map(|r| r.recent.iter().collect()).unwrap_or_default();
    let of = |c: Classification| recent.iter().copied().filter(move |r| r.class == c);
    let primary: Vec<&Report> = of(Classification::Primary).collect();
    let fallback: Vec<&Report> = of(Classification::Fallback).collect();
    let stale: Vec<&Report> = recent
        .iter()
        .copied()
        .filter(|r| matches!(r.class, Classification::Stale | Classification::Unknown))
        .collect();
    let services = |rs: &[&Report]| named(rs.iter().map(|r| r.service.as_str()));
    let base = |count: usize| {
        let mut d = BTreeMap::new();
        d.insert("reports".to_owned(), count.to_string());
        d.insert("window".to_owned(), window.clone());
        d.insert("primary_version".to_owned(), state.primary.number.to_string());
        d.insert("primary_fingerprint".to_owned(), state.primary.fingerprint.clone());
        if let Some(f) = &state.fallback {
            d.insert("fallback_version".to_owned(), f.number.to_string());
        }
        d
    };

    if primary.len() as u64 >= s.spike_threshold {
        let mut details = base(primary.len());
        details.insert("threshold".to_owned(), s.spike_threshold.to_string());
        details.insert("callers".to_owned(), named(primary.iter().map(|r| r.caller.as_str())));
        out.push((
            Signal::Spike,
            Finding {
                severity: Severity::Critical,
                version: Some(state.primary.number),
                service: services(&primary),
                summary: format!(
                    "{key}: {} auth failures against the current primary (v{}) in the last {window}: the key is probably revoked or expired at the provider; rotate it with `keyward rotate {key}`",
                    primary.len(),
                    state.primary.number
                ),
                error: format!("{} on primary v{}", statuses(primary.iter().copied()), state.primary.number),
                details,
            },
        ));
    }

    if !primary.is_empty() && !fallback.is_empty() {
        let fb = fallback[0].version;
        let mut details = base(primary.len() + fallback.len());
        details.insert("primary_reports".to_owned(), primary.len().to_string());
        details.insert("fallback_reports".to_owned(), fallback.len().to_string());
        let both: Vec<&Report> = primary.iter().chain(fallback.iter()).copied().collect();
        out.push((
            Signal::FallbackFailing,
            Finding {
                severity: Severity::Critical,
                version: Some(fb),
                service: services(&both),
                summary: format!(
                    "{key}: both keys are refused: {} failures on the primary (v{}) and {} on the fallback (v{fb}) in the last {window}: callers have no working key; check the provider account, then put a fresh key with `keyward rotate {key}`",
                    primary.len(),
                    state.primary.number,
                    fallback.len()
                ),
                error: format!("{} on primary and fallback", statuses(both.iter().copied())),
                details,
            },
        ));
    }

    if !stale.is_empty() {
        let newest = stale.last().copied().expect("non-empty");
        let mut details = base(stale.len());
        details.insert("callers".to_owned(), named(stale.iter().map(|r| r.caller.as_str())));
        let versions: BTreeSet<u64> = stale.iter().map(|r| r.version).collect();
        details.insert(
            "versions".to_owned(),
            versions.iter().map(|v| format!("v{v}")).collect::<Vec<_>>().join(", "),
        );
        out.push((
            Signal::StaleVersion,
            Finding {
                severity: Severity::Warning,
                version: Some(newest.version),
                service: services(&stale),
                summary: format!(
                    "{key}: {} ({}) still uses v{}, which the key no longer serves (primary is v{}): it missed a rotation; make it fetch or watch the key again (restart it if it caches the secret)",
                    newest.caller,
                    newest.service,
                    newest.version,
                    state.primary.number
                ),
                error: format!("{} on v{} (not served)", statuses(stale.iter().copied()), newest.version),
                details,
            },
        ));
    }

    if let Some(counts) = reports.and_then(|r| rising_counts(r, s, anchor, now.mono)) {
        let k = counts.len();
        let mut details = base(recent.len());
        details.insert(
            "counts_per_window".to_owned(),
            counts.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        );
        out.push((
            Signal::RisingRate,
            Finding {
                severity: Severity::Warning,
                version: None,
                service: services(&recent),
                summary: format!(
                    "{key}: auth failures rose for {k} windows of {window} in a row ({}): look for rate limiting or misuse at the provider",
                    details["counts_per_window"]
                ),
                error: format!("failure rate rising: {} per {window}", details["counts_per_window"]),
                details,
            },
        ));
    }

    if let Some(expires) = state.primary.expires_at {
        let left = expires.duration_since(now.wall);
        let expired = left.is_err();
        if expired || left.as_ref().is_ok_and(|l| *l < s.expiry_lead) {
            let when = humantime::format_rfc3339_seconds(expires).to_string();
            let mut details = base(recent.len());
            details.insert("expires_at".to_owned(), when.clone());
            let (severity, summary, error) = if expired {
                (
                    Severity::Critical,
                    format!(
                        "{key}: the primary (v{}) expired at {when}: rotate it now with `keyward rotate {key}`",
                        state.primary.number
                    ),
                    format!("primary v{} expired", state.primary.number),
                )
            } else {
                let left = human(left.unwrap_or_default());
                (
                    Severity::Warning,
                    format!(
                        "{key}: the primary (v{}) expires in {left} (at {when}): rotate it before then with `keyward rotate {key}`",
                        state.primary.number
                    ),
                    format!("primary v{} expires in {left}", state.primary.number),
                )
            };
            out.push((
                Signal::ExpiryAhead,
                Finding {
                    severity,
                    version: Some(state.primary.number),
                    service: "keywardd".to_owned(),
                    summary,
                    error,
                    details,
                },
            ));
        }
    }

    if let Some(max_age) = s.max_age {
        let since = state.primary.promoted_at.unwrap_or(state.primary.created_at);
        let age = now.wall.duration_since(since).unwrap_or_default();
        if age > max_age {
            let mut details = base(recent.len());
            details.insert("age".to_owned(), human(age));
            details.insert("max_age".to_owned(), human(max_age));
            out.push((
                Signal::MaxAgeOverdue,
                Finding {
                    severity: Severity::Warning,
                    version: Some(state.primary.number),
                    service: "keywardd".to_owned(),
                    summary: format!(
                        "{key}: the primary (v{}) has served for {}, longer than the rotation policy's max_age of {}: rotate it with `keyward rotate {key}`",
                        state.primary.number,
                        human(age),
                        human(max_age)
                    ),
                    error: format!("rotation overdue by {}", human(age - max_age)),
                    details,
                },
            ));
        }
    }
    out
}

fn health_finding(subject: &Subject, h: &Health) -> Finding {
    let mut details = BTreeMap::new();
    details.insert(
        "last_failure_at".to_owned(),
        humantime::format_rfc3339_seconds(h.at.wall).to_string(),
    );
    Finding {
        severity: h.severity,
        version: None,
        service: "keywardd".to_owned(),
        summary: format!("{subject}: the agent is failing: {}", h.message),
        error: h.message.clone(),
        details,
    }
}

#[cfg(test)]
mod tests;
