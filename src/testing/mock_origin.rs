//! An in-process HTTP origin for the demo, the integration tests and the
//! benchmarks. It counts every request it receives, and each path can be
//! scripted to answer, answer slowly, fail, hang, reset the connection, break
//! its body midway, or wait on a [`Gate`] the caller opens. It can also shed
//! load the way a rate-limited origin does: past a number of requests in
//! flight, it answers a fixed reply (a 429, say) at once ([`MockOrigin::shed_beyond`]).
//!
//! It can serve HTTPS too ([`MockOrigin::start_https`]), offering HTTP/2 in
//! ALPN or not, and records what each TLS client sent before any request:
//! the SNI name and the protocol negotiated ([`MockOrigin::tls_sessions`]),
//! and how many handshakes failed ([`MockOrigin::failed_handshakes`]).
//!
//! It binds `127.0.0.1:0`; nothing here is meant for production traffic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

type MockBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// What the origin does with one request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answers with this reply.
    Respond(Reply),
    /// Reads the request and never answers.
    Hang,
    /// Closes the connection without answering (the client sees a reset).
    Reset,
    /// Sends the reply's head with its full `Content-Length`, then only the
    /// first `sent` bytes of the body, then breaks the connection.
    Truncate {
        /// The reply whose body is cut short.
        reply: Reply,
        /// How many body bytes go out before the break.
        sent: usize,
    },
    /// Sends the reply's head and the first `sent` bytes of its body, then
    /// holds the rest until `gate` opens: a response stalled mid-body. The
    /// head declares the whole `Content-Length` when `declare_length` is
    /// set; otherwise the body is chunked and its size unknown up front.
    Stall {
        /// The reply whose body stalls.
        reply: Reply,
        /// How many body bytes go out before the stall.
        sent: usize,
        /// The gate the rest of the body waits on.
        gate: Gate,
        /// Whether the head carries the body's full `Content-Length`.
        declare_length: bool,
    },
    /// Waits until `gate` opens, then behaves as `then`.
    Gated {
        /// The gate the test or demo opens.
        gate: Gate,
        /// What happens once it is open.
        then: Box<Behaviour>,
    },
}

/// A scripted response.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Bytes,
    /// Time to wait before answering.
    pub delay: Duration,
}

impl Reply {
    /// A 200 with `body` and no delay.
    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// This reply with another status.
    pub fn status(mut self, status: StatusCode) -> Reply {
        self.status = status;
        self
    }

    /// This reply with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// This reply, sent after `delay`.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

impl Behaviour {
    /// Waits until `gate` opens, then behaves as `then`.
    pub fn gated(gate: &Gate, then: impl Into<Behaviour>) -> Behaviour {
        Behaviour::Gated {
            gate: gate.clone(),
            then: Box::new(then.into()),
        }
    }
}

impl From<Reply> for Behaviour {
    fn from(reply: Reply) -> Behaviour {
        Behaviour::Respond(reply)
    }
}

/// A latch that scripted requests wait on until it is opened. Opening is final.
#[derive(Clone, Debug)]
pub struct Gate {
    open: Arc<watch::Sender<bool>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate {
            open: Arc::new(watch::channel(false).0),
        }
    }

    /// Opens the gate: every request waiting on it, and every later one, proceeds.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    async fn wait(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
}

/// What a script sees of a request.
#[derive(Debug)]
pub struct Seen {
    /// Request method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Request headers as received.
    pub headers: HeaderMap,
    /// The HTTP version the request came in (`HTTP/2` or `HTTP/1.1`).
    pub version: Version,
    /// 1-based count of requests to this script so far, this one included.
    pub nth: u64,
}

type Script = Arc<dyn Fn(&Seen) -> Behaviour + Send + Sync>;

struct ScriptedPath {
    prefix: String,
    script: Script,
    hits: AtomicU64,
}

struct State {
    paths: Mutex<Vec<Arc<ScriptedPath>>>,
    hits: watch::Sender<u64>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Past how many admitted requests in flight new ones get the reply.
    shedding: Mutex<Option<(usize, Reply)>>,
    /// Requests admitted under `shedding` and not yet answered.
    admitted: AtomicUsize,
    /// Requests answered with the shedding reply.
    shed: AtomicU64,
    /// Client connections accepted and not yet closed.
    connections: AtomicUsize,
    /// One entry per completed TLS handshake, in order.
    tls_sessions: Mutex<Vec<TlsSession>>,
    /// TLS handshakes that failed (the client refused the certificate, say).
    failed_handshakes: watch::Sender<u64>,
}

/// What an HTTPS origin learnt from one client's TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSession {
    /// The server name the client sent (SNI), if any.
    pub sni: Option<String>,
    /// The protocol ALPN settled on (`h2`, `http/1.1`), if any.
    pub protocol: Option<String>,
}

/// Which protocols an HTTPS [`MockOrigin`] offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` and `http/1.1`, preferring `h2`.
    H2AndHttp11,
    /// `http/1.1` alone.
    Http11Only,
}

/// A running in-process origin. Stops accepting when dropped.
pub struct MockOrigin {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: JoinHandle<()>,
}

impl Drop for MockOrigin {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl MockOrigin {
    /// Starts an origin on `127.0.0.1:0` that answers 404 until scripted.
    ///
    /// # Errors
    /// The listener could not be bound.
    pub async fn start() -> std::io::Result<MockOrigin> {
        MockOrigin::bind(None).await
    }

    /// Starts an HTTPS origin on `127.0.0.1:0` presenting the PEM
    /// certificate chain `cert_pem` with the PEM private key `key_pem`, and
    /// offering `alpn`. It answers 404 until scripted, as [`start`](Self::start)'s.
    ///
    /// # Errors
    /// The listener could not be bound, or the certificate or key did not
    /// parse or match.
    pub async fn start_https(
        cert_pem: &str,
        key_pem: &str,
        alpn: Alpn,
    ) -> std::io::Result<MockOrigin> {
        let invalid = |error: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, error);
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| invalid(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| invalid(e.to_string()))?;
        config.alpn_protocols = match alpn {
            Alpn::H2AndHttp11 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Http11Only => vec![b"http/1.1".to_vec()],
        };
        MockOrigin::bind(Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn bind(tls: Option<TlsAcceptor>) -> std::io::Result<MockOrigin> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            paths: Mutex::new(Vec::new()),
            hits: watch::channel(0).0,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            shedding: Mutex::new(None),
            admitted: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            tls_sessions: Mutex::new(Vec::new()),
            failed_handshakes: watch::channel(0).0,
        });
        let acceptor = tokio::spawn(accept_loop(listener, Arc::clone(&state), tls));
        Ok(MockOrigin {
            addr,
            state,
            acceptor,
        })
    }

    /// The origin's base URL, `http://127.0.0.1:PORT` (for an HTTPS origin,
    /// see [`https_url`](Self::https_url)).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An HTTPS origin's base URL with `host` as its host name (one that
    /// resolves to loopback, such as `localhost`): `https://HOST:PORT`.
    pub fn https_url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.addr.port())
    }

    /// Every completed TLS handshake so far, in order: what each client sent
    /// as SNI and the protocol ALPN chose.
    pub fn tls_sessions(&self) -> Vec<TlsSession> {
        self.state
            .tls_sessions
            .lock()
            .map_or_else(|_| Vec::new(), |sessions| sessions.clone())
    }

    /// TLS handshakes that failed so far (no request can have come over them).
    pub fn failed_handshakes(&self) -> u64 {
        *self.state.failed_handshakes.borrow()
    }

    /// Waits until at least `count` TLS handshakes have failed in all.
    pub async fn wait_for_failed_handshakes(&self, count: u64) {
        let mut failed = self.state.failed_handshakes.subscribe();
        let _ = failed.wait_for(|failed| *failed >= count).await;
    }

    /// The origin's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Scripts every path starting with `prefix` (first registered match wins).
    pub fn on(&self, prefix: &str, script: impl Fn(&Seen) -> Behaviour + Send + Sync + 'static) {
        let scripted = Arc::new(ScriptedPath {
            prefix: prefix.to_owned(),
            script: Arc::new(script),
            hits: AtomicU64::new(0),
        });
        if let Ok(mut paths) = self.state.paths.lock() {
            paths.push(scripted);
        }
    }

    /// Scripts `prefix` to always behave as `behaviour`.
    pub fn always(&self, prefix: &str, behaviour: impl Into<Behaviour>) {
        let behaviour = behaviour.into();
        self.on(prefix, move |_| behaviour.clone());
    }

    /// Requests received so far, on every path.
    pub fn hits(&self) -> u64 {
        *self.state.hits.borrow()
    }

    /// Requests received so far by the script for `prefix`.
    pub fn hits_on(&self, prefix: &str) -> u64 {
        self.state.paths.lock().map_or(0, |paths| {
            paths
                .iter()
                .find(|p| p.prefix == prefix)
                .map_or(0, |p| p.hits.load(Ordering::SeqCst))
        })
    }

    /// Waits until at least `count` requests have been received in all.
    pub async fn wait_for_hits(&self, count: u64) {
        let mut hits = self.state.hits.subscribe();
        let _ = hits.wait_for(|hits| *hits >= count).await;
    }

    /// The most requests that were ever being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Sheds load as a rate-limited origin does: while `limit` requests are
    /// being answered, any further request gets `reply` (after its delay, if
    /// any) instead of its script. Shed requests count in [`hits`](Self::hits)
    /// and [`shed`](Self::shed), not in [`hits_on`](Self::hits_on) or
    /// [`max_in_flight`](Self::max_in_flight). Off until called.
    pub fn shed_beyond(&self, limit: usize, reply: Reply) {
        if let Ok(mut shedding) = self.state.shedding.lock() {
            *shedding = Some((limit, reply));
        }
    }

    /// Requests answered with the [`shed_beyond`](Self::shed_beyond) reply so far.
    pub fn shed(&self) -> u64 {
        self.state.shed.load(Ordering::SeqCst)
    }

    /// Client connections open right now (accepted and not yet closed).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, tls: Option<TlsAcceptor>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::enter(Arc::clone(&state));
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(&builder, stream, state).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => {
                        let (_, session) = stream.get_ref();
                        let seen = TlsSession {
                            sni: session.server_name().map(str::to_owned),
                            protocol: session
                                .alpn_protocol()
                                .map(|p| String::from_utf8_lossy(p).into_owned()),
                        };
                        if let Ok(mut sessions) = state.tls_sessions.lock() {
                            sessions.push(seen);
                        }
                        serve(&builder, stream, state).await;
                    }
                    Err(_refused) => state.failed_handshakes.send_modify(|n| *n += 1),
                },
            }
            drop(open);
        });
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection until it ends.
async fn serve<S>(builder: &auto::Builder<TokioExecutor>, stream: S, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { answer(&state, request).await }
    });
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Counts an accepted connection as open until dropped.
struct OpenConnection(Arc<State>);

impl OpenConnection {
    fn enter(state: Arc<State>) -> OpenConnection {
        state.connections.fetch_add(1, Ordering::SeqCst);
        OpenConnection(state)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Holds one of the places [`MockOrigin::shed_beyond`] allows, if there is one free.
struct Admitted<'a>(&'a State);

impl<'a> Admitted<'a> {
    fn enter(state: &'a State, limit: usize) -> Option<Admitted<'a>> {
        state
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |admitted| {
                (admitted < limit).then_some(admitted + 1)
            })
            .ok()
            .map(|_| Admitted(state))
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decrements the in-flight count however the request ends (even a hang that
/// is dropped at shutdown).
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> InFlight<'a> {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The error that makes hyper drop the connection without an answer.
#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted connection reset")
    }
}

impl std::error::Error for ResetConnection {}

async fn answer(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, ResetConnection> {
    let (parts, body) = request.into_parts();
    // Read the whole request body first, as a real origin would.
    let _ = body.collect().await;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let shedding = state.shedding.lock().ok().and_then(|s| s.clone());
    let _admitted = match shedding {
        Some((limit, reply)) => match Admitted::enter(state, limit) {
            Some(admitted) => Some(admitted),
            None => {
                state.shed.fetch_add(1, Ordering::SeqCst);
                state.hits.send_modify(|hits| *hits += 1);
                return perform(reply.into()).await;
            }
        },
        None => None,
    };
    let scripted = state
        .paths
        .lock()
        .ok()
        .and_then(|paths| paths.iter().find(|p| path.starts_with(&p.prefix)).cloned());
    let _in_flight = InFlight::enter(state);
    let behaviour = match &scripted {
        Some(scripted) => {
            let nth = scripted.hits.fetch_add(1, Ordering::SeqCst) + 1;
            let seen = Seen {
                method: parts.method,
                path,
                headers: parts.headers,
                version: parts.version,
                nth,
            };
            (scripted.script)(&seen)
        }
        None => Reply::ok("no script for this path\n")
            .status(StatusCode::NOT_FOUND)
            .into(),
    };
    state.hits.send_modify(|hits| *hits += 1);
    perform(behaviour).await
}

async fn perform(mut behaviour: Behaviour) -> Result<Response<MockBody>, ResetConnection> {
    loop {
        match behaviour {
            Behaviour::Gated { gate, then } => {
                gate.wait().await;
                behaviour = *then;
            }
            Behaviour::Respond(reply) => {
                tokio::time::sleep(reply.delay).await;
                let body = Full::new(reply.body.clone())
                    .map_err(|never: Infallible| match never {})
                    .boxed_unsync();
                return Ok(build(&reply, body));
            }
            Behaviour::Hang => std::future::pending::<()>().await,
            Behaviour::Stall {
                reply,
                sent,
                gate,
                declare_length,
            } => {
                tokio::time::sleep(reply.delay).await;
                let split = sent.min(reply.body.len());
                let (first, rest) = (reply.body.slice(..split), reply.body.slice(split..));
                let first = futures_util::stream::iter([Ok(Frame::data(first))]);
                let rest = futures_util::stream::once(async move {
                    gate.wait().await;
                    Ok(Frame::data(rest))
                });
                let frames = first.chain(rest);
                let mut response = build(&reply, StreamBody::new(frames).boxed_unsync());
                if declare_length {
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_LENGTH, reply.body.len().into());
                }
                return Ok(response);
            }
            Behaviour::Reset => return Err(ResetConnection),
            Behaviour::Truncate { reply, sent } => {
                tokio::time::sleep(reply.delay).await;
                let head = reply.body.slice(..sent.min(reply.body.len()));
                // Return Pending once between the partial body and the break:
                // hyper flushes what it holds whenever the body is not ready,
                // so the client sees a body that breaks after it began, not a
                // connection that never answered.
                let partial = futures_util::stream::iter([Ok(Frame::data(head))]);
                let break_off = futures_util::stream::once(async {
                    tokio::task::yield_now().await;
                    Err(std::io::Error::other("scripted body break"))
                });
                let frames = partial.chain(break_off);
                let mut response = build(&reply, StreamBody::new(frames).boxed_unsync());
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_LENGTH, reply.body.len().into());
                return Ok(response);
            }
        }
    }
}

fn build(reply: &Reply, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
