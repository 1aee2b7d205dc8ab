//! Load client for corral's memory runs. Every mode stops by itself.
//!
//! - `herd fill BASE_URL COUNT CONCURRENCY [TIMEOUT_SECS]`: GETs
//!   `BASE_URL/obj/{0..COUNT}` (distinct keys) with at most CONCURRENCY requests
//!   in flight over keep-alive connections; prints how many answered 200 with a
//!   1 KiB body. Gives up after TIMEOUT_SECS (default 300).
//! - `herd hold HOST:PORT PATH COUNT HOLD_SECS`: opens COUNT TCP connections,
//!   each sending one `GET PATH` (the same key), and keeps them open for
//!   HOLD_SECS, then prints how many connected and how many were answered,
//!   and exits (closing every connection).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Connections being set up at once in `hold` mode, to stay within the
/// listener's accept backlog.
const CONNECTS_AT_ONCE: usize = 256;

fn usage() -> ExitCode {
    eprintln!(
        "usage:\n  herd fill BASE_URL COUNT CONCURRENCY [TIMEOUT_SECS]\n  herd hold HOST:PORT PATH COUNT HOLD_SECS"
    );
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("fill") => {
            let (Some(base), Some(Ok(count)), Some(Ok(concurrency))) = (
                arg(1),
                arg(2).map(str::parse::<u64>),
                arg(3).map(str::parse::<usize>),
            ) else {
                return usage();
            };
            let timeout = arg(4).and_then(|s| s.parse().ok()).unwrap_or(300);
            fill(
                base,
                count,
                concurrency.max(1),
                Duration::from_secs(timeout),
            )
            .await
        }
        Some("hold") => {
            let (Some(Ok(addr)), Some(path), Some(Ok(count)), Some(Ok(hold_secs))) = (
                arg(1).map(str::parse::<SocketAddr>),
                arg(2),
                arg(3).map(str::parse::<usize>),
                arg(4).map(str::parse::<u64>),
            ) else {
                return usage();
            };
            hold(addr, path, count, Duration::from_secs(hold_secs)).await
        }
        _ => usage(),
    }
}

async fn fill(base: &str, count: u64, concurrency: usize, timeout: Duration) -> ExitCode {
    // reqwest panics without a process-wide rustls crypto provider.
    corral::tls::install_crypto_provider();
    let client = match reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("herd: cannot build the client: {error}");
            return ExitCode::FAILURE;
        }
    };
    let ok = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let started = Instant::now();
    let requests = futures_util::stream::iter(0..count)
        .map(|i| {
            let client = &client;
            async move {
                let response = client.get(format!("{base}/obj/{i}")).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>(status.is_success() && body.len() == 1024)
            }
        })
        .buffer_unordered(concurrency)
        .for_each(|result| {
            let counter = if matches!(result, Ok(true)) {
                &ok
            } else {
                &failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            async {}
        });
    let finished = tokio::time::timeout(timeout, requests).await.is_ok();
    let elapsed = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "herd fill: {ok} ok, {failed} failed of {count} in {elapsed:.1}s ({:.0} req/s){}",
        (ok + failed) as f64 / elapsed,
        if finished { "" } else { ", TIMED OUT" }
    );
    if finished && ok == count {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn hold(addr: SocketAddr, path: &str, count: usize, hold: Duration) -> ExitCode {
    let request = Arc::new(format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: herd\r\n\r\n"
    ));
    let connected = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let connecting = Arc::new(Semaphore::new(CONNECTS_AT_ONCE));
    let deadline = Instant::now() + hold;
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let request = Arc::clone(&request);
        let connected = Arc::clone(&connected);
        let answered = Arc::clone(&answered);
        let failed = Arc::clone(&failed);
        let connecting = Arc::clone(&connecting);
        tasks.push(tokio::spawn(async move {
            let work = async {
                let permit = connecting.acquire_owned().await.ok();
                let mut stream = TcpStream::connect(addr).await?;
                stream.write_all(request.as_bytes()).await?;
                drop(permit);
                connected.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 2048];
                let read = stream.read(&mut buf).await?;
                if read > 0 {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                // Keep the connection open until the deadline either way.
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(stream)
            };
            if let Ok(Err(error)) = tokio::time::timeout_at(deadline, work).await
                && failed.fetch_add(1, Ordering::Relaxed) == 0
            {
                eprintln!("herd hold: first connection error: {error}");
            }
        }));
    }
    let started = Instant::now();
    let mut last = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1).min(deadline - Instant::now())).await;
        let now = connected.load(Ordering::Relaxed);
        if now != last {
            eprintln!(
                "herd hold: {now} connected after {:.1}s",
                started.elapsed().as_secs_f64()
            );
            last = now;
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    println!(
        "herd hold: {} connected, {} answered, {} failed of {count} over {:.0}s",
        connected.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        hold.as_secs_f64()
    );
    ExitCode::SUCCESS
}
