//! The listener's quick path (`server.quick_hits`), over real loopback
//! sockets: fresh hits to plain HTTP/1.1 GET and HEAD requests are answered
//! before hyper, byte for byte as hyper would answer them, and everything
//! else (and everything after it on the connection) is left to hyper, which
//! decides and counts it exactly as it would without the quick path.
//!
//! Which path answered is read off `corral_quick_hits_total`. A request made
//! not plain by a field that changes nothing in its answer
//! (`Connection: keep-alive`, which HTTP/1.1 implies) is the hyper-served
//! control. Nothing sleeps: waits are on sockets, counters or a paused clock.
mod support;

use std::time::Duration;

use corral::metrics::ClientLimit;
use corral::testing::mock_origin::{MockOrigin, Reply};
use support::raw_client::{
    BOUND, find, read_until_closed, send_raw, send_while_reading, status_of, whole_response_len,
};
use support::{Setup, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

/// A caching route for `/c/`, and a pass-through route for `/pass/`.
const ROUTES: &str = r#"
[[route]]
match = "/c/"
ttl = "60s"
[[route]]
match = "/pass/"
cache = false
"#;

/// A plain GET (or another method) of `path` with the given extra lines.
fn request(method: &str, path: &str, extra: &[&str]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: corral.test\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// An origin answering `/c/NAME` with "body of /c/NAME" (cacheable, with an
/// `ETag`) and anything else with "passed", and corral in front of it with
/// [`ROUTES`] and `toml`.
async fn origin_and_corral(toml: &str) -> (MockOrigin, TestProxy) {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/c/", |seen| {
        Reply::ok(format!("body of {}", seen.path))
            .header("etag", "\"v1\"")
            .header("x-origin", "yes")
            .into()
    });
    origin.always("/pass/", Reply::ok("passed"));
    let corral = Setup::origin(&origin)
        .toml(&format!("{ROUTES}\n{toml}"))
        .start()
        .await;
    (origin, corral)
}

/// Fetches `path` once through hyper (not plain), so it is stored.
async fn warm(corral: &TestProxy, path: &str) {
    let mut stream = send_raw(corral.addr, &request("GET", path, &["Connection: close"])).await;
    let closed = read_until_closed(&mut stream).await;
    assert_eq!(closed.status(), Some(200), "{closed:?}");
}

fn quick_hits(corral: &TestProxy) -> u64 {
    corral.proxy.metrics().quick_hits.get()
}

fn limit_count(corral: &TestProxy, limit: ClientLimit) -> u64 {
    corral.proxy.metrics().client_limits.get(limit)
}

/// Reads one whole response (its head, then `Content-Length` bytes of body,
/// none for a response to HEAD) from a keep-alive connection, as sent.
async fn read_raw_response(stream: &mut TcpStream, to_head: bool) -> Vec<u8> {
    let read_one = async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(whole) = whole_response_len(&bytes, to_head) {
                assert_eq!(bytes.len(), whole, "nothing beyond the response");
                return bytes;
            }
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "closed before a whole response: {bytes:?}");
            bytes.extend_from_slice(&chunk[..n]);
        }
    };
    timeout(BOUND, read_one).await.expect("a response arrives")
}

/// Reads `count` whole responses to GETs, in order, from one connection.
async fn read_responses(stream: &mut TcpStream, count: usize) -> Vec<String> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut responses = Vec::new();
    let read_all = async {
        while responses.len() < count {
            if let Some(whole) = whole_response_len(&bytes, false) {
                let response: Vec<u8> = bytes.drain(..whole).collect();
                responses.push(String::from_utf8_lossy(&response).into_owned());
                continue;
            }
            let n = stream.read(&mut chunk).await.expect("read responses");
            assert!(n > 0, "closed after {} responses", responses.len());
            bytes.extend_from_slice(&chunk[..n]);
        }
    };
    timeout(BOUND, read_all)
        .await
        .expect("every response arrives");
    responses
}

/// `response` with the numbers that change by the second (`Age`, the
/// `ttl` in `Cache-Status`) blanked.
fn without_clock(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    let mut out = String::new();
    for line in text.split_inclusive("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("age:") {
            out.push_str("age: N\r\n");
        } else if let Some(at) = lower.find("ttl=") {
            out.push_str(&line[..at + 4]);
            out.push_str("N\r\n");
        } else {
            out.push_str(line);
        }
    }
    out
}

#[tokio::test]
async fn a_quick_hit_is_byte_for_byte_what_hyper_sends() {
    let (origin, corral) = origin_and_corral("").await;
    warm(&corral, "/c/item").await;
    for method in ["GET", "HEAD"] {
        // A fresh connection each time: after the control, hyper owns it.
        let mut stream = TcpStream::connect(corral.addr).await.unwrap();
        let to_head = method == "HEAD";
        let before = quick_hits(&corral);
        stream
            .write_all(&request(method, "/c/item", &[]))
            .await
            .unwrap();
        let quick = read_raw_response(&mut stream, to_head).await;
        assert_eq!(
            quick_hits(&corral),
            before + 1,
            "{method}: the quick path answered"
        );

        stream
            .write_all(&request(method, "/c/item", &["Connection: keep-alive"]))
            .await
            .unwrap();
        let hyper = read_raw_response(&mut stream, to_head).await;
        assert_eq!(quick_hits(&corral), before + 1, "{method}: hyper answered");

        assert_eq!(without_clock(&quick), without_clock(&hyper), "{method}");
        let text = String::from_utf8_lossy(&quick).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
        for line in [
            "age: ",
            "cache-status: corral; hit; ttl=",
            "content-length: 15",
            "date: ",
            "x-origin: yes",
        ] {
            assert!(text.contains(line), "{method}: {line:?} in {text}");
        }
        assert_eq!(text.ends_with("body of /c/item"), !to_head, "{text}");
    }
    assert_eq!(
        origin.hits(),
        1,
        "one fill, every other answer from the cache"
    );

    // Counted as the hits they are, and logged as hyper's answers are.
    let metrics = corral.metrics_text().await;
    let hits = metrics
        .lines()
        .find(|line| line.starts_with("corral_requests_total{route=\"/c/\",cache_status=\"hit\"}"))
        .expect("a hit count");
    assert!(hits.ends_with(" 4"), "{hits}");
    assert!(metrics.contains("corral_quick_hits_total 2"), "{metrics}");
    corral.shutdown().await;
}

#[tokio::test]
async fn with_quick_hits_off_every_hit_goes_through_hyper() {
    let (_origin, corral) = origin_and_corral("[server]\nquick_hits = false\n").await;
    warm(&corral, "/c/item").await;
    let mut stream = send_raw(corral.addr, &request("GET", "/c/item", &[])).await;
    let answer = read_raw_response(&mut stream, false).await;
    assert!(String::from_utf8_lossy(&answer).contains("corral; hit"));
    assert_eq!(quick_hits(&corral), 0);
    corral.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_the_hand_over_to_hyper() {
    let (origin, corral) = origin_and_corral("").await;
    warm(&corral, "/c/a").await;
    warm(&corral, "/c/b").await;
    let mut burst = Vec::new();
    burst.extend(request("GET", "/c/a", &[]));
    burst.extend(request("GET", "/c/b", &[]));
    // Not plain: hyper takes the connection from here, body and all.
    burst.extend(b"POST /pass/x HTTP/1.1\r\nHost: corral.test\r\nContent-Length: 5\r\n\r\nhello");
    // Plain and warm, but after the hand-over: hyper answers it too.
    burst.extend(request("GET", "/c/a", &[]));
    burst.extend(request("GET", "/c/cold", &[]));
    let mut stream = send_raw(corral.addr, &burst).await;
    let answers = read_responses(&mut stream, 5).await;
    let bodies: Vec<&str> = answers
        .iter()
        .map(|a| a.split("\r\n\r\n").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        bodies,
        [
            "body of /c/a",
            "body of /c/b",
            "passed",
            "body of /c/a",
            "body of /c/cold"
        ]
    );
    assert!(answers.iter().all(|a| status_of(a.as_bytes()) == Some(200)));
    assert_eq!(quick_hits(&corral), 2, "only the two before the hand-over");
    assert_eq!(origin.hits(), 4, "two fills, the POST and the cold key");
    corral.shutdown().await;
}

#[tokio::test]
async fn a_head_arriving_a_byte_at_a_time_is_answered_quickly() {
    let (_origin, corral) = origin_and_corral("").await;
    warm(&corral, "/c/slow-head").await;
    let mut stream = TcpStream::connect(corral.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for byte in request("GET", "/c/slow-head", &["Accept: */*"]) {
        stream.write_all(&[byte]).await.unwrap();
    }
    let answer = read_raw_response(&mut stream, false).await;
    assert!(String::from_utf8_lossy(&answer).ends_with("body of /c/slow-head"));
    assert_eq!(quick_hits(&corral), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn a_refused_request_for_a_stored_key_is_refused_by_hyper_and_counted_once() {
    let (origin, corral) = origin_and_corral("[server]\nmax_header_size = \"1KiB\"\n").await;
    warm(&corral, "/c/item").await;

    // No Host: admission refuses it, whichever path looked first.
    let mut stream = send_raw(corral.addr, b"GET /c/item HTTP/1.1\r\n\r\n").await;
    let closed = read_until_closed(&mut stream).await;
    assert_eq!(closed.status(), Some(400), "{closed:?}");
    assert_eq!(limit_count(&corral, ClientLimit::Malformed), 1);

    // Over max_header_size but inside hyper's buffer: admission's 431.
    let padding = format!("X-Pad: {}", "a".repeat(2048));
    let mut stream = send_raw(corral.addr, &request("GET", "/c/item", &[&padding])).await;
    let closed = read_until_closed(&mut stream).await;
    assert_eq!(closed.status(), Some(431), "{closed:?}");
    assert_eq!(limit_count(&corral, ClientLimit::HeaderSize), 1);

    // Over hyper's buffer: hyper's own 431.
    let padding = format!("X-Pad: {}", "a".repeat(64 * 1024));
    let big = request("GET", "/c/item", &[&padding]);
    // The server stops reading at its limit; the rest may not be taken.
    let closed = send_while_reading(corral.addr, &big).await;
    assert_eq!(
        status_of(&closed),
        Some(431),
        "{:?}",
        String::from_utf8_lossy(&closed)
    );
    assert_eq!(limit_count(&corral, ClientLimit::HeaderSize), 2);

    assert_eq!(quick_hits(&corral), 0);
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn ranges_validators_and_credentials_are_answered_by_hyper() {
    let (origin, corral) = origin_and_corral("").await;
    warm(&corral, "/c/item").await;
    let mut stream = TcpStream::connect(corral.addr).await.unwrap();

    stream
        .write_all(&request("GET", "/c/item", &["Range: bytes=0-3"]))
        .await
        .unwrap();
    let ranged = String::from_utf8_lossy(&read_raw_response(&mut stream, false).await).into_owned();
    assert!(ranged.starts_with("HTTP/1.1 206 "), "{ranged}");
    assert!(ranged.ends_with("\r\n\r\nbody"), "{ranged}");

    stream
        .write_all(&request("GET", "/c/item", &["If-None-Match: \"v1\""]))
        .await
        .unwrap();
    let not_modified =
        String::from_utf8_lossy(&read_raw_response(&mut stream, true).await).into_owned();
    assert!(not_modified.starts_with("HTTP/1.1 304 "), "{not_modified}");

    // Credentials are passed to the origin, never answered from the cache.
    stream
        .write_all(&request("GET", "/c/item", &["Authorization: Bearer x"]))
        .await
        .unwrap();
    let passed = String::from_utf8_lossy(&read_raw_response(&mut stream, false).await).into_owned();
    assert!(passed.contains("fwd=bypass"), "{passed}");

    assert_eq!(quick_hits(&corral), 0);
    assert_eq!(origin.hits(), 2);
    corral.shutdown().await;
}

#[tokio::test]
async fn connection_close_on_a_stored_key_is_answered_then_closed() {
    let (_origin, corral) = origin_and_corral("").await;
    warm(&corral, "/c/item").await;
    let mut stream = send_raw(
        corral.addr,
        &request("GET", "/c/item", &["Connection: close"]),
    )
    .await;
    let closed = read_until_closed(&mut stream).await;
    let text = String::from_utf8_lossy(&closed.bytes);
    assert_eq!(closed.status(), Some(200), "{closed:?}");
    assert!(
        text.contains("corral; hit") && text.ends_with("body of /c/item"),
        "{text}"
    );
    assert_eq!(quick_hits(&corral), 0, "hyper honours the close");
    corral.shutdown().await;
}

#[tokio::test]
async fn a_purged_key_is_fetched_again_not_answered_quickly() {
    let (origin, corral) = origin_and_corral("").await;
    warm(&corral, "/c/item").await;
    let mut stream = send_raw(corral.addr, &request("GET", "/c/item", &[])).await;
    read_raw_response(&mut stream, false).await;
    assert_eq!(quick_hits(&corral), 1);

    assert_eq!(corral.proxy.purge(&["/c/item".to_owned()], &[]).await, 1);
    stream
        .write_all(&request("GET", "/c/item", &[]))
        .await
        .unwrap();
    let refetched =
        String::from_utf8_lossy(&read_raw_response(&mut stream, false).await).into_owned();
    assert!(refetched.contains("fwd=miss"), "{refetched}");
    assert_eq!(quick_hits(&corral), 1);
    assert_eq!(origin.hits(), 2);
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_quick_connection_is_closed_when_idle_and_cut_off_mid_head() {
    let (_origin, corral) =
        origin_and_corral("[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"300ms\"\n")
            .await;
    warm(&corral, "/c/item").await;

    // Idle after a quick hit: closed, counted as idle.
    let mut idle = send_raw(corral.addr, &request("GET", "/c/item", &[])).await;
    read_raw_response(&mut idle, false).await;
    let closed = read_until_closed(&mut idle).await;
    assert!(closed.bytes.is_empty() && !closed.reset, "{closed:?}");
    assert_eq!(limit_count(&corral, ClientLimit::Idle), 1);
    assert_eq!(limit_count(&corral, ClientLimit::HeaderTimeout), 0);

    // Half a head after a quick hit: cut off by the header timeout.
    let mut slow = send_raw(corral.addr, &request("GET", "/c/item", &[])).await;
    read_raw_response(&mut slow, false).await;
    slow.write_all(b"GET /c/item HTTP/1.1\r\nHost: corral.test\r\n")
        .await
        .unwrap();
    let closed = read_until_closed(&mut slow).await;
    assert!(closed.bytes.is_empty(), "{closed:?}");
    assert_eq!(limit_count(&corral, ClientLimit::HeaderTimeout), 1);
    assert_eq!(quick_hits(&corral), 2);
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_first_head_never_finished_is_cut_off_after_the_header_timeout() {
    let (_origin, corral) =
        origin_and_corral("[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"60s\"\n")
            .await;
    let mut silent = send_raw(
        corral.addr,
        b"GET /c/item HTTP/1.1\r\nHost: corral.test\r\n",
    )
    .await;
    let closed = read_until_closed(&mut silent).await;
    assert!(closed.bytes.is_empty(), "{closed:?}");
    assert_eq!(limit_count(&corral, ClientLimit::HeaderTimeout), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_an_idle_quick_connection_at_once() {
    let (_origin, corral) = origin_and_corral("[server]\nshutdown_timeout = \"60s\"\n").await;
    warm(&corral, "/c/item").await;
    let mut idle = send_raw(corral.addr, &request("GET", "/c/item", &[])).await;
    read_raw_response(&mut idle, false).await;
    assert_eq!(quick_hits(&corral), 1);
    let stopping = tokio::spawn(corral.shutdown());
    let closed = read_until_closed(&mut idle).await;
    assert!(closed.bytes.is_empty() && !closed.reset, "{closed:?}");
    // Well within the 60 s grace period: nothing was left to wait for.
    timeout(BOUND, stopping).await.unwrap().unwrap();
}

#[tokio::test]
async fn http2_and_http1_0_on_the_same_listener_are_served_by_hyper() {
    let (_origin, corral) = origin_and_corral("").await;
    warm(&corral, "/c/item").await;
    let h2 = support::h2_client();
    let response = h2.get(corral.url("/c/item")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert!(support::cache_status(&response).contains("hit"));
    assert_eq!(response.text().await.unwrap(), "body of /c/item");

    let mut old = send_raw(
        corral.addr,
        b"GET /c/item HTTP/1.0\r\nHost: corral.test\r\n\r\n",
    )
    .await;
    let closed = read_until_closed(&mut old).await;
    assert_eq!(closed.status(), Some(200), "{closed:?}");
    assert!(String::from_utf8_lossy(&closed.bytes).ends_with("body of /c/item"));
    assert_eq!(quick_hits(&corral), 0);
    corral.shutdown().await;
}

/// Bytes of the large stored object: more than loopback's socket buffers
/// hold, so writing it waits for the client.
const BIG: usize = 16 * 1024 * 1024;

/// Corral with `BIG` bytes stored at `/big/x`, and the header and idle
/// timeouts given.
async fn big_object_corral(
    header_read_timeout: &str,
    idle_timeout: &str,
) -> (MockOrigin, TestProxy) {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/big/", Reply::ok(vec![b'x'; BIG]));
    let corral = Setup::origin(&origin)
        .toml(&format!(
            "[server]\nheader_read_timeout = \"{header_read_timeout}\"\nidle_timeout = \"{idle_timeout}\"\n\
             [cache]\nmax_object_size = \"32MiB\"\nmax_size = \"128MiB\"\n\
             [[route]]\nmatch = \"/big/\"\nttl = \"60s\"\n"
        ))
        .start()
        .await;
    warm(&corral, "/big/x").await;
    (origin, corral)
}

/// A connection with a small receive buffer that has sent two pipelined
/// GETs of `/big/x` and reads nothing yet.
async fn two_pipelined_slowly_read(corral: &TestProxy) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(corral.addr).await.unwrap();
    let mut two = request("GET", "/big/x", &[]);
    two.extend(request("GET", "/big/x", &[]));
    stream.write_all(&two).await.unwrap();
    stream
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_of_pipelined_answers_gets_both_whole() {
    // An idle timeout far beyond the test: the paused clock jumps to the
    // next timer whenever the runtime waits on loopback I/O, and the
    // watchdog looks every second.
    let (_origin, corral) = big_object_corral("1s", "1h").await;
    let mut stream = two_pipelined_slowly_read(&corral).await;
    // Longer than the header timeout, shorter than the idle one: the second
    // head waits, whole, while the first answer is being taken.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    // The two heads may differ in length: the paused clock moves on while
    // the runtime waits for the socket, so the second `Age` may be longer.
    let both_whole = |received: &[u8]| {
        let first = whole_response_len(received, false)?;
        let second = whole_response_len(&received[first..], false)?;
        Some(first + second)
    };
    // A bound on the paused clock, which such jumps move too.
    timeout(Duration::from_secs(600), async {
        while both_whole(&received).is_none() {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("both answers arrive");
    assert_eq!(
        both_whole(&received),
        Some(received.len()),
        "both answers whole"
    );
    assert_eq!(limit_count(&corral, ClientLimit::HeaderTimeout), 0);
    assert_eq!(quick_hits(&corral), 2);
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_answer_outlasting_the_idle_timeout_is_finished_then_the_connection_closed() {
    let (_origin, corral) = big_object_corral("10s", "1s").await;
    let mut stream = two_pipelined_slowly_read(&corral).await;
    // Past the idle timeout, within one more header timeout: the answer
    // being written is finished, the pipelined one is not started. (Where
    // loopback I/O stalls, the paused clock may reach that one more header
    // timeout first, and the first answer is cut short: never the second
    // begun.)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let closed = read_until_closed(&mut stream).await;
    assert_eq!(closed.status(), Some(200), "{} bytes", closed.bytes.len());
    assert!(
        find(&closed.bytes[1..], b"HTTP/1.1 ").is_none(),
        "no second answer"
    );
    assert!(closed.bytes.len() <= whole_response_len(&closed.bytes, false).unwrap_or(usize::MAX));
    assert_eq!(limit_count(&corral, ClientLimit::Idle), 1);
    assert_eq!(quick_hits(&corral), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn an_http2_preface_after_a_quick_hit_is_not_served_as_http2() {
    let (_origin, corral) = origin_and_corral("").await;
    warm(&corral, "/c/item").await;
    let mut stream = send_raw(corral.addr, &request("GET", "/c/item", &[])).await;
    read_raw_response(&mut stream, false).await;
    // The preface and an empty SETTINGS frame, on a connection that has
    // spoken HTTP/1.1: it stays HTTP/1.1 (hyper refuses the line).
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let closed = read_until_closed(&mut stream).await;
    assert!(
        closed.bytes.is_empty() || closed.bytes.starts_with(b"HTTP/1.1 4"),
        "{closed:?}"
    );
    corral.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_a_pipelining_quick_connection_after_one_more_answer() {
    let (_origin, corral) = origin_and_corral("[server]\nshutdown_timeout = \"60s\"\n").await;
    warm(&corral, "/c/item").await;
    let get = request("GET", "/c/item", &[]);
    let (first, rest) = get.split_at(10);
    let mut stream = TcpStream::connect(corral.addr).await.unwrap();
    let mut opening = get.clone();
    opening.extend_from_slice(first);
    stream.write_all(&opening).await.unwrap();
    read_raw_response(&mut stream, false).await;
    // The partial head has reached corral once a later connection is answered.
    let mut probe = send_raw(corral.addr, &get).await;
    read_raw_response(&mut probe, false).await;
    drop(probe);

    let stopping = tokio::spawn(corral.shutdown());
    // Keep pipelining, each time the rest of a head and the start of the
    // next: hyper answers what it has read, and the connection is closed.
    let mut answers = 0;
    let mut chunk = [0u8; 4096];
    let closed = timeout(BOUND, async {
        for _ in 0..20 {
            let mut next = rest.to_vec();
            next.extend_from_slice(first);
            if stream.write_all(&next).await.is_err() {
                return true;
            }
            let mut got = Vec::new();
            loop {
                if find(&got, b"body of /c/item").is_some() {
                    answers += 1;
                    break;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        }
        false
    })
    .await
    .expect("each round ends");
    assert!(
        closed && answers <= 1,
        "closed: {closed}, answers after stop: {answers}"
    );
    timeout(BOUND, stopping)
        .await
        .expect("shutdown does not wait for the grace period")
        .unwrap();
}

#[tokio::test]
async fn an_empty_stored_body_is_answered_by_hyper() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/c/", Reply::ok(""));
    let corral = Setup::origin(&origin).toml(ROUTES).start().await;
    let mut stream = send_raw(
        corral.addr,
        &request("GET", "/c/empty", &["Connection: close"]),
    )
    .await;
    assert_eq!(read_until_closed(&mut stream).await.status(), Some(200));
    // An empty answer reaches the client before its fill has stored it.
    let cache = corral.proxy.cache().clone();
    support::wait_until("the answer is stored", BOUND, || cache.entry_count() == 1).await;
    let mut stream = send_raw(corral.addr, &request("GET", "/c/empty", &[])).await;
    let answer =
        String::from_utf8_lossy(&read_raw_response(&mut stream, false).await).to_ascii_lowercase();
    assert!(answer.contains("corral; hit"), "{answer}");
    assert!(answer.contains("content-length: 0\r\n"), "{answer}");
    assert_eq!(
        quick_hits(&corral),
        0,
        "hyper writes an empty body's length itself"
    );
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}
