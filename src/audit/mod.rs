//! The audit log: append-only JSON Lines, each record chained to the one
//! before it by a keyed hash, committed in groups by whichever caller gets
//! there first, and checked offline by [`verify()`].
//!
//! # How records are committed
//!
//! There is no writer thread on the fetch path. [`Audit::record`] queues its
//! event under a mutex; if nobody is writing, the caller becomes the
//! *leader*: it takes the writer state and everything queued, serializes,
//! chains and appends that batch itself, on its own thread, and repeats
//! while more records arrived in the meantime. Callers that find a leader
//! at work are *followers*: they wait on a oneshot for their seq. This is
//! the leader/follower group commit of RocksDB's write groups and MySQL's
//! binlog, and it means an uncontended record costs one `write(2)` and no
//! thread wake-up. See `commit.rs`.
//!
//! With [`Durability::Write`] a background thread fdatasyncs every
//! `fsync_interval` and then moves the head file; with
//! [`Durability::Fsync`] the leader syncs each batch before answering
//! (inside `block_in_place` on a multi-thread runtime).
//!
//! Invariants this module keeps:
//!
//! - One leader writes at a time, and the log grows by whole batches.
//!   Records are chained in the order they are written, which is the order
//!   they were queued.
//! - The leader never awaits between taking the writer state and putting it
//!   back, so a cancelled `record` future can never strand a half-written
//!   batch or the writer state; a cancelled follower's record is still
//!   written.
//! - The agent never rewrites or deletes a record. The only bytes the writer
//!   ever removes are those of a batch whose write has just failed, so that
//!   a failed write leaves no half record behind; until they are gone, it
//!   writes nothing more.
//! - Record `seq` n+1 carries `prev` = the `hash` of record n (64 zeros for
//!   record 1), and `hash` = HMAC-SHA256 under the install's audit key of the
//!   line's own bytes up to `prev`. Editing, removing or reordering records
//!   is therefore detected without trusting the file.
//! - `<log>.head` ([`head_path`]) names the last record known to be on disk
//!   (seq and hash, under a MAC), so a tail cut off while the agent was
//!   stopped is detected too. It only moves once the records it names have
//!   been fdatasynced, so a power loss never makes an honest log look cut.
//! - A crash in the middle of a write leaves a torn fragment at the end. The
//!   next start ends it with a newline (keeping it as its own line) and
//!   writes an `audit_recovered` record naming its offset and length; the
//!   verifier then reports the fragment as a note, not a failure.
//! - No record ever holds secret material: [`AuditEvent`] has no field that
//!   could carry it.
//!
//! # Record format
//!
//! One JSON object per line, fields always in this order (optional ones are
//! left out when empty):
//!
//! ```text
//! {"time":"2025-01-02T03:04:05.123456Z","seq":7,"event":"fetch",
//!  "caller":{"uid":1001,"gid":1001,"pid":4242,"exe":"/usr/bin/billing"},
//!  "key":"prod/billing-api","versions":[{"role":"primary","version":3,
//!  "fingerprint":"9f86d081884c7d65"}],"outcome":"ok","prev":"<64 hex>",
//!  "hash":"<64 hex>"}
//! ```
//!
//! The hash covers the exact bytes of the line without its `,"hash":"…"`
//! part, closed with `}`; the verifier strips that suffix and recomputes the
//! MAC over the bytes as written, never over a re-serialization.
//!
//! ## Coalesced records
//!
//! Refusals (denials and invalid requests) are coalesced by the agent (see
//! `keyward::server::refusals`): the first refusal of a kind in a window is
//! recorded on its own, the rest of the window as one record that carries,
//! right after `outcome`:
//!
//! - `count`: how many refusals the record stands for (at least 1). A
//!   record without `count` stands for one; the sum over all records is the
//!   number of refusals.
//! - `first`, `last`: the times of the first and the last of them (same
//!   format as `time`, which is when the record was written).
//! - `distinct_keys` (only on a record folded over keys, whose `key` is
//!   then left out): how many distinct keys it covers, counted up to
//!   [`DISTINCT_KEYS_COUNTED`]; a record saying that many covers at least
//!   that many.
//!
//! ```text
//! {"time":"…","seq":9,"event":"fetch","caller":{"uid":2011,…},
//!  "key":"prod/billing-api","outcome":"denied","count":39999,
//!  "first":"2025-01-02T03:04:05.123456Z","last":"2025-01-02T03:04:08.654321Z",
//!  "detail":"uid 2011 (…) may not read prod/billing-api: …","prev":"…",
//!  "hash":"…"}
//! ```

mod commit;
mod verify;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub use crate::config::audit::Durability;
pub use verify::{verify, ProblemKind, VerifyProblem, VerifyReport};

/// How to open the log.
#[derive(Clone)]
pub struct AuditOptions {
    /// The log file; created 0600 if missing, never followed if a symlink.
    pub path: PathBuf,
    /// The per-install key of the hash chain (HMAC-SHA256).
    pub key: [u8; 32],
    /// When a record counts as written.
    pub durability: Durability,
    /// With [`Durability::Write`], how often the log is fdatasynced.
    pub fsync_interval: Duration,
    /// Most records, beyond the first, committed together by one write.
    pub max_batch: usize,
}

/// Who made a call, as recorded.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CallerRecord {
    /// User id, from the kernel (`SO_PEERCRED`).
    pub uid: u32,
    /// Group id, from the kernel.
    pub gid: u32,
    /// Process id, from the kernel.
    pub pid: i32,
    /// Executable path (`/proc/<pid>/exe`), where readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// systemd unit (`/proc/<pid>/cgroup`), where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// One version served or changed, as recorded (never the secret).
#[derive(Clone, Debug, serde::Serialize)]
pub struct VersionRecord {
    /// `primary`, `fallback`, `new`, `old`…
    pub role: &'static str,
    /// Version number within the key.
    pub version: u64,
    /// Keyed fingerprint of the secret (see [`crate::secret::Fingerprinter`]).
    pub fingerprint: String,
}

/// One event to record.
#[derive(Clone, Debug, Default)]
pub struct AuditEvent {
    /// What happened: `fetch`, `watch`, `denied`, `stage`, `reload`…
    pub event: &'static str,
    /// Who asked, if a caller did.
    pub caller: Option<Arc<CallerRecord>>,
    /// The key concerned, as `ENV/NAME`.
    pub key: Option<String>,
    /// Versions served or changed.
    pub versions: Vec<VersionRecord>,
    /// The key's generation before a change.
    pub generation_before: Option<u64>,
    /// The key's generation after a change (or as served).
    pub generation_after: Option<u64>,
    /// Fleet mode: the backend (KV v2) version of the record served or
    /// written.
    pub backend_version: Option<u64>,
    /// How it ended: `ok`, `denied`, `not_found`…
    pub outcome: &'static str,
    /// Free text for a human; never secret material.
    pub detail: Option<String>,
    /// Set when the record stands for several refusals alike.
    pub coalesced: Option<Coalesced>,
}

/// Most distinct keys a folded coalesced record counts (`distinct_keys`).
pub const DISTINCT_KEYS_COUNTED: u64 = 100;

/// What a coalesced record adds: how many refusals it stands for and when
/// (see "Coalesced records" above).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coalesced {
    /// How many refusals (at least 1).
    pub count: u64,
    /// When the first of them happened.
    pub first: SystemTime,
    /// When the last of them happened.
    pub last: SystemTime,
    /// A record folded over keys: how many distinct keys it covers (at most
    /// [`DISTINCT_KEYS_COUNTED`]).
    pub distinct_keys: Option<u64>,
}

/// Why a record was not written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Opening, reading, writing or syncing the log failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// [`Audit::close`] was called, or the writer has stopped.
    #[error("audit log is closed (the agent is shutting down)")]
    Closed,
}

impl AuditError {
    /// An [`AuditError::Io`] for `path`.
    fn io(path: &Path, source: io::Error) -> AuditError {
        AuditError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// An [`AuditError::Io`] with a copy of `source` (io::Error is not
    /// Clone, and every caller in a failed batch gets its own error).
    fn io_copy(path: &Path, source: &io::Error) -> AuditError {
        let copy = match source.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(source.kind(), source.to_string()),
        };
        AuditError::io(path, copy)
    }
}

/// The writer's state, for health checks and `keyward status`.
#[derive(Clone, Debug, Default)]
pub struct AuditStatus {
    /// Sequence number of the last record written (0: none yet).
    pub sequence: u64,
    /// Hash of that record (64 zeros: none yet).
    pub head: String,
    /// The last write or sync failure, cleared by the next successful write.
    pub error: Option<String>,
}

/// The path of the head file that goes with the log at `path`:
/// `audit.jsonl` → `audit.jsonl.head`.
pub fn head_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

/// A handle on the audit log. Cheap to clone; all clones share one queue
/// and one writer state.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<commit::Shared>,
    observer: Arc<std::sync::OnceLock<Arc<dyn AuditObserver>>>,
}

/// Told of every record's outcome (metrics and alerts). Called on the
/// writing task: must not block.
pub trait AuditObserver: Send + Sync {
    /// A record was written, `latency` after `record` was called.
    fn written(&self, latency: std::time::Duration);
    /// A record could not be written.
    fn failed(&self, error: &AuditError);
}

impl Audit {
    /// Opens (or creates) the log, continues its chain, marks a torn tail
    /// left by a crash, and (with [`Durability::Write`]) starts the thread
    /// that syncs it in the background.
    ///
    /// Works inside or outside a tokio runtime. Fails if the log or its head
    /// file cannot be opened, is a symlink or not a regular file, or if the
    /// last record in the log does not verify under `opts.key` (wrong
    /// install key, or an edited log).
    pub fn start(opts: AuditOptions) -> Result<Audit, AuditError> {
        Audit::start_with(opts, |file| Box::new(file))
    }

    /// [`Audit::start`], with the log file wrapped by `wrap` (tests inject
    /// failing writes through it).
    fn start_with(
        opts: AuditOptions,
        wrap: impl FnOnce(std::fs::File) -> Box<dyn writer::LogFile>,
    ) -> Result<Audit, AuditError> {
        let status = Arc::new(Mutex::new(AuditStatus::default()));
        let (writer, head) = writer::open(&opts, wrap, Arc::clone(&status))?;
        Ok(Audit {
            inner: Arc::new(commit::Shared::start(&opts, writer, head, status)?),
            observer: Arc::default(),
        })
    }

    /// Writes `event` and returns its sequence number once it is written
    /// (per the [`Durability`] mode). Concurrent calls are committed
    /// together. After [`Audit::close`], returns [`AuditError::Closed`].
    ///
    /// Cancel-safe: dropping the future never loses or corrupts other
    /// records; the dropped call's own record may still be written.
    pub async fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let Some(observer) = self.observer.get() else {
            return self.inner.record(event).await;
        };
        let started = std::time::Instant::now();
        let result = self.inner.record(event).await;
        match &result {
            Ok(_) => observer.written(started.elapsed()),
            Err(AuditError::Closed) => {}
            Err(e) => observer.failed(e),
        }
        result
    }

    /// Sets the one observer of every record's outcome (later calls are
    /// ignored).
    pub fn observe(&self, observer: Arc<dyn AuditObserver>) {
        let _ = self.observer.set(observer);
    }

    /// The last written seq and hash and the current error. Never waits on
    /// I/O.
    pub fn status(&self) -> AuditStatus {
        lock(&self.inner.status).clone()
    }

    /// Writes everything queued, fdatasyncs, updates the head file and stops
    /// the background sync thread. Idempotent; a second caller waits for the
    /// first to finish.
    pub async fn close(&self) {
        self.inner.close().await
    }
}

/// Locks `m`, even if a panicking thread poisoned it: the audit's mutexes
/// only guard state that is consistent between statements (a panicking
/// leader is handled by `commit.rs`, which closes the log).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// The record format, shared by the writer and the verifier.

type HmacSha256 = Hmac<Sha256>;

/// `prev` of the first record.
const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The event the writer records about the log itself.
const EVENT_RECOVERED: &str = "audit_recovered";
/// Outcome: a torn fragment was found at the end and kept as its own line.
const OUTCOME_TORN: &str = "torn_tail";
/// Outcome: the head file named records the log no longer has.
const OUTCOME_MISSING_TAIL: &str = "missing_tail";
/// Outcome: the head file named the log's last seq with another hash.
const OUTCOME_HEAD_MISMATCH: &str = "head_mismatch";
/// Outcome: the head file was unreadable or its MAC was wrong.
const OUTCOME_HEAD_INVALID: &str = "head_invalid";

/// Length of `,"hash":"<64 hex>"}`, the suffix every line ends with.
const HASH_SUFFIX_LEN: usize = 75;
/// The head file's fixed length (JSON padded with spaces, then `\n`), so a
/// rewrite in place always covers the previous content.
const HEAD_LEN: usize = 192;

/// The detail of an `audit_recovered`/`torn_tail` record. The verifier
/// rebuilds it from the offsets it sees, so the format is part of the chain.
fn torn_detail(offset: u64, len: u64) -> String {
    format!("torn fragment of {len} bytes at byte offset {offset} (a write cut short by a crash) kept as its own line")
}

fn hmac(key: &[u8; 32]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// A record's hash as written: 64 lowercase hex digits.
type HashHex = [u8; 64];

/// `hash` as text.
fn hash_str(hash: &HashHex) -> &str {
    std::str::from_utf8(hash).expect("hex digits are ASCII")
}

/// A record's `time`, RFC 3339 UTC with microseconds, formatted on the
/// stack: one per batch, shared by its records.
struct TimeText {
    bytes: [u8; 40],
    len: usize,
}

impl TimeText {
    fn new(time: SystemTime) -> TimeText {
        let mut bytes = [0; 40];
        let mut rest = &mut bytes[..];
        io::Write::write_fmt(&mut rest, format_args!("{}", humantime::format_rfc3339_micros(time)))
            .expect("an RFC 3339 time fits in 40 bytes");
        let len = 40 - rest.len();
        TimeText { bytes, len }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("humantime writes ASCII")
    }
}

/// A record as serialized, fields in their fixed order, without `hash`.
#[derive(serde::Serialize)]
struct RecordOut<'a> {
    time: &'a str,
    seq: u64,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<&'a CallerRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "no_versions")]
    versions: &'a [VersionRecord],
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend_version: Option<u64>,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    distinct_keys: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    prev: &'a str,
}

fn no_versions(v: &&[VersionRecord]) -> bool {
    v.is_empty()
}

/// Appends the line of record `seq` (with its `\n`) to `buf`; returns its
/// hash. `mac` is keyed with the install's audit key and never updated
/// (each record hashes a clone, which saves re-deriving the key pads).
fn encode_record(
    buf: &mut Vec<u8>,
    mac: &HmacSha256,
    seq: u64,
    prev: &str,
    ev: &AuditEvent,
    time: &TimeText,
) -> HashHex {
    let c = ev.coalesced.as_ref();
    let first = c.map(|c| TimeText::new(c.first));
    let last = c.map(|c| TimeText::new(c.last));
    let out = RecordOut {
        time: time.as_str(),
        seq,
        event: ev.event,
        caller: ev.caller.as_deref(),
        key: ev.key.as_deref(),
        versions: &ev.versions,
        generation_before: ev.generation_before,
        generation_after: ev.generation_after,
        backend_version: ev.backend_version,
        outcome: ev.outcome,
        count: c.map(|c| c.count),
        first: first.as_ref().map(TimeText::as_str),
        last: last.as_ref().map(TimeText::as_str),
        distinct_keys: c.and_then(|c| c.distinct_keys),
        detail: ev.detail.as_deref(),
        prev,
    };
    let start = buf.len();
    serde_json::to_writer(&mut *buf, &out).expect("a record always serializes");
    let mut mac = mac.clone();
    mac.update(&buf[start..]);
    let mut hash = [0; 64];
    hex::encode_to_slice(mac.finalize().into_bytes(), &mut hash).expect("64 hex digits for 32 bytes");
    buf.pop(); // the closing '}'
    buf.extend_from_slice(b",\"hash\":\"");
    buf.extend_from_slice(&hash);
    buf.extend_from_slice(b"\"}\n");
    hash
}

/// The fields of a record line the chain checks need.
#[derive(serde::Deserialize)]
struct RecordFields {
    time: String,
    seq: u64,
    event: String,
    outcome: String,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    first: Option<String>,
    #[serde(default)]
    last: Option<String>,
    #[serde(default)]
    distinct_keys: Option<u64>,
    prev: String,
    hash: String,
}

/// A line that parsed as a record.
struct CheckedLine {
    seq: u64,
    event: String,
    outcome: String,
    detail: Option<String>,
    prev: String,
    hash: String,
    /// The hash matches the line's bytes under the key.
    mac_ok: bool,
}

/// Why a line is not a record.
enum LineError {
    /// Not a JSON object at all (e.g. a torn fragment).
    NotJson(String),
    /// JSON, but fields are missing, mistyped or misplaced.
    BadFields(String),
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A coalesced record's fields come together (`count`, `first` and `last`;
/// `distinct_keys` only with them), with a count of at least 1 and times
/// in the format of `time`, the first not after the last.
fn check_coalesced(f: &RecordFields) -> Result<(), String> {
    let (count, first, last) = match (f.count, &f.first, &f.last) {
        (None, None, None) if f.distinct_keys.is_none() => return Ok(()),
        (Some(count), Some(first), Some(last)) => (count, first, last),
        _ => {
            return Err(
                "a coalesced record must have count, first and last together (distinct_keys only with them)".into(),
            )
        }
    };
    if count == 0 {
        return Err("count is 0: a coalesced record stands for at least one refusal".into());
    }
    let time = |name: &str, t: &str| {
        humantime::parse_rfc3339(t).map_err(|_| format!("{name} {t:?} is not an RFC 3339 UTC time"))
    };
    if time("first", first)? > time("last", last)? {
        return Err(format!("first {first:?} is after last {last:?}"));
    }
    Ok(())
}

/// Parses one line (without its `\n`) and checks its MAC.
fn check_line(key: &[u8; 32], line: &[u8]) -> Result<CheckedLine, LineError> {
    let f: RecordFields = serde_json::from_slice(line).map_err(|e| {
        if e.is_data() {
            LineError::BadFields(e.to_string())
        } else {
            LineError::NotJson(e.to_string())
        }
    })?;
    if humantime::parse_rfc3339(&f.time).is_err() {
        return Err(LineError::BadFields(format!(
            "time {:?} is not an RFC 3339 UTC time",
            f.time
        )));
    }
    check_coalesced(&f).map_err(LineError::BadFields)?;
    if !is_hash(&f.prev) || !is_hash(&f.hash) {
        return Err(LineError::BadFields(
            "prev and hash must be 64 lowercase hex digits".into(),
        ));
    }
    let suffix = format!(",\"hash\":\"{}\"}}", f.hash);
    if line.len() < HASH_SUFFIX_LEN + 1 || !line.ends_with(suffix.as_bytes()) {
        return Err(LineError::BadFields(
            "hash is not the last field, written as ,\"hash\":\"…\"}".into(),
        ));
    }
    let mut mac = hmac(key);
    mac.update(&line[..line.len() - HASH_SUFFIX_LEN]);
    mac.update(b"}");
    let computed = mac.finalize().into_bytes();
    let stored = hex::decode(&f.hash).expect("checked hex");
    let mac_ok = bool::from(computed.as_slice().ct_eq(&stored));
    Ok(CheckedLine {
        seq: f.seq,
        event: f.event,
        outcome: f.outcome,
        detail: f.detail,
        prev: f.prev,
        hash: f.hash,
        mac_ok,
    })
}

/// What the head file says: the last durable record.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct HeadFields {
    seq: u64,
    hash: String,
    mac: String,
}

/// MAC of the head: HMAC(key, "head" || seq as 8 bytes big-endian || hash
/// as its 64 hex digits).
fn head_mac(key: &[u8; 32], seq: u64, hash: &str) -> HmacSha256 {
    let mut mac = hmac(key);
    mac.update(b"head");
    mac.update(&seq.to_be_bytes());
    mac.update(hash.as_bytes());
    mac
}

/// The head file's content: [`HEAD_LEN`] bytes.
fn encode_head(key: &[u8; 32], head: &Head) -> Vec<u8> {
    let mac = hex::encode(head_mac(key, head.seq, &head.hash).finalize().into_bytes());
    let fields = HeadFields {
        seq: head.seq,
        hash: head.hash.clone(),
        mac,
    };
    let mut buf = serde_json::to_vec(&fields).expect("a head always serializes");
    debug_assert!(buf.len() < HEAD_LEN);
    buf.resize(HEAD_LEN - 1, b' ');
    buf.push(b'\n');
    buf
}

/// Reads a head file's content: `Ok(None)` if it is empty (created, never
/// written), `Err` with a message if it is unreadable or its MAC is wrong.
fn decode_head(key: &[u8; 32], bytes: &[u8]) -> Result<Option<Head>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let f: HeadFields =
        serde_json::from_slice(bytes.trim_ascii()).map_err(|e| format!("the head file is not valid: {e}"))?;
    let mac = hex::decode(&f.mac).map_err(|_| "the head file's mac is not hex".to_owned())?;
    if !is_hash(&f.hash) || head_mac(key, f.seq, &f.hash).verify_slice(&mac).is_err() {
        return Err("the head file's MAC does not verify (it was edited, or written under another key)".into());
    }
    Ok(Some(Head {
        seq: f.seq,
        hash: f.hash,
    }))
}

#[cfg(test)]
mod tests {
    //! Record format tests, and helpers shared by the writer's and the
    //! verifier's tests.

    use super::*;

    /// The audit key of every test log.
    pub(super) const KEY: [u8; 32] = [7; 32];

    /// Options for a log `audit.jsonl` in `dir`.
    pub(super) fn opts(dir: &Path, durability: Durability) -> AuditOptions {
        AuditOptions {
            path: dir.join("audit.jsonl"),
            key: KEY,
            durability,
            fsync_interval: Duration::from_millis(20),
            max_batch: 64,
        }
    }

    /// A fetch as the server would record it.
    pub(super) fn fetch(i: u64) -> AuditEvent {
        AuditEvent {
            event: "fetch",
            caller: Some(Arc::new(CallerRecord {
                uid: 1001,
                gid: 1001,
                pid: 4242,
                exe: Some("/usr/bin/billing".into()),
                unit: None,
            })),
            key: Some("prod/billing-api".into()),
            versions: vec![VersionRecord {
                role: "primary",
                version: 3,
                fingerprint: "9f86d081884c7d65".into(),
            }],
            generation_before: None,
            generation_after: Some(i),
            backend_version: None,
            outcome: "ok",
            detail: None,
            coalesced: None,
        }
    }

    /// Starts the log, writes `n` fetches, closes it; returns their seqs.
    pub(super) async fn write_log(opts: &AuditOptions, n: u64) -> Vec<u64> {
        let audit = Audit::start(opts.clone()).unwrap();
        let mut seqs = Vec::new();
        for i in 0..n {
            seqs.push(audit.record(fetch(i)).await.unwrap());
        }
        audit.close().await;
        seqs
    }

    /// The log's lines, without their `\n`.
    pub(super) fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Replaces the log with `lines`, each ended by `\n`.
    pub(super) fn write_lines(path: &Path, lines: &[String]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(path, text).unwrap();
    }

    fn encode(seq: u64, prev: &str, ev: &AuditEvent) -> (String, String) {
        let mut buf = Vec::new();
        let time = TimeText::new(SystemTime::UNIX_EPOCH);
        let hash = encode_record(&mut buf, &hmac(&KEY), seq, prev, ev, &time);
        (String::from_utf8(buf).unwrap(), hash_str(&hash).to_owned())
    }

    #[test]
    fn record_fields_come_in_fixed_order() {
        let mut ev = fetch(9);
        ev.generation_before = Some(8);
        ev.detail = Some("a \"quoted\"\nline".into());
        let (line, hash) = encode(1, ZERO_HASH, &ev);
        let order = [
            "{\"time\":\"1970-01-01T00:00:00.000000Z\",\"seq\":1,\"event\":\"fetch\"",
            "\"caller\":{\"uid\":1001,\"gid\":1001,\"pid\":4242,\"exe\":\"/usr/bin/billing\"}",
            "\"key\":\"prod/billing-api\"",
            "\"versions\":[{\"role\":\"primary\",\"version\":3,\"fingerprint\":\"9f86d081884c7d65\"}]",
            "\"generation_before\":8,\"generation_after\":9",
            "\"outcome\":\"ok\"",
            "\"detail\":\"a \\\"quoted\\\"\\nline\"",
            &format!("\"prev\":\"{ZERO_HASH}\",\"hash\":\"{hash}\"}}\n"),
        ];
        let mut at = 0;
        for part in order {
            let found = line[at..].find(part).unwrap_or_else(|| panic!("{part} in {line}"));
            at += found + part.len();
        }
        assert!(line.ends_with("\"}\n") && line.matches('\n').count() == 1, "{line}");

        // Absent optional fields are left out, not null.
        let bare = AuditEvent {
            event: "reload",
            outcome: "ok",
            ..AuditEvent::default()
        };
        let (line, _) = encode(2, &hash, &bare);
        for absent in ["caller", "key", "versions", "generation", "detail", "null"] {
            assert!(!line.contains(absent), "{absent} in {line}");
        }
    }

    #[test]
    fn coalesced_fields_follow_outcome_in_fixed_order() {
        let first = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let ev = AuditEvent {
            event: "fetch",
            caller: fetch(0).caller,
            outcome: "denied",
            detail: Some("d".into()),
            coalesced: Some(Coalesced {
                count: 7,
                first,
                last: first + Duration::from_micros(1_500_001),
                distinct_keys: Some(3),
            }),
            ..Default::default()
        };
        let (line, _) = encode(1, ZERO_HASH, &ev);
        assert!(
            line.contains(concat!(
                "\"outcome\":\"denied\",\"count\":7,\"first\":\"1970-01-01T00:00:01.000000Z\",",
                "\"last\":\"1970-01-01T00:00:02.500001Z\",\"distinct_keys\":3,\"detail\":\"d\",\"prev\""
            )),
            "{line}"
        );
        assert!(check_line(&KEY, line.trim_end().as_bytes()).ok().unwrap().mac_ok);
    }

    #[test]
    fn the_hash_covers_the_line_as_written() {
        let (line, hash) = encode(1, ZERO_HASH, &fetch(1));
        let line = line.trim_end().as_bytes();
        let checked = check_line(&KEY, line).ok().unwrap();
        assert!(checked.mac_ok);
        assert_eq!((checked.seq, checked.hash.as_str()), (1, hash.as_str()));
        assert!(!check_line(&[8; 32], line).ok().unwrap().mac_ok);

        // Same JSON value, other bytes: the MAC is over bytes, not values.
        let spaced = String::from_utf8(line.to_vec())
            .unwrap()
            .replacen("\"seq\":1", "\"seq\": 1", 1);
        assert!(!check_line(&KEY, spaced.as_bytes()).ok().unwrap().mac_ok);
        // The hash must stay the last field.
        let moved = String::from_utf8(line.to_vec()).unwrap().replacen(
            "{\"time\"",
            &format!("{{\"hash\":\"{hash}\",\"x\":0,\"time\""),
            1,
        );
        assert!(check_line(&KEY, moved.as_bytes()).is_err());
    }

    #[test]
    fn head_round_trips_and_rejects_tampering() {
        let head = Head {
            seq: 42,
            hash: "ab".repeat(32),
        };
        let bytes = encode_head(&KEY, &head);
        assert_eq!(bytes.len(), HEAD_LEN);
        assert_eq!(decode_head(&KEY, &bytes), Ok(Some(head)));
        assert!(decode_head(&[8; 32], &bytes).is_err());
        let forged = String::from_utf8(bytes).unwrap().replace("42", "43");
        assert!(decode_head(&KEY, forged.as_bytes()).is_err());
        assert_eq!(decode_head(&KEY, b""), Ok(None));
        assert!(decode_head(&KEY, b"{\"seq\":1").is_err());
    }

    #[test]
    fn head_path_appends_dot_head() {
        assert_eq!(
            head_path(Path::new("/var/log/keyward/audit.jsonl")),
            Path::new("/var/log/keyward/audit.jsonl.head")
        );
    }
}
