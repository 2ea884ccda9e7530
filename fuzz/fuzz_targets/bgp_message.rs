//! The BGP decoder and the session that reads its output: any bytes a peer sends are
//! messages, or the NOTIFICATION that answers them. The input is read twice: as the
//! stream it is, and with a valid header (type from its first byte) in front of the
//! rest, so that the fuzzer reaches the bodies behind the 16-byte marker.
#![no_main]

use std::time::Instant;

use fulcrum::bgp::machine::{Event, Session, Settings};
use fulcrum::bgp::wire::{self, Family, Message, Open, HEADER_LEN, MARKER};
use libfuzzer_sys::fuzz_target;

fn established() -> Session {
    let now = Instant::now();
    let mut s = Session::new(
        Settings {
            local_as: 65011,
            remote_as: 65000,
            router_id: [192, 0, 2, 11].into(),
            hold_time: 9,
            family: Family::V4,
        },
        now,
    );
    s.step(Event::Tick, now);
    s.step(Event::Connected { local: [10, 0, 0, 2].into() }, now);
    let open = Message::Open(Open {
        asn: 65000,
        hold_time: 9,
        router_id: [192, 0, 2, 1].into(),
        four_octet: true,
    });
    s.step(Event::Received(&open), now);
    s.step(Event::Received(&Message::Keepalive), now);
    s
}

fn stream(mut bytes: &[u8]) {
    let mut session = established();
    let now = Instant::now();
    while let Ok(Some(len)) = wire::frame(bytes) {
        let Some(msg) = bytes.get(..len) else { break };
        let _ = match wire::decode(msg) {
            Ok(m) => session.step(Event::Received(&m), now),
            Err(n) => session.step(Event::Malformed(n), now),
        };
        bytes = &bytes[len..];
    }
}

fuzz_target!(|data: &[u8]| {
    stream(data);
    if let [kind, body @ ..] = data {
        let body = &body[..body.len().min(wire::MAX_LEN - HEADER_LEN)];
        let mut msg = MARKER.to_vec();
        msg.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
        msg.push(kind % 6);
        msg.extend_from_slice(body);
        stream(&msg);
    }
});
