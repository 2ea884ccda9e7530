//! Adding and removing the virtual addresses with rtnetlink (RTM_NEWADDR, RTM_DELADDR)
//! and looking up an interface's index and hardware address (RTM_GETLINK), without
//! running `ip`. Both directions are idempotent: an address already there counts as
//! added, one already gone as removed.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{AddressMessageBuilder, Handle};

use crate::config::Vip;

/// Every netlink request gets this long; the kernel answers in microseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// An interface, as the kernel knows it now.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    /// Empty on links without one (e.g. tun devices): no ARP is sent there.
    pub mac: Vec<u8>,
}

/// A route-netlink connection, its I/O driven by a task of its own.
pub struct Netlink {
    handle: Handle,
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn errno(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.raw_code().abs(),
        _ => 0,
    }
}

async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, rtnetlink::Error>>,
) -> io::Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(to_io),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "netlink request not answered",
        )),
    }
}

impl Netlink {
    pub fn connect() -> io::Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub async fn link(&self, name: &str) -> io::Result<Link> {
        let found = bounded(
            self.handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next(),
        )
        .await
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ENODEV) {
                io::Error::new(io::ErrorKind::NotFound, format!("no interface {name:?}"))
            } else {
                e
            }
        })?;
        let msg = found.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no interface {name:?}"))
        })?;
        let mac = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(m) => Some(m.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Link {
            index: msg.header.index,
            mac,
        })
    }

    /// Adds `vip` to its interface; an address already there is success. An IPv6
    /// address skips duplicate address detection (as keepalived's do): it moves
    /// between the nodes of a pair, and must serve at once, not a second later.
    pub async fn add(&self, vip: &Vip, link: &Link) -> io::Result<()> {
        let mut request =
            self.handle
                .address()
                .add(link.index, vip.address.addr(), vip.address.prefix_len());
        if vip.address.addr().is_ipv6() {
            let message = request.message_mut();
            message.header.flags |= AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, request.execute()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if errno(&e) == libc::EEXIST => Ok(()),
            Ok(Err(e)) => Err(to_io(e)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "netlink request not answered",
            )),
        }
    }

    /// Removes `vip` from its interface; an address (or interface) already gone is
    /// success.
    pub async fn remove(&self, vip: &Vip) -> io::Result<()> {
        let link = match self.link(&vip.interface).await {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let prefix = vip.address.prefix_len();
        let message = match vip.address.addr() {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(link.index)
                .address(a, prefix)
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(link.index)
                .address(a, prefix)
                .build(),
        };
        let request = self.handle.address().del(message);
        match tokio::time::timeout(REQUEST_TIMEOUT, request.execute()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e))
                if [libc::EADDRNOTAVAIL, libc::ENOENT, libc::ENODEV].contains(&errno(&e)) =>
            {
                Ok(())
            }
            Ok(Err(e)) => Err(to_io(e)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "netlink request not answered",
            )),
        }
    }
}
