//! Retried writes happen once (issue 14): a POST or PATCH carrying
//! `Idempotency-Key` on a route with `idempotency = true` reaches the origin
//! at most once per key and credential, and every retry gets the first
//! answer replayed.
//!
//! Through real sockets, in front of a counting [`MockOrigin`] whose answers
//! number themselves (`{"order":N}`), so a second execution would show. The
//! fleet tests start their own `redis-server` ([`RedisServer`]). Nothing
//! sleeps to synchronise: tests wait on the origin's counter and gate, and on
//! corral's metrics; time-based behaviour (leases, TTLs) runs on a paused clock.
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply, Seen as OriginSeen};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use support::redis::{RedisServer, free_port};
use support::{Seen, Setup, TestProxy, join_all, send, wait_until};
use tokio::net::{TcpListener, TcpStream};

/// Bound on any wait for something a test caused. Generous: two noisy cores.
const WITHIN: Duration = Duration::from_secs(30);

/// A pass-through route whose writes happen once per key.
const ORDERS: &str =
    "[[route]]\nname = \"orders\"\nmatch = \"/orders\"\ncache = false\nidempotency = true\n";

/// The order body every test posts.
const ORDER: &str = r#"{"item":"lamp","qty":1}"#;

/// The origin's answer to its `nth` order: numbered, with a cookie and a
/// header of its own, so replays can be told apart from second executions.
fn created(nth: u64) -> Reply {
    Reply::ok(format!("{{\"order\":{nth}}}"))
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .header("location", &format!("/orders/{nth}"))
        .header("set-cookie", &format!("session=s{nth}; HttpOnly"))
        .header("x-order", &nth.to_string())
}

/// An origin answering every `/orders` request with [`created`].
async fn order_origin() -> MockOrigin {
    let origin = MockOrigin::start().await.expect("origin starts");
    origin.on("/orders", |seen| created(seen.nth).into());
    origin
}

/// A POST of `body` to `url` with `Idempotency-Key: key` (sent as it is).
fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &'static str,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(body)
}

/// Whether `seen` is a replay.
fn replayed(seen: &Seen) -> bool {
    seen.header("idempotent-replayed") == Some("true")
}

/// `seen`'s headers without those that differ between an answer and its
/// replay by design: corral's `Cache-Status`, the replay mark, and the
/// cookie only the first client gets.
fn replayable_headers(seen: &Seen) -> HeaderMap {
    let mut headers = seen.headers.clone();
    for name in ["cache-status", "idempotent-replayed", "set-cookie"] {
        headers.remove(name);
    }
    headers
}

#[tokio::test]
async fn sequential_retries_are_replayed_byte_for_byte_and_the_origin_sees_one() {
    let origin = MockOrigin::start().await.unwrap();
    let forwarded_keys = Arc::new(Mutex::new(Vec::new()));
    origin.on("/orders", {
        let forwarded_keys = Arc::clone(&forwarded_keys);
        move |seen: &OriginSeen| {
            let key = seen.headers.get("idempotency-key").cloned();
            forwarded_keys.lock().unwrap().push(key);
            created(seen.nth).into()
        }
    });
    let corral = Setup::origin(&origin).toml(ORDERS).start().await;
    let client = support::client();
    let url = corral.url("/orders?src=web");

    let first = send(post(&client, &url, "\"order-1\"", ORDER)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert_eq!(first.text(), r#"{"order":1}"#);
    assert!(!replayed(&first));
    assert_eq!(
        first.set_cookie(),
        Some("session=s1; HttpOnly"),
        "the first client gets its cookie"
    );
    for _ in 0..2 {
        let retry = send(post(&client, &url, "\"order-1\"", ORDER)).await;
        assert!(replayed(&retry), "{retry:?}");
        assert_eq!(retry.status, first.status);
        assert_eq!(retry.text(), first.text(), "the body, byte for byte");
        assert_eq!(
            replayable_headers(&retry),
            replayable_headers(&first),
            "the header fields as the origin sent them"
        );
        assert!(
            retry.cache_status.contains("detail=idempotent-replay"),
            "{retry:?}"
        );
    }
    assert_eq!(
        origin.hits_on("/orders"),
        1,
        "retries never reach the origin"
    );
    let keys = forwarded_keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        keys[0].as_ref().map(|k| k.as_bytes()),
        Some(&b"\"order-1\""[..]),
        "the origin gets the header"
    );
    let metrics = &corral.proxy.metrics().idempotency;
    assert_eq!((metrics.claims.get(), metrics.replays.get()), (1, 2));
    assert!(metrics.stored_bytes.get() > 0);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422_and_never_reaches_the_origin() {
    let origin = order_origin().await;
    let corral = Setup::origin(&origin).toml(ORDERS).start().await;
    let client = support::client();
    let url = corral.url("/orders");

    let first = send(post(&client, &url, "k-422", ORDER)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let other = send(post(&client, &url, "k-422", r#"{"item":"lamp","qty":2}"#)).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{other:?}");
    assert_eq!(
        other.header("content-type"),
        Some("application/problem+json")
    );
    assert!(
        other.text().contains("Idempotency-Key is already used"),
        "{other:?}"
    );
    let other_type = client
        .post(&url)
        .header("idempotency-key", "k-422")
        .header("content-type", "text/plain")
        .body(ORDER);
    assert_eq!(
        send(other_type).await.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the content type is part of the payload"
    );
    assert_eq!(
        origin.hits_on("/orders"),
        1,
        "the mismatches never reached the origin"
    );
    assert_eq!(corral.proxy.metrics().idempotency.mismatches.get(), 2);
    let retry = send(post(&client, &url, "k-422", ORDER)).await;
    assert!(
        replayed(&retry) && retry.text() == first.text(),
        "{retry:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_duplicates_reach_the_origin_once_and_all_get_its_answer() {
    const DUPLICATES: usize = 50;
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.on("/orders", {
        let gate = gate.clone();
        move |seen| Behaviour::gated(&gate, created(seen.nth))
    });
    let corral = Setup::origin(&origin).toml(ORDERS).start().await;
    let client = support::client();
    let url = corral.url("/orders");

    let spawn_post = || {
        let request = post(&client, &url, "burst", ORDER);
        tokio::spawn(send(request))
    };
    let mut burst = vec![spawn_post()];
    origin.wait_for_hits(1).await;
    burst.extend((1..DUPLICATES).map(|_| spawn_post()));
    let waiting = &corral.proxy.metrics().idempotency.waiting;
    wait_until("every duplicate waits on the first", WITHIN, || {
        waiting.get() == (DUPLICATES - 1) as i64
    })
    .await;
    assert_eq!(origin.hits_on("/orders"), 1);
    gate.open();

    let answers = join_all(burst).await;
    for seen in &answers {
        assert_eq!(seen.status, StatusCode::CREATED, "{seen:?}");
        assert_eq!(seen.text(), r#"{"order":1}"#, "{seen:?}");
    }
    assert_eq!(
        answers.iter().filter(|seen| replayed(seen)).count(),
        DUPLICATES - 1,
        "one original, the rest replays"
    );
    assert_eq!(
        origin.hits_on("/orders"),
        1,
        "concurrent duplicates never reach the origin"
    );
    assert_eq!(waiting.get(), 0);
}

/// Waits until `instance` uses the fleet's Redis.
async fn joined(instance: &TestProxy) {
    let up = &instance.proxy.metrics().fleet.up;
    wait_until("the instance joins the fleet", WITHIN, || up.get() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_two_instances_sharing_redis_reach_the_origin_once() {
    let redis = RedisServer::start().await;
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.on("/orders", {
        let gate = gate.clone();
        move |seen| Behaviour::gated(&gate, created(seen.nth))
    });
    let fleet = format!(
        "[fleet]\nredis = \"{}\"\nlookup_timeout = \"1s\"\n",
        redis.url()
    );
    let setup = Setup::origin(&origin).toml(ORDERS).toml(&fleet);
    let (a, b) = (setup.start().await, setup.start().await);
    joined(&a).await;
    joined(&b).await;
    let client = support::client();

    let first = tokio::spawn(send(post(&client, &a.url("/orders"), "fleet-1", ORDER)));
    origin.wait_for_hits(1).await;
    let second = tokio::spawn(send(post(&client, &b.url("/orders"), "fleet-1", ORDER)));
    let waiting = &b.proxy.metrics().idempotency.waiting;
    wait_until("the other instance waits on the claim", WITHIN, || {
        waiting.get() == 1
    })
    .await;
    gate.open();

    let first = first.await.unwrap();
    let second = second.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert!(!replayed(&first));
    assert!(replayed(&second), "{second:?}");
    assert_eq!(second.text(), first.text());
    assert_eq!(replayable_headers(&second), replayable_headers(&first));
    for instance in [&a, &b] {
        let retry = send(post(&client, &instance.url("/orders"), "fleet-1", ORDER)).await;
        assert!(
            replayed(&retry) && retry.text() == first.text(),
            "{retry:?}"
        );
    }
    assert_eq!(
        origin.hits_on("/orders"),
        1,
        "one write for the whole fleet"
    );

    let records = redis.keys("corral:idempotency:*").await;
    assert_eq!(records.len(), 1, "{records:?}");
    let stored = redis
        .get_raw(&records[0])
        .await
        .expect("the record is in Redis");
    assert_eq!(stored.first(), Some(&b'R'), "a completed record");
    let lower = stored.to_ascii_lowercase();
    assert!(
        lower.windows(b"x-order".len()).any(|w| w == b"x-order"),
        "the origin's fields are kept"
    );
    assert!(
        !lower
            .windows(b"set-cookie".len())
            .any(|w| w == b"set-cookie"),
        "a record never carries Set-Cookie"
    );
    let ttl: i64 = redis.query(&["PTTL", records[0].as_str()]).await;
    assert!(
        ttl > 23 * 3600 * 1000,
        "kept for idempotency_ttl (24h by default): {ttl} ms"
    );
}

#[tokio::test]
async fn redis_unavailable_is_503_and_the_write_is_never_sent_unprotected() {
    let origin = order_origin().await;
    let fleet = format!(
        "[fleet]\nredis = \"redis://127.0.0.1:{}/\"\nlookup_timeout = \"200ms\"\n",
        free_port()
    );
    let corral = Setup::origin(&origin)
        .toml(ORDERS)
        .toml(&fleet)
        .start()
        .await;
    let seen = send(post(&support::client(), &corral.url("/orders"), "k", ORDER)).await;
    assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE, "{seen:?}");
    assert_eq!(seen.retry_after(), Some("1"));
    assert_eq!(
        seen.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(origin.hits(), 0, "no unprotected write");
    assert_eq!(corral.proxy.metrics().idempotency.unavailable.get(), 1);
}

#[tokio::test]
async fn an_origin_500_is_recorded_and_replayed() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/orders", |seen| {
        Reply::ok(format!("failed {}", seen.nth))
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .into()
    });
    let corral = Setup::origin(&origin).toml(ORDERS).start().await;
    let client = support::client();
    let url = corral.url("/orders");

    let first = send(post(&client, &url, "k-500", ORDER)).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    let retry = send(post(&client, &url, "k-500", ORDER)).await;
    assert_eq!(retry.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        replayed(&retry),
        "a 500 may follow a write: it is replayed, not retried"
    );
    assert_eq!(retry.text(), "failed 1");
    assert_eq!(origin.hits_on("/orders"), 1);
}

/// Accepts on `listener` and pipes every connection to `target`: the origin
/// coming up on an address that refused connections until now.
async fn pipe_to(listener: TcpListener, target: std::net::SocketAddr) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test]
async fn a_refused_connection_frees_the_key_so_the_retry_reaches_the_origin() {
    let origin = order_origin().await;
    let port = free_port();
    let corral = Setup::url(format!("http://127.0.0.1:{port}"))
        .toml(ORDERS)
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/orders");

    let refused = send(post(&client, &url, "k-refused", ORDER)).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "{refused:?}");
    assert!(
        refused.cache_status.contains("connect_error"),
        "{refused:?}"
    );

    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is free again");
    let pipe = tokio::spawn(pipe_to(listener, origin.addr()));
    let retry = send(post(&client, &url, "k-refused", ORDER)).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert!(
        !replayed(&retry),
        "the request was never sent: the retry is the first to run"
    );
    assert_eq!(origin.hits_on("/orders"), 1);
    let again = send(post(&client, &url, "k-refused", ORDER)).await;
    assert!(
        replayed(&again) && again.text() == retry.text(),
        "{again:?}"
    );
    pipe.abort();
}

/// On a paused clock: the 1 s first-byte timeout and the 30 s lease pass as
/// the test says, without waiting.
#[tokio::test(start_paused = true)]
async fn a_timeout_after_sending_holds_the_key_until_the_lease_ends_then_the_request_runs() {
    const LEASE: Duration = Duration::from_secs(30);
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/orders", |seen| {
        if seen.nth == 1 {
            Behaviour::Hang
        } else {
            created(seen.nth).into()
        }
    });
    let corral = Setup::origin(&origin)
        .toml(ORDERS)
        .toml("first_byte_timeout = \"1s\"\nidempotency_lease = \"30s\"")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/orders");

    let timed_out = send(post(&client, &url, "k-timeout", ORDER)).await;
    assert_eq!(
        timed_out.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{timed_out:?}"
    );
    assert_eq!(origin.hits_on("/orders"), 1, "the request was sent");

    let held = send(post(&client, &url, "k-timeout", ORDER)).await;
    assert_eq!(held.status, StatusCode::CONFLICT, "{held:?}");
    assert_eq!(held.retry_after(), Some("30"), "until the lease ends");
    assert!(held.text().contains("unknown"), "{held:?}");
    tokio::time::advance(LEASE - Duration::from_secs(1)).await;
    let still_held = send(post(&client, &url, "k-timeout", ORDER)).await;
    assert_eq!(still_held.status, StatusCode::CONFLICT, "{still_held:?}");
    assert_eq!(
        origin.hits_on("/orders"),
        1,
        "corral never guesses that a write did not happen"
    );

    tokio::time::advance(Duration::from_secs(1)).await;
    let ran = send(post(&client, &url, "k-timeout", ORDER)).await;
    assert_eq!(ran.status, StatusCode::CREATED, "{ran:?}");
    assert_eq!(ran.text(), r#"{"order":2}"#);
    assert_eq!(origin.hits_on("/orders"), 2);
    assert_eq!(corral.proxy.metrics().idempotency.conflicts.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_record_past_its_ttl_is_forgotten_and_the_request_runs_again() {
    let origin = order_origin().await;
    let corral = Setup::origin(&origin)
        .toml(ORDERS)
        .toml("idempotency_ttl = \"1m\"\nidempotency_lease = \"10s\"")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/orders");

    assert_eq!(
        send(post(&client, &url, "k-ttl", ORDER)).await.text(),
        r#"{"order":1}"#
    );
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(
        replayed(&send(post(&client, &url, "k-ttl", ORDER)).await),
        "within the TTL"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let again = send(post(&client, &url, "k-ttl", ORDER)).await;
    assert!(!replayed(&again), "{again:?}");
    assert_eq!(again.text(), r#"{"order":2}"#);
    assert_eq!(origin.hits_on("/orders"), 2);
}

#[tokio::test]
async fn the_same_key_under_another_credential_is_independent() {
    let origin = order_origin().await;
    let tenants = "[[route]]\nname = \"tenant-orders\"\nmatch = \"/tenants/\"\ncache = false\nidempotency = true\nidempotency_identity_header = \"X-Api-Key\"\n";
    origin.on("/tenants/", |seen| created(seen.nth).into());
    let corral = Setup::origin(&origin)
        .toml(ORDERS)
        .toml(tenants)
        .start()
        .await;
    let client = support::client();
    let as_user = |url: &str, header: &str, credential: &str| {
        post(&client, url, "shared-key", ORDER).header(header, credential.to_owned())
    };

    let url = corral.url("/orders");
    let alice = send(as_user(&url, "authorization", "Bearer alice")).await;
    let bob = send(as_user(&url, "authorization", "Bearer bob")).await;
    assert!(!replayed(&alice) && !replayed(&bob), "{bob:?}");
    assert_ne!(alice.text(), bob.text(), "bob's order ran for bob");
    let anonymous = send(post(&client, &url, "shared-key", ORDER)).await;
    assert!(!replayed(&anonymous));
    let alice_again = send(as_user(&url, "authorization", "Bearer alice")).await;
    assert!(
        replayed(&alice_again) && alice_again.text() == alice.text(),
        "{alice_again:?}"
    );
    assert_eq!(origin.hits_on("/orders"), 3);

    // With an identity header, it is the credential (Authorization is not).
    let url = corral.url("/tenants/orders");
    let acme = send(as_user(&url, "x-api-key", "acme")).await;
    let globex = send(as_user(&url, "x-api-key", "globex")).await;
    assert!(!replayed(&acme) && !replayed(&globex));
    let acme_again =
        send(as_user(&url, "x-api-key", "acme").header("authorization", "Bearer other")).await;
    assert!(
        replayed(&acme_again) && acme_again.text() == acme.text(),
        "{acme_again:?}"
    );
    assert_eq!(origin.hits_on("/tenants/"), 2);
}

#[tokio::test]
async fn a_malformed_key_is_400_problem_json_and_never_reaches_the_origin() {
    let origin = order_origin().await;
    let corral = Setup::origin(&origin).toml(ORDERS).start().await;
    let client = support::client();
    let url = corral.url("/orders");
    let too_long = "k".repeat(256);
    for key in [
        "\"unterminated",
        "two words",
        "8e03978e-40d5-43e8-bc93-6894a57f9324",
        "\"\"",
        "token;param=1",
        too_long.as_str(),
    ] {
        let seen = send(post(&client, &url, key, ORDER)).await;
        assert_eq!(seen.status, StatusCode::BAD_REQUEST, "{key:?}: {seen:?}");
        assert_eq!(
            seen.header("content-type"),
            Some("application/problem+json"),
            "{key:?}"
        );
        assert!(
            seen.text().contains("Idempotency-Key is malformed"),
            "{key:?}: {seen:?}"
        );
    }
    let repeated = post(&client, &url, "a", ORDER).header("idempotency-key", "b");
    assert_eq!(
        send(repeated).await.status,
        StatusCode::BAD_REQUEST,
        "a repeated field"
    );
    let quoted_uuid = send(post(
        &client,
        &url,
        "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"",
        ORDER,
    ))
    .await;
    assert_eq!(
        quoted_uuid.status,
        StatusCode::CREATED,
        "a UUID is a key as an sf-string"
    );
    assert_eq!(origin.hits_on("/orders"), 1);
}

#[tokio::test]
async fn a_missing_key_is_400_where_required_and_passes_where_not() {
    let origin = order_origin().await;
    let required = "[[route]]\nname = \"payments\"\nmatch = \"/orders/pay\"\ncache = false\nidempotency = true\nidempotency_required = true\n";
    let corral = Setup::origin(&origin)
        .toml(required)
        .toml(ORDERS)
        .start()
        .await;
    let client = support::client();

    let refused = send(client.post(corral.url("/orders/pay")).body(ORDER)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert!(
        refused.text().contains("Idempotency-Key is missing"),
        "{refused:?}"
    );
    assert_eq!(origin.hits(), 0);
    for _ in 0..2 {
        let passed = send(client.post(corral.url("/orders")).body(ORDER)).await;
        assert_eq!(passed.status, StatusCode::CREATED, "{passed:?}");
        assert!(
            !replayed(&passed),
            "without a key, a write passes as on any route"
        );
    }
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn a_body_over_idempotency_max_body_is_413_and_never_sent() {
    let origin = order_origin().await;
    let corral = Setup::origin(&origin)
        .toml(ORDERS)
        .toml("idempotency_max_body = \"16B\"")
        .start()
        .await;
    let seen = send(post(
        &support::client(),
        &corral.url("/orders"),
        "k-big",
        ORDER,
    ))
    .await;
    assert_eq!(seen.status, StatusCode::PAYLOAD_TOO_LARGE, "{seen:?}");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn a_get_with_the_header_is_ignored_and_cached_as_usual() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/api/", |seen| {
        Reply::ok(format!("catalogue {}", seen.nth))
            .header("cache-control", "max-age=60")
            .into()
    });
    let route = "[[route]]\nname = \"api\"\nmatch = \"/api/\"\nidempotency = true\nidempotency_required = true\n";
    let corral = Setup::origin(&origin).toml(route).start().await;
    let client = support::client();
    let url = corral.url("/api/catalogue");

    let get = || send(client.get(&url).header("idempotency-key", "k-get"));
    let first = get().await;
    let second = get().await;
    assert_eq!(first.text(), "catalogue 1");
    assert!(
        second.cache_status.contains("hit"),
        "cached as usual: {second:?}"
    );
    assert_eq!(second.text(), "catalogue 1");
    assert!(!replayed(&second));
    let without = send(client.get(&url)).await;
    assert_eq!(
        without.status,
        StatusCode::OK,
        "a GET needs no key, even where writes must carry one"
    );
    assert_eq!(origin.hits_on("/api/"), 1);
    assert_eq!(corral.proxy.metrics().idempotency.claims.get(), 0);
}

#[tokio::test]
async fn a_record_never_carries_set_cookie() {
    let origin = order_origin().await;
    let corral = Setup::origin(&origin).toml(ORDERS).start().await;
    let client = support::client();
    let url = corral.url("/orders");

    let first = send(post(&client, &url, "k-cookie", ORDER)).await;
    assert_eq!(
        first.set_cookie(),
        Some("session=s1; HttpOnly"),
        "the first client's session is its own"
    );
    let retry = send(post(&client, &url, "k-cookie", ORDER)).await;
    assert!(replayed(&retry), "{retry:?}");
    assert_eq!(
        retry.set_cookie(),
        None,
        "a replay never hands the session out again"
    );
    assert_eq!(
        retry.header("x-order"),
        Some("1"),
        "the other fields are kept"
    );
    assert_eq!(retry.header("location"), Some("/orders/1"));
}
