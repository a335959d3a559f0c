//! Signed fleet records: every value an agent writes to the backend carries
//! an Ed25519 signature by the writing member's signing key, and an agent
//! applies only values signed by a member of its `[[backend.member]]` list.
//!
//! The signed message (the record's *canonical bytes*) is
//!
//! ```text
//! "keyward-fleet-signature-v1" 0x00          domain separation
//! field(kind)                               "key", "deleted", "changes", "status", "anchor" or "lease"
//! field(path)                               "<mount>/<prefix>/keys/<env>/<name>", …/changes, …/agents/<id>,
//!                                           …/anchors/<id>/<install id>/<seq>, …/leases/<env>/<name>
//! field(key)                                "<env>/<name>"; empty for a status and an anchor
//! u64 big-endian                            the KV version the value is written as
//! u32 big-endian count, then field(part)…   the kind's body parts (below)
//! ```
//!
//! where `field(x)` is `x`'s length as a u32 big-endian and its bytes (so
//! no two different inputs give the same message). The body parts:
//!
//! | kind | parts |
//! |---|---|
//! | `key` | the record's age armor, as stored in `record` |
//! | `deleted` | the marker's generation, in decimal |
//! | `changes` | the changed key's record version in decimal, the writing agent's id |
//! | `status` | the status report's JSON text, as stored in `report` |
//! | `anchor` | the audit chain head's JSON text, as stored in `anchor` |
//! | `lease` | the rotation lease's JSON text, as stored in `lease` |
//!
//! The value stored holds `signer` (the member's name) and `signature`
//! (standard base64 of the 64 signature bytes) beside its own fields.
//! Binding the path and the version means a member's record copied to
//! another key's path, replayed as another version, or a status copied
//! under another agent's path does not verify.

use base64::Engine;
use serde_json::Value;

use crate::config::backend::Member;

/// The domain-separation prefix.
pub const DOMAIN: &[u8] = b"keyward-fleet-signature-v1\0";

/// What a signed value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A key record (`keys/<env>/<name>`).
    Key,
    /// A deletion marker (`keys/<env>/<name>`).
    Deleted,
    /// The change marker (`changes`).
    Changes,
    /// An agent's status (`agents/<id>`).
    Status,
    /// An agent's audit chain head (`anchors/<id>/<install id>/<seq>`).
    Anchor,
    /// A rotation lease (`leases/<env>/<name>`).
    Lease,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::Deleted => "deleted",
            Kind::Changes => "changes",
            Kind::Status => "status",
            Kind::Anchor => "anchor",
            Kind::Lease => "lease",
        }
    }
}

/// The canonical bytes (see the module documentation).
pub fn canonical(kind: Kind, path: &str, key: &str, version: u64, body: &[&[u8]]) -> Vec<u8> {
    let len = DOMAIN.len() + 40 + path.len() + key.len() + body.iter().map(|b| b.len() + 4).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    out.extend_from_slice(DOMAIN);
    field(&mut out, kind.as_str().as_bytes());
    field(&mut out, path.as_bytes());
    field(&mut out, key.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    for part in body {
        field(&mut out, part);
    }
    out
}

/// Adds `signer` and `signature` to `value` (an object).
pub fn attach(value: &mut Value, signer: &str, signature: &[u8; 64]) {
    if let Value::Object(map) = value {
        map.insert("signer".to_owned(), Value::String(signer.to_owned()));
        map.insert(
            "signature".to_owned(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(signature)),
        );
    }
}

/// Checks `value`'s signature over `message`: the member it names must be
/// in `members` (and be `required`, when given) and the signature verify
/// with its key (strict verification). The signer's name, or why not.
pub fn verify(value: &Value, message: &[u8], members: &[Member], required: Option<&str>) -> Result<String, String> {
    let signer = value
        .get("signer")
        .and_then(Value::as_str)
        .ok_or("it is not signed (no \"signer\"): not written by a member of this fleet")?;
    let member = members
        .iter()
        .find(|m| m.name == signer)
        .ok_or_else(|| format!("it is signed by {signer:?}, which is not in this agent's [[backend.member]] list"))?;
    if let Some(want) = required.filter(|w| *w != signer) {
        return Err(format!(
            "it is signed by member {signer:?}, but only member {want:?} writes here (copied from another agent's path?)"
        ));
    }
    let sig = value
        .get("signature")
        .and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| format!("its signature (by {signer:?}) is missing or not 64 bytes of base64"))?;
    member
        .signing_key
        .verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| {
            format!(
                "its signature by member {signer:?} does not verify for this path and version: forged, copied to the wrong path or a replay of another version"
            )
        })?;
    Ok(signer.to_owned())
}

/// A member named `name` with `key`'s public half (tests of signed values).
#[cfg(test)]
pub(super) fn test_member(name: &str, key: &crate::store::identity::SigningKey) -> Member {
    Member {
        name: name.to_owned(),
        recipient: "age1".to_owned(),
        signing_key: key.verifying_key(),
    }
}

#[cfg(test)]
mod tests {
    use super::test_member as member;
    use super::*;
    use crate::store::identity::SigningKey;

    #[test]
    fn canonical_bytes_are_pinned() {
        let m = canonical(Kind::Key, "secret/keyward/keys/prod/a", "prod/a", 3, &[b"xy"]);
        let mut want = b"keyward-fleet-signature-v1\0".to_vec();
        want.extend_from_slice(b"\0\0\0\x03key");
        want.extend_from_slice(b"\0\0\0\x1asecret/keyward/keys/prod/a");
        want.extend_from_slice(b"\0\0\0\x06prod/a");
        want.extend_from_slice(&3u64.to_be_bytes());
        want.extend_from_slice(b"\0\0\0\x01\0\0\0\x02xy");
        assert_eq!(m, want);
        // Fields cannot run into each other.
        assert_ne!(
            canonical(Kind::Changes, "p", "ab", 1, &[b"c"]),
            canonical(Kind::Changes, "p", "a", 1, &[b"bc"])
        );
    }

    #[test]
    fn a_signature_binds_signer_path_version_and_body() {
        let a = SigningKey::generate();
        let b = SigningKey::generate();
        let members = [member("a", &a), member("b", &b)];
        let msg = canonical(Kind::Key, "s/k/keys/prod/x", "prod/x", 2, &[b"armor"]);
        let mut v = serde_json::json!({"record": "armor"});
        attach(&mut v, "a", &a.sign(&msg));
        assert_eq!(verify(&v, &msg, &members, None).unwrap(), "a");
        assert!(verify(&v, &msg, &members, Some("b")).is_err());
        for other in [
            canonical(Kind::Key, "s/k/keys/prod/y", "prod/y", 2, &[b"armor"]),
            canonical(Kind::Key, "s/k/keys/prod/x", "prod/x", 3, &[b"armor"]),
            canonical(Kind::Deleted, "s/k/keys/prod/x", "prod/x", 2, &[b"armor"]),
            canonical(Kind::Key, "s/k/keys/prod/x", "prod/x", 2, &[b"armor2"]),
        ] {
            assert!(verify(&v, &other, &members, None).is_err());
        }
        // Claiming another member's name does not help.
        let mut claimed = v.clone();
        claimed["signer"] = "b".into();
        assert!(verify(&claimed, &msg, &members, None).is_err());
        // Unsigned, or by someone not listed.
        assert!(verify(&serde_json::json!({}), &msg, &members, None)
            .unwrap_err()
            .contains("not signed"));
        assert!(verify(&v, &msg, &members[1..], None).unwrap_err().contains("not in"));
    }
}
