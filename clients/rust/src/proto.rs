//! The generated types of `proto/keyward/v1/keys.proto` (package
//! `keyward.v1`), client side only.
//!
//! `KeyVersion` carries secret bytes, so it does not derive `Debug`; the impl
//! below prints everything but the secret.

#![allow(missing_docs)]
#![allow(clippy::all)]

use std::fmt;

tonic::include_proto!("keyward.v1");

impl fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVersion")
            .field("version", &self.version)
            .field("secret", &format_args!("[redacted; {} bytes]", self.secret.len()))
            .field("fingerprint", &self.fingerprint)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}
