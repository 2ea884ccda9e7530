//! BGP-4 messages (RFC 4271) as an announce-only speaker needs them: OPEN with the
//! capabilities for multiprotocol routes (RFC 4760) and 4-octet AS numbers (RFC 6793),
//! KEEPALIVE, NOTIFICATION, and UPDATE announcing or withdrawing host routes.
//!
//! The decoder reads what a peer sends and never panics on it: every length is checked
//! against the bytes present, and every fault is the [`Notification`] to answer it
//! with. UPDATEs from the peer are checked for a consistent layout and otherwise
//! ignored: fulcrum never installs what it learns.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

pub const MARKER: [u8; 16] = [0xff; 16];
pub const HEADER_LEN: usize = 19;
/// The largest message (RFC 4271 4.1).
pub const MAX_LEN: usize = 4096;
/// The 2-octet stand-in for an AS number above 65535 (RFC 6793).
pub const AS_TRANS: u32 = 23456;

const OPEN: u8 = 1;
const UPDATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const KEEPALIVE: u8 = 4;

/// Capability codes (RFC 5492 optional parameter 2).
const PARAM_CAPABILITIES: u8 = 2;
const CAP_MULTIPROTOCOL: u8 = 1;
const CAP_FOUR_OCTET_AS: u8 = 65;

/// Path attribute type codes and flags.
const ORIGIN: u8 = 1;
const AS_PATH: u8 = 2;
const NEXT_HOP: u8 = 3;
const LOCAL_PREF: u8 = 5;
const MP_REACH_NLRI: u8 = 14;
const MP_UNREACH_NLRI: u8 = 15;
const AS4_PATH: u8 = 17;
const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;
const EXTENDED_LENGTH: u8 = 0x10;
const AS_SEQUENCE: u8 = 2;
const ORIGIN_IGP: u8 = 0;

/// Host routes per UPDATE: 200 /128s with their attributes stay well under 4096 bytes.
const PREFIXES_PER_UPDATE: usize = 200;

/// Error codes (RFC 4271 4.5) and the subcodes fulcrum sends.
pub mod code {
    pub const HEADER: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;

    pub const HEADER_NOT_SYNCHRONIZED: u8 = 1;
    pub const HEADER_BAD_LENGTH: u8 = 2;
    pub const HEADER_BAD_TYPE: u8 = 3;

    pub const OPEN_UNSPECIFIC: u8 = 0;
    pub const OPEN_BAD_VERSION: u8 = 1;
    pub const OPEN_BAD_PEER_AS: u8 = 2;
    pub const OPEN_BAD_IDENTIFIER: u8 = 3;
    pub const OPEN_UNSUPPORTED_PARAMETER: u8 = 4;
    pub const OPEN_BAD_HOLD_TIME: u8 = 6;

    pub const UPDATE_MALFORMED_ATTRIBUTES: u8 = 1;

    /// RFC 6608: an unexpected message in OpenSent, OpenConfirm or Established.
    pub const FSM_IN_OPEN_SENT: u8 = 1;
    pub const FSM_IN_OPEN_CONFIRM: u8 = 2;
    pub const FSM_IN_ESTABLISHED: u8 = 3;

    /// RFC 4486.
    pub const CEASE_ADMINISTRATIVE_SHUTDOWN: u8 = 2;
}

/// The address families fulcrum announces: unicast IPv4 or IPv6 (AFI 1 or 2, SAFI 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn afi(self) -> u16 {
        match self {
            Family::V4 => 1,
            Family::V6 => 2,
        }
    }
}

/// A peer's OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The 4-octet AS number when the peer offers the capability, else the 2-octet one.
    pub asn: u32,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    /// The peer understands 4-octet AS numbers in AS_PATH.
    pub four_octet: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: &[u8]) -> Notification {
        Notification {
            code,
            subcode,
            data: data.to_vec(),
        }
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match (self.code, self.subcode) {
            (code::HEADER, code::HEADER_NOT_SYNCHRONIZED) => "connection not synchronized",
            (code::HEADER, code::HEADER_BAD_LENGTH) => "bad message length",
            (code::HEADER, code::HEADER_BAD_TYPE) => "bad message type",
            (code::HEADER, _) => "message header error",
            (code::OPEN, code::OPEN_BAD_VERSION) => "unsupported version number",
            (code::OPEN, code::OPEN_BAD_PEER_AS) => "bad peer AS",
            (code::OPEN, code::OPEN_BAD_IDENTIFIER) => "bad BGP identifier",
            (code::OPEN, code::OPEN_UNSUPPORTED_PARAMETER) => "unsupported optional parameter",
            (code::OPEN, code::OPEN_BAD_HOLD_TIME) => "unacceptable hold time",
            (code::OPEN, _) => "OPEN message error",
            (code::UPDATE, _) => "UPDATE message error",
            (code::HOLD_TIMER_EXPIRED, _) => "hold timer expired",
            (code::FSM, _) => "finite state machine error",
            (code::CEASE, code::CEASE_ADMINISTRATIVE_SHUTDOWN) => "administrative shutdown",
            (code::CEASE, _) => "cease",
            _ => "error",
        };
        write!(f, "{name} ({}/{})", self.code, self.subcode)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    /// Checked for a consistent layout, never read further.
    Update,
    Notification(Notification),
    Keepalive,
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
        }
    }
}

/// The length of the message at the start of `buf`: `Ok(None)` while its header is
/// incomplete, or the header's fault.
pub fn frame(buf: &[u8]) -> Result<Option<usize>, Notification> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    if header[..16] != MARKER {
        return Err(Notification::new(
            code::HEADER,
            code::HEADER_NOT_SYNCHRONIZED,
            &[],
        ));
    }
    let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
    let kind = header[18];
    let min = match kind {
        OPEN => HEADER_LEN + 10,
        UPDATE => HEADER_LEN + 4,
        NOTIFICATION => HEADER_LEN + 2,
        KEEPALIVE => HEADER_LEN,
        other => {
            return Err(Notification::new(
                code::HEADER,
                code::HEADER_BAD_TYPE,
                &[other],
            ))
        }
    };
    if len < min || len > MAX_LEN || (kind == KEEPALIVE && len != HEADER_LEN) {
        return Err(Notification::new(
            code::HEADER,
            code::HEADER_BAD_LENGTH,
            &header[16..18],
        ));
    }
    Ok(Some(len))
}

/// Decodes one whole message (header included), as [`frame`] delimited it.
pub fn decode(msg: &[u8]) -> Result<Message, Notification> {
    match frame(msg)? {
        Some(len) if len == msg.len() => {}
        _ => {
            let given = u16::try_from(msg.len()).unwrap_or(u16::MAX).to_be_bytes();
            return Err(Notification::new(
                code::HEADER,
                code::HEADER_BAD_LENGTH,
                &given,
            ));
        }
    }
    let body = &msg[HEADER_LEN..];
    match msg[18] {
        OPEN => decode_open(body).map(Message::Open),
        UPDATE => decode_update(body).map(|()| Message::Update),
        NOTIFICATION => Ok(Message::Notification(Notification::new(
            body[0],
            body[1],
            &body[2..],
        ))),
        _ => Ok(Message::Keepalive),
    }
}

fn open_error(subcode: u8, data: &[u8]) -> Notification {
    Notification::new(code::OPEN, subcode, data)
}

fn decode_open(body: &[u8]) -> Result<Open, Notification> {
    let version = body[0];
    if version != 4 {
        return Err(open_error(code::OPEN_BAD_VERSION, &[0, 4]));
    }
    let my_as = u16::from_be_bytes([body[1], body[2]]);
    let hold_time = u16::from_be_bytes([body[3], body[4]]);
    if hold_time == 1 || hold_time == 2 {
        return Err(open_error(code::OPEN_BAD_HOLD_TIME, &[]));
    }
    let router_id = Ipv4Addr::new(body[5], body[6], body[7], body[8]);
    if router_id.is_unspecified() {
        return Err(open_error(code::OPEN_BAD_IDENTIFIER, &[]));
    }
    let params = &body[10..];
    if usize::from(body[9]) != params.len() {
        return Err(open_error(code::OPEN_UNSPECIFIC, &[]));
    }
    let mut four_octet = None;
    for (kind, value) in tlvs(params).map_err(|()| open_error(code::OPEN_UNSPECIFIC, &[]))? {
        if kind != PARAM_CAPABILITIES {
            return Err(open_error(code::OPEN_UNSUPPORTED_PARAMETER, &[]));
        }
        for (cap, value) in tlvs(value).map_err(|()| open_error(code::OPEN_UNSPECIFIC, &[]))? {
            if cap == CAP_FOUR_OCTET_AS {
                let asn: [u8; 4] = value
                    .try_into()
                    .map_err(|_| open_error(code::OPEN_UNSPECIFIC, &[]))?;
                four_octet = Some(u32::from_be_bytes(asn));
            }
        }
    }
    Ok(Open {
        asn: four_octet.unwrap_or(u32::from(my_as)),
        hold_time,
        router_id,
        four_octet: four_octet.is_some(),
    })
}

/// Type-length-value items with one-octet types and lengths.
fn tlvs(mut bytes: &[u8]) -> Result<Vec<(u8, &[u8])>, ()> {
    let mut out = Vec::new();
    while let [kind, len, rest @ ..] = bytes {
        let len = usize::from(*len);
        let value = rest.get(..len).ok_or(())?;
        out.push((*kind, value));
        bytes = &rest[len..];
    }
    if bytes.is_empty() {
        Ok(out)
    } else {
        Err(())
    }
}

fn decode_update(body: &[u8]) -> Result<(), Notification> {
    let malformed = || Notification::new(code::UPDATE, code::UPDATE_MALFORMED_ATTRIBUTES, &[]);
    let withdrawn = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let at = 2 + withdrawn;
    let attrs_len = body.get(at..at + 2).ok_or_else(malformed)?;
    let attrs = usize::from(u16::from_be_bytes([attrs_len[0], attrs_len[1]]));
    if at + 2 + attrs > body.len() {
        return Err(malformed());
    }
    Ok(())
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// An OPEN offering `family` and 4-octet AS numbers.
pub fn open(local_as: u32, hold_time: u16, router_id: Ipv4Addr, family: Family) -> Vec<u8> {
    let mut caps = Vec::with_capacity(16);
    caps.extend_from_slice(&[CAP_MULTIPROTOCOL, 4]);
    caps.extend_from_slice(&family.afi().to_be_bytes());
    caps.extend_from_slice(&[0, 1]);
    caps.extend_from_slice(&[CAP_FOUR_OCTET_AS, 4]);
    caps.extend_from_slice(&local_as.to_be_bytes());
    let my_as = u16::try_from(local_as).unwrap_or(AS_TRANS as u16);
    let mut body = Vec::with_capacity(10 + 2 + caps.len());
    body.push(4);
    body.extend_from_slice(&my_as.to_be_bytes());
    body.extend_from_slice(&hold_time.to_be_bytes());
    body.extend_from_slice(&router_id.octets());
    body.push(2 + caps.len() as u8);
    body.push(PARAM_CAPABILITIES);
    body.push(caps.len() as u8);
    body.extend_from_slice(&caps);
    message(OPEN, &body)
}

pub fn keepalive() -> Vec<u8> {
    message(KEEPALIVE, &[])
}

pub fn notification(n: &Notification) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + n.data.len());
    body.push(n.code);
    body.push(n.subcode);
    // The message must fit; a longer diagnostic is cut.
    let room = MAX_LEN - HEADER_LEN - 2;
    body.extend_from_slice(&n.data[..n.data.len().min(room)]);
    message(NOTIFICATION, &body)
}

/// How this speaker's routes carry its AS on one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    pub local_as: u32,
    /// The peer is in another AS: AS_PATH holds ours; within one AS it is empty and
    /// LOCAL_PREF is sent.
    pub external: bool,
    /// The peer reads 4-octet AS numbers in AS_PATH.
    pub four_octet: bool,
}

fn attribute(out: &mut Vec<u8>, flags: u8, kind: u8, value: &[u8]) {
    if value.len() > 255 {
        out.extend_from_slice(&[flags | EXTENDED_LENGTH, kind]);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, kind, value.len() as u8]);
    }
    out.extend_from_slice(value);
}

fn as_path(out: &mut Vec<u8>, path: Path) {
    if !path.external {
        attribute(out, TRANSITIVE, AS_PATH, &[]);
        attribute(out, TRANSITIVE, LOCAL_PREF, &100u32.to_be_bytes());
        return;
    }
    if path.four_octet {
        let mut v = vec![AS_SEQUENCE, 1];
        v.extend_from_slice(&path.local_as.to_be_bytes());
        attribute(out, TRANSITIVE, AS_PATH, &v);
        return;
    }
    let two = u16::try_from(path.local_as).unwrap_or(AS_TRANS as u16);
    let mut v = vec![AS_SEQUENCE, 1];
    v.extend_from_slice(&two.to_be_bytes());
    attribute(out, TRANSITIVE, AS_PATH, &v);
    if path.local_as > 0xffff {
        // RFC 6793 4.2.2: the real path beside the 2-octet one.
        let mut v = vec![AS_SEQUENCE, 1];
        v.extend_from_slice(&path.local_as.to_be_bytes());
        attribute(out, OPTIONAL | TRANSITIVE, AS4_PATH, &v);
    }
}

/// A prefix as NLRI: its length, then as many octets as that length covers.
fn nlri(out: &mut Vec<u8>, p: &IpNet) {
    let len = p.prefix_len();
    out.push(len);
    let octets = usize::from(len).div_ceil(8);
    match p.addr() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..octets]),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..octets]),
    }
}

fn update(withdrawn: &[u8], attrs: &[u8], reach: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + withdrawn.len() + attrs.len() + reach.len());
    body.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    body.extend_from_slice(withdrawn);
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(attrs);
    body.extend_from_slice(reach);
    message(UPDATE, &body)
}

/// UPDATEs announcing `prefixes` (all of `next_hop`'s family) with `next_hop`.
pub fn announce(prefixes: &[IpNet], next_hop: IpAddr, path: Path) -> Vec<Vec<u8>> {
    prefixes
        .chunks(PREFIXES_PER_UPDATE)
        .map(|chunk| {
            let mut attrs = Vec::with_capacity(64 + chunk.len() * 17);
            attribute(&mut attrs, TRANSITIVE, ORIGIN, &[ORIGIN_IGP]);
            as_path(&mut attrs, path);
            match next_hop {
                IpAddr::V4(nh) => {
                    attribute(&mut attrs, TRANSITIVE, NEXT_HOP, &nh.octets());
                    let mut reach = Vec::with_capacity(chunk.len() * 5);
                    for p in chunk {
                        nlri(&mut reach, p);
                    }
                    update(&[], &attrs, &reach)
                }
                IpAddr::V6(nh) => {
                    let mut v = Vec::with_capacity(22 + chunk.len() * 17);
                    v.extend_from_slice(&Family::V6.afi().to_be_bytes());
                    v.push(1);
                    v.push(16);
                    v.extend_from_slice(&nh.octets());
                    v.push(0);
                    for p in chunk {
                        nlri(&mut v, p);
                    }
                    attribute(&mut attrs, OPTIONAL, MP_REACH_NLRI, &v);
                    update(&[], &attrs, &[])
                }
            }
        })
        .collect()
}

/// UPDATEs withdrawing `prefixes`, all of `family`.
pub fn withdraw(prefixes: &[IpNet], family: Family) -> Vec<Vec<u8>> {
    prefixes
        .chunks(PREFIXES_PER_UPDATE)
        .map(|chunk| {
            let mut routes = Vec::with_capacity(chunk.len() * 17);
            for p in chunk {
                nlri(&mut routes, p);
            }
            match family {
                Family::V4 => update(&routes, &[], &[]),
                Family::V6 => {
                    let mut v = Vec::with_capacity(3 + routes.len());
                    v.extend_from_slice(&Family::V6.afi().to_be_bytes());
                    v.push(1);
                    v.extend_from_slice(&routes);
                    let mut attrs = Vec::with_capacity(4 + v.len());
                    attribute(&mut attrs, OPTIONAL, MP_UNREACH_NLRI, &v);
                    update(&[], &attrs, &[])
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
