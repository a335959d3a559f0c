//! The follower: polls the change marker, compares every key when it moved
//! (and every `resync_interval` regardless), applies newer records to the
//! local copy and the watchers, and republishes this agent's status.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::{sign, BackendRecord, Fleet};
use crate::agent::apply::{After, Change};
use crate::agent::Agent;
use crate::alerts::detect::Subject;
use crate::alerts::Severity;
use crate::audit::Event;
use crate::openbao::{KvEntry, KvError};
use crate::secret::KeyRef;
use crate::store::reload::{check_no_reuse, same_state};
use crate::watch::Reason;

/// The follower's tasks.
pub struct FleetTasks {
    follower: tokio::task::JoinHandle<()>,
    renewal: tokio::task::JoinHandle<()>,
    first_round: watch::Receiver<bool>,
}

impl FleetTasks {
    /// Waits for the first sync attempt to end, at most `limit`.
    pub async fn first_round(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.first_round.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits for the tasks to end (after `stop`).
    pub async fn finish(self) {
        let _ = self.follower.await;
        let _ = self.renewal.await;
    }
}

/// Starts following the backend until `stop` turns true; on stop the
/// agent's published status is withdrawn.
pub fn spawn(agent: Arc<Agent>, fleet: Arc<Fleet>, stop: watch::Receiver<bool>) -> FleetTasks {
    let (done_tx, first_round) = watch::channel(false);
    let renewal = fleet.kv.spawn_renewal(stop.clone());
    let follower = tokio::spawn(follow(agent, fleet, stop, done_tx));
    FleetTasks {
        follower,
        renewal,
        first_round,
    }
}

async fn follow(
    agent: Arc<Agent>,
    fleet: Arc<Fleet>,
    mut stop: watch::Receiver<bool>,
    first_round: watch::Sender<bool>,
) {
    let republish = fleet.cfg.status_ttl / 3;
    let mut last_publish: Option<Instant> = None;
    loop {
        let full = {
            let h = fleet.health();
            h.force_full || h.last_full.is_none_or(|t| t.elapsed() >= fleet.cfg.resync_interval)
        };
        match fleet.sync_round(&agent, full).await {
            Ok(marker) => fleet.record_ok(marker, full),
            Err(e) => fleet.record_error(e.to_string()),
        }
        // The first attempt is over, whatever its outcome (`run` then
        // says whether the agent is in sync).
        let _ = first_round.send(true);
        fleet.raise_stale_alert(&agent);
        let due = fleet.health().publish_due || last_publish.is_none_or(|t| t.elapsed() >= republish);
        if due {
            let published = fleet.publish(&agent).await;
            let mut h = fleet.health();
            match published {
                Ok(()) => {
                    h.publish_due = false;
                    if h.publish_error.take().is_some() {
                        tracing::info!("publishing this agent's fleet status again");
                    }
                    last_publish = Some(Instant::now());
                }
                Err(e) => {
                    // Said once per distinct error: while it lasts, a fleet
                    // rotation stops counting this agent as live.
                    let e = e.to_string();
                    if h.publish_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(error = %e, "cannot publish this agent's fleet status; `keyward rotate --fleet` does not count it as live meanwhile");
                    }
                    h.publish_error = Some(e);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(fleet.cfg.poll_interval)) => {}
            _ = fleet.poke.notified() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if *stop.borrow() {
            break;
        }
    }
    fleet.withdraw().await;
}

/// Whether `e` makes the whole backend unreadable (rather than one key's
/// record).
fn ends_round(e: &KvError) -> bool {
    e.is_unreachable() || matches!(e, KvError::Auth(_) | KvError::Denied { .. } | KvError::Config(_))
}

/// `interval` ± 10 %: agents started together (a fleet restarted at
/// once) drift apart instead of polling OpenBao in bursts.
fn jittered(interval: Duration) -> Duration {
    use rand::Rng;
    interval.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
}

impl Fleet {
    /// One round: the marker, and every key if it moved or `full`. Returns
    /// the marker version, or the error that made the backend unreadable.
    async fn sync_round(&self, agent: &Agent, full: bool) -> Result<u64, KvError> {
        let marker = self
            .kv
            .metadata(&self.changes_path())
            .await?
            .map_or(0, |m| m.current_version);
        let seen = self.health().marker;
        if !full && seen == Some(marker) {
            return Ok(marker);
        }
        if seen != Some(marker) && marker > 0 {
            self.check_marker(agent, marker).await;
        }
        for env in agent.store.environments().map(str::to_owned).collect::<Vec<_>>() {
            self.sync_env(agent, &env).await?;
        }
        Ok(marker)
    }

    /// Checks the change marker's signature; one not signed by a member is
    /// reported (it only ever makes the agents compare every key, which
    /// they then do anyway: each record is checked on its own).
    async fn check_marker(&self, agent: &Agent, marker: u64) {
        let path = self.changes_path();
        let Ok(Some(entry)) = self.kv.read_version(&path, marker).await else {
            return;
        };
        let data = &entry.data;
        let key = data.get("key").and_then(|k| k.as_str()).unwrap_or_default();
        let version = data
            .get("version")
            .and_then(|v| v.as_u64())
            .unwrap_or_default()
            .to_string();
        let writer = data.get("agent").and_then(|a| a.as_str()).unwrap_or_default();
        let message = sign::canonical(
            sign::Kind::Changes,
            &self.full_path(&path),
            key,
            entry.version,
            &[version.as_bytes(), writer.as_bytes()],
        );
        if let Err(why) = sign::verify(data, &message, &Fleet::members(agent), None) {
            self.report_refused(agent, &path, None, entry.version, &why).await;
        }
    }

    /// Compares every key of `env`. An error that concerns one key is that
    /// key's problem and the round goes on; one that makes the backend
    /// unreadable (down, sealed, refused login) ends the round.
    async fn sync_env(&self, agent: &Agent, env: &str) -> Result<(), KvError> {
        // Read before OpenBao: a key this agent writes meanwhile is then
        // neither missing from the listing nor behind it.
        let served = agent.store.list(Some(env));
        let names = self.kv.list(&self.env_path(env)).await?;
        let mut present = BTreeSet::new();
        for name in names {
            if name.ends_with('/') {
                continue;
            }
            let key = match KeyRef::new(env, &name) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(env, name = ?name, error = %e, "ignoring a backend path that is not a valid key name");
                    continue;
                }
            };
            present.insert(key.clone());
            match self.sync_key(agent, &key).await {
                Ok(()) => {}
                Err(e) if ends_round(&e) => return Err(e),
                Err(e) => self.set_problem(&key, Some(format!("cannot read its record: {e}"))),
            }
        }
        // A key this agent serves from the backend whose path is gone: an
        // operator removed it outside keyward. Deleting is done with a
        // marker (`keyward delete`); a vanished path is reported and the
        // last good state keeps serving.
        for state in served {
            if state.backend_version.is_some() && !present.contains(&state.key) {
                self.set_problem(
                    &state.key,
                    Some("its record is missing from OpenBao (removed outside keyward?); the last good state keeps serving: `keyward delete` it, or `keyward fleet reseal` it to write it back".to_owned()),
                );
            }
        }
        Ok(())
    }

    /// Compares one key with the backend and applies a newer record.
    async fn sync_key(&self, agent: &Agent, key: &KeyRef) -> Result<(), KvError> {
        let local = agent.store.get(key);
        let path = self.key_path(key);
        let Some(meta) = self.kv.metadata(&path).await? else {
            return Ok(());
        };
        let current = meta.current_version;
        let local_version = local.as_ref().and_then(|s| s.backend_version).unwrap_or(0);
        if local.is_some() && current == local_version {
            self.set_problem(key, None);
            return Ok(());
        }
        if self.health().settled.get(key) == Some(&current) {
            return Ok(()); // a deletion marker or a refused record, already handled
        }
        if current < local_version {
            self.set_problem(
                key,
                Some(format!(
                    "OpenBao's record is version {current} but this agent serves version {local_version}: the record was recreated or rolled back outside keyward; the last good state keeps serving"
                )),
            );
            return Ok(());
        }
        if meta.versions.get(&current).is_some_and(|v| v.deleted || v.destroyed) {
            if local.is_some() {
                self.set_problem(
                    key,
                    Some(format!("OpenBao's current record (version {current}) was deleted outside keyward; the last good state keeps serving: `keyward delete` the key to remove it")),
                );
            }
            return Ok(());
        }
        let Some(entry) = self.kv.read_version(&path, current).await? else {
            return Ok(());
        };
        let version = entry.version;
        if !self.apply(agent, key, entry).await {
            // Nothing to serve from this version: not read again until
            // the path has a newer one.
            self.health().settled.insert(key.clone(), version);
        }
        Ok(())
    }

    /// Applies one record under the admin lock (a change made here at the
    /// same moment is either before or after, never interleaved). Returns
    /// whether the key now serves this version.
    async fn apply(&self, agent: &Agent, key: &KeyRef, entry: KvEntry) -> bool {
        let serial = agent.lock_changes().await;
        let local = agent.current(key);
        if local.as_ref().and_then(|s| s.backend_version).unwrap_or(0) >= entry.version && local.is_some() {
            return true; // applied meanwhile by a write of our own
        }
        let refuse = |why: String| {
            self.set_problem(key, Some(why));
            false
        };
        // Nothing is looked at further unless a member signed it for this
        // path and version.
        let record = BackendRecord::parse(&entry.data);
        let path = self.key_path(key);
        if let Some(message) = record.signed_message(&self.full_path(&path), key, entry.version) {
            if let Err(why) = sign::verify(&entry.data, &message, &Fleet::members(agent), None) {
                self.report_refused(agent, &path, Some(key), entry.version, &why).await;
                return refuse(format!(
                    "OpenBao's record version {} is refused: {why}; the last good state keeps serving",
                    entry.version
                ));
            }
        }
        if local.is_none() {
            // Never over a key file this agent could not load: it may be the
            // only copy of a secret.
            if let Err(e) = agent.check_loaded(key) {
                return refuse(e.to_string());
            }
        }
        let sealed = match record {
            BackendRecord::Sealed(sealed) => sealed,
            BackendRecord::Deleted { .. } => {
                self.set_problem(key, None);
                if local.is_some() {
                    let change = Change {
                        key,
                        before: local,
                        after: After::DeleteLocalCopy,
                        event: Event::FleetSync,
                        reason: Reason::Deleted,
                        caller: None,
                        detail: Some("deleted".to_owned()),
                        name_dropped: false,
                        backend_version: Some(entry.version),
                    };
                    match agent.apply(&serial, change).await {
                        Ok(applied) => {
                            audit_failed(key, applied.audit);
                            tracing::info!(key = %key, backend_version = entry.version, "deleted from the fleet");
                        }
                        Err(e) => return refuse(format!("cannot remove the local copy: {e}")),
                    }
                }
                return false;
            }
            BackendRecord::Foreign(why) => {
                return refuse(format!(
                    "OpenBao's record version {} {why}; the last good state keeps serving",
                    entry.version
                ))
            }
        };
        let state = match agent.open_armored(key.clone(), sealed) {
            Ok(s) => s,
            Err(e) => return refuse(format!("record version {}: {e}", entry.version)),
        };
        if state.backend_version != Some(entry.version) {
            return refuse(format!(
                "OpenBao's record version {} says it was written as version {}: it is a copy of an older record (a replay), refused; the last good state keeps serving",
                entry.version,
                state.backend_version.map_or("none".to_owned(), |v| v.to_string())
            ));
        }
        // A state this agent had from the fleet must lead to this one: a
        // lower generation is a rollback, a version number holding another
        // secret a forgery or a fork. (A key only this host had before it
        // joined the fleet is simply replaced by the fleet's.)
        if let Some(old) = local.as_ref().filter(|old| old.backend_version.is_some()) {
            if state.generation < old.generation {
                return refuse(format!(
                    "OpenBao's record version {} has generation {} but this agent serves generation {}: refused as a rollback; the last good state keeps serving",
                    entry.version, state.generation, old.generation
                ));
            }
            if let Err(why) = check_no_reuse(old, &state) {
                return refuse(format!("OpenBao's record version {}: {why}", entry.version));
            }
        }
        let unchanged = local.as_ref().is_some_and(|old| same_state(old, &state));
        if unchanged {
            // A re-encryption (reseal): nothing a client would see changes,
            // so it is not a change of the served state; only the local
            // copy is written again.
            if let Err(e) = agent.replace_local_copy(state) {
                return refuse(format!("cannot write the local copy: {e}"));
            }
            self.set_problem(key, None);
            self.health().publish_due = true;
            return true;
        }
        let backend_version = entry.version;
        let change = Change {
            key,
            before: local,
            after: After::LocalCopy(Box::new(state)),
            event: Event::FleetSync,
            reason: Reason::Fleet,
            caller: None,
            detail: Some("applied".to_owned()),
            name_dropped: false,
            backend_version: Some(entry.version),
        };
        let applied = match agent.apply(&serial, change).await {
            Ok(a) => a,
            Err(e) => return refuse(format!("cannot write the local copy: {e}")),
        };
        self.set_problem(key, None);
        self.health().publish_due = true;
        let committed = &applied.state;
        tracing::info!(key = %key, generation = committed.generation, backend_version,
            state = committed.state.as_str(), "applied a change from the fleet");
        audit_failed(key, applied.audit);
        true
    }

    /// While stale, keeps an agent-health alert open (it resolves a window
    /// after the agent is in sync again).
    fn raise_stale_alert(&self, agent: &Agent) {
        let now = SystemTime::now();
        let (stale_for, error) = {
            let h = self.health();
            (h.stale_for(now), h.last_error.clone())
        };
        if !self.over_stale_after(stale_for) {
            return;
        }
        let age = stale_for.map_or("never since this agent's state was created".to_owned(), |d| {
            format!("for {}s", d.as_secs())
        });
        agent.alerting.health(
            Subject::Agent("backend"),
            Severity::Critical,
            format!(
                "not in sync with OpenBao at {} {age} ({}): serving the local copy, which may be behind the fleet; bring OpenBao back or fix this agent's access",
                self.cfg.address,
                error.unwrap_or_else(|| "no error recorded".to_owned())
            ),
        );
    }
}

/// Logs a change from the fleet that was applied but not audited.
fn audit_failed(key: &KeyRef, audit: Result<(), crate::audit::AuditError>) {
    if let Err(e) = audit {
        tracing::error!(key = %key, error = %e, "applied a change from the fleet but its audit record failed");
    }
}
