//! What must never be coalesced or shared, through real sockets: unsafe
//! methods and requests with credentials reach the origin once each, and an
//! answer that sets a cookie reaches only the client it was meant for
//! (DESIGN.md invariant 7).
mod support;

use support::{Seen, Setup, join_all, seen};

use std::collections::HashSet;
use std::time::Duration;

use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply};
use reqwest::StatusCode;

/// Every path is a caching route: passing must come from the request itself.
const ROUTES: &str = "[[route]]\nmatch = \"/\"\nttl = \"60s\"\n";

/// Concurrent requests per scenario.
const CLIENTS: usize = 8;

/// Bound on every wait-for-condition; generous for a shared machine.
const WITHIN: Duration = Duration::from_secs(30);

/// Bound on one client request, so a proxy that never answers fails the test
/// instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `CLIENTS` requests built by `request` at once against a gated origin,
/// and checks that every one of them reaches the origin while it is still
/// held (none waits on another), then that all are answered as passes.
async fn each_reaches_origin(
    path: &str,
    request: impl Fn(&reqwest::Client, String, usize) -> reqwest::RequestBuilder,
) {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always(path, Behaviour::gated(&gate, Reply::ok("passed")));
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();
    let url = corral.url(path);

    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let sent = request(&client, url.clone(), i)
                .timeout(REQUEST_TIMEOUT)
                .send();
            tokio::spawn(async move { seen(sent.await.expect("request reaches corral")).await })
        })
        .collect();
    let all_arrived = tokio::time::timeout(WITHIN, origin.wait_for_hits(CLIENTS as u64)).await;
    assert!(
        all_arrived.is_ok(),
        "{CLIENTS} concurrent requests made only {} origin requests: they were coalesced",
        origin.hits()
    );
    assert_eq!(corral.proxy.metrics().followers_waiting.get(), 0);
    assert_eq!(
        corral.proxy.flights_in_flight(),
        0,
        "a pass never joins a flight"
    );
    gate.open();

    for s in join_all(handles).await {
        assert_eq!(s.status, StatusCode::OK, "{s:?}");
        assert_eq!(s.text(), "passed");
        assert!(s.cache_status.contains("fwd=bypass"), "{s:?}");
    }
    assert_eq!(
        origin.hits(),
        CLIENTS as u64,
        "one origin request per client"
    );

    // Nothing the passes fetched was stored: a plain GET leads its own fetch.
    let plain = seen(
        client
            .get(&url)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        plain.cache_status.contains("fwd=miss"),
        "a pass must not fill the cache: {plain:?}"
    );
    assert_eq!(origin.hits(), CLIENTS as u64 + 1);
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_requests_reach_origin_once_each() {
    each_reaches_origin("/api/orders", |client, url, i| {
        client.post(url).body(format!("{{\"order\":{i}}}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_authorization_reaches_origin_once_each() {
    each_reaches_origin("/api/account", |client, url, i| {
        client
            .get(url)
            .header("authorization", format!("Bearer token-{i}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_cookie_reaches_origin_once_each() {
    each_reaches_origin("/api/basket", |client, url, i| {
        client.get(url).header("cookie", format!("session={i}"))
    })
    .await;
}

/// The body and the cookie the origin gave one response, which must belong together.
fn own_cookie(s: &Seen) -> String {
    assert_eq!(s.status, StatusCode::OK, "{s:?}");
    let cookie = s
        .set_cookie()
        .unwrap_or_else(|| panic!("the answer lost its Set-Cookie: {s:?}"));
    let nth = s
        .text()
        .strip_prefix("user-")
        .unwrap_or_else(|| panic!("unexpected body: {s:?}"));
    assert_eq!(
        cookie,
        format!("session={nth}"),
        "a client got a cookie that was set for another request: {s:?}"
    );
    cookie.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_response_is_never_served_to_another_client() {
    const SEQUENTIAL: usize = 3;
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    {
        let gate = gate.clone();
        origin.on("/api/me", move |seen| {
            let reply = Reply::ok(format!("user-{}", seen.nth))
                .header("set-cookie", &format!("session={}", seen.nth));
            Behaviour::gated(&gate, reply)
        });
    }
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();
    let url = corral.url("/api/me");
    let metrics = corral.proxy.metrics();

    // Concurrent: one leader at the origin, the rest queued behind it.
    let mut handles = Vec::new();
    let first = client.get(&url).timeout(REQUEST_TIMEOUT).send();
    handles.push(tokio::spawn(
        async move { seen(first.await.unwrap()).await },
    ));
    tokio::time::timeout(WITHIN, origin.wait_for_hits(1))
        .await
        .expect("the first request reaches the origin");
    for _ in 1..CLIENTS {
        let sent = client.get(&url).timeout(REQUEST_TIMEOUT).send();
        handles.push(tokio::spawn(async move { seen(sent.await.unwrap()).await }));
    }
    support::wait_until("the other clients wait on the first", WITHIN, || {
        metrics.followers_waiting.get() == (CLIENTS - 1) as i64
    })
    .await;
    gate.open();

    let mut cookies = HashSet::new();
    for s in join_all(handles).await {
        let cookie = own_cookie(&s);
        assert!(
            cookies.insert(cookie.clone()),
            "two clients received the same Set-Cookie {cookie}"
        );
    }
    assert_eq!(
        origin.hits(),
        CLIENTS as u64,
        "each concurrent client got its own origin answer"
    );

    // Sequential: nothing was cached, each client gets a fresh cookie.
    for _ in 0..SEQUENTIAL {
        let s = seen(
            client
                .get(&url)
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let cookie = own_cookie(&s);
        assert!(
            !s.cache_status.contains("; hit"),
            "a Set-Cookie answer was served from cache: {s:?}"
        );
        assert!(
            cookies.insert(cookie.clone()),
            "a later client received an earlier client's Set-Cookie {cookie}"
        );
    }
    assert_eq!(origin.hits(), (CLIENTS + SEQUENTIAL) as u64);
    corral.shutdown().await;
}
