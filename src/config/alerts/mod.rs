//! `[alerts]`, `[alerts.detect]`, `[[alerts.sink]]` and the per-key
//! `alerts = {…}` overrides: raw to typed, every error with its line.
//!
//! Sink settings may hold tokens (webhook URLs, routing keys, passwords):
//! no message here ever quotes their values. Running the detectors and
//! the sinks is [`crate::alerts`]' job; this is what the file says of them.
//!
//! - [`routing`]: the signals and severities alerts are routed by;
//! - [`detect`]: the detectors' thresholds and their per-key overrides;
//! - [`sinks`]: each sink's kind and settings;
//! - [`tokens`]: settings that may hold a token, inline or in a file.

pub mod detect;
pub mod routing;
pub mod sinks;
pub mod tokens;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use detect::{DetectOverrides, DetectSettings};
pub use routing::{Severity, Signal};
pub use sinks::{
    SinkConfig, SinkKind, SmtpTls, DEFAULT_SINK_BACKOFF, DEFAULT_SINK_QUEUE, DEFAULT_SINK_RETRIES,
    DEFAULT_SINK_TIMEOUT, PAGERDUTY_EVENTS_URL,
};
pub use tokens::Sensitive;

use super::error::{ConfigError, Source};
use super::value::positive_duration;
use detect::RawDetect;
use sinks::{sink, RawSink};

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

/// Default `[alerts] repeat_interval`.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Default `[alerts] report_rate` (per caller uid per second).
pub const DEFAULT_REPORT_RATE: u32 = 20;
/// Default `[alerts] report_burst`.
pub const DEFAULT_REPORT_BURST: u32 = 100;

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

/// This machine's host name (`unknown-host` if it has none).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// `[alerts]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    agent_host: Option<Spanned<String>>,
    repeat_interval: Option<Spanned<String>>,
    report_rate: Option<Spanned<u32>>,
    report_burst: Option<Spanned<u32>>,
    detect: Option<RawDetect>,
    #[serde(default, rename = "sink")]
    sinks: Vec<Spanned<RawSink>>,
}

impl RawAlerts {
    pub(in crate::config) fn validate(self, src: &Source<'_>) -> Result<AlertsConfig, ConfigError> {
        let agent_host = match self.agent_host {
            None => host_name(),
            Some(h) => {
                let name = h.get_ref().trim();
                if name.is_empty() || name.chars().any(char::is_control) {
                    return Err(src.invalid(
                        &h.span(),
                        format!(
                            "agent_host at {} is empty or has control characters: give the name alerts should show, or remove the line to use the host name",
                            src.at(&h.span())
                        ),
                    ));
                }
                name.to_owned()
            }
        };
        let repeat_interval = match self.repeat_interval {
            None => DEFAULT_REPEAT_INTERVAL,
            Some(v) => positive_duration(src, &v, "repeat_interval")?,
        };
        let positive = |v: Option<Spanned<u32>>, key: &str, default: u32| match v {
            None => Ok(default),
            Some(v) if *v.get_ref() == 0 => Err(src.invalid(
                &v.span(),
                format!(
                    "{key} at {} is 0: give a positive number (default {default}), or remove the line",
                    src.at(&v.span())
                ),
            )),
            Some(v) => Ok(v.into_inner()),
        };
        let report_rate = positive(self.report_rate, "report_rate", DEFAULT_REPORT_RATE)?;
        let report_burst = positive(self.report_burst, "report_burst", DEFAULT_REPORT_BURST)?;
        let detect = self
            .detect
            .unwrap_or_default()
            .overrides(src, "[alerts.detect]")?
            .apply(&DetectSettings::default());

        let mut sinks = Vec::with_capacity(self.sinks.len());
        let mut names = BTreeSet::new();
        for (i, raw) in self.sinks.into_iter().enumerate() {
            let span = raw.span();
            let sink = sink(src, raw, i + 1)?;
            if !names.insert(sink.name.clone()) {
                return Err(src.invalid(
                    &span,
                    format!(
                        "[[alerts.sink]] at {} is named {:?} like an earlier sink: give each sink its own name",
                        src.at(&span),
                        sink.name
                    ),
                ));
            }
            sinks.push(sink);
        }
        if sinks.is_empty() {
            sinks.push(SinkConfig::log());
        }
        Ok(AlertsConfig {
            agent_host,
            repeat_interval,
            detect,
            report_rate,
            report_burst,
            sinks,
        })
    }
}
