//! Active-passive failover of virtual addresses between two (or more) instances, in
//! three parts that can be read alone:
//!
//! - [`wire`]: the heartbeat datagram, authenticated with HMAC-SHA256 over a shared
//!   key, and the receiver's checks (size, magic, version, MAC, replayed or stale
//!   sequence numbers), each rejection with a reason for the metrics;
//! - [`machine`]: the pure state machine, `step(event) -> actions`, with no sockets
//!   and no clock of its own.
//!
//! The driver (UDP sockets, timers, adding the addresses over netlink, gratuitous ARP,
//! hooks) is not built yet: the configuration refuses `[failover]` until it is.

pub mod machine;
pub mod wire;
