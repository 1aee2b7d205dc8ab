//! Every metric corral exports: names, labels and typed handles, registered in
//! one registry per running instance (never a global), encoded in the
//! Prometheus text format by prometheus-client.
//!
//! Label values are bounded: route names come from the config, cache statuses
//! and origin outcomes from fixed sets. Per-route handles are resolved once when
//! the route table is built, so the request path only touches atomics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Cache statuses in label order; indexes [`RouteMetrics::requests`].
/// How a request was answered, as the `cache_status` label says it. The proxy
/// maps its richer outcome onto one of these; metrics owns the label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatusLabel {
    /// Served fresh from the cache.
    Hit,
    /// This request's fetch went to the origin.
    Miss,
    /// This request waited on another request's fetch.
    Coalesced,
    /// Served stale from the cache.
    Stale,
    /// Relayed without caching or coalescing.
    Pass,
    /// Answered with an error by corral itself.
    Error,
}

impl CacheStatusLabel {
    /// Every label, in index order.
    pub const ALL: [CacheStatusLabel; 6] = [
        CacheStatusLabel::Hit,
        CacheStatusLabel::Miss,
        CacheStatusLabel::Coalesced,
        CacheStatusLabel::Stale,
        CacheStatusLabel::Pass,
        CacheStatusLabel::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatusLabel::Hit => "hit",
            CacheStatusLabel::Miss => "miss",
            CacheStatusLabel::Coalesced => "coalesced",
            CacheStatusLabel::Stale => "stale",
            CacheStatusLabel::Pass => "pass",
            CacheStatusLabel::Error => "error",
        }
    }
}

/// Why a request was answered without the origin (`corral_shed_total`'s
/// `reason`). The origin client maps its refusals onto these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The circuit breaker is open.
    CircuitOpen,
    /// The origin asked for a pause with `Retry-After`.
    RetryAfter,
    /// Every concurrency slot was busy and the queue was full.
    QueueFull,
    /// The request waited in the queue too long.
    QueueTimeout,
}

impl ShedReason {
    /// Every reason, in index order.
    pub const ALL: [ShedReason; 4] = [
        ShedReason::CircuitOpen,
        ShedReason::RetryAfter,
        ShedReason::QueueFull,
        ShedReason::QueueTimeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::CircuitOpen => "circuit_open",
            ShedReason::RetryAfter => "retry_after",
            ShedReason::QueueFull => "queue_full",
            ShedReason::QueueTimeout => "queue_timeout",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    cache_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    route: String,
    status: String,
}

/// The registry and every metric in it. Shared by `Arc`; all updates are atomic.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_durations: Family<RequestLabels, LatencyHistogram>,
    origin_requests: Family<OriginLabels, Counter>,
    /// Time from sending an origin request to its response head.
    pub origin_duration: Histogram,
    /// Keys with an origin fetch in flight now.
    pub flights_in_progress: Gauge,
    /// Requests that waited on another request's fetch, since start.
    pub flight_followers: Counter,
    /// Requests waiting on another request's fetch now.
    pub followers_waiting: Gauge,
    /// Hits answered on the listener's quick path (also counted in
    /// `requests` as hits), since start.
    pub quick_hits: Counter,
    /// Bytes held by bodies shared with the clients of their fetch now.
    pub stream_retained_bytes: Gauge,
    /// Readers of a shared body cut loose for falling too far behind, since start.
    pub stream_readers_cut: Counter,
    /// Entries in the hot cache, as of the last scrape.
    pub cache_entries: Gauge,
    /// Bytes charged to the hot cache, as of the last scrape.
    pub cache_bytes: Gauge,
    /// Entries evicted for space, since start.
    pub cache_evictions: Counter,
    /// Client connections open now.
    pub connections_open: Gauge,
    /// Clients cut off or refused by a client-facing limit, by limit.
    pub client_limits: ClientLimitCounters,
    /// Origin protection: circuit state, concurrency, queue, shedding, retries.
    origin_protection: OriginFamilies,
    /// The fleet: the shared tier and the fleet-wide fetch lock in Redis.
    pub fleet: FleetMetrics,
    /// Idempotency-Key records: claims, replays, conflicts, mismatches.
    pub idempotency: IdempotencyMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every corral metric registered under `corral_`.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("corral");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and cache status",
            requests.clone(),
        );
        let request_durations = Family::<RequestLabels, LatencyHistogram>::default();
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to sending its response head, by route and cache status",
            request_durations.clone(),
        );
        let origin_requests = Family::<OriginLabels, Counter>::default();
        registry.register(
            "origin_requests",
            "Requests sent to the origin, by route and response status or failure",
            origin_requests.clone(),
        );
        let origin_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "origin_request_duration_seconds",
            "Time from sending an origin request to its response head",
            origin_duration.clone(),
        );
        let flights_in_progress = Gauge::default();
        registry.register(
            "flights_in_progress",
            "Keys with an origin fetch in flight",
            flights_in_progress.clone(),
        );
        let flight_followers = Counter::default();
        registry.register(
            "flight_followers",
            "Requests that waited on another request's origin fetch",
            flight_followers.clone(),
        );
        let followers_waiting = Gauge::default();
        registry.register(
            "flight_followers_waiting",
            "Requests waiting on another request's origin fetch now",
            followers_waiting.clone(),
        );
        let quick_hits = Counter::default();
        registry.register(
            "quick_hits",
            "Cache hits answered on the listener's quick path, before hyper (a subset of the hits in requests_total)",
            quick_hits.clone(),
        );
        let stream_retained_bytes = Gauge::default();
        registry.register(
            "stream_retained_bytes",
            "Bytes held by fetched bodies shared with the clients waiting on them",
            stream_retained_bytes.clone(),
        );
        let stream_readers_cut = Counter::default();
        registry.register(
            "stream_readers_cut",
            "Clients cut loose from a shared body for falling more than stream_lag_limit behind",
            stream_readers_cut.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries in the hot cache",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Bytes charged to the hot cache",
            cache_bytes.clone(),
        );
        let cache_evictions = Counter::default();
        registry.register(
            "cache_evictions",
            "Entries evicted from the hot cache for space",
            cache_evictions.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open",
            connections_open.clone(),
        );
        let client_limit_family = Family::<ClientLimitLabels, Counter>::default();
        registry.register(
            "client_limit",
            "Clients cut off or refused by a client-facing limit, by limit",
            client_limit_family.clone(),
        );
        let client_limits = ClientLimitCounters {
            counters: ClientLimit::ALL.map(|limit| {
                client_limit_family.get_or_create_owned(&ClientLimitLabels {
                    limit: limit.as_str(),
                })
            }),
        };
        let origin_protection = OriginFamilies::register(&mut registry);
        let fleet = FleetMetrics::register(&mut registry);
        let idempotency = IdempotencyMetrics::register(&mut registry);
        Metrics {
            registry,
            requests,
            request_durations,
            origin_requests,
            origin_duration,
            flights_in_progress,
            flight_followers,
            followers_waiting,
            quick_hits,
            stream_retained_bytes,
            stream_readers_cut,
            cache_entries,
            cache_bytes,
            cache_evictions,
            connections_open,
            client_limits,
            origin_protection,
            fleet,
            idempotency,
        }
    }

    /// Resolves the handles for one route (or `unmatched`) once, up front.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let labels = |cache_status| RequestLabels {
            route: route.to_owned(),
            cache_status,
        };
        let requests = CacheStatusLabel::ALL
            .map(|status| self.requests.get_or_create_owned(&labels(status.as_str())));
        let durations = CacheStatusLabel::ALL.map(|status| {
            self.request_durations
                .get_or_create_owned(&labels(status.as_str()))
        });
        RouteMetrics {
            route: route.to_owned(),
            requests,
            durations,
        }
    }

    /// Counts one origin answer (`status` is a status code or a failure label).
    pub fn origin_request(&self, route: &RouteMetrics, status: &str) {
        self.origin_requests
            .get_or_create(&OriginLabels {
                route: route.route.clone(),
                status: status.to_owned(),
            })
            .inc();
    }

    /// The registry in the Prometheus text exposition format.
    ///
    /// # Errors
    /// Only if formatting into a `String` fails, which it does not.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Pre-resolved handles for one route: counting a request is one atomic add.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    route: String,
    requests: [Counter; 6],
    durations: [LatencyHistogram; 6],
}

impl RouteMetrics {
    /// Counts one answered request and records how long its answer took.
    pub fn record(&self, status: CacheStatusLabel, elapsed: Duration) {
        let index = status as usize;
        self.requests[index].inc();
        self.durations[index].observe(elapsed);
    }

    /// How many requests were answered with `cache_status` so far (for tests and demos).
    pub fn answered(&self, cache_status: &str) -> u64 {
        CacheStatusLabel::ALL
            .iter()
            .position(|s| s.as_str() == cache_status)
            .map_or(0, |i| self.requests[i].get())
    }
}

/// Upper bounds, in seconds, of the request latency buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram updated with three relaxed atomic adds and no lock
/// (prometheus-client's own histogram takes a mutex per observation).
/// Clones share the same counts.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<LatencyCounts>,
}

#[derive(Debug, Default)]
struct LatencyCounts {
    /// Per-bucket (not cumulative) counts; the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS.partition_point(|upper| secs > *upper);
        let counts = &self.inner;
        counts.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        counts.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        counts.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations recorded so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = &self.inner;
        // `f64::MAX` is how prometheus-client spells the `+Inf` bucket.
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(counts.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let sum = counts.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A client-facing limit or policy that cut a client off or refused its
/// request before routing: the `limit` label of `corral_client_limit_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientLimit {
    /// The request head did not arrive within `server.header_read_timeout`.
    HeaderTimeout,
    /// The request head was larger than `server.max_header_size` (431).
    HeaderSize,
    /// The request body was larger than `server.max_request_body` (413).
    BodySize,
    /// An accepted connection had to wait for a free slot (`server.max_connections`).
    Connections,
    /// A keep-alive connection stayed idle past `server.idle_timeout` and was closed.
    Idle,
    /// A method corral never proxies, such as CONNECT (405).
    Method,
    /// The request named a host corral does not serve (421): an absolute-form
    /// target, or a host a `preserve_host` route does not list.
    Host,
    /// The request was malformed in a way only corral checks (400): a missing,
    /// repeated or invalid `Host`, a body on a cacheable GET or HEAD, a request
    /// body whose framing broke.
    Malformed,
    /// A connection to a TLS listener did not complete its handshake (a
    /// plaintext request, an unsupported protocol version, a client that
    /// refused the certificate, or one too slow for `header_read_timeout`).
    TlsHandshake,
}

impl ClientLimit {
    /// Every limit, in label order.
    pub const ALL: [ClientLimit; 9] = [
        ClientLimit::HeaderTimeout,
        ClientLimit::HeaderSize,
        ClientLimit::BodySize,
        ClientLimit::Connections,
        ClientLimit::Idle,
        ClientLimit::Method,
        ClientLimit::Host,
        ClientLimit::Malformed,
        ClientLimit::TlsHandshake,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientLimit::HeaderTimeout => "header_timeout",
            ClientLimit::HeaderSize => "header_size",
            ClientLimit::BodySize => "body_size",
            ClientLimit::Connections => "connections",
            ClientLimit::Idle => "idle",
            ClientLimit::Method => "method",
            ClientLimit::Host => "host",
            ClientLimit::Malformed => "malformed",
            ClientLimit::TlsHandshake => "tls_handshake",
        }
    }
}

/// A Redis operation of the fleet: the `op` label of `corral_fleet_errors_total`
/// and `corral_fleet_redis_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetOp {
    /// Reading a shared entry.
    Get,
    /// Writing a shared entry.
    Set,
    /// Trying to take a key's fetch lock.
    Elect,
    /// Extending a held lock's lease.
    Renew,
    /// Announcing a fetch's end and releasing its lock.
    Release,
    /// Subscribing to (or leaving) a key's notification channel.
    Subscribe,
    /// Removing entries fleet-wide.
    Purge,
    /// A value under a shared entry's name that is not a corral entry.
    Decode,
    /// Skipped without asking Redis: the fleet's breaker is open.
    Skipped,
}

impl FleetOp {
    /// Every operation, in index order.
    pub const ALL: [FleetOp; 9] = [
        FleetOp::Get,
        FleetOp::Set,
        FleetOp::Elect,
        FleetOp::Renew,
        FleetOp::Release,
        FleetOp::Subscribe,
        FleetOp::Purge,
        FleetOp::Decode,
        FleetOp::Skipped,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetOp::Get => "get",
            FleetOp::Set => "set",
            FleetOp::Elect => "elect",
            FleetOp::Renew => "renew",
            FleetOp::Release => "release",
            FleetOp::Subscribe => "subscribe",
            FleetOp::Purge => "purge",
            FleetOp::Decode => "decode",
            FleetOp::Skipped => "skipped",
        }
    }
}

/// How a wait for another instance's fetch ended: the `outcome` label of
/// `corral_fleet_waits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetWaitOutcome {
    /// The holder's notification arrived.
    Notified,
    /// No notification within the lease (or the notification connection
    /// dropped): the entry and the lock were checked again.
    Rechecked,
    /// The wait's bound passed: this instance fetched for itself.
    TimedOut,
}

impl FleetWaitOutcome {
    /// Every outcome, in index order.
    pub const ALL: [FleetWaitOutcome; 3] = [
        FleetWaitOutcome::Notified,
        FleetWaitOutcome::Rechecked,
        FleetWaitOutcome::TimedOut,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetWaitOutcome::Notified => "notified",
            FleetWaitOutcome::Rechecked => "rechecked",
            FleetWaitOutcome::TimedOut => "timed_out",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetOpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetElectionLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetWaitLabels {
    outcome: &'static str,
}

/// Pre-resolved fleet metrics; clones share their values. Every label set is
/// created at registration, so a scrape shows zeros before the first event.
#[derive(Clone, Debug)]
pub struct FleetMetrics {
    /// `corral_fleet_up`: 1 while the fleet tier is used, 0 while this
    /// instance runs on its own (no Redis, or its breaker is open).
    pub up: Gauge,
    /// `corral_fleet_hits_total`: answers found in the shared tier.
    pub hits: Counter,
    /// `corral_fleet_elections_total{result="won"}`.
    pub elections_won: Counter,
    /// `corral_fleet_elections_total{result="lost"}`.
    pub elections_lost: Counter,
    /// `corral_fleet_lease_renewals_total`: leases extended by their holder.
    pub lease_renewals: Counter,
    waits: [Counter; 3],
    errors: [Counter; 9],
    durations: [Histogram; 9],
}

impl Default for FleetMetrics {
    /// Handles registered nowhere (for fleets built outside a [`Metrics`]).
    fn default() -> Self {
        FleetMetrics::register(&mut Registry::default())
    }
}

impl FleetMetrics {
    fn register(registry: &mut Registry) -> FleetMetrics {
        let up = Gauge::default();
        registry.register(
            "fleet_up",
            "1 while the fleet's Redis tier is in use, 0 while this instance coalesces on its own",
            up.clone(),
        );
        let hits = Counter::default();
        registry.register(
            "fleet_hits",
            "Answers found in the fleet's shared tier",
            hits.clone(),
        );
        let elections = Family::<FleetElectionLabels, Counter>::default();
        registry.register(
            "fleet_elections",
            "Fleet-wide fetch lock elections, by result",
            elections.clone(),
        );
        let lease_renewals = Counter::default();
        registry.register(
            "fleet_lease_renewals",
            "Fetch lock leases extended by their holder",
            lease_renewals.clone(),
        );
        let waits = Family::<FleetWaitLabels, Counter>::default();
        registry.register(
            "fleet_waits",
            "Waits for another instance's fetch, by how they ended",
            waits.clone(),
        );
        let errors = Family::<FleetOpLabels, Counter>::default();
        registry.register(
            "fleet_errors",
            "Fleet operations that failed or were skipped, by operation",
            errors.clone(),
        );
        let durations = Family::<FleetOpLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.000_05, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "fleet_redis_duration_seconds",
            "Redis round trips of the fleet, by operation",
            durations.clone(),
        );
        let election = |result| elections.get_or_create_owned(&FleetElectionLabels { result });
        FleetMetrics {
            up,
            hits,
            elections_won: election("won"),
            elections_lost: election("lost"),
            lease_renewals,
            waits: FleetWaitOutcome::ALL.map(|outcome| {
                waits.get_or_create_owned(&FleetWaitLabels {
                    outcome: outcome.as_str(),
                })
            }),
            errors: FleetOp::ALL
                .map(|op| errors.get_or_create_owned(&FleetOpLabels { op: op.as_str() })),
            durations: FleetOp::ALL
                .map(|op| durations.get_or_create_owned(&FleetOpLabels { op: op.as_str() })),
        }
    }

    /// Counts one failed (or skipped) operation.
    pub fn error(&self, op: FleetOp) {
        self.errors[op as usize].inc();
    }

    /// Records one Redis round trip of `op`.
    pub fn round_trip(&self, op: FleetOp, elapsed: Duration) {
        self.durations[op as usize].observe(elapsed.as_secs_f64());
    }

    /// Counts one wait for another instance's fetch.
    pub fn wait(&self, outcome: FleetWaitOutcome) {
        self.waits[outcome as usize].inc();
    }
}

/// Pre-resolved Idempotency-Key metrics (`corral_idempotency_*`); clones
/// share their values. Unlabelled: one count per instance, whatever the route
/// (a route's requests are in `corral_requests_total`).
#[derive(Clone, Debug)]
pub struct IdempotencyMetrics {
    /// `corral_idempotency_claims_total`: requests that claimed their key and
    /// went to the origin.
    pub claims: Counter,
    /// `corral_idempotency_replays_total`: stored answers replayed to a
    /// retry, the origin untouched.
    pub replays: Counter,
    /// `corral_idempotency_conflicts_total`: 409s, the key held by a request
    /// in flight or of unknown outcome.
    pub conflicts: Counter,
    /// `corral_idempotency_mismatches_total`: 422s, the key reused with
    /// another payload.
    pub mismatches: Counter,
    /// `corral_idempotency_unavailable_total`: 503s, the record store could
    /// not be asked (Redis down or slow).
    pub unavailable: Counter,
    /// `corral_idempotency_stored_bytes_total`: bytes of records written.
    pub stored_bytes: Counter,
    /// `corral_idempotency_waiting`: duplicates waiting for their key's
    /// outcome now.
    pub waiting: Gauge,
}

impl Default for IdempotencyMetrics {
    /// Handles registered nowhere (for stores built outside a [`Metrics`]).
    fn default() -> Self {
        IdempotencyMetrics::register(&mut Registry::default())
    }
}

impl IdempotencyMetrics {
    fn register(registry: &mut Registry) -> IdempotencyMetrics {
        let metrics = IdempotencyMetrics {
            claims: Counter::default(),
            replays: Counter::default(),
            conflicts: Counter::default(),
            mismatches: Counter::default(),
            unavailable: Counter::default(),
            stored_bytes: Counter::default(),
            waiting: Gauge::default(),
        };
        registry.register(
            "idempotency_claims",
            "Idempotency-Key requests that claimed their key and went to the origin",
            metrics.claims.clone(),
        );
        registry.register(
            "idempotency_replays",
            "Stored answers replayed to a request repeating an Idempotency-Key",
            metrics.replays.clone(),
        );
        registry.register(
            "idempotency_conflicts",
            "Requests answered 409: their Idempotency-Key was held by a request in flight or of unknown outcome",
            metrics.conflicts.clone(),
        );
        registry.register(
            "idempotency_mismatches",
            "Requests answered 422: their Idempotency-Key was used with another payload",
            metrics.mismatches.clone(),
        );
        registry.register(
            "idempotency_unavailable",
            "Requests answered 503: the Idempotency-Key record store could not be asked",
            metrics.unavailable.clone(),
        );
        registry.register(
            "idempotency_stored_bytes",
            "Bytes of Idempotency-Key records written to the record store",
            metrics.stored_bytes.clone(),
        );
        registry.register(
            "idempotency_waiting",
            "Requests waiting for the outcome of an earlier request with their Idempotency-Key",
            metrics.waiting.clone(),
        );
        metrics
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLimitLabels {
    limit: &'static str,
}

/// Pre-resolved `corral_client_limit_total` counters, one per [`ClientLimit`].
/// Clones share their counts. The default is registered nowhere (for listeners
/// whose limits are not exported, such as the admin one).
#[derive(Clone, Debug, Default)]
pub struct ClientLimitCounters {
    counters: [Counter; ClientLimit::ALL.len()],
}

impl ClientLimitCounters {
    /// Counts one client cut off or refused by `limit`.
    pub fn count(&self, limit: ClientLimit) {
        self.counters[limit as usize].inc();
    }

    /// How many clients `limit` has cut off or refused so far.
    pub fn get(&self, limit: ClientLimit) -> u64 {
        self.counters[limit as usize].get()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabel {
    origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    origin: String,
    reason: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn queue_wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The per-origin protection families, labelled by the origin's authority.
struct OriginFamilies {
    circuit_state: Family<OriginLabel, Gauge>,
    in_flight: Family<OriginLabel, Gauge>,
    queue_depth: Family<OriginLabel, Gauge>,
    queue_wait: HistogramFamily<OriginLabel>,
    shed: Family<ShedLabels, Counter>,
    retries: Family<OriginLabel, Counter>,
    retry_budget_exhausted: Family<OriginLabel, Counter>,
}

impl OriginFamilies {
    fn register(registry: &mut Registry) -> OriginFamilies {
        let families = OriginFamilies {
            circuit_state: Family::default(),
            in_flight: Family::default(),
            queue_depth: Family::default(),
            queue_wait: Family::new_with_constructor(queue_wait_histogram),
            shed: Family::default(),
            retries: Family::default(),
            retry_budget_exhausted: Family::default(),
        };
        registry.register(
            "circuit_state",
            "Circuit breaker state per origin: 0 closed, 1 open, 2 half-open",
            families.circuit_state.clone(),
        );
        registry.register(
            "origin_in_flight",
            "Requests to the origin holding a concurrency slot",
            families.in_flight.clone(),
        );
        registry.register(
            "origin_queue_depth",
            "Requests waiting for an origin concurrency slot",
            families.queue_depth.clone(),
        );
        registry.register(
            "origin_queue_wait_seconds",
            "Time requests waited for an origin concurrency slot, granted or not",
            families.queue_wait.clone(),
        );
        registry.register(
            "shed",
            "Requests answered without contacting the origin to protect it, by reason \
             (queue_full, queue_timeout, circuit_open, retry_after)",
            families.shed.clone(),
        );
        registry.register(
            "origin_retries",
            "Origin requests sent again after a retryable failure",
            families.retries.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries not sent because the retry budget was spent",
            families.retry_budget_exhausted.clone(),
        );
        families
    }
}

impl Metrics {
    /// Resolves the protection handles for one origin (labelled by its
    /// authority) once, up front.
    pub fn origin(&self, origin: &str) -> OriginMetrics {
        let families = &self.origin_protection;
        let label = OriginLabel {
            origin: origin.to_owned(),
        };
        OriginMetrics {
            circuit_state: families.circuit_state.get_or_create_owned(&label),
            in_flight: families.in_flight.get_or_create_owned(&label),
            queue_depth: families.queue_depth.get_or_create_owned(&label),
            queue_wait: families.queue_wait.get_or_create_owned(&label),
            shed: ShedReason::ALL.map(|reason| {
                families.shed.get_or_create_owned(&ShedLabels {
                    origin: origin.to_owned(),
                    reason: reason.as_str(),
                })
            }),
            retries: families.retries.get_or_create_owned(&label),
            retry_budget_exhausted: families.retry_budget_exhausted.get_or_create_owned(&label),
        }
    }
}

/// Pre-resolved handles for one origin's protections. Clones share counts.
#[derive(Clone, Debug)]
pub struct OriginMetrics {
    /// `corral_circuit_state`: 0 closed, 1 open, 2 half-open; set by the breaker.
    pub circuit_state: Gauge,
    /// `corral_origin_in_flight`: requests holding a concurrency slot.
    pub in_flight: Gauge,
    /// `corral_origin_queue_depth`: requests waiting for a slot.
    pub queue_depth: Gauge,
    /// `corral_origin_queue_wait_seconds`: how long queued requests waited.
    pub queue_wait: Histogram,
    /// `corral_shed_total`, one per [`ShedReason`] in [`ShedReason::ALL`] order.
    shed: [Counter; ShedReason::ALL.len()],
    /// `corral_origin_retries_total`: attempts after the first.
    pub retries: Counter,
    /// `corral_retry_budget_exhausted_total`: retries the budget did not allow.
    pub retry_budget_exhausted: Counter,
}

impl OriginMetrics {
    /// Counts one request answered without the origin, and why.
    pub fn shed(&self, reason: ShedReason) {
        self.shed[reason as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_buckets_and_sums() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(300));
        histogram.observe(Duration::from_millis(7));
        histogram.observe(Duration::from_secs(60));
        assert_eq!(histogram.count(), 3);
        let counts = &histogram.inner;
        assert_eq!(counts.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(counts.buckets[4].load(Ordering::Relaxed), 1);
        assert_eq!(
            counts.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn encoded_text_has_route_and_status_labels() {
        let metrics = Metrics::new();
        let route = metrics.route("products");
        route.record(CacheStatusLabel::Hit, Duration::from_millis(1));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(r#"corral_requests_total{route="products",cache_status="hit"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"corral_request_duration_seconds_bucket{le="0.001",route="products",cache_status="hit"} 1"#),
            "{text}"
        );
    }
}
