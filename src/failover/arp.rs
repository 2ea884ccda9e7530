//! Gratuitous ARP: an ARP request for the virtual address from the virtual address,
//! broadcast on its interface, so that neighbours (clients, routers, the switch) point
//! their caches at this node's hardware address at once instead of when their entries
//! expire. Sent through an AF_PACKET socket, which needs CAP_NET_RAW; the standard
//! library has no safe way to it, hence the `unsafe` blocks, all in this module.
//!
//! IPv6 addresses get no unsolicited neighbour advertisement (the kernel's duplicate
//! address detection sends its own neighbour solicitation when one is added).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
/// The shortest Ethernet frame without its checksum; ARP is padded up to it.
const MIN_FRAME: usize = 60;

/// The frame: Ethernet broadcast, then ARP request with sender = target = `ip`.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(MIN_FRAME);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.push(6);
    f.push(4);
    f.extend_from_slice(&1u16.to_be_bytes()); // operation: request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f.resize(MIN_FRAME, 0);
    f
}

/// Sends one gratuitous ARP for `ip` on the interface `ifindex`.
pub fn send(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let protocol = i32::from(ETH_P_ARP.to_be());
    // SAFETY: socket(2) with constant arguments; the descriptor is checked and owned
    // at once, so it is closed on every path.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data for which all zero bytes are a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex too large"))?;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let data = frame(mac, ip);
    // SAFETY: the pointers are to `data` and `to`, both alive for the call, with their
    // true lengths.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_announces_the_address_from_itself() {
        let mac = [2, 0, 0, 0, 0, 1];
        let f = frame(mac, Ipv4Addr::new(10, 99, 0, 100));
        assert_eq!(f.len(), MIN_FRAME);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &mac, "sender hardware address");
        assert_eq!(&f[28..32], &[10, 99, 0, 100], "sender address");
        assert_eq!(&f[38..42], &[10, 99, 0, 100], "target address");
    }
}
