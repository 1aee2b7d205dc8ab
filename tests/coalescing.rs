//! Request coalescing through real sockets: one origin fetch per key at a time,
//! no gap between the flight and the cache, leaving clients, per-key isolation
//! and bounded follower waits (DESIGN.md invariants 1, 2, 4, 5 and 6).
mod support;

use support::{Setup, burst, get, join_all, spawn_get};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply};
use reqwest::StatusCode;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// Every path cached for a minute, followers wait up to the default 10 s.
const ROUTES: &str = "[[route]]\nmatch = \"/\"\nttl = \"60s\"\n";

/// How long a wait-for-condition loop may take before the test fails. Generous:
/// other builds may share the machine.
const WITHIN: Duration = Duration::from_secs(30);

fn is_hit(cache_status: &str) -> bool {
    cache_status.contains("; hit")
}

fn is_collapsed(cache_status: &str) -> bool {
    cache_status.contains("fwd=miss") && cache_status.contains("collapsed")
}

fn is_leader_miss(cache_status: &str) -> bool {
    cache_status.contains("fwd=miss") && !cache_status.contains("collapsed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_hit_origin_once() {
    const CLIENTS: usize = 800;
    const BODY: &str = "{\"id\":1,\"name\":\"flash sale\"}";
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always("/api/products/1", Behaviour::gated(&gate, Reply::ok(BODY)));
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();
    let url = corral.url("/api/products/1");
    let metrics = corral.proxy.metrics();

    let first_wave = burst(&client, &url, CLIENTS).await;
    support::wait_until(
        "the leader is at the origin and the other 799 wait as followers",
        WITHIN,
        || origin.hits() >= 1 && metrics.followers_waiting.get() >= (CLIENTS - 1) as i64,
    )
    .await;
    assert_eq!(
        origin.hits(),
        1,
        "a cold key with 800 concurrent misses must reach the origin exactly once"
    );
    assert_eq!(metrics.followers_waiting.get(), (CLIENTS - 1) as i64);
    assert_eq!(corral.proxy.flights_in_flight(), 1);
    assert_eq!(metrics.flights_in_progress.get(), 1);
    gate.open();

    let first = join_all(first_wave).await;
    for seen in &first {
        assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
        assert_eq!(
            seen.text(),
            BODY,
            "every client gets the origin's one answer"
        );
    }
    let leaders = first
        .iter()
        .filter(|s| is_leader_miss(&s.cache_status))
        .count();
    let collapsed = first
        .iter()
        .filter(|s| is_collapsed(&s.cache_status))
        .count();
    assert_eq!(leaders, 1, "exactly one client led the fetch");
    assert_eq!(collapsed, CLIENTS - 1, "every other client was a follower");
    assert_eq!(origin.hits(), 1);
    assert_eq!(origin.max_in_flight(), 1);
    assert_eq!(metrics.flight_followers.get(), (CLIENTS - 1) as u64);
    assert_eq!(metrics.followers_waiting.get(), 0);
    assert_eq!(corral.proxy.flights_in_flight(), 0);

    let second = join_all(burst(&client, &url, CLIENTS).await).await;
    for seen in &second {
        assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
        assert_eq!(seen.text(), BODY);
        assert!(
            is_hit(&seen.cache_status),
            "the second wave is served from cache, got Cache-Status {:?}",
            seen.cache_status
        );
    }
    assert_eq!(origin.hits(), 1, "the second wave made no origin request");
    corral.shutdown().await;
}

// Real time: 1 ms-paced arrivals must race the fill on two worker threads (paused time needs one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_arrivals_across_the_fill_see_one_origin_request() {
    /// Upper bound on arrivals, so a broken proxy cannot loop forever.
    const MAX_ARRIVALS: usize = 20_000;
    /// Arrivals kept going after the first client saw a hit.
    const AFTER_FIRST_HIT: usize = 100;
    /// Followers piled up before the origin is allowed to answer.
    const WAITING_BEFORE_ANSWER: i64 = 20;
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always(
        "/api/products/gap",
        Behaviour::gated(&gate, Reply::ok("steady")),
    );
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();
    let url = corral.url("/api/products/gap");
    let hits_seen = Arc::new(AtomicUsize::new(0));

    let arrivals = {
        let client = client.clone();
        let hits_seen = Arc::clone(&hits_seen);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut handles = Vec::new();
            let mut after_hit = 0;
            while handles.len() < MAX_ARRIVALS && after_hit < AFTER_FIRST_HIT {
                tick.tick().await;
                if hits_seen.load(Ordering::SeqCst) > 0 {
                    after_hit += 1;
                }
                let client = client.clone();
                let url = url.clone();
                let hits_seen = Arc::clone(&hits_seen);
                handles.push(tokio::spawn(async move {
                    let seen = get(&client, &url).await;
                    if is_hit(&seen.cache_status) {
                        hits_seen.fetch_add(1, Ordering::SeqCst);
                    }
                    seen
                }));
            }
            handles
        })
    };

    let metrics = corral.proxy.metrics();
    support::wait_until(
        "the leader is at the origin with followers piling up behind it",
        WITHIN,
        || origin.hits() >= 1 && metrics.followers_waiting.get() >= WAITING_BEFORE_ANSWER,
    )
    .await;
    gate.open();

    let handles = arrivals.await.expect("arrival loop panicked");
    let arrived = handles.len();
    assert!(
        arrived < MAX_ARRIVALS,
        "no client saw a hit within {MAX_ARRIVALS} arrivals"
    );
    let seen = join_all(handles).await;
    let (mut leaders, mut collapsed, mut hits) = (0, 0, 0);
    for s in &seen {
        assert_eq!(s.status, StatusCode::OK, "{s:?}");
        assert_eq!(s.text(), "steady");
        if is_leader_miss(&s.cache_status) {
            leaders += 1;
        } else if is_collapsed(&s.cache_status) {
            collapsed += 1;
        } else if is_hit(&s.cache_status) {
            hits += 1;
        } else {
            panic!("unexpected Cache-Status {:?}", s.cache_status);
        }
    }
    println!("{arrived} arrivals: {leaders} leader, {collapsed} collapsed, {hits} hits");
    assert_eq!(
        origin.hits(),
        1,
        "a request arriving while the fill finished went to the origin again (the gap)"
    );
    assert_eq!(leaders, 1);
    assert!(collapsed >= WAITING_BEFORE_ANSWER as usize);
    assert!(hits >= AFTER_FIRST_HIT);
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_client_disconnect_does_not_cancel_the_fetch() {
    const FOLLOWERS: usize = 4;
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always(
        "/api/products/leave",
        Behaviour::gated(&gate, Reply::ok("kept")),
    );
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();
    let url = corral.url("/api/products/leave");
    let metrics = corral.proxy.metrics();

    let leader = support::raw_request(corral.addr, "GET", "/api/products/leave", &[]).await;
    tokio::time::timeout(WITHIN, origin.wait_for_hits(1))
        .await
        .expect("the leader's fetch reaches the origin");
    let followers: Vec<_> = (0..FOLLOWERS).map(|_| spawn_get(&client, &url)).collect();
    support::wait_until("the followers wait on the leader", WITHIN, || {
        metrics.followers_waiting.get() == FOLLOWERS as i64
    })
    .await;

    let open_before = metrics.connections_open.get();
    drop(leader);
    support::wait_until(
        "corral notices the leader's client has gone",
        WITHIN,
        || metrics.connections_open.get() == open_before - 1,
    )
    .await;
    assert_eq!(
        corral.proxy.flights_in_flight(),
        1,
        "the fetch must outlive its leader's client"
    );
    assert_eq!(
        metrics.followers_waiting.get(),
        FOLLOWERS as i64,
        "the followers keep waiting on the departed leader's fetch"
    );
    gate.open();

    for seen in join_all(followers).await {
        assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
        assert_eq!(seen.text(), "kept");
        assert!(is_collapsed(&seen.cache_status), "{seen:?}");
    }
    let later = get(&client, &url).await;
    assert_eq!(later.status, StatusCode::OK);
    assert_eq!(later.text(), "kept");
    assert!(
        is_hit(&later.cache_status),
        "the answer fetched for the departed leader is cached, got {:?}",
        later.cache_status
    );
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_key_does_not_stall_other_keys() {
    const FAST_CLIENTS: usize = 10;
    let origin = MockOrigin::start().await.unwrap();
    // The gate stands in for a 2 s origin on key A.
    let slow_gate = Gate::new();
    origin.always("/api/slow", Behaviour::gated(&slow_gate, Reply::ok("slow")));
    origin.always(
        "/api/fast",
        Reply::ok("fast").delay(Duration::from_millis(10)),
    );
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();
    let metrics = corral.proxy.metrics();

    let slow_url = corral.url("/api/slow");
    let slow_leader = spawn_get(&client, &slow_url);
    tokio::time::timeout(WITHIN, origin.wait_for_hits(1))
        .await
        .expect("key A's fetch reaches the origin");
    let slow_follower = spawn_get(&client, &slow_url);
    support::wait_until("a follower waits on key A", WITHIN, || {
        metrics.followers_waiting.get() == 1
    })
    .await;

    let started = Instant::now();
    let fast_url = corral.url("/api/fast");
    let fast: Vec<_> = (0..FAST_CLIENTS)
        .map(|_| spawn_get(&client, &fast_url))
        .collect();
    for seen in join_all(fast).await {
        assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
        assert_eq!(seen.text(), "fast");
    }
    let elapsed = started.elapsed();
    println!("key B: {FAST_CLIENTS} requests answered in {elapsed:?} while key A was in flight");

    assert!(
        !slow_leader.is_finished() && !slow_follower.is_finished(),
        "key A must still be in flight: its origin gate is closed"
    );
    assert_eq!(
        corral.proxy.flights_in_flight(),
        1,
        "only key A is in flight"
    );
    assert_eq!(origin.hits_on("/api/fast"), 1);
    assert_eq!(origin.hits_on("/api/slow"), 1);

    slow_gate.open();
    for seen in join_all(vec![slow_leader, slow_follower]).await {
        assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
        assert_eq!(seen.text(), "slow");
    }
    assert_eq!(origin.hits_on("/api/slow"), 1);
    corral.shutdown().await;
}

/// On a paused clock: the followers' 200 ms `lock_timeout` runs out once every
/// task waits (tokio moves the clock to it), never because the machine is slow.
#[tokio::test(start_paused = true)]
async fn follower_lock_timeout_answers_504_without_going_to_origin() {
    const FOLLOWERS: usize = 3;
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always("/api/locked", Behaviour::gated(&gate, Reply::ok("late")));
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\nttl = \"60s\"\nlock_timeout = \"200ms\"\n")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/api/locked");

    let leader = spawn_get(&client, &url);
    tokio::time::timeout(WITHIN, origin.wait_for_hits(1))
        .await
        .expect("the leader's fetch reaches the origin");
    let followers: Vec<_> = (0..FOLLOWERS).map(|_| spawn_get(&client, &url)).collect();
    for seen in join_all(followers).await {
        assert_eq!(
            seen.status,
            StatusCode::GATEWAY_TIMEOUT,
            "a follower past its lock_timeout gets 504: {seen:?}"
        );
        assert!(seen.cache_status.contains("lock-timeout"), "{seen:?}");
    }
    assert_eq!(
        origin.hits(),
        1,
        "followers whose wait ran out must not go to the origin themselves"
    );
    assert!(
        !leader.is_finished(),
        "the leader is still held at the gate"
    );
    assert_eq!(corral.proxy.flights_in_flight(), 1);
    assert_eq!(corral.proxy.metrics().followers_waiting.get(), 0);

    gate.open();
    let led = leader.await.unwrap();
    assert_eq!(led.status, StatusCode::OK, "{led:?}");
    assert_eq!(led.text(), "late");
    let later = get(&client, &url).await;
    assert!(is_hit(&later.cache_status), "{later:?}");
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_client_disconnect_stops_waiting_at_once() {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always("/api/wait", Behaviour::gated(&gate, Reply::ok("waited")));
    // Neither the origin timeout nor the lock timeout may end the wait before
    // the departed follower is seen to stop waiting.
    let corral = Setup::origin(&origin)
        .origin_keys("timeout = \"120s\"")
        .toml("[[route]]\nmatch = \"/\"\nttl = \"60s\"\nlock_timeout = \"120s\"\n")
        .start()
        .await;
    let client = support::client();
    let metrics = corral.proxy.metrics();

    let leader = spawn_get(&client, &corral.url("/api/wait"));
    tokio::time::timeout(WITHIN, origin.wait_for_hits(1))
        .await
        .expect("the leader's fetch reaches the origin");
    let follower = support::raw_request(corral.addr, "GET", "/api/wait", &[]).await;
    support::wait_until("the raw client waits as a follower", WITHIN, || {
        metrics.followers_waiting.get() == 1
    })
    .await;
    drop(follower);
    support::wait_until(
        "the departed follower stops waiting (followers_waiting back to 0)",
        WITHIN,
        || metrics.followers_waiting.get() == 0,
    )
    .await;
    assert_eq!(
        corral.proxy.flights_in_flight(),
        1,
        "the leader's fetch is unaffected"
    );
    assert!(!leader.is_finished());

    gate.open();
    let led = leader.await.unwrap();
    assert_eq!(led.status, StatusCode::OK, "{led:?}");
    assert_eq!(led.text(), "waited");
    assert_eq!(metrics.flight_followers.get(), 1);
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn head_on_cached_key_returns_headers_without_body() {
    const BODY: &str = "hello head";
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/api/doc", Reply::ok(BODY));
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();

    let filled = get(&client, &corral.url("/api/doc")).await;
    assert_eq!(filled.status, StatusCode::OK);
    assert_eq!(filled.text(), BODY);
    assert_eq!(origin.hits(), 1);

    // Read the HEAD answer off the wire: a client library would hide a body.
    let mut stream =
        support::raw_request(corral.addr, "HEAD", "/api/doc", &["Connection: close"]).await;
    let mut raw = Vec::new();
    tokio::time::timeout(WITHIN, stream.read_to_end(&mut raw))
        .await
        .expect("corral closes the connection after the HEAD answer")
        .expect("read the HEAD answer");
    let raw = String::from_utf8(raw).expect("HEAD answer is text");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("the HEAD answer has a complete head");
    let head_lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head_lower.contains("cache-status: corral; hit"),
        "HEAD on a cached key is a hit: {head}"
    );
    assert!(
        head_lower.contains(&format!("content-length: {}", BODY.len())),
        "HEAD reports the stored body's length: {head}"
    );
    assert_eq!(body, "", "HEAD must not carry a body");
    assert_eq!(
        origin.hits(),
        1,
        "HEAD on a cached key does not reach the origin"
    );
    corral.shutdown().await;
}

/// Invariant 2 (no gap), deterministically. On a current-thread runtime a
/// follower woken by the leader's answer runs before the fill task resumes;
/// the request it sends at once makes its lookup and join right after the
/// slot is gone. If the answer were stored any later than that (after an
/// await), that request would find neither slot nor entry and fetch again.
#[tokio::test]
async fn a_request_sent_as_the_flight_lands_finds_the_stored_answer() {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always("/api/landing", Behaviour::gated(&gate, Reply::ok("landed")));
    let config = Setup::origin(&origin).toml(ROUTES).config();
    let proxy = corral::Corral::new(&config).unwrap().proxy().clone();
    let client: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let request = || {
        http::Request::get("/api/landing")
            .header("host", "corral.test")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };

    let leader = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.handle(request(), client).await }
    });
    tokio::time::timeout(WITHIN, origin.wait_for_hits(1))
        .await
        .expect("the leader's fetch reaches the origin");
    let follower = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            let followed = proxy.handle(request(), client).await;
            // No await between being woken and this request's lookup and join.
            let landed = proxy.handle(request(), client).await;
            (followed, landed)
        }
    });
    support::wait_until("the follower waits on the leader", WITHIN, || {
        proxy.metrics().followers_waiting.get() == 1
    })
    .await;
    gate.open();

    let (followed, landed) = follower.await.unwrap();
    assert_eq!(leader.await.unwrap().status(), StatusCode::OK);
    assert_eq!(followed.status(), StatusCode::OK);
    let landed_status = landed.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(landed_status.contains("hit"), "{landed_status}");
    assert_eq!(
        origin.hits(),
        1,
        "the request sent as the flight landed fetched again"
    );
}
