//! The heartbeat decoder: any datagram is a heartbeat or a reason to drop it. The MAC
//! is checked with a fixed key; the first bytes of the input may also be taken as a
//! correctly signed heartbeat's fields, so the fuzzer reaches what follows the MAC.
#![no_main]

use fulcrum::failover::wire::{decode, encode, Heartbeat, Receiver, State};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzzing key of at least 32 bytes!";

fuzz_target!(|data: &[u8]| {
    let mut receiver = Receiver::new("me");
    let _ = decode(data, KEY);
    let _ = receiver.accept(data, KEY, 1_700_000_000_000);
    if data.len() >= 18 {
        let node = String::from_utf8_lossy(&data[18..]).into_owned();
        let hb = Heartbeat {
            node,
            priority: data[0],
            state: if data[1] % 2 == 0 { State::Active } else { State::Passive },
            sequence: u64::from_be_bytes(data[2..10].try_into().unwrap_or_default()),
            sent_at_ms: u64::from_be_bytes(data[10..18].try_into().unwrap_or_default()),
        };
        let wire = encode(&hb, KEY);
        if let Ok(back) = decode(&wire, KEY) {
            assert_eq!(back.priority, hb.priority);
            assert_eq!(back.sequence, hb.sequence);
        }
        let _ = receiver.accept(&wire, KEY, hb.sent_at_ms.wrapping_sub(1));
        let _ = receiver.accept(&wire, KEY, hb.sent_at_ms);
    }
});
