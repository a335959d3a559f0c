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
//! # Serve systemd's LoadCredential= on creds.sock (mode 0600: only root,
//! # i.e. systemd, connects). A unit's `LoadCredential=prod.billing-api:
//! # /run/keyward/creds.sock` gets prod/billing-api if a grant naming only
//! # `units` lets that unit read it. Default false.
//! credentials = false
//!
//! [audit]
//! # "write": a record is written before the fetch is answered, and synced
//! # every fsync_interval; "fsync": synced before the answer.
//! durability = "write"
//! fsync_interval = "1s"
//! # Most records committed together by one write.
//! max_batch = 256
//! # Refusals (denials, invalid requests) alike — same uid, event, outcome
//! # and key — within this window are recorded as the first one, at once,
//! # plus one record counting the rest when the window ends, so a caller
//! # without a grant cannot fill the audit disk. "0s" records each one.
//! coalesce_window = "60s"
//! # Alert (agent_health) when the audit log's filesystem has less free
//! # space than this: a size ("256MiB", "1GB") or a share of the
//! # filesystem ("5%"); "0" never alerts.
//! min_free = "256MiB"
//!
//! [limits]
//! max_secret_bytes = 65536
//! # At least max_secret_bytes + 16384.
//! max_message_bytes = 1048576
//! max_connections_per_uid = 64
//! max_connections = 4096
//! # Calls open at once on one connection (HTTP/2 streams): a client waits
//! # for a free one. Every watch holds one for as long as it lasts.
//! max_streams_per_connection = 64
//! # Calls open at once by one uid on all its connections; over it a call
//! # is refused with RESOURCE_EXHAUSTED. With the watch limits below, this
//! # bounds what one uid can make the agent hold.
//! max_streams_per_uid = 2048
//! # Live WatchKeys calls of one uid, and of all uids; over either, a new
//! # watch is refused with RESOURCE_EXHAUSTED. One call watches up to 1024
//! # keys: a process needs one.
//! max_watches_per_uid = 1024
//! max_watches = 16384
//! # Each connection is pinged this often, and closed if it does not answer
//! # within keepalive_timeout (a hung client frees what it holds).
//! keepalive_interval = "1m"
//! keepalive_timeout = "20s"
//! # A connection with no call open for this long is closed (clients
//! # reconnect on their next call); it is looked at once per timeout, so
//! # an idle connection goes within twice this.
//! idle_timeout = "10m"
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
//! # Distinct reporters (uids, told apart by their verified unit or program)
//! # whose auth-failure reports close the retire gate and make `keyward
//! # rotate` roll back: one reader alone cannot hold a rotation. Capped by
//! # how many reporters were served the new key, so the only consumer of a
//! # key still counts on its own.
//! report_quorum = 2
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
//! report_quorum = 1
//! # Overrides of [alerts.detect] for these keys.
//! alerts = { spike_threshold = 10, max_age = "90d" }
//!
//! # Alerting: detectors turn auth-failure reports, expiry and the agent's
//! # own failures into alerts; sinks deliver them (see keyward::alerts).
//! [alerts]
//! # Sent as agent_host (default: this machine's host name).
//! agent_host = "app-1.example.com"
//! # An open alert is sent again this often while it lasts.
//! repeat_interval = "30m"
//! # ReportAuthFailure calls accepted per caller uid per second, and the
//! # burst above that rate; the rest are refused and counted.
//! report_rate = 20
//! report_burst = 100
//!
//! # Detector thresholds for every key ([[key]] alerts = {…} overrides).
//! [alerts.detect]
//! # The sliding window of the counting signals; an alert resolves once its
//! # signal has been clear for a whole window.
//! window = "60s"
//! # Reports against the current primary within the window: a spike.
//! spike_threshold = 5
//! # Whole windows of growing failure counts in a row: a rising rate...
//! rising_windows = 3
//! # ...the last of them with at least this many reports.
//! rising_min = 10
//! # Warn this long before the primary's expires_at.
//! expiry_lead = "7d"
//! # Rotation policy: warn when the primary has served longer (no default).
//! max_age = "90d"
//!
//! # Sinks (several at once). Without any, alerts go to the agent's log.
//! # Common settings, with their defaults: name (kind-N), min_severity
//! # ("info", "warning", "critical"), signals (all; e.g. ["spike",
//! # "fallback_failing"]), queue = 1000, timeout = "10s", retries = 5,
//! # backoff = "1s" (doubled each retry, at most 1m). Tokens may be given
//! # inline or, better, in a root-only file (url_file, routing_key_file,
//! # password_file); they never appear in logs.
//! [[alerts.sink]]
//! kind = "webhook"                 # the generic JSON payload
//! url_file = "/etc/keyward/webhook-url"
//! headers = { Authorization = "Bearer …" }
//! ca_file = "/etc/ssl/internal-ca.pem"    # extra trusted roots (any HTTP sink)
//! [[alerts.sink]]
//! kind = "slack"                   # Slack incoming webhook
//! url_file = "/etc/keyward/slack-url"
//! min_severity = "warning"
//! [[alerts.sink]]
//! kind = "pagerduty"               # Events API v2: trigger and resolve
//! routing_key_file = "/etc/keyward/pagerduty-key"
//! min_severity = "critical"
//! [[alerts.sink]]
//! kind = "smtp"
//! host = "smtp.example.com"
//! port = 587                       # default: 587, 465 with tls = "tls", 25 with "none"
//! tls = "starttls"                 # or "tls", or "none" (loopback relays; no password)
//! username = "keyward"
//! password_file = "/etc/keyward/smtp-password"
//! from = "keyward@example.com"
//! to = ["oncall@example.com"]
//! [[alerts.sink]]
//! kind = "exec"                    # gets the JSON payload on stdin
//! command = ["/usr/local/bin/page-oncall", "--team", "payments"]
//! [[alerts.sink]]
//! kind = "log"                     # one structured line per notification
//!
//! # Prometheus text exposition (off by default). Loopback TCP or a Unix
//! # socket only: the endpoint has no authentication.
//! [metrics]
//! listen = "127.0.0.1:9464"        # or "unix:/run/keyward/metrics.sock"
//!
//! # Where the keys live: "local" (the default: store/ under state_dir) or
//! # "openbao" (OpenBao or Vault KV v2, shared by a fleet of agents; store/
//! # keeps this agent's encrypted local copy). Read at start only.
//! [backend]
//! kind = "local"
//! # kind = "openbao"
//! # address = "https://openbao.internal:8200"
//! # mount = "secret"                  # the KV v2 mount
//! # prefix = "keyward"                # every path keyward uses starts with it
//! # ca_file = "/etc/keyward/openbao-ca.pem"
//! # token_file = "/etc/keyward/openbao.token"   # or approle = { role_id_file = "…", secret_id_file = "…" }
//! # recipients = ["age1…"]            # every agent of the fleet
//! # agent_id = "web-1"                # default: the host name
//! # poll_interval = "500ms"
//! # resync_interval = "60s"
//! # status_ttl = "30s"
//! # stale_after = "30s"
//! # request_timeout = "5s"
//! # initial_sync_timeout = "5s"
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

mod alerts;
pub mod backend;
mod raw;
pub mod size;
mod validate;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::alerts::{AlertsConfig, DetectOverrides, DetectSettings};
use crate::audit::Durability;
use crate::hooks::HookCommand;
use crate::policy::{Grant, KeyPattern, Policy};
use crate::secret::KeyRef;
use raw::RawConfig;
use validate::Source;

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
/// Default `rotation.report_quorum`.
pub const DEFAULT_REPORT_QUORUM: u64 = 2;

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
    /// `runtime_dir/creds.sock`: systemd's `LoadCredential=` socket, when
    /// `[sockets] credentials` is on.
    pub credentials_socket: PathBuf,
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
            credentials_socket: runtime_dir.join("creds.sock"),
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
    /// Distinct reporters whose failures close the retire gate and roll back.
    pub report_quorum: u64,
}

impl Default for RotationDefaults {
    fn default() -> RotationDefaults {
        RotationDefaults {
            grace: DEFAULT_GRACE,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            propagation_timeout: DEFAULT_PROPAGATION_TIMEOUT,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            report_quorum: DEFAULT_REPORT_QUORUM,
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
    /// Overrides of the alert detectors' thresholds.
    pub detect: DetectOverrides,
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
    /// Distinct reporters whose failures close the retire gate and roll
    /// back (before the cap by reporters served, see `report_quorum`).
    pub report_quorum: u64,
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
    /// Refusals alike within this window are coalesced into one record
    /// (zero: each is recorded).
    pub coalesce_window: Duration,
    /// Below this much free space on the audit log's filesystem, an
    /// `agent_health` alert fires.
    pub min_free: size::MinFree,
}

/// Default `[audit] coalesce_window`: the first refusal of a kind is
/// written at once whatever the window, so it only delays the count of the
/// rest; a minute keeps a sustained flood from one uid to two records per
/// kind of refusal a minute, and matches the default alert window.
pub const DEFAULT_COALESCE_WINDOW: Duration = Duration::from_secs(60);

/// Default `[audit] min_free`: room for about half a million more fetch
/// records, and hours of warning on a busy host, before fail-closed
/// fetches start failing.
pub const DEFAULT_MIN_FREE: size::MinFree = size::MinFree::Bytes(256 << 20);

impl Default for AuditSettings {
    fn default() -> AuditSettings {
        AuditSettings {
            durability: Durability::Write,
            fsync_interval: Duration::from_secs(1),
            max_batch: 256,
            coalesce_window: DEFAULT_COALESCE_WINDOW,
            min_free: DEFAULT_MIN_FREE,
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
    /// Most open HTTP/2 streams (calls) on one connection: the
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` the agent announces. Clients wait
    /// for a free stream; a peer that opens more gets them refused.
    pub max_streams_per_connection: u32,
    /// Most open calls of one uid, on all its connections together: what
    /// bounds the memory one uid can make the agent hold, however it
    /// spreads its calls. Over it a call is refused with
    /// `RESOURCE_EXHAUSTED`.
    pub max_streams_per_uid: usize,
    /// Most live `WatchKeys` subscriptions of one uid.
    pub max_watches_per_uid: usize,
    /// Most live `WatchKeys` subscriptions in all.
    pub max_watches: usize,
    /// An HTTP/2 PING goes to each connection this often...
    pub keepalive_interval: Duration,
    /// ...and a connection that does not answer it within this is closed.
    pub keepalive_timeout: Duration,
    /// A connection with no open call for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_secret_bytes: 65536,
            max_message_bytes: 1024 * 1024,
            max_connections_per_uid: 64,
            max_connections: 4096,
            max_streams_per_connection: 64,
            max_streams_per_uid: 2048,
            max_watches_per_uid: 1024,
            max_watches: 16384,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(600),
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
    pub metrics_listen: Option<crate::metrics::http::MetricsListen>,
    /// `[backend]`: the store directory, or OpenBao KV v2 (fleet mode).
    pub backend: backend::BackendConfig,
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
            backend: backend::BackendConfig::Local,
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
            report_quorum: entry.and_then(|e| e.report_quorum).unwrap_or(defaults.report_quorum),
            generator: hook(|e| e.generator.as_ref()),
            validator: hook(|e| e.validator.as_ref()),
            revoker: hook(|e| e.revoker.as_ref()),
        }
    }

    /// The alert detectors' thresholds for `key`: `[alerts.detect]` (or
    /// the defaults), overridden by the `alerts = {…}` of the first
    /// `[[key]]` entry matching the key.
    pub fn detect_for(&self, key: &KeyRef) -> DetectSettings {
        let entry = self
            .rotation
            .keys
            .iter()
            .find(|e| e.keys.iter().any(|p| p.matches(key)));
        match entry {
            Some(e) => e.detect.apply(&self.alerts.detect),
            None => self.alerts.detect.clone(),
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

/// Why a grant's executable can match no caller as things stand, if it
/// cannot: it is missing, not a regular file, or it (or a directory on its
/// path) can be changed by a non-root user, whose code then never counts as
/// the program (see [`crate::policy::writable_by_non_root`]). Checked again
/// for every caller, so a fixed file starts matching without a reload.
fn executable_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Some(format!(
                "cannot be read ({e}): the grant matches no caller until it exists"
            ))
        }
    };
    if !meta.is_file() {
        return Some("is not a regular file: the grant matches no caller".to_owned());
    }
    if crate::policy::writable_by_non_root(meta.uid(), meta.mode()) {
        return Some(format!(
            "is owned by uid {} with mode {:o}: a non-root user can change it, so it never counts as the program; make it root's and not writable by group or others (chown root: and chmod go-w)",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    for dir in path.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else { continue };
        if crate::policy::writable_by_non_root(meta.uid(), meta.mode()) && meta.mode() & 0o1000 == 0 {
            return Some(format!(
                "its directory {} can be changed by a non-root user (uid {}, mode {:o}), who could put another program at this path; install it in a root-owned directory",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    None
}

/// dev, staging and prod, all fail-closed.
fn default_environments() -> BTreeMap<String, EnvConfig> {
    DEFAULT_ENVIRONMENTS
        .iter()
        .map(|e| (e.to_string(), EnvConfig::default()))
        .collect()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod alerts_tests;

#[cfg(test)]
mod proptests;
