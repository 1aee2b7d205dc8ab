//! Configuration: the TOML schema, its defaults, validation, and the compiled
//! route table the proxy consults on every request.
//!
//! Parsing is strict: unknown keys are errors, durations (`"30s"`) and sizes
//! (`"512MiB"`) are human-readable strings, and every error names the file, the
//! line, the column and the reason. The only I/O here is reading the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use toml::Spanned;
use wildmatch::WildMatch;

/// Longest duration any setting accepts. Far beyond any sensible value, and
/// far from the point where adding it to a clock reading would overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Default proxy listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listen address (metrics, health).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default freshness of a 200 response on a route that sets no `ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Default bound on how long a follower waits for its leader's fetch.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a key whose answer was not shareable is passed straight through.
pub const DEFAULT_HIT_FOR_PASS: Duration = Duration::from_secs(10);
/// Default longest heuristic freshness (10% of the time since `Last-Modified`),
/// on routes that turn the heuristic on.
pub const DEFAULT_HEURISTIC_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// Default most variants (distinct `Vary` selections) stored for one URL.
pub const DEFAULT_MAX_VARIANTS: usize = 8;
/// Default timeout for establishing an origin connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default timeout for a whole origin response (headers and body of a cache fill;
/// the longest silence between body chunks of a passed response).
pub const DEFAULT_ORIGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an idle pooled origin connection is kept.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default number of idle pooled connections kept per origin host.
pub const DEFAULT_POOL_MAX_IDLE: usize = 256;
/// Default limit from sending an origin request to its response head.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit on everything corral does at the origin for one request
/// (queueing, attempts, backoff).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Default number of extra attempts for a failed GET or HEAD.
pub const DEFAULT_RETRIES: u32 = 2;
/// Default ceiling of the first retry's backoff (doubles for each further retry).
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Default largest backoff ceiling.
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Default fraction of origin requests that retries may add.
pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;
/// Default window the retry budget is measured over.
pub const DEFAULT_RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Default longest pause an origin's `Retry-After` can impose.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Default share of failed origin requests that opens the circuit breaker.
pub const DEFAULT_BREAKER_FAILURE_RATE: f64 = 0.5;
/// Default fewest origin requests in the window before the breaker may open.
pub const DEFAULT_BREAKER_MIN_REQUESTS: u64 = 20;
/// Default window the breaker counts failures over.
pub const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(10);
/// Default time the breaker stays open before letting one probe through.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);
/// Default most requests in flight to the origin at once.
pub const DEFAULT_MAX_CONCURRENT: usize = 256;
/// Default places in the queue for an origin concurrency slot.
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;
/// Default longest wait in that queue before the request is shed.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default byte capacity of the hot cache.
pub const DEFAULT_CACHE_MAX_SIZE: ByteSize = ByteSize::mib(512);
/// Default largest response body the cache stores.
pub const DEFAULT_MAX_OBJECT_SIZE: ByteSize = ByteSize::mib(8);
/// Default time a client has to send its request headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest request head (request line and headers) accepted.
pub const DEFAULT_MAX_HEADER_SIZE: ByteSize = ByteSize::kib(64);
/// Default cap on concurrently open client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default grace period for in-flight requests at shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest request body accepted.
pub const DEFAULT_MAX_REQUEST_BODY: ByteSize = ByteSize::mib(16);
/// Default time a keep-alive client connection may sit idle between requests.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `stale_if_disconnected`: how stale an entry may be and still be
/// served while the origin cannot be reached.
pub const DEFAULT_STALE_IF_DISCONNECTED: Duration = Duration::from_secs(3600);
/// Default `stale_deadline`: how long a client that could be served stale
/// waits on a slow origin before it is.
pub const DEFAULT_STALE_DEADLINE: Duration = Duration::from_secs(1);
/// Default `stream_lag_limit`: how far a client reading an answer too large
/// to store may fall behind the fastest reader of the same fetch.
pub const DEFAULT_STREAM_LAG_LIMIT: ByteSize = ByteSize::mib(8);
/// Default largest response head corral accepts from the origin.
pub const DEFAULT_MAX_RESPONSE_HEADER_SIZE: ByteSize = ByteSize::kib(64);
/// Default time an Idempotency-Key record is kept (and replayed) after its
/// request completed.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default time an Idempotency-Key claim outlives an owner that stopped
/// renewing it: after an unknown outcome (a timeout or a reset once the
/// request was sent), or an instance that died mid-request.
pub const DEFAULT_IDEMPOTENCY_LEASE: Duration = Duration::from_secs(60);
/// Default largest request body buffered to fingerprint an idempotent request.
pub const DEFAULT_IDEMPOTENCY_MAX_BODY: ByteSize = ByteSize::mib(1);
/// Shortest `idempotency_lease` accepted: a live owner renews its claim every
/// third of the lease, and a shorter one would be lost to one slow round trip.
pub const MIN_IDEMPOTENCY_LEASE: Duration = Duration::from_millis(100);

/// Request headers a route may not name in `forward_headers`: they frame the
/// message or the connection, carry credentials (such requests are never
/// filled), or are corral's to set.
const UNFORWARDABLE: [&str; 16] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "authorization",
    "proxy-authorization",
    "cookie",
    "if-none-match",
    "if-modified-since",
    "range",
];

/// Everything corral runs from. Built from a TOML file with [`Config::load`] or
/// [`Config::parse`], or from the command line with [`Config::for_origin`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client-facing listeners and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The default origin: routes that name none, and requests no route
    /// matches, go here.
    pub origin: OriginConfig,
    /// More origins, by name (`[origins.NAME]`); a route picks one with
    /// `origin = "NAME"`. Each has every `[origin]` setting and its own pool,
    /// breaker, limits and retry budget.
    #[serde(default)]
    pub origins: BTreeMap<String, OriginConfig>,
    /// Hot cache sizing.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Admin endpoint settings.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging settings.
    #[serde(default)]
    pub log: LogConfig,
    /// The fleet: instances sharing a cache tier and one fetch per key in
    /// Redis. Absent: this instance is on its own.
    #[serde(default)]
    pub fleet: FleetConfig,
    /// Routes in match order; a request matching none is passed through uncached.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Where this config came from, so problems found after parsing (in the
    /// files it names) are reported at their position too.
    #[serde(skip)]
    source: Source,
}

/// A problem with a configuration found after parsing it (in a file it
/// names, say), at the span of the setting it is about; [`Config::refuse`]
/// turns a list of them into a [`ConfigError`] with lines and columns.
pub type PlacedProblem = (Range<usize>, String);

/// The file a config was read from and its text.
#[derive(Debug, Clone, Default)]
struct Source {
    path: PathBuf,
    text: Arc<str>,
}

impl Source {
    /// `problems` as a [`ConfigError`], in file order (by position; problems
    /// at one position in the order they were checked), each at its line and
    /// column.
    fn refuse(&self, mut problems: Vec<PlacedProblem>) -> ConfigError {
        problems.sort_by_key(|(span, _)| span.start);
        ConfigError::InvalidConfig {
            path: self.path.clone(),
            problems: problems
                .into_iter()
                .map(|(span, reason)| {
                    let (line, column) = line_column(&self.text, span.start);
                    ConfigProblem {
                        line,
                        column,
                        reason,
                    }
                })
                .collect(),
        }
    }
}

/// A certificate chain and its private key, both PEM files (`[server.tls]`,
/// `[admin.tls]`). A relative path is taken from the config file's directory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, end-entity certificate first.
    pub cert_file: Spanned<PathBuf>,
    /// The private key (PKCS#8, PKCS#1 or SEC1) of the first certificate.
    pub key_file: Spanned<PathBuf>,
}

/// `[origin] http2`: whether corral may speak HTTP/2 to an HTTPS origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Http2Mode {
    /// Offer `h2` and `http/1.1` in ALPN; HTTP/2 when the origin picks it.
    /// A plain `http://` origin is always spoken to in HTTP/1.1.
    #[default]
    Auto,
    /// Offer only `http/1.1`.
    Never,
}

/// `[admin]`: who may use the admin listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// When set, every admin endpoint but `/healthz` requires
    /// `Authorization: Bearer <token>` and answers 401 without it.
    pub token: Option<String>,
    /// When set, the admin listener speaks only TLS, presenting this
    /// certificate (reloaded with the rest, as `[server.tls]` is).
    pub tls: Option<TlsFiles>,
}

/// `[log]`: what corral logs. The level filter comes from `RUST_LOG`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// One `corral::access` event per request (method, path, status,
    /// cache_status, duration, bytes).
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { access_log: true }
    }
}

/// Default prefix of every Redis key and channel the fleet uses.
pub const DEFAULT_FLEET_KEY_PREFIX: &str = "corral:";
/// Default most time any one Redis round trip may add to a request.
pub const DEFAULT_FLEET_LOOKUP_TIMEOUT: Duration = Duration::from_millis(50);
/// Default lease of the fleet's fetch lock; the holder renews it while it fetches.
pub const DEFAULT_FLEET_LOCK_LEASE: Duration = Duration::from_secs(5);
/// Default largest entry written to Redis; larger ones stay in this instance's cache.
pub const DEFAULT_FLEET_MAX_VALUE_SIZE: ByteSize = ByteSize::mib(1);

/// `[fleet]`: a cache tier and a fetch lock shared by every instance through
/// Redis (or Valkey). Without `redis`, the instance coalesces on its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// `redis://[user:password@]host:port[/db]`; absent: no fleet.
    pub redis: Option<Spanned<String>>,
    /// Prefix of every key and channel the fleet writes, so several fleets
    /// (or other applications) can share one Redis.
    pub key_prefix: String,
    /// The most any Redis round trip may add to a request: past it the
    /// request goes on as if this instance were alone.
    #[serde(with = "humantime_serde")]
    pub lookup_timeout: Duration,
    /// How long the fleet's fetch lock for a key outlives a holder that stops
    /// renewing it (a holder renews it every third of the lease while it fetches).
    #[serde(with = "humantime_serde")]
    pub lock_lease: Duration,
    /// Largest stored answer (encoded) written to Redis; larger answers stay
    /// in this instance's cache only.
    pub max_value_size: ByteSize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            redis: None,
            key_prefix: DEFAULT_FLEET_KEY_PREFIX.to_owned(),
            lookup_timeout: DEFAULT_FLEET_LOOKUP_TIMEOUT,
            lock_lease: DEFAULT_FLEET_LOCK_LEASE,
            max_value_size: DEFAULT_FLEET_MAX_VALUE_SIZE,
        }
    }
}

impl FleetConfig {
    /// Every problem with this table, each with the span it is about.
    fn problems(&self) -> Vec<(Range<usize>, String)> {
        let mut problems = Vec::new();
        let span = self.redis.as_ref().map(|url| url.span()).unwrap_or(0..0);
        if let Some(url) = &self.redis {
            let text = url.get_ref();
            if !text.starts_with("redis://") {
                problems.push((
                    span.clone(),
                    format!("fleet.redis {text:?} must be a redis:// URL"),
                ));
            } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(text.as_str()) {
                problems.push((span.clone(), format!("fleet.redis {text:?}: {e}")));
            }
        }
        if self.lookup_timeout.is_zero() || self.lookup_timeout > MAX_DURATION {
            problems.push((
                span.clone(),
                "fleet.lookup_timeout must be longer than zero and at most ten years".to_owned(),
            ));
        }
        if self.lock_lease < Duration::from_millis(100) || self.lock_lease > MAX_DURATION {
            problems.push((
                span.clone(),
                "fleet.lock_lease must be at least 100ms and at most ten years".to_owned(),
            ));
        }
        if self.max_value_size.as_u64() == 0 {
            problems.push((
                span.clone(),
                "fleet.max_value_size must be at least 1 byte".to_owned(),
            ));
        }
        if self.key_prefix.contains(['{', '}']) {
            problems.push((
                span,
                "fleet.key_prefix must not contain { or }: they would break the hash tags"
                    .to_owned(),
            ));
        }
        problems
    }
}

/// `[server]`: where corral listens and what it accepts from clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address proxied traffic is accepted on.
    pub listen: SocketAddr,
    /// Address of the admin listener (metrics and health); never shared with traffic.
    pub admin_listen: SocketAddr,
    /// A client that has not sent its whole request head within this time is cut
    /// off: timed from accept for a connection's first request, from the head's
    /// first byte for later ones.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted; larger ones are refused with 431.
    pub max_header_size: ByteSize,
    /// Connections served at once. One more is accepted and held unread until a
    /// slot frees; the rest wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish once shutdown begins.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Largest request body accepted. A larger `Content-Length` is refused with
    /// 413 before any of the body is read; a body without one is cut off as soon
    /// as it grows past this (413, or the connection closed if the origin has
    /// already answered), so it is never forwarded whole.
    pub max_request_body: ByteSize,
    /// A keep-alive connection with no request in progress is closed when the
    /// first byte of its next request has not arrived within this time.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Hosts (`name` or `name:port`) corral serves besides the origin's own:
    /// an absolute-form request target (`GET http://host/path HTTP/1.1`) must
    /// name one of them or the origin's own (else 421: corral is never an open
    /// forward proxy), and on a route with `preserve_host` the request's host
    /// must be one of them or of the route's own `hosts` (else 421: the host is
    /// then part of the cache key and sent upstream). A name without a port
    /// allows every port. On other routes the `Host` is validated (400 when
    /// missing, repeated or malformed) but neither keyed nor forwarded.
    pub hosts: Vec<Spanned<String>>,
    /// When set, the proxy listener speaks only TLS (1.2 and 1.3, ALPN `h2`
    /// and `http/1.1`), presenting this certificate. SIGHUP and
    /// `POST /reload` load the files again for new connections.
    pub tls: Option<TlsFiles>,
    /// Whether fresh cache hits on plain HTTP/1.1 GET and HEAD requests are
    /// answered on the listener's quick path, before hyper (see
    /// [`crate::server`]). The same bytes, metrics and log lines either way;
    /// `false` sends every request through hyper.
    pub quick_hits: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: parse_default_addr(DEFAULT_LISTEN),
            admin_listen: parse_default_addr(DEFAULT_ADMIN_LISTEN),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            hosts: Vec::new(),
            tls: None,
            quick_hits: true,
        }
    }
}

fn parse_default_addr(addr: &str) -> SocketAddr {
    addr.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// `[origin]` (and each `[origins.NAME]`): an upstream corral fetches from.
/// Equal configs (values compared, positions not) make equal clients, so a
/// reload keeps an unchanged origin's pool and breaker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// Base URL, `http://host[:port]` or `https://host[:port]`; request paths
    /// are appended to it. For HTTPS, the certificate must name this host,
    /// and it is the name sent in SNI, whatever `Host` a route sends.
    pub url: Spanned<String>,
    /// A PEM bundle of CA certificates trusted for this origin besides the
    /// system's roots (a private CA). A relative path is taken from the
    /// config file's directory. HTTPS origins only.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// `true`: trust only `ca_file`, not the system's roots.
    #[serde(default)]
    pub ca_only: bool,
    /// `"auto"`: HTTP/2 when the HTTPS origin offers it in ALPN, else
    /// HTTP/1.1; `"never"`: HTTP/1.1 only.
    #[serde(default)]
    pub http2: Http2Mode,
    /// Limit on establishing a TCP connection to the origin.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit on a whole cache fill, and on silence while streaming a passed response.
    #[serde(default = "default_origin_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Idle pooled connections are closed after this long.
    #[serde(default = "default_pool_idle_timeout", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept open.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// Limit from sending a request to the origin's response head (each attempt).
    #[serde(default = "default_first_byte_timeout", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// The client-facing deadline: everything corral does at the origin for one
    /// request (queueing, every attempt, every backoff) must fit in it, or the
    /// client gets 504. A passed response's streamed body is not bounded by it.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Extra attempts for a GET or HEAD after a connect error, a reset, or a
    /// 502, 503 or 504 (never for other methods). `0` turns retries off.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Backoff ceiling before the first retry; it doubles for each further one.
    /// The actual delay is drawn uniformly below the ceiling (full jitter).
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Largest backoff ceiling.
    #[serde(default = "default_retry_backoff_max", with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// Retries may add at most this fraction (`0.2` = 20%) to the requests sent
    /// to the origin over `retry_budget_window`, so they cannot multiply an outage.
    #[serde(default = "default_retry_budget")]
    pub retry_budget: f64,
    /// Sliding window the retry budget is measured over.
    #[serde(default = "default_retry_budget_window", with = "humantime_serde")]
    pub retry_budget_window: Duration,
    /// A 429 or 503 with `Retry-After` stops every request to the origin until it
    /// expires, but for no longer than this.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// The circuit breaker opens when this share (0 to 1) of origin requests in
    /// `breaker_window` failed (connection errors, timeouts, 5xx)…
    #[serde(default = "default_breaker_failure_rate")]
    pub breaker_failure_rate: f64,
    /// …and at least this many requests are in the window.
    #[serde(default = "default_breaker_min_requests")]
    pub breaker_min_requests: u64,
    /// Sliding window the circuit breaker counts outcomes over.
    #[serde(default = "default_breaker_window", with = "humantime_serde")]
    pub breaker_window: Duration,
    /// How long an open breaker answers without the origin (stale entries, else
    /// 503 with `Retry-After`) before letting one probe request through.
    #[serde(default = "default_breaker_open_for", with = "humantime_serde")]
    pub breaker_open_for: Duration,
    /// Most requests in flight to the origin at once (fills and passes; requests
    /// coalesced behind a fill take no slot).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Requests beyond `max_concurrent` wait in a queue of this many places;
    /// beyond that they are shed with 503 and `Retry-After`. `0`: no queue.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Longest wait in the queue before the request is shed.
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Largest response head (status line and header fields) accepted from
    /// the origin. A larger one is answered 502, never relayed or stored, and
    /// counted as `head_too_large`.
    #[serde(default = "default_max_response_header_size")]
    pub max_response_header_size: ByteSize,
}

impl OriginConfig {
    /// The origin at `url` with every other setting at its default.
    pub fn for_url(url: Spanned<String>) -> OriginConfig {
        OriginConfig {
            url,
            ca_file: None,
            ca_only: false,
            http2: Http2Mode::Auto,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_ORIGIN_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retries: DEFAULT_RETRIES,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            retry_backoff_max: DEFAULT_RETRY_BACKOFF_MAX,
            retry_budget: DEFAULT_RETRY_BUDGET,
            retry_budget_window: DEFAULT_RETRY_BUDGET_WINDOW,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            breaker_failure_rate: DEFAULT_BREAKER_FAILURE_RATE,
            breaker_min_requests: DEFAULT_BREAKER_MIN_REQUESTS,
            breaker_window: DEFAULT_BREAKER_WINDOW,
            breaker_open_for: DEFAULT_BREAKER_OPEN_FOR,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            max_response_header_size: DEFAULT_MAX_RESPONSE_HEADER_SIZE,
        }
    }

    /// The origin URL's authority (`host[:port]`), if the URL has one (a
    /// validated config always does).
    pub fn authority(&self) -> Option<http::uri::Authority> {
        let uri = self.url.get_ref().parse::<http::Uri>().ok()?;
        uri.authority().cloned()
    }

    /// Whether the origin is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.url
            .get_ref()
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    }

    /// Checks what serde cannot for the table named `table` (`origin`, or
    /// `origins.NAME`): the URL's shape, TLS settings that contradict it,
    /// ranges and non-zero limits. Returns every problem found, in the order
    /// checked; empty when all hold.
    fn problems(&self, table: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let url = self.url.get_ref();
        match url.parse::<http::Uri>() {
            Err(e) => problems.push(format!("{table} url {url:?}: {e}")),
            Ok(parsed) => {
                let scheme = parsed.scheme_str();
                if !matches!(scheme, Some("http" | "https")) || parsed.authority().is_none() {
                    problems.push(format!(
                        "{table} url {url:?} must be http://host[:port] or https://host[:port]"
                    ));
                }
                if parsed.query().is_some() {
                    problems.push(format!("{table} url {url:?} must not carry a query"));
                }
            }
        }
        if !self.is_https() && (self.ca_file.is_some() || self.ca_only) {
            problems.push(format!(
                "{table}.ca_file and {table}.ca_only apply to https:// origins only"
            ));
        }
        if self.ca_only && self.ca_file.is_none() {
            problems.push(format!(
                "{table}.ca_only needs {table}.ca_file (it would trust no certificate)"
            ));
        }
        let limits = [
            ("connect_timeout", self.connect_timeout),
            ("timeout", self.timeout),
            ("first_byte_timeout", self.first_byte_timeout),
            ("request_timeout", self.request_timeout),
            ("retry_budget_window", self.retry_budget_window),
            ("breaker_window", self.breaker_window),
        ];
        for (name, _) in limits.iter().filter(|(_, limit)| limit.is_zero()) {
            problems.push(format!("{table}.{name} must be longer than zero"));
        }
        if !(self.retry_budget.is_finite() && self.retry_budget >= 0.0) {
            problems.push(format!(
                "{table}.retry_budget must be a fraction of zero or more (0.2 = 20%)"
            ));
        }
        if !(self.breaker_failure_rate > 0.0 && self.breaker_failure_rate <= 1.0) {
            problems.push(format!(
                "{table}.breaker_failure_rate must be above 0 and at most 1"
            ));
        }
        if self.breaker_min_requests == 0 {
            problems.push(format!("{table}.breaker_min_requests must be at least 1"));
        }
        if self.max_concurrent == 0 {
            problems.push(format!("{table}.max_concurrent must be at least 1"));
        }
        if self.max_response_header_size.as_u64() < 1024 {
            problems.push(format!(
                "{table}.max_response_header_size must be at least 1KiB"
            ));
        }
        problems
    }

    /// This origin's durations that are longer than [`MAX_DURATION`], each
    /// as a problem of the table named `table`.
    fn absurd_durations(&self, table: &str) -> Vec<String> {
        let durations = [
            ("connect_timeout", self.connect_timeout),
            ("timeout", self.timeout),
            ("first_byte_timeout", self.first_byte_timeout),
            ("request_timeout", self.request_timeout),
            ("pool_idle_timeout", self.pool_idle_timeout),
            ("retry_backoff_max", self.retry_backoff_max),
            ("retry_budget_window", self.retry_budget_window),
            ("max_retry_after", self.max_retry_after),
            ("breaker_window", self.breaker_window),
            ("breaker_open_for", self.breaker_open_for),
            ("queue_timeout", self.queue_timeout),
        ];
        durations
            .iter()
            .filter(|(_, d)| *d > MAX_DURATION)
            .map(|(key, _)| {
                format!(
                    "{table}.{key} is longer than the {} allowed",
                    humantime::format_duration(MAX_DURATION)
                )
            })
            .collect()
    }
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_origin_timeout() -> Duration {
    DEFAULT_ORIGIN_TIMEOUT
}
fn default_pool_idle_timeout() -> Duration {
    DEFAULT_POOL_IDLE_TIMEOUT
}
fn default_pool_max_idle() -> usize {
    DEFAULT_POOL_MAX_IDLE
}
fn default_first_byte_timeout() -> Duration {
    DEFAULT_FIRST_BYTE_TIMEOUT
}
fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
fn default_retries() -> u32 {
    DEFAULT_RETRIES
}
fn default_retry_backoff() -> Duration {
    DEFAULT_RETRY_BACKOFF
}
fn default_retry_backoff_max() -> Duration {
    DEFAULT_RETRY_BACKOFF_MAX
}
fn default_retry_budget() -> f64 {
    DEFAULT_RETRY_BUDGET
}
fn default_retry_budget_window() -> Duration {
    DEFAULT_RETRY_BUDGET_WINDOW
}
fn default_max_retry_after() -> Duration {
    DEFAULT_MAX_RETRY_AFTER
}
fn default_breaker_failure_rate() -> f64 {
    DEFAULT_BREAKER_FAILURE_RATE
}
fn default_breaker_min_requests() -> u64 {
    DEFAULT_BREAKER_MIN_REQUESTS
}
fn default_breaker_window() -> Duration {
    DEFAULT_BREAKER_WINDOW
}
fn default_breaker_open_for() -> Duration {
    DEFAULT_BREAKER_OPEN_FOR
}
fn default_max_concurrent() -> usize {
    DEFAULT_MAX_CONCURRENT
}
fn default_queue_depth() -> usize {
    DEFAULT_QUEUE_DEPTH
}
fn default_queue_timeout() -> Duration {
    DEFAULT_QUEUE_TIMEOUT
}
fn default_max_response_header_size() -> ByteSize {
    DEFAULT_MAX_RESPONSE_HEADER_SIZE
}

/// `[cache]`: the hot cache's memory budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Total weight (body, headers and key bytes) the hot cache holds before evicting.
    pub max_size: ByteSize,
    /// Larger responses are streamed to their client and never stored.
    pub max_object_size: ByteSize,
    /// Most variants (responses selected by different request header values
    /// named in `Vary`) kept for one URL; storing one more drops the least
    /// recently stored, so a `Vary` explosion cannot fill the cache.
    pub max_variants: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_CACHE_MAX_SIZE,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            max_variants: DEFAULT_MAX_VARIANTS,
        }
    }
}

/// One `[[route]]` table as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label used in metrics and logs; defaults to the match pattern.
    pub name: Option<String>,
    /// Path prefix (`/api/`) or glob (`/api/*/reviews`, `*` spans `/`).
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    /// The `[origins.NAME]` this route's requests go to; unset: `[origin]`.
    #[serde(default)]
    pub origin: Option<Spanned<String>>,
    /// Freshness of a 200 response whose origin says nothing about it (no
    /// `max-age`, `s-maxage` or `Expires`); with `override_origin`, of every
    /// 200 response.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// `true`: `ttl` (and `negative_ttl` for 404/410) replace the origin's own
    /// freshness. It never makes a response storable that is not (`no-store`,
    /// `private`, `Set-Cookie`, …).
    #[serde(default)]
    pub override_origin: bool,
    /// `true`: a response without explicit freshness but with `Last-Modified`
    /// is fresh for 10% of its age at arrival, capped by `heuristic_max`
    /// (RFC 9111 §4.2.2), before `ttl` is used.
    #[serde(default)]
    pub heuristic: bool,
    /// Longest heuristic freshness.
    #[serde(default = "default_heuristic_max", with = "humantime_serde")]
    pub heuristic_max: Duration,
    /// When set, 404 and 410 answers that carry no freshness of their own are
    /// stored with this one (with `override_origin`, every 404 and 410).
    /// Unset: a 404 or 410 is stored only when the origin gives it explicit
    /// freshness, as any other final status (RFC 9111 §3).
    #[serde(default, with = "humantime_serde")]
    pub negative_ttl: Option<Duration>,
    /// Stale-while-revalidate window (RFC 5861) for responses whose origin
    /// names none: a stale entry is served at once while one background
    /// request refreshes it.
    #[serde(default, with = "humantime_serde")]
    pub stale_while_revalidate: Option<Duration>,
    /// Stale-if-error window (RFC 5861) for responses whose origin names none:
    /// a stale entry is served when the origin fails, times out or answers 5xx.
    #[serde(default, with = "humantime_serde")]
    pub stale_if_error: Option<Duration>,
    /// How stale a stored entry may be and still be served when the origin
    /// cannot be reached (connect error, reset, timeout: RFC 9111 §4.2.4),
    /// unless the origin forbade stale use (`must-revalidate`,
    /// `proxy-revalidate`, `no-cache`, `s-maxage`). A 5xx *answer* still
    /// needs `stale_if_error`. `"0s"` turns it off.
    #[serde(default = "default_stale_if_disconnected", with = "humantime_serde")]
    pub stale_if_disconnected: Duration,
    /// A client that could be served a stale entry (within
    /// `stale_if_disconnected`) waits this long for a slow origin, then gets
    /// the stale copy while the fetch goes on for the cache. `"0s"` turns
    /// it off (clients wait for the origin's own time limits).
    #[serde(default = "default_stale_deadline", with = "humantime_serde")]
    pub stale_deadline: Duration,
    /// Clients reading one fetch's answer get its bytes as they arrive; for
    /// an answer too large to store, a client more than this far behind the
    /// fastest is cut loose (its response ends in an error) rather than
    /// hold the body in memory for everyone.
    #[serde(default = "default_stream_lag_limit")]
    pub stream_lag_limit: ByteSize,
    /// Longest a follower waits for the leader's fetch before answering 504.
    #[serde(default = "default_lock_timeout", with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// How long a key whose answer was not shareable bypasses coalescing.
    #[serde(default = "default_hit_for_pass", with = "humantime_serde")]
    pub hit_for_pass: Duration,
    /// `false` makes this a pass-through route: never cached, never coalesced.
    #[serde(default = "default_true")]
    pub cache: bool,
    /// `true` sends the client's `Host` to the origin instead of the origin's
    /// own, and keys the cache on it. Only hosts listed in `hosts` (or
    /// `server.hosts`) are then accepted; others get 421.
    #[serde(default)]
    pub preserve_host: bool,
    /// Hosts (`name` or `name:port`) this route accepts when it preserves
    /// `Host`, besides `server.hosts`.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Request headers a cache fill forwards to the origin beyond the fixed
    /// set (`Accept`, `Accept-Encoding`, `Accept-Language`, `Accept-Charset`,
    /// `User-Agent`, `Cache-Control`, `Pragma`). Each one listed also selects
    /// the stored answer, as if the origin always named it in `Vary`: a client
    /// can change what the origin sees only for the clients that send the
    /// same value. On a cacheable route this is also how a client's
    /// `X-Forwarded-*`, `Forwarded` or override header (`X-Original-URL`, …)
    /// reaches the origin; otherwise corral sends its own forwarding headers.
    #[serde(default)]
    pub forward_headers: Vec<Spanned<String>>,
    /// What a client's `Cache-Control: no-cache` / `max-age` / `min-fresh`
    /// and `Pragma: no-cache` do on this route: `"honour"` (RFC 9111: the
    /// stored answer is revalidated first; concurrent such requests share one
    /// revalidation) or `"ignore"` (served from the cache as if unsaid, and not
    /// forwarded, so clients cannot force origin traffic).
    #[serde(default)]
    pub client_no_cache: ClientNoCache,
    /// Overrides `origin.connect_timeout` for requests on this route.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Overrides `origin.first_byte_timeout` for requests on this route.
    #[serde(default, with = "humantime_serde")]
    pub first_byte_timeout: Option<Duration>,
    /// Overrides `origin.timeout` for requests on this route.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Overrides `origin.request_timeout` for requests on this route.
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// `true`: a POST or PATCH carrying `Idempotency-Key` reaches the origin
    /// at most once per key (per credential, fleet-wide with `[fleet]`);
    /// retries get the first answer replayed.
    #[serde(default)]
    pub idempotency: bool,
    /// How long a completed request's answer is kept and replayed.
    #[serde(default = "default_idempotency_ttl", with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// How long a key stays locked (duplicates get 409) after an unknown
    /// outcome or an owner that died; a live owner renews it as it goes.
    #[serde(default = "default_idempotency_lease", with = "humantime_serde")]
    pub idempotency_lease: Duration,
    /// `true`: a POST or PATCH without `Idempotency-Key` is refused with 400;
    /// `false`: it is passed as on any route.
    #[serde(default)]
    pub idempotency_required: bool,
    /// Largest request body buffered to fingerprint the request; larger gets 413.
    #[serde(default = "default_idempotency_max_body")]
    pub idempotency_max_body: ByteSize,
    /// The request header whose value identifies the client, instead of
    /// `Authorization`: records are never shared across its values.
    #[serde(default)]
    pub idempotency_identity_header: Option<Spanned<String>>,
}

impl RouteConfig {
    /// Every problem with this route's Idempotency-Key settings, each at the
    /// route's `match` (or at the identity header it is about).
    fn idempotency_problems(&self) -> Vec<(Range<usize>, String)> {
        let mut problems = Vec::new();
        let span = self.pattern.span();
        let pattern = self.pattern.get_ref();
        if self.idempotency_ttl.is_zero() {
            problems.push((
                span.clone(),
                format!("route {pattern:?}: idempotency_ttl must be longer than zero"),
            ));
        }
        if self.idempotency_lease < MIN_IDEMPOTENCY_LEASE {
            problems.push((
                span.clone(),
                format!(
                    "route {pattern:?}: idempotency_lease must be at least {}",
                    humantime::format_duration(MIN_IDEMPOTENCY_LEASE)
                ),
            ));
        } else if self.idempotency_lease > self.idempotency_ttl {
            problems.push((
                span.clone(),
                format!(
                    "route {pattern:?}: idempotency_lease must not be longer than idempotency_ttl (a claim would outlive the record it stands for)"
                ),
            ));
        }
        if self.idempotency_max_body.as_u64() == 0 {
            problems.push((
                span.clone(),
                format!("route {pattern:?}: idempotency_max_body must be at least 1 byte"),
            ));
        }
        if let Some(name) = &self.idempotency_identity_header {
            let text = name.get_ref();
            if http::HeaderName::from_bytes(text.as_bytes()).is_err() {
                problems.push((
                    name.span(),
                    format!(
                        "route {pattern:?}: idempotency_identity_header {text:?} is not a header name"
                    ),
                ));
            }
        }
        if !self.idempotency
            && (self.idempotency_required || self.idempotency_identity_header.is_some())
        {
            problems.push((
                span,
                format!(
                    "route {pattern:?}: idempotency_required and idempotency_identity_header need idempotency = true"
                ),
            ));
        }
        problems
    }

    /// The compiled Idempotency-Key settings, when the route opts in.
    fn idempotency_policy(&self) -> Option<IdempotencyPolicy> {
        self.idempotency.then(|| IdempotencyPolicy {
            ttl: self.idempotency_ttl,
            lease: self.idempotency_lease,
            required: self.idempotency_required,
            max_body: self.idempotency_max_body.as_u64(),
            identity_header: self
                .idempotency_identity_header
                .as_ref()
                .and_then(|name| http::HeaderName::from_bytes(name.get_ref().as_bytes()).ok()),
        })
    }
}

fn default_idempotency_ttl() -> Duration {
    DEFAULT_IDEMPOTENCY_TTL
}
fn default_idempotency_lease() -> Duration {
    DEFAULT_IDEMPOTENCY_LEASE
}
fn default_idempotency_max_body() -> ByteSize {
    DEFAULT_IDEMPOTENCY_MAX_BODY
}
fn default_ttl() -> Duration {
    DEFAULT_TTL
}
fn default_lock_timeout() -> Duration {
    DEFAULT_LOCK_TIMEOUT
}
fn default_hit_for_pass() -> Duration {
    DEFAULT_HIT_FOR_PASS
}
fn default_heuristic_max() -> Duration {
    DEFAULT_HEURISTIC_MAX
}
fn default_true() -> bool {
    true
}
fn default_stale_if_disconnected() -> Duration {
    DEFAULT_STALE_IF_DISCONNECTED
}
fn default_stale_deadline() -> Duration {
    DEFAULT_STALE_DEADLINE
}
fn default_stream_lag_limit() -> ByteSize {
    DEFAULT_STREAM_LAG_LIMIT
}

/// A route's say in freshness: what corral does when the origin is silent,
/// and when it overrides the origin. `cache::policy` applies it (README: "Freshness precedence").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshnessPolicy {
    /// Lifetime of a 200 without explicit freshness (or of every 200 with
    /// `override_origin`).
    pub route_ttl: Duration,
    /// The route's ttls win over the origin's `s-maxage`, `max-age` and
    /// `Expires` (for 200, and for 404/410 when `negative_ttl` is set).
    pub override_origin: bool,
    /// Whether heuristic freshness from `Last-Modified` may be used.
    pub heuristic: bool,
    /// The longest heuristic lifetime.
    pub heuristic_max: Duration,
    /// Lifetime of 404 and 410 responses without freshness of their own;
    /// `None`: such answers are not stored (an error with explicit freshness
    /// is, for that long).
    pub negative_ttl: Option<Duration>,
    /// Stale-while-revalidate window used when the origin sends none.
    pub stale_while_revalidate: Option<Duration>,
    /// Stale-if-error window used when the origin sends none.
    pub stale_if_error: Option<Duration>,
}

impl FreshnessPolicy {
    /// A policy giving 200s `route_ttl` by default, with no override, no
    /// heuristic, no negative caching and no default stale windows.
    pub fn with_ttl(route_ttl: Duration) -> FreshnessPolicy {
        FreshnessPolicy {
            route_ttl,
            override_origin: false,
            heuristic: false,
            heuristic_max: Duration::ZERO,
            negative_ttl: None,
            stale_while_revalidate: None,
            stale_if_error: None,
        }
    }
}

/// Whether a route lets clients' cache directives force a trip to the origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientNoCache {
    /// Honoured as RFC 9111 says (the default).
    #[default]
    Honour,
    /// Ignored: the cache answers as if the client had said nothing.
    Ignore,
}

/// A host (and optionally one port) a request may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lowercase host name or address (IPv6 in brackets, as in a URI).
    pub host: String,
    /// The only port allowed, or `None` for any.
    pub port: Option<u16>,
}

impl HostPattern {
    /// Parses a `name` or `name:port` entry; `None` when it is not one.
    pub fn parse(entry: &str) -> Option<HostPattern> {
        let authority = entry.parse::<http::uri::Authority>().ok()?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return None;
        }
        Some(HostPattern {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16(),
        })
    }

    /// Whether `host` (any case) on `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.host.eq_ignore_ascii_case(host) && self.port.is_none_or(|p| p == port)
    }
}

/// One thing wrong with a configuration, at the position of the value it is
/// about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line of the offending value (1 when the value has no position,
    /// as with `--origin` or a setting whose span is not recorded).
    pub line: usize,
    /// 1-based column, in characters, of the offending value (1 when it has no
    /// position).
    pub column: usize,
    /// What is wrong, in words.
    pub reason: String,
}

/// Why a configuration was refused. Displays as `file:line:col: reason`, one
/// line per problem, so editors and CI logs can jump to each.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read config: {source}", path.display())]
    ReadConfigFile {
        /// The file that was asked for.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration. Displays one
    /// `file:line:col: reason` line per problem, in the order of `problems`,
    /// joined by `\n` (no trailing newline).
    #[error("{}", display_problems(path, problems))]
    InvalidConfig {
        /// The file the problems are in.
        path: PathBuf,
        /// Every problem found, in file order (by line, then column; problems
        /// at the same position in the order they were checked). Never empty
        /// when built by [`Config`]: a TOML syntax or type error is the one
        /// problem reported (parsing cannot go on past it); a file that parses
        /// has all its semantic problems reported together.
        problems: Vec<ConfigProblem>,
    },
}

/// `path:line:col: reason` for each problem, one per line.
fn display_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    if problems.is_empty() {
        return format!("{}: invalid config", path.display());
    }
    problems
        .iter()
        .map(|p| format!("{}:{}:{}: {}", path.display(), p.line, p.column, p.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::ReadConfigFile`] when it cannot be read,
    /// [`ConfigError::InvalidConfig`] with the position of every problem otherwise
    /// (see [`Config::parse`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadConfigFile {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is used only to label errors.
    ///
    /// # Errors
    /// [`ConfigError::InvalidConfig`] naming the line, column and reason of
    /// each problem, in file order: the one TOML syntax or type error when
    /// `text` does not parse, else every semantic problem at once.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let source = Source {
            path: path.to_owned(),
            text: Arc::from(text),
        };
        let mut config: Config = toml::from_str(text).map_err(|e| {
            source.refuse(vec![(
                e.span().unwrap_or(0..0),
                e.message().trim().to_owned(),
            )])
        })?;
        config.source = source;
        config.resolve_relative_paths();
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        Err(config.refuse(problems))
    }

    /// Refuses this config for `problems` found after parsing (in the files
    /// it names, say), each at the position of the value it is about, in the
    /// same form as the problems [`Config::parse`] finds.
    pub fn refuse(&self, problems: Vec<PlacedProblem>) -> ConfigError {
        self.source.refuse(problems)
    }

    /// Every certificate, key and CA file path in the config, made absolute
    /// against the config file's directory when written relative: corral
    /// may run from anywhere, and the file is what the operator wrote them
    /// next to.
    fn resolve_relative_paths(&mut self) {
        let Some(base) = self
            .source
            .path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(Path::to_owned)
        else {
            return;
        };
        let resolve = |file: &mut Spanned<PathBuf>| {
            if file.get_ref().is_relative() {
                *file = Spanned::new(file.span(), base.join(file.get_ref()));
            }
        };
        for tls in [&mut self.server.tls, &mut self.admin.tls]
            .into_iter()
            .flatten()
        {
            resolve(&mut tls.cert_file);
            resolve(&mut tls.key_file);
        }
        for origin in std::iter::once(&mut self.origin).chain(self.origins.values_mut()) {
            if let Some(ca_file) = &mut origin.ca_file {
                resolve(ca_file);
            }
        }
    }

    /// The configuration `corral --origin URL` runs with: one catch-all route.
    ///
    /// # Errors
    /// [`ConfigError::InvalidConfig`] when `origin` is not a usable URL.
    pub fn for_origin(
        origin: &str,
        listen: SocketAddr,
        admin_listen: SocketAddr,
        ttl: Duration,
    ) -> Result<Config, ConfigError> {
        let config = Config {
            server: ServerConfig {
                listen,
                admin_listen,
                ..ServerConfig::default()
            },
            origin: OriginConfig::for_url(Spanned::new(0..0, origin.to_owned())),
            cache: CacheConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            fleet: FleetConfig::default(),
            origins: BTreeMap::new(),
            routes: vec![RouteConfig {
                name: Some("default".to_owned()),
                pattern: Spanned::new(0..0, "/".to_owned()),
                origin: None,
                ttl,
                override_origin: false,
                heuristic: false,
                heuristic_max: DEFAULT_HEURISTIC_MAX,
                negative_ttl: None,
                stale_while_revalidate: None,
                stale_if_error: None,
                stale_if_disconnected: DEFAULT_STALE_IF_DISCONNECTED,
                stale_deadline: DEFAULT_STALE_DEADLINE,
                stream_lag_limit: DEFAULT_STREAM_LAG_LIMIT,
                lock_timeout: DEFAULT_LOCK_TIMEOUT,
                hit_for_pass: DEFAULT_HIT_FOR_PASS,
                cache: true,
                preserve_host: false,
                hosts: Vec::new(),
                forward_headers: Vec::new(),
                client_no_cache: ClientNoCache::Honour,
                connect_timeout: None,
                first_byte_timeout: None,
                timeout: None,
                request_timeout: None,
                idempotency: false,
                idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
                idempotency_lease: DEFAULT_IDEMPOTENCY_LEASE,
                idempotency_required: false,
                idempotency_max_body: DEFAULT_IDEMPOTENCY_MAX_BODY,
                idempotency_identity_header: None,
            }],
            source: Source {
                path: PathBuf::from("--origin"),
                text: Arc::from(""),
            },
        };
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        Err(config.refuse(problems))
    }

    /// The default origin (named `None`) and every `[origins.NAME]`, in name order.
    pub fn all_origins(&self) -> impl Iterator<Item = (Option<&str>, &OriginConfig)> {
        std::iter::once((None, &self.origin)).chain(
            self.origins
                .iter()
                .map(|(name, origin)| (Some(name.as_str()), origin)),
        )
    }

    /// This config with `window` as every route's default stale-if-error
    /// window (the quick start's `--stale-if-error`).
    pub fn with_stale_if_error(mut self, window: Duration) -> Config {
        for route in &mut self.routes {
            route.stale_if_error = Some(window);
        }
        self
    }

    /// Checks what serde cannot: URL shape, pattern shape, sizes that contradict.
    /// Returns every problem found, each with the span of the value it is about
    /// (`0..0` when that value has none), in the order checked; empty when the
    /// configuration is valid.
    fn validate(&self) -> Vec<(Range<usize>, String)> {
        let mut problems: Vec<(Range<usize>, String)> = Vec::new();
        let url_span = self.origin.url.span();
        for reason in self.origin.problems("origin") {
            problems.push((url_span.clone(), reason));
        }
        for (name, origin) in &self.origins {
            let span = origin.url.span();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                problems.push((
                    span.clone(),
                    format!("origins name {name:?} must be letters, digits, '-' and '_'"),
                ));
            }
            let table = format!("origins.{name}");
            for reason in origin.problems(&table) {
                problems.push((span.clone(), reason));
            }
            for reason in origin.absurd_durations(&table) {
                problems.push((span.clone(), reason));
            }
        }
        for route in &self.routes {
            let pattern = route.pattern.get_ref();
            if !pattern.starts_with('/') && !pattern.starts_with('*') {
                problems.push((
                    route.pattern.span(),
                    format!("route match {pattern:?} must start with '/' or '*'"),
                ));
            }
            let overrides = [
                route.connect_timeout,
                route.first_byte_timeout,
                route.timeout,
                route.request_timeout,
            ];
            if overrides.iter().flatten().any(Duration::is_zero) {
                problems.push((
                    route.pattern.span(),
                    format!("route {pattern:?}: timeouts must be longer than zero"),
                ));
            }
            for host in &route.hosts {
                if HostPattern::parse(host.get_ref()).is_none() {
                    problems.push((
                        host.span(),
                        format!(
                            "route {pattern:?}: hosts entry {:?} must be a host name or host:port",
                            host.get_ref()
                        ),
                    ));
                }
            }
            if route.preserve_host && route.hosts.is_empty() && self.server.hosts.is_empty() {
                problems.push((
                    route.pattern.span(),
                    format!(
                        "route {pattern:?} preserves Host but no hosts are listed (the route's `hosts` or `server.hosts`): any client could pick the key and the upstream Host"
                    ),
                ));
            }
            for name in &route.forward_headers {
                let text = name.get_ref();
                let lower = text.to_ascii_lowercase();
                if http::HeaderName::from_bytes(text.as_bytes()).is_err() {
                    problems.push((
                        name.span(),
                        format!(
                            "route {pattern:?}: forward_headers entry {text:?} is not a header name"
                        ),
                    ));
                } else if UNFORWARDABLE.contains(&lower.as_str()) || lower.starts_with("if-") {
                    problems.push((
                        name.span(),
                        format!(
                            "route {pattern:?}: forward_headers cannot name {text:?}: it frames the message, carries credentials or a condition, or is corral's to set"
                        ),
                    ));
                }
            }
            if let Some(origin) = &route.origin
                && !self.origins.contains_key(origin.get_ref())
            {
                let defined: Vec<&str> = self.origins.keys().map(String::as_str).collect();
                problems.push((
                    origin.span(),
                    format!(
                        "route {pattern:?}: origin {:?} is not defined (add an [origins.{}] table; defined: {})",
                        origin.get_ref(),
                        origin.get_ref(),
                        if defined.is_empty() { "none".to_owned() } else { defined.join(", ") }
                    ),
                ));
            }
            if route.lock_timeout.is_zero() {
                problems.push((
                    route.pattern.span(),
                    format!(
                        "route {pattern:?}: lock_timeout must be longer than zero (every follower would get 504)"
                    ),
                ));
            }
            if route.stream_lag_limit.as_u64() < 64 * 1024 {
                problems.push((
                    route.pattern.span(),
                    format!(
                        "route {pattern:?}: stream_lag_limit must be at least 64KiB (a reader one read behind would be cut loose)"
                    ),
                ));
            }
            problems.extend(route.idempotency_problems());
            let durations = [
                ("ttl", Some(route.ttl)),
                ("heuristic_max", Some(route.heuristic_max)),
                ("negative_ttl", route.negative_ttl),
                ("stale_while_revalidate", route.stale_while_revalidate),
                ("stale_if_error", route.stale_if_error),
                ("stale_if_disconnected", Some(route.stale_if_disconnected)),
                ("stale_deadline", Some(route.stale_deadline)),
                ("lock_timeout", Some(route.lock_timeout)),
                ("hit_for_pass", Some(route.hit_for_pass)),
                ("connect_timeout", route.connect_timeout),
                ("first_byte_timeout", route.first_byte_timeout),
                ("timeout", route.timeout),
                ("request_timeout", route.request_timeout),
                ("idempotency_ttl", Some(route.idempotency_ttl)),
                ("idempotency_lease", Some(route.idempotency_lease)),
            ];
            for (key, _) in durations
                .iter()
                .filter(|(_, d)| d.is_some_and(|d| d > MAX_DURATION))
            {
                problems.push((
                    route.pattern.span(),
                    format!(
                        "route {pattern:?}: {key} is longer than the {} allowed",
                        humantime::format_duration(MAX_DURATION)
                    ),
                ));
            }
        }
        let server = [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.shutdown_timeout", self.server.shutdown_timeout),
        ];
        for (key, _) in server.iter().filter(|(_, d)| *d > MAX_DURATION) {
            problems.push((
                url_span.clone(),
                format!(
                    "{key} is longer than the {} allowed",
                    humantime::format_duration(MAX_DURATION)
                ),
            ));
        }
        for reason in self.origin.absurd_durations("origin") {
            problems.push((url_span.clone(), reason));
        }
        for host in &self.server.hosts {
            let name = host.get_ref();
            if HostPattern::parse(name).is_none() {
                problems.push((
                    host.span(),
                    format!("server.hosts entry {name:?} must be a host name or host:port"),
                ));
            }
        }
        // These settings are plain values (no span is recorded), so they are
        // reported at the start of the file.
        if self.cache.max_variants == 0 {
            problems.push((0..0, "cache.max_variants must be at least 1".to_owned()));
        }
        if self.cache.max_object_size > self.cache.max_size {
            problems.push((
                0..0,
                "cache.max_object_size is larger than cache.max_size".to_owned(),
            ));
        }
        problems.extend(self.fleet.problems());
        problems
    }

    /// Compiles the routes into the table the proxy matches requests against.
    pub fn route_table(&self) -> RouteTable {
        let routes = self
            .routes
            .iter()
            .map(|r| {
                let pattern = r.pattern.get_ref().clone();
                let matcher = if pattern.contains(['*', '?']) {
                    PathMatcher::Glob(WildMatch::new(&pattern))
                } else {
                    PathMatcher::Prefix(pattern.clone())
                };
                Route {
                    name: r.name.clone().unwrap_or_else(|| pattern.clone()),
                    matcher,
                    origin: r.origin.as_ref().map(|name| name.get_ref().clone()),
                    freshness: FreshnessPolicy {
                        route_ttl: r.ttl,
                        override_origin: r.override_origin,
                        heuristic: r.heuristic,
                        heuristic_max: r.heuristic_max,
                        negative_ttl: r.negative_ttl,
                        stale_while_revalidate: r.stale_while_revalidate,
                        stale_if_error: r.stale_if_error,
                    },
                    stale_if_disconnected: r.stale_if_disconnected,
                    stale_deadline: r.stale_deadline,
                    stream_lag_limit: r.stream_lag_limit.as_u64(),
                    lock_timeout: r.lock_timeout,
                    hit_for_pass: r.hit_for_pass,
                    cache: r.cache,
                    preserve_host: r.preserve_host,
                    hosts: r
                        .hosts
                        .iter()
                        .filter_map(|h| HostPattern::parse(h.get_ref()))
                        .collect(),
                    forward_headers: r
                        .forward_headers
                        .iter()
                        .filter_map(|h| http::HeaderName::from_bytes(h.get_ref().as_bytes()).ok())
                        .collect(),
                    client_no_cache: r.client_no_cache,
                    connect_timeout: r.connect_timeout,
                    first_byte_timeout: r.first_byte_timeout,
                    timeout: r.timeout,
                    request_timeout: r.request_timeout,
                    idempotency: r.idempotency_policy(),
                }
            })
            .collect();
        RouteTable { routes }
    }
}

/// The name of the table that configures the origin named `name`:
/// `origin` for the default one, `origins.NAME` for the others.
pub fn origin_table(name: Option<&str>) -> String {
    name.map_or_else(|| "origin".to_owned(), |name| format!("origins.{name}"))
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// How a route decides whether a path is its own.
#[derive(Debug, Clone)]
enum PathMatcher {
    /// The path starts with this string.
    Prefix(String),
    /// The whole path matches this glob (`*` any run of characters, `?` one).
    Glob(WildMatch),
}

/// A compiled route: everything the proxy needs to treat a matching request.
#[derive(Debug, Clone)]
pub struct Route {
    /// Label for metrics and logs (bounded: comes from the config, never the path).
    pub name: String,
    matcher: PathMatcher,
    /// The `[origins.NAME]` requests on this route go to (a name the config
    /// defines); `None`: the default `[origin]`.
    pub origin: Option<String>,
    /// The route's say in freshness: default and overriding ttls, heuristic,
    /// negative caching and default stale windows.
    pub freshness: FreshnessPolicy,
    /// How stale an entry may be and still be served while the origin
    /// cannot be reached.
    pub stale_if_disconnected: Duration,
    /// How long a client that could be served stale waits on a slow origin.
    pub stale_deadline: Duration,
    /// How far (bytes) a reader of an answer too large to store may fall
    /// behind the fastest reader of the same fetch.
    pub stream_lag_limit: u64,
    /// Bound on a follower's wait for its leader.
    pub lock_timeout: Duration,
    /// How long an unshareable key bypasses coalescing.
    pub hit_for_pass: Duration,
    /// Whether responses on this route are cached and coalesced at all.
    pub cache: bool,
    /// Whether the client's `Host` is forwarded to the origin (and keyed on)
    /// instead of the origin's.
    pub preserve_host: bool,
    /// Hosts this route accepts besides `server.hosts` when it preserves `Host`.
    pub hosts: Vec<HostPattern>,
    /// Request headers fills forward beyond the fixed set; each also selects
    /// the stored variant (compared byte for byte).
    pub forward_headers: Vec<http::HeaderName>,
    /// Whether clients' cache directives may force a trip to the origin.
    pub client_no_cache: ClientNoCache,
    /// Override of the origin's connect timeout, if any.
    pub connect_timeout: Option<Duration>,
    /// Override of the origin's first-byte timeout, if any.
    pub first_byte_timeout: Option<Duration>,
    /// Override of the origin's whole-response timeout, if any.
    pub timeout: Option<Duration>,
    /// Override of the origin's request deadline, if any.
    pub request_timeout: Option<Duration>,
    /// How POST and PATCH requests carrying `Idempotency-Key` are made to
    /// happen once; `None` when the route does not opt in.
    pub idempotency: Option<IdempotencyPolicy>,
}

/// A route's Idempotency-Key settings, compiled: what the proxy reads for a
/// POST or PATCH on a route with `idempotency = true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyPolicy {
    /// How long a completed request's record is kept and replayed.
    pub ttl: Duration,
    /// How long a claim outlives an owner that stopped renewing it.
    pub lease: Duration,
    /// Whether a POST or PATCH without the header is refused (400).
    pub required: bool,
    /// Largest request body buffered to fingerprint the request, in bytes.
    pub max_body: u64,
    /// The header identifying the client instead of `Authorization`.
    pub identity_header: Option<http::HeaderName>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            PathMatcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatcher::Glob(glob) => glob.matches(path),
        }
    }
}

/// Routes in configuration order; the first match wins.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// The first route matching `path`, with its index, or `None` (pass through).
    pub fn find(&self, path: &str) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(path))
    }

    /// All routes in match order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("corral.toml"))
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../config/corral.toml");
        let config = parse(text).unwrap();
        assert_eq!(config.routes.len(), 2);
        assert!(config.routes.iter().any(|r| !r.cache));
    }

    #[test]
    fn shipped_example_config_sets_the_freshness_keys() {
        let config = parse(include_str!("../config/corral.toml")).unwrap();
        assert_eq!(config.cache.max_variants, DEFAULT_MAX_VARIANTS);
        let table = config.route_table();
        let products = &table.routes()[0].freshness;
        assert_eq!(products.route_ttl, Duration::from_secs(30));
        assert_eq!(products.heuristic_max, DEFAULT_HEURISTIC_MAX);
        assert_eq!(
            products.stale_while_revalidate,
            Some(Duration::from_secs(10))
        );
        assert_eq!(products.stale_if_error, Some(Duration::from_secs(300)));
        assert_eq!(products.negative_ttl, None);
    }

    #[test]
    fn freshness_keys_parse_into_the_route_policy_with_defaults() {
        let config = parse(
            r#"
[origin]
url = "http://a:1"
[cache]
max_variants = 3
[[route]]
match = "/tuned/"
ttl = "5m"
override_origin = true
heuristic = true
heuristic_max = "2h"
negative_ttl = "15s"
stale_while_revalidate = "30s"
stale_if_error = "1h"
[[route]]
match = "/"
"#,
        )
        .unwrap();
        assert_eq!(config.cache.max_variants, 3);
        let table = config.route_table();
        let tuned = &table.find("/tuned/x").unwrap().1.freshness;
        assert_eq!(
            *tuned,
            FreshnessPolicy {
                route_ttl: Duration::from_secs(300),
                override_origin: true,
                heuristic: true,
                heuristic_max: Duration::from_secs(7200),
                negative_ttl: Some(Duration::from_secs(15)),
                stale_while_revalidate: Some(Duration::from_secs(30)),
                stale_if_error: Some(Duration::from_secs(3600)),
            }
        );
        let plain = &table.find("/x").unwrap().1.freshness;
        assert_eq!(
            *plain,
            FreshnessPolicy {
                heuristic_max: DEFAULT_HEURISTIC_MAX,
                ..FreshnessPolicy::with_ttl(DEFAULT_TTL)
            }
        );
        let defaults = parse("[origin]\nurl = \"http://a:1\"\n").unwrap();
        assert_eq!(defaults.cache.max_variants, DEFAULT_MAX_VARIANTS);
        let err = parse("[origin]\nurl = \"http://a:1\"\n[cache]\nmax_variants = 0\n").unwrap_err();
        assert!(err.to_string().contains("max_variants"), "{err}");
    }

    #[test]
    fn absurd_durations_and_a_zero_lock_timeout_are_refused() {
        let err = parse("[origin]\nurl = \"http://a:1\"\n[[route]]\nmatch = \"/\"\nlock_timeout = \"500000000000y\"\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("lock_timeout is longer than"),
            "{err}"
        );
        let err = parse(
            "[origin]\nurl = \"http://a:1\"\n[[route]]\nmatch = \"/\"\nlock_timeout = \"0s\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("corral.toml:4:9: "), "{err}");
        let err = parse("[origin]\nurl = \"http://a:1\"\nqueue_timeout = \"20y\"\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("origin.queue_timeout is longer than"),
            "{err}"
        );
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let config = parse("[origin]\nurl = \"http://127.0.0.1:9000\"\n").unwrap();
        assert_eq!(config.server.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.cache.max_size, DEFAULT_CACHE_MAX_SIZE);
        assert_eq!(config.origin.timeout, DEFAULT_ORIGIN_TIMEOUT);
        assert!(config.routes.is_empty());
    }

    #[test]
    fn durations_and_sizes_are_human_readable() {
        let config = parse(
            r#"
[origin]
url = "http://127.0.0.1:9000"
timeout = "250ms"
[cache]
max_size = "64MiB"
max_object_size = "1MiB"
[[route]]
match = "/api/*"
ttl = "2m"
lock_timeout = "1s"
"#,
        )
        .unwrap();
        assert_eq!(config.origin.timeout, Duration::from_millis(250));
        assert_eq!(config.cache.max_size, ByteSize::mib(64));
        assert_eq!(config.routes[0].ttl, Duration::from_secs(120));
        assert_eq!(config.routes[0].lock_timeout, Duration::from_secs(1));
    }

    #[test]
    fn unknown_key_is_refused_with_its_position() {
        let err = parse("[origin]\nurl = \"http://a:1\"\nspeed = 3\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("corral.toml:3:1: "), "{text}");
        assert!(text.contains("speed"), "{text}");
    }

    #[test]
    fn bad_duration_is_refused_with_its_position() {
        let err = parse("[origin]\nurl = \"http://a:1\"\ntimeout = \"ten seconds\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("corral.toml:3:11: "), "{text}");
    }

    #[test]
    fn non_http_origin_is_refused_at_the_url() {
        let err = parse("[origin]\nurl = \"ftp://a:1\"\n").unwrap_err();
        assert!(err.to_string().starts_with("corral.toml:2:7: "), "{err}");
    }

    #[test]
    fn route_pattern_must_be_a_path() {
        let err =
            parse("[origin]\nurl = \"http://a:1\"\n[[route]]\nmatch = \"api\"\n").unwrap_err();
        assert!(err.to_string().starts_with("corral.toml:4:9: "), "{err}");
    }

    #[test]
    fn first_matching_route_wins_prefix_and_glob() {
        let config = parse(
            r#"
[origin]
url = "http://a:1"
[[route]]
name = "cart"
match = "/api/cart/*"
cache = false
[[route]]
name = "api"
match = "/api/"
[[route]]
name = "reviews"
match = "/shop/*/reviews"
"#,
        )
        .unwrap();
        let table = config.route_table();
        assert_eq!(table.find("/api/cart/7").unwrap().1.name, "cart");
        assert_eq!(table.find("/api/products/7").unwrap().1.name, "api");
        assert_eq!(table.find("/shop/9/reviews").unwrap().1.name, "reviews");
        assert!(table.find("/shop/9").is_none());
        assert!(!table.find("/api/cart/7").unwrap().1.cache);
    }

    #[test]
    fn for_origin_builds_a_catch_all_route() {
        let config = Config::for_origin(
            "http://127.0.0.1:9000",
            DEFAULT_LISTEN.parse().unwrap(),
            DEFAULT_ADMIN_LISTEN.parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        let table = config.route_table();
        let (_, route) = table.find("/anything?x=1").unwrap();
        assert_eq!(route.freshness.route_ttl, Duration::from_secs(5));
    }

    #[test]
    fn client_limits_parse_and_foreign_host_entries_are_refused() {
        let config = parse(
            r#"
[origin]
url = "http://a:1"
[server]
max_request_body = "2MiB"
idle_timeout = "90s"
hosts = ["shop.example", "api.example:8080"]
[[route]]
match = "/"
preserve_host = true
"#,
        )
        .unwrap();
        assert_eq!(config.server.max_request_body, ByteSize::mib(2));
        assert_eq!(config.server.idle_timeout, Duration::from_secs(90));
        assert_eq!(config.server.hosts.len(), 2);
        assert!(config.route_table().routes()[0].preserve_host);

        let defaults = parse("[origin]\nurl = \"http://a:1\"\n").unwrap();
        assert_eq!(defaults.server.max_request_body, DEFAULT_MAX_REQUEST_BODY);
        assert_eq!(defaults.server.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert!(defaults.server.hosts.is_empty());

        let err = parse("[origin]\nurl = \"http://a:1\"\n[server]\nhosts = [\"user@evil\"]\n")
            .unwrap_err();
        assert!(err.to_string().starts_with("corral.toml:4:10: "), "{err}");
    }

    #[test]
    fn origin_protection_keys_parse_with_defaults_and_route_overrides() {
        let config = parse(
            r#"
[origin]
url = "http://a:1"
first_byte_timeout = "2s"
request_timeout = "20s"
retries = 3
retry_backoff = "10ms"
retry_backoff_max = "500ms"
retry_budget = 0.1
retry_budget_window = "30s"
max_retry_after = "2m"
breaker_failure_rate = 0.25
breaker_min_requests = 50
breaker_window = "1m"
breaker_open_for = "15s"
max_concurrent = 64
queue_depth = 0
queue_timeout = "250ms"
[[route]]
match = "/slow/"
first_byte_timeout = "30s"
timeout = "1m"
[[route]]
match = "/"
"#,
        )
        .unwrap();
        let origin = &config.origin;
        assert_eq!(origin.first_byte_timeout, Duration::from_secs(2));
        assert_eq!(origin.request_timeout, Duration::from_secs(20));
        assert_eq!(origin.retries, 3);
        assert_eq!(origin.retry_budget, 0.1);
        assert_eq!(origin.max_retry_after, Duration::from_secs(120));
        assert_eq!(origin.breaker_min_requests, 50);
        assert_eq!(origin.breaker_open_for, Duration::from_secs(15));
        assert_eq!(origin.max_concurrent, 64);
        assert_eq!(origin.queue_depth, 0);
        assert_eq!(origin.queue_timeout, Duration::from_millis(250));
        let table = config.route_table();
        let slow = table.find("/slow/x").unwrap().1;
        assert_eq!(slow.first_byte_timeout, Some(Duration::from_secs(30)));
        assert_eq!(slow.timeout, Some(Duration::from_secs(60)));
        assert_eq!(slow.connect_timeout, None);
        assert_eq!(table.find("/x").unwrap().1.request_timeout, None);

        let defaults = parse("[origin]\nurl = \"http://a:1\"\n").unwrap().origin;
        assert_eq!(defaults.retries, DEFAULT_RETRIES);
        assert_eq!(defaults.retry_budget, DEFAULT_RETRY_BUDGET);
        assert_eq!(defaults.max_concurrent, DEFAULT_MAX_CONCURRENT);
        assert_eq!(defaults.breaker_open_for, DEFAULT_BREAKER_OPEN_FOR);
    }

    /// The problems of a refused config, or a panic naming what was returned.
    fn problems(text: &str) -> Vec<ConfigProblem> {
        match parse(text) {
            Err(ConfigError::InvalidConfig { problems, .. }) => problems,
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    fn problem(line: usize, column: usize, reason: &str) -> ConfigProblem {
        ConfigProblem {
            line,
            column,
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn every_problem_of_a_file_is_reported_in_file_order() {
        // Checked routes first and server.hosts last; reported by position.
        let text = r#"[server]
hosts = ["ok.example", "user@evil"]
[origin]
url = "http://a:1"
[[route]]
match = "api"
[[route]]
match = "/b/"
lock_timeout = "0s"
"#;
        assert_eq!(
            problems(text),
            [
                problem(
                    2,
                    24,
                    r#"server.hosts entry "user@evil" must be a host name or host:port"#
                ),
                problem(6, 9, r#"route match "api" must start with '/' or '*'"#),
                problem(
                    8,
                    9,
                    r#"route "/b/": lock_timeout must be longer than zero (every follower would get 504)"#
                ),
            ]
        );
        let err = parse(text).unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{err}");
        assert!(
            lines[0].starts_with("corral.toml:2:24: server.hosts"),
            "{err}"
        );
        assert!(
            lines[1].starts_with("corral.toml:6:9: route match"),
            "{err}"
        );
        assert!(
            lines[2].starts_with("corral.toml:8:9: route \"/b/\""),
            "{err}"
        );
    }

    #[test]
    fn every_failed_check_of_one_setting_group_is_reported() {
        let reasons: Vec<String> = problems(
            r#"[origin]
url = "http://a:1"
timeout = "0s"
max_concurrent = 0
breaker_min_requests = 0
[cache]
max_variants = 0
[[route]]
match = "api"
lock_timeout = "0s"
forward_headers = ["Cookie", "X-Tenant"]
"#,
        )
        .into_iter()
        .map(|p| format!("{}:{}: {}", p.line, p.column, p.reason))
        .collect();
        assert_eq!(
            reasons,
            [
                "1:1: cache.max_variants must be at least 1",
                "2:7: origin.timeout must be longer than zero",
                "2:7: origin.breaker_min_requests must be at least 1",
                "2:7: origin.max_concurrent must be at least 1",
                r#"9:9: route match "api" must start with '/' or '*'"#,
                r#"9:9: route "api": lock_timeout must be longer than zero (every follower would get 504)"#,
                r#"11:20: route "api": forward_headers cannot name "Cookie": it frames the message, carries credentials or a condition, or is corral's to set"#,
            ]
        );
    }

    #[test]
    fn a_file_that_does_not_parse_is_one_problem() {
        // Two semantic problems (lines 2 and 4), then a syntax error: only the
        // syntax error is reported, since nothing past it can be checked.
        let found = problems("[origin]\nurl = \"ftp://a:1\"\n[[route]]\nmatch = \"api\"\nttl = \n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].line, 5, "{found:?}");
    }

    #[test]
    fn for_origin_reports_every_problem_at_the_flag() {
        let err = Config::for_origin(
            "ftp://a:1/?q",
            DEFAULT_LISTEN.parse().unwrap(),
            DEFAULT_ADMIN_LISTEN.parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap_err()
        .to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("--origin:1:1: origin url")),
            "{err}"
        );
    }

    #[test]
    fn impossible_origin_protection_settings_are_refused() {
        for (key, reason) in [
            ("max_concurrent = 0", "origin.max_concurrent"),
            ("breaker_failure_rate = 1.5", "origin.breaker_failure_rate"),
            ("breaker_failure_rate = 0.0", "origin.breaker_failure_rate"),
            ("breaker_min_requests = 0", "origin.breaker_min_requests"),
            ("retry_budget = -0.1", "origin.retry_budget"),
            ("request_timeout = \"0s\"", "origin.request_timeout"),
        ] {
            let err = parse(&format!("[origin]\nurl = \"http://a:1\"\n{key}\n")).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("corral.toml:2:7: "), "{key}: {text}");
            assert!(text.contains(reason), "{key}: {text}");
        }
        let err =
            parse("[origin]\nurl = \"http://a:1\"\n[[route]]\nmatch = \"/a\"\ntimeout = \"0s\"\n")
                .unwrap_err();
        assert!(err.to_string().starts_with("corral.toml:4:9: "), "{err}");
    }

    #[test]
    fn idempotency_keys_parse_into_the_route_policy_with_defaults() {
        let config = parse(
            r#"
[origin]
url = "http://a:1"
[[route]]
match = "/orders/"
cache = false
idempotency = true
idempotency_ttl = "1h"
idempotency_lease = "30s"
idempotency_required = true
idempotency_max_body = "64KiB"
idempotency_identity_header = "X-Api-Key"
[[route]]
match = "/carts/"
idempotency = true
[[route]]
match = "/"
"#,
        )
        .unwrap();
        let table = config.route_table();
        assert_eq!(
            table.find("/orders/7").unwrap().1.idempotency,
            Some(IdempotencyPolicy {
                ttl: Duration::from_secs(3600),
                lease: Duration::from_secs(30),
                required: true,
                max_body: 64 * 1024,
                identity_header: Some(http::HeaderName::from_static("x-api-key")),
            })
        );
        assert_eq!(
            table.find("/carts/1").unwrap().1.idempotency,
            Some(IdempotencyPolicy {
                ttl: DEFAULT_IDEMPOTENCY_TTL,
                lease: DEFAULT_IDEMPOTENCY_LEASE,
                required: false,
                max_body: DEFAULT_IDEMPOTENCY_MAX_BODY.as_u64(),
                identity_header: None,
            })
        );
        assert_eq!(table.find("/x").unwrap().1.idempotency, None);
    }

    #[test]
    fn impossible_idempotency_settings_are_refused_at_the_route() {
        let reasons: Vec<String> = problems(
            r#"[origin]
url = "http://a:1"
[[route]]
match = "/a/"
idempotency = true
idempotency_ttl = "0s"
idempotency_max_body = "0B"
idempotency_identity_header = "not a header"
[[route]]
match = "/b/"
idempotency = true
idempotency_lease = "10ms"
[[route]]
match = "/c/"
idempotency = true
idempotency_ttl = "1m"
idempotency_lease = "2m"
[[route]]
match = "/d/"
idempotency_required = true
"#,
        )
        .into_iter()
        .map(|p| format!("{}:{}: {}", p.line, p.column, p.reason))
        .collect();
        assert_eq!(
            reasons,
            [
                r#"4:9: route "/a/": idempotency_ttl must be longer than zero"#,
                r#"4:9: route "/a/": idempotency_lease must not be longer than idempotency_ttl (a claim would outlive the record it stands for)"#,
                r#"4:9: route "/a/": idempotency_max_body must be at least 1 byte"#,
                r#"8:31: route "/a/": idempotency_identity_header "not a header" is not a header name"#,
                r#"10:9: route "/b/": idempotency_lease must be at least 100ms"#,
                r#"14:9: route "/c/": idempotency_lease must not be longer than idempotency_ttl (a claim would outlive the record it stands for)"#,
                r#"19:9: route "/d/": idempotency_required and idempotency_identity_header need idempotency = true"#,
            ]
        );
    }
}
