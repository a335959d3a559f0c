//! [`Client`]: one method per RPC of the agent's `Keys` service.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_stream::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::client_name::ClientName;
use crate::connect;
use crate::error::{from_status, Error};
use crate::key_use::UseCounts;
use crate::keyset::{parse_key, KeySet};
use crate::proto;
use crate::proto::keys_client::KeysClient;
use crate::refusals::{Refusals, DEFAULT_FALLBACK_COOLDOWN};
use crate::trust::Trust;

/// A boxed stream of key states, as [`Client::watch`] returns.
pub(crate) type KeySetStream = Pin<Box<dyn Stream<Item = Result<KeySet, Error>> + Send>>;

/// A connection to the keyward agent's service socket.
///
/// Cloning is cheap: clones share one HTTP/2 connection, which is
/// re-established by itself when the agent restarts.
///
/// Every request carries the header
/// [`x-keyward-client`](crate::CLIENT_HEADER), `rust/VERSION` unless
/// [`Client::with_client_name`] says otherwise.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    name: ClientName,
    socket: Arc<PathBuf>,
    service: Arc<str>,
    /// Successes to report per (key, version), shared by every clone and
    /// handle (see `key_use.rs`).
    uses: Arc<Mutex<UseCounts>>,
    /// Versions a provider refused, shared by every clone and handle (see
    /// `refusals.rs`).
    refusals: Arc<Mutex<Refusals>>,
    /// How long `call_with_fallback` skips a refused version (this clone's).
    fallback_cooldown: std::time::Duration,
}

impl Client {
    /// Connects to `$KEYWARD_SOCKET`, or to `/run/keyward/keys.sock` when it
    /// is not set.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keyward_client::Error> {
    /// let client = keyward_client::Client::connect().await?;
    /// # let _ = client; Ok(())
    /// # }
    /// ```
    pub async fn connect() -> Result<Client, Error> {
        Client::connect_to(connect::socket_path(None)).await
    }

    /// Connects to the service socket at `socket` (with `keywardd --dev
    /// DIR`: `DIR/keys.sock`).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keyward_client::Error> {
    /// let client = keyward_client::Client::connect_to("/tmp/kw/keys.sock").await?;
    /// # let _ = client; Ok(())
    /// # }
    /// ```
    pub async fn connect_to(socket: impl AsRef<Path>) -> Result<Client, Error> {
        Client::open(socket.as_ref(), None).await
    }

    /// Connects to the service socket at `socket`, served by keywardd
    /// running as `agent_uid` (instead of `$KEYWARD_AGENT_UID`). Root and
    /// this process's own user are always trusted; a socket served by any
    /// other uid is refused with [`Error::UntrustedSocket`] before anything
    /// is sent.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keyward_client::Error> {
    /// let client = keyward_client::Client::connect_trusting("/run/keyward/keys.sock", 998).await?;
    /// # let _ = client; Ok(())
    /// # }
    /// ```
    pub async fn connect_trusting(socket: impl AsRef<Path>, agent_uid: u32) -> Result<Client, Error> {
        Client::open(socket.as_ref(), Some(agent_uid)).await
    }

    /// Connects to the service socket at `socket`, served by a uid that
    /// `trust` allows; a failure to connect comes back as the socket's
    /// `io::Error`, as [`checked_channel`](crate::checked_channel) returns
    /// it, for a caller that words its own messages (the `keyward` CLI).
    /// [`Error::from_socket_io`] maps it otherwise. Later failures are
    /// [`Error`]s, as with [`Client::connect_to`].
    pub async fn connect_with_trust(socket: impl AsRef<Path>, trust: Trust) -> std::io::Result<Client> {
        let socket = socket.as_ref();
        let channel = connect::checked_channel(socket, trust).await?;
        Ok(Client::over(socket, channel))
    }

    async fn open(socket: &Path, agent_uid: Option<u32>) -> Result<Client, Error> {
        let channel = connect::open(socket, agent_uid).await?;
        Ok(Client::over(socket, channel))
    }

    fn over(socket: &Path, channel: Channel) -> Client {
        Client {
            channel,
            name: ClientName::default(),
            socket: Arc::new(socket.to_path_buf()),
            service: default_service().into(),
            uses: Arc::default(),
            refusals: Arc::default(),
            fallback_cooldown: DEFAULT_FALLBACK_COOLDOWN,
        }
    }

    /// The `Keys` stub on this connection, adding the client's name to
    /// each request.
    fn keys(&self) -> KeysClient<InterceptedService<Channel, ClientName>> {
        KeysClient::with_interceptor(self.channel.clone(), self.name.clone())
    }

    /// The same connection, reporting auth failures and key use as
    /// `service` (by default the executable's file name).
    pub fn with_service(mut self, service: impl Into<String>) -> Client {
        self.service = service.into().into();
        self
    }

    /// The service name sent with auth-failure and key-use reports.
    pub fn service(&self) -> &str {
        &self.service
    }

    pub(crate) fn uses(&self) -> &Mutex<UseCounts> {
        &self.uses
    }

    pub(crate) fn refusals(&self) -> std::sync::MutexGuard<'_, Refusals> {
        self.refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The same connection, whose
    /// [`call_with_fallback`](Client::call_with_fallback) skips a version
    /// the provider refused for `cooldown` (default
    /// [`DEFAULT_FALLBACK_COOLDOWN`](crate::DEFAULT_FALLBACK_COOLDOWN), 30
    /// s) and goes straight to the fallback; zero turns that off (the
    /// primary first on every call). The memory of refused versions is
    /// shared by the client's clones and handles, so for one call only:
    /// `client.clone().with_fallback_cooldown(d).call_with_fallback(…)`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keyward_client::Error> {
    /// use std::time::Duration;
    /// let client = keyward_client::Client::connect()
    ///     .await?
    ///     .with_fallback_cooldown(Duration::from_secs(10));
    /// assert_eq!(client.fallback_cooldown(), Duration::from_secs(10));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_fallback_cooldown(mut self, cooldown: std::time::Duration) -> Client {
        self.fallback_cooldown = cooldown;
        self
    }

    /// How long [`call_with_fallback`](Client::call_with_fallback) skips a
    /// refused version (see [`Client::with_fallback_cooldown`]).
    pub fn fallback_cooldown(&self) -> std::time::Duration {
        self.fallback_cooldown
    }

    /// The same connection, naming the program as `name` to the agent in
    /// the [`x-keyward-client`](crate::CLIENT_HEADER) header of every
    /// request, instead of `rust/VERSION` (this library's version). Write
    /// it as `KIND/VERSION`, e.g. `run/0.1.0` for `keyward run`; characters
    /// a header cannot carry (anything but printable ASCII and the space)
    /// become `_`. It is a label for the agent's lists, not a credential:
    /// the agent identifies the caller by its process, never by this.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keyward_client::Error> {
    /// let client = keyward_client::Client::connect().await?.with_client_name("billing-sidecar/2.1");
    /// assert_eq!(client.client_name(), "billing-sidecar/2.1");
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_client_name(mut self, name: &str) -> Client {
        self.name = ClientName::new(name);
        self
    }

    /// What the [`x-keyward-client`](crate::CLIENT_HEADER) header says.
    pub fn client_name(&self) -> &str {
        self.name.as_str()
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The current primary and fallback of `key` (`ENV/NAME`).
    ///
    /// ```no_run
    /// # async fn run(client: keyward_client::Client) -> Result<(), keyward_client::Error> {
    /// let keys = client.get("prod/billing-api").await?;
    /// let header = format!("Bearer {}", keys.primary.secret.expose_str().expect("UTF-8"));
    /// # let _ = header; Ok(())
    /// # }
    /// ```
    pub async fn get(&self, key: &str) -> Result<KeySet, Error> {
        let request = proto::GetKeyRequest {
            key: Some(parse_key(key)?),
        };
        let reply = self.keys().get_key(request).await.map_err(|s| self.error(s))?;
        KeySet::try_from(reply.into_inner())
    }

    /// The state of each of `keys` at once, then again after every change
    /// (a stage, promote, retire, put…). A key that is deleted yields
    /// [`Error::NotFound`] and the stream goes on; the stream ends when the
    /// agent stops (see [`Client::handle`] for a watch that reconnects).
    ///
    /// ```no_run
    /// use tokio_stream::StreamExt;
    /// # async fn run(client: keyward_client::Client) -> Result<(), keyward_client::Error> {
    /// let mut changes = client.watch(&["prod/billing-api"]).await?;
    /// while let Some(keys) = changes.next().await {
    ///     let keys = keys?;
    ///     println!("{} is now v{}", keys.key, keys.primary.version);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn watch(
        &self,
        keys: &[&str],
    ) -> Result<impl Stream<Item = Result<KeySet, Error>> + Send + 'static, Error> {
        let request = proto::WatchKeysRequest {
            keys: keys.iter().map(|k| parse_key(k)).collect::<Result<_, _>>()?,
        };
        let events = self.keys().watch_keys(request).await.map_err(|s| self.error(s))?;
        let socket = Arc::clone(&self.socket);
        Ok(events.into_inner().map(move |event| {
            let event = event.map_err(|s| from_status(&socket, s))?;
            KeySet::try_from(event.key_set.unwrap_or_default())
        }))
    }

    /// [`Client::watch`], boxed.
    pub(crate) async fn watch_boxed(&self, key: &str) -> Result<KeySetStream, Error> {
        Ok(Box::pin(self.watch(&[key]).await?))
    }

    /// Tells the agent that `service` refused `version` of `key` with HTTP
    /// `status_code` (401, 403). The agent audits it, counts it against the
    /// rotation's retire gate and rollback, and raises alerts.
    /// [`Client::call_with_fallback`] sends these by itself.
    ///
    /// `detail` is stored in the audit log: never put a secret in it.
    pub async fn report_auth_failure(
        &self,
        key: &str,
        version: u64,
        status_code: u16,
        service: &str,
        detail: &str,
    ) -> Result<(), Error> {
        self.send_failure_report(proto::AuthFailureReport {
            key: Some(parse_key(key)?),
            version,
            status_code: status_code.into(),
            service: service.to_string(),
            detail: detail.to_string(),
            misdirected_to: String::new(),
        })
        .await
    }

    /// Tells the agent that a request carrying a placeholder of `version`
    /// of `key` was headed for `sent_to`, a host the key is not bound to,
    /// and that the proxy refused it with `status_code` without putting the
    /// key in: keyward's proxy sends these. The agent audits them as
    /// `key_misdirected`.
    pub async fn report_misdirected(
        &self,
        key: &str,
        version: u64,
        sent_to: &str,
        status_code: u16,
        detail: &str,
    ) -> Result<(), Error> {
        self.send_failure_report(proto::AuthFailureReport {
            key: Some(parse_key(key)?),
            version,
            status_code: status_code.into(),
            service: self.service.to_string(),
            detail: detail.to_string(),
            misdirected_to: sent_to.to_string(),
        })
        .await
    }

    async fn send_failure_report(&self, report: proto::AuthFailureReport) -> Result<(), Error> {
        self.keys()
            .report_auth_failure(report)
            .await
            .map_err(|s| self.error(s))?;
        Ok(())
    }

    /// Tells the agent that `successes` calls made by `service` with
    /// `version` of `key` succeeded: the evidence a rotation needs before
    /// the agent retires the old key. Waits for the agent's answer.
    /// [`Client::call_with_fallback`] and
    /// [`KeyHandle::report_use`](crate::KeyHandle::report_use) send these by
    /// themselves, in the background and at most once per version every
    /// [`USE_REPORT_INTERVAL`](crate::USE_REPORT_INTERVAL).
    pub async fn report_key_use(&self, key: &str, version: u64, service: &str, successes: u64) -> Result<(), Error> {
        let report = proto::KeyUseReport {
            key: Some(parse_key(key)?),
            version,
            service: service.to_string(),
            successes,
        };
        self.keys().report_key_use(report).await.map_err(|s| self.error(s))?;
        Ok(())
    }

    fn error(&self, s: tonic::Status) -> Error {
        from_status(&self.socket, s)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .field("service", &self.service)
            .field("client_name", &self.client_name())
            .field("fallback_cooldown", &self.fallback_cooldown)
            .finish()
    }
}

/// The executable's file name, else `unknown`.
fn default_service() -> String {
    std::env::current_exe()
        .ok()
        .or_else(|| std::env::args_os().next().map(PathBuf::from))
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".to_string())
}
