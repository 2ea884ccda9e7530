//! Active-passive failover of virtual addresses between two (or more) instances:
//!
//! - [`wire`]: the heartbeat datagram, authenticated with HMAC-SHA256 over a shared
//!   key, and the receiver's checks (size, magic, version, MAC, replayed or stale
//!   sequence numbers, unknown source), each rejection with a reason for the metrics;
//! - [`machine`]: the pure state machine, `step(event) -> actions`, with no sockets
//!   and no clock of its own;
//! - [`driver`]: the thread that runs it: UDP heartbeats, timers, the actions
//!   (addresses over netlink in [`netlink`], gratuitous ARP and unsolicited neighbour
//!   advertisements in [`neighbour`], hooks killed with their process group by
//!   [`group`] when they overrun), the graceful resign, settings changed at reload,
//!   and the role published for `/status` and the metrics; its address task in
//!   `addresses.rs`, its hook task in `hooks.rs`;
//! - [`exit`]: the exit watch, a TCP connection to each peer's heartbeat port whose
//!   close, followed by a refused reconnection, means the peer's process ended without
//!   resigning.

mod addresses;
pub mod control;
pub mod driver;
pub mod exit;
pub mod group;
mod hooks;
pub mod machine;
pub mod neighbour;
pub mod netlink;
pub mod wire;

pub use control::{Control, Metrics, Running, Status};
