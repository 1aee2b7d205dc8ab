//! Client-facing limits and open-proxy safety, over real loopback sockets:
//! slow heads, idle keep-alive connections, oversized heads and bodies, the
//! connection cap, absolute-form targets, CONNECT, and the `Host` sent upstream.
//!
//! Raw `TcpStream`s stand in for misbehaving clients. Nothing sleeps to
//! synchronise: tests wait for the server to close a socket (with an overall
//! bound), for counters, or on gates.
//!
//! Tests of the header and idle timeouts run on a paused tokio clock (a
//! current-thread runtime, so the clients, corral and the origin share one
//! thread and loopback I/O is never in flight while the runtime is idle).
//! Those timeouts are corral's own tokio timers: when every task waits, tokio
//! moves the clock to the next timer, in deadline order, so they fire without
//! real time passing. Where the test spins on a counter instead (which keeps
//! the clock still), it moves the clock itself with `advance`.
mod support;

use support::Setup;
use support::raw_client::{
    BOUND, Closed, find, read_response, read_until_closed, send_raw, send_while_reading, status_of,
};

use std::net::SocketAddr;
use std::time::Duration;

use corral::metrics::ClientLimit;
use corral::testing::mock_origin::{Behaviour, Gate, MockOrigin, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: corral.test\r\n\r\n").into_bytes()
}

/// The `corral_client_limit_total` count for `limit`.
fn limit_count(corral: &support::TestProxy, limit: ClientLimit) -> u64 {
    corral.proxy.metrics().client_limits.get(limit)
}

/// A `MockOrigin` answering "fine" on every path, and corral in front of it
/// configured with `toml`.
async fn fine_origin_and_corral(toml: &str) -> (MockOrigin, support::TestProxy) {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/", Reply::ok("fine"));
    let corral = Setup::origin(&origin).toml(toml).start().await;
    (origin, corral)
}

/// Sends `request` raw and checks that corral refused it with `status`
/// without contacting the origin, counting `limit` exactly once.
async fn assert_refused_before_origin(
    corral: &support::TestProxy,
    origin: &MockOrigin,
    request: &[u8],
    status: u16,
    limit: ClientLimit,
) -> Closed {
    let mut stream = send_raw(corral.addr, request).await;
    let closed = read_until_closed(&mut stream).await;
    assert_eq!(closed.status(), Some(status), "{closed:?}");
    assert_eq!(origin.hits(), 0, "the origin was never asked");
    assert_eq!(limit_count(corral, limit), 1);
    closed
}

#[tokio::test(start_paused = true)]
async fn slowloris_is_cut_off_after_the_header_timeout_while_others_are_served() {
    let (origin, corral) = fine_origin_and_corral(
        "[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"60s\"\n",
    )
    .await;

    // Half a request head, then silence.
    let mut silent = send_raw(corral.addr, b"GET /slow HTTP/1.1\r\nHost: corral.test\r\n").await;
    // A head trickled one byte at a time: steady activity must not extend the bound.
    let trickler = tokio::spawn({
        let addr = corral.addr;
        async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let head = b"GET /trickle HTTP/1.1\r\nX-Padding: ".iter().copied();
            let mut bytes = head.chain(std::iter::repeat(b'a'));
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            let mut chunk = [0u8; 1024];
            timeout(BOUND, async {
                loop {
                    tokio::select! {
                        read = stream.read(&mut chunk) => match read {
                            Ok(0) | Err(_) => return,
                            Ok(n) => panic!("the trickler got an answer: {:?}", &chunk[..n]),
                        },
                        _ = pace.tick() => {
                            let byte = [bytes.next().unwrap_or(b'a')];
                            if stream.write_all(&byte).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            })
            .await
            .expect("the trickler is cut off");
        }
    });

    let client = support::client();
    for _ in 0..5 {
        let response = client.get(corral.url("/other")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "fine");
    }

    let closed = read_until_closed(&mut silent).await;
    assert!(
        closed.bytes.is_empty(),
        "no answer to half a head: {closed:?}"
    );
    trickler.await.unwrap();
    assert_eq!(limit_count(&corral, ClientLimit::HeaderTimeout), 2);
    assert_eq!(
        origin.hits_on("/"),
        5,
        "only the complete requests reached the origin"
    );

    let metrics = corral.metrics_text().await;
    assert!(
        metrics.contains(r#"corral_client_limit_total{limit="header_timeout"} 2"#),
        "{metrics}"
    );
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (_origin, corral) = fine_origin_and_corral(
        "[server]\nheader_read_timeout = \"10s\"\nidle_timeout = \"300ms\"\n",
    )
    .await;

    let mut stream = send_raw(corral.addr, &get("/a")).await;
    assert_eq!(read_response(&mut stream).await, (200, "fine".to_owned()));
    // Kept alive: a second request on the same connection is served.
    stream.write_all(&get("/b")).await.unwrap();
    assert_eq!(read_response(&mut stream).await, (200, "fine".to_owned()));

    let closed = read_until_closed(&mut stream).await;
    assert!(closed.bytes.is_empty() && !closed.reset, "{closed:?}");
    assert_eq!(limit_count(&corral, ClientLimit::Idle), 1);
    assert_eq!(limit_count(&corral, ClientLimit::HeaderTimeout), 0);
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idle_http2_connection_is_closed_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(300);
    let (_origin, corral) = fine_origin_and_corral(
        "[server]\nheader_read_timeout = \"10s\"\nidle_timeout = \"300ms\"\n",
    )
    .await;
    let client = support::h2_client();

    let response = client.get(corral.url("/a")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.text().await.unwrap(), "fine");
    // The stream ended, so corral has marked the connection quiet (the
    // response body is dropped before its last frame is written): from here
    // the idle timer runs. `wait_until` keeps the clock still; move it.
    tokio::time::advance(IDLE).await;
    let metrics = corral.proxy.metrics();
    support::wait_until("the idle HTTP/2 connection is closed", BOUND, || {
        metrics.connections_open.get() == 0
    })
    .await;
    assert_eq!(limit_count(&corral, ClientLimit::Idle), 1);
    assert_eq!(limit_count(&corral, ClientLimit::HeaderTimeout), 0);

    // The client was told (GOAWAY) and simply reconnects.
    let again = client.get(corral.url("/b")).send().await.unwrap();
    assert_eq!(again.text().await.unwrap(), "fine");
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_spares_a_request_in_progress() {
    let origin = MockOrigin::start().await.unwrap();
    let gate = Gate::new();
    origin.always("/slow", Behaviour::gated(&gate, Reply::ok("late")));
    origin.always("/", Reply::ok("fine"));
    let corral = Setup::origin(&origin)
        .toml("[server]\nidle_timeout = \"300ms\"\n[[route]]\nmatch = \"/\"\ncache = false\n")
        .start()
        .await;

    let mut busy = send_raw(corral.addr, &get("/slow")).await;
    origin.wait_for_hits(1).await;
    // Another connection going idle after the slow request started: once the
    // idle timeout has closed it, the slow one has been in progress longer.
    let mut idle = send_raw(corral.addr, &get("/fast")).await;
    assert_eq!(read_response(&mut idle).await.0, 200);
    read_until_closed(&mut idle).await;
    assert_eq!(limit_count(&corral, ClientLimit::Idle), 1);

    gate.open();
    assert_eq!(read_response(&mut busy).await, (200, "late".to_owned()));
    corral.shutdown().await;
}

#[tokio::test]
async fn two_gib_content_length_is_refused_with_413_unread() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/", Reply::ok("stored"));
    let corral = Setup::origin(&origin)
        .toml("[server]\nmax_request_body = \"1MiB\"\n[[route]]\nmatch = \"/\"\ncache = false\n")
        .start()
        .await;

    let announced_2gib = b"POST /upload HTTP/1.1\r\nHost: corral.test\r\nContent-Length: 2147483648\r\n\r\nonly a few bytes";
    assert_refused_before_origin(&corral, &origin, announced_2gib, 413, ClientLimit::BodySize)
        .await;

    // Within the limit, a body is relayed.
    let client = support::client();
    let response = client
        .post(corral.url("/upload"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    corral.shutdown().await;
}

/// An origin that accepts one connection, never answers, and reports every
/// byte it received once the connection closes.
async fn recording_origin() -> (SocketAddr, oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, received) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("corral connects");
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        let _ = report.send(bytes);
    });
    (addr, received)
}

#[tokio::test]
async fn chunked_body_growing_past_the_limit_is_cut_off_never_forwarded_whole() {
    let (origin, received) = recording_origin().await;
    let corral = Setup::url(format!("http://{origin}"))
        .toml("[server]\nmax_request_body = \"32KiB\"\n[[route]]\nmatch = \"/\"\ncache = false\n")
        .start()
        .await;

    let mut stream = send_raw(
        corral.addr,
        b"POST /upload HTTP/1.1\r\nHost: corral.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    // 33 chunks of 1 KiB: one past the limit. The terminating chunk is never sent.
    let chunk = [b"400\r\n".as_slice(), &[b'x'; 1024], b"\r\n"].concat();
    for _ in 0..33 {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let closed = read_until_closed(&mut stream).await;
    assert!(
        closed.status() == Some(413) || (closed.reset && closed.bytes.is_empty()),
        "413, or the connection closed, and nothing else: {closed:?}"
    );
    assert_eq!(limit_count(&corral, ClientLimit::BodySize), 1);

    let forwarded = timeout(BOUND, received)
        .await
        .expect("corral drops the origin connection")
        .unwrap();
    let body_start = find(&forwarded, b"\r\n\r\n").map_or(forwarded.len(), |end| end + 4);
    assert!(
        forwarded.len() - body_start < 33 * 1024,
        "the origin got {} body bytes",
        forwarded.len() - body_start
    );
    assert!(
        find(&forwarded, b"0\r\n\r\n").is_none(),
        "the body was never completed upstream"
    );
    corral.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (origin, corral) = fine_origin_and_corral("[server]\nmax_header_size = \"4KiB\"\n").await;
    let client = support::client();

    // Over the limit but inside hyper's read buffer: refused by corral's check.
    let response = client
        .get(corral.url("/p"))
        .header("x-big", "a".repeat(6 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);

    // Larger than hyper's read buffer: refused by hyper while reading the head.
    let big = format!(
        "GET /p HTTP/1.1\r\nHost: corral.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    // The server stops reading at its limit; the rest may not be taken.
    let closed = send_while_reading(corral.addr, big.as_bytes()).await;
    assert_eq!(
        status_of(&closed),
        Some(431),
        "{:?}",
        String::from_utf8_lossy(&closed)
    );

    let response = client.get(corral.url("/p")).send().await.unwrap();
    assert_eq!(response.status(), 200, "small heads still pass");
    assert_eq!(origin.hits(), 1, "no oversized head reached the origin");
    assert_eq!(limit_count(&corral, ClientLimit::HeaderSize), 2);
    corral.shutdown().await;
}

#[tokio::test]
async fn absolute_form_for_a_foreign_host_is_refused_without_contacting_the_origin() {
    let (origin, corral) = fine_origin_and_corral("[server]\nhosts = [\"shop.example\"]\n").await;

    let foreign =
        b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    assert_refused_before_origin(&corral, &origin, foreign, 421, ClientLimit::Host).await;

    // The origin's own authority and listed hosts are served in absolute form.
    for target in [
        format!("http://{}/p", origin.addr()),
        "http://shop.example/p".to_owned(),
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut stream = send_raw(corral.addr, request.as_bytes()).await;
        let closed = read_until_closed(&mut stream).await;
        assert_eq!(closed.status(), Some(200), "{target}: {closed:?}");
    }
    assert_eq!(origin.hits(), 2);
    corral.shutdown().await;
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let (origin, corral) = fine_origin_and_corral("").await;

    let connect =
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n";
    let closed =
        assert_refused_before_origin(&corral, &origin, connect, 405, ClientLimit::Method).await;
    let head = String::from_utf8_lossy(&closed.bytes).to_ascii_lowercase();
    assert!(head.contains("\r\nallow: "), "{head}");
    corral.shutdown().await;
}

#[tokio::test]
async fn origin_host_is_sent_upstream_unless_the_route_preserves_it() {
    let origin = MockOrigin::start().await.unwrap();
    origin.on("/", |seen| {
        let host = seen
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("(none)");
        Reply::ok(host.to_owned()).into()
    });
    let corral = Setup::origin(&origin)
        .toml(
            r#"
[[route]]
match = "/kept/"
preserve_host = true
hosts = ["shop.example"]
[[route]]
match = "/kept-pass/"
cache = false
preserve_host = true
hosts = ["shop.example"]
[[route]]
match = "/"
"#,
        )
        .start()
        .await;
    let client = support::client();
    let host_seen = |path: &'static str| {
        let request = client.get(corral.url(path)).header("host", "shop.example");
        async move { request.send().await.unwrap().text().await.unwrap() }
    };

    assert_eq!(host_seen("/cached").await, origin.addr().to_string());
    assert_eq!(host_seen("/kept/fill").await, "shop.example");
    assert_eq!(host_seen("/kept-pass/relay").await, "shop.example");
    corral.shutdown().await;
}

#[tokio::test]
async fn connection_over_the_cap_waits_for_a_free_slot() {
    let (origin, corral) = fine_origin_and_corral("[server]\nmax_connections = 2\n").await;

    let mut first = send_raw(corral.addr, &get("/1")).await;
    assert_eq!(read_response(&mut first).await.0, 200);
    let mut second = send_raw(corral.addr, &get("/2")).await;
    assert_eq!(read_response(&mut second).await.0, 200);

    let mut third = send_raw(corral.addr, &get("/3")).await;
    support::wait_until("the third connection waits for a slot", BOUND, || {
        limit_count(&corral, ClientLimit::Connections) == 1
    })
    .await;
    assert_eq!(corral.proxy.metrics().connections_open.get(), 2);
    let mut probe = [0u8; 64];
    assert_eq!(
        third.try_read(&mut probe).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the waiting connection is not served"
    );

    drop(first);
    assert_eq!(read_response(&mut third).await, (200, "fine".to_owned()));
    assert_eq!(origin.hits(), 3);
    corral.shutdown().await;
}
