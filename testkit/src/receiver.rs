//! A real HTTP server on loopback that records what it is sent: the far end
//! of the webhook, Slack and PagerDuty alert sinks in tests.
//!
//! It runs on its own thread with its own tokio runtime, so it works the
//! same from synchronous tests and from `#[tokio::test]`s, whatever their
//! runtime is doing. It listens on 127.0.0.1 on a port the kernel picks.
//!
//! ```ignore
//! let receiver = Receiver::start();                 // answers 200
//! let url = receiver.url("/hooks/T0KEN");
//! // … make something post to `url` …
//! let got = receiver.wait_for(1, Duration::from_secs(5));
//! assert_eq!(got[0].body["severity"], "critical");
//! ```
//!
//! Other behaviours: [`Receiver::failing_first`] answers 500 to the first
//! requests (retries), [`Receiver::answering`] answers one fixed status,
//! and [`Receiver::hanging`] accepts connections and never answers (a sink
//! that hangs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::server_thread::read_body;

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 to everything.
    Ok,
    /// 500 to the first `n` requests, then 200.
    FailFirst(usize),
    /// This status to everything.
    Status(u16),
    /// Accepts connections and never reads or answers.
    Hang,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// `POST`, …
    pub method: String,
    /// The path and query, as sent (`/hooks/x?y=1`).
    pub path: String,
    /// Every header, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Null` if it is not JSON).
    pub body: serde_json::Value,
    /// The body as text.
    pub raw: String,
    /// The status it was answered with.
    pub answered: u16,
}

impl Received {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// What the server thread shares with the test.
struct State {
    mode: Mode,
    received: Mutex<Vec<Received>>,
    arrived: Condvar,
    connections: AtomicUsize,
    requests: AtomicUsize,
}

/// A running receiver; stopped when dropped.
pub struct Receiver {
    state: Arc<State>,
    server: super::server_thread::ServerThread,
}

impl Receiver {
    /// A receiver that answers 200 to everything.
    pub fn start() -> Receiver {
        Receiver::start_with(Mode::Ok)
    }

    /// A receiver that answers 500 to the first `n` requests, then 200.
    pub fn failing_first(n: usize) -> Receiver {
        Receiver::start_with(Mode::FailFirst(n))
    }

    /// A receiver that answers `status` to everything.
    pub fn answering(status: u16) -> Receiver {
        Receiver::start_with(Mode::Status(status))
    }

    /// A receiver that accepts connections and never answers.
    pub fn hanging() -> Receiver {
        Receiver::start_with(Mode::Hang)
    }

    /// A receiver in `mode`.
    pub fn start_with(mode: Mode) -> Receiver {
        let state = Arc::new(State {
            mode,
            received: Mutex::default(),
            arrived: Condvar::new(),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        });
        let shared = Arc::clone(&state);
        let server =
            super::server_thread::ServerThread::spawn("receiver", move |listener| accept_loop(listener, shared));
        Receiver { state, server }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Every request received so far (answered 200 or not), in order.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Connections accepted so far (a hanging receiver counts them too).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Blocks until `n` requests have come, and returns all of them; fails
    /// the test, saying what did come, after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut received = self.state.received.lock().unwrap();
        while received.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the receiver got {} request(s) within {timeout:?}, expected {n}: {received:#?}",
                received.len()
            );
            received = self.state.arrived.wait_timeout(received, left).unwrap().0;
        }
        received.clone()
    }

    /// Waits without blocking the caller's runtime until what was received
    /// satisfies `pred`, and returns it; fails the test, naming `what` and
    /// showing each request's path and body, after `limit`.
    pub async fn wait_until(&self, what: &str, limit: Duration, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; received: {:#?}",
                got.iter().map(|g| (&g.path, &g.body)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// [`Receiver::wait_for`] for async tests: waits without blocking the
    /// caller's runtime.
    pub async fn wait_for_async(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver got {} request(s) within {timeout:?}, expected {n}: {received:#?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>) {
    let mut held = Vec::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, or the like: wait, do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        if state.mode == Mode::Hang {
            // Never read, never answer, never close: the client waits.
            held.push(stream);
            continue;
        }
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, Arc::clone(&state)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>, state: Arc<State>) -> Result<Response<String>, Infallible> {
    let number = state.requests.fetch_add(1, Ordering::SeqCst);
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_owned(), |p| p.as_str().to_owned());
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bytes = read_body(request.into_body()).await;
    let status = match state.mode {
        Mode::FailFirst(n) if number < n => 500,
        Mode::Status(status) => status,
        _ => 200,
    };
    let received = Received {
        method,
        path,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        raw: String::from_utf8_lossy(&bytes).into_owned(),
        answered: status,
    };
    state.received.lock().unwrap().push(received);
    state.arrived.notify_all();
    let mut response = Response::new(if status == 200 {
        "ok".to_owned()
    } else {
        format!("status {status}")
    });
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Ok(response)
}
