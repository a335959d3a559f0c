//! The open alerts as saved across a restart ([`SavedAlerts`]), and how a
//! starting agent takes them back ([`Detectors::adopt`]).
//!
//! Invariant: an alert open before a restart is the same alert after it.
//! It keeps its dedup key, its opening time and its repeat count, so it is
//! never sent again as `firing`; it is sent as a repeat once
//! `repeat_interval` has passed since it was last sent (before the
//! restart), and it resolves by the usual rule, measured on the wall clock
//! across the time the agent was down:
//!
//! - counting signals (spike, stale_version, rising_rate,
//!   fallback_failing) live on reports held in memory, which a restart
//!   loses: the alert resolves once a window (its hold) has passed since
//!   the signal was last seen active, unless new reports make it active
//!   again first; a window that passed while the agent was down resolves
//!   it at the first evaluation;
//! - expiry_ahead and max_age_overdue are derived from the store alone:
//!   the first evaluation after start tells whether they still hold (a key
//!   replaced or deleted while the agent was down resolves them at once);
//! - agent_health and the rotation jobs' conditions are raised again by
//!   whatever raised them: each gets one window after the start to be, or
//!   it resolves.
//!
//! Times are saved as wall-clock milliseconds since the Unix epoch and
//! turned back into monotonic instants at adoption (an instant before the
//! host booted cannot be made: such a time counts as "now", which only
//! ever delays a repeat or a resolution, never sends a second opening).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Detectors, Now, Open, Subject};
use crate::alerts::{Alert, AlertStatus, Severity, Signal};
use crate::secret::KeyRef;

/// The format this agent writes and reads.
pub const SAVED_FORMAT: u32 = 1;

/// The parts of the agent that raise agent-health alerts
/// ([`Subject::Agent`]); a saved alert about another part is dropped.
pub const AGENT_PARTS: [&str; 7] = [
    "audit",
    "audit_disk",
    "backend",
    "config",
    "rotation",
    "store",
    "alert_state",
];

/// Every open alert, as written to the alert state file.
#[derive(Serialize, Deserialize)]
pub struct SavedAlerts {
    /// [`SAVED_FORMAT`].
    pub format: u32,
    /// The open alerts, oldest first.
    pub alerts: Vec<SavedAlert>,
}

/// What an alert is about, as saved.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SavedSubject {
    /// A key, `ENV/NAME`.
    Key(String),
    /// A part of the agent (one of [`AGENT_PARTS`]).
    Agent(String),
}

/// One open alert: as last sent, and its timers on the wall clock.
#[derive(Serialize, Deserialize)]
pub struct SavedAlert {
    subject: SavedSubject,
    signal: Signal,
    severity: Severity,
    dedup_key: String,
    version: Option<u64>,
    service: String,
    summary: String,
    error: String,
    #[serde(default)]
    details: BTreeMap<String, String>,
    agent_host: String,
    repeat: u32,
    opened_at_ms: u64,
    sent_at_ms: u64,
    last_active_ms: u64,
    hold_ms: u64,
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The wall-clock time of `at`, a monotonic instant before `now`.
fn wall_of(now: Now, at: Instant) -> SystemTime {
    now.wall - now.mono.saturating_duration_since(at)
}

impl SavedSubject {
    fn of(subject: &Subject) -> SavedSubject {
        match subject {
            Subject::Key(k) => SavedSubject::Key(k.to_string()),
            Subject::Agent(part) => SavedSubject::Agent((*part).to_owned()),
        }
    }

    fn subject(&self) -> Option<Subject> {
        match self {
            SavedSubject::Key(k) => k.parse::<KeyRef>().ok().map(Subject::Key),
            SavedSubject::Agent(p) => AGENT_PARTS.iter().find(|a| **a == p).map(|a| Subject::Agent(a)),
        }
    }
}

impl Detectors {
    /// The open alerts, to be saved.
    pub fn snapshot(&self, now: Now) -> SavedAlerts {
        let mut alerts: Vec<SavedAlert> = self
            .open
            .iter()
            .map(|((subject, signal), o)| SavedAlert {
                subject: SavedSubject::of(subject),
                signal: *signal,
                severity: o.alert.severity,
                dedup_key: o.alert.dedup_key.clone(),
                version: o.alert.version,
                service: o.alert.service.clone(),
                summary: o.alert.summary.clone(),
                error: o.alert.error.clone(),
                details: o.alert.details.clone(),
                agent_host: o.alert.agent_host.clone(),
                repeat: o.alert.repeat,
                opened_at_ms: to_ms(o.alert.opened_at),
                sent_at_ms: to_ms(wall_of(now, o.last_sent)),
                last_active_ms: to_ms(wall_of(now, o.last_active)),
                hold_ms: o.hold.as_millis() as u64,
            })
            .collect();
        alerts.sort_by_key(|a| a.opened_at_ms);
        SavedAlerts {
            format: SAVED_FORMAT,
            alerts,
        }
    }

    /// Takes back the alerts saved before a restart, at `now` (see the
    /// module docs); `window` is the agent-health window. Returns how many
    /// were adopted and the descriptions of those dropped (an unknown
    /// subject, or one open already).
    pub fn adopt(&mut self, saved: SavedAlerts, now: Now, window: Duration) -> (usize, Vec<String>) {
        let mut adopted = 0;
        let mut dropped = Vec::new();
        for a in saved.alerts {
            let Some(subject) = a.subject.subject() else {
                dropped.push(format!("{} (unknown subject)", a.dedup_key));
                continue;
            };
            let key = (subject.clone(), a.signal);
            if self.open.contains_key(&key) {
                dropped.push(format!("{} (open already)", a.dedup_key));
                continue;
            }
            let since = |ms: u64| now.wall.duration_since(from_ms(ms)).unwrap_or_default();
            let back = |d: Duration| now.mono.checked_sub(d).unwrap_or(now.mono);
            let (last_active, hold) = match a.signal {
                Signal::ExpiryAhead | Signal::MaxAgeOverdue => (now.mono, Duration::ZERO),
                Signal::AgentHealth | Signal::NoEvidence | Signal::RotationFailed => (now.mono, window),
                _ => {
                    let hold = Duration::from_millis(a.hold_ms);
                    let idle = since(a.last_active_ms);
                    if idle >= hold {
                        (now.mono, Duration::ZERO)
                    } else {
                        (back(idle), hold)
                    }
                }
            };
            let key_ref = match &subject {
                Subject::Key(k) => Some(k.clone()),
                Subject::Agent(_) => None,
            };
            let alert = Alert {
                dedup_key: a.dedup_key,
                signal: a.signal,
                severity: a.severity,
                status: if a.repeat == 0 {
                    AlertStatus::Firing
                } else {
                    AlertStatus::Repeat
                },
                environment: key_ref.as_ref().map(|k| k.env().to_owned()),
                key: key_ref,
                version: a.version,
                service: a.service,
                summary: a.summary,
                error: a.error,
                details: a.details,
                timestamp: from_ms(a.sent_at_ms),
                opened_at: from_ms(a.opened_at_ms),
                repeat: a.repeat,
                agent_host: a.agent_host,
            };
            self.open.insert(
                key,
                Open {
                    alert,
                    last_sent: back(since(a.sent_at_ms)),
                    last_active,
                    hold,
                },
            );
            adopted += 1;
        }
        (adopted, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An alert saved by one process and adopted by the next keeps its
    /// dedup key (nothing in it is per process) and is not opened again.
    #[test]
    fn an_adopted_alert_keeps_its_dedup_key_and_does_not_open_again() {
        let window = Duration::from_secs(60);
        let now = Now {
            wall: SystemTime::now(),
            mono: Instant::now(),
        };
        let raise = |d: &mut Detectors, at: Now| {
            d.health(Subject::Agent("audit"), at, Severity::Critical, "disk full".to_owned());
            d.evaluate(at, std::iter::empty(), false, Duration::from_secs(3600), window)
        };
        let mut first = Detectors::new("host-a".to_owned(), now.mono);
        let opened = raise(&mut first, now);
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].dedup_key, "keyward/host-a/agent/audit/agent_health");
        let bytes = serde_json::to_vec(&first.snapshot(now)).unwrap();

        let later = Now {
            wall: now.wall + Duration::from_secs(5),
            mono: now.mono + Duration::from_secs(5),
        };
        let mut second = Detectors::new("host-a".to_owned(), later.mono);
        let (adopted, dropped) = second.adopt(serde_json::from_slice(&bytes).unwrap(), later, window);
        assert_eq!((adopted, dropped.len()), (1, 0));
        assert!(raise(&mut second, later).is_empty(), "not sent again as new");
        let list = second.open_alert_list();
        assert_eq!(list[0].dedup_key, opened[0].dedup_key);
        assert_eq!(list[0].opened_at, from_ms(to_ms(opened[0].opened_at)));
    }
}
