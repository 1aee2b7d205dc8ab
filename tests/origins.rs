//! Several origins: routes pick one by name, each has its own pool, breaker,
//! limits and metric label, a reload may add, change or remove them (fills
//! in flight finish on the origin they started with), and a route naming an
//! origin that does not exist is a config error at its position.
mod support;

use std::path::Path;
use std::time::Duration;

use corral::Corral;
use corral::config::Config;
use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply};
use reqwest::StatusCode;
use support::{Setup, TempDir, get, spawn_get};

/// Bound on every wait-for-condition; generous for a shared machine.
const WITHIN: Duration = Duration::from_secs(30);

/// The value of `sample` (`name{labels}`) in corral's metrics, if exported.
fn metric(corral: &support::TestProxy, sample: &str) -> Option<f64> {
    let text = corral.proxy.metrics().encode().expect("metrics encode");
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// An address on loopback where nothing listens: connections are refused.
async fn closed_port() -> std::net::SocketAddr {
    let probe = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    probe.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reach_their_origins_and_one_origins_outage_opens_only_its_breaker() {
    let down = closed_port().await;
    let default = MockOrigin::start().await.unwrap();
    default.always("/", Reply::ok("default origin"));
    let b = MockOrigin::start().await.unwrap();
    b.on("/", |seen| {
        Reply::ok(format!("b answered {}", seen.path)).into()
    });
    let breaker = "retries = 0\nbreaker_min_requests = 4\nbreaker_failure_rate = 0.5\n\
                   breaker_window = \"5m\"\nbreaker_open_for = \"5m\"";
    let corral = Setup::origin(&default)
        .toml(&format!(
            "[origins.a]\nurl = \"http://{down}\"\n{breaker}\n\
             [origins.b]\nurl = \"{}\"\n{breaker}\n\
             [[route]]\nmatch = \"/a/\"\norigin = \"a\"\nttl = \"60s\"\n\
             [[route]]\nmatch = \"/b/\"\norigin = \"b\"\nttl = \"60s\"\n\
             [[route]]\nmatch = \"/\"\nttl = \"60s\"\n",
            b.url()
        ))
        .start()
        .await;
    let client = support::client();
    let state = |origin: &str| format!("corral_circuit_state{{origin=\"{origin}\"}}");
    let default_label = default.addr().to_string();

    let home = get(&client, &corral.url("/home")).await;
    assert_eq!(home.text(), "default origin");
    for i in 0..12 {
        let a = get(&client, &corral.url(&format!("/a/item/{i}"))).await;
        if i < 4 {
            assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{i}: {a:?}");
            assert!(a.cache_status.contains("connect_error"), "{i}: {a:?}");
        } else {
            assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{i}: {a:?}");
            assert!(a.cache_status.contains("circuit_open"), "{i}: {a:?}");
        }
        let b_seen = get(&client, &corral.url(&format!("/b/item/{i}"))).await;
        assert_eq!(b_seen.status, StatusCode::OK, "{i}: {b_seen:?}");
        assert_eq!(b_seen.text(), format!("b answered /b/item/{i}"));
    }
    assert_eq!(b.hits(), 12, "every request to B reached B");
    assert_eq!(default.hits(), 1);
    assert_eq!(
        metric(&corral, &state("a")),
        Some(1.0),
        "A's breaker is open"
    );
    assert_eq!(metric(&corral, &state("b")), Some(0.0), "B's stays closed");
    assert_eq!(metric(&corral, &state(&default_label)), Some(0.0));
    assert_eq!(
        metric(
            &corral,
            "corral_shed_total{origin=\"a\",reason=\"circuit_open\"}"
        ),
        Some(8.0)
    );
    assert_eq!(
        metric(
            &corral,
            "corral_shed_total{origin=\"b\",reason=\"circuit_open\"}"
        ),
        Some(0.0)
    );
    let home = get(&client, &corral.url("/home")).await;
    assert!(home.cache_status.contains("hit"), "{home:?}");
    corral.shutdown().await;
}

/// A config file's text: the default origin at `default`, then `rest`.
fn config_text(default: &MockOrigin, rest: &str) -> String {
    Setup::origin(default).toml(rest).text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_adds_and_removes_origins_and_fills_in_flight_finish_on_the_old_one() {
    let default = MockOrigin::start().await.unwrap();
    default.always("/", Reply::ok("default"));
    let old = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    old.always("/x/", Behaviour::gated(&gate, Reply::ok("old x")));
    let new = MockOrigin::start().await.unwrap();
    new.always("/", Reply::ok("new x"));
    let added = MockOrigin::start().await.unwrap();
    added.always("/", Reply::ok("added y"));

    let files = TempDir::new("origins-reload");
    let before = format!(
        "[origins.x]\nurl = \"{}\"\n[[route]]\nmatch = \"/x/\"\norigin = \"x\"\nttl = \"60s\"\n\
         [[route]]\nmatch = \"/\"\nttl = \"60s\"\n",
        old.url()
    );
    let path = files.write("corral.toml", &config_text(&default, &before));
    let config = Config::load(&path).unwrap();
    let corral = support::serve(
        Corral::new(&config)
            .unwrap()
            .with_config_file(&config, path.clone()),
    )
    .await;
    let client = support::client();

    // A fill is in flight to x's old origin.
    let in_flight = spawn_get(&client, &corral.url("/x/slow"));
    tokio::time::timeout(WITHIN, old.wait_for_hits(1))
        .await
        .expect("the fill reaches the old origin");

    // x now points elsewhere, and y is new.
    let after = format!(
        "[origins.x]\nurl = \"{}\"\n[origins.y]\nurl = \"{}\"\n\
         [[route]]\nmatch = \"/x/\"\norigin = \"x\"\nttl = \"60s\"\n\
         [[route]]\nmatch = \"/y/\"\norigin = \"y\"\nttl = \"60s\"\n\
         [[route]]\nmatch = \"/\"\nttl = \"60s\"\n",
        new.url(),
        added.url()
    );
    files.write("corral.toml", &config_text(&default, &after));
    let reloaded = corral.reload().await;
    assert_eq!(reloaded.0, StatusCode::OK, "{}", reloaded.1);

    assert_eq!(get(&client, &corral.url("/x/fresh")).await.text(), "new x");
    assert_eq!(get(&client, &corral.url("/y/1")).await.text(), "added y");
    assert_eq!(old.hits(), 1, "new requests no longer go to the old origin");
    gate.open();
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status, StatusCode::OK, "{finished:?}");
    assert_eq!(
        finished.text(),
        "old x",
        "the fill finished where it started"
    );

    // y removed: its route is gone, and /y/ falls to the catch-all route.
    let removed = format!(
        "[origins.x]\nurl = \"{}\"\n[[route]]\nmatch = \"/x/\"\norigin = \"x\"\nttl = \"60s\"\n\
         [[route]]\nmatch = \"/\"\nttl = \"60s\"\n",
        new.url()
    );
    files.write("corral.toml", &config_text(&default, &removed));
    let reloaded = corral.reload().await;
    assert_eq!(reloaded.0, StatusCode::OK, "{}", reloaded.1);
    assert_eq!(get(&client, &corral.url("/y/2")).await.text(), "default");
    assert_eq!(added.hits(), 1);
    corral.shutdown().await;
}

#[test]
fn a_route_naming_an_undefined_origin_is_refused_at_its_position() {
    let text = "[origin]\nurl = \"http://a:1\"\n[origins.images]\nurl = \"http://b:2\"\n\
                [[route]]\nmatch = \"/img/\"\norigin = \"imgs\"\n";
    let error = Config::parse(text, Path::new("corral.toml"))
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("corral.toml:7:10: "), "{error}");
    assert!(
        error.contains("origin \"imgs\" is not defined") && error.contains("defined: images"),
        "{error}"
    );
    let fine = text.replace("\"imgs\"", "\"images\"");
    let config = Config::parse(&fine, Path::new("corral.toml")).unwrap();
    assert_eq!(
        config.route_table().routes()[0].origin.as_deref(),
        Some("images")
    );
}
