//! `[bgp]`: the service addresses this instance announces to its routers, and the
//! upstreams whose health gates each one, checked into [`Bgp`].

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawBgp, RawBgpAnnounce, RawBgpPeer};
use super::upstream::Upstream;
use super::validate::Validator;

pub const DEFAULT_BGP_PORT: u16 = 179;
/// RFC 4271's suggested hold time.
pub(super) const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(90);
pub(super) const DEFAULT_WITHDRAW_GRACE: Duration = Duration::from_secs(3);
/// The 2-octet stand-in for larger AS numbers (RFC 6793): never a real AS.
const AS_TRANS: i64 = 23456;

/// `[bgp]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bgp {
    pub router_id: Ipv4Addr,
    pub local_as: u32,
    /// Whole seconds: zero (no keepalives) or 3 to 65535.
    pub hold_time: Duration,
    /// How long a stopping instance keeps serving after it withdrew its routes.
    pub withdraw_grace: Duration,
    pub peers: Vec<BgpPeer>,
    pub announce: Vec<Announce>,
}

/// `[[bgp.peer]]`: a router fulcrum opens a session to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BgpPeer {
    pub address: IpAddr,
    pub port: u16,
    pub remote_as: u32,
    /// The source address of the session, and so the next hop of its routes; by
    /// default the kernel picks it.
    pub local_address: Option<IpAddr>,
}

impl BgpPeer {
    /// How the peer is named in logs, metrics and `/status`.
    pub fn name(&self) -> String {
        if self.port == DEFAULT_BGP_PORT {
            self.address.to_string()
        } else {
            std::net::SocketAddr::new(self.address, self.port).to_string()
        }
    }
}

/// `[[bgp.announce]]`: a host route, announced while each of its upstreams has at
/// least `min_healthy` eligible backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    pub prefix: IpNet,
    pub upstreams: Vec<String>,
    pub min_healthy: usize,
}

impl Validator<'_> {
    fn asn(&mut self, v: &toml::Spanned<i64>, key: &str) -> u32 {
        let n = *v.get_ref();
        if n == AS_TRANS || !(1..=i64::from(u32::MAX)).contains(&n) {
            self.err(
                Some(v.span()),
                key,
                format!("must be an AS number from 1 to 4294967295 other than 23456, got {n}"),
            );
            return 1;
        }
        n as u32
    }

    pub(super) fn bgp(&mut self, b: &RawBgp, upstreams: &[Upstream]) -> Bgp {
        let router_id = match b.router_id.get_ref().parse::<Ipv4Addr>() {
            Ok(a) if !a.is_unspecified() => a,
            _ => {
                self.err(
                    Some(b.router_id.span()),
                    "bgp.router_id",
                    format!(
                        "must be a nonzero IPv4 address like \"192.0.2.11\", got {:?}",
                        b.router_id.get_ref()
                    ),
                );
                Ipv4Addr::new(0, 0, 0, 1)
            }
        };
        let local_as = self.asn(&b.local_as, "bgp.local_as");
        let hold_time = self.duration_or_zero(&b.hold_time, "bgp.hold_time", DEFAULT_HOLD_TIME);
        let whole = hold_time.subsec_nanos() == 0;
        let secs = hold_time.as_secs();
        let hold_time = if whole && (secs == 0 || (3..=65535).contains(&secs)) {
            hold_time
        } else {
            let span = b.hold_time.as_ref().map(|v| v.span());
            self.err(
                span,
                "bgp.hold_time",
                "must be 0 or whole seconds from 3s to 65535s",
            );
            DEFAULT_HOLD_TIME
        };
        let withdraw_grace = self.duration_or_zero(
            &b.withdraw_grace,
            "bgp.withdraw_grace",
            DEFAULT_WITHDRAW_GRACE,
        );
        let mut peers: Vec<BgpPeer> = Vec::new();
        for (i, p) in b.peer.iter().enumerate() {
            if let Some(peer) = self.bgp_peer(i, p.get_ref()) {
                if peers
                    .iter()
                    .any(|o| o.address == peer.address && o.port == peer.port)
                {
                    self.err(
                        Some(p.get_ref().address.span()),
                        format!("bgp.peer[{i}].address"),
                        format!("{} is listed twice", peer.name()),
                    );
                }
                peers.push(peer);
            }
        }
        if b.peer.is_empty() {
            self.err(None, "bgp.peer", "at least one [[bgp.peer]] is required");
        }
        let mut announce: Vec<Announce> = Vec::new();
        for (i, a) in b.announce.iter().enumerate() {
            let key = format!("bgp.announce[{i}]");
            if let Some(entry) = self.bgp_announce(&key, a.get_ref(), upstreams) {
                if announce.iter().any(|o| o.prefix == entry.prefix) {
                    self.err(
                        Some(a.get_ref().prefix.span()),
                        format!("{key}.prefix"),
                        format!("{} is announced twice", entry.prefix),
                    );
                }
                let family = entry.prefix.addr().is_ipv4();
                if !b.peer.is_empty() && !peers.iter().any(|p| p.address.is_ipv4() == family) {
                    self.err(
                        Some(a.get_ref().prefix.span()),
                        format!("{key}.prefix"),
                        format!(
                            "no [[bgp.peer]] is an {} session to carry {}",
                            if family { "IPv4" } else { "IPv6" },
                            entry.prefix
                        ),
                    );
                }
                announce.push(entry);
            }
        }
        if b.announce.is_empty() {
            self.err(
                None,
                "bgp.announce",
                "at least one [[bgp.announce]] is required",
            );
        }
        Bgp {
            router_id,
            local_as,
            hold_time,
            withdraw_grace,
            peers,
            announce,
        }
    }

    fn bgp_peer(&mut self, i: usize, p: &RawBgpPeer) -> Option<BgpPeer> {
        let key = format!("bgp.peer[{i}]");
        let remote_as = self.asn(&p.remote_as, &format!("{key}.remote_as"));
        let port = self.int(
            &p.port,
            &format!("{key}.port"),
            1,
            65535,
            i64::from(DEFAULT_BGP_PORT),
        ) as u16;
        let address = match p.address.get_ref().parse::<IpAddr>() {
            Ok(a) if !a.is_unspecified() && !a.is_multicast() => a,
            _ => {
                self.err(
                    Some(p.address.span()),
                    format!("{key}.address"),
                    format!(
                        "must be the router's IP address like \"192.0.2.1\", got {:?}",
                        p.address.get_ref()
                    ),
                );
                return None;
            }
        };
        let local_address = match &p.local_address {
            None => None,
            Some(l) => match l.get_ref().parse::<IpAddr>() {
                Ok(a) if a.is_ipv4() == address.is_ipv4() && !a.is_unspecified() => Some(a),
                _ => {
                    self.err(
                        Some(l.span()),
                        format!("{key}.local_address"),
                        format!(
                            "must be an IP address of this host in the family of {address}, got {:?}",
                            l.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        Some(BgpPeer {
            address,
            port,
            remote_as,
            local_address,
        })
    }

    fn bgp_announce(
        &mut self,
        key: &str,
        a: &RawBgpAnnounce,
        upstreams: &[Upstream],
    ) -> Option<Announce> {
        let text = a.prefix.get_ref();
        let prefix = text
            .parse::<IpNet>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
        let prefix = match prefix {
            Some(p) if p.prefix_len() == p.max_prefix_len() => p,
            Some(p) => {
                self.err(
                    Some(a.prefix.span()),
                    format!("{key}.prefix"),
                    format!(
                        "{p} is not a host route: fulcrum announces single addresses (/32 or /128)"
                    ),
                );
                return None;
            }
            None => {
                self.err(
                    Some(a.prefix.span()),
                    format!("{key}.prefix"),
                    format!("is not an address like \"198.51.100.10/32\", got {text:?}"),
                );
                return None;
            }
        };
        let min_healthy = self.int(
            &a.min_healthy,
            &format!("{key}.min_healthy"),
            1,
            i64::from(u32::MAX),
            1,
        ) as usize;
        let mut names = Vec::new();
        for (j, u) in a.upstreams.get_ref().iter().enumerate() {
            let name = u.get_ref();
            let ukey = format!("{key}.upstreams[{j}]");
            match upstreams.iter().find(|x| &x.name == name) {
                None => self.err(Some(u.span()), ukey, format!("no upstream {name:?}")),
                Some(up) if up.backends.len() < min_healthy => self.err(
                    Some(u.span()),
                    ukey,
                    format!(
                        "has {} backend{}: min_healthy = {min_healthy} can never be met",
                        up.backends.len(),
                        if up.backends.len() == 1 { "" } else { "s" }
                    ),
                ),
                Some(_) if names.contains(name) => {
                    self.err(Some(u.span()), ukey, format!("{name:?} is listed twice"))
                }
                Some(_) => names.push(name.clone()),
            }
        }
        if a.upstreams.get_ref().is_empty() {
            self.err(
                Some(a.upstreams.span()),
                format!("{key}.upstreams"),
                "must name at least one upstream whose health gates the route",
            );
        }
        Some(Announce {
            prefix,
            upstreams: names,
            min_healthy,
        })
    }
}
