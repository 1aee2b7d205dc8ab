//! Every metric corral exports: names, labels and typed handles, registered in
//! one registry per running instance (never a global), encoded in the
//! Prometheus text format by prometheus-client.
//!
//! Label values are bounded: route names come from the config, cache statuses
//! and origin outcomes from fixed sets. Per-route handles are resolved once when
//! the route table is built, so the request path only touches atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::http::CacheOutcome;

/// Cache statuses in label order; indexes [`RouteMetrics::requests`].
const CACHE_STATUSES: [&str; 6] = ["hit", "miss", "coalesced", "stale", "pass", "error"];

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
    origin_requests: Family<OriginLabels, Counter>,
    /// Time from sending an origin request to its response head.
    pub origin_duration: Histogram,
    /// Keys with an origin fetch in flight now.
    pub flights_in_progress: Gauge,
    /// Requests that waited on another request's fetch, since start.
    pub flight_followers: Counter,
    /// Requests waiting on another request's fetch now.
    pub followers_waiting: Gauge,
    /// Entries in the hot cache, as of the last scrape.
    pub cache_entries: Gauge,
    /// Bytes charged to the hot cache, as of the last scrape.
    pub cache_bytes: Gauge,
    /// Entries evicted for space, since start.
    pub cache_evictions: Counter,
    /// Client connections open now.
    pub connections_open: Gauge,
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
        Metrics {
            registry,
            requests,
            origin_requests,
            origin_duration,
            flights_in_progress,
            flight_followers,
            followers_waiting,
            cache_entries,
            cache_bytes,
            cache_evictions,
            connections_open,
        }
    }

    /// Resolves the handles for one route (or `unmatched`) once, up front.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let requests = CACHE_STATUSES.map(|cache_status| {
            self.requests.get_or_create_owned(&RequestLabels {
                route: route.to_owned(),
                cache_status,
            })
        });
        RouteMetrics {
            route: route.to_owned(),
            requests,
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
}

impl RouteMetrics {
    /// Counts one answered request with its cache outcome.
    pub fn count(&self, outcome: CacheOutcome) {
        let index = match outcome {
            CacheOutcome::Hit => 0,
            CacheOutcome::Miss => 1,
            CacheOutcome::Coalesced => 2,
            CacheOutcome::Pass(_) => 4,
            CacheOutcome::Error => 5,
        };
        self.requests[index].inc();
    }

    /// How many requests were answered with `cache_status` so far (for tests and demos).
    pub fn answered(&self, cache_status: &str) -> u64 {
        CACHE_STATUSES
            .iter()
            .position(|s| *s == cache_status)
            .map_or(0, |i| self.requests[i].get())
    }
}
