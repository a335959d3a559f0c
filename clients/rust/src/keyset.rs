//! The agent's answer in plain Rust types: [`KeySet`] is the state of one
//! key, with its primary and (during a rotation) its fallback.
//!
//! Conversion from the wire happens once, here: a timestamp is a
//! `SystemTime`, a missing fallback is `None`, and a `KeySet` without a
//! primary (what a watch sends when a key is deleted) is
//! [`Error::NotFound`].

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::proto;
use crate::secret::Secret;

/// Where a key is in its rotation (see the README, "Rotation").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotationState {
    /// Only a primary.
    Steady,
    /// A new key was staged: the primary is current, the fallback is new.
    Staged,
    /// The new key was promoted: the primary is new, the fallback is old.
    Promoted,
    /// A state this client does not know (a newer agent).
    Unknown(i32),
}

/// One numbered value of a key.
#[derive(Debug, Clone)]
pub struct KeyVersion {
    /// The version number: 1 for the first value, one more for each new one.
    pub version: u64,
    /// The secret itself.
    pub secret: Secret,
    /// A keyed hash of the secret: safe to log and compare.
    pub fingerprint: String,
    /// When this version was created.
    pub created_at: SystemTime,
    /// When it expires, if it was given an expiry.
    pub expires_at: Option<SystemTime>,
}

/// The state of one key: its primary and, during a rotation, its fallback.
#[derive(Debug, Clone)]
pub struct KeySet {
    /// `ENV/NAME`.
    pub key: String,
    /// Bumped on every change of the key.
    pub generation: u64,
    /// Where the key is in its rotation.
    pub state: RotationState,
    /// The key to use.
    pub primary: KeyVersion,
    /// The key to try when the primary is refused (set while staged or
    /// promoted).
    pub fallback: Option<KeyVersion>,
}

impl KeySet {
    /// Whether `other` is the same state of the key (same generation and
    /// versions): a reconnecting watch resends the state it had.
    pub(crate) fn same_state(&self, other: &KeySet) -> bool {
        let v = |k: &KeyVersion| (k.version, k.fingerprint.clone());
        self.key == other.key
            && self.generation == other.generation
            && v(&self.primary) == v(&other.primary)
            && self.fallback.as_ref().map(v) == other.fallback.as_ref().map(v)
    }
}

/// Splits `ENV/NAME`. The agent checks the characters; this only catches
/// what cannot be a key at all, so the error comes before a round trip.
pub(crate) fn parse_key(key: &str) -> Result<proto::KeyRef, Error> {
    match key.split_once('/') {
        Some((env, name)) if !env.is_empty() && !name.is_empty() && !name.contains('/') => Ok(proto::KeyRef {
            environment: env.to_string(),
            name: name.to_string(),
        }),
        _ => Err(Error::InvalidKey(format!(
            "{key:?} is not a key name: write ENV/NAME, e.g. prod/billing-api"
        ))),
    }
}

fn key_name(r: &Option<proto::KeyRef>) -> String {
    match r {
        Some(r) => format!("{}/{}", r.environment, r.name),
        None => String::new(),
    }
}

fn time(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

impl From<proto::KeyVersion> for KeyVersion {
    fn from(v: proto::KeyVersion) -> KeyVersion {
        KeyVersion {
            version: v.version,
            secret: Secret::from(v.secret),
            fingerprint: v.fingerprint,
            created_at: time(v.created_at).unwrap_or(UNIX_EPOCH),
            expires_at: time(v.expires_at),
        }
    }
}

impl TryFrom<proto::KeySet> for KeySet {
    type Error = Error;

    fn try_from(k: proto::KeySet) -> Result<KeySet, Error> {
        let key = key_name(&k.key);
        let state = match proto::RotationState::try_from(k.state) {
            Ok(proto::RotationState::Steady) => RotationState::Steady,
            Ok(proto::RotationState::Staged) => RotationState::Staged,
            Ok(proto::RotationState::Promoted) => RotationState::Promoted,
            _ => RotationState::Unknown(k.state),
        };
        let Some(primary) = k.primary else {
            return Err(Error::NotFound(format!(
                "key {key} was deleted; it comes back when it is put again"
            )));
        };
        Ok(KeySet {
            key,
            generation: k.generation,
            state,
            primary: primary.into(),
            fallback: k.fallback.map(KeyVersion::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        for ok in ["prod/billing-api", "dev/x"] {
            assert!(parse_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "prod", "/x", "prod/", "a/b/c"] {
            match parse_key(bad) {
                Err(Error::InvalidKey(m)) => assert!(m.contains("ENV/NAME"), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_deleted_key_is_not_found() {
        let deleted = proto::KeySet {
            key: Some(parse_key("prod/x").unwrap()),
            generation: 4,
            ..Default::default()
        };
        match KeySet::try_from(deleted) {
            Err(Error::NotFound(m)) => assert!(m.contains("prod/x was deleted"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wire_to_plain_types() {
        let v = |n: u64| proto::KeyVersion {
            version: n,
            secret: bytes::Bytes::from(format!("s{n}")),
            fingerprint: format!("fp{n}"),
            created_at: Some(prost_types::Timestamp { seconds: 10, nanos: 0 }),
            expires_at: None,
        };
        let k = KeySet::try_from(proto::KeySet {
            key: Some(parse_key("prod/x").unwrap()),
            generation: 3,
            primary: Some(v(2)),
            fallback: Some(v(1)),
            state: proto::RotationState::Promoted as i32,
        })
        .unwrap();
        assert_eq!(k.key, "prod/x");
        assert_eq!(k.state, RotationState::Promoted);
        assert_eq!(k.primary.secret.expose(), b"s2");
        assert_eq!(k.primary.created_at, UNIX_EPOCH + std::time::Duration::from_secs(10));
        assert_eq!(k.primary.expires_at, None);
        assert_eq!(k.fallback.as_ref().unwrap().version, 1);
        assert!(!format!("{k:?}").contains("s2"));
    }
}
