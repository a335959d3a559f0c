//! Who is calling, as the transport identified them, and what verification
//! found about their process.
//!
//! The kernel vouches for a connection's uid and gid; the transport
//! (`crate::server::peer`) reads the rest from `/proc` while the pid is
//! pinned, and supplies how to verify the caller's executable and unit
//! (`crate::server::identity`). Here the agent keeps what it needs of that:
//! the principal the policy matches, the verified identity (computed at
//! most once per connection, the first time a grant needs it) and the last
//! state served on the connection.
//!
//! The executable and unit read at connect time are for messages and the
//! audit log only: policy selectors match a verified identity alone
//! ([`Caller::process_identity`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::audit::CallerRecord;
use crate::keyset::KeySetState;
use crate::policy::{Policy, Principal, Unit};

/// A file's identity: device and inode, as `stat(2)` gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    /// The identity of `meta`.
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A unit as a cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupUnit {
    /// The unit, e.g. `billing-worker.service`.
    pub name: String,
    /// Its own cgroup: the slices and the unit, e.g.
    /// `/system.slice/billing-worker.service`.
    pub cgroup: String,
}

/// What verification found: the image and unit selectors may match, or why
/// they may not.
#[derive(Clone, Debug)]
pub struct ProcessIdentity {
    /// The running image, when executable selectors may match.
    pub image: Result<FileId, String>,
    /// The unit (`None`: the caller has none), when unit selectors may match.
    pub unit: Result<Option<CgroupUnit>, String>,
}

impl ProcessIdentity {
    /// Nothing may match, for `reason`.
    pub fn refused(reason: String) -> ProcessIdentity {
        ProcessIdentity {
            image: Err(reason.clone()),
            unit: Err(reason),
        }
    }

    /// The configured executable paths of `policy` whose file is, now, the
    /// caller's running image.
    pub fn executables(&self, policy: &Policy) -> Vec<PathBuf> {
        let Ok(image) = self.image else {
            return Vec::new();
        };
        policy
            .executable_paths()
            .into_iter()
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| FileId::of(&m) == image))
            .map(PathBuf::from)
            .collect()
    }

    /// The caller's unit, when unit selectors may match it.
    pub fn unit(&self) -> Option<Unit<'_>> {
        match &self.unit {
            Ok(Some(u)) => Some(Unit {
                name: &u.name,
                cgroup: &u.cgroup,
            }),
            _ => None,
        }
    }

    /// Why executable or unit selectors cannot match, for messages: `None`
    /// when both may.
    pub fn why_not(&self) -> Option<String> {
        match (&self.image, &self.unit) {
            (Err(a), Err(b)) if a == b => Some(a.clone()),
            (Err(a), Err(b)) => Some(format!("{a}; and its unit: {b}")),
            (Err(a), Ok(_)) => Some(format!("its executable: {a}")),
            (Ok(_), Err(b)) => Some(format!("its unit: {b}")),
            (Ok(_), Ok(_)) => None,
        }
    }
}

/// How to verify a caller's process: blocking work (it reads `/proc`),
/// run off the async workers, at most once per connection.
pub type Verify = Arc<dyn Fn() -> ProcessIdentity + Send + Sync>;

/// The identity of the process at the other end of a connection.
pub struct Caller {
    /// Effective uid of the peer when it connected.
    pub uid: u32,
    /// Effective gid of the peer when it connected.
    pub gid: u32,
    /// Its pid.
    pub pid: i32,
    /// Supplementary groups, from `/proc/<pid>/status` (empty if unreadable).
    pub groups: Vec<u32>,
    /// `/proc/<pid>/exe`, where readable (for messages and the audit: the
    /// policy matches only a verified identity).
    pub exe: Option<PathBuf>,
    /// The systemd unit of `/proc/<pid>/cgroup` by systemd's rules, where
    /// there is one (for messages and the audit, as `exe`).
    pub unit: Option<String>,
    /// The same, as the audit records it.
    pub record: Arc<CallerRecord>,
    /// How to verify the executable and unit.
    verify: Verify,
    /// The verified executable and unit, once a grant needed them.
    identity: tokio::sync::OnceCell<Arc<ProcessIdentity>>,
    /// The last key state whose versions were noted as served to this
    /// caller ([`Caller::first_served`]).
    last_served: Mutex<Weak<KeySetState>>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("pid", &self.pid)
            .field("groups", &self.groups)
            .field("exe", &self.exe)
            .field("unit", &self.unit)
            .field("identity", &self.identity.get())
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// A caller with the facts the transport read; `verify` checks its
    /// process when a grant needs it.
    pub fn new(
        uid: u32,
        gid: u32,
        pid: i32,
        groups: Vec<u32>,
        exe: Option<PathBuf>,
        unit: Option<String>,
        verify: Verify,
    ) -> Caller {
        let record = Arc::new(CallerRecord {
            uid,
            gid,
            pid,
            exe: exe.as_ref().map(|p| p.display().to_string()),
            unit: unit.clone(),
        });
        Caller {
            uid,
            gid,
            pid,
            groups,
            exe,
            unit,
            record,
            verify,
            identity: tokio::sync::OnceCell::new(),
            last_served: Mutex::default(),
        }
    }

    /// The caller as the kernel vouches for it: uid and groups. No
    /// executable or unit selector matches it.
    pub fn principal(&self) -> Principal<'_> {
        Principal::of_credentials(self.uid, self.gid, &self.groups)
    }

    /// The caller's executable and unit, verified: done once per
    /// connection, off the async workers, the first time a grant needs it.
    pub async fn process_identity(&self) -> Arc<ProcessIdentity> {
        self.identity
            .get_or_init(|| async {
                let pid = self.pid;
                // A check reads all of /proc/*/fd: at most a few at once, so
                // that callers who open connection after connection cannot
                // take the machine's CPU; the others wait their turn.
                static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
                let _turn = CHECKS.acquire().await;
                let started = std::time::Instant::now();
                let verify = self.verify.clone();
                let identity = tokio::task::spawn_blocking(move || verify())
                    .await
                    .unwrap_or_else(|e| ProcessIdentity::refused(format!("the check of pid {pid} failed ({e})")));
                tracing::debug!(uid = self.uid, pid, took = ?started.elapsed(), refused = ?identity.why_not(), "caller's executable and unit checked");
                Arc::new(identity)
            })
            .await
            .clone()
    }

    /// Whether `state` is served to this connection for the first time:
    /// false when it is the state last served on it (the same allocation,
    /// held alive by the `Weak`, so never another state at its address).
    /// A client fetching the same key again skips the served-version
    /// bookkeeping with one uncontended lock.
    pub fn first_served(&self, state: &Arc<KeySetState>) -> bool {
        let mut last = self.last_served.lock().unwrap_or_else(PoisonError::into_inner);
        if std::ptr::eq(last.as_ptr(), Arc::as_ptr(state)) {
            return false;
        }
        *last = Arc::downgrade(state);
        true
    }

    /// "uid 1001 (pid 42, /usr/bin/worker, billing.service)", for messages.
    pub fn describe(&self) -> String {
        let mut s = format!("uid {} (pid {}", self.uid, self.pid);
        if let Some(exe) = &self.exe {
            s.push_str(&format!(", {}", exe.display()));
        }
        if let Some(unit) = &self.unit {
            s.push_str(&format!(", {unit}"));
        }
        s.push(')');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn why_not_names_what_failed() {
        let ok = ProcessIdentity {
            image: Ok(FileId { dev: 1, ino: 2 }),
            unit: Ok(None),
        };
        assert_eq!(ok.why_not(), None);
        assert_eq!(ProcessIdentity::refused("x".into()).why_not().as_deref(), Some("x"));
        let exe_only = ProcessIdentity {
            image: Err("traced".into()),
            ..ok.clone()
        };
        assert_eq!(exe_only.why_not().as_deref(), Some("its executable: traced"));
        assert!(exe_only.executables(&Policy::default()).is_empty());
    }
}
