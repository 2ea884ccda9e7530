//! Telling the neighbours (clients, routers, the switch) that a virtual address moved,
//! so that they point their caches at this node's hardware address at once instead of
//! when their entries expire:
//!
//! - IPv4: a gratuitous ARP, an ARP request for the address from the address,
//!   broadcast on its interface;
//! - IPv6: an unsolicited neighbour advertisement (RFC 4861 7.2.6) to all nodes
//!   (`ff02::1`), with the override flag and the target link-layer address option, so
//!   that a neighbour's existing entry takes the new address.
//!
//! Both are whole Ethernet frames built here and sent through an AF_PACKET socket,
//! which needs CAP_NET_RAW; the standard library has no safe way to it, hence the
//! `unsafe` blocks, all in this module.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// The shortest Ethernet frame without its checksum; ARP is padded up to it.
const MIN_FRAME: usize = 60;
const ICMPV6: u8 = 58;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Neighbour advertisement flags: override (the receiver replaces what it has).
const FLAG_OVERRIDE: u8 = 0x20;
/// The advertisement (24 bytes) and its target link-layer address option (8 bytes).
const NA_LENGTH: u16 = 32;
/// Neighbour discovery messages must arrive with the hop limit they left with.
const ND_HOP_LIMIT: u8 = 255;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The frame announcing `ip` as held by `mac`.
pub fn frame(mac: [u8; 6], ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => arp_frame(mac, ip),
        IpAddr::V6(ip) => na_frame(mac, ip),
    }
}

/// Ethernet broadcast, then an ARP request with sender = target = `ip`.
fn arp_frame(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
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

/// Ethernet to the all-nodes multicast address, IPv6 from `ip` to `ff02::1` with hop
/// limit 255, and the neighbour advertisement for `ip` with `mac` as its link-layer
/// address.
fn na_frame(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(usize::from(NA_LENGTH));
    icmp.push(NEIGHBOR_ADVERTISEMENT);
    icmp.push(0); // code
    icmp.extend_from_slice(&[0, 0]); // checksum, below
    icmp.extend_from_slice(&[FLAG_OVERRIDE, 0, 0, 0]);
    icmp.extend_from_slice(&ip.octets());
    icmp.push(2); // option: target link-layer address
    icmp.push(1); // its length in units of 8 bytes
    icmp.extend_from_slice(&mac);
    let sum = checksum(ip, ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    let group = ALL_NODES.octets();
    f.extend_from_slice(&[0x33, 0x33, group[12], group[13], group[14], group[15]]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class, no flow label
    f.extend_from_slice(&NA_LENGTH.to_be_bytes());
    f.push(ICMPV6);
    f.push(ND_HOP_LIMIT);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&group);
    f.extend_from_slice(&icmp);
    f
}

/// The ICMPv6 checksum (RFC 4443 2.3): the one's complement sum over the pseudo-header
/// (source, destination, length, next header) and the message.
fn checksum(source: Ipv6Addr, destination: Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u32::from(*b));
            sum += hi | lo;
        }
    };
    add(&source.octets());
    add(&destination.octets());
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    add(&length.to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(message);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends the announcement of `ip` on the interface `ifindex`.
pub fn send(ifindex: u32, mac: [u8; 6], ip: IpAddr) -> io::Result<()> {
    let ethertype = match ip {
        IpAddr::V4(_) => ETH_P_ARP,
        IpAddr::V6(_) => ETH_P_IPV6,
    };
    // SAFETY: socket(2) with constant arguments; the descriptor is checked and owned
    // at once, so it is closed on every path.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            i32::from(ethertype.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let data = frame(mac, ip);
    // SAFETY: sockaddr_ll is plain data for which all zero bytes are a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ethertype.to_be();
    to.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex too large"))?;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&data[..6]);
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

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn the_arp_frame_announces_the_address_from_itself() {
        let f = frame(MAC, IpAddr::V4(Ipv4Addr::new(10, 99, 0, 100)));
        assert_eq!(f.len(), MIN_FRAME);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &MAC, "sender hardware address");
        assert_eq!(&f[28..32], &[10, 99, 0, 100], "sender address");
        assert_eq!(&f[38..42], &[10, 99, 0, 100], "target address");
    }

    #[test]
    fn the_neighbour_advertisement_overrides_with_this_hardware_address() {
        let ip: Ipv6Addr = "fd99::100".parse().unwrap();
        let f = frame(MAC, IpAddr::V6(ip));
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(&f[..6], &[0x33, 0x33, 0, 0, 0, 1], "all-nodes multicast");
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let ipv6 = &f[14..54];
        assert_eq!(ipv6[0] >> 4, 6);
        assert_eq!(&ipv6[4..6], &[0, 32], "payload length");
        assert_eq!(ipv6[6], 58, "ICMPv6");
        assert_eq!(ipv6[7], 255, "hop limit");
        assert_eq!(&ipv6[8..24], &ip.octets(), "from the address itself");
        assert_eq!(&ipv6[24..40], &ALL_NODES.octets());
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x20, "override, neither router nor solicited");
        assert_eq!(&icmp[8..24], &ip.octets(), "target");
        assert_eq!(&icmp[24..26], &[2, 1], "target link-layer address option");
        assert_eq!(&icmp[26..32], &MAC);
        // A correct checksum makes the sum over everything, checksum included, zero.
        assert_eq!(checksum(ip, ALL_NODES, icmp), 0);
    }

    #[test]
    fn the_checksum_is_the_one_computed_independently() {
        // Computed apart from this code, over the pseudo-header and the message.
        let f = frame(MAC, IpAddr::V6("fd99::100".parse().unwrap()));
        assert_eq!(&f[56..58], &[0x57, 0x6b]);
    }
}
