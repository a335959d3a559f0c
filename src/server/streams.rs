//! Every call on both sockets passes here first. It is counted on its
//! connection (so that [`super::peer`] knows an idle connection) and on its
//! uid, and the bytes of its request are counted on its uid while they are
//! read. A call is refused with `RESOURCE_EXHAUSTED`, before its request is
//! read, when its connection is over the per-uid connection limit or its
//! uid has `[limits] max_streams_per_uid` calls open; a request that would
//! take its uid past [`request_budget`] bytes being read fails the same
//! way.
//!
//! Invariants: a call counts from the moment its headers reach the service
//! until its response body is dropped (the response ended, the client
//! reset the stream, or the connection closed), so a watch counts for as
//! long as it lasts. A request message counts for the size its gRPC header
//! announces, from the header's arrival until the request body is dropped,
//! which tonic does once the message is decoded. So what one uid can make the agent hold for its calls is at
//! most `max_streams_per_uid` calls (each with at most 4 KiB of headers,
//! [`MAX_HEADER_LIST_BYTES`]) and a budget of request bytes, however many
//! connections it spreads them over; calls being refused hold at most their
//! headers, on at most `max_streams_per_connection` streams of each of its
//! connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::peer::Peer;
use crate::agent::connections::{CallGuard, Connection};
use crate::config::Limits;

/// The largest header block a call may send (HTTP/2
/// `SETTINGS_MAX_HEADER_LIST_SIZE`). keyward's clients (tonic, grpc-js,
/// gRPC Python) send under 1 KiB; hyper's default (16 KiB) would let each
/// stream of a flood hold four times as much.
pub const MAX_HEADER_LIST_BYTES: u32 = 4 * 1024;

/// How much a client may send on a connection (and on one call) before
/// the agent has read it: HTTP/2's own default. hyper's default (1 MiB)
/// would let every connection park a megabyte in the agent; requests to
/// keyward are small, and on a local socket a smaller window costs no
/// throughput that matters.
pub const RECEIVE_WINDOW_BYTES: u32 = 65_535;

/// Bytes of requests one uid may have in flight (read but not yet decoded):
/// one message of the largest size. keyward's requests are small (the
/// largest, a put or stage, carries one secret of at most
/// `max_secret_bytes`), so many fit at once.
pub fn request_budget(limits: &Limits) -> usize {
    limits.max_message_bytes
}

/// The [`tower::Layer`] that puts [`Calls`] in front of a service.
#[derive(Clone, Copy, Debug)]
pub struct CallsLayer {
    max_per_uid: usize,
    request_budget: usize,
}

impl CallsLayer {
    /// With the limits of `limits`.
    pub fn new(limits: &Limits) -> CallsLayer {
        CallsLayer {
            max_per_uid: limits.max_streams_per_uid,
            request_budget: request_budget(limits),
        }
    }
}

impl<S> Layer<S> for CallsLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Calls<S> {
        Calls { inner, limits: *self }
    }
}

/// Counts and bounds calls (see the module docs).
#[derive(Clone, Debug)]
pub struct Calls<S> {
    inner: S,
    limits: CallsLayer,
}

type Answer<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

fn refuse<E: Send + 'static>(message: String) -> Answer<E> {
    // Answered without reading the request: the stream holds nothing while
    // it waits for a body.
    let refused = tonic::Status::resource_exhausted(message).into_http();
    Box::pin(async move { Ok(refused) })
}

impl<S> Service<http::Request<Body>> for Calls<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Answer<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Answer<S::Error> {
        let Some(peer) = request.extensions().get::<Arc<Peer>>().cloned() else {
            return Box::pin(self.inner.call(request));
        };
        if let Some(limit) = &peer.over_limit {
            return refuse(limit.clone());
        }
        let max = self.limits.max_per_uid;
        let uid = peer.caller.uid;
        let guard = match peer.connection.call_opened(max) {
            Ok(guard) => guard,
            Err(open) => {
                tracing::debug!(uid, open, "call refused: the uid has max_streams_per_uid calls open");
                return refuse(format!(
                    "uid {uid} has {open} calls open; the limit is {max} per uid (limits.max_streams_per_uid): end the calls and watches it no longer needs (each watch is one call for as long as it lasts), or raise max_streams_per_uid in [limits]"
                ));
            }
        };
        let budget = self.limits.request_budget;
        let request = request.map(|body| {
            Body::new(CountedRequest {
                body,
                connection: peer.connection.clone(),
                uid,
                held: 0,
                budget,
                framing: Framing::new(),
            })
        });
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| Body::new(CountedResponse { body, _guard: guard })))
        })
    }
}

/// A response body that keeps its call counted until it is dropped.
struct CountedResponse {
    body: Body,
    _guard: CallGuard,
}

impl http_body::Body for CountedResponse {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body whose messages count on its uid until it is dropped.
///
/// A message counts for the size its gRPC header announces, from the
/// moment that header has arrived: that is what tonic's decoder reserves
/// for it then, before its bytes come (and under `mlockall` a reservation
/// is resident at once).
struct CountedRequest {
    body: Body,
    connection: Arc<Connection>,
    uid: u32,
    /// What this body added to its uid's count.
    held: usize,
    budget: usize,
    framing: Framing,
}

/// Where a request body is in its gRPC framing: in a message's 5-byte
/// header (flag and length), `filled` bytes of it read so far, or in a
/// message's body, `left` bytes of it still to come.
#[derive(Debug)]
enum Framing {
    Header { header: [u8; 5], filled: usize },
    Message { left: usize },
}

impl Framing {
    fn new() -> Framing {
        Framing::Header {
            header: [0; 5],
            filled: 0,
        }
    }

    /// Reads `data`, the next bytes of the body; returns what the messages
    /// whose header ends in it will take (header and announced length).
    fn announced(&mut self, mut data: &[u8]) -> usize {
        let mut announced = 0;
        while !data.is_empty() {
            match self {
                Framing::Header { header, filled } => {
                    let n = (header.len() - *filled).min(data.len());
                    header[*filled..*filled + n].copy_from_slice(&data[..n]);
                    *filled += n;
                    data = &data[n..];
                    if *filled == header.len() {
                        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
                        announced += header.len() + len;
                        *self = Framing::Message { left: len };
                    }
                }
                Framing::Message { left } => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = &data[n..];
                }
            }
            if let Framing::Message { left: 0 } = self {
                *self = Framing::new();
            }
        }
        announced
    }
}

impl http_body::Body for CountedRequest {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(Some(data))) = frame.as_ref().map(|f| f.as_ref().map(http_body::Frame::data_ref)) {
            let n = self.framing.announced(data);
            if n > 0 {
                let total = self.connection.uid_usage().add_request_bytes(n);
                self.held += n;
                if total > self.budget {
                    return Poll::Ready(Some(Err(tonic::Status::resource_exhausted(format!(
                        "uid {} is sending {total} bytes of requests at once; the limit is {} bytes per uid (limits.max_message_bytes): send fewer large requests at a time, or raise max_message_bytes in [limits]",
                        self.uid, self.budget
                    )))));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for CountedRequest {
    fn drop(&mut self) {
        self.connection.uid_usage().remove_request_bytes(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::Framing;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn a_message_counts_for_its_announced_size_when_its_header_arrives() {
        let mut f = Framing::new();
        // The header alone announces the whole message.
        let m = message(1000);
        assert_eq!(f.announced(&m[..5]), 1005);
        assert_eq!(f.announced(&m[5..600]), 0);
        assert_eq!(f.announced(&m[600..]), 0);
        // Headers split across chunks, several messages in one chunk, and
        // an empty message.
        let (a, b, c) = (message(3), message(0), message(70_000));
        let mut all = [a, b, c].concat();
        all.extend_from_slice(&message(1)[..2]);
        assert_eq!(f.announced(&all[..2]), 0);
        assert_eq!(f.announced(&all[2..7]), 8);
        assert_eq!(f.announced(&all[7..13]), 5, "the empty message");
        assert_eq!(f.announced(&all[13..20]), 70_005);
        assert_eq!(f.announced(&all[20..]), 0, "the fourth header is not complete");
        assert_eq!(f.announced(&[0, 0, 1]), 6);
    }
}
