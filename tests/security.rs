//! Hostile clients, one named test per finding of the security review: request
//! smuggling through a GET with a body, cache poisoning and busting through
//! `Host`, malformed hosts, unkeyed forwarding headers, unbounded origin
//! heads, client-forced refetches, and errors that blame the wrong side.
//!
//! Everything runs over real loopback sockets. Raw `TcpStream`s stand in for
//! attackers; a raw-socket origin records the exact bytes corral sends it.
mod support;

use std::sync::Arc;

use corral::metrics::ClientLimit;
use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply};
use support::Setup;
use support::raw_client::{BOUND, read_response, read_until_closed, send_raw};
use support::raw_origin::{BodyMode, RawOrigin};

/// A cacheable answer from the raw origin.
const CACHEABLE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok";

/// A [`RawOrigin`] in `mode` answering `reply`, and corral in front of it
/// configured with `toml`.
async fn raw_corral(
    mode: BodyMode,
    reply: &'static [u8],
    toml: &str,
) -> (RawOrigin, support::TestProxy) {
    let origin = RawOrigin::start(mode, reply).await;
    let corral = Setup::url(origin.url()).toml(toml).start().await;
    (origin, corral)
}

/// The `corral_client_limit_total` count for `limit`.
fn limit_count(corral: &support::TestProxy, limit: ClientLimit) -> u64 {
    corral.proxy.metrics().client_limits.get(limit)
}

/// A `MockOrigin` that answers every path with its own path and the request
/// headers it saw (one `name: value` line each), cacheable for a minute.
async fn reflecting_origin() -> MockOrigin {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/", |seen| {
        let mut text = format!("{}\n", seen.path);
        for (name, value) in &seen.headers {
            text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
        }
        Reply::ok(text).header("cache-control", "max-age=60").into()
    });
    origin
}

/// A [`reflecting_origin`], corral in front of it configured with `toml`, and a client.
async fn reflecting_corral(toml: &str) -> (MockOrigin, support::TestProxy, reqwest::Client) {
    let origin = reflecting_origin().await;
    let corral = Setup::origin(&origin).toml(toml).start().await;
    (origin, corral, support::client())
}

/// Item 1. On today's code a cacheable GET with `Content-Length: 5` became a
/// fill carrying that length and no body; an origin that answers before
/// reading the body then read the start of the next request on the pooled
/// connection as that body. Now such a request is refused with 400, and every
/// request on the origin's connection arrives whole: no head carries framing,
/// no body swallowed a request.
#[tokio::test]
async fn get_with_a_body_is_refused_and_never_swallows_the_next_pooled_request() {
    let (origin, corral) = raw_corral(
        BodyMode::AnswerThenReadBody,
        CACHEABLE,
        "[[route]]\nmatch = \"/\"\n",
    )
    .await;

    let smuggler = b"GET /a HTTP/1.1\r\nHost: corral.test\r\nContent-Length: 5\r\n\r\nhello";
    let mut stream = send_raw(corral.addr, smuggler).await;
    let refused = read_until_closed(&mut stream).await;
    assert_eq!(refused.status(), Some(400), "{refused:?}");

    // Two honest requests for other keys, one after the other: with the bug,
    // the first would have left a dangling length on the pooled connection.
    for path in ["/b", "/c"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: corral.test\r\n\r\n");
        let mut stream = send_raw(corral.addr, request.as_bytes()).await;
        assert_eq!(read_response(&mut stream).await, (200, "ok".to_owned()));
    }
    origin.wait_for_requests(2).await;
    let requests = origin.requests();
    let paths: Vec<&str> = requests
        .iter()
        .map(|r| r.head.split(' ').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(paths, ["/b", "/c"], "{requests:#?}");
    assert_eq!(
        origin.connections(),
        1,
        "both fills share one pooled connection"
    );
    for request in &requests {
        let head = request.head.to_ascii_lowercase();
        assert!(request.complete && request.body.is_empty(), "{request:?}");
        assert!(!head.contains("content-length"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
    }
    // The exact bytes on the wire: two bodiless GETs, nothing else.
    let raw = String::from_utf8_lossy(&origin.raw(0)).into_owned();
    assert_eq!(raw.matches("GET ").count(), 2, "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "{raw:?}");
    assert_eq!(limit_count(&corral, ClientLimit::Malformed), 1);
    corral.shutdown().await;
}

/// Item 1 over h2: a GET with a body on a cacheable route is refused the same
/// way, and nothing reaches the origin.
#[tokio::test]
async fn get_with_a_body_over_h2_is_refused() {
    let (origin, corral, _) = reflecting_corral("[[route]]\nmatch = \"/\"\n").await;
    let h2 = support::h2_client();
    let seen = support::send(h2.get(corral.url("/a")).body("hello")).await;
    assert_eq!(seen.status, 400, "{seen:?}");
    assert_eq!(origin.hits(), 0);
    corral.shutdown().await;
}

/// Item 1, the documented alternative: on a pass-through route a GET's body
/// is relayed with it (some APIs search with GET bodies), never cached.
#[tokio::test]
async fn get_with_a_body_on_a_pass_route_is_relayed_with_its_body() {
    let (origin, corral) = raw_corral(
        BodyMode::ReadBodyThenAnswer,
        CACHEABLE,
        "[[route]]\nmatch = \"/search\"\ncache = false\n",
    )
    .await;
    let request = b"GET /search HTTP/1.1\r\nHost: corral.test\r\nContent-Length: 5\r\n\r\nhello";
    let mut stream = send_raw(corral.addr, request).await;
    assert_eq!(read_response(&mut stream).await, (200, "ok".to_owned()));
    let requests = origin.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body, b"hello");
    assert!(requests[0].complete);
    corral.shutdown().await;
}

/// Item 2. The seed joined host and path without a separator, so
/// `Host: ADDR/admin` + `/z` stored `/z`'s answer under the key of `/admin/z`.
/// Now that host is refused, and `/admin/z` gets its own answer.
#[tokio::test]
async fn a_host_carrying_a_path_cannot_store_an_answer_under_another_url() {
    let (origin, corral, client) = reflecting_corral("[[route]]\nmatch = \"/\"\n").await;
    let poison = format!(
        "GET /z HTTP/1.1\r\nHost: {}/admin\r\nConnection: close\r\n\r\n",
        corral.addr
    );
    let mut stream = send_raw(corral.addr, poison.as_bytes()).await;
    assert_eq!(read_until_closed(&mut stream).await.status(), Some(400));

    let victim = support::get(&client, &corral.url("/admin/z")).await;
    assert_eq!(victim.status, 200);
    assert!(victim.text().starts_with("/admin/z\n"), "{victim:?}");
    assert!(victim.cache_status.contains("fwd=miss"), "{victim:?}");
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

/// Item 3: RFC 9112 §3.2 — no Host, two Host lines, or a Host that is not a
/// valid `host[:port]` get 400 without reaching the origin. HTTP/1.0 may omit it.
#[tokio::test]
async fn missing_repeated_or_malformed_hosts_get_400() {
    let (origin, corral, _) = reflecting_corral("[[route]]\nmatch = \"/\"\n").await;
    let heads = [
        "GET /p HTTP/1.1\r\n",
        "GET /p HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n",
        "GET /p HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n",
        "GET /p HTTP/1.1\r\nHost: a.example/evil\r\n",
        "GET /p HTTP/1.1\r\nHost: a.example evil\r\n",
        "GET /p HTTP/1.1\r\nHost: user@a.example\r\n",
        "GET /p HTTP/1.1\r\nHost: a.example:99999\r\n",
        "GET /p HTTP/1.1\r\nHost: a.example:port\r\n",
        "GET /p HTTP/1.1\r\nHost: \r\n",
        "GET /p HTTP/1.1\r\nHost: a.example?x\r\n",
    ];
    for head in heads {
        let request = format!("{head}Connection: close\r\n\r\n");
        let mut stream = send_raw(corral.addr, request.as_bytes()).await;
        let closed = read_until_closed(&mut stream).await;
        assert_eq!(closed.status(), Some(400), "{head:?}: {closed:?}");
    }
    assert_eq!(origin.hits(), 0);

    let http10 = b"GET /p HTTP/1.0\r\n\r\n";
    let mut stream = send_raw(corral.addr, http10).await;
    let closed = read_until_closed(&mut stream).await;
    assert_eq!(
        closed.status(),
        Some(200),
        "HTTP/1.0 without Host: {closed:?}"
    );
    corral.shutdown().await;
}

/// Item 3, HTTP/2: a `Host` that disagrees with `:authority` is refused.
#[tokio::test]
async fn h2_host_disagreeing_with_authority_gets_400() {
    let (origin, corral, _) = reflecting_corral("[[route]]\nmatch = \"/\"\n").await;
    let h2 = support::h2_client();
    let seen = support::send(h2.get(corral.url("/p")).header("host", "evil.example")).await;
    assert_eq!(seen.status, 400, "{seen:?}");
    let fine = support::send(h2.get(corral.url("/p"))).await;
    assert_eq!(fine.status, 200, "{fine:?}");
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

/// Item 4. With `preserve_host = false` the origin never sees the client's
/// Host, so the key does not hold it: 200 requests with 200 different Host
/// values for one URL make one origin request (the seed made 200).
#[tokio::test]
async fn random_hosts_cannot_bust_the_cache() {
    let (origin, corral, client) = reflecting_corral("[[route]]\nmatch = \"/\"\n").await;
    for n in 0..200 {
        let host = format!("bust-{n}.example");
        let seen = support::get_with(&client, &corral.url("/item"), &[("host", &host)]).await;
        assert_eq!(seen.status, 200, "{seen:?}");
    }
    assert_eq!(origin.hits(), 1);
    let cache = corral.proxy.cache();
    assert_eq!(cache.entry_count(), 1);
    corral.shutdown().await;
}

/// Item 4, preserving routes: only listed hosts are accepted (421 otherwise,
/// the origin untouched), each keyed and sent upstream in canonical form.
#[tokio::test]
async fn a_route_preserving_host_accepts_only_listed_hosts() {
    let (origin, corral, client) = reflecting_corral("[server]\nhosts = [\"shop.example\"]\n[[route]]\nmatch = \"/\"\npreserve_host = true\nhosts = [\"api.example:8080\"]\n").await;
    let url = corral.url("/item");
    let with_host = |host: &'static str| {
        let request = client.get(&url).header("host", host);
        support::send(request)
    };

    for host in ["evil.example", "api.example", "shop.example.evil"] {
        assert_eq!(with_host(host).await.status, 421, "{host}");
    }
    assert_eq!(origin.hits(), 0);
    assert_eq!(limit_count(&corral, ClientLimit::Host), 3);

    let shop = with_host("Shop.Example").await;
    assert!(shop.text().contains("host: shop.example\n"), "{shop:?}");
    let again = with_host("shop.example:80").await;
    assert!(
        again.cache_status.contains("hit"),
        "one key per host: {again:?}"
    );
    let api = with_host("api.example:8080").await;
    assert!(api.text().contains("host: api.example:8080\n"), "{api:?}");
    assert_eq!(origin.hits(), 2);
    corral.shutdown().await;
}

/// Item 5. A fill carries corral's own forwarding headers and none of the
/// client's forwarding or override headers, so an origin that reflects them
/// cannot put one client's values into the shared answer.
#[tokio::test]
async fn client_forwarding_and_override_headers_never_reach_a_fill() {
    let (origin, corral, client) = reflecting_corral("[[route]]\nmatch = \"/\"\n").await;
    let hostile = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-scheme", "javascript"),
        ("x-forwarded-port", "1337"),
        ("forwarded", "host=evil.example;for=6.6.6.6"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("x-host", "evil.example"),
    ];
    let seen = support::get_with(&client, &corral.url("/page"), &hostile).await;
    let reflected = seen.text();
    for (name, value) in hostile {
        assert!(
            !reflected.contains(value),
            "{name}: {value} reached the origin:\n{reflected}"
        );
    }
    assert!(
        reflected.contains("x-forwarded-for: 127.0.0.1\n"),
        "{reflected}"
    );
    assert!(
        reflected.contains("x-forwarded-proto: http\n"),
        "{reflected}"
    );
    assert!(
        reflected.contains("forwarded: for=127.0.0.1;proto=http\n"),
        "{reflected}"
    );
    // The next client, without any of them, gets the same clean answer.
    let next = support::get(&client, &corral.url("/page")).await;
    assert_eq!(next.text(), reflected);
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

/// Item 5, the allow-list: a header the route names is forwarded, and keys the
/// answer, so each value gets its own and a client cannot poison another's.
#[tokio::test]
async fn a_listed_forwarding_header_is_forwarded_and_keyed() {
    let (origin, corral, client) =
        reflecting_corral("[[route]]\nmatch = \"/\"\nforward_headers = [\"X-Forwarded-Host\"]\n")
            .await;
    let url = corral.url("/page");
    let evil = support::get_with(&client, &url, &[("x-forwarded-host", "evil.example")]).await;
    assert!(evil.text().contains("x-forwarded-host: evil.example\n"));
    let shop = support::get_with(&client, &url, &[("x-forwarded-host", "shop.example")]).await;
    assert!(
        shop.text().contains("x-forwarded-host: shop.example\n"),
        "{shop:?}"
    );
    let plain = support::get(&client, &url).await;
    assert!(!plain.text().contains("x-forwarded-host"), "{plain:?}");
    let evil_again =
        support::get_with(&client, &url, &[("x-forwarded-host", "evil.example")]).await;
    assert!(evil_again.cache_status.contains("hit"), "{evil_again:?}");
    assert_eq!(origin.hits(), 3);
    corral.shutdown().await;
}

/// Item 6. A 200 KiB response head is answered 502, stored nowhere, counted,
/// and not retried (the seed relayed and stored it).
#[tokio::test]
async fn an_oversized_origin_head_is_a_502_never_stored() {
    let origin = MockOrigin::start().await.unwrap();
    let big = "v".repeat(50 * 1024);
    origin.always(
        "/big",
        Reply::ok("body")
            .header("cache-control", "max-age=60")
            .header("x-a", &big)
            .header("x-b", &big)
            .header("x-c", &big)
            .header("x-d", &big),
    );
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    for expected_hits in [1, 2] {
        let seen = support::get(&client, &corral.url("/big")).await;
        assert_eq!(seen.status, 502, "{seen:?}");
        assert!(seen.cache_status.contains("head_too_large"), "{seen:?}");
        assert_eq!(origin.hits(), expected_hits, "never retried, never stored");
    }
    let metrics = corral.metrics_text().await;
    assert!(
        metrics.contains("corral_origin_requests_total{route=\"/\",status=\"head_too_large\"} 2"),
        "{metrics}"
    );
    corral.shutdown().await;
}

/// Item 6: an answer that is not HTTP is a 502 at once, not retried as if it
/// were a transport blip (the seed sent it three times).
#[tokio::test]
async fn an_invalid_origin_answer_is_not_retried() {
    let (origin, corral) = raw_corral(
        BodyMode::ReadBodyThenAnswer,
        b"HTTP/1.1 2OO OK\r\n\r\n",
        "[[route]]\nmatch = \"/\"\n",
    )
    .await;
    let client = support::client();
    let seen = support::get(&client, &corral.url("/bad")).await;
    assert_eq!(seen.status, 502, "{seen:?}");
    assert!(seen.cache_status.contains("invalid_response"), "{seen:?}");
    assert_eq!(origin.requests().len(), 1);
    corral.shutdown().await;
}

/// Item 7. Concurrent `no-cache` requests for one stored key share one
/// revalidation: they are followers of one flight.
#[tokio::test]
async fn concurrent_no_cache_requests_share_one_revalidation() {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gate_for_script = gate.clone();
    origin.on("/hot", move |_| {
        let reply = Reply::ok("v").header("cache-control", "max-age=60");
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            reply.into()
        } else {
            Behaviour::gated(&gate_for_script, reply)
        }
    });
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/hot");
    assert_eq!(support::get(&client, &url).await.status, 200);

    let herd: Vec<_> = (0..30)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                support::get_with(&client, &url, &[("cache-control", "no-cache")]).await
            })
        })
        .collect();
    support::wait_until(
        "29 no-cache requests wait on one revalidation",
        BOUND,
        || corral.proxy.metrics().followers_waiting.get() == 29,
    )
    .await;
    gate.open();
    for seen in support::join_all(herd).await {
        assert_eq!(seen.status, 200, "{seen:?}");
    }
    assert_eq!(
        origin.hits(),
        2,
        "one fill, then one revalidation for all 30"
    );
    corral.shutdown().await;
}

/// Item 7, `client_no_cache = "ignore"`: clients cannot force origin traffic;
/// their directives are neither honoured nor forwarded.
#[tokio::test]
async fn a_route_ignoring_client_no_cache_answers_from_the_cache() {
    let (origin, corral, client) =
        reflecting_corral("[[route]]\nmatch = \"/\"\nclient_no_cache = \"ignore\"\n").await;
    let url = corral.url("/hot");
    let first = support::get_with(&client, &url, &[("cache-control", "no-cache")]).await;
    assert!(
        !first.text().contains("cache-control"),
        "not forwarded: {first:?}"
    );
    for wish in ["no-cache", "max-age=0", "no-store", "min-fresh=9999"] {
        let seen = support::get_with(&client, &url, &[("cache-control", wish)]).await;
        assert!(seen.cache_status.contains("hit"), "{wish}: {seen:?}");
    }
    let pragma = support::get_with(&client, &url, &[("pragma", "no-cache")]).await;
    assert!(pragma.cache_status.contains("hit"), "{pragma:?}");
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

/// Item 8. A malformed chunked request body is the client's fault: 400, not
/// the 502 the seed answered.
#[tokio::test]
async fn a_malformed_chunked_body_gets_400_not_502() {
    let (_origin, corral) = raw_corral(
        BodyMode::ReadBodyThenAnswer,
        CACHEABLE,
        "[[route]]\nmatch = \"/\"\ncache = false\n",
    )
    .await;
    // A good first chunk, then a chunk size that is not hex.
    let mut stream = send_raw(
        corral.addr,
        b"POST /upload HTTP/1.1\r\nHost: corral.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",
    )
    .await;
    let closed = read_until_closed(&mut stream).await;
    assert_eq!(closed.status(), Some(400), "{closed:?}");
    assert_eq!(limit_count(&corral, ClientLimit::Malformed), 1);
    corral.shutdown().await;
}
