//! The rotation commands of the `Admin` service: stage, promote, rollback,
//! abort, retire, and the rotation status `keyward rotate` polls.
//!
//! Invariants: the state machine ([`crate::rotation`]) decides what is
//! allowed; every accepted command is committed to disk, then pushed to
//! watchers, then audited, before it returns. Hooks get secrets only on
//! stdin. The generator and validator run before the admin lock is taken
//! (they may be slow) and the key's generation is re-checked afterwards;
//! the revoker runs under the lock, before the old key is dropped, so that
//! a failed revoke leaves the key promoted and retryable.

use std::sync::Arc;
use std::time::SystemTime;

use super::apply::{After, Change, ChangeLock};
use super::caller::Caller;
use super::changes::check_generation;
use super::error::ApiError;
use super::reports::Evidence;
use super::Agent;
use crate::alerts::detect::Subject;
use crate::alerts::Severity;
use crate::config::KeyRotation;
use crate::hooks;
use crate::keyset::KeySetState;
use crate::proto;
use crate::rotation::{self, Command, RetireGate, RotationError};
use crate::secret::{KeyRef, Secret};
use crate::wire::FromWire;
use crate::wire::ToInfo;

impl From<RotationError> for ApiError {
    fn from(e: RotationError) -> ApiError {
        ApiError::FailedPrecondition(e.to_string())
    }
}

/// A hook failed: raised as an agent-health alert on `key`, returned as
/// the caller's error.
fn hook_failed(agent: &Agent, key: &KeyRef, message: String) -> ApiError {
    agent
        .alerting
        .health(Subject::Key(key.clone()), Severity::Warning, message.clone());
    ApiError::HookFailed(message)
}

pub(super) fn existing(agent: &Agent, key: &KeyRef) -> Result<Arc<KeySetState>, ApiError> {
    agent.store.get(key).ok_or_else(|| {
        ApiError::NotFound(format!(
            "key {key} does not exist: create it with `keyward put {key}` before rotating it"
        ))
    })
}

/// Who takes a rotation step, for its audit record: a caller of the admin
/// socket, or the agent's rotation job (`job` says which and who started
/// it).
#[derive(Clone, Copy)]
pub enum Actor<'a> {
    /// `StageKey`, `PromoteKey`… from this caller.
    Caller(&'a Caller),
    /// A rotation job, e.g. "rotation job (schedule)".
    Job(&'a str),
}

impl Actor<'_> {
    fn caller(&self) -> Option<&Caller> {
        match self {
            Actor::Caller(c) => Some(c),
            Actor::Job(_) => None,
        }
    }
}

/// Where a new key comes from.
pub enum NewKey {
    /// Given by the caller.
    Given(Secret),
    /// Made by the key's generator hook.
    Generate,
}

/// A rotation step that was applied.
pub struct Committed {
    /// The key's state after it.
    pub state: Arc<KeySetState>,
    /// The generation before it.
    pub generation_before: u64,
    /// Notes from hooks, never secrets.
    pub notes: Vec<String>,
}

impl Committed {
    fn response(self) -> proto::RotationResponse {
        proto::RotationResponse {
            key: Some(self.state.to_info()),
            generation_before: self.generation_before,
            notes: self.notes,
        }
    }
}

/// `StageKey`: a new key becomes the fallback.
pub async fn stage(
    agent: &Arc<Agent>,
    caller: &Caller,
    req: proto::StageKeyRequest,
) -> Result<proto::RotationResponse, ApiError> {
    let key = agent.key_ref(req.key.as_ref())?;
    let new = match (req.generate, req.secret.is_empty()) {
        (true, false) => {
            return Err(ApiError::InvalidArgument(
                "give either a secret or --generate, not both".to_owned(),
            ))
        }
        (true, true) => NewKey::Generate,
        (false, true) => {
            return Err(ApiError::InvalidArgument(format!(
                "no new secret for {key}: pipe it on stdin, or use --generate with a configured generator hook"
            )))
        }
        (false, false) => {
            let limit = agent.config().limits.max_secret_bytes;
            if req.secret.len() > limit {
                return Err(ApiError::InvalidArgument(format!(
                    "the new secret for {key} is {} bytes; the limit is {limit} bytes (limits.max_secret_bytes): nothing was staged",
                    req.secret.len()
                )));
            }
            NewKey::Given(Secret::copy_from(&req.secret))
        }
    };
    drop(req.secret);
    let expires_at = super::changes::expiry(&key, req.expires_at.as_ref(), "staged")?;
    let done = stage_new(
        agent,
        Actor::Caller(caller),
        &key,
        new,
        req.replace,
        req.expected_generation,
        expires_at,
    )
    .await?;
    Ok(done.response())
}

/// Stages a new key for `key`: made by the generator or given, checked by
/// the validator, then committed if the key did not change meanwhile.
pub async fn stage_new(
    agent: &Arc<Agent>,
    actor: Actor<'_>,
    key: &KeyRef,
    new: NewKey,
    replace: bool,
    expected_generation: Option<u64>,
    expires_at: Option<SystemTime>,
) -> Result<Committed, ApiError> {
    let config = agent.config();
    let settings = config.rotation_for(key);
    let limit = config.limits.max_secret_bytes;
    let before = existing(agent, key)?;
    check_generation(key, Some(&before), expected_generation)?;
    // Refuse early (before running any hook) when the state forbids it.
    rotation::may_stage(&before, replace)?;
    not_rotated_elsewhere(agent, &actor, key).await?;
    let (secret, origin) = match new {
        NewKey::Generate => {
            let Some(generator) = &settings.generator else {
                return Err(ApiError::FailedPrecondition(format!(
                    "no generator hook is configured for {key}: pipe the new key on stdin, or add a [[key]] entry with generator = [...] to the config"
                )));
            };
            (
                hooks::generate(generator, settings.hook_timeout, limit)
                    .await
                    .map_err(|e| hook_failed(agent, key, format!("{e}; nothing was changed")))?,
                "generated",
            )
        }
        NewKey::Given(secret) => (secret, "provided"),
    };
    let now = SystemTime::now();
    let version = agent.store.new_version(0, secret, now, expires_at);
    rotation::must_differ(&before, &version.fingerprint)?;
    let mut notes = vec![format!("new key {origin}, fingerprint {}", version.fingerprint)];
    if let Some(validator) = &settings.validator {
        hooks::validate(validator, &version.secret, settings.hook_timeout)
            .await
            .map_err(|e| hook_failed(agent, key, format!("{e}; nothing was changed")))?;
        notes.push("validator accepted the new key".to_owned());
    }

    let serial = agent.lock_changes().await;
    let current = existing(agent, key)?;
    if current.generation != before.generation {
        return Err(ApiError::Aborted(format!(
            "key {key} changed (generation {} → {}) while the new key was being prepared: nothing was staged; retry",
            before.generation, current.generation
        )));
    }
    let next = rotation::stage(&current, version, replace, now)?;
    commit(agent, &serial, actor, Command::Stage, current, next, notes.join("; ")).await
}

/// Fleet mode: refuses a rotation step by hand (`keyward stage`,
/// `promote`, `retire`…) while another member holds the key's rotation
/// lease: its job runs the rotation. A job's own steps are checked against
/// its lease by its driver; an unreadable lease does not hold a step (the
/// step's own write needs OpenBao and says so).
async fn not_rotated_elsewhere(agent: &Agent, actor: &Actor<'_>, key: &KeyRef) -> Result<(), ApiError> {
    let (Some(fleet), Actor::Caller(_)) = (agent.fleet(), actor) else {
        return Ok(());
    };
    let Ok(lease) = fleet.lease_of(agent, key).await else {
        return Ok(());
    };
    match lease {
        Some(l) if l.live(SystemTime::now()) && l.holder != fleet.config().agent_id => {
            Err(ApiError::FailedPrecondition(format!(
                "agent {} is rotating {key}: it holds the key's rotation lease (until {}); nothing was done. Follow or cancel its job there (`keyward rotation-status {key}`, `keyward rotate --cancel {key}`); if that agent stopped, a member takes the rotation over once the lease expires",
                l.holder,
                humantime::format_rfc3339_seconds(l.expires())
            )))
        }
        _ => Ok(()),
    }
}

/// What the retire gate of a key is checked against: the failures reported
/// since its promotion and by whom, the quorum, and when it was promoted.
/// In a fleet, [`GateFacts::gather`] adds what the other live members
/// published of the same primary.
pub(super) struct GateFacts {
    pub(super) evidence: Evidence,
    pub(super) fallback_failures: u64,
    pub(super) reported_by: String,
    pub(super) quorum: u64,
    pub(super) promoted_ago: Option<std::time::Duration>,
    pub(super) users: u64,
    pub(super) evidence_quorum: u64,
    pub(super) validated: bool,
    /// Distinct reporters of failures on the other members.
    pub(super) peer_reporters: u64,
    /// Uids that may report and were served the primary, here.
    pub(super) served_reporters: u64,
    /// Fleet mode: the members whose reports cannot all be counted yet.
    pub(super) members_incomplete: Vec<String>,
}

impl GateFacts {
    pub(super) fn of(agent: &Agent, current: &KeySetState, settings: &KeyRotation) -> GateFacts {
        let (evidence, fallback_failures) = agent.failures.since_promotion(current);
        GateFacts {
            reported_by: evidence.names(),
            evidence,
            fallback_failures,
            quorum: agent.served.quorum(current, settings.report_quorum),
            promoted_ago: agent.failures.promoted_ago(current),
            users: agent.uses.users(&current.key, current.primary.number).len() as u64,
            evidence_quorum: settings.evidence_quorum,
            validated: agent.jobs.validated(&current.key, current.primary.number),
            peer_reporters: 0,
            served_reporters: agent.served.served_reporters(current),
            members_incomplete: Vec::new(),
        }
    }

    /// [`GateFacts::of`], and in a fleet with a promoted primary, the
    /// evidence the other live members published for it: failures, their
    /// reporters, users and the callers served it count across the fleet.
    /// When the fleet's status cannot be read, the local evidence alone
    /// (`Err` says why, for the wait's text).
    pub(super) async fn gather(
        agent: &Agent,
        current: &KeySetState,
        settings: &KeyRotation,
    ) -> (GateFacts, Result<(), String>) {
        let mut facts = GateFacts::of(agent, current, settings);
        let Some(fleet) = agent.fleet() else {
            return (facts, Ok(()));
        };
        if current.state != crate::keyset::RotationState::Promoted {
            return (facts, Ok(()));
        }
        match fleet.peer_evidence(agent, current).await {
            Ok(peers) => {
                facts.add_peers(&peers, settings);
                (facts, Ok(()))
            }
            Err(e) => (facts, Err(e)),
        }
    }

    /// Adds the other members' evidence, and notes the members whose
    /// callers' reports cannot all be counted yet: one that has counted
    /// for less than the grace (since it applied the promotion, or since it
    /// started when that was later), or whose status went missing after it
    /// published evidence.
    pub(super) fn add_peers(&mut self, peers: &super::fleet::status::PeerEvidence, settings: &KeyRotation) {
        self.members_incomplete = peers.incomplete(settings.grace);
        if peers.from.is_empty() {
            return;
        }
        self.evidence.failures += peers.failures;
        self.fallback_failures += peers.fallback_failures;
        self.peer_reporters += peers.reporters;
        self.users += peers.users;
        self.served_reporters += peers.served_reporters;
        self.quorum = settings.report_quorum.min(self.served_reporters).max(1);
        if peers.reporters > 0 {
            let here = if self.evidence.reporters.is_empty() {
                String::new()
            } else {
                format!("{}; ", self.evidence.names())
            };
            self.reported_by = format!(
                "{here}{} reporter(s) on other agents ({})",
                peers.reporters,
                peers.reporting_agents().join(", ")
            );
        }
    }

    /// Distinct failure reporters, here and on the other members.
    pub(super) fn reporters(&self) -> u64 {
        self.evidence.reporters.len() as u64 + self.peer_reporters
    }

    pub(super) fn gate(&self, grace: std::time::Duration, force: bool) -> RetireGate<'_> {
        RetireGate {
            grace,
            failures_since_promotion: self.evidence.failures,
            reporters: self.reporters(),
            quorum: self.quorum,
            reported_by: &self.reported_by,
            force,
            promoted_ago: self.promoted_ago,
            users: self.users,
            evidence_quorum: self.evidence_quorum,
            validated: self.validated,
            members_incomplete: &self.members_incomplete,
        }
    }
}

/// `PromoteKey`, `RollbackKey`, `AbortKey` and `RetireKey`.
pub async fn transition(
    agent: &Arc<Agent>,
    caller: &Caller,
    key: Option<&proto::KeyRef>,
    expected_generation: Option<u64>,
    command: Command,
    force: bool,
) -> Result<proto::RotationResponse, ApiError> {
    let key = agent.key_ref(key)?;
    let done = step(agent, Actor::Caller(caller), &key, expected_generation, command, force).await?;
    Ok(done.response())
}

/// Promote, rollback, abort or retire `key`, checked against its state and
/// (retire) its gate; retire runs the revoker first.
pub async fn step(
    agent: &Arc<Agent>,
    actor: Actor<'_>,
    key: &KeyRef,
    expected_generation: Option<u64>,
    command: Command,
    force: bool,
) -> Result<Committed, ApiError> {
    let settings = agent.config().rotation_for(key);
    not_rotated_elsewhere(agent, &actor, key).await?;
    let serial = agent.lock_changes().await;
    let current = existing(agent, key)?;
    check_generation(key, Some(&current), expected_generation)?;
    let now = SystemTime::now();
    // Only the retire gate weighs evidence: the other members' is read
    // (from OpenBao, under the change lock) for a retire alone.
    let facts = if command == Command::Retire {
        let (facts, peers) = GateFacts::gather(agent, &current, &settings).await;
        if let (false, Err(why)) = (force, &peers) {
            return Err(ApiError::Unavailable(format!(
                "cannot retire the old key of {key}: the evidence the fleet's other agents published cannot be read ({why}), and the retire gate counts theirs too; nothing was done: retry when OpenBao answers"
            )));
        }
        facts
    } else {
        GateFacts::of(agent, &current, &settings)
    };
    let gate = facts.gate(settings.grace, force);
    // Dry run first: a refused command must not run the revoker.
    let next = rotation::apply(&current, command, gate, now)?;
    let mut detail = Vec::new();
    if command == Command::Retire {
        if force {
            if let Err(closed) = rotation::apply(&current, command, RetireGate { force: false, ..gate }, now) {
                detail.push(format!("forced: {closed}"));
            }
        }
        if let (Some(revoker), Some(old)) = (&settings.revoker, &current.fallback) {
            // Fleet mode: the retire must be writable before the old key is
            // revoked at its provider, or a revoked key would stay served.
            agent.check_writable(&current).await?;
            let note = hooks::revoke(revoker, &old.secret, settings.hook_timeout)
                .await
                .map_err(|e| {
                    hook_failed(
                        agent,
                        key,
                        format!("{e}; the old key was not retired: fix the revoker and retry"),
                    )
                })?;
            detail.push(format!("revoker: {note}"));
        }
    }
    commit(agent, &serial, actor, command, current, next, detail.join("; ")).await
}

/// Applies `next` (durable, audited, published).
async fn commit(
    agent: &Agent,
    serial: &ChangeLock<'_>,
    actor: Actor<'_>,
    command: Command,
    before: Arc<KeySetState>,
    next: KeySetState,
    detail: String,
) -> Result<Committed, ApiError> {
    let key = next.key.clone();
    let generation_before = before.generation;
    let notes = if detail.is_empty() {
        Vec::new()
    } else {
        vec![detail.clone()]
    };
    let detail = match actor {
        Actor::Job(job) if detail.is_empty() => job.to_owned(),
        Actor::Job(job) => format!("{job}: {detail}"),
        Actor::Caller(_) => detail,
    };
    let change = Change {
        key: &key,
        before: Some(before),
        after: After::Write(Box::new(next)),
        event: command.into(),
        reason: command.into(),
        caller: actor.caller(),
        detail: (!detail.is_empty()).then(|| detail.clone()),
        // Name the version that was dropped too.
        name_dropped: command == Command::Retire || command == Command::Abort,
        backend_version: None,
    };
    let applied = agent.apply(serial, change).await?;
    let committed = applied.state;
    tracing::info!(key = %key, command = command.as_str(), generation = committed.generation,
        state = committed.state.as_str(), "rotation step applied");
    if let Err(e) = applied.audit {
        return Err(ApiError::Unavailable(format!(
            "the {} of {key} was applied and is durable (generation {}), but its audit record could not be written ({e}): fix the audit disk",
            command.as_str(),
            committed.generation
        )));
    }
    Ok(Committed {
        state: committed,
        generation_before,
        notes,
    })
}

/// Counts a rotation step's result in the metrics; a step that could not
/// be written (store or audit) also raises an agent-health alert. Hook
/// failures raise theirs where they happen.
pub fn counted<T>(
    agent: &Agent,
    command: Command,
    key: Option<&proto::KeyRef>,
    done: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let result = match &done {
        Ok(_) => "ok",
        Err(ApiError::HookFailed(_)) => "failed",
        Err(ApiError::Unavailable(message)) => {
            let subject = match KeyRef::from_proto(key) {
                Ok(k) => Subject::Key(k),
                Err(_) => Subject::Agent("rotation"),
            };
            agent.alerting.health(
                subject,
                Severity::Critical,
                format!("the {} step failed: {message}", command.as_str()),
            );
            "failed"
        }
        Err(_) => "refused",
    };
    agent.metrics().rotation(command.as_str(), result);
    done
}
