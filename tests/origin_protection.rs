//! Origin protection through real sockets: retries within a budget, the
//! circuit breaker, the `Retry-After` gate, back-pressure with a bounded
//! queue, and per-route timeouts.
//!
//! Time that must pass (retry backoff, a breaker's open period, a
//! `Retry-After`, a route's timeout) passes on a paused tokio clock, never
//! slept: a current-thread runtime, so clients, corral and the origin share
//! one thread and no loopback I/O is in flight while the runtime is idle.
//! Backoffs, `Retry-After` waits and timeouts are corral's own tokio timers,
//! which tokio reaches (in deadline order) once every task waits; a period
//! the test waits out it skips with `advance`, at points where no socket I/O
//! is outstanding (between requests, or while a request waits on the test).
mod support;

use support::{Setup, get, send, spawn_get};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply};
use futures_util::StreamExt;
use reqwest::StatusCode;

/// Bound on every wait-for-condition; generous for a shared machine.
const WITHIN: Duration = Duration::from_secs(30);

/// The value of the sample `name{labels}` in corral's metrics, if exported.
fn metric(corral: &support::TestProxy, sample: &str) -> Option<f64> {
    let text = corral.proxy.metrics().encode().expect("metrics encode");
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// `name{origin="127.0.0.1:PORT"}` for `origin`, with `extra` labels after it.
fn sample(name: &str, origin: &MockOrigin, extra: &str) -> String {
    format!("{name}{{origin=\"{}\"{extra}}}", origin.addr())
}

/// Origin keys that keep the breaker out of tests about something else.
const NO_BREAKER: &str = "breaker_min_requests = 100000\n";

const CACHE_ALL: &str = "[[route]]\nmatch = \"/\"\nttl = \"60s\"\n";

#[tokio::test(start_paused = true)]
async fn flapping_origin_is_hidden_by_retries_within_the_budget() {
    let origin = MockOrigin::start().await.unwrap();
    // Every other request fails.
    origin.on("/flap/", |seen| {
        if seen.nth % 2 == 1 {
            Reply::ok("down")
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .into()
        } else {
            Reply::ok("up").into()
        }
    });
    const BUDGET: f64 = 1.0;
    let origin_keys = format!(
        "retries = 2\nretry_budget = {BUDGET:?}\nretry_backoff = \"1ms\"\n\
         retry_backoff_max = \"5ms\"\n{NO_BREAKER}"
    );
    let corral = Setup::origin(&origin)
        .origin_keys(&origin_keys)
        .toml(CACHE_ALL)
        .start()
        .await;
    let client = support::client();

    const REQUESTS: u64 = 40;
    for i in 0..REQUESTS {
        let seen = get(&client, &corral.url(&format!("/flap/{i}"))).await;
        assert_eq!(seen.status, StatusCode::OK, "request {i}: {seen:?}");
        assert_eq!(seen.text(), "up");
    }
    let sent = origin.hits_on("/flap/");
    assert!(
        sent as f64 <= (1.0 + BUDGET) * REQUESTS as f64,
        "{sent} origin requests for {REQUESTS} client requests"
    );
    assert_eq!(
        metric(&corral, &sample("corral_origin_retries_total", &origin, "")),
        Some((sent - REQUESTS) as f64)
    );
    // Each answer was stored: asking again costs the origin nothing.
    let again = get(&client, &corral.url("/flap/0")).await;
    assert!(again.cache_status.contains("; hit"), "{again:?}");
    assert_eq!(origin.hits_on("/flap/"), sent);
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retries_of_a_down_origin_add_at_most_the_budget() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always(
        "/down/",
        Reply::ok("down").status(StatusCode::SERVICE_UNAVAILABLE),
    );
    let origin_keys = format!(
        "retries = 3\nretry_budget = 0.2\nretry_backoff = \"1ms\"\n\
         retry_backoff_max = \"2ms\"\n{NO_BREAKER}"
    );
    let corral = Setup::origin(&origin)
        .origin_keys(&origin_keys)
        .toml(CACHE_ALL)
        .start()
        .await;
    let client = support::client();

    const REQUESTS: u64 = 50;
    for i in 0..REQUESTS {
        let seen = get(&client, &corral.url(&format!("/down/{i}"))).await;
        assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE, "{seen:?}");
        assert_eq!(seen.text(), "down", "the origin's own answer is relayed");
    }
    let sent = origin.hits_on("/down/");
    assert!(
        sent as f64 <= 1.2 * REQUESTS as f64,
        "retries multiplied the outage: {sent} origin requests for {REQUESTS}"
    );
    assert!(sent > REQUESTS, "the budget allowed some retries");
    let exhausted = metric(
        &corral,
        &sample("corral_retry_budget_exhausted_total", &origin, ""),
    );
    assert!(exhausted.is_some_and(|n| n > 0.0), "{exhausted:?}");
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn post_is_never_retried_and_get_passes_are() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/cart", |seen| {
        if seen.nth == 1 {
            Behaviour::Reset
        } else {
            Reply::ok("ok").into()
        }
    });
    let origin_keys =
        format!("retries = 2\nretry_budget = 1.0\nretry_backoff = \"1ms\"\n{NO_BREAKER}");
    let routes = "[[route]]\nmatch = \"/cart\"\ncache = false\n";
    let corral = Setup::origin(&origin)
        .origin_keys(&origin_keys)
        .toml(routes)
        .start()
        .await;
    let client = support::client();

    let posted = send(client.post(corral.url("/cart")).body("item=1")).await;
    assert_eq!(posted.status, StatusCode::BAD_GATEWAY, "{posted:?}");
    assert_eq!(origin.hits_on("/cart"), 1, "a POST is never sent twice");

    let origin2 = MockOrigin::start().await.unwrap();
    origin2.on("/cart", |seen| {
        if seen.nth == 1 {
            Behaviour::Reset
        } else {
            Reply::ok("ok").into()
        }
    });
    let corral2 = Setup::origin(&origin2)
        .origin_keys(&origin_keys)
        .toml(routes)
        .start()
        .await;
    let got = get(&client, &corral2.url("/cart")).await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert_eq!(
        origin2.hits_on("/cart"),
        2,
        "a GET pass is retried after a reset"
    );
    corral.shutdown().await;
    corral2.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn hard_down_origin_opens_the_breaker_and_one_probe_closes_it() {
    let origin = MockOrigin::start().await.unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let probe_gate = Gate::new();
    {
        let down = Arc::clone(&down);
        let probe_gate = probe_gate.clone();
        origin.on("/", move |seen| {
            if down.load(Ordering::SeqCst) {
                Behaviour::Reset
            } else if seen.path.starts_with("/probe") {
                Behaviour::gated(&probe_gate, Reply::ok("probe ok"))
            } else {
                Reply::ok(format!("fresh {}", seen.path)).into()
            }
        });
    }
    const OPEN_FOR: Duration = Duration::from_secs(5);
    // Opens at 6 outcomes in the window, 60% of them failures: with the two
    // successes below, at the 4th failure. Long origin timeouts: every failure
    // is a reset (502), never a timeout waited out.
    let origin_keys = "retries = 0\nbreaker_min_requests = 6\nbreaker_failure_rate = 0.6\n\
        breaker_window = \"5m\"\nbreaker_open_for = \"5s\"\n\
        timeout = \"30s\"\nfirst_byte_timeout = \"30s\"\nrequest_timeout = \"60s\"\n";
    let routes = "[[route]]\nmatch = \"/\"\nttl = \"1s\"\n";
    let corral = Setup::origin(&origin)
        .origin_keys(origin_keys)
        .toml(routes)
        .start()
        .await;
    let client = support::client();
    let state = sample("corral_circuit_state", &origin, "");
    assert_eq!(metric(&corral, &state), Some(0.0));

    // Two keys are cached, then go stale.
    for path in ["/cached/1", "/cached/2"] {
        let seen = get(&client, &corral.url(path)).await;
        assert_eq!(seen.status, StatusCode::OK);
    }
    tokio::time::advance(Duration::from_secs(2)).await;

    // The origin goes down hard: four failures open the breaker.
    down.store(true, Ordering::SeqCst);
    for i in 0..4 {
        assert_eq!(
            metric(&corral, &state),
            Some(0.0),
            "closed before failure {i}"
        );
        let seen = get(&client, &corral.url(&format!("/uncached/{i}"))).await;
        assert_eq!(seen.status, StatusCode::BAD_GATEWAY, "{seen:?}");
    }
    assert_eq!(origin.hits(), 6);
    assert_eq!(metric(&corral, &state), Some(1.0), "open");

    // While open: stale entries are served, everything else is a fast 503,
    // and the origin sees nothing.
    for path in ["/cached/1", "/cached/2"] {
        let seen = get(&client, &corral.url(path)).await;
        assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
        assert_eq!(seen.text(), format!("fresh {path}"));
        assert!(
            seen.cache_status.contains("detail=stale-circuit-open"),
            "{seen:?}"
        );
    }
    let burst: Vec<_> = (0..20)
        .map(|i| spawn_get(&client, &corral.url(&format!("/uncached/burst/{i}"))))
        .collect();
    for handle in burst {
        let seen = handle.await.unwrap();
        assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE, "{seen:?}");
        assert!(seen.cache_status.contains("circuit_open"), "{seen:?}");
        let retry_after: u64 = seen.retry_after().unwrap().parse().unwrap();
        assert!((1..=5).contains(&retry_after), "{seen:?}");
    }
    assert_eq!(origin.hits(), 6, "no request reaches the origin while open");

    // The origin comes back, but the breaker keeps it out until open_for is up.
    down.store(false, Ordering::SeqCst);
    let seen = get(&client, &corral.url("/uncached/early")).await;
    assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(origin.hits(), 6);
    tokio::time::advance(OPEN_FOR).await;

    // Half-open: exactly one probe goes through; others are still turned away.
    let probe = spawn_get(&client, &corral.url("/probe/1"));
    origin.wait_for_hits(7).await;
    assert_eq!(metric(&corral, &state), Some(2.0), "half-open");
    let turned_away = get(&client, &corral.url("/uncached/during-probe")).await;
    assert_eq!(turned_away.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(turned_away.retry_after().is_some());
    assert_eq!(origin.hits(), 7, "only the probe reached the origin");

    // The probe succeeds: the breaker closes and traffic flows.
    probe_gate.open();
    let probe = probe.await.unwrap();
    assert_eq!(probe.status, StatusCode::OK, "{probe:?}");
    assert_eq!(metric(&corral, &state), Some(0.0), "closed");
    let seen = get(&client, &corral.url("/uncached/after")).await;
    assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
    let seen = get(&client, &corral.url("/cached/1")).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert!(
        seen.cache_status.contains("fwd=miss"),
        "refetched: {seen:?}"
    );
    assert_eq!(origin.hits(), 9);
    assert_eq!(
        corral.proxy.flights_in_flight(),
        0,
        "no flight slot left behind"
    );
    let circuit_open = sample("corral_shed_total", &origin, ",reason=\"circuit_open\"");
    assert_eq!(metric(&corral, &circuit_open), Some(24.0));
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_queues_then_sheds_and_the_origin_never_sees_more() {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always("/cold/", Behaviour::gated(&gate, Reply::ok("cold")));
    const CLIENTS: usize = 2_000;
    const MAX_CONCURRENT: usize = 32;
    const QUEUE: usize = 64;
    const SHED: usize = CLIENTS - MAX_CONCURRENT - QUEUE;
    let origin_keys = format!(
        "max_concurrent = {MAX_CONCURRENT}\nqueue_depth = {QUEUE}\nqueue_timeout = \"5m\"\n\
         request_timeout = \"10m\"\ntimeout = \"5m\"\nfirst_byte_timeout = \"5m\"\n{NO_BREAKER}"
    );
    let routes = "[[route]]\nmatch = \"/\"\nttl = \"60s\"\nlock_timeout = \"10m\"\n";
    let corral = Setup::origin(&origin)
        .origin_keys(&origin_keys)
        .toml(routes)
        .start()
        .await;
    let client = support::client();

    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..CLIENTS {
        let client = client.clone();
        let url = corral.url(&format!("/cold/{i}"));
        let done = done.clone();
        tokio::spawn(async move {
            let _ = done.send(get(&client, &url).await);
        });
    }
    drop(done);

    // With the origin holding every request, only the excess can finish: shed.
    let mut seen = Vec::with_capacity(CLIENTS);
    let shed_all = async {
        while seen.len() < SHED {
            let answer = finished.recv().await.expect("a client task ended early");
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
            assert!(answer.retry_after().is_some(), "{answer:?}");
            assert!(answer.cache_status.contains("queue_full"), "{answer:?}");
            seen.push(answer);
        }
        origin.wait_for_hits(MAX_CONCURRENT as u64).await;
    };
    tokio::time::timeout(WITHIN, shed_all)
        .await
        .expect("the excess was shed while the origin held the rest");
    assert_eq!(origin.hits(), MAX_CONCURRENT as u64);
    let queued = sample("corral_origin_queue_depth", &origin, "");
    assert_eq!(metric(&corral, &queued), Some(QUEUE as f64));

    gate.open();
    while let Some(answer) = finished.recv().await {
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(answer.text(), "cold");
        seen.push(answer);
    }
    assert_eq!(seen.len(), CLIENTS);
    assert!(
        origin.max_in_flight() <= MAX_CONCURRENT,
        "the origin saw {} at once",
        origin.max_in_flight()
    );
    assert_eq!(origin.hits(), (MAX_CONCURRENT + QUEUE) as u64);
    let shed = sample("corral_shed_total", &origin, ",reason=\"queue_full\"");
    assert_eq!(metric(&corral, &shed), Some(SHED as f64));
    assert_eq!(metric(&corral, &queued), Some(0.0));
    let in_flight = sample("corral_origin_in_flight", &origin, "");
    assert_eq!(metric(&corral, &in_flight), Some(0.0));
    let waits = sample("corral_origin_queue_wait_seconds_count", &origin, "");
    assert_eq!(metric(&corral, &waits), Some(QUEUE as f64));
    assert_eq!(corral.proxy.flights_in_flight(), 0);
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_followers_take_no_queue_place() {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always("/hot", Behaviour::gated(&gate, Reply::ok("hot")));
    // One slot and no queue: any second origin-bound request would be shed.
    let origin_keys = format!("max_concurrent = 1\nqueue_depth = 0\n{NO_BREAKER}");
    let corral = Setup::origin(&origin)
        .origin_keys(&origin_keys)
        .toml(CACHE_ALL)
        .start()
        .await;
    let client = support::client();

    const CLIENTS: usize = 50;
    let first = spawn_get(&client, &corral.url("/hot"));
    origin.wait_for_hits(1).await;
    let followers: Vec<_> = (1..CLIENTS)
        .map(|_| spawn_get(&client, &corral.url("/hot")))
        .collect();
    let metrics = corral.proxy.metrics();
    support::wait_until("every follower waits on the leader", WITHIN, || {
        metrics.followers_waiting.get() == (CLIENTS - 1) as i64
    })
    .await;
    gate.open();
    for handle in std::iter::once(first).chain(followers) {
        let seen = handle.await.unwrap();
        assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
    }
    assert_eq!(origin.hits(), 1);
    let shed = sample("corral_shed_total", &origin, ",reason=\"queue_full\"");
    assert_eq!(metric(&corral, &shed), Some(0.0));
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_429_stops_origin_requests_until_it_expires() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/busy/", |seen| {
        if seen.nth == 1 {
            Reply::ok("slow down")
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", "1")
                .into()
        } else {
            Reply::ok("ok").into()
        }
    });
    let corral = Setup::origin(&origin)
        .origin_keys(NO_BREAKER)
        .toml(CACHE_ALL)
        .start()
        .await;
    let client = support::client();

    let throttled = get(&client, &corral.url("/busy/a")).await;
    assert_eq!(
        throttled.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{throttled:?}"
    );
    assert_eq!(throttled.text(), "slow down");
    assert_eq!(origin.hits(), 1, "a 429 is not retried");

    // Until it expires, nothing reaches the origin: not a fill, not a pass.
    let held = get(&client, &corral.url("/busy/b")).await;
    assert_eq!(held.status, StatusCode::SERVICE_UNAVAILABLE, "{held:?}");
    assert_eq!(held.retry_after(), Some("1"));
    assert!(held.cache_status.contains("retry_after"), "{held:?}");
    let posted = send(client.post(corral.url("/busy/c")).body("x")).await;
    assert_eq!(posted.status, StatusCode::SERVICE_UNAVAILABLE, "{posted:?}");
    assert_eq!(origin.hits(), 1);

    tokio::time::advance(Duration::from_secs(1)).await;
    let after = get(&client, &corral.url("/busy/b")).await;
    assert_eq!(after.status, StatusCode::OK, "{after:?}");
    assert_eq!(origin.hits(), 2);
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_retried_503_waits_out_its_retry_after() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/maint", |seen| {
        if seen.nth == 1 {
            Reply::ok("maintenance")
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("retry-after", "1")
                .into()
        } else {
            Reply::ok("back").into()
        }
    });
    let origin_keys =
        format!("retries = 1\nretry_budget = 1.0\nretry_backoff = \"1ms\"\n{NO_BREAKER}");
    let corral = Setup::origin(&origin)
        .origin_keys(&origin_keys)
        .toml(CACHE_ALL)
        .start()
        .await;
    let client = support::client();
    let started = tokio::time::Instant::now();
    let seen = get(&client, &corral.url("/maint")).await;
    assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
    assert_eq!(seen.text(), "back");
    assert_eq!(origin.hits(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the retry was sent before Retry-After expired"
    );
    corral.shutdown().await;
}

/// On a paused clock, so the pause it starts reads exactly 60 s later on
/// (on real time, a second lost between the two requests would make it 59).
#[tokio::test(start_paused = true)]
async fn a_503_retry_after_past_the_deadline_is_relayed_not_waited_for() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always(
        "/maint",
        Reply::ok("maintenance")
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("retry-after", "120"),
    );
    let origin_keys =
        format!("retries = 3\nretry_budget = 1.0\nrequest_timeout = \"30s\"\n{NO_BREAKER}");
    let corral = Setup::origin(&origin)
        .origin_keys(&origin_keys)
        .toml(CACHE_ALL)
        .start()
        .await;
    let client = support::client();
    let seen = get(&client, &corral.url("/maint")).await;
    assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE, "{seen:?}");
    assert_eq!(seen.text(), "maintenance", "the origin's own answer");
    assert_eq!(origin.hits(), 1, "no retry that could not fit the deadline");
    // And the pause is honoured for everyone else (capped by max_retry_after).
    let held = get(&client, &corral.url("/other")).await;
    assert_eq!(held.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(held.retry_after(), Some("60"));
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn route_timeouts_override_the_origin_ones() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/slow/", Behaviour::Hang);
    origin.always("/tight/", Behaviour::Hang);
    let origin_keys = format!(
        "timeout = \"5m\"\nfirst_byte_timeout = \"5m\"\nrequest_timeout = \"10m\"\n{NO_BREAKER}"
    );
    let routes = "[[route]]\nmatch = \"/slow/\"\nfirst_byte_timeout = \"100ms\"\n\
        [[route]]\nmatch = \"/tight/\"\nrequest_timeout = \"100ms\"\n";
    let corral = Setup::origin(&origin)
        .origin_keys(&origin_keys)
        .toml(routes)
        .start()
        .await;
    let client = support::client();

    let slow = get(&client, &corral.url("/slow/1")).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{slow:?}");
    assert!(slow.cache_status.contains("first_byte_timeout"), "{slow:?}");
    let tight = get(&client, &corral.url("/tight/1")).await;
    assert_eq!(tight.status, StatusCode::GATEWAY_TIMEOUT, "{tight:?}");
    assert!(tight.cache_status.contains("deadline"), "{tight:?}");
    assert_eq!(origin.hits(), 2, "timeouts are not retried");
    assert_eq!(corral.proxy.flights_in_flight(), 0);
    corral.shutdown().await;
}

/// Regression (review finding): a client that stops reading a relayed answer
/// must not hold the origin's only concurrency slot, or every cache fill
/// behind it is shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_pass_holds_no_origin_slot() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/big", Reply::ok(vec![b'x'; 32 * 1024 * 1024]));
    origin.always("/api/", Reply::ok("product"));
    let origin_keys = format!("max_concurrent = 1\nqueue_depth = 0\n{NO_BREAKER}");
    let corral = Setup::origin(&origin)
        .origin_keys(&origin_keys)
        .toml(CACHE_ALL)
        .start()
        .await;

    // A pass (Cookie) for 32 MiB that its client never reads.
    let stalled = support::raw_request(corral.addr, "GET", "/big", &["Cookie: session=1"]).await;
    tokio::time::timeout(WITHIN, origin.wait_for_hits(1))
        .await
        .unwrap();

    // The answer's head reaches corral and starts streaming to a client that
    // never reads: from then on the slot must be free.
    let in_flight = sample("corral_origin_in_flight", &origin, "");
    support::wait_until("the relayed answer gives its slot back", WITHIN, || {
        metric(&corral, &in_flight) == Some(0.0)
    })
    .await;

    // With one slot and no queue, a held slot would shed this fill with 503.
    let seen = get(&support::client(), &corral.url("/api/p")).await;
    assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
    assert_eq!(seen.text(), "product");
    drop(stalled);
    corral.shutdown().await;
}

/// Regression (review finding): a pass's 429 concerns its one client; it must
/// not pause cache fills for everyone.
#[tokio::test]
async fn a_pass_429_with_retry_after_does_not_pause_cache_fills() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always(
        "/login",
        Reply::ok("slow down")
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("retry-after", "30"),
    );
    origin.always("/api/", Reply::ok("product"));
    let corral = Setup::origin(&origin)
        .origin_keys(NO_BREAKER)
        .toml(CACHE_ALL)
        .start()
        .await;
    let client = support::client();

    let login = send(client.post(corral.url("/login")).body("user=a")).await;
    assert_eq!(login.status, StatusCode::TOO_MANY_REQUESTS, "{login:?}");
    let seen = get(&client, &corral.url("/api/p")).await;
    assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
    assert_eq!(origin.hits_on("/api/"), 1, "the fill reached the origin");
    corral.shutdown().await;
}

/// Regression (review finding): an upload that takes longer than the
/// first-byte timeout is bounded by the request deadline, not cut with 504.
#[tokio::test(start_paused = true)]
async fn a_slow_upload_is_not_cut_by_the_first_byte_timeout() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/upload", Reply::ok("stored"));
    let origin_keys =
        format!("first_byte_timeout = \"200ms\"\nrequest_timeout = \"30s\"\n{NO_BREAKER}");
    let corral = Setup::origin(&origin)
        .origin_keys(&origin_keys)
        .toml(CACHE_ALL)
        .start()
        .await;

    // The client itself is slow: its second chunk leaves only when released.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first =
        futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"part;"))]);
    let second = futures_util::stream::once(async move {
        let _ = released.await;
        Ok(bytes::Bytes::from_static(b"part;"))
    });
    let upload = support::client()
        .post(corral.url("/upload"))
        .body(reqwest::Body::wrap_stream(first.chain(second)));
    let upload = tokio::spawn(send(upload));
    // Once the upload holds its origin slot, the first-byte timer is armed:
    // move the clock well past it while the body is still incomplete.
    let in_flight = sample("corral_origin_in_flight", &origin, "");
    support::wait_until("the upload is at the origin", WITHIN, || {
        metric(&corral, &in_flight) == Some(1.0)
    })
    .await;
    tokio::time::advance(Duration::from_millis(600)).await;
    release.send(()).unwrap();
    let seen = upload.await.unwrap();
    assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
    assert_eq!(seen.text(), "stored");
    corral.shutdown().await;
}
