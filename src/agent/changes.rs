//! The admin socket's changes to keys: put, delete and reseal, each through
//! [`Agent::apply`].
//!
//! Invariants: every change is checked against the generation the operator
//! expected (compare and swap), serialized with every other change, durable
//! before it returns, and audited with the generation before and after. A
//! refused change leaves the old state serving.

use std::time::SystemTime;

use super::apply::{After, Change};
use super::caller::Caller;
use super::error::ApiError;
use super::Agent;
use crate::audit::AuditError;
use crate::audit::Event;
use crate::keyset::KeySetState;
use crate::proto;
use crate::rotation;
use crate::secret::{KeyRef, Secret};
use crate::watch::Reason;
use crate::wire::{from_timestamp, ToInfo};

impl Agent {
    /// `PutKey`: creates a key, or overwrites one that is not mid-rotation.
    pub async fn put_key(&self, caller: &Caller, req: proto::PutKeyRequest) -> Result<proto::PutKeyResponse, ApiError> {
        let key = self.key_ref(req.key.as_ref())?;
        let limit = self.config().limits.max_secret_bytes;
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
        let expires_at = expiry(&key, req.expires_at.as_ref(), "stored")?;
        let secret = Secret::copy_from(&req.secret);
        drop(req.secret);

        let serial = self.lock_changes().await;
        let existing = self.store.get(&key);
        check_generation(&key, existing.as_deref(), req.expected_generation)?;
        let now = SystemTime::now();
        let next = match &existing {
            None => {
                if let Some(problem) = self.config().schedule_problem(&key) {
                    return Err(ApiError::FailedPrecondition(format!("{problem}; nothing was stored")));
                }
                KeySetState::create(key.clone(), self.store.new_version(1, secret, now, expires_at))
            }
            Some(old) if !req.overwrite => {
                return Err(ApiError::AlreadyExists(format!(
                    "key {key} already exists (generation {}): pass --overwrite to replace it, or rotate it with `keyward stage {key}`; nothing was changed",
                    old.generation
                )))
            }
            Some(old) => rotation::overwrite(old, self.store.new_version(0, secret, now, expires_at), now)?,
        };
        let change = Change {
            key: &key,
            before: existing,
            after: After::Write(Box::new(next)),
            event: Event::Put,
            reason: Reason::Put,
            caller: Some(caller),
            detail: req.overwrite.then(|| "overwrite".to_owned()),
            name_dropped: false,
            backend_version: None,
        };
        let applied = self.apply(&serial, change).await?;
        audited("put", &key, applied.audit)?;
        Ok(proto::PutKeyResponse {
            key: Some(applied.state.to_info()),
        })
    }

    /// `DeleteKey`.
    pub async fn delete_key(
        &self,
        caller: &Caller,
        req: proto::DeleteKeyRequest,
    ) -> Result<proto::DeleteKeyResponse, ApiError> {
        let key = self.key_ref(req.key.as_ref())?;
        let serial = self.lock_changes().await;
        let existing = self.store.get(&key);
        check_generation(&key, existing.as_deref(), req.expected_generation)?;
        if existing.is_none() {
            return Err(ApiError::NotFound(format!(
                "key {key} does not exist; nothing was deleted"
            )));
        }
        let change = Change {
            key: &key,
            before: existing,
            after: After::Delete,
            event: Event::Delete,
            reason: Reason::Deleted,
            caller: Some(caller),
            detail: None,
            name_dropped: false,
            backend_version: None,
        };
        let applied = self.apply(&serial, change).await?;
        audited("delete", &key, applied.audit)?;
        Ok(proto::DeleteKeyResponse {
            deleted: Some(applied.state.to_info()),
        })
    }

    /// `ResealFleet`: every key of `env` (all: `None`) written again to the
    /// fleet backend, sealed to the current recipients; nothing a client
    /// sees changes.
    pub async fn reseal_fleet(
        &self,
        caller: &Caller,
        env: Option<&str>,
    ) -> Result<proto::ResealFleetResponse, ApiError> {
        if self.fleet.is_none() {
            return Err(ApiError::FailedPrecondition(
                "this agent keeps its keys in its store directory ([backend] kind = \"local\"): there is nothing to reseal".to_owned(),
            ));
        }
        let mut resealed = Vec::new();
        for state in self.store.list(env) {
            let serial = self.lock_changes().await;
            // Re-read under the lock: a sync may have replaced it.
            let Some(current) = self.store.get(&state.key) else {
                continue;
            };
            let key = current.key.clone();
            let change = Change {
                key: &key,
                before: Some(current.clone()),
                after: After::Write(Box::new((*current).clone())),
                event: Event::Reseal,
                reason: Reason::Reseal,
                caller: Some(caller),
                detail: None,
                name_dropped: false,
                backend_version: None,
            };
            let applied = self.apply(&serial, change).await?;
            audited("reseal", &key, applied.audit)?;
            resealed.push(applied.state.to_info());
        }
        Ok(proto::ResealFleetResponse { resealed })
    }
}

/// A change that was applied and is durable, but whose audit record could
/// not be written: the operator is told plainly that it did happen.
fn audited(event: &str, key: &KeyRef, audit: Result<(), AuditError>) -> Result<(), ApiError> {
    audit.map_err(|e| {
        tracing::error!(key = %key, event, error = %e, "change applied but its audit record failed");
        ApiError::Unavailable(format!(
            "the {event} of {key} was applied and is durable, but its audit record could not be written ({e}): fix the audit disk; the agent withholds keys until it can audit"
        ))
    })
}

/// A new version's expiry, as asked: within range and in the future (a key
/// put or staged already expired would be served while every provider
/// refuses it). `what` is what the refusal says was not done ("stored").
pub fn expiry(
    key: &KeyRef,
    asked: Option<&prost_types::Timestamp>,
    what: &str,
) -> Result<Option<SystemTime>, ApiError> {
    let Some(t) = asked else { return Ok(None) };
    let at = from_timestamp(t).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "expires_at is out of range: give a date between 1970 and 9999; nothing was {what}"
        ))
    })?;
    let now = SystemTime::now();
    if at <= now {
        return Err(ApiError::InvalidArgument(format!(
            "the expiry given for {key}, {}, is not in the future (it is {} now): give a later time (RFC 3339, e.g. {}), or leave --expires out; nothing was {what}",
            humantime::format_rfc3339_seconds(at),
            humantime::format_rfc3339_seconds(now),
            humantime::format_rfc3339_seconds(now + std::time::Duration::from_secs(90 * 86400)),
        )));
    }
    Ok(Some(at))
}

/// Compare and swap: `expected` (0 = must not exist) must equal the key's
/// current generation.
pub fn check_generation(key: &KeyRef, current: Option<&KeySetState>, expected: Option<u64>) -> Result<(), ApiError> {
    let Some(expected) = expected else { return Ok(()) };
    let actual = current.map_or(0, |s| s.generation);
    if actual == expected {
        return Ok(());
    }
    Err(ApiError::Aborted(format!(
        "key {key} is at generation {actual}, not {expected}: someone else changed it; re-read it (`keyward list`) and retry"
    )))
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
