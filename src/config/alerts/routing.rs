//! What an alert is about ([`Signal`]) and how urgent it is ([`Severity`]):
//! the words `[[alerts.sink]]` routes by (`signals`, `min_severity`), and
//! that every alert carries.

use std::fmt;

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
    /// A rotation job's grace is over and nothing shows that the new
    /// primary works: it waits, both keys valid.
    NoEvidence,
    /// A rotation job failed or rolled back.
    RotationFailed,
}

impl Signal {
    /// Every signal, for metrics and docs.
    pub const ALL: [Signal; 9] = [
        Signal::Spike,
        Signal::StaleVersion,
        Signal::RisingRate,
        Signal::FallbackFailing,
        Signal::ExpiryAhead,
        Signal::MaxAgeOverdue,
        Signal::AgentHealth,
        Signal::NoEvidence,
        Signal::RotationFailed,
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
            Signal::NoEvidence => "no_evidence",
            Signal::RotationFailed => "rotation_failed",
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
