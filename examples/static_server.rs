//! A minimal HTTP/1.1 + HTTP/2 server answering every request with the same
//! 1 KiB body: the static baseline for load runs, and the origin behind corral.
//!
//! Paths under `/slow/` wait `SLOW_SECS` (default 60) before answering, so a
//! herd of clients can pile up behind one corral flight.
//!
//! Usage: `static_server PORT [SLOW_SECS]` (listens on 127.0.0.1:PORT).
//! The tokio runtime sizes itself to the CPUs the process may run on, so
//! `taskset -c 0 static_server 8000` serves from one worker thread.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The body every request gets: 1 KiB.
static BODY: [u8; 1024] = [b'x'; 1024];

async fn answer(
    request: Request<Incoming>,
    slow: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path().starts_with("/slow/") {
        tokio::time::sleep(slow).await;
    }
    let mut response = Response::new(Full::new(Bytes::from_static(&BODY)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = match args.next().map(|p| p.parse()) {
        Some(Ok(port)) => port,
        _ => {
            eprintln!("usage: static_server PORT [SLOW_SECS]");
            std::process::exit(2);
        }
    };
    let slow = Duration::from_secs(args.next().and_then(|s| s.parse().ok()).unwrap_or(60));
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!(
        "static_server: 1 KiB on http://{}, /slow/* after {slow:?}",
        listener.local_addr()?
    );
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("static_server: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = builder
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |request| answer(request, slow)),
            )
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
