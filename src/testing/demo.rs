//! `corral demo`: the flash sale, on loopback, with nothing else installed.
//!
//! Starts an in-process origin that answers after 120 ms and refuses (429)
//! whatever it receives beyond 100 requests in flight, then fires the same
//! burst of concurrent GETs for one product twice: at the origin directly, and
//! through corral (a cold key, then a second wave on the now warm cache).
//!
//! Each burst opens every client connection first and waits until the server
//! has accepted them all; only then are all the requests released at once (one
//! watch channel every client waits on), and each latency runs from that
//! release to the end of the response body. So the figures measure the herd,
//! not connection setup, and no client of a cold wave arrives late enough to
//! find the key already cached.
//!
//! `corral demo --fleet N` ([`super::fleet_demo`]) reuses this machinery: the
//! origin, the burst (spread round-robin over several instances) and the
//! figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::Corral;
use crate::config::{Config, ConfigError};
use crate::testing::mock_origin::{MockOrigin, Reply};

/// The product every demo client asks for.
pub const DEMO_PATH: &str = "/api/products/42";

/// The product the fleet demo's second run asks for, so it starts cold.
pub const DEMO_PATH_FLEET: &str = "/api/products/43";

/// Open files the demo keeps for itself (listeners, the runtime, corral's
/// origin connection, stdio) on top of two per client.
const FD_RESERVE: u64 = 128;

/// Bound on opening one client connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on one request, from the release to the end of its response.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on waiting for the server to accept, or to close, a burst's connections.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response head a demo client reads.
const MAX_HEAD: usize = 64 * 1024;

/// Width of the longest histogram bar, in `#`.
const BAR_WIDTH: usize = 40;

/// Upper bounds of the histogram's buckets, in milliseconds (log-spaced,
/// 1-2-5); one more bucket holds everything slower.
const BUCKET_EDGES_MS: [u64; 13] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000,
];

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Concurrent clients in each burst.
    pub clients: usize,
    /// How long the origin takes to answer.
    pub origin_delay: Duration,
    /// How many requests the origin answers at once; it refuses any further
    /// one with a 429 straight away. 0: no limit.
    pub origin_limit: usize,
    /// Whether to draw a progress bar on the terminal.
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            clients: 800,
            origin_delay: Duration::from_millis(120),
            origin_limit: 100,
            progress: true,
        }
    }
}

/// Figures for one burst of concurrent requests.
#[derive(Debug, Clone, Default)]
pub struct WaveReport {
    /// Requests sent.
    pub sent: usize,
    /// Requests answered 200 with the product body.
    pub ok: usize,
    /// Requests that failed or got anything else.
    pub failed: usize,
    /// Requests answered 429 Too Many Requests.
    pub rejected: usize,
    /// Origin requests made during the burst.
    pub origin_requests: u64,
    /// Answers served from the cache (`Cache-Status: ...; hit`).
    pub hits: usize,
    /// Answers that were this burst's single origin fetch.
    pub misses: usize,
    /// Answers that waited on another request's fetch.
    pub coalesced: usize,
    /// Answers another instance fetched, found in the fleet's shared tier
    /// (`Cache-Status: ...; hit; ...; detail=fleet`); also counted in `hits`.
    pub fleet: usize,
    /// Median latency, from the release to the end of the response.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Slowest request.
    pub max: Duration,
    /// Every request's latency from the release, sorted (the histogram's data).
    pub latencies: Vec<Duration>,
}

/// Everything `corral demo` measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Clients per burst actually used (fewer than asked for when the
    /// open-file limit is too low).
    pub clients: usize,
    /// Things the reader should know about the run (a lowered client count,
    /// connections that could not be opened).
    pub notes: Vec<String>,
    /// The burst sent to the origin directly.
    pub direct: WaveReport,
    /// The burst sent through corral for the cold key.
    pub cold: WaveReport,
    /// The second burst through corral, on the now warm key.
    pub warm: WaveReport,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A loopback listener could not be bound.
    #[error("cannot bind a loopback listener: {0}")]
    Bind(#[from] std::io::Error),
    /// The generated configuration was refused (a bug).
    #[error("demo configuration refused: {0}")]
    Config(#[from] ConfigError),
    /// corral or its client could not be built.
    #[error("cannot start: {0}")]
    Start(String),
    /// The open-file limit leaves no room for even one client.
    #[error(
        "the open-file limit ({0}) is too low for the demo; raise it (ulimit -n 4096) and try again"
    )]
    FileLimit(u64),
}

/// Runs the three bursts (origin directly; through corral, cold then warm)
/// and returns their figures.
///
/// # Errors
/// [`DemoError`] when the loopback origin or proxy cannot start, or the
/// open-file limit leaves no room for a client.
pub async fn run(options: &DemoOptions) -> Result<DemoReport, DemoError> {
    if options.clients == 0 {
        return Err(DemoError::Start("--clients must be at least 1".into()));
    }
    let file_limit = open_file_limit();
    let (clients, fd_note) = clients_within(file_limit, options.clients);
    if clients == 0 {
        return Err(DemoError::FileLimit(file_limit.unwrap_or(0)));
    }
    let mut notes: Vec<String> = fd_note.into_iter().collect();

    let origin = start_origin(options).await?;
    let product = Arc::new(product(DEMO_PATH));
    let bar = progress_bar(options.progress, 3 * clients);

    // The story's first half: the burst hits the origin itself.
    bar.set_message("direct");
    let before = origin.hits();
    let (mut direct, trouble) = burst(
        &[origin.addr()],
        DEMO_PATH,
        clients,
        &product,
        &bar,
        &|| origin.connections(),
    )
    .await;
    direct.origin_requests = origin.hits() - before;
    notes.extend(trouble.map(|t| format!("origin directly: {t}")));
    // Give the descriptors back before the next burst opens its own.
    settle(|| origin.connections() == 0).await;

    // The second half: the same burst through corral.
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let admin = TcpListener::bind(("127.0.0.1", 0)).await?;
    let proxy_addr = listener.local_addr()?;
    let config = Config::for_origin(
        &origin.url(),
        proxy_addr,
        admin.local_addr()?,
        Duration::from_secs(60),
    )?;
    let corral = Corral::new(&config).map_err(|e| DemoError::Start(e.to_string()))?;
    let open = corral.proxy().metrics().connections_open.clone();
    let corral_connections = move || usize::try_from(open.get()).unwrap_or(0);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(corral.serve(listener, admin, async move {
        let _ = stopped.await;
    }));

    let mut waves = Vec::with_capacity(2);
    for wave in ["cold", "warm"] {
        bar.set_message(format!("{wave} wave"));
        let before = origin.hits();
        let (mut report, trouble) = burst(
            &[proxy_addr],
            DEMO_PATH,
            clients,
            &product,
            &bar,
            &corral_connections,
        )
        .await;
        report.origin_requests = origin.hits() - before;
        notes.extend(trouble.map(|t| format!("{wave} wave: {t}")));
        waves.push(report);
        settle(|| corral_connections() == 0).await;
    }
    bar.finish_and_clear();
    let _ = stop.send(());
    let _ = server.await;
    let warm = waves.pop().unwrap_or_default();
    let cold = waves.pop().unwrap_or_default();
    Ok(DemoReport {
        clients,
        notes,
        direct,
        cold,
        warm,
    })
}

/// The body the demo origin answers for `path` (a product JSON of about
/// 600 bytes whose id is the path's last segment).
pub(super) fn product(path: &str) -> String {
    let id = path.rsplit('/').next().unwrap_or_default();
    format!(
        "{{\"id\":{id},\"name\":\"Limited edition sneaker\",\"price\":129.0,\"stock\":800,\"pad\":\"{}\"}}",
        "x".repeat(512)
    )
}

/// Starts the demo origin: [`DEMO_PATH`] and [`DEMO_PATH_FLEET`] answer their
/// [`product`] after `options.origin_delay`; beyond `options.origin_limit`
/// requests in flight (if not 0) it answers 429 at once.
pub(super) async fn start_origin(options: &DemoOptions) -> std::io::Result<MockOrigin> {
    let origin = MockOrigin::start().await?;
    for path in [DEMO_PATH, DEMO_PATH_FLEET] {
        origin.always(
            path,
            Reply::ok(product(path))
                .header("content-type", "application/json")
                .delay(options.origin_delay),
        );
    }
    if options.origin_limit > 0 {
        origin.shed_beyond(
            options.origin_limit,
            Reply::ok("{\"error\":\"too many requests\"}")
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("content-type", "application/json")
                .header("retry-after", "1"),
        );
    }
    Ok(origin)
}

/// A progress bar over `responses` answers, or a hidden one.
pub(super) fn progress_bar(progress: bool, responses: usize) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(responses as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg:>10} [{bar:40}] {pos}/{len} responses")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The soft limit on open files, where the platform tells it without a
/// system call std lacks (Linux: `/proc/self/limits`); `None` when unknown or
/// unlimited.
pub(super) fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&limits)
}

/// The soft "Max open files" figure of a `/proc/self/limits` text.
fn parse_open_file_limit(limits: &str) -> Option<u64> {
    const FIELD: &str = "Max open files";
    let line = limits.lines().find(|line| line.starts_with(FIELD))?;
    line.get(FIELD.len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many clients fit under the open-file limit (each burst holds two
/// descriptors per client: its end and the server's), and why there are
/// fewer than `wanted`, if there are.
pub(super) fn clients_within(limit: Option<u64>, wanted: usize) -> (usize, Option<String>) {
    let Some(limit) = limit else {
        return (wanted, None);
    };
    let room = usize::try_from(limit.saturating_sub(FD_RESERVE) / 2).unwrap_or(usize::MAX);
    if room >= wanted {
        return (wanted, None);
    }
    let needed = 2 * wanted as u64 + FD_RESERVE;
    let note = format!(
        "the open-file limit is {limit} and {wanted} clients need about {needed} descriptors \
         (two per client, plus {FD_RESERVE}), so this run uses {room} clients; \
         raise it (ulimit -n {needed}) to run all {wanted}"
    );
    (room, Some(note))
}

/// Waits, boundedly, until `done` (a connection counter of the origin or of
/// corral, both in this process) holds: it checks again each time the
/// runtime has run the other tasks, the ones that move the counter, and
/// never sleeps.
pub(super) async fn settle(done: impl Fn() -> bool) -> bool {
    settle_within(SETTLE_TIMEOUT, done).await
}

/// [`settle`] with its own bound: whether `done` held within `bound`.
pub(super) async fn settle_within(bound: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::task::yield_now().await;
    }
    true
}

struct Outcome {
    /// From the release to the end of the response; `None` if never sent.
    latency: Option<Duration>,
    status: Option<u16>,
    ok: bool,
    cache_status: String,
}

impl Outcome {
    fn unsent() -> Outcome {
        Outcome {
            latency: None,
            status: None,
            ok: false,
            cache_status: String::new(),
        }
    }
}

/// Opens `clients` connections, spread round-robin over `targets` (client
/// `i` to `targets[i % targets.len()]`), waits until the servers have
/// accepted them all (`accepted` counts their open connections), then
/// releases one GET for `path` on each at once and gathers the figures. Also
/// returns what went wrong opening connections, if anything did; with no
/// target at all every client counts as failed.
pub(super) async fn burst(
    targets: &[SocketAddr],
    path: &str,
    clients: usize,
    product: &Arc<String>,
    bar: &ProgressBar,
    accepted: &dyn Fn() -> usize,
) -> (WaveReport, Option<String>) {
    if targets.is_empty() {
        let trouble = format!("no server to send {clients} requests to");
        return (summarise(clients, &[]), Some(trouble));
    }
    let requests: Vec<(SocketAddr, Arc<[u8]>)> = targets
        .iter()
        .map(|&target| {
            let request = format!(
                "GET {path} HTTP/1.1\r\nhost: {target}\r\nuser-agent: corral-demo\r\naccept: */*\r\nconnection: close\r\n\r\n"
            );
            (target, request.into_bytes().into())
        })
        .collect();
    let (release, released) = watch::channel::<Option<Instant>>(None);
    let (ready, mut connected) = mpsc::channel::<Result<(), String>>(clients);
    let mut tasks = Vec::with_capacity(clients);
    for (target, request) in requests.iter().cycle().take(clients) {
        let (target, request) = (*target, Arc::clone(request));
        let product = Arc::clone(product);
        let ready = ready.clone();
        let mut released = released.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        let _ = ready.send(Err(error.to_string())).await;
                        bar.inc(1);
                        return Outcome::unsent();
                    }
                    Err(_) => {
                        let _ = ready.send(Err("connect timed out".into())).await;
                        bar.inc(1);
                        return Outcome::unsent();
                    }
                };
            let _ = stream.set_nodelay(true);
            let _ = ready.send(Ok(())).await;
            drop(ready);
            // Every client waits here, connected, until all are.
            let start = released
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|start| *start)
                .unwrap_or_else(Instant::now);
            let outcome =
                match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, &request)).await {
                    Ok(Ok(answer)) => Outcome {
                        latency: Some(answer.done.duration_since(start)),
                        status: Some(answer.status),
                        ok: answer.status == 200 && answer.body == product.as_bytes(),
                        cache_status: answer.cache_status,
                    },
                    Ok(Err(_)) | Err(_) => Outcome {
                        latency: Some(start.elapsed()),
                        status: None,
                        ok: false,
                        cache_status: String::new(),
                    },
                };
            bar.inc(1);
            outcome
        }));
    }
    drop(ready);

    let mut opened = 0;
    let mut refused: Option<(usize, String)> = None;
    for _ in 0..clients {
        match connected.recv().await {
            Some(Ok(())) => opened += 1,
            Some(Err(error)) => {
                let (count, _) = refused.get_or_insert((0, error));
                *count += 1;
            }
            None => break,
        }
    }
    // Connected is not yet accepted: wait until the server holds them all, so
    // no request waits behind an accept once released.
    settle(|| accepted() >= opened).await;
    release.send_replace(Some(Instant::now()));

    let mut outcomes = Vec::with_capacity(clients);
    for task in tasks {
        if let Ok(outcome) = task.await {
            outcomes.push(outcome);
        }
    }
    let trouble = refused.map(|(count, error)| {
        format!(
            "{count} of {clients} connections could not be opened ({error}); they count as failed"
        )
    });
    (summarise(clients, &outcomes), trouble)
}

/// One response as a demo client read it.
struct Answer {
    status: u16,
    cache_status: String,
    body: Vec<u8>,
    /// When the last byte of the body arrived.
    done: Instant,
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Sends `request` and reads the HTTP/1.1 response (`Content-Length`,
/// chunked, or up to the close).
async fn exchange(mut stream: TcpStream, request: &[u8]) -> std::io::Result<Answer> {
    stream.write_all(request).await?;
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("response head too large"));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(invalid("connection closed before the response head"));
        }
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid("response head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("no status line"))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut cache_status = String::new();
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("cache-status") {
            cache_status = value.to_owned();
        }
    }
    let body = match (chunked, content_length) {
        (false, Some(length)) => {
            while buf.len() < head_end + length {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(invalid("connection closed mid-body"));
                }
            }
            buf[head_end..head_end + length].to_vec()
        }
        _ => {
            // The request said `connection: close`: the body ends with it.
            while stream.read_buf(&mut buf).await? != 0 {}
            let raw = &buf[head_end..];
            if chunked {
                dechunk(raw).ok_or_else(|| invalid("bad chunked body"))?
            } else {
                raw.to_vec()
            }
        }
    };
    Ok(Answer {
        status,
        cache_status,
        body,
        done: Instant::now(),
    })
}

/// Decodes a whole chunked body (trailers ignored).
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = size.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        raw = raw.get(line_end + 2..)?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

fn summarise(sent: usize, outcomes: &[Outcome]) -> WaveReport {
    let mut latencies: Vec<Duration> = outcomes.iter().filter_map(|o| o.latency).collect();
    latencies.sort_unstable();
    let ok = outcomes.iter().filter(|o| o.ok).count();
    let count = |needle: &str| {
        outcomes
            .iter()
            .filter(|o| o.cache_status.contains(needle))
            .count()
    };
    WaveReport {
        sent,
        ok,
        failed: sent.saturating_sub(ok),
        rejected: outcomes.iter().filter(|o| o.status == Some(429)).count(),
        origin_requests: 0,
        hits: count("; hit"),
        misses: outcomes
            .iter()
            .filter(|o| {
                o.cache_status.contains("fwd=miss") && !o.cache_status.contains("collapsed")
            })
            .count(),
        coalesced: count("collapsed"),
        fleet: count("detail=fleet"),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or_default(),
        latencies,
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `d` in milliseconds, one decimal: `165.0 ms`.
pub(super) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Renders the figures the way `corral demo` prints them.
pub fn render(
    options: &DemoOptions,
    report: &DemoReport,
    proxy_note: Option<SocketAddr>,
) -> String {
    let clients = report.clients;
    let mut out = String::new();
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out.push_str(&format!(
        "corral demo: {clients} clients ask for {DEMO_PATH} at once; the origin takes {} to answer",
        ms(options.origin_delay)
    ));
    if options.origin_limit > 0 {
        out.push_str(&format!(
            " and answers 429 beyond {} requests in flight",
            options.origin_limit
        ));
    }
    out.push_str(
        "\nall connections are opened first, then every request is released at once; \
         latency runs from the release\n",
    );
    if let Some(addr) = proxy_note {
        out.push_str(&format!("corral listened on {addr}\n"));
    }

    out.push_str("\nthe same burst, twice:\n");
    out.push_str(&format!(
        "{:<17}{:>6}{:>6}{:>17}{:>6}{:>10}{:>10}\n",
        "", "sent", "ok", "origin requests", "429s", "p50", "p99"
    ));
    for (name, wave) in [
        ("origin directly", &report.direct),
        ("through corral", &report.cold),
    ] {
        out.push_str(&format!(
            "{name:<17}{:>6}{:>6}{:>17}{:>6}{:>10}{:>10}\n",
            wave.sent,
            wave.ok,
            wave.origin_requests,
            wave.rejected,
            ms(wave.p50),
            ms(wave.p99)
        ));
    }

    let (direct, cold) = (&report.direct, &report.cold);
    out.push_str(&format!(
        "origin directly: {} of {} served, {} refused with 429; through corral: {} of {} served from {} origin request(s)\n",
        direct.ok, direct.sent, direct.rejected, cold.ok, cold.sent, cold.origin_requests
    ));

    out.push_str("\nthrough corral, wave by wave:\n");
    for (name, wave) in [
        ("wave 1 (cold key)", &report.cold),
        ("wave 2 (warm key)", &report.warm),
    ] {
        out.push_str(&format!(
            "{name}: sent {} requests, {} ok, {} failed | origin requests: {} | served: {} miss, {} coalesced, {} hit | latency p50 {}, p99 {}, max {}\n",
            wave.sent, wave.ok, wave.failed, wave.origin_requests, wave.misses, wave.coalesced, wave.hits,
            ms(wave.p50), ms(wave.p99), ms(wave.max)
        ));
    }

    for (name, wave) in [
        ("origin directly", &report.direct),
        ("through corral, wave 1 (cold key)", &report.cold),
    ] {
        out.push_str(&format!(
            "\nlatency, {name} ({} answers):\n",
            wave.latencies.len()
        ));
        out.push_str(&histogram(&wave.latencies));
    }

    let total_sent = report.cold.sent + report.warm.sent;
    let total_origin = report.cold.origin_requests + report.warm.origin_requests;
    out.push_str(&format!(
        "\ntotal through corral: {total_sent} requests sent, {total_origin} origin request(s) made\n"
    ));
    out
}

/// The label of histogram bucket `index`.
fn bucket_label(index: usize) -> String {
    match (
        index.checked_sub(1).and_then(|i| BUCKET_EDGES_MS.get(i)),
        BUCKET_EDGES_MS.get(index),
    ) {
        (None, Some(upper)) => format!("< {upper} ms"),
        (Some(lower), Some(upper)) => format!("{lower}-{upper} ms"),
        (Some(lower), None) => format!(">= {lower} ms"),
        (None, None) => String::new(),
    }
}

/// Counts per log-spaced bucket, from the first non-empty bucket to the last,
/// as (label, count).
fn buckets(latencies: &[Duration]) -> Vec<(String, usize)> {
    let mut counts = [0usize; BUCKET_EDGES_MS.len() + 1];
    for latency in latencies {
        let index = BUCKET_EDGES_MS
            .iter()
            .position(|&edge| *latency < Duration::from_millis(edge))
            .unwrap_or(BUCKET_EDGES_MS.len());
        counts[index] += 1;
    }
    let first = counts.iter().position(|&c| c > 0);
    let last = counts.iter().rposition(|&c| c > 0);
    let (Some(first), Some(last)) = (first, last) else {
        return Vec::new();
    };
    (first..=last)
        .map(|index| (bucket_label(index), counts[index]))
        .collect()
}

/// A plain-ASCII histogram: one line per bucket, bars of `#` scaled to the
/// widest.
fn histogram(latencies: &[Duration]) -> String {
    let rows = buckets(latencies);
    let widest = rows.iter().map(|(_, count)| *count).max().unwrap_or(0);
    if widest == 0 {
        return "  (no answers)\n".to_owned();
    }
    let mut out = String::new();
    for (label, count) in rows {
        let mut width = count * BAR_WIDTH / widest;
        if count > 0 {
            width = width.max(1);
        }
        out.push_str(&format!(
            "  {label:>13} |{:<BAR_WIDTH$} {count}\n",
            "#".repeat(width)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }

    #[test]
    fn histogram_spans_the_non_empty_buckets_and_scales_to_the_widest() {
        let mut samples = vec![Duration::from_micros(1_500); 10];
        samples.extend(std::iter::repeat_n(Duration::from_millis(150), 40));
        let rows = buckets(&samples);
        let labels: Vec<&str> = rows.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "1-2 ms",
                "2-5 ms",
                "5-10 ms",
                "10-20 ms",
                "20-50 ms",
                "50-100 ms",
                "100-200 ms"
            ]
        );
        let text = histogram(&samples);
        let bar = |line: &str| line.chars().filter(|&c| c == '#').count();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(bar(lines[0]), BAR_WIDTH / 4);
        assert_eq!(bar(lines[6]), BAR_WIDTH);
        assert!(lines[6].ends_with(" 40"));
        assert_eq!(bucket_label(0), "< 1 ms");
        assert_eq!(bucket_label(BUCKET_EDGES_MS.len()), ">= 10000 ms");
        assert_eq!(histogram(&[]), "  (no answers)\n");
    }

    #[test]
    fn clients_are_lowered_to_fit_the_open_file_limit() {
        assert_eq!(clients_within(None, 800), (800, None));
        assert_eq!(clients_within(Some(20_000), 800), (800, None));
        let (clients, note) = clients_within(Some(1024), 800);
        assert_eq!(clients, 448);
        assert!(note.is_some_and(|n| n.contains("1024") && n.contains("448")));
        assert_eq!(clients_within(Some(100), 800).0, 0);
    }

    #[test]
    fn open_file_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63457                63457                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_file_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_file_limit(unlimited), None);
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n").as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(dechunk(b"5\r\nhel"), None);
    }
}
