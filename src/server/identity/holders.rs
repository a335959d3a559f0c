//! Which processes hold the other end of a connection.
//!
//! A connection is not a process: its socket can be inherited by a child,
//! kept across `execve`, or passed over another socket. The kernel's peer
//! credentials name the process that called `connect`; a program that
//! connects, forks a child that keeps the socket, and then executes a
//! granted program would be taken for that program while the child reads
//! the answers. So an executable or unit grant checks every process that
//! holds the peer's socket: the peer's inode comes from `sock_diag(7)`
//! (`UNIX_DIAG_PEER`), its holders from the `socket:[INODE]` links in
//! `/proc/*/fd`.
//!
//! What this cannot see (said in the README): a descriptor in flight in an
//! `SCM_RIGHTS` message while the scan runs, and processes outside the
//! agent's pid namespace.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;
/// `UDIAG_SHOW_PEER` (linux/unix_diag.h).
const UDIAG_SHOW_PEER: u32 = 0x4;
/// `UNIX_DIAG_PEER`, the attribute holding the peer's inode.
const UNIX_DIAG_PEER: u16 = 2;
/// Length of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// Length of `struct unix_diag_msg`.
const UNIX_DIAG_MSG_LEN: usize = 16;
/// How long the kernel gets to answer (it answers at once).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The `sock_diag` request for the Unix socket with inode `inode`, asking
/// for its peer.
fn request(inode: u32) -> [u8; 40] {
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes()); // nlmsg_len
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // seq
                                                     // struct unix_diag_req
    req[16] = libc::AF_UNIX as u8; // sdiag_family
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states: all
    req[24..28].copy_from_slice(&inode.to_ne_bytes());
    req[28..32].copy_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    // udiag_cookie: INET_DIAG_NOCOOKIE, "any socket with this inode".
    req[32..40].copy_from_slice(&[0xff; 8]);
    req
}

/// The peer inode in a `sock_diag` answer about socket `inode`.
pub fn parse_peer(answer: &[u8], inode: u32) -> io::Result<Option<u32>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag answer: {what}"));
    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if answer.len() < NLMSG_HDRLEN {
        return Err(bad("too short"));
    }
    let len = (u32_at(answer, 0) as usize).min(answer.len());
    match u16_at(answer, 4) {
        NLMSG_ERROR => {
            let errno = if len >= NLMSG_HDRLEN + 4 {
                -(u32_at(answer, NLMSG_HDRLEN) as i32)
            } else {
                0
            };
            return Err(io::Error::from_raw_os_error(errno));
        }
        SOCK_DIAG_BY_FAMILY => {}
        other => return Err(bad(&format!("message type {other}"))),
    }
    let msg = &answer[NLMSG_HDRLEN..len];
    if msg.len() < UNIX_DIAG_MSG_LEN || u32_at(msg, 4) != inode {
        return Err(bad("not about the socket asked for"));
    }
    let mut attrs = &msg[UNIX_DIAG_MSG_LEN..];
    while attrs.len() >= 4 {
        let (rta_len, rta_type) = (u16_at(attrs, 0) as usize, u16_at(attrs, 2));
        if rta_len < 4 || rta_len > attrs.len() {
            return Err(bad("attribute length"));
        }
        if rta_type == UNIX_DIAG_PEER && rta_len >= 8 {
            return Ok(Some(u32_at(attrs, 4)));
        }
        let next = (rta_len + 3) & !3;
        attrs = &attrs[next.min(attrs.len())..];
    }
    Ok(None)
}

/// The inode of the socket at the other end of the Unix socket with inode
/// `inode` (one of the agent's accepted connections); `None` when it has
/// none any more (the peer closed it).
pub fn peer_inode(inode: u64) -> io::Result<Option<u64>> {
    // sock_diag takes 32-bit inodes; Unix sockets live on sockfs, whose
    // inode numbers are 32-bit.
    let inode = u32::try_from(inode).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "inode over 32 bits"))?;
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    socket::setsockopt(
        &fd,
        socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0),
    )?;
    socket::sendto(
        fd.as_raw_fd(),
        &request(inode),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = [0u8; 8192];
    let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    Ok(parse_peer(&buf[..n], inode)?.map(u64::from))
}

/// The pids of the processes that hold the socket with inode `socket` in
/// their descriptor table. Fails when a process's descriptors cannot be
/// listed (it might hold it): the agent needs `CAP_SYS_PTRACE` to list
/// other users' descriptors.
pub fn holders(socket: u64) -> Result<Vec<i32>, String> {
    let target = format!("socket:[{socket}]");
    let mut found = Vec::new();
    let procs = std::fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))?;
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let fds = match std::fs::read_dir(entry.path().join("fd")) {
            Ok(fds) => fds,
            // Gone since /proc was listed: it holds nothing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(format!(
                    "cannot list the open files of pid {pid} ({e}), which may hold the connection"
                ))
            }
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str()) {
                found.push(pid);
                break;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn inode_of(s: &UnixStream) -> u64 {
        nix::sys::stat::fstat(s.as_raw_fd()).unwrap().st_ino
    }

    #[test]
    fn the_peer_of_a_socket_pair_and_its_holder() {
        let (a, b) = UnixStream::pair().unwrap();
        let (ia, ib) = (inode_of(&a), inode_of(&b));
        assert_eq!(peer_inode(ia).unwrap(), Some(ib));
        assert_eq!(peer_inode(ib).unwrap(), Some(ia));
        let me = std::process::id() as i32;
        // Other processes may be unreadable when not root; this one is.
        if let Ok(h) = holders(ib) {
            assert_eq!(h, [me]);
        }
    }

    #[test]
    fn answers_are_parsed_defensively() {
        assert!(parse_peer(&[0; 4], 1).is_err());
        // An NLMSG_ERROR with ENOENT.
        let mut err = vec![0u8; 20];
        err[0..4].copy_from_slice(&20u32.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        assert_eq!(parse_peer(&err, 1).unwrap_err().raw_os_error(), Some(2));
        // A message about another socket, and one with a bad attribute.
        let mut msg = vec![0u8; 40];
        msg[0..4].copy_from_slice(&40u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[20..24].copy_from_slice(&7u32.to_ne_bytes());
        assert!(parse_peer(&msg, 8).is_err());
        msg[32..34].copy_from_slice(&200u16.to_ne_bytes());
        assert!(parse_peer(&msg, 7).is_err());
        msg[32..34].copy_from_slice(&8u16.to_ne_bytes());
        msg[34..36].copy_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
        msg[36..40].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(parse_peer(&msg, 7).unwrap(), Some(99));
    }
}
