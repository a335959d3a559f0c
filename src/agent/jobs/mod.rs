//! Rotation jobs: the safe sequence run by the agent itself, one job per
//! key, started by `StartRotation` or by the schedule, persisted so that a
//! restart resumes it.
//!
//! - `registry.rs`: each key's job (the running one, or the last one,
//!   whose result and backoff the status shows), kept in
//!   `STATE_DIR/rotations.json` (0600, replaced atomically) at every step.
//! - `driver.rs` runs one job: it asks the plan
//!   ([`crate::rotation::plan::next`]) what to do, does it, and asks again.
//! - `schedule.rs` finds the keys whose schedule is due.
//! - This file: starting, cancelling and resuming jobs.
//!
//! Invariants:
//! - The key's stored state is the truth. A job remembers only what the
//!   state cannot say: which version it staged, that it rolled back, the
//!   validator's verdict after promotion, and the step it is taking.
//! - Before a step that changes the key, the job writes its **intent** (the
//!   step and the key's generation before it); every step is a compare and
//!   swap on that generation. After a crash, a key whose generation moved
//!   past the intent's took the step (its effect is recorded, the step is
//!   not taken again); otherwise the step is taken again. So no step is
//!   lost or doubled. The hooks of a step taken again run again: the
//!   generator (its earlier key was never stored), the validator (it only
//!   reads) and the revoker (documented as idempotent) are the hooks that
//!   may be retried this way, and only after a crash mid-step.
//! - Nothing in a job record is secret.

mod driver;
mod registry;
mod schedule;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::caller::Caller;
use super::error::ApiError;
use super::rotate::{stage_new, Actor, NewKey};
use super::Agent;
use crate::agent::fleet::lease::{Claim, HeldLease};
use crate::agent::fleet::Fleet;
use crate::audit::Outcome;
use crate::keyset::RotationState;
use crate::proto;
use crate::rotation::plan::{Trigger, Until};
use crate::secret::{KeyRef, Secret};
use registry::{audit_job, lock, new_record, started_by, JobRecord, Slot};

pub use driver::unreported;
pub use registry::{Intent, Jobs, JobsFileError, JOBS_FILE};
pub use schedule::{next_rotation, time_zone};

/// A key mid-rotation with no lease held is looked at again after this
/// many lease terms (sooner when its generation moves).
const IDLE_LEASE_CHECK: u32 = 5;

/// How long `CancelRotation` waits for the step under way.
const CANCEL_WAIT: Duration = Duration::from_secs(120);

/// Starts the drivers of the jobs that were running when the agent
/// stopped, and the schedule; they stop when `stop` turns true.
pub fn start_tasks(agent: &Arc<Agent>, stop: watch::Receiver<bool>) {
    agent.jobs.started(stop.clone());
    for slot in agent.jobs.running() {
        driver::resume(agent, &slot);
        lock(&slot.record).note("resumed after the agent started".to_owned());
        spawn(agent, slot);
    }
    agent.jobs.track(tokio::spawn(run_schedule(agent.clone(), stop)));
}

/// Runs the job in `slot` (once the agent's tasks started).
fn spawn(agent: &Arc<Agent>, slot: Arc<Slot>) {
    let Some(stop) = agent.jobs.stop_signal() else {
        // Not started yet: start_tasks resumes it.
        return;
    };
    agent.jobs.track(tokio::spawn(driver::drive(agent.clone(), slot, stop)));
}

/// Starts the jobs of the keys whose schedule is due, every
/// [`schedule::CHECK_EVERY`], until `stop`.
async fn run_schedule(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let mut looked = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(schedule::CHECK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for (key, why) in schedule::due(&agent) {
            start_scheduled(&agent, &key, why).await;
        }
        if let Some(fleet) = agent.fleet() {
            take_over_abandoned(&agent, fleet, &mut looked).await;
        }
    }
}

/// Fleet mode: resumes the rotations left under way by a member that
/// stopped renewing its lease (killed, its host gone), from the key's
/// state. Only keys mid-rotation without a job here are looked at: a key
/// whose lease is held, again when that lease would expire; one without a
/// held lease (staged by hand, or its job ended), again when its
/// generation moves or after [`IDLE_LEASE_CHECK`] lease terms. So a fleet
/// reads nothing for this while steady, and little while a key waits.
async fn take_over_abandoned(agent: &Arc<Agent>, fleet: &Arc<Fleet>, looked: &mut HashMap<KeyRef, (u64, Instant)>) {
    let term = fleet.config().rotation_lease;
    let candidates: Vec<_> = agent
        .store
        .list(None)
        .into_iter()
        .filter(|s| s.state != RotationState::Steady && !agent.jobs.active(&s.key))
        .collect();
    looked.retain(|k, _| candidates.iter().any(|s| s.key == *k));
    for state in candidates {
        let key = &state.key;
        if looked
            .get(key)
            .is_some_and(|(generation, next)| *generation == state.generation && Instant::now() < *next)
        {
            continue;
        }
        let lease = match fleet.lease_of(agent, key).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::debug!(key = %key, error = %e, "cannot read the rotation lease");
                looked.insert(key.clone(), (state.generation, Instant::now() + term / 4));
                continue;
            }
        };
        let now = SystemTime::now();
        let next = match &lease {
            // Held: look again just after it would expire.
            Some(l) if l.live(now) => l.expires().duration_since(now).unwrap_or_default() + Duration::from_secs(1),
            Some(l) if l.abandoned(now) => Duration::ZERO,
            // No lease held: a job that takes one moves the generation.
            _ => term * IDLE_LEASE_CHECK,
        };
        looked.insert(
            key.clone(),
            (state.generation, Instant::now() + next.max(Duration::from_secs(1))),
        );
        let Some(lease) = lease.filter(|l| l.abandoned(now)) else {
            continue;
        };
        // A start by hand may have begun meanwhile.
        let Some(_starting) = agent.jobs.starting(key) else {
            continue;
        };
        if agent.jobs.active(key) {
            continue;
        }
        let held = match fleet.claim_lease(agent, key, lease.trigger, lease.until).await {
            Ok(Claim::Taken(held)) => held,
            Ok(Claim::Busy { .. }) | Err(_) => continue,
        };
        let by = format!(
            "{} ({} rotation resumed: its lease expired at {})",
            fleet.config().agent_id,
            lease.holder,
            humantime::format_rfc3339_seconds(lease.expires())
        );
        let mut record = new_record(key, lease.trigger, lease.until, by, &state);
        record.memory.fleet = true;
        tracing::warn!(key = %key, holder = %lease.holder, "taking over a rotation whose holder stopped renewing its lease");
        audit_job(
            agent,
            None,
            key,
            Outcome::Started,
            format!(
                "rotation job started (takeover, until {:?}): agent {} stopped renewing the rotation lease mid-rotation; resuming at {}",
                lease.until,
                lease.holder,
                state.state.as_str()
            ),
        )
        .await;
        begin(agent, key, record, Some(held));
    }
}

/// Starts a job in `record` for `key` (replacing its last, finished one,
/// whose backoff it keeps), persists it and spawns its driver.
fn begin(agent: &Arc<Agent>, key: &KeyRef, mut record: JobRecord, lease: Option<HeldLease>) -> Arc<Slot> {
    let slot = {
        let describe = match record.memory.new_version {
            None => format!("started by {} ({})", record.started_by, record.memory.trigger.as_str()),
            Some(v) => format!(
                "started by {} ({}), resuming the rotation to v{v} under way",
                record.started_by,
                record.memory.trigger.as_str()
            ),
        };
        record.note(describe);
        let slot = Arc::new(Slot::new(key.clone(), record));
        *lock(&slot.lease) = lease;
        agent.jobs.insert(slot.clone());
        slot
    };
    agent.jobs.persist(agent, key);
    spawn(agent, slot.clone());
    slot
}

/// `StartRotation`.
pub async fn start(
    agent: &Arc<Agent>,
    caller: &Caller,
    req: proto::StartRotationRequest,
) -> Result<proto::RotationJob, ApiError> {
    let key = agent.key_ref(req.key.as_ref())?;
    let Some(state) = agent.store.get(&key) else {
        return Err(ApiError::NotFound(format!(
            "key {key} does not exist: create it with `keyward put {key}` before rotating it"
        )));
    };
    // One start of a key at a time: a second one meanwhile would begin a
    // second job (and in a fleet take this agent's own lease again). This
    // one waits for it, then follows the job it began, if any.
    let Some(_starting) = agent.jobs.wait_to_start(&key).await else {
        return Err(ApiError::Aborted(format!(
            "a rotation job of {key} is still being started by another request: nothing was done; follow it with `keyward rotation-status {key}`"
        )));
    };
    if let Some(slot) = agent.jobs.slot(&key) {
        if lock(&slot.record).active {
            // Starting a running job follows it.
            return Ok(slot.to_proto());
        }
    }
    super::changes::check_generation(&key, Some(&state), req.expected_generation)?;
    let until = match proto::RotationUntil::try_from(req.until).unwrap_or_default() {
        proto::RotationUntil::UntilStaged => Until::Staged,
        proto::RotationUntil::UntilPromoted => Until::Promoted,
        _ => Until::Retired,
    };
    let settings = agent.config().rotation_for(&key);
    let mut state = state;
    if state.state == RotationState::Steady && req.secret.is_empty() && settings.generator.is_none() {
        return Err(ApiError::FailedPrecondition(format!(
            "{key} has no generator hook configured: pass the new key (keyward rotate {key} --stdin or --file), or configure a generator"
        )));
    }
    // A given key is staged now: it cannot wait in the job file.
    let given = if state.state == RotationState::Steady && !req.secret.is_empty() {
        let limit = agent.config().limits.max_secret_bytes;
        if req.secret.len() > limit {
            return Err(ApiError::InvalidArgument(format!(
                "the new secret for {key} is {} bytes; the limit is {limit} bytes (limits.max_secret_bytes): nothing was staged",
                req.secret.len()
            )));
        }
        let secret = Secret::copy_from(&req.secret);
        drop(req.secret);
        let expires_at = super::changes::expiry(&key, req.expires_at.as_ref(), "staged")?;
        Some((secret, expires_at))
    } else {
        None
    };
    // Fleet mode: one rotator per key, before anything is staged.
    let lease = claim(agent, &key, Trigger::Manual, until).await?;
    if let Some((secret, expires_at)) = given {
        let label = format!("rotation job (manual, started by {})", caller.describe());
        let done = stage_new(
            agent,
            Actor::Job(&label),
            &key,
            NewKey::Given(secret),
            false,
            Some(state.generation),
            expires_at,
        )
        .await;
        let done = super::rotate::counted(
            agent,
            crate::rotation::Command::Stage,
            Some(&crate::wire::ToWire::to_proto(&key)),
            done,
        );
        match done {
            Ok(done) => state = done.state,
            Err(e) => {
                release(agent, lease).await;
                return Err(e);
            }
        }
    }
    let mut record = new_record(&key, Trigger::Manual, until, started_by(Some(caller)), &state);
    record.memory.fleet = req.fleet;
    if req.fleet_timeout_seconds > 0 {
        record.fleet_timeout_secs = req.fleet_timeout_seconds;
    }
    audit_job(
        agent,
        Some(caller),
        &key,
        Outcome::Started,
        format!(
            "rotation job started (manual, until {:?}) at {}",
            until,
            state.state.as_str()
        ),
    )
    .await;
    let slot = begin(agent, &key, record, lease);
    Ok(slot.to_proto())
}

/// Starts a scheduled job for `key` (the schedule found it due).
async fn start_scheduled(agent: &Arc<Agent>, key: &KeyRef, why: String) {
    let Some(state) = agent.store.get(key) else { return };
    let Some(_starting) = agent.jobs.starting(key) else {
        return;
    };
    if agent.jobs.active(key) {
        return;
    }
    let lease = match claim(agent, key, Trigger::Schedule, Until::Retired).await {
        Ok(lease) => lease,
        // Another member holds it: its job rotates the key.
        Err(ApiError::FailedPrecondition(why)) => {
            tracing::debug!(key = %key, reason = %why, "a scheduled rotation is due, but not here");
            return;
        }
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "a scheduled rotation is due, but the rotation lease cannot be taken; trying again");
            return;
        }
    };
    let mut record = new_record(key, Trigger::Schedule, Until::Retired, started_by(None), &state);
    // In a fleet, a scheduled rotation waits for every live agent at each
    // step, as `keyward rotate --fleet` does.
    record.memory.fleet = agent.fleet().is_some();
    audit_job(
        agent,
        None,
        key,
        Outcome::Started,
        format!("rotation job started (schedule): {why}"),
    )
    .await;
    begin(agent, key, record, lease);
}

/// Fleet mode: takes the rotation lease of `key` for a job started by
/// `trigger` (`None` outside fleet mode); refuses, naming the holder, when
/// another member holds it.
async fn claim(
    agent: &Arc<Agent>,
    key: &KeyRef,
    trigger: Trigger,
    until: Until,
) -> Result<Option<HeldLease>, ApiError> {
    let Some(fleet) = agent.fleet() else { return Ok(None) };
    match fleet.claim_lease(agent, key, trigger, until).await {
        Ok(Claim::Taken(held)) => Ok(Some(held)),
        Ok(Claim::Busy { holder, expires }) => Err(ApiError::FailedPrecondition(format!(
            "agent {holder} is rotating {key}: it holds the key's rotation lease (until {}, renewed while its job runs); nothing was done. Follow it there with `keyward rotation-status {key}`, or wait for it to end; if that agent stopped, a member takes the rotation over once the lease expires",
            humantime::format_rfc3339_seconds(expires)
        ))),
        Err(e) => Err(ApiError::Unavailable(format!(
            "cannot take the rotation lease of {key} in OpenBao ({e}): nothing was done; in a fleet a rotation needs OpenBao, retry when it is back"
        ))),
    }
}

/// Gives back a lease taken for a job that did not begin.
async fn release(agent: &Arc<Agent>, lease: Option<HeldLease>) {
    if let (Some(fleet), Some(held)) = (agent.fleet(), lease) {
        fleet.release_lease(held).await;
    }
}

/// `CancelRotation`: asks the job to stop, waits for the step under way.
pub async fn cancel(
    agent: &Arc<Agent>,
    caller: &Caller,
    key: Option<&proto::KeyRef>,
) -> Result<proto::RotationJob, ApiError> {
    let key = agent.key_ref(key)?;
    let slot = agent
        .jobs
        .slot(&key)
        .filter(|s| lock(&s.record).active)
        .ok_or_else(|| {
            ApiError::FailedPrecondition(format!(
                "no rotation job runs for {key}: nothing to cancel (see `keyward rotation-status {key}`)"
            ))
        })?;
    {
        let mut r = lock(&slot.record);
        r.memory.cancel = true;
        r.note(format!("cancel asked by {}", caller.describe()));
    }
    agent.jobs.persist(agent, &key);
    slot.wake.notify_one();
    let mut done = slot.done.subscribe();
    if tokio::time::timeout(CANCEL_WAIT, done.wait_for(|d| *d)).await.is_err() {
        return Err(ApiError::Unavailable(format!(
            "the job of {key} did not stop within {}s (a hook still runs): it will stop after that step; see `keyward rotation-status {key}`",
            CANCEL_WAIT.as_secs()
        )));
    }
    Ok(slot.to_proto())
}

#[cfg(test)]
mod tests;
