//! A fake API provider on loopback: the far end of a rotation drill, and
//! of `keyward run --proxy`.
//!
//! It plays a service such as a payment or CRM API. It keeps a set of API
//! keys; a request is accepted only while its key is valid, and a key stops
//! being valid the moment it is revoked. The rotation hooks of
//! `tests/support/drill/provider_hook.py` talk to its admin endpoints, the
//! way an operator's hooks talk to a real provider:
//!
//! | request | answer |
//! |---|---|
//! | `GET /api` with `Authorization: Bearer KEY` (or `X-Api-Key: KEY`) | 200 if KEY is valid, else 401 |
//! | `POST /api`, the same, with a body | the same, once the whole body is read |
//! | `GET /echo-headers` | 200 and the request's header names, one a line (never their values) |
//! | `POST /admin/issue` | 200 and a new random key in the body (the generator) |
//! | `POST /admin/check`, the key as the body | 200 if valid, else 401 (the validator) |
//! | `POST /admin/revoke`, the key as the body | 200 (also when already revoked: revokers must be idempotent), 404 for a key it never issued (the revoker) |
//!
//! Keys travel only in headers and bodies, never in a URL, so nothing that
//! logs URLs can leak them. Like [`super::receiver::Receiver`], it runs on
//! its own thread with its own tokio runtime, on a port the kernel picks.
//!
//! [`Provider::start`] serves plain HTTP on `127.0.0.1`;
//! [`Provider::start_tls`] serves the same over HTTPS, as a real provider
//! does, for the name `localhost`, under a test CA it makes in memory and
//! hands out ([`Provider::ca_pem`]): whoever calls it must be told to
//! trust that CA, as the proxy under test is.
//!
//! It also counts what the proxy must never let through: a request to
//! `/api` whose key still holds a `kwph_` placeholder
//! ([`Provider::seen_authorizations`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HeaderMap, AUTHORIZATION};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use super::server_thread::{read_body, ServerThread};

/// What a placeholder key starts with: `keyward run --proxy` hands these to
/// the program and puts the real key in their place on the way out, so the
/// provider must never see one.
const PLACEHOLDER_MARK: &[u8] = b"kwph_";

/// The name the HTTPS provider's certificate is for.
const TLS_NAME: &str = "localhost";

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
    posted_bytes: AtomicU64,
    last_post_len: AtomicU64,
    placeholders: AtomicU64,
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
    server: ServerThread,
    /// The test CA's certificate (PEM), in HTTPS mode.
    ca_pem: Option<String>,
}

/// A TLS client configuration trusting the CA in `pem` alone, HTTP/1.1 by
/// ALPN: what a test or a benchmark calling the provider (or a proxy
/// presenting its own CA) needs.
pub fn client_config(pem: &str) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(crypto)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

impl Provider {
    /// Starts a provider with no keys, serving plain HTTP.
    pub fn start() -> Provider {
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let server = ServerThread::spawn("provider", move |listener| accept_loop(listener, shared, None));
        Provider {
            state,
            server,
            ca_pem: None,
        }
    }

    /// Starts a provider with no keys, serving HTTPS (HTTP/1.1 only, by
    /// ALPN) with a certificate for `localhost` signed by a test CA made
    /// for it alone: see [`Provider::ca_pem`].
    pub fn start_tls() -> Provider {
        let (ca_pem, config) = tls_config();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let server = ServerThread::spawn("provider-tls", move |listener| {
            accept_loop(listener, shared, Some(acceptor))
        });
        Provider {
            state,
            server,
            ca_pem: Some(ca_pem),
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` in HTTPS mode
    /// (the name its certificate is for; `localhost` must resolve to
    /// 127.0.0.1).
    pub fn url(&self) -> String {
        match self.ca_pem {
            None => format!("http://{}", self.server.addr),
            Some(_) => format!("https://{TLS_NAME}:{}", self.port()),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }

    /// The certificate (PEM) of the test CA that signed the provider's
    /// certificate: what a client of an HTTPS provider must trust. Panics
    /// for a plain provider, which has none.
    pub fn ca_pem(&self) -> String {
        self.ca_pem
            .clone()
            .expect("a plain provider has no CA: start it with Provider::start_tls")
    }

    /// Writes [`Provider::ca_pem`] to `dir/provider-ca.pem` and returns
    /// that path (for `NODE_EXTRA_CA_CERTS`, `SSL_CERT_FILE` and the like).
    /// Panics as `ca_pem` does.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("provider-ca.pem");
        std::fs::write(&path, self.ca_pem()).expect("write the provider's CA");
        path
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

    /// `/api` requests (`GET` and `POST`) accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// `/api` requests (`GET` and `POST`) refused (401) so far.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// When the first `/api` request was refused.
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

    /// The body bytes received by `POST /api` so far, in all (accepted or
    /// not).
    pub fn posted_bytes(&self) -> u64 {
        self.state.posted_bytes.load(Ordering::SeqCst)
    }

    /// The length of the body of the last `POST /api`, 0 before the first.
    pub fn last_post_len(&self) -> u64 {
        self.state.last_post_len.load(Ordering::SeqCst)
    }

    /// The `/api` requests whose `Authorization` or `X-Api-Key` held a
    /// placeholder (`kwph_…`) instead of a key: a placeholder the proxy
    /// did not replace. Always 0 when the proxy does its job.
    pub fn seen_authorizations(&self) -> u64 {
        self.state.placeholders.load(Ordering::SeqCst)
    }
}

/// A test CA made in memory, and a TLS server config for [`TLS_NAME`]
/// whose certificate that CA signed: the CA's certificate (PEM) and the
/// config. The CA's private key is dropped here: nothing else is ever
/// signed with it.
fn tls_config() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "keyward test provider CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca.self_signed(&ca_key).expect("the CA's certificate");

    let key = KeyPair::generate().expect("a server key");
    let mut leaf = CertificateParams::new(vec![TLS_NAME.to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, TLS_NAME);
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).expect("the server's certificate");

    // ring named here, not the process-wide default: whether rustls can
    // pick a default depends on the features other crates in the tree
    // turn on.
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(crypto)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("a valid server certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca.pem(), config)
}

/// Accepts connections until the server stops; with `tls`, each one is a
/// TLS handshake first (on its own task: a client that stalls in it holds
/// up no one).
async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>, tls: Option<TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, or the like: wait, do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(stream, state).await,
                Some(acceptor) => {
                    // A failed handshake is the client's to report.
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve(stream, state).await;
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection until it closes.
async fn serve<S>(stream: S, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| answer(request, Arc::clone(&state)));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
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
        (Method::GET | Method::POST, "/api") => {
            let posted = request.method() == Method::POST;
            let headers = request.headers();
            if holds_placeholder(headers) {
                state.placeholders.fetch_add(1, Ordering::SeqCst);
            }
            let valid = api_key(headers).is_some_and(|k| state.is_valid(k));
            if posted {
                let body = read_body(request.into_body()).await;
                state.posted_bytes.fetch_add(body.len() as u64, Ordering::SeqCst);
                state.last_post_len.store(body.len() as u64, Ordering::SeqCst);
            }
            if valid {
                state.accepted.fetch_add(1, Ordering::SeqCst);
                reply(StatusCode::OK, "ok")
            } else {
                state.refused.fetch_add(1, Ordering::SeqCst);
                state.first_refusal.lock().unwrap().get_or_insert_with(Instant::now);
                reply(StatusCode::UNAUTHORIZED, "invalid API key")
            }
        }
        (Method::GET, "/echo-headers") => {
            let names: String = request.headers().iter().map(|(name, _)| format!("{name}\n")).collect();
            reply(StatusCode::OK, names)
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

/// The key a request to `/api` carries: the bearer token of its
/// `Authorization` header, or, with no such header, its `X-Api-Key`.
fn api_key(headers: &HeaderMap) -> Option<&str> {
    match headers.get(AUTHORIZATION) {
        Some(authorization) => authorization.to_str().ok()?.strip_prefix("Bearer "),
        None => headers.get("x-api-key")?.to_str().ok(),
    }
}

/// Whether `Authorization` or `X-Api-Key` holds a placeholder.
fn holds_placeholder(headers: &HeaderMap) -> bool {
    [headers.get_all(AUTHORIZATION), headers.get_all("x-api-key")]
        .into_iter()
        .flatten()
        .any(|v| {
            v.as_bytes()
                .windows(PLACEHOLDER_MARK.len())
                .any(|w| w == PLACEHOLDER_MARK)
        })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;
    use rustls::pki_types::ServerName;

    /// Sends `request` (its head ends in `Connection: close`) to `provider`
    /// over HTTPS, trusting its CA alone; the whole answer, and the ALPN
    /// protocol agreed.
    fn https(provider: &Provider, request: &str) -> (String, Option<Vec<u8>>) {
        let config = client_config(&provider.ca_pem());
        let name = ServerName::try_from(TLS_NAME).unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", provider.port())).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        tls.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        // A peer that closes without close_notify ends in UnexpectedEof,
        // after the whole answer.
        let _ = tls.read_to_end(&mut answer);
        (
            String::from_utf8(answer).unwrap(),
            tls.conn.alpn_protocol().map(<[u8]>::to_vec),
        )
    }

    fn http(provider: &Provider, request: &str) -> String {
        let mut tcp = TcpStream::connect(provider.addr()).unwrap();
        tcp.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn https_mode_serves_the_api_under_its_own_ca() {
        let provider = Provider::start_tls();
        assert_eq!(provider.url(), format!("https://localhost:{}", provider.port()));
        let key = provider.issue();

        let get =
            format!("GET /api HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n");
        let (answer, alpn) = https(&provider, &get);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

        let post = format!(
            "POST /api HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: {key}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        );
        let (answer, _) = https(&provider, &post);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!((provider.posted_bytes(), provider.last_post_len()), (5, 5));
        assert_eq!((provider.accepted(), provider.refused()), (2, 0));
        assert_eq!(provider.seen_authorizations(), 0);

        let dir = tempfile::tempdir().unwrap();
        let written = provider.write_ca(dir.path());
        assert_eq!(written, dir.path().join("provider-ca.pem"));
        assert_eq!(std::fs::read_to_string(written).unwrap(), provider.ca_pem());
    }

    #[test]
    fn placeholders_are_counted_and_refused() {
        let provider = Provider::start();
        assert_eq!(provider.url(), format!("http://127.0.0.1:{}", provider.port()));
        for header in ["Authorization: Bearer kwph_0123", "X-Api-Key: kwph_0123"] {
            let answer = http(
                &provider,
                &format!("GET /api HTTP/1.1\r\nHost: x\r\n{header}\r\nConnection: close\r\n\r\n"),
            );
            assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        }
        let post = "POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
        assert!(http(&provider, post).starts_with("HTTP/1.1 401"));
        assert_eq!(provider.seen_authorizations(), 2);
        assert_eq!(
            (provider.refused(), provider.posted_bytes(), provider.last_post_len()),
            (3, 3, 3)
        );
    }

    #[test]
    fn echo_headers_names_the_headers_without_their_values() {
        let provider = Provider::start();
        let answer = http(
            &provider,
            "GET /echo-headers HTTP/1.1\r\nHost: x\r\nX-Api-Key: value-not-echoed\r\nConnection: close\r\n\r\n",
        );
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "host\nx-api-key\nconnection\n");
    }
}
