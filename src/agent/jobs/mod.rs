//! Rotation jobs: the safe sequence run by the agent itself, one job per
//! key, started by `StartRotation` or by the schedule, persisted so that a
//! restart resumes it.
//!
//! - [`Jobs`] holds each key's job (the running one, or the last one,
//!   whose result and backoff the status shows) and writes them all to
//!   `STATE_DIR/rotations.json` (0600, replaced atomically) at every step.
//! - `driver.rs` runs one job: it asks the plan
//!   ([`crate::rotation::plan::next`]) what to do, does it, and asks again.
//! - `schedule.rs` starts the jobs of keys whose schedule is due.
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
mod schedule;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::caller::Caller;
use super::error::ApiError;
use super::rotate::{stage_new, Actor, NewKey};
use super::Agent;
use crate::audit::{AuditEvent, Event, Outcome};
use crate::keyset::RotationState;
use crate::proto;
use crate::rotation::plan::{Gate, JobResult, Memory, Step, Trigger, Until};
use crate::secret::{KeyRef, Secret};
use crate::wire::timestamp;

pub use driver::unreported;
pub use schedule::{next_rotation, time_zone};

/// The job file's name in the state directory.
pub const JOBS_FILE: &str = "rotations.json";

/// Most lines kept in a job's log.
const LOG_KEPT: usize = 32;

/// How long `CancelRotation` waits for the step under way.
const CANCEL_WAIT: Duration = Duration::from_secs(120);

/// The step a job is taking, written before it is taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// stage, promote, rollback, abort or retire.
    pub step: String,
    /// The key's generation before it.
    pub generation_before: u64,
}

/// One key's job, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// ENV/NAME.
    pub key: String,
    /// What started it.
    pub trigger: Trigger,
    /// Where it stops.
    pub until: Until,
    /// The version it staged.
    pub new_version: Option<u64>,
    /// It rolled back.
    pub rolled_back: bool,
    /// The validator's verdict after promotion.
    pub validated: Option<bool>,
    /// Wait for the fleet too.
    pub fleet: bool,
    /// How long it waits for the fleet, in seconds.
    pub fleet_timeout_secs: u64,
    /// Cancel was asked for.
    pub cancel: bool,
    /// The agent runs it.
    pub active: bool,
    /// How it ended.
    pub result: Option<JobResult>,
    /// What happened last, and what to do next.
    pub message: String,
    /// Who started it ("uid 0 pid 42", "schedule").
    pub started_by: String,
    /// Unix seconds.
    pub started_at: u64,
    /// Unix seconds.
    pub updated_at: u64,
    /// Its step.
    pub step: Step,
    /// The key's generation when it last stepped.
    pub generation: u64,
    /// The step being taken.
    pub intent: Option<Intent>,
    /// Scheduled jobs of this key that failed in a row.
    pub failed_attempts: u32,
    /// Unix seconds before which the schedule does not try again.
    pub retry_at: Option<u64>,
    /// The steps taken.
    pub log: Vec<String>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_unix(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

impl JobRecord {
    fn memory(&self) -> Memory {
        Memory {
            trigger: self.trigger,
            until: self.until,
            new_version: self.new_version,
            rolled_back: self.rolled_back,
            validated: self.validated,
            fleet: self.fleet,
            cancel: self.cancel,
        }
    }

    fn note(&mut self, line: String) {
        tracing::info!(key = %self.key, "rotation job: {line}");
        self.log.push(format!(
            "{} {line}",
            humantime::format_rfc3339_seconds(SystemTime::now())
        ));
        if self.log.len() > LOG_KEPT {
            self.log.remove(0);
        }
        self.updated_at = unix(SystemTime::now());
    }
}

/// What only the running process knows of a job: the gate it waits at and
/// since when, and why.
#[derive(Default)]
struct Live {
    gate: Option<(Gate, Instant)>,
    waiting: String,
    next_gate: String,
}

/// One key's job.
pub struct Slot {
    key: KeyRef,
    record: Mutex<JobRecord>,
    live: Mutex<Live>,
    /// Woken by reports, cancel and changes.
    wake: Notify,
    /// Held by the driver while it takes a step.
    stepping: tokio::sync::Mutex<()>,
    /// Turns true when the job ends.
    done: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every key's job, and the file they are kept in.
pub struct Jobs {
    slots: Mutex<BTreeMap<KeyRef, Arc<Slot>>>,
    file: PathBuf,
    /// Serializes writes of the file.
    writing: Mutex<()>,
    /// Set by [`Jobs::start_tasks`]: drivers stop with the agent.
    stop: Mutex<Option<watch::Receiver<bool>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Why the job file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("rotation jobs file {path}: {reason}; the keys themselves are consistent: move the file aside to start without the jobs it holds (their keys stay as they are, resume them with `keyward rotate KEY`)")]
pub struct JobsFileError {
    path: PathBuf,
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct JobsFile {
    version: u32,
    jobs: Vec<JobRecord>,
}

impl Jobs {
    /// Reads the jobs in `state_dir`'s file (none if it does not exist).
    pub fn load(state_dir: &Path) -> Result<Jobs, JobsFileError> {
        let file = state_dir.join(JOBS_FILE);
        let err = |reason: String| JobsFileError {
            path: file.clone(),
            reason,
        };
        let mut slots = BTreeMap::new();
        match std::fs::read(&file) {
            Ok(bytes) => {
                let parsed: JobsFile =
                    serde_json::from_slice(&bytes).map_err(|e| err(format!("not a jobs file ({e})")))?;
                if parsed.version != 1 {
                    return Err(err(format!(
                        "version {} is not one this agent reads (1)",
                        parsed.version
                    )));
                }
                for record in parsed.jobs {
                    let key: KeyRef = record
                        .key
                        .parse()
                        .map_err(|e| err(format!("names the key {:?} ({e})", record.key)))?;
                    slots.insert(key.clone(), Arc::new(Slot::new(key, record)));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(format!("cannot be read ({e})"))),
        }
        Ok(Jobs {
            slots: Mutex::new(slots),
            file,
            writing: Mutex::new(()),
            stop: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Writes every job to the file: a temporary file, fsynced, renamed
    /// over it, and the directory fsynced.
    fn save(&self) -> Result<(), std::io::Error> {
        let _writing = lock(&self.writing);
        let jobs: Vec<JobRecord> = lock(&self.slots).values().map(|s| lock(&s.record).clone()).collect();
        let bytes = serde_json::to_vec_pretty(&JobsFile { version: 1, jobs })?;
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new().prefix(".rotations").tempfile_in(dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.file).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()
    }

    fn slot(&self, key: &KeyRef) -> Option<Arc<Slot>> {
        lock(&self.slots).get(key).cloned()
    }

    /// Whether `key` has a running job.
    pub fn active(&self, key: &KeyRef) -> bool {
        self.slot(key).is_some_and(|s| lock(&s.record).active)
    }

    /// The step of `key`'s running job (for the step gauge).
    pub fn step_of(&self, key: &KeyRef) -> Option<Step> {
        let slot = self.slot(key)?;
        let r = lock(&slot.record);
        r.active.then_some(r.step)
    }

    /// The job of `key` (running or last), for the status.
    pub fn job(&self, key: &KeyRef) -> Option<proto::RotationJob> {
        self.slot(key).map(|s| s.to_proto())
    }

    /// Whether `key`'s job ran the validator on `version` after promoting
    /// it, and it accepted.
    pub fn validated(&self, key: &KeyRef, version: u64) -> bool {
        self.slot(key).is_some_and(|s| {
            let r = lock(&s.record);
            r.new_version == Some(version) && r.validated == Some(true)
        })
    }

    /// When the schedule may try `key` again after failures.
    fn retry_at(&self, key: &KeyRef) -> Option<SystemTime> {
        let slot = self.slot(key)?;
        let r = lock(&slot.record);
        r.retry_at.map(from_unix)
    }

    /// Whether `key`'s last job was a scheduled one that did not finish
    /// (its key may be left mid-rotation; the schedule resumes it).
    fn last_was_scheduled(&self, key: &KeyRef) -> bool {
        self.slot(key).is_some_and(|s| {
            let r = lock(&s.record);
            r.trigger == Trigger::Schedule && r.result != Some(JobResult::Ok)
        })
    }

    /// Wakes `key`'s job (a report arrived, the key changed).
    pub fn wake(&self, key: &KeyRef) {
        if let Some(s) = self.slot(key) {
            s.wake.notify_one();
        }
    }

    /// Forgets `key`'s job record (the key was deleted and its job ended).
    pub fn forget(&self, key: &KeyRef) {
        let removed = {
            let mut slots = lock(&self.slots);
            match slots.get(key) {
                Some(s) if !lock(&s.record).active => slots.remove(key).is_some(),
                _ => false,
            }
        };
        if removed {
            if let Err(e) = self.save() {
                tracing::error!(file = %self.file.display(), "cannot write the rotation jobs file: {e}");
            }
        }
    }

    /// Starts the drivers of the jobs that were running when the agent
    /// stopped, and the schedule; they stop when `stop` turns true.
    pub fn start_tasks(agent: &Arc<Agent>, stop: watch::Receiver<bool>) {
        let jobs = &agent.jobs;
        *lock(&jobs.stop) = Some(stop.clone());
        let running: Vec<Arc<Slot>> = lock(&jobs.slots)
            .values()
            .filter(|s| lock(&s.record).active)
            .cloned()
            .collect();
        for slot in running {
            driver::resume(agent, &slot);
            lock(&slot.record).note("resumed after the agent started".to_owned());
            jobs.spawn(agent, slot);
        }
        let handle = tokio::spawn(schedule::run(agent.clone(), stop));
        lock(&jobs.tasks).push(handle);
    }

    fn spawn(&self, agent: &Arc<Agent>, slot: Arc<Slot>) {
        let Some(stop) = lock(&self.stop).clone() else {
            // Not started yet (start_tasks resumes it).
            return;
        };
        let handle = tokio::spawn(driver::drive(agent.clone(), slot, stop));
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    /// Waits for the drivers and the schedule to stop (after `stop`): a
    /// step under way gets `limit` to finish, then is dropped (it resumes
    /// at the next start).
    pub async fn finish(&self, limit: Duration) {
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.tasks));
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(limit, t).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Writes the file, logging (and alerting on) a failure: the job goes
    /// on, but would not resume after a restart.
    fn persist(&self, agent: &Agent, key: &KeyRef) {
        if let Err(e) = self.save() {
            let msg = format!(
                "the rotation jobs file {} could not be written ({e}): the job of {key} goes on, but would not resume after a restart",
                self.file.display()
            );
            tracing::error!("{msg}");
            agent.alerting.health(
                crate::alerts::detect::Subject::Agent("rotation"),
                crate::alerts::Severity::Warning,
                msg,
            );
        }
    }
}

impl Slot {
    fn new(key: KeyRef, record: JobRecord) -> Slot {
        let active = record.active;
        Slot {
            key,
            record: Mutex::new(record),
            live: Mutex::new(Live::default()),
            wake: Notify::new(),
            stepping: tokio::sync::Mutex::new(()),
            done: watch::Sender::new(!active),
        }
    }

    fn to_proto(&self) -> proto::RotationJob {
        let r = lock(&self.record);
        let live = lock(&self.live);
        proto::RotationJob {
            key: Some(crate::wire::ToWire::to_proto(&self.key)),
            trigger: r.trigger.as_str().to_owned(),
            step: r.step.as_str().to_owned(),
            next_gate: if r.active {
                live.next_gate.clone()
            } else {
                String::new()
            },
            waiting: if r.active { live.waiting.clone() } else { String::new() },
            active: r.active,
            result: r.result.map(|x| x.as_str().to_owned()).unwrap_or_default(),
            message: r.message.clone(),
            started_at: Some(timestamp(from_unix(r.started_at))),
            updated_at: Some(timestamp(from_unix(r.updated_at))),
            until: match r.until {
                Until::Staged => proto::RotationUntil::UntilStaged,
                Until::Promoted => proto::RotationUntil::UntilPromoted,
                Until::Retired => proto::RotationUntil::UntilRetired,
            } as i32,
            new_version: r.new_version.unwrap_or(0),
            generation: r.generation,
            failed_attempts: r.failed_attempts,
            retry_at: r.retry_at.map(|t| timestamp(from_unix(t))),
            log: r.log.clone(),
        }
    }
}

/// Who a caller is, for a job's `started_by`.
fn started_by(caller: Option<&Caller>) -> String {
    caller.map_or_else(|| "schedule".to_owned(), |c| c.describe())
}

/// A new job record for `key` in `state`, adopting a rotation under way.
fn new_record(
    key: &KeyRef,
    trigger: Trigger,
    until: Until,
    by: String,
    state: &crate::keyset::KeySetState,
) -> JobRecord {
    let now = unix(SystemTime::now());
    let new_version = match state.state {
        RotationState::Steady => None,
        RotationState::Staged => state.fallback.as_ref().map(|f| f.number),
        RotationState::Promoted => Some(state.primary.number),
    };
    JobRecord {
        key: key.to_string(),
        trigger,
        until,
        new_version,
        rolled_back: false,
        validated: None,
        fleet: false,
        fleet_timeout_secs: 120,
        cancel: false,
        active: true,
        result: None,
        message: String::new(),
        started_by: by,
        started_at: now,
        updated_at: now,
        step: Step::Stage,
        generation: state.generation,
        intent: None,
        failed_attempts: 0,
        retry_at: None,
        log: Vec::new(),
    }
}

/// Starts a job in `record` for `key` (replacing its last, finished one,
/// whose backoff it keeps), persists it and spawns its driver.
fn begin(agent: &Arc<Agent>, key: &KeyRef, mut record: JobRecord) -> Arc<Slot> {
    let jobs = &agent.jobs;
    let slot = {
        let mut slots = lock(&jobs.slots);
        if let Some(old) = slots.get(key) {
            let old = lock(&old.record);
            record.failed_attempts = old.failed_attempts;
            record.retry_at = old.retry_at;
        }
        let describe = match record.new_version {
            None => format!("started by {} ({})", record.started_by, record.trigger.as_str()),
            Some(v) => format!(
                "started by {} ({}), resuming the rotation to v{v} under way",
                record.started_by,
                record.trigger.as_str()
            ),
        };
        record.note(describe);
        let slot = Arc::new(Slot::new(key.clone(), record));
        slots.insert(key.clone(), slot.clone());
        slot
    };
    jobs.persist(agent, key);
    jobs.spawn(agent, slot.clone());
    slot
}

/// Audits a job's start or end.
async fn audit_job(agent: &Agent, caller: Option<&Caller>, key: &KeyRef, outcome: Outcome, detail: String) {
    let _ = agent
        .audit
        .record(AuditEvent {
            caller: caller.map(|c| c.record.clone()),
            key: Some(key.to_string()),
            detail: Some(detail),
            ..AuditEvent::new(Event::RotationJob, outcome)
        })
        .await;
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
    if state.state == RotationState::Steady {
        if req.secret.is_empty() && settings.generator.is_none() {
            return Err(ApiError::FailedPrecondition(format!(
                "{key} has no generator hook configured: pass the new key (keyward rotate {key} --stdin or --file), or configure a generator"
            )));
        }
        if !req.secret.is_empty() {
            // A given key is staged now: it cannot wait in the job file.
            let limit = agent.config().limits.max_secret_bytes;
            if req.secret.len() > limit {
                return Err(ApiError::InvalidArgument(format!(
                    "the new secret for {key} is {} bytes; the limit is {limit} bytes (limits.max_secret_bytes): nothing was staged",
                    req.secret.len()
                )));
            }
            let secret = Secret::copy_from(&req.secret);
            drop(req.secret);
            let expires_at = req.expires_at.as_ref().and_then(crate::wire::from_timestamp);
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
            )?;
            state = done.state;
        }
    }
    let mut record = new_record(&key, Trigger::Manual, until, started_by(Some(caller)), &state);
    record.fleet = req.fleet;
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
    let slot = begin(agent, &key, record);
    Ok(slot.to_proto())
}

/// Starts a scheduled job for `key` (the schedule found it due).
async fn start_scheduled(agent: &Arc<Agent>, key: &KeyRef, why: String) {
    let Some(state) = agent.store.get(key) else { return };
    if agent.jobs.active(key) {
        return;
    }
    let record = new_record(key, Trigger::Schedule, Until::Retired, started_by(None), &state);
    audit_job(
        agent,
        None,
        key,
        Outcome::Started,
        format!("rotation job started (schedule): {why}"),
    )
    .await;
    begin(agent, key, record);
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
        r.cancel = true;
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
