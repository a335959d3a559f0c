//! The `Keys` service on the service socket: what local services call.
//!
//! Invariant: a key is answered only after the policy allowed the caller and
//! the fetch's audit record is written (fail closed unless the environment
//! is configured fail-open). Every refusal is audited too.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::peer::{caller_of, Caller};
use super::Agent;
use crate::audit::{AuditEvent, VersionRecord};
use crate::config::AuditFailureMode;
use crate::keyset::KeySetState;
use crate::proto;

/// The service-socket gRPC service.
pub struct KeysService {
    agent: Arc<Agent>,
}

impl KeysService {
    /// Serves `agent`'s keys.
    pub fn new(agent: Arc<Agent>) -> KeysService {
        KeysService { agent }
    }

    async fn get_key(&self, caller: &Arc<Caller>, req: &proto::GetKeyRequest) -> Result<proto::KeySet, ApiError> {
        let agent = &self.agent;
        let metrics = agent.metrics();
        if let Some(limit) = &caller.over_limit {
            metrics.fetch("", "", "over_limit");
            return Err(ApiError::ResourceExhausted(limit.clone()));
        }
        let key = match agent.key_ref(req.key.as_ref()) {
            Ok(k) => k,
            Err(e) => {
                metrics.fetch("", "", "invalid");
                let shown = req.key.as_ref().map(shown_key);
                return Err(agent.refuse("fetch", caller, shown, "invalid_argument", e).await);
            }
        };
        // Only names of existing keys become labels: a caller cannot grow
        // the metrics by asking for made-up keys.
        let state = agent.store.get(&key);
        let label = if state.is_some() { key.name() } else { "" };
        if let Err(e) = agent.check_read("fetch", caller, &key).await {
            metrics.fetch(key.env(), label, "denied");
            return Err(e);
        }
        let Some(state) = state else {
            metrics.fetch(key.env(), "", "not_found");
            let missing = ApiError::NotFound(format!("key {key} does not exist: create it with `keyward put {key}`"));
            return Err(agent
                .refuse("fetch", caller, Some(key.to_string()), "not_found", missing)
                .await);
        };
        let event = AuditEvent {
            event: "fetch",
            caller: Some(caller.record.clone()),
            key: Some(key.to_string()),
            versions: served_versions(&state),
            generation_after: Some(state.generation),
            backend_version: state.backend_version,
            outcome: "ok",
            ..Default::default()
        };
        if let Err(e) = self.agent.audit.record(event).await {
            match self.agent.on_audit_failure(&key) {
                AuditFailureMode::FailClosed => {
                    metrics.fetch(key.env(), key.name(), "unavailable");
                    return Err(e.into());
                }
                AuditFailureMode::FailOpen => {
                    tracing::warn!(key = %key, error = %e, "serving without an audit record (environment is fail-open)")
                }
            }
        }
        metrics.fetch(key.env(), key.name(), "ok");
        super::reports::note_served(agent, caller, &state).await;
        Ok(state.to_proto())
    }
}

/// The versions a fetch hands out, as the audit records them.
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

/// A key as the caller sent it, escaped and bounded, for audit records of
/// refusals.
pub fn shown_key(k: &proto::KeyRef) -> String {
    let mut s = format!("{:?}/{:?}", k.environment, k.name);
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

type EventStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::KeyEvent, Status>> + Send>>;

#[tonic::async_trait]
impl proto::keys_server::Keys for KeysService {
    async fn get_key(&self, request: Request<proto::GetKeyRequest>) -> Result<Response<proto::KeySet>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(self.get_key(&caller, request.get_ref()).await?))
    }

    type WatchKeysStream = EventStream;

    async fn watch_keys(
        &self,
        request: Request<proto::WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        let caller = caller_of(&request)?;
        let events = super::watch_stream::watch(self.agent.clone(), caller, request.into_inner()).await?;
        Ok(Response::new(Box::pin(events)))
    }

    async fn report_auth_failure(
        &self,
        request: Request<proto::AuthFailureReport>,
    ) -> Result<Response<proto::AuthFailureAck>, Status> {
        let caller = caller_of(&request)?;
        super::reports::report(&self.agent, &caller, request.get_ref()).await?;
        Ok(Response::new(proto::AuthFailureAck {}))
    }
}
