//! `Debug` for the messages that carry secret bytes: every field but the
//! secret, which shows as `[redacted; N bytes]`. build.rs keeps prost from
//! deriving theirs.

use std::fmt;

use crate::{KeyVersion, PutKeyRequest, StageKeyRequest, StartRotationRequest};

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

impl fmt::Debug for PutKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutKeyRequest")
            .field("key", &self.key)
            .field("secret", &format_args!("[redacted; {} bytes]", self.secret.len()))
            .field("overwrite", &self.overwrite)
            .field("expires_at", &self.expires_at)
            .field("expected_generation", &self.expected_generation)
            .finish()
    }
}

impl fmt::Debug for StageKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageKeyRequest")
            .field("key", &self.key)
            .field("secret", &format_args!("[redacted; {} bytes]", self.secret.len()))
            .field("generate", &self.generate)
            .field("replace", &self.replace)
            .field("expected_generation", &self.expected_generation)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl fmt::Debug for StartRotationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartRotationRequest")
            .field("key", &self.key)
            .field("secret", &format_args!("[redacted; {} bytes]", self.secret.len()))
            .field("until", &self.until)
            .field("expected_generation", &self.expected_generation)
            .field("expires_at", &self.expires_at)
            .field("fleet", &self.fleet)
            .field("fleet_timeout_seconds", &self.fleet_timeout_seconds)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeySet;

    #[test]
    fn debug_never_prints_secret_bytes() {
        let v = KeyVersion {
            version: 3,
            secret: bytes::Bytes::from_static(b"sk_live_debugleak"),
            fingerprint: "fp".into(),
            created_at: None,
            expires_at: None,
        };
        let shown = format!(
            "{v:?} {:?}",
            KeySet {
                primary: Some(v.clone()),
                ..Default::default()
            }
        );
        assert!(!shown.contains("sk_live_debugleak"), "{shown}");
        assert!(shown.contains("[redacted; 17 bytes]"));
        let p = PutKeyRequest {
            secret: bytes::Bytes::from_static(b"sk_live_debugleak"),
            ..Default::default()
        };
        assert!(!format!("{p:?}").contains("sk_live_debugleak"));
        let s = StageKeyRequest {
            secret: bytes::Bytes::from_static(b"sk_live_debugleak"),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("sk_live_debugleak"));
        let r = StartRotationRequest {
            secret: bytes::Bytes::from_static(b"sk_live_debugleak"),
            ..Default::default()
        };
        assert!(!format!("{r:?}").contains("sk_live_debugleak"));
    }
}
