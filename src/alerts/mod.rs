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
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::hooks::HookCommand;
use crate::secret::KeyRef;

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Many failures against the current primary: revoked or expired.
    Spike,
    /// Failures against a version that is no longer served: a client missed
    /// a rotation.
    StaleVersion,
    /// The failure rate grows window after window: rate limits or misuse.
    RisingRate,
    /// Failures against the primary and the fallback in the same window:
    /// both keys refused, an outage.
    FallbackFailing,
    /// The primary expires within the lead time (or has expired).
    ExpiryAhead,
    /// The primary is older than the key's `max_age` rotation policy.
    MaxAgeOverdue,
    /// The agent itself is failing: audit writes, store reloads, rotation
    /// steps, hooks.
    AgentHealth,
}

impl Signal {
    /// Every signal, for metrics and docs.
    pub const ALL: [Signal; 7] = [
        Signal::Spike,
        Signal::StaleVersion,
        Signal::RisingRate,
        Signal::FallbackFailing,
        Signal::ExpiryAhead,
        Signal::MaxAgeOverdue,
        Signal::AgentHealth,
    ];

    /// The name used in payloads, config and metrics (`stale_version`).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Spike => "spike",
            Signal::StaleVersion => "stale_version",
            Signal::RisingRate => "rising_rate",
            Signal::FallbackFailing => "fallback_failing",
            Signal::ExpiryAhead => "expiry_ahead",
            Signal::MaxAgeOverdue => "max_age_overdue",
            Signal::AgentHealth => "agent_health",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent an alert is. Ordered: `Info < Warning < Critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Will break, or is breaking for some callers.
    Warning,
    /// Broken now.
    Critical,
}

impl Severity {
    /// `info`, `warning`, `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// A setting that may hold a token (a webhook URL, a routing key, a
/// password). Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(String);

impl Sensitive {
    /// Wraps a value.
    pub fn new(value: String) -> Sensitive {
        Sensitive(value)
    }

    /// The value, for the one place that uses it (a request, a login).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `[alerts]`: the detectors' defaults, report limits and the sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertsConfig {
    /// The name sent as `agent_host` (default: the machine's host name).
    pub agent_host: String,
    /// An open alert is sent again this often while it lasts.
    pub repeat_interval: Duration,
    /// Detector thresholds for keys without a `[[key]]` override.
    pub detect: DetectSettings,
    /// Reports accepted per caller uid per second (token bucket rate).
    pub report_rate: u32,
    /// Reports a caller uid may send at once above the rate.
    pub report_burst: u32,
    /// Where alerts go; several at once.
    pub sinks: Vec<SinkConfig>,
}

/// Detector thresholds (per key; `[alerts.detect]` and `[[key]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectSettings {
    /// The sliding window the counting signals use, and how long a signal
    /// must stay clear before its alert resolves.
    pub window: Duration,
    /// Reports against the current primary within `window` that open a
    /// spike alert.
    pub spike_threshold: u64,
    /// Successive whole windows of growing failure counts that open a
    /// rising-rate alert.
    pub rising_windows: u32,
    /// The least count in the last of those windows (so that 1, 2, 3 is
    /// not an alert).
    pub rising_min: u64,
    /// Warn this long before the primary's `expires_at`.
    pub expiry_lead: Duration,
    /// Rotation policy: warn when the primary has been in service longer
    /// than this. `None`: no policy.
    pub max_age: Option<Duration>,
}

/// One `[[alerts.sink]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkConfig {
    /// Its name in logs and metrics (default: the kind and its position,
    /// `webhook-1`).
    pub name: String,
    /// What it is and where it delivers.
    pub kind: SinkKind,
    /// Alerts below this severity are not sent to it.
    pub min_severity: Severity,
    /// Only these signals (empty: all).
    pub signals: Vec<Signal>,
    /// Notifications waiting for delivery; beyond, new ones are dropped
    /// (counted and logged).
    pub queue: usize,
    /// One delivery attempt's time limit.
    pub timeout: Duration,
    /// Attempts after the first failed one.
    pub retries: u32,
    /// The first retry's delay; doubled each retry, capped at 1 minute.
    pub backoff: Duration,
}

/// What a sink is.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkKind {
    /// POST of the generic JSON payload.
    Webhook {
        /// `http://` or `https://`; may hold a token.
        url: Sensitive,
        /// Extra request headers (e.g. `Authorization`); values may hold
        /// tokens.
        headers: Vec<(String, Sensitive)>,
        /// Extra trusted CA certificates (PEM), beyond the system's.
        ca_file: Option<PathBuf>,
    },
    /// POST in Slack's incoming-webhook format.
    Slack {
        /// The incoming-webhook URL (holds a token).
        url: Sensitive,
        /// Extra trusted CA certificates (PEM).
        ca_file: Option<PathBuf>,
    },
    /// PagerDuty Events API v2: trigger and resolve, with the dedup key.
    PagerDuty {
        /// The events endpoint (default
        /// `https://events.pagerduty.com/v2/enqueue`).
        url: Sensitive,
        /// The integration's routing key.
        routing_key: Sensitive,
        /// Extra trusted CA certificates (PEM).
        ca_file: Option<PathBuf>,
    },
    /// Email over SMTP.
    Smtp {
        /// The server.
        host: String,
        /// Its port (default 587 with STARTTLS, 465 with TLS, 25 without).
        port: u16,
        /// How the connection is protected.
        tls: SmtpTls,
        /// Login, if the server wants one.
        username: Option<String>,
        /// Its password.
        password: Option<Sensitive>,
        /// The sender address.
        from: String,
        /// The recipients (at least one).
        to: Vec<String>,
        /// Extra trusted CA certificates (PEM).
        ca_file: Option<PathBuf>,
    },
    /// A program that gets the JSON payload on stdin.
    Exec {
        /// Its command line (absolute program path, like the rotation hooks).
        command: HookCommand,
    },
    /// The agent's log: one structured line per notification.
    Log,
}

impl SinkKind {
    /// `webhook`, `slack`, `pagerduty`, `smtp`, `exec`, `log`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::Webhook { .. } => "webhook",
            SinkKind::Slack { .. } => "slack",
            SinkKind::PagerDuty { .. } => "pagerduty",
            SinkKind::Smtp { .. } => "smtp",
            SinkKind::Exec { .. } => "exec",
            SinkKind::Log => "log",
        }
    }
}

/// How an SMTP connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain, then upgraded with STARTTLS (refused if the server cannot).
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// No TLS: loopback relays only.
    None,
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

/// Default `[alerts] repeat_interval`.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Default `[alerts] report_rate` (per caller uid per second).
pub const DEFAULT_REPORT_RATE: u32 = 20;
/// Default `[alerts] report_burst`.
pub const DEFAULT_REPORT_BURST: u32 = 100;

impl Default for DetectSettings {
    fn default() -> DetectSettings {
        DetectSettings {
            window: Duration::from_secs(60),
            spike_threshold: 5,
            rising_windows: 3,
            rising_min: 10,
            expiry_lead: Duration::from_secs(7 * 86400),
            max_age: None,
        }
    }
}

/// Per-key overrides of [`DetectSettings`] (`alerts = {…}` in a `[[key]]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DetectOverrides {
    /// Overrides `window`.
    pub window: Option<Duration>,
    /// Overrides `spike_threshold`.
    pub spike_threshold: Option<u64>,
    /// Overrides `rising_windows`.
    pub rising_windows: Option<u32>,
    /// Overrides `rising_min`.
    pub rising_min: Option<u64>,
    /// Overrides `expiry_lead`.
    pub expiry_lead: Option<Duration>,
    /// Overrides `max_age`.
    pub max_age: Option<Duration>,
}

impl DetectOverrides {
    /// `base` with these overrides applied.
    pub fn apply(&self, base: &DetectSettings) -> DetectSettings {
        DetectSettings {
            window: self.window.unwrap_or(base.window),
            spike_threshold: self.spike_threshold.unwrap_or(base.spike_threshold),
            rising_windows: self.rising_windows.unwrap_or(base.rising_windows),
            rising_min: self.rising_min.unwrap_or(base.rising_min),
            expiry_lead: self.expiry_lead.unwrap_or(base.expiry_lead),
            max_age: self.max_age.or(base.max_age),
        }
    }
}

impl Default for AlertsConfig {
    /// No sink but the log; default thresholds; this machine's host name.
    fn default() -> AlertsConfig {
        AlertsConfig {
            agent_host: host_name(),
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
            detect: DetectSettings::default(),
            report_rate: DEFAULT_REPORT_RATE,
            report_burst: DEFAULT_REPORT_BURST,
            sinks: vec![SinkConfig::log()],
        }
    }
}

impl SinkConfig {
    /// The log sink with default settings: what an agent without
    /// `[[alerts.sink]]` uses.
    pub fn log() -> SinkConfig {
        SinkConfig {
            name: "log".to_owned(),
            kind: SinkKind::Log,
            min_severity: Severity::Info,
            signals: Vec::new(),
            queue: DEFAULT_SINK_QUEUE,
            timeout: DEFAULT_SINK_TIMEOUT,
            retries: 0,
            backoff: DEFAULT_SINK_BACKOFF,
        }
    }
}

/// Default `queue` of a sink.
pub const DEFAULT_SINK_QUEUE: usize = 1000;
/// Default `timeout` of a sink's delivery attempt.
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `retries` of a sink.
pub const DEFAULT_SINK_RETRIES: u32 = 5;
/// Default `backoff` (first retry delay) of a sink.
pub const DEFAULT_SINK_BACKOFF: Duration = Duration::from_secs(1);
/// Default PagerDuty Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// This machine's host name (`unknown-host` if it has none).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}
