//! Which uid owns the other end of a loopback TCP connection.
//!
//! TCP has no `SO_PEERCRED`. For a connection from this host, the kernel's
//! socket table (`/proc/net/tcp`, `/proc/net/tcp6`) lists the client's
//! socket with its owner: the line whose local address is the peer's and
//! whose remote address is ours.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The uid owning the socket at `peer` connected to `local`, if this host
/// has it.
pub(crate) fn peer_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let table = match peer {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    find_uid(&text, local, peer)
}

fn find_uid(table: &str, local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(l), Some(r), Some(uid)) = (fields.get(1), fields.get(2), fields.get(7)) else {
            return None;
        };
        (parse_addr(l)? == peer && parse_addr(r)? == local).then(|| uid.parse().ok())?
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel
/// prints each 32-bit word of the address in host byte order.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connecting_socket_names_its_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(peer_uid(listener.local_addr().unwrap(), peer), Some(me));
        // The other direction is the server's own socket, not a peer's.
        let unknown: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(peer_uid(listener.local_addr().unwrap(), unknown), None);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn table_lines() {
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:A000 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1001        0 1 1\n";
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:40960".parse().unwrap();
        assert_eq!(find_uid(table, local, peer), Some(1001));
        assert_eq!(find_uid(table, peer, local), None);
    }
}
