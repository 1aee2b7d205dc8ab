//! Cold start: how long corral takes from process start to its first answered
//! request.
//!
//! Each run spawns the corral binary with a fresh config (`--config FILE`,
//! `RUST_LOG=warn`) and times from just before the spawn to the last byte of
//! a complete `200` answer to `GET /cold`. That request is a cache miss, so
//! the figure includes corral's first origin connection and fill, to a small
//! origin served from this process on 127.0.0.1. The client connects again at
//! once after each refused connect, for at most 5 s per run.
//!
//! Usage: `cold_start PATH_TO_CORRAL [RUNS]` (RUNS defaults to 20), e.g.
//! `cargo run --release --example cold_start -- target/release/corral`.
//! `scripts/load.sh` runs it as its `coldstart` phase.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The origin's answer. Small, so the figure is start-up, not transfer.
static BODY: &[u8] = b"cold start origin\n";

/// How long one run may take before it is called a failure.
const RUN_LIMIT: Duration = Duration::from_secs(5);

/// What went wrong, already worded for the person running the example.
type Failure = String;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(corral) = args.next().map(PathBuf::from) else {
        eprintln!("usage: cold_start PATH_TO_CORRAL [RUNS]");
        return ExitCode::from(2);
    };
    let runs = match args.next().map(|r| r.parse::<usize>()) {
        None => 20,
        Some(Ok(runs)) if runs > 0 => runs,
        Some(_) => {
            eprintln!("usage: cold_start PATH_TO_CORRAL [RUNS]  (RUNS: a positive integer)");
            return ExitCode::from(2);
        }
    };
    match measure(&corral, runs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("cold_start: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up the origin and the config, runs corral `runs` times and prints the
/// figures. The temporary directory is removed whatever happens.
fn measure(corral: &Path, runs: usize) -> Result<(), Failure> {
    let dir = std::env::temp_dir().join(format!("corral-cold-start.{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let result = measure_in(corral, runs, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The body of [`measure`], with its temporary directory made.
fn measure_in(corral: &Path, runs: usize, dir: &Path) -> Result<(), Failure> {
    // One worker: the origin answers one request per run, and a larger
    // runtime would only compete with corral's start-up for the two cores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the origin's runtime: {e}"))?;
    let served = Arc::new(AtomicU64::new(0));
    let origin = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("binding the origin: {e}"))?;
    let origin_addr = origin
        .local_addr()
        .map_err(|e| format!("origin address: {e}"))?;
    runtime.spawn(serve_origin(origin, Arc::clone(&served)));

    let (listen, admin) = free_ports()?;
    let config = dir.join("corral.toml");
    std::fs::write(&config, config_text(listen, admin, origin_addr))
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
    check_config(corral, &config)?;

    let addr = SocketAddr::from(([127, 0, 0, 1], listen));
    let mut figures = Vec::with_capacity(runs);
    for run in 1..=runs {
        let took = one_run(corral, &config, addr)?;
        println!("run {run:>3}: {:.2} ms", millis(took));
        figures.push(took);
    }
    let origin_requests = served.load(Ordering::Relaxed);
    if origin_requests != runs as u64 {
        return Err(format!(
            "the origin answered {origin_requests} requests in {runs} runs: each run's GET /cold should have been one miss"
        ));
    }

    figures.sort();
    println!(
        "measured: from just before spawning `{} --config FILE` (RUST_LOG=warn) to the last byte of a complete 200 answer to GET /cold, a cache miss fetched from an origin on 127.0.0.1 ({origin_requests} origin requests in {runs} runs); connects retried at once while refused",
        corral.display()
    );
    println!(
        "cold start over {runs} runs: min {:.2} ms, median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        millis(figures[0]),
        millis(median(&figures)),
        millis(nearest_rank(&figures, 0.9)),
        millis(figures[figures.len() - 1]),
    );
    Ok(())
}

/// Answers every request with [`BODY`], counting them so the example can tell
/// that each run's request reached the origin.
async fn serve_origin(listener: TcpListener, served: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let service = service_fn(move |_request: Request<Incoming>| {
                served.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY)))) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Two distinct free loopback ports, for the proxy and admin listeners. Both
/// are held until both are chosen, so the kernel cannot hand out one twice.
fn free_ports() -> Result<(u16, u16), Failure> {
    let bind = || StdListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"));
    let (first, second) = (bind()?, bind()?);
    let port = |l: &StdListener| {
        l.local_addr()
            .map(|a| a.port())
            .map_err(|e| format!("reading a free port: {e}"))
    };
    Ok((port(&first)?, port(&second)?))
}

/// A minimal config: one cached route in front of the in-process origin.
fn config_text(listen: u16, admin: u16, origin: SocketAddr) -> String {
    format!(
        "[server]\n\
         listen = \"127.0.0.1:{listen}\"\n\
         admin_listen = \"127.0.0.1:{admin}\"\n\
         \n\
         [origin]\n\
         url = \"http://{origin}\"\n\
         \n\
         [[route]]\n\
         name = \"all\"\n\
         match = \"/\"\n\
         ttl = \"1h\"\n"
    )
}

/// Runs `corral check` once, outside the timed runs, so a config the binary
/// rejects fails with its own words rather than as a timeout.
fn check_config(corral: &Path, config: &Path) -> Result<(), Failure> {
    let output = Command::new(corral)
        .arg("check")
        .arg(config)
        .output()
        .map_err(|e| format!("running {} check: {e}", corral.display()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{} check {} failed ({}):\n{}{}",
        corral.display(),
        config.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    ))
}

/// One cold start: spawn, then ask until the first complete 200. The child
/// is killed and reaped before returning, whatever the outcome, so the next
/// run can bind the same ports.
fn one_run(corral: &Path, config: &Path, addr: SocketAddr) -> Result<Duration, Failure> {
    let started = Instant::now();
    let mut child = Command::new(corral)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", corral.display()))?;
    let outcome = first_answer(&mut child, addr, started);
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// Connects again at once after each refused connect (a refusal costs
/// microseconds, so a pause would only blur the figure) until `addr` answers
/// `GET /cold` with a complete 200, or [`RUN_LIMIT`] passes.
fn first_answer(
    child: &mut Child,
    addr: SocketAddr,
    started: Instant,
) -> Result<Duration, Failure> {
    let deadline = started + RUN_LIMIT;
    let mut last_error = String::from("no attempt");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "no complete 200 from {addr} within {RUN_LIMIT:?} of spawning corral (last error: {last_error})"
            ));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "corral exited ({status}) before answering; run it by hand with the same config to see why"
            ));
        }
        let stream = match TcpStream::connect_timeout(&addr, deadline - now) {
            Ok(stream) => stream,
            Err(error) => {
                last_error = format!("connect: {error}");
                // Not a pause: it lets corral's start-up have the core when
                // both processes share one.
                std::thread::yield_now();
                continue;
            }
        };
        match ask(stream, addr, deadline)? {
            Some(()) => return Ok(started.elapsed()),
            None => last_error = String::from("connection closed before a complete answer"),
        }
    }
}

/// Sends `GET /cold` and reads one answer. `Ok(None)`: the connection ended
/// early (worth another try while corral is starting); `Err`: an answer that
/// is not a 200, or the deadline passed.
fn ask(mut stream: TcpStream, addr: SocketAddr, deadline: Instant) -> Result<Option<()>, Failure> {
    let _ = stream.set_nodelay(true);
    // Keep-alive, not `Connection: close`: the client closes first once the
    // answer is complete, so the TIME_WAIT stays on the client's port and not
    // on the listener's, which the next run binds again.
    let request = format!("GET /cold HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: cold_start\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return Ok(None);
    }
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the answer from {addr} was not complete within {RUN_LIMIT:?}"
            ));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return Ok(None),
        }
        if complete(&buffer)? {
            return Ok(Some(()));
        }
    }
}

/// Whether `buffer` holds a whole 200 answer, framed by Content-Length or
/// chunked, since a miss may be streamed to its client either way.
fn complete(buffer: &[u8]) -> Result<bool, Failure> {
    let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(false);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        return Err(format!("GET /cold was answered `{status}`, not 200"));
    }
    let body = &buffer[head_end + 4..];
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value
                .parse()
                .map_err(|_| format!("bad Content-Length `{value}`"))?;
            return Ok(body.len() >= length);
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            return chunked_complete(body);
        }
    }
    Err(format!(
        "the 200 answer has neither Content-Length nor chunked framing:\n{head}"
    ))
}

/// Whether a chunked body has reached its last chunk and the empty line
/// after it (trailers are not expected from this origin).
fn chunked_complete(mut body: &[u8]) -> Result<bool, Failure> {
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return Ok(false);
        };
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size `{size_text}`"))?;
        let rest = &body[line_end + 2..];
        if size == 0 {
            return Ok(rest.starts_with(b"\r\n"));
        }
        if rest.len() < size + 2 {
            return Ok(false);
        }
        body = &rest[size + 2..];
    }
}

/// The median of sorted figures.
fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

/// The nearest-rank percentile of sorted figures: an observed value, never
/// an interpolation.
fn nearest_rank(sorted: &[Duration], quantile: f64) -> Duration {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration in milliseconds, for printing.
fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
