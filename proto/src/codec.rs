//! [`SmallBufferCodec`]: prost's codec with small initial buffers.
//!
//! Messages are small (a KeySet is a few hundred bytes with typical API
//! keys) and the buffers grow when a larger one comes; tonic's default of
//! 8 KiB per direction per stream would cost ~160 MiB with 10,000 WatchKeys
//! subscribers.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode and decode buffers.
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
