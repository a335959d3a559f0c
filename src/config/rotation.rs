//! `[rotation]` and `[[key]]`: the rotation settings of every key, and
//! the per-key hooks and overrides. `RotationConfig::for_key` resolves
//! one key's effective settings: the first matching `[[key]]` entry, then
//! (grace only) its environment, then `[rotation]`, then the defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::alerts::detect::{DetectOverrides, DetectSettings, RawDetect};
use super::environments::{key_pattern, EnvConfig};
use super::error::{ConfigError, Source};
use super::hooks::{hook_command, HookCommand, RawArgv};
use super::schedule::ScheduleParts;
use super::value::{duration, list, positive_duration, RawList};
use crate::policy::KeyPattern;
use crate::rotation::schedule::Schedule;
use crate::secret::KeyRef;

/// Default `rotation.grace`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10 * 60);
/// Default `rotation.hook_timeout`.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `rotation.propagation_timeout`.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `rotation.failure_threshold`.
pub const DEFAULT_FAILURE_THRESHOLD: u64 = 3;
/// Default `rotation.report_quorum`.
pub const DEFAULT_REPORT_QUORUM: u64 = 2;
/// Default `rotation.evidence_quorum`.
pub const DEFAULT_EVIDENCE_QUORUM: u64 = 1;

/// The `[rotation]` table: the settings of every key without an override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationDefaults {
    /// Retire is refused until this long after promotion.
    pub grace: Duration,
    /// Each hook is killed after this.
    pub hook_timeout: Duration,
    /// How long `keyward rotate` waits for live subscribers to be sent the
    /// staged key.
    pub propagation_timeout: Duration,
    /// Auth failures against the new primary during the grace period that
    /// make `keyward rotate` roll back.
    pub failure_threshold: u64,
    /// Distinct reporters whose failures close the retire gate and roll back.
    pub report_quorum: u64,
    /// Distinct callers whose reported use of the new primary lets a job
    /// retire the old key.
    pub evidence_quorum: u64,
    /// The schedule of every key (`every`, `window`, `jitter`).
    pub schedule: ScheduleParts,
}

impl Default for RotationDefaults {
    fn default() -> RotationDefaults {
        RotationDefaults {
            grace: DEFAULT_GRACE,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            propagation_timeout: DEFAULT_PROPAGATION_TIMEOUT,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            report_quorum: DEFAULT_REPORT_QUORUM,
            evidence_quorum: DEFAULT_EVIDENCE_QUORUM,
            schedule: ScheduleParts::default(),
        }
    }
}

/// One `[[key]]` entry: hooks and overrides for the keys it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// The keys it applies to (unless an earlier entry matches first).
    pub keys: Vec<KeyPattern>,
    /// Prints a new secret on stdout.
    pub generator: Option<HookCommand>,
    /// Gets a candidate on stdin; exit 0 = accepted.
    pub validator: Option<HookCommand>,
    /// Gets the retired secret on stdin.
    pub revoker: Option<HookCommand>,
    /// Overrides the grace period.
    pub grace: Option<Duration>,
    /// Overrides the hook timeout.
    pub hook_timeout: Option<Duration>,
    /// Overrides the propagation timeout.
    pub propagation_timeout: Option<Duration>,
    /// Overrides the failure threshold.
    pub failure_threshold: Option<u64>,
    /// Overrides the report quorum.
    pub report_quorum: Option<u64>,
    /// Overrides the evidence quorum.
    pub evidence_quorum: Option<u64>,
    /// Overrides the schedule.
    pub schedule: ScheduleParts,
    /// Overrides of the alert detectors' thresholds.
    pub detect: DetectOverrides,
    /// Where it was written, e.g. `keyward.toml line 12`.
    pub origin: String,
}

/// The rotation settings: `[rotation]` and the `[[key]]` entries, in file
/// order. Use [`Config::rotation_for`](super::Config::rotation_for) to get one key's settings.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RotationConfig {
    /// The `[rotation]` table.
    pub defaults: RotationDefaults,
    /// The `[[key]]` entries; the first match wins.
    pub keys: Vec<KeyEntry>,
}

/// The effective rotation settings of one key (see [`Config::rotation_for`](super::Config::rotation_for)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRotation {
    /// Retire is refused until this long after promotion.
    pub grace: Duration,
    /// Each hook is killed after this.
    pub hook_timeout: Duration,
    /// How long `keyward rotate` waits for live subscribers.
    pub propagation_timeout: Duration,
    /// Auth failures on the new primary during grace that roll back.
    pub failure_threshold: u64,
    /// Distinct reporters whose failures close the retire gate and roll
    /// back (before the cap by reporters served, see `report_quorum`).
    pub report_quorum: u64,
    /// Prints a new secret on stdout; told the key in its environment.
    pub generator: Option<HookCommand>,
    /// Gets a candidate on stdin; told the key in its environment.
    pub validator: Option<HookCommand>,
    /// Gets the retired secret on stdin; told the key in its environment.
    pub revoker: Option<HookCommand>,
    /// Distinct callers whose reported use lets a job retire.
    pub evidence_quorum: u64,
    /// When the agent rotates it on its own.
    pub schedule: Option<Schedule>,
}

impl RotationConfig {
    /// The first `[[key]]` entry whose patterns match `key`.
    fn entry_for(&self, key: &KeyRef) -> Option<&KeyEntry> {
        self.keys.iter().find(|e| e.keys.iter().any(|p| p.matches(key)))
    }

    /// The effective rotation settings of `key` (see
    /// [`super::Config::rotation_for`]); `env_grace` is the grace of the
    /// key's environment, if it sets one.
    pub(super) fn for_key(
        &self,
        key: &KeyRef,
        env_grace: Option<Duration>,
        env_schedule: &ScheduleParts,
    ) -> KeyRotation {
        let defaults = &self.defaults;
        let entry = self.entry_for(key);
        let set = |f: fn(&KeyEntry) -> Option<Duration>| entry.and_then(f);
        let hook = |f: fn(&KeyEntry) -> Option<&HookCommand>| entry.and_then(f).map(|c| c.clone().for_key(key));
        KeyRotation {
            grace: set(|e| e.grace).or(env_grace).unwrap_or(defaults.grace),
            hook_timeout: set(|e| e.hook_timeout).unwrap_or(defaults.hook_timeout),
            propagation_timeout: set(|e| e.propagation_timeout).unwrap_or(defaults.propagation_timeout),
            failure_threshold: entry
                .and_then(|e| e.failure_threshold)
                .unwrap_or(defaults.failure_threshold),
            report_quorum: entry.and_then(|e| e.report_quorum).unwrap_or(defaults.report_quorum),
            generator: hook(|e| e.generator.as_ref()),
            validator: hook(|e| e.validator.as_ref()),
            revoker: hook(|e| e.revoker.as_ref()),
            evidence_quorum: entry
                .and_then(|e| e.evidence_quorum)
                .unwrap_or(defaults.evidence_quorum),
            schedule: ScheduleParts::resolve(&[
                entry.map_or(&ScheduleParts::default(), |e| &e.schedule),
                env_schedule,
                &defaults.schedule,
            ]),
        }
    }

    /// `base` (the `[alerts.detect]` thresholds) overridden by the
    /// `alerts = {…}` of the first `[[key]]` entry matching `key`.
    pub(super) fn detect_for(&self, key: &KeyRef, base: &DetectSettings) -> DetectSettings {
        match self.entry_for(key) {
            Some(e) => e.detect.apply(base),
            None => base.clone(),
        }
    }
}

/// `[rotation]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRotation {
    grace: Option<Spanned<String>>,
    hook_timeout: Option<Spanned<String>>,
    propagation_timeout: Option<Spanned<String>>,
    failure_threshold: Option<Spanned<u64>>,
    report_quorum: Option<Spanned<u64>>,
    evidence_quorum: Option<Spanned<u64>>,
    every: Option<Spanned<String>>,
    window: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
}

/// One `[[key]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyEntry {
    keys: RawList<String>,
    generator: RawArgv,
    validator: RawArgv,
    revoker: RawArgv,
    grace: Option<Spanned<String>>,
    hook_timeout: Option<Spanned<String>>,
    propagation_timeout: Option<Spanned<String>>,
    failure_threshold: Option<Spanned<u64>>,
    report_quorum: Option<Spanned<u64>>,
    evidence_quorum: Option<Spanned<u64>>,
    every: Option<Spanned<String>>,
    window: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    alerts: Option<RawDetect>,
}

impl RawRotation {
    pub(super) fn validate(self, src: &Source<'_>) -> Result<RotationDefaults, ConfigError> {
        let default = RotationDefaults::default();
        Ok(RotationDefaults {
            grace: match self.grace {
                None => default.grace,
                Some(v) => duration(src, &v, "grace")?,
            },
            hook_timeout: match self.hook_timeout {
                None => default.hook_timeout,
                Some(v) => positive_duration(src, &v, "hook_timeout")?,
            },
            propagation_timeout: match self.propagation_timeout {
                None => default.propagation_timeout,
                Some(v) => positive_duration(src, &v, "propagation_timeout")?,
            },
            failure_threshold: match self.failure_threshold {
                None => default.failure_threshold,
                Some(v) => failure_threshold(src, &v)?,
            },
            report_quorum: match self.report_quorum {
                None => default.report_quorum,
                Some(v) => report_quorum(src, &v)?,
            },
            evidence_quorum: match self.evidence_quorum {
                None => default.evidence_quorum,
                Some(v) => evidence_quorum(src, &v)?,
            },
            schedule: ScheduleParts::read(src, self.every, self.window, self.jitter)?,
        })
    }
}

fn failure_threshold(src: &Source<'_>, v: &Spanned<u64>) -> Result<u64, ConfigError> {
    if *v.get_ref() == 0 {
        return Err(src.invalid(
            &v.span(),
            format!(
                "failure_threshold at {} is 0: give the number of auth failures on the new primary that should roll a rotation back (at least 1; default {DEFAULT_FAILURE_THRESHOLD})",
                src.at(&v.span())
            ),
        ));
    }
    Ok(*v.get_ref())
}

fn report_quorum(src: &Source<'_>, v: &Spanned<u64>) -> Result<u64, ConfigError> {
    if *v.get_ref() == 0 {
        return Err(src.invalid(
            &v.span(),
            format!(
                "report_quorum at {} is 0: give the number of distinct reporters whose auth failures hold a rotation (at least 1; default {DEFAULT_REPORT_QUORUM})",
                src.at(&v.span())
            ),
        ));
    }
    Ok(*v.get_ref())
}

fn evidence_quorum(src: &Source<'_>, v: &Spanned<u64>) -> Result<u64, ConfigError> {
    if *v.get_ref() == 0 {
        return Err(src.invalid(
            &v.span(),
            format!(
                "evidence_quorum at {} is 0: give the number of distinct callers whose reported use of a new primary lets a rotation retire the old key (at least 1; default {DEFAULT_EVIDENCE_QUORUM})",
                src.at(&v.span())
            ),
        ));
    }
    Ok(*v.get_ref())
}

pub(super) fn key_entry(
    src: &Source<'_>,
    raw: Spanned<RawKeyEntry>,
    environments: &BTreeMap<String, EnvConfig>,
) -> Result<KeyEntry, ConfigError> {
    let span = raw.span();
    let at = src.at(&span);
    let origin = src.origin_of(&span);
    let raw = raw.into_inner();

    let raw_keys = list(src, raw.keys, "keys", &format!("[[key]] at {at}"))?;
    if raw_keys.is_empty() {
        return Err(src.invalid(
            &span,
            format!(
                "[[key]] at {at} names no keys: add keys = [\"ENV/NAME\", ...], e.g. keys = [\"prod/billing-api\"]"
            ),
        ));
    }
    let mut keys = Vec::with_capacity(raw_keys.len());
    for k in raw_keys {
        keys.push(key_pattern(src, &k, environments, "[[key]]")?);
    }
    let schedule = ScheduleParts::read(src, raw.every, raw.window, raw.jitter)?;
    let generator = hook_command(src, raw.generator, "generator")?;
    if schedule.schedules() && generator.is_none() {
        return Err(src.invalid(
            &span,
            format!(
                "[[key]] at {at} sets every (a rotation schedule) for {} but no generator: the agent needs a generator hook to make the new keys; add generator = [\"/path/to/hook\"], or remove every",
                keys.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(KeyEntry {
        keys,
        generator,
        validator: hook_command(src, raw.validator, "validator")?,
        revoker: hook_command(src, raw.revoker, "revoker")?,
        grace: raw.grace.map(|v| duration(src, &v, "grace")).transpose()?,
        hook_timeout: (raw.hook_timeout)
            .map(|v| positive_duration(src, &v, "hook_timeout"))
            .transpose()?,
        propagation_timeout: (raw.propagation_timeout)
            .map(|v| positive_duration(src, &v, "propagation_timeout"))
            .transpose()?,
        failure_threshold: (raw.failure_threshold)
            .map(|v| failure_threshold(src, &v))
            .transpose()?,
        report_quorum: raw.report_quorum.map(|v| report_quorum(src, &v)).transpose()?,
        evidence_quorum: (raw.evidence_quorum).map(|v| evidence_quorum(src, &v)).transpose()?,
        schedule,
        detect: match raw.alerts {
            None => Default::default(),
            Some(d) => d.overrides(src, &format!("[[key]] at {at}"))?,
        },
        origin,
    })
}
