//! The state of one key: its generation, rotation state, primary, optional
//! fallback and a bounded history of retired versions (metadata only).
//!
//! Invariant: a [`KeySetState`] always has a primary; the generation only
//! grows; version numbers are never reused within a key.

use std::time::SystemTime;

use crate::secret::{KeyRef, Secret};

/// How many retired versions' metadata a key keeps.
pub const HISTORY_LIMIT: usize = 32;

/// Where a key is in the rotation sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationState {
    /// Only a primary.
    Steady,
    /// A new key is staged as the fallback.
    Staged,
    /// The new key is primary, the old one the fallback.
    Promoted,
}

impl RotationState {
    /// Lowercase name for logs and the audit.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationState::Steady => "steady",
            RotationState::Staged => "staged",
            RotationState::Promoted => "promoted",
        }
    }
}

/// One numbered value of a key, with its secret.
#[derive(Clone)]
pub struct Version {
    /// Version number, unique within the key.
    pub number: u64,
    /// The secret material.
    pub secret: Secret,
    /// Keyed fingerprint of the secret (see [`crate::secret::Fingerprinter`]).
    pub fingerprint: String,
    /// When this version was created.
    pub created_at: SystemTime,
    /// When it stops being valid, if known.
    pub expires_at: Option<SystemTime>,
    /// When it became primary, if it has.
    pub promoted_at: Option<SystemTime>,
}

/// Metadata of a version without its secret (for listings and history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionMeta {
    /// Version number.
    pub number: u64,
    /// Keyed fingerprint.
    pub fingerprint: String,
    /// Creation time.
    pub created_at: SystemTime,
    /// Expiry, if any.
    pub expires_at: Option<SystemTime>,
    /// When it became primary, if it did.
    pub promoted_at: Option<SystemTime>,
    /// When it was retired or dropped, if it was.
    pub retired_at: Option<SystemTime>,
}

impl Version {
    /// Metadata of this version.
    pub fn meta(&self) -> VersionMeta {
        VersionMeta {
            number: self.number,
            fingerprint: self.fingerprint.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            promoted_at: self.promoted_at,
            retired_at: None,
        }
    }
}

/// The full state of one key.
#[derive(Clone)]
pub struct KeySetState {
    /// Which key.
    pub key: KeyRef,
    /// Bumped on every change.
    pub generation: u64,
    /// Rotation state.
    pub state: RotationState,
    /// The version clients use first.
    pub primary: Version,
    /// The version clients fall back to on 401/403.
    pub fallback: Option<Version>,
    /// Retired versions, newest first, at most [`HISTORY_LIMIT`].
    pub history: Vec<VersionMeta>,
    /// Fleet mode: the KV v2 version of the backend record this state is
    /// (`None` with the local backend).
    pub backend_version: Option<u64>,
}

/// Metadata only: a `KeySetState` never prints secret bytes.
impl std::fmt::Debug for KeySetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySetState")
            .field("key", &self.key)
            .field("generation", &self.generation)
            .field("state", &self.state)
            .field("primary", &self.primary.meta())
            .field("fallback", &self.fallback.as_ref().map(Version::meta))
            .field("history", &self.history.len())
            .field("backend_version", &self.backend_version)
            .finish()
    }
}

impl KeySetState {
    /// A new key in the steady state: generation 1, version 1.
    pub fn create(key: KeyRef, primary: Version) -> KeySetState {
        KeySetState {
            key,
            generation: 1,
            state: RotationState::Steady,
            primary,
            fallback: None,
            history: Vec::new(),
            backend_version: None,
        }
    }

    /// The highest version number this key has used.
    pub fn max_version(&self) -> u64 {
        let live = self.primary.number.max(self.fallback.as_ref().map_or(0, |f| f.number));
        self.history.iter().map(|h| h.number).fold(live, u64::max)
    }

    /// Replaces the key's versions with `new` as the only primary (an
    /// explicit overwrite): the old versions move to history.
    pub fn overwrite(&self, mut new: Version, now: SystemTime) -> KeySetState {
        new.number = self.max_version() + 1;
        let mut next = self.clone();
        let mut retired: Vec<VersionMeta> = std::iter::once(&self.primary)
            .chain(self.fallback.as_ref())
            .map(|v| VersionMeta {
                retired_at: Some(now),
                ..v.meta()
            })
            .collect();
        retired.append(&mut next.history);
        retired.truncate(HISTORY_LIMIT);
        next.history = retired;
        next.primary = new;
        next.fallback = None;
        next.state = RotationState::Steady;
        next.generation = self.generation + 1;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u64, s: &[u8]) -> Version {
        Version {
            number: n,
            secret: Secret::copy_from(s),
            fingerprint: format!("fp{n}"),
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: None,
            promoted_at: None,
        }
    }

    #[test]
    fn overwrite_bumps_generation_and_version_and_keeps_history() {
        let k = KeySetState::create("prod/a".parse().unwrap(), version(1, b"one"));
        let k2 = k.overwrite(version(0, b"two"), SystemTime::UNIX_EPOCH);
        assert_eq!(k2.generation, 2);
        assert_eq!(k2.primary.number, 2);
        assert_eq!(k2.primary.secret.expose_secret(), b"two");
        assert_eq!(k2.history.len(), 1);
        assert_eq!(k2.history[0].number, 1);
        assert!(k2.fallback.is_none());
        let k3 = k2.overwrite(version(0, b"three"), SystemTime::UNIX_EPOCH);
        assert_eq!(k3.primary.number, 3);
        assert_eq!(k3.history.iter().map(|h| h.number).collect::<Vec<_>>(), [2, 1]);
    }
}
