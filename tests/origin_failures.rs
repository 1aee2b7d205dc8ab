//! Origin failures through real sockets: every waiting client gets an error,
//! nothing is cached or left behind, and the very next request fetches afresh
//! (DESIGN.md invariant 3); a broken body is never stored or served whole.
mod support;

use support::{Seen, Setup, get};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Every path cached for a minute, followers wait up to the default 10 s.
const ROUTES: &str = "[[route]]\nmatch = \"/\"\nttl = \"60s\"\n";

/// Clients in each failing wave: one leader and its followers.
const WAVE: usize = 5;

/// Bound on every wait-for-condition; generous for a shared machine.
const WITHIN: Duration = Duration::from_secs(30);

/// The healthy answer the origin gives once the scripted failure is over.
const FRESH: &str = "fresh";

/// Sends one leader, waits until its fetch is at the origin (`origin_hits`
/// counts the origin's requests), then sends `WAVE - 1` followers and waits
/// until they all wait on the leader.
async fn start_wave(
    corral: &support::TestProxy,
    origin_hits: &dyn Fn() -> u64,
    client: &reqwest::Client,
    path: &str,
) -> Vec<JoinHandle<Result<Seen, String>>> {
    let url = corral.url(path);
    let mut wave = vec![spawn_try_get(client, &url)];
    support::wait_until("the leader's fetch reaches the origin", WITHIN, || {
        origin_hits() >= 1
    })
    .await;
    let joined = corral.proxy.metrics().flight_followers.get();
    wave.extend((1..WAVE).map(|_| spawn_try_get(client, &url)));
    let metrics = corral.proxy.metrics();
    // Followers that joined: waiting for the head, or already reading a
    // body streamed to them.
    support::wait_until("the followers join the leader's flight", WITHIN, || {
        metrics.flight_followers.get() - joined == (WAVE - 1) as u64
    })
    .await;
    assert_eq!(origin_hits(), 1, "the wave is coalesced into one fetch");
    wave
}

/// [`support::try_get`] on its own task.
fn spawn_try_get(client: &reqwest::Client, url: &str) -> JoinHandle<Result<Seen, String>> {
    let client = client.clone();
    let url = url.to_owned();
    tokio::spawn(async move { support::try_get(&client, &url).await })
}

/// Every answer of a wave whose answers all had a complete head.
async fn answered(wave: Vec<JoinHandle<Result<Seen, String>>>) -> Vec<Seen> {
    let mut all = Vec::with_capacity(wave.len());
    for outcome in join_all_outcomes(wave).await {
        all.push(outcome.expect("every client got a response head"));
    }
    all
}

/// Every client's outcome: its response, or the error that broke it.
async fn join_all_outcomes(
    wave: Vec<JoinHandle<Result<Seen, String>>>,
) -> Vec<Result<Seen, String>> {
    let mut all = Vec::with_capacity(wave.len());
    for client in wave {
        all.push(client.await.expect("client task panicked"));
    }
    all
}

/// After a failed wave: nothing is in flight or cached, the next request makes
/// a fresh origin request and gets the healthy answer, which is then cached.
async fn assert_next_request_refetches(
    corral: &support::TestProxy,
    origin_hits: &dyn Fn() -> u64,
    client: &reqwest::Client,
    path: &str,
    healthy_body: &str,
) {
    assert_eq!(
        corral.proxy.flights_in_flight(),
        0,
        "the failed flight left its slot behind (poisoned key)"
    );
    assert_eq!(corral.proxy.metrics().followers_waiting.get(), 0);
    let url = corral.url(path);
    let next = get(client, &url).await;
    assert_eq!(
        origin_hits(),
        2,
        "the request after a failure must make a fresh origin request"
    );
    assert_eq!(next.status, StatusCode::OK, "{next:?}");
    assert_eq!(next.body.as_deref(), Ok(healthy_body));
    assert!(
        next.cache_status.contains("fwd=miss") && !next.cache_status.contains("collapsed"),
        "the next request leads a new fetch, got {:?}",
        next.cache_status
    );
    let after = get(client, &url).await;
    assert!(
        after.cache_status.contains("; hit"),
        "the healthy answer is cached: {after:?}"
    );
    assert_eq!(after.body.as_deref(), Ok(healthy_body));
    assert_eq!(origin_hits(), 2);
}

/// Scripts `path` to behave as `failure` until the returned switch is set,
/// and to answer [`FRESH`] from then on. Every attempt during the failing wave
/// fails (a retry would too), so the wave's count of origin requests is exact.
fn fail_until_healed(origin: &MockOrigin, path: &str, failure: Behaviour) -> Arc<AtomicBool> {
    let healed = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&healed);
    origin.on(path, move |_| {
        if switch.load(Ordering::SeqCst) {
            Reply::ok(FRESH).into()
        } else {
            failure.clone()
        }
    });
    healed
}

/// After a failed wave: exactly one origin request was made for it.
fn assert_wave_made_one_request(origin_hits: u64) {
    assert_eq!(
        origin_hits, 1,
        "the failed wave must make exactly one origin request (followers stay off the \
         origin; a retry of the failed fetch would also show here)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_500_reaches_every_waiter_and_is_not_cached() {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    let boom = Reply::ok("boom").status(StatusCode::INTERNAL_SERVER_ERROR);
    let healed = fail_until_healed(&origin, "/api/500", Behaviour::gated(&gate, boom));
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();

    let wave = start_wave(&corral, &|| origin.hits(), &client, "/api/500").await;
    gate.open();
    for seen in answered(wave).await {
        assert_eq!(
            seen.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "the origin's 500 is relayed to every waiting client: {seen:?}"
        );
        assert_eq!(seen.body.as_deref(), Ok("boom"));
        assert!(
            !seen.cache_status.contains("stored"),
            "an error must not be stored: {seen:?}"
        );
    }
    assert_wave_made_one_request(origin.hits());
    healed.store(true, Ordering::SeqCst);
    assert_next_request_refetches(&corral, &|| origin.hits(), &client, "/api/500", FRESH).await;
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_reset_fails_every_waiter_with_502_and_next_request_refetches() {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    let healed = fail_until_healed(
        &origin,
        "/api/reset",
        Behaviour::gated(&gate, Behaviour::Reset),
    );
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();

    let wave = start_wave(&corral, &|| origin.hits(), &client, "/api/reset").await;
    gate.open();
    for seen in answered(wave).await {
        assert_eq!(
            seen.status,
            StatusCode::BAD_GATEWAY,
            "a reset origin connection is a 502 for every waiting client: {seen:?}"
        );
    }
    assert_wave_made_one_request(origin.hits());
    healed.store(true, Ordering::SeqCst);
    assert_next_request_refetches(&corral, &|| origin.hits(), &client, "/api/reset", FRESH).await;
    corral.shutdown().await;
}

/// On a paused clock: the 1 s origin timeout runs out once every task waits.
#[tokio::test(start_paused = true)]
async fn origin_hang_past_timeout_fails_every_waiter_with_504_and_next_request_refetches() {
    let origin = MockOrigin::start().await.unwrap();
    let healed = fail_until_healed(&origin, "/api/hang", Behaviour::Hang);
    let corral = Setup::origin(&origin)
        .origin_keys("timeout = \"1s\"")
        .toml(ROUTES)
        .start()
        .await;
    let client = support::client();

    // The followers must join within the 1 s origin timeout, or a late one
    // would lead a second (hanging) fetch: `start_wave` spins until they wait,
    // and a spinning task keeps the paused clock still, so they always do.
    let wave = start_wave(&corral, &|| origin.hits(), &client, "/api/hang").await;
    for seen in answered(wave).await {
        assert_eq!(
            seen.status,
            StatusCode::GATEWAY_TIMEOUT,
            "an origin that hangs past [origin] timeout is a 504 for every waiting client: {seen:?}"
        );
        assert!(seen.cache_status.contains("timeout"), "{seen:?}");
    }
    assert_wave_made_one_request(origin.hits());
    healed.store(true, Ordering::SeqCst);
    assert_next_request_refetches(&corral, &|| origin.hits(), &client, "/api/hang", FRESH).await;
    corral.shutdown().await;
}

/// With `MockOrigin`'s `Truncate` the connection drops before the head leaves
/// the origin (see [`BreakingOrigin`]), so this is a failed request as corral
/// sees it; `body_broken_after_the_head_is_never_stored_or_served_as_complete`
/// covers a body that breaks after the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_is_never_stored_or_served_as_complete() {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    let whole = "x".repeat(1000);
    let truncate = Behaviour::Truncate {
        reply: Reply::ok(whole.clone()),
        sent: 100,
    };
    let healed = fail_until_healed(&origin, "/api/truncated", Behaviour::gated(&gate, truncate));
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();

    let wave = start_wave(&corral, &|| origin.hits(), &client, "/api/truncated").await;
    gate.open();
    // A response that broke before its head was complete is an error too.
    for seen in join_all_outcomes(wave)
        .await
        .into_iter()
        .filter_map(Result::ok)
    {
        let served_as_complete = seen.status == StatusCode::OK && seen.body.is_ok();
        assert!(
            !served_as_complete,
            "a body that broke midway was served as if complete: {seen:?}"
        );
        assert!(
            seen.status == StatusCode::BAD_GATEWAY || seen.body.is_err(),
            "expected a 502 or an aborted body: {seen:?}"
        );
    }
    assert_wave_made_one_request(origin.hits());
    healed.store(true, Ordering::SeqCst);
    assert_next_request_refetches(&corral, &|| origin.hits(), &client, "/api/truncated", FRESH)
        .await;
    corral.shutdown().await;
}

/// A bare-TCP origin whose answers really break midway: a complete head
/// announcing `Content-Length: 1000`, the first 100 body bytes, flushed, then,
/// once the test releases it, a closed connection. After [`heal`] its answers
/// are whole. Counts requests.
///
/// `MockOrigin`'s `Truncate` cannot stand in for it: its head and first bytes
/// are still in hyper's write buffer when the scripted body error comes, so the
/// connection drops before the head is sent and corral sees a failed request
/// (`detail=request_error`), never a body that breaks after the head.
///
/// [`heal`]: BreakingOrigin::heal
struct BreakingOrigin {
    url: String,
    hits: watch::Receiver<u64>,
    release: watch::Sender<bool>,
    healed: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
}

impl Drop for BreakingOrigin {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// The body a whole answer from [`BreakingOrigin`] carries.
const WHOLE: usize = 1000;
/// How much of it a broken answer sends.
const SENT: usize = 100;

impl BreakingOrigin {
    async fn start() -> BreakingOrigin {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (count, hits) = watch::channel(0u64);
        let count = Arc::new(count);
        let (release, released) = watch::channel(false);
        let healed = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let healed = Arc::clone(&healed);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(Self::answer(
                        stream,
                        Arc::clone(&count),
                        released.clone(),
                        Arc::clone(&healed),
                    ));
                }
            })
        };
        BreakingOrigin {
            url,
            hits,
            release,
            healed,
            acceptor,
        }
    }

    async fn answer(
        mut stream: TcpStream,
        count: Arc<watch::Sender<u64>>,
        mut released: watch::Receiver<bool>,
        healed: Arc<AtomicBool>,
    ) {
        // Read the request head (a GET carries no body).
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        count.send_modify(|hits| *hits += 1);
        let broken = !healed.load(Ordering::SeqCst);
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {WHOLE}\r\nconnection: close\r\n\r\n"
        )
        .into_bytes();
        answer.extend(std::iter::repeat_n(b'z', if broken { SENT } else { WHOLE }));
        if stream.write_all(&answer).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        if broken {
            let _ = released.wait_for(|released| *released).await;
        }
        let _ = stream.shutdown().await;
    }

    fn hits(&self) -> u64 {
        *self.hits.borrow()
    }

    /// Lets broken answers end (now and from now on).
    fn release(&self) {
        self.release.send_replace(true);
    }

    /// Makes every later answer whole.
    fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_broken_after_the_head_is_never_stored_or_served_as_complete() {
    let origin = BreakingOrigin::start().await;
    let corral = Setup::url(&origin.url).toml(ROUTES).start().await;
    let client = support::client();

    // The leader has the head and 100 bytes in hand while its followers queue.
    let wave = start_wave(&corral, &|| origin.hits(), &client, "/api/broken").await;
    origin.release();
    // A response that broke before its head was complete is an error too.
    for seen in join_all_outcomes(wave)
        .await
        .into_iter()
        .filter_map(Result::ok)
    {
        let served_as_complete = seen.status == StatusCode::OK && seen.body.is_ok();
        assert!(
            !served_as_complete,
            "a body that broke midway was served as if complete: {seen:?}"
        );
        assert!(
            seen.status == StatusCode::BAD_GATEWAY || seen.body.is_err(),
            "expected a 502 or an aborted body: {seen:?}"
        );
    }
    assert_wave_made_one_request(origin.hits());
    origin.heal();
    let whole = "z".repeat(WHOLE);
    assert_next_request_refetches(&corral, &|| origin.hits(), &client, "/api/broken", &whole).await;
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_body_broken_midway_is_aborted_not_completed() {
    let origin = BreakingOrigin::start().await;
    origin.release();
    let corral = Setup::url(&origin.url)
        .toml("[[route]]\nmatch = \"/api/cart\"\ncache = false\n")
        .start()
        .await;
    let client = support::client();

    let seen = get(&client, &corral.url("/api/cart")).await;
    assert!(
        seen.status == StatusCode::BAD_GATEWAY || seen.body.is_err(),
        "a passed-through body that broke midway must not end as if complete: {seen:?}"
    );
    assert_eq!(origin.hits(), 1);
    origin.heal();
    let next = get(&client, &corral.url("/api/cart")).await;
    assert_eq!(next.status, StatusCode::OK, "{next:?}");
    assert_eq!(next.body.as_deref(), Ok("z".repeat(WHOLE).as_str()));
    assert!(next.cache_status.contains("fwd=bypass"), "{next:?}");
    assert_eq!(origin.hits(), 2);
    corral.shutdown().await;
}
