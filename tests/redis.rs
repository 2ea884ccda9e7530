//! Rate limits shared over Redis by several fulcrum instances, with a real
//! `redis-server` on loopback (skipped, saying so, where none is installed).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::*;
use common::{free_port, Fulcrum, PATIENCE};

/// A redis-server this test started, on `port`; killed (SIGKILL) when dropped.
struct RedisServer {
    child: Child,
}

impl RedisServer {
    fn start(port: u16) -> Option<RedisServer> {
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

fn config(port: u16, on_error: &str, backend: &HttpBackend) -> String {
    format!(
        "[redis]\nurl = \"redis://127.0.0.1:{port}/0\"\ntimeout = \"1s\"\n\
         [rate_limit.shared]\nrate = \"100/h\"\nburst = 100\nstore = \"redis\"\non_store_error = \"{on_error}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\nrate_limit = \"shared\"\n\
         [upstream.app]\nbackends = [{{ address = \"{}\" }}]\n",
        backend.addr
    )
}

async fn status(addr: SocketAddr) -> u16 {
    get(addr, "/").await.0.as_u16()
}

#[tokio::test]
async fn instances_share_one_limit_and_follow_on_store_error_while_redis_is_down() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: redis-server is not installed (apt-get install redis-server)");
        return;
    }
    let port = free_port();
    let redis = RedisServer::start(port).expect("redis-server starts");
    let app = HttpBackend::start("app").await;
    let deny = Fulcrum::start(&config(port, "deny", &app)).await;
    let allow = Fulcrum::start(&config(port, "allow", &app)).await;
    let local = Fulcrum::start(&config(port, "local", &app)).await;
    let instances = [deny.addr("web"), allow.addr("web"), local.addr("web")];

    // 300 requests from one client, spread over three instances: the burst of 100
    // passes, whichever instance each request reaches, and nothing more.
    let mut allowed = 0;
    for i in 0..300 {
        if status(instances[i % 3]).await == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 100);

    // Redis gone: each instance does as its on_store_error says.
    drop(redis);
    assert_eq!(status(instances[0]).await, 429, "deny");
    assert_eq!(status(instances[1]).await, 200, "allow");
    assert_eq!(
        status(instances[2]).await,
        200,
        "local: a bucket of its own"
    );

    // Redis back (empty): decisions are shared again.
    let _redis = RedisServer::start(port).expect("redis-server starts again");
    let deadline = Instant::now() + PATIENCE;
    while status(instances[0]).await != 200 {
        assert!(
            Instant::now() < deadline,
            "the deny instance never reached Redis again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // That was one of the new bucket's 100; the deny instance's 200s come from Redis
    // only.
    let mut allowed = 1;
    for _ in 0..150 {
        if status(instances[0]).await == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 100);
    // The allow instance, once it asks Redis again, sees the same empty bucket.
    let deadline = Instant::now() + PATIENCE;
    while status(instances[1]).await != 429 {
        assert!(
            Instant::now() < deadline,
            "the allow instance never shared the bucket again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for f in [deny, allow, local] {
        f.stop().await;
    }
}

#[tokio::test]
async fn a_redis_that_answers_garbage_counts_as_down() {
    // Answers every command with a status line, never a decision.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(b"+garbage\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let app = HttpBackend::start("app").await;
    let deny = Fulcrum::start(&config(port, "deny", &app)).await;
    let allow = Fulcrum::start(&config(port, "allow", &app)).await;
    assert_eq!(status(deny.addr("web")).await, 429);
    assert_eq!(status(allow.addr("web")).await, 200);
    deny.stop().await;
    allow.stop().await;
    task.abort();
}
