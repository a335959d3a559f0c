//! `[environments]`: the environments keys may live in, what a fetch does
//! when its audit record cannot be written, and each one's rotation grace.
//! Key patterns (in grants and `[[key]]`) are checked against them here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Source};
use super::value::duration;
use crate::policy::KeyPattern;
use crate::secret::validate_name;

/// The environments configured when the file has no `[environments]`.
pub const DEFAULT_ENVIRONMENTS: [&str; 3] = ["dev", "staging", "prod"];

/// What a fetch does when its audit record cannot be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuditFailureMode {
    /// The caller gets `UNAVAILABLE` (the default).
    #[default]
    FailClosed,
    /// The key is served anyway; an alert is raised.
    FailOpen,
}

/// Per-environment settings.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EnvConfig {
    /// What a fetch does when the audit log cannot be written.
    pub on_audit_failure: AuditFailureMode,
    /// Overrides `[rotation] grace` for this environment's keys.
    pub grace: Option<Duration>,
    /// Overrides `[rotation] every`, `window` and `jitter` for them.
    pub schedule: super::schedule::ScheduleParts,
}

/// One `[environments.NAME]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnv {
    on_audit_failure: Option<RawFailureMode>,
    grace: Option<Spanned<String>>,
    every: Option<Spanned<String>>,
    window: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawFailureMode {
    FailClosed,
    FailOpen,
}

/// dev, staging and prod, all fail-closed.
pub(super) fn default_environments() -> BTreeMap<String, EnvConfig> {
    DEFAULT_ENVIRONMENTS
        .iter()
        .map(|e| (e.to_string(), EnvConfig::default()))
        .collect()
}

pub(super) fn environments(
    src: &Source<'_>,
    raw: BTreeMap<String, Spanned<RawEnv>>,
) -> Result<BTreeMap<String, EnvConfig>, ConfigError> {
    if raw.is_empty() {
        // No span to point at (see RawConfig): find the header by hand.
        let start = src.text.find("[environments").unwrap_or(0);
        let span = start..start;
        return Err(src.invalid(
            &span,
            format!(
                "[environments] at {} lists no environment: add a table such as [environments.prod], or remove [environments] to get dev, staging and prod",
                src.at(&span)
            ),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, env) in raw {
        // The table's span starts at its [environments.NAME] header.
        let span = env.span();
        validate_name("environment", &name)
            .map_err(|e| src.invalid(&span, format!("[environments.{name}] at {}: {e}", src.at(&span))))?;
        let env = env.into_inner();
        let on_audit_failure = match env.on_audit_failure {
            None | Some(RawFailureMode::FailClosed) => AuditFailureMode::FailClosed,
            Some(RawFailureMode::FailOpen) => AuditFailureMode::FailOpen,
        };
        let grace = env.grace.map(|g| duration(src, &g, "grace")).transpose()?;
        let schedule = super::schedule::ScheduleParts::read(src, env.every, env.window, env.jitter)?;
        out.insert(
            name,
            EnvConfig {
                on_audit_failure,
                grace,
                schedule,
            },
        );
    }
    Ok(out)
}

/// A key pattern written in a `what` ("grant" or "[[key]]").
pub(super) fn key_pattern(
    src: &Source<'_>,
    v: &Spanned<String>,
    environments: &BTreeMap<String, EnvConfig>,
    what: &str,
) -> Result<KeyPattern, ConfigError> {
    let pattern = KeyPattern::parse(v.get_ref())
        .map_err(|e| src.invalid(&v.span(), format!("{what} at {}: {e}", src.at(&v.span()))))?;
    if let Some(env) = pattern.literal_env() {
        if !environments.contains_key(env) {
            let known: Vec<&str> = environments.keys().map(String::as_str).collect();
            return Err(src.invalid(
                &v.span(),
                format!(
                    "key pattern \"{pattern}\" in {what} at {} names environment '{env}', which is not configured: add [environments.{env}] or fix the name (configured: {})",
                    src.at(&v.span()),
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(pattern)
}
