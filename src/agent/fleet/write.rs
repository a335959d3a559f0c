//! Changes made on this agent: written to OpenBao with check-and-set first,
//! then to the local copy. Callers hold the agent's admin lock.

use std::sync::Arc;

use serde_json::json;

use super::{sign, BackendRecord, Fleet, FORMAT};
use crate::agent::error::ApiError;
use crate::agent::Agent;
use crate::keyset::KeySetState;
use crate::openbao::KvError;
use crate::secret::KeyRef;
use crate::store::record;

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
        let (cas, deleted_generation) = self.base_version(agent, &key, &path, before).await?;
        if before.is_none() {
            if let Some(generation) = deleted_generation {
                next.generation = next.generation.max(generation + 1);
            }
        }
        next.backend_version = Some(cas + 1);
        let plaintext =
            record::encode_bound(&next).map_err(|e| ApiError::InvalidArgument(format!("cannot store {key}: {e}")))?;
        let recipients = self
            .recipients(agent)
            .map_err(|e| ApiError::Unavailable(format!("cannot seal {key} to the fleet: {e}")))?;
        let sealed = agent.store.seal_armored(&plaintext, &recipients)?;
        drop(plaintext);
        let mut value = json!({ "format": FORMAT, "record": sealed });
        self.sign(
            &mut value,
            sign::Kind::Key,
            &path,
            &key.to_string(),
            cas + 1,
            &[sealed.as_bytes()],
        );
        let written = self.write_cas(&key, &path, &value, cas).await?;
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
        let (cas, _) = self.base_version(agent, &key, &path, Some(existing)).await?;
        let generation = existing.generation + 1;
        let mut marker = json!({ "format": FORMAT, "deleted": true, "generation": generation });
        self.sign(
            &mut marker,
            sign::Kind::Deleted,
            &path,
            &key.to_string(),
            cas + 1,
            &[generation.to_string().as_bytes()],
        );
        let written = self.write_cas(&key, &path, &marker, cas).await?;
        let removed = agent.store.delete(&key).map_err(|e| {
            ApiError::Unavailable(format!(
                "{key} is deleted in OpenBao (record version {written}) but this agent's local copy could not be removed ({e}): fix the store directory, then restart this agent"
            ))
        })?;
        self.changed(&key, written).await;
        // As audited: the version written, the deletion marker's (the other
        // agents' fleet_sync records name the same one).
        Ok(Arc::new(KeySetState {
            backend_version: Some(written),
            ..(*removed).clone()
        }))
    }

    /// Refuses, with what a write would say, unless OpenBao answers and
    /// still holds the version of `state` this agent serves: checked before
    /// an irreversible step (the revoker) that a failed write would strand.
    pub async fn check_writable(&self, state: &KeySetState) -> Result<(), ApiError> {
        let key = &state.key;
        let current = self
            .kv
            .metadata(&self.key_path(key))
            .await
            .map_err(|e| self.write_error(key, e))?
            .map_or(0, |m| m.current_version);
        if current != state.backend_version.unwrap_or(0) {
            return Err(self.write_error(
                key,
                KvError::CasMismatch {
                    path: self.key_path(key),
                },
            ));
        }
        Ok(())
    }

    /// Re-encrypts `state` (unchanged but for its record version) to the
    /// current recipients: after an agent joined the fleet.
    pub async fn reseal(&self, agent: &Agent, state: &KeySetState) -> Result<Arc<KeySetState>, ApiError> {
        self.commit(agent, Some(state), state.clone()).await
    }

    /// The version a write of `key` checks against: the one this agent
    /// serves; for a key it has no version of, what OpenBao has (0: none),
    /// with the generation of a deletion marker found there. Refuses a key
    /// whose local file was not loaded, and a live record this agent does
    /// not serve.
    async fn base_version(
        &self,
        agent: &Agent,
        key: &KeyRef,
        path: &str,
        served: Option<&KeySetState>,
    ) -> Result<(u64, Option<u64>), ApiError> {
        if let Some(v) = served.and_then(|s| s.backend_version) {
            return Ok((v, None));
        }
        // Before anything reaches OpenBao: the file may be the only copy.
        agent.store.check_loaded(key)?;
        let Some(meta) = self.kv.metadata(path).await.map_err(|e| self.write_error(key, e))? else {
            return Ok((0, None));
        };
        let version = meta.current_version;
        if version == 0 {
            return Ok((0, None));
        }
        let entry = self
            .kv
            .read_version(path, version)
            .await
            .map_err(|e| self.write_error(key, e))?;
        let record = entry.as_ref().map(|e| BackendRecord::parse(&e.data));
        let signed = |record: &BackendRecord<'_>| {
            let entry = entry.as_ref().expect("a record was read");
            record
                .signed_message(&self.full_path(path), key, version)
                .is_some_and(|m| sign::verify(&entry.data, &m, &Fleet::members(agent), None).is_ok())
        };
        match record {
            // A member's marker: the new key continues its generation. One
            // nobody listed signed is written over, its generation ignored.
            Some(ref r @ BackendRecord::Deleted { generation }) if signed(r) => Ok((version, Some(generation))),
            Some(BackendRecord::Deleted { .. }) => Ok((version, Some(0))),
            // The current version was deleted with `bao kv delete`: it is
            // gone, and a write on top of it is a fresh start.
            None => Ok((version, Some(0))),
            Some(_) => {
                self.poke();
                Err(ApiError::Aborted(format!(
                    "{key} has a record in OpenBao (version {version}) that this agent does not serve: it has not synced it or cannot decrypt it (see `keyward status`); nothing was changed: retry in a moment"
                )))
            }
        }
    }

    /// Writes `data` at `path` with check-and-set against `cas`; the new
    /// version (always `cas + 1`). A refusal that is our own write, applied
    /// by OpenBao before the connection broke and sent again by the client,
    /// counts as done.
    async fn write_cas(&self, key: &KeyRef, path: &str, data: &serde_json::Value, cas: u64) -> Result<u64, ApiError> {
        let written = match self.kv.write(path, data, Some(cas)).await {
            Ok(v) => v,
            Err(KvError::CasMismatch { .. })
                if self
                    .kv
                    .read_version(path, cas + 1)
                    .await
                    .is_ok_and(|e| e.is_some_and(|e| e.data == *data)) =>
            {
                cas + 1
            }
            Err(e) => return Err(self.write_error(key, e)),
        };
        if written != cas + 1 {
            // The record says it is version cas + 1: as any other number the
            // other agents would refuse it as a replay.
            return Err(ApiError::Unavailable(format!(
                "OpenBao numbered the check-and-set write of {key} {written}, not {}: this is not a KV v2 engine keyward understands; the record is there but no agent will apply it",
                cas + 1
            )));
        }
        Ok(written)
    }

    /// After a write: bumps the change marker (best effort: the others'
    /// periodic full comparison catches a lost bump) and republishes.
    async fn changed(&self, key: &KeyRef, version: u64) {
        let path = self.changes_path();
        let make = |next: u64| {
            let mut marker =
                json!({ "format": FORMAT, "key": key.to_string(), "version": version, "agent": self.cfg.agent_id });
            self.sign(
                &mut marker,
                sign::Kind::Changes,
                &path,
                &key.to_string(),
                next,
                &[version.to_string().as_bytes(), self.cfg.agent_id.as_bytes()],
            );
            marker
        };
        if let Err(e) = self.write_latest(&path, make).await {
            tracing::warn!(key = %key, error = %e, "wrote the change but could not bump the change marker; other agents see it at their next full comparison");
        }
        self.health().publish_due = true;
        self.poke.notify_one();
    }

    /// Writes a new version of a path where the last writer simply wins
    /// (the change marker, this agent's status), still with check-and-set
    /// against the version just read: so a mount with `cas_required = true`
    /// accepts it too. `make(version)` is the value, signed as that version.
    pub(super) async fn write_latest(
        &self,
        path: &str,
        make: impl Fn(u64) -> serde_json::Value,
    ) -> Result<u64, KvError> {
        let mut tries = 0;
        loop {
            let current = self.kv.metadata(path).await?.map_or(0, |m| m.current_version);
            match self.kv.write(path, &make(current + 1), Some(current)).await {
                Err(KvError::CasMismatch { .. }) if tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    fn write_error(&self, key: &KeyRef, e: KvError) -> ApiError {
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
