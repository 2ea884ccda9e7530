//! Invalid configuration files, each with the message it must produce; and every
//! example in config/ must be valid.

use std::path::Path;
use std::time::Duration;

use fulcrum::config::Config;

const BASE: &str = r#"
[[listener]]
name = "front"
bind = "127.0.0.1:7000"
protocol = "tcp"
upstream = "app"

[upstream.app]
backends = [{ address = "127.0.0.1:7001" }]
"#;

fn errors(src: &str) -> String {
    match Config::parse(src, Path::new("fulcrum.toml")) {
        Ok(_) => panic!("accepted an invalid file:\n{src}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_base_file_is_valid() {
    let c = Config::parse(BASE, Path::new("fulcrum.toml")).unwrap();
    assert_eq!(c.listeners[0].upstream.as_deref(), Some("app"));
    assert_eq!(c.upstreams[0].backends[0].weight, 1);
    assert_eq!(c.upstreams[0].retries, 1);
}

#[test]
fn each_invalid_file_gets_its_message() {
    // (file, the complete error it must produce)
    let table: &[(&str, &str)] = &[
        (
            "[global]\nworkerz = 2\n",
            "fulcrum.toml:2:1: `global.workerz` unknown field `workerz`, expected one of `workers`, `max_connections`, `shutdown_timeout`, `log_format`, `access_log`",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }, { address = \"127.0.0.1:3\", weight = -1 }]\n",
            "fulcrum.toml:7:78: `upstream.app.backends[1].weight` must be between 0 and 1000, got -1",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"nope\"\n",
            "fulcrum.toml:5:12: `listener[0].upstream` names upstream \"nope\", which is not defined",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\n",
            "fulcrum.toml:1:1: `listener[0].upstream` is required on a tcp listener",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"localhost\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:3:8: `listener[0].bind` is not an address like \"0.0.0.0:8080\" or \"[::]:8080\", got \"localhost\"",
        ),
        (
            "[global]\nshutdown_timeout = \"soon\"\n",
            "fulcrum.toml:2:20: `global.shutdown_timeout` is not a duration",
        ),
        (
            "[[listener]]\nname = \"Web\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:2:8: `listener[0].name` must match [a-z0-9_-]+, got \"Web\"",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"udp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:4:12: `listener[0].protocol` must be \"http\" or \"tcp\", got \"udp\"",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\nallow = [\"10.0.0.0/33\"]\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:6:10: `listener[0].allow[0]` is not a network in CIDR form like \"10.0.0.0/8\", got \"10.0.0.0/33\"",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\nidle_timeout = \"0s\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:6:16: `listener[0].idle_timeout` must be greater than zero",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\nmax_header_size = \"12 parsecs\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:6:19: `listener[0].max_header_size` is not a size",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\nmax_header_size = \"8KiB\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:6:19: `listener[0].max_header_size` only applies to http listeners",
        ),
        (
            "[upstream.app]\nbackends = []\n",
            "fulcrum.toml:2:12: `upstream.app.backends` must list at least one backend",
        ),
        (
            "[upstream.app]\nbackends = [{ address = \"127.0.0.1\" }]\n",
            "fulcrum.toml:2:25: `upstream.app.backends[0].address` must be host:port, got \"127.0.0.1\"",
        ),
        (
            "[upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }, { address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:2:54: `upstream.app.backends[1].address` \"127.0.0.1:2\" is listed twice in this upstream",
        ),
        (
            "[upstream.app]\nbackends = [{ address = \"127.0.0.1:2\", name = \"x\" }, { address = \"127.0.0.1:3\", name = \"x\" }]\n",
            "fulcrum.toml:2:88: `upstream.app.backends[1].name` \"x\" is already the name of another backend of this upstream",
        ),
        (
            "[upstream.app]\nstrategy = \"fastest\"\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:2:12: `upstream.app.strategy` must be one of round_robin, least_connections, random, consistent_hash, ewma, got \"fastest\"",
        ),
        (
            "[upstream.app]\nhash_key = \"path\"\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:2:12: `upstream.app.hash_key` only applies to strategy = \"consistent_hash\"",
        ),
        (
            "[upstream.app]\nretries = 1000\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:2:11: `upstream.app.retries` must be between 0 and 100, got 1000",
        ),
        (
            "[global]\nlog_format = \"xml\"\n",
            "fulcrum.toml:2:14: `global.log_format` must be \"text\" or \"json\", got \"xml\"",
        ),
        (
            "[global]\nworkers = -1\n",
            "fulcrum.toml:2:11: `global.workers` must be between 0 and 1024, got -1",
        ),
        (
            "[global]\nwork_stealing = \"no\"\n",
            "fulcrum.toml:2:17: `global.work_stealing` invalid type: string \"no\", expected a boolean",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [[listener]]\nname = \"a\"\nbind = \"127.0.0.1:2\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:3\" }]\n",
            "fulcrum.toml:7:8: `listener[1].name` \"a\" is already the name of listener[0]",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [[listener]]\nname = \"b\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:3\" }]\n",
            "fulcrum.toml:8:8: `listener[1].bind` 127.0.0.1:1 is already bound by listener \"a\"",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:3\" }]\n[upstream.app.sticky]\ncookie = \"s\"\n",
            "fulcrum.toml:8:1: `upstream.app.sticky` needs HTTP cookies, but tcp listener \"a\" uses this upstream",
        ),
        (
            "[[listener]\nname = \"a\"\n",
            "fulcrum.toml:1:12: unclosed array table, expected `]`",
        ),
        (
            "[upstream.app]\nstrategy = \"consistent_hash\"\nhash_key = \"ip\"\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:3:12: `upstream.app.hash_key` must be \"source_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\", got \"ip\"",
        ),
        (
            "[upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n[upstream.app.health]\ncheck = \"tcp\"\npath = \"/x\"\n",
            "fulcrum.toml:5:8: `upstream.app.health.path` only applies to check = \"http\"",
        ),
        (
            "[upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n[upstream.app.health]\nexpect_status = \"200-99\"\n",
            "fulcrum.toml:4:17: `upstream.app.health.expect_status` must be a status or a range like \"200-399\" within 100-599, got \"200-99\"",
        ),
        (
            "[upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n[upstream.app.health]\nrise = 0\n",
            "fulcrum.toml:4:8: `upstream.app.health.rise` must be between 1 and 100, got 0",
        ),
        (
            "[upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n[upstream.app.health]\ninterval = \"often\"\n",
            "fulcrum.toml:4:12: `upstream.app.health.interval` is not a duration",
        ),
        (
            "[upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n[upstream.app.sticky]\ncookie = \"a b\"\n",
            "fulcrum.toml:4:10: `upstream.app.sticky.cookie` is not a valid cookie name, got \"a b\"",
        ),
        (
            "[admin]\nbind = \"127.0.0.1:9090\"\ntoken_file = \"/nonexistent/token\"\n",
            "fulcrum.toml:3:14: `admin.token_file` /nonexistent/token cannot be read",
        ),
        (
            "[admin]\nbind = \"0.0.0.0:9090\"\n",
            "fulcrum.toml:2:8: `admin.bind` 0.0.0.0:9090 is not a loopback address: set admin.token_file",
        ),
        (
            "[admin]\nbind = \"[::]:9090\"\n",
            "fulcrum.toml:2:8: `admin.bind` [::]:9090 is not a loopback address: set admin.token_file",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[listener.route]]\nupstream = \"app\"\nupgrades = [\"websocket\", \"h2c\"]\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:6:26: `listener[0].route[0].upgrades[1]` h2c is never tunnelled",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[listener.route]]\nupstream = \"app\"\nstatic_hidden = true\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:6:17: `listener[0].route[0].static_hidden` applies to routes with `static`",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\nbody_timeout = \"5s\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:6:16: `listener[0].body_timeout` only applies to http listeners",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\nabort_on_close = true\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:6:18: `listener[0].abort_on_close` only applies to http listeners",
        ),
        (
            "[upstream.app]\nqueue_timeout = \"30d\"\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:2:17: `upstream.app.queue_timeout` must be at most 7 days",
        ),
        (
            "[upstream.app]\nmax_connections_per_backend = 5000000000\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:2:31: `upstream.app.max_connections_per_backend` must be between 0 and 4294967295",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nupstream = \"app\"\nmin_rate = \"99999999999999GiB\"\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:5:12: `listener[0].min_rate` is too large",
        ),
        (
            "[upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n[upstream.app.sticky]\nsame_site = \"loose\"\n",
            "fulcrum.toml:4:13: `upstream.app.sticky.same_site` must be \"Strict\", \"Lax\" or \"None\", got \"loose\"",
        ),
        (
            "[upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n[upstream.app.sticky]\nsame_site = \"None\"\nsecure = false\n",
            "fulcrum.toml:5:10: `upstream.app.sticky.secure` must not be false with same_site = \"None\"",
        ),
        (
            "[admin]\nbind = \"localhost:9090\"\n",
            "fulcrum.toml:2:8: `admin.bind` is not an address like \"127.0.0.1:9090\", got \"localhost:9090\"",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             [listener.tls]\ncertificates = [{ cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }]\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
            "fulcrum.toml:7:17: `listener[0].tls.certificates[0].cert` /nonexistent/c.pem cannot be loaded",
        ),
        (
            "[failover]\nnode = \"\"\nbind = \"127.0.0.1:8411\"\npeers = [\"127.0.0.1:8412\"]\nsecret_file = \"/nonexistent/failover.key\"\n",
            "fulcrum.toml:2:8: `failover.node` must be 1 to 64 bytes long, got \"\"",
        ),
        (
            "[failover]\nnode = \"lb1\"\nbind = \"127.0.0.1:8411\"\npeers = [\"127.0.0.1:8412\"]\nsecret_file = \"/nonexistent/failover.key\"\n",
            "fulcrum.toml:5:15: `failover.secret_file` /nonexistent/failover.key cannot be read",
        ),
        (
            "[failover]\nnode = \"lb1\"\npriority = 255\nbind = \"127.0.0.1:8411\"\npeers = [\"127.0.0.1:8412\"]\nsecret_file = \"k\"\n",
            "fulcrum.toml:3:12: `failover.priority` must be between 1 and 254, got 255",
        ),
        (
            "[failover]\nnode = \"lb1\"\nbind = \"lb1:8411\"\npeers = [\"127.0.0.1:8412\"]\nsecret_file = \"k\"\n",
            "fulcrum.toml:3:8: `failover.bind` is not an address with a port like \"10.99.0.11:8411\", got \"lb1:8411\"",
        ),
        (
            "[failover]\nnode = \"lb1\"\nbind = \"127.0.0.1:8411\"\npeers = []\nsecret_file = \"k\"\n",
            "fulcrum.toml:4:9: `failover.peers` must list at least one peer address",
        ),
        (
            "[failover]\nnode = \"lb1\"\nbind = \"127.0.0.1:8411\"\npeers = [\"127.0.0.1:8411\"]\nsecret_file = \"k\"\n",
            "fulcrum.toml:4:10: `failover.peers[0]` is this node's own `bind`",
        ),
        (
            "[failover]\nnode = \"lb1\"\nbind = \"127.0.0.1:8411\"\npeers = [\"127.0.0.1:8412\"]\ninterval = \"200ms\"\ndead_after = \"150ms\"\nsecret_file = \"k\"\n",
            "fulcrum.toml:6:14: `failover.dead_after` must be at least twice `failover.interval` (200ms), got 150ms",
        ),
        (
            "[failover]\nnode = \"lb1\"\nbind = \"127.0.0.1:8411\"\npeers = [\"127.0.0.1:8412\"]\ninterval = \"200ms\"\ndead_after = \"399ms\"\nsecret_file = \"k\"\n",
            "fulcrum.toml:6:14: `failover.dead_after` must be at least twice `failover.interval` (200ms), got 399ms",
        ),
        (
            "[failover]\nnode = \"lb1\"\nbind = \"127.0.0.1:8411\"\npeers = [\"127.0.0.1:8412\"]\ninterval = \"1ms\"\nsecret_file = \"k\"\n",
            "fulcrum.toml:5:12: `failover.interval` must be at least 10ms",
        ),
        (
            "[failover]\nnode = \"lb1\"\nbind = \"127.0.0.1:8411\"\npeers = [\"127.0.0.1:8412\"]\nsecret_file = \"k\"\n\
             vips = [{ address = \"10.99.0.100\", interface = \"eth0\" }]\n",
            "fulcrum.toml:6:21: `failover.vips[0].address` is not an address with a prefix length like \"10.99.0.100/24\", got \"10.99.0.100\"",
        ),
        (
            "[failover]\nnode = \"lb1\"\nbind = \"127.0.0.1:8411\"\npeers = [\"127.0.0.1:8412\"]\nsecret_file = \"k\"\n\
             vips = [{ address = \"10.99.0.100/24\", interface = \"a-very-long-interface-name\" }]\n",
            "fulcrum.toml:6:51: `failover.vips[0].interface` must be an interface name of 1 to 15 bytes without '/' or spaces",
        ),
        (
            "[failover]\nnode = \"lb1\"\nbind = \"127.0.0.1:8411\"\npeers = [\"127.0.0.1:8412\"]\nsecret_file = \"k\"\nprio = 3\n",
            "fulcrum.toml:6:1: `failover.prio` unknown field `prio`",
        ),
        (
            "[global]\nmax_connections = \"lots\"\n",
            "fulcrum.toml:2:19: `global.max_connections` invalid type: string \"lots\", expected i64",
        ),
    ];
    for (src, expected) in table {
        let got = errors(src);
        assert!(
            got.lines().any(|l| l.starts_with(expected)),
            "for:\n{src}\nexpected a line starting with:\n{expected}\ngot:\n{got}"
        );
    }
}

const CACHED: &str = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:7000"
protocol = "http"
[[listener.route]]
upstream = "app"
cache = true

[upstream.app]
backends = [{ address = "127.0.0.1:7001" }]
"#;

#[test]
fn the_cache_section_is_validated() {
    let c = Config::parse(CACHED, Path::new("fulcrum.toml")).unwrap();
    let cache = c.cache.expect("a caching route brings the cache");
    assert_eq!(cache.max_size, 256 << 20);
    assert_eq!(cache.max_object_size, 8 << 20);
    assert!(c.listeners[0].routes[0].cache);

    let sized = format!("{CACHED}[cache]\nmax_size = \"1MiB\"\nmax_object_size = 4096\n");
    let c = Config::parse(&sized, Path::new("fulcrum.toml")).unwrap();
    assert_eq!(
        c.cache.map(|c| (c.max_size, c.max_object_size)),
        Some((1 << 20, 4096))
    );

    // No route caches: no cache, whatever [cache] says.
    let unused = format!("{BASE}[cache]\nmax_size = \"1MiB\"\n");
    assert_eq!(
        Config::parse(&unused, Path::new("fulcrum.toml"))
            .unwrap()
            .cache,
        None
    );

    let table: &[(&str, &str)] = &[
        (
            "[cache]\nmax_size = 0\n",
            "fulcrum.toml:13:12: `cache.max_size` must be greater than zero",
        ),
        (
            "[cache]\nmax_size = \"1MiB\"\nmax_object_size = \"2MiB\"\n",
            "fulcrum.toml:14:19: `cache.max_object_size` must not be larger than cache.max_size (1048576 bytes)",
        ),
        (
            "[cache]\nmax_size = \"lots\"\n",
            "fulcrum.toml:13:12: `cache.max_size`",
        ),
        (
            "[cache]\nmax_items = 3\n",
            "fulcrum.toml:13:1: `cache.max_items` unknown field `max_items`",
        ),
    ];
    for (extra, expected) in table {
        let got = errors(&format!("{CACHED}{extra}"));
        assert!(got.contains(expected), "expected {expected:?} in:\n{got}");
    }

    let on_static = CACHED.replace("upstream = \"app\"\ncache", "static = \".\"\ncache");
    let got = errors(&on_static);
    assert!(
        got.contains("`listener[0].route[0].cache` applies to routes with an `upstream`"),
        "{got}"
    );
}

#[test]
fn thread_per_core_needs_work_stealing_off_and_more_than_one_worker() {
    let parse = |global: &str| {
        let src = format!(
            "[global]\n{global}\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n\
             protocol = \"tcp\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{{ address = \"127.0.0.1:2\" }}]\n"
        );
        Config::parse(&src, Path::new("fulcrum.toml"))
            .unwrap()
            .global
    };
    let default = parse("");
    assert!(default.work_stealing);
    assert!(!default.thread_per_core());
    assert!(parse("workers = 4\nwork_stealing = false").thread_per_core());
    assert_eq!(
        parse("workers = 4\nwork_stealing = false").worker_count(),
        4
    );
    assert!(!parse("workers = 1\nwork_stealing = false").thread_per_core());
    assert!(!parse("workers = 4\nwork_stealing = true").thread_per_core());
}

#[test]
fn every_error_in_a_file_is_reported_at_once() {
    let src = "[global]\nworkers = -1\nlog_format = \"xml\"\n[upstream.app]\nbackends = []\n";
    let got = errors(src);
    assert_eq!(got.lines().count(), 4, "{got}"); // the three above, and no listener
    assert!(got.contains("at least one [[listener]] is required"));
}

#[test]
fn a_missing_file_is_named() {
    let err = Config::load(Path::new("/nonexistent/fulcrum.toml")).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("/nonexistent/fulcrum.toml: cannot be read"));
}

#[test]
fn every_example_in_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = Config::load(&path) {
                panic!("{} is invalid:\n{e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn a_failover_section_gets_its_defaults_and_reads_its_key() {
    let dir = std::env::temp_dir().join(format!("fulcrum-config-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("failover.key"),
        "  s3cret-s3cret-s3cret-s3cret-s3cret\n",
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("failover.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let src = format!(
        "{BASE}[failover]\nnode = \"lb1\"\nbind = \"10.99.0.11:8411\"\npeers = [\"10.99.0.12:8411\"]\n\
         secret_file = \"failover.key\"\nvips = [{{ address = \"10.99.0.100/24\", interface = \"eth0\" }}]\n\
         on_active = \"hooks/up\"\n"
    );
    let parsed = Config::parse(&src, &dir.join("fulcrum.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
    let f = parsed.unwrap().failover.unwrap();
    assert_eq!(f.priority, 100);
    assert_eq!(f.interval, std::time::Duration::from_millis(200));
    // 3 x 200 + (256 - 100) / 256 x 200 - 200 / 10 = 701.875 ms.
    assert_eq!(f.dead_after, std::time::Duration::from_millis(701));
    assert!(f.preempt);
    assert_eq!(f.secret, b"s3cret-s3cret-s3cret-s3cret-s3cret");
    assert_eq!(f.vips[0].address.to_string(), "10.99.0.100/24");
    assert_eq!(f.on_active, Some(dir.join("hooks/up")));
    assert!(
        !format!("{f:?}").contains("s3cret"),
        "the key is never printed"
    );
}

/// A key others can read, or too short to resist guessing, is refused.
#[test]
fn a_failover_key_must_be_private_and_long_enough() {
    let dir = std::env::temp_dir().join(format!("fulcrum-config-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = format!(
        "{BASE}[failover]\nnode = \"lb1\"\nbind = \"10.99.0.11:8411\"\npeers = [\"10.99.0.12:8411\"]\n\
         secret_file = \"failover.key\"\n"
    );
    let check = |key: &str, mode: u32| {
        std::fs::write(dir.join("failover.key"), key).unwrap();
        std::fs::set_permissions(
            dir.join("failover.key"),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
        Config::parse(&src, &dir.join("fulcrum.toml"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let long = "0123456789abcdef0123456789abcdef\n";
    let readable = check(long, 0o644);
    let group = check(long, 0o640);
    let short = check("short key\n", 0o600);
    let good = check(long, 0o600);
    let owner_only = check(long, 0o400);
    std::fs::remove_dir_all(&dir).unwrap();
    let readable = readable.unwrap_err();
    assert!(
        readable.contains("`failover.secret_file`")
            && readable.contains("readable by group or others"),
        "{readable}"
    );
    assert!(group.unwrap_err().contains("readable by group or others"));
    let short = short.unwrap_err();
    assert!(short.contains("at least 32"), "{short}");
    good.unwrap();
    owner_only.unwrap();
}

/// config/failover-pair is checked with its example key in place of the real one,
/// which is never part of the repository.
#[test]
fn the_failover_pair_examples_are_valid_with_a_key() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/failover-pair");
    let dir = std::env::temp_dir().join(format!("fulcrum-config-pair-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("failover.key.example"), dir.join("failover.key")).unwrap();
    std::fs::set_permissions(
        dir.join("failover.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut nodes = Vec::new();
    for name in ["lb1.toml", "lb2.toml"] {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
        nodes.push(Config::load(&dir.join(name)));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let nodes: Vec<Config> = nodes
        .into_iter()
        .map(|n| n.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let (a, b) = (
        nodes[0].failover.as_ref().unwrap(),
        nodes[1].failover.as_ref().unwrap(),
    );
    assert_eq!(a.peers, [b.bind]);
    assert_eq!(b.peers, [a.bind]);
    assert_eq!(a.secret, b.secret);
    assert_eq!(a.vips, b.vips);
    assert!(a.priority > b.priority);
}

#[test]
fn rewrites_and_redirects_are_checked_with_their_key() {
    let route = |keys: &str| {
        format!(
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[listener.route]]\n{keys}\n\
             [upstream.app]\nbackends = [{{ address = \"127.0.0.1:2\" }}]\n"
        )
    };
    let table: &[(&str, &str)] = &[
        (
            "upstream = \"app\"\nrewrite = { regex = \"^/old/(.*\", to = \"/new/$1\" }",
            "fulcrum.toml:6:21: `listener[0].route[0].rewrite.regex` does not compile:",
        ),
        (
            "upstream = \"app\"\nrewrite = { to = \"/\" }",
            "`listener[0].route[0].rewrite` needs one of `prefix` or `regex` (and `to`)",
        ),
        (
            "upstream = \"app\"\nrewrite = { prefix = \"/a/\", regex = \"a\", to = \"/\" }",
            "`listener[0].route[0].rewrite` needs one of `prefix` or `regex` (and `to`)",
        ),
        (
            "upstream = \"app\"\nrewrite = { prefix = \"api/\", to = \"/\" }",
            "`listener[0].route[0].rewrite.prefix` must be a path starting with '/', got \"api/\"",
        ),
        (
            "upstream = \"app\"\nrewrite = { prefix = \"/api/\", to = \"x?y\" }",
            "`listener[0].route[0].rewrite.to` must be a path starting with '/' (no query), got \"x?y\"",
        ),
        (
            "upstream = \"app\"\nrewrite = { prefix = \"/api/\", to = \"/\", extra = 1 }",
            "unknown field `extra`, expected one of `prefix`, `regex`, `to`",
        ),
        (
            "static = \".\"\nrewrite = { prefix = \"/api/\", to = \"/\" }",
            "`listener[0].route[0].rewrite` applies to routes with an `upstream`",
        ),
        (
            "redirect = { to = \"https://example.com{pathh}\" }",
            "fulcrum.toml:5:19: `listener[0].route[0].redirect.to` names `{pathh}`, which is not one of {path}, {query}, {uri}, {host}",
        ),
        (
            "redirect = { to = \"https://example.com{path\" }",
            "`listener[0].route[0].redirect.to` has a `{` without its `}`",
        ),
        (
            "redirect = { to = \"\" }",
            "`listener[0].route[0].redirect.to` must not be empty",
        ),
        (
            "redirect = { to = \"https://x{path}\", status = 300 }",
            "`listener[0].route[0].redirect.status` must be one of 301, 302, 303, 307, 308, got 300",
        ),
        (
            "upstream = \"app\"\nredirect = { to = \"https://x{path}\" }",
            "`listener[0].route[0]` has more than one of `upstream`, `static` and `redirect`",
        ),
        (
            "redirect = { to = \"https://x{path}\" }\ncache = true",
            "`listener[0].route[0].cache` does not apply to a route with `redirect`",
        ),
        (
            "path_prefix = \"/x/\"",
            "`listener[0].route[0]` needs `upstream`, `static` or `redirect`",
        ),
    ];
    for (keys, expected) in table {
        let got = errors(&route(keys));
        assert!(got.contains(expected), "expected {expected:?} in:\n{got}");
    }
}

#[test]
fn http3_is_for_tls_http_listeners_and_its_retry_threshold_needs_it() {
    let tcp = "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
               [listener.tls]\ncertificates = []\nhttp3 = true\n\
               [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n";
    let got = errors(tcp);
    assert!(
        got.contains("`listener[0].tls.http3` only http listeners serve HTTP/3"),
        "{got}"
    );
    let without = "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nupstream = \"app\"\n\
                   [listener.tls]\ncertificates = []\nhttp3_retry_above = 10\n\
                   [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n";
    let got = errors(without);
    assert!(
        got.contains("`listener[0].tls.http3_retry_above` applies only with http3 = true"),
        "{got}"
    );
    let negative = without.replace(
        "http3_retry_above = 10",
        "http3 = true\nhttp3_retry_above = -1",
    );
    assert!(
        errors(&negative).contains("http3_retry_above"),
        "{}",
        errors(&negative)
    );
}

#[test]
fn h2c_is_one_of_its_values_on_plain_http_listeners_only() {
    let listener = |extra: &str| {
        format!(
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nupstream = \"app\"\n{extra}\n\
             [upstream.app]\nbackends = [{{ address = \"127.0.0.1:2\" }}]\n"
        )
    };
    for value in ["detect", "only", "off"] {
        let c = Config::parse(&listener(&format!("h2c = {value:?}")), Path::new("f.toml")).unwrap();
        assert_eq!(
            c.listeners[0].h2c,
            match value {
                "detect" => fulcrum::config::H2c::Detect,
                "only" => fulcrum::config::H2c::Only,
                _ => fulcrum::config::H2c::Off,
            }
        );
    }
    assert_eq!(
        errors(&listener("h2c = \"sometimes\"")),
        "fulcrum.toml:5:7: `listener[0].h2c` must be \"detect\", \"only\" or \"off\", got \"sometimes\""
    );
    assert_eq!(
        errors(&listener("protocol = \"tcp\"\nh2c = \"only\"")),
        "fulcrum.toml:6:7: `listener[0].h2c` only applies to http listeners"
    );
    let got = errors(&listener(
        "h2c = \"only\"\n[listener.tls]\ncertificates = []",
    ));
    assert!(
        got.contains("`listener[0].h2c` only applies to listeners without tls"),
        "{got}"
    );
}

#[test]
fn acme_settings_and_names_are_checked_with_their_key() {
    let dir = std::env::temp_dir().join(format!("fulcrum-acme-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file_in_the_way = dir.join("plain-file");
    std::fs::write(&file_in_the_way, "x").unwrap();
    let storage = dir.join("acme");
    let plain = "[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:1\"\nprotocol = \"http\"\nupstream = \"app\"\n";
    let tls = |names: &str| {
        format!(
            "[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:2\"\nprotocol = \"http\"\nupstream = \"app\"\n\
             [listener.tls]\nacme = {names}\n"
        )
    };
    let acme = |extra: &str, storage: &std::path::Path| {
        format!(
            "[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\nstorage = \"{}\"\n{extra}\n",
            storage.display()
        )
    };
    let upstream = "[upstream.app]\nbackends = [{ address = \"127.0.0.1:3\" }]\n";
    let ok = format!(
        "{plain}{}{upstream}{}",
        tls("[\"a.example.com\", \"b.example.com\"]"),
        acme("", &storage)
    );
    let c = Config::parse(&ok, Path::new("fulcrum.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.listeners[1].tls.as_ref().unwrap().acme,
        ["a.example.com", "b.example.com"]
    );
    assert_eq!(
        c.acme.as_ref().unwrap().renew_before,
        Duration::from_secs(30 * 86_400)
    );
    let cases: Vec<(String, &str)> = vec![
        (format!("{plain}{}{upstream}", tls("[\"a.example.com\"]")), "`listener[1].tls.acme` needs an [acme] section"),
        (format!("{}{upstream}{}", tls("[\"a.example.com\"]"), acme("", &storage)), "the http-01 challenge needs a plain http listener"),
        (format!("{plain}{}{upstream}{}", tls("[\"*.example.com\"]"), acme("", &storage)), "wildcard names need the dns-01 challenge"),
        (format!("{plain}{}{upstream}{}", tls("[\"10.0.0.1\"]"), acme("", &storage)), "is an IP address"),
        (format!("{plain}{}{upstream}{}", tls("[\"localhost\"]"), acme("", &storage)), "at least two labels"),
        (format!("{plain}{}{upstream}{}", tls("[\"a.example.com\", \"A.example.com\"]"), acme("", &storage)), "is listed twice"),
        (format!("{plain}{}{upstream}{}", tls("[]"), acme("", &storage)), "must list at least one name"),
        (format!("{plain}{upstream}{}", acme("challenge = \"dns-01\"", &storage)), "`acme.challenge` must be \"http-01\" or \"tls-alpn-01\""),
        (format!("{plain}{upstream}{}", acme("renew_before = \"0s\"", &storage)), "`acme.renew_before` must be greater than zero and at most 365 days"),
        (format!("{plain}{upstream}{}", acme("email = \"nobody\"", &storage)), "`acme.email` must be an e-mail address"),
        (format!("{plain}{upstream}{}", acme("eab = { kid = \"k\", key_file = \"no-such-file\" }", &storage)), "`acme.eab.key_file`"),
        (format!("{plain}{upstream}{}", acme("", &file_in_the_way)), "is not a directory"),
        (format!("{plain}{upstream}{}", acme("", &file_in_the_way.join("acme"))), "cannot be created"),
        (format!("{plain}{upstream}{}", acme("", std::path::Path::new("/proc/fulcrum-acme"))), "is not writable"),
        (format!("{plain}{upstream}[acme]\ndirectory = \"http://ca.example/dir\"\nstorage = \"{}\"\n", storage.display()), "`acme.directory` must be an https:// URL"),
    ];
    for (file, want) in cases {
        let got = errors(&file);
        assert!(got.contains(want), "expected {want:?} in:\n{got}");
    }
    // `fulcrum check` creates nothing.
    assert!(!storage.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ticket_rotation_is_zero_or_at_least_a_minute() {
    let file = |v: &str| format!("[global]\ntls_ticket_rotation = \"{v}\"\n{BASE}");
    for ok in ["0", "1m", "12h", "7d"] {
        Config::parse(&file(ok), Path::new("fulcrum.toml")).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let got = errors(&file("30s"));
    assert!(
        got.contains("`global.tls_ticket_rotation` must be \"0\" (no tickets) or at least 1m"),
        "{got}"
    );
    assert!(errors(&file("8d")).contains("`global.tls_ticket_rotation` must be at most 7 days"));
}

#[test]
fn rate_limits_and_client_limits_are_checked_with_their_key() {
    let file = |listener: &str, tcp: &str, rules: &str| {
        format!(
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nupstream = \"app\"\n{listener}\n\
             [[listener]]\nname = \"t\"\nbind = \"127.0.0.1:3\"\nprotocol = \"tcp\"\nupstream = \"app\"\n{tcp}\n\
             [upstream.app]\nbackends = [{{ address = \"127.0.0.1:2\" }}]\n{rules}"
        )
    };
    let good = file(
        "rate_limit = \"ip\"\nproxy_protocol = true\nmax_connections_per_client = 10\n\
         [[listener.route]]\nupstream = \"app\"\nrate_limit = \"key\"",
        "rate_limit = \"ip\"\nproxy_protocol = true\nheader_timeout = \"2s\"",
        "[rate_limit.ip]\nrate = \"6000/m\"\n[rate_limit.key]\nkey = \"header:x-api-key\"\nrate = \"10/s\"\nburst = 50\nheaders = true\nmax_keys = 1000\n",
    );
    let config = Config::parse(&good, Path::new("fulcrum.toml")).unwrap();
    let ip = &config.rate_limits[0];
    assert_eq!(
        (ip.name.as_str(), ip.count, ip.burst),
        ("ip", 6000, 100),
        "burst: one second's worth"
    );
    assert_eq!(config.rate_limits[1].burst, 50);
    assert_eq!(config.listeners[0].max_connections_per_client, Some(10));
    assert!(config.listeners[1].proxy_protocol);
    let cases = [
        (
            file("rate_limit = \"nope\"", "", ""),
            "`listener[0].rate_limit` names rate_limit \"nope\", which is not defined",
        ),
        (
            file("", "rate_limit = \"k\"", "[rate_limit.k]\nkey = \"cookie:sid\"\nrate = \"1/s\"\n"),
            "`listener[1].rate_limit` rate_limit \"k\" keys by a header or cookie, which a tcp listener does not have",
        ),
        (
            file("", "", "[rate_limit.k]\nrate = \"1/s\"\nstore = \"redis\"\n"),
            "`rate_limit.k.store` \"redis\" needs a [redis] section with its url",
        ),
        (
            file("", "", "[rate_limit.k]\nrate = \"1/s\"\non_store_error = \"maybe\"\n"),
            "`rate_limit.k.on_store_error` must be \"local\", \"allow\" or \"deny\"",
        ),
        (
            file("", "", "[redis]\nurl = \"http://127.0.0.1:6379\"\n"),
            "`redis.url` must be like \"redis://127.0.0.1:6379/0\"",
        ),
        (
            file("", "", "[redis]\nurl = \"redis://127.0.0.1\"\npassword_file = \"missing.pass\"\n"),
            "`redis.password_file`",
        ),
        (
            file("", "", "[redis]\nurl = \"redis://127.0.0.1\"\ntimeout = \"0s\"\n"),
            "`redis.timeout` must be greater than zero",
        ),
        (
            file("", "", "[upstream.h]\nprotocol = \"h3\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n"),
            "`upstream.h.protocol` must be \"http1\", \"h2c\", \"h2\" or \"auto\", got \"h3\"",
        ),
        (
            file("", "", "[upstream.h]\nprotocol = \"auto\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n"),
            "`upstream.h.protocol` \"auto\" needs tls",
        ),
        (
            file("", "", "[upstream.h]\nprotocol = \"h2\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n"),
            "`upstream.h.protocol` \"h2\" needs tls",
        ),
        (
            file("", "", "[upstream.h]\nprotocol = \"h2c\"\nproxy_protocol = \"v2\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n"),
            "`upstream.h.proxy_protocol` cannot be combined with an HTTP/2 protocol",
        ),
        (
            file("", "", "[upstream.h]\nprotocol = \"h2c\"\nh2_keepalive = \"0s\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n"),
            "`upstream.h.h2_keepalive` must be greater than zero",
        ),
        (
            file("", "", "[upstream.h]\nhealth = { check = \"grpc\" }\nbackends = [{ address = \"127.0.0.1:1\" }]\n"),
            "`upstream.h.health.check` \"grpc\" needs protocol = \"h2c\" or \"h2\"",
        ),
        (
            file("", "", "[upstream.h]\nhealth = { check = \"http\", grpc_service = \"x\" }\nbackends = [{ address = \"127.0.0.1:1\" }]\n"),
            "`upstream.h.health.grpc_service` only applies to check = \"grpc\"",
        ),
        (
            file("", "", "[tracing]\nsample = 1.5\n"),
            "`tracing.sample` must be between 0 and 1, got 1.5",
        ),
        (
            file("", "", "[tracing]\notlp = \"127.0.0.1:4318\"\n"),
            "`tracing.otlp` must start with http:// or https://, like \"http://127.0.0.1:4318\"",
        ),
        (
            file("", "", "[tracing]\notlp = \"http://user:pw@collector:4318\"\n"),
            "`tracing.otlp` must not hold credentials",
        ),
        (
            file("", "", "[rate_limit.k]\nrate = \"10/d\"\n"),
            "`rate_limit.k.rate` the period must be s, m or h",
        ),
        (
            file("", "", "[rate_limit.k]\nrate = \"0/s\"\n"),
            "`rate_limit.k.rate` needs a count between 1 and 1000000000",
        ),
        (
            file("", "", "[rate_limit.k]\nkey = \"ip\"\nrate = \"1/s\"\n"),
            "`rate_limit.k.key` must be \"client_ip\", \"header:NAME\", \"cookie:NAME\" or \"route\"",
        ),
        (
            file("", "", "[rate_limit.k]\nrate = \"1/s\"\nburst = 0\n"),
            "`rate_limit.k.burst` must be between 1 and",
        ),
        (
            file("", "", "[rate_limit.k]\nrate = \"1/s\"\nmax_keys = 0\n"),
            "`rate_limit.k.max_keys` must be between 1 and",
        ),
        (
            file("max_connections_per_client = 0", "", ""),
            "`listener[0].max_connections_per_client` must be between 1 and",
        ),
        (
            file("", "header_timeout = \"2s\"", ""),
            "`listener[1].header_timeout` only applies to http listeners",
        ),
        (
            file("", "", "").replace("[upstream.app]", "[upstream.app]\nproxy_protocol = \"v3\""),
            "`upstream.app.proxy_protocol` must be \"v1\" or \"v2\", got \"v3\"",
        ),
        (
            file("", "trusted_proxies = [\"10.0.0.0/8\"]", ""),
            "`listener[1].trusted_proxies` only applies to http listeners",
        ),
        (
            file("trusted_proxies = [\"10.0.0.0/33\"]", "", ""),
            "`listener[0].trusted_proxies[0]`",
        ),
    ];
    for (src, want) in cases {
        let got = errors(&src);
        assert!(got.contains(want), "expected {want} in:\n{got}");
    }
}

#[test]
fn sni_routes_are_checked_with_their_key() {
    let tcp = |listener: &str, route: &str| {
        format!(
            "[[listener]]\nname = \"t\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\n{listener}\n\
             [[listener.route]]\n{route}\n\
             [upstream.app]\nbackends = [{{ address = \"127.0.0.1:2\" }}]\n\
             [upstream.secure]\ntls = {{}}\nbackends = [{{ address = \"127.0.0.1:3\" }}]\n"
        )
    };
    let good = tcp("", "sni = \"*.Example.com\"\nupstream = \"app\"");
    let config = Config::parse(&good, Path::new("fulcrum.toml")).unwrap();
    assert_eq!(config.listeners[0].sni_routes.len(), 1);
    assert_eq!(config.listeners[0].upstream, None);
    let cases = [
        (
            tcp("", "upstream = \"app\""),
            "`listener[0].route[0].sni` is required on a tcp listener's route",
        ),
        (
            tcp("", "sni = \"a.example\""),
            "`listener[0].route[0].upstream` is required on a tcp listener's route",
        ),
        (
            tcp("", "sni = \"a.example:443\"\nupstream = \"app\""),
            "`listener[0].route[0].sni` must be a server name",
        ),
        (
            tcp("", "sni = \"a.example\"\nupstream = \"app\"\npath_prefix = \"/\""),
            "`listener[0].route[0].path_prefix` only `sni`, `upstream` and `rate_limit` apply to a tcp listener's route",
        ),
        (
            tcp("", "sni = \"a.example\"\nupstream = \"secure\""),
            "`listener[0].route[0].upstream` upstream \"secure\" has `tls` or `sticky`",
        ),
        (
            tcp("[listener.tls]\ncertificates = []", "sni = \"a.example\"\nupstream = \"app\""),
            "`listener[0].route[0]` routing by SNI needs a tcp listener without `tls`",
        ),
        (
            tcp("", "sni = \"a.example\"\nupstream = \"app\"")
                .replace("protocol = \"tcp\"\n", ""),
            "`listener[0].route[0].sni` applies to the routes of tcp listeners",
        ),
        (
            "[[listener]]\nname = \"t\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\n".to_string(),
            "`listener[0].upstream` is required on a tcp listener without routes",
        ),
    ];
    for (src, want) in cases {
        let got = errors(&src);
        assert!(got.contains(want), "expected {want} in:\n{got}");
    }
}

#[test]
fn header_rules_are_checked_with_their_key() {
    let http = |listener: &str, route: &str| {
        format!(
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n{listener}\n[[listener.route]]\n{route}\n\
             [upstream.app]\nbackends = [{{ address = \"127.0.0.1:2\" }}]\n"
        )
    };
    let cases = [
        (
            http("", "upstream = \"app\"\nresponse_headers = { set = { \"content-length\" = \"5\" } }"),
            "`listener[0].route[0].response_headers.set.content-length` content-length frames the message or belongs to its hop: no rule may change it",
        ),
        (
            http("request_headers = { remove = [\"transfer-encoding\"] }", "upstream = \"app\""),
            "`listener[0].request_headers.remove[0]` transfer-encoding frames the message",
        ),
        (
            http("", "upstream = \"app\"\nrequest_headers = { set = { \"x-a\" = \"{path}\" } }"),
            "`listener[0].route[0].request_headers.set.x-a` names `{path}`, which is not one of {client_ip}, {request_id}, {host}, {scheme}",
        ),
        (
            http("", "upstream = \"app\"\nrequest_headers = { remove = [\"host\"] }"),
            "`listener[0].route[0].request_headers.remove[0]` host can only be set, on the request side",
        ),
        (
            http("", "upstream = \"app\"\nrequest_headers = { add = { \"X-Forwarded-For\" = \"{client_ip}\" } }"),
            "`listener[0].route[0].request_headers.add.x-forwarded-for` fulcrum writes x-forwarded-for itself: use `set` to change it",
        ),
        (
            http("", "upstream = \"app\"\nresponse_headers = { set = { \"host\" = \"x\" } }"),
            "`listener[0].route[0].response_headers.set.host` host can only be set, on the request side",
        ),
        (
            http("", "upstream = \"app\"\nresponse_headers = { add = { \"bad name\" = \"x\" } }"),
            "`listener[0].route[0].response_headers.add.bad name` \"bad name\" is not a valid header name",
        ),
        (
            http("", "upstream = \"app\"\nresponse_headers = { set = { \"x-a\" = \"a\\nb\" } }"),
            "`listener[0].route[0].response_headers.set.x-a` is not a valid header value",
        ),
        (
            http("", "upstream = \"app\"\nresponse_headers = { replace = {} }"),
            "unknown field `replace`, expected one of `set`, `add`, `remove`",
        ),
        (
            http("", "redirect = { to = \"/x\" }\nrequest_headers = { set = { \"x-a\" = \"1\" } }"),
            "`listener[0].route[0].request_headers` does not apply to a route with `redirect`",
        ),
        (
            http("", "static = \".\"\nrequest_headers = { set = { \"x-a\" = \"1\" } }"),
            "`listener[0].route[0].request_headers` applies to routes with an `upstream`",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
             response_headers = { remove = [\"server\"] }\n\
             [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n"
                .to_string(),
            "`listener[0].response_headers` only applies to http listeners",
        ),
    ];
    for (file, expected) in cases {
        let got = errors(&file);
        assert!(got.contains(expected), "expected {expected:?} in:\n{got}");
    }
}

#[test]
fn error_pages_are_checked_at_load() {
    let dir = std::env::temp_dir().join(format!("fulcrum-error-pages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ok.html"), "x").unwrap();
    std::fs::write(dir.join("page.png"), "x").unwrap();
    std::fs::write(dir.join("huge.html"), vec![b'x'; 1024 * 1024 + 1]).unwrap();
    let file = dir.join("fulcrum.toml");
    let with = |pages: &str| {
        format!(
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nupstream = \"app\"\nerror_pages = {{ {pages} }}\n\
             [upstream.app]\nbackends = [{{ address = \"127.0.0.1:2\" }}]\n"
        )
    };
    let c = Config::parse(&with("\"503\" = \"ok.html\""), &file).unwrap();
    assert_eq!(c.listeners[0].error_pages[0].status, 503);
    assert_eq!(
        c.listeners[0].error_pages[0].content_type,
        "text/html; charset=utf-8"
    );
    let cases = [
        (
            "\"200\" = \"ok.html\"",
            "`listener[0].error_pages.200` must be an error status, 400 to 599",
        ),
        (
            "\"5xx\" = \"ok.html\"",
            "`listener[0].error_pages.5xx` must be an error status",
        ),
        (
            "\"503\" = \"missing.html\"",
            "`listener[0].error_pages.503`",
        ),
        (
            "\"503\" = \"page.png\"",
            "must end in .html, .htm, .json, .txt or .xml",
        ),
        ("\"503\" = \"huge.html\"", "is larger than 1 MiB"),
    ];
    for (pages, expected) in cases {
        let got = match Config::parse(&with(pages), &file) {
            Ok(_) => panic!("accepted {pages}"),
            Err(e) => e.to_string(),
        };
        assert!(got.contains(expected), "expected {expected:?} in:\n{got}");
    }
    let got = errors(
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
         error_pages = { \"503\" = \"ok.html\" }\n\
         [upstream.app]\nbackends = [{ address = \"127.0.0.1:2\" }]\n",
    );
    assert!(
        got.contains("`listener[0].error_pages` only applies to http listeners"),
        "{got}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_compression_section_is_checked() {
    let with = |section: &str, route: &str| {
        format!(
            "{section}\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[listener.route]]\n{route}\n\
             [upstream.app]\nbackends = [{{ address = \"127.0.0.1:2\" }}]\n"
        )
    };
    let c = Config::parse(
        &with(
            "[compression]\nalgorithms = [\"gzip\", \"br\"]\nmin_size = \"2KiB\"\ntypes = [\"text/*\", \"Application/JSON\"]\nlevel = { gzip = 9 }",
            "upstream = \"app\"\ncompress = true",
        ),
        Path::new("fulcrum.toml"),
    )
    .unwrap();
    assert!(c.listeners[0].routes[0].compress);
    assert_eq!(
        c.compression.algorithms,
        [
            (fulcrum::config::Algorithm::Gzip, 9),
            (fulcrum::config::Algorithm::Brotli, 4)
        ]
    );
    assert_eq!(c.compression.min_size, 2048);
    assert_eq!(c.compression.types, ["text/*", "application/json"]);
    let cases = [
        (
            "[compression]\nalgorithms = [\"deflate\"]",
            "`compression.algorithms[0]` must be \"zstd\", \"br\" or \"gzip\", got \"deflate\"",
        ),
        (
            "[compression]\nalgorithms = [\"br\", \"br\"]",
            "`compression.algorithms[1]` is listed twice",
        ),
        (
            "[compression]\nalgorithms = []",
            "`compression.algorithms` must list at least one algorithm",
        ),
        (
            "[compression]\nlevel = { gzip = 10 }",
            "`compression.level.gzip` must be between 1 and 9, got 10",
        ),
        (
            "[compression]\nlevel = { zstd = 0 }",
            "`compression.level.zstd` must be between 1 and 19, got 0",
        ),
        (
            "[compression]\nlevel = { lz4 = 1 }",
            "`compression.level.lz4` names no algorithm",
        ),
        (
            "[compression]\ntypes = [\"json\"]",
            "`compression.types[0]` must be a media type",
        ),
        (
            "[compression]\nmin_size = \"lots\"",
            "`compression.min_size`",
        ),
        ("[compression]\nquality = 1", "unknown field `quality`"),
    ];
    for (section, expected) in cases {
        let got = errors(&with(section, "upstream = \"app\""));
        assert!(got.contains(expected), "expected {expected:?} in:\n{got}");
    }
    let got = errors(&with("", "redirect = { to = \"/x\" }\ncompress = true"));
    assert!(
        got.contains("`listener[0].route[0].compress` does not apply to a route with `redirect`"),
        "{got}"
    );
}

const BGP: &str = r#"
[bgp]
router_id = "192.0.2.11"
local_as = 65011

  [[bgp.peer]]
  address = "192.0.2.1"
  remote_as = 65000

  [[bgp.announce]]
  prefix = "198.51.100.10/32"
  upstreams = ["app"]
"#;

#[test]
fn a_bgp_section_gets_its_defaults() {
    let c = Config::parse(&format!("{BASE}{BGP}"), Path::new("fulcrum.toml")).unwrap();
    let b = c.bgp.unwrap();
    assert_eq!(b.local_as, 65011);
    assert_eq!(b.hold_time, std::time::Duration::from_secs(90));
    assert_eq!(b.withdraw_grace, std::time::Duration::from_secs(3));
    assert_eq!(b.peers[0].port, 179);
    assert_eq!(b.announce[0].min_healthy, 1);
    assert_eq!(b.announce[0].upstreams, ["app"]);
    // A bare address is its host route; 4-octet AS numbers are fine.
    let src = format!("{BASE}{BGP}")
        .replace("\"198.51.100.10/32\"", "\"198.51.100.10\"")
        .replace("local_as = 65011", "local_as = 4200000001");
    let b = Config::parse(&src, Path::new("fulcrum.toml"))
        .unwrap()
        .bgp
        .unwrap();
    assert_eq!(b.announce[0].prefix.to_string(), "198.51.100.10/32");
    assert_eq!(b.local_as, 4_200_000_001);
    // No keepalives, no grace: both zero.
    let src = format!("{BASE}{BGP}").replace(
        "local_as = 65011",
        "local_as = 65011\nhold_time = \"0s\"\nwithdraw_grace = \"0s\"",
    );
    let b = Config::parse(&src, Path::new("fulcrum.toml"))
        .unwrap()
        .bgp
        .unwrap();
    assert!(b.hold_time.is_zero() && b.withdraw_grace.is_zero());
}

#[test]
fn a_bad_bgp_section_is_refused_by_key() {
    let with = |from: &str, to: &str| {
        let src = format!("{BASE}{BGP}");
        assert!(src.contains(from), "{from}");
        src.replacen(from, to, 1)
    };
    let peer2 =
        "  [[bgp.peer]]\n  address = \"192.0.2.1\"\n  remote_as = 65001\n\n  [[bgp.announce]]";
    let cases = [
        (
            with("local_as = 65011", "local_as = 0"),
            "`bgp.local_as` must be an AS number from 1 to 4294967295 other than 23456, got 0",
        ),
        (
            with("remote_as = 65000", "remote_as = 23456"),
            "`bgp.peer[0].remote_as` must be an AS number",
        ),
        (
            with("198.51.100.10/32", "198.51.100.0/24"),
            "`bgp.announce[0].prefix` 198.51.100.0/24 is not a host route",
        ),
        (
            with("198.51.100.10/32", "2001:db8::10/128"),
            "`bgp.announce[0].prefix` no [[bgp.peer]] is an IPv6 session to carry 2001:db8::10/128",
        ),
        (
            with("  [[bgp.announce]]", peer2),
            "`bgp.peer[1].address` 192.0.2.1 is listed twice",
        ),
        (
            with("router_id = \"192.0.2.11\"", "router_id = \"0.0.0.0\""),
            "`bgp.router_id` must be a nonzero IPv4 address",
        ),
        (
            with("local_as = 65011", "local_as = 65011\nhold_time = \"2s\""),
            "`bgp.hold_time` must be 0 or whole seconds from 3s to 65535s",
        ),
        (
            with("upstreams = [\"app\"]", "upstreams = [\"nope\"]"),
            "`bgp.announce[0].upstreams[0]` no upstream \"nope\"",
        ),
        (
            with("upstreams = [\"app\"]", "upstreams = [\"app\"]\n  min_healthy = 2"),
            "`bgp.announce[0].upstreams[0]` has 1 backend: min_healthy = 2 can never be met",
        ),
        (
            with("upstreams = [\"app\"]", "upstreams = []"),
            "`bgp.announce[0].upstreams` must name at least one upstream",
        ),
        (
            with("  address = \"192.0.2.1\"", "  address = \"router\""),
            "`bgp.peer[0].address` must be the router's IP address",
        ),
        (
            with("  remote_as = 65000", "  remote_as = 65000\n  local_address = \"::1\""),
            "`bgp.peer[0].local_address` must be an IP address of this host in the family of 192.0.2.1",
        ),
        (
            format!("{BASE}[bgp]\nrouter_id = \"192.0.2.11\"\nlocal_as = 65011\n"),
            "`bgp.peer` at least one [[bgp.peer]] is required",
        ),
    ];
    for (file, expected) in cases {
        let got = errors(&file);
        assert!(got.contains(expected), "expected {expected:?} in:\n{got}");
    }
}

#[test]
fn the_ecmp_examples_are_valid_and_agree() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ecmp");
    let nodes: Vec<Config> = ["lb1.toml", "lb2.toml"]
        .iter()
        .map(|n| Config::load(&dir.join(n)).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let (a, b) = (
        nodes[0].bgp.as_ref().unwrap(),
        nodes[1].bgp.as_ref().unwrap(),
    );
    assert_eq!(a.announce, b.announce);
    assert_eq!(a.local_as, b.local_as);
    assert_ne!(a.router_id, b.router_id);
    let names = |c: &Config| -> Vec<String> {
        c.upstreams[0]
            .backends
            .iter()
            .map(|b| b.name.clone())
            .collect()
    };
    assert_eq!(names(&nodes[0]), names(&nodes[1]));
    // The router's side parses, where BIRD is installed.
    if std::path::Path::new("/usr/sbin/bird").exists() {
        let out = std::process::Command::new("/usr/sbin/bird")
            .arg("-p")
            .arg("-c")
            .arg(dir.join("bird.conf"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
