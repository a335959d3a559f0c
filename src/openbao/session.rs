//! One HTTP client and one token, shared by every request of a
//! [`KvClient`](super::KvClient).
//!
//! Invariants:
//! - One `reqwest::Client` (its connection pool) for the client's life;
//!   redirects are never followed (one could carry the token elsewhere).
//! - The token is obtained when first needed and cached with a generation
//!   number. A 403 makes one fresh token (re-read file, new AppRole login)
//!   and the request is sent once more; concurrent 403s on the same
//!   generation make only one.
//! - The token only leaves its [`SecretString`] for the `X-Vault-Token`
//!   header, which is marked sensitive; no message or log line holds it.
//! - A request that met a pooled connection the server had just closed is
//!   sent once more on a new one; any other failure to get an answer is
//!   [`KvError::Unreachable`] at once (no retry loop here: the caller
//!   decides when to try again).

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;
use zeroize::Zeroize;

use super::auth::{approle_login_body, read_secret_file, APPROLE_FILE_FIX, TOKEN_FILE_FIX};
use super::error::KvError;
use super::error::{answer_error, error_text, not_found_means_absent, scrub, scrub_error};
use super::lease::Lease;
use super::options::{KvAuth, KvOptions};
use super::response::{self, TokenLife};

/// How long an idle pooled connection is kept (below OpenBao's own idle
/// timeout, so that we close first).
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Largest answer read from OpenBao, in bytes (a key record is at most a
/// few times the store's largest key file).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One request to the API.
pub(super) struct Request {
    /// GET, POST, DELETE.
    pub(super) method: Method,
    /// The path under `/v1`, e.g. `secret/data/keyward/keys/prod/api`.
    pub(super) api_path: String,
    /// The query string without `?` (`version=3`, `list=true`).
    pub(super) query: Option<String>,
    /// A JSON body.
    pub(super) body: Option<Bytes>,
}

impl Request {
    /// A request without query or body.
    pub(super) fn new(method: Method, api_path: String) -> Request {
        Request {
            method,
            api_path,
            query: None,
            body: None,
        }
    }
}

/// An answer: its status and body.
pub(super) struct Answer {
    status: u16,
    body: Bytes,
}

/// What `lookup-self` or `renew-self` said about a token.
pub(super) enum TokenCheck {
    /// It is valid, with this life.
    Valid(TokenLife),
    /// OpenBao refuses it (403): expired, revoked, or never valid.
    Refused,
}

/// The token cache.
struct TokenSlot {
    token: Option<SecretString>,
    /// Bumped each time the token changes.
    generation: u64,
    /// What is known of the token's life (`None` until looked up).
    lease: Option<Lease>,
}

/// The state shared by the clones of a `KvClient`. No `Debug`: it holds the
/// token.
pub(super) struct Session {
    http: reqwest::Client,
    /// The address, without a trailing `/`.
    pub(super) address: String,
    /// The KV v2 mount, without slashes.
    pub(super) mount: String,
    namespace: Option<HeaderValue>,
    pub(super) auth: KvAuth,
    timeout: Duration,
    slot: Mutex<TokenSlot>,
    /// The token's generation, for the renewal task to notice a new token.
    pub(super) generation: watch::Sender<u64>,
}

/// Reads a PEM file of CA certificates (at least one).
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, KvError> {
    let error = |reason: String| {
        KvError::Config(format!(
            "cannot use the OpenBao CA file {} ({reason}): give a PEM file of the CA certificates that sign the server's certificate",
            path.display()
        ))
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| error(one_line(&e.without_url())))?;
    if certs.is_empty() {
        return Err(error("it holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}

/// An error and its sources on one line.
fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why a request got no answer, in a few words: "connection refused", "no
/// answer within 5s", or the innermost error ("invalid peer certificate:
/// UnknownIssuer").
fn transport_reason(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("no answer within {}", humantime::format_duration(timeout));
    }
    let mut innermost: &dyn std::error::Error = error;
    let mut io_kind = None;
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        innermost = e;
        source = e.source();
    }
    use std::io::ErrorKind;
    match io_kind {
        Some(ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
        Some(ErrorKind::ConnectionReset) => "connection reset".to_owned(),
        Some(ErrorKind::ConnectionAborted) => "connection aborted".to_owned(),
        Some(ErrorKind::TimedOut) => format!("no answer within {}", humantime::format_duration(timeout)),
        _ => {
            let text = innermost.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
            if error.is_connect() {
                format!("cannot connect: {text}")
            } else {
                text
            }
        }
    }
}

/// True when the connection was closed (or reset) after the request went
/// out and before any answer came: what a reused connection that the
/// server had just closed looks like.
fn closed_unanswered(error: &reqwest::Error) -> bool {
    if error.is_timeout() || error.is_connect() {
        return false;
    }
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(hyper_error) = e.downcast_ref::<hyper::Error>() {
            if hyper_error.is_incomplete_message() || hyper_error.is_canceled() {
                return true;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            if matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::BrokenPipe
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof
            ) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// Best effort: zeroes a body that held a token, if no one else holds it.
fn wipe_body(body: Bytes) {
    if let Ok(mut bytes) = body.try_into_mut() {
        bytes.as_mut().zeroize();
    }
}

impl Session {
    /// Checks the options and builds the HTTP client (reads the CA file; no
    /// network).
    pub(super) fn new(options: KvOptions) -> Result<Session, KvError> {
        let address = super::path::check_address(&options.address).map_err(KvError::Config)?;
        let mount = options.mount.trim_matches('/').to_owned();
        super::path::check_path("KV mount", &mount).map_err(KvError::Config)?;
        if let KvAuth::AppRole { mount, .. } = &options.auth {
            super::path::check_path("AppRole auth mount", mount.trim_matches('/')).map_err(KvError::Config)?;
        }
        let namespace = match options.namespace.as_deref().map(|n| n.trim_matches('/')) {
            None | Some("") => None,
            Some(namespace) => {
                super::path::check_path("OpenBao namespace", namespace).map_err(KvError::Config)?;
                Some(HeaderValue::from_str(namespace).map_err(|_| {
                    KvError::Config(format!("the OpenBao namespace {namespace:?} cannot go into a header"))
                })?)
            }
        };
        if options.timeout.is_zero() {
            return Err(KvError::Config(
                "the OpenBao request timeout is zero: give it a few seconds (e.g. 10s)".to_owned(),
            ));
        }
        crate::alerts::sinks::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(crate::alerts::sinks::USER_AGENT)
            .referer(false)
            .pool_idle_timeout(POOL_IDLE)
            .tcp_keepalive(Duration::from_secs(30));
        if let Some(path) = &options.ca_file {
            builder = builder.tls_certs_merge(read_ca_file(path)?);
        }
        let http = builder.build().map_err(|e| {
            KvError::Config(format!(
                "cannot set up the HTTP client for OpenBao at {address}: {}",
                one_line(&e.without_url())
            ))
        })?;
        Ok(Session {
            http,
            address,
            mount,
            namespace,
            auth: options.auth,
            timeout: options.timeout,
            slot: Mutex::new(TokenSlot {
                token: None,
                generation: 0,
                lease: None,
            }),
            generation: watch::Sender::new(0),
        })
    }

    /// Sends one request with `token`; any answer is returned, only a
    /// failure to get one is an error.
    async fn send(&self, request: &Request, token: Option<&SecretString>) -> Result<Answer, KvError> {
        let mut url = format!("{}/v1/{}", self.address, request.api_path);
        if let Some(query) = &request.query {
            url.push('?');
            url.push_str(query);
        }
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .header("X-Vault-Request", "true");
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token.expose_secret())
                .map_err(|_| KvError::Auth("the OpenBao token has characters a header cannot carry".to_owned()))?;
            value.set_sensitive(true);
            builder = builder.header("X-Vault-Token", value);
        }
        if let Some(namespace) = &self.namespace {
            builder = builder.header("X-Vault-Namespace", namespace.clone());
        }
        if let Some(body) = &request.body {
            builder = builder.header(CONTENT_TYPE, "application/json").body(body.clone());
        }
        let unreachable = |e: reqwest::Error| KvError::Unreachable {
            address: self.address.clone(),
            reason: transport_reason(&e, self.timeout),
        };
        // A pooled connection the server closed just as it was reused
        // (idle timeout, restart) fails with nothing sent back: try once
        // more, on a new connection. A write retried this way after the
        // server did apply it makes one more identical version, or, with
        // cas, a CasMismatch.
        let retry = builder.try_clone();
        let response = match (builder.send().await, retry) {
            (Ok(response), _) => response,
            (Err(e), Some(retry)) if closed_unanswered(&e) => {
                tracing::debug!(address = %self.address, path = %request.api_path, "OpenBao closed a pooled connection; sending again");
                retry.send().await.map_err(unreachable)?
            }
            (Err(e), _) => return Err(unreachable(e)),
        };
        let status = response.status().as_u16();
        // Read at most MAX_BODY: whoever may write the prefix must not be
        // able to run the agent out of memory with one huge value.
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(KvError::BadResponse {
                    path: request.api_path.clone(),
                    reason: format!(
                        "the answer is larger than {MAX_BODY} bytes: a keyward value is far smaller; check what was written at this path"
                    ),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            body: body.into(),
        })
    }

    /// The token, obtained first if there is none yet, and its generation.
    pub(super) async fn token(&self) -> Result<(SecretString, u64), KvError> {
        let mut slot = self.slot.lock().await;
        if let Some(token) = &slot.token {
            return Ok((token.clone(), slot.generation));
        }
        let (token, lease) = self.obtain().await?;
        self.install(&mut slot, token.clone(), lease);
        Ok((token, slot.generation))
    }

    /// Replaces the token of generation `seen` by a fresh one: the file
    /// read again, or a new AppRole login. Does nothing if the token has
    /// changed since `seen` (someone else refreshed it). Returns whether
    /// the token now differs from generation `seen`'s.
    pub(super) async fn refresh(&self, seen: u64) -> Result<bool, KvError> {
        let mut slot = self.slot.lock().await;
        if slot.generation != seen && slot.token.is_some() {
            return Ok(true);
        }
        let (token, lease) = self.obtain().await?;
        let same = slot
            .token
            .as_ref()
            .is_some_and(|old| bool::from(old.expose_secret().as_bytes().ct_eq(token.expose_secret().as_bytes())));
        if !same {
            self.install(&mut slot, token, lease);
        }
        Ok(!same)
    }

    /// Makes `token` the current one.
    fn install(&self, slot: &mut TokenSlot, token: SecretString, lease: Option<Lease>) {
        slot.token = Some(token);
        slot.lease = lease;
        slot.generation += 1;
        self.generation.send_replace(slot.generation);
    }

    /// The lease of the token of `generation`, if it is still the current
    /// one and its life is known.
    pub(super) async fn lease(&self, generation: u64) -> Option<Lease> {
        let slot = self.slot.lock().await;
        (slot.generation == generation).then_some(slot.lease).flatten()
    }

    /// Records the lease of the token of `generation` (unless it has been
    /// replaced meanwhile).
    pub(super) async fn set_lease(&self, generation: u64, lease: Lease) {
        let mut slot = self.slot.lock().await;
        if slot.generation == generation {
            slot.lease = Some(lease);
        }
    }

    /// A fresh token: the token file read, or an AppRole login.
    async fn obtain(&self) -> Result<(SecretString, Option<Lease>), KvError> {
        match &self.auth {
            KvAuth::TokenFile(path) => {
                let token = read_secret_file("OpenBao token file", path, TOKEN_FILE_FIX)?;
                tracing::debug!(address = %self.address, file = %path.display(), "read the OpenBao token file");
                Ok((token, None))
            }
            KvAuth::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                self.approle_login(mount.trim_matches('/'), role_id_file, secret_id_file)
                    .await
            }
        }
    }

    /// `POST auth/{mount}/login` with the ids from the files.
    async fn approle_login(
        &self,
        mount: &str,
        role_id_file: &Path,
        secret_id_file: &Path,
    ) -> Result<(SecretString, Option<Lease>), KvError> {
        let role_id = read_secret_file("AppRole role_id file", role_id_file, APPROLE_FILE_FIX)?;
        let secret_id = read_secret_file("AppRole secret_id file", secret_id_file, APPROLE_FILE_FIX)?;
        let api_path = format!("auth/{mount}/login");
        let mut request = Request::new(Method::POST, api_path.clone());
        request.body = Some(approle_login_body(&role_id, &secret_id));
        let ids = [role_id.expose_secret(), secret_id.expose_secret()];
        let answer = self.send(&request, None).await.map_err(|e| scrub_error(e, &ids))?;
        drop(request);
        if !(200..300).contains(&answer.status) {
            let error = match answer.status {
                400 | 401 | 403 | 404 => KvError::Auth(format!(
                    "OpenBao at {} refused the AppRole login at {api_path} ({}): check the role_id in {} and the secret_id in {} \
                     (a secret_id can expire or run out of uses), and that AppRole auth is enabled at auth/{mount}/",
                    self.address,
                    scrub(&error_text(&answer.body), &ids),
                    role_id_file.display(),
                    secret_id_file.display(),
                )),
                status => scrub_error(answer_error(status, &answer.body, &self.address, &api_path), &ids),
            };
            return Err(error);
        }
        let login = response::login(&answer.body, &api_path);
        wipe_body(answer.body);
        let login = login?;
        tracing::info!(
            address = %self.address,
            mount,
            ttl_secs = login.life.ttl.as_secs(),
            renewable = login.life.renewable,
            "logged in to OpenBao with AppRole"
        );
        Ok((login.token, Some(Lease::granted(login.life, Instant::now()))))
    }

    /// Sends `request` with the token; on 403, once more with a fresh one.
    /// Returns the body of a 2xx answer, `None` for a 404 that means
    /// "nothing there", and the mapped error for anything else.
    pub(super) async fn fetch(&self, request: &Request) -> Result<Option<Bytes>, KvError> {
        let (mut token, generation) = self.token().await?;
        let mut answer = self.send(request, Some(&token)).await?;
        if answer.status == 403 {
            tracing::debug!(
                address = %self.address,
                path = %request.api_path,
                "OpenBao answered 403: trying once more with a fresh token"
            );
            self.refresh(generation).await?;
            token = self.token().await?.0;
            answer = self.send(request, Some(&token)).await?;
        }
        match answer.status {
            200..=299 => Ok(Some(answer.body)),
            404 if not_found_means_absent(&answer.body) => Ok(None),
            status => Err(scrub_error(
                answer_error(status, &answer.body, &self.address, &request.api_path),
                &[token.expose_secret()],
            )),
        }
    }

    /// `GET auth/token/lookup-self` with `token`.
    pub(super) async fn lookup_self(&self, token: &SecretString) -> Result<TokenCheck, KvError> {
        let api_path = "auth/token/lookup-self";
        let request = Request::new(Method::GET, api_path.to_owned());
        self.check_token(&request, token, response::lookup).await
    }

    /// `POST auth/token/renew-self` with `token`.
    pub(super) async fn renew_self(&self, token: &SecretString) -> Result<TokenCheck, KvError> {
        let api_path = "auth/token/renew-self";
        let mut request = Request::new(Method::POST, api_path.to_owned());
        request.body = Some(Bytes::from_static(b"{}"));
        self.check_token(&request, token, |body, path| {
            response::auth_block(body, path).map(|(_, life)| life)
        })
        .await
    }

    /// Sends a token self-operation and reads the token's life from the
    /// answer. Both answers echo the token: their bodies are wiped.
    async fn check_token(
        &self,
        request: &Request,
        token: &SecretString,
        parse: impl Fn(&[u8], &str) -> Result<TokenLife, KvError>,
    ) -> Result<TokenCheck, KvError> {
        let answer = self.send(request, Some(token)).await?;
        let result = match answer.status {
            200..=299 => parse(&answer.body, &request.api_path).map(TokenCheck::Valid),
            403 => Ok(TokenCheck::Refused),
            status => Err(answer_error(status, &answer.body, &self.address, &request.api_path)),
        };
        wipe_body(answer.body);
        result.map_err(|e| scrub_error(e, &[token.expose_secret()]))
    }
}
