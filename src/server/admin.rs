//! The `Admin` service on the admin socket: operators change keys here.
//!
//! Invariants: only root, the agent's own user or the configured admin group
//! get past `AdminService::authorize`; changes are serialized by one lock,
//! durable before they return, and audited with the generation before and
//! after. A refused change leaves the old state serving.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::keys::served_versions;
use super::peer::{caller_of, Caller};
use super::rotate;
use super::Agent;
use crate::alerts::detect::Subject;
use crate::alerts::Severity;
use crate::audit::AuditEvent;
use crate::keyset::{from_timestamp, timestamp, KeySetState, RotationState};
use crate::proto;
use crate::rotation::Command;
use crate::secret::{KeyRef, Secret};

/// The admin-socket gRPC service.
pub struct AdminService {
    agent: Arc<Agent>,
}

impl AdminService {
    /// Administers `agent`.
    pub fn new(agent: Arc<Agent>) -> AdminService {
        AdminService { agent }
    }

    /// Refuses callers that are not root, the agent's user or in the admin
    /// group. The socket's mode already keeps them out; this is the second
    /// lock on the door (e.g. a socket passed in by a service manager).
    async fn authorize<T>(&self, req: &Request<T>) -> Result<Arc<Caller>, ApiError> {
        let caller = caller_of(req).map_err(|s| ApiError::PermissionDenied(s.message().to_owned()))?;
        if let Some(limit) = &caller.over_limit {
            return Err(ApiError::ResourceExhausted(limit.clone()));
        }
        let me = nix::unistd::geteuid().as_raw();
        let in_admin_group = self
            .agent
            .config()
            .admin_group
            .is_some_and(|g| caller.gid == g || caller.groups.contains(&g));
        if caller.uid == 0 || caller.uid == me || in_admin_group {
            return Ok(caller);
        }
        let msg = format!(
            "{} may not use the admin socket: run the command as root (or as a member of the configured admin_group)",
            caller.describe()
        );
        let denied = ApiError::PermissionDenied(msg);
        Err(self.agent.refuse("admin", &caller, None, "denied", denied).await)
    }

    async fn put_key(&self, caller: &Caller, req: proto::PutKeyRequest) -> Result<proto::PutKeyResponse, ApiError> {
        let key = self.agent.key_ref(req.key.as_ref())?;
        let limit = self.agent.config().limits.max_secret_bytes;
        if req.secret.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "the secret for {key} is empty: pipe the key on stdin (e.g. `printf %s \"$KEY\" | keyward put {key}`)"
            )));
        }
        if req.secret.len() > limit {
            return Err(ApiError::InvalidArgument(format!(
                "the secret for {key} is {} bytes; the limit is {limit} bytes (limits.max_secret_bytes): nothing was stored",
                req.secret.len()
            )));
        }
        let expires_at = match &req.expires_at {
            Some(t) => Some(from_timestamp(t).ok_or_else(|| {
                ApiError::InvalidArgument("expires_at is out of range: give a date between 1970 and 9999".into())
            })?),
            None => None,
        };
        let secret = Secret::copy_from(&req.secret);
        drop(req.secret);

        let _serial = self.agent.admin_lock.lock().await;
        let existing = self.agent.store.get(&key);
        check_generation(&key, existing.as_deref(), req.expected_generation)?;
        let now = SystemTime::now();
        let next = match &existing {
            None => KeySetState::create(key.clone(), self.agent.store.new_version(1, secret, now, expires_at)),
            Some(old) if !req.overwrite => {
                return Err(ApiError::AlreadyExists(format!(
                    "key {key} already exists (generation {}): pass --overwrite to replace it, or rotate it with `keyward stage {key}`; nothing was changed",
                    old.generation
                )))
            }
            Some(old) if old.state != RotationState::Steady => {
                return Err(ApiError::FailedPrecondition(format!(
                    "key {key} is mid-rotation ({}): finish the rotation or abort it before overwriting; nothing was changed",
                    old.state.as_str()
                )))
            }
            Some(old) => old.overwrite(self.agent.store.new_version(0, secret, now, expires_at), now),
        };
        let committed = self.agent.commit_change(existing.as_deref(), next).await?;
        self.agent.watchers.publish(&key, Some(committed.clone()), "put");
        self.audit_change(
            caller,
            "put",
            &key,
            existing.as_deref(),
            Some(&committed),
            req.overwrite,
        )
        .await?;
        Ok(proto::PutKeyResponse {
            key: Some(committed.to_info()),
        })
    }

    async fn delete_key(
        &self,
        caller: &Caller,
        req: proto::DeleteKeyRequest,
    ) -> Result<proto::DeleteKeyResponse, ApiError> {
        let key = self.agent.key_ref(req.key.as_ref())?;
        let _serial = self.agent.admin_lock.lock().await;
        let existing = self.agent.store.get(&key);
        check_generation(&key, existing.as_deref(), req.expected_generation)?;
        let Some(existing) = existing else {
            return Err(ApiError::NotFound(format!(
                "key {key} does not exist; nothing was deleted"
            )));
        };
        let removed = self.agent.delete_key(&existing).await?;
        self.agent.served.forget(&key);
        self.agent.watchers.publish(&key, None, "deleted");
        self.audit_change(caller, "delete", &key, Some(&removed), None, false)
            .await?;
        Ok(proto::DeleteKeyResponse {
            deleted: Some(removed.to_info()),
        })
    }

    /// Records a change that has already been made durable. If the record
    /// cannot be written the operator is told plainly that the change did
    /// happen.
    async fn audit_change(
        &self,
        caller: &Caller,
        event: &'static str,
        key: &KeyRef,
        before: Option<&KeySetState>,
        after: Option<&KeySetState>,
        forced: bool,
    ) -> Result<(), ApiError> {
        let record = AuditEvent {
            event,
            caller: Some(caller.record.clone()),
            key: Some(key.to_string()),
            versions: after.or(before).map(served_versions).unwrap_or_default(),
            generation_before: before.map(|s| s.generation),
            generation_after: after.map(|s| s.generation),
            backend_version: after.or(before).and_then(|s| s.backend_version),
            outcome: "ok",
            detail: forced.then(|| "overwrite".to_owned()),
            coalesced: None,
        };
        self.agent.audit.record(record).await.map(|_| ()).map_err(|e| {
            tracing::error!(key = %key, event, error = %e, "change applied but its audit record failed");
            ApiError::Unavailable(format!(
                "the {event} of {key} was applied and is durable, but its audit record could not be written ({e}): fix the audit disk; the agent withholds keys until it can audit"
            ))
        })
    }

    fn status(&self) -> proto::AgentStatus {
        let a = &self.agent;
        let audit = a.audit.status();
        let config = a.config();
        let p = &config.paths;
        proto::AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at: Some(timestamp(a.started_at)),
            service_socket: p.service_socket.display().to_string(),
            admin_socket: p.admin_socket.display().to_string(),
            store_dir: p.store_dir.display().to_string(),
            audit_file: p.audit_file.display().to_string(),
            environments: config.environments.keys().cloned().collect(),
            keys: a.store.len() as u64,
            connections: a.connections.total() as u64,
            audit_sequence: audit.sequence,
            audit_head: audit.head,
            audit_error: audit.error.unwrap_or_default(),
            memory_locked: a.memory_locked,
            agent_recipient: a.recipient.clone(),
            open_alerts: a
                .alerting
                .open_alert_list()
                .into_iter()
                .map(|alert| proto::OpenAlert {
                    dedup_key: alert.dedup_key,
                    signal: alert.signal.as_str().to_owned(),
                    severity: alert.severity.as_str().to_owned(),
                    key: alert.key.map(|k| k.to_string()).unwrap_or_default(),
                    summary: alert.summary,
                    opened_at: Some(timestamp(alert.opened_at)),
                    repeats: alert.repeat,
                })
                .collect(),
            sinks: a
                .alerting
                .sink_stats()
                .into_iter()
                .map(|s| proto::SinkStatus {
                    name: s.name,
                    kind: s.kind.to_owned(),
                    delivered: s.delivered,
                    failed: s.failed,
                    dropped: s.dropped,
                    retries: s.retries,
                    queued: s.queued,
                })
                .collect(),
            backend: Some(match &a.fleet {
                Some(fleet) => fleet.status(),
                None => proto::BackendStatus {
                    kind: config.backend.kind().to_owned(),
                    ..Default::default()
                },
            }),
        }
    }
}

impl AdminService {
    /// Promote, rollback and abort: authorize, then one rotation step.
    async fn step(
        &self,
        request: Request<proto::RotationRequest>,
        command: Command,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let r = request.into_inner();
        let done = rotate::transition(
            &self.agent,
            &caller,
            r.key.as_ref(),
            r.expected_generation,
            command,
            false,
        );
        Ok(Response::new(self.counted(command, r.key.as_ref(), done.await)?))
    }

    /// Counts a rotation step's result in the metrics; a step that could
    /// not be written (store or audit) also raises an agent-health alert.
    /// Hook failures raise theirs where they happen.
    fn counted<T>(
        &self,
        command: Command,
        key: Option<&proto::KeyRef>,
        done: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let result = match &done {
            Ok(_) => "ok",
            Err(ApiError::HookFailed(_)) => "failed",
            Err(ApiError::Unavailable(message)) => {
                let subject = match crate::secret::KeyRef::from_proto(key) {
                    Ok(k) => Subject::Key(k),
                    Err(_) => Subject::Agent("rotation"),
                };
                self.agent.alerting.health(
                    subject,
                    Severity::Critical,
                    format!("the {} step failed: {message}", command.as_str()),
                );
                "failed"
            }
            Err(_) => "refused",
        };
        self.agent.metrics().rotation(command.as_str(), result);
        done
    }
}

/// Compare and swap: `expected` (0 = must not exist) must equal the key's
/// current generation.
pub(super) fn check_generation(
    key: &KeyRef,
    current: Option<&KeySetState>,
    expected: Option<u64>,
) -> Result<(), ApiError> {
    let Some(expected) = expected else { return Ok(()) };
    let actual = current.map_or(0, |s| s.generation);
    if actual == expected {
        return Ok(());
    }
    Err(ApiError::Aborted(format!(
        "key {key} is at generation {actual}, not {expected}: someone else changed it; re-read it (`keyward list`) and retry"
    )))
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn put_key(&self, request: Request<proto::PutKeyRequest>) -> Result<Response<proto::PutKeyResponse>, Status> {
        let caller = self.authorize(&request).await?;
        Ok(Response::new(self.put_key(&caller, request.into_inner()).await?))
    }

    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        self.authorize(&request).await?;
        let env = self.agent.env_filter(&request.get_ref().environment)?;
        let keys = self.agent.store.list(env).iter().map(|k| k.to_info()).collect();
        Ok(Response::new(proto::ListKeysResponse { keys }))
    }

    async fn delete_key(
        &self,
        request: Request<proto::DeleteKeyRequest>,
    ) -> Result<Response<proto::DeleteKeyResponse>, Status> {
        let caller = self.authorize(&request).await?;
        Ok(Response::new(self.delete_key(&caller, request.into_inner()).await?))
    }

    async fn get_status(
        &self,
        request: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::AgentStatus>, Status> {
        self.authorize(&request).await?;
        Ok(Response::new(self.status()))
    }

    async fn stage_key(
        &self,
        request: Request<proto::StageKeyRequest>,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let key = request.get_ref().key.clone();
        let done = rotate::stage(&self.agent, &caller, request.into_inner()).await;
        Ok(Response::new(self.counted(Command::Stage, key.as_ref(), done)?))
    }

    async fn promote_key(
        &self,
        request: Request<proto::RotationRequest>,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        self.step(request, Command::Promote).await
    }

    async fn rollback_key(
        &self,
        request: Request<proto::RotationRequest>,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        self.step(request, Command::Rollback).await
    }

    async fn abort_key(
        &self,
        request: Request<proto::RotationRequest>,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        self.step(request, Command::Abort).await
    }

    async fn retire_key(
        &self,
        request: Request<proto::RetireKeyRequest>,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let r = request.into_inner();
        let done = rotate::transition(
            &self.agent,
            &caller,
            r.key.as_ref(),
            r.expected_generation,
            Command::Retire,
            r.force,
        );
        Ok(Response::new(self.counted(
            Command::Retire,
            r.key.as_ref(),
            done.await,
        )?))
    }

    async fn get_rotation_status(
        &self,
        request: Request<proto::RotationStatusRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        self.authorize(&request).await?;
        Ok(Response::new(rotate::status(
            &self.agent,
            request.get_ref().key.as_ref(),
        )?))
    }

    async fn get_fleet_status(
        &self,
        request: Request<proto::FleetStatusRequest>,
    ) -> Result<Response<proto::FleetStatus>, Status> {
        self.authorize(&request).await?;
        let Some(fleet) = &self.agent.fleet else {
            return Err(ApiError::FailedPrecondition(
                "this agent keeps its keys in its store directory ([backend] kind = \"local\"): there is no fleet; configure [backend] kind = \"openbao\" for fleet mode".to_owned(),
            )
            .into());
        };
        let key = match &request.get_ref().key {
            Some(k) => Some(self.agent.key_ref(Some(k))?),
            None => None,
        };
        Ok(Response::new(fleet.fleet_status(&self.agent, key.as_ref()).await?))
    }

    async fn reseal_fleet(
        &self,
        request: Request<proto::ResealFleetRequest>,
    ) -> Result<Response<proto::ResealFleetResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let Some(fleet) = self.agent.fleet.clone() else {
            return Err(ApiError::FailedPrecondition(
                "this agent keeps its keys in its store directory ([backend] kind = \"local\"): there is nothing to reseal".to_owned(),
            )
            .into());
        };
        let request = request.into_inner();
        let env = self.agent.env_filter(&request.environment)?;
        let mut resealed = Vec::new();
        for state in self.agent.store.list(env) {
            let _serial = self.agent.admin_lock.lock().await;
            // Re-read under the lock: a sync may have replaced it.
            let Some(current) = self.agent.store.get(&state.key) else {
                continue;
            };
            let committed = fleet.reseal(&self.agent, &current).await?;
            self.audit_change(&caller, "reseal", &current.key, Some(&current), Some(&committed), false)
                .await?;
            resealed.push(committed.to_info());
        }
        Ok(Response::new(proto::ResealFleetResponse { resealed }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_table() {
        let key: KeyRef = "prod/a".parse().unwrap();
        assert!(check_generation(&key, None, None).is_ok());
        assert!(check_generation(&key, None, Some(0)).is_ok());
        let e = check_generation(&key, None, Some(3)).unwrap_err();
        assert!(matches!(e, ApiError::Aborted(_)));
        assert!(e.to_string().contains("generation 0, not 3"), "{e}");
    }
}
