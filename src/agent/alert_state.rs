//! The open alerts kept in `STATE_DIR/alerts.json`, so that a restart or
//! an upgrade neither opens them again at the sinks nor leaves them open
//! there for ever (see [`crate::alerts::detect::saved::SavedAlerts`] for how they
//! are taken back).
//!
//! Invariants:
//!
//! - The file is written as the store writes key files (0600, a temp file
//!   renamed over it, fsynced) *before* a notification is queued for the
//!   sinks: whatever a sink was told, the file knew first. While alerts are
//!   open it is also refreshed every [`REFRESH_EVERY`], so that a kill
//!   loses at most that much of "when was the signal last active".
//! - It is read as `rotations.json` is (no symlink, owned by the agent's
//!   user, not writable by group or others, bounded). Unlike the jobs file,
//!   a file that cannot be used does not stop the agent: it decides no
//!   step and serves no key, and refusing to start would take every key
//!   away to keep a few notifications right. It is moved aside (kept for a
//!   look, never read again), a warning names it, and an agent-health alert
//!   says what was lost: at worst, alerts open before are sent again as
//!   new, and resolve as usual.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::alerts::detect::saved::{SavedAlerts, SAVED_FORMAT};
use crate::store::{read_state_file, remove_state_file_temps, write_state_file};

/// The file's name in the state directory.
pub const ALERTS_FILE: &str = "alerts.json";
/// Where a file that could not be used is moved.
pub const REJECTED_SUFFIX: &str = ".rejected";
/// The largest file read (thousands of open alerts).
const MAX_ALERTS_FILE: u64 = 8 << 20;
/// How often the file is refreshed while alerts are open.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The alert state file, and when it was last written.
pub struct AlertFile {
    dir: PathBuf,
    /// Held while writing: snapshots are taken and written in order.
    last_write: Mutex<Option<Instant>>,
}

impl AlertFile {
    /// The file in `state_dir`.
    pub fn new(state_dir: &Path) -> AlertFile {
        AlertFile {
            dir: state_dir.to_path_buf(),
            last_write: Mutex::new(None),
        }
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(ALERTS_FILE)
    }

    /// Reads the saved alerts: `Ok(None)` when there is no file, `Err`
    /// with what is wrong (the file has then been moved aside) when it
    /// cannot be used.
    pub fn load(&self) -> Result<Option<SavedAlerts>, String> {
        let path = self.path();
        remove_state_file_temps(&self.dir, ALERTS_FILE);
        let problem = match read_state_file(&path, MAX_ALERTS_FILE) {
            Ok(None) => return Ok(None),
            Ok(Some(bytes)) => match serde_json::from_slice::<SavedAlerts>(&bytes) {
                Ok(saved) if saved.format == SAVED_FORMAT => return Ok(Some(saved)),
                Ok(saved) => format!("format {} is not one this agent reads ({SAVED_FORMAT})", saved.format),
                Err(e) => format!("not an alert state file ({e})"),
            },
            Err(e) => e.to_string(),
        };
        let aside = self.dir.join(format!("{ALERTS_FILE}{REJECTED_SUFFIX}"));
        let moved = match std::fs::rename(&path, &aside) {
            Ok(()) => format!("moved to {}", aside.display()),
            Err(e) => format!("could not be moved aside ({e}); it will be replaced"),
        };
        Err(format!(
            "alert state file {} cannot be used: {problem}; {moved}. Alerts open before the restart are not known: they may be sent again as new, and resolve as usual",
            path.display()
        ))
    }

    /// Writes `snapshot()` now; a failure is logged (alerting goes on in
    /// memory). `snapshot` runs under the write lock, so that the last
    /// write is always the latest state.
    pub fn save(&self, snapshot: impl FnOnce() -> SavedAlerts) {
        let mut last = self.last_write.lock().unwrap_or_else(PoisonError::into_inner);
        let saved = snapshot();
        let result = serde_json::to_vec_pretty(&saved)
            .map_err(|e| e.to_string())
            .and_then(|bytes| write_state_file(&self.dir, ALERTS_FILE, &bytes).map_err(|e| e.to_string()));
        *last = Some(Instant::now());
        if let Err(e) = result {
            tracing::warn!(path = ?self.path(), error = %e,
                "cannot save the open alerts; a restart may send them again as new: check the state directory");
        }
    }

    /// Whether the periodic refresh is due.
    pub fn refresh_due(&self) -> bool {
        self.last_write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|at| at.elapsed() >= REFRESH_EVERY)
    }
}
