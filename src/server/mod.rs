//! The agent's server side: sockets, caller identity, the two gRPC services
//! and [`run`], the one way in.
//!
//! - [`sockets`], [`peer`], [`identity`]: binding, the state lock, who is
//!   calling, and the verification of a caller's executable and unit.
//! - [`activation`]: sockets passed by systemd, readiness notification.
//! - [`creds`]: `creds.sock`, keys for systemd's `LoadCredential=`.
//! - [`keys`], [`watch_stream`], [`reports`]: the service socket (`GetKey`,
//!   `WatchKeys`, `ReportAuthFailure`); [`watch_evict`]: watches that take
//!   nothing do not hold up rotations.
//! - [`streams`]: every call counted per connection and per uid, and
//!   bounded; with the `[limits]` stream, watch, keepalive and idle
//!   settings, what one uid can make the agent hold is bounded.
//! - [`admin`], [`rotate`]: the admin socket (changes and rotation).
//! - [`hot_reload`], [`config_reload`]: files changed by other tools, and
//!   SIGHUP.
//! - [`error`]: the one mapping from the agent's errors to gRPC statuses.
//! - [`refusals`]: refusals coalesced in the audit, so that callers without
//!   a grant cannot fill its disk; [`audit_disk`]: its free space watched.
//!
//! `keywardd`'s `main` opens an [`Agent`] (store, audit, lock), binds the
//! sockets with [`bind_listeners`] and calls [`run`] with a signal future;
//! tests do the same with a oneshot. Shutdown stops accepting, lets in-flight
//! calls finish within the configured grace, flushes the audit log and
//! removes the socket files it bound (those systemd passed stay).

pub mod activation;
pub mod admin;
pub mod alerting;
pub mod audit_disk;
pub mod config_reload;
pub mod creds;
pub mod error;
pub mod hot_reload;
pub mod identity;
pub mod keys;
pub mod peer;
pub mod refusals;
pub mod reports;
pub mod rotate;
pub mod sockets;
pub mod streams;
pub mod watch_evict;
pub mod watch_stream;

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use nix::fcntl::Flock;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Server;

use crate::audit::{Audit, AuditError, AuditEvent, AuditOptions};
use crate::config::{AuditFailureMode, Config};
use crate::hygiene::HygieneReport;
use crate::proto;
use crate::secret::{Fingerprinter, KeyRef};
use crate::store::identity::{AgentIdentity, InstallKey};
use crate::store::{Store, StoreError, StoreOptions};
use error::ApiError;
use peer::{Caller, ConnectionTracker, PeerStream};
use sockets::BindError;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket or the lock.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The identity, install key or store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// `[backend]` (fleet mode).
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    /// The state directory.
    #[error("cannot create {path}: {source}")]
    StateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Everything the services share.
pub struct Agent {
    /// The validated configuration; replaced as a whole on reload.
    config: RwLock<Arc<Config>>,
    /// The keys (in fleet mode: this agent's local copy).
    pub store: Store,
    /// Fleet mode: the shared backend the keys come from.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// The audit log.
    pub audit: Audit,
    /// Open connections.
    pub connections: Arc<ConnectionTracker>,
    /// When the agent started.
    pub started_at: SystemTime,
    /// Whether `mlockall` succeeded.
    pub memory_locked: bool,
    /// The agent identity's public key (`age1…`).
    pub recipient: String,
    /// Serializes every change to the store.
    pub admin_lock: tokio::sync::Mutex<()>,
    /// WatchKeys subscribers, per key.
    pub watchers: crate::watch::Watchers,
    /// Auth failures reported by clients.
    pub failures: reports::FailureLog,
    /// The versions served to each uid, which reports are checked against.
    pub served: reports::ServedLog,
    /// Detectors, report limits, sinks and metrics.
    pub alerting: Arc<alerting::Alerting>,
    /// Refusals coalesced in the audit (`[audit] coalesce_window`).
    pub refusals: refusals::Refusals,
    /// The audit log's free space, against `[audit] min_free`.
    pub audit_disk: audit_disk::DiskWatch,
    /// Bumped on every config swap; watch streams re-check access on it.
    config_epoch: tokio::sync::watch::Sender<u64>,
    /// Where the config came from, so that SIGHUP can load it again.
    config_source: Option<config_reload::ConfigSource>,
    _state_lock: Flock<File>,
}

impl Agent {
    /// Takes the state lock, loads the identity, install key and store, and
    /// starts the audit writer. In dev mode, missing state is created; in
    /// system mode the identity must exist (`keyward init`).
    pub fn open(config: Config, hygiene: &HygieneReport) -> Result<Agent, StartError> {
        let p = &config.paths;
        for dir in [
            Some(p.state_dir.as_path()),
            p.service_socket.parent(),
            p.audit_file.parent(),
        ]
        .into_iter()
        .flatten()
        {
            if config.dev_mode && !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| StartError::StateDir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
            }
        }
        let state_lock = sockets::lock_state(&p.lock_file)?;
        let (identity, install_key) = if config.dev_mode {
            (
                AgentIdentity::load_or_create(&p.identity_file)?,
                InstallKey::load_or_create(&p.install_key_file)?,
            )
        } else {
            (
                AgentIdentity::load(&p.identity_file)?,
                InstallKey::load(&p.install_key_file)?,
            )
        };
        let recipient = identity.recipient();
        let fleet = match &config.backend {
            crate::config::backend::BackendConfig::Local => None,
            crate::config::backend::BackendConfig::OpenBao(cfg) => Some(Arc::new(crate::fleet::Fleet::new(
                cfg,
                recipient.clone(),
                &config.extra_recipients,
                &p.state_dir,
            )?)),
        };
        let (store, problems) = Store::open(StoreOptions {
            dir: p.store_dir.clone(),
            identity,
            extra_recipients: config.extra_recipients.clone(),
            environments: config.environments.keys().cloned().collect(),
            fingerprinter: Fingerprinter::new(&install_key.fingerprint_salt()),
        })?;
        for problem in &problems {
            tracing::error!(path = ?problem.path, reason = %problem.reason, "key file not loaded; the file is left in place");
        }
        let audit = Audit::start(AuditOptions {
            path: p.audit_file.clone(),
            key: install_key.audit_key(),
            durability: config.audit.durability,
            fsync_interval: config.audit.fsync_interval,
            max_batch: config.audit.max_batch,
        })?;
        let alerting = Arc::new(alerting::Alerting::new(
            &config.alerts,
            Arc::new(crate::metrics::Metrics::new()),
        ));
        audit.observe(Arc::new(alerting::AuditWatch(alerting.clone())));
        Ok(Agent {
            alerting,
            refusals: refusals::Refusals::new(config.audit.coalesce_window),
            audit_disk: audit_disk::DiskWatch::default(),
            store,
            fleet,
            audit,
            connections: Arc::new(ConnectionTracker::default()),
            started_at: SystemTime::now(),
            memory_locked: hygiene.memory_locked,
            recipient,
            admin_lock: tokio::sync::Mutex::new(()),
            watchers: crate::watch::Watchers::default(),
            failures: reports::FailureLog::default(),
            served: reports::ServedLog::default(),
            config_epoch: tokio::sync::watch::Sender::new(0),
            config_source: None,
            _state_lock: state_lock,
            config: RwLock::new(Arc::new(config)),
        })
    }

    /// The current configuration (a snapshot: a reload swaps in a new one).
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the configuration (SIGHUP). Settings that only take effect
    /// at start (paths, sockets, audit, limits) are kept from the running
    /// config; the caller reports them.
    pub fn replace_config(&self, new: Config) {
        if new.alerts != self.config().alerts && tokio::runtime::Handle::try_current().is_ok() {
            self.alerting.start_sinks(&new.alerts);
        }
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
        self.config_epoch.send_modify(|e| *e += 1);
    }

    /// The counters behind the metrics listener.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.alerting.metrics
    }

    /// The agent's state for one metrics scrape.
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        use crate::alerts::{Severity, Signal};
        let now = SystemTime::now();
        let secs = |a: SystemTime, b: SystemTime| match a.duration_since(b) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let keys = self
            .store
            .list(None)
            .iter()
            .map(|s| crate::metrics::KeyGauges {
                environment: s.key.env().to_owned(),
                key: s.key.name().to_owned(),
                age_seconds: secs(now, s.primary.promoted_at.unwrap_or(s.primary.created_at)),
                expires_in_seconds: s.primary.expires_at.map(|e| secs(e, now)),
                generation: s.generation,
            })
            .collect();
        let open = self.alerting.open_alerts();
        let mut open_alerts = Vec::new();
        for signal in Signal::ALL {
            for severity in [Severity::Info, Severity::Warning, Severity::Critical] {
                let n = open.iter().filter(|(g, v)| *g == signal && *v == severity).count() as u64;
                open_alerts.push((signal, severity, n));
            }
        }
        crate::metrics::Snapshot {
            watchers: self.watchers.count() as u64,
            connections: self.connections.total() as u64,
            open_alerts,
            keys,
            sinks: self.alerting.sink_stats(),
            backend: self.fleet.as_ref().map(|f| f.gauges()),
            audit_disk_free_bytes: self.audit_disk.free_bytes(),
        }
    }

    /// Changes on every [`Agent::replace_config`]; read it *before* checking
    /// anything against [`Agent::config`] to be sure to see a later swap.
    pub fn config_epoch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.config_epoch.subscribe()
    }

    /// Remembers how the config was built, for [`Agent::reload_config`].
    pub fn with_config_source(mut self, source: config_reload::ConfigSource) -> Agent {
        self.config_source = Some(source);
        self
    }

    /// SIGHUP: loads the config again from where it came from. An invalid
    /// file changes nothing; a valid one has its live settings (the policy
    /// above all) swapped in and its start-only ones reported. Audited
    /// either way. See [`config_reload`].
    pub async fn reload_config(&self) -> Result<config_reload::ReloadReport, config_reload::ReloadError> {
        config_reload::reload(self).await
    }

    /// Makes a change durable where the keys live: the store directory, or
    /// in fleet mode OpenBao (check-and-set against `before`, the state
    /// served now) and then the local copy. The caller holds the admin lock.
    pub async fn commit_change(
        &self,
        before: Option<&crate::keyset::KeySetState>,
        next: crate::keyset::KeySetState,
    ) -> Result<Arc<crate::keyset::KeySetState>, ApiError> {
        match &self.fleet {
            None => Ok(self.store.commit(next)?),
            Some(fleet) => fleet.commit(self, before, next).await,
        }
    }

    /// Deletes `existing` where the keys live (see
    /// [`Agent::commit_change`]).
    pub async fn delete_key(
        &self,
        existing: &crate::keyset::KeySetState,
    ) -> Result<Arc<crate::keyset::KeySetState>, ApiError> {
        match &self.fleet {
            None => Ok(self.store.delete(&existing.key)?),
            Some(fleet) => fleet.delete(self, existing).await,
        }
    }

    /// Validates a wire key and checks that its environment is configured.
    pub fn key_ref(&self, key: Option<&proto::KeyRef>) -> Result<KeyRef, ApiError> {
        let key = KeyRef::from_proto(key)?;
        if !self.config().environments.contains_key(key.env()) {
            return Err(ApiError::InvalidArgument(self.unknown_env_message(key.env())));
        }
        Ok(key)
    }

    /// Audits a refused request as `event` with `outcome` and returns its
    /// error: at once if it is the first of its kind in the window, else
    /// counted into the window's record (see [`refusals`]). A refusal whose
    /// record cannot be written is still a refusal.
    pub async fn refuse(
        &self,
        event: &'static str,
        caller: &Caller,
        key: Option<String>,
        outcome: &'static str,
        error: ApiError,
    ) -> ApiError {
        let refusal = refusals::Refusal {
            event,
            caller: caller.record.clone(),
            key,
            outcome,
            detail: error.to_string(),
        };
        if let Some(record) = self.refusals.admit(refusal) {
            let _ = self.audit.record(record).await;
        }
        error
    }

    /// Whether the current policy gives `caller` `right` on `key`. The
    /// caller's uid and groups are tried first; only when a grant listing
    /// executables or units could apply is the caller's process verified
    /// (once per connection, see [`identity`]). `Err` carries why the
    /// executable and unit selectors could not match, when that was tried
    /// and they could not.
    pub async fn allows(&self, caller: &Caller, key: &KeyRef, right: Right) -> Result<(), Option<String>> {
        let config = self.config();
        let policy = &config.policy;
        let who = caller.principal();
        if right.granted(policy, &who, key) {
            return Ok(());
        }
        if !policy.needs_process_identity(&who, key) {
            return Err(None);
        }
        let identity = caller.process_identity().await;
        let executables = identity.executables(policy);
        let verified = crate::policy::Principal {
            executables: &executables,
            unit: identity.unit(),
            ..who
        };
        if right.granted(policy, &verified, key) {
            Ok(())
        } else {
            Err(identity.why_not())
        }
    }

    /// Checks that the policy lets `caller` read `key`; a refusal is audited
    /// as `event`.
    pub async fn check_read(&self, event: &'static str, caller: &Caller, key: &KeyRef) -> Result<(), ApiError> {
        let why_not = match self.allows(caller, key, Right::Read).await {
            Ok(()) => return Ok(()),
            Err(why_not) => why_not,
        };
        self.metrics().denial("service", event);
        let denied = ApiError::PermissionDenied(format!(
            "{} may not read {key}: no grant in the policy names this caller for this key{}; add a [[grant]] to the agent's config",
            caller.describe(),
            unverified(why_not.as_deref()),
        ));
        Err(self
            .refuse(event, caller, Some(key.to_string()), "denied", denied)
            .await)
    }

    /// An optional environment filter from a request (empty: all): a valid
    /// name first (the "not configured" message repeats it), then a
    /// configured one.
    pub fn env_filter<'a>(&self, env: &'a str) -> Result<Option<&'a str>, ApiError> {
        if env.is_empty() {
            return Ok(None);
        }
        crate::secret::validate_name("environment", env)?;
        if !self.config().environments.contains_key(env) {
            return Err(ApiError::InvalidArgument(self.unknown_env_message(env)));
        }
        Ok(Some(env))
    }

    /// "environment 'qa' is not configured …".
    pub fn unknown_env_message(&self, env: &str) -> String {
        let config = self.config();
        let known: Vec<&str> = config.environments.keys().map(String::as_str).collect();
        format!(
            "environment {env:?} is not configured (configured: {}): use one of those or add [environments.{env}] to the config",
            known.join(", ")
        )
    }

    /// What to do when a fetch from `key`'s environment cannot be audited.
    pub fn on_audit_failure(&self, key: &KeyRef) -> AuditFailureMode {
        self.config()
            .environments
            .get(key.env())
            .map_or(AuditFailureMode::FailClosed, |e| e.on_audit_failure)
    }
}

/// What a grant gives its callers on `keys.sock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// Fetch and watch the key.
    Read,
    /// Report auth failures on it (a grant's `report`, on by default).
    Report,
}

impl Right {
    fn granted(self, policy: &crate::policy::Policy, who: &crate::policy::Principal<'_>, key: &KeyRef) -> bool {
        match self {
            Right::Read => policy.allows(who, key),
            Right::Report => policy.report_grant_for(who, key).is_some(),
        }
    }
}

/// The part of a denial that says why executable and unit selectors did
/// not apply, when that is why.
pub fn unverified(why_not: Option<&str>) -> String {
    match why_not {
        Some(why) => format!(" (grants that name executables or units do not apply to it: {why})"),
        None => String::new(),
    }
}

/// The listening sockets.
pub struct Listeners {
    /// `keys.sock`: the `Keys` service.
    pub service: std::os::unix::net::UnixListener,
    /// `admin.sock`: the `Admin` service.
    pub admin: std::os::unix::net::UnixListener,
    /// The Prometheus endpoint, when `[metrics] listen` is set.
    pub metrics: Option<crate::metrics::http::MetricsListener>,
    /// `creds.sock`, when `[sockets] credentials` is on.
    pub credentials: Option<std::os::unix::net::UnixListener>,
    /// The socket files the agent bound itself (not those systemd passed,
    /// which its .socket units own): removed at shutdown if still its own.
    pub files: Vec<sockets::SocketFile>,
}

/// Binds both sockets with the configured modes and groups.
pub fn bind_listeners(config: &Config) -> Result<Listeners, BindError> {
    bind_listeners_with(config, activation::Inherited::default())
}

/// Like [`bind_listeners`], but uses the sockets systemd passed where there
/// are any and binds only the others. On failure, the files bound so far
/// are removed again.
pub fn bind_listeners_with(config: &Config, inherited: activation::Inherited) -> Result<Listeners, BindError> {
    let p = &config.paths;
    if inherited.credentials.is_some() && !config.credentials_socket {
        tracing::warn!("systemd passed a \"creds\" socket but [sockets] credentials is off: it is closed, not served");
    }
    let mut files = Vec::new();
    let mut bind = |path: &Path, mode: u32, gid: Option<u32>| -> Result<std::os::unix::net::UnixListener, BindError> {
        let (listener, file) = sockets::bind(path, mode, gid)?;
        files.push(file);
        Ok(listener)
    };
    let service = match inherited.service {
        Some(l) => l,
        None => bind(
            &p.service_socket,
            config.service_socket_mode,
            config.service_socket_group,
        )?,
    };
    let (admin_mode, admin_gid) = match config.admin_group {
        Some(g) => (0o660, Some(g)),
        None => (0o600, None),
    };
    let admin = match inherited.admin {
        Some(l) => l,
        None => bind(&p.admin_socket, admin_mode, admin_gid)?,
    };
    // 0600: only root (systemd, PID 1) and the agent's own user connect.
    let credentials = match (config.credentials_socket, inherited.credentials) {
        (false, _) => None,
        (true, Some(l)) => Some(l),
        (true, None) => Some(bind(&p.credentials_socket, 0o600, None)?),
    };
    let metrics = match &config.metrics_listen {
        None => None,
        Some(listen) => Some(crate::metrics::http::bind(listen).map_err(|source| BindError::Io {
            what: "[metrics] listen",
            path: listen.to_string().into(),
            source,
        })?),
    };
    Ok(Listeners {
        service,
        admin,
        metrics,
        credentials,
        files,
    })
}

/// Serves both sockets (and the metrics listener, if any) until `shutdown`
/// resolves, then drains.
pub async fn run(listeners: Listeners, agent: Arc<Agent>, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let limits = agent.config().limits.clone();
    let socket_files = listeners.files;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Files written into the store by other tools: applied until shutdown.
    // In fleet mode the store directory is only the local copy of what
    // OpenBao holds: changes come from there instead.
    let hot_reload = match &agent.fleet {
        None => Some(hot_reload::spawn(agent.clone(), stop_rx.clone())),
        Some(_) => None,
    };
    let mut fleet_tasks = agent
        .fleet
        .clone()
        .map(|fleet| crate::fleet::spawn(agent.clone(), fleet, stop_rx.clone()));
    if let (Some(tasks), Some(fleet)) = (fleet_tasks.as_mut(), agent.fleet.as_ref()) {
        // Serve what OpenBao holds from the start if it answers soon;
        // otherwise the local copy, and say so.
        let limit = fleet.config().initial_sync_timeout;
        if !tasks.first_round(limit).await || !fleet.in_sync() {
            tracing::warn!(address = %fleet.config().address, keys = agent.store.len(),
                "not in sync with OpenBao yet; serving the local copy until it is");
        } else {
            tracing::info!(address = %fleet.config().address, keys = agent.store.len(), "in sync with OpenBao");
        }
    }
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    agent.alerting.start_sinks(&agent.config().alerts);
    let ticks = tokio::spawn(alerting::run_ticks(agent.clone(), stop_rx.clone()));
    let refusal_windows = tokio::spawn(refusals::run(agent.clone(), stop_rx.clone()));
    let evictions = tokio::spawn(watch_evict::run(agent.clone(), stop_rx.clone()));
    let metrics_task = listeners.metrics.map(|listener| {
        let scraped = agent.clone();
        let render: crate::metrics::http::Render = Arc::new(move || {
            let snapshot = scraped.metrics_snapshot();
            scraped.metrics().render(&snapshot)
        });
        tokio::spawn(crate::metrics::http::serve(listener, render, stopped(stop_rx.clone())))
    });

    let keys = proto::keys_server::KeysServer::new(keys::KeysService::new(agent.clone()))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    let admin = proto::admin_server::AdminServer::new(admin::AdminService::new(agent.clone()))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);

    let service_incoming = incoming(tokio::net::UnixListener::from_std(listeners.service)?, agent.clone());
    let admin_incoming = incoming(tokio::net::UnixListener::from_std(listeners.admin)?, agent.clone());
    let credentials_task = match listeners.credentials {
        None => None,
        Some(l) => Some(tokio::spawn(creds::serve(
            tokio::net::UnixListener::from_std(l)?,
            agent.clone(),
            stop_rx.clone(),
            agent.config().shutdown_grace,
        ))),
    };
    // Streams per connection, pings, and calls counted for the idle limit:
    // see [limits] in crate::config.
    let builder = || {
        Server::builder()
            .max_concurrent_streams(limits.max_streams_per_connection)
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .http2_max_header_list_size(streams::MAX_HEADER_LIST_BYTES)
            .initial_connection_window_size(streams::RECEIVE_WINDOW_BYTES)
            .initial_stream_window_size(streams::RECEIVE_WINDOW_BYTES)
            .layer(streams::CallsLayer::new(&limits))
    };
    let mut service_task = tokio::spawn(
        builder()
            .add_service(keys)
            .serve_with_incoming_shutdown(service_incoming, stopped(stop_rx.clone())),
    );
    let mut admin_task = tokio::spawn(
        builder()
            .add_service(admin)
            .serve_with_incoming_shutdown(admin_incoming, stopped(stop_rx)),
    );

    let _ = agent
        .audit
        .record(AuditEvent {
            event: "agent_start",
            outcome: "ok",
            detail: Some(format!("pid {}, {} keys", std::process::id(), agent.store.len())),
            ..Default::default()
        })
        .await;

    let mut failure = None;
    tokio::select! {
        _ = shutdown => {}
        r = &mut service_task => failure = Some(format!("service socket server stopped: {r:?}")),
        r = &mut admin_task => failure = Some(format!("admin socket server stopped: {r:?}")),
    }
    if let Some(f) = &failure {
        tracing::error!("{f}");
    }
    tracing::info!("shutting down: no new connections; draining in-flight calls");
    let _ = stop_tx.send(true);
    // Watch streams never end by themselves: end them so the drain can.
    agent.watchers.close();
    let grace = agent.config().shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        let _ = (&mut service_task).await;
        let _ = (&mut admin_task).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?grace, "in-flight calls did not finish within the grace period; closing them");
        service_task.abort();
        admin_task.abort();
    }
    if let Some(task) = credentials_task {
        let _ = task.await;
    }
    if let Some(hot_reload) = hot_reload {
        hot_reload.finish().await;
    }
    if let Some(tasks) = fleet_tasks {
        tasks.finish().await;
    }
    let _ = ticks.await;
    let _ = evictions.await;
    if let Some(task) = metrics_task {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "the metrics listener failed"),
            Err(e) => tracing::error!(error = %e, "the metrics listener panicked"),
            Ok(Ok(())) => {}
        }
    }
    agent.alerting.stop_sinks().await;
    // The refusals counted in windows still open: after every call has
    // ended, before the last record.
    let _ = refusal_windows.await;
    agent.refusals.flush(&agent, true).await;
    let _ = agent
        .audit
        .record(AuditEvent {
            event: "agent_stop",
            outcome: "ok",
            ..Default::default()
        })
        .await;
    agent.audit.close().await;
    // Only the files it bound, and only if they are still its own; sockets
    // systemd passed stay in place (the .socket unit owns them).
    drop(socket_files);
    tracing::info!("stopped");
    match failure {
        Some(f) => Err(io::Error::other(f)),
        None => Ok(()),
    }
}

/// How long accepting pauses after a failed accept (e.g. out of file
/// descriptors): the connection stays queued, and retrying at once would
/// spin and flood the log.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Accepted connections with their callers attached, after the connection
/// limits: over the total limit a connection is closed at once; over the
/// per-uid limit it is kept but every call on it is refused with a message,
/// up to twice the limit; past that it is closed at once too, so that one
/// uid can never use up the total limit (or the descriptors) of everyone.
fn incoming(listener: tokio::net::UnixListener, agent: Arc<Agent>) -> impl Stream<Item = io::Result<PeerStream>> {
    let accepted = UnixListenerStream::new(listener).then(|accepted| async move {
        if let Err(e) = &accepted {
            tracing::warn!(error = %e, "accept failed; pausing accepts for {ACCEPT_BACKOFF:?}");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
        accepted
    });
    accepted.filter_map(move |accepted| {
        let stream = accepted.ok()?;
        let mut caller = match Caller::identify(&stream) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "peer left before it could be identified");
                return None;
            }
        };
        let config = agent.config();
        let limits = &config.limits;
        let (guard, per_uid, total) = agent.connections.register(caller.uid);
        caller.connection = Arc::new(peer::Connection::of_uid(guard.usage()));
        if total > limits.max_connections {
            tracing::warn!(uid = caller.uid, total, limit = limits.max_connections, "connection refused: agent is at its connection limit");
            return None;
        }
        if per_uid > limits.max_connections_per_uid.saturating_mul(2) {
            tracing::debug!(uid = caller.uid, per_uid, "connection closed: twice the per-uid limit is open");
            return None;
        }
        if per_uid > limits.max_connections_per_uid {
            caller.over_limit = Some(format!(
                "uid {} has {per_uid} connections open; the limit is {} (limits.max_connections_per_uid): reuse one connection per process",
                caller.uid, limits.max_connections_per_uid
            ));
        }
        Some(Ok(
            PeerStream::new(stream, Arc::new(caller), guard).with_idle_timeout(limits.idle_timeout)
        ))
    })
}
