//! Raw to typed: checks each value of the file, builds the `Config`, and words every error with its file and line.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{
    RawArgv, RawAudit, RawConfig, RawDurability, RawEnv, RawFailureMode, RawGrant, RawKeyEntry, RawLimits, RawList,
    RawRotation, StrOrInt,
};
use super::{
    default_environments, AuditFailureMode, AuditSettings, Config, ConfigError, EnvConfig, KeyEntry, Limits, Paths,
    RotationConfig, RotationDefaults, DEFAULT_AUDIT_FILE, DEFAULT_FAILURE_THRESHOLD, DEFAULT_REPORT_QUORUM,
    DEFAULT_RUNTIME_DIR, DEFAULT_SERVICE_MODE, DEFAULT_SHUTDOWN_GRACE, DEFAULT_STATE_DIR, MESSAGE_OVERHEAD_BYTES,
};
use crate::audit::Durability;
use crate::hooks::HookCommand;
use crate::policy::{Grant, KeyPattern, Policy};
use crate::secret::validate_name;

/// The text being parsed and its name, to turn byte spans into locations.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a str,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of byte `offset`.
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    /// `keyward.toml:14`.
    pub(super) fn at(&self, span: &Range<usize>) -> String {
        format!("{}:{}", self.origin, self.line_col(span.start).0)
    }

    pub(super) fn invalid(&self, span: &Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line: self.line_col(span.start).0,
            message,
        }
    }

    pub(super) fn parse_error(&self, e: &toml::de::Error) -> ConfigError {
        let (line, column) = self.line_col(e.span().map_or(0, |s| s.start));
        let mut message = e.message().trim_end().to_owned();
        if message.is_empty() {
            // toml says nothing for some cut-short input (`key = ` at the end of the file).
            message = "incomplete TOML here: a value, quote or bracket is missing (was the file cut short?)".to_owned();
        }
        if message.starts_with("unknown field") {
            message.push_str(": fix the spelling or remove it");
        }
        ConfigError::Parse {
            origin: self.origin.to_owned(),
            line,
            column,
            message,
        }
    }
}

use super::backend::BackendConfig;

impl RawConfig {
    pub(super) fn validate(self, src: &Source<'_>) -> Result<Config, ConfigError> {
        let dir = |value: Option<Spanned<PathBuf>>, key: &str, default: &str| match value {
            None => Ok(PathBuf::from(default)),
            Some(v) => absolute_path(src, &v, key),
        };
        let state_dir = dir(self.state_dir, "state_dir", DEFAULT_STATE_DIR)?;
        let runtime_dir = dir(self.runtime_dir, "runtime_dir", DEFAULT_RUNTIME_DIR)?;
        let audit_file = dir(self.audit_file, "audit_file", DEFAULT_AUDIT_FILE)?;

        let shutdown_grace = match self.shutdown_grace {
            None => DEFAULT_SHUTDOWN_GRACE,
            Some(v) => duration(src, &v, "shutdown_grace")?,
        };

        let mut extra_recipients = Vec::new();
        for r in self.extra_recipients.unwrap_or_default() {
            extra_recipients.push(recipient(src, &r)?);
        }

        let sockets = self.sockets.unwrap_or_default();
        let service_socket_group = sockets
            .service_group
            .map(|g| socket_group(src, &g, "service_group"))
            .transpose()?;
        let admin_group = sockets
            .admin_group
            .map(|g| socket_group(src, &g, "admin_group"))
            .transpose()?;
        let service_socket_mode = match sockets.service_mode {
            None => DEFAULT_SERVICE_MODE,
            Some(m) => service_mode(src, &m)?,
        };

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
            None => crate::alerts::AlertsConfig::default(),
            Some(raw) => raw.validate(src)?,
        };
        let mut key_entries = Vec::with_capacity(self.key_entries.len());
        for raw in self.key_entries {
            key_entries.push(key_entry(src, raw, &environments)?);
        }

        Ok(Config {
            paths: Paths::new(&state_dir, &runtime_dir, &audit_file),
            service_socket_group,
            service_socket_mode,
            admin_group,
            credentials_socket: sockets.credentials.unwrap_or(false),
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
            metrics_listen: match self.metrics.and_then(|m| m.listen) {
                None => None,
                Some(v) => Some(
                    v.get_ref()
                        .parse::<crate::metrics::http::MetricsListen>()
                        .map_err(|e| {
                            src.invalid(&v.span(), format!("[metrics] listen at {}: {e}", src.at(&v.span())))
                        })?,
                ),
            },
            backend: match self.backend {
                None => BackendConfig::Local,
                Some(raw) => raw.validate(src)?,
            },
            dev_mode: false,
        })
    }
}

impl RawAudit {
    fn validate(self, src: &Source<'_>) -> Result<AuditSettings, ConfigError> {
        let default = AuditSettings::default();
        let fsync_interval = match self.fsync_interval {
            None => default.fsync_interval,
            Some(v) => {
                let d = duration(src, &v, "fsync_interval")?;
                if d.is_zero() {
                    return Err(src.invalid(
                        &v.span(),
                        format!(
                            "fsync_interval at {} is zero: give an interval such as \"1s\", or set durability = \"fsync\" to sync every batch",
                            src.at(&v.span())
                        ),
                    ));
                }
                d
            }
        };
        let max_batch = match self.max_batch {
            None => default.max_batch,
            Some(v) => at_least_one(src, &v, "max_batch")?,
        };
        let coalesce_window = match self.coalesce_window {
            None => default.coalesce_window,
            Some(v) => duration(src, &v, "coalesce_window")?,
        };
        let min_free = match self.min_free {
            None => default.min_free,
            Some(v) => v.get_ref().parse().map_err(|e| {
                src.invalid(
                    &v.span(),
                    format!(
                        "min_free = {:?} at {} is not a size or a percentage ({e}): write e.g. \"256MiB\", \"1GB\" or \"5%\" (\"0\" turns the alert off)",
                        v.get_ref(),
                        src.at(&v.span())
                    ),
                )
            })?,
        };
        Ok(AuditSettings {
            durability: match self.durability {
                None => default.durability,
                Some(RawDurability::Write) => Durability::Write,
                Some(RawDurability::Fsync) => Durability::Fsync,
            },
            fsync_interval,
            max_batch,
            coalesce_window,
            min_free,
        })
    }
}

impl RawLimits {
    fn validate(self, src: &Source<'_>) -> Result<Limits, ConfigError> {
        let default = Limits::default();
        let take = |v: &Option<Spanned<usize>>, key: &str, default: usize| match v {
            None => Ok(default),
            Some(v) => at_least_one(src, v, key),
        };
        let period = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
            None => Ok(default),
            Some(v) => positive_duration(src, v, key),
        };
        let limits = Limits {
            max_secret_bytes: take(&self.max_secret_bytes, "max_secret_bytes", default.max_secret_bytes)?,
            max_message_bytes: take(&self.max_message_bytes, "max_message_bytes", default.max_message_bytes)?,
            max_connections_per_uid: take(
                &self.max_connections_per_uid,
                "max_connections_per_uid",
                default.max_connections_per_uid,
            )?,
            max_connections: take(&self.max_connections, "max_connections", default.max_connections)?,
            max_streams_per_connection: match &self.max_streams_per_connection {
                None => default.max_streams_per_connection,
                Some(v) => streams_per_connection(src, v)?,
            },
            max_streams_per_uid: take(
                &self.max_streams_per_uid,
                "max_streams_per_uid",
                default.max_streams_per_uid,
            )?,
            max_watches_per_uid: take(
                &self.max_watches_per_uid,
                "max_watches_per_uid",
                default.max_watches_per_uid,
            )?,
            max_watches: take(&self.max_watches, "max_watches", default.max_watches)?,
            keepalive_interval: period(
                &self.keepalive_interval,
                "keepalive_interval",
                default.keepalive_interval,
            )?,
            keepalive_timeout: period(&self.keepalive_timeout, "keepalive_timeout", default.keepalive_timeout)?,
            idle_timeout: period(&self.idle_timeout, "idle_timeout", default.idle_timeout)?,
        };
        let needed = limits.max_secret_bytes.saturating_add(MESSAGE_OVERHEAD_BYTES);
        if limits.max_message_bytes < needed {
            // Point at max_message_bytes if it was written, else at the
            // secret limit that outgrew the default message size.
            let span = (self.max_message_bytes.as_ref())
                .or(self.max_secret_bytes.as_ref())
                .map_or(0..0, Spanned::span);
            let message = format!(
                "max_message_bytes ({}) is too small for max_secret_bytes ({}) at {}: set max_message_bytes to at least {needed} (the secret plus {MESSAGE_OVERHEAD_BYTES} bytes for metadata)",
                limits.max_message_bytes,
                limits.max_secret_bytes,
                src.at(&span),
            );
            return Err(src.invalid(&span, message));
        }
        Ok(limits)
    }
}

/// The HTTP/2 stream limit: RFC 9113 advises at least 100, and below a
/// handful a client's watches would leave no stream for its other calls.
fn streams_per_connection(src: &Source<'_>, v: &Spanned<u32>) -> Result<u32, ConfigError> {
    const MIN: u32 = 8;
    if *v.get_ref() < MIN {
        return Err(src.invalid(
            &v.span(),
            format!(
                "max_streams_per_connection at {} is {}: give at least {MIN} (a client's watches each hold a stream for as long as they last), or remove the line for the default",
                src.at(&v.span()),
                v.get_ref()
            ),
        ));
    }
    Ok(*v.get_ref())
}

fn at_least_one(src: &Source<'_>, v: &Spanned<usize>, key: &str) -> Result<usize, ConfigError> {
    if *v.get_ref() == 0 {
        return Err(src.invalid(
            &v.span(),
            format!(
                "{key} at {} is 0: give a positive number, or remove the line for the default",
                src.at(&v.span())
            ),
        ));
    }
    Ok(*v.get_ref())
}

pub(super) fn absolute_path(src: &Source<'_>, v: &Spanned<PathBuf>, key: &str) -> Result<PathBuf, ConfigError> {
    let path = v.get_ref();
    if !path.is_absolute() {
        return Err(src.invalid(
            &v.span(),
            format!(
                "{key} = {:?} at {} is not an absolute path: write the full path, starting with '/'",
                path.display().to_string(),
                src.at(&v.span())
            ),
        ));
    }
    Ok(path.clone())
}

pub(super) fn duration(src: &Source<'_>, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v.get_ref()).map_err(|e| {
        src.invalid(
            &v.span(),
            format!(
                "{key} = {:?} at {} is not a duration ({e}): write e.g. \"10s\", \"500ms\" or \"2m\"",
                v.get_ref(),
                src.at(&v.span())
            ),
        )
    })
}

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

fn service_mode(src: &Source<'_>, v: &Spanned<StrOrInt>) -> Result<u32, ConfigError> {
    let mode = match v.get_ref() {
        StrOrInt::Str(s) => {
            let digits = s.strip_prefix("0o").unwrap_or(s);
            if digits.is_empty() || digits.len() > 4 {
                None
            } else {
                u32::from_str_radix(digits, 8).ok()
            }
        }
        StrOrInt::Int(i) => u32::try_from(*i).ok(),
    };
    match mode {
        Some(m @ (0o600 | 0o660 | 0o666)) => Ok(m),
        _ => Err(src.invalid(
            &v.span(),
            format!(
                "service_mode = {} at {} is not allowed: use \"0660\" (members of service_group may connect), \"0600\" (root only) or \"0666\" (every local user); the socket needs read and write, never an execute bit",
                v.get_ref(),
                src.at(&v.span())
            ),
        )),
    }
}

fn socket_group(src: &Source<'_>, v: &Spanned<StrOrInt>, key: &str) -> Result<u32, ConfigError> {
    match v.get_ref() {
        StrOrInt::Int(i) => u32::try_from(*i).map_err(|_| {
            src.invalid(
                &v.span(),
                format!(
                    "{key} = {i} at {} is not a gid: give a group name or a gid from 0 to {}",
                    src.at(&v.span()),
                    u32::MAX
                ),
            )
        }),
        StrOrInt::Str(s) => match s.parse::<u32>() {
            Ok(gid) => Ok(gid),
            Err(_) => lookup_group(src, s, &v.span(), &format!("{key} at")),
        },
    }
}

/// Resolves a group name; `context` says where it was written ("in grant at").
fn lookup_group(src: &Source<'_>, name: &str, span: &Range<usize>, context: &str) -> Result<u32, ConfigError> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(src.invalid(
            span,
            format!(
                "unknown group '{name}' {context} {}: create the group (e.g. groupadd --system {name}) or fix the name{}",
                src.at(span),
                numeric_hint(name, "gids")
            ),
        )),
        Err(e) => Err(src.invalid(
            span,
            format!(
                "cannot look up group '{name}' {context} {}: {e}; check /etc/group and nsswitch",
                src.at(span)
            ),
        )),
    }
}

fn lookup_user(src: &Source<'_>, name: &str, span: &Range<usize>) -> Result<u32, ConfigError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(src.invalid(
            span,
            format!(
                "unknown user '{name}' in grant at {}: create the user or fix the name{}",
                src.at(span),
                numeric_hint(name, "uids")
            ),
        )),
        Err(e) => Err(src.invalid(
            span,
            format!(
                "cannot look up user '{name}' in grant at {}: {e}; check /etc/passwd and nsswitch",
                src.at(span)
            ),
        )),
    }
}

/// For a number written where a name belongs.
fn numeric_hint(name: &str, key: &str) -> String {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        format!(" (for a numeric id, write {key} = [{name}])")
    } else {
        String::new()
    }
}

fn environments(
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
        out.insert(
            name,
            EnvConfig {
                on_audit_failure,
                grace,
            },
        );
    }
    Ok(out)
}

/// The values of one list in a grant or `[[key]]` entry (`context`, e.g.
/// "grant at keyward.toml:3"), or an error when it was written empty (an
/// empty list would silently widen or void the entry).
fn list<T>(src: &Source<'_>, raw: RawList<T>, key: &str, context: &str) -> Result<Vec<Spanned<T>>, ConfigError> {
    match raw {
        None => Ok(Vec::new()),
        Some(v) if v.get_ref().is_empty() => Err(src.invalid(
            &v.span(),
            format!("{key} = [] in {context} is empty: add a value or remove the line"),
        )),
        Some(v) => Ok(v.into_inner()),
    }
}

fn grant(
    src: &Source<'_>,
    raw: Spanned<RawGrant>,
    environments: &BTreeMap<String, EnvConfig>,
) -> Result<Grant, ConfigError> {
    let span = raw.span();
    let at = src.at(&span);
    let origin = format!("{} line {}", src.origin, src.line_col(span.start).0);
    let raw = raw.into_inner();
    let ctx = format!("grant at {at}");

    let mut uids = Vec::new();
    for user in list(src, raw.users, "users", &ctx)? {
        uids.push(lookup_user(src, user.get_ref(), &user.span())?);
    }
    uids.extend(list(src, raw.uids, "uids", &ctx)?.into_iter().map(Spanned::into_inner));

    let mut gids = Vec::new();
    for group in list(src, raw.groups, "groups", &ctx)? {
        gids.push(lookup_group(src, group.get_ref(), &group.span(), "in grant at")?);
    }
    gids.extend(list(src, raw.gids, "gids", &ctx)?.into_iter().map(Spanned::into_inner));

    let mut executables = Vec::new();
    for exe in list(src, raw.executables, "executables", &ctx)? {
        executables.push(executable(src, &exe)?);
    }

    let mut units = Vec::new();
    for unit in list(src, raw.units, "units", &ctx)? {
        units.push(unit_name(src, &unit)?);
    }

    let raw_keys = list(src, raw.keys, "keys", &ctx)?;
    if raw_keys.is_empty() {
        return Err(src.invalid(
            &span,
            format!("grant at {at} gives no keys: add keys = [\"ENV/NAME\", ...], e.g. keys = [\"prod/billing-*\"]"),
        ));
    }
    let mut keys = Vec::with_capacity(raw_keys.len());
    for k in raw_keys {
        keys.push(key_pattern(src, &k, environments, "grant")?);
    }

    let grant = Grant {
        uids,
        gids,
        executables,
        units,
        keys,
        report: raw.report.unwrap_or(true),
        origin,
    };
    if !grant.has_selectors() {
        return Err(src.invalid(
            &span,
            format!(
                "grant at {at} names no caller: add at least one of users, uids, groups, gids, executables or units (a grant applies when all the kinds it lists match)"
            ),
        ));
    }
    if !grant.executables.is_empty() && !grant.names_principal() {
        return Err(src.invalid(
            &span,
            format!(
                "grant at {at} lists executables but no users, uids, groups or gids: an executable only narrows who may read, it cannot stand alone, because any process of any user may run that program (and preload or trace it); name the principal too, e.g. users = [\"billing\"] or uids = [1001]"
            ),
        ));
    }
    Ok(grant)
}

fn executable(src: &Source<'_>, v: &Spanned<PathBuf>) -> Result<PathBuf, ConfigError> {
    let path = v.get_ref();
    let problem = if !path.is_absolute() {
        Some("is not an absolute path: write the full path, starting with '/', as /proc/PID/exe shows it")
    } else if path.components().any(|c| c == Component::ParentDir) {
        Some("contains '..': write the resolved path, as /proc/PID/exe shows it")
    } else {
        None
    };
    match problem {
        None => Ok(path.clone()),
        Some(problem) => Err(src.invalid(
            &v.span(),
            format!(
                "executable {:?} in grant at {} {problem}",
                path.display().to_string(),
                src.at(&v.span())
            ),
        )),
    }
}

/// A `units` value: a unit name (`billing-worker.service`) or the unit's
/// cgroup (`/system.slice/billing-worker.service`).
fn unit_name(src: &Source<'_>, v: &Spanned<String>) -> Result<String, ConfigError> {
    let unit = v.get_ref();
    let last = unit.rsplit('/').next().unwrap_or_default();
    let problem = if unit.starts_with('/') {
        if unit.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == "..")
            || unit.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            Some("is not a cgroup path: write it as /proc/PID/cgroup shows it, e.g. \"/system.slice/billing-worker.service\"".to_owned())
        } else if !(last.ends_with(".service") || last.ends_with(".scope")) {
            Some(format!(
                "does not end with a service or scope: write the unit's own cgroup, e.g. \"{unit}/NAME.service\""
            ))
        } else {
            None
        }
    } else if unit.is_empty() || unit.contains('/') || unit.chars().any(char::is_whitespace) {
        Some("is not a systemd unit name: write it as systemctl shows it, e.g. \"billing-worker.service\", or its cgroup, e.g. \"/system.slice/billing-worker.service\"".to_owned())
    } else if !unit.contains('.') {
        Some(format!("has no unit type: write \"{unit}.service\""))
    } else {
        None
    };
    match problem {
        None => Ok(unit.clone()),
        Some(problem) => Err(src.invalid(
            &v.span(),
            format!("unit {unit:?} in grant at {} {problem}", src.at(&v.span())),
        )),
    }
}

/// A key pattern written in a `what` ("grant" or "[[key]]").
fn key_pattern(
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

impl RawRotation {
    fn validate(self, src: &Source<'_>) -> Result<RotationDefaults, ConfigError> {
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
        })
    }
}

/// A timeout: zero would fail every hook or every wait before it starts.
pub(super) fn positive_duration(src: &Source<'_>, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
    let d = duration(src, v, key)?;
    if d.is_zero() {
        return Err(src.invalid(
            &v.span(),
            format!(
                "{key} at {} is zero: give a positive duration such as \"30s\", or remove the line for the default",
                src.at(&v.span())
            ),
        ));
    }
    Ok(d)
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

/// A hook's argv, checked by [`HookCommand::new`]; the error points at the
/// offending value (the list itself when it is empty).
pub(super) fn hook_command(src: &Source<'_>, raw: RawArgv, hook: &str) -> Result<Option<HookCommand>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let list_span = raw.span();
    let values = raw.into_inner();
    let spans: Vec<Range<usize>> = values.iter().map(Spanned::span).collect();
    let argv = values.into_iter().map(Spanned::into_inner).collect();
    HookCommand::new(argv).map(Some).map_err(|e| {
        let span = match e {
            crate::hooks::InvalidHookCommand::Empty => list_span,
            crate::hooks::InvalidHookCommand::NotAbsolute { .. } => spans[0].clone(),
            crate::hooks::InvalidHookCommand::Nul { index } => spans[index].clone(),
        };
        src.invalid(&span, format!("{hook} in [[key]] at {} {e}", src.at(&span)))
    })
}

fn key_entry(
    src: &Source<'_>,
    raw: Spanned<RawKeyEntry>,
    environments: &BTreeMap<String, EnvConfig>,
) -> Result<KeyEntry, ConfigError> {
    let span = raw.span();
    let at = src.at(&span);
    let origin = format!("{} line {}", src.origin, src.line_col(span.start).0);
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
    Ok(KeyEntry {
        keys,
        generator: hook_command(src, raw.generator, "generator")?,
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
        detect: match raw.alerts {
            None => Default::default(),
            Some(d) => d.overrides(src, &format!("[[key]] at {at}"))?,
        },
        origin,
    })
}
