//! The edge between the agent's own types and the wire types of
//! `proto/keyward/v1`: the pure core (keys, key states, names) knows
//! nothing of protobuf; these conversions are the one place that knows
//! both.
//!
//! Invariant: the only conversion that carries secret bytes is
//! [`ToWire`] for [`Version`] (and so for [`KeySetState`]), which shares
//! the secret's buffer rather than copying it; metadata conversions
//! ([`ToInfo`], [`VersionMeta`]) carry none.

use std::time::SystemTime;

use crate::keyset::{KeySetState, RotationState, Version, VersionMeta};
use crate::proto;
use crate::secret::{KeyRef, NameError};

/// A type with a wire form.
pub trait ToWire {
    /// The wire type.
    type Wire;
    /// The wire form.
    fn to_proto(&self) -> Self::Wire;
}

/// A type read from a wire form that must be validated.
pub trait FromWire: Sized {
    /// The wire type.
    type Wire;
    /// Validates the wire form (absent counts as empty).
    fn from_proto(wire: Option<&Self::Wire>) -> Result<Self, NameError>;
}

/// A key's metadata, without secrets, for `ListKeys` and the admin answers.
pub trait ToInfo {
    /// Metadata only.
    fn to_info(&self) -> proto::KeyInfo;
}

impl ToWire for KeyRef {
    type Wire = proto::KeyRef;

    fn to_proto(&self) -> proto::KeyRef {
        proto::KeyRef {
            environment: self.env().to_owned(),
            name: self.name().to_owned(),
        }
    }
}

impl FromWire for KeyRef {
    type Wire = proto::KeyRef;

    fn from_proto(k: Option<&proto::KeyRef>) -> Result<KeyRef, NameError> {
        match k {
            Some(k) => KeyRef::new(&k.environment, &k.name),
            None => Err(NameError::Empty { what: "key" }),
        }
    }
}

impl ToWire for RotationState {
    type Wire = proto::RotationState;

    fn to_proto(&self) -> proto::RotationState {
        match self {
            RotationState::Steady => proto::RotationState::Steady,
            RotationState::Staged => proto::RotationState::Staged,
            RotationState::Promoted => proto::RotationState::Promoted,
        }
    }
}

impl ToWire for Version {
    type Wire = proto::KeyVersion;

    /// The wire form, sharing the secret buffer.
    fn to_proto(&self) -> proto::KeyVersion {
        proto::KeyVersion {
            version: self.number,
            secret: self.secret.to_shared_bytes(),
            fingerprint: self.fingerprint.clone(),
            created_at: Some(timestamp(self.created_at)),
            expires_at: self.expires_at.map(timestamp),
        }
    }
}

impl ToWire for VersionMeta {
    type Wire = proto::VersionInfo;

    fn to_proto(&self) -> proto::VersionInfo {
        proto::VersionInfo {
            version: self.number,
            fingerprint: self.fingerprint.clone(),
            created_at: Some(timestamp(self.created_at)),
            expires_at: self.expires_at.map(timestamp),
            promoted_at: self.promoted_at.map(timestamp),
            retired_at: self.retired_at.map(timestamp),
        }
    }
}

impl ToWire for KeySetState {
    type Wire = proto::KeySet;

    /// The wire form served by `GetKey`.
    fn to_proto(&self) -> proto::KeySet {
        proto::KeySet {
            key: Some(self.key.to_proto()),
            generation: self.generation,
            primary: Some(self.primary.to_proto()),
            fallback: self.fallback.as_ref().map(ToWire::to_proto),
            state: self.state.to_proto() as i32,
        }
    }
}

impl ToInfo for KeySetState {
    fn to_info(&self) -> proto::KeyInfo {
        proto::KeyInfo {
            key: Some(self.key.to_proto()),
            generation: self.generation,
            state: self.state.to_proto() as i32,
            primary: Some(self.primary.meta().to_proto()),
            fallback: self.fallback.as_ref().map(|f| f.meta().to_proto()),
            history: self.history.iter().map(ToWire::to_proto).collect(),
            // The agent adds its schedule (Agent::key_info).
            next_rotation: None,
            schedule: String::new(),
        }
    }
}

/// A `SystemTime` as a protobuf timestamp.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A protobuf timestamp as a `SystemTime`, if it is in range.
pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

/// A key as a caller sent it, escaped and bounded, for the audit records
/// of refusals.
pub fn shown_key(k: &proto::KeyRef) -> String {
    let mut s = format!("{:?}/{:?}", k.environment, k.name);
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}
