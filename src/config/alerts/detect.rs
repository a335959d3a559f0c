//! `[alerts.detect]` and the per-key `alerts = {…}` of `[[key]]`: the
//! detectors' thresholds ([`DetectSettings`]) and their overrides.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::error::{ConfigError, Source};
use crate::config::value::{duration, positive_duration};

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

/// Detector thresholds: `[alerts.detect]`, and `alerts = {…}` in `[[key]]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawDetect {
    window: Option<Spanned<String>>,
    spike_threshold: Option<Spanned<u64>>,
    rising_windows: Option<Spanned<u32>>,
    rising_min: Option<Spanned<u64>>,
    expiry_lead: Option<Spanned<String>>,
    max_age: Option<Spanned<String>>,
}

impl RawDetect {
    /// The thresholds as written; `context` names the table in messages.
    pub(in crate::config) fn overrides(self, src: &Source<'_>, context: &str) -> Result<DetectOverrides, ConfigError> {
        let at_least = |v: &Spanned<u64>, key: &str, min: u64| {
            if *v.get_ref() < min {
                Err(src.invalid(
                    &v.span(),
                    format!(
                        "{key} in {context} at {} is {}: give at least {min}",
                        src.at(&v.span()),
                        v.get_ref()
                    ),
                ))
            } else {
                Ok(*v.get_ref())
            }
        };
        Ok(DetectOverrides {
            window: self.window.map(|v| positive_duration(src, &v, "window")).transpose()?,
            spike_threshold: self
                .spike_threshold
                .map(|v| at_least(&v, "spike_threshold", 1))
                .transpose()?,
            rising_windows: self
                .rising_windows
                .map(|v| {
                    let wide = Spanned::new(v.span(), u64::from(*v.get_ref()));
                    at_least(&wide, "rising_windows", 2).map(|n| n as u32)
                })
                .transpose()?,
            rising_min: self.rising_min.map(|v| at_least(&v, "rising_min", 1)).transpose()?,
            expiry_lead: self.expiry_lead.map(|v| duration(src, &v, "expiry_lead")).transpose()?,
            max_age: self
                .max_age
                .map(|v| positive_duration(src, &v, "max_age"))
                .transpose()?,
        })
    }
}
