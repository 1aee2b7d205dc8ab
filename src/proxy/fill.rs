//! The leader's fetch: one cache fill, run as its own task so the leader's
//! client leaving cannot cancel it. It fetches (or revalidates), judges the
//! answer once ([`policy::judge`]), stores it when it may, publishes the one
//! [`FlightOutcome`] every waiting client reads (the leader's client too),
//! and finishes the flight only after the cache write (the no-gap invariant).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::context::{RequestContext, path_and_query, route_timeouts};
use super::pass::{prepare_origin_head, relay, unstored};
use super::render::{Answer, CacheOutcome};
use super::{GaugeGuard, ProxyState, observe_origin_duration};
use crate::cache::policy::{self, RequestFacts, Shareability, Verdict};
use crate::cache::{CacheKey, CachedResponse, Timing, Variant};
use crate::coalesce::Leader;
use crate::config::{ClientNoCache, Route};
use crate::http::vary_names;
use crate::metrics::RouteMetrics;
use crate::origin::{OriginClient, OriginError, OriginResponse};

/// What a flight publishes: every waiting client, the leader's own included,
/// reads this one value.
#[derive(Clone, Debug)]
pub enum FlightOutcome {
    /// A complete response every waiting client may receive.
    Shared {
        /// The response, shared by reference.
        response: Arc<CachedResponse>,
        /// Whether it was also stored in the cache.
        stored: bool,
        /// What the origin answered: 304 when it confirmed a stored response.
        fwd_status: StatusCode,
        /// Whether the fetch revalidated a stored response.
        revalidated: bool,
    },
    /// The answer may not be shared: followers fetch for themselves, and the
    /// leader's client takes the answer handed to it alone.
    Unshareable,
    /// The origin failed; every waiting client gets an error and nothing is stored.
    Failed(Arc<OriginError>),
}

/// Where a fill's result goes: the flight (read by every waiting client), and,
/// for an answer only the leader's client may see, a hand-off to it alone
/// (none for a background refresh).
pub(super) struct Publish {
    pub leader: Leader<CacheKey, FlightOutcome>,
    pub private: Option<oneshot::Sender<Answer>>,
}

impl Publish {
    fn key(&self) -> &CacheKey {
        self.leader.key()
    }

    /// Hands a complete response to every waiting client, then ends the
    /// flight. The caller stored it first, when it was storable.
    fn shared(
        self,
        response: Arc<CachedResponse>,
        stored: bool,
        fwd_status: StatusCode,
        revalidated: bool,
    ) {
        self.leader.publish(FlightOutcome::Shared {
            response,
            stored,
            fwd_status,
            revalidated,
        });
        self.leader.finish();
    }

    /// The origin failed: nothing is stored, every waiting client gets the error.
    fn failed(self, error: OriginError) {
        self.leader.publish(FlightOutcome::Failed(Arc::new(error)));
        self.leader.finish();
    }

    /// The answer cannot be shared (private, or too large to hold): the
    /// leader's client gets it alone, streamed; followers fetch for themselves.
    fn unshareable(self, answer: Answer) {
        if let Some(private) = self.private {
            // Sent before publishing: the leader's client reads it once it sees the outcome.
            let _ = private.send(answer);
        }
        self.leader.publish(FlightOutcome::Unshareable);
        self.leader.finish();
    }
}

/// One cache fill, run as its own task. Its [`Publish`] owns the flight's
/// [`Leader`]: however the task ends (answer, error, panic), the slot is removed.
pub(super) struct Fill {
    state: Arc<ProxyState>,
    /// The origin the request's route picked when it started: a fill in
    /// flight finishes there even if a reload changes or removes it.
    origin: OriginClient,
    /// The flight's key, under which `stale` was found.
    key: CacheKey,
    path_and_query: String,
    origin_headers: HeaderMap,
    request_headers: HeaderMap,
    /// What storing the answer depends on in the request, read once.
    request: RequestFacts,
    route: Route,
    route_metrics: RouteMetrics,
    /// The stored variant this fill replaces, if any: revalidated with a
    /// conditional request when it has a validator.
    stale: Option<Arc<CachedResponse>>,
}

impl Fill {
    pub(super) fn new(
        state: &Arc<ProxyState>,
        cx: &RequestContext<'_>,
        route: &Route,
        stale: Option<Arc<CachedResponse>>,
    ) -> Fill {
        let parts = cx.parts;
        let honour_client = route.client_no_cache == ClientNoCache::Honour;
        Fill {
            state: Arc::clone(state),
            origin: cx.origin.clone(),
            key: cx.key.clone(),
            path_and_query: path_and_query(parts).to_owned(),
            origin_headers: super::forward::fill_headers(
                &parts.headers,
                cx.client,
                cx.scheme,
                route,
                cx.upstream_host.as_ref(),
                honour_client,
            ),
            request_headers: parts.headers.clone(),
            request: cx.facts(),
            route: route.clone(),
            route_metrics: cx.route_metrics.clone(),
            stale,
        }
    }

    pub(super) async fn run(self, publish: Publish) {
        let state = Arc::clone(&self.state);
        let _in_flight = GaugeGuard::new(&state.metrics.flights_in_progress);
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
            if let Some(entry) = self.freshen(stored, response.headers(), timing) {
                let entry = Arc::new(entry);
                self.store(publish.key(), &entry).await;
                return publish.shared(entry, true, StatusCode::NOT_MODIFIED, true);
            }
            // Not this response's 304, or the 304 made it unstorable (then it
            // is dropped): fetch it whole.
        }
    }

    /// `stored` updated by a 304 that answered its revalidation (RFC 9111
    /// §4.3.4), when the 304 is for it and the result may be stored. The
    /// stored headers are copied once and merged in place.
    fn freshen(
        &self,
        stored: &Arc<CachedResponse>,
        not_modified: &HeaderMap,
        timing: Timing,
    ) -> Option<CachedResponse> {
        let policy = &self.route.freshness;
        let origin = stored.origin_headers();
        if !policy::not_modified_applies(&origin, not_modified) {
            return None;
        }
        let merged = policy::freshen_headers(origin, not_modified);
        let verdict = policy::judge(&self.request, stored.status, &merged, policy);
        if verdict.not_storable.is_some() {
            self.state.cache.remove_variant(&self.key, stored);
            return None;
        }
        let variant = Variant::capture(
            vary_names(&merged),
            &self.route.forward_headers,
            &self.request_headers,
        );
        Some(CachedResponse::new(
            stored.status,
            merged,
            verdict.directives,
            stored.body.clone(),
            variant,
            timing,
            policy,
        ))
    }

    /// Sends the fill's GET with `headers`, counting it; the response head
    /// comes back prepared ([`prepare_origin_head`]).
    async fn fetch(&self, headers: HeaderMap) -> Result<(OriginResponse, Timing), OriginError> {
        let state = &self.state;
        let request_time = Instant::now();
        let fetched = self
            .origin
            .fetch(
                &self.path_and_query,
                headers,
                self.origin.timeouts(Some(&route_timeouts(&self.route))),
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
        prepare_origin_head(response.headers_mut(), received_at);
        Ok((response, timing))
    }

    /// Reads a whole response (not a 304 for a revalidation), judges it once,
    /// and publishes it: stored when it may be, shared with the waiting
    /// clients when it may be, streamed to the leader's client alone
    /// otherwise. `revalidation` says whether it answers a conditional request.
    async fn complete(
        self,
        mut response: OriginResponse,
        timing: Timing,
        revalidation: bool,
        publish: Publish,
    ) {
        let state = &self.state;
        let status = response.status();
        let verdict: Verdict = policy::judge(
            &self.request,
            status,
            response.headers(),
            &self.route.freshness,
        );
        let declared_too_large = response
            .content_length()
            .is_some_and(|len| len > state.max_object_size as u64);
        if verdict.shareability == Shareability::Private || declared_too_large {
            let detail = if declared_too_large {
                "too-large"
            } else {
                "unshareable"
            };
            return self.release(publish, response, Vec::new(), detail);
        }

        let mut chunks: Vec<Bytes> = Vec::new();
        let mut received = 0usize;
        loop {
            match self.origin.read_chunk(&mut response).await {
                Ok(Some(chunk)) => {
                    received += chunk.len();
                    chunks.push(chunk);
                    if received > state.max_object_size {
                        return self.release(publish, response, chunks, "too-large");
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
            verdict.directives,
            concat(chunks, received),
            variant,
            timing,
            &self.route.freshness,
        ));
        // A server error answering for a stale entry never replaces it, even
        // with explicit freshness: stale-if-error may still serve the stale
        // one, and a stored error would answer everyone for its lifetime.
        let replaces_stale_with_error = status.is_server_error() && self.stale.is_some();
        let stored = verdict.shareability == Shareability::Store && !replaces_stale_with_error;
        if stored {
            self.store(publish.key(), &entry).await;
        } else {
            self.forget_stale(status);
        }
        publish.shared(entry, stored, status, revalidation);
    }

    /// The answer cannot be shared (private, or too large to hold): remember
    /// the key as pass, and hand the answer (streamed after `prefix`, already
    /// read) to the leader's client alone; followers fetch for themselves.
    fn release(
        &self,
        publish: Publish,
        response: OriginResponse,
        prefix: Vec<Bytes>,
        detail: &'static str,
    ) {
        let status = response.status();
        self.forget_stale(status);
        self.state.pass_marks.mark(
            publish.key().clone(),
            Instant::now() + self.route.hit_for_pass,
        );
        let cache_status = unstored(CacheOutcome::Miss, status, detail);
        publish.unshareable(relay(response, prefix, cache_status));
    }

    /// Stores `entry` under `key`, here and in the tier beyond this process.
    /// Called before the flight finishes: a request arriving in between
    /// finds either the slot or the entry, never neither.
    async fn store(&self, key: &CacheKey, entry: &Arc<CachedResponse>) {
        self.state
            .cache
            .insert(key.clone(), Arc::clone(entry), &self.request_headers);
        self.state.pass_marks.clear(key);
        if let Some(shared) = &self.state.shared {
            shared.store(key, entry, &self.request_headers).await;
        }
    }

    /// The origin answered the stale variant's request with something that is
    /// not stored: unless that is a server error (stale-if-error may still
    /// need it), the stale variant no longer stands for the resource.
    fn forget_stale(&self, status: StatusCode) {
        if let Some(stale) = &self.stale
            && !status.is_server_error()
        {
            self.state.cache.remove_variant(&self.key, stale);
        }
    }
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
