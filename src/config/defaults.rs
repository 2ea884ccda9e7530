//! The defaults and bounds of the file's keys, in one table.

use std::time::Duration;

/// The longest duration any key accepts: longer ones are surely mistakes, and would
/// overflow clocks.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_WORKERS: usize = 0;
pub const MAX_WORKERS: i64 = 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 64 * 1024;
pub const DEFAULT_MAX_BODY_SIZE: u64 = 0;
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// The window over which `min_rate` is measured.
pub const MIN_RATE_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// `route.upgrades` when not given.
pub const DEFAULT_UPGRADES: [&str; 1] = ["websocket"];
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RETRIES: u32 = 1;
pub const MAX_RETRIES: i64 = 100;
pub const DEFAULT_STICKY_COOKIE: &str = "fulcrum_sticky";
pub const DEFAULT_HEALTH_PATH: &str = "/";
pub const DEFAULT_EXPECT_STATUS: (u16, u16) = (200, 399);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_PASSIVE_FAILURES: u32 = 5;
pub const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(30);
pub const DEFAULT_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: i64 = 1000;
