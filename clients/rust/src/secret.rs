//! [`Secret`]: key material that is wiped from memory when the last copy is
//! dropped and cannot be printed by accident.
//!
//! Copies of a `Secret` share one buffer (cloning is a reference count), so
//! a [`KeySet`](crate::KeySet) can be handed to many tasks without spreading
//! the bytes around memory. The buffer is zeroed when the last copy goes.
//! What this cannot reach: buffers of the transport (the HTTP/2 frame the
//! secret arrived in) and copies the caller makes, e.g. a `String` header.

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroize;

/// Secret key material. `Debug` prints `Secret([redacted])`; there is no
/// `Display`. [`Secret::expose`] is the only way to the bytes.
///
/// ```
/// let s = keyward_client::Secret::from(b"sk_live_123".to_vec());
/// assert_eq!(format!("{s:?}"), "Secret([redacted])");
/// assert_eq!(s.expose(), b"sk_live_123");
/// assert_eq!(s.expose_str().unwrap(), "sk_live_123");
/// ```
#[derive(Clone)]
pub struct Secret(Arc<Wiped>);

/// The shared buffer; zeroed on drop.
struct Wiped(Box<[u8]>);

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Secret {
    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0 .0
    }

    /// The secret as UTF-8 (API keys usually are). The error says where the
    /// first invalid byte is, never what it is.
    pub fn expose_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self.expose())
    }

    /// How many bytes the secret has.
    pub fn len(&self) -> usize {
        self.0 .0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0 .0.is_empty()
    }
}

impl From<Vec<u8>> for Secret {
    /// Takes the bytes without copying them.
    fn from(v: Vec<u8>) -> Secret {
        Secret(Arc::new(Wiped(v.into_boxed_slice())))
    }
}

impl From<bytes::Bytes> for Secret {
    /// Copies the bytes into a wiped buffer, and wipes the source when this
    /// was its only reference (a shared frame buffer cannot be reached).
    fn from(b: bytes::Bytes) -> Secret {
        let secret = Secret::from(b.to_vec());
        if let Ok(mut only) = b.try_into_mut() {
            only.as_mut().zeroize();
        }
        secret
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let s = Secret::from(bytes::Bytes::from_static(b"hunter2"));
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(format!("{s:#?}"), "Secret([redacted])");
        assert_eq!(s.expose(), b"hunter2");
    }

    #[test]
    fn clones_share_one_buffer() {
        let a = Secret::from(b"k".to_vec());
        let b = a.clone();
        assert_eq!(a.expose().as_ptr(), b.expose().as_ptr());
    }

    #[test]
    fn non_utf8_is_an_error_not_a_panic() {
        let s = Secret::from(vec![0xff, 0x00]);
        assert!(s.expose_str().is_err());
        assert_eq!(s.len(), 2);
    }
}
