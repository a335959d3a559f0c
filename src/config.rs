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
//! # The file
//!
//! Every setting is optional; the values shown are the defaults, except for
//! the recipients, the groups, the grant, the per-environment grace and the
//! `[[key]]` entry, which have none. An empty file is a valid config that
//! grants nothing.
//!
//! ```toml
//! # /etc/keyward/keyward.toml
//!
//! # identity.txt, install.key, keywardd.lock and store/ live here.
//! state_dir = "/var/lib/keyward"
//! # keys.sock (services) and admin.sock (operators) live here.
//! runtime_dir = "/run/keyward"
//! # The hash-chained audit log.
//! audit_file = "/var/log/keyward/audit.jsonl"
//! # Lock the agent's memory so secrets are never swapped out.
//! lock_memory = true
//! # How long in-flight requests get to finish on shutdown ("500ms", "1m"...).
//! shutdown_grace = "10s"
//! # Break-glass: every key file is also encrypted to these age recipients.
//! extra_recipients = ["age15rsdur5qqy7q5ks8ca47aegza8r5qtnymaqxd90yp758z4ulfsqq76tn2d"]
//!
//! [sockets]
//! # Group owning keys.sock: a name or a numeric gid (default: root's group).
//! service_group = "keyward"
//! # Mode of keys.sock: "0660" (default, members of service_group may
//! # connect), "0600" (root only) or "0666" (every local user; allowed with
//! # a warning: the policy alone then decides).
//! service_mode = "0660"
//! # With an admin group, admin.sock is 0660 and owned by it (default: 0600,
//! # root only).
//! admin_group = "keyward-admin"
//!
//! [audit]
//! # "write": a record is written before the fetch is answered, and synced
//! # every fsync_interval; "fsync": synced before the answer.
//! durability = "write"
//! fsync_interval = "1s"
//! # Most records committed together by one write.
//! max_batch = 256
//!
//! [limits]
//! max_secret_bytes = 65536
//! # At least max_secret_bytes + 16384.
//! max_message_bytes = 1048576
//! max_connections_per_uid = 64
//! max_connections = 4096
//!
//! # Rotation defaults for every key (see `keyward rotate`).
//! [rotation]
//! # Retire is refused until this long after promotion ("0s" allowed).
//! grace = "10m"
//! # Each hook is killed (with its process group) after this.
//! hook_timeout = "30s"
//! # `keyward rotate` waits this long for every live subscriber of the key
//! # to be sent the staged key.
//! propagation_timeout = "30s"
//! # Auth failures reported against the new primary during the grace period
//! # that make `keyward rotate` roll back.
//! failure_threshold = 3
//!
//! # The environments keys may live in. Without an [environments] table:
//! # dev, staging and prod, all fail-closed.
//! [environments.prod]
//! # "fail-closed": a fetch whose audit record cannot be written fails.
//! # "fail-open": it is answered anyway (and a warning is logged).
//! on_audit_failure = "fail-closed"
//! # Overrides [rotation] grace for the keys of this environment.
//! grace = "1h"
//! [environments.staging]
//! [environments.dev]
//!
//! # Per-key rotation settings and hooks. For each key the first entry with a
//! # matching pattern applies; what it leaves out comes from the key's
//! # [environments.ENV] (grace only), then [rotation], then the defaults.
//! [[key]]
//! keys = ["prod/billing-api"]      # key patterns, as in grants
//! # Hooks are argv lists: the program is an absolute path (no PATH lookup:
//! # the agent runs as root), the arguments are never secrets. Secrets go
//! # through stdin and stdout only; hooks must not print them on stderr,
//! # which is shown in error messages.
//! # Prints the new secret on stdout (one trailing newline is removed).
//! generator = ["/usr/local/bin/new-billing-key", "--env", "prod"]
//! # Gets the candidate on stdin; exit 0 = the provider accepts it.
//! validator = ["/usr/local/bin/check-billing-key"]
//! # Gets the retired secret on stdin and revokes it at the provider.
//! revoker = ["/usr/local/bin/revoke-billing-key"]
//! grace = "15m"
//! hook_timeout = "20s"
//! propagation_timeout = "30s"
//! failure_threshold = 5
//!
//! # Who may read what. Deny by default. A grant applies to a caller when
//! # every kind of selector it lists matches (users/uids, groups/gids,
//! # executables, units), each kind matching when any of its values does.
//! [[grant]]
//! users = ["billing"]              # resolved to uids when the file is loaded
//! uids = [1001]
//! groups = ["billing"]             # resolved to gids
//! gids = [1001]
//! executables = ["/usr/local/bin/billing-worker"]   # absolute paths
//! units = ["billing-worker.service"]
//! keys = ["prod/billing-*", "*/crm-api"]
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

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::audit::Durability;
use crate::hooks::HookCommand;
use crate::policy::{Grant, KeyPattern, Policy};
use crate::secret::{validate_name, KeyRef};

/// Where the agent looks for its config when not told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/keyward/keyward.toml";
/// Default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/keyward";
/// Default `runtime_dir`.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/keyward";
/// Default `audit_file`.
pub const DEFAULT_AUDIT_FILE: &str = "/var/log/keyward/audit.jsonl";
/// Default `sockets.service_mode`.
pub const DEFAULT_SERVICE_MODE: u32 = 0o660;
/// Default `shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The environments configured when the file has no `[environments]`.
pub const DEFAULT_ENVIRONMENTS: [&str; 3] = ["dev", "staging", "prod"];
/// How much larger than a secret a message must be allowed to be (the
/// KeySet's metadata and framing).
pub const MESSAGE_OVERHEAD_BYTES: usize = 16 * 1024;
/// Default `rotation.grace`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10 * 60);
/// Default `rotation.hook_timeout`.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `rotation.propagation_timeout`.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `rotation.failure_threshold`.
pub const DEFAULT_FAILURE_THRESHOLD: u64 = 3;

/// Every file and socket the agent uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// Holds the identity, install key, lock file and store.
    pub state_dir: PathBuf,
    /// `state_dir/store`: one age file per key.
    pub store_dir: PathBuf,
    /// `state_dir/identity.txt`: the agent's age identity.
    pub identity_file: PathBuf,
    /// `state_dir/install.key`: the per-install fingerprint salt and audit key.
    pub install_key_file: PathBuf,
    /// `state_dir/keywardd.lock`: held while an agent runs.
    pub lock_file: PathBuf,
    /// `runtime_dir/keys.sock`: the service socket.
    pub service_socket: PathBuf,
    /// `runtime_dir/admin.sock`: the admin socket.
    pub admin_socket: PathBuf,
    /// The audit log.
    pub audit_file: PathBuf,
}

impl Paths {
    /// The paths derived from the three configured locations.
    pub fn new(state_dir: &Path, runtime_dir: &Path, audit_file: &Path) -> Paths {
        Paths {
            state_dir: state_dir.to_owned(),
            store_dir: state_dir.join("store"),
            identity_file: state_dir.join("identity.txt"),
            install_key_file: state_dir.join("install.key"),
            lock_file: state_dir.join("keywardd.lock"),
            service_socket: runtime_dir.join("keys.sock"),
            admin_socket: runtime_dir.join("admin.sock"),
            audit_file: audit_file.to_owned(),
        }
    }

    /// Dev mode: everything inside `dir`.
    pub fn dev(dir: &Path) -> Paths {
        Paths::new(dir, dir, &dir.join("audit.jsonl"))
    }
}

impl Default for Paths {
    fn default() -> Paths {
        Paths::new(
            Path::new(DEFAULT_STATE_DIR),
            Path::new(DEFAULT_RUNTIME_DIR),
            Path::new(DEFAULT_AUDIT_FILE),
        )
    }
}

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
}

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
}

impl Default for RotationDefaults {
    fn default() -> RotationDefaults {
        RotationDefaults {
            grace: DEFAULT_GRACE,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            propagation_timeout: DEFAULT_PROPAGATION_TIMEOUT,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
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
    /// Where it was written, e.g. `keyward.toml line 12`.
    pub origin: String,
}

/// The rotation settings: `[rotation]` and the `[[key]]` entries, in file
/// order. Use [`Config::rotation_for`] to get one key's settings.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RotationConfig {
    /// The `[rotation]` table.
    pub defaults: RotationDefaults,
    /// The `[[key]]` entries; the first match wins.
    pub keys: Vec<KeyEntry>,
}

/// The effective rotation settings of one key (see [`Config::rotation_for`]).
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
    /// Prints a new secret on stdout; told the key in its environment.
    pub generator: Option<HookCommand>,
    /// Gets a candidate on stdin; told the key in its environment.
    pub validator: Option<HookCommand>,
    /// Gets the retired secret on stdin; told the key in its environment.
    pub revoker: Option<HookCommand>,
}

/// The `[audit]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditSettings {
    /// When a record counts as written.
    pub durability: Durability,
    /// How often the log is synced in [`Durability::Write`] mode.
    pub fsync_interval: Duration,
    /// Most records committed together.
    pub max_batch: usize,
}

impl Default for AuditSettings {
    fn default() -> AuditSettings {
        AuditSettings {
            durability: Durability::Write,
            fsync_interval: Duration::from_secs(1),
            max_batch: 256,
        }
    }
}

/// The `[limits]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest secret accepted by `put` and `stage`.
    pub max_secret_bytes: usize,
    /// Largest gRPC message, either way.
    pub max_message_bytes: usize,
    /// Most simultaneous connections from one uid.
    pub max_connections_per_uid: usize,
    /// Most simultaneous connections in all.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_secret_bytes: 65536,
            max_message_bytes: 1024 * 1024,
            max_connections_per_uid: 64,
            max_connections: 4096,
        }
    }
}

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
    /// Started with `--dev`.
    pub dev_mode: bool,
}

/// Why a config could not be loaded. Every message says where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error("config file {} not found: pass --config PATH to use another file, or --dev DIR to run without one", path.display())]
    NotFound {
        /// The path tried.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read config file {}: {source}: check its permissions, or pass --config PATH or --dev DIR", path.display())]
    Read {
        /// The path tried.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        /// The file name.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What toml or serde said (plus a hint).
        message: String,
    },
    /// Well-formed, but a value is not acceptable. The message names the
    /// file and line (`keyward.toml:14`) and says what to do.
    #[error("{message}")]
    Invalid {
        /// The file name.
        origin: String,
        /// 1-based line of the offending value.
        line: usize,
        /// The whole message.
        message: String,
    },
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
            environments: default_environments(),
            audit: AuditSettings::default(),
            limits: Limits::default(),
            policy: Policy::allow_all_for_uid(uid),
            lock_memory: true,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            extra_recipients: Vec::new(),
            rotation: RotationConfig::default(),
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
    /// `KEYWARD_NAME`.
    pub fn rotation_for(&self, key: &KeyRef) -> KeyRotation {
        let defaults = &self.rotation.defaults;
        let entry = self
            .rotation
            .keys
            .iter()
            .find(|e| e.keys.iter().any(|p| p.matches(key)));
        let set = |f: fn(&KeyEntry) -> Option<Duration>| entry.and_then(f);
        let hook = |f: fn(&KeyEntry) -> Option<&HookCommand>| entry.and_then(f).map(|c| c.clone().for_key(key));
        let env_grace = self.environments.get(key.env()).and_then(|e| e.grace);
        KeyRotation {
            grace: set(|e| e.grace).or(env_grace).unwrap_or(defaults.grace),
            hook_timeout: set(|e| e.hook_timeout).unwrap_or(defaults.hook_timeout),
            propagation_timeout: set(|e| e.propagation_timeout).unwrap_or(defaults.propagation_timeout),
            failure_threshold: entry
                .and_then(|e| e.failure_threshold)
                .unwrap_or(defaults.failure_threshold),
            generator: hook(|e| e.generator.as_ref()),
            validator: hook(|e| e.validator.as_ref()),
            revoker: hook(|e| e.revoker.as_ref()),
        }
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

/// dev, staging and prod, all fail-closed.
fn default_environments() -> BTreeMap<String, EnvConfig> {
    DEFAULT_ENVIRONMENTS
        .iter()
        .map(|e| (e.to_string(), EnvConfig::default()))
        .collect()
}

/// The text being parsed and its name, to turn byte spans into locations.
struct Source<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of byte `offset`.
    fn line_col(&self, offset: usize) -> (usize, usize) {
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
    fn at(&self, span: &Range<usize>) -> String {
        format!("{}:{}", self.origin, self.line_col(span.start).0)
    }

    fn invalid(&self, span: &Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line: self.line_col(span.start).0,
            message,
        }
    }

    fn parse_error(&self, e: &toml::de::Error) -> ConfigError {
        let (line, column) = self.line_col(e.span().map_or(0, |s| s.start));
        let mut message = e.message().trim_end().to_owned();
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSockets {
    service_group: Option<Spanned<StrOrInt>>,
    service_mode: Option<Spanned<StrOrInt>>,
    admin_group: Option<Spanned<StrOrInt>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    durability: Option<RawDurability>,
    fsync_interval: Option<Spanned<String>>,
    max_batch: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawDurability {
    Write,
    Fsync,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_secret_bytes: Option<Spanned<usize>>,
    max_message_bytes: Option<Spanned<usize>>,
    max_connections_per_uid: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnv {
    on_audit_failure: Option<RawFailureMode>,
    grace: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRotation {
    grace: Option<Spanned<String>>,
    hook_timeout: Option<Spanned<String>>,
    propagation_timeout: Option<Spanned<String>>,
    failure_threshold: Option<Spanned<u64>>,
}

/// A hook's argv: the span of the list (for "empty") and of each value.
type RawArgv = Option<Spanned<Vec<Spanned<String>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyEntry {
    keys: RawList<String>,
    generator: RawArgv,
    validator: RawArgv,
    revoker: RawArgv,
    grace: Option<Spanned<String>>,
    hook_timeout: Option<Spanned<String>>,
    propagation_timeout: Option<Spanned<String>>,
    failure_threshold: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawFailureMode {
    FailClosed,
    FailOpen,
}

/// A list in a grant: the span of the whole list (for "empty") and of each
/// value (for "unknown user" and the like).
type RawList<T> = Option<Spanned<Vec<Spanned<T>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    users: RawList<String>,
    uids: RawList<u32>,
    groups: RawList<String>,
    gids: RawList<u32>,
    executables: RawList<PathBuf>,
    units: RawList<String>,
    keys: RawList<String>,
}

/// A value that may be written as a string or an integer: groups (name or
/// gid) and modes ("0660" or 0o660).
enum StrOrInt {
    Str(String),
    Int(i64),
}

impl fmt::Display for StrOrInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrOrInt::Str(s) => write!(f, "{s:?}"),
            StrOrInt::Int(i) => write!(f, "{i}"),
        }
    }
}

impl<'de> Deserialize<'de> for StrOrInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrOrInt, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StrOrInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Str(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrOrInt, E> {
                i64::try_from(v)
                    .map(StrOrInt::Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

impl RawConfig {
    fn validate(self, src: &Source<'_>) -> Result<Config, ConfigError> {
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
        let mut key_entries = Vec::with_capacity(self.key_entries.len());
        for raw in self.key_entries {
            key_entries.push(key_entry(src, raw, &environments)?);
        }

        Ok(Config {
            paths: Paths::new(&state_dir, &runtime_dir, &audit_file),
            service_socket_group,
            service_socket_mode,
            admin_group,
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
        Ok(AuditSettings {
            durability: match self.durability {
                None => default.durability,
                Some(RawDurability::Write) => Durability::Write,
                Some(RawDurability::Fsync) => Durability::Fsync,
            },
            fsync_interval,
            max_batch,
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
        let limits = Limits {
            max_secret_bytes: take(&self.max_secret_bytes, "max_secret_bytes", default.max_secret_bytes)?,
            max_message_bytes: take(&self.max_message_bytes, "max_message_bytes", default.max_message_bytes)?,
            max_connections_per_uid: take(
                &self.max_connections_per_uid,
                "max_connections_per_uid",
                default.max_connections_per_uid,
            )?,
            max_connections: take(&self.max_connections, "max_connections", default.max_connections)?,
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

fn absolute_path(src: &Source<'_>, v: &Spanned<PathBuf>, key: &str) -> Result<PathBuf, ConfigError> {
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

fn duration(src: &Source<'_>, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
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

fn unit_name(src: &Source<'_>, v: &Spanned<String>) -> Result<String, ConfigError> {
    let unit = v.get_ref();
    let problem = if unit.is_empty() || unit.contains('/') || unit.chars().any(char::is_whitespace) {
        Some("is not a systemd unit name: write it as systemctl shows it, e.g. \"billing-worker.service\"".to_owned())
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
        })
    }
}

/// A timeout: zero would fail every hook or every wait before it starts.
fn positive_duration(src: &Source<'_>, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
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

/// A hook's argv, checked by [`HookCommand::new`]; the error points at the
/// offending value (the list itself when it is empty).
fn hook_command(src: &Source<'_>, raw: RawArgv, hook: &str) -> Result<Option<HookCommand>, ConfigError> {
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
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module docs' example, with accounts that exist on every test
    /// machine (root) in place of billing and keyward.
    const EXAMPLE: &str = r#"# /etc/keyward/keyward.toml
state_dir = "/srv/keyward/state"
runtime_dir = "/srv/keyward/run"
audit_file = "/srv/keyward/audit.jsonl"
lock_memory = false
shutdown_grace = "2500ms"
extra_recipients = ["age15rsdur5qqy7q5ks8ca47aegza8r5qtnymaqxd90yp758z4ulfsqq76tn2d"]

[sockets]
service_group = "root"
service_mode = "0600"
admin_group = 4242

[audit]
durability = "fsync"
fsync_interval = "2s"
max_batch = 64

[limits]
max_secret_bytes = 1024
max_message_bytes = 17408
max_connections_per_uid = 8
max_connections = 100

[rotation]
grace = "5m"
hook_timeout = "45s"
propagation_timeout = "1m"
failure_threshold = 4

[environments.prod]
on_audit_failure = "fail-open"
grace = "1h"
[environments.staging]
on_audit_failure = "fail-closed"
[environments.dev]

[[grant]]
users = ["root"]
uids = [1001]
groups = ["root"]
gids = [1001]
executables = ["/usr/local/bin/billing-worker"]
units = ["billing-worker.service"]
keys = ["prod/billing-*", "*/crm-api"]

[[grant]]
gids = [2000]
keys = ["staging/*"]

[[key]]
keys = ["prod/billing-api"]
generator = ["/usr/local/bin/new-billing-key", "--env", "prod"]
validator = ["/usr/local/bin/check-billing-key"]
revoker = ["/usr/local/bin/revoke-billing-key"]
grace = "15m"
hook_timeout = "20s"
failure_threshold = 5

[[key]]
keys = ["prod/billing-*", "*/crm-api"]
revoker = ["/usr/local/bin/revoke-generic"]
propagation_timeout = "10s"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "keyward.toml")
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_has(msg: &str, needles: &[&str]) {
        for n in needles {
            assert!(msg.contains(n), "{n:?} not in: {msg}");
        }
    }

    #[test]
    fn full_example_parses() {
        let c = parse(EXAMPLE).unwrap();
        let p = Path::new;
        assert_eq!(
            c.paths,
            Paths {
                state_dir: p("/srv/keyward/state").into(),
                store_dir: p("/srv/keyward/state/store").into(),
                identity_file: p("/srv/keyward/state/identity.txt").into(),
                install_key_file: p("/srv/keyward/state/install.key").into(),
                lock_file: p("/srv/keyward/state/keywardd.lock").into(),
                service_socket: p("/srv/keyward/run/keys.sock").into(),
                admin_socket: p("/srv/keyward/run/admin.sock").into(),
                audit_file: p("/srv/keyward/audit.jsonl").into(),
            }
        );
        assert!(!c.lock_memory);
        assert_eq!(c.shutdown_grace, Duration::from_millis(2500));
        assert_eq!(c.extra_recipients.len(), 1);
        assert_eq!(c.service_socket_group, Some(0));
        assert_eq!(c.service_socket_mode, 0o600);
        assert_eq!(c.admin_group, Some(4242));
        assert_eq!(
            c.audit,
            AuditSettings {
                durability: Durability::Fsync,
                fsync_interval: Duration::from_secs(2),
                max_batch: 64,
            }
        );
        assert_eq!(
            c.limits,
            Limits {
                max_secret_bytes: 1024,
                max_message_bytes: 17408,
                max_connections_per_uid: 8,
                max_connections: 100,
            }
        );
        let envs: Vec<(&str, AuditFailureMode)> = c
            .environments
            .iter()
            .map(|(k, v)| (k.as_str(), v.on_audit_failure))
            .collect();
        assert_eq!(
            envs,
            [
                ("dev", AuditFailureMode::FailClosed),
                ("prod", AuditFailureMode::FailOpen),
                ("staging", AuditFailureMode::FailClosed),
            ]
        );
        assert_eq!(c.policy.grants.len(), 2);
        let g = &c.policy.grants[0];
        assert_eq!(g.uids, [0, 1001]);
        assert_eq!(g.gids, [0, 1001]);
        assert_eq!(g.executables, [PathBuf::from("/usr/local/bin/billing-worker")]);
        assert_eq!(g.units, ["billing-worker.service"]);
        let keys: Vec<String> = g.keys.iter().map(ToString::to_string).collect();
        assert_eq!(keys, ["prod/billing-*", "*/crm-api"]);
        assert_eq!(g.origin, "keyward.toml line 38");
        assert_eq!(c.policy.grants[1].origin, "keyward.toml line 47");
        assert_eq!(c.environments["prod"].grace, Some(Duration::from_secs(3600)));
        assert_eq!(c.environments["dev"].grace, None);
        assert_eq!(
            c.rotation.defaults,
            RotationDefaults {
                grace: Duration::from_secs(300),
                hook_timeout: Duration::from_secs(45),
                propagation_timeout: Duration::from_secs(60),
                failure_threshold: 4,
            }
        );
        let argv = |a: &[&str]| Some(HookCommand::new(a.iter().map(ToString::to_string).collect()).unwrap());
        assert_eq!(
            c.rotation.keys,
            [
                KeyEntry {
                    keys: vec![KeyPattern::parse("prod/billing-api").unwrap()],
                    generator: argv(&["/usr/local/bin/new-billing-key", "--env", "prod"]),
                    validator: argv(&["/usr/local/bin/check-billing-key"]),
                    revoker: argv(&["/usr/local/bin/revoke-billing-key"]),
                    grace: Some(Duration::from_secs(900)),
                    hook_timeout: Some(Duration::from_secs(20)),
                    propagation_timeout: None,
                    failure_threshold: Some(5),
                    origin: "keyward.toml line 51".to_owned(),
                },
                KeyEntry {
                    keys: vec![
                        KeyPattern::parse("prod/billing-*").unwrap(),
                        KeyPattern::parse("*/crm-api").unwrap()
                    ],
                    generator: None,
                    validator: None,
                    revoker: argv(&["/usr/local/bin/revoke-generic"]),
                    grace: None,
                    hook_timeout: None,
                    propagation_timeout: Some(Duration::from_secs(10)),
                    failure_threshold: None,
                    origin: "keyward.toml line 60".to_owned(),
                },
            ]
        );
        assert!(!c.dev_mode);
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.paths, Paths::default());
        assert_eq!(c.paths.service_socket, Path::new("/run/keyward/keys.sock"));
        assert_eq!(c.paths.store_dir, Path::new("/var/lib/keyward/store"));
        assert_eq!(c.paths.audit_file, Path::new("/var/log/keyward/audit.jsonl"));
        assert_eq!(c.service_socket_group, None);
        assert_eq!(c.service_socket_mode, 0o660);
        assert_eq!(c.admin_group, None);
        assert!(c.lock_memory);
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert!(c.extra_recipients.is_empty());
        assert_eq!(c.audit, AuditSettings::default());
        assert_eq!(c.audit.durability, Durability::Write);
        assert_eq!(c.audit.fsync_interval, Duration::from_secs(1));
        assert_eq!(c.audit.max_batch, 256);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.max_message_bytes, 1_048_576);
        assert_eq!(c.environments, default_environments());
        assert_eq!(c.environments.keys().collect::<Vec<_>>(), ["dev", "prod", "staging"]);
        assert!(c.policy.grants.is_empty());
        assert!(!c.dev_mode);
        assert_eq!(c.rotation, RotationConfig::default());
        // Empty tables are the defaults too.
        let c = parse("[sockets]\n[audit]\n[limits]\n[rotation]\n").unwrap();
        assert_eq!(c.service_socket_mode, 0o660);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.rotation, RotationConfig::default());
    }

    #[test]
    fn rotation_defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.rotation_for(&"prod/billing-api".parse().unwrap()),
            KeyRotation {
                grace: Duration::from_secs(600),
                hook_timeout: Duration::from_secs(30),
                propagation_timeout: Duration::from_secs(30),
                failure_threshold: 3,
                generator: None,
                validator: None,
                revoker: None,
            }
        );
    }

    #[test]
    fn rotation_for_precedence() {
        let c = parse(EXAMPLE).unwrap();
        let for_key = |k: &str| c.rotation_for(&k.parse().unwrap());
        let s = |secs| Duration::from_secs(secs);

        // The first [[key]] entry sets everything but propagation_timeout.
        let r = for_key("prod/billing-api");
        assert_eq!(
            (r.grace, r.hook_timeout, r.propagation_timeout, r.failure_threshold),
            (s(900), s(20), s(60), 5)
        );
        let generator = r.generator.unwrap();
        assert_eq!(generator.argv, ["/usr/local/bin/new-billing-key", "--env", "prod"]);
        assert!(generator
            .env
            .contains(&("KEYWARD_KEY".into(), "prod/billing-api".into())));
        assert_eq!(r.validator.unwrap().program(), "/usr/local/bin/check-billing-key");
        assert_eq!(r.revoker.unwrap().program(), "/usr/local/bin/revoke-billing-key");

        // Second entry: grace from [environments.prod], the rest from
        // [rotation], no hooks it does not name.
        let r = for_key("prod/billing-ledger");
        assert_eq!(
            (r.grace, r.hook_timeout, r.propagation_timeout, r.failure_threshold),
            (s(3600), s(45), s(10), 4)
        );
        assert_eq!((r.generator, r.validator), (None, None));
        let revoker = r.revoker.unwrap();
        assert_eq!(revoker.program(), "/usr/local/bin/revoke-generic");
        assert!(revoker.env.contains(&("KEYWARD_NAME".into(), "billing-ledger".into())));

        // Second entry in an environment without its own grace.
        let r = for_key("staging/crm-api");
        assert_eq!((r.grace, r.propagation_timeout), (s(300), s(10)));
        assert!(r.revoker.is_some());

        // No entry: the environment's grace, else [rotation].
        let r = for_key("prod/other");
        assert_eq!((r.grace, r.hook_timeout, r.revoker), (s(3600), s(45), None));
        let r = for_key("dev/other");
        assert_eq!(
            (r.grace, r.hook_timeout, r.propagation_timeout, r.failure_threshold),
            (s(300), s(45), s(60), 4)
        );

        // The first matching entry wins, even one that sets nothing.
        let c = parse(
            "[[key]]\nkeys = [\"prod/*\"]\n[[key]]\nkeys = [\"prod/a\"]\ngenerator = [\"/bin/gen\"]\ngrace = \"0s\"\n",
        )
        .unwrap();
        let r = c.rotation_for(&"prod/a".parse().unwrap());
        assert_eq!((r.generator, r.grace), (None, DEFAULT_GRACE));
        let r = c.rotation_for(&"dev/a".parse().unwrap());
        assert_eq!(r.generator, None);
    }

    #[test]
    fn hook_paths_must_be_absolute() {
        let e = parse_err("[[key]]\nkeys = [\"prod/x\"]\n\nvalidator = [\"check-key\", \"--strict\"]\n");
        assert_has(
            &e,
            &[
                "validator in [[key]] at keyward.toml:4",
                "\"check-key\"",
                "absolute path",
                "root",
                "PATH",
            ],
        );
        let e = parse_err("[[key]]\nkeys = [\"prod/x\"]\nrevoker = [\n  \"./revoke\",\n]\n");
        assert_has(&e, &["revoker in [[key]] at keyward.toml:4", "absolute path"]);
        let e = parse_err("[[key]]\nkeys = [\"prod/x\"]\ngenerator = []\n");
        assert_has(
            &e,
            &[
                "generator in [[key]] at keyward.toml:3 is empty",
                "[\"/usr/local/bin/new-key\"",
            ],
        );
        let e = parse_err("[[key]]\nkeys = [\"prod/x\"]\ngenerator = \"/bin/gen --env prod\"\n");
        assert!(e.starts_with("keyward.toml:3:"), "{e}");
        let e = parse_err("[[key]]\nkeys = [\"prod/x\"]\ngenerator = [\"/bin/gen\",\n \"a\\u0000b\"]\n");
        assert_has(&e, &["keyward.toml:4", "NUL"]);
    }

    #[test]
    fn key_entries_need_valid_keys() {
        let e = parse_err("lock_memory = true\n[[key]]\ngrace = \"1m\"\n");
        assert_has(&e, &["[[key]] at keyward.toml:2 names no keys", "keys = ["]);
        let e = parse_err("[[key]]\nkeys = []\n");
        assert_has(&e, &["keys = [] in [[key]] at keyward.toml:1 is empty"]);
        let e = parse_err("[[key]]\nkeys = [\n\"prd/x\"]\n");
        assert_has(
            &e,
            &[
                "key pattern \"prd/x\" in [[key]] at keyward.toml:3",
                "[environments.prd]",
            ],
        );
        let e = parse_err("[[key]]\nkeys = [\"prod\"]\n");
        assert_has(&e, &["[[key]] at keyward.toml:2", "ENV/NAME"]);
        let c = parse("[[key]]\nkeys = [\"q*/x\"]\n").unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_has(&w[0], &["q*/x", "[[key]] at keyward.toml line 1"]);
    }

    #[test]
    fn rotation_durations_and_thresholds() {
        for (text, key, line) in [
            ("[rotation]\nhook_timeout = \"0s\"\n", "hook_timeout", 2),
            ("[rotation]\npropagation_timeout = \"0ms\"\n", "propagation_timeout", 2),
            (
                "[[key]]\nkeys = [\"dev/x\"]\nhook_timeout = \"0s\"\n",
                "hook_timeout",
                3,
            ),
            (
                "[[key]]\nkeys = [\"dev/x\"]\npropagation_timeout = \"0s\"\n",
                "propagation_timeout",
                3,
            ),
        ] {
            let e = parse_err(text);
            assert_has(&e, &[&format!("{key} at keyward.toml:{line} is zero"), "positive"]);
        }
        for text in [
            "[rotation]\nfailure_threshold = 0\n",
            "[[key]]\nkeys = [\"dev/x\"]\n\nfailure_threshold = 0\n",
        ] {
            let e = parse_err(text);
            assert_has(&e, &["failure_threshold at keyward.toml:", "is 0", "at least 1"]);
        }
        let e = parse_err("[rotation]\nfailure_threshold = -1\n");
        assert!(e.starts_with("keyward.toml:2:"), "{e}");
        for (text, line) in [
            ("[rotation]\ngrace = \"soon\"\n", 2),
            ("[environments.prod]\n\ngrace = \"1 fortnight\"\n", 3),
            ("[[key]]\nkeys = [\"dev/x\"]\ngrace = \"10\"\n", 3),
            ("[[key]]\nkeys = [\"dev/x\"]\nhook_timeout = \"x\"\n", 3),
        ] {
            let e = parse_err(text);
            assert_has(&e, &[&format!("keyward.toml:{line}"), "not a duration"]);
        }
        // A zero grace is allowed everywhere (tests rotate quickly).
        let c = parse(
            "[rotation]\ngrace = \"0s\"\n[environments.dev]\ngrace = \"0s\"\n[[key]]\nkeys = [\"dev/x\"]\ngrace = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(c.rotation.defaults.grace, Duration::ZERO);
        assert_eq!(c.environments["dev"].grace, Some(Duration::ZERO));
        assert_eq!(c.rotation_for(&"dev/x".parse().unwrap()).grace, Duration::ZERO);
    }

    #[test]
    fn environments_are_validated() {
        let c = parse("[environments.qa]\n").unwrap();
        assert_eq!(c.environments.keys().collect::<Vec<_>>(), ["qa"]);
        let e = parse_err("lock_memory = true\n[environments.Prod]\n");
        assert_has(&e, &["keyward.toml:2", "lowercase"]);
        let e = parse_err("[environments]\n");
        assert_has(&e, &["keyward.toml:1", "no environment"]);
        let e = parse_err("[environments.dev]\non_audit_failure = \"fail-opn\"\n");
        assert_has(&e, &["keyward.toml:2:", "fail-open"]);
    }

    #[test]
    fn unknown_field_is_rejected_with_line() {
        let cases: &[(&str, &str)] = &[
            ("lock_memroy = true\n", "keyward.toml:1:1: unknown field `lock_memroy`"),
            (
                "\n[sockets]\nservice_mod = \"0660\"\n",
                "keyward.toml:3:1: unknown field `service_mod`",
            ),
            (
                "[audit]\n\nmax_bach = 1\n",
                "keyward.toml:3:1: unknown field `max_bach`",
            ),
            ("[limits]\nmax_secrets = 1\n", "keyward.toml:2:1: unknown field"),
            (
                "[environments.prod]\nfail = 1\n",
                "keyward.toml:2:1: unknown field `fail`",
            ),
            (
                "[[grant]]\nuids = [1]\nkeys = [\"dev/*\"]\nuser = [\"x\"]\n",
                "keyward.toml:4:1: unknown field `user`",
            ),
            (
                "[rotation]\ngrace_period = \"1m\"\n",
                "keyward.toml:2:1: unknown field `grace_period`",
            ),
            (
                "[[key]]\nkeys = [\"dev/*\"]\ngenrator = [\"/bin/x\"]\n",
                "keyward.toml:3:1: unknown field `genrator`",
            ),
            ("[[keys]]\nkeys = [\"dev/*\"]\n", "keyward.toml:1:"),
            ("[[grants]]\nuids = [1]\n", "keyward.toml:1:"),
            ("[socket]\n", "keyward.toml:1:"),
        ];
        for (text, want) in cases {
            let e = parse_err(text);
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(e.contains("fix the spelling"), "{e}");
        }
    }

    #[test]
    fn syntax_and_type_errors_name_line_and_column() {
        let e = parse_err("lock_memory = true\nstate_dir = \"/x\n");
        assert!(e.starts_with("keyward.toml:2:"), "{e}");
        let e = parse_err("# é\nlock_memory = \"yes\"\n");
        assert!(e.starts_with("keyward.toml:2:15:"), "{e}");
        let e = parse_err("[[grant]]\nuids = [-1]\nkeys = [\"dev/*\"]\n");
        assert!(e.starts_with("keyward.toml:2:"), "{e}");
    }

    #[test]
    fn line_col_counts_characters() {
        let src = Source {
            text: "ab\né x\n",
            origin: "f",
        };
        assert_eq!(src.line_col(0), (1, 1));
        assert_eq!(src.line_col(2), (1, 3));
        assert_eq!(src.line_col(3), (2, 1));
        assert_eq!(src.line_col(4), (2, 1)); // inside 'é'
        assert_eq!(src.line_col(6), (2, 3));
        assert_eq!(src.line_col(100), (3, 1));
    }

    #[test]
    fn bad_duration() {
        for (text, line) in [
            ("shutdown_grace = \"ten\"\n", 1),
            ("\nshutdown_grace = \"10\"\n", 2),
            ("[audit]\nfsync_interval = \"1 fortnight\"\n", 2),
        ] {
            let e = parse_err(text);
            assert_has(&e, &[&format!("keyward.toml:{line}"), "not a duration", "\"10s\""]);
        }
        let e = parse_err("[audit]\nfsync_interval = \"0s\"\n");
        assert_has(&e, &["keyward.toml:2", "zero"]);
        let e = parse_err("shutdown_grace = 10\n");
        assert!(e.starts_with("keyward.toml:1:"), "{e}");
        let c = parse("shutdown_grace = \"1m 30s\"\n").unwrap();
        assert_eq!(c.shutdown_grace, Duration::from_secs(90));
    }

    #[test]
    fn service_mode_table() {
        let cases: &[(&str, Option<u32>)] = &[
            ("\"0660\"", Some(0o660)),
            ("\"0600\"", Some(0o600)),
            ("\"0666\"", Some(0o666)),
            ("\"660\"", Some(0o660)),
            ("\"0o660\"", Some(0o660)),
            ("0o660", Some(0o660)),
            ("\"0755\"", None),
            ("\"0670\"", None),
            ("\"0662\"", None),
            ("\"0640\"", None),
            ("\"04660\"", None),
            ("\"0777\"", None),
            ("\"rw-rw----\"", None),
            ("\"\"", None),
            ("\"0o\"", None),
            ("\"0000660\"", None),
            ("660", None),
            ("-1", None),
        ];
        for (value, want) in cases {
            let text = format!("[sockets]\nservice_mode = {value}\n");
            match (parse(&text), want) {
                (Ok(c), Some(m)) => assert_eq!(c.service_socket_mode, *m, "{value}"),
                (Err(e), None) => assert_has(&e.to_string(), &["keyward.toml:2", "service_mode", "\"0660\""]),
                (got, _) => panic!("{value}: {:?}", got.map(|c| c.service_socket_mode)),
            }
        }
        let c = parse("[sockets]\nservice_mode = \"0666\"\n").unwrap();
        assert_eq!(c.warnings().len(), 1);
        assert_has(&c.warnings()[0], &["0666", "0660"]);
    }

    #[test]
    fn socket_groups() {
        let c = parse("[sockets]\nservice_group = \"root\"\nadmin_group = \"77\"\n").unwrap();
        assert_eq!((c.service_socket_group, c.admin_group), (Some(0), Some(77)));
        let c = parse("[sockets]\nservice_group = 1234\n").unwrap();
        assert_eq!(c.service_socket_group, Some(1234));
        let e = parse_err("[sockets]\n\nadmin_group = \"no-such-group-kw\"\n");
        assert_has(
            &e,
            &[
                "unknown group 'no-such-group-kw'",
                "admin_group at keyward.toml:3",
                "groupadd",
            ],
        );
        let e = parse_err("[sockets]\nservice_group = -5\n");
        assert_has(&e, &["keyward.toml:2", "not a gid"]);
    }

    #[test]
    fn unknown_user() {
        let text = "[[grant]]\nuids = [1]\nusers = [\n  \"root\",\n  \"bilin-no-such-user\",\n]\nkeys = [\"dev/*\"]\n";
        let e = parse_err(text);
        assert_eq!(
            e,
            "unknown user 'bilin-no-such-user' in grant at keyward.toml:5: create the user or fix the name"
        );
        let e = parse_err("[[grant]]\nusers = [\"1001\"]\nkeys = [\"dev/*\"]\n");
        assert_has(&e, &["uids = [1001]"]);
        let e = parse_err("[[grant]]\ngroups = [\"no-such-group-kw\"]\nkeys = [\"dev/*\"]\n");
        assert_has(&e, &["unknown group 'no-such-group-kw' in grant at keyward.toml:2"]);
    }

    #[test]
    fn bad_pattern_names_its_line() {
        let cases: &[(&str, &str)] = &[
            ("\"prod\"", "ENV/NAME"),
            ("\"prod/a/b\"", "more than one '/'"),
            ("\"Prod/*\"", "lowercase"),
            ("\"prod/x?\"", "only wildcard"),
            ("\"prod/\"", "empty name part"),
        ];
        for (pattern, want) in cases {
            let text = format!("[[grant]]\nuids = [1]\nkeys = [\n  \"dev/*\",\n  {pattern},\n]\n");
            let e = parse_err(&text);
            assert_has(&e, &["grant at keyward.toml:5: key pattern", want]);
        }
    }

    #[test]
    fn grants_must_name_callers_and_keys() {
        let e = parse_err("lock_memory = true\n\n[[grant]]\nkeys = [\"dev/*\"]\n");
        assert_has(&e, &["grant at keyward.toml:3 names no caller", "users, uids, groups"]);
        let e = parse_err("[[grant]]\nuids = [1]\n");
        assert_has(&e, &["grant at keyward.toml:1 gives no keys", "keys = ["]);
        for key in ["users", "uids", "groups", "gids", "executables", "units", "keys"] {
            let e = parse_err(&format!("[[grant]]\nuids = [1]\n{key} = []\nkeys = [\"dev/x\"]\n"));
            // "keys" appears twice: the duplicate is a TOML error instead.
            if key == "keys" || key == "uids" {
                assert!(e.starts_with("keyward.toml:"), "{e}");
            } else {
                assert_has(&e, &[&format!("{key} = [] in grant at keyward.toml:1 is empty")]);
            }
        }
        let e = parse_err("[[grant]]\nuids = [1]\nkeys = []\n");
        assert_has(&e, &["keys = [] in grant at keyward.toml:1 is empty"]);
    }

    #[test]
    fn grant_env_must_be_configured() {
        let text = "[environments.prod]\n[[grant]]\nuids = [1]\nkeys = [\"*/x\", \"prd/billing\"]\n";
        let e = parse_err(text);
        assert_has(
            &e,
            &["keyward.toml:4", "'prd'", "[environments.prd]", "configured: prod"],
        );
        // Default environments count; globs are not checked but warned about.
        let c = parse("[[grant]]\nuids = [1]\nkeys = [\"staging/x\", \"q*/y\"]\n").unwrap();
        assert_eq!(c.policy.grants[0].keys.len(), 2);
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_has(&w[0], &["q*/y", "keyward.toml line 1"]);
    }

    #[test]
    fn executables_units_and_paths() {
        let e = parse_err("[[grant]]\nexecutables = [\"bin/worker\"]\nkeys = [\"dev/*\"]\n");
        assert_has(&e, &["keyward.toml:2", "absolute"]);
        let e = parse_err("[[grant]]\nexecutables = [\"/usr/bin/../x\"]\nkeys = [\"dev/*\"]\n");
        assert_has(&e, &["keyward.toml:2", "'..'"]);
        let e = parse_err("[[grant]]\nunits = [\"billing\"]\nkeys = [\"dev/*\"]\n");
        assert_has(&e, &["keyward.toml:2", "billing.service"]);
        let e = parse_err("[[grant]]\nunits = [\"a b.service\"]\nkeys = [\"dev/*\"]\n");
        assert_has(&e, &["keyward.toml:2", "not a systemd unit"]);
        for key in ["state_dir", "runtime_dir", "audit_file"] {
            let e = parse_err(&format!("\n{key} = \"relative/dir\"\n"));
            assert_has(&e, &[key, "keyward.toml:2", "absolute"]);
        }
    }

    #[test]
    fn limits_are_checked() {
        let e = parse_err("[limits]\nmax_secret_bytes = 65536\nmax_message_bytes = 70000\n");
        assert_has(&e, &["keyward.toml:3", "at least 81920"]);
        // Raising only the secret limit is caught too.
        let e = parse_err("[limits]\nmax_secret_bytes = 2000000\n");
        assert_has(&e, &["keyward.toml:2", "max_message_bytes", "at least 2016384"]);
        let e = parse_err("[limits]\nmax_connections = 0\n");
        assert_has(&e, &["max_connections at keyward.toml:2 is 0"]);
        let e = parse_err("[audit]\nmax_batch = 0\n");
        assert_has(&e, &["max_batch at keyward.toml:2 is 0"]);
        let e = parse_err("[limits]\nmax_connections = -3\n");
        assert!(e.starts_with("keyward.toml:2:"), "{e}");
    }

    #[test]
    fn bad_recipient() {
        for (value, want) in [
            ("ssh-ed25519 AAAA", "does not start with \"age1\""),
            ("age1notavalidkey", "not a valid age recipient"),
        ] {
            let e = parse_err(&format!("\nextra_recipients = [\n \"{value}\"]\n"));
            assert_has(&e, &["keyward.toml:3", want, "age-keygen"]);
        }
    }

    #[test]
    fn dev_config() {
        let dir = Path::new("/tmp/kw-dev");
        let c = Config::dev(dir, 1000);
        assert_eq!(
            c.paths,
            Paths {
                state_dir: dir.into(),
                store_dir: dir.join("store"),
                identity_file: dir.join("identity.txt"),
                install_key_file: dir.join("install.key"),
                lock_file: dir.join("keywardd.lock"),
                service_socket: dir.join("keys.sock"),
                admin_socket: dir.join("admin.sock"),
                audit_file: dir.join("audit.jsonl"),
            }
        );
        assert!(c.dev_mode);
        assert!(c.lock_memory);
        assert_eq!(c.service_socket_group, None);
        assert_eq!(c.service_socket_mode, 0o660);
        assert_eq!(c.environments, default_environments());
        assert_eq!(c.policy, Policy::allow_all_for_uid(1000));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.audit, AuditSettings::default());
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.rotation, RotationConfig::default());
        let r = c.rotation_for(&"prod/x".parse().unwrap());
        assert_eq!((r.grace, r.hook_timeout), (DEFAULT_GRACE, DEFAULT_HOOK_TIMEOUT));
    }

    #[test]
    fn into_dev_keeps_file_settings() {
        let dir = Path::new("/tmp/kw-dev2");
        let file = parse(EXAMPLE).unwrap();
        let c = file.clone().into_dev(dir, 1000);
        assert_eq!(c.paths, Paths::dev(dir));
        assert!(c.dev_mode);
        assert_eq!(c.policy.grants.len(), 3);
        assert_eq!(c.policy.grants[..2], file.policy.grants[..]);
        assert_eq!(c.policy.grants[2], Grant::allow_all_for_uid(1000));
        assert_eq!(c.limits, file.limits);
        assert_eq!(c.environments, file.environments);
        assert_eq!(c.service_socket_group, file.service_socket_group);
        assert_eq!(c.service_socket_mode, file.service_socket_mode);
        assert_eq!(c.admin_group, file.admin_group);
        assert_eq!(c.audit, file.audit);
        assert_eq!(c.rotation, file.rotation);
    }

    #[test]
    fn load_reads_the_file_and_explains_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.toml");
        let e = Config::load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::NotFound { .. }), "{e:?}");
        assert_has(&e.to_string(), &[&path.display().to_string(), "--config", "--dev DIR"]);
        std::fs::write(&path, "shutdown_grace = \"3s\"\nbogus = 1\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:2:1: unknown field", path.display())), "{e}");
        std::fs::write(&path, "shutdown_grace = \"3s\"\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
    }
}
