//! The audit log's free space, watched: below `[audit] min_free` an
//! `agent_health` alert (subject `agent/audit_disk`, warning) fires, before
//! the disk is full and fail-closed fetches start failing; it resolves at
//! the next tick once there is room again.
//!
//! Checked on the agent's periodic tick ([`super::alerting::run_ticks`]):
//! one `statvfs(2)` of the log's directory. Free space is what an
//! unprivileged writer could still use (`f_bavail`), the smaller figure,
//! so the alert comes early rather than late. The last reading is also the
//! `keyward_audit_disk_free_bytes` gauge.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::Agent;
use crate::alerts::detect::Subject;
use crate::alerts::Severity;
use crate::config::size::{human_bytes, MinFree};

/// The alert's subject: `agent/audit_disk`.
pub const SUBJECT: Subject = Subject::Agent("audit_disk");

/// A filesystem's size and free space, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Free to an unprivileged writer.
    pub free: u64,
    /// The filesystem's size.
    pub size: u64,
}

/// Whether `space` is below `min_free` (never when it is off).
pub fn is_low(min_free: MinFree, space: Space) -> bool {
    !min_free.is_off() && space.free < min_free.bytes_of(space.size)
}

/// The alert's message: the filesystem, its free space and the setting.
pub fn message(min_free: MinFree, space: Space, log: &Path, mount: &Path) -> String {
    let threshold = match min_free {
        MinFree::Bytes(_) => min_free.to_string(),
        MinFree::Percent(_) => format!("{min_free} of it, {}", human_bytes(min_free.bytes_of(space.size))),
    };
    format!(
        "the filesystem at {} (audit log {}) has {} free of {}, below [audit] min_free ({threshold}): free space there or move audit_file to a larger filesystem; once it is full, fetches in fail-closed environments are refused",
        mount.display(),
        log.display(),
        human_bytes(space.free),
        human_bytes(space.size),
    )
}

/// Size and free space of the filesystem holding `dir`.
// `c_ulong` and `fsblkcnt_t` are u64 here, but not on every target.
#[allow(clippy::useless_conversion)]
pub fn space_of(dir: &Path) -> io::Result<Space> {
    let s = nix::sys::statvfs::statvfs(dir)?;
    let fragment = u64::from(s.fragment_size());
    Ok(Space {
        free: u64::from(s.blocks_available()).saturating_mul(fragment),
        size: u64::from(s.blocks()).saturating_mul(fragment),
    })
}

/// Where the filesystem holding `dir` is mounted: its highest ancestor on
/// the same device (`dir` itself if it cannot be read).
pub fn mount_point(dir: &Path) -> PathBuf {
    let device = |p: &Path| std::fs::metadata(p).ok().map(|m| m.dev());
    let Some(dev) = device(dir) else {
        return dir.to_owned();
    };
    let mut top = dir;
    while let Some(parent) = top.parent().filter(|p| device(p) == Some(dev)) {
        top = parent;
    }
    top.to_owned()
}

/// The watch's state between ticks.
pub struct DiskWatch {
    low: AtomicBool,
    /// The last reading of free bytes (`u64::MAX`: none yet).
    free: AtomicU64,
}

impl Default for DiskWatch {
    fn default() -> DiskWatch {
        DiskWatch {
            low: AtomicBool::new(false),
            free: AtomicU64::new(u64::MAX),
        }
    }
}

impl DiskWatch {
    /// Reads the free space and raises, refreshes or clears the alert.
    pub fn check(&self, agent: &Agent) {
        let config = agent.config();
        let log = &config.paths.audit_file;
        let dir = match log.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let space = match space_of(dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot read the audit log's free space");
                return;
            }
        };
        self.free.store(space.free, Ordering::Relaxed);
        let min_free = config.audit.min_free;
        if is_low(min_free, space) {
            let message = message(min_free, space, log, &mount_point(dir));
            if !self.low.swap(true, Ordering::Relaxed) {
                tracing::warn!("{message}");
            }
            agent.alerting.health(SUBJECT, Severity::Warning, message);
        } else if self.low.swap(false, Ordering::Relaxed) {
            tracing::info!(free = %human_bytes(space.free), "the audit log's filesystem has room again");
            agent.alerting.clear_health(&SUBJECT);
        }
    }

    /// Free bytes at the last check, if there was one.
    pub fn free_bytes(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|&f| f != u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn low_is_below_the_threshold_in_bytes_or_share() {
        let table = [
            (MinFree::Bytes(256 * MIB), 255 * MIB, 1000 * MIB, true),
            (MinFree::Bytes(256 * MIB), 256 * MIB, 1000 * MIB, false),
            (MinFree::Percent(500), 49 * MIB, 1000 * MIB, true),
            (MinFree::Percent(500), 50 * MIB, 1000 * MIB, false),
            (MinFree::Bytes(0), 0, 1000 * MIB, false),
            (MinFree::Percent(0), 0, 1000 * MIB, false),
            (MinFree::Bytes(2 * MIB), MIB, MIB, true),
        ];
        for (min_free, free, size, low) in table {
            assert_eq!(is_low(min_free, Space { free, size }), low, "{min_free} {free} {size}");
        }
    }

    #[test]
    fn the_message_names_the_filesystem_the_space_and_the_setting() {
        let space = Space {
            free: 3 * MIB / 2,
            size: 8 * MIB,
        };
        let m = message(
            MinFree::Bytes(2 * MIB),
            space,
            Path::new("/var/log/keyward/audit.jsonl"),
            Path::new("/var/log"),
        );
        assert!(
            m.starts_with("the filesystem at /var/log (audit log /var/log/keyward/audit.jsonl) has 1.5 MiB free of 8 MiB, below [audit] min_free (2 MiB): free space there"),
            "{m}"
        );
        let m = message(
            MinFree::Percent(2500),
            space,
            Path::new("/a/audit.jsonl"),
            Path::new("/"),
        );
        assert!(m.contains("below [audit] min_free (25% of it, 2 MiB)"), "{m}");
    }

    #[test]
    fn space_and_mount_point_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let space = space_of(dir.path()).unwrap();
        assert!(space.size > 0 && space.free <= space.size, "{space:?}");
        let mount = mount_point(dir.path());
        assert!(dir.path().starts_with(&mount), "{}", mount.display());
        assert_eq!(mount_point(Path::new("/")), Path::new("/"));
        assert!(space_of(&dir.path().join("missing")).is_err());
    }
}
