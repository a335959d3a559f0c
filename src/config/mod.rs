//! The config file: raw TOML, validated once into typed values.
//!
//! Invariant: a [`Config`] only exists in a valid state. The file is read
//! in two steps: serde fills private `Raw*` structs that reject any unknown
//! key (`deny_unknown_fields`, so a typo is an error rather than a silently
//! ignored setting), then validation resolves users and groups, parses
//! durations, modes, key patterns and hook command lines, checks the limits
//! against each other, and builds the [`Policy`]. Every error names the file
//! and line and says what to do.
//!
//! # Layout
//!
//! One file per section holds its raw (serde) form, its typed form and its
//! validation: [`paths`] (`state_dir`, `runtime_dir`, `audit_file`),
//! [`sockets`], [`environments`] (and the key patterns checked against
//! them), `grants.rs` (`[[grant]]`), [`audit`] (and [`audit_anchor`] for
//! `[[audit.anchor]]`), [`limits`], [`rotation`]
//! (`[rotation]` and `[[key]]`), [`hooks`] (hook command lines),
//! [`alerts`], [`metrics`] and [`backend`]. Below them, `error.rs` words
//! every error with its file and line, `value.rs` checks the values every
//! section shares (paths, durations, lists), `accounts.rs` resolves user
//! and group names, and [`size`] parses sizes. This file keeps the
//! top-level [`Config`], the top-level keys and the load entry points.
//!
//! This module is the bottom of the agent: it imports only the pure core
//! ([`crate::policy`], [`crate::secret`]), and the modules that act on the
//! config (audit, alerts, hooks, metrics, fleet) take their types from here.
//!
//! # The file
//!
//! Every setting is optional; the values shown are the defaults, except for
//! the recipients, the groups, the grant, the per-environment grace and the
//! `[[key]]` entry, which have none. An empty file is a valid config that
//! grants nothing. This reference is `packaging/keyward.toml.example`,
//! installed as `/usr/share/doc/keyward/examples/keyward.toml`; a test
//! loads it, so it stays valid.
//!
//! ```toml
#![doc = include_str!("../../packaging/keyward.toml.example")]
//! ```
//!
//! A grant must list at least one selector and at least one key pattern;
//! lists may not be empty. Key patterns are `ENV/NAME` globs (see
//! [`crate::policy`]); a pattern whose environment has no `*` must name a
//! configured environment.
//!
//! A `[[key]]` entry must list at least one key pattern; its other settings
//! are optional (an entry with none gives its keys the defaults and no
//! hooks, shadowing later entries). `hook_timeout` and
//! `propagation_timeout` must be positive, `failure_threshold` at least 1.
//! Hooks run with a minimal environment that names the key (see
//! [`crate::hooks`]); [`Config::rotation_for`] gives a key's effective
//! settings.
//!
//! # Dev mode
//!
//! [`Config::dev`] is the config of `keywardd --dev DIR` without a file:
//! everything lives in `DIR` and the invoking uid may read every key.
//! [`Config::into_dev`] applies the same on top of a file.

mod accounts;
pub mod alerts;
pub mod audit;
pub mod audit_anchor;
pub mod backend;
pub mod environments;
mod error;
mod grants;
pub mod hooks;
pub mod limits;
pub mod metrics;
pub mod paths;
pub mod rotation;
pub mod schedule;
pub mod size;
pub mod sockets;
mod value;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use alerts::{AlertsConfig, DetectOverrides, DetectSettings};
pub use audit::{AuditSettings, Durability, DEFAULT_COALESCE_WINDOW, DEFAULT_MIN_FREE};
pub use backend::BackendConfig;
pub use environments::{AuditFailureMode, EnvConfig, DEFAULT_ENVIRONMENTS};
pub use error::ConfigError;
pub use hooks::HookCommand;
pub use limits::{Limits, MESSAGE_OVERHEAD_BYTES};
pub use metrics::MetricsListen;
pub use paths::{Paths, DEFAULT_AUDIT_FILE, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR};
pub use rotation::{
    KeyEntry, KeyRotation, RotationConfig, RotationDefaults, DEFAULT_EVIDENCE_QUORUM, DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_GRACE, DEFAULT_HOOK_TIMEOUT, DEFAULT_PROPAGATION_TIMEOUT, DEFAULT_REPORT_QUORUM,
};
pub use schedule::ScheduleParts;
pub use sockets::DEFAULT_SERVICE_MODE;

use crate::policy::{Grant, Policy};
use crate::secret::KeyRef;
use alerts::RawAlerts;
use audit::RawAudit;
use backend::RawBackend;
use environments::{default_environments, environments, RawEnv};
use error::Source;
use grants::{executable_problem, grant, RawGrant};
use limits::RawLimits;
use metrics::RawMetrics;
use paths::RawPaths;
use rotation::{key_entry, RawKeyEntry, RawRotation};
use sockets::RawSockets;
use value::duration;

/// Where the agent looks for its config when not told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/keyward/keyward.toml";
/// Default `shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The validated configuration of the agent.
#[derive(Clone, Debug)]
pub struct Config {
    /// Files and sockets.
    pub paths: Paths,
    /// Group (gid) owning `keys.sock`; `None` leaves root's group.
    pub service_socket_group: Option<u32>,
    /// Mode of `keys.sock`: 0o600, 0o660 or 0o666.
    pub service_socket_mode: u32,
    /// Group (gid) that may use `admin.sock` (then mode 0660); `None`
    /// means root only (0600).
    pub admin_group: Option<u32>,
    /// `[sockets] credentials`: serve `creds.sock` for systemd's
    /// `LoadCredential=` (see [`crate::server::creds`]).
    pub credentials_socket: bool,
    /// The configured environments, by name.
    pub environments: BTreeMap<String, EnvConfig>,
    /// The `[audit]` table.
    pub audit: AuditSettings,
    /// The `[limits]` table.
    pub limits: Limits,
    /// Who may read what.
    pub policy: Policy,
    /// Lock the agent's memory (mlockall).
    pub lock_memory: bool,
    /// How long in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Extra age recipients (`age1...`) every key file is also encrypted to.
    pub extra_recipients: Vec<String>,
    /// `[rotation]` and the `[[key]]` entries.
    pub rotation: RotationConfig,
    /// `[alerts]`: detectors, report limits, sinks.
    pub alerts: AlertsConfig,
    /// `[metrics] listen`: where the Prometheus endpoint listens (off when
    /// `None`).
    pub metrics_listen: Option<MetricsListen>,
    /// `[backend]`: the store directory, or OpenBao KV v2 (fleet mode).
    pub backend: BackendConfig,
    /// Started with `--dev`.
    pub dev_mode: bool,
}

impl Config {
    /// Reads and validates the config file at `path`. Messages name the
    /// file by `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ConfigError::NotFound { path: path.to_owned() },
            _ => ConfigError::Read {
                path: path.to_owned(),
                source,
            },
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` is the file name used in
    /// messages. Warnings (see [`Config::warnings`]) are logged.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let src = Source { text, origin };
        let raw: RawConfig = toml::from_str(text).map_err(|e| src.parse_error(&e))?;
        let config = raw.validate(&src)?;
        for warning in config.warnings() {
            tracing::warn!("{origin}: {warning}");
        }
        Ok(config)
    }

    /// Dev mode without a config file: every path inside `dir`, the default
    /// environments, and uid `uid` may read every key.
    pub fn dev(dir: &Path, uid: u32) -> Config {
        Config {
            paths: Paths::dev(dir),
            service_socket_group: None,
            service_socket_mode: DEFAULT_SERVICE_MODE,
            admin_group: None,
            credentials_socket: false,
            environments: default_environments(),
            audit: AuditSettings::default(),
            limits: Limits::default(),
            policy: Policy::allow_all_for_uid(uid),
            lock_memory: true,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            extra_recipients: Vec::new(),
            rotation: RotationConfig::default(),
            alerts: AlertsConfig::default(),
            metrics_listen: None,
            backend: BackendConfig::Local,
            dev_mode: true,
        }
    }

    /// Dev mode on top of a loaded file: every path moves inside `dir`, and
    /// uid `uid` may read every key, in addition to the file's own grants
    /// (which keep precedence in [`Policy::grant_for`]). Everything else is
    /// kept from the file.
    pub fn into_dev(mut self, dir: &Path, uid: u32) -> Config {
        self.paths = Paths::dev(dir);
        self.policy.grants.push(Grant::allow_all_for_uid(uid));
        self.dev_mode = true;
        self
    }

    /// The effective rotation settings of `key`: each value comes from the
    /// first `[[key]]` entry matching the key if it sets it, else (grace
    /// only) from the key's `[environments.ENV]`, else from `[rotation]`,
    /// else the default. Hooks come only from that first matching entry;
    /// they are told the key through `KEYWARD_KEY`, `KEYWARD_ENV` and
    /// `KEYWARD_NAME`. The schedule's `every`, `window` and `jitter` each
    /// come from the entry, else the environment, else `[rotation]`.
    pub fn rotation_for(&self, key: &KeyRef) -> KeyRotation {
        let env = self.environments.get(key.env());
        let no_schedule = ScheduleParts::default();
        self.rotation.for_key(
            key,
            env.and_then(|e| e.grace),
            env.map_or(&no_schedule, |e| &e.schedule),
        )
    }

    /// Why `key` cannot follow its configured schedule, if it cannot: a
    /// schedule needs a generator hook to make the new keys. Checked for
    /// every stored key at start and reload, and for a key being created.
    pub fn schedule_problem(&self, key: &KeyRef) -> Option<String> {
        let r = self.rotation_for(key);
        let schedule = r.schedule.as_ref()?;
        if r.generator.is_none() {
            return Some(format!(
                "key {key} is scheduled for rotation ({schedule}) but has no generator hook: add a [[key]] entry for it with generator = [\"/path/to/hook\"], or turn its schedule off there with every = \"off\""
            ));
        }
        None
    }

    /// The alert detectors' thresholds for `key`: `[alerts.detect]` (or
    /// the defaults), overridden by the `alerts = {…}` of the first
    /// `[[key]]` entry matching the key.
    pub fn detect_for(&self, key: &KeyRef) -> DetectSettings {
        self.rotation.detect_for(key, &self.alerts.detect)
    }

    /// Things that are allowed but probably not meant, for the log and
    /// `keyward doctor`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.service_socket_mode == 0o666 {
            out.push(
                "service_mode is 0666: every local user may connect to keys.sock and only the policy stands between them and the keys; prefer \"0660\" with a service_group".to_owned(),
            );
        }
        for grant in &self.policy.grants {
            if grant.is_credentials_grant() {
                out.push(format!(
                    "grant at {} names units but no users, uids, groups or gids: it applies only to LoadCredential= requests on creds.sock, where the service manager (PID 1) vouches for the unit, and to no caller on keys.sock, because a unit read off a caller's cgroup does not prove who the caller is; add users or uids to let the unit's processes read on keys.sock{}",
                    grant.origin,
                    if self.credentials_socket {
                        ""
                    } else {
                        " ([sockets] credentials is off, so this grant applies to nothing)"
                    }
                ));
            }
            for exe in &grant.executables {
                if let Some(problem) = executable_problem(exe) {
                    out.push(format!(
                        "executable {} in grant at {}: {problem}",
                        exe.display(),
                        grant.origin
                    ));
                }
            }
            for pattern in &grant.keys {
                if !self.environments.keys().any(|e| pattern.matches_env(e)) {
                    out.push(format!(
                        "key pattern \"{pattern}\" in grant at {} matches no configured environment",
                        grant.origin
                    ));
                }
            }
        }
        for entry in &self.rotation.keys {
            for pattern in &entry.keys {
                if !self.environments.keys().any(|e| pattern.matches_env(e)) {
                    out.push(format!(
                        "key pattern \"{pattern}\" in [[key]] at {} matches no configured environment",
                        entry.origin
                    ));
                }
            }
        }
        out
    }
}

/// One of `extra_recipients`: an age X25519 public key.
fn recipient(src: &Source<'_>, v: &Spanned<String>) -> Result<String, ConfigError> {
    let text = v.get_ref().trim();
    let problem = if !text.starts_with("age1") {
        Some("does not start with \"age1\"".to_owned())
    } else {
        text.parse::<age::x25519::Recipient>()
            .err()
            .map(|e| format!("is not a valid age recipient ({e})"))
    };
    match problem {
        None => Ok(text.to_owned()),
        Some(problem) => Err(src.invalid(
            &v.span(),
            format!(
                "extra recipient {:?} at {} {problem}: paste the public key printed by `age-keygen -y` (age1...)",
                v.get_ref(),
                src.at(&v.span())
            ),
        )),
    }
}

/// The file as written. Options distinguish "absent" (take the default).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<PathBuf>>,
    runtime_dir: Option<Spanned<PathBuf>>,
    audit_file: Option<Spanned<PathBuf>>,
    lock_memory: Option<bool>,
    shutdown_grace: Option<Spanned<String>>,
    extra_recipients: Option<Vec<Spanned<String>>>,
    sockets: Option<RawSockets>,
    audit: Option<RawAudit>,
    limits: Option<RawLimits>,
    // Not Spanned: toml 0.8 cannot deserialize the keys of a spanned map.
    environments: Option<BTreeMap<String, Spanned<RawEnv>>>,
    #[serde(default, rename = "grant")]
    grants: Vec<Spanned<RawGrant>>,
    rotation: Option<RawRotation>,
    #[serde(default, rename = "key")]
    key_entries: Vec<Spanned<RawKeyEntry>>,
    alerts: Option<RawAlerts>,
    metrics: Option<RawMetrics>,
    backend: Option<RawBackend>,
}

impl RawConfig {
    /// Each section validates its own table; grants and `[[key]]` entries
    /// are checked against the environments.
    fn validate(self, src: &Source<'_>) -> Result<Config, ConfigError> {
        let paths = RawPaths {
            state_dir: self.state_dir,
            runtime_dir: self.runtime_dir,
            audit_file: self.audit_file,
        }
        .validate(src)?;

        let shutdown_grace = match self.shutdown_grace {
            None => DEFAULT_SHUTDOWN_GRACE,
            Some(v) => duration(src, &v, "shutdown_grace")?,
        };

        let mut extra_recipients = Vec::new();
        for r in self.extra_recipients.unwrap_or_default() {
            extra_recipients.push(recipient(src, &r)?);
        }

        let sockets = self.sockets.unwrap_or_default().validate(src)?;

        let audit = match self.audit {
            None => AuditSettings::default(),
            Some(raw) => raw.validate(src)?,
        };
        let limits = match self.limits {
            None => Limits::default(),
            Some(raw) => raw.validate(src)?,
        };
        let environments = match self.environments {
            None => default_environments(),
            Some(raw) => environments(src, raw)?,
        };

        let mut grants = Vec::with_capacity(self.grants.len());
        for raw in self.grants {
            grants.push(grant(src, raw, &environments)?);
        }

        let defaults = match self.rotation {
            None => RotationDefaults::default(),
            Some(raw) => raw.validate(src)?,
        };
        let alerts = match self.alerts {
            None => AlertsConfig::default(),
            Some(raw) => raw.validate(src)?,
        };
        let mut key_entries = Vec::with_capacity(self.key_entries.len());
        for raw in self.key_entries {
            key_entries.push(key_entry(src, raw, &environments)?);
        }

        let backend = match self.backend {
            None => BackendConfig::Local,
            Some(raw) => raw.validate(src)?,
        };
        Ok(Config {
            paths,
            service_socket_group: sockets.service_group,
            service_socket_mode: sockets.service_mode,
            admin_group: sockets.admin_group,
            credentials_socket: sockets.credentials,
            environments,
            audit,
            limits,
            policy: Policy::new(grants),
            lock_memory: self.lock_memory.unwrap_or(true),
            shutdown_grace,
            extra_recipients,
            rotation: RotationConfig {
                defaults,
                keys: key_entries,
            },
            alerts,
            metrics_listen: match self.metrics {
                None => None,
                Some(raw) => raw.validate(src)?,
            },
            backend,
            dev_mode: false,
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod reference_tests;
