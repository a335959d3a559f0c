//! The metrics endpoint: `GET /metrics` (and `/`) over HTTP/1.1, on a
//! loopback TCP port or a Unix socket.
//!
//! The endpoint must never cost the agent more than a bounded share of its
//! resources, whoever connects: at most [`ServeOptions::max_connections`]
//! connections are served at once (more wait in the listen backlog), and a
//! connection that does not send a complete request head within
//! [`ServeOptions::header_read_timeout`], including an idle keep-alive
//! connection between scrapes, is closed. On shutdown it stops accepting at
//! once, removes its socket file, lets in-flight requests finish for up to
//! [`ServeOptions::drain`], then drops what is left.
//!
//! Responses: 200 with the exposition ([`super::CONTENT_TYPE`]) for `GET`
//! and `HEAD` of `/metrics` and `/`; 404 for any other path; 405 (with
//! `Allow`) for any other method.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::listen::Bound;
pub use super::listen::{bind, ListenError, MetricsListen, MetricsListener};

/// Produces the exposition, once per scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Limits of [`serve_with`]; [`ServeOptions::default`] is what [`serve`]
/// uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// How long a connection may take to send a request head, counted from
    /// when the server starts waiting for it (so it also bounds how long a
    /// keep-alive connection may sit idle).
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain: Duration,
}

impl Default for ServeOptions {
    /// 64 connections, 10 s to send a request head, 5 s to drain.
    fn default() -> ServeOptions {
        ServeOptions {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(5),
        }
    }
}

/// Serves the metrics endpoint on `listener` until `shutdown` completes,
/// with the default [`ServeOptions`]. Each scrape calls `render`.
pub async fn serve(
    listener: MetricsListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, render, shutdown, ServeOptions::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: MetricsListener,
    render: Render,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) -> io::Result<()> {
    let incoming = Incoming::new(listener)?;
    let limit = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Take a connection slot before accepting, so that over the limit
        // clients wait in the backlog instead of being accepted and starved.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = incoming.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok(Connection::Tcp(stream)) => {
                connections.spawn(serve_connection(
                    stream,
                    render.clone(),
                    stopping.clone(),
                    permit,
                    options.clone(),
                ));
            }
            Ok(Connection::Unix(stream)) => {
                connections.spawn(serve_connection(
                    stream,
                    render.clone(),
                    stopping.clone(),
                    permit,
                    options.clone(),
                ));
            }
            Err(e) => {
                // Out of descriptors, or a connection reset before it was
                // accepted: not fatal, but do not spin on it.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Stop accepting (and remove the socket file) before draining.
    drop(incoming);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(options.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "metrics endpoint: connections still open after the drain time; closing them"
        );
        connections.shutdown().await;
    }
    tracing::info!("metrics endpoint stopped");
    Ok(())
}

/// The listener, registered with the runtime.
enum Incoming {
    Tcp(tokio::net::TcpListener),
    Unix {
        listener: tokio::net::UnixListener,
        /// Removes the socket file when dropped.
        _file: crate::sockets::SocketFile,
    },
}

enum Connection {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Incoming {
    fn new(listener: MetricsListener) -> io::Result<Incoming> {
        Ok(match listener.bound {
            Bound::Tcp(l) => Incoming::Tcp(tokio::net::TcpListener::from_std(l)?),
            Bound::Unix(l, file) => Incoming::Unix {
                listener: tokio::net::UnixListener::from_std(l)?,
                _file: file,
            },
        })
    }

    async fn accept(&self) -> io::Result<Connection> {
        match self {
            Incoming::Tcp(l) => Ok(Connection::Tcp(l.accept().await?.0)),
            Incoming::Unix { listener, .. } => Ok(Connection::Unix(listener.accept().await?.0)),
        }
    }
}

async fn serve_connection<T>(
    io: T,
    render: Render,
    mut stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
    options: ServeOptions,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let response = respond(&request, &*render);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(&mut stopping) => {
            // Finish the request in flight, if any, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // A client that went away or timed out: nothing the operator must act on.
        tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
    }
}

/// Completes when the server stops (or is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

fn respond<B>(request: &Request<B>, render: &(dyn Fn() -> String + Send + Sync)) -> Response<Whole> {
    if !matches!(request.uri().path(), "/metrics" | "/") {
        return plain(StatusCode::NOT_FOUND, "not found: metrics are served at /metrics\n");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Whole::new(render()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Whole> {
    let mut response = Response::new(Whole::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A response body sent in one frame, with its exact length (so hyper
/// sends `Content-Length` and can keep the connection alive).
struct Whole(Option<Bytes>);

impl Whole {
    fn new(body: impl Into<Bytes>) -> Whole {
        Whole(Some(body.into()))
    }
}

impl hyper::body::Body for Whole {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |data| data.len() as u64))
    }
}
