//! Changes made on this agent: written to OpenBao with check-and-set first,
//! then to the local copy. Callers hold the agent's admin lock.

use std::sync::Arc;

use serde_json::json;

use super::kv::KvError;
use super::{Fleet, FORMAT};
use crate::keyset::KeySetState;
use crate::server::error::ApiError;
use crate::server::Agent;
use crate::store::record;

/// What the backend holds at a key's path, as far as a writer cares.
enum Current {
    /// Never written (or its metadata deleted).
    Absent,
    /// A deletion marker at this version, left by a key of this generation.
    Deleted { version: u64, generation: u64 },
    /// A live record this agent does not serve.
    Live { version: u64 },
}

impl Fleet {
    /// Writes `next` (the state after a change of `before`, the state this
    /// agent serves) to OpenBao with check-and-set, then to the local copy.
    /// A new key continues the generation of a deleted one.
    pub async fn commit(
        &self,
        agent: &Agent,
        before: Option<&KeySetState>,
        mut next: KeySetState,
    ) -> Result<Arc<KeySetState>, ApiError> {
        let key = next.key.clone();
        let path = self.key_path(&key);
        let cas = match before.and_then(|b| b.backend_version) {
            Some(v) => v,
            None => match self.current(&path, &key).await? {
                Current::Absent => 0,
                Current::Deleted { version, generation } => {
                    if before.is_none() {
                        next.generation = next.generation.max(generation + 1);
                    }
                    version
                }
                Current::Live { version } => {
                    self.poke();
                    return Err(ApiError::Aborted(format!(
                        "{key} exists in OpenBao (record version {version}) but this agent does not serve it yet: it has not synced it or cannot decrypt it (see `keyward status`); nothing was changed: retry in a moment"
                    )));
                }
            },
        };
        next.backend_version = Some(cas + 1);
        let plaintext =
            record::encode_bound(&next).map_err(|e| ApiError::InvalidArgument(format!("cannot store {key}: {e}")))?;
        let sealed = agent.store.seal_armored(&plaintext, &self.recipients)?;
        drop(plaintext);
        let data = json!({ "format": FORMAT, "record": sealed });
        let written = self
            .kv
            .write(&path, &data, Some(cas))
            .await
            .map_err(|e| self.write_error(&key, e))?;
        if written != cas + 1 {
            // check-and-set passed, so OpenBao numbered it cas + 1; anything
            // else is a server this agent does not understand.
            tracing::error!(key = %key, expected = cas + 1, got = written, "OpenBao numbered a check-and-set write unexpectedly");
        }
        next.backend_version = Some(written);
        let committed = agent.store.replace(next).map_err(|e| {
            ApiError::Unavailable(format!(
                "the change of {key} is in OpenBao (record version {written}) but this agent's local copy could not be written ({e}): the other agents serve it; fix the store directory, then restart this agent"
            ))
        })?;
        self.changed(&key, written).await;
        Ok(committed)
    }

    /// Deletes `existing` (the state this agent serves): a deletion marker
    /// with check-and-set, then the local copy.
    pub async fn delete(&self, agent: &Agent, existing: &KeySetState) -> Result<Arc<KeySetState>, ApiError> {
        let key = existing.key.clone();
        let path = self.key_path(&key);
        let cas = match existing.backend_version {
            Some(v) => v,
            None => match self.current(&path, &key).await? {
                Current::Absent => 0,
                Current::Deleted { version, .. } => version,
                Current::Live { version } => {
                    self.poke();
                    return Err(ApiError::Aborted(format!(
                        "{key} has a record in OpenBao (version {version}) that this agent does not serve: it has not synced it or cannot decrypt it (see `keyward status`); nothing was deleted"
                    )));
                }
            },
        };
        let data = json!({ "format": FORMAT, "deleted": true, "generation": existing.generation + 1 });
        let written = self
            .kv
            .write(&path, &data, Some(cas))
            .await
            .map_err(|e| self.write_error(&key, e))?;
        let removed = agent.store.delete(&key).map_err(|e| {
            ApiError::Unavailable(format!(
                "{key} is deleted in OpenBao (record version {written}) but this agent's local copy could not be removed ({e}): fix the store directory, then restart this agent"
            ))
        })?;
        self.changed(&key, written).await;
        Ok(removed)
    }

    /// Re-encrypts `state` (unchanged but for its record version) to the
    /// current recipients: after an agent joined the fleet.
    pub async fn reseal(&self, agent: &Agent, state: &KeySetState) -> Result<Arc<KeySetState>, ApiError> {
        self.commit(agent, Some(state), state.clone()).await
    }

    /// What the backend has at `path`, for a write this agent has no
    /// version for.
    async fn current(&self, path: &str, key: &crate::secret::KeyRef) -> Result<Current, ApiError> {
        let meta = self.kv.metadata(path).await.map_err(|e| self.write_error(key, e))?;
        let Some(meta) = meta else { return Ok(Current::Absent) };
        if meta.current_version == 0 {
            return Ok(Current::Absent);
        }
        let entry = self
            .kv
            .read_version(path, meta.current_version)
            .await
            .map_err(|e| self.write_error(key, e))?;
        let version = meta.current_version;
        match entry {
            Some(e) if e.data.get("deleted").and_then(|d| d.as_bool()) == Some(true) => Ok(Current::Deleted {
                version,
                generation: e.data.get("generation").and_then(|g| g.as_u64()).unwrap_or(0),
            }),
            // The current version was deleted with `bao kv delete`: it is
            // gone, and a write on top of it is a fresh start.
            None => Ok(Current::Deleted { version, generation: 0 }),
            Some(_) => Ok(Current::Live { version }),
        }
    }

    /// After a write: bumps the change marker (best effort: the others'
    /// periodic full comparison catches a lost bump) and republishes.
    async fn changed(&self, key: &crate::secret::KeyRef, version: u64) {
        let marker =
            json!({ "format": FORMAT, "key": key.to_string(), "version": version, "agent": self.cfg.agent_id });
        if let Err(e) = self.write_latest(&self.changes_path(), &marker).await {
            tracing::warn!(key = %key, error = %e, "wrote the change but could not bump the change marker; other agents see it at their next full comparison");
        }
        self.health().publish_due = true;
        self.poke.notify_one();
    }

    /// Writes a new version of a path where the last writer simply wins
    /// (the change marker, this agent's status), still with check-and-set
    /// against the version just read: so a mount with `cas_required = true`
    /// accepts it too.
    pub(super) async fn write_latest(&self, path: &str, data: &serde_json::Value) -> Result<u64, KvError> {
        let mut tries = 0;
        loop {
            let current = self.kv.metadata(path).await?.map_or(0, |m| m.current_version);
            match self.kv.write(path, data, Some(current)).await {
                Err(KvError::CasMismatch { .. }) if tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    fn write_error(&self, key: &crate::secret::KeyRef, e: KvError) -> ApiError {
        match e {
            KvError::CasMismatch { .. } => {
                self.poke();
                ApiError::Aborted(format!(
                    "{key} was changed in OpenBao by another agent or admin since this agent last synced it: nothing was changed; this agent is syncing now: check `keyward list` and retry"
                ))
            }
            e if e.is_unreachable() => ApiError::Unavailable(format!(
                "{e}; nothing was changed: changes need OpenBao (the agents keep serving their local copies meanwhile); retry when it is back"
            )),
            KvError::Denied { .. } | KvError::Auth(_) => ApiError::Unavailable(format!(
                "{e}; nothing was changed: give this agent's OpenBao token write access to {}/{}/",
                self.cfg.mount, self.cfg.prefix
            )),
            e => ApiError::Unavailable(format!("OpenBao refused the change of {key}: {e}; nothing was changed")),
        }
    }
}
