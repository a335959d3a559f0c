//! The running agent: its state behind a small API.
//!
//! [`Agent`] owns the store (in fleet mode: the local copy), the audit log,
//! the watchers, the report and served-version logs, alerting and the
//! config. Its fields are private; the transport ([`crate::server`]) calls
//! named operations:
//!
//! - [`Agent::serve`] is the only way a secret leaves the agent: the
//!   policy allows the caller, the audit record is written (fail closed
//!   unless the environment is fail-open), then the state is handed out.
//!   `GetKey`, every `WatchKeys` delivery and `creds.sock` go through it.
//! - [`Agent::apply`] is the only way the served state changes: checked,
//!   made durable (store or fleet backend), audited, then published to
//!   watchers. Admin changes, rotation steps, hot reload and fleet follow
//!   go through it.
//!
//! The rest of the agent's work lives beside it:
//!
//! - [`caller`]: who is calling, as the transport identified it.
//! - [`error`]: the agent's errors (the transport maps them to statuses).
//! - [`rotate`]: the rotation commands and their status.
//! - [`reports`]: auth failures reported by callers, and the versions
//!   each caller was served.
//! - [`refusals`]: refusals coalesced in the audit; [`audit_disk`]: its
//!   free space watched.
//! - [`alerting`]: detectors, sinks and the periodic tick;
//!   [`alert_state`]: the open alerts kept across restarts.
//! - [`hot_reload`], [`config_reload`]: files changed by other tools, and
//!   SIGHUP.
//! - [`watch_evict`]: watches that take nothing do not hold up rotations.
//! - `anchors`: the audit chain head published to `[[audit.anchor]]`, and
//!   old segments deleted by `[audit] retain`.
//! - [`fleet`]: following and publishing to the fleet backend.

pub mod alert_state;
pub mod alerting;
mod anchors;
pub mod apply;
pub mod audit_disk;
pub mod caller;
pub mod changes;
pub mod config_reload;
pub mod connections;
pub mod error;
pub mod fleet;
pub mod hot_reload;
pub mod intents;
pub mod jobs;
pub mod refusals;
pub mod reports;
pub mod rotate;
pub mod rotation_status;
pub mod serve;
pub mod status;
pub mod tasks;
pub mod watch_evict;

use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use nix::fcntl::Flock;

use crate::audit::{Audit, AuditError, AuditOptions};
use crate::audit::{Event, Outcome};
use crate::config::{AuditFailureMode, Config};
use crate::hygiene::HygieneReport;
use crate::keyset::KeySetState;
use crate::proto;
use crate::secret::{Fingerprinter, KeyRef};
use crate::sockets::{self, BindError};
use crate::store::identity::{AgentIdentity, InstallKey, SigningKey};
use crate::store::{Store, StoreError, StoreOptions};
use crate::wire::FromWire;
use caller::Caller;
use error::ApiError;

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
    Fleet(#[from] crate::agent::fleet::FleetError),
    /// The rotation jobs file.
    #[error(transparent)]
    Jobs(#[from] jobs::JobsFileError),
    /// A key's schedule cannot be followed.
    #[error("{0}")]
    Schedule(String),
    /// The change intents file.
    #[error("{0}")]
    Intents(String),
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
    store: Store,
    /// Fleet mode: the shared backend the keys come from.
    fleet: Option<Arc<crate::agent::fleet::Fleet>>,
    /// The audit log.
    audit: Audit,
    /// Open connections.
    connections: Arc<connections::ConnectionTracker>,
    /// When the agent started.
    started_at: SystemTime,
    /// Whether `mlockall` succeeded.
    memory_locked: bool,
    /// The agent identity's public key (`age1…`).
    recipient: String,
    /// Serializes every change to the store.
    admin_lock: tokio::sync::Mutex<()>,
    /// WatchKeys subscribers, per key.
    watchers: crate::watch::Watchers,
    /// Auth failures reported by clients.
    failures: reports::FailureLog,
    /// The versions served to each uid, which reports are checked against.
    served: reports::ServedLog,
    /// Successful use reported by clients: a rotation's evidence.
    uses: reports::UseLog,
    /// Each key's rotation job.
    jobs: jobs::Jobs,
    /// Changes noted before they are written (see [`intents`]).
    intents: intents::Intents,
    /// Detectors, report limits, sinks and metrics.
    alerting: Arc<alerting::Alerting>,
    /// Refusals coalesced in the audit (`[audit] coalesce_window`).
    refusals: refusals::Refusals,
    /// The audit log's free space, against `[audit] min_free`.
    audit_disk: audit_disk::DiskWatch,
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
            crate::config::backend::BackendConfig::OpenBao(cfg) => {
                // Created with the identity by `keyward init` (and here in
                // dev mode). A system install from before fleet signing has
                // none: the agent refuses to start and says to run `keyward
                // init`, rather than make a key nobody listed (its writes
                // would be refused by every other member until its entry is
                // pasted everywhere: the operator has to act either way).
                let signer = if config.dev_mode {
                    SigningKey::load_or_create(&p.signing_key_file)?
                } else {
                    SigningKey::load(&p.signing_key_file)?
                };
                let fleet = crate::agent::fleet::Fleet::new(cfg, recipient.clone(), signer, &p.state_dir)?;
                fleet.check_listed(&cfg.members);
                Some(Arc::new(fleet))
            }
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
        if let Some(problem) = store.list(None).iter().find_map(|s| config.schedule_problem(&s.key)) {
            return Err(StartError::Schedule(problem));
        }
        let jobs = jobs::Jobs::load(&p.state_dir)?;
        let intents = intents::Intents::load(&p.state_dir).map_err(StartError::Intents)?;
        let audit = Audit::start(AuditOptions {
            path: p.audit_file.clone(),
            key: install_key.audit_key(),
            durability: config.audit.durability,
            fsync_interval: config.audit.fsync_interval,
            max_batch: config.audit.max_batch,
            segment_size: config.audit.segment_size,
            segment_age: config.audit.segment_age,
        })?;
        let alerting = Arc::new(alerting::Alerting::new(
            &config.alerts,
            Arc::new(crate::metrics::Metrics::new()),
        ));
        alerting.adopt_saved(&p.state_dir);
        audit.observe(Arc::new(alerting::AuditWatch(alerting.clone())));
        Ok(Agent {
            alerting,
            refusals: refusals::Refusals::new(config.audit.coalesce_window),
            audit_disk: audit_disk::DiskWatch::default(),
            store,
            fleet,
            audit,
            connections: Arc::default(),
            started_at: SystemTime::now(),
            memory_locked: hygiene.memory_locked,
            recipient,
            admin_lock: tokio::sync::Mutex::new(()),
            watchers: crate::watch::Watchers::default(),
            failures: reports::FailureLog::default(),
            served: reports::ServedLog::default(),
            uses: reports::UseLog::default(),
            jobs,
            intents,
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

    /// Open connections, counted for the limits, status and metrics.
    pub fn connections(&self) -> &Arc<connections::ConnectionTracker> {
        &self.connections
    }

    /// The state `key` serves now, if it exists. For the transport's own
    /// checks only: a secret leaves the agent through [`Agent::serve`].
    pub fn current(&self, key: &KeyRef) -> Option<Arc<KeySetState>> {
        self.store.get(key)
    }

    /// Every key of `env` (all: `None`), for listings.
    pub fn list(&self, env: Option<&str>) -> Vec<Arc<KeySetState>> {
        self.store.list(env)
    }

    /// How many watch subscriptions are open.
    pub fn watch_count(&self) -> usize {
        self.watchers.count()
    }

    /// How many keys the agent serves.
    pub fn key_count(&self) -> usize {
        self.store.len()
    }

    /// Fleet mode: the backend the keys come from.
    pub fn fleet(&self) -> Option<&Arc<fleet::Fleet>> {
        self.fleet.as_ref()
    }

    /// The audit log (status, and the records of the agent's own events).
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Subscribes `caller` to changes of `keys`, within `caps`; `close`
    /// ends its connection when the subscription is evicted.
    pub fn subscribe(
        &self,
        keys: &[KeyRef],
        caller: &Caller,
        kind: crate::watch::ClientKind,
        caps: crate::watch::WatchCaps,
        close: crate::watch::CloseConnection,
    ) -> Result<crate::watch::Subscription, crate::watch::WatchRefused> {
        self.watchers
            .subscribe(keys, caller.record.clone(), kind, caps, Some(close))
    }

    /// Refuses to write over a key file the store could not load: it may be
    /// the only copy of a secret.
    pub fn check_loaded(&self, key: &KeyRef) -> Result<(), StoreError> {
        self.store.check_loaded(key)
    }

    /// Decrypts and decodes a record from the fleet backend.
    pub fn open_armored(&self, key: KeyRef, sealed: &str) -> Result<KeySetState, StoreError> {
        self.store.open_armored(key, sealed)
    }

    /// Writes the local copy of a state the fleet backend holds, when it is
    /// the state served already (a re-encryption).
    pub fn replace_local_copy(&self, state: KeySetState) -> Result<Arc<KeySetState>, StoreError> {
        self.store.replace(state)
    }

    /// Fleet mode: that a change of `state` can be written to the backend
    /// now, before an irreversible step (a revocation) depends on it.
    pub async fn check_writable(&self, state: &KeySetState) -> Result<(), ApiError> {
        match &self.fleet {
            Some(fleet) => fleet.check_writable(state).await,
            None => Ok(()),
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
        event: Event,
        caller: &Caller,
        key: Option<String>,
        outcome: Outcome,
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
    /// (once per connection, see `crate::server::identity`). `Err` carries why the
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
    pub async fn check_read(&self, event: Event, caller: &Caller, key: &KeyRef) -> Result<(), ApiError> {
        let why_not = match self.allows(caller, key, Right::Read).await {
            Ok(()) => return Ok(()),
            Err(why_not) => why_not,
        };
        self.metrics().denial("service", event.as_str());
        let denied = ApiError::PermissionDenied(format!(
            "{} may not read {key}: no grant in the policy names this caller for this key{}; add a [[grant]] to the agent's config",
            caller.describe(),
            unverified(why_not.as_deref()),
        ));
        Err(self
            .refuse(event, caller, Some(key.to_string()), Outcome::Denied, denied)
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
