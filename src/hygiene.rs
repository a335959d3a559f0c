//! Process hardening for an agent that holds secrets in memory.
//!
//! Invariant: after [`harden`], the process cannot write a core dump and is
//! not ptrace-able by other processes of the same uid; its memory is locked
//! (never swapped) where the system allows, and the operator is told when it
//! is not.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// What [`harden`] achieved.
#[derive(Debug, Clone, Default)]
pub struct HygieneReport {
    /// `PR_SET_DUMPABLE` is 0 and `RLIMIT_CORE` is 0.
    pub core_dumps_disabled: bool,
    /// `mlockall(MCL_CURRENT | MCL_FUTURE)` succeeded.
    pub memory_locked: bool,
    /// Things an operator should know (each says what to do).
    pub warnings: Vec<String>,
}

/// Turns off core dumps and, if `lock_memory`, locks all current and future
/// memory.
///
/// Memory is only locked when the process may lock without limit (root with
/// `CAP_IPC_LOCK`, or an unlimited `RLIMIT_MEMLOCK`): with `MCL_FUTURE` and a
/// small limit, later allocations would fail, which is worse than swapping.
pub fn harden(lock_memory: bool) -> HygieneReport {
    let mut report = HygieneReport::default();

    let dumpable = nix::sys::prctl::set_dumpable(false);
    let core = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    match (dumpable, core) {
        (Ok(()), Ok(())) => report.core_dumps_disabled = true,
        (d, c) => report.warnings.push(format!(
            "could not disable core dumps (prctl: {d:?}, setrlimit: {c:?}); set LimitCORE=0 in the unit"
        )),
    }

    if lock_memory {
        let unlimited = matches!(getrlimit(Resource::RLIMIT_MEMLOCK), Ok((soft, _)) if soft == RLIM_INFINITY);
        if nix::unistd::geteuid().is_root() || unlimited {
            use nix::sys::mman::{mlockall, MlockAllFlags};
            match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
                Ok(()) => report.memory_locked = true,
                Err(e) => report.warnings.push(format!(
                    "memory is not locked (mlockall: {e}); secrets may be swapped: grant CAP_IPC_LOCK or set LimitMEMLOCK=infinity"
                )),
            }
        } else {
            report.warnings.push(
                "memory is not locked: RLIMIT_MEMLOCK is limited and the agent is not root; secrets may be swapped: grant CAP_IPC_LOCK or set LimitMEMLOCK=infinity (or lock_memory = false to silence this)"
                    .to_owned(),
            );
        }
    }
    report
}

/// Hardening for the commands that hold keys for as long as they run
/// (`keyward run`, `keyward render`): no core dump (soft and hard limit 0,
/// which the child inherits too: it holds the keys in its environment), not
/// dumpable (other processes of the user cannot ptrace it or read its
/// memory through /proc), and memory locked where that needs no limit a
/// later allocation could hit (root, or an unlimited RLIMIT_MEMLOCK): best
/// effort, silent when not allowed. Returns what could not be done.
pub fn harden_client() -> Vec<String> {
    harden(true)
        .warnings
        .into_iter()
        .filter(|w| w.starts_with("could not disable core dumps"))
        .collect()
}

/// True when this process's dumpable flag is off (read back from the
/// kernel, for tests and `GetStatus`).
pub fn core_dumps_disabled() -> bool {
    let core_limit_zero = matches!(getrlimit(Resource::RLIMIT_CORE), Ok((0, 0)));
    matches!(nix::sys::prctl::get_dumpable(), Ok(false)) && core_limit_zero
}

/// `CAP_SYS_PTRACE`'s bit in the capability sets (linux/capability.h).
const CAP_SYS_PTRACE: u32 = 19;

/// True when `cap` is in this process's effective capability set, read from
/// `/proc/self/status`; `None` when that cannot be read.
fn has_effective_capability(cap: u32) -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    let set = u64::from_str_radix(hex, 16).ok()?;
    Some(set & (1u64 << cap) != 0)
}

/// A warning for an agent running as root whose policy has grants that
/// name executables or units (for callers on keys.sock) while it lacks
/// `CAP_SYS_PTRACE`: without that capability the kernel refuses to show it
/// `/proc/<pid>/exe`, the namespaces and the open files of processes run by
/// other users (or holding capabilities it lacks), and it cannot verify
/// such callers, so those grants never match them. They fail closed (the
/// caller is denied); the warning says why before someone is.
pub fn executable_grants_warning(policy: &crate::policy::Policy) -> Option<String> {
    let narrows = policy
        .grants
        .iter()
        .any(|g| g.names_principal() && g.narrows_by_process());
    if !narrows || !nix::unistd::geteuid().is_root() {
        return None;
    }
    match has_effective_capability(CAP_SYS_PTRACE) {
        Some(false) => Some(
            "grants name executables or units, but keywardd lacks CAP_SYS_PTRACE, so it cannot verify callers run by other users (their /proc/PID/exe, namespaces and open files): those grants will deny them; under systemd add CapabilityBoundingSet=CAP_SYS_PTRACE in a drop-in (see packaging/systemd/README.md), or grant by users and groups alone"
                .to_owned(),
        ),
        _ => None,
    }
}
