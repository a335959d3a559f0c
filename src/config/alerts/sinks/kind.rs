//! The typed form of `[[alerts.sink]]`: what each sink is and where it
//! delivers ([`SinkKind`]), and the settings every kind shares
//! ([`SinkConfig`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::alerts::routing::{Severity, Signal};
use crate::config::alerts::tokens::Sensitive;
use crate::config::hooks::HookCommand;

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
