//! The config file as written: serde structs that reject unknown keys, before any validation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The file as written. Options distinguish "absent" (take the default).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) state_dir: Option<Spanned<PathBuf>>,
    pub(super) runtime_dir: Option<Spanned<PathBuf>>,
    pub(super) audit_file: Option<Spanned<PathBuf>>,
    pub(super) lock_memory: Option<bool>,
    pub(super) shutdown_grace: Option<Spanned<String>>,
    pub(super) extra_recipients: Option<Vec<Spanned<String>>>,
    pub(super) sockets: Option<RawSockets>,
    pub(super) audit: Option<RawAudit>,
    pub(super) limits: Option<RawLimits>,
    // Not Spanned: toml 0.8 cannot deserialize the keys of a spanned map.
    pub(super) environments: Option<BTreeMap<String, Spanned<RawEnv>>>,
    #[serde(default, rename = "grant")]
    pub(super) grants: Vec<Spanned<RawGrant>>,
    pub(super) rotation: Option<RawRotation>,
    #[serde(default, rename = "key")]
    pub(super) key_entries: Vec<Spanned<RawKeyEntry>>,
    pub(super) alerts: Option<RawAlerts>,
    pub(super) metrics: Option<RawMetrics>,
    pub(super) backend: Option<super::backend::RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub(super) agent_host: Option<Spanned<String>>,
    pub(super) repeat_interval: Option<Spanned<String>>,
    pub(super) report_rate: Option<Spanned<u32>>,
    pub(super) report_burst: Option<Spanned<u32>>,
    pub(super) detect: Option<RawDetect>,
    #[serde(default, rename = "sink")]
    pub(super) sinks: Vec<Spanned<RawSink>>,
}

/// Detector thresholds: `[alerts.detect]`, and `alerts = {…}` in `[[key]]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetect {
    pub(super) window: Option<Spanned<String>>,
    pub(super) spike_threshold: Option<Spanned<u64>>,
    pub(super) rising_windows: Option<Spanned<u32>>,
    pub(super) rising_min: Option<Spanned<u64>>,
    pub(super) expiry_lead: Option<Spanned<String>>,
    pub(super) max_age: Option<Spanned<String>>,
}

/// One `[[alerts.sink]]`: the union of every kind's settings; validation
/// refuses the ones its kind does not take.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    pub(super) kind: Spanned<String>,
    pub(super) name: Option<Spanned<String>>,
    pub(super) min_severity: Option<Spanned<String>>,
    pub(super) signals: RawList<String>,
    pub(super) queue: Option<Spanned<usize>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) retries: Option<Spanned<u32>>,
    pub(super) backoff: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) url_file: Option<Spanned<PathBuf>>,
    pub(super) headers: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) routing_key: Option<Spanned<String>>,
    pub(super) routing_key_file: Option<Spanned<PathBuf>>,
    pub(super) ca_file: Option<Spanned<PathBuf>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<u16>>,
    pub(super) tls: Option<Spanned<String>>,
    pub(super) username: Option<Spanned<String>>,
    pub(super) password: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
    pub(super) from: Option<Spanned<String>>,
    pub(super) to: RawList<String>,
    pub(super) command: RawArgv,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSockets {
    pub(super) service_group: Option<Spanned<StrOrInt>>,
    pub(super) service_mode: Option<Spanned<StrOrInt>>,
    pub(super) admin_group: Option<Spanned<StrOrInt>>,
    pub(super) credentials: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) durability: Option<RawDurability>,
    pub(super) fsync_interval: Option<Spanned<String>>,
    pub(super) max_batch: Option<Spanned<usize>>,
    pub(super) coalesce_window: Option<Spanned<String>>,
    pub(super) min_free: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawDurability {
    Write,
    Fsync,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_secret_bytes: Option<Spanned<usize>>,
    pub(super) max_message_bytes: Option<Spanned<usize>>,
    pub(super) max_connections_per_uid: Option<Spanned<usize>>,
    pub(super) max_connections: Option<Spanned<usize>>,
    pub(super) max_streams_per_connection: Option<Spanned<u32>>,
    pub(super) max_streams_per_uid: Option<Spanned<usize>>,
    pub(super) max_watches_per_uid: Option<Spanned<usize>>,
    pub(super) max_watches: Option<Spanned<usize>>,
    pub(super) keepalive_interval: Option<Spanned<String>>,
    pub(super) keepalive_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnv {
    pub(super) on_audit_failure: Option<RawFailureMode>,
    pub(super) grace: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRotation {
    pub(super) grace: Option<Spanned<String>>,
    pub(super) hook_timeout: Option<Spanned<String>>,
    pub(super) propagation_timeout: Option<Spanned<String>>,
    pub(super) failure_threshold: Option<Spanned<u64>>,
    pub(super) report_quorum: Option<Spanned<u64>>,
}

/// A hook's argv: the span of the list (for "empty") and of each value.
pub(super) type RawArgv = Option<Spanned<Vec<Spanned<String>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyEntry {
    pub(super) keys: RawList<String>,
    pub(super) generator: RawArgv,
    pub(super) validator: RawArgv,
    pub(super) revoker: RawArgv,
    pub(super) grace: Option<Spanned<String>>,
    pub(super) hook_timeout: Option<Spanned<String>>,
    pub(super) propagation_timeout: Option<Spanned<String>>,
    pub(super) failure_threshold: Option<Spanned<u64>>,
    pub(super) report_quorum: Option<Spanned<u64>>,
    pub(super) alerts: Option<RawDetect>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawFailureMode {
    FailClosed,
    FailOpen,
}

/// A list in a grant: the span of the whole list (for "empty") and of each
/// value (for "unknown user" and the like).
pub(super) type RawList<T> = Option<Spanned<Vec<Spanned<T>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrant {
    pub(super) users: RawList<String>,
    pub(super) uids: RawList<u32>,
    pub(super) groups: RawList<String>,
    pub(super) gids: RawList<u32>,
    pub(super) executables: RawList<PathBuf>,
    pub(super) units: RawList<String>,
    pub(super) keys: RawList<String>,
    pub(super) report: Option<bool>,
}

/// A value that may be written as a string or an integer: groups (name or
/// gid) and modes ("0660" or 0o660).
pub(super) enum StrOrInt {
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
