//! The plaintext inside a key's age file.
//!
//! ```text
//! keyward-keyset v1\n
//! {"generation":…,"state":…,"primary":{…,"len":N},"fallback":…,"history":[…]}\n
//! <N bytes of the primary's secret><M bytes of the fallback's secret>
//! ```
//!
//! Invariants: secret bytes never pass through serde (the JSON line holds
//! only their lengths); every buffer holding plaintext is zeroizing;
//! [`decode`] accepts exactly what [`encode`] can produce, and [`encode`]
//! refuses a state [`decode`] would reject, so a commit can never write a
//! file the agent cannot load back. Fingerprints of live versions are not
//! stored: they are recomputed at load with the install's fingerprinter.
//! Times are whole unix milliseconds.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keyset::{KeySetState, RotationState, Version, VersionMeta, HISTORY_LIMIT};
use crate::secret::{Fingerprinter, KeyRef, Secret};

/// The first line of every record.
pub const HEADER: &[u8] = b"keyward-keyset v1\n";

/// Longest accepted metadata line, in bytes (the history is bounded, so a
/// real one is a few KiB at most).
pub(crate) const MAX_META_LEN: usize = 256 * 1024;

/// Longest accepted fingerprint in the history, in characters.
const MAX_FINGERPRINT_LEN: usize = 64;

/// Why a plaintext is not a valid record, or a state cannot be written as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The plaintext does not start with [`HEADER`].
    #[error("not a keyward record (it does not start with \"keyward-keyset v1\")")]
    NotARecord,
    /// The metadata line has no end.
    #[error("the record is truncated: its metadata line has no end")]
    Truncated,
    /// The metadata line is not the expected JSON.
    #[error("the record's metadata is not valid: {0}")]
    BadMetadata(String),
    /// The secret bytes do not match the lengths in the metadata.
    #[error(
        "the record's secrets are {actual} bytes but its metadata says {expected}: the record is truncated or garbled"
    )]
    LengthMismatch {
        /// Sum of the lengths in the metadata.
        expected: u64,
        /// Bytes actually present after the metadata.
        actual: u64,
    },
    /// The fields contradict each other.
    #[error("the record is inconsistent: {0}")]
    Inconsistent(String),
}

/// The JSON line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    generation: u64,
    state: RotationState,
    primary: LiveMeta,
    fallback: Option<LiveMeta>,
    history: Vec<HistoryMeta>,
    /// Fleet mode: the backend (KV v2) version this record is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backend_version: Option<u64>,
    /// Fleet records name their key, so that a record copied to another
    /// key's path is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

/// A live version: its material follows the JSON line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiveMeta {
    number: u64,
    created_at: u64,
    expires_at: Option<u64>,
    promoted_at: Option<u64>,
    /// Length of the secret, in bytes.
    len: u64,
}

/// A retired version: metadata only, with its fingerprint (there is no
/// material left to recompute it from).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryMeta {
    number: u64,
    fingerprint: String,
    created_at: u64,
    expires_at: Option<u64>,
    promoted_at: Option<u64>,
    retired_at: Option<u64>,
}

/// Serializes `state` (its key is not stored: the file's path names it).
pub fn encode(state: &KeySetState) -> Result<Zeroizing<Vec<u8>>, RecordError> {
    encode_inner(state, false)
}

/// Serializes `state` with its key inside, for the fleet's shared backend,
/// where [`decode`] then refuses it under any other key.
pub fn encode_bound(state: &KeySetState) -> Result<Zeroizing<Vec<u8>>, RecordError> {
    encode_inner(state, true)
}

fn encode_inner(state: &KeySetState, bound: bool) -> Result<Zeroizing<Vec<u8>>, RecordError> {
    check_consistent(
        state.state,
        state.primary.number,
        state.fallback.as_ref().map(|f| f.number),
        &state.history,
    )?;
    let live = |v: &Version| -> Result<LiveMeta, RecordError> {
        Ok(LiveMeta {
            number: v.number,
            created_at: to_millis(v.created_at, "created_at")?,
            expires_at: v.expires_at.map(|t| to_millis(t, "expires_at")).transpose()?,
            promoted_at: v.promoted_at.map(|t| to_millis(t, "promoted_at")).transpose()?,
            len: v.secret.len() as u64,
        })
    };
    let history = state
        .history
        .iter()
        .map(|h| {
            Ok(HistoryMeta {
                number: h.number,
                fingerprint: h.fingerprint.clone(),
                created_at: to_millis(h.created_at, "created_at")?,
                expires_at: h.expires_at.map(|t| to_millis(t, "expires_at")).transpose()?,
                promoted_at: h.promoted_at.map(|t| to_millis(t, "promoted_at")).transpose()?,
                retired_at: h.retired_at.map(|t| to_millis(t, "retired_at")).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, RecordError>>()?;
    let meta = Meta {
        generation: state.generation,
        state: state.state,
        primary: live(&state.primary)?,
        fallback: state.fallback.as_ref().map(live).transpose()?,
        history,
        backend_version: state.backend_version,
        key: bound.then(|| state.key.to_string()),
    };
    // The JSON holds no secret; compact output has no newline in it.
    let json = serde_json::to_vec(&meta).map_err(|e| RecordError::BadMetadata(e.to_string()))?;
    let primary = state.primary.secret.expose_secret();
    let fallback = state.fallback.as_ref().map_or(&[][..], |f| f.secret.expose_secret());
    // One allocation of the final size: no reallocation leaves a stray copy.
    let mut out = Zeroizing::new(Vec::with_capacity(
        HEADER.len() + json.len() + 1 + primary.len() + fallback.len(),
    ));
    out.extend_from_slice(HEADER);
    out.extend_from_slice(&json);
    out.push(b'\n');
    out.extend_from_slice(primary);
    out.extend_from_slice(fallback);
    Ok(out)
}

/// Parses and validates a plaintext as the state of `key`, computing the
/// live versions' fingerprints with `fingerprinter`.
pub fn decode(key: KeyRef, plaintext: &[u8], fingerprinter: &Fingerprinter) -> Result<KeySetState, RecordError> {
    let rest = plaintext.strip_prefix(HEADER).ok_or(RecordError::NotARecord)?;
    let end = rest
        .iter()
        .take(MAX_META_LEN + 1)
        .position(|&b| b == b'\n')
        .ok_or(if rest.len() > MAX_META_LEN {
            RecordError::BadMetadata(format!("the metadata line is longer than {MAX_META_LEN} bytes"))
        } else {
            RecordError::Truncated
        })?;
    let meta: Meta = serde_json::from_slice(&rest[..end]).map_err(|e| RecordError::BadMetadata(e.to_string()))?;
    if let Some(named) = &meta.key {
        if *named != key.to_string() {
            return Err(RecordError::Inconsistent(format!(
                "the record is {named}'s, not {key}'s: it was copied to the wrong path"
            )));
        }
    }
    let secrets = &rest[end + 1..];

    let primary_len = meta.primary.len;
    let fallback_len = meta.fallback.as_ref().map_or(0, |f| f.len);
    let expected = primary_len
        .checked_add(fallback_len)
        .ok_or_else(|| RecordError::Inconsistent("the secret lengths overflow".to_owned()))?;
    if expected != secrets.len() as u64 {
        return Err(RecordError::LengthMismatch {
            expected,
            actual: secrets.len() as u64,
        });
    }
    let (primary_bytes, fallback_bytes) = secrets.split_at(primary_len as usize);

    let history = meta
        .history
        .into_iter()
        .map(|h| {
            Ok(VersionMeta {
                number: h.number,
                fingerprint: h.fingerprint,
                created_at: from_millis(h.created_at)?,
                expires_at: h.expires_at.map(from_millis).transpose()?,
                promoted_at: h.promoted_at.map(from_millis).transpose()?,
                retired_at: h.retired_at.map(from_millis).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, RecordError>>()?;
    check_consistent(
        meta.state,
        meta.primary.number,
        meta.fallback.as_ref().map(|f| f.number),
        &history,
    )?;

    let live = |m: &LiveMeta, bytes: &[u8]| -> Result<Version, RecordError> {
        let secret = Secret::copy_from(bytes);
        Ok(Version {
            number: m.number,
            fingerprint: fingerprinter.fingerprint(&secret),
            secret,
            created_at: from_millis(m.created_at)?,
            expires_at: m.expires_at.map(from_millis).transpose()?,
            promoted_at: m.promoted_at.map(from_millis).transpose()?,
        })
    };
    let primary = live(&meta.primary, primary_bytes)?;
    let fallback = meta.fallback.as_ref().map(|f| live(f, fallback_bytes)).transpose()?;
    Ok(KeySetState {
        key,
        generation: meta.generation,
        state: meta.state,
        primary,
        fallback,
        history,
        backend_version: meta.backend_version,
    })
}

/// The rules both directions enforce.
fn check_consistent(
    state: RotationState,
    primary: u64,
    fallback: Option<u64>,
    history: &[VersionMeta],
) -> Result<(), RecordError> {
    let bad = |m: String| Err(RecordError::Inconsistent(m));
    match (state, fallback) {
        (RotationState::Steady, Some(_)) => return bad("a steady key has a fallback".to_owned()),
        (RotationState::Staged | RotationState::Promoted, None) => {
            return bad(format!("a {} key has no fallback", state.as_str()))
        }
        _ => {}
    }
    if history.len() > HISTORY_LIMIT {
        return bad(format!(
            "{} history entries; at most {HISTORY_LIMIT} are kept",
            history.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for n in std::iter::once(primary)
        .chain(fallback)
        .chain(history.iter().map(|h| h.number))
    {
        if !seen.insert(n) {
            return bad(format!("version {n} appears more than once"));
        }
    }
    for h in history {
        let fp = &h.fingerprint;
        if fp.len() > MAX_FINGERPRINT_LEN || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("history version {} has a malformed fingerprint", h.number));
        }
    }
    Ok(())
}

/// Truncates a time to whole milliseconds, as a record stores it.
pub fn truncate_to_millis(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_millis(d.as_millis() as u64),
        Err(_) => t,
    }
}

/// Truncates every time in `state` to whole milliseconds, so the state in
/// memory after a commit is exactly what a reload of the file gives.
pub fn normalize_times(state: &mut KeySetState) {
    let fix = |t: &mut SystemTime| *t = truncate_to_millis(*t);
    for v in std::iter::once(&mut state.primary).chain(state.fallback.as_mut()) {
        fix(&mut v.created_at);
        v.expires_at.iter_mut().for_each(fix);
        v.promoted_at.iter_mut().for_each(fix);
    }
    for h in &mut state.history {
        fix(&mut h.created_at);
        h.expires_at.iter_mut().for_each(fix);
        h.promoted_at.iter_mut().for_each(fix);
        h.retired_at.iter_mut().for_each(fix);
    }
}

fn to_millis(t: SystemTime, field: &str) -> Result<u64, RecordError> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| RecordError::Inconsistent(format!("{field} is before 1970")))?;
    u64::try_from(d.as_millis()).map_err(|_| RecordError::Inconsistent(format!("{field} is too far in the future")))
}

fn from_millis(ms: u64) -> Result<SystemTime, RecordError> {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .ok_or_else(|| RecordError::Inconsistent(format!("time {ms} ms is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Fingerprinter {
        Fingerprinter::new(&[7; 32])
    }

    fn ms(n: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(n)
    }

    fn version(n: u64, s: &[u8], expires: Option<u64>, promoted: Option<u64>) -> Version {
        let secret = Secret::copy_from(s);
        Version {
            number: n,
            fingerprint: fp().fingerprint(&secret),
            secret,
            created_at: ms(1_700_000_000_000 + n),
            expires_at: expires.map(ms),
            promoted_at: promoted.map(ms),
        }
    }

    fn key() -> KeyRef {
        "prod/billing-api".parse().unwrap()
    }

    fn promoted_state() -> KeySetState {
        KeySetState {
            key: key(),
            generation: 9,
            state: RotationState::Promoted,
            primary: version(
                3,
                b"sk_live_new\n\0\xff",
                Some(1_800_000_000_000),
                Some(1_700_000_000_500),
            ),
            fallback: Some(version(2, b"sk_live_old", None, Some(1_600_000_000_000))),
            history: vec![VersionMeta {
                number: 1,
                fingerprint: "0123456789abcdef".to_owned(),
                created_at: ms(1),
                expires_at: Some(ms(2)),
                promoted_at: Some(ms(3)),
                retired_at: Some(ms(4)),
            }],
            backend_version: None,
        }
    }

    fn assert_same(a: &KeySetState, b: &KeySetState) {
        assert_eq!(a.key, b.key);
        assert_eq!(a.generation, b.generation);
        assert_eq!(a.state, b.state);
        assert_eq!(a.history, b.history);
        assert_eq!(a.backend_version, b.backend_version);
        for (x, y) in [
            (Some(&a.primary), Some(&b.primary)),
            (a.fallback.as_ref(), b.fallback.as_ref()),
        ] {
            match (x, y) {
                (None, None) => {}
                (Some(x), Some(y)) => {
                    assert_eq!(x.meta(), y.meta());
                    assert_eq!(x.secret.expose_secret(), y.secret.expose_secret());
                }
                _ => panic!("fallback differs"),
            }
        }
    }

    #[test]
    fn round_trip_with_fallback_history_and_expiry() {
        let s = promoted_state();
        let bytes = encode(&s).unwrap();
        assert!(bytes.starts_with(HEADER));
        let back = decode(key(), &bytes, &fp()).unwrap();
        assert_same(&s, &back);
    }

    #[test]
    fn a_bound_record_keeps_its_backend_version_and_refuses_another_key() {
        let mut s = promoted_state();
        s.backend_version = Some(7);
        let bytes = encode_bound(&s).unwrap();
        assert_same(&s, &decode(key(), &bytes, &fp()).unwrap());
        let other: KeyRef = "prod/other-api".parse().unwrap();
        let err = decode(other, &bytes, &fp()).err().unwrap();
        assert!(
            err.to_string().contains("prod/billing-api's, not prod/other-api's"),
            "{err}"
        );
        // An unbound record (a local file) names no key and loads anywhere.
        let unbound = encode(&s).unwrap();
        assert_eq!(
            decode("prod/other-api".parse().unwrap(), &unbound, &fp())
                .unwrap()
                .backend_version,
            Some(7)
        );
    }

    #[test]
    fn round_trip_steady_without_fallback() {
        let s = KeySetState::create(key(), version(1, b"only", None, None));
        let back = decode(key(), &encode(&s).unwrap(), &fp()).unwrap();
        assert_same(&s, &back);
        // An empty secret is carried too (refusing it is policy, not format).
        let s = KeySetState::create(key(), version(1, b"", None, None));
        assert_same(&s, &decode(key(), &encode(&s).unwrap(), &fp()).unwrap());
    }

    #[test]
    fn fingerprints_are_computed_at_load() {
        let mut s = promoted_state();
        s.primary.fingerprint = "stale".to_owned();
        let back = decode(key(), &encode(&s).unwrap(), &fp()).unwrap();
        assert_eq!(back.primary.fingerprint, fp().fingerprint(&back.primary.secret));
        let other = decode(key(), &encode(&s).unwrap(), &Fingerprinter::new(&[8; 32])).unwrap();
        assert_ne!(other.primary.fingerprint, back.primary.fingerprint);
    }

    #[test]
    fn secrets_are_not_in_the_json() {
        let s = promoted_state();
        let bytes = encode(&s).unwrap();
        let line_end = HEADER.len() + bytes[HEADER.len()..].iter().position(|&b| b == b'\n').unwrap();
        let json = std::str::from_utf8(&bytes[HEADER.len()..line_end]).unwrap();
        assert!(!json.contains("sk_live"), "{json}");
    }

    #[test]
    fn rejects_truncated_and_garbled() {
        let good = encode(&promoted_state()).unwrap();
        // Every strict prefix is rejected.
        for cut in 0..good.len() {
            assert!(
                decode(key(), &good[..cut], &fp()).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        // A trailing byte is rejected.
        let mut long = good.to_vec();
        long.push(b'x');
        assert!(matches!(
            decode(key(), &long, &fp()),
            Err(RecordError::LengthMismatch { .. })
        ));
        assert_eq!(
            decode(key(), b"sk_live_raw_secret", &fp()).err(),
            Some(RecordError::NotARecord)
        );
        let cases: &[(&str, &[u8])] = &[
            ("no newline", b"keyward-keyset v1\n{\"generation\":1"),
            ("not json", b"keyward-keyset v1\nhello\n"),
            ("unknown field", b"keyward-keyset v1\n{\"generation\":1,\"state\":\"steady\",\"primary\":{\"number\":1,\"created_at\":0,\"expires_at\":null,\"promoted_at\":null,\"len\":1},\"fallback\":null,\"history\":[],\"secret\":\"x\"}\nx"),
            ("steady with fallback", b"keyward-keyset v1\n{\"generation\":1,\"state\":\"steady\",\"primary\":{\"number\":1,\"created_at\":0,\"expires_at\":null,\"promoted_at\":null,\"len\":1},\"fallback\":{\"number\":2,\"created_at\":0,\"expires_at\":null,\"promoted_at\":null,\"len\":1},\"history\":[]}\nxy"),
            ("duplicate versions", b"keyward-keyset v1\n{\"generation\":1,\"state\":\"staged\",\"primary\":{\"number\":1,\"created_at\":0,\"expires_at\":null,\"promoted_at\":null,\"len\":1},\"fallback\":{\"number\":1,\"created_at\":0,\"expires_at\":null,\"promoted_at\":null,\"len\":1},\"history\":[]}\nxy"),
            ("no primary", b"keyward-keyset v1\n{\"generation\":1,\"state\":\"steady\",\"fallback\":null,\"history\":[]}\n"),
            ("huge length", b"keyward-keyset v1\n{\"generation\":1,\"state\":\"staged\",\"primary\":{\"number\":1,\"created_at\":0,\"expires_at\":null,\"promoted_at\":null,\"len\":18446744073709551615},\"fallback\":{\"number\":2,\"created_at\":0,\"expires_at\":null,\"promoted_at\":null,\"len\":2},\"history\":[]}\nx"),
            ("bad fingerprint", b"keyward-keyset v1\n{\"generation\":1,\"state\":\"steady\",\"primary\":{\"number\":2,\"created_at\":0,\"expires_at\":null,\"promoted_at\":null,\"len\":1},\"fallback\":null,\"history\":[{\"number\":1,\"fingerprint\":\"zz\",\"created_at\":0,\"expires_at\":null,\"promoted_at\":null,\"retired_at\":null}]}\nx"),
        ];
        for (what, bytes) in cases {
            assert!(decode(key(), bytes, &fp()).is_err(), "{what}");
        }
        // Flip one byte in the JSON: rejected or, if still valid, consistent.
        let mut garbled = good.to_vec();
        garbled[HEADER.len() + 1] = b'#';
        assert!(decode(key(), &garbled, &fp()).is_err());
    }

    #[test]
    fn rejects_unbounded_history_both_ways() {
        let mut s = promoted_state();
        s.history = (10..10 + HISTORY_LIMIT as u64 + 1)
            .map(|n| VersionMeta {
                number: n,
                fingerprint: "00".to_owned(),
                created_at: ms(0),
                expires_at: None,
                promoted_at: None,
                retired_at: None,
            })
            .collect();
        assert!(encode(&s).is_err());
    }

    #[test]
    fn encode_refuses_what_decode_would_reject() {
        let mut s = promoted_state();
        s.fallback.as_mut().unwrap().number = 3;
        assert!(matches!(encode(&s), Err(RecordError::Inconsistent(_))));
        let mut s = promoted_state();
        s.fallback = None;
        assert!(encode(&s).is_err());
    }

    #[test]
    fn normalize_truncates_to_millis() {
        let mut s = promoted_state();
        s.primary.created_at = ms(5) + Duration::from_nanos(999_999);
        normalize_times(&mut s);
        assert_eq!(s.primary.created_at, ms(5));
        let back = decode(key(), &encode(&s).unwrap(), &fp()).unwrap();
        assert_same(&s, &back);
    }
}
