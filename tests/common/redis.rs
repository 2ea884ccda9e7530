//! A real redis-server on a loopback port, for the tests that share state through it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, PATIENCE};

/// A redis-server this test started, on `port`; killed (SIGKILL) when dropped.
pub struct RedisServer {
    child: Child,
}

impl RedisServer {
    /// A server on a free port; `None`, saying the test is skipped, without
    /// redis-server.
    pub fn start_if_installed() -> Option<(u16, RedisServer)> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("skipped: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = free_port();
        Some((port, RedisServer::start(port).expect("redis-server starts")))
    }

    pub fn start(port: u16) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(RedisServer { child })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
