//! The peer's pidfd (`SO_PEERPIDFD`, Linux 6.5 and later): a handle on the
//! very process that connected, which no later process with the same pid
//! can stand in for.
//!
//! This file holds the library's only `unsafe` code: one `getsockopt(2)`
//! that neither `nix` nor the standard library wraps. Everything else about
//! the pidfd is read from `/proc/self/fdinfo`.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SO_PEERPIDFD` in asm-generic/socket.h, the value on the architectures
/// listed; elsewhere (alpha, mips, parisc, sparc use other numbers) the
/// agent falls back to the process start time.
const SO_PEERPIDFD: Option<libc::c_int> = if cfg!(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x",
    target_arch = "powerpc64"
)) {
    Some(77)
} else {
    None
};

/// What `SO_PEERPIDFD` gave.
#[derive(Debug)]
pub enum PeerPidfd {
    /// A pidfd for the process that connected.
    Fd(OwnedFd),
    /// The kernel has no `SO_PEERPIDFD` (before Linux 6.5).
    Unsupported,
    /// The process that connected has exited and been reaped (kernels that
    /// refuse a pidfd for it; later ones give one whose pid reads -1).
    Gone,
}

/// A pidfd for the process at the other end of the connected Unix socket
/// `sock`.
pub fn peer_pidfd(sock: &impl AsRawFd) -> io::Result<PeerPidfd> {
    let Some(option) = SO_PEERPIDFD else {
        return Ok(PeerPidfd::Unsupported);
    };
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (an int) into `fd`,
    // which outlives the call; `sock` is an open descriptor for the call's
    // duration.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // An option the kernel does not know.
            Some(libc::ENOPROTOOPT) => Ok(PeerPidfd::Unsupported),
            // A peer without a live task (pidfd_prepare refuses it).
            Some(libc::EINVAL) | Some(libc::ESRCH) | Some(libc::ENODATA) => Ok(PeerPidfd::Gone),
            _ => Err(e),
        };
    }
    if fd < 0 || len as usize != std::mem::size_of::<libc::c_int>() {
        return Err(io::Error::other("SO_PEERPIDFD returned no descriptor"));
    }
    // SAFETY: the kernel just created `fd` for this process, and nothing
    // else refers to it: it is owned here, exactly once.
    Ok(PeerPidfd::Fd(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether the process behind `pidfd` still holds pid `pid`: it has not
/// been reaped, so no other process can have that pid yet.
pub fn still_holds(pidfd: &OwnedFd, pid: i32) -> io::Result<bool> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    Ok(super::procfs::parse_pidfd_pid(&info) == Some(i64::from(pid)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_pidfd_of_a_peer_names_it_until_it_is_reaped() {
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = match peer_pidfd(&a).unwrap() {
            PeerPidfd::Fd(fd) => fd,
            PeerPidfd::Unsupported => {
                eprintln!("SKIPPED: this kernel has no SO_PEERPIDFD (Linux < 6.5)");
                return;
            }
            PeerPidfd::Gone => panic!("this process is alive"),
        };
        assert!(still_holds(&fd, std::process::id() as i32).unwrap());
        assert!(!still_holds(&fd, 1).unwrap());

        // A child that connects, then exits and is reaped.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(1)",
            ])
            .arg(&path)
            .spawn()
            .unwrap();
        let (conn, _) = listener.accept().unwrap();
        let PeerPidfd::Fd(fd) = peer_pidfd(&conn).unwrap() else {
            panic!("the child is alive")
        };
        let pid = child.id() as i32;
        assert!(still_holds(&fd, pid).unwrap());
        drop(conn);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!still_holds(&fd, pid).unwrap(), "reaped");
    }
}
