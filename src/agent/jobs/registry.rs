//! The rotation jobs' records and where they are kept: each key's job
//! (running, or the last one) in memory and in `STATE_DIR/rotations.json`.
//! See the module above for what a record holds and why.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::agent::caller::Caller;
use crate::agent::Agent;
use crate::audit::{AuditEvent, Event, Outcome};
use crate::keyset::RotationState;
use crate::proto;
use crate::rotation::plan::{Gate, JobResult, Memory, Step, Trigger, Until};
use crate::secret::KeyRef;
use crate::store::{read_state_file, write_state_file};
use crate::wire::timestamp;

/// The job file's name in the state directory.
pub const JOBS_FILE: &str = "rotations.json";

/// The largest jobs file read: a record per key, each with a bounded log.
const MAX_JOBS_FILE: u64 = 64 << 20;

/// Most lines kept in a job's log.
const LOG_KEPT: usize = 32;

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
    /// What the plan reads: trigger, until, the version it staged, whether
    /// it rolled back, the validator's verdict, fleet, cancel.
    #[serde(flatten)]
    pub memory: Memory,
    /// How long it waits for the fleet, in seconds.
    pub fleet_timeout_secs: u64,
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

pub(super) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(super) fn from_unix(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

impl JobRecord {
    pub(super) fn note(&mut self, line: String) {
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
pub(super) struct Live {
    pub(super) gate: Option<(Gate, Instant)>,
    pub(super) waiting: String,
}

/// One key's job.
pub struct Slot {
    pub(super) key: KeyRef,
    pub(super) record: Mutex<JobRecord>,
    pub(super) live: Mutex<Live>,
    /// Woken by reports, cancel and changes.
    pub(super) wake: Notify,
    /// Held by the driver while it takes a step.
    pub(super) stepping: tokio::sync::Mutex<()>,
    /// Turns true when the job ends.
    pub(super) done: watch::Sender<bool>,
    /// Fleet mode: the rotation lease taken before the job began (its
    /// driver takes it over and keeps it renewed).
    pub(super) lease: Mutex<Option<crate::agent::fleet::lease::HeldLease>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every key's job, and the file they are kept in.
pub struct Jobs {
    slots: Mutex<BTreeMap<KeyRef, Arc<Slot>>>,
    file: PathBuf,
    /// Serializes writes of the file.
    writing: Mutex<()>,
    /// Set when the agent starts its tasks: drivers stop with the agent.
    stop: Mutex<Option<watch::Receiver<bool>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// One start of a key's job at a time: between "no job runs" and the
    /// job's begin there are awaits (the fleet lease, a given key's stage,
    /// the audit), and a second start meanwhile would begin a second job.
    starting: Mutex<HashMap<KeyRef, Arc<tokio::sync::Mutex<()>>>>,
}

/// A key reserved by [`Jobs::starting`] or [`Jobs::wait_to_start`] until
/// dropped.
pub(super) type Starting = tokio::sync::OwnedMutexGuard<()>;

/// How long a start by hand waits for another start of the same key (the
/// schedule's, say, asking OpenBao for the lease) before it gives up.
const START_WAIT: Duration = Duration::from_secs(10);

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
        match read_state_file(&file, MAX_JOBS_FILE) {
            Ok(Some(bytes)) => {
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
            Ok(None) => {}
            Err(e) => return Err(err(format!("cannot be used ({e})"))),
        }
        Ok(Jobs {
            slots: Mutex::new(slots),
            file,
            writing: Mutex::new(()),
            stop: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            starting: Mutex::new(HashMap::new()),
        })
    }

    /// Writes every job to the file, as the store writes key files
    /// (0600, atomically, durably).
    fn save(&self) -> Result<(), String> {
        let _writing = lock(&self.writing);
        let jobs: Vec<JobRecord> = lock(&self.slots).values().map(|s| lock(&s.record).clone()).collect();
        let bytes = serde_json::to_vec_pretty(&JobsFile { version: 1, jobs }).map_err(|e| e.to_string())?;
        let dir = self.file.parent().unwrap_or(Path::new("."));
        write_state_file(dir, JOBS_FILE, &bytes).map_err(|e| e.to_string())
    }

    pub(super) fn slot(&self, key: &KeyRef) -> Option<Arc<Slot>> {
        lock(&self.slots).get(key).cloned()
    }

    fn start_lock(&self, key: &KeyRef) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.starting).entry(key.clone()).or_default())
    }

    /// Reserves `key` while a job of it is being started; `None` when
    /// another start of it is under way (for the schedule and takeovers,
    /// which look again later).
    pub(super) fn starting(&self, key: &KeyRef) -> Option<Starting> {
        self.start_lock(key).try_lock_owned().ok()
    }

    /// [`Jobs::starting`] for a start by hand: waits for another start of
    /// `key` under way to end ([`START_WAIT`] at most, then `None`).
    pub(super) async fn wait_to_start(&self, key: &KeyRef) -> Option<Starting> {
        tokio::time::timeout(START_WAIT, self.start_lock(key).lock_owned())
            .await
            .ok()
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
            r.memory.new_version == Some(version) && r.memory.validated == Some(true)
        })
    }

    /// When the schedule may try `key` again after failures.
    pub(super) fn retry_at(&self, key: &KeyRef) -> Option<SystemTime> {
        let slot = self.slot(key)?;
        let r = lock(&slot.record);
        r.retry_at.map(from_unix)
    }

    /// Whether `key`'s last job was a scheduled one that did not finish
    /// (its key may be left mid-rotation; the schedule resumes it).
    pub(super) fn last_was_scheduled(&self, key: &KeyRef) -> bool {
        self.slot(key).is_some_and(|s| {
            let r = lock(&s.record);
            r.memory.trigger == Trigger::Schedule && r.result != Some(JobResult::Ok)
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

    /// Notes that the agent's tasks run until `stop` turns true.
    pub(super) fn started(&self, stop: watch::Receiver<bool>) {
        *lock(&self.stop) = Some(stop);
    }

    /// When the agent stops (`None` before its tasks started).
    pub(super) fn stop_signal(&self) -> Option<watch::Receiver<bool>> {
        lock(&self.stop).clone()
    }

    /// Keeps `task` to wait for at the end.
    pub(super) fn track(&self, task: JoinHandle<()>) {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// The running jobs.
    pub(super) fn running(&self) -> Vec<Arc<Slot>> {
        lock(&self.slots)
            .values()
            .filter(|s| lock(&s.record).active)
            .cloned()
            .collect()
    }

    /// Makes `slot` the job of its key, keeping the backoff of the job it
    /// replaces.
    pub(super) fn insert(&self, slot: Arc<Slot>) {
        let mut slots = lock(&self.slots);
        if let Some(old) = slots.get(&slot.key) {
            let (attempts, retry) = {
                let old = lock(&old.record);
                (old.failed_attempts, old.retry_at)
            };
            let mut r = lock(&slot.record);
            r.failed_attempts = attempts;
            r.retry_at = retry;
        }
        slots.insert(slot.key.clone(), slot);
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
    pub(super) fn persist(&self, agent: &Agent, key: &KeyRef) {
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
    pub(super) fn new(key: KeyRef, record: JobRecord) -> Slot {
        let active = record.active;
        Slot {
            key,
            record: Mutex::new(record),
            live: Mutex::new(Live::default()),
            wake: Notify::new(),
            stepping: tokio::sync::Mutex::new(()),
            done: watch::Sender::new(!active),
            lease: Mutex::new(None),
        }
    }

    pub(super) fn to_proto(&self) -> proto::RotationJob {
        let r = lock(&self.record);
        let live = lock(&self.live);
        proto::RotationJob {
            key: Some(crate::wire::ToWire::to_proto(&self.key)),
            trigger: r.memory.trigger.as_str().to_owned(),
            step: r.step.as_str().to_owned(),
            next_gate: match (r.active, live.gate) {
                (true, Some((gate, _))) => gate.describe().to_owned(),
                _ => String::new(),
            },
            waiting: if r.active { live.waiting.clone() } else { String::new() },
            active: r.active,
            result: r.result.map(|x| x.as_str().to_owned()).unwrap_or_default(),
            message: r.message.clone(),
            started_at: Some(timestamp(from_unix(r.started_at))),
            updated_at: Some(timestamp(from_unix(r.updated_at))),
            until: match r.memory.until {
                Until::Staged => proto::RotationUntil::UntilStaged,
                Until::Promoted => proto::RotationUntil::UntilPromoted,
                Until::Retired => proto::RotationUntil::UntilRetired,
            } as i32,
            new_version: r.memory.new_version.unwrap_or(0),
            generation: r.generation,
            failed_attempts: r.failed_attempts,
            retry_at: r.retry_at.map(|t| timestamp(from_unix(t))),
            log: r.log.clone(),
        }
    }
}

/// Who a caller is, for a job's `started_by`.
pub(super) fn started_by(caller: Option<&Caller>) -> String {
    caller.map_or_else(|| "schedule".to_owned(), |c| c.describe())
}

/// A new job record for `key` in `state`, adopting a rotation under way.
pub(super) fn new_record(
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
        memory: Memory {
            trigger,
            until,
            new_version,
            rolled_back: false,
            validated: None,
            fleet: false,
            cancel: false,
        },
        fleet_timeout_secs: 120,
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

/// Audits a job's start or end.
pub(super) async fn audit_job(agent: &Agent, caller: Option<&Caller>, key: &KeyRef, outcome: Outcome, detail: String) {
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
