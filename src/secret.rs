//! Secret bytes, key names and fingerprints.
//!
//! Invariant: a [`Secret`] can only be read through [`Secret::expose_secret`]
//! (greppable), has no `Debug`, `Display` or `Serialize`, and its buffer is
//! wiped when the last holder drops it. Names are validated once, here, so
//! that no name can reach outside the store directory.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Secret material. Cloning shares the same wiped-on-drop buffer.
#[derive(Clone)]
pub struct Secret(Bytes);

impl Secret {
    /// Takes ownership of a zeroizing buffer.
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Secret {
        Secret(Bytes::from_owner(WipedOnDrop(bytes)))
    }

    /// Copies `bytes` into a new zeroizing buffer.
    pub fn copy_from(bytes: &[u8]) -> Secret {
        Secret::new(Zeroizing::new(bytes.to_vec()))
    }

    /// The secret bytes. Every read of secret material goes through here.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// A shared handle on the same buffer, for a response message. The buffer
    /// is wiped when the last handle (ours or the message's) is dropped.
    pub fn to_shared_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Owner of a `Bytes` buffer that wipes it on drop.
struct WipedOnDrop(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for WipedOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Why a key name or environment was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing given.
    #[error("{what} is empty: use lowercase letters, digits, '.', '_' or '-', starting with a letter or digit")]
    Empty {
        /// "key name" or "environment".
        what: &'static str,
    },
    /// Longer than [`MAX_NAME_LEN`].
    #[error("{what} is {len} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong {
        /// "key name" or "environment".
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A character outside `[a-z0-9._-]`, or a bad first character.
    #[error("{what} {shown} has {problem}: use lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. prod/billing-api)")]
    BadCharacter {
        /// "key name" or "environment".
        what: &'static str,
        /// The name, escaped for printing.
        shown: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `ENV/NAME` without the slash, or with more than one.
    #[error("key {shown} is not of the form ENV/NAME (e.g. prod/billing-api)")]
    NotEnvSlashName {
        /// The text, escaped for printing.
        shown: String,
    },
}

/// Longest accepted name or environment, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a key name or environment against `[a-z0-9][a-z0-9._-]{0,127}`.
///
/// The rule keeps every name a plain file name: no `/`, no NUL, no leading
/// dot (so no `.` or `..`, and no clash with the store's hidden temp files).
pub fn validate_name(what: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { what, len: s.len() });
    }
    let bad = |problem: String| NameError::BadCharacter {
        what,
        shown: format!("{s:?}"),
        problem,
    };
    let first = s.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(bad(format!("a bad first character {:?}", first as char)));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(bad(format!("the character {c:?}")));
    }
    Ok(())
}

/// A validated key address: `ENV/NAME`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct KeyRef {
    env: String,
    name: String,
}

impl KeyRef {
    /// Validates both parts.
    pub fn new(env: &str, name: &str) -> Result<KeyRef, NameError> {
        validate_name("environment", env)?;
        validate_name("key name", name)?;
        Ok(KeyRef {
            env: env.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The environment, e.g. `prod`.
    pub fn env(&self) -> &str {
        &self.env
    }

    /// The name within the environment, e.g. `billing-api`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.env, self.name)
    }
}

impl FromStr for KeyRef {
    type Err = NameError;

    fn from_str(s: &str) -> Result<KeyRef, NameError> {
        let mut parts = s.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(env), Some(name), None) => KeyRef::new(env, name),
            _ => Err(NameError::NotEnvSlashName {
                shown: format!("{s:?}"),
            }),
        }
    }
}

/// Computes fingerprints: HMAC-SHA256 under the per-install salt, truncated
/// to 64 bits. Keyed, so a low-entropy secret cannot be guessed from a
/// fingerprint in a log without the install's salt.
#[derive(Clone)]
pub struct Fingerprinter {
    mac: Hmac<Sha256>,
}

impl Fingerprinter {
    /// A fingerprinter keyed with `salt`.
    pub fn new(salt: &[u8; 32]) -> Fingerprinter {
        Fingerprinter {
            mac: Hmac::new_from_slice(salt).expect("HMAC takes any key length"),
        }
    }

    /// 16 hex digits.
    pub fn fingerprint(&self, secret: &Secret) -> String {
        let mut mac = self.mac.clone();
        mac.update(secret.expose_secret());
        let out = mac.finalize().into_bytes();
        hex::encode(&out[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_table() {
        let long = "a".repeat(MAX_NAME_LEN);
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        let cases: &[(&str, bool)] = &[
            ("billing-api", true),
            ("a", true),
            ("0", true),
            ("a.b_c-d", true),
            (&long, true),
            ("", false),
            (&too_long, false),
            ("..", false),
            (".", false),
            (".hidden", false),
            ("-dash", false),
            ("_under", false),
            ("Upper", false),
            ("billing/api", false),
            ("../etc", false),
            ("nul\0byte", false),
            ("space here", false),
            ("tab\t", false),
            ("émoji", false),
            ("back\\slash", false),
        ];
        for (name, ok) in cases {
            assert_eq!(validate_name("key name", name).is_ok(), *ok, "{name:?}");
        }
    }

    #[test]
    fn key_ref_parses_env_slash_name() {
        let k: KeyRef = "prod/billing-api".parse().unwrap();
        assert_eq!((k.env(), k.name()), ("prod", "billing-api"));
        assert_eq!(k.to_string(), "prod/billing-api");
        for bad in ["prod", "prod/", "/x", "prod/a/b", "prod/../x", "PROD/x", ""] {
            assert!(bad.parse::<KeyRef>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = "prod/Bad".parse::<KeyRef>().unwrap_err().to_string();
        assert!(e.contains("lowercase"), "{e}");
        let e = "prodx".parse::<KeyRef>().unwrap_err().to_string();
        assert!(e.contains("ENV/NAME"), "{e}");
    }

    #[test]
    fn fingerprint_is_keyed_and_stable() {
        let s = Secret::copy_from(b"sk_live_abc");
        let a = Fingerprinter::new(&[1; 32]);
        let b = Fingerprinter::new(&[2; 32]);
        assert_eq!(a.fingerprint(&s), a.fingerprint(&s.clone()));
        assert_ne!(a.fingerprint(&s), b.fingerprint(&s));
        assert_eq!(a.fingerprint(&s).len(), 16);
    }
}

#[cfg(test)]
mod proptests;
