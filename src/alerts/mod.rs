//! Alerts: detectors turn auth-failure reports, key expiry and the agent's
//! own failures into alerts, and sinks deliver them to humans.
//!
//! - [`detect`]: the detectors (pure, time passed in) and the open / repeat
//!   / resolve life of each alert, per (subject, signal).
//! - [`sinks`]: the deliveries (JSON webhook, Slack, PagerDuty Events v2,
//!   email over SMTP, an exec hook, the log) and the dispatcher: one bounded
//!   queue and one worker per sink, retries with backoff; a slow or hanging
//!   sink never slows the agent, and what is dropped is counted and logged.
//!
//! Invariant: nothing here ever holds a secret. An [`Alert`] carries key
//! names, version numbers, fingerprints, callers and counts; sink settings
//! that may hold tokens (webhook URLs, routing keys, passwords) are
//! [`Sensitive`] and never printed.

pub mod detect;
pub mod sinks;

use std::collections::BTreeMap;
use std::time::SystemTime;

pub use crate::config::alerts::{
    host_name, AlertsConfig, DetectOverrides, DetectSettings, Sensitive, Severity, Signal, SinkConfig, SinkKind,
    SmtpTls, DEFAULT_REPEAT_INTERVAL, DEFAULT_REPORT_BURST, DEFAULT_REPORT_RATE, DEFAULT_SINK_BACKOFF,
    DEFAULT_SINK_QUEUE, DEFAULT_SINK_RETRIES, DEFAULT_SINK_TIMEOUT, PAGERDUTY_EVENTS_URL,
};
use crate::secret::KeyRef;

/// Where an alert is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// Just opened.
    Firing,
    /// Still open; sent again after the repeat interval.
    Repeat,
    /// The signal has cleared.
    Resolved,
}

impl AlertStatus {
    /// `firing`, `repeat`, `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Repeat => "repeat",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// One notification: an alert opening, repeating or resolving. Holds no
/// secret; every field may be logged.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Stable across firing, repeats and resolve of one alert:
    /// `keyward/HOST/SUBJECT/SIGNAL` (PagerDuty's dedup key).
    pub dedup_key: String,
    /// What it is about.
    pub signal: Signal,
    /// How urgent.
    pub severity: Severity,
    /// Opening, repeating or resolving.
    pub status: AlertStatus,
    /// The key, or `None` for an agent-wide health alert.
    pub key: Option<KeyRef>,
    /// The key's environment (`None` for agent-wide alerts).
    pub environment: Option<String>,
    /// The version concerned, when one is (the failing or expiring one).
    pub version: Option<u64>,
    /// The reporting service(s), as clients named them (comma-separated),
    /// or `keywardd` for the agent's own alerts.
    pub service: String,
    /// One line for a human: what broke and what to do.
    pub summary: String,
    /// The underlying error: e.g. `HTTP 401 on primary v3 (7 reports in 1m)`.
    pub error: String,
    /// More facts, by name: callers, counts, fingerprints, expiry time.
    pub details: BTreeMap<String, String>,
    /// When this notification was made.
    pub timestamp: SystemTime,
    /// When the alert opened.
    pub opened_at: SystemTime,
    /// How many times it was sent before (0 when it opens).
    pub repeat: u32,
    /// The agent's host name.
    pub agent_host: String,
}

/// One sink's delivery counters since the agent started (for metrics and
/// `keyward status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// The sink's name.
    pub name: String,
    /// Its kind (`webhook`, …).
    pub kind: &'static str,
    /// Notifications delivered.
    pub delivered: u64,
    /// Notifications given up on after every retry failed.
    pub failed: u64,
    /// Notifications dropped because its queue was full.
    pub dropped: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// Notifications waiting now.
    pub queued: u64,
}
