//! The request path for one request: route → cache key → hot cache → flight map
//! → origin, and back. Policy lives in [`crate::http`] (what may be shared),
//! [`crate::cache`] (freshness) and [`crate::coalesce`] (who fetches); this
//! module only ties them together and renders responses.

mod admission;
mod body;
mod error;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

use admission::Admission;
pub use body::{BoxError, ProxyBody};
pub use error::ProxyError;

use crate::cache::{CachedResponse, HotCache, PassMarks, Variant};
use crate::coalesce::{FlightMap, Join, Leader, WaitError};
use crate::config::{Config, Route, RouteTable};
use crate::http::{
    CACHE_STATUS, CacheOutcome, PassReason, Shareability, StaleReason, VIA_CORRAL, X_FORWARDED_FOR,
    X_FORWARDED_PROTO, append_to_list, cache_key, cache_status_value, classify_response,
    request_pass_reason, strip_hop_by_hop, vary_names,
};
use crate::metrics::{Metrics, RouteMetrics};
use crate::origin::{OriginClient, OriginError, OriginResponse, Refusal};

/// How many times a request re-joins a key whose leader vanished (or fetched
/// another variant) before giving up with 502.
const MAX_ELECTIONS: usize = 3;

/// Most keys remembered as hit-for-pass at once.
const PASS_MARK_CAPACITY: u64 = 100_000;

/// Request headers that would make a shared fill answer one client's question
/// (a 304 or a range) instead of fetching the whole shareable response.
const FILL_STRIPPED: [header::HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// What a flight publishes to its followers.
#[derive(Clone, Debug)]
pub enum FlightOutcome {
    /// A complete response every waiting client may receive.
    Shared {
        /// The response, shared by reference.
        response: Arc<CachedResponse>,
        /// Whether it was also stored in the hot cache.
        stored: bool,
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
    flights: FlightMap<String, FlightOutcome>,
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
        let cache = HotCache::new(config.cache.max_size.as_u64(), move || {
            evictions.inc();
        });
        let max_object_size =
            usize::try_from(config.cache.max_object_size.as_u64()).unwrap_or(usize::MAX);
        Ok(Proxy {
            state: Arc::new(ProxyState {
                settings: ArcSwap::from_pointee(Settings::new(config, &metrics)),
                cache,
                pass_marks: PassMarks::new(PASS_MARK_CAPACITY),
                flights: FlightMap::new(),
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
        if let Err(refused) = self.state.admission.check(&parts) {
            route_metrics.count(CacheOutcome::Error);
            return refused.into_response(CacheOutcome::Error, parts.uri.path());
        }
        let pass_reason = match matched {
            None => Some(PassReason::NoRoute),
            Some((_, route)) if !route.cache => Some(PassReason::RouteBypass),
            Some(_) => request_pass_reason(&parts.method, &parts.headers),
        };
        let (response, outcome) = match (pass_reason, matched) {
            (None, Some((_, route))) => {
                drop(body);
                self.serve_cacheable(parts, route, route_metrics, client)
                    .await
            }
            (reason, _) => {
                let (body, cut_off) = if body.is_end_stream() {
                    // No body (a GET, usually): one the origin client can resend on retry.
                    (reqwest::Body::from(Bytes::new()), Default::default())
                } else {
                    self.state.admission.limit_body(body)
                };
                let reason = reason.unwrap_or(PassReason::NoRoute);
                let route = matched.map(|(_, route)| route);
                let relayed = self
                    .pass(&parts, body, reason, client, route_metrics, route)
                    .await;
                if cut_off.happened() {
                    // Whatever the origin made of the aborted upload is moot.
                    let refused = self.state.admission.body_too_large();
                    let path = parts.uri.path();
                    (
                        refused.into_response(CacheOutcome::Error, path),
                        CacheOutcome::Error,
                    )
                } else {
                    relayed
                }
            }
        };
        let elapsed = started.elapsed();
        route_metrics.record(outcome, elapsed);
        if let Some((method, uri)) = access {
            log_access(&method, &uri, &response, outcome, elapsed);
        }
        response
    }

    /// GET or HEAD on a caching route: hit, follow, or lead a fetch.
    async fn serve_cacheable(
        &self,
        parts: Parts,
        route: &Route,
        route_metrics: &RouteMetrics,
        client: SocketAddr,
    ) -> (Response<ProxyBody>, CacheOutcome) {
        let state = &self.state;
        let head = parts.method == Method::HEAD;
        let key = cache_key(request_host(&parts), path_and_query(&parts));
        let now = Instant::now();
        if let Some(entry) = self.fresh_entry(&key, &parts.headers, now) {
            return (
                respond_from_entry(&entry, CacheOutcome::Hit, false, head, now),
                CacheOutcome::Hit,
            );
        }
        if state.pass_marks.is_marked(&key, now) {
            let body = reqwest::Body::from(Bytes::new());
            return self
                .pass(
                    &parts,
                    body,
                    PassReason::HitForPass,
                    client,
                    route_metrics,
                    Some(route),
                )
                .await;
        }
        let deadline = now + route.lock_timeout;
        for _ in 0..MAX_ELECTIONS {
            match state.flights.join(key.clone()) {
                Join::Leader(leader) => {
                    // The previous flight may have stored its answer between our
                    // lookup and our join: look again before going to the origin.
                    let now = Instant::now();
                    if let Some(entry) = self.fresh_entry(&key, &parts.headers, now) {
                        leader.complete(FlightOutcome::Shared {
                            response: Arc::clone(&entry),
                            stored: true,
                        });
                        return (
                            respond_from_entry(&entry, CacheOutcome::Hit, false, head, now),
                            CacheOutcome::Hit,
                        );
                    }
                    return self
                        .lead(leader, &parts, route, route_metrics, client)
                        .await;
                }
                Join::Follower(follower) => {
                    state.metrics.flight_followers.inc();
                    let waited = {
                        let _waiting = GaugeGuard::new(&state.metrics.followers_waiting);
                        follower.wait(deadline).await
                    };
                    let outcome = CacheOutcome::Coalesced;
                    match waited {
                        Ok(FlightOutcome::Shared { response, .. })
                            if response.variant.matches(&parts.headers) =>
                        {
                            let now = Instant::now();
                            return (
                                respond_from_entry(&response, outcome, false, head, now),
                                outcome,
                            );
                        }
                        // The leader fetched another variant: elect again for ours.
                        Ok(FlightOutcome::Shared { .. }) | Err(WaitError::Abandoned) => continue,
                        Ok(FlightOutcome::Unshareable) => {
                            let body = reqwest::Body::from(Bytes::new());
                            return self
                                .pass(
                                    &parts,
                                    body,
                                    PassReason::Unshareable,
                                    client,
                                    route_metrics,
                                    Some(route),
                                )
                                .await;
                        }
                        Ok(FlightOutcome::Failed(error)) => {
                            return self.failed(&key, &parts, error, outcome);
                        }
                        Err(WaitError::TimedOut) => {
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

    /// A stored entry for `key` that is fresh at `now` and matches the request's variant.
    fn fresh_entry(
        &self,
        key: &str,
        request: &HeaderMap,
        now: Instant,
    ) -> Option<Arc<CachedResponse>> {
        self.state
            .cache
            .get(key)
            .filter(|entry| entry.is_fresh(now) && entry.variant.matches(request))
    }

    /// Answers a request whose fetch failed: with the stored entry, however
    /// stale, when the origin was not contacted to protect it (breaker open,
    /// `Retry-After`, overload) and the entry is still held; else with the error.
    fn failed(
        &self,
        key: &str,
        parts: &Parts,
        error: Arc<OriginError>,
        outcome: CacheOutcome,
    ) -> (Response<ProxyBody>, CacheOutcome) {
        let stale = stale_reason(&error).and_then(|reason| {
            let entry = self.state.cache.get(key)?;
            entry
                .variant
                .matches(&parts.headers)
                .then_some((entry, CacheOutcome::Stale(reason)))
        });
        match stale {
            Some((entry, stale)) => {
                let head = parts.method == Method::HEAD;
                let response = respond_from_entry(&entry, stale, false, head, Instant::now());
                (response, stale)
            }
            None => (
                ProxyError::Origin(error).into_response(outcome, parts.uri.path()),
                CacheOutcome::Error,
            ),
        }
    }

    /// Spawns the fetch as its own task (so this client leaving cannot cancel
    /// it) and waits for the answer meant for this client.
    async fn lead(
        &self,
        leader: Leader<String, FlightOutcome>,
        parts: &Parts,
        route: &Route,
        route_metrics: &RouteMetrics,
        client: SocketAddr,
    ) -> (Response<ProxyBody>, CacheOutcome) {
        let (answer, answered) = oneshot::channel();
        let key = leader.key().clone();
        let fill = Fill {
            state: Arc::clone(&self.state),
            leader,
            path_and_query: path_and_query(parts).to_owned(),
            origin_headers: forward_headers(
                &parts.headers,
                client,
                true,
                preserved_host(parts, Some(route)),
            ),
            request_headers: parts.headers.clone(),
            route: route.clone(),
            route_metrics: route_metrics.clone(),
        };
        tokio::spawn(fill.run(answer));
        let head = parts.method == Method::HEAD;
        let outcome = CacheOutcome::Miss;
        match answered.await {
            Ok(LeaderOutcome::Shared { response, stored }) => (
                respond_from_entry(&response, outcome, stored, head, Instant::now()),
                outcome,
            ),
            Ok(LeaderOutcome::Private(mut response)) => {
                if head {
                    *response.body_mut() = ProxyBody::empty();
                }
                (response, outcome)
            }
            Ok(LeaderOutcome::Failed(error)) => self.failed(&key, parts, error, outcome),
            Err(_fill_task_died) => (
                ProxyError::FetchLost.into_response(outcome, parts.uri.path()),
                CacheOutcome::Error,
            ),
        }
    }

    /// Relays a request to the origin and its answer back, both streamed.
    async fn pass(
        &self,
        parts: &Parts,
        body: reqwest::Body,
        reason: PassReason,
        client: SocketAddr,
        route_metrics: &RouteMetrics,
        route: Option<&Route>,
    ) -> (Response<ProxyBody>, CacheOutcome) {
        let state = &self.state;
        let outcome = CacheOutcome::Pass(reason);
        let host = preserved_host(parts, route);
        let headers = forward_headers(&parts.headers, client, false, host);
        let started = Instant::now();
        let sent = state
            .origin
            .forward(
                parts.method.clone(),
                path_and_query(parts),
                headers,
                body,
                route,
            )
            .await;
        if !sent.as_ref().is_err_and(OriginError::is_refusal) {
            state
                .metrics
                .origin_duration
                .observe(started.elapsed().as_secs_f64());
        }
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

/// One cache fill, run as its own task. Owns the flight's [`Leader`]: however
/// the task ends (answer, error, panic), the slot is removed.
struct Fill {
    state: Arc<ProxyState>,
    leader: Leader<String, FlightOutcome>,
    path_and_query: String,
    origin_headers: HeaderMap,
    request_headers: HeaderMap,
    route: Route,
    route_metrics: RouteMetrics,
}

impl Fill {
    async fn run(self, answer: oneshot::Sender<LeaderOutcome>) {
        let Fill {
            state,
            leader,
            path_and_query,
            origin_headers,
            request_headers,
            route,
            route_metrics,
        } = self;
        let _in_flight = GaugeGuard::new(&state.metrics.flights_in_progress);
        let started = Instant::now();
        let fetched = state
            .origin
            .fetch(&path_and_query, origin_headers, &route)
            .await;
        if !fetched.as_ref().is_err_and(OriginError::is_refusal) {
            state
                .metrics
                .origin_duration
                .observe(started.elapsed().as_secs_f64());
        }
        let mut response = match fetched {
            Ok(response) => response,
            Err(error) => {
                if !error.is_refusal() {
                    state.metrics.origin_request(&route_metrics, error.label());
                }
                return fail(leader, answer, error);
            }
        };
        let status = response.status();
        state
            .metrics
            .origin_request(&route_metrics, status.as_str());
        let mut headers = std::mem::take(response.headers_mut());
        strip_hop_by_hop(&mut headers);
        append_to_list(&mut headers, &header::VIA, VIA_CORRAL);
        *response.headers_mut() = headers;

        let shareability = classify_response(status, response.headers());
        let declared_too_large = response
            .content_length()
            .is_some_and(|len| len > state.max_object_size as u64);
        if shareability == Shareability::Private || declared_too_large {
            let detail = if declared_too_large {
                "too-large"
            } else {
                "unshareable"
            };
            return release(&state, leader, answer, &route, response, Vec::new(), detail);
        }

        let mut chunks: Vec<Bytes> = Vec::new();
        let mut received = 0usize;
        loop {
            match state.origin.read_chunk(&mut response).await {
                Ok(Some(chunk)) => {
                    received += chunk.len();
                    chunks.push(chunk);
                    if received > state.max_object_size {
                        return release(
                            &state,
                            leader,
                            answer,
                            &route,
                            response,
                            chunks,
                            "too-large",
                        );
                    }
                }
                Ok(None) => break,
                Err(error) => return fail(leader, answer, error),
            }
        }

        let mut headers = std::mem::take(response.headers_mut());
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(received));
        let variant = Variant::capture(vary_names(&headers), &request_headers);
        let stored = shareability == Shareability::Store;
        let now = Instant::now();
        let entry = Arc::new(CachedResponse {
            status,
            headers,
            body: concat(chunks, received),
            stored_at: now,
            fresh_until: if stored { now + route.ttl } else { now },
            variant,
        });
        if stored {
            // Stored before the slot goes (in `complete`): a request arriving in
            // between finds either the slot or the entry, never neither.
            state.cache.insert(leader.key().clone(), Arc::clone(&entry));
            state.pass_marks.clear(leader.key());
        }
        leader.complete(FlightOutcome::Shared {
            response: Arc::clone(&entry),
            stored,
        });
        let _ = answer.send(LeaderOutcome::Shared {
            response: entry,
            stored,
        });
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

/// The origin failed: nothing is stored, every waiter gets the error.
fn fail(
    leader: Leader<String, FlightOutcome>,
    answer: oneshot::Sender<LeaderOutcome>,
    error: OriginError,
) {
    let error = Arc::new(error);
    leader.complete(FlightOutcome::Failed(Arc::clone(&error)));
    let _ = answer.send(LeaderOutcome::Failed(error));
}

/// The answer cannot be shared (private, or too large to hold): remember the key
/// as pass, release the followers to fetch for themselves, and stream the
/// answer to the leader's client alone.
fn release(
    state: &ProxyState,
    leader: Leader<String, FlightOutcome>,
    answer: oneshot::Sender<LeaderOutcome>,
    route: &Route,
    response: OriginResponse,
    prefix: Vec<Bytes>,
    detail: &str,
) {
    state
        .pass_marks
        .mark(leader.key().clone(), Instant::now() + route.hit_for_pass);
    leader.complete(FlightOutcome::Unshareable);
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

/// Turns an origin response into a client response: hop-by-hop headers removed,
/// `Via` and `Cache-Status` added, body streamed (after `prefix`, already read).
fn relay_response(
    response: OriginResponse,
    prefix: Vec<Bytes>,
    cache_status: HeaderValue,
) -> Response<ProxyBody> {
    let response: Response<reqwest::Body> = response.into();
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
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

/// Renders a stored (or just fetched) response for one client.
fn respond_from_entry(
    entry: &CachedResponse,
    outcome: CacheOutcome,
    stored: bool,
    head: bool,
    now: Instant,
) -> Response<ProxyBody> {
    let body = if head {
        ProxyBody::empty()
    } else {
        ProxyBody::full(entry.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    let mut headers = entry.headers.clone();
    headers.insert(header::AGE, HeaderValue::from(entry.age_secs(now)));
    let (fwd_status, ttl) = match outcome {
        CacheOutcome::Hit => (None, Some(entry.ttl_secs(now))),
        CacheOutcome::Stale(_) => (None, None),
        _ => (Some(entry.status), None),
    };
    headers.insert(
        CACHE_STATUS.clone(),
        cache_status_value(outcome, fwd_status, stored, ttl, None),
    );
    *response.headers_mut() = headers;
    response
}

/// Headers sent to the origin: the client's end-to-end headers, minus `Host`
/// (the origin's own is used unless `preserved_host` is given), plus
/// `X-Forwarded-For`, `X-Forwarded-Proto` and `Via`. A fill also drops
/// conditional and range headers, since its answer is shared by clients who
/// did not ask them.
fn forward_headers(
    client_headers: &HeaderMap,
    client: SocketAddr,
    fill: bool,
    preserved_host: Option<HeaderValue>,
) -> HeaderMap {
    let mut headers = client_headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    if let Some(host) = preserved_host {
        headers.insert(header::HOST, host);
    }
    if fill {
        for name in &FILL_STRIPPED {
            headers.remove(name);
        }
    }
    append_to_list(&mut headers, &X_FORWARDED_FOR, &client.ip().to_string());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    append_to_list(&mut headers, &header::VIA, VIA_CORRAL);
    headers
}

/// The client's `Host` (or HTTP/2 `:authority`) when `route` says to forward
/// it; `None` lets the origin client send the origin's own.
fn preserved_host(parts: &Parts, route: Option<&Route>) -> Option<HeaderValue> {
    if !route.is_some_and(|route| route.preserve_host) {
        return None;
    }
    let host = request_host(parts);
    (!host.is_empty())
        .then(|| HeaderValue::from_str(host).ok())
        .flatten()
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

fn concat(chunks: Vec<Bytes>, len: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.into_iter().next().unwrap_or_default();
    }
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
