//! Hot reload of the store: watches each configured environment's directory
//! and applies key files that other tools write there. What a file means
//! (record, raw secret, rejected) is decided by [`crate::store::reload`];
//! this module turns file events into calls to it, then logs, publishes and
//! audits the outcome.
//!
//! Invariants:
//! - notify's callback runs on notify's own thread and only forwards the
//!   event into a channel: it never blocks and never touches the store.
//! - A path is acted on once it has been quiet for [`QUIET`]: a tool that
//!   writes a file in several steps fires several events and only the final
//!   file is read. A file still half-written after that is rejected, and the
//!   event of its last write applies it.
//! - Each file is applied under the admin lock, so reloads are serialized
//!   with admin changes and compare the file with memory at one consistent
//!   point (which is what makes the agent's own writes no-ops, whatever
//!   order their events arrive in). The blocking part (read, decrypt,
//!   fsync) runs on the blocking pool.
//! - Every applied, rejected or removed file gives one log line naming the
//!   file and one `reload` audit record; an applied state is pushed to
//!   watchers with reason `reloaded`.
//! - The task stops at shutdown, between files, never halfway through one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::apply::{After, Change, ChangeLock};
use super::serve::served_versions;
use super::Agent;
use crate::audit::AuditEvent;
use crate::audit::{Event, Outcome};
use crate::keyset::KeySetState;
use crate::secret::KeyRef;
use crate::store::reload::{FileKind, PathClass, ReloadOutcome};
use crate::watch::Reason;

/// How long a path must see no event before its file is read.
pub const QUIET: Duration = Duration::from_millis(100);

/// How long [`HotReload::finish`] waits for a file being applied.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Most bad file names remembered (each is warned about once).
const MAX_WARNED: usize = 1024;

type Events = mpsc::UnboundedReceiver<notify::Result<notify::Event>>;

/// The running hot-reload task.
pub struct HotReload {
    task: JoinHandle<()>,
}

impl HotReload {
    /// Waits for the task to stop once `stop` (given to [`spawn`]) is set;
    /// aborts it if a file being applied takes longer than a few seconds.
    pub async fn finish(mut self) {
        if tokio::time::timeout(STOP_GRACE, &mut self.task).await.is_err() {
            tracing::warn!("hot reload did not stop within {STOP_GRACE:?}; aborting it");
            self.task.abort();
        }
    }
}

/// Starts watching the store and spawns the task that applies changed
/// files; it runs until `stop` becomes true (or its sender is dropped). If
/// the watcher cannot start, the agent runs without hot reload (logged as
/// an error).
pub fn spawn(agent: Arc<Agent>, stop: watch::Receiver<bool>) -> HotReload {
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = start_watcher(&agent, tx);
    HotReload {
        task: tokio::spawn(run(agent, watcher, rx, stop)),
    }
}

/// A watcher on every configured environment's directory (not recursive:
/// subdirectories are never key files).
fn start_watcher(
    agent: &Agent,
    tx: mpsc::UnboundedSender<notify::Result<notify::Event>>,
) -> Option<RecommendedWatcher> {
    let forward = move |event| {
        // The receiver is gone only at shutdown.
        let _ = tx.send(event);
    };
    let mut watcher = match notify::recommended_watcher(forward) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "hot reload is off: cannot watch the store; files written into it are only read at the next start");
            return None;
        }
    };
    for env in agent.store.environments() {
        let dir = agent.store.dir().join(env);
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::error!(dir = %dir.display(), error = %e,
                "hot reload is off for this environment: cannot watch its directory (check fs.inotify.max_user_watches)");
        }
    }
    tracing::debug!(dir = %agent.store.dir().display(), "watching the store for files written by other tools");
    Some(watcher)
}

/// Why the debounce loop woke up.
enum Wake {
    Stop,
    Event(Option<notify::Result<notify::Event>>),
    Due,
}

/// Resolves once shutdown is signalled (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// The debounce loop: collects paths from events and applies each once it
/// has been quiet for [`QUIET`].
async fn run(
    agent: Arc<Agent>,
    watcher: Option<RecommendedWatcher>,
    mut events: Events,
    mut stop: watch::Receiver<bool>,
) {
    // `watcher` lives until this returns; dropping it stops notify's thread.
    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    let mut warned: HashSet<PathBuf> = HashSet::new();
    if watcher.is_some() {
        catch_up(&agent, &mut pending);
    }
    let stopping = stop.clone();
    loop {
        let due = pending.values().min().map(|last| *last + QUIET);
        let wake = tokio::select! {
            biased;
            _ = stopped(&mut stop) => Wake::Stop,
            event = events.recv() => Wake::Event(event),
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => Wake::Due,
        };
        match wake {
            Wake::Stop => break,
            Wake::Event(Some(Ok(event))) => note(&agent, &mut pending, event),
            Wake::Event(Some(Err(e))) => {
                tracing::warn!(error = %e, "store watcher error; rescanning the store");
                rescan(&agent, &mut pending);
            }
            // No watcher: nothing will ever arrive.
            Wake::Event(None) => break,
            Wake::Due => {
                let now = Instant::now();
                let mut ready: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, last)| **last + QUIET <= now)
                    .map(|(path, _)| path.clone())
                    .collect();
                ready.sort();
                for path in ready {
                    let stop_now = *stopping.borrow();
                    if stop_now {
                        break;
                    }
                    pending.remove(&path);
                    handle(&agent, &path, &mut warned).await;
                }
            }
        }
    }
    tracing::debug!("hot reload stopped");
}

/// Records an event's paths as changed now.
fn note(agent: &Agent, pending: &mut HashMap<PathBuf, Instant>, event: notify::Event) {
    if event.need_rescan() {
        tracing::warn!("the store watcher missed events; rescanning the store");
        rescan(agent, pending);
    }
    let relevant = match event.kind {
        // Opens and reads (ours included) change nothing; a close after
        // writing ends a write in place.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    if relevant {
        let now = Instant::now();
        for path in event.paths {
            pending.insert(path, now);
        }
    }
}

/// Marks the files that changed between the store's load and the start of
/// the watcher (their events were never seen), and loaded keys whose file
/// is gone. A margin covers coarse file timestamps; a file it catches that
/// did not change is a no-op.
fn catch_up(agent: &Agent, pending: &mut HashMap<PathBuf, Instant>) {
    use std::os::unix::fs::MetadataExt;
    let since = agent.store.opened_at() - Duration::from_secs(1);
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let now = Instant::now();
    for env in agent.store.environments() {
        let Ok(entries) = std::fs::read_dir(agent.store.dir().join(env)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // ctime moves on every write, rename, chmod and link creation.
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.ctime() >= since) {
                pending.insert(path, now);
            }
        }
    }
    for state in agent.store.list(None) {
        let path = agent.store.key_path(&state.key);
        if std::fs::symlink_metadata(&path).is_err() {
            pending.insert(path, now);
        }
    }
}

/// Marks every file in the watched directories, and every loaded key's
/// file (to notice removals), as changed.
fn rescan(agent: &Agent, pending: &mut HashMap<PathBuf, Instant>) {
    let now = Instant::now();
    for env in agent.store.environments() {
        if let Ok(entries) = std::fs::read_dir(agent.store.dir().join(env)) {
            for entry in entries.flatten() {
                pending.insert(entry.path(), now);
            }
        }
    }
    for state in agent.store.list(None) {
        pending.insert(agent.store.key_path(&state.key), now);
    }
}

/// Applies one quiet path.
async fn handle(agent: &Arc<Agent>, path: &Path, warned: &mut HashSet<PathBuf>) {
    let key = match agent.store.classify_path(path) {
        PathClass::Key(key) => key,
        PathClass::Ignored => {
            tracing::trace!(path = ?path, "not a key file; ignored");
            return;
        }
        PathClass::BadName(reason) => {
            if warned.len() < MAX_WARNED && warned.insert(path.to_owned()) {
                tracing::warn!("{path:?}: ignored: {reason}");
            }
            return;
        }
    };
    // Serialized with admin changes: nothing commits between reading the
    // file, comparing it with memory and committing it.
    let serial = agent.lock_changes().await;
    let max_secret_bytes = agent.config().limits.max_secret_bytes;
    let worker = Arc::clone(agent);
    let worker_key = key.clone();
    let outcome =
        match tokio::task::spawn_blocking(move || worker.store.reload_file(&worker_key, max_secret_bytes)).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(
                    "{}: not applied: the reload failed ({e}); the last good state keeps serving",
                    path.display()
                );
                return;
            }
        };
    report(agent, &serial, &key, path, outcome).await;
}

/// Logs, publishes and audits what happened to one file.
async fn report(agent: &Agent, serial: &ChangeLock<'_>, key: &KeyRef, path: &Path, outcome: ReloadOutcome) {
    let shown = path.display();
    let record = |outcome, current: Option<&KeySetState>, before: Option<u64>, detail: String| AuditEvent {
        key: Some(key.to_string()),
        versions: current.map(served_versions).unwrap_or_default(),
        generation_before: before,
        generation_after: current.map(|s| s.generation),
        detail: Some(detail),
        ..AuditEvent::new(Event::Reload, outcome)
    };
    let event = match outcome {
        ReloadOutcome::Unchanged => {
            tracing::trace!(path = %shown, "file holds the state in memory (the agent's own write)");
            return;
        }
        ReloadOutcome::Gone => {
            tracing::debug!(path = %shown, "key file removed and the key is not loaded (deleted through keyward)");
            return;
        }
        ReloadOutcome::NotAFile => {
            tracing::debug!(path = %shown, "a directory, not a key file; ignored");
            return;
        }
        ReloadOutcome::Applied { before, after, kind } => {
            let what = match kind {
                FileKind::Record { file_generation } => format!("file generation {file_generation}"),
                FileKind::RawSecret => format!("now primary version {}", after.primary.number),
            };
            tracing::info!(key = %key, generation = after.generation,
                "{shown}: applied ({}, {what}); {key} is now at generation {}", kind.as_str(), after.generation);
            let change = Change {
                key,
                before,
                after: After::Loaded(after),
                event: Event::Reload,
                reason: Reason::Reloaded,
                caller: None,
                detail: Some(format!("applied {shown}: {}, {what}", kind.as_str())),
                name_dropped: false,
                backend_version: None,
            };
            let audited = match agent.apply(serial, change).await {
                Ok(applied) => applied.audit,
                Err(e) => {
                    tracing::error!(key = %key, error = %e, "{shown}: loaded but not applied");
                    return;
                }
            };
            if let Err(e) = audited {
                tracing::error!(key = %key, error = %e, "{shown}: reload handled but its audit record could not be written");
            }
            return;
        }
        ReloadOutcome::Normalized { current } => {
            tracing::info!(key = %key,
                "{shown}: holds the current primary of {key}; rewritten in keyward's format, generation {} unchanged",
                current.generation);
            record(
                Outcome::Unchanged,
                Some(&current),
                Some(current.generation),
                format!(
                    "{shown}: raw secret equal to the current primary; rewritten in keyward's format, no new version"
                ),
            )
        }
        ReloadOutcome::RemovedOutside { current } => {
            let detail = format!(
                "{shown} was removed outside keyward; still serving generation {} of {key}; use `keyward delete {key}` to remove a key",
                current.generation
            );
            tracing::warn!(key = %key, "{detail}");
            record(Outcome::Ignored, Some(&current), Some(current.generation), detail)
        }
        ReloadOutcome::Rejected { current, reason } => {
            let serving = match &current {
                Some(c) => format!("still serving generation {} of {key}", c.generation),
                None => format!("{key} stays unknown"),
            };
            tracing::error!(key = %key,
                "{shown}: not applied: {reason}; {serving}; the file is left as it is: fix or replace it before the agent restarts");
            agent.alerting.health(
                crate::alerts::detect::Subject::Key(key.clone()),
                crate::alerts::Severity::Warning,
                format!("a rewritten key file was rejected: {shown}: {reason}; {serving}: fix or replace the file before the agent restarts"),
            );
            record(
                Outcome::Rejected,
                current.as_deref(),
                current.as_ref().map(|c| c.generation),
                format!("{shown}: {reason}"),
            )
        }
    };
    if let Err(e) = agent.audit.record(event).await {
        tracing::error!(key = %key, error = %e, "{shown}: reload handled but its audit record could not be written");
    }
}
