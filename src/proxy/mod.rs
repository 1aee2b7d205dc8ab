//! The request path for one request: route → cache key → cache → flight map
//! → origin, and back. Policy lives below (`cache::policy` decides what may
//! be stored and shared, `coalesce` who fetches, `origin` how); this module
//! ties them together, in one file per branch:
//!
//! - [`context`]: the per-request value every step reads;
//! - `admission` (what is refused) and `forward` (what goes upstream);
//! - `lookup`: the cacheable branch (hit, stale, lead or follow a flight);
//! - `fill`: the leader's fetch, its verdict, the store and the one outcome
//!   it publishes;
//! - `pass`: requests relayed without caching;
//! - `idempotent`: POST and PATCH with `Idempotency-Key` on a route that opts
//!   in, sent to the origin once per key and replayed to retries;
//! - `render`: the one place a response and its `Cache-Status` are built;
//! - `error`: the one place a failure becomes a response;
//! - `upstream`: the origins a route may pick, swapped on reload.

mod admission;
mod body;
mod context;
mod error;
mod fill;
mod forward;
mod idempotent;
mod lookup;
mod pass;
mod render;
mod upstream;

use std::future::{Future, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::Either;
use http::request::Parts;
use http::{Request, Response};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use admission::Admission;
pub use body::{BoxError, ProxyBody};
use context::{Arrival, RequestContext, declares_content, request_directives};
pub use error::ProxyError;
pub use fill::FlightOutcome;
use forward::ClientScheme;
use render::Answer;
pub use render::{CacheOutcome, CacheStatus, StaleReason, cache_status_value};

use crate::cache::fleet::{Fleet, FleetError};
use crate::cache::policy::{PassReason, request_pass_reason};
use crate::cache::{CacheKey, HotCache, PassMarks, Purge, Tier};
use crate::coalesce::FlightMap;
use crate::config::{Config, ConfigError, PlacedProblem, Route, RouteTable};
use crate::http::wire::WireResponse;
use crate::logging;
use crate::metrics::{Metrics, RouteMetrics};
use crate::origin::{OriginError, OriginResponse};
use crate::replay::Replay;
use upstream::{Upstream, Upstreams};

/// How many times a request re-joins a key whose leader vanished before
/// giving up with 502. (Re-joining after a leader fetched another variant is
/// bounded by the follower's deadline instead.)
const MAX_ELECTIONS: usize = 3;

/// Most keys remembered as hit-for-pass at once.
const PASS_MARK_CAPACITY: u64 = 100_000;

/// Everything a reload may change, swapped as a unit: a request sees either the
/// old settings or the new ones, never a mix.
pub struct Settings {
    table: RouteTable,
    route_metrics: Vec<RouteMetrics>,
    unmatched: RouteMetrics,
    /// The origins routes pick from.
    upstreams: Upstreams,
    /// Whether one access-log event is emitted per request.
    pub access_log: bool,
    /// Bearer token the admin endpoints (except /healthz) require, if any.
    pub admin_token: Option<String>,
}

impl Settings {
    /// Compiles `config`'s reloadable parts, resolving metric handles once
    /// and building its origins' clients (reusing `running`'s for origins
    /// that did not change).
    ///
    /// # Errors
    /// Every origin whose `ca_file` or client could not be set up, at the
    /// position of its setting (for [`Config::refuse`]).
    fn new(
        config: &Config,
        metrics: &Metrics,
        running: Option<&Settings>,
    ) -> Result<Settings, Vec<PlacedProblem>> {
        let upstreams = Upstreams::build(config, metrics, running.map(|r| &r.upstreams))?;
        let table = config.route_table();
        let route_metrics = table
            .routes()
            .iter()
            .map(|r| metrics.route(&r.name))
            .collect();
        Ok(Settings {
            table,
            route_metrics,
            unmatched: metrics.route("unmatched"),
            upstreams,
            access_log: config.log.access_log,
            admin_token: config.admin.token.clone(),
        })
    }

    /// The compiled routes.
    pub fn routes(&self) -> &RouteTable {
        &self.table
    }
}

struct ProxyState {
    settings: ArcSwap<Settings>,
    cache: HotCache,
    pass_marks: PassMarks,
    flights: FlightMap<CacheKey, FlightOutcome>,
    /// A tier beyond this process (a fleet's shared cache), if any: looked up
    /// by a local leader before it goes to the origin, and written by every
    /// fill that stores.
    shared: Option<Arc<dyn Tier>>,
    /// The fleet this instance belongs to, if any: its shared tier is
    /// `shared`, and its fetch lock elects one fetcher per key fleet-wide.
    fleet: Option<Arc<Fleet>>,
    /// How clients reach the proxy listener: whether it terminates TLS is
    /// fixed when it starts.
    client_scheme: ClientScheme,
    max_object_size: usize,
    metrics: Arc<Metrics>,
    admission: Admission,
    /// Idempotency-Key records: in the fleet's Redis with a fleet, else here.
    replay: Arc<Replay>,
}

/// The caching, coalescing proxy service. Cheap to clone; clones share the
/// cache, the flight map and the origin pool.
#[derive(Clone)]
pub struct Proxy {
    state: Arc<ProxyState>,
}

/// Why a proxy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An origin's `ca_file` or client could not be set up (each problem at
    /// its position in the config).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The fleet could not be joined (its Redis URL is not usable).
    #[error("cannot join the fleet: {0}")]
    Fleet(#[from] FleetError),
}

impl Proxy {
    /// Builds the proxy for `config`, registering its metrics in `metrics`.
    /// With `[fleet] redis` set it joins the fleet: Redis is its shared tier
    /// and fetch lock (reached lazily: an unreachable Redis is not an error).
    ///
    /// # Errors
    /// [`BuildError`] when the origin client cannot be built or the fleet's
    /// URL is unusable.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Proxy, BuildError> {
        Proxy::with_shared_tier(config, metrics, None)
    }

    /// Like [`Proxy::new`], with `shared` as the tier beyond this process
    /// when there is no fleet (none: in-process caching only).
    ///
    /// # Errors
    /// As [`Proxy::new`].
    pub fn with_shared_tier(
        config: &Config,
        metrics: Arc<Metrics>,
        shared: Option<Arc<dyn Tier>>,
    ) -> Result<Proxy, BuildError> {
        let settings = Settings::new(config, &metrics, None).map_err(|p| config.refuse(p))?;
        let evictions = metrics.cache_evictions.clone();
        let cache = HotCache::new(
            config.cache.max_size.as_u64(),
            config.cache.max_variants,
            move || {
                evictions.inc();
            },
        );
        let fleet = match config.fleet.redis {
            Some(_) => Some(Fleet::start(
                &config.fleet,
                cache.clone(),
                metrics.fleet.clone(),
            )?),
            None => None,
        };
        let shared = match &fleet {
            Some(fleet) => Some(Arc::clone(fleet) as Arc<dyn Tier>),
            None => shared,
        };
        let max_object_size =
            usize::try_from(config.cache.max_object_size.as_u64()).unwrap_or(usize::MAX);
        let replay = match &fleet {
            Some(fleet) => Replay::in_redis(
                Arc::clone(fleet.link()),
                &config.fleet,
                max_object_size,
                metrics.idempotency.clone(),
            ),
            None => Replay::in_memory(max_object_size, metrics.idempotency.clone()),
        };
        Ok(Proxy {
            state: Arc::new(ProxyState {
                settings: ArcSwap::from_pointee(settings),
                cache,
                pass_marks: PassMarks::new(PASS_MARK_CAPACITY),
                flights: FlightMap::new(),
                shared,
                fleet,
                client_scheme: if config.server.tls.is_some() {
                    ClientScheme::Https
                } else {
                    ClientScheme::Http
                },
                max_object_size,
                admission: Admission::new(config, metrics.client_limits.clone()),
                replay: Arc::new(replay),
                metrics,
            }),
        })
    }

    /// The hot cache this proxy serves from.
    pub fn cache(&self) -> &HotCache {
        &self.state.cache
    }

    /// Removes every stored response whose path and query (on any
    /// authority) equals one of `exact` or starts with one of `prefixes`,
    /// here and in the shared tier (a fleet's purge reaches every instance).
    /// Resolves to how many keys were removed here plus in the shared tier.
    pub async fn purge(&self, exact: &[String], prefixes: &[String]) -> usize {
        let here = self.state.cache.purge(exact, prefixes);
        let shared = match &self.state.shared {
            Some(shared) => shared.purge(Purge { exact, prefixes }).await,
            None => 0,
        };
        here + shared
    }

    /// The cache key of `path_and_query` on a route that does not preserve
    /// the client's `Host` (the key then holds the origin's own authority).
    pub fn origin_key(&self, path_and_query: &str) -> CacheKey {
        let settings = self.state.settings.load();
        CacheKey::new(
            &settings.upstreams.default_origin().authority,
            path_and_query,
        )
    }

    /// The metrics this proxy updates.
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The settings requests are served with now.
    pub fn settings(&self) -> Arc<Settings> {
        self.state.settings.load_full()
    }

    /// Builds the reloadable parts of `config` (routes, TTLs, lock timeouts,
    /// origins, access log, admin token) without applying them: origins whose
    /// spec did not change keep their running clients.
    ///
    /// # Errors
    /// Every origin whose `ca_file` or client could not be set up, at the
    /// position of its setting (for [`Config::refuse`]).
    pub fn prepare(&self, config: &Config) -> Result<Settings, Vec<PlacedProblem>> {
        let running = self.state.settings.load();
        Settings::new(config, &self.state.metrics, Some(&running))
    }

    /// Serves requests that start from now on with `settings` (from
    /// [`Proxy::prepare`]). Requests in flight finish with the settings, and
    /// on the origins, they started with; open connections and the cache are
    /// untouched.
    pub fn apply(&self, settings: Settings) {
        self.state.settings.store(Arc::new(settings));
    }

    /// [`Proxy::prepare`], then [`Proxy::apply`].
    ///
    /// # Errors
    /// As [`Proxy::prepare`], positioned in `config`; nothing changes then.
    pub fn reload(&self, config: &Config) -> Result<(), ConfigError> {
        let settings = self.prepare(config).map_err(|p| config.refuse(p))?;
        self.apply(settings);
        Ok(())
    }

    /// Number of keys with an origin fetch in flight.
    pub fn flights_in_flight(&self) -> usize {
        self.state.flights.in_flight()
    }

    /// Answers one client request. Never fails: every failure is rendered as a
    /// response by [`ProxyError::into_response`].
    pub async fn handle<B>(&self, request: Request<B>, client: SocketAddr) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.clone().serve(request, client).await
    }

    /// [`Proxy::handle`] as a future that owns everything it needs, for a
    /// listener to run per request. The request is taken apart before the
    /// future is made, so the future holds its parts once: a parked
    /// request's memory is what waiting needs, not two copies of its head.
    pub fn serve<B>(
        self,
        request: Request<B>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        self.answer(parts, body, client, started)
    }

    /// The request's whole path, from its taken-apart head to its response.
    async fn answer<B>(
        self,
        parts: Parts,
        body: B,
        client: SocketAddr,
        started: Instant,
    ) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let settings = self.state.settings.load_full();
        let matched = settings.table.find(parts.uri.path());
        let route_metrics = matched.map_or(&settings.unmatched, |(index, _)| {
            &settings.route_metrics[index]
        });
        let origin = settings
            .upstreams
            .for_route(matched.map(|(_, route)| route));
        let arrival = Arrival {
            client,
            at: started,
        };
        let answer = self
            .dispatch(&parts, body, arrival, matched, route_metrics, origin)
            .await;
        let finished = Instant::now();
        let elapsed = finished.saturating_duration_since(started);
        route_metrics.record(answer.status.label(), elapsed);
        if settings.access_log
            && let Some(sink) = logging::access_log()
        {
            render::log_access(sink, &parts, &answer, elapsed, finished.into_std());
        }
        answer.response
    }

    /// Answers a plain GET or HEAD at once, in HTTP/1.1 wire form, when it
    /// is a fresh hit that [`Proxy::serve`] would answer with the whole
    /// stored response: the same bytes, the same route metric, the same
    /// access line, after the same admission checks. The listener's quick
    /// path calls it on heads it read itself (see [`crate::server`]).
    ///
    /// `None` for anything else, having recorded nothing (no metric, no
    /// refusal counted, no log line, no flight joined): the request is then
    /// for [`Proxy::serve`], which decides and records it as always.
    pub fn answer_hit_at_once(&self, parts: &Parts, client: SocketAddr) -> Option<WireResponse> {
        let started = Instant::now();
        if !render::plain_whole(parts) || declares_content(parts) {
            return None;
        }
        let settings = self.state.settings.load();
        let matched = settings.table.find(parts.uri.path());
        let (index, route) = matched?;
        if pass_reason(matched, parts).is_some() {
            return None;
        }
        let route_metrics = settings.route_metrics.get(index)?;
        let admission = &self.state.admission;
        let addressed = admission.judge(parts).ok()?;
        let upstream_host = admission.judge_preserved_host(route, addressed).ok()?;
        let origin = settings.upstreams.for_route(Some(route));
        let cx = RequestContext {
            origin_authority: &origin.authority,
            key: OnceLock::new(),
            parts,
            client,
            scheme: self.state.client_scheme,
            origin: &origin.client,
            route: Some(route),
            route_metrics,
            upstream_host,
            wishes: request_directives(&parts.headers, route.client_no_cache),
        };
        let (entry, age) = self.fresh_entry(&cx, route, started)?;
        let (wire, status) = render::wire_hit(&entry, parts, age)?;
        let finished = Instant::now();
        let elapsed = finished.saturating_duration_since(started);
        route_metrics.record(status.label(), elapsed);
        self.state.metrics.quick_hits.inc();
        if settings.access_log
            && let Some(sink) = logging::access_log()
        {
            render::log_wire_access(sink, parts, &entry, status, elapsed, finished.into_std());
        }
        Some(wire)
    }

    /// Admits the request, works out where it goes upstream (`origin`, the
    /// one its route picks), and serves it from the cache or passes it.
    ///
    /// Everything up to the first await is decided here, before the future
    /// exists, so the future holds only what serving needs: hyper keeps one
    /// such future per connection, and every waiting follower holds one. A
    /// cacheable request's context is kept inline; the other branches, which
    /// go to the origin anyway, are boxed.
    fn dispatch<'a, B>(
        &'a self,
        parts: &'a Parts,
        body: B,
        arrival: Arrival,
        matched: Option<(usize, &'a Route)>,
        route_metrics: &'a RouteMetrics,
        origin: &'a Upstream,
    ) -> impl Future<Output = Answer> + Send + 'a
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let pass_reason = pass_reason(matched, parts);
        let admission = &self.state.admission;
        let refuse = |refused: ProxyError| {
            Either::Left(ready(
                refused.into_answer(CacheOutcome::Error, parts.uri.path()),
            ))
        };
        let addressed = match admission.check(parts) {
            Ok(addressed) => addressed,
            Err(refused) => return refuse(refused),
        };
        let route = matched.map(|(_, route)| route);
        let upstream_host = match route.map(|route| admission.preserved_host(route, addressed)) {
            Some(Err(refused)) => return refuse(refused),
            Some(Ok(host)) => host,
            None => None,
        };
        let cx = RequestContext {
            origin_authority: &origin.authority,
            key: OnceLock::new(),
            parts,
            client: arrival.client,
            scheme: self.state.client_scheme,
            origin: &origin.client,
            route,
            route_metrics,
            upstream_host,
            wishes: route
                .and_then(|route| request_directives(&parts.headers, route.client_no_cache)),
        };
        let has_body = !body.is_end_stream() || declares_content(parts);
        if let (None, Some(route)) = (pass_reason, route) {
            if has_body {
                // A fill never carries a body, and the answer would be shared.
                return refuse(admission.body_on_cacheable_request());
            }
            drop(body);
            return match self.answer_from_cache(&cx, route, arrival.at) {
                Ok(answer) => Either::Left(ready(answer)),
                Err(stored) => {
                    Either::Right(Either::Left(
                        async move { self.miss(&cx, route, stored).await },
                    ))
                }
            };
        }
        let reason = pass_reason.unwrap_or(PassReason::NoRoute);
        Either::Right(Either::Right(
            self.serve_uncacheable(cx, body, has_body, reason),
        ))
    }

    /// Passes the request to the origin (or, on a route that opts in, sends
    /// it once per Idempotency-Key), for [`dispatch`](Self::dispatch).
    fn serve_uncacheable<'a, B>(
        &'a self,
        cx: RequestContext<'a>,
        body: B,
        has_body: bool,
        reason: PassReason,
    ) -> Pin<Box<impl Future<Output = Answer> + Send + 'a>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Box::pin(async move {
            let cx = &cx;
            if let Some(idempotent) = idempotent::applies(cx.parts, cx.route) {
                return self
                    .idempotent(cx, idempotent, body, has_body, reason)
                    .await;
            }
            let admission = &self.state.admission;
            let refuse = |refused: ProxyError| refused.into_answer(CacheOutcome::Error, cx.path());
            let (body, check) = if has_body {
                admission.limit_body(body)
            } else {
                // No body (a GET, usually): one the origin client can resend on retry.
                (reqwest::Body::from(Bytes::new()), Default::default())
            };
            // A body that breaks or grows too large ends the exchange at once:
            // the origin may be waiting for the rest of it.
            tokio::select! {
                relayed = self.pass(cx, body, has_body, reason) => {
                    if let Some(refused) = admission.body_refusal(&check) {
                        // Whatever the origin made of the aborted upload is moot.
                        return refuse(refused);
                    }
                    self.invalidate_after_unsafe(cx, &relayed);
                    relayed
                }
                refused = admission.body_refused(&check) => refuse(refused),
            }
        })
    }
}

/// Why a request on `matched` (its route, if one matched) is passed to the
/// origin rather than cached: the one rule both [`Proxy::serve`] and
/// [`Proxy::answer_hit_at_once`] follow.
fn pass_reason(matched: Option<(usize, &Route)>, parts: &Parts) -> Option<PassReason> {
    match matched {
        None => Some(PassReason::NoRoute),
        Some((_, route)) if !route.cache => Some(PassReason::RouteBypass),
        Some(_) => request_pass_reason(&parts.method, &parts.headers),
    }
}

/// Records an origin exchange started at `started`: its duration, and its
/// answer's status (or failure label) under `route`; neither when the origin
/// was never contacted (a refusal answers at once and would skew both).
fn record_origin_exchange(
    metrics: &Metrics,
    route: &RouteMetrics,
    started: Instant,
    result: &Result<OriginResponse, OriginError>,
) {
    if result.as_ref().is_err_and(OriginError::is_refusal) {
        return;
    }
    metrics
        .origin_duration
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(response) => metrics.origin_request(route, response.status().as_str()),
        Err(error) => metrics.origin_request(route, error.label()),
    }
}

/// Holds a gauge up for as long as it lives, however the holder ends.
struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
