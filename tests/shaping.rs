//! Shaping traffic on real sockets: path rewrites and redirects, between real clients
//! and a real hyper backend on loopback.

mod common;

use common::http::*;
use common::Fulcrum;
use http::{Request, StatusCode};

fn config(routes: &str, backend: &HttpBackend) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n{routes}\n\
         [upstream.app]\nbackends = [{{ address = \"{}\", name = \"app\" }}]\n",
        backend.addr
    )
}

async fn get_host(
    addr: std::net::SocketAddr,
    path: &str,
    host: &str,
) -> (StatusCode, http::HeaderMap) {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", host)
        .body(empty())
        .unwrap();
    let (status, headers, _) = send(&client(), req).await;
    (status, headers)
}

#[tokio::test]
async fn prefix_and_regex_rewrites_change_the_path_the_backend_sees() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&config(
        "[[listener.route]]\npath_prefix = \"/api/v2/\"\nupstream = \"app\"\n\
         rewrite = { prefix = \"/api/v2/\", to = \"/\" }\n\
         [[listener.route]]\npath_prefix = \"/old/\"\nupstream = \"app\"\n\
         rewrite = { regex = \"^/old/([a-z]+)/(.*)$\", to = \"/new/$2/$1\" }\n\
         [[listener.route]]\nupstream = \"app\"\n",
        &app,
    ))
    .await;
    let addr = f.addr("web");
    // (asked, what the backend sees): the query is kept; the rewrite starts from the
    // normalised path; paths a rule does not match pass unchanged.
    let cases = [
        ("/api/v2/users/7?x=1", "/users/7?x=1"),
        ("/api/v2/", "/"),
        ("/api/x/../v2/users", "/users"),
        ("/old/docs/a/b.html", "/new/a/b.html/docs"),
        ("/old/123", "/old/123"),
        ("/other/thing", "/other/thing"),
    ];
    for (asked, seen) in cases {
        let (status, _, _) = get(addr, asked).await;
        assert_eq!(status, 200, "{asked}");
        assert_eq!(app.last().uri, seen, "{asked}");
    }
    f.stop().await;
}

#[tokio::test]
async fn redirects_answer_with_their_status_and_a_filled_in_location() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&config(
        "[[listener.route]]\npath_prefix = \"/301/\"\nredirect = { to = \"https://example.com{path}\", status = 301 }\n\
         [[listener.route]]\npath_prefix = \"/302/\"\nredirect = { to = \"https://{host}{uri}\" }\n\
         [[listener.route]]\npath_prefix = \"/303/\"\nredirect = { to = \"/done?from={query}\", status = 303 }\n\
         [[listener.route]]\npath_prefix = \"/307/\"\nredirect = { to = \"https://b.example{uri}\", status = 307 }\n\
         [[listener.route]]\npath_prefix = \"/308/\"\nredirect = { to = \"https://c.example{path}\", status = 308 }\n\
         [[listener.route]]\nupstream = \"app\"\n",
        &app,
    ))
    .await;
    let addr = f.addr("web");
    let cases = [
        ("/301/a?q=1", 301, "https://example.com/301/a"),
        ("/302/a?q=1", 302, "https://old.example.org/302/a?q=1"),
        ("/303/a?q=1", 303, "/done?from=q=1"),
        ("/307/a", 307, "https://b.example/307/a"),
        ("/308/x/../y", 308, "https://c.example/308/y"),
    ];
    for (asked, status, location) in cases {
        let (got, headers) = get_host(addr, asked, "old.example.org:8080").await;
        assert_eq!(got.as_u16(), status, "{asked}");
        assert_eq!(headers["location"], location, "{asked}");
    }
    assert_eq!(app.requests().len(), 0, "no redirect reached the backend");
    let (status, _, _) = get(addr, "/elsewhere").await;
    assert_eq!(status, 200);
    f.stop().await;
}

#[tokio::test]
async fn request_header_rules_of_the_listener_then_the_route_reach_the_backend() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&config(
        "request_headers = { set = { \"x-env\" = \"prod\", \"x-client\" = \"{client_ip} via {scheme}\" }, remove = [\"x-debug\"] }\n\
         [[listener.route]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\
         request_headers = { set = { \"host\" = \"internal.example\", \"x-env\" = \"api\" }, add = { \"x-trace\" = \"{request_id}@{host}\" }, remove = [\"x-request-id\"] }\n\
         [[listener.route]]\nupstream = \"app\"\n",
        &app,
    ))
    .await;
    let addr = f.addr("web");
    let send_with = |path: &'static str| {
        Request::get(format!("http://{addr}{path}"))
            .header("host", "shop.example:8080")
            .header("x-debug", "1")
            .header("x-env", "from-client")
            .header("x-request-id", "req-7")
            .body(empty())
            .unwrap()
    };
    let (status, _, _) = send(&client(), send_with("/plain")).await;
    assert_eq!(status, 200);
    let seen = app.last();
    assert_eq!(seen.headers["x-env"], "prod", "the listener's set replaces");
    assert_eq!(seen.headers["x-client"], "127.0.0.1 via http");
    assert!(seen.headers.get("x-debug").is_none());
    assert_eq!(seen.headers["host"], "shop.example:8080");
    assert_eq!(seen.headers["x-request-id"], "req-7");

    let (status, _, _) = send(&client(), send_with("/api/x")).await;
    assert_eq!(status, 200);
    let seen = app.last();
    assert_eq!(seen.headers["x-env"], "api", "the route's rules come after");
    assert_eq!(seen.headers["x-client"], "127.0.0.1 via http");
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
    assert_eq!(seen.headers["host"], "internal.example");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example:8080");
    assert!(seen.headers.get("x-request-id").is_none(), "removed");
    assert_eq!(seen.headers["x-trace"], "req-7@shop.example");
    f.stop().await;
}

#[tokio::test]
async fn response_header_rules_apply_to_every_response_of_the_listener() {
    let app = HttpBackend::start("app").await;
    let f = Fulcrum::start(&config(
        "response_headers = { set = { \"strict-transport-security\" = \"max-age=63072000\" }, remove = [\"x-backend\"] }\n\
         [[listener.route]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\
         response_headers = { add = { \"x-route\" = \"api\" }, set = { \"strict-transport-security\" = \"max-age=1\" } }\n\
         [[listener.route]]\npath_prefix = \"/moved\"\nredirect = { to = \"/new\" }\n\
         response_headers = { set = { \"x-moved\" = \"yes\" } }\n",
        &app,
    ))
    .await;
    let addr = f.addr("web");
    let (status, headers, _) = get(addr, "/api/x").await;
    assert_eq!(status, 200);
    assert!(headers.get("x-backend").is_none(), "{headers:?}");
    assert_eq!(headers["x-route"], "api");
    assert_eq!(headers["strict-transport-security"], "max-age=1");
    // fulcrum's own answers: no route (404) and a redirect.
    let (status, headers, _) = get(addr, "/nothing-here").await;
    assert_eq!(status, 404);
    assert_eq!(headers["strict-transport-security"], "max-age=63072000");
    assert!(headers.get("x-route").is_none());
    let (status, headers, _) = get(addr, "/moved").await;
    assert_eq!(status, 302);
    assert_eq!(headers["x-moved"], "yes");
    assert_eq!(headers["strict-transport-security"], "max-age=63072000");
    f.stop().await;
}
