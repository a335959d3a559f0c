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
//! | no_evidence, rotation_failed | a rotation job says so ([`Detectors::set_condition`]), until it clears it |
//!
//! Life of an alert, per (subject, signal): it **opens** (one `firing`
//! notification) when its signal becomes active, is sent again as a
//! **repeat** every `repeat_interval` while the signal stays active, and
//! **resolves** (one `resolved` notification) once the signal has been
//! clear for a whole window. Memory is bounded: a key keeps at most
//! [`MAX_KEPT_REPORTS`] reports, and only those of the last window (plus
//! per-window counts for the rising-rate signal).
//!
//! Layout: this file keeps the detectors' state and the life of an alert;
//! `window.rs` the sliding window the counting signals share;
//! `finding.rs` what a signal says and the wording they share; and one
//! file per signal (`spike.rs`, `stale_version.rs`, `rising_rate.rs`,
//! `fallback_failing.rs`, `expiry_ahead.rs`, `max_age_overdue.rs`,
//! `agent_health.rs`) says when it is active and what its alert says;
//! `saved.rs` the open alerts as saved across a restart, and their
//! adoption at start.

mod agent_health;
mod expiry_ahead;
mod fallback_failing;
mod finding;
mod max_age_overdue;
mod rising_rate;
pub mod saved;
mod spike;
mod stale_version;
mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use super::{Alert, AlertStatus, DetectSettings, Severity, Signal};
use crate::keyset::KeySetState;
use crate::secret::KeyRef;
use agent_health::Health;
#[cfg(test)]
use finding::{human, named};
use finding::{Finding, KeyView};
use window::KeyReports;
pub use window::{Classification, Now, Report, MAX_KEPT_REPORTS};

/// One key signal: which it is, whether it is active (from counts only),
/// and what its alert says (built only when a notification is due).
type KeySignal = (
    Signal,
    fn(&KeyView<'_>) -> Option<Severity>,
    fn(&KeyView<'_>) -> Option<Finding>,
);

/// The key signals, in the order they are evaluated.
const KEY_SIGNALS: [KeySignal; 6] = [
    (Signal::Spike, spike::active, spike::finding),
    (
        Signal::FallbackFailing,
        fallback_failing::active,
        fallback_failing::finding,
    ),
    (Signal::StaleVersion, stale_version::active, stale_version::finding),
    (Signal::RisingRate, rising_rate::active, rising_rate::finding),
    (Signal::ExpiryAhead, expiry_ahead::active, expiry_ahead::finding),
    (Signal::MaxAgeOverdue, max_age_overdue::active, max_age_overdue::finding),
];

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

/// An open alert: as last sent, and its timers.
struct Open {
    alert: Alert,
    last_sent: Instant,
    last_active: Instant,
    /// How long the signal must stay clear before the alert resolves.
    hold: Duration,
}

/// A signal found active at one evaluation.
struct Active {
    subject: Subject,
    signal: Signal,
    severity: Severity,
    /// How long the signal must stay clear before its alert resolves.
    hold: Duration,
    /// The index of the key's state, for a key signal.
    source: Option<usize>,
}

/// The detectors' state: recent reports per key, recent health failures,
/// and the open alerts.
pub struct Detectors {
    host: String,
    /// Where whole windows are counted from (rising-rate buckets).
    anchor: Instant,
    reports: HashMap<KeyRef, KeyReports>,
    health: HashMap<Subject, Health>,
    /// Signals that others decide (a rotation job): active from
    /// [`Detectors::set_condition`] to [`Detectors::clear_condition`].
    conditions: BTreeMap<(Subject, Signal), Condition>,
    open: BTreeMap<(Subject, Signal), Open>,
}

/// An active condition: what its alert says.
struct Condition {
    severity: Severity,
    summary: String,
    details: BTreeMap<String, String>,
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
            conditions: BTreeMap::new(),
            open: BTreeMap::new(),
        }
    }

    /// Records one report against `key`.
    pub fn report(&mut self, key: &KeyRef, report: Report, settings: &DetectSettings) {
        let anchor = self.anchor;
        self.reports
            .entry(key.clone())
            .or_default()
            .push(report, anchor, settings);
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

    /// Makes `signal` about `subject` active, saying `summary` (its alert
    /// opens at the next evaluation, and is sent again when the severity
    /// changes or at the repeat interval).
    pub fn set_condition(
        &mut self,
        subject: Subject,
        signal: Signal,
        severity: Severity,
        summary: String,
        details: BTreeMap<String, String>,
    ) {
        self.conditions.insert(
            (subject, signal),
            Condition {
                severity,
                summary,
                details,
            },
        );
    }

    /// Whether `signal` about `subject` is active already with this
    /// severity and summary (setting it again changes nothing).
    pub fn has_condition(&self, subject: &Subject, signal: Signal, severity: Severity, summary: &str) -> bool {
        self.conditions
            .get(&(subject.clone(), signal))
            .is_some_and(|c| c.severity == severity && c.summary == summary)
    }

    /// Evaluates the conditions of `key` alone (no other key's alert
    /// changes): what a job's new condition opens.
    pub fn evaluate_conditions(&mut self, now: Now, key: &KeyRef, repeat_interval: Duration) -> Vec<Alert> {
        let found: Vec<Active> = self
            .conditions
            .iter()
            .filter(|((s, _), _)| *s == Subject::Key(key.clone()))
            .map(|((subject, signal), c)| Active {
                subject: subject.clone(),
                signal: *signal,
                severity: c.severity,
                hold: Duration::ZERO,
                source: None,
            })
            .collect();
        found
            .into_iter()
            .filter_map(|f| self.notify(f, now, &[], repeat_interval))
            .collect()
    }

    /// Ends `signal` about `subject`: its alert resolves at the next
    /// evaluation.
    pub fn clear_condition(&mut self, subject: &Subject, signal: Signal) {
        self.conditions.remove(&(subject.clone(), signal));
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
        let open_keys: HashSet<KeyRef> = self
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
                    || open_keys.contains(&state.key)
                    || self
                        .conditions
                        .keys()
                        .any(|(s, _)| *s == Subject::Key(state.key.clone()));
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
        let checked: HashSet<&KeyRef> = states.iter().map(|(s, _)| &s.key).collect();
        let found = self.active_signals(now, &states, &checked, complete, health_window);

        let mut out = Vec::new();
        let mut active: BTreeSet<(Subject, Signal)> = BTreeSet::new();
        for found in found {
            active.insert((found.subject.clone(), found.signal));
            out.extend(self.notify(found, now, &states, repeat_interval));
        }
        self.resolve(now, &active, &checked, complete, &mut out);
        out
    }

    /// The signals active at `now`: those of the keys in `states` (whose
    /// windows are pruned on the way) and the agent's recent failures.
    /// Forgets the reports of keys with nothing left in their window, and
    /// (when `complete`) of keys that are gone.
    fn active_signals(
        &mut self,
        now: Now,
        states: &[(&KeySetState, DetectSettings)],
        checked: &HashSet<&KeyRef>,
        complete: bool,
        health_window: Duration,
    ) -> Vec<Active> {
        let mut found = Vec::new();
        for (i, (state, settings)) in states.iter().enumerate() {
            if let Some(r) = self.reports.get_mut(&state.key) {
                r.prune(self.anchor, now.mono, settings.window);
            }
            let view = self.view(state, settings, now);
            for (signal, active, _) in KEY_SIGNALS {
                if let Some(severity) = active(&view) {
                    found.push(Active {
                        subject: Subject::Key(state.key.clone()),
                        signal,
                        severity,
                        hold: settings.window,
                        source: Some(i),
                    });
                }
            }
            if view.reports.is_some_and(KeyReports::is_empty) {
                self.reports.remove(&state.key);
            }
        }
        if complete {
            self.reports.retain(|k, _| checked.contains(k));
        }
        self.health
            .retain(|_, h| now.mono.saturating_duration_since(h.at.mono) < health_window);
        for (subject, h) in &self.health {
            found.push(Active {
                subject: subject.clone(),
                signal: Signal::AgentHealth,
                severity: h.severity,
                // An agent failure resolves as soon as it is clear.
                hold: Duration::ZERO,
                source: None,
            });
        }
        for ((subject, signal), c) in &self.conditions {
            // A key's condition is evaluated with its key (a key that is
            // gone resolves it).
            if let Subject::Key(k) = subject {
                if !checked.contains(k) {
                    continue;
                }
            }
            found.push(Active {
                subject: subject.clone(),
                signal: *signal,
                severity: c.severity,
                hold: Duration::ZERO,
                source: None,
            });
        }
        found
    }

    /// `state` as its signals see it at `now`.
    fn view<'a>(&'a self, state: &'a KeySetState, settings: &'a DetectSettings, now: Now) -> KeyView<'a> {
        KeyView {
            state,
            reports: self.reports.get(&state.key),
            settings,
            anchor: self.anchor,
            now,
        }
    }

    /// The notification `found` is due, if any: its opening, or a repeat
    /// once `repeat_interval` has passed (or its severity changed).
    fn notify(
        &mut self,
        found: Active,
        now: Now,
        states: &[(&KeySetState, DetectSettings)],
        repeat_interval: Duration,
    ) -> Option<Alert> {
        let Active {
            subject,
            signal,
            severity,
            hold,
            source,
        } = found;
        let key = (subject.clone(), signal);
        let due = match self.open.get_mut(&key) {
            None => true,
            Some(open) => {
                open.last_active = now.mono;
                open.hold = hold;
                // A change of severity (a key that expired) is sent at
                // once, as a repeat.
                open.alert.severity != severity || now.mono.saturating_duration_since(open.last_sent) >= repeat_interval
            }
        };
        if !due {
            return None;
        }
        let finding = match source {
            Some(i) => {
                let (state, settings) = &states[i];
                let finding = KEY_SIGNALS.iter().find(|(s, _, _)| *s == signal).map(|(_, _, f)| f);
                finding.and_then(|f| f(&self.view(state, settings, now)))
            }
            None if signal == Signal::AgentHealth => {
                self.health.get(&subject).map(|h| agent_health::finding(&subject, h))
            }
            None => self.conditions.get(&(subject.clone(), signal)).map(|c| Finding {
                severity: c.severity,
                version: None,
                service: "keywardd".to_owned(),
                summary: format!("{subject}: {}", c.summary),
                error: c.summary.clone(),
                details: c.details.clone(),
            }),
        }?;
        match self.open.get_mut(&key) {
            None => {
                let alert = make_alert(&self.host, &subject, signal, finding, now.wall, now.wall);
                self.open.insert(
                    key,
                    Open {
                        alert: alert.clone(),
                        last_sent: now.mono,
                        last_active: now.mono,
                        hold,
                    },
                );
                Some(alert)
            }
            Some(open) => {
                let mut alert = make_alert(&self.host, &subject, signal, finding, open.alert.opened_at, now.wall);
                alert.repeat = open.alert.repeat + 1;
                alert.status = AlertStatus::Repeat;
                open.last_sent = now.mono;
                open.alert = alert.clone();
                Some(alert)
            }
        }
    }

    /// Resolves what is clear: among the subjects evaluated now (or every
    /// subject when `complete`), and agent health always. An alert resolves
    /// once its signal has been clear for its hold, or at once when its key
    /// is gone.
    fn resolve(
        &mut self,
        now: Now,
        active: &BTreeSet<(Subject, Signal)>,
        checked: &HashSet<&KeyRef>,
        complete: bool,
        out: &mut Vec<Alert>,
    ) {
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

#[cfg(test)]
mod tests;
