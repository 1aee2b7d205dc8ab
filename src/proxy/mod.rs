//! The request path for one request: route → cache key → hot cache → flight map
//! → origin, and back. Policy lives in [`crate::http`] (what may be shared),
//! [`crate::cache`] (freshness) and [`crate::coalesce`] (who fetches); this
//! module only ties them together and renders responses.

mod admission;
mod body;
mod error;
mod forward;
mod render;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

use admission::Admission;
pub use body::{BoxError, ProxyBody};
pub use error::ProxyError;
pub use render::{CacheOutcome, StaleReason, cache_status_value};

use crate::cache::key::canonical_authority;
use crate::cache::policy::{
    self, PassReason, Reuse, Shareability, request_pass_reason, shareability,
};
use crate::cache::{
    CacheKey, CachedResponse, HotCache, NO_REQUEST_DIRECTIVES, PassMarks, Timing, Variant,
};
use crate::coalesce::{FlightMap, Join, Leader, WaitError};
use crate::config::{ClientNoCache, Config, Route, RouteTable};
use crate::http::directives::{CORRAL_CACHE_CONTROL, RequestDirectives, ResponseDirectives};
use crate::http::{
    CACHE_STATUS, VIA_CORRAL, append_to_list, ensure_date, same_origin_path, strip_hop_by_hop,
    vary_names,
};
use crate::metrics::{Metrics, RouteMetrics};
use crate::origin::{OriginClient, OriginError, OriginResponse, Refusal, TimeoutOverrides};

/// How many times a request re-joins a key whose leader vanished before
/// giving up with 502. (Re-joining after a leader fetched another variant is
/// bounded by the follower's deadline instead.)
const MAX_ELECTIONS: usize = 3;

/// Most keys remembered as hit-for-pass at once.
const PASS_MARK_CAPACITY: u64 = 100_000;

/// What a flight publishes to its followers.
#[derive(Clone, Debug)]
pub enum FlightOutcome {
    /// A complete response every waiting client may receive.
    Shared {
        /// The response, shared by reference.
        response: Arc<CachedResponse>,
        /// Whether it was also stored in the hot cache.
        stored: bool,
        /// What the origin answered: 304 when it confirmed a stored response.
        fwd_status: StatusCode,
        /// Whether the fetch revalidated a stored response.
        revalidated: bool,
    },
    /// The answer may not be shared; each follower must fetch for itself.
    Unshareable,
    /// The origin failed; every waiting client gets an error and nothing is stored.
    Failed(Arc<OriginError>),
}

/// What the fill task hands the leader's own client.
enum LeaderOutcome {
    Shared {
        response: Arc<CachedResponse>,
        stored: bool,
        fwd_status: StatusCode,
        revalidated: bool,
    },
    Private(Response<ProxyBody>),
    Failed(Arc<OriginError>),
}

/// Everything a reload may change, swapped as a unit: a request sees either the
/// old settings or the new ones, never a mix.
pub struct Settings {
    table: RouteTable,
    route_metrics: Vec<RouteMetrics>,
    unmatched: RouteMetrics,
    /// Whether one access-log event is emitted per request.
    pub access_log: bool,
    /// Bearer token the admin endpoints (except /healthz) require, if any.
    pub admin_token: Option<String>,
}

impl Settings {
    /// Compiles `config`'s reloadable parts, resolving metric handles once.
    pub fn new(config: &Config, metrics: &Metrics) -> Settings {
        let table = config.route_table();
        let route_metrics = table
            .routes()
            .iter()
            .map(|r| metrics.route(&r.name))
            .collect();
        Settings {
            table,
            route_metrics,
            unmatched: metrics.route("unmatched"),
            access_log: config.log.access_log,
            admin_token: config.admin.token.clone(),
        }
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
    /// The origin's authority as the origin client sends it, canonical: what
    /// the cache keys on for routes that do not preserve the client's host.
    origin_authority: String,
    origin: OriginClient,
    max_object_size: usize,
    metrics: Arc<Metrics>,
    admission: Admission,
}

/// The caching, coalescing proxy service. Cheap to clone; clones share the
/// cache, the flight map and the origin pool.
#[derive(Clone)]
pub struct Proxy {
    state: Arc<ProxyState>,
}

impl Proxy {
    /// Builds the proxy for `config`, registering its metrics in `metrics`.
    ///
    /// # Errors
    /// The origin client could not be built.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Proxy, reqwest::Error> {
        let origin = OriginClient::new(&config.origin, &metrics)?;
        let evictions = metrics.cache_evictions.clone();
        let cache = HotCache::new(
            config.cache.max_size.as_u64(),
            config.cache.max_variants,
            move || {
                evictions.inc();
            },
        );
        let max_object_size =
            usize::try_from(config.cache.max_object_size.as_u64()).unwrap_or(usize::MAX);
        let origin_authority = config
            .origin
            .authority()
            .map(|authority| canonical_authority(authority.as_str()).into_owned())
            .unwrap_or_default();
        Ok(Proxy {
            state: Arc::new(ProxyState {
                settings: ArcSwap::from_pointee(Settings::new(config, &metrics)),
                cache,
                pass_marks: PassMarks::new(PASS_MARK_CAPACITY),
                flights: FlightMap::new(),
                origin_authority,
                origin,
                max_object_size,
                admission: Admission::new(config, metrics.client_limits.clone()),
                metrics,
            }),
        })
    }

    /// The hot cache this proxy serves from.
    pub fn cache(&self) -> &HotCache {
        &self.state.cache
    }

    /// The cache key of `path_and_query` on a route that does not preserve
    /// the client's `Host` (the key then holds the origin's own authority).
    pub fn origin_key(&self, path_and_query: &str) -> CacheKey {
        CacheKey::new(&self.state.origin_authority, path_and_query)
    }

    /// The metrics this proxy updates.
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The settings requests are served with now.
    pub fn settings(&self) -> Arc<Settings> {
        self.state.settings.load_full()
    }

    /// Applies the reloadable parts of `config` (routes, TTLs, lock timeouts,
    /// access log, admin token) to requests that start from now on. Requests
    /// in flight finish with the settings they started with; open connections
    /// and the cache are untouched.
    pub fn reload(&self, config: &Config) {
        let settings = Settings::new(config, &self.state.metrics);
        self.state.settings.store(Arc::new(settings));
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
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let settings = self.state.settings.load_full();
        // Cheap clones (an enum and a shared-bytes URI), taken only when logging.
        let access = settings
            .access_log
            .then(|| (parts.method.clone(), parts.uri.clone()));
        let matched = settings.table.find(parts.uri.path());
        let route_metrics = matched.map_or(&settings.unmatched, |(index, _)| {
            &settings.route_metrics[index]
        });
        let pass_reason = match matched {
            None => Some(PassReason::NoRoute),
            Some((_, route)) if !route.cache => Some(PassReason::RouteBypass),
            Some(_) => request_pass_reason(&parts.method, &parts.headers),
        };
        let (response, outcome) = self
            .dispatch(&parts, body, client, matched, route_metrics, pass_reason)
            .await;
        let elapsed = started.elapsed();
        route_metrics.record(outcome.status_label(), elapsed);
        if let Some((method, uri)) = access {
            log_access(&method, &uri, &response, outcome, elapsed);
        }
        response
    }

    /// Admits the request, works out where it goes upstream, and serves it
    /// from the cache or passes it.
    async fn dispatch<B>(
        &self,
        parts: &Parts,
        body: B,
        client: SocketAddr,
        matched: Option<(usize, &Route)>,
        route_metrics: &RouteMetrics,
        pass_reason: Option<PassReason>,
    ) -> (Response<ProxyBody>, CacheOutcome)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let admission = &self.state.admission;
        let refuse = |refused: ProxyError| {
            (
                refused.into_response(CacheOutcome::Error, parts.uri.path()),
                CacheOutcome::Error,
            )
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
        let authority = upstream_host
            .as_ref()
            .and_then(|host| host.to_str().ok())
            .unwrap_or(&self.state.origin_authority);
        let cx = RequestContext {
            key: CacheKey::new(authority, path_and_query(parts)),
            parts,
            client,
            route,
            route_metrics,
            upstream_host,
        };
        let has_body = !body.is_end_stream() || declares_content(parts);
        if let (None, Some(route)) = (pass_reason, route) {
            if has_body {
                // A fill never carries a body, and the answer would be shared.
                return refuse(admission.body_on_cacheable_request());
            }
            drop(body);
            return self.serve_cacheable(&cx, route).await;
        }
        let (body, check) = if has_body {
            admission.limit_body(body)
        } else {
            // No body (a GET, usually): one the origin client can resend on retry.
            (reqwest::Body::from(Bytes::new()), Default::default())
        };
        let reason = pass_reason.unwrap_or(PassReason::NoRoute);
        // A body that breaks or grows too large ends the exchange at once:
        // the origin may be waiting for the rest of it.
        let relayed = tokio::select! {
            relayed = self.pass(&cx, body, has_body, reason) => relayed,
            () = check.refused() => (Response::new(ProxyBody::empty()), CacheOutcome::Error),
        };
        if let Some(refused) = admission.body_refusal(&check) {
            // Whatever the origin made of the aborted upload is moot.
            return refuse(refused);
        }
        self.invalidate_after_unsafe(&cx, &relayed.0);
        relayed
    }

    /// GET or HEAD on a caching route: hit, serve stale while revalidating,
    /// follow, or lead a fetch.
    async fn serve_cacheable(
        &self,
        cx: &RequestContext<'_>,
        route: &Route,
    ) -> (Response<ProxyBody>, CacheOutcome) {
        let state = &self.state;
        let parts = cx.parts;
        let key = &cx.key;
        // Parsed only when the client says something: a plain hit parses nothing.
        let parsed = request_directives(&parts.headers, route.client_no_cache);
        let wishes = parsed.as_ref().unwrap_or(&NO_REQUEST_DIRECTIVES);
        let now = Instant::now();
        if let Some(entry) = state.cache.select(key, &parts.headers) {
            match entry.reuse(now, wishes, &route.freshness) {
                Reuse::Fresh => return hit(&entry, parts, now),
                Reuse::Stale {
                    may_serve_while_revalidate: true,
                    ..
                } => {
                    self.refresh_in_background(cx, &entry, route);
                    let outcome = CacheOutcome::Stale(StaleReason::WhileRevalidate);
                    let response = respond_from_entry(&entry, outcome, None, false, parts, now);
                    return (response, outcome);
                }
                Reuse::Stale { .. } => {}
            }
        }
        if wishes.only_if_cached {
            let refused =
                ProxyError::NotCached.into_response(CacheOutcome::Error, parts.uri.path());
            return (refused, CacheOutcome::Error);
        }
        if state.pass_marks.is_marked(key, now) {
            let body = reqwest::Body::from(Bytes::new());
            return self.pass(cx, body, false, PassReason::HitForPass).await;
        }
        let deadline = now + route.lock_timeout;
        let mut abandoned = 0;
        while abandoned < MAX_ELECTIONS {
            match state.flights.join(key.clone()) {
                Join::Leader(leader) => {
                    // The previous flight may have stored its answer between our
                    // lookup and our join: look again before going to the origin.
                    let now = Instant::now();
                    let stored = state.cache.select(key, &parts.headers);
                    if let Some(entry) = &stored
                        && entry.reuse(now, wishes, &route.freshness) == Reuse::Fresh
                    {
                        leader.complete(FlightOutcome::Shared {
                            response: Arc::clone(entry),
                            stored: true,
                            fwd_status: entry.status,
                            revalidated: false,
                        });
                        return hit(entry, parts, now);
                    }
                    return self.lead(leader, cx, route, stored, wishes).await;
                }
                Join::Follower(follower) => {
                    state.metrics.flight_followers.inc();
                    let waited = {
                        let _waiting = GaugeGuard::new(&state.metrics.followers_waiting);
                        follower.wait(deadline).await
                    };
                    match waited {
                        Ok(FlightOutcome::Shared {
                            response,
                            stored: _,
                            fwd_status,
                            revalidated,
                        }) if response.variant.matches(&parts.headers) => {
                            let outcome = if revalidated {
                                CacheOutcome::Revalidated { collapsed: true }
                            } else {
                                CacheOutcome::Coalesced
                            };
                            if response.status.is_server_error()
                                && let Some(stale) = self.stale_if_error(key, parts, wishes, route)
                            {
                                return stale;
                            }
                            let now = Instant::now();
                            let response = respond_from_entry(
                                &response,
                                outcome,
                                Some(fwd_status),
                                false,
                                parts,
                                now,
                            );
                            return (response, outcome);
                        }
                        // The leader fetched another variant: elect again for ours
                        // (once its slot is gone).
                        Ok(FlightOutcome::Shared { .. }) => tokio::task::yield_now().await,
                        Err(WaitError::Abandoned) => abandoned += 1,
                        Ok(FlightOutcome::Unshareable) => {
                            let body = reqwest::Body::from(Bytes::new());
                            return self.pass(cx, body, false, PassReason::Unshareable).await;
                        }
                        Ok(FlightOutcome::Failed(error)) => {
                            let outcome = CacheOutcome::Coalesced;
                            return self.failed(key, parts, error, outcome, wishes, route);
                        }
                        Err(WaitError::TimedOut) => {
                            // Invariant 6: stale content if the origin allows it, else 504.
                            if let Some(stale) = self.stale_if_error(key, parts, wishes, route) {
                                return stale;
                            }
                            let outcome = CacheOutcome::Coalesced;
                            return (
                                ProxyError::LockTimeout.into_response(outcome, parts.uri.path()),
                                CacheOutcome::Error,
                            );
                        }
                    }
                }
            }
        }
        (
            ProxyError::FetchLost.into_response(CacheOutcome::Coalesced, parts.uri.path()),
            CacheOutcome::Error,
        )
    }

    /// Starts one background refresh of the stale `entry` under `key`, unless
    /// a fetch for the key is already under way (it will refresh it) or the
    /// entry was replaced since it was looked up. Nobody waits for it.
    fn refresh_in_background(
        &self,
        cx: &RequestContext<'_>,
        entry: &Arc<CachedResponse>,
        route: &Route,
    ) {
        let Join::Leader(leader) = self.state.flights.join(cx.key.clone()) else {
            return;
        };
        let current = self.state.cache.select(&cx.key, &cx.parts.headers);
        if !current.is_some_and(|current| Arc::ptr_eq(&current, entry)) {
            // Refreshed (or removed) between the lookup and the join.
            return;
        }
        let fill = Fill::new(&self.state, cx, route, Some(Arc::clone(entry)));
        tokio::spawn(fill.run(Publish {
            leader,
            answer: None,
        }));
    }

    /// The stored variant for this request, if the client and the origin allow
    /// it to be served because the origin failed or answered 5xx
    /// (stale-if-error), rendered.
    fn stale_if_error(
        &self,
        key: &CacheKey,
        parts: &Parts,
        wishes: &RequestDirectives,
        route: &Route,
    ) -> Option<(Response<ProxyBody>, CacheOutcome)> {
        let now = Instant::now();
        let entry = self.state.cache.select(key, &parts.headers)?;
        let allowed = matches!(
            entry.reuse(now, wishes, &route.freshness),
            Reuse::Fresh
                | Reuse::Stale {
                    may_serve_if_error: true,
                    ..
                }
        );
        allowed.then(|| {
            let outcome = CacheOutcome::Stale(StaleReason::IfError);
            let response = respond_from_entry(&entry, outcome, None, false, parts, now);
            (response, outcome)
        })
    }

    /// Answers a request whose fetch failed: with the stored variant when the
    /// origin was not contacted to protect it (breaker open, `Retry-After`,
    /// overload) and the origin did not forbid stale use, however stale; when
    /// it failed (error, timeout) within the variant's stale-if-error window;
    /// else with the error.
    fn failed(
        &self,
        key: &CacheKey,
        parts: &Parts,
        error: Arc<OriginError>,
        outcome: CacheOutcome,
        wishes: &RequestDirectives,
        route: &Route,
    ) -> (Response<ProxyBody>, CacheOutcome) {
        let refused = stale_reason(&error);
        let stale = match refused {
            Some(reason) => self
                .state
                .cache
                .select(key, &parts.headers)
                .filter(|entry| entry.may_serve_disconnected())
                .map(|entry| {
                    let stale = CacheOutcome::Stale(reason);
                    let now = Instant::now();
                    (
                        respond_from_entry(&entry, stale, None, false, parts, now),
                        stale,
                    )
                }),
            None => self.stale_if_error(key, parts, wishes, route),
        };
        stale.unwrap_or_else(|| {
            (
                ProxyError::Origin(error).into_response(outcome, parts.uri.path()),
                CacheOutcome::Error,
            )
        })
    }

    /// Spawns the fetch as its own task (so this client leaving cannot cancel
    /// it) and waits for the answer meant for this client. `stored` is the
    /// variant this request found unusable as it was: the fetch revalidates it.
    ///
    /// Boxed: only a leader takes this branch, so its state is kept out of
    /// the future of every hit and every parked follower.
    fn lead<'a>(
        &'a self,
        leader: Leader<CacheKey, FlightOutcome>,
        cx: &'a RequestContext<'a>,
        route: &'a Route,
        stored: Option<Arc<CachedResponse>>,
        wishes: &'a RequestDirectives,
    ) -> Pin<Box<impl Future<Output = (Response<ProxyBody>, CacheOutcome)> + Send + 'a>> {
        Box::pin(self.lead_inline(leader, cx, route, stored, wishes))
    }

    async fn lead_inline(
        &self,
        leader: Leader<CacheKey, FlightOutcome>,
        cx: &RequestContext<'_>,
        route: &Route,
        stored: Option<Arc<CachedResponse>>,
        wishes: &RequestDirectives,
    ) -> (Response<ProxyBody>, CacheOutcome) {
        let parts = cx.parts;
        let (answer, answered) = oneshot::channel();
        let key = leader.key().clone();
        let fill = Fill::new(&self.state, cx, route, stored);
        tokio::spawn(fill.run(Publish {
            leader,
            answer: Some(answer),
        }));
        let head = parts.method == Method::HEAD;
        match answered.await {
            Ok(LeaderOutcome::Shared {
                response,
                stored,
                fwd_status,
                revalidated,
            }) => {
                let outcome = if revalidated {
                    CacheOutcome::Revalidated { collapsed: false }
                } else {
                    CacheOutcome::Miss
                };
                if response.status.is_server_error()
                    && let Some(stale) = self.stale_if_error(&key, parts, wishes, route)
                {
                    return stale;
                }
                let now = Instant::now();
                let rendered =
                    respond_from_entry(&response, outcome, Some(fwd_status), stored, parts, now);
                (rendered, outcome)
            }
            Ok(LeaderOutcome::Private(mut response)) => {
                if head {
                    *response.body_mut() = ProxyBody::empty();
                }
                (response, CacheOutcome::Miss)
            }
            Ok(LeaderOutcome::Failed(error)) => {
                self.failed(&key, parts, error, CacheOutcome::Miss, wishes, route)
            }
            Err(_fill_task_died) => (
                ProxyError::FetchLost.into_response(CacheOutcome::Miss, parts.uri.path()),
                CacheOutcome::Error,
            ),
        }
    }

    /// After a successful (2xx or 3xx) answer to an unsafe request, removes
    /// what is stored for its URL, and for its `Location` and
    /// `Content-Location` when they are on the same host (RFC 9111 §4.4).
    fn invalidate_after_unsafe(&self, cx: &RequestContext<'_>, response: &Response<ProxyBody>) {
        let parts = cx.parts;
        let status = response.status();
        if parts.method.is_safe() || !(status.is_success() || status.is_redirection()) {
            return;
        }
        let cache = &self.state.cache;
        cache.invalidate(&cx.key);
        // `Location` names the host the client addressed; the key holds the
        // authority sent upstream.
        let addressed = request_host(parts);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let target = response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|target| same_origin_path(addressed, parts.uri.path(), target));
            if let Some(path) = target {
                cache.invalidate(&CacheKey::new(cx.key.authority(), &path));
            }
        }
    }

    /// Relays a request to the origin and its answer back, both streamed.
    ///
    /// Boxed, like [`Proxy::lead`], to keep hits and followers small.
    /// `has_body` says whether `body` carries the client's body (else it is
    /// empty, and no framing header goes upstream).
    fn pass<'a>(
        &'a self,
        cx: &'a RequestContext<'a>,
        body: reqwest::Body,
        has_body: bool,
        reason: PassReason,
    ) -> Pin<Box<impl Future<Output = (Response<ProxyBody>, CacheOutcome)> + Send + 'a>> {
        Box::pin(self.pass_inline(cx, body, has_body, reason))
    }

    async fn pass_inline(
        &self,
        cx: &RequestContext<'_>,
        body: reqwest::Body,
        has_body: bool,
        reason: PassReason,
    ) -> (Response<ProxyBody>, CacheOutcome) {
        let state = &self.state;
        let (parts, route, route_metrics) = (cx.parts, cx.route, cx.route_metrics);
        let outcome = CacheOutcome::Pass(reason);
        let headers = forward::pass_headers(
            &parts.headers,
            cx.client,
            route,
            cx.upstream_host.as_ref(),
            has_body,
        );
        let started = Instant::now();
        let sent = state
            .origin
            .forward(
                parts.method.clone(),
                path_and_query(parts),
                headers,
                body,
                state.origin.timeouts(route.map(route_timeouts).as_ref()),
            )
            .await;
        observe_origin_duration(&state.metrics, started, &sent);
        match sent {
            Ok(response) => {
                state
                    .metrics
                    .origin_request(route_metrics, response.status().as_str());
                let status = response.status();
                let status_value = cache_status_value(outcome, Some(status), false, None, None);
                (relay_response(response, Vec::new(), status_value), outcome)
            }
            Err(error) => {
                if !error.is_refusal() {
                    state.metrics.origin_request(route_metrics, error.label());
                }
                let error = ProxyError::Origin(Arc::new(error));
                (
                    error.into_response(outcome, parts.uri.path()),
                    CacheOutcome::Error,
                )
            }
        }
    }
}

/// The request's cache directives, parsed only when it carries
/// `Cache-Control` or `Pragma`; on a route that ignores clients' no-cache,
/// without the directives that would force a trip to the origin.
fn request_directives(headers: &HeaderMap, policy: ClientNoCache) -> Option<RequestDirectives> {
    (headers.contains_key(header::CACHE_CONTROL) || headers.contains_key(header::PRAGMA)).then(
        || {
            let directives = RequestDirectives::from_headers(headers);
            match policy {
                ClientNoCache::Honour => directives,
                ClientNoCache::Ignore => directives.without_origin_forcing(),
            }
        },
    )
}

/// The origin time limits `route` overrides.
fn route_timeouts(route: &Route) -> TimeoutOverrides {
    TimeoutOverrides {
        connect: route.connect_timeout,
        first_byte: route.first_byte_timeout,
        response: route.timeout,
        request: route.request_timeout,
    }
}

/// Whether the request head announces content: a non-zero `Content-Length`
/// or any `Transfer-Encoding` (HTTP/2 bodies show in the body's end-of-stream).
fn declares_content(parts: &Parts) -> bool {
    parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|length| length.as_bytes().iter().any(|b| *b != b'0'))
}

/// One request as it travels the path: what the client sent, where it came
/// from, the route it matched and where it goes upstream. Built once in
/// [`Proxy::handle`]; each step reads it instead of a list of loose arguments.
struct RequestContext<'a> {
    parts: &'a Parts,
    client: SocketAddr,
    /// `None` when no route matched (the request is passed).
    route: Option<&'a Route>,
    route_metrics: &'a RouteMetrics,
    /// The `Host` sent upstream: the client's, validated and canonical, on a
    /// route that preserves it; `None` lets the origin client send the origin's.
    upstream_host: Option<HeaderValue>,
    /// The primary cache key: the authority sent upstream, the path and query.
    key: CacheKey,
}

/// A fresh stored response, rendered for this request.
fn hit(entry: &CachedResponse, parts: &Parts, now: Instant) -> (Response<ProxyBody>, CacheOutcome) {
    let outcome = CacheOutcome::Hit;
    (
        respond_from_entry(entry, outcome, None, false, parts, now),
        outcome,
    )
}

/// Where a fill's result goes: the flight's followers, and the leader's own
/// client when there is one (not for a background refresh).
struct Publish {
    leader: Leader<CacheKey, FlightOutcome>,
    answer: Option<oneshot::Sender<LeaderOutcome>>,
}

impl Publish {
    fn key(&self) -> &CacheKey {
        self.leader.key()
    }

    /// Hands a complete response to the followers and the leader's client.
    fn shared(
        self,
        response: Arc<CachedResponse>,
        stored: bool,
        fwd_status: StatusCode,
        revalidated: bool,
    ) {
        self.leader.complete(FlightOutcome::Shared {
            response: Arc::clone(&response),
            stored,
            fwd_status,
            revalidated,
        });
        if let Some(answer) = self.answer {
            let _ = answer.send(LeaderOutcome::Shared {
                response,
                stored,
                fwd_status,
                revalidated,
            });
        }
    }

    /// The origin failed: nothing is stored, every waiter gets the error.
    fn failed(self, error: OriginError) {
        let error = Arc::new(error);
        self.leader
            .complete(FlightOutcome::Failed(Arc::clone(&error)));
        if let Some(answer) = self.answer {
            let _ = answer.send(LeaderOutcome::Failed(error));
        }
    }
}

/// One cache fill, run as its own task. Its [`Publish`] owns the flight's
/// [`Leader`]: however the task ends (answer, error, panic), the slot is removed.
struct Fill {
    state: Arc<ProxyState>,
    path_and_query: String,
    origin_headers: HeaderMap,
    request_headers: HeaderMap,
    route: Route,
    route_metrics: RouteMetrics,
    /// The stored variant this fill replaces, if any: revalidated with a
    /// conditional request when it has a validator.
    stale: Option<Arc<CachedResponse>>,
}

impl Fill {
    fn new(
        state: &Arc<ProxyState>,
        cx: &RequestContext<'_>,
        route: &Route,
        stale: Option<Arc<CachedResponse>>,
    ) -> Fill {
        let parts = cx.parts;
        let honour_client = route.client_no_cache == ClientNoCache::Honour;
        let mut request_headers = parts.headers.clone();
        if !honour_client {
            // Unsaid, for storability as for the origin.
            request_headers.remove(header::CACHE_CONTROL);
            request_headers.remove(header::PRAGMA);
        }
        Fill {
            state: Arc::clone(state),
            path_and_query: path_and_query(parts).to_owned(),
            origin_headers: forward::fill_headers(
                &parts.headers,
                cx.client,
                route,
                cx.upstream_host.as_ref(),
                honour_client,
            ),
            request_headers,
            route: route.clone(),
            route_metrics: cx.route_metrics.clone(),
            stale,
        }
    }

    async fn run(self, publish: Publish) {
        let state = Arc::clone(&self.state);
        let _in_flight = GaugeGuard::new(&state.metrics.flights_in_progress);
        let policy = &self.route.freshness;
        let mut revalidating = self.stale.as_ref().filter(|stale| stale.has_validator);
        // A stale variant without a validator is simply fetched again (a miss).
        let revalidation = revalidating.is_some();
        loop {
            let mut headers = self.origin_headers.clone();
            if let Some(stored) = revalidating {
                headers.extend(policy::conditional_headers(&stored.headers));
            }
            let (response, timing) = match self.fetch(headers).await {
                Ok(fetched) => fetched,
                Err(error) => return publish.failed(error),
            };
            let Some(stored) = revalidating.take() else {
                return self.complete(response, timing, revalidation, publish).await;
            };
            if response.status() != StatusCode::NOT_MODIFIED {
                return self.complete(response, timing, revalidation, publish).await;
            }
            if policy::not_modified_applies(&stored.origin_headers(), response.headers()) {
                let entry = stored.freshened(
                    response.headers(),
                    &self.request_headers,
                    &self.route.forward_headers,
                    timing,
                    policy,
                );
                let verdict = policy::not_storable_reason(
                    &Method::GET,
                    &self.request_headers,
                    entry.status,
                    &entry.origin_headers(),
                    &entry.directives,
                    policy,
                );
                if verdict.is_none() {
                    let entry = Arc::new(entry);
                    self.store(publish.key(), &entry);
                    return publish.shared(entry, true, StatusCode::NOT_MODIFIED, true);
                }
                // The 304 made the stored response unstorable: drop it.
                state.cache.remove_variant(publish.key(), stored);
            }
            // Not this response's 304 (or no longer storable): fetch it whole.
        }
    }

    /// Sends the fill's GET with `headers`, counting it; the response head
    /// comes back with hop-by-hop fields removed, `Via` added, and a `Date`
    /// when it had none.
    async fn fetch(&self, headers: HeaderMap) -> Result<(OriginResponse, Timing), OriginError> {
        let state = &self.state;
        let request_time = Instant::now();
        let fetched = state
            .origin
            .fetch(
                &self.path_and_query,
                headers,
                state.origin.timeouts(Some(&route_timeouts(&self.route))),
            )
            .await;
        observe_origin_duration(&state.metrics, request_time, &fetched);
        let mut response = match fetched {
            Ok(response) => response,
            Err(error) => {
                if !error.is_refusal() {
                    state
                        .metrics
                        .origin_request(&self.route_metrics, error.label());
                }
                return Err(error);
            }
        };
        let received_at = SystemTime::now();
        let timing = Timing::new(request_time, Instant::now(), received_at);
        state
            .metrics
            .origin_request(&self.route_metrics, response.status().as_str());
        let headers = response.headers_mut();
        strip_hop_by_hop(headers);
        append_to_list(headers, &header::VIA, VIA_CORRAL);
        ensure_date(headers, received_at);
        Ok((response, timing))
    }

    /// Reads a whole response (not a 304 for a revalidation) and publishes it:
    /// stored when it may be, shared with the followers when it may be,
    /// streamed to the leader's client alone otherwise. `revalidation` says
    /// whether it answers (or follows) a conditional request.
    async fn complete(
        self,
        mut response: OriginResponse,
        timing: Timing,
        revalidation: bool,
        publish: Publish,
    ) {
        let state = &self.state;
        let status = response.status();
        let directives = ResponseDirectives::from_headers(response.headers());
        let verdict = policy::not_storable_reason(
            &Method::GET,
            &self.request_headers,
            status,
            response.headers(),
            &directives,
            &self.route.freshness,
        );
        let shareability = shareability(response.headers(), &directives, verdict);
        let declared_too_large = response
            .content_length()
            .is_some_and(|len| len > state.max_object_size as u64);
        if shareability == Shareability::Private || declared_too_large {
            self.forget_stale(publish.key(), status);
            let detail = if declared_too_large {
                "too-large"
            } else {
                "unshareable"
            };
            return release(state, publish, &self.route, response, Vec::new(), detail);
        }

        let mut chunks: Vec<Bytes> = Vec::new();
        let mut received = 0usize;
        loop {
            match state.origin.read_chunk(&mut response).await {
                Ok(Some(chunk)) => {
                    received += chunk.len();
                    chunks.push(chunk);
                    if received > state.max_object_size {
                        self.forget_stale(publish.key(), status);
                        return release(state, publish, &self.route, response, chunks, "too-large");
                    }
                }
                Ok(None) => break,
                Err(error) => return publish.failed(error),
            }
        }

        let mut headers = std::mem::take(response.headers_mut());
        drop(response);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(received));
        let variant = Variant::capture(
            vary_names(&headers),
            &self.route.forward_headers,
            &self.request_headers,
        );
        let entry = Arc::new(CachedResponse::new(
            status,
            headers,
            concat(chunks, received),
            variant,
            timing,
            &self.route.freshness,
        ));
        let stored = shareability == Shareability::Store;
        if stored {
            self.store(publish.key(), &entry);
        } else {
            self.forget_stale(publish.key(), status);
        }
        publish.shared(entry, stored, status, revalidation);
    }

    /// Stores `entry` under `key`. Called before the slot goes (in
    /// `complete`): a request arriving in between finds either the slot or
    /// the entry, never neither.
    fn store(&self, key: &CacheKey, entry: &Arc<CachedResponse>) {
        self.state
            .cache
            .insert(key.clone(), Arc::clone(entry), &self.request_headers);
        self.state.pass_marks.clear(key);
    }

    /// The origin answered the stale variant's request with something that is
    /// not stored: unless that is a server error (stale-if-error may still
    /// need it), the stale variant no longer stands for the resource.
    fn forget_stale(&self, key: &CacheKey, status: StatusCode) {
        if let Some(stale) = &self.stale
            && !status.is_server_error()
        {
            self.state.cache.remove_variant(key, stale);
        }
    }
}

/// Whether a failed fetch may be answered with a stale entry, and why: only
/// when the origin was not contacted to protect it.
fn stale_reason(error: &OriginError) -> Option<StaleReason> {
    match error {
        OriginError::Refused { reason, .. } => Some(match reason {
            Refusal::CircuitOpen => StaleReason::CircuitOpen,
            Refusal::RetryAfter => StaleReason::RetryAfter,
            Refusal::QueueFull | Refusal::QueueTimeout => StaleReason::Overloaded,
        }),
        _ => None,
    }
}

/// The answer cannot be shared (private, or too large to hold): remember the key
/// as pass, release the followers to fetch for themselves, and stream the
/// answer to the leader's client alone (a background refresh drops it).
fn release(
    state: &ProxyState,
    publish: Publish,
    route: &Route,
    response: OriginResponse,
    prefix: Vec<Bytes>,
    detail: &str,
) {
    state
        .pass_marks
        .mark(publish.key().clone(), Instant::now() + route.hit_for_pass);
    publish.leader.complete(FlightOutcome::Unshareable);
    let Some(answer) = publish.answer else {
        return;
    };
    let status_value = cache_status_value(
        CacheOutcome::Miss,
        Some(response.status()),
        false,
        None,
        Some(detail),
    );
    let _ = answer.send(LeaderOutcome::Private(relay_response(
        response,
        prefix,
        status_value,
    )));
}

/// Turns an origin response into a client response: hop-by-hop headers and
/// `Corral-Cache-Control` removed, `Via`, `Cache-Status` (and `Date`, when
/// missing) added, body streamed (after `prefix`, already read).
fn relay_response(
    response: OriginResponse,
    prefix: Vec<Bytes>,
    cache_status: HeaderValue,
) -> Response<ProxyBody> {
    let response: Response<reqwest::Body> = response.into();
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&CORRAL_CACHE_CONTROL);
    ensure_date(&mut parts.headers, SystemTime::now());
    if !parts
        .headers
        .get_all(header::VIA)
        .iter()
        .any(|v| v.as_bytes().ends_with(VIA_CORRAL.as_bytes()))
    {
        append_to_list(&mut parts.headers, &header::VIA, VIA_CORRAL);
    }
    parts.headers.insert(CACHE_STATUS.clone(), cache_status);
    let body = if prefix.is_empty() {
        ProxyBody::stream(body)
    } else {
        let rest = BodyDataStream::new(body).map_err(BoxError::from);
        let whole = futures_util::stream::iter(prefix.into_iter().map(Ok)).chain(rest);
        ProxyBody::Stream(BodyExt::boxed_unsync(StreamBody::new(
            whole.map_ok(Frame::data),
        )))
    };
    Response::from_parts(parts, body)
}

/// Renders a stored (or just fetched) response for one client: `Age` and
/// `Cache-Status` added (a hit's with its remaining freshness, a fetch's with
/// `fwd_status`), the body left out for HEAD, and a 304 instead when the
/// client's `If-None-Match` / `If-Modified-Since` matches (RFC 9111 §4.3.2).
fn respond_from_entry(
    entry: &CachedResponse,
    outcome: CacheOutcome,
    fwd_status: Option<StatusCode>,
    stored: bool,
    parts: &Parts,
    now: Instant,
) -> Response<ProxyBody> {
    let ttl = (outcome == CacheOutcome::Hit).then(|| entry.ttl_secs(now));
    let cache_status = cache_status_value(outcome, fwd_status, stored, ttl, None);
    let age = HeaderValue::from(entry.age_secs(now));
    let request = &parts.headers;
    let conditional = request.contains_key(header::IF_NONE_MATCH)
        || request.contains_key(header::IF_MODIFIED_SINCE);
    if conditional
        && policy::client_not_modified(
            request,
            entry.status,
            &entry.headers,
            entry.timing.received_at,
        )
    {
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let mut headers = policy::not_modified_response_headers(&entry.headers);
        headers.insert(header::AGE, age);
        headers.insert(CACHE_STATUS.clone(), cache_status);
        *response.headers_mut() = headers;
        return response;
    }
    let body = if parts.method == Method::HEAD {
        ProxyBody::empty()
    } else {
        ProxyBody::full(entry.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    let mut headers = entry.headers.clone();
    headers.insert(header::AGE, age);
    headers.insert(CACHE_STATUS.clone(), cache_status);
    *response.headers_mut() = headers;
    response
}

/// The host a request addressed: the URI authority (HTTP/2, absolute form) or `Host`.
fn request_host(parts: &Parts) -> &str {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

fn path_and_query(parts: &Parts) -> &str {
    parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// Joins a body's chunks into one exact-size allocation. Always a copy, even
/// for a single chunk: a chunk is a slice of the connection's read buffer, and
/// storing the slice would keep that whole buffer (8 KiB or more) alive for as
/// long as the entry, invisible to the cache's byte budget.
fn concat(chunks: Vec<Bytes>, len: usize) -> Bytes {
    let mut whole = BytesMut::with_capacity(len);
    for chunk in chunks {
        whole.extend_from_slice(&chunk);
    }
    whole.freeze()
}

/// One access-log event (target `corral::access`). `bytes` is the body length
/// when known up front (cached answers, or a relayed `Content-Length`);
/// `duration_ms` runs to the response head, not the end of a streamed body.
fn log_access(
    method: &Method,
    uri: &http::Uri,
    response: &Response<ProxyBody>,
    outcome: CacheOutcome,
    elapsed: std::time::Duration,
) {
    let bytes = http_body::Body::size_hint(response.body())
        .exact()
        .or_else(|| {
            response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        });
    tracing::info!(
        target: "corral::access",
        method = %method,
        path = uri.path(),
        status = response.status().as_u16(),
        cache_status = outcome.label(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        bytes,
    );
}

/// Records how long an origin exchange started at `started` took, unless the
/// origin was never contacted (a refusal answers at once and would skew it).
fn observe_origin_duration<T>(
    metrics: &Metrics,
    started: Instant,
    result: &Result<T, OriginError>,
) {
    if !result.as_ref().is_err_and(OriginError::is_refusal) {
        metrics
            .origin_duration
            .observe(started.elapsed().as_secs_f64());
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
