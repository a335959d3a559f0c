//! Raw HTTP/2, for frames no well-behaved client sends.

use super::*;

/// Just enough HTTP/2 (RFC 9113) and HPACK (RFC 7541) to write requests by
/// hand: frames, literal header fields, gRPC message framing.
pub(super) mod h2raw {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const MAX_FRAME: usize = 16384;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK integer with an `n`-bit prefix.
    fn int(out: &mut Vec<u8>, mut v: usize, n: u32, first: u8) {
        let max = (1usize << n) - 1;
        if v < max {
            out.push(first | v as u8);
            return;
        }
        out.push(first | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// Literal header fields without indexing, new names, no Huffman.
    pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.push(0x00);
            int(&mut out, name.len(), 7, 0);
            out.extend_from_slice(name.as_bytes());
            int(&mut out, value.len(), 7, 0);
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    /// The request headers of a gRPC call to `path`.
    pub fn grpc_headers(path: &str) -> Vec<u8> {
        header_block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "keyward.local"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ])
    }

    /// A length-prefixed gRPC message (uncompressed).
    pub fn grpc_message(body: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// DATA frames carrying `bytes` on `stream`, the last one ending it.
    pub fn data(stream: u32, bytes: &[u8], end: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[]]
        } else {
            bytes.chunks(MAX_FRAME).collect()
        };
        let last = chunks.len() - 1;
        for (i, c) in chunks.into_iter().enumerate() {
            let flags = if end && i == last { END_STREAM } else { 0 };
            out.extend(frame(DATA, flags, stream, c));
        }
        out
    }

    /// Preface and an empty SETTINGS frame.
    pub fn start() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out
    }

    /// A whole unary call on stream 1: preface, settings, headers, message.
    pub fn grpc_call(path: &str, body: &[u8]) -> Vec<u8> {
        let mut out = start();
        out.extend(frame(HEADERS, END_HEADERS, 1, &grpc_headers(path)));
        out.extend(data(1, &grpc_message(body), true));
        out
    }
}

/// Connects to `sock`, writes `bytes` (giving up if the agent stops
/// reading), then reads what it answers until it closes the connection or
/// `window` has passed.
pub(super) async fn poke(sock: &Path, bytes: &[u8], window: Duration) -> std::io::Result<Poked> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock).await?;
    let deadline = tokio::time::Instant::now() + window;
    // The agent may close mid-write (a protocol error): that is an answer.
    let _ = tokio::time::timeout_at(deadline, s.write_all(bytes)).await;
    // Half-close: the agent sees the end of the input and closes once it
    // has answered, so a well-handled case ends long before `window`.
    let _ = s.shutdown().await;
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 16384];
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Err(_) => break false,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    };
    Ok(Poked { answer, closed })
}

/// What [`poke`] saw.
#[derive(Debug)]
pub(super) struct Poked {
    /// Everything the agent sent.
    pub(super) answer: Vec<u8>,
    /// The agent closed the connection within the window.
    pub(super) closed: bool,
}

/// Sends a whole hand-made call on a fresh connection and reads until the
/// answer contains `needle` (without closing the write side, which may
/// make the agent drop the call) or `window` passes.
pub(super) async fn call_raw(sock: &Path, bytes: &[u8], needle: &[u8], window: Duration) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let deadline = tokio::time::Instant::now() + window;
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 16384];
    while !contains(&answer, needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    answer
}

/// True when `hay` contains `needle`.
pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub(super) const GET_KEY: &str = "/keyward.v1.Keys/GetKey";
pub(super) const GET_STATUS: &str = "/keyward.v1.Admin/GetStatus";
pub(super) const LIST_KEYS: &str = "/keyward.v1.Admin/ListKeys";

pub(super) fn get_key_body(env: &str, name: &str) -> Vec<u8> {
    proto::GetKeyRequest { key: key(env, name) }.encode_to_vec()
}
