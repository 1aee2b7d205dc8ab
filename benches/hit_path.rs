//! In-process benchmarks of corral's hot paths; no sockets are touched while
//! measuring (the `MockOrigin` is contacted once, to warm the key).
//!
//! - `hit_path/handle_collect`: `Proxy::handle` on a warm key plus collecting
//!   the 1 KiB body, i.e. everything a cache hit costs above hyper.
//! - `hit_path/quick_hit`: the listener's quick path for the same hit, from
//!   the request's bytes: `PlainHead::read`, its `Parts`, and
//!   `Proxy::answer_hit_at_once` up to the encoded answer (the head hyper
//!   would write, and the body), i.e. everything a quick hit costs above the
//!   socket; `handle_collect` leaves out hyper's parse and encode.
//! - `hit_path/cache_key_select`: `CacheKey::new` + `HotCache::select` alone, the floor the
//!   full hit is compared against.
//! - `hit_path_parts/*`: pieces of a hit's response rendering, timed alone
//!   (the stored headers into the answer's `HeaderMap`, building the `Cache-Status` value, the
//!   `Age` value).
//! - Before timing, the allocations one hit makes are counted (a counting
//!   global allocator, switched on only for that) and printed to stderr.
//! - `flight_map/join_complete/N`: one leader and N followers join a key, the
//!   leader completes, every follower takes the published value.
//! - `flight_map/parked_wake/N`: the same, but the N followers are spawned tasks
//!   already parked in `Follower::wait` when the leader completes.
//!
//! Run: `CARGO_TARGET_DIR=target-bench cargo bench --bench hit_path`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use corral::Corral;
use corral::cache::CacheKey;
use corral::coalesce::{FlightMap, Follower, Join};
use corral::config::Config;
use corral::http::wire::{Head, PlainHead};
use corral::proxy::Proxy;
use corral::proxy::{CacheOutcome, cache_status_value};
use corral::testing::mock_origin::{MockOrigin, Reply};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Empty};
use tokio::runtime::Runtime;
use tokio::time::Instant;

const HOST: &str = "corral.test";
const PATH: &str = "/obj/hot";
const BODY_LEN: usize = 1024;

/// The system allocator, counting allocations while `COUNTING` is set.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

fn count(size: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; counting has no
// effect on the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Allocations (and bytes) per call of `work`, averaged over `rounds` calls.
fn allocations_per_call(rounds: u64, mut work: impl FnMut()) -> (f64, f64) {
    ALLOCATIONS.store(0, Ordering::Relaxed);
    ALLOCATED_BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for _ in 0..rounds {
        work();
    }
    COUNTING.store(false, Ordering::Relaxed);
    let per = |total: &AtomicU64| total.load(Ordering::Relaxed) as f64 / rounds as f64;
    (per(&ALLOCATIONS), per(&ALLOCATED_BYTES))
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn request() -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(PATH)
        .header(header::HOST, HOST)
        .body(Empty::new())
        .expect("valid request")
}

fn client() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000))
}

/// A proxy in front of a mock origin answering 1 KiB, with `PATH` already cached.
/// The origin is returned so it stays alive (and bound) for the whole run.
fn warm_proxy(rt: &Runtime) -> (Proxy, MockOrigin) {
    rt.block_on(async {
        let origin = MockOrigin::start().await.expect("mock origin");
        origin.always("/", Reply::ok(Bytes::from(vec![b'x'; BODY_LEN])));
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let config =
            Config::for_origin(&origin.url(), any, any, Duration::from_secs(3600)).expect("config");
        let corral = Corral::new(&config).expect("corral");
        let proxy = corral.proxy().clone();
        let warm = proxy.handle(request(), client()).await;
        let body = warm.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body.len(), BODY_LEN);
        let hit = proxy.handle(request(), client()).await;
        let status = hit
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(status.contains("; hit"), "key not warm: {status}");
        assert_eq!(origin.hits(), 1);
        (proxy, origin)
    })
}

fn hit_path(c: &mut Criterion) {
    let rt = runtime();
    let (proxy, origin) = warm_proxy(&rt);

    const ROUNDS: u64 = 1_000;
    let mut requests: Vec<_> = (0..ROUNDS).map(|_| request()).collect();
    let (allocs, bytes) = allocations_per_call(ROUNDS, || {
        let request = requests.pop().expect("one request per round");
        rt.block_on(async {
            let response = proxy.handle(request, client()).await;
            let body = response.into_body().collect().await.expect("body");
            black_box(body.to_bytes());
        });
    });
    eprintln!(
        "hit_path: handle + collect allocates {allocs:.1} times ({bytes:.0} bytes) per hit, request construction excluded"
    );
    eprintln!(
        "hit_path: the Proxy::handle future is {} bytes",
        std::mem::size_of_val(&proxy.handle(request(), client()))
    );
    // The hit path's request carries no Vary-selecting headers; its key holds
    // the origin's authority (the route does not preserve Host).
    let no_headers = http::HeaderMap::new();
    let authority = origin.addr().to_string();
    let (allocs, bytes) = allocations_per_call(ROUNDS, || {
        black_box(
            proxy
                .cache()
                .select(&CacheKey::new(&authority, PATH), &no_headers),
        );
    });
    eprintln!(
        "hit_path: CacheKey::new + HotCache::select allocates {allocs:.1} times ({bytes:.0} bytes)"
    );

    let raw = Bytes::from(format!("GET {PATH} HTTP/1.1\r\nHost: {HOST}\r\n\r\n"));
    let quick_hit = || {
        let Head::Plain(head) = PlainHead::read(&raw) else {
            panic!("a plain head");
        };
        let parts = head.parts(&raw.slice(..head.len)).expect("valid parts");
        proxy
            .answer_hit_at_once(&parts, client())
            .expect("a quick hit")
    };
    assert_eq!(quick_hit().body.len(), BODY_LEN);
    let (allocs, bytes) = allocations_per_call(ROUNDS, || {
        black_box(quick_hit());
    });
    eprintln!("hit_path: a quick hit allocates {allocs:.1} times ({bytes:.0} bytes) per hit");

    let mut group = c.benchmark_group("hit_path");
    group.throughput(Throughput::Elements(1));

    group.bench_function("quick_hit", |b| b.iter(|| black_box(quick_hit())));

    group.bench_function("handle_collect", |b| {
        b.to_async(&rt).iter_batched(
            request,
            |request| {
                let proxy = &proxy;
                async move {
                    let response = proxy.handle(request, client()).await;
                    let body = response.into_body().collect().await.expect("body");
                    black_box(body.to_bytes())
                }
            },
            BatchSize::SmallInput,
        );
    });

    group.bench_function("handle_collect_incl_request_build", |b| {
        b.to_async(&rt).iter(|| async {
            let response = proxy.handle(request(), client()).await;
            let body = response.into_body().collect().await.expect("body");
            black_box(body.to_bytes())
        });
    });

    let cache = proxy.cache().clone();
    // The lookup the hit path makes: the key, then the variant this request selects.
    group.bench_function("cache_key_select", |b| {
        b.iter(|| {
            let key = CacheKey::new(black_box(&authority), black_box(PATH));
            black_box(cache.select(&key, &no_headers))
        });
    });
    group.finish();

    // The pieces `respond_from_entry` builds for every hit, timed alone.
    let entry = cache
        .select(&CacheKey::new(&authority, PATH), &no_headers)
        .expect("warm entry");
    let mut parts = c.benchmark_group("hit_path_parts");
    parts.throughput(Throughput::Elements(1));
    parts.bench_function("stored_headers_to_answer_map", |b| {
        b.iter(|| black_box(entry.headers.to_map_with_room(3)));
    });
    parts.bench_function("cache_status_value_hit", |b| {
        b.iter(|| {
            black_box(cache_status_value(
                CacheOutcome::Hit,
                None,
                false,
                Some(black_box(3599)),
                None,
            ))
        });
    });
    parts.bench_function("age_header_value", |b| {
        b.iter(|| black_box(HeaderValue::from(black_box(7u64))));
    });
    parts.finish();
    for (name, (allocs, bytes)) in [
        (
            "stored headers into the answer's HeaderMap",
            allocations_per_call(ROUNDS, || {
                black_box(entry.headers.to_map_with_room(3));
            }),
        ),
        (
            "cache_status_value(Hit)",
            allocations_per_call(ROUNDS, || {
                black_box(cache_status_value(
                    CacheOutcome::Hit,
                    None,
                    false,
                    Some(3599),
                    None,
                ));
            }),
        ),
        (
            "HeaderValue::from(age)",
            allocations_per_call(ROUNDS, || {
                black_box(HeaderValue::from(black_box(7u64)));
            }),
        ),
    ] {
        eprintln!("hit_path_parts: {name} allocates {allocs:.1} times ({bytes:.0} bytes)");
    }
    eprintln!(
        "hit_path: the stored entry carries {} headers: {:?}",
        entry.headers.len(),
        entry
            .headers
            .iter()
            .map(|(name, _)| name)
            .collect::<Vec<_>>()
    );
    // Every iteration above must have been a hit.
    assert_eq!(origin.hits(), 1, "a benchmark iteration reached the origin");
}

type Value = Arc<Bytes>;

/// One flight: a leader, `followers` followers, completion, every follower
/// served. Returns the number of bytes the followers received.
fn flight_round(
    map: &FlightMap<String, Value>,
    value: &Value,
    followers: &mut Vec<Follower<Value>>,
    n: usize,
) -> usize {
    let Join::Leader(leader) = map.join(String::from(PATH)) else {
        panic!("the previous flight left its slot behind");
    };
    for _ in 0..n {
        match map.join(String::from(PATH)) {
            Join::Follower(follower) => followers.push(follower),
            Join::Leader(_) => panic!("a second leader was elected"),
        }
    }
    leader.publish(Arc::clone(value));
    leader.finish();
    let now = Instant::now();
    followers
        .drain(..)
        .map(|follower| match follower.wait(now).now_or_never() {
            Some(Ok(value)) => value.len(),
            other => panic!("follower was not served at once: {other:?}"),
        })
        .sum()
}

fn flight_map(c: &mut Criterion) {
    let value: Value = Arc::new(Bytes::from(vec![b'x'; BODY_LEN]));
    let mut group = c.benchmark_group("flight_map");
    for n in [1usize, 100, 10_000] {
        group.throughput(Throughput::Elements(n as u64 + 1));
        group.bench_function(format!("join_complete/{n}"), |b| {
            let map = FlightMap::new();
            let mut followers = Vec::with_capacity(n);
            b.iter(|| black_box(flight_round(&map, &value, &mut followers, n)));
            assert_eq!(map.in_flight(), 0);
        });
    }

    let rt = runtime();
    for n in [1usize, 100, 10_000] {
        group.throughput(Throughput::Elements(n as u64 + 1));
        group.bench_function(format!("parked_wake/{n}"), |b| {
            let map: FlightMap<String, Value> = FlightMap::new();
            b.to_async(&rt).iter(|| async {
                let Join::Leader(leader) = map.join(String::from(PATH)) else {
                    panic!("the previous flight left its slot behind");
                };
                let far = Instant::now() + Duration::from_secs(3600);
                let waiting: Vec<_> = (0..n)
                    .map(|_| match map.join(String::from(PATH)) {
                        Join::Follower(follower) => tokio::spawn(follower.wait(far)),
                        Join::Leader(_) => panic!("a second leader was elected"),
                    })
                    .collect();
                // Current-thread runtime: this lets every follower task run once
                // and park on the channel before the leader publishes.
                tokio::task::yield_now().await;
                leader.publish(Arc::clone(&value));
                leader.finish();
                let mut received = 0;
                for task in waiting {
                    received += task.await.expect("task").expect("value").len();
                }
                black_box(received)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, hit_path, flight_map);
criterion_main!(benches);
