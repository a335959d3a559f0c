//! [`Agent::serve`]: the only way a secret leaves the agent.
//!
//! Invariant: a key state is handed to the transport only inside a
//! [`Served`], and only `serve` makes one, after
//!
//! 1. the current policy allowed the caller to read the key (a refusal is
//!    audited, coalesced with others like it, see [`super::refusals`]);
//! 2. the record of what is handed out is written to the audit log (when it
//!    cannot be, nothing is handed out, unless the key's environment is
//!    configured fail-open).
//!
//! `GetKey`, every `WatchKeys` event and every `LoadCredential` answer go
//! through it; after a fetch or a watch event, the versions handed out are
//! noted for the caller, since reports are checked against them.

use std::sync::Arc;

use super::caller::Caller;
use super::error::ApiError;
use super::{reports, Agent, Right};
use crate::audit::{AuditEvent, VersionRecord};
use crate::audit::{Event, Outcome};
use crate::config::AuditFailureMode;
use crate::keyset::KeySetState;
use crate::secret::KeyRef;
use crate::watch::Reason;

/// How a key state leaves the agent.
#[derive(Clone, Copy, Debug)]
pub enum Via<'a> {
    /// `GetKey`: the state served now.
    Fetch,
    /// A `WatchKeys` event: a state published for `reason` (`None`: the key
    /// was deleted).
    Watch {
        /// Why it is sent.
        reason: Reason,
        /// What is sent.
        state: Option<&'a Arc<KeySetState>>,
    },
    /// `creds.sock`: credential `id` for `unit`, which the service manager
    /// vouches for.
    Credential {
        /// The credential id (`ENV.NAME`).
        id: &'a str,
        /// The unit being started.
        unit: &'a str,
    },
}

impl Via<'_> {
    /// The audit event of a delivery (and of its refusals).
    pub fn event(&self) -> Event {
        match self {
            Via::Fetch => Event::Fetch,
            Via::Watch { .. } => Event::Watch,
            Via::Credential { .. } => Event::Credential,
        }
    }
}

/// A key state the policy allowed and the audit recorded: what the
/// transport may send. `None` inside: a watch event for a deleted key.
#[derive(Debug)]
pub struct Served(Option<Arc<KeySetState>>);

impl Served {
    /// The state to send (`None`: the key was deleted).
    pub fn state(&self) -> Option<&Arc<KeySetState>> {
        self.0.as_ref()
    }
}

impl Agent {
    /// Checks that `caller` may read `key`, audits the delivery and hands
    /// out the state: fail closed (see the module docs).
    pub async fn serve(&self, caller: &Caller, key: &KeyRef, via: Via<'_>) -> Result<Served, ApiError> {
        let event = via.event();
        let metrics = self.metrics();
        let state = match via {
            Via::Fetch => {
                // Only names of existing keys become labels: a caller
                // cannot grow the metrics by asking for made-up keys.
                let state = self.store.get(key);
                let label = if state.is_some() { key.name() } else { "" };
                if let Err(e) = self.check_read(event, caller, key).await {
                    metrics.fetch(key.env(), label, "denied");
                    return Err(e);
                }
                let Some(state) = state else {
                    metrics.fetch(key.env(), "", "not_found");
                    let missing =
                        ApiError::NotFound(format!("key {key} does not exist: create it with `keyward put {key}`"));
                    return Err(self
                        .refuse(event, caller, Some(key.to_string()), Outcome::NotFound, missing)
                        .await);
                };
                Some(state)
            }
            Via::Watch { state, .. } => {
                if self.allows(caller, key, Right::Read).await.is_err() {
                    return Err(self
                        .watch_access_lost(caller, key, "is not allowed by the current config")
                        .await);
                }
                state.cloned()
            }
            Via::Credential { unit, .. } => {
                let who = crate::policy::UnitPrincipal { unit };
                if self.config().policy.credential_grant_for(&who, key).is_none() {
                    let denied = ApiError::PermissionDenied(format!(
                        "unit {unit} may not read {key}: no grant naming only units lists this unit for this key; add a [[grant]] with units = [{unit:?}]"
                    ));
                    return Err(self
                        .refuse(event, caller, Some(key.to_string()), Outcome::Denied, denied)
                        .await);
                }
                let Some(state) = self.store.get(key) else {
                    let missing =
                        ApiError::NotFound(format!("key {key} does not exist: create it with `keyward put {key}`"));
                    return Err(self
                        .refuse(event, caller, Some(key.to_string()), Outcome::NotFound, missing)
                        .await);
                };
                Some(state)
            }
        };
        let detail = match via {
            Via::Fetch => None,
            Via::Watch { reason, .. } => Some(reason.as_str().to_owned()),
            Via::Credential { id, unit } => Some(format!("LoadCredential {id} for {unit}")),
        };
        let record = AuditEvent {
            caller: Some(caller.record.clone()),
            key: Some(key.to_string()),
            versions: state.as_deref().map(served_versions).unwrap_or_default(),
            generation_after: state.as_ref().map(|s| s.generation),
            backend_version: state.as_ref().and_then(|s| s.backend_version),
            detail,
            ..AuditEvent::new(event, Outcome::Ok)
        };
        if let Err(e) = self.audit.record(record).await {
            match self.on_audit_failure(key) {
                AuditFailureMode::FailClosed => {
                    if let Via::Fetch = via {
                        metrics.fetch(key.env(), key.name(), "unavailable");
                    }
                    return Err(e.into());
                }
                AuditFailureMode::FailOpen => match via {
                    Via::Fetch => {
                        tracing::warn!(key = %key, error = %e, "serving without an audit record (environment is fail-open)")
                    }
                    Via::Watch { .. } => {
                        tracing::warn!(key = %key, error = %e, "watch event sent without an audit record (environment is fail-open)")
                    }
                    Via::Credential { .. } => {
                        tracing::warn!(key = %key, error = %e, "serving a credential without an audit record (environment is fail-open)")
                    }
                },
            }
        }
        match (via, &state) {
            (Via::Fetch, Some(s)) => {
                metrics.fetch(key.env(), key.name(), "ok");
                reports::note_served(self, caller, s).await;
            }
            (Via::Watch { .. }, Some(s)) => reports::note_served(self, caller, s).await,
            _ => {}
        }
        Ok(Served(state))
    }
}

impl Agent {
    /// Audits that `caller` lost access to watched `key` (`why`: "was
    /// removed by a config reload"…) and gives the error that ends the
    /// watch.
    pub async fn watch_access_lost(&self, caller: &Caller, key: &KeyRef, why: &str) -> ApiError {
        let msg = format!(
            "access to {key} {why}: {} may no longer read it, so this watch has ended; ask for a [[grant]] in the agent's config",
            caller.describe()
        );
        let denied = ApiError::PermissionDenied(msg);
        self.refuse(Event::Watch, caller, Some(key.to_string()), Outcome::Denied, denied)
            .await
    }
}

/// The versions a delivery hands out, as the audit records them.
pub fn served_versions(state: &KeySetState) -> Vec<VersionRecord> {
    let mut v = vec![VersionRecord {
        role: "primary",
        version: state.primary.number,
        fingerprint: state.primary.fingerprint.clone(),
    }];
    if let Some(f) = &state.fallback {
        v.push(VersionRecord {
            role: "fallback",
            version: f.number,
            fingerprint: f.fingerprint.clone(),
        });
    }
    v
}
