//! Runs one rotation job: observe, ask the plan, act, until it finishes or
//! the agent stops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::registry::{audit_job, from_unix, lock, unix, Intent, Slot};
use crate::agent::error::ApiError;
use crate::agent::fleet::lease::{Claim, LeaseCheck, LeaseKeeper, LeaseLost};
use crate::agent::rotate::{self, stage_new, Actor, GateFacts, NewKey};
use crate::agent::Agent;
use crate::alerts::{Severity, Signal};
use crate::audit::{AuditEvent, Event, Outcome};
use crate::hooks;
use crate::keyset::{KeySetState, RotationState};
use crate::rotation::plan::{self, Action, Gate, JobResult, Memory, Observed, Step, Trigger};
use crate::rotation::{self as core, schedule, Command};
use crate::watch::{ClientKind, SubscriberInfo};
use crate::wire::ToWire;

/// How often a waiting job looks again (reports and changes wake it
/// sooner).
const TICK: Duration = Duration::from_millis(250);

/// How much longer than the propagation timeout a job waits: the agent
/// evicts subscribers that take nothing within half a second of it.
const EVICTION_MARGIN: Duration = Duration::from_secs(2);

/// Failed attempts at one step (store or audit trouble, a gate that closed
/// between the plan and the step) before the job gives up.
const STEP_ATTEMPTS: u32 = 10;

/// Records what a step that was under way when the agent stopped did:
/// taken (the key's generation moved past the intent's), or not (it will
/// be taken again).
pub(super) fn resume(agent: &Agent, slot: &Slot) {
    let mut r = lock(&slot.record);
    let Some(intent) = r.intent.take() else { return };
    let state = agent.store.get(&slot.key);
    match state {
        Some(s) if s.generation > intent.generation_before => {
            match intent.step.as_str() {
                "stage" if s.state == RotationState::Staged => {
                    r.memory.new_version = s.fallback.as_ref().map(|f| f.number);
                }
                "rollback" => r.memory.rolled_back = true,
                _ => {}
            }
            r.generation = s.generation;
            r.note(format!(
                "the {} under way when the agent stopped was taken (generation {} → {})",
                intent.step, intent.generation_before, s.generation
            ));
        }
        _ => r.note(format!(
            "the {} under way when the agent stopped was not taken; it is taken again",
            intent.step
        )),
    }
}

/// A subscriber, for messages: "uid 1001 pid 42 (keyward run, billing.service)".
fn subscriber_text(s: &SubscriberInfo) -> String {
    let mut parts = Vec::new();
    match s.kind {
        ClientKind::Library => parts.push("client library".to_owned()),
        ClientKind::Run => parts.push("keyward run".to_owned()),
        ClientKind::Proxy => parts.push("keyward proxy".to_owned()),
        ClientKind::Other => {}
    }
    parts.extend(s.unit.clone());
    parts.extend(s.exe.clone());
    if parts.is_empty() {
        format!("uid {} pid {}", s.uid, s.pid)
    } else {
        format!("uid {} pid {} ({})", s.uid, s.pid, parts.join(", "))
    }
}

/// Callers served the primary of `state` that did not report using it,
/// named (with what they are, when they subscribe).
pub fn unreported(agent: &Agent, state: &KeySetState) -> Vec<String> {
    let users: Vec<u32> = agent
        .uses
        .users(&state.key, state.primary.number)
        .iter()
        .map(|r| r.uid)
        .collect();
    let subscribers = agent.watchers.subscribers(&state.key);
    let mut out = Vec::new();
    let mut named = Vec::new();
    for s in &subscribers {
        if !users.contains(&s.uid) {
            out.push(subscriber_text(s));
            named.push(s.uid);
        }
    }
    for uid in agent.served.reporting_uids(&state.key, state.primary.number) {
        if !users.contains(&uid) && !named.contains(&uid) {
            out.push(format!("uid {uid}"));
        }
    }
    out
}

/// What the job sees now.
async fn observe(agent: &Agent, slot: &Slot, state: &KeySetState, memory: &Memory) -> Observed {
    let config = agent.config();
    let settings = config.rotation_for(&state.key);
    let lagging = if state.state == RotationState::Staged {
        agent
            .watchers
            .subscribers(&state.key)
            .iter()
            .filter(|s| s.delivered_generation < state.generation)
            .map(subscriber_text)
            .collect()
    } else {
        Vec::new()
    };
    // Fleet mode: the members that lag (for `--fleet` and scheduled jobs),
    // and while promoted the evidence reported to the others.
    let mut fleet_lagging = Vec::new();
    let mut peers_unknown = None;
    let mut facts = GateFacts::of(agent, state, &settings);
    if let Some(fleet) = agent.fleet() {
        if memory.fleet || state.state == RotationState::Promoted {
            match fleet.key_view(agent, state).await {
                Ok((lagging, peers)) => {
                    if memory.fleet {
                        fleet_lagging = lagging;
                    }
                    facts.add_peers(&peers, &settings);
                }
                Err(e) => {
                    if memory.fleet {
                        fleet_lagging.push(e.clone());
                    }
                    peers_unknown = Some(e);
                }
            }
        }
    }
    let gate = facts.gate(settings.grace, false);
    let waited = lock(&slot.live)
        .gate
        .map_or(Duration::ZERO, |(_, since)| since.elapsed());
    Observed {
        lagging,
        fleet_lagging,
        waited,
        propagation_limit: settings.propagation_timeout + EVICTION_MARGIN,
        fleet_limit: Duration::from_secs(lock(&slot.record).fleet_timeout_secs),
        failures: facts.evidence.failures,
        reporters: facts.reporters(),
        quorum: facts.quorum,
        failure_threshold: settings.failure_threshold,
        grace_left: core::grace_left(state, &gate, SystemTime::now()),
        // Use reported to other members counts only when it can be read.
        users: if peers_unknown.is_some() { 0 } else { facts.users },
        evidence_quorum: settings.evidence_quorum,
        // Named only where the evidence gate can be reached.
        unreported: match (&peers_unknown, state.state) {
            (Some(e), _) => vec![format!("(the other agents' reports are not known: {e})")],
            (None, RotationState::Promoted) => unreported(agent, state),
            _ => Vec::new(),
        },
        has_validator: settings.validator.is_some(),
        members_incomplete: facts.members_incomplete.clone(),
    }
}

/// Runs the job in `slot` until it ends or `stop` turns true; in fleet
/// mode, holding the key's rotation lease throughout.
pub(super) async fn drive(agent: Arc<Agent>, slot: Arc<Slot>, mut stop: watch::Receiver<bool>) {
    let keeper = match agent.fleet() {
        None => None,
        Some(fleet) => match take_lease(&agent, fleet, &slot, &mut stop).await {
            Some(keeper) => Some(keeper),
            // Stopped, or ended because another member holds the lease.
            None => return,
        },
    };
    let finished = steps(&agent, &slot, &mut stop, keeper.as_ref()).await;
    if let Some(keeper) = keeper {
        if finished {
            keeper.release().await;
        } else {
            keeper.leave().await;
        }
    }
}

/// The lease the job was begun with, or taken now (after a restart, or for
/// a job resumed from another member's). Waits while OpenBao cannot be
/// asked; ends the job when another member holds the lease. `None`: the
/// job is not to run here.
async fn take_lease(
    agent: &Arc<Agent>,
    fleet: &Arc<crate::agent::fleet::Fleet>,
    slot: &Slot,
    stop: &mut watch::Receiver<bool>,
) -> Option<LeaseKeeper> {
    if let Some(held) = lock(&slot.lease).take() {
        return Some(LeaseKeeper::start(agent.clone(), fleet.clone(), held));
    }
    // A job that had not staged its key yet would stage one: it must not
    // when another member rotated the key since the job began. (One that
    // had staged follows the key's state: the rotation it began, finished
    // by a member that took it over, ends it.)
    let (trigger, until, began) = {
        let r = lock(&slot.record);
        let began = r.memory.new_version.is_none().then(|| from_unix(r.started_at));
        (r.memory.trigger, r.memory.until, began)
    };
    let mut pause = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            return None;
        }
        let claimed = match began {
            Some(began) => match fleet.lease_of(agent, &slot.key).await {
                Ok(Some(l)) if l.ran_elsewhere_since(&fleet.config().agent_id, began) => {
                    finish(
                        agent,
                        slot,
                        JobResult::Failed,
                        format!(
                            "agent {} took the rotation lease of {} at {} while this agent was stopped, and ran a rotation to its end: this job does not rotate the key again; see `keyward rotation-status {}` on {}",
                            l.holder,
                            slot.key,
                            humantime::format_rfc3339_seconds(l.acquired()),
                            slot.key,
                            l.holder
                        ),
                    )
                    .await;
                    return None;
                }
                Ok(_) => fleet.claim_lease(agent, &slot.key, trigger, until).await,
                Err(e) => Err(e),
            },
            None => fleet.claim_lease(agent, &slot.key, trigger, until).await,
        };
        match claimed {
            Ok(Claim::Taken(held)) => return Some(LeaseKeeper::start(agent.clone(), fleet.clone(), held)),
            Ok(Claim::Busy { holder, expires }) => {
                finish(
                    agent,
                    slot,
                    JobResult::Failed,
                    format!(
                        "agent {holder} holds the rotation lease of {} (until {}) and runs its rotation: this agent's job stops; see `keyward rotation-status {}` on {holder}",
                        slot.key,
                        humantime::format_rfc3339_seconds(expires),
                        slot.key
                    ),
                )
                .await;
                return None;
            }
            Err(e) => {
                lock(&slot.live).waiting = format!("waiting to take the rotation lease: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// How a job that lost its lease ends.
fn lost_lease(key: &crate::secret::KeyRef, lost: LeaseLost) -> (JobResult, String) {
    let message = match lost {
        LeaseLost::TakenBy(holder) => format!(
            "agent {holder} took the rotation lease of {key} over (this agent's had expired): it runs the rotation now; see `keyward rotation-status {key}` there"
        ),
        LeaseLost::Gone => format!(
            "the rotation lease of {key} was released or removed by someone else: this job stops; check `keyward rotation-status {key}` on the fleet's agents"
        ),
    };
    (JobResult::Failed, message)
}

/// The job's steps; true when it finished (false: the agent stops).
async fn steps(
    agent: &Arc<Agent>,
    slot: &Arc<Slot>,
    stop: &mut watch::Receiver<bool>,
    keeper: Option<&LeaseKeeper>,
) -> bool {
    let agent = agent.clone();
    let slot = slot.clone();
    let mut failed_attempts = 0u32;
    loop {
        if *stop.borrow() {
            return false;
        }
        if let Some(LeaseCheck::Lost(lost)) = keeper.map(LeaseKeeper::check) {
            let (result, message) = lost_lease(&slot.key, lost);
            finish(&agent, &slot, result, message).await;
            return true;
        }
        let stepping = slot.stepping.lock().await;
        let state = agent.store.get(&slot.key);
        let memory = lock(&slot.record).memory.clone();
        let seen = match &state {
            Some(s) => observe(&agent, &slot, s, &memory).await,
            None => Observed::default(),
        };
        let action = plan::next(&memory, state.as_deref(), &seen);
        let step = plan::step_of(&memory, state.as_deref(), &action);
        // The step and what it waits for change together (under both locks,
        // in the order `Slot::to_proto` takes them), so a status never shows
        // a new step with the last step's wait.
        let moved = {
            let mut r = lock(&slot.record);
            let mut live = lock(&slot.live);
            let moved = r.step != step;
            r.step = step;
            match &action {
                Action::Wait { gate, why } => {
                    if live.gate.map(|(g, _)| g) != Some(*gate) {
                        live.gate = Some((*gate, Instant::now()));
                    }
                    live.waiting = why.clone();
                }
                Action::Finish { .. } => {}
                _ => {
                    live.gate = None;
                    live.waiting.clear();
                }
            }
            moved
        };
        if moved {
            agent.jobs.persist(&agent, &slot.key);
        }
        match action {
            Action::Wait { gate, why } => {
                if gate == Gate::Evidence {
                    no_evidence(&agent, &slot, state.as_deref(), why, &seen.unreported);
                } else {
                    agent.alerting.clear_condition(&slot.key, Signal::NoEvidence);
                }
                drop(stepping);
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = slot.wake.notified() => {}
                    _ = stop.changed() => {}
                }
            }
            Action::Finish { result, message } => {
                finish(&agent, &slot, result, message).await;
                return true;
            }
            action => {
                agent.alerting.clear_condition(&slot.key, Signal::NoEvidence);
                let Some(state) = state else { continue };
                let taken = match keeper.map_or(LeaseCheck::Held, LeaseKeeper::check) {
                    LeaseCheck::Held => take(&agent, &slot, &action, &state).await,
                    LeaseCheck::Unrenewed(why) => Err(Retry(why)),
                    LeaseCheck::Lost(lost) => {
                        let (result, message) = lost_lease(&slot.key, lost);
                        Err(Stop(result, message))
                    }
                };
                drop(stepping);
                match taken {
                    Ok(()) => failed_attempts = 0,
                    Err(Stop(result, message)) => {
                        finish(&agent, &slot, result, message).await;
                        return true;
                    }
                    Err(Retry(message)) => {
                        failed_attempts += 1;
                        if failed_attempts >= STEP_ATTEMPTS {
                            finish(
                                &agent,
                                &slot,
                                JobResult::Failed,
                                format!("gave up after {STEP_ATTEMPTS} attempts: {message}"),
                            )
                            .await;
                            return true;
                        }
                        lock(&slot.live).waiting = format!("retrying: {message}");
                        let pause = Duration::from_millis(250 << failed_attempts.min(7));
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stop.changed() => {}
                        }
                    }
                }
            }
        }
    }
}

/// Why a step was not taken.
enum NotTaken {
    /// The job ends.
    Stop(JobResult, String),
    /// It is tried again (after a pause).
    Retry(String),
}
use NotTaken::{Retry, Stop};

fn not_taken(what: &str, e: ApiError) -> NotTaken {
    match e {
        ApiError::HookFailed(m) => Stop(JobResult::Failed, format!("{what} failed: {m}")),
        other => Retry(format!("{what}: {other}")),
    }
}

/// Takes one step of the sequence.
async fn take(agent: &Arc<Agent>, slot: &Slot, action: &Action, state: &KeySetState) -> Result<(), NotTaken> {
    let key = &slot.key;
    let label = {
        let r = lock(&slot.record);
        format!(
            "rotation job ({}, started by {})",
            r.memory.trigger.as_str(),
            r.started_by
        )
    };
    let actor = Actor::Job(&label);
    let g = state.generation;
    let command = match action {
        Action::Stage => None,
        Action::Promote => Some(Command::Promote),
        Action::Rollback { .. } => Some(Command::Rollback),
        Action::Abort => Some(Command::Abort),
        Action::Retire => Some(Command::Retire),
        Action::Validate => return validate(agent, slot, state).await,
        Action::Wait { .. } | Action::Finish { .. } => return Ok(()),
    };
    let name = command.map_or("stage", Command::as_str);
    if command == Some(Command::Promote) {
        note_evictions(agent, slot, state);
    }
    {
        let mut r = lock(&slot.record);
        r.intent = Some(Intent {
            step: name.to_owned(),
            generation_before: g,
        });
        if let Action::Rollback { why } = action {
            r.message = why.clone();
        }
    }
    agent.jobs.persist(agent, key);
    let done = match command {
        None => {
            let done = stage_new(agent, actor, key, NewKey::Generate, false, Some(g), None).await;
            rotate::counted(agent, Command::Stage, Some(&key.to_proto()), done)
        }
        Some(c) => {
            let done = rotate::step(agent, actor, key, Some(g), c, false).await;
            rotate::counted(agent, c, Some(&key.to_proto()), done)
        }
    };
    let mut r = lock(&slot.record);
    r.intent = None;
    let result = match done {
        Ok(done) => {
            let s = &done.state;
            match action {
                Action::Stage => r.memory.new_version = s.fallback.as_ref().map(|f| f.number),
                Action::Rollback { why } => {
                    r.memory.rolled_back = true;
                    r.note(format!("rolled back: {why}"));
                }
                _ => {}
            }
            r.generation = s.generation;
            let notes = if done.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", done.notes.join("; "))
            };
            r.note(format!(
                "{name}: now {} at generation {}{notes}",
                s.state.as_str(),
                s.generation
            ));
            Ok(())
        }
        Err(e) => Err(not_taken(name, e)),
    };
    drop(r);
    agent.jobs.persist(agent, key);
    result
}

/// Notes the subscribers the agent evicted while the staged generation
/// waited for them: propagation went on without them.
fn note_evictions(agent: &Agent, slot: &Slot, state: &KeySetState) {
    let evicted: Vec<String> = agent
        .watchers
        .recent_evictions(&state.key)
        .iter()
        .filter(|e| e.waiting_generation.is_some_and(|g| g >= state.generation))
        .map(|e| {
            let mut who = format!("uid {} pid {}", e.who.uid, e.who.pid);
            if let Some(exe) = &e.who.exe {
                who.push_str(&format!(" {exe}"));
            }
            who
        })
        .collect();
    if evicted.is_empty() {
        return;
    }
    let timeout = agent.config().rotation_for(&state.key).propagation_timeout;
    lock(&slot.record).note(format!(
        "{} subscriber(s) evicted: they took nothing within {}, and their watch was ended: {}",
        evicted.len(),
        humantime::format_duration(timeout),
        evicted.join("; ")
    ));
}

/// Runs the validator on the promoted primary and records its verdict.
async fn validate(agent: &Arc<Agent>, slot: &Slot, state: &KeySetState) -> Result<(), NotTaken> {
    let settings = agent.config().rotation_for(&slot.key);
    let Some(validator) = &settings.validator else {
        return Ok(());
    };
    let verdict = hooks::validate(validator, &state.primary.secret, settings.hook_timeout).await;
    let (ok, detail, outcome) = match &verdict {
        Ok(()) => (
            true,
            format!("the validator accepted the promoted v{}", state.primary.number),
            Outcome::Ok,
        ),
        Err(e) => (
            false,
            format!("the validator refused the promoted v{}: {e}", state.primary.number),
            Outcome::Rejected,
        ),
    };
    {
        let mut r = lock(&slot.record);
        r.memory.validated = Some(ok);
        r.note(detail.clone());
    }
    agent.jobs.persist(agent, &slot.key);
    let _ = agent
        .audit
        .record(AuditEvent {
            key: Some(slot.key.to_string()),
            generation_after: Some(state.generation),
            detail: Some(detail),
            ..AuditEvent::new(Event::Validate, outcome)
        })
        .await;
    Ok(())
}

/// Raises (or refreshes) the `no_evidence` alert of a job waiting for
/// evidence, naming the callers served the key that never reported
/// (`unreported`, as observed for the plan).
fn no_evidence(agent: &Agent, slot: &Slot, state: Option<&KeySetState>, why: String, unreported: &[String]) {
    let mut details = BTreeMap::new();
    if let Some(s) = state {
        details.insert("primary".to_owned(), format!("v{}", s.primary.number));
    }
    if !unreported.is_empty() {
        details.insert("unreported".to_owned(), unreported.join("; "));
    }
    agent
        .alerting
        .set_condition(&slot.key, Signal::NoEvidence, Severity::Warning, why, details);
}

/// Ends the job: recorded, persisted, counted, alerted and audited.
async fn finish(agent: &Arc<Agent>, slot: &Slot, result: JobResult, message: String) {
    let key = &slot.key;
    // The end is audited while the job still counts as running, so that
    // the next job of the key (the schedule starts one once this one is
    // over) is audited after it.
    let outcome = match result {
        JobResult::Ok => Outcome::Ok,
        JobResult::RolledBack => Outcome::RolledBack,
        JobResult::Cancelled => Outcome::Cancelled,
        JobResult::Failed => Outcome::Failed,
    };
    audit_job(
        agent,
        None,
        key,
        outcome,
        format!("rotation job {}: {message}", result.as_str()),
    )
    .await;
    let trigger = {
        let mut r = lock(&slot.record);
        r.active = false;
        r.result = Some(result);
        r.step = Step::Done;
        r.intent = None;
        r.message = message.clone();
        if result == JobResult::Ok {
            // Any successful rotation ends a failed schedule's backoff.
            r.failed_attempts = 0;
            r.retry_at = None;
        } else if r.memory.trigger == Trigger::Schedule {
            r.failed_attempts += 1;
            let schedule = agent.config().rotation_for(key).schedule;
            let wait = schedule.map_or(Duration::from_secs(3600), |s| schedule::backoff(&s, r.failed_attempts));
            r.retry_at = Some(unix(SystemTime::now() + wait));
        }
        r.note(format!("{}: {message}", result.as_str()));
        r.memory.trigger
    };
    agent.jobs.persist(agent, key);
    {
        let mut live = lock(&slot.live);
        live.gate = None;
        live.waiting.clear();
    }
    agent.metrics().rotation_job(result, trigger);
    agent.alerting.clear_condition(key, Signal::NoEvidence);
    match result {
        JobResult::Ok => agent.alerting.clear_condition(key, Signal::RotationFailed),
        JobResult::Failed | JobResult::RolledBack => {
            let retry = lock(&slot.record).retry_at;
            let summary = match retry {
                Some(t) => format!(
                    "the {} rotation {}: {message}; the schedule tries again after {}",
                    trigger.as_str(),
                    result.as_str().replace('_', " "),
                    humantime::format_rfc3339_seconds(from_unix(t))
                ),
                None => format!(
                    "the {} rotation {}: {message}",
                    trigger.as_str(),
                    result.as_str().replace('_', " ")
                ),
            };
            agent
                .alerting
                .set_condition(key, Signal::RotationFailed, Severity::Warning, summary, BTreeMap::new());
        }
        JobResult::Cancelled => {}
    }
    slot.done.send_replace(true);
}
