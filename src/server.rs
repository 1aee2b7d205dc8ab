//! Client-facing listeners: the accept loop, one task per connection, the
//! connection cap, the header, idle and head-size limits, and bounded graceful
//! shutdown. Knows nothing about caching: it hands each request to a handler.
//!
//! # Timeouts kept here rather than in hyper
//!
//! hyper's HTTP/1 `header_read_timeout` also runs while a keep-alive connection
//! waits for its next request (hyper PR #3828), so one setting cannot be both a
//! short bound on a slow request head and a longer idle timeout; hyper has no
//! idle timeout of its own (hyper issue #1628). So hyper's is switched off and
//! each connection task watches its own connection, as Envoy does:
//!
//! - **header timeout** (`header_read_timeout`): from accept for the first
//!   request, from the first byte of the next head for later ones, until the
//!   head is parsed. A slowloris client is dropped when it runs out, however
//!   steadily it trickles bytes.
//! - **idle timeout** (`idle_timeout`): from the end of the last response until
//!   the first byte of the next request (HTTP/2: until the next stream; pings do
//!   not count). The connection is then shut down gracefully (a plain close in
//!   HTTP/1, GOAWAY in HTTP/2) and dropped if that takes longer than the header
//!   timeout.
//!
//! Neither runs while a request is in progress (from its parsed head until its
//! response body has been handed to hyper).
//!
//! # TLS
//!
//! A listener given a [`TlsAcceptor`] speaks only TLS. The handshake runs in
//! the connection's own task (a slow client never holds up the accept loop),
//! bounded by the header timeout, since a client that has not finished its
//! handshake has not started its request either. A connection whose
//! handshake fails (a plaintext request to the TLS port, say) is closed after
//! rustls' alert, counted as `tls_handshake` and logged at debug. ALPN offers
//! `h2` and `http/1.1`; the HTTP version is then read off the connection's
//! first bytes, as on a plaintext listener, and every limit above applies
//! to the decrypted stream.
//!
//! # The quick path
//!
//! A listener given a quick answer (corral's proxy listener, unless
//! `server.quick_hits = false`) starts every connection, plaintext or TLS,
//! on a path of its own before hyper: it reads the head with httparse
//! (hyper's parser) and, when the head is *plain* (an origin-form GET or
//! HEAD over HTTP/1.1 without body framing, `Connection`, `Upgrade`,
//! `Expect`, `TE`, `Keep-Alive` or `Proxy-*` fields, at most 32 lines; see
//! [`PlainHead::read`]), offers it to the quick answer. The proxy answers
//! only fresh whole-response cache hits there, in bytes it encoded once per
//! entry and second: what hyper would have written, without hyper's
//! per-request work. Every other head, the first one declined, and
//! everything after it on the connection, go to hyper, which reads them
//! from the same bytes: the quick path never answers, refuses or closes on a
//! request it did not answer itself. Its limits are hyper's: the timeouts
//! above, run by the same watchdog (an answer the client has not taken
//! within the idle timeout gets one more header timeout, as under hyper's
//! graceful shutdown), and heads no longer than hyper's buffer.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::request::Parts;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;
use crate::http::wire::{Head, PlainHead, WireResponse};
use crate::metrics::{ClientLimit, ClientLimitCounters, Metrics};

/// Pause after an accept error (e.g. out of file descriptors) so the loop does
/// not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Shortest pause between two looks of a connection's watchdog.
const MIN_WATCH_PERIOD: Duration = Duration::from_millis(10);

/// hyper refuses an HTTP/1 read buffer smaller than this.
const MIN_HYPER_BUF_SIZE: usize = 8192;

/// Limits applied to every client connection.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Longest time to receive a complete request head: from accept for the
    /// first request, from its first byte for later ones.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes. hyper refuses HTTP/1 heads that overflow
    /// its read buffer (at least 8 KiB) with 431; the proxy's admission check
    /// refuses smaller ones over this limit, and HTTP/2 ones, the same way.
    pub max_header_size: usize,
    /// Most connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Longest wait for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Longest a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits `[server]` asks for.
    pub fn from_config(server: &ServerConfig) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: server.header_read_timeout,
            max_header_size: usize::try_from(server.max_header_size.as_u64()).unwrap_or(usize::MAX),
            max_connections: server.max_connections.max(1),
            shutdown_timeout: server.shutdown_timeout,
            idle_timeout: server.idle_timeout,
        }
    }
}

/// The metric handles a listener updates. The default is registered nowhere.
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    /// Connections being served now (not those waiting for a slot).
    pub connections_open: Gauge,
    /// Clients cut off by a limit enforced here: `header_timeout`,
    /// `header_size` (hyper's 431), `connections`, `idle`.
    pub limits: ClientLimitCounters,
}

impl ListenerMetrics {
    /// The handles in `metrics`, for the proxied-traffic listener.
    pub fn of(metrics: &Metrics) -> ListenerMetrics {
        ListenerMetrics {
            connections_open: metrics.connections_open.clone(),
            limits: metrics.client_limits.clone(),
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on `listener` until `shutdown`
/// resolves, then stops accepting, asks open connections to close once their
/// in-flight requests are done, and drops any still open after
/// `limits.shutdown_timeout`.
///
/// At most `limits.max_connections` connections are served at once. When all
/// slots are taken, the next accepted connection waits (counted as
/// `connections`) without being read until a slot frees, and the loop accepts
/// nothing more meanwhile, so later ones wait in the kernel's accept queue.
///
/// With `tls`, every connection must complete a TLS handshake first (see the
/// module docs); without it, the listener speaks plaintext HTTP.
///
/// `handler` is called once per request with the client's address. With
/// `quick`, HTTP/1 connections start on the quick path (see the module
/// docs): `quick` is offered each plain request head first, and `handler`
/// gets the requests it declines.
pub async fn serve<H, F, B, Q>(
    listener: TcpListener,
    limits: ConnectionLimits,
    metrics: ListenerMetrics,
    tls: Option<TlsAcceptor>,
    handler: H,
    quick: Option<Q>,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Q: QuickAnswer,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Kept per connection instead (see the module docs).
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_size.max(MIN_HYPER_BUF_SIZE))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let shared = Arc::new(Listener {
        http1_builder: builder.clone().http1_only(),
        builder,
        handler,
        quick,
        limits,
        counters: metrics.limits.clone(),
        tls,
    });
    let limits = &shared.limits;
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    'accept: loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                report_task_end(ended);
                continue;
            }
            () = &mut shutdown => break,
        };
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => {
                metrics.limits.count(ClientLimit::Connections);
                tracing::debug!(%client, max = limits.max_connections, "connection limit reached; waiting for a free slot");
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_closed) => break 'accept,
                    },
                    () = &mut shutdown => break 'accept,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::new(metrics.connections_open.clone(), permit);
        connections.spawn(serve_connection(
            Arc::clone(&shared),
            stream,
            client,
            stopped.clone(),
            open,
        ));
    }
    let address = listener.local_addr().ok();
    drop(listener);
    // Operators (and the shutdown test) learn here that new connections are refused.
    tracing::info!(address = ?address, open = connections.len(), "listener closed; draining open connections");
    let _ = stop.send(true);
    let drain = async {
        while let Some(ended) = connections.join_next().await {
            report_task_end(ended);
        }
    };
    if tokio::time::timeout(limits.shutdown_timeout, drain)
        .await
        .is_ok()
    {
        tracing::debug!("all connections drained");
    } else {
        tracing::warn!(timeout = ?limits.shutdown_timeout, open = connections.len(), "shutdown grace period ended; dropping the connections still open");
        connections.shutdown().await;
    }
}

/// Logs a connection task that panicked (a finished one needs nothing).
fn report_task_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        tracing::error!(%error, "connection task panicked");
    }
}

/// Holds a connection slot and the open-connections gauge for as long as the
/// connection task lives, however it ends (including abort at shutdown).
struct OpenConnection {
    gauge: Gauge,
    _slot: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(gauge: Gauge, slot: OwnedSemaphorePermit) -> OpenConnection {
        gauge.inc();
        OpenConnection { gauge, _slot: slot }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// What every connection task of one listener shares.
struct Listener<H, Q> {
    builder: auto::Builder<TokioExecutor>,
    /// `builder` for HTTP/1 alone: for a connection the quick path has
    /// already answered on, which must not turn into HTTP/2 halfway.
    http1_builder: auto::Builder<TokioExecutor>,
    handler: H,
    /// Offered every plain HTTP/1 head first, when set.
    quick: Option<Q>,
    limits: ConnectionLimits,
    counters: ClientLimitCounters,
    /// Present when the listener terminates TLS.
    tls: Option<TlsAcceptor>,
}

/// Serves one connection (after its TLS handshake, on a TLS listener) until
/// it ends, the server stops, or a timeout cuts it off.
async fn serve_connection<H, F, B, Q>(
    listener: Arc<Listener<H, Q>>,
    stream: TcpStream,
    client: SocketAddr,
    stopped: watch::Receiver<bool>,
    _open: OpenConnection,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Q: QuickAnswer,
{
    if listener.tls.is_none() {
        return serve_http(listener, stream, client, stopped).await;
    }
    // Boxed: laid out inline, the handshake and the TLS stream's state would
    // sit in every plaintext connection's task too (about 3 KiB each).
    Box::pin(serve_tls(listener, stream, client, stopped)).await;
}

/// Completes the TLS handshake (bounded by the header timeout), then serves
/// HTTP on the decrypted stream.
async fn serve_tls<H, F, B, Q>(
    listener: Arc<Listener<H, Q>>,
    stream: TcpStream,
    client: SocketAddr,
    mut stopped: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Q: QuickAnswer,
{
    let Some(acceptor) = &listener.tls else {
        return;
    };
    let timeout = listener.limits.header_read_timeout;
    let handshake = tokio::time::timeout(timeout, acceptor.accept(stream));
    let accepted = tokio::select! {
        accepted = handshake => accepted,
        _ = stopped.wait_for(|stop| *stop) => return,
    };
    match accepted {
        Ok(Ok(stream)) => serve_http(listener, stream, client, stopped).await,
        Ok(Err(error)) => {
            listener.counters.count(ClientLimit::TlsHandshake);
            tracing::debug!(%client, %error, "TLS handshake failed; connection closed");
        }
        Err(_elapsed) => {
            listener.counters.count(ClientLimit::TlsHandshake);
            tracing::debug!(%client, ?timeout, "TLS handshake not completed in time; connection closed");
        }
    }
}

/// Serves HTTP on one connection's (decrypted) stream until it ends, the
/// server stops, or a timeout cuts it off.
async fn serve_http<H, F, B, S, Q>(
    listener: Arc<Listener<H, Q>>,
    stream: S,
    client: SocketAddr,
    mut stopped: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Q: QuickAnswer,
{
    let activity = Arc::new(Activity::new());
    let mut stream = WatchedStream {
        stream,
        activity: Arc::clone(&activity),
        unread: None,
    };
    let mut answered_quickly = false;
    if let Some(quick) = &listener.quick {
        // Not boxed: its state and hyper's are never alive together, so
        // they share their room in the task, and a connection handed to
        // hyper leaves no freed block of the quick path's behind.
        let quickly = answer_plain_heads(
            quick,
            &mut stream,
            client,
            &listener.limits,
            &listener.counters,
            &mut stopped,
        );
        match quickly.await {
            QuickEnd::Closed => return,
            // Never an empty box: that would read as the client's EOF.
            QuickEnd::ToHyper { unread, answered } => {
                stream.unread = (!unread.is_empty()).then(|| Box::new(unread));
                answered_quickly = answered;
            }
        }
    }
    let io = TokioIo::new(stream);
    let service = {
        let activity = Arc::clone(&activity);
        let listener = Arc::clone(&listener);
        service_fn(move |request: Request<Incoming>| {
            let in_progress = RequestInProgress::start(Arc::clone(&activity), request.version());
            let response = (listener.handler)(request, client);
            // A map, not an async block: hyper boxes this future per
            // connection, and a block would hold the handler's future twice.
            futures_util::FutureExt::map(response, move |response| {
                Ok::<_, Infallible>(response.map(|body| WatchedBody {
                    body,
                    _in_progress: in_progress,
                }))
            })
        })
    };
    let Listener {
        builder,
        http1_builder,
        limits,
        counters,
        ..
    } = &*listener;
    let builder = if answered_quickly {
        http1_builder
    } else {
        builder
    };
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    let mut drop_at: Option<Instant> = None;
    loop {
        let watch = watch_connection(&mut stopped, &activity, limits, !closing, drop_at);
        tokio::pin!(watch);
        let watch = PolledWhenWoken::new(watch);
        tokio::select! {
            biased;
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    report_connection_error(&*error, client, counters);
                }
                return;
            }
            watched = watch => match watched {
                Watched::Stop => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                Watched::Expired(Expired::HeaderTimeout) => {
                    counters.count(ClientLimit::HeaderTimeout);
                    tracing::debug!(%client, timeout = ?limits.header_read_timeout, "request head not received in time; dropping the connection");
                    return;
                }
                Watched::Expired(Expired::Idle) => {
                    counters.count(ClientLimit::Idle);
                    tracing::debug!(%client, timeout = ?limits.idle_timeout, "closing idle connection");
                    if !closing {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    drop_at = Some(Instant::now() + limits.header_read_timeout);
                }
                Watched::DropNow => {
                    tracing::debug!(%client, "idle connection did not close in time; dropping it");
                    return;
                }
            },
        }
    }
}

/// Answers a plain HTTP/1.1 request head at once, in wire form, or
/// declines it (`None`) for the listener's handler. It must record nothing
/// for a head it declines: the handler then sees the same request.
pub trait QuickAnswer:
    Fn(&Parts, SocketAddr) -> Option<WireResponse> + Send + Sync + 'static
{
}

impl<T> QuickAnswer for T where
    T: Fn(&Parts, SocketAddr) -> Option<WireResponse> + Send + Sync + 'static
{
}

/// The `quick` of a listener without a quick path.
pub type NoQuickPath = fn(&Parts, SocketAddr) -> Option<WireResponse>;

/// Bytes the quick path asks the socket for when its buffer is empty: most
/// heads fit. Small on purpose: a connection the quick path hands to hyper
/// frees this buffer, and a small block is soon reused by the allocator,
/// where a large one would linger as a hole in every such connection's RSS.
const QUICK_FIRST_READ: usize = 512;

/// Bytes the quick path asks the socket for while a head is incomplete: it
/// grows the buffer, up to hyper's limit.
const QUICK_READ_SIZE: usize = 4096;

/// How the quick path left a connection.
enum QuickEnd {
    /// The connection is done: the client closed it, a timeout or an error
    /// cut it off, or it was closed after its last answer (stopping).
    Closed,
    /// A head the quick path does not answer: hyper serves the connection
    /// from here on, starting with `unread`; over HTTP/1 alone when the
    /// quick path `answered` a request on it already.
    ToHyper { unread: Bytes, answered: bool },
}

/// The quick path: answers plain heads with `quick` until one is declined
/// or is not plain, then hands the connection to hyper. The connection's
/// watchdog runs as it does under hyper: the header timeout from accept
/// (first head) or from a head's first byte, the idle timeout from the end
/// of the last response. When the server stops, or the idle timeout runs
/// out while an answer is being written, the connection is closed at once
/// if no head is in progress, else after that head's answer (a write gets
/// one more header timeout), as hyper's graceful shutdown does.
async fn answer_plain_heads<S, Q>(
    quick: &Q,
    io: &mut WatchedStream<S>,
    client: SocketAddr,
    limits: &ConnectionLimits,
    counters: &ClientLimitCounters,
    stopped: &mut watch::Receiver<bool>,
) -> QuickEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
    Q: QuickAnswer,
{
    let activity = Arc::clone(&io.activity);
    // Flags shared with `serving`, which runs on this same task: atomics
    // only because a task's future must be `Send`.
    let stopping = AtomicBool::new(false);
    let awaiting_head = AtomicBool::new(true);
    let max_head = limits.max_header_size.max(MIN_HYPER_BUF_SIZE);
    let serving = serve_plain_heads(quick, io, client, max_head, &stopping, &awaiting_head);
    tokio::pin!(serving);
    let mut drop_at: Option<Instant> = None;
    loop {
        let watch_stop = !stopping.load(Ordering::Relaxed);
        let watch = watch_connection(stopped, &activity, limits, watch_stop, drop_at);
        tokio::pin!(watch);
        let watch = PolledWhenWoken::new(watch);
        tokio::select! {
            biased;
            ended = serving.as_mut() => return ended,
            watched = watch => match watched {
                Watched::Stop if awaiting_head.load(Ordering::Relaxed) => return QuickEnd::Closed,
                Watched::Stop => stopping.store(true, Ordering::Relaxed),
                Watched::Expired(Expired::HeaderTimeout) => {
                    counters.count(ClientLimit::HeaderTimeout);
                    tracing::debug!(%client, timeout = ?limits.header_read_timeout, "request head not received in time; dropping the connection");
                    return QuickEnd::Closed;
                }
                Watched::Expired(Expired::Idle) => {
                    counters.count(ClientLimit::Idle);
                    tracing::debug!(%client, timeout = ?limits.idle_timeout, "closing idle connection");
                    if awaiting_head.load(Ordering::Relaxed) {
                        return QuickEnd::Closed;
                    }
                    // A response the client is slow to take: as hyper's
                    // graceful shutdown would, finish it (closing after it),
                    // within one more header timeout.
                    stopping.store(true, Ordering::Relaxed);
                    drop_at = Some(Instant::now() + limits.header_read_timeout);
                }
                Watched::DropNow => {
                    tracing::debug!(%client, "idle connection did not close in time; dropping it");
                    return QuickEnd::Closed;
                }
            },
        }
    }
}

/// Reads heads into one buffer and answers each plain one `quick` accepts,
/// in order (pipelined heads included), for [`answer_plain_heads`]. Heads
/// are never read past `max_head` bytes: hyper refuses a longer one.
/// `awaiting_head` says whether it is waiting for a head's first byte.
async fn serve_plain_heads<S, Q>(
    quick: &Q,
    io: &mut WatchedStream<S>,
    client: SocketAddr,
    max_head: usize,
    stopping: &AtomicBool,
    awaiting_head: &AtomicBool,
) -> QuickEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
    Q: QuickAnswer,
{
    let mut buf = BytesMut::new();
    // How far `buf` is known to hold no end of a head.
    let mut scanned = 0;
    let mut answered = false;
    loop {
        if !buf.is_empty() {
            match next_step(&mut buf, &mut scanned, max_head, quick, client) {
                Step::Answer(response) => {
                    answered = true;
                    // Done once handed to the socket, as hyper counts a
                    // response done once it has taken its body: the idle
                    // timeout then bounds the write (see `answer_plain_heads`),
                    // and the next head's header timeout starts after it.
                    let activity = &io.activity;
                    activity.request_started(Version::HTTP_11);
                    activity.request_done();
                    let written = write_response(io, response).await;
                    if let Err(error) = written {
                        tracing::debug!(%client, %error, "connection ended with an error");
                        return QuickEnd::Closed;
                    }
                    if stopping.load(Ordering::Relaxed) {
                        // The head in progress is answered; as hyper's
                        // graceful shutdown does, nothing after it is.
                        return QuickEnd::Closed;
                    }
                    if !buf.is_empty() {
                        // A pipelined head has begun: its header timeout runs.
                        io.activity.bytes_read();
                    }
                    continue;
                }
                Step::ToHyper(unread) => return QuickEnd::ToHyper { unread, answered },
                Step::ReadMore => {}
            }
        }
        if stopping.load(Ordering::Relaxed) && buf.is_empty() {
            return QuickEnd::Closed;
        }
        let room = max_head - buf.len();
        let want = if buf.is_empty() {
            QUICK_FIRST_READ
        } else {
            QUICK_READ_SIZE
        };
        buf.reserve(want.min(room));
        awaiting_head.store(buf.is_empty(), Ordering::Relaxed);
        let read = io.read_buf(&mut (&mut buf).limit(room)).await;
        awaiting_head.store(false, Ordering::Relaxed);
        match read {
            Ok(0) => return QuickEnd::Closed,
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%client, %error, "connection ended with an error");
                return QuickEnd::Closed;
            }
        }
    }
}

/// What the quick path does with the bytes it has read.
enum Step {
    /// Write this answer to the head it took off the buffer.
    Answer(WireResponse),
    /// Hand the connection to hyper, with these bytes unread.
    ToHyper(Bytes),
    /// Read more: the head is not complete yet.
    ReadMore,
}

/// Takes the next head off `buf` and answers it with `quick` when it can,
/// for [`serve_plain_heads`]. Synchronous, so the parsed head (half a KiB)
/// never has to be kept across an await in every connection's task.
fn next_step<Q: QuickAnswer>(
    buf: &mut BytesMut,
    scanned: &mut usize,
    max_head: usize,
    quick: &Q,
    client: SocketAddr,
) -> Step {
    let plain = match PlainHead::read_from(buf, scanned) {
        Head::Plain(plain) => plain,
        Head::Partial if buf.len() < max_head => return Step::ReadMore,
        Head::Partial | Head::Other => {
            return Step::ToHyper(std::mem::take(buf).freeze());
        }
    };
    let head = buf.split_to(plain.len).freeze();
    *scanned = 0;
    match plain.parts(&head).and_then(|parts| quick(&parts, client)) {
        Some(response) => Step::Answer(response),
        None => {
            let mut unread = BytesMut::with_capacity(head.len() + buf.len());
            unread.extend_from_slice(&head);
            unread.extend_from_slice(buf);
            buf.clear();
            Step::ToHyper(unread.freeze())
        }
    }
}

/// Writes `response`'s head and body, in as few writes as the socket takes.
async fn write_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    response: WireResponse,
) -> io::Result<()> {
    let WireResponse { mut head, mut body } = response;
    while !head.is_empty() || !body.is_empty() {
        let written = io
            .write_vectored(&[io::IoSlice::new(&head), io::IoSlice::new(&body)])
            .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = written.min(head.len());
        head.advance(from_head);
        body.advance(written - from_head);
    }
    io.flush().await
}

/// A connection's watchdog: resolves when the server stops (if
/// `watch_stop`), when a timeout runs out (until a graceful close has set
/// `drop_at`), or at `drop_at`.
async fn watch_connection(
    stopped: &mut watch::Receiver<bool>,
    activity: &Activity,
    limits: &ConnectionLimits,
    watch_stop: bool,
    drop_at: Option<Instant>,
) -> Watched {
    // One timer at a time: every connection's task keeps room for this.
    let timers = async {
        match drop_at {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                Watched::DropNow
            }
            None => Watched::Expired(activity.expired(limits).await),
        }
    };
    tokio::select! {
        biased;
        _ = stopped.wait_for(|stop| *stop), if watch_stop => Watched::Stop,
        watched = timers => watched,
    }
}

/// What a connection's watchdog saw.
enum Watched {
    /// The server is stopping.
    Stop,
    /// A timeout ran out.
    Expired(Expired),
    /// A connection shut down for idleness did not close in time.
    DropNow,
}

/// Polls its future only when that future asked to be woken (and once at
/// the start), whatever else woke the task. A connection's task is woken once
/// or twice per request by its socket; polling the watchdog's branches each
/// time (the shutdown signal's registration, the timer) cost about as much
/// as the rest of the connection's own bookkeeping.
struct PolledWhenWoken<F> {
    future: F,
    wake: Arc<WatchWake>,
    waker: Waker,
}

/// The waker [`PolledWhenWoken`] gives its future: it notes the wake-up and
/// passes it on to the task.
struct WatchWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WatchWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> PolledWhenWoken<F> {
    fn new(future: F) -> PolledWhenWoken<F> {
        let wake = Arc::new(WatchWake {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&wake));
        PolledWhenWoken {
            future,
            wake,
            waker,
        }
    }
}

impl<F: Future + Unpin> Future for PolledWhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Registered before the flag is read, so a wake-up landing between
        // the two still reaches this task.
        this.wake.task.register(cx.waker());
        if !this.wake.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut this.future).poll(&mut Context::from_waker(&this.waker))
    }
}

/// Counts hyper's refusal of an oversized head (it has already answered 431);
/// logs anything else at debug, since clients end connections in many ways.
fn report_connection_error(
    error: &(dyn std::error::Error + 'static),
    client: SocketAddr,
    counters: &ClientLimitCounters,
) {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(hyper_error) = current.downcast_ref::<hyper::Error>()
            && hyper_error.is_parse_too_large()
        {
            counters.count(ClientLimit::HeaderSize);
            tracing::debug!(%client, "request head too large; answered 431");
            return;
        }
        cause = current.source();
    }
    tracing::debug!(%client, %error, "connection ended with an error");
}

/// Which timeout ran out on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// A request head took longer than `header_read_timeout`.
    HeaderTimeout,
    /// No request came within `idle_timeout` of the last response.
    Idle,
}

/// What one connection is doing, as far as its timeouts care. Written by the
/// stream wrapper (bytes read), the service (request started) and the response
/// body wrapper (response done); read by the connection task's watchdog.
///
/// Writers never wake the watchdog: a request costs no wake-up and no timer
/// re-arm. The watchdog instead never sleeps past the point where a deadline
/// set after it looked could fall (see [`Activity::expired`]).
///
/// Atomics rather than a lock, because every request writes here three
/// times. Over HTTP/1 every writer runs on the connection's own task; over
/// HTTP/2 requests run on tasks of their own, so the count of requests in
/// progress is read-modify-written, and the moment the connection went quiet
/// is stored before the count that makes it matter drops to zero.
#[derive(Debug)]
struct Activity {
    /// When the connection was accepted; the moments below are kept as
    /// nanoseconds after it.
    accepted: Instant,
    /// Requests whose response has not been handed to hyper in full yet.
    in_progress: AtomicUsize,
    /// No request has started yet: the first head is timed from accept.
    fresh: AtomicBool,
    /// Reads are frames of any stream or pings, never the start of a head.
    http2: AtomicBool,
    /// When the connection last had nothing to do: accepted, or its last
    /// response done.
    quiet_since: AtomicU64,
    /// When the first byte of the next HTTP/1 head arrived, if it has
    /// ([`NOT_STARTED`] when not).
    head_started: AtomicU64,
}

/// [`Activity::head_started`] when no head is being read.
const NOT_STARTED: u64 = u64::MAX;

impl Activity {
    fn new() -> Activity {
        Activity {
            accepted: Instant::now(),
            in_progress: AtomicUsize::new(0),
            fresh: AtomicBool::new(true),
            http2: AtomicBool::new(false),
            quiet_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NOT_STARTED),
        }
    }

    /// `now` as stored: nanoseconds after accept (a connection would have
    /// to stay open for 584 years to overflow it).
    fn since_accept(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.accepted).as_nanos())
            .unwrap_or(NOT_STARTED - 1)
    }

    fn at(&self, stored: u64) -> Instant {
        self.accepted + Duration::from_nanos(stored)
    }

    /// Bytes arrived from the client.
    fn bytes_read(&self) {
        if self.in_progress.load(Ordering::Acquire) == 0
            && !self.fresh.load(Ordering::Relaxed)
            && !self.http2.load(Ordering::Relaxed)
            && self.head_started.load(Ordering::Relaxed) == NOT_STARTED
        {
            let now = self.since_accept(Instant::now());
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    /// hyper parsed a request head and called the service.
    fn request_started(&self, version: Version) {
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.fresh.store(false, Ordering::Relaxed);
        self.head_started.store(NOT_STARTED, Ordering::Relaxed);
        self.in_progress.fetch_add(1, Ordering::AcqRel);
    }

    /// hyper is done with a response body (sent, or the request abandoned).
    fn request_done(&self) {
        // Stored first, so whoever sees the count reach zero sees this too.
        // While other requests are still in progress it is overwritten by
        // the last of them before it can matter.
        self.quiet_since
            .store(self.since_accept(Instant::now()), Ordering::Relaxed);
        self.head_started.store(NOT_STARTED, Ordering::Relaxed);
        // Paired with `request_started` by `RequestInProgress`.
        self.in_progress.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the connection's current timeout runs out, if one is running.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Expired)> {
        if self.in_progress.load(Ordering::Acquire) > 0 {
            return None;
        }
        let quiet_since = self.at(self.quiet_since.load(Ordering::Relaxed));
        let head_started = self.head_started.load(Ordering::Relaxed);
        Some(if self.http2.load(Ordering::Relaxed) {
            (quiet_since + limits.idle_timeout, Expired::Idle)
        } else if self.fresh.load(Ordering::Relaxed) {
            (
                quiet_since + limits.header_read_timeout,
                Expired::HeaderTimeout,
            )
        } else if head_started != NOT_STARTED {
            (
                self.at(head_started) + limits.header_read_timeout,
                Expired::HeaderTimeout,
            )
        } else {
            (quiet_since + limits.idle_timeout, Expired::Idle)
        })
    }

    /// Resolves when a timeout has run out, never before its deadline and
    /// never after it. Cancel safe: it keeps no state of its own.
    ///
    /// Every deadline a writer can set starts from the moment it is set
    /// (`head_started`, `quiet_since`), so one set after the watchdog looked
    /// lies at least the shorter of the two timeouts later. Sleeping no
    /// longer than that before looking again therefore catches it on time,
    /// without any wake-up from the writers; a busy connection costs one
    /// look per that period.
    async fn expired(&self, limits: &ConnectionLimits) -> Expired {
        // A zero timeout must not make this loop spin; it is then caught
        // within MIN_WATCH_PERIOD instead.
        let period = limits
            .header_read_timeout
            .min(limits.idle_timeout)
            .max(MIN_WATCH_PERIOD);
        loop {
            let now = Instant::now();
            let look_again = now + period;
            let wake_at = match self.deadline(limits) {
                Some((at, expired)) if at <= now => return expired,
                Some((at, _)) => at.min(look_again),
                None => look_again,
            };
            tokio::time::sleep_until(wake_at).await;
        }
    }
}

/// Marks one request in progress from its parsed head until hyper drops its
/// response body.
struct RequestInProgress(Arc<Activity>);

impl RequestInProgress {
    fn start(activity: Arc<Activity>, version: Version) -> RequestInProgress {
        activity.request_started(version);
        RequestInProgress(activity)
    }
}

impl Drop for RequestInProgress {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A response body that keeps its request marked in progress while hyper
/// still holds it.
struct WatchedBody<B> {
    body: B,
    _in_progress: RequestInProgress,
}

impl<B: Body + Unpin> Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client's (decrypted) stream, reporting reads to the connection's
/// [`Activity`].
struct WatchedStream<S> {
    stream: S,
    activity: Arc<Activity>,
    /// Bytes the quick path read and left to hyper: read first (they were
    /// reported when they arrived). Boxed, and gone once read: a connection
    /// hyper serves keeps a pointer's worth of room for them.
    unread: Option<Box<Bytes>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(unread) = &mut this.unread {
            let taken = unread.len().min(buf.remaining());
            buf.put_slice(&unread.split_to(taken));
            if unread.is_empty() {
                this.unread = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
