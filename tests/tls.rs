//! TLS on both sides, through real sockets on loopback, with certificates
//! made at test time: HTTPS origins (a private CA, SNI, ALPN, refused
//! certificates), TLS for clients (h2 and HTTP/1.1 on one listener, a
//! plaintext request refused, certificate reload) and `corral check` on
//! TLS files.
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use corral::Corral;
use corral::config::Config;
use corral::metrics::ClientLimit;
use corral::testing::mock_origin::{Alpn, Behaviour, Gate, MockOrigin, Reply};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use reqwest::{StatusCode, Version};
use support::tls::{Leaf, Offer, TestCa, peer_certificate, serial_of};
use support::{Seen, Setup, TempDir, burst, get, get_with, join_all};
use tokio::io::AsyncReadExt;

/// Bound on every wait-for-condition; generous for a shared machine.
const WITHIN: Duration = Duration::from_secs(30);

/// Every path cached for a minute.
const ROUTES: &str = "[[route]]\nmatch = \"/\"\nttl = \"60s\"\n";

/// Origin limits no test here comes near, even on a busy machine (a debug
/// build's TLS handshake under an 800-client burst can take over the default
/// 1 s `connect_timeout`, which covers the handshake): these tests are about
/// what happens at the origin, not about timing out on the way.
const PATIENT: &str = "connect_timeout = \"60s\"\nfirst_byte_timeout = \"90s\"\n\
                       timeout = \"90s\"\nrequest_timeout = \"120s\"";

/// `ca_file = "PATH"` for the `[origin]` table, with [`PATIENT`] limits.
fn ca_file(path: &Path) -> String {
    format!("ca_file = \"{}\"\n{PATIENT}", path.display())
}

/// An HTTPS origin presenting `leaf`, answering `body` on every path.
async fn https_origin(leaf: &Leaf, alpn: Alpn, body: &'static str) -> MockOrigin {
    let origin = MockOrigin::start_https(&leaf.cert_pem, &leaf.key_pem, alpn)
        .await
        .expect("HTTPS origin starts");
    origin.always("/", Reply::ok(body));
    origin
}

/// A GET through `client`, with the HTTP version the response came in.
async fn get_version(client: &reqwest::Client, url: &str) -> (Version, Seen) {
    let response = client
        .get(url)
        .timeout(support::REQUEST_TIMEOUT)
        .send()
        .await
        .expect("request reaches corral");
    (response.version(), support::seen(response).await)
}

/// The value of `sample` (`name{labels}`) in corral's metrics, if exported.
fn metric(corral: &support::TestProxy, sample: &str) -> Option<f64> {
    let text = corral.proxy.metrics().encode().expect("metrics encode");
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_origin_works_with_ca_file_and_is_an_unknown_issuer_without() {
    let ca = TestCa::new();
    let leaf = ca.issue(&["localhost"], 1);
    let files = TempDir::new("tls-private-ca");
    let ca_path = files.write("ca.pem", &ca.pem());
    let client = support::client();

    let origin = https_origin(&leaf, Alpn::H2AndHttp11, "secret sauce").await;
    let trusting = Setup::url(origin.https_url("localhost"))
        .origin_keys(&ca_file(&ca_path))
        .toml(ROUTES)
        .start()
        .await;
    let first = get(&client, &trusting.url("/menu")).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.text(), "secret sauce");
    let again = get(&client, &trusting.url("/menu")).await;
    assert!(again.cache_status.contains("hit"), "{again:?}");
    assert_eq!(origin.hits(), 1);

    // ca_only: the bundle alone is trusted, and it is enough.
    let only = Setup::url(origin.https_url("localhost"))
        .origin_keys(&format!("{}\nca_only = true", ca_file(&ca_path)))
        .toml(ROUTES)
        .start()
        .await;
    assert_eq!(
        get(&client, &only.url("/menu")).await.status,
        StatusCode::OK
    );

    // The same config without ca_file: the system's roots do not know the CA.
    let refused_origin = https_origin(&leaf, Alpn::H2AndHttp11, "secret sauce").await;
    let untrusting = Setup::url(refused_origin.https_url("localhost"))
        .origin_keys(PATIENT)
        .toml(ROUTES)
        .start()
        .await;
    let refused = get(&client, &untrusting.url("/menu")).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "{refused:?}");
    assert!(
        refused.cache_status.contains("detail=tls_unknown_issuer"),
        "{refused:?}"
    );
    tokio::time::timeout(WITHIN, refused_origin.wait_for_failed_handshakes(1))
        .await
        .expect("the origin sees the refused handshake");
    assert_eq!(
        refused_origin.hits(),
        0,
        "no request carrying application data reached the origin"
    );
    assert!(refused_origin.tls_sessions().is_empty());
    let label = format!("localhost:{}", refused_origin.addr().port());
    assert_eq!(
        metric(
            &untrusting,
            &format!("corral_origin_retries_total{{origin=\"{label}\"}}")
        ),
        Some(0.0),
        "a refused certificate is never retried"
    );
    for corral in [trusting, only, untrusting] {
        corral.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refused_certificate_is_named_in_cache_status() {
    let ca = TestCa::new();
    let files = TempDir::new("tls-refusals");
    let ca_path = files.write("ca.pem", &ca.pem());
    let client = support::client();
    for (leaf, detail) in [
        (ca.issue(&["other.example"], 1), "tls_name_mismatch"),
        (ca.issue_expired(&["localhost"]), "tls_expired"),
    ] {
        let origin = https_origin(&leaf, Alpn::H2AndHttp11, "never seen").await;
        let corral = Setup::url(origin.https_url("localhost"))
            .origin_keys(&ca_file(&ca_path))
            .toml(ROUTES)
            .start()
            .await;
        let seen = get(&client, &corral.url("/x")).await;
        assert_eq!(seen.status, StatusCode::BAD_GATEWAY, "{seen:?}");
        assert!(
            seen.cache_status.contains(&format!("detail={detail}")),
            "{detail}: {seen:?}"
        );
        assert_eq!(origin.hits(), 0);
        corral.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_is_the_origin_url_host_also_on_a_preserve_host_route() {
    let ca = TestCa::new();
    let leaf = ca.issue(&["localhost"], 1);
    let files = TempDir::new("tls-sni");
    let ca_path = files.write("ca.pem", &ca.pem());
    let origin = MockOrigin::start_https(&leaf.cert_pem, &leaf.key_pem, Alpn::H2AndHttp11)
        .await
        .unwrap();
    origin.on("/", |seen| {
        let host = seen
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("(none)");
        Reply::ok(format!("{host} {:?}", seen.version)).into()
    });
    let corral = Setup::url(origin.https_url("localhost"))
        .origin_keys(&ca_file(&ca_path))
        .toml(
            "[server]\nhosts = [\"shop.example\"]\n\
             [[route]]\nmatch = \"/kept/\"\npreserve_host = true\nttl = \"60s\"\n",
        )
        .toml(ROUTES)
        .start()
        .await;
    let client = support::client();

    let plain = get(&client, &corral.url("/plain")).await;
    assert_eq!(plain.status, StatusCode::OK, "{plain:?}");
    // HTTP/2 carries the origin's host in :authority, not in a Host field.
    assert_eq!(plain.text(), "(none) HTTP/2.0");
    let kept = get_with(
        &client,
        &corral.url("/kept/cart"),
        &[("host", "shop.example")],
    )
    .await;
    assert_eq!(kept.status, StatusCode::OK, "{kept:?}");
    // The client's Host went upstream, over HTTP/1.1 where Host is the
    // authority (an HTTP/2 :authority naming the origin would contradict it).
    assert_eq!(kept.text(), "shop.example HTTP/1.1");

    let sessions = origin.tls_sessions();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    for session in &sessions {
        assert_eq!(
            session.sni.as_deref(),
            Some("localhost"),
            "SNI names the origin URL's host: {sessions:?}"
        );
    }
    let protocols: Vec<_> = sessions.iter().map(|s| s.protocol.as_deref()).collect();
    assert!(protocols.contains(&Some("h2")), "{sessions:?}");
    assert!(protocols.contains(&Some("http/1.1")), "{sessions:?}");
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_to_an_origin_that_offers_it_http11_to_one_that_does_not_and_both_coalesce() {
    const CLIENTS: usize = 800;
    let ca = TestCa::new();
    let leaf = ca.issue(&["localhost"], 1);
    let files = TempDir::new("tls-alpn");
    let ca_path = files.write("ca.pem", &ca.pem());
    let client = support::client();
    for (alpn, protocol, version) in [
        (Alpn::H2AndHttp11, "h2", "HTTP/2.0"),
        (Alpn::Http11Only, "http/1.1", "HTTP/1.1"),
    ] {
        let origin = MockOrigin::start_https(&leaf.cert_pem, &leaf.key_pem, alpn)
            .await
            .unwrap();
        let gate = Gate::new();
        {
            let gate = gate.clone();
            origin.on("/sale", move |seen| {
                Behaviour::gated(&gate, Reply::ok(format!("flash sale {:?}", seen.version)))
            });
        }
        // Limits far beyond the burst's set-up time on a busy machine: the
        // test is about coalescing, not about a leader or follower timing out.
        let corral = Setup::url(origin.https_url("localhost"))
            .origin_keys(&ca_file(&ca_path))
            .toml("[[route]]\nmatch = \"/\"\nttl = \"60s\"\nlock_timeout = \"90s\"\n")
            .start()
            .await;
        let url = corral.url("/sale");
        let metrics = corral.proxy.metrics();

        let wave = burst(&client, &url, CLIENTS).await;
        support::wait_until(
            "the leader is at the origin and every other client follows it",
            WITHIN,
            || origin.hits() >= 1 && metrics.followers_waiting.get() >= (CLIENTS - 1) as i64,
        )
        .await;
        gate.open();
        for seen in join_all(wave).await {
            assert_eq!(seen.status, StatusCode::OK, "{protocol}: {seen:?}");
            assert_eq!(seen.text(), format!("flash sale {version}"));
        }
        for seen in join_all(burst(&client, &url, CLIENTS).await).await {
            assert!(seen.cache_status.contains("hit"), "{protocol}: {seen:?}");
        }
        assert_eq!(
            origin.hits(),
            1,
            "{protocol}: 1,600 requests, one origin request"
        );
        let sessions = origin.tls_sessions();
        assert_eq!(sessions.len(), 1, "{protocol}: {sessions:?}");
        assert_eq!(sessions[0].protocol.as_deref(), Some(protocol));
        corral.shutdown().await;
    }
}

/// A corral terminating TLS with `leaf` (its files in `files`) in front of
/// `origin`, with `extra` TOML after its routes.
async fn tls_corral(
    origin: &MockOrigin,
    files: &TempDir,
    leaf: &Leaf,
    extra: &str,
) -> support::TestProxy {
    let cert = files.write("cert.pem", &leaf.cert_pem);
    let key = files.write("key.pem", &leaf.key_pem);
    Setup::origin(origin)
        .toml(&format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .toml(extra)
        .toml(ROUTES)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_over_h2_and_http11_share_one_listener_and_plaintext_is_refused() {
    let ca = TestCa::new();
    let leaf = ca.issue(&["127.0.0.1", "localhost"], 1);
    let files = TempDir::new("tls-listener");
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/", Reply::ok("from the origin"));
    let corral = tls_corral(&origin, &files, &leaf, "").await;
    let url = corral.https_url("/greeting");
    let h2 = ca.https_client(Offer::H2);
    let h1 = ca.https_client(Offer::Http11);

    let (version, first) = get_version(&h2, &url).await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.text(), "from the origin");
    let (version, cached) = get_version(&h1, &url).await;
    assert_eq!(version, Version::HTTP_11);
    assert!(cached.cache_status.contains("hit"), "{cached:?}");
    assert_eq!(cached.text(), "from the origin");
    let (version, cached) = get_version(&h2, &url).await;
    assert_eq!(version, Version::HTTP_2);
    assert!(cached.cache_status.contains("hit"), "{cached:?}");
    assert_eq!(origin.hits(), 1);

    // A plaintext request to the TLS port: no HTTP answer, the connection closed.
    let mut plaintext = support::raw_request(corral.addr, "GET", "/greeting", &[]).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WITHIN, plaintext.read_to_end(&mut answer))
        .await
        .expect("the connection is closed");
    assert!(
        read.is_ok() || answer.is_empty(),
        "closed cleanly or reset: {read:?}"
    );
    assert!(
        !answer.starts_with(b"HTTP/"),
        "no HTTP answer on a TLS port: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let limits = &corral.proxy.metrics().client_limits;
    support::wait_until("the failed handshake is counted", WITHIN, || {
        limits.get(ClientLimit::TlsHandshake) == 1
    })
    .await;
    let (_, still) = get_version(&h1, &url).await;
    assert!(still.cache_status.contains("hit"), "{still:?}");
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_takes_the_same_tls_table() {
    let ca = TestCa::new();
    let leaf = ca.issue(&["127.0.0.1"], 1);
    let files = TempDir::new("tls-admin");
    let origin = MockOrigin::start().await.unwrap();
    let cert = files.write("admin-cert.pem", &leaf.cert_pem);
    let key = files.write("admin-key.pem", &leaf.key_pem);
    let admin_tls = format!(
        "[admin.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let corral = tls_corral(&origin, &files, &leaf, &admin_tls).await;
    let h1 = ca.https_client(Offer::Http11);
    let health = get(&h1, &format!("https://{}/healthz", corral.admin)).await;
    assert_eq!(health.status, StatusCode::OK, "{health:?}");
    corral.shutdown().await;
}

/// One request on an open HTTP/1.1 connection: its status and `Cache-Status`.
async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (StatusCode, String) {
    sender.ready().await.expect("connection still open");
    let request = http::Request::get(path)
        .header("host", "127.0.0.1")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("answered");
    let status = response.status();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    response.into_body().collect().await.expect("body");
    (status, cache_status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_reaches_new_connections_and_a_mismatched_key_is_refused() {
    let ca = TestCa::new();
    let first = ca.issue(&["127.0.0.1"], 1);
    let files = TempDir::new("tls-reload");
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/", Reply::ok("renewed?"));
    files.write("cert.pem", &first.cert_pem);
    files.write("key.pem", &first.key_pem);
    // Relative paths: taken from the config file's directory.
    let text = Setup::origin(&origin)
        .toml("[server.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n")
        .toml(ROUTES)
        .text();
    let config_path = files.write("corral.toml", &text);
    let config = Config::load(&config_path).expect("config loads");
    let corral = support::serve(
        Corral::new(&config)
            .expect("corral builds")
            .with_config_file(&config, config_path),
    )
    .await;

    let before = ca.connect(corral.addr, "127.0.0.1").await;
    assert_eq!(peer_certificate(&before), first.der);
    assert_eq!(serial_of(&first.der), [1]);
    let (mut old, connection) = hyper::client::conn::http1::handshake(TokioIo::new(before))
        .await
        .expect("HTTP/1.1 over TLS");
    tokio::spawn(connection);
    assert_eq!(get_on(&mut old, "/page").await.0, StatusCode::OK);

    let renewed = ca.issue(&["127.0.0.1"], 2);
    files.write("cert.pem", &renewed.cert_pem);
    files.write("key.pem", &renewed.key_pem);
    let (status, body) = corral.reload().await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The connection opened before the reload still works.
    let (status, cache_status) = get_on(&mut old, "/page").await;
    assert_eq!(status, StatusCode::OK);
    assert!(cache_status.contains("hit"), "{cache_status}");
    // A new connection sees the new certificate.
    let after = ca.connect(corral.addr, "127.0.0.1").await;
    assert_eq!(peer_certificate(&after), renewed.der);
    assert_eq!(serial_of(&peer_certificate(&after)), [2]);

    // A key that is not the certificate's is refused; the old pair serves on.
    let third = ca.issue(&["127.0.0.1"], 3);
    files.write("cert.pem", &third.cert_pem);
    let (status, body) = corral.reload().await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("\"reloaded\":false"), "{body}");
    assert!(
        body.contains("server.tls.key_file") && body.contains("does not match the certificate"),
        "{body}"
    );
    assert!(
        body.contains("corral.toml:"),
        "reported at its position: {body}"
    );
    let still = ca.connect(corral.addr, "127.0.0.1").await;
    assert_eq!(peer_certificate(&still), renewed.der);
    assert_eq!(get_on(&mut old, "/page").await.0, StatusCode::OK);
    corral.shutdown().await;
}

/// `corral check FILE`, run as the real binary.
fn check(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_corral"))
        .arg("check")
        .arg(file)
        .env_remove("CORRAL_CONFIG")
        .env_remove("CORRAL_ORIGIN")
        .output()
        .expect("run corral check")
}

#[test]
fn corral_check_refuses_unreadable_and_mismatched_tls_files_at_their_positions() {
    let ca = TestCa::new();
    let (one, two) = (ca.issue(&["localhost"], 1), ca.issue(&["localhost"], 2));
    let files = TempDir::new("tls-check");
    files.write("cert.pem", &one.cert_pem);
    files.write("key.pem", &two.key_pem);
    let text = "[origin]\nurl = \"https://localhost:8443\"\nca_file = \"missing-ca.pem\"\n\
                [server.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n";
    let config = files.write("corral.toml", text);
    let output = check(&config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one line per problem: {stderr}");
    let at = |line: usize, column: usize| format!("{}:{line}:{column}: ", config.display());
    assert!(
        lines[0].starts_with(&at(3, 11)) && lines[0].contains("origin.ca_file"),
        "{stderr}"
    );
    assert!(lines[0].contains("cannot read it"), "{stderr}");
    assert!(
        lines[1].starts_with(&at(6, 12)) && lines[1].contains("server.tls.key_file"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("does not match the certificate"),
        "{stderr}"
    );

    // Mended: the key is the certificate's and the bundle is there.
    files.write("key.pem", &one.key_pem);
    files.write("missing-ca.pem", &ca.pem());
    let output = check(&config);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A file that is not PEM at all.
    files.write("cert.pem", "hello\n");
    let output = check(&config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("server.tls.cert_file") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
}
