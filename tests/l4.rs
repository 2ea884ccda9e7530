//! The TCP engine against real sockets on loopback.

mod common;

use common::http::pattern;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn round_robin_spreads_connections_evenly() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let f = Fulcrum::start(&tcp_config(
        "",
        &backends_list(&[(&a, 1), (&b, 1), (&c, 1)]),
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..30 {
        seen.push(who(f.addr("front")).await.unwrap());
    }
    for name in ["a", "b", "c"] {
        assert_eq!(seen.iter().filter(|s| *s == name).count(), 10, "{seen:?}");
    }
    assert_eq!((a.accepted(), b.accepted(), c.accepted()), (10, 10, 10));
    assert_eq!(seen[..3], ["a", "b", "c"]);
    f.stop().await;
}

#[tokio::test]
async fn weights_five_one_one_give_the_smooth_sequence() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let f = Fulcrum::start(&tcp_config(
        "",
        &backends_list(&[(&a, 5), (&b, 1), (&c, 1)]),
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..14 {
        seen.push(who(f.addr("front")).await.unwrap());
    }
    assert_eq!(seen.join(","), "a,a,b,a,c,a,a,a,a,b,a,c,a,a");
    f.stop().await;
}

#[tokio::test]
async fn weight_zero_takes_a_backend_out() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let f = Fulcrum::start(&tcp_config("", &backends_list(&[(&a, 0), (&b, 1)]))).await;
    for _ in 0..5 {
        assert_eq!(who(f.addr("front")).await.as_deref(), Some("b"));
    }
    assert_eq!(a.accepted(), 0);
    f.stop().await;
}

#[tokio::test]
async fn a_refused_connect_is_retried_on_the_next_backend() {
    let dead = refusing_addr().await;
    let good = Backend::start("good").await;
    let upstream = format!(
        "retries = 1\nbackends = [{{ address = \"{dead}\", name = \"dead\" }}, {{ address = \"{}\", name = \"good\" }}]",
        good.addr
    );
    let f = Fulcrum::start(&tcp_config("", &upstream)).await;
    for _ in 0..6 {
        assert_eq!(who(f.addr("front")).await.as_deref(), Some("good"));
    }
    assert_eq!(good.accepted(), 6);
    f.stop().await;
}

#[tokio::test]
async fn without_retries_a_refused_connect_closes_the_client() {
    let dead = refusing_addr().await;
    let good = Backend::start("good").await;
    let upstream = format!(
        "retries = 0\nbackends = [{{ address = \"{dead}\", name = \"dead\" }}, {{ address = \"{}\", name = \"good\" }}]",
        good.addr
    );
    let f = Fulcrum::start(&tcp_config("", &upstream)).await;
    let results: Vec<Option<String>> = vec![who(f.addr("front")).await, who(f.addr("front")).await];
    assert_eq!(results, [None, Some("good".to_string())]);
    f.stop().await;
}

#[tokio::test]
async fn no_reachable_backend_closes_the_client() {
    let dead1 = refusing_addr().await;
    let dead2 = refusing_addr().await;
    let upstream = format!(
        "retries = 5\nbackends = [{{ address = \"{dead1}\" }}, {{ address = \"{dead2}\" }}]"
    );
    let f = Fulcrum::start(&tcp_config("", &upstream)).await;
    assert_eq!(who(f.addr("front")).await, None);
    f.stop().await;
}

#[tokio::test]
async fn half_close_is_passed_on_both_ways() {
    let a = Backend::start("a").await;
    let f = Fulcrum::start(&tcp_config("", &backends_list(&[(&a, 1)]))).await;
    let mut c = Client::connect(f.addr("front")).await;
    assert_eq!(c.greeting().await.as_deref(), Some("a"));
    c.writer.write_all(b"hello").await.unwrap();
    // The client is done sending; it still expects everything the backend has to say.
    c.writer.shutdown().await.unwrap();
    let rest = c.read_to_end().await;
    assert_eq!(String::from_utf8(rest).unwrap(), "hellobye:a");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transfer_arrives_intact() {
    const LEN: usize = 48 << 20;
    let a = Backend::start("a").await;
    let f = Fulcrum::start(&tcp_config("", &backends_list(&[(&a, 1)]))).await;
    let c = Client::connect(f.addr("front")).await;
    let Client {
        mut reader,
        mut writer,
    } = c;
    let data = pattern(LEN);
    let sent = data.clone();
    let send = tokio::spawn(async move {
        writer.write_all(&sent).await.unwrap();
        writer.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(LEN + 16);
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        reader.read_to_end(&mut got),
    )
    .await
    .expect("transfer finished")
    .unwrap();
    send.await.unwrap();
    let expected = [b"a\n".as_slice(), &data, b"bye:a"].concat();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "echoed bytes differ");
    f.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_idle_timeout() {
    let a = Backend::start("a").await;
    let f = Fulcrum::start(&tcp_config(
        "idle_timeout = \"300ms\"",
        &backends_list(&[(&a, 1)]),
    ))
    .await;
    let mut c = Client::connect(f.addr("front")).await;
    assert_eq!(c.greeting().await.as_deref(), Some("a"));
    // Send nothing: fulcrum must close the connection by itself.
    assert_eq!(c.read_to_end().await, b"");
    f.stop().await;
}

#[tokio::test]
async fn a_busy_connection_outlives_idle_timeout() {
    let a = Backend::start("a").await;
    let f = Fulcrum::start(&tcp_config(
        "idle_timeout = \"2s\"",
        &backends_list(&[(&a, 1)]),
    ))
    .await;
    let mut c = Client::connect(f.addr("front")).await;
    assert_eq!(c.greeting().await.as_deref(), Some("a"));
    // Ten round trips 400 ms apart: twice the idle timeout in all, never idle for long.
    for i in 0..10u8 {
        c.writer.write_all(&[b'0' + i]).await.unwrap();
        let mut one = [0u8; 1];
        tokio::time::timeout(PATIENCE, c.reader.read_exact(&mut one))
            .await
            .expect("echo")
            .expect("connection still open");
        assert_eq!(one[0], b'0' + i);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    f.stop().await;
}

#[tokio::test]
async fn allow_and_deny_decide_who_reaches_a_backend() {
    let a = Backend::start("a").await;
    let list = backends_list(&[(&a, 1)]);
    for (rules, admitted) in [
        ("allow = [\"10.0.0.0/8\"]", false),
        ("deny = [\"127.0.0.0/8\"]", false),
        ("allow = [\"127.0.0.1/32\"]", true),
        ("allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.1\"]", false),
        ("deny = [\"192.0.2.0/24\"]", true),
    ] {
        let before = a.accepted();
        let f = Fulcrum::start(&tcp_config(rules, &list)).await;
        let got = who(f.addr("front")).await;
        assert_eq!(got.is_some(), admitted, "{rules}");
        assert_eq!(a.accepted() - before, usize::from(admitted), "{rules}");
        f.stop().await;
    }
}

#[tokio::test]
async fn past_max_connections_new_connections_are_closed_and_others_untouched() {
    let a = Backend::start("a").await;
    let f = Fulcrum::start(&tcp_config(
        "max_connections = 2",
        &backends_list(&[(&a, 1)]),
    ))
    .await;
    let mut first = Client::connect(f.addr("front")).await;
    let mut second = Client::connect(f.addr("front")).await;
    assert!(first.greeting().await.is_some());
    assert!(second.greeting().await.is_some());
    assert_eq!(
        who(f.addr("front")).await,
        None,
        "third connection must be closed"
    );
    assert_eq!(a.accepted(), 2);
    // The two admitted connections still work.
    for c in [&mut first, &mut second] {
        c.writer.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        c.reader.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"x");
    }
    // Once one closes, a new connection gets its place.
    drop(first);
    common::eventually(
        "a freed place is given to a new connection",
        common::PATIENCE,
        || async { who(f.addr("front")).await.is_some() },
    )
    .await;
    drop(second);
    assert_eq!(f.stop().await.cut, 0);
}

#[tokio::test]
async fn global_max_connections_counts_across_listeners() {
    let a = Backend::start("a").await;
    let config = format!(
        "[global]\nmax_connections = 1\n\
         [[listener]]\nname = \"one\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
         [[listener]]\nname = \"two\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
         [upstream.app]\n{}\n",
        backends_list(&[(&a, 1)])
    );
    let f = Fulcrum::start(&config).await;
    let mut held = Client::connect(f.addr("one")).await;
    assert!(held.greeting().await.is_some());
    assert_eq!(who(f.addr("two")).await, None);
    assert_eq!(who(f.addr("one")).await, None);
    drop(held);
    assert_eq!(f.stop().await.cut, 0);
}

#[tokio::test]
async fn a_listener_can_bind_several_addresses() {
    let a = Backend::start("a").await;
    let config = format!(
        "[[listener]]\nname = \"front\"\nbind = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\nprotocol = \"tcp\"\nupstream = \"app\"\n\
         [upstream.app]\n{}\n",
        backends_list(&[(&a, 1)])
    );
    let config = fulcrum::config::Config::parse(&config, std::path::Path::new("t.toml")).unwrap();
    let server = fulcrum::runtime::Server::bind(config).await.unwrap();
    let addrs = server.local_addrs("front");
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0], addrs[1]);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    for addr in addrs {
        assert_eq!(who(addr).await.as_deref(), Some("a"));
    }
    tx.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_open_connections_finish() {
    let a = Backend::start("a").await;
    let f = Fulcrum::start(&tcp_config("", &backends_list(&[(&a, 1)]))).await;
    let addr = f.addr("front");
    let mut open = Client::connect(addr).await;
    assert!(open.greeting().await.is_some());
    let mut f = f;
    f.begin_stop();
    // New connections are refused once the listening socket is closed.
    common::eventually(
        "listener still accepting after shutdown began",
        common::PATIENCE,
        || async { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    // The open connection still works, and finishes normally.
    open.writer.write_all(b"still here").await.unwrap();
    open.writer.shutdown().await.unwrap();
    assert_eq!(open.read_to_end().await, b"still herebye:a");
    let report = f.stop().await;
    assert_eq!(report.cut, 0);
}

#[tokio::test]
async fn shutdown_cuts_what_is_still_open_at_the_timeout() {
    let a = Backend::start("a").await;
    let config = format!(
        "[global]\nshutdown_timeout = \"200ms\"\n{}",
        tcp_config("", &backends_list(&[(&a, 1)]))
    );
    let f = Fulcrum::start(&config).await;
    let mut open = Client::connect(f.addr("front")).await;
    assert!(open.greeting().await.is_some());
    let report = f.stop().await;
    assert_eq!(report.cut, 1);
    assert_eq!(open.read_to_end().await, b"");
}

#[tokio::test]
async fn connections_over_a_backends_cap_wait_then_are_closed() {
    let a = Backend::start("a").await;
    let f = Fulcrum::start(&tcp_config(
        "",
        &format!(
            "max_connections_per_backend = 1\nqueue_timeout = \"200ms\"\n{}",
            backends_list(&[(&a, 1)])
        ),
    ))
    .await;
    let mut first = Client::connect(f.addr("front")).await;
    assert_eq!(first.greeting().await.as_deref(), Some("a"));
    // The backend's one place is taken: the next connection waits, then is closed.
    assert_eq!(who(f.addr("front")).await, None);
    assert_eq!(
        a.accepted(),
        1,
        "the waiting connection never reached the backend"
    );
    // Once the first ends, its place is free again.
    first.writer.shutdown().await.unwrap();
    let _ = first.read_to_end().await;
    assert_eq!(who(f.addr("front")).await.as_deref(), Some("a"));
    assert_eq!(a.accepted(), 2);
    f.stop().await;
}
