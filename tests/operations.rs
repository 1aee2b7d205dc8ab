//! Operating corral: metrics, purge, the admin token, live reload and graceful
//! shutdown, through real sockets (and, for signals, the real binary).
mod support;

use support::{Setup, ttl_of};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const ROUTES: &str = r#"
[[route]]
name = "products"
match = "/products/"
ttl = "60s"

[[route]]
name = "cart"
match = "/cart/"
cache = false
"#;

/// Every sample of a scrape, keyed by `name{label=value,...}` (labels sorted).
fn scrape(text: &str) -> HashMap<String, f64> {
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    let mut samples = HashMap::new();
    for sample in parsed.samples {
        let mut labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.last().map_or(0.0, |bucket| bucket.count)
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        samples.insert(format!("{}{{{}}}", sample.metric, labels.join(",")), value);
    }
    samples
}

fn sample(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key}; have {:#?}", samples.keys()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_workload_exactly() {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always(
        "/products/burst",
        Behaviour::gated(&gate, Reply::ok("burst")),
    );
    origin.always("/products/broken", Behaviour::Reset);
    origin.always("/products/", Reply::ok("product"));
    origin.always("/cart/", Reply::ok("cart"));
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();

    // One miss, then one hit. The body is read whole before asking again:
    // a fill's head (and body) reach clients as they arrive, and the entry
    // is stored by the time the body ends.
    for _ in 0..2 {
        let response = client.get(corral.url("/products/a")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    // A coalesced burst: one leader, nine followers.
    let burst: Vec<_> = (0..10)
        .map(|_| tokio::spawn(client.get(corral.url("/products/burst")).send()))
        .collect();
    let metrics = corral.proxy.metrics();
    support::wait_until("nine followers wait", Duration::from_secs(10), || {
        metrics.followers_waiting.get() == 9
    })
    .await;
    gate.open();
    for request in burst {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    // A pass, and an origin failure.
    assert_eq!(
        client
            .get(corral.url("/cart/1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(corral.url("/products/broken"))
            .send()
            .await
            .unwrap()
            .status(),
        502
    );

    let response = client
        .get(corral.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let samples = scrape(&response.text().await.unwrap());
    let requests = |route: &str, status: &str| {
        sample(
            &samples,
            &format!("corral_requests_total{{cache_status={status},route={route}}}"),
        )
    };
    assert_eq!(requests("products", "miss"), 2.0);
    assert_eq!(requests("products", "hit"), 1.0);
    assert_eq!(requests("products", "coalesced"), 9.0);
    assert_eq!(requests("products", "error"), 1.0);
    assert_eq!(requests("products", "pass"), 0.0);
    assert_eq!(requests("cart", "pass"), 1.0);
    let origin_requests = |route: &str, status: &str| {
        sample(
            &samples,
            &format!("corral_origin_requests_total{{route={route},status={status}}}"),
        )
    };
    assert_eq!(origin_requests("products", "200"), 2.0);
    assert_eq!(origin_requests("products", "request_error"), 1.0);
    assert_eq!(origin_requests("cart", "200"), 1.0);
    assert_eq!(sample(&samples, "corral_flight_followers_total{}"), 9.0);
    assert_eq!(sample(&samples, "corral_flights_in_progress{}"), 0.0);
    assert_eq!(sample(&samples, "corral_cache_entries{}"), 2.0);
    assert!(sample(&samples, "corral_cache_bytes{}") > 0.0);
    assert_eq!(
        sample(
            &samples,
            "corral_request_duration_seconds{cache_status=coalesced,route=products}"
        ),
        9.0,
        "histogram count"
    );
    assert_eq!(origin.hits(), 4);
    corral.shutdown().await;
}

#[tokio::test]
async fn purge_removes_exactly_the_matched_entries() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/products/", Reply::ok("product"));
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();
    for path in [
        "/products/1",
        "/products/2",
        "/products/shoes/3",
        "/products/shoes/4",
    ] {
        client.get(corral.url(path)).send().await.unwrap();
    }
    assert_eq!(origin.hits(), 4);

    let purged = client
        .request(
            reqwest::Method::from_bytes(b"PURGE").unwrap(),
            corral.admin_url("/cache/products/1"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    assert_eq!(purged.text().await.unwrap().trim(), r#"{"purged":1}"#);

    let purged = client
        .post(corral.admin_url("/purge"))
        .body(r#"["/products/shoes/*"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(purged.text().await.unwrap().trim(), r#"{"purged":2}"#);

    let hits_before = origin.hits();
    let status_of = |path: &'static str| {
        let request = client.get(corral.url(path)).send();
        async move { support::cache_status(&request.await.unwrap()) }
    };
    assert!(
        status_of("/products/2").await.contains("hit"),
        "unmatched entry survives"
    );
    assert!(status_of("/products/1").await.contains("fwd=miss"));
    assert!(status_of("/products/shoes/3").await.contains("fwd=miss"));
    assert_eq!(origin.hits(), hits_before + 2);

    let refused = client
        .post(corral.admin_url("/purge"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    corral.shutdown().await;
}

#[tokio::test]
async fn admin_token_gates_everything_but_healthz() {
    let origin = MockOrigin::start().await.unwrap();
    let routes = format!("[admin]\ntoken = \"s3cret\"\n{ROUTES}");
    let corral = Setup::origin(&origin).toml(&routes).start().await;
    let client = support::client();
    assert_eq!(
        client
            .get(corral.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in ["/metrics", "/readyz"] {
        let bare = client.get(corral.admin_url(path)).send().await.unwrap();
        assert_eq!(bare.status(), 401, "{path} without token");
        let wrong = client
            .get(corral.admin_url(path))
            .bearer_auth("guess")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let right = client
            .get(corral.admin_url(path))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path} with the token");
    }
    let purge = client
        .post(corral.admin_url("/purge"))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 401);
    let reload = client
        .post(corral.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 401);
    corral.shutdown().await;
}

#[tokio::test]
async fn admin_reload_without_a_file_is_refused_clearly() {
    let origin = MockOrigin::start().await.unwrap();
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let response = support::client()
        .post(corral.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("without a config file")
    );
    corral.shutdown().await;
}

/// The real `corral` binary, started on free loopback ports with a config file.
struct Binary {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Binary {
    async fn start(origin: &MockOrigin, routes: &str, name: &str) -> Binary {
        let listen = free_port().await;
        let admin = free_port().await;
        let dir = std::env::temp_dir().join(format!("corral-ops-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("corral.toml");
        std::fs::write(&config, binary_config(origin, listen, admin, routes)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (lines, stderr) = tokio::sync::mpsc::unbounded_channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut binary = Binary {
            child,
            listen,
            admin,
            config,
            stderr,
        };
        // Logged once both listeners are bound: from then on connections are
        // accepted (the kernel queues them until the accept loop takes them).
        binary.wait_for_log(&["corral is serving"]).await;
        binary
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for a stderr line containing every one of `needles`.
    async fn wait_for_log(&mut self, needles: &[&str]) -> String {
        let found = async {
            while let Some(line) = self.stderr.recv().await {
                if needles.iter().all(|needle| line.contains(needle)) {
                    return Some(line);
                }
            }
            None
        };
        match tokio::time::timeout(Duration::from_secs(20), found).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("corral exited without logging {needles:?}"),
            Err(_) => panic!("no log line containing {needles:?}"),
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary_config(
    origin: &MockOrigin,
    listen: SocketAddr,
    admin: SocketAddr,
    routes: &str,
) -> String {
    Setup::origin(origin)
        .toml(&format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nshutdown_timeout = \"20s\"\n"
        ))
        .toml(routes)
        .text()
}

async fn free_port() -> SocketAddr {
    let probe = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    probe.local_addr().unwrap()
}

/// A single HTTP/1.1 keep-alive connection, so a test can prove one
/// connection survives something.
async fn keep_alive(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> (u16, String, String) {
    sender.ready().await.expect("connection still open");
    let request = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        cache_status,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_ttl_and_keeps_connections_and_cache() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/products/", Reply::ok("product"));
    let short = "[[route]]\nname = \"products\"\nmatch = \"/products/\"\nttl = \"60s\"\n";
    let mut binary = Binary::start(&origin, short, "sighup").await;
    let mut connection = keep_alive(binary.listen).await;

    let (status, _, _) = get_on(&mut connection, binary.listen, "/products/before").await;
    assert_eq!(status, 200);
    let (_, cache_status, _) = get_on(&mut connection, binary.listen, "/products/before").await;
    assert!(ttl_of(&cache_status) <= 60, "{cache_status}");

    let long = short.replace("ttl = \"60s\"", "ttl = \"1h\"");
    std::fs::write(
        &binary.config,
        binary_config(&origin, binary.listen, binary.admin, &long),
    )
    .unwrap();
    binary.signal("HUP");
    binary.wait_for_log(&["config reloaded (SIGHUP)"]).await;

    // The same keep-alive connection, opened before the reload, still works;
    // the entry cached before the reload is still there.
    let (status, cache_status, body) =
        get_on(&mut connection, binary.listen, "/products/before").await;
    assert_eq!((status, body.as_str()), (200, "product"));
    assert!(
        cache_status.contains("hit"),
        "cache survived the reload: {cache_status}"
    );
    // A new fill uses the new TTL.
    get_on(&mut connection, binary.listen, "/products/after").await;
    let (_, cache_status, _) = get_on(&mut connection, binary.listen, "/products/after").await;
    assert!(
        ttl_of(&cache_status) > 3000,
        "new ttl applies: {cache_status}"
    );
    assert_eq!(origin.hits(), 2);

    // A broken file is refused and reported; the running config stays.
    std::fs::write(
        &binary.config,
        "[origin]\nurl = \"http://127.0.0.1:1\"\nttl = nonsense\n",
    )
    .unwrap();
    binary.signal("HUP");
    let refusal = binary.wait_for_log(&["config reload refused"]).await;
    assert!(
        refusal.contains("corral.toml:3:"),
        "error names file and line: {refusal}"
    );
    let response = support::client()
        .post(format!("http://{}/reload", binary.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("corral.toml:3:"));
    get_on(&mut connection, binary.listen, "/products/still").await;
    let (status, cache_status, _) = get_on(&mut connection, binary.listen, "/products/still").await;
    assert_eq!(status, 200);
    assert!(
        ttl_of(&cache_status) > 3000,
        "old (reloaded) config still serving: {cache_status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always(
        "/products/slow",
        Behaviour::gated(&gate, Reply::ok("finally")),
    );
    let routes = "[[route]]\nmatch = \"/products/\"\n";
    let mut binary = Binary::start(&origin, routes, "sigterm").await;
    let url = format!("http://{}/products/slow", binary.listen);
    let in_flight = tokio::spawn(support::client().get(url).send());
    origin.wait_for_hits(1).await;

    binary.signal("TERM");
    // Wait until the listener is gone: new connections are refused.
    let address = format!("address=Some({})", binary.listen);
    let closed = binary
        .wait_for_log(&["listener closed; draining open connections", &address])
        .await;
    assert!(
        closed.contains("open=1"),
        "the in-flight request's connection: {closed}"
    );
    assert!(
        TcpStream::connect(binary.listen).await.is_err(),
        "new connections are refused after SIGTERM"
    );
    assert!(
        binary.child.try_wait().unwrap().is_none(),
        "still draining the in-flight request"
    );

    gate.open();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "finally");
    let status = tokio::task::spawn_blocking(move || {
        let mut binary = binary;
        binary.child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
