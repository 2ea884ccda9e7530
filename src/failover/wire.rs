//! The heartbeat datagram:
//!
//! ```text
//! magic "FLCR" | version u8 | state u8 | priority u8 | name length u8 | name
//! | sequence u64 | sent at (unix ms) u64 | HMAC-SHA256 of everything before (32 bytes)
//! ```
//!
//! All integers are big-endian. A receiver keeps, per peer, the highest sequence number
//! it accepted: anything not above it is a replay.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"FLCR";
const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
pub const MAX_NAME: usize = 64;
const FIXED: usize = 4 + 1 + 1 + 1 + 1 + 8 + 8 + MAC_LEN;
/// How far a heartbeat's send time may lie from the receiver's clock.
pub const MAX_SKEW_MS: u64 = 30_000;

/// What a node says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Passive,
    Active,
    /// Going away on purpose: the peer may take over at once.
    Resign,
    /// Cannot hold the addresses (for example, adding one failed).
    Fault,
}

impl State {
    /// As logs say it.
    pub fn name(self) -> &'static str {
        match self {
            State::Passive => "passive",
            State::Active => "active",
            State::Resign => "resign",
            State::Fault => "fault",
        }
    }

    fn code(self) -> u8 {
        match self {
            State::Passive => 0,
            State::Active => 1,
            State::Resign => 2,
            State::Fault => 3,
        }
    }

    fn from_code(c: u8) -> Option<State> {
        Some(match c {
            0 => State::Passive,
            1 => State::Active,
            2 => State::Resign,
            3 => State::Fault,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub node: String,
    pub priority: u8,
    pub state: State,
    pub sequence: u64,
    pub sent_at_ms: u64,
}

/// Why a datagram was dropped: the `reason` label of
/// `fulcrum_failover_heartbeats_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Size,
    Magic,
    Version,
    Mac,
    Malformed,
    UnknownNode,
    Replay,
    Stale,
    /// Our own heartbeat, looped back.
    Own,
    /// From an address that is not one of the configured peers.
    Source,
}

impl Reject {
    pub fn reason(self) -> &'static str {
        match self {
            Reject::Size => "size",
            Reject::Magic => "magic",
            Reject::Version => "version",
            Reject::Mac => "mac",
            Reject::Malformed => "malformed",
            Reject::UnknownNode => "unknown_node",
            Reject::Replay => "replay",
            Reject::Stale => "stale",
            Reject::Own => "own",
            Reject::Source => "source",
        }
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// The datagram for `hb`, signed with `key`.
pub fn encode(hb: &Heartbeat, key: &[u8]) -> Vec<u8> {
    let name = &hb.node.as_bytes()[..hb.node.len().min(MAX_NAME)];
    let mut out = Vec::with_capacity(FIXED + name.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(hb.state.code());
    out.push(hb.priority);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&hb.sequence.to_be_bytes());
    out.extend_from_slice(&hb.sent_at_ms.to_be_bytes());
    let mut m = mac(key);
    m.update(&out);
    out.extend_from_slice(&m.finalize().into_bytes());
    out
}

/// Checks a datagram's form and MAC (in constant time) and returns what it says.
pub fn decode(data: &[u8], key: &[u8]) -> Result<Heartbeat, Reject> {
    if data.len() < FIXED || data.len() > FIXED + MAX_NAME {
        return Err(Reject::Size);
    }
    if &data[..4] != MAGIC {
        return Err(Reject::Magic);
    }
    if data[4] != VERSION {
        return Err(Reject::Version);
    }
    let name_len = usize::from(data[7]);
    if data.len() != FIXED + name_len {
        return Err(Reject::Size);
    }
    let (body, tag) = data.split_at(data.len() - MAC_LEN);
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(tag).map_err(|_| Reject::Mac)?;
    let state = State::from_code(data[5]).ok_or(Reject::Malformed)?;
    let name = std::str::from_utf8(&data[8..8 + name_len]).map_err(|_| Reject::Malformed)?;
    let at = 8 + name_len;
    let sequence = u64::from_be_bytes(body[at..at + 8].try_into().map_err(|_| Reject::Malformed)?);
    let sent_at_ms = u64::from_be_bytes(
        body[at + 8..at + 16]
            .try_into()
            .map_err(|_| Reject::Malformed)?,
    );
    Ok(Heartbeat {
        node: name.to_string(),
        priority: data[6],
        state,
        sequence,
        sent_at_ms,
    })
}

/// How many distinct authenticated node names a receiver remembers. A pair needs one;
/// the bound keeps a key holder that invents names from growing the map.
pub const MAX_PEERS: usize = 16;

/// The receiver's memory: the send time and sequence of the last heartbeat accepted
/// from each node.
///
/// Peers are configured by address, so names are learnt from authenticated heartbeats
/// (up to [`MAX_PEERS`]). A heartbeat is accepted only when it comes after the last one
/// in (send time, sequence) order: a replay never does, and a restarted sender, whose
/// sequence starts again, does as soon as its clock is past its last heartbeat before
/// the restart. The clock is compared with the receiver's only at first contact (an old
/// heartbeat replayed to a receiver that just started is refused).
#[derive(Debug, Default)]
pub struct Receiver {
    me: String,
    last: HashMap<String, (u64, u64)>,
}

impl Receiver {
    pub fn new(me: &str) -> Self {
        Receiver {
            me: me.to_string(),
            last: HashMap::new(),
        }
    }

    /// Decodes and checks one datagram; `now_ms` is the receiver's unix time.
    pub fn accept(&mut self, data: &[u8], key: &[u8], now_ms: u64) -> Result<Heartbeat, Reject> {
        let hb = decode(data, key)?;
        if hb.node == self.me {
            return Err(Reject::Own);
        }
        let last = self.last.get(&hb.node).copied();
        if last.is_none() && self.last.len() >= MAX_PEERS {
            return Err(Reject::UnknownNode);
        }
        let order = (hb.sent_at_ms, hb.sequence);
        match last {
            Some(last) if order <= last => return Err(Reject::Replay),
            Some(_) => {}
            None if hb.sent_at_ms.abs_diff(now_ms) > MAX_SKEW_MS => return Err(Reject::Stale),
            None => {}
        }
        self.last.insert(hb.node.clone(), order);
        Ok(hb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(seq: u64) -> Heartbeat {
        Heartbeat {
            node: "lb2".into(),
            priority: 100,
            state: State::Active,
            sequence: seq,
            sent_at_ms: 1_000_000,
        }
    }

    #[test]
    fn a_heartbeat_round_trips() {
        let data = encode(&hb(7), b"key");
        assert_eq!(decode(&data, b"key"), Ok(hb(7)));
    }

    #[test]
    fn a_wrong_key_or_any_flipped_bit_fails_the_mac() {
        let data = encode(&hb(7), b"key");
        assert_eq!(decode(&data, b"other"), Err(Reject::Mac));
        for i in 8..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 1;
            assert!(decode(&bad, b"key").is_err(), "bit flip at {i} accepted");
        }
    }

    #[test]
    fn malformed_datagrams_are_rejected_by_reason() {
        let data = encode(&hb(7), b"key");
        assert_eq!(decode(&data[..10], b"key"), Err(Reject::Size));
        assert_eq!(decode(&[0u8; 200], b"key"), Err(Reject::Size));
        let mut magic = data.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic, b"key"), Err(Reject::Magic));
        let mut version = data.clone();
        version[4] = 9;
        assert_eq!(decode(&version, b"key"), Err(Reject::Version));
        let mut len = data.clone();
        len[7] = 60;
        assert_eq!(decode(&len, b"key"), Err(Reject::Size));
    }

    #[test]
    fn replays_stale_unknown_and_own_heartbeats_are_dropped() {
        let mut r = Receiver::new("lb1");
        let now = 1_000_000;
        assert!(r.accept(&encode(&hb(5), b"k"), b"k", now).is_ok());
        assert_eq!(
            r.accept(&encode(&hb(5), b"k"), b"k", now),
            Err(Reject::Replay)
        );
        assert_eq!(
            r.accept(&encode(&hb(4), b"k"), b"k", now),
            Err(Reject::Replay)
        );
        assert!(r.accept(&encode(&hb(6), b"k"), b"k", now).is_ok());
        // A restarted sender: its sequence starts low again, its clock has moved on.
        let mut restarted = hb(1);
        restarted.sent_at_ms += 1000;
        assert!(r.accept(&encode(&restarted, b"k"), b"k", now).is_ok());
        // ... and what it sent before the restart is a replay now.
        assert_eq!(
            r.accept(&encode(&hb(7), b"k"), b"k", now),
            Err(Reject::Replay)
        );
        // Known peers are not held to the receiver's clock; a first contact is.
        let mut later = hb(2);
        later.sent_at_ms = now + MAX_SKEW_MS + 5000;
        assert!(r.accept(&encode(&later, b"k"), b"k", now).is_ok());
        let mut far = hb(9);
        far.node = "lb7".into();
        assert_eq!(
            r.accept(&encode(&far, b"k"), b"k", now + MAX_SKEW_MS + 1),
            Err(Reject::Stale)
        );
        for i in 0..MAX_PEERS - 1 {
            let mut other = hb(10);
            other.node = format!("lb-{i}");
            assert!(r.accept(&encode(&other, b"k"), b"k", now).is_ok());
        }
        let mut stranger = hb(10);
        stranger.node = "lb9".into();
        assert_eq!(
            r.accept(&encode(&stranger, b"k"), b"k", now),
            Err(Reject::UnknownNode)
        );
        let mut own = hb(11);
        own.node = "lb1".into();
        assert_eq!(r.accept(&encode(&own, b"k"), b"k", now), Err(Reject::Own));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&data, b"key");
        }
    }
}
