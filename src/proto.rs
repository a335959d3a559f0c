//! The generated gRPC types of `proto/keyward/v1` (package `keyward.v1`).
//!
//! Messages that carry secret bytes (`KeyVersion`, `PutKeyRequest`) do not
//! derive `Debug`; the impls below print everything but the secret.

#![allow(missing_docs)]
#![allow(clippy::all)]

use std::fmt;
use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

tonic::include_proto!("keyward.v1");

/// Initial size of a stream's encode and decode buffers. Messages are small
/// (a KeySet is a few hundred bytes with typical API keys) and the buffers grow
/// when a larger one comes; tonic's default of 8 KiB per direction per
/// stream would cost ~160 MiB with 10,000 WatchKeys subscribers.
pub const CODEC_BUFFER_BYTES: usize = 512;

/// The prost codec with [`CODEC_BUFFER_BYTES`] buffers; used by every
/// generated service and client.
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(CODEC_BUFFER_BYTES, 32 * 1024))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(CODEC_BUFFER_BYTES, 32 * 1024))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
