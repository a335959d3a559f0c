//! Fleet mode: the keys live in OpenBao (or Vault) KV v2, shared by one
//! agent per host; each agent follows them and serves them locally.
//!
//! Layout under `<mount>/<prefix>/`:
//!
//! | path | what |
//! |---|---|
//! | `keys/<env>/<name>` | a key's record: `{"format": "keyward-fleet-v1", "record": "<age armor>", "signer", "signature"}`, or a deletion marker `{"format": …, "deleted": true, "generation": G, "signer", "signature"}` |
//! | `changes` | bumped after every write: followers poll its version |
//! | `agents/<agent_id>` | what each agent serves, republished every third of its TTL; KV's `delete_version_after` expires it |
//! | `anchors/<agent_id>/<install_id>/<seq>` | the agent's audit chain head, once per anchor (created, never overwritten: see [`anchors`]) |
//!
//! Invariants:
//! - Every value an agent writes is signed by its signing key over its
//!   canonical bytes, which bind the path and KV version ([`sign`]); an
//!   agent applies a key record or deletion marker, and counts a status,
//!   only when a member of its `[[backend.member]]` list signed it (a
//!   status: the member its path names). Anything else is refused and
//!   reported (status, audit, alert) while the last good state serves.
//! - OpenBao only ever holds ciphertext: a record is the agent's own key
//!   record (secrets included) age-encrypted to every agent of the fleet
//!   ([`crate::store::Store::seal_armored`]); it names its key and its own
//!   KV version, so a record copied to another path or replayed as a newer
//!   version is refused.
//! - Every write is a KV v2 check-and-set against the version this agent
//!   serves: of two admins changing one key at once, one wins and the other
//!   gets `ABORTED`, nothing changed.
//! - A change is durable in OpenBao before this agent's local copy and
//!   watchers see it; the local copy (the store directory, encrypted to the
//!   agent alone) is what serves, so the agent keeps answering while
//!   OpenBao is down and after its own restart.
//! - Nothing from OpenBao replaces a served state unless it decrypts,
//!   decodes, names its key and version, and is newer; anything else is
//!   reported as a problem (status, log) while the last good state serves.

pub mod anchors;
pub mod lease;
pub mod sign;
pub mod status;
pub mod sync;
mod trust;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::backend::{Member, OpenBaoAuth, OpenBaoConfig};
use crate::openbao::{KvAuth, KvClient, KvOptions};
use crate::proto;
use crate::secret::KeyRef;
use crate::store::identity::SigningKey;

/// The `format` of every value keyward writes.
pub const FORMAT: &str = "keyward-fleet-v1";

/// Why fleet mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A setting the KV client refused (address, CA file).
    #[error("[backend]: {0}")]
    Setup(String),
}

/// An agent in fleet mode: its OpenBao client and what it knows of the
/// backend's health.
pub struct Fleet {
    cfg: OpenBaoConfig,
    kv: KvClient,
    /// This agent's own recipient (published in its status).
    recipient: String,
    /// This agent's signing key: every value it writes is signed with it.
    signer: SigningKey,
    hostname: String,
    /// `<state_dir>/fleet-sync`: when the last sync succeeded, kept across
    /// restarts so staleness counts from there.
    sync_file: PathBuf,
    health: Mutex<Health>,
    /// Wakes the follower at once (after a write, a CAS conflict).
    poke: tokio::sync::Notify,
    /// The members' statuses as last read for a rotation job, and when.
    reports_cache: tokio::sync::Mutex<Option<(Instant, std::sync::Arc<Vec<status::AgentReport>>)>>,
    /// Per key, the promoted version whose evidence was last summed, and
    /// the members seen publishing evidence for it: one of them whose
    /// status goes missing holds the retire gate.
    evidence_seen: Mutex<BTreeMap<String, (u64, BTreeSet<String>)>>,
}

/// What the follower knows.
#[derive(Default)]
struct Health {
    /// When the last sync succeeded (from `fleet-sync` after a restart).
    last_ok: Option<SystemTime>,
    /// The same on the monotonic clock, once a sync succeeded in this
    /// process: staleness is measured with it, so a clock step cannot hide
    /// it.
    last_ok_mono: Option<Instant>,
    last_persisted: Option<Instant>,
    last_error: Option<String>,
    /// Why the last status publication failed.
    publish_error: Option<String>,
    /// Backend versions of keys that serve nothing here (a deletion marker,
    /// a refused record): not read again until the path moves on.
    settled: BTreeMap<KeyRef, u64>,
    /// Per key: why the backend's record is not applied.
    problems: BTreeMap<String, String>,
    /// The `changes` marker version of the last complete sync.
    marker: Option<u64>,
    last_full: Option<Instant>,
    /// A full scan is due whatever the marker says.
    force_full: bool,
    /// The status must be republished now.
    publish_due: bool,
    /// The status path's `delete_version_after` (its TTL) is set.
    status_metadata_set: bool,
    /// Values refused as not signed by a member (path and version): each
    /// is audited and alerted once.
    refused_seen: std::collections::BTreeSet<(String, u64)>,
}

impl Health {
    /// How long since the last successful sync (`None`: never).
    fn stale_for(&self, now: SystemTime) -> Option<Duration> {
        match self.last_ok_mono {
            Some(t) => Some(t.elapsed()),
            None => self.last_ok.map(|t| now.duration_since(t).unwrap_or(Duration::ZERO)),
        }
    }

    /// "ENV/NAME: why" per key whose record is not applied.
    fn problem_lines(&self) -> Vec<String> {
        self.problems.iter().map(|(k, why)| format!("{k}: {why}")).collect()
    }
}

impl Fleet {
    /// Sets up fleet mode (no network I/O yet). `recipient` is this agent's
    /// own, `extra_recipients` the config's break-glass ones; `state_dir`
    /// keeps the last sync time.
    pub fn new(
        cfg: &OpenBaoConfig,
        recipient: String,
        signer: SigningKey,
        state_dir: &std::path::Path,
    ) -> Result<Fleet, FleetError> {
        let kv = kv_client(cfg)?;
        let sync_file = state_dir.join("fleet-sync");
        let last_ok = read_sync_file(&sync_file);
        Ok(Fleet {
            cfg: cfg.clone(),
            kv,
            recipient,
            signer,
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            sync_file,
            health: Mutex::new(Health {
                last_ok,
                force_full: true,
                publish_due: true,
                ..Health::default()
            }),
            poke: tokio::sync::Notify::new(),
            reports_cache: tokio::sync::Mutex::new(None),
            evidence_seen: Mutex::default(),
        })
    }

    /// The settings (as at start; the members are read from the agent's
    /// current config, see [`Fleet::members`]).
    pub fn config(&self) -> &OpenBaoConfig {
        &self.cfg
    }

    /// The entry `keyward fleet member` prints for this agent.
    pub fn public_key(&self) -> String {
        self.signer.public_key()
    }

    /// Whether `members` lists this agent as it is (name, recipient and
    /// signing key); warns when not: the others refuse its writes then.
    pub fn check_listed(&self, members: &[Member]) -> bool {
        let listed = self.is_listed(members);
        if !listed {
            tracing::warn!(
                agent_id = %self.cfg.agent_id,
                recipient = %self.recipient,
                signing_key = %self.signer.public_key(),
                "this agent is not in its own [[backend.member]] list as it is (name, recipient, signing key): the other agents refuse what it writes; run `keyward fleet member` and add its entry to every agent's config"
            );
        }
        listed
    }

    fn is_listed(&self, members: &[Member]) -> bool {
        let me = self.signer.verifying_key();
        members
            .iter()
            .any(|m| m.name == self.cfg.agent_id && m.recipient == self.recipient && m.signing_key == me)
    }

    /// Signs `value` (an object) as `kind` at `path`, version `version`.
    fn sign(
        &self,
        value: &mut serde_json::Value,
        kind: sign::Kind,
        path: &str,
        key: &str,
        version: u64,
        body: &[&[u8]],
    ) {
        let message = sign::canonical(kind, &self.full_path(path), key, version, body);
        sign::attach(value, &self.cfg.agent_id, &self.signer.sign(&message));
    }

    /// `<mount>/<path>`: what a signature binds.
    fn full_path(&self, path: &str) -> String {
        format!("{}/{path}", self.cfg.mount)
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `keys/<env>/<name>` under the prefix.
    fn key_path(&self, key: &KeyRef) -> String {
        format!("{}/keys/{}/{}", self.cfg.prefix, key.env(), key.name())
    }

    fn env_path(&self, env: &str) -> String {
        format!("{}/keys/{env}", self.cfg.prefix)
    }

    fn changes_path(&self) -> String {
        format!("{}/changes", self.cfg.prefix)
    }

    fn agents_path(&self) -> String {
        format!("{}/agents", self.cfg.prefix)
    }

    fn status_path(&self) -> String {
        format!("{}/agents/{}", self.cfg.prefix, self.cfg.agent_id)
    }

    /// Over `stale_after` (or never synced).
    fn over_stale_after(&self, stale_for: Option<Duration>) -> bool {
        stale_for.is_none_or(|d| d > self.cfg.stale_after)
    }

    /// In sync: a sync succeeded in this process, the last attempt did,
    /// and that was within `stale_after`.
    pub fn in_sync(&self) -> bool {
        let h = self.health();
        h.last_ok_mono.is_some() && h.last_error.is_none() && !self.over_stale_after(h.stale_for(SystemTime::now()))
    }

    /// For `GetStatus`; `members` from the agent's current config.
    pub fn status(&self, members: &[Member]) -> proto::BackendStatus {
        let listed = self.is_listed(members);
        let h = self.health();
        let stale_for = h.stale_for(SystemTime::now());
        proto::BackendStatus {
            kind: crate::config::backend::BackendConfig::OPENBAO.to_owned(),
            address: self.cfg.address.clone(),
            mount: self.cfg.mount.clone(),
            prefix: self.cfg.prefix.clone(),
            agent_id: self.cfg.agent_id.clone(),
            last_sync_at: h.last_ok.map(crate::wire::timestamp),
            stale_seconds: stale_for.map_or(0, |d| d.as_secs()),
            stale: self.over_stale_after(stale_for),
            last_error: h.last_error.clone().unwrap_or_default(),
            problems: h.problem_lines(),
            signing_key: self.signer.public_key(),
            recipient: self.recipient.clone(),
            listed,
        }
    }

    /// For the metrics scrape.
    pub fn gauges(&self) -> crate::metrics::BackendGauges {
        let h = self.health();
        let stale_for = h.stale_for(SystemTime::now());
        crate::metrics::BackendGauges {
            up: h.last_ok_mono.is_some() && h.last_error.is_none(),
            last_sync_timestamp_seconds: h
                .last_ok
                .map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()),
            stale_seconds: stale_for.map_or(f64::NAN, |d| d.as_secs_f64()),
            stale: self.over_stale_after(stale_for),
            problems: h.problems.len() as u64,
        }
    }

    /// Asks the follower for a full comparison now.
    pub fn poke(&self) {
        self.health().force_full = true;
        self.poke.notify_one();
    }

    fn record_ok(&self, marker: u64, full: bool) {
        let now = SystemTime::now();
        let persist = {
            let mut h = self.health();
            if h.last_error.take().is_some() {
                tracing::info!(address = %self.cfg.address, "OpenBao is reachable again; in sync");
                h.publish_due = true;
            }
            h.last_ok = Some(now);
            h.last_ok_mono = Some(Instant::now());
            h.marker = Some(marker);
            if full {
                h.last_full = Some(Instant::now());
                h.force_full = false;
            }
            let due = h.last_persisted.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
            if due {
                h.last_persisted = Some(Instant::now());
            }
            due
        };
        if persist {
            write_sync_file(&self.sync_file, now);
        }
    }

    fn record_error(&self, error: String) {
        let mut h = self.health();
        if h.last_error.as_deref() != Some(error.as_str()) {
            tracing::warn!(error = %error, "cannot sync with the backend; serving the local copy");
        }
        h.last_error = Some(error);
        // The marker may have moved while we could not see it.
        h.force_full = true;
    }

    fn set_problem(&self, key: &KeyRef, why: Option<String>) {
        let mut h = self.health();
        if why.is_none() {
            h.settled.remove(key);
        }
        let k = key.to_string();
        match why {
            Some(why) => {
                if h.problems.get(&k) != Some(&why) {
                    tracing::error!(key = %k, reason = %why, "backend record not applied; the last good state keeps serving");
                    h.problems.insert(k, why);
                    h.publish_due = true;
                }
            }
            None => {
                if h.problems.remove(&k).is_some() {
                    h.publish_due = true;
                }
            }
        }
    }
}

/// The KV client of `cfg` (no network I/O yet): the agent's, and the one
/// `keyward audit verify --fleet` logs in with.
pub fn kv_client(cfg: &OpenBaoConfig) -> Result<KvClient, FleetError> {
    let auth = match &cfg.auth {
        OpenBaoAuth::TokenFile(p) => KvAuth::TokenFile(p.clone()),
        OpenBaoAuth::AppRole {
            mount,
            role_id_file,
            secret_id_file,
        } => KvAuth::AppRole {
            mount: mount.clone(),
            role_id_file: role_id_file.clone(),
            secret_id_file: secret_id_file.clone(),
        },
    };
    KvClient::new(KvOptions {
        address: cfg.address.clone(),
        mount: cfg.mount.clone(),
        namespace: cfg.namespace.clone(),
        ca_file: cfg.ca_file.clone(),
        auth,
        timeout: cfg.request_timeout,
    })
    .map_err(|e| FleetError::Setup(e.to_string()))
}

/// The value at a key's path, as keyward reads it.
enum BackendRecord<'a> {
    /// A key record, sealed to the fleet (ASCII armor).
    Sealed(&'a str),
    /// A deletion marker, left by a key of this generation.
    Deleted { generation: u64 },
    /// Not something keyward wrote; says why.
    Foreign(String),
}

impl BackendRecord<'_> {
    /// The canonical bytes a member signed for this value at `path`
    /// (`<mount>/…`), version `version` (`None` for a foreign value).
    fn signed_message(&self, path: &str, key: &KeyRef, version: u64) -> Option<Vec<u8>> {
        let key = key.to_string();
        match self {
            BackendRecord::Sealed(armor) => Some(sign::canonical(
                sign::Kind::Key,
                path,
                &key,
                version,
                &[armor.as_bytes()],
            )),
            BackendRecord::Deleted { generation } => Some(sign::canonical(
                sign::Kind::Deleted,
                path,
                &key,
                version,
                &[generation.to_string().as_bytes()],
            )),
            BackendRecord::Foreign(_) => None,
        }
    }

    fn parse(data: &serde_json::Value) -> BackendRecord<'_> {
        let format = data.get("format").and_then(|f| f.as_str());
        if format != Some(FORMAT) {
            return BackendRecord::Foreign(format!("is not a keyward record (format {format:?})"));
        }
        if data.get("deleted").and_then(|d| d.as_bool()) == Some(true) {
            return BackendRecord::Deleted {
                generation: data.get("generation").and_then(|g| g.as_u64()).unwrap_or(0),
            };
        }
        match data.get("record").and_then(|r| r.as_str()) {
            Some(sealed) => BackendRecord::Sealed(sealed),
            None => BackendRecord::Foreign("has no \"record\" field".to_owned()),
        }
    }
}

/// The last sync time kept in `path` (unix milliseconds), if readable.
fn read_sync_file(path: &std::path::Path) -> Option<SystemTime> {
    let text = std::fs::read_to_string(path).ok()?;
    let ms: u64 = text.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Best effort: a lost update only makes a restarted agent look staler.
fn write_sync_file(path: &std::path::Path, t: SystemTime) {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let result = tempfile::NamedTempFile::new_in(dir).and_then(|mut f| {
        std::io::Write::write_all(&mut f, format!("{ms}\n").as_bytes())?;
        f.persist(path).map(drop).map_err(|e| e.error)
    });
    if let Err(e) = result {
        tracing::debug!(path = %path.display(), error = %e, "cannot record the last sync time");
    }
}

/// Milliseconds since the epoch.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}
