//! Who a caller is beyond its uid: the program it runs and the unit it
//! belongs to, verified before an `executables` or `units` selector may
//! match it.
//!
//! The kernel vouches for a connection's uid and gid (`SO_PEERCRED`);
//! everything else the agent reads from `/proc`, about a process that may
//! have changed or lied. A caller matches executable and unit selectors only
//! when all of this holds ([`verify`]):
//!
//! - **The pid is pinned.** The process read in `/proc/<pid>` is the one
//!   that connected: its start time equals the one read when the connection
//!   was accepted, itself pinned by the peer's pidfd (`SO_PEERPIDFD`) where
//!   the kernel has one (see [`crate::server::peer`]).
//! - **Same namespaces.** It runs in the agent's user namespace and in the
//!   host's mount namespace (PID 1's, or the agent's own where PID 1's
//!   cannot be read), so paths mean to it what they mean to the agent: a
//!   program bind-mounted over a granted path inside a private mount
//!   namespace is not the granted program.
//! - **The file, not the path.** Its running image (`stat` through
//!   `/proc/<pid>/exe`) is the same file (device and inode) as a configured
//!   path is now ([`ProcessIdentity::executables`]).
//! - **Its own code only.** It was not started with a dynamic-loader
//!   override (`LD_PRELOAD`, `LD_LIBRARY_PATH`, `LD_AUDIT`), is not traced,
//!   and maps no executable code from a file a non-root user can write.
//! - **A unit by systemd's rules** ([`cgroup`]): never one inside a
//!   delegated subtree.
//! - **Every holder alike** ([`holders`]): every process that holds the
//!   connection's other end passes the same checks with the same image and
//!   unit, and the process that connected is one of them; so a program that
//!   connects, keeps the socket in a child, and executes a granted program
//!   gains nothing.
//!
//! This is done at most once per connection, and only when a grant that
//! lists executables or units could apply to the caller's uid and groups
//! (see `Agent::allows`), or to tell reporters apart: uid-only grants never
//! pay for it. At most two checks run at once (each reads all of
//! `/proc/*/fd`), so a caller opening connection after connection delays
//! its own kind but cannot take the machine's CPU.

pub mod cgroup;
pub mod holders;
pub mod pidfd;
pub mod procfs;

use std::sync::OnceLock;

pub use crate::agent::caller::ProcessIdentity;
use crate::agent::caller::{CgroupUnit, FileId};

/// One process, as the checks see it.
struct Inspected {
    pid: i32,
    euid: Option<u32>,
    image: Result<FileId, String>,
    unit: Result<Option<CgroupUnit>, String>,
}

/// The namespaces a verified caller must be in: the agent's user namespace,
/// and the host's mount namespace (PID 1's, readable with CAP_SYS_PTRACE;
/// the agent's own otherwise, e.g. when it is not root).
fn reference_namespaces() -> &'static Result<(FileId, FileId), String> {
    static NAMESPACES: OnceLock<Result<(FileId, FileId), String>> = OnceLock::new();
    NAMESPACES.get_or_init(|| {
        let (user, own_mnt) = procfs::namespaces(std::path::Path::new("/proc/self"))
            .map_err(|e| format!("the agent cannot read its own namespaces ({e})"))?;
        let mnt = procfs::namespaces(std::path::Path::new("/proc/1"))
            .map(|(_, m)| m)
            .unwrap_or(own_mnt);
        Ok((user, mnt))
    })
}

/// Checks one process.
fn inspect(pid: i32) -> Inspected {
    let proc = procfs::dir(pid);
    let both = |reason: String| Inspected {
        pid,
        euid: None,
        image: Err(reason.clone()),
        unit: Err(reason),
    };
    let status = match procfs::status(&proc) {
        Ok(s) => s,
        Err(e) => return both(format!("cannot read /proc/{pid}/status ({e})")),
    };
    let namespaces = match procfs::namespaces(&proc) {
        Ok(ns) => ns,
        Err(e) => {
            return both(format!(
                "cannot read the namespaces of pid {pid} ({e}); executable and unit grants need the agent to have CAP_SYS_PTRACE"
            ))
        }
    };
    match reference_namespaces() {
        Err(e) => return both(e.clone()),
        Ok((user, mnt)) if (namespaces.0, namespaces.1) != (*user, *mnt) => {
            let which = if namespaces.0 != *user { "user" } else { "mount" };
            return both(format!(
                "pid {pid} runs in another {which} namespace than the agent's, where paths and units may mean something else"
            ));
        }
        Ok(_) => {}
    }
    let image = (|| {
        let image = procfs::image(&proc).map_err(|e| format!("cannot stat /proc/{pid}/exe ({e})"))?;
        if let Some(var) =
            procfs::loader_override(&proc).map_err(|e| format!("cannot read /proc/{pid}/environ ({e})"))?
        {
            return Err(format!(
                "pid {pid} was started with {var} set, so it may run code of another program"
            ));
        }
        if status.tracer_pid != 0 {
            return Err(format!("pid {pid} is traced by pid {}", status.tracer_pid));
        }
        if let Some(why) = procfs::foreign_code(&proc).map_err(|e| format!("cannot read /proc/{pid}/maps ({e})"))? {
            return Err(format!("pid {pid}: {why}"));
        }
        Ok(image)
    })();
    let unit = (|| {
        let Some((hierarchy, path)) =
            procfs::cgroup(&proc).map_err(|e| format!("cannot read /proc/{pid}/cgroup ({e})"))?
        else {
            return Ok(None);
        };
        let Some(unit) = cgroup::unit_of(&path)? else {
            return Ok(None);
        };
        let mount = cgroup::mount_point(hierarchy)
            .map_err(|e| format!("cannot read /proc/self/mountinfo ({e})"))?
            .ok_or_else(|| "the agent cannot find where the cgroup hierarchy is mounted".to_owned())?;
        match cgroup::delegated_at(&mount, &path) {
            Err(e) => Err(format!("cannot check the owners of cgroup {path} ({e})")),
            Ok(Some((dir, uid))) => Err(format!(
                "its cgroup {path} is in a subtree delegated to uid {uid} ({} is not root's), where any name can be made",
                dir.display()
            )),
            Ok(None) => Ok(Some(unit)),
        }
    })();
    Inspected {
        pid,
        euid: Some(status.euid),
        image,
        unit,
    }
}

/// Verifies the process `pid` at the other end of the agent's socket with
/// inode `socket_inode` (see the [module docs](self)). `start_time` is the
/// one read, pinned, when the connection was accepted. Blocking: reads
/// `/proc` (all of `/proc/*/fd` for the holders), so run it off the async
/// workers.
pub fn verify(pid: i32, start_time: u64, socket_inode: u64) -> ProcessIdentity {
    let proc = procfs::dir(pid);
    let pinned = || procfs::start_time(&proc).is_ok_and(|t| t == start_time);
    if !pinned() {
        return ProcessIdentity::refused(format!(
            "pid {pid}, which connected, has exited (its pid may now be another process's)"
        ));
    }
    let holders = match holders::peer_inode(socket_inode) {
        Ok(Some(peer)) => holders::holders(peer),
        Ok(None) => Err("the connection has no other end any more".to_owned()),
        Err(e) => Err(format!(
            "cannot find the other end of the connection through sock_diag ({e}); the agent needs AF_NETLINK"
        )),
    };
    let holders = match holders {
        Ok(h) => h,
        Err(e) => return ProcessIdentity::refused(e),
    };
    if !holders.contains(&pid) {
        return ProcessIdentity::refused(format!(
            "pid {pid}, which connected, no longer holds the connection (it was passed on, or closed across an exec)"
        ));
    }
    let peer = inspect(pid);
    let mut identity = ProcessIdentity {
        image: peer.image.clone(),
        unit: peer.unit.clone(),
    };
    for other in holders.into_iter().filter(|h| *h != pid) {
        let other = inspect(other);
        let alike = |what: &str| {
            format!(
                "pid {} also holds the connection and is not {what} as pid {pid}, which connected",
                other.pid
            )
        };
        if other.euid != peer.euid {
            identity = ProcessIdentity::refused(alike("the same user"));
            break;
        }
        if identity.image.is_ok() && other.image != peer.image {
            identity.image = Err(match &other.image {
                Err(why) => format!("{}: {why}", alike("the same program")),
                Ok(_) => alike("the same program"),
            });
        }
        if identity.unit.is_ok() && other.unit != peer.unit {
            identity.unit = Err(match &other.unit {
                Err(why) => format!("{}: {why}", alike("in the same unit")),
                Ok(_) => alike("in the same unit"),
            });
        }
    }
    // Everything read above was about the process that connected.
    if !pinned() {
        return ProcessIdentity::refused(format!("pid {pid}, which connected, exited while it was being checked"));
    }
    identity
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A python process (environment `env` only) connected to a listener
    /// of this test, sleeping until killed: the child, the agent's end of
    /// the connection, and the directory holding the listener.
    pub(super) fn python_peer(
        env: &[(&str, &str)],
    ) -> (std::process::Child, std::os::unix::net::UnixStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let child = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(30)",
            ])
            .arg(&path)
            .env_clear()
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        let (conn, _) = listener.accept().unwrap();
        (child, conn, dir)
    }

    /// The python peer's connection, verified as the agent would.
    fn verify_python(env: &[(&str, &str)]) -> (ProcessIdentity, FileId) {
        use std::os::fd::AsRawFd;
        let (mut child, conn, _dir) = python_peer(env);
        let cred = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials).unwrap();
        let pid = cred.pid();
        let start = procfs::start_time(&procfs::dir(pid)).unwrap();
        let inode = nix::sys::stat::fstat(conn.as_raw_fd()).unwrap().st_ino;
        let image = procfs::image(&procfs::dir(pid)).unwrap();
        let id = verify(pid, start, inode);
        let stale = verify(pid, start + 1, inode);
        assert!(stale.why_not().unwrap().contains("has exited"), "{:?}", stale.why_not());
        let _ = child.kill();
        let _ = child.wait();
        (id, image)
    }

    #[test]
    fn another_process_verifies_and_a_loader_override_does_not() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: reading another process's descriptors and environment needs root");
            return;
        }
        let (id, image) = verify_python(&[]);
        assert_eq!(id.image, Ok(image), "{:?}", id.why_not());
        let (id, _) = verify_python(&[("LD_LIBRARY_PATH", "/nonexistent")]);
        let why = id.why_not().unwrap();
        assert!(why.contains("LD_LIBRARY_PATH"), "{why}");
        assert!(id.unit.is_ok(), "a loader override voids the executable only");
    }
}
