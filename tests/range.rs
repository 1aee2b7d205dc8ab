//! Range requests answered from the cache (RFC 9110 §14): a fill never
//! forwards `Range`, so range requests on a cold key share the one full fill
//! and each gets its own slice of the complete entry; hits, `If-Range`,
//! unsatisfiable and multiple ranges, HEAD, and conditionals before ranges.
mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply};
use reqwest::StatusCode;
use support::Setup;
use tokio::sync::Barrier;

/// Every path cached (for the default minute).
const ROUTES: &str = "[[route]]\nmatch = \"/\"\n";

/// How long a wait-for-condition loop may take before the test fails.
/// Generous: other builds may share the machine.
const WITHIN: Duration = Duration::from_secs(30);

/// The size of the cold object: 1 MiB.
const OBJECT_LEN: usize = 1 << 20;

/// `len` deterministic pseudo-random bytes (xorshift64*), so a slice from
/// the wrong offset cannot pass for the right one.
fn object(len: usize) -> Bytes {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    bytes.truncate(len);
    Bytes::from(bytes)
}

/// What one client saw, with the body as bytes.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request of `method` for `url` with extra `headers`.
async fn fetch(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, String)],
) -> Got {
    let mut request = client
        .request(method, url)
        .timeout(support::REQUEST_TIMEOUT);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let response = request.send().await.expect("request reaches corral");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body arrives whole");
    Got {
        status,
        headers,
        body,
    }
}

/// A GET for `url` with extra `headers`.
async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Got {
    let owned: Vec<(&str, String)> = headers
        .iter()
        .map(|(name, value)| (*name, (*value).to_owned()))
        .collect();
    fetch(client, reqwest::Method::GET, url, &owned).await
}

/// A 200 of `body`, validated by a strong `ETag: "v1"` and a `Last-Modified`
/// well before its `Date`, fresh for a minute.
fn reply(body: Bytes) -> Reply {
    Reply::ok(body)
        .header("cache-control", "max-age=60")
        .header("content-type", "application/octet-stream")
        .header("etag", "\"v1\"")
        .header("last-modified", "Sat, 05 Nov 1994 08:49:37 GMT")
}

/// An origin serving `body` (as [`reply`]) at `/object`, and corral before it.
async fn serving(body: Bytes) -> (MockOrigin, support::TestProxy) {
    let origin = MockOrigin::start().await.expect("origin starts");
    origin.always("/object", reply(body));
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    (origin, corral)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_range_requests_for_a_cold_object_make_one_origin_request() {
    const CLIENTS: usize = 100;
    let body = object(OBJECT_LEN);
    let len = OBJECT_LEN as u64;
    let origin = MockOrigin::start().await.expect("origin starts");
    let gate = Gate::new();
    let ranges_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let script = Behaviour::gated(&gate, reply(body.clone()));
        let ranges_seen = Arc::clone(&ranges_seen);
        origin.on("/object", move |seen| {
            if let Ok(mut ranges) = ranges_seen.lock() {
                ranges.extend(seen.headers.get("range").cloned());
            }
            script.clone()
        });
    }
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let client = support::client();
    let url = corral.url("/object");
    let metrics = corral.proxy.metrics();

    // Each client asks a different range: `a-b`, `a-` or `-n`, spread over
    // the object, with (first, last) the bytes it must get.
    let asks: Vec<(String, u64, u64)> = (0..CLIENTS as u64)
        .map(|at| {
            let spot = at * 10_007 % len;
            match at % 3 {
                0 => {
                    let last = (spot + 1_000 + at * 37).min(len - 1);
                    (format!("bytes={spot}-{last}"), spot, last)
                }
                1 => {
                    let first = len - 1 - at * 4_099;
                    (format!("bytes={first}-"), first, len - 1)
                }
                _ => {
                    let suffix = 1 + at * 5_003;
                    (format!("bytes=-{suffix}"), len - suffix, len - 1)
                }
            }
        })
        .collect();
    let distinct: std::collections::HashSet<&String> = asks.iter().map(|ask| &ask.0).collect();
    assert_eq!(distinct.len(), CLIENTS, "every client asks its own range");

    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let handles: Vec<_> = asks
        .iter()
        .map(|(range, _, _)| {
            let barrier = Arc::clone(&barrier);
            let client = client.clone();
            let url = url.clone();
            let range = range.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                fetch(&client, reqwest::Method::GET, &url, &[("range", range)]).await
            })
        })
        .collect();
    barrier.wait().await;
    support::wait_until(
        "the leader is at the origin and the other 99 wait as followers",
        WITHIN,
        || origin.hits() >= 1 && metrics.followers_waiting.get() >= (CLIENTS - 1) as i64,
    )
    .await;
    assert_eq!(origin.hits(), 1, "one origin request while all wait");
    gate.open();

    let mut leaders = 0;
    for (handle, (range, first, last)) in handles.into_iter().zip(&asks) {
        let got = handle.await.expect("client task panicked");
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{range}: {got:?}");
        assert_eq!(
            got.header("content-range"),
            Some(format!("bytes {first}-{last}/{len}").as_str()),
            "{range}"
        );
        let expected = body.slice(*first as usize..=*last as usize);
        assert_eq!(
            got.header("content-length"),
            Some(expected.len().to_string().as_str()),
            "{range}"
        );
        assert!(got.body == expected, "{range}: wrong bytes");
        assert_eq!(got.header("accept-ranges"), Some("bytes"));
        let cache_status = got.header("cache-status").unwrap_or("");
        assert!(cache_status.contains("fwd=miss"), "{range}: {cache_status}");
        if !cache_status.contains("collapsed") {
            leaders += 1;
        }
    }
    assert_eq!(
        leaders, 1,
        "one client led the fill, the others followed it"
    );
    assert_eq!(origin.hits(), 1, "exactly one origin request");
    assert_eq!(
        ranges_seen.lock().map(|ranges| ranges.len()).unwrap_or(1),
        0,
        "the fill never forwards Range"
    );

    let hit = get(&client, &url, &[("range", "bytes=100-199")]).await;
    assert_eq!(hit.status, StatusCode::PARTIAL_CONTENT);
    assert!(hit.body == body.slice(100..200));
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn a_hit_with_a_range_is_a_206_of_the_stored_bytes() {
    let body = object(4096);
    let (origin, corral) = serving(body.clone()).await;
    let client = support::client();
    let url = corral.url("/object");

    let whole = get(&client, &url, &[]).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert!(whole.body == body);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));

    let part = get(&client, &url, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.header("content-range"), Some("bytes 1000-1999/4096"));
    assert_eq!(part.header("content-length"), Some("1000"));
    assert_eq!(part.header("accept-ranges"), Some("bytes"));
    assert_eq!(part.header("etag"), Some("\"v1\""));
    assert!(part.header("cache-status").unwrap_or("").contains("hit"));
    assert!(part.body == body.slice(1000..2000));

    let tail = get(&client, &url, &[("range", "bytes=-96")]).await;
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.header("content-range"), Some("bytes 4000-4095/4096"));
    assert!(tail.body == body.slice(4000..));

    let all = get(&client, &url, &[("range", "bytes=0-")]).await;
    assert_eq!(all.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(all.header("content-range"), Some("bytes 0-4095/4096"));
    assert!(all.body == body);
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn an_unsatisfiable_range_is_a_416_naming_the_length() {
    let (origin, corral) = serving(object(4096)).await;
    let client = support::client();
    let url = corral.url("/object");

    // Cold: the range request leads the full fill and is answered from it.
    let cold = get(&client, &url, &[("range", "bytes=4096-")]).await;
    assert_eq!(cold.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(cold.header("content-range"), Some("bytes */4096"));
    assert!(cold.body.is_empty());
    assert!(
        cold.header("cache-status")
            .unwrap_or("")
            .contains("fwd=miss")
    );

    let hit = get(&client, &url, &[("range", "bytes=5000-6000")]).await;
    assert_eq!(hit.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(hit.header("content-range"), Some("bytes */4096"));
    assert!(hit.body.is_empty());

    let whole = get(&client, &url, &[]).await;
    assert_eq!(
        whole.status,
        StatusCode::OK,
        "the 416 never replaced the entry"
    );
    assert_eq!(whole.body.len(), 4096);
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn if_range_with_the_strong_etag_is_a_206_and_otherwise_the_whole_200() {
    let body = object(4096);
    let (origin, corral) = serving(body.clone()).await;
    let client = support::client();
    let url = corral.url("/object");
    let ranged = |if_range: &'static str| [("range", "bytes=10-19"), ("if-range", if_range)];

    let matching = get(&client, &url, &ranged("\"v1\"")).await;
    assert_eq!(matching.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(matching.header("content-range"), Some("bytes 10-19/4096"));
    assert!(matching.body == body.slice(10..20));

    let by_date = get(&client, &url, &ranged("Sat, 05 Nov 1994 08:49:37 GMT")).await;
    assert_eq!(by_date.status, StatusCode::PARTIAL_CONTENT);
    assert!(by_date.body == body.slice(10..20));

    for if_range in ["\"v2\"", "W/\"v1\"", "Sat, 05 Nov 1994 08:49:38 GMT"] {
        let changed = get(&client, &url, &ranged(if_range)).await;
        assert_eq!(changed.status, StatusCode::OK, "If-Range: {if_range}");
        assert_eq!(changed.header("content-range"), None);
        assert!(changed.body == body, "If-Range: {if_range}: the whole body");
    }
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn multiple_ranges_get_the_whole_200() {
    let body = object(4096);
    let (origin, corral) = serving(body.clone()).await;
    let client = support::client();
    let url = corral.url("/object");

    let several = get(&client, &url, &[("range", "bytes=0-9,100-109")]).await;
    assert_eq!(several.status, StatusCode::OK);
    assert_eq!(several.header("content-range"), None);
    assert_eq!(several.header("accept-ranges"), Some("bytes"));
    assert!(several.body == body);
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn head_ignores_range_and_describes_the_whole_object() {
    // RFC 9110 §14.2: range handling is defined for GET only.
    let (origin, corral) = serving(object(4096)).await;
    let client = support::client();
    let url = corral.url("/object");

    for expect_hit in [false, true] {
        let head = fetch(
            &client,
            reqwest::Method::HEAD,
            &url,
            &[("range", "bytes=100-199".to_owned())],
        )
        .await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.header("content-range"), None);
        assert_eq!(head.header("content-length"), Some("4096"));
        assert_eq!(head.header("accept-ranges"), Some("bytes"));
        assert!(head.body.is_empty());
        let cache_status = head.header("cache-status").unwrap_or("");
        assert_eq!(cache_status.contains("; hit"), expect_hit, "{cache_status}");
    }
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn a_matching_if_none_match_with_a_range_is_a_304() {
    let (origin, corral) = serving(object(4096)).await;
    let client = support::client();
    let url = corral.url("/object");

    let conditional = [("range", "bytes=0-9"), ("if-none-match", "\"v1\"")];
    for _ in 0..2 {
        let got = get(&client, &url, &conditional).await;
        assert_eq!(got.status, StatusCode::NOT_MODIFIED);
        assert_eq!(got.header("content-range"), None);
        assert_eq!(got.header("etag"), Some("\"v1\""));
        assert!(got.body.is_empty());
    }
    let changed = get(
        &client,
        &url,
        &[("range", "bytes=0-9"), ("if-none-match", "\"v0\"")],
    )
    .await;
    assert_eq!(changed.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(changed.header("content-range"), Some("bytes 0-9/4096"));
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

/// Objects over `max_object_size` are never stored: the client's Range goes
/// to the origin, for the request that found the object too large and for
/// every later one (hit-for-pass).
#[tokio::test]
async fn a_range_of_an_object_too_large_to_store_is_asked_of_the_origin() {
    let origin = MockOrigin::start().await.unwrap();
    let object: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let served = object.clone();
    origin.on("/big", move |seen| match seen.headers.get("range") {
        // The origin honours `bytes=100-199` (all this test asks for).
        Some(range) if range == "bytes=100-199" => Reply::ok(served[100..200].to_vec())
            .status(reqwest::StatusCode::PARTIAL_CONTENT)
            .header("content-range", "bytes 100-199/4096")
            .into(),
        _ => Reply::ok(served.clone())
            .header("cache-control", "max-age=60")
            .into(),
    });
    let corral = support::Setup::origin(&origin)
        .toml("[cache]\nmax_object_size = \"1KiB\"\n[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    for _ in 0..2 {
        let response = client
            .get(corral.url("/big"))
            .header("range", "bytes=100-199")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 206);
        assert_eq!(response.bytes().await.unwrap(), &object[100..200]);
    }
    let whole = support::get(&client, &corral.url("/big")).await;
    assert_eq!(whole.status, 200);
    assert_eq!(corral.proxy.cache().entry_count(), 0, "never stored");
    corral.shutdown().await;
}
