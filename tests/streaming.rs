//! Followers get bytes as the origin sends them, and large objects are
//! coalesced too: one fetch's body is shared with every waiting client as it
//! arrives; a body that breaks fails every reader; an answer too large to
//! store is still one origin request, within a bounded memory.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply};
use reqwest::StatusCode;
use support::{Setup, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const MIB: usize = 1024 * 1024;

/// Bound on any wait for something the test caused. Generous: two noisy cores.
const WITHIN: Duration = Duration::from_secs(60);

/// `len` bytes whose value at offset `i` is `i % 251`: any misplaced,
/// repeated or missing chunk shows as a mismatch.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Every path cached for a minute, objects up to `max_object` stored, and
/// a `stream_lag_limit` of `lag`.
fn setup(origin_url: &str, max_object: &str, lag: &str) -> Setup {
    Setup::url(origin_url).toml(&format!(
        "[cache]\nmax_size = \"512MiB\"\nmax_object_size = \"{max_object}\"\n\n\
         [[route]]\nmatch = \"/\"\nttl = \"60s\"\nlock_timeout = \"60s\"\nstream_lag_limit = \"{lag}\"\n"
    ))
}

/// What one client saw of a streamed body.
#[derive(Debug)]
struct Read {
    status: StatusCode,
    /// From sending the request to the first body byte.
    first_byte: Option<Duration>,
    /// Bytes that matched the expected body at their offset.
    len: usize,
    /// Whether the body ended cleanly (`false`: it failed).
    clean: bool,
}

/// Reads `response`'s body chunk by chunk, checking each against `expected`
/// at its offset (no copy of the body is kept); calls `progress` with the
/// bytes read so far after each chunk.
async fn read_checked(
    sent: std::time::Instant,
    mut response: reqwest::Response,
    expected: &Bytes,
    progress: &(dyn Fn(usize) + Sync),
) -> Read {
    let status = response.status();
    let mut len = 0;
    let mut first_byte = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                first_byte.get_or_insert_with(|| sent.elapsed());
                let end = len + chunk.len();
                assert!(
                    end <= expected.len() && chunk == expected.slice(len..end),
                    "bytes {len}..{end} differ from the origin's"
                );
                len = end;
                progress(len);
            }
            Ok(None) => {
                return Read {
                    status,
                    first_byte,
                    len,
                    clean: true,
                };
            }
            Err(_) => {
                return Read {
                    status,
                    first_byte,
                    len,
                    clean: false,
                };
            }
        }
    }
}

fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("client builds")
}

/// Spawns `count` GETs of `url` that read their bodies checked against
/// `expected`; `first` counts the clients that have at least `first_bytes`.
fn spawn_readers(
    client: &reqwest::Client,
    url: &str,
    count: usize,
    expected: &Bytes,
    first: &Arc<AtomicUsize>,
    first_bytes: usize,
) -> Vec<tokio::task::JoinHandle<Read>> {
    (0..count)
        .map(|_| {
            let (client, url, expected) = (client.clone(), url.to_owned(), expected.clone());
            let first = Arc::clone(first);
            tokio::spawn(async move {
                let sent = std::time::Instant::now();
                let response = client.get(&url).send().await.expect("a response head");
                let counted = AtomicBool::new(false);
                let progress = |len: usize| {
                    if len >= first_bytes && !counted.swap(true, Ordering::SeqCst) {
                        first.fetch_add(1, Ordering::SeqCst);
                    }
                };
                read_checked(sent, response, &expected, &progress).await
            })
        })
        .collect()
}

async fn join(handles: Vec<tokio::task::JoinHandle<Read>>) -> Vec<Read> {
    let mut all = Vec::with_capacity(handles.len());
    for handle in handles {
        all.push(handle.await.expect("reader task"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_get_the_first_bytes_before_the_origin_sends_the_rest() {
    const CLIENTS: usize = 100;
    const FIRST: usize = 64 * 1024;
    let object = pattern(50 * MIB);
    let origin = MockOrigin::start().await.expect("origin starts");
    let gate = Gate::new();
    origin.always(
        "/big",
        Behaviour::Stall {
            reply: Reply::ok(object.clone()).header("cache-control", "max-age=60"),
            sent: FIRST,
            gate: gate.clone(),
            declare_length: true,
        },
    );
    let corral = setup(&origin.url(), "64MiB", "8MiB").start().await;
    let client = stream_client();
    let url = corral.url("/big");
    let first = Arc::new(AtomicUsize::new(0));

    let mut readers = spawn_readers(&client, &url, 1, &object, &first, FIRST);
    origin.wait_for_hits(1).await;
    readers.extend(spawn_readers(
        &client,
        &url,
        CLIENTS - 1,
        &object,
        &first,
        FIRST,
    ));
    // Every client has the head and the first 64 KiB while the origin
    // still holds the rest.
    support::wait_until("every client has the first 64 KiB", WITHIN, || {
        first.load(Ordering::SeqCst) == CLIENTS
    })
    .await;
    assert_eq!(origin.hits(), 1);
    gate.open();
    let reads = join(readers).await;
    for read in &reads {
        assert_eq!(read.status, StatusCode::OK);
        assert!(read.clean && read.len == object.len(), "{read:?}");
    }
    // A figure, not an assertion: followers' time to first byte, beside the
    // leader's (the origin's own first byte plus one hop).
    let mut followers: Vec<Duration> = reads[1..].iter().filter_map(|r| r.first_byte).collect();
    followers.sort();
    eprintln!(
        "time to first byte: leader {:?}; followers p50 {:?}, p99 {:?}, max {:?}",
        reads[0].first_byte,
        followers[followers.len() / 2],
        followers[followers.len() * 99 / 100],
        followers[followers.len() - 1]
    );
    assert_eq!(origin.hits(), 1, "one origin request for all 100");
    let hit = support::get(&client, &url).await;
    assert!(hit.cache_status.contains("; hit"), "stored: {hit:?}");
    corral.shutdown().await;
}

/// How a [`BreakingOrigin`] frames the body it breaks.
#[derive(Clone, Copy, Debug)]
enum Framing {
    ContentLength,
    Chunked,
}

/// A bare-TCP origin that answers every request with a head and `broken_at`
/// body bytes, then closes the connection short of the body's end (short of
/// its `Content-Length`, or without the last chunk); once healed it answers
/// `healed` whole. Counts requests.
struct BreakingOrigin {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    healed: Arc<AtomicBool>,
    arrived: Arc<Notify>,
}

impl BreakingOrigin {
    async fn start(
        framing: Framing,
        broken_at: usize,
        healed_body: &'static str,
    ) -> BreakingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let healed = Arc::new(AtomicBool::new(false));
        let arrived = Arc::new(Notify::new());
        let (h, he, a) = (Arc::clone(&hits), Arc::clone(&healed), Arc::clone(&arrived));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (hits, healed, arrived) = (Arc::clone(&h), Arc::clone(&he), Arc::clone(&a));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    arrived.notify_waiters();
                    if healed.load(Ordering::SeqCst) {
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncache-control: max-age=60\r\nconnection: close\r\n\r\n{healed_body}",
                            healed_body.len()
                        );
                        let _ = socket.write_all(reply.as_bytes()).await;
                        return;
                    }
                    let body = pattern(broken_at);
                    let framing_line = match framing {
                        Framing::ContentLength => format!("content-length: {}\r\n", broken_at * 2),
                        Framing::Chunked => "transfer-encoding: chunked\r\n".to_owned(),
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n{framing_line}\r\n"
                    );
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for piece in body.chunks(64 * 1024) {
                        let written = match framing {
                            Framing::ContentLength => socket.write_all(piece).await,
                            Framing::Chunked => {
                                let size = format!("{:x}\r\n", piece.len());
                                let mut framed = size.into_bytes();
                                framed.extend_from_slice(piece);
                                framed.extend_from_slice(b"\r\n");
                                socket.write_all(&framed).await
                            }
                        };
                        if written.is_err() {
                            return;
                        }
                    }
                    // Broken: closed short of the length / without the last chunk.
                    let _ = socket.shutdown().await;
                });
            }
        });
        BreakingOrigin {
            addr,
            hits,
            healed,
            arrived,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn broken_body_fails_every_reader(framing: Framing, h2: bool) {
    const CLIENTS: usize = 20;
    const BROKEN_AT: usize = 10 * MIB;
    let origin = BreakingOrigin::start(framing, BROKEN_AT, "whole again").await;
    let corral: TestProxy = setup(&origin.url(), "64MiB", "8MiB")
        .origin_keys("retries = 0")
        .start()
        .await;
    let client = if h2 {
        support::h2_client()
    } else {
        stream_client()
    };
    let url = corral.url("/broken");
    let expected = pattern(BROKEN_AT * 2);
    let arrived = origin.arrived.notified();
    let mut readers = Vec::new();
    let first = Arc::new(AtomicUsize::new(0));
    let spawn = |count| {
        (0..count)
            .map(|_| {
                let (client, url, expected) = (client.clone(), url.clone(), expected.clone());
                tokio::spawn(async move {
                    let sent = std::time::Instant::now();
                    match client.get(&url).send().await {
                        Ok(response) => {
                            Some(read_checked(sent, response, &expected, &|_| {}).await)
                        }
                        // Broken before the head reached this client: an error too.
                        Err(_) => None,
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    readers.extend(spawn(1));
    arrived.await;
    readers.extend(spawn(CLIENTS - 1));
    let _ = &first;
    for reader in readers {
        if let Some(read) = reader.await.expect("reader task") {
            assert!(
                !read.clean,
                "{framing:?} h2={h2}: a broken body ended as if complete: {read:?}"
            );
        }
    }
    assert_eq!(origin.hits(), 1, "{framing:?} h2={h2}: one origin request");
    assert_eq!(corral.proxy.cache().entry_count(), 0, "nothing stored");
    origin.healed.store(true, Ordering::SeqCst);
    let next = support::get(&stream_client(), &url).await;
    assert_eq!(next.body.as_deref(), Ok("whole again"), "{next:?}");
    assert_eq!(origin.hits(), 2, "the next request fetches afresh");
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_broken_at_10_mib_fails_every_reader_and_is_never_stored() {
    for framing in [Framing::ContentLength, Framing::Chunked] {
        for h2 in [false, true] {
            broken_body_fails_every_reader(framing, h2).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_never_reads_holds_up_neither_the_others_nor_the_store() {
    const CLIENTS: usize = 100;
    let object = pattern(4 * MIB);
    let origin = MockOrigin::start().await.expect("origin starts");
    let gate = Gate::new();
    origin.always(
        "/object",
        Behaviour::gated(
            &gate,
            Reply::ok(object.clone()).header("cache-control", "max-age=60"),
        ),
    );
    let corral = setup(&origin.url(), "64MiB", "8MiB").start().await;
    let client = stream_client();
    let url = corral.url("/object");
    let first = Arc::new(AtomicUsize::new(0));

    // The one that never reads: it takes the head and stops there.
    let stalled = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(&url).send().await.expect("a response head") }
    });
    origin.wait_for_hits(1).await;
    let readers = spawn_readers(&client, &url, CLIENTS - 1, &object, &first, 1);
    let joined = corral.proxy.metrics().flight_followers.clone();
    support::wait_until("every reader joins the flight", WITHIN, || {
        joined.get() >= (CLIENTS - 1) as u64
    })
    .await;
    gate.open();
    for read in join(readers).await {
        assert!(read.clean && read.len == object.len(), "{read:?}");
    }
    let cache = corral.proxy.cache().clone();
    support::wait_until("the fill is stored", WITHIN, || cache.entry_count() == 1).await;
    let hit = support::get(&client, &url).await;
    assert!(hit.cache_status.contains("; hit"), "{hit:?}");
    assert_eq!(origin.hits(), 1);
    drop(stalled);
    corral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_large_to_store_streams_within_the_lag_limit() {
    // Readers that keep up: their pace differs with scheduling on a busy
    // machine (and each connection's socket buffers hold megabytes), so the
    // lag limit leaves them room; the stalled one falls far behind it.
    const READERS: usize = 2;
    const LAG: usize = 16 * MIB;
    let object = pattern(200 * MIB);
    let origin = MockOrigin::start().await.expect("origin starts");
    let gate = Gate::new();
    origin.always("/huge", Behaviour::gated(&gate, Reply::ok(object.clone())));
    let corral = setup(&origin.url(), "8MiB", "16MiB").start().await;
    let client = stream_client();
    let url = corral.url("/huge");
    let metrics = corral.proxy.metrics();

    // The stalled reader leads; it reads 1 MiB, then stops until released.
    let release = Arc::new(Notify::new());
    let stalled = tokio::spawn({
        let (client, url, expected, release) = (
            client.clone(),
            url.clone(),
            object.clone(),
            Arc::clone(&release),
        );
        async move {
            let mut response = client.get(&url).send().await.expect("a response head");
            let mut len = 0;
            while len < MIB {
                let chunk = response
                    .chunk()
                    .await
                    .expect("a chunk")
                    .expect("not the end");
                assert!(chunk == expected.slice(len..len + chunk.len()));
                len += chunk.len();
            }
            release.notified().await;
            // Cut loose meanwhile: the body fails before its end.
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => len += chunk.len(),
                    Ok(None) => {
                        break Read {
                            status: StatusCode::OK,
                            first_byte: None,
                            len,
                            clean: true,
                        };
                    }
                    Err(_) => {
                        break Read {
                            status: StatusCode::OK,
                            first_byte: None,
                            len,
                            clean: false,
                        };
                    }
                }
            }
        }
    });
    origin.wait_for_hits(1).await;
    let first = Arc::new(AtomicUsize::new(0));
    let readers = spawn_readers(&client, &url, READERS, &object, &first, 1);
    let joined = metrics.flight_followers.clone();
    support::wait_until("the readers join the flight", WITHIN, || {
        joined.get() >= READERS as u64
    })
    .await;
    // The most the shared body ever holds, watched while it streams.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = tokio::spawn({
        let (retained, done, peak) = (
            metrics.stream_retained_bytes.clone(),
            Arc::clone(&done),
            Arc::clone(&peak),
        );
        async move {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(u64::try_from(retained.get()).unwrap_or(0), Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }
    });
    gate.open();
    for read in join(readers).await {
        assert!(read.clean && read.len == object.len(), "{read:?}");
    }
    done.store(true, Ordering::SeqCst);
    watcher.await.expect("watcher");
    assert!(
        metrics.stream_readers_cut.get() >= 1,
        "the stalled reader was cut loose"
    );
    release.notify_one();
    let stalled = stalled.await.expect("stalled reader");
    assert!(
        !stalled.clean,
        "a cut-loose reader's body fails: {stalled:?}"
    );
    let peak = peak.load(Ordering::SeqCst) as usize;
    // Figures, not assertions: the shared body's peak, and the process's
    // peak RSS (which includes the test's own two copies of the object).
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(str::to_owned)
        });
    eprintln!("peak retained by the shared body: {peak} bytes; process {hwm:?}");
    // Within the lag limit plus one chunk (a read buffer, well under 1 MiB).
    assert!(peak <= LAG + MIB, "peak retained {peak} bytes");
    assert_eq!(origin.hits(), 1, "one origin request");
    assert_eq!(
        metrics.stream_retained_bytes.get(),
        0,
        "released at the end"
    );
    corral.shutdown().await;
}
