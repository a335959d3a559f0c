//! A fake API provider on loopback: the far end of a rotation drill.
//!
//! It plays a service such as a payment or CRM API. It keeps a set of API
//! keys; a request is accepted only while its bearer key is valid, and a
//! key stops being valid the moment it is revoked. The rotation hooks of
//! `tests/support/drill/provider_hook.py` talk to its admin endpoints, the
//! way an operator's hooks talk to a real provider:
//!
//! | request | answer |
//! |---|---|
//! | `GET /api` with `Authorization: Bearer KEY` | 200 if KEY is valid, else 401 |
//! | `POST /admin/issue` | 200 and a new random key in the body (the generator) |
//! | `POST /admin/check`, the key as the body | 200 if valid, else 401 (the validator) |
//! | `POST /admin/revoke`, the key as the body | 200 (also when already revoked: revokers must be idempotent), 404 for a key it never issued (the revoker) |
//!
//! Keys travel only in headers and bodies, never in a URL, so nothing that
//! logs URLs can leak them. Like [`super::receiver::Receiver`], it runs on
//! its own thread with its own tokio runtime, on a port the kernel picks.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;

use super::server_thread::read_body;

/// Every key the provider ever issued.
#[derive(Clone, Debug)]
pub struct IssuedKey {
    /// 1 for the first key issued, 2 for the next…: a name for the key
    /// that is safe to print.
    pub serial: u64,
    /// When it was issued.
    pub issued: Instant,
    /// When it was revoked, if it was.
    pub revoked: Option<Instant>,
}

#[derive(Default)]
struct State {
    keys: Mutex<HashMap<String, IssuedKey>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    first_refusal: Mutex<Option<Instant>>,
    checks: AtomicU64,
    revokes: AtomicU64,
}

impl State {
    fn issue(&self) -> String {
        let key = format!("pk_drill_{}", hex::encode(rand::thread_rng().gen::<[u8; 16]>()));
        let mut keys = self.keys.lock().unwrap();
        let serial = keys.len() as u64 + 1;
        keys.insert(
            key.clone(),
            IssuedKey {
                serial,
                issued: Instant::now(),
                revoked: None,
            },
        );
        key
    }

    fn is_valid(&self, key: &str) -> bool {
        self.keys.lock().unwrap().get(key).is_some_and(|k| k.revoked.is_none())
    }

    /// Revokes `key`; false if it was never issued.
    fn revoke(&self, key: &str) -> bool {
        match self.keys.lock().unwrap().get_mut(key) {
            Some(k) => {
                k.revoked.get_or_insert_with(Instant::now);
                true
            }
            None => false,
        }
    }
}

/// A running provider; stopped when dropped.
pub struct Provider {
    state: Arc<State>,
    server: super::server_thread::ServerThread,
}

impl Provider {
    /// Starts a provider with no keys.
    pub fn start() -> Provider {
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let server =
            super::server_thread::ServerThread::spawn("provider", move |listener| accept_loop(listener, shared));
        Provider { state, server }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Issues a new valid key, as `POST /admin/issue` does.
    pub fn issue(&self) -> String {
        self.state.issue()
    }

    /// Revokes `key` at once, as `POST /admin/revoke` does (the test playing
    /// a provider or an operator that revokes too early). Panics if the
    /// provider never issued it.
    pub fn revoke(&self, key: &str) {
        assert!(self.state.revoke(key), "the provider never issued this key");
    }

    /// Whether `key` is currently accepted.
    pub fn is_valid(&self, key: &str) -> bool {
        self.state.is_valid(key)
    }

    /// Every key ever issued (secret values: never print them).
    pub fn keys(&self) -> HashMap<String, IssuedKey> {
        self.state.keys.lock().unwrap().clone()
    }

    /// The keys still valid.
    pub fn valid_keys(&self) -> Vec<String> {
        let keys = self.state.keys.lock().unwrap();
        keys.iter()
            .filter(|(_, k)| k.revoked.is_none())
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The serial of `key` (see [`IssuedKey::serial`]), 0 if never issued.
    pub fn serial(&self, key: &str) -> u64 {
        self.state.keys.lock().unwrap().get(key).map_or(0, |k| k.serial)
    }

    /// `GET /api` requests accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// `GET /api` requests refused (401) so far.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// When the first `GET /api` was refused.
    pub fn first_refusal(&self) -> Option<Instant> {
        *self.state.first_refusal.lock().unwrap()
    }

    /// `POST /admin/check` requests so far.
    pub fn checks(&self) -> u64 {
        self.state.checks.load(Ordering::SeqCst)
    }

    /// `POST /admin/revoke` requests so far.
    pub fn revokes(&self) -> u64 {
        self.state.revokes.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, or the like: wait, do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, Arc::clone(&state)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: impl Into<String>) -> Result<Response<String>, Infallible> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    Ok(response)
}

async fn answer(request: Request<Incoming>, state: Arc<State>) -> Result<Response<String>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match (method, path.as_str()) {
        (Method::GET, "/api") => {
            let bearer = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if bearer.is_some_and(|k| state.is_valid(k)) {
                state.accepted.fetch_add(1, Ordering::SeqCst);
                reply(StatusCode::OK, "ok")
            } else {
                state.refused.fetch_add(1, Ordering::SeqCst);
                state.first_refusal.lock().unwrap().get_or_insert_with(Instant::now);
                reply(StatusCode::UNAUTHORIZED, "invalid API key")
            }
        }
        (Method::POST, "/admin/issue") => reply(StatusCode::OK, state.issue()),
        (Method::POST, "/admin/check") => {
            state.checks.fetch_add(1, Ordering::SeqCst);
            let key = read_body(request.into_body()).await;
            match std::str::from_utf8(&key).is_ok_and(|k| state.is_valid(k)) {
                true => reply(StatusCode::OK, "valid"),
                false => reply(StatusCode::UNAUTHORIZED, "invalid API key"),
            }
        }
        (Method::POST, "/admin/revoke") => {
            state.revokes.fetch_add(1, Ordering::SeqCst);
            let key = read_body(request.into_body()).await;
            match std::str::from_utf8(&key).is_ok_and(|k| state.revoke(k)) {
                true => reply(StatusCode::OK, "revoked"),
                false => reply(StatusCode::NOT_FOUND, "no such API key"),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}
