//! Bodies: the proxy's own short answers, and a request body kept whole
//! for a replay with the fallback or passed through as it comes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};

/// The body of what the proxy sends and answers.
pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

pub(crate) fn full(text: impl Into<Bytes>) -> ProxyBody {
    Full::new(text.into()).map_err(|never| match never {}).boxed()
}

/// An answer of the proxy's own.
pub(crate) fn answer(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(format!("keyward proxy: {message}\n")));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A request body, kept whole for a replay or passed through.
pub(crate) enum Kept {
    Whole(Bytes),
    Streamed(ProxyBody),
}

/// Reads `body` whole if it is at most `limit` bytes; a larger one (by its
/// Content-Length, or once more than `limit` has arrived) is passed
/// through as it comes, the part already read first.
pub(crate) async fn keep(mut body: Incoming, limit: usize, length: Option<u64>) -> Result<Kept, hyper::Error> {
    if length.is_some_and(|n| n > limit as u64) {
        return Ok(Kept::Streamed(body.boxed()));
    }
    let mut kept = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        kept.extend_from_slice(&data);
        if kept.len() > limit {
            let prefixed = Prefixed {
                first: Some(kept.freeze()),
                rest: body,
            };
            return Ok(Kept::Streamed(prefixed.boxed()));
        }
    }
    Ok(Kept::Whole(kept.freeze()))
}

/// The part of a body already read, then the rest as it comes.
struct Prefixed {
    first: Option<Bytes>,
    rest: Incoming,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
}
