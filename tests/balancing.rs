//! Strategies, sticky sessions and health checks through real listeners.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::http::*;
use common::{backends_list, tcp_config, Backend, Client, Fulcrum};
use http::Request;

/// Polls `cond` every 20 ms for up to 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn least_connections_sends_new_connections_to_the_idler_backend() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let f = Fulcrum::start(&tcp_config(
        "",
        &format!(
            "strategy = \"least_connections\"\n{}",
            backends_list(&[(&a, 1), (&b, 1)])
        ),
    ))
    .await;
    let addr = f.addr("front");
    // Every connection stays open: each new one must go where fewer are open.
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..6 {
        let mut c = Client::connect(addr).await;
        names.push(c.greeting().await.unwrap());
        held.push(c);
    }
    for pair in names.chunks(2) {
        assert_ne!(
            pair[0], pair[1],
            "a busier backend got a connection: {names:?}"
        );
    }
    assert_eq!(names.iter().filter(|n| *n == "a").count(), 3, "{names:?}");
    drop(held);
    f.stop().await;
}

#[tokio::test]
async fn consistent_hash_on_a_header_keeps_each_user_on_one_backend() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let c = HttpBackend::start("c").await;
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nstrategy = \"consistent_hash\"\nhash_key = \"header:x-user\"\n\
         backends = [{{ address = \"{}\", name = \"a\" }}, {{ address = \"{}\", name = \"b\" }}, {{ address = \"{}\", name = \"c\" }}]\n",
        a.addr, b.addr, c.addr
    );
    let f = Fulcrum::start(&config).await;
    let addr = f.addr("web");
    let cl = client();
    let mut owners = std::collections::HashSet::new();
    for user in 0..30 {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let req = Request::get(format!("http://{addr}/"))
                .header("x-user", format!("user-{user}"))
                .body(empty())
                .unwrap();
            let (_, h, _) = send(&cl, req).await;
            seen.insert(h["x-backend"].to_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "user-{user} moved between backends");
        owners.extend(seen);
    }
    assert_eq!(owners.len(), 3, "thirty users all hashed to {owners:?}");
    f.stop().await;
}

#[tokio::test]
async fn a_failing_health_check_takes_a_backend_out_and_recovery_brings_it_back() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"a\" }}, {{ address = \"{}\", name = \"b\" }}]\n\
         [upstream.app.health]\ncheck = \"http\"\npath = \"/health\"\nexpect_status = \"200-299\"\n\
         interval = \"50ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 2\n",
        a.addr, b.addr
    );
    let f = Fulcrum::start(&config).await;
    let addr = f.addr("web");
    let state_a = f.backend("app", "a");
    a.health.store(503, Ordering::SeqCst);
    eventually("a marked down", || !state_a.state.is_healthy()).await;
    for _ in 0..6 {
        assert_eq!(get(addr, "/").await.1["x-backend"], "b");
    }
    a.health.store(200, Ordering::SeqCst);
    eventually("a marked up", || state_a.state.is_healthy()).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(
            get(addr, "/").await.1["x-backend"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(names.contains(&"a".to_string()), "{names:?}");
    f.stop().await;
}

#[tokio::test]
async fn a_tcp_check_marks_a_closed_port_down() {
    let a = Backend::start("a").await;
    let dead = common::refusing_addr().await;
    let f = Fulcrum::start(&tcp_config(
        "",
        &format!(
            "retries = 0\nbackends = [{{ address = \"{}\", name = \"a\" }}, {{ address = \"{dead}\", name = \"dead\" }}]\n\
             [upstream.app.health]\ninterval = \"50ms\"\nfall = 1\n",
            a.addr
        ),
    ))
    .await;
    let dead_state = f.backend("app", "dead");
    eventually("dead marked down", || !dead_state.state.is_healthy()).await;
    // With retries = 0, only a pick that avoids the dead backend can succeed every time.
    for _ in 0..6 {
        assert_eq!(common::who(f.addr("front")).await.as_deref(), Some("a"));
    }
    f.stop().await;
}

#[tokio::test]
async fn failed_attempts_in_a_row_eject_a_backend_for_eject_for() {
    let good = HttpBackend::start("good").await;
    let dead = common::refusing_addr().await;
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nretries = 1\nbackends = [{{ address = \"{dead}\", name = \"dead\" }}, {{ address = \"{}\", name = \"good\" }}]\n\
         [upstream.app.health]\ninterval = \"1h\"\npassive_failures = 2\neject_for = \"2s\"\n",
        good.addr
    );
    let f = Fulcrum::start(&config).await;
    let addr = f.addr("web");
    let dead_state = f.backend("app", "dead");
    for _ in 0..4 {
        assert_eq!(get(addr, "/").await.0, 200);
    }
    assert!(dead_state.state.is_ejected(), "two failures in a row eject");
    let failed = dead_state.state.failed();
    assert_eq!(failed, 2);
    for _ in 0..4 {
        assert_eq!(get(addr, "/").await.0, 200);
    }
    assert_eq!(
        dead_state.state.failed(),
        failed,
        "an ejected backend is not tried"
    );
    eventually("ejection over", || !dead_state.state.is_ejected()).await;
    for _ in 0..4 {
        assert_eq!(get(addr, "/").await.0, 200);
    }
    assert!(
        dead_state.state.failed() > failed,
        "tried again after eject_for"
    );
    f.stop().await;
}

fn set_cookie(h: &http::HeaderMap) -> Option<String> {
    h.get("set-cookie").map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn a_sticky_cookie_keeps_a_client_on_its_backend_until_it_is_drained() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"a\" }}, {{ address = \"{}\", name = \"b\" }}]\n\
         [upstream.app.sticky]\ncookie = \"sid\"\n",
        a.addr, b.addr
    );
    let f = Fulcrum::start(&config).await;
    let addr = f.addr("web");
    let (_, h, _) = get(addr, "/").await;
    let first = h["x-backend"].to_str().unwrap().to_string();
    let cookie = set_cookie(&h).expect("the first response sets the cookie");
    assert!(cookie.starts_with("sid="), "{cookie}");
    assert!(
        cookie.ends_with("; Path=/; HttpOnly; SameSite=Lax"),
        "{cookie}"
    );
    for backend in [&a, &b] {
        assert!(
            !cookie.contains(&backend.addr.port().to_string()),
            "the cookie reveals an address"
        );
    }
    let pair = cookie.split(';').next().unwrap().to_string();
    for _ in 0..6 {
        let (_, h, _) = get_cookie(addr, &pair).await;
        assert_eq!(h["x-backend"], first.as_str());
        assert!(set_cookie(&h).is_none(), "a valid cookie is not set again");
    }
    // Drained: the cookie is ignored, another backend answers and a new cookie is set.
    f.backend("app", &first).state.set_draining(true);
    let (_, h, _) = get_cookie(addr, &pair).await;
    assert_ne!(h["x-backend"], first.as_str());
    let replaced = set_cookie(&h).expect("a replacement cookie");
    assert_ne!(replaced.split(';').next().unwrap(), pair);
    // A forged value is ignored and replaced.
    let (status, h, _) = get_cookie(addr, "sid=0123456789abcdef").await;
    assert_eq!(status, 200);
    assert!(set_cookie(&h).is_some());
    f.stop().await;
}

async fn get_cookie(
    addr: std::net::SocketAddr,
    cookie: &str,
) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    let req = Request::get(format!("http://{addr}/"))
        .header("cookie", cookie)
        .body(empty())
        .unwrap();
    send(&client(), req).await
}

#[tokio::test]
async fn a_health_endpoint_that_hangs_is_bounded_by_timeout() {
    let good = HttpBackend::start("good").await;
    // Accepts and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"good\" }}, {{ address = \"{hang_addr}\", name = \"hang\" }}]\n\
         [upstream.app.health]\ncheck = \"http\"\npath = \"/health\"\ninterval = \"50ms\"\ntimeout = \"100ms\"\nfall = 2\n",
        good.addr
    );
    let f = Fulcrum::start(&config).await;
    let hang_state = f.backend("app", "hang");
    let good_state = f.backend("app", "good");
    eventually("the hanging backend marked down", || {
        !hang_state.state.is_healthy()
    })
    .await;
    assert!(good_state.state.is_healthy());
    f.stop().await;
    holder.abort();
}

#[tokio::test]
async fn a_request_without_the_hash_header_falls_back_to_its_source_address() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let c = HttpBackend::start("c").await;
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
         [upstream.app]\nstrategy = \"consistent_hash\"\nhash_key = \"cookie:user\"\n\
         backends = [{{ address = \"{}\", name = \"a\" }}, {{ address = \"{}\", name = \"b\" }}, {{ address = \"{}\", name = \"c\" }}]\n",
        a.addr, b.addr, c.addr
    );
    let f = Fulcrum::start(&config).await;
    // Every request comes from 127.0.0.1 without the cookie: always the same backend.
    let first = get(f.addr("web"), "/").await.1["x-backend"]
        .to_str()
        .unwrap()
        .to_string();
    for _ in 0..8 {
        assert_eq!(get(f.addr("web"), "/").await.1["x-backend"], first.as_str());
    }
    f.stop().await;
}

#[tokio::test]
async fn the_sticky_cookie_attributes_follow_the_config() {
    let a = HttpBackend::start("a").await;
    for (keys, expected) in [
        ("", "; Path=/; HttpOnly; SameSite=Lax"),
        (
            "secure = true\nsame_site = \"strict\"\nmax_age = \"1h\"\n",
            "; Path=/; HttpOnly; SameSite=Strict; Max-Age=3600; Secure",
        ),
        (
            "same_site = \"None\"\nsecure = true\n",
            "; Path=/; HttpOnly; SameSite=None; Secure",
        ),
    ] {
        let config = format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{{ address = \"{}\", name = \"a\" }}]\n\
             [upstream.app.sticky]\ncookie = \"sid\"\n{keys}",
            a.addr
        );
        let f = Fulcrum::start(&config).await;
        let (_, h, _) = get(f.addr("web"), "/").await;
        let cookie = set_cookie(&h).expect("the first response sets the cookie");
        assert!(cookie.starts_with("sid="), "{cookie}");
        assert!(cookie.ends_with(expected), "{keys}: {cookie}");
        f.stop().await;
    }
}

/// Two instances behind ECMP must send the same request to the same backend: the
/// hash ring and the sticky cookie derive from backend names, not from the order of
/// the file or from anything local to one process.
#[tokio::test]
async fn two_instances_pick_the_same_backend_for_every_key() {
    let names = ["a", "b", "c", "d"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(HttpBackend::start(n).await);
    }
    let config = |order: &[usize]| {
        let list: Vec<String> = order
            .iter()
            .map(|&i| {
                format!(
                    "{{ address = \"{}\", name = \"{}\" }}",
                    backends[i].addr, names[i]
                )
            })
            .collect();
        let list = list.join(", ");
        format!(
            "[[listener]]\nname = \"hash\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"hashed\"\n\
             [[listener]]\nname = \"sticky\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nupstream = \"sticky\"\n\
             [upstream.hashed]\nstrategy = \"consistent_hash\"\nhash_key = \"header:x-user\"\nbackends = [{list}]\n\
             [upstream.sticky]\nbackends = [{list}]\n[upstream.sticky.sticky]\ncookie = \"sid\"\n"
        )
    };
    // The second instance lists the backends in another order.
    let one = Fulcrum::start(&config(&[0, 1, 2, 3])).await;
    let two = Fulcrum::start(&config(&[3, 1, 0, 2])).await;
    let cl = client();
    let pick = |addr: std::net::SocketAddr, header: &'static str, value: String| {
        let cl = cl.clone();
        async move {
            let req = Request::get(format!("http://{addr}/"))
                .header(header, value)
                .body(empty())
                .unwrap();
            let (_, h, _) = send(&cl, req).await;
            h["x-backend"].to_str().unwrap().to_string()
        }
    };
    let mut spread = std::collections::HashMap::new();
    for key in 0..1000 {
        let a = pick(one.addr("hash"), "x-user", format!("user-{key}")).await;
        let b = pick(two.addr("hash"), "x-user", format!("user-{key}")).await;
        assert_eq!(
            a, b,
            "user-{key} hashed to {a} on one instance, {b} on the other"
        );
        *spread.entry(a).or_insert(0) += 1;
    }
    assert_eq!(spread.len(), 4, "1,000 keys all went to {spread:?}");
    // A sticky cookie set by one instance is honoured by the other.
    for _ in 0..20 {
        let (_, h, _) = get(one.addr("sticky"), "/").await;
        let first = h["x-backend"].to_str().unwrap().to_string();
        let cookie = set_cookie(&h).expect("a sticky cookie");
        let pair = cookie.split(';').next().unwrap().to_string();
        let other = pick(two.addr("sticky"), "cookie", pair).await;
        assert_eq!(other, first, "the other instance ignored the cookie");
    }
    one.stop().await;
    two.stop().await;
}
