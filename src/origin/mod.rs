//! The outbound side: one pooled HTTP client per origin, and everything that
//! protects the origin from corral and corral from the origin.
//!
//! Every request to the origin goes through [`OriginClient::fetch`] (cache
//! fills) or [`OriginClient::forward`] (passes), which apply, in order:
//!
//! 1. the **`Retry-After` gate** ([`RetryAfterGate`]): after a cache fill gets a
//!    429 or 503 with `Retry-After`, nothing is sent to the origin until it
//!    expires (a pass's answer concerns its one client and never closes it);
//! 2. the **circuit breaker** ([`Breaker`]): while it is open nothing is sent;
//!    half-open, exactly one probe is;
//! 3. the **concurrency limit** ([`ConcurrencyLimit`]): at most
//!    `max_concurrent` requests in flight, then a bounded queue, then shedding;
//! 4. **timeouts** ([`Timeouts`]): connect, first byte, whole response, and the
//!    request's overall deadline;
//! 5. **retries** for GET and HEAD only, on connect errors, resets, 502, 503
//!    and 504, with exponential backoff and full jitter ([`Backoff`]), within
//!    the deadline and the [`RetryBudget`].
//!
//! Refusals (gate, breaker, limit) are [`OriginError::Refused`] and carry how
//! long the client should wait; the proxy answers them with a stale entry when
//! it has one, else 503 with `Retry-After`.
//!
//! # TLS
//!
//! An `https://` origin is reached with rustls (the *ring* provider, see
//! [`crate::tls`]). Its certificate is verified against the system's roots
//! (rustls-platform-verifier, which reqwest uses), plus `ca_file`'s, or
//! against `ca_file`'s alone with `ca_only`; nothing turns verification off.
//! SNI and the name checked are the origin URL's host: a route that sends
//! the client's `Host` upstream changes the request, never the connection.
//! Such a request goes over HTTP/1.1 even to an origin that offers HTTP/2,
//! where `:authority` (the origin's host) and a different `Host` would
//! contradict each other (RFC 9113 §8.3.1). A refused certificate is
//! [`OriginError::Certificate`], never retried: trying again cannot fix it.
//!
//! Each origin ([`OriginSpec`]) gets its own client, pool and protections.
//!
//! This module never touches the cache or the flight map.

mod breaker;
mod limit;
mod retry;
mod window;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use rustls::pki_types::CertificateDer;
use tokio::time::Instant;

pub use breaker::{
    Admit, Breaker, BreakerPolicy, BreakerTicket, CircuitBreaker, CircuitState, Transition,
};
pub use limit::{ConcurrencyLimit, LimitGauges, LimitPermit, Shed};
pub use retry::{Backoff, RetryAfterGate, RetryBudget, parse_retry_after};

use crate::config::{Http2Mode, OriginConfig, PlacedProblem, origin_table};
use crate::metrics::{Metrics, OriginMetrics, ShedReason};
use crate::tls::{CertificateProblem, install_crypto_provider, load_certificates};

/// `Retry-After` given to a request shed by the concurrency limit.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Which time limit an origin request ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLimit {
    /// No connection within `connect_timeout`.
    Connect,
    /// No response head within `first_byte_timeout`.
    FirstByte,
    /// The whole response (a fill) took longer than `timeout`, or a streamed
    /// one fell silent for that long.
    Response,
    /// The request's overall `request_timeout` ran out (queueing, retries and
    /// backoff included).
    Deadline,
}

impl TimeLimit {
    /// Stable label for metrics and `Cache-Status`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeLimit::Connect => "connect_timeout",
            TimeLimit::FirstByte => "first_byte_timeout",
            TimeLimit::Response => "timeout",
            TimeLimit::Deadline => "deadline",
        }
    }
}

impl std::fmt::Display for TimeLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why corral did not send a request to the origin at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The circuit breaker is open (or half-open with its probe out).
    CircuitOpen,
    /// The origin asked for a pause with `Retry-After` that has not expired.
    RetryAfter,
    /// Every concurrency slot was busy and the queue was full.
    QueueFull,
    /// The request waited in the queue too long.
    QueueTimeout,
}

impl Refusal {
    /// Every refusal, in label order.
    pub const ALL: [Refusal; 4] = [
        Refusal::CircuitOpen,
        Refusal::RetryAfter,
        Refusal::QueueFull,
        Refusal::QueueTimeout,
    ];

    /// Stable label for metrics and `Cache-Status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::CircuitOpen => "circuit_open",
            Refusal::RetryAfter => "retry_after",
            Refusal::QueueFull => "queue_full",
            Refusal::QueueTimeout => "queue_timeout",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Refusal> for ShedReason {
    fn from(refusal: Refusal) -> ShedReason {
        match refusal {
            Refusal::CircuitOpen => ShedReason::CircuitOpen,
            Refusal::RetryAfter => ShedReason::RetryAfter,
            Refusal::QueueFull => ShedReason::QueueFull,
            Refusal::QueueTimeout => ShedReason::QueueTimeout,
        }
    }
}

impl From<Shed> for Refusal {
    fn from(shed: Shed) -> Refusal {
        match shed {
            Shed::QueueFull => Refusal::QueueFull,
            Shed::QueueTimeout => Refusal::QueueTimeout,
        }
    }
}

/// Why the origin gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// No connection could be made (refused, unreachable).
    #[error("cannot connect to origin: {0}")]
    Connect(#[source] reqwest::Error),
    /// A time limit ran out.
    #[error("origin timed out ({limit} of {after:?})")]
    TimedOut {
        /// The limit that ran out.
        limit: TimeLimit,
        /// Its length.
        after: Duration,
    },
    /// The connection broke before a complete response head arrived.
    #[error("origin request failed: {0}")]
    Request(#[source] reqwest::Error),
    /// The response head arrived but its body broke off midway.
    #[error("origin body broke off: {0}")]
    Body(#[source] reqwest::Error),
    /// The origin answered something that is not an HTTP response (a bad
    /// status line, malformed header fields). Not a transport blip: never
    /// retried.
    #[error("origin sent an invalid response: {0}")]
    InvalidResponse(#[source] reqwest::Error),
    /// The origin's TLS certificate was refused: nothing was sent to it.
    /// Never retried, and never taken for a disconnection (a stale entry is
    /// served only under stale-if-error).
    #[error("origin certificate refused ({problem}): {source}")]
    Certificate {
        /// What the verifier found wrong.
        problem: CertificateProblem,
        /// The failed request, carrying rustls' error.
        source: reqwest::Error,
    },
    /// The origin's response head is larger than
    /// `origin.max_response_header_size`: never relayed, stored or retried.
    #[error("origin response head of about {size} bytes exceeds the limit of {limit}")]
    ResponseHeadTooLarge {
        /// Bytes in the status line and header fields.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The request was not sent: the origin is being protected.
    #[error("origin not contacted ({reason}); retry after {retry_after:?}")]
    Refused {
        /// Which protection refused it.
        reason: Refusal,
        /// How long until a request may succeed.
        retry_after: Duration,
    },
}

impl OriginError {
    /// Whether the failure was the origin being too slow (maps to 504).
    pub fn is_timeout(&self) -> bool {
        matches!(self, OriginError::TimedOut { .. })
    }

    /// Whether corral could not reach the origin, or lost it before a whole
    /// answer: no connection, a reset, a time limit (RFC 9111 §4.2.4's
    /// "disconnected"). An answer that is not HTTP, or too large a head, is
    /// the origin answering badly, not a disconnection.
    pub fn is_disconnection(&self) -> bool {
        matches!(
            self,
            OriginError::Connect(_)
                | OriginError::Request(_)
                | OriginError::TimedOut { .. }
                | OriginError::Body(_)
        )
    }

    /// Whether the request was never sent because the origin is protected
    /// (maps to 503 with `Retry-After`, or to a stale entry).
    pub fn is_refusal(&self) -> bool {
        matches!(self, OriginError::Refused { .. })
    }

    /// How long a client should wait before trying again, for refusals.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OriginError::Refused { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Bounded metric label for the failure's kind.
    pub fn label(&self) -> &'static str {
        match self {
            OriginError::Connect(_) => "connect_error",
            OriginError::TimedOut { limit, .. } => limit.as_str(),
            OriginError::Request(_) => "request_error",
            OriginError::Body(_) => "body_error",
            OriginError::InvalidResponse(_) => "invalid_response",
            OriginError::Certificate { problem, .. } => problem.as_str(),
            OriginError::ResponseHeadTooLarge { .. } => "head_too_large",
            OriginError::Refused { reason, .. } => reason.as_str(),
        }
    }
}

/// Limits that replace the origin's own for some requests (a route's), each
/// `None` where the origin's applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeoutOverrides {
    /// Replaces [`Timeouts::connect`].
    pub connect: Option<Duration>,
    /// Replaces [`Timeouts::first_byte`].
    pub first_byte: Option<Duration>,
    /// Replaces [`Timeouts::response`].
    pub response: Option<Duration>,
    /// Replaces [`Timeouts::request`].
    pub request: Option<Duration>,
}

/// The time limits one request to the origin runs under: the origin's, with
/// the route's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a TCP connection.
    pub connect: Duration,
    /// From sending the request to the response head.
    pub first_byte: Duration,
    /// A cache fill's whole response, body included; for a streamed (passed)
    /// response, the longest silence between body chunks.
    pub response: Duration,
    /// Everything corral does for the request at the origin: queueing, every
    /// attempt and every backoff. Counted from the first call to the origin
    /// for this request; a passed response's streamed body is not bounded.
    pub request: Duration,
}

impl Timeouts {
    /// The origin's own limits.
    pub fn from_config(config: &OriginConfig) -> Timeouts {
        Timeouts {
            connect: config.connect_timeout,
            first_byte: config.first_byte_timeout,
            response: config.timeout,
            request: config.request_timeout,
        }
    }

    /// These limits with `overrides` applied (a route's, say).
    pub fn overridden_by(self, overrides: &TimeoutOverrides) -> Timeouts {
        Timeouts {
            connect: overrides.connect.unwrap_or(self.connect),
            first_byte: overrides.first_byte.unwrap_or(self.first_byte),
            response: overrides.response.unwrap_or(self.response),
            request: overrides.request.unwrap_or(self.request),
        }
    }
}

/// A response head from the origin. Holds the request's concurrency slot
/// until its body has been read to the end or the response is dropped
/// (converted with `From` into an `http::Response`, the body keeps holding it).
#[derive(Debug)]
pub struct OriginResponse {
    response: reqwest::Response,
    /// `None` only for an earlier attempt's answer returned after a retry was
    /// refused: its slot was given back before the backoff.
    permit: Option<LimitPermit>,
    /// What a timeout while reading the body is reported as.
    body_limit: (TimeLimit, Duration),
}

impl OriginResponse {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// The response headers, to edit before relaying or storing.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        self.response.headers_mut()
    }

    /// The body length the origin declared, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// Reads the next chunk of the body; `None` at a clean end.
    ///
    /// # Errors
    /// [`OriginError::TimedOut`] past the response's time limit,
    /// [`OriginError::Body`] when the body breaks off (a truncated body is
    /// never reported as complete).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, OriginError> {
        let body_limit = self.body_limit;
        self.response.chunk().await.map_err(|error| {
            if error.is_timeout() {
                OriginError::TimedOut {
                    limit: body_limit.0,
                    after: body_limit.1,
                }
            } else {
                OriginError::Body(error)
            }
        })
    }
}

impl From<OriginResponse> for http::Response<reqwest::Body> {
    /// Turns the answer into a relayed (streamed) response. Its concurrency
    /// slot is given back here, when the head has arrived: the body then flows
    /// at the pace of the client that reads it, and a client that stops
    /// reading must not hold a slot every cache fill needs. (A fill keeps its
    /// slot until its body is read: corral itself reads that body, within the
    /// response timeout.)
    fn from(origin: OriginResponse) -> http::Response<reqwest::Body> {
        drop(origin.permit);
        origin.response.into()
    }
}

/// A pooled, keep-alive client bound to one origin base URL, with its
/// protections. Cheap to clone; clones share the pool, the breaker, the
/// budget, the gate and the concurrency limit.
///
/// Redirects are returned to the caller, never followed; no proxy environment
/// variables are honoured; no default headers are added, so what the client
/// sent (minus hop-by-hop headers) is what the origin sees.
#[derive(Clone, Debug)]
pub struct OriginClient {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// What this client was built from.
    spec: OriginSpec,
    base: String,
    /// The origin's label in metrics and logs (see [`OriginSpec::label`]).
    label: String,
    defaults: Timeouts,
    /// The client for the origin's own connect and read timeouts.
    client: reqwest::Client,
    /// Clients for routes that override them, and for requests that must go
    /// over HTTP/1.1, built on first use and keyed by [`ClientKey`]. Few: one
    /// per distinct override in the config, times two at most.
    route_clients: Mutex<Vec<(ClientKey, reqwest::Client)>>,
    retries: u32,
    backoff: Backoff,
    budget: Mutex<RetryBudget>,
    max_retry_after: Duration,
    gate: RetryAfterGate,
    breaker: Arc<Breaker>,
    limit: ConcurrencyLimit,
    metrics: OriginMetrics,
    /// `origin.max_response_header_size`, in bytes.
    max_response_head: u64,
    /// Whether ALPN may pick HTTP/2 on this origin's connections.
    h2_possible: bool,
}

/// What tells one of an origin's reqwest clients from another: the connect
/// and read limits it was built with, and whether it offers only HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientKey {
    connect: Duration,
    read: Duration,
    http1_only: bool,
}

/// Everything one origin's client is built from: its settings, the label it
/// carries in metrics and logs, and the CA certificates its `ca_file` held
/// when it was read. Equal specs build equivalent clients, so a reload that
/// leaves an origin unchanged (its file's content included) keeps the
/// running client, with its pool, breaker and budget.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginSpec {
    label: String,
    config: OriginConfig,
    ca: Vec<CertificateDer<'static>>,
}

impl OriginSpec {
    /// The spec of the origin named `name` (`None`: the default `[origin]`)
    /// configured by `config`, reading its `ca_file`. Its label is the name,
    /// or, for the default origin, the URL's authority (the label it has
    /// always had).
    ///
    /// # Errors
    /// `ca_file` is unreadable or holds no PEM certificate; the problem is
    /// placed at the `ca_file` setting.
    pub fn load(name: Option<&str>, config: &OriginConfig) -> Result<OriginSpec, PlacedProblem> {
        let ca = match &config.ca_file {
            None => Vec::new(),
            Some(path) => load_certificates(path.get_ref()).map_err(|error| {
                (
                    path.span(),
                    format!(
                        "{}.ca_file {}: {error}",
                        origin_table(name),
                        path.get_ref().display()
                    ),
                )
            })?,
        };
        let label = match name {
            Some(name) => name.to_owned(),
            None => config
                .authority()
                .map_or_else(|| config.url.get_ref().clone(), |a| a.as_str().to_owned()),
        };
        Ok(OriginSpec {
            label,
            config: config.clone(),
            ca,
        })
    }

    /// The origin's label in metrics (`origin="…"`) and logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The settings it was built from.
    pub fn config(&self) -> &OriginConfig {
        &self.config
    }
}

/// One request to send, perhaps several times.
struct Exchange {
    method: Method,
    url: String,
    headers: HeaderMap,
    /// The body for a request that cannot be retried; taken by its one attempt.
    body: Option<reqwest::Body>,
    /// The whole body of a request that may be retried (GET or HEAD with a
    /// body known up front, usually empty). Each attempt resends it.
    replay: Option<Bytes>,
    /// A shared cache fill, or one client's pass.
    kind: ExchangeKind,
}

/// What an exchange is for, which decides how much its answer may govern.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ExchangeKind {
    /// A cache fill: a shared, credential-free GET whose whole response,
    /// body included, must arrive within the response limit, and whose
    /// answers speak for the origin as a whole.
    Fill,
    /// One client's request: only each body chunk is time-limited, and its
    /// answers (a login's 429, a 5xx the client provoked) concern that client.
    Pass,
}

impl ExchangeKind {
    /// Whether the body must arrive whole within the response limit.
    fn whole_response(self) -> bool {
        self == ExchangeKind::Fill
    }

    /// Whether an HTTP error answer (5xx, `Retry-After`) may govern traffic
    /// from every client: the breaker's failure count and the origin pause.
    fn speaks_for_origin(self) -> bool {
        self == ExchangeKind::Fill
    }
}

impl Exchange {
    fn new(
        method: Method,
        url: String,
        headers: HeaderMap,
        body: reqwest::Body,
        kind: ExchangeKind,
    ) -> Exchange {
        let idempotent = method == Method::GET || method == Method::HEAD;
        let replay = idempotent
            .then(|| body.as_bytes().map(Bytes::copy_from_slice))
            .flatten();
        let body = replay.is_none().then_some(body);
        Exchange {
            method,
            url,
            headers,
            body,
            replay,
            kind,
        }
    }

    fn retryable(&self) -> bool {
        self.replay.is_some()
    }
}

/// What the gate, the breaker and the limit granted one attempt.
struct Admitted {
    ticket: BreakerTicket,
    permit: LimitPermit,
}

/// What one attempt's answer means for the breaker and for retrying.
struct Verdict {
    /// `Some(true)` healthy, `Some(false)` failing, `None` says nothing about
    /// the origin (the request's own deadline ran out).
    healthy: Option<bool>,
    /// A GET or HEAD may be sent again after this answer.
    retryable: bool,
    /// The origin asked for a pause (`Retry-After` on a 429 or 503).
    pause: Option<Duration>,
}

impl OriginClient {
    /// Builds the client and its protections from `spec`, registering their
    /// metrics in `metrics` under the spec's label.
    ///
    /// # Errors
    /// The TLS backend could not be initialised: for an HTTPS origin that
    /// trusts the system's roots, the system has none.
    pub fn new(spec: OriginSpec, metrics: &Metrics) -> Result<OriginClient, reqwest::Error> {
        let config = spec.config();
        let defaults = Timeouts::from_config(config);
        let h2_possible = config.is_https() && config.http2 == Http2Mode::Auto;
        let client = build_client(
            &spec,
            ClientKey {
                connect: defaults.connect,
                read: defaults.response,
                http1_only: !h2_possible,
            },
        )?;
        let base = config.url.get_ref().trim_end_matches('/').to_owned();
        let label = spec.label().to_owned();
        let metrics = metrics.origin(&label);
        let now = Instant::now();
        let breaker = Breaker::new(
            label.clone(),
            BreakerPolicy {
                failure_rate: config.breaker_failure_rate,
                min_requests: config.breaker_min_requests,
                window: config.breaker_window,
                open_for: config.breaker_open_for,
            },
            metrics.circuit_state.clone(),
        );
        let limit = ConcurrencyLimit::new(
            config.max_concurrent,
            config.queue_depth,
            config.queue_timeout,
            LimitGauges {
                in_flight: metrics.in_flight.clone(),
                queued: metrics.queue_depth.clone(),
                queue_wait: metrics.queue_wait.clone(),
            },
        );
        Ok(OriginClient {
            shared: Arc::new(Shared {
                base,
                label,
                defaults,
                client,
                route_clients: Mutex::new(Vec::new()),
                retries: config.retries,
                backoff: Backoff::new(config.retry_backoff, config.retry_backoff_max),
                budget: Mutex::new(RetryBudget::new(
                    config.retry_budget,
                    config.retry_budget_window,
                    now,
                )),
                max_retry_after: config.max_retry_after,
                gate: RetryAfterGate::new(),
                breaker: Arc::new(breaker),
                limit,
                metrics,
                max_response_head: config.max_response_header_size.as_u64(),
                h2_possible,
                spec,
            }),
        })
    }

    /// What this client was built from.
    pub fn spec(&self) -> &OriginSpec {
        &self.shared.spec
    }

    /// The circuit breaker's state now.
    pub fn circuit_state(&self) -> CircuitState {
        self.shared.breaker.state()
    }

    /// Requests holding a concurrency slot now.
    pub fn in_flight(&self) -> usize {
        self.shared.limit.in_flight()
    }

    /// Requests waiting for a concurrency slot now.
    pub fn queued(&self) -> usize {
        self.shared.limit.queued()
    }

    /// The time limits for a request: the origin's, with `overrides` (a
    /// route's) applied when given.
    pub fn timeouts(&self, overrides: Option<&TimeoutOverrides>) -> Timeouts {
        match overrides {
            Some(overrides) => self.shared.defaults.overridden_by(overrides),
            None => self.shared.defaults,
        }
    }

    /// Sends a cache-fill GET, retrying as configured. The whole exchange,
    /// body included, must finish within the response limit; read the body
    /// with [`read_chunk`](Self::read_chunk).
    ///
    /// # Errors
    /// [`OriginError`] when no usable response head arrived (an origin error
    /// status is a response, not an error), or the request was refused.
    pub async fn fetch(
        &self,
        path_and_query: &str,
        headers: HeaderMap,
        timeouts: Timeouts,
    ) -> Result<OriginResponse, OriginError> {
        let url = format!("{}{}", self.shared.base, path_and_query);
        let exchange = Exchange::new(
            Method::GET,
            url,
            headers,
            Bytes::new().into(),
            ExchangeKind::Fill,
        );
        self.exchange(exchange, timeouts).await
    }

    /// Forwards a request. No total deadline applies to the body, only the
    /// connect and first-byte limits and the longest silence between reads,
    /// so large uploads and downloads are not cut short. Only a GET or HEAD
    /// whose body is known up front (`reqwest::Body::from(bytes)`) is retried.
    ///
    /// # Errors
    /// [`OriginError`] when no response head arrives, or the request was refused.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: reqwest::Body,
        timeouts: Timeouts,
    ) -> Result<OriginResponse, OriginError> {
        let url = format!("{}{}", self.shared.base, path_and_query);
        let exchange = Exchange::new(method, url, headers, body, ExchangeKind::Pass);
        self.exchange(exchange, timeouts).await
    }

    /// Reads the next chunk of a fill's body; `None` at a clean end.
    ///
    /// # Errors
    /// See [`OriginResponse::chunk`].
    pub async fn read_chunk(
        &self,
        response: &mut OriginResponse,
    ) -> Result<Option<Bytes>, OriginError> {
        response.chunk().await
    }

    /// Sends `exchange` through the gate, the breaker and the limit, and again
    /// while the answer is retryable and the retries, the deadline and the
    /// budget allow.
    async fn exchange(
        &self,
        mut exchange: Exchange,
        timeouts: Timeouts,
    ) -> Result<OriginResponse, OriginError> {
        let shared = &self.shared;
        let deadline = Instant::now() + timeouts.request;
        // A request that names its own Host goes over HTTP/1.1 (module docs).
        let http1_only = exchange.headers.contains_key(header::HOST);
        let client = self.client_for(&timeouts, http1_only);
        // The last attempt's answer, kept while backing off in case the next
        // attempt is refused: the client then gets what the origin said.
        let mut previous: Option<Result<OriginResponse, OriginError>> = None;
        let mut attempt: u32 = 0;
        loop {
            let admitted = match self.admit(deadline).await {
                Ok(admitted) => admitted,
                Err(refused) => {
                    return previous.unwrap_or_else(|| {
                        if let OriginError::Refused { reason, .. } = &refused {
                            shared.metrics.shed((*reason).into());
                        }
                        Err(refused)
                    });
                }
            };
            drop(previous.take());
            if attempt == 0 {
                lock(&shared.budget).record_request(Instant::now());
            }
            let answer = self
                .attempt(&client, &mut exchange, &timeouts, deadline)
                .await;
            let verdict = judge(&answer);
            // A pass's 5xx may be provoked by its client; only a failure to
            // get any answer, or a success, speaks for the origin as a whole.
            let healthy = if exchange.kind.speaks_for_origin() || answer.is_err() {
                verdict.healthy
            } else {
                verdict.healthy.filter(|healthy| *healthy)
            };
            match healthy {
                Some(healthy) => admitted.ticket.record(healthy),
                None => drop(admitted.ticket),
            }
            let now = Instant::now();
            let pause = verdict.pause.map(|pause| pause.min(shared.max_retry_after));
            // A pass's Retry-After (a login's rate limit, say) must not pause everyone.
            if let Some(pause) = pause.filter(|_| exchange.kind.speaks_for_origin()) {
                self.pause(now, pause, &answer);
            }
            let answer = answer.map(|(response, body_limit)| OriginResponse {
                response,
                permit: Some(admitted.permit),
                body_limit,
            });
            if !(exchange.retryable() && verdict.retryable && attempt < shared.retries) {
                return answer;
            }
            let delay = shared
                .backoff
                .jittered(attempt)
                .max(pause.unwrap_or_default());
            if now + delay >= deadline {
                return answer;
            }
            if !lock(&shared.budget).try_withdraw(now) {
                shared.metrics.retry_budget_exhausted.inc();
                return answer;
            }
            // Give the slot back while backing off; keep the answer without it.
            let answer = answer.map(|mut response| {
                response.permit = None;
                response
            });
            shared.metrics.retries.inc();
            tracing::debug!(
                origin = %shared.label,
                attempt = attempt + 1,
                delay_ms = delay.as_millis() as u64,
                status = answer.as_ref().map_or(0, |r| r.status().as_u16()),
                error = answer.as_ref().err().map(OriginError::label),
                "retrying origin request"
            );
            previous = Some(answer);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Passes the gate, the breaker and the concurrency limit, or says why not.
    async fn admit(&self, deadline: Instant) -> Result<Admitted, OriginError> {
        let shared = &self.shared;
        self.check_gate()?;
        let ticket = shared
            .breaker
            .admit()
            .map_err(|retry_after| OriginError::Refused {
                reason: Refusal::CircuitOpen,
                retry_after,
            })?;
        let permit = shared
            .limit
            .acquire(deadline)
            .await
            .map_err(|shed| OriginError::Refused {
                reason: shed.into(),
                retry_after: SHED_RETRY_AFTER,
            })?;
        // The origin may have asked for a pause while this request queued.
        self.check_gate()?;
        Ok(Admitted { ticket, permit })
    }

    fn check_gate(&self) -> Result<(), OriginError> {
        match self.shared.gate.remaining(Instant::now()) {
            Some(retry_after) => Err(OriginError::Refused {
                reason: Refusal::RetryAfter,
                retry_after,
            }),
            None => Ok(()),
        }
    }

    /// Holds every request back for `pause`, as the origin asked.
    fn pause(
        &self,
        now: Instant,
        pause: Duration,
        answer: &Result<(reqwest::Response, (TimeLimit, Duration)), OriginError>,
    ) {
        if pause.is_zero() || !self.shared.gate.close_until(now + pause) {
            return;
        }
        let status = answer.as_ref().map_or(0, |(r, _)| r.status().as_u16());
        tracing::warn!(
            origin = %self.shared.label,
            status,
            pause_ms = pause.as_millis() as u64,
            "origin asked for a pause (Retry-After): no requests until it expires"
        );
    }

    /// Sends one attempt and waits for its response head.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        exchange: &mut Exchange,
        timeouts: &Timeouts,
        deadline: Instant,
    ) -> Result<(reqwest::Response, (TimeLimit, Duration)), OriginError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let out_of_time = OriginError::TimedOut {
            limit: TimeLimit::Deadline,
            after: timeouts.request,
        };
        if remaining.is_zero() {
            return Err(out_of_time);
        }
        let mut request = client
            .request(exchange.method.clone(), &exchange.url)
            .headers(exchange.headers.clone());
        // The origin answers a streamed upload after receiving it, so the
        // time to its first byte includes the upload: only the deadline bounds it.
        let streamed_upload = exchange.replay.is_none() && exchange.body.is_some();
        if let Some(bytes) = exchange.replay.as_ref().filter(|b| !b.is_empty()) {
            request = request.body(bytes.clone());
        } else if let Some(body) = exchange.body.take() {
            request = request.body(body);
        }
        // A streamed body is bounded per read by the client's read timeout.
        let whole_response = exchange.kind.whole_response();
        let body_limit = if !whole_response || timeouts.response <= remaining {
            (TimeLimit::Response, timeouts.response)
        } else {
            (TimeLimit::Deadline, timeouts.request)
        };
        if whole_response {
            request = request.timeout(timeouts.response.min(remaining));
        }
        let (head_limit, head_error) = if timeouts.first_byte <= remaining && !streamed_upload {
            (
                timeouts.first_byte,
                OriginError::TimedOut {
                    limit: TimeLimit::FirstByte,
                    after: timeouts.first_byte,
                },
            )
        } else {
            (remaining, out_of_time)
        };
        match tokio::time::timeout(head_limit, request.send()).await {
            Err(_elapsed) => Err(head_error),
            Ok(Ok(response)) => {
                let size = response_head_size(&response);
                let limit = self.shared.max_response_head;
                if size > limit {
                    return Err(OriginError::ResponseHeadTooLarge { size, limit });
                }
                Ok((response, body_limit))
            }
            Ok(Err(error)) => Err(classify(error, timeouts, body_limit)),
        }
    }

    /// The client for `timeouts`' connect and read limits, offering only
    /// HTTP/1.1 when `http1_only` is asked for.
    fn client_for(&self, timeouts: &Timeouts, http1_only: bool) -> reqwest::Client {
        let shared = &self.shared;
        let key = ClientKey {
            connect: timeouts.connect,
            read: timeouts.response,
            http1_only: http1_only || !shared.h2_possible,
        };
        let defaults = ClientKey {
            connect: shared.defaults.connect,
            read: shared.defaults.response,
            http1_only: !shared.h2_possible,
        };
        if key == defaults {
            return shared.client.clone();
        }
        let mut clients = lock(&shared.route_clients);
        if let Some((_, client)) = clients.iter().find(|(k, _)| *k == key) {
            return client.clone();
        }
        match build_client(&shared.spec, key) {
            Ok(client) => {
                clients.push((key, client.clone()));
                client
            }
            Err(error) => {
                tracing::warn!(origin = %shared.label, %error, "cannot build a client for a route's timeouts; using the origin's");
                shared.client.clone()
            }
        }
    }
}

/// A reqwest client for `spec`'s origin with `key`'s limits and protocols.
fn build_client(spec: &OriginSpec, key: ClientKey) -> Result<reqwest::Client, reqwest::Error> {
    install_crypto_provider();
    let config = spec.config();
    let max_response_head = config.max_response_header_size.as_u64();
    // HTTP/2 bounds the head as it decodes it; HTTP/1 heads are bounded by
    // hyper's read buffer (about 400 KiB) and then checked against the limit
    // once parsed ([`response_head_size`]).
    let h2_head = u32::try_from(max_response_head).unwrap_or(u32::MAX);
    let mut builder = reqwest::Client::builder()
        .http2_max_header_list_size(h2_head)
        .connect_timeout(key.connect)
        .read_timeout(key.read)
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .default_headers(HeaderMap::new());
    if key.http1_only {
        builder = builder.http1_only();
    }
    let ca = spec
        .ca
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()?;
    builder = if !config.is_https() {
        // Never used for TLS: trusting nothing skips loading the system's
        // roots, and a machine without any can still front a plain origin.
        builder.tls_certs_only(Vec::new())
    } else if config.ca_only {
        builder.tls_certs_only(ca)
    } else if !ca.is_empty() {
        builder.tls_certs_merge(ca)
    } else {
        builder
    };
    builder.build()
}

/// The size of a response head as it was (about) sent in HTTP/1.1: the
/// status line and each field line with its `": "` and CRLF.
fn response_head_size(response: &reqwest::Response) -> u64 {
    const STATUS_LINE: u64 = "HTTP/1.1 200 \r\n\r\n".len() as u64;
    response
        .headers()
        .iter()
        .fold(STATUS_LINE, |size, (name, value)| {
            size + (name.as_str().len() + value.len() + 4) as u64
        })
}

/// Whether `error` was caused by the origin's answer not parsing as HTTP.
fn is_invalid_response(error: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(hyper_error) = current.downcast_ref::<hyper::Error>() {
            return hyper_error.is_parse() || hyper_error.is_parse_status();
        }
        cause = current.source();
    }
    false
}

/// Tells a failed attempt's cause apart: connect errors (and connect
/// timeouts), other timeouts (reported as `body_limit`), answers that are
/// not HTTP, and the rest.
fn classify(
    error: reqwest::Error,
    timeouts: &Timeouts,
    body_limit: (TimeLimit, Duration),
) -> OriginError {
    if let Some(problem) = CertificateProblem::find(&error) {
        OriginError::Certificate {
            problem,
            source: error,
        }
    } else if is_invalid_response(&error) {
        OriginError::InvalidResponse(error)
    } else if error.is_connect() {
        if error.is_timeout() {
            OriginError::TimedOut {
                limit: TimeLimit::Connect,
                after: timeouts.connect,
            }
        } else {
            OriginError::Connect(error)
        }
    } else if error.is_timeout() {
        OriginError::TimedOut {
            limit: body_limit.0,
            after: body_limit.1,
        }
    } else {
        OriginError::Request(error)
    }
}

/// What one attempt's answer means. Failures (for the breaker): transport
/// errors, timeouts and 5xx. Retryable: connect errors and connect timeouts,
/// resets and other broken requests, 502, 503 and 504. A 429 is neither: the
/// origin is alive and said how long to wait.
fn judge(answer: &Result<(reqwest::Response, (TimeLimit, Duration)), OriginError>) -> Verdict {
    match answer {
        Ok((response, _)) => {
            let status = response.status();
            let pause = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            )
            .then(|| {
                response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()))
            })
            .flatten();
            Verdict {
                healthy: Some(!status.is_server_error()),
                retryable: matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ),
                pause,
            }
        }
        Err(error) => Verdict {
            healthy: match error {
                OriginError::TimedOut {
                    limit: TimeLimit::Deadline,
                    ..
                } => None,
                _ => Some(false),
            },
            retryable: matches!(
                error,
                OriginError::Connect(_)
                    | OriginError::Request(_)
                    | OriginError::TimedOut {
                        limit: TimeLimit::Connect,
                        ..
                    }
            ),
            pause: None,
        },
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
