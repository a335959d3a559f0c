//! [`Agent::apply`]: the only way the served state of a key changes.
//!
//! Invariants:
//!
//! - Changes are serialized: `apply` takes a [`ChangeLock`], held from
//!   reading the state a change is based on until the change is applied,
//!   so that nothing commits in between.
//! - A change is durable before anyone sees it: written where the keys live
//!   (the store directory; in fleet mode the backend, check-and-set against
//!   the state served now, then the local copy), or already durable where
//!   it came from (the fleet backend, a key file written by another tool).
//!   A change that cannot be made durable leaves the old state serving.
//! - Before it is written, it is noted as in doubt and an `intent` record
//!   names the generation it will produce (see [`super::intents`]): a
//!   crash between the write and the change's own record leaves a note
//!   that the next start turns into that record before serving.
//! - Then it is audited, with the generation before and after and the
//!   versions it serves (and the one it dropped), then published to the
//!   watchers. A change whose record cannot be written still happened: the
//!   caller is told so ([`Applied::audit`]), and it is published anyway,
//!   since the store already serves it.

use std::sync::Arc;
use std::time::Instant;

use super::caller::Caller;
use super::error::ApiError;
use super::intents::Intent;
use super::serve::served_versions;
use super::Agent;
use crate::audit::{AuditError, AuditEvent, VersionRecord};
use crate::audit::{Event, Outcome};
use crate::keyset::{KeySetState, RotationState};
use crate::secret::KeyRef;
use crate::watch::{same_state, Reason};

/// Proof that changes are serialized: from [`Agent::lock_changes`].
pub struct ChangeLock<'a> {
    _serial: tokio::sync::MutexGuard<'a, ()>,
}

/// The new state of a key, and where it is made durable.
pub enum After {
    /// This state, written where the keys live: the store directory, or in
    /// fleet mode the backend (check-and-set against the state before) and
    /// then the local copy.
    Write(Box<KeySetState>),
    /// The key deleted where the keys live (as `Write`).
    Delete,
    /// This state, written to the local copy alone: it is durable in the
    /// fleet backend already (fleet follow).
    LocalCopy(Box<KeySetState>),
    /// The key deleted from the local copy alone (a deletion marker in the
    /// fleet backend).
    DeleteLocalCopy,
    /// This state, which the store has loaded from a file another tool
    /// wrote (hot reload): nothing to write.
    Loaded(Arc<KeySetState>),
}

/// One change of one key.
pub struct Change<'a> {
    /// The key.
    pub key: &'a KeyRef,
    /// The state served before (`None`: the key did not exist).
    pub before: Option<Arc<KeySetState>>,
    /// The state after, and where it is made durable.
    pub after: After,
    /// The audit event.
    pub event: Event,
    /// The reason watchers are given.
    pub reason: Reason,
    /// Who asked for it (`None`: the agent itself, from a file or the
    /// fleet).
    pub caller: Option<&'a Caller>,
    /// The audit record's detail.
    pub detail: Option<String>,
    /// Also name, in the audit record, the fallback the change dropped
    /// (retire, abort).
    pub name_dropped: bool,
    /// The fleet backend's version the change comes from, when it is not
    /// the new state's own (a deletion marker's); `None`: the state's.
    pub backend_version: Option<u64>,
}

/// A change that was applied.
pub struct Applied {
    /// The state now served (`None`: deleted), or for a deletion the state
    /// that was removed.
    pub state: Arc<KeySetState>,
    /// Whether the key was deleted.
    pub deleted: bool,
    /// `Err` when the change is durable but its audit record could not be
    /// written.
    pub audit: Result<(), AuditError>,
}

impl Agent {
    /// Serializes changes: hold it from reading the state a change is based
    /// on until [`Agent::apply`] returns.
    pub async fn lock_changes(&self) -> ChangeLock<'_> {
        ChangeLock {
            _serial: self.admin_lock.lock().await,
        }
    }

    /// Applies `change` (see the module docs). `Err`: nothing changed.
    pub async fn apply(&self, _serial: &ChangeLock<'_>, change: Change<'_>) -> Result<Applied, ApiError> {
        let Change {
            key,
            before,
            after,
            event,
            reason,
            caller,
            detail,
            name_dropped,
            backend_version,
        } = change;
        let started = Instant::now();
        let note = self
            .note_intent(key, event, caller, before.as_deref(), &after, detail.as_deref())
            .await;
        let written = async {
            Ok::<_, ApiError>(match after {
                After::Write(next) => {
                    let committed = match &self.fleet {
                        None => self.store.commit(*next)?,
                        Some(fleet) => fleet.commit(self, before.as_deref(), *next).await?,
                    };
                    (committed, false)
                }
                After::LocalCopy(next) => (self.store.replace(*next)?, false),
                After::Loaded(state) => (state, false),
                After::Delete => {
                    let existing = existing(key, before.as_deref())?;
                    let removed = match &self.fleet {
                        None => self.store.delete(key)?,
                        Some(fleet) => fleet.delete(self, existing).await?,
                    };
                    (removed, true)
                }
                After::DeleteLocalCopy => {
                    existing(key, before.as_deref())?;
                    (self.store.delete(key)?, true)
                }
            })
        }
        .await;
        let (state, deleted) = match written {
            Ok(w) => w,
            Err(e) => {
                if let Some(id) = note {
                    self.not_written(id, key, event, before.as_deref(), &e).await;
                }
                return Err(e);
            }
        };
        if deleted {
            self.served.forget(key);
            self.uses.forget(key);
            // A key created again starts without the old one's job
            // record (a running job ends by itself: its key is gone).
            self.jobs.forget(key);
        } else {
            let live: Vec<u64> = std::iter::once(state.primary.number)
                .chain(state.fallback.as_ref().map(|f| f.number))
                .collect();
            self.uses.keep_only(key, &live);
        }
        if !deleted && newly_promoted(before.as_deref(), &state) {
            // Failures reported from now on count against the new primary.
            self.failures.promoted(key, state.primary.number, started);
        }
        let after = (!deleted).then_some(&state);
        let mut versions = after
            .map(|s| served_versions(s))
            .or_else(|| before.as_deref().map(served_versions))
            .unwrap_or_default();
        if name_dropped {
            if let Some(dropped) = before.as_ref().and_then(|b| b.fallback.as_ref()) {
                versions.push(VersionRecord {
                    role: "dropped",
                    version: dropped.number,
                    fingerprint: dropped.fingerprint.clone(),
                });
            }
        }
        let record = AuditEvent {
            event,
            caller: caller.map(|c| c.record.clone()),
            key: Some(key.to_string()),
            versions,
            generation_before: before.as_ref().map(|s| s.generation),
            generation_after: after.map(|s| s.generation),
            backend_version: backend_version.or_else(|| after.or(before.as_ref()).and_then(|s| s.backend_version)),
            outcome: Outcome::Ok,
            detail,
            coalesced: None,
        };
        let audit = self.audit.record(record).await.map(|_| ());
        if let (Ok(()), Some(id)) = (&audit, note) {
            self.intents.done(id);
        }
        match after {
            None => self.watchers.publish(key, None, reason),
            Some(s) if !before.as_deref().is_some_and(|b| same_state(b, s)) => {
                self.watchers.publish(key, Some(s.clone()), reason)
            }
            Some(_) => {}
        }
        // A rotation job of the key looks again.
        self.jobs.wake(key);
        Ok(Applied { state, deleted, audit })
    }
}

impl Agent {
    /// Notes `after` as in doubt and records its intent (nothing for a
    /// state the store has loaded already). `None` when it could not be
    /// noted: the change goes on, as one whose record fails does.
    async fn note_intent(
        &self,
        key: &KeyRef,
        event: Event,
        caller: Option<&Caller>,
        before: Option<&KeySetState>,
        after: &After,
        detail: Option<&str>,
    ) -> Option<u64> {
        let (generation_after, versions) = match after {
            After::Write(next) | After::LocalCopy(next) => (Some(next.generation), served_versions(next)),
            After::Delete | After::DeleteLocalCopy => (None, before.map(served_versions).unwrap_or_default()),
            After::Loaded(_) => return None,
        };
        let generation_before = before.map(|s| s.generation);
        let intent = Intent {
            id: 0,
            key: key.to_string(),
            event: event.as_str().to_owned(),
            generation_before,
            generation_after,
        };
        let id = match self.intents.begin(intent) {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(key = %key, error = %e, "cannot note a change before writing it; a crash now would leave it without an audit record: check the state directory");
                return None;
            }
        };
        let _ = self
            .audit
            .record(AuditEvent {
                caller: caller.map(|c| c.record.clone()),
                key: Some(key.to_string()),
                versions,
                generation_before,
                generation_after,
                detail: detail.map(str::to_owned),
                ..AuditEvent::new(event, Outcome::Intent)
            })
            .await;
        Some(id)
    }

    /// The change noted as `id` failed before anything was written: its
    /// intent is closed as `not_applied`.
    async fn not_written(&self, id: u64, key: &KeyRef, event: Event, before: Option<&KeySetState>, e: &ApiError) {
        let record = AuditEvent {
            key: Some(key.to_string()),
            generation_before: before.map(|s| s.generation),
            generation_after: before.map(|s| s.generation),
            detail: Some(format!("not applied: {e}")),
            ..AuditEvent::new(event, Outcome::NotApplied)
        };
        if self.audit.record(record).await.is_ok() {
            self.intents.done(id);
        }
    }
}

/// The state a deletion removes; `NotFound` when there is none.
fn existing<'a>(key: &KeyRef, before: Option<&'a KeySetState>) -> Result<&'a KeySetState, ApiError> {
    before.ok_or_else(|| ApiError::NotFound(format!("key {key} does not exist; nothing was deleted")))
}

/// Whether `after` promoted a primary that `before` did not have promoted.
fn newly_promoted(before: Option<&KeySetState>, after: &KeySetState) -> bool {
    after.state == RotationState::Promoted
        && before.is_none_or(|b| b.state != RotationState::Promoted || b.primary.number != after.primary.number)
}
