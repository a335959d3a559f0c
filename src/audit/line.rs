//! One audit record and its line: the record's fields ([`AuditEvent`]),
//! how the writer encodes them and how the writer and the verifier parse
//! and check a line.
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

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::kind::{Event, Outcome};

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
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// What happened.
    pub event: Event,
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
    /// How it ended.
    pub outcome: Outcome,
    /// Free text for a human; never secret material.
    pub detail: Option<String>,
    /// Set when the record stands for several refusals alike.
    pub coalesced: Option<Coalesced>,
}

impl AuditEvent {
    /// A record of `event` ending with `outcome`, with nothing else yet.
    pub fn new(event: Event, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            event,
            caller: None,
            key: None,
            versions: Vec::new(),
            generation_before: None,
            generation_after: None,
            backend_version: None,
            outcome,
            detail: None,
            coalesced: None,
        }
    }
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

pub(super) type HmacSha256 = Hmac<Sha256>;

/// `prev` of the first record.
pub(super) const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The event the writer records about the log itself.
pub(super) const EVENT_RECOVERED: &str = Event::AuditRecovered.as_str();
/// Outcome: a torn fragment was found at the end and kept as its own line.
pub(super) const OUTCOME_TORN: &str = Outcome::TornTail.as_str();
/// Outcome: the head file named records the log no longer has.
pub(super) const OUTCOME_MISSING_TAIL: &str = Outcome::MissingTail.as_str();
/// Outcome: the head file named the log's last seq with another hash.
pub(super) const OUTCOME_HEAD_MISMATCH: &str = Outcome::HeadMismatch.as_str();
/// Outcome: the head file was unreadable or its MAC was wrong.
pub(super) const OUTCOME_HEAD_INVALID: &str = Outcome::HeadInvalid.as_str();

/// Length of `,"hash":"<64 hex>"}`, the suffix every line ends with.
const HASH_SUFFIX_LEN: usize = 75;
/// The detail of an `audit_recovered`/`torn_tail` record. The verifier
/// rebuilds it from the offsets it sees, so the format is part of the chain.
pub(super) fn torn_detail(offset: u64, len: u64) -> String {
    format!("torn fragment of {len} bytes at byte offset {offset} (a write cut short by a crash) kept as its own line")
}

pub(super) fn hmac(key: &[u8; 32]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// A record's hash as written: 64 lowercase hex digits.
pub(super) type HashHex = [u8; 64];

/// `hash` as text.
pub(super) fn hash_str(hash: &HashHex) -> &str {
    std::str::from_utf8(hash).expect("hex digits are ASCII")
}

/// A record's `time`, RFC 3339 UTC with microseconds, formatted on the
/// stack: one per batch, shared by its records.
pub(super) struct TimeText {
    bytes: [u8; 40],
    len: usize,
}

impl TimeText {
    pub(super) fn new(time: SystemTime) -> TimeText {
        let mut bytes = [0; 40];
        let mut rest = &mut bytes[..];
        io::Write::write_fmt(&mut rest, format_args!("{}", humantime::format_rfc3339_micros(time)))
            .expect("an RFC 3339 time fits in 40 bytes");
        let len = 40 - rest.len();
        TimeText { bytes, len }
    }

    pub(super) fn as_str(&self) -> &str {
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
pub(super) fn encode_record(
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
        event: ev.event.as_str(),
        caller: ev.caller.as_deref(),
        key: ev.key.as_deref(),
        versions: &ev.versions,
        generation_before: ev.generation_before,
        generation_after: ev.generation_after,
        backend_version: ev.backend_version,
        outcome: ev.outcome.as_str(),
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
pub(super) struct CheckedLine {
    pub(super) seq: u64,
    pub(super) event: String,
    pub(super) outcome: String,
    pub(super) detail: Option<String>,
    pub(super) prev: String,
    pub(super) hash: String,
    /// The hash matches the line's bytes under the key.
    pub(super) mac_ok: bool,
}

/// Why a line is not a record.
pub(super) enum LineError {
    /// Not a JSON object at all (e.g. a torn fragment).
    NotJson(String),
    /// JSON, but fields are missing, mistyped or misplaced.
    BadFields(String),
}

pub(super) fn is_hash(s: &str) -> bool {
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
pub(super) fn check_line(key: &[u8; 32], line: &[u8]) -> Result<CheckedLine, LineError> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::tests::{fetch, KEY};

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
        let bare = AuditEvent::new(Event::Reload, Outcome::Ok);
        let (line, _) = encode(2, &hash, &bare);
        for absent in ["caller", "key", "versions", "generation", "detail", "null"] {
            assert!(!line.contains(absent), "{absent} in {line}");
        }
    }

    #[test]
    fn coalesced_fields_follow_outcome_in_fixed_order() {
        let first = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let ev = AuditEvent {
            caller: fetch(0).caller,
            detail: Some("d".into()),
            coalesced: Some(Coalesced {
                count: 7,
                first,
                last: first + Duration::from_micros(1_500_001),
                distinct_keys: Some(3),
            }),
            ..AuditEvent::new(Event::Fetch, Outcome::Denied)
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

    /// A line as the format defines it, its hash computed outside this
    /// code (HMAC-SHA256 under the key of the bytes up to `prev`, closed
    /// with `}`): the encoder writes exactly these bytes and the checker
    /// accepts them, so the logs already written keep verifying.
    #[test]
    fn a_known_line_is_written_and_checked_byte_for_byte() {
        let known = concat!(
            "{\"time\":\"1970-01-01T00:00:00.000000Z\",\"seq\":1,\"event\":\"fetch\",",
            "\"caller\":{\"uid\":1001,\"gid\":1001,\"pid\":4242,\"exe\":\"/usr/bin/billing\"},",
            "\"key\":\"prod/billing-api\",\"versions\":[{\"role\":\"primary\",\"version\":3,",
            "\"fingerprint\":\"9f86d081884c7d65\"}],\"generation_after\":1,\"outcome\":\"ok\",",
            "\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\",",
            "\"hash\":\"9b9f33d39395b85e0ac5f2906d03d3c1374fc88af64acf9afb49a8bd126a29c1\"}\n"
        );
        let (line, hash) = encode(1, ZERO_HASH, &fetch(1));
        assert_eq!(line, known);
        assert_eq!(hash, "9b9f33d39395b85e0ac5f2906d03d3c1374fc88af64acf9afb49a8bd126a29c1");
        let checked = check_line(&KEY, known.trim_end().as_bytes()).ok().unwrap();
        assert!(checked.mac_ok);
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
}
