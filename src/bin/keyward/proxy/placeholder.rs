//! Placeholders: what the program holds instead of a key.
//!
//! A placeholder is `kwph_` and 32 lower-case hex digits. It names one key
//! and one role (the primary a program sends by default, or explicitly the
//! primary or the fallback) and is worth nothing outside the proxy: the
//! proxy swaps it for the secret only in requests to the key's bound host.
//! `keyward run --proxy` draws them at random for each run;
//! `keyward proxy` derives them from the key's name, so that a program
//! configured once (a credential in n8n) keeps working across restarts.
//! They are not secrets either way: who may use the proxy is decided by
//! who may connect to it.

use std::collections::HashMap;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// What every placeholder starts with.
pub(crate) const PREFIX: &str = "kwph_";
/// The hex digits after the prefix.
const DIGITS: usize = 32;

/// Which secret of a key a placeholder stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    /// `VAR` and `VAR_PRIMARY`: the primary, and the fallback when the
    /// provider refuses it.
    Primary,
    /// `VAR_FALLBACK`: the fallback (the primary when the key has none).
    Fallback,
}

/// The placeholders of the keys of one proxy, by text.
#[derive(Default)]
pub(crate) struct Placeholders {
    by_text: HashMap<String, (usize, Role)>,
}

/// The three placeholders of one key: VAR, VAR_PRIMARY, VAR_FALLBACK.
pub(crate) struct KeyPlaceholders {
    pub var: String,
    pub primary: String,
    pub fallback: String,
}

impl Placeholders {
    /// Draws fresh random placeholders for key number `index`.
    pub(crate) fn random(&mut self, index: usize) -> KeyPlaceholders {
        let draw = || {
            let mut b = [0u8; DIGITS / 2];
            rand::rngs::OsRng.fill_bytes(&mut b);
            format!("{PREFIX}{}", hex::encode(b))
        };
        self.add(index, [draw(), draw(), draw()])
    }

    /// The placeholders of `key` that `keyward proxy` uses: derived from its
    /// name, the same on every start.
    pub(crate) fn stable(&mut self, index: usize, key: &str) -> KeyPlaceholders {
        let derive = |role: &str| {
            let digest = Sha256::new()
                .chain_update(b"keyward proxy placeholder\0")
                .chain_update(key.as_bytes())
                .chain_update(b"\0")
                .chain_update(role.as_bytes())
                .finalize();
            format!("{PREFIX}{}", &hex::encode(digest)[..DIGITS])
        };
        self.add(index, [derive("var"), derive("primary"), derive("fallback")])
    }

    fn add(&mut self, index: usize, [var, primary, fallback]: [String; 3]) -> KeyPlaceholders {
        self.by_text.insert(var.clone(), (index, Role::Primary));
        self.by_text.insert(primary.clone(), (index, Role::Primary));
        self.by_text.insert(fallback.clone(), (index, Role::Fallback));
        KeyPlaceholders { var, primary, fallback }
    }

    /// Each placeholder of this proxy in `value`: (offset, key index, role),
    /// in order. Text that starts like one but is not one of these is left
    /// alone.
    pub(crate) fn find(&self, value: &[u8]) -> Vec<(usize, usize, Role)> {
        let mut found = Vec::new();
        let mut from = 0;
        while let Some(at) = find_bytes(&value[from..], PREFIX.as_bytes()).map(|i| i + from) {
            let end = at + PREFIX.len() + DIGITS;
            let candidate = value.get(at..end).and_then(|b| std::str::from_utf8(b).ok());
            match candidate.and_then(|c| self.by_text.get(c)) {
                Some(&(index, role)) => {
                    found.push((at, index, role));
                    from = end;
                }
                None => from = at + PREFIX.len(),
            }
        }
        found
    }

    /// Whether any placeholder of this proxy appears in `value`.
    #[cfg(test)]
    pub(crate) fn any_in(&self, value: &[u8]) -> bool {
        !self.find(value).is_empty()
    }
}

/// The first offset of `needle` in `haystack`.
fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `value` with each found placeholder replaced by `secret_of(index, role)`.
/// The result holds secrets: the caller wipes it.
pub(crate) fn replace(
    value: &[u8],
    found: &[(usize, usize, Role)],
    mut secret_of: impl FnMut(usize, Role) -> zeroize::Zeroizing<Vec<u8>>,
) -> zeroize::Zeroizing<Vec<u8>> {
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(value.len() + 64));
    let mut from = 0;
    for &(at, index, role) in found {
        out.extend_from_slice(&value[from..at]);
        out.extend_from_slice(&secret_of(index, role));
        from = at + PREFIX.len() + DIGITS;
    }
    out.extend_from_slice(&value[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_distinct_and_found_in_headers() {
        let mut p = Placeholders::default();
        let a = p.random(0);
        let b = p.random(1);
        let all = [&a.var, &a.primary, &a.fallback, &b.var, &b.primary, &b.fallback];
        for (i, x) in all.iter().enumerate() {
            assert!(x.starts_with(PREFIX) && x.len() == PREFIX.len() + DIGITS, "{x}");
            assert!(all.iter().skip(i + 1).all(|y| y != x));
        }
        let header = format!("Bearer {} and {}", a.var, b.fallback);
        let found = p.find(header.as_bytes());
        assert_eq!(
            found.iter().map(|f| (f.1, f.2)).collect::<Vec<_>>(),
            [(0, Role::Primary), (1, Role::Fallback)]
        );
        let replaced = replace(header.as_bytes(), &found, |i, r| {
            zeroize::Zeroizing::new(format!("S{i}{r:?}").into_bytes())
        });
        assert_eq!(
            std::str::from_utf8(&replaced).unwrap(),
            "Bearer S0Primary and S1Fallback"
        );
        // Unknown placeholders and prefixes alone are left as they are.
        let other = format!("{PREFIX}{} {PREFIX}", "0".repeat(DIGITS));
        assert!(!p.any_in(other.as_bytes()));
        assert!(!p.any_in(b"kwph_"));
    }

    #[test]
    fn stable_placeholders_depend_on_the_key_only() {
        let (mut p, mut q) = (Placeholders::default(), Placeholders::default());
        let (a, b) = (p.stable(0, "prod/a"), q.stable(3, "prod/a"));
        assert_eq!((a.var, a.fallback), (b.var, b.fallback));
        assert_ne!(p.stable(1, "prod/b").var, q.stable(4, "prod/a").primary);
    }
}
