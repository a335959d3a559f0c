//! `[backend]`: where the keys live. `local` (the store directory, the
//! default) or `openbao` (OpenBao or Vault KV v2, fleet mode).

pub(crate) mod path;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Source};
use super::value::{absolute_path, positive_duration};
use path::{check_address, check_path};

/// Where the keys live.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum BackendConfig {
    /// The store directory: one age file per key (the default).
    #[default]
    Local,
    /// OpenBao (or Vault) KV v2, shared by a fleet of agents; the store
    /// directory keeps this agent's encrypted local copy.
    OpenBao(Box<OpenBaoConfig>),
}

impl BackendConfig {
    /// `kind` of the local backend.
    pub const LOCAL: &'static str = "local";
    /// `kind` of OpenBao (and Vault).
    pub const OPENBAO: &'static str = "openbao";

    /// [`BackendConfig::LOCAL`] or [`BackendConfig::OPENBAO`].
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Local => Self::LOCAL,
            BackendConfig::OpenBao(_) => Self::OPENBAO,
        }
    }
}

/// `[backend] kind = "openbao"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenBaoConfig {
    /// `http(s)://host:port`.
    pub address: String,
    /// The KV v2 mount.
    pub mount: String,
    /// Every path keyward uses starts with this (no slashes at the ends).
    pub prefix: String,
    /// `X-Vault-Namespace`, if any.
    pub namespace: Option<String>,
    /// A PEM CA bundle to trust for `https`.
    pub ca_file: Option<PathBuf>,
    /// How the agent logs in.
    pub auth: OpenBaoAuth,
    /// Age recipients (`age1…`) each record is also encrypted to, beyond
    /// the members' (kept from before `[[backend.member]]`: readers that
    /// are not members; their writes are refused).
    pub recipients: Vec<String>,
    /// The fleet's members (`[[backend.member]]`): only records signed by
    /// one of them are applied, and every record is encrypted to each
    /// one's recipient. Live: a reload swaps it in.
    pub members: Vec<Member>,
    /// This agent's name in the fleet (its status path).
    pub agent_id: String,
    /// How often the change marker is polled.
    pub poll_interval: Duration,
    /// How often every key is compared even without a change marker.
    pub resync_interval: Duration,
    /// How long a published agent status counts as live.
    pub status_ttl: Duration,
    /// No successful sync for this long: the agent reports itself stale
    /// and raises the `backend_stale` alert.
    pub stale_after: Duration,
    /// Per request to OpenBao.
    pub request_timeout: Duration,
    /// How long the agent waits at start for a first sync before it serves
    /// its local copy anyway.
    pub initial_sync_timeout: Duration,
    /// How long a rotation lease (one rotator per key) lasts without being
    /// renewed: the holder renews it every third of this while its job
    /// runs; after it, another member may take over a rotation left under
    /// way.
    pub rotation_lease: Duration,
}

/// One `[[backend.member]]`: an agent of the fleet, as `keyward fleet
/// member` prints it on that agent's host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its `agent_id` (its status path's last element).
    pub name: String,
    /// Its age recipient (`age1…`).
    pub recipient: String,
    /// Its public signing key (`ed25519:BASE64`).
    pub signing_key: ed25519_dalek::VerifyingKey,
}

/// The text form of a public signing key: `ed25519:` and the standard
/// base64 of its 32 bytes.
pub fn format_signing_key(key: &ed25519_dalek::VerifyingKey) -> String {
    use base64::Engine;
    format!(
        "ed25519:{}",
        base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
    )
}

/// Parses [`format_signing_key`]'s form; refuses a weak (small-order) key.
pub fn parse_signing_key(text: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    use base64::Engine;
    let b64 = text
        .trim()
        .strip_prefix("ed25519:")
        .ok_or("it does not start with \"ed25519:\"")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("its base64 is not valid ({e})"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| "it is not 32 bytes".to_owned())?;
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| "it is not a valid Ed25519 point".to_owned())?;
    if key.is_weak() {
        return Err("it is a weak (small-order) key".to_owned());
    }
    Ok(key)
}

/// How the agent logs in to OpenBao.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenBaoAuth {
    /// A token in a file (re-read when refused).
    TokenFile(PathBuf),
    /// AppRole: ids in files.
    AppRole {
        /// The auth mount, e.g. "approle".
        mount: String,
        /// File holding the role_id.
        role_id_file: PathBuf,
        /// File holding the secret_id.
        secret_id_file: PathBuf,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    kind: Spanned<String>,
    address: Option<Spanned<String>>,
    mount: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    namespace: Option<Spanned<String>>,
    ca_file: Option<Spanned<PathBuf>>,
    token_file: Option<Spanned<PathBuf>>,
    approle: Option<Spanned<RawAppRole>>,
    recipients: Option<Vec<Spanned<String>>>,
    member: Option<Vec<Spanned<RawMember>>>,
    agent_id: Option<Spanned<String>>,
    poll_interval: Option<Spanned<String>>,
    resync_interval: Option<Spanned<String>>,
    status_ttl: Option<Spanned<String>>,
    stale_after: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    initial_sync_timeout: Option<Spanned<String>>,
    rotation_lease: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: String,
    recipient: String,
    signing_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppRole {
    mount: Option<String>,
    role_id_file: PathBuf,
    secret_id_file: PathBuf,
}

/// Default `poll_interval`: a change reaches every agent well within 2 s.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Default `resync_interval`.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Default `status_ttl`.
pub const DEFAULT_STATUS_TTL: Duration = Duration::from_secs(30);
/// Default `stale_after`.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);
/// Default `request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `initial_sync_timeout`.
pub const DEFAULT_INITIAL_SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `rotation_lease`: a rotation left by a dead agent is taken over
/// within about a minute; clocks of the fleet must agree well within it.
pub const DEFAULT_ROTATION_LEASE: Duration = Duration::from_secs(60);

impl RawBackend {
    pub(super) fn validate(self, src: &Source<'_>) -> Result<BackendConfig, ConfigError> {
        let bad =
            |span: std::ops::Range<usize>, msg: String| src.invalid(&span, format!("{msg} (at {})", src.at(&span)));
        match self.kind.get_ref().as_str() {
            "local" => {
                let extra = [
                    self.address.is_some(),
                    self.mount.is_some(),
                    self.prefix.is_some(),
                    self.token_file.is_some(),
                    self.approle.is_some(),
                    self.recipients.is_some(),
                    self.member.is_some(),
                ];
                if extra.iter().any(|b| *b) {
                    return Err(bad(
                        self.kind.span(),
                        "[backend] kind = \"local\" takes no OpenBao settings: set kind = \"openbao\" or remove them".to_owned(),
                    ));
                }
                return Ok(BackendConfig::Local);
            }
            "openbao" | "vault" => {}
            other => {
                return Err(bad(
                    self.kind.span(),
                    format!("[backend] kind = {other:?} is not a backend keyward knows: use \"local\" or \"openbao\" (which also serves Vault)"),
                ))
            }
        }
        let kind_span = self.kind.span();
        let address = self.address.ok_or_else(|| {
            bad(
                kind_span.clone(),
                "[backend] kind = \"openbao\" needs address = \"https://HOST:8200\"".to_owned(),
            )
        })?;
        let addr =
            check_address(address.get_ref()).map_err(|e| bad(address.span(), format!("[backend] address: {e}")))?;
        // The same rule as every request path (fleet::kv::path): what
        // passes here is never refused later.
        let path_setting = |v: Option<Spanned<String>>, key: &str, default: &str| -> Result<String, ConfigError> {
            let Some(v) = v else { return Ok(default.to_owned()) };
            let text = v.get_ref().trim_matches('/');
            check_path(&format!("[backend] {key}"), text).map_err(|e| bad(v.span(), e))?;
            Ok(text.to_owned())
        };
        let mount = path_setting(self.mount, "mount", "secret")?;
        let prefix = path_setting(self.prefix, "prefix", "keyward")?;
        let namespace = self.namespace.map(|n| n.into_inner()).filter(|n| !n.is_empty());
        let ca_file = self
            .ca_file
            .map(|v| absolute_path(src, &v, "[backend] ca_file"))
            .transpose()?;
        let auth = match (self.token_file, self.approle) {
            (Some(t), None) => OpenBaoAuth::TokenFile(absolute_path(src, &t, "[backend] token_file")?),
            (None, Some(a)) => {
                let span = a.span();
                let a = a.into_inner();
                for p in [&a.role_id_file, &a.secret_id_file] {
                    if !p.is_absolute() {
                        return Err(bad(
                            span,
                            format!("[backend] approle file {:?} is not an absolute path: write the full path", p.display().to_string()),
                        ));
                    }
                }
                OpenBaoAuth::AppRole {
                    mount: a.mount.unwrap_or_else(|| "approle".to_owned()).trim_matches('/').to_owned(),
                    role_id_file: a.role_id_file,
                    secret_id_file: a.secret_id_file,
                }
            }
            (Some(t), Some(_)) => {
                return Err(bad(
                    t.span(),
                    "[backend] sets both token_file and approle: keep one".to_owned(),
                ))
            }
            (None, None) => {
                return Err(bad(
                    kind_span,
                    "[backend] kind = \"openbao\" needs a login: token_file = \"/etc/keyward/openbao.token\" or approle = { role_id_file = \"…\", secret_id_file = \"…\" }".to_owned(),
                ))
            }
        };
        let mut recipients = Vec::new();
        for r in self.recipients.unwrap_or_default() {
            let text = r.get_ref().trim();
            if let Err(e) = text.parse::<age::x25519::Recipient>() {
                return Err(bad(
                    r.span(),
                    format!("[backend] recipient {:?} is not an age X25519 public key ({e}): list each agent's `keyward status` recipient (age1…)", r.get_ref()),
                ));
            }
            if !recipients.iter().any(|x: &String| x == text) {
                recipients.push(text.to_owned());
            }
        }
        let mut members: Vec<Member> = Vec::new();
        for m in self.member.unwrap_or_default() {
            let span = m.span();
            let m = m.into_inner();
            let at = |what: String| {
                bad(
                    span.clone(),
                    format!(
                        "[[backend.member]] {:?}: {what}; paste the entry `keyward fleet member` prints on that host",
                        m.name
                    ),
                )
            };
            if !valid_agent_id(&m.name) {
                return Err(at(
                    "name is not 1 to 128 letters, digits, '.', '_' or '-' (it is that agent's agent_id)".to_owned(),
                ));
            }
            let recipient = m.recipient.trim().to_owned();
            if let Err(e) = recipient.parse::<age::x25519::Recipient>() {
                return Err(at(format!("recipient is not an age X25519 public key ({e})")));
            }
            let signing_key =
                parse_signing_key(&m.signing_key).map_err(|e| at(format!("signing_key {:?}: {e}", m.signing_key)))?;
            if members.iter().any(|x| x.name == m.name) {
                return Err(at("is listed twice".to_owned()));
            }
            if members.iter().any(|x| x.signing_key == signing_key) {
                return Err(at(
                    "has the signing_key of another member: each agent has its own".to_owned()
                ));
            }
            members.push(Member {
                name: m.name,
                recipient,
                signing_key,
            });
        }
        let agent_id = match self.agent_id {
            Some(v) => {
                let id = v.get_ref();
                if !valid_agent_id(id) {
                    return Err(bad(
                        v.span(),
                        format!("[backend] agent_id = {id:?} is not 1 to 128 letters, digits, '.', '_' or '-': use e.g. the host name"),
                    ));
                }
                id.clone()
            }
            None => default_agent_id(),
        };
        let dur = |v: Option<Spanned<String>>, key: &str, default: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(v) => positive_duration(src, &v, key),
            }
        };
        let poll_interval = dur(self.poll_interval, "[backend] poll_interval", DEFAULT_POLL_INTERVAL)?;
        let resync_interval = dur(
            self.resync_interval,
            "[backend] resync_interval",
            DEFAULT_RESYNC_INTERVAL,
        )?;
        let status_ttl = dur(self.status_ttl, "[backend] status_ttl", DEFAULT_STATUS_TTL)?;
        let stale_after = dur(self.stale_after, "[backend] stale_after", DEFAULT_STALE_AFTER)?;
        let request_timeout = dur(
            self.request_timeout,
            "[backend] request_timeout",
            DEFAULT_REQUEST_TIMEOUT,
        )?;
        let initial_sync_timeout = dur(
            self.initial_sync_timeout,
            "[backend] initial_sync_timeout",
            DEFAULT_INITIAL_SYNC_TIMEOUT,
        )?;
        let rotation_lease = dur(self.rotation_lease, "[backend] rotation_lease", DEFAULT_ROTATION_LEASE)?;
        if rotation_lease < Duration::from_secs(3) {
            return Err(src.invalid(
                &kind_span,
                format!("[backend] rotation_lease = {rotation_lease:?} is shorter than 3s: the holder renews it every third of it and a renewal is one OpenBao request; use at least \"3s\""),
            ));
        }
        if status_ttl < Duration::from_secs(2) {
            return Err(src.invalid(
                &kind_span,
                format!("[backend] status_ttl = {status_ttl:?} is shorter than 2s: an agent republishes every third of it; use at least \"2s\""),
            ));
        }
        Ok(BackendConfig::OpenBao(Box::new(OpenBaoConfig {
            address: addr,
            mount,
            prefix,
            namespace,
            ca_file,
            auth,
            recipients,
            members,
            agent_id,
            poll_interval,
            resync_interval,
            status_ttl,
            stale_after,
            request_timeout,
            initial_sync_timeout,
            rotation_lease,
        })))
    }
}

/// 1 to 128 of `[A-Za-z0-9._-]`, one path segment as
/// [`check_path`] accepts it (so no "." and no ".."): an `agent_id`, and a
/// member's name.
pub fn valid_agent_id(id: &str) -> bool {
    id.len() <= 128 && !id.contains('/') && check_path("agent_id", id).is_ok()
}

/// The host name, if it is a valid agent id; else "agent".
fn default_agent_id() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| valid_agent_id(h))
        .unwrap_or_else(|| "agent".to_owned())
}
