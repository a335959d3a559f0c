//! No change served without its audit record, even across a `kill -9`.
//!
//! [`super::Agent::apply`] writes a key's new state where the keys live
//! and then its audit record; a crash between the two would leave a change
//! served with no record. So before the store write it notes the change
//! here (`STATE_DIR/intents.json`, 0600, atomic and fsynced, like the jobs
//! file) and writes an `intent` audit record naming the generation the
//! change will produce; once the change's own record is written, the note
//! is dropped. At start, before anything is served, every note left is
//! settled against the store: a change the store holds gets its record
//! (outcome `ok`, saying it was recorded at start); one it does not hold is
//! recorded as `not_applied`.
//!
//! Why a note beside the audit log rather than a scan of it: changes are
//! rare, the log is large (and in segments), and the note says exactly
//! which change is in doubt. The `intent` record keeps the log readable
//! on its own. A kill after a change's record but before its note is
//! dropped gives a second `ok` record of the same generation at start,
//! saying so; never a change without one.
//!
//! A note file that is damaged, or that another uid owns or others may
//! write, stops the agent as `rotations.json` does: it decides what the
//! audit log says, and the fix (move it aside) is the operator's call.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::serve::served_versions;
use super::Agent;
use crate::audit::{AuditEvent, Event, Outcome};
use crate::secret::KeyRef;
use crate::store::{read_state_file, remove_state_file_temps, write_state_file};

/// The file's name in the state directory.
pub const INTENTS_FILE: &str = "intents.json";
const MAX_INTENTS_FILE: u64 = 1 << 20;

/// One change in doubt.
#[derive(Clone, Serialize, Deserialize)]
pub struct Intent {
    /// Which note this is.
    pub id: u64,
    /// The key, `ENV/NAME`.
    pub key: String,
    /// The audit event (`put`, `stage`, …).
    pub event: String,
    /// The generation before (`None`: the key did not exist).
    pub generation_before: Option<u64>,
    /// The generation after (`None`: a deletion).
    pub generation_after: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct IntentsFile {
    version: u32,
    intents: Vec<Intent>,
}

/// The notes, and their file.
pub struct Intents {
    dir: PathBuf,
    notes: Mutex<(u64, Vec<Intent>)>,
}

impl Intents {
    /// Reads the notes left in `state_dir` (none if there is no file).
    pub fn load(state_dir: &Path) -> Result<Intents, String> {
        let path = state_dir.join(INTENTS_FILE);
        remove_state_file_temps(state_dir, INTENTS_FILE);
        let err = |reason: String| {
            format!(
                "change intents file {}: {reason}; move it aside to start (the changes it names may then lack an audit record)",
                path.display()
            )
        };
        let notes = match read_state_file(&path, MAX_INTENTS_FILE) {
            Ok(None) => Vec::new(),
            Ok(Some(bytes)) => {
                let f: IntentsFile =
                    serde_json::from_slice(&bytes).map_err(|e| err(format!("not an intents file ({e})")))?;
                if f.version != 1 {
                    return Err(err(format!("version {} is not one this agent reads (1)", f.version)));
                }
                f.intents
            }
            Err(e) => return Err(err(format!("cannot be used ({e})"))),
        };
        let next = notes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        Ok(Intents {
            dir: state_dir.to_path_buf(),
            notes: Mutex::new((next, notes)),
        })
    }

    /// Notes a change before it is written; returns its id.
    pub fn begin(&self, mut intent: Intent) -> Result<u64, String> {
        let mut notes = self.notes.lock().unwrap_or_else(PoisonError::into_inner);
        intent.id = notes.0;
        notes.0 += 1;
        let id = intent.id;
        notes.1.push(intent);
        self.write(&notes.1).inspect_err(|_| notes.1.retain(|n| n.id != id))?;
        Ok(id)
    }

    /// The change `id` has its record: drops its note.
    pub fn done(&self, id: u64) {
        let mut notes = self.notes.lock().unwrap_or_else(PoisonError::into_inner);
        notes.1.retain(|n| n.id != id);
        if let Err(e) = self.write(&notes.1) {
            tracing::warn!(error = %e, "cannot update the change intents file; the change may be recorded again at start");
        }
    }

    fn write(&self, notes: &[Intent]) -> Result<(), String> {
        if notes.is_empty() {
            // No fsync needed: a note that comes back after a power loss
            // only gives a second record of a change that has one.
            return match std::fs::remove_file(self.dir.join(INTENTS_FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            };
        }
        let bytes = serde_json::to_vec(&IntentsFile {
            version: 1,
            intents: notes.to_vec(),
        })
        .map_err(|e| e.to_string())?;
        write_state_file(&self.dir, INTENTS_FILE, &bytes).map_err(|e| e.to_string())
    }

    /// The notes left by the last run.
    fn left(&self) -> Vec<Intent> {
        self.notes.lock().unwrap_or_else(PoisonError::into_inner).1.clone()
    }
}

impl Agent {
    /// At start, before serving: records each change left in doubt by the
    /// last run as applied (`ok`) or `not_applied`, from what the store
    /// holds. A note whose record cannot be written is kept for the next
    /// start.
    pub async fn settle_intents(&self) {
        for note in self.intents.left() {
            let Ok(key) = note.key.parse::<KeyRef>() else {
                self.intents.done(note.id);
                continue;
            };
            let now = self.store.get(&key);
            let applied = match (note.generation_after, &now) {
                // A later generation can only follow this change.
                (Some(after), Some(s)) => s.generation >= after,
                (Some(_), None) => false,
                (None, None) => true,
                (None, Some(s)) => Some(s.generation) != note.generation_before,
            };
            let (outcome, detail) = if applied {
                (Outcome::Ok, "recorded at start: the change was applied before the agent stopped, which kept its record from being written (if the agent stopped just after writing it, it precedes this one)")
            } else {
                (Outcome::NotApplied, "recorded at start: the change was not applied: the agent stopped before writing it; the key is as it was")
            };
            let record = AuditEvent {
                key: Some(note.key.clone()),
                versions: now
                    .as_deref()
                    .filter(|_| applied)
                    .map(served_versions)
                    .unwrap_or_default(),
                generation_before: note.generation_before,
                generation_after: if applied {
                    note.generation_after
                } else {
                    note.generation_before
                },
                detail: Some(detail.to_owned()),
                ..AuditEvent::new(event_named(&note.event), outcome)
            };
            tracing::warn!(key = %note.key, event = %note.event, applied, "a change in doubt at the last stop, recorded now");
            if self.audit.record(record).await.is_ok() {
                self.intents.done(note.id);
            }
        }
    }
}

impl Agent {
    /// At start, before serving, after [`Agent::settle_intents`]: one
    /// `key_loaded` record per key the store holds, naming its generation
    /// and the versions it will serve. A key file another tool wrote while
    /// the agent was down, or one hot reload had taken into memory when the
    /// agent was killed before its `reload` record, is thus on record before
    /// the first fetch of it.
    pub async fn record_loaded_keys(&self) {
        for state in self.store.list(None) {
            let record = AuditEvent {
                key: Some(state.key.to_string()),
                versions: served_versions(&state),
                generation_after: Some(state.generation),
                detail: Some("served from the store at start".to_owned()),
                ..AuditEvent::new(Event::KeyLoaded, Outcome::Ok)
            };
            if let Err(e) = self.audit.record(record).await {
                tracing::error!(key = %state.key, error = %e, "the key's state at start could not be recorded");
            }
        }
    }
}

/// The change events [`super::Agent::apply`] notes.
fn event_named(name: &str) -> Event {
    [
        Event::Put,
        Event::Delete,
        Event::Reseal,
        Event::Stage,
        Event::Promote,
        Event::Rollback,
        Event::Abort,
        Event::Retire,
        Event::Reload,
        Event::FleetSync,
    ]
    .into_iter()
    .find(|e| e.as_str() == name)
    .unwrap_or(Event::Put)
}
