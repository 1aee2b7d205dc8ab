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
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::context::{RequestContext, path_and_query, route_timeouts};
use super::pass::{prepare_origin_head, relay, unstored};
use super::render::{Answer, CacheOutcome};
use super::{GaugeGuard, ProxyState, record_origin_exchange};
use crate::cache::fleet::FleetClaim;
use crate::cache::policy::{self, RequestFacts, Reuse, Shareability, Verdict};
use crate::cache::{CacheKey, CachedResponse, Timing, Variant};
use crate::coalesce::Leader;
use crate::coalesce::stream::{SharedStream, StreamObserver, StreamWriter, shared_stream};
use crate::config::{ClientNoCache, Route};
use crate::http::directives::{CORRAL_CACHE_CONTROL, RequestDirectives};
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
        /// Whether it came from the tier beyond this process (another
        /// instance fetched it) rather than from this flight's fetch.
        from_shared_tier: bool,
    },
    /// A response every waiting client may receive, published as soon as
    /// its head arrived: its body is shared as it arrives.
    Streaming(Arc<StreamingAnswer>),
    /// The answer may not be shared: followers fetch for themselves, and the
    /// leader's client takes the answer handed to it alone.
    Unshareable,
    /// The origin failed; every waiting client gets an error and nothing is stored.
    Failed(Arc<OriginError>),
}

/// A fetched response on its way to every waiting client: its head, and its
/// body shared chunk by chunk ([`SharedStream`]).
#[derive(Debug)]
pub struct StreamingAnswer {
    /// The origin's status.
    pub status: StatusCode,
    /// The origin's end-to-end headers, prepared ([`prepare_origin_head`]).
    pub headers: HeaderMap,
    /// The request headers this response was selected by (its `Vary`).
    pub variant: Variant,
    /// When it arrived (for `Age`).
    pub timing: Timing,
    /// Its body, as it arrives. A body that breaks ends every reader with an
    /// error, never as if complete.
    pub body: SharedStream,
    /// Whether it is being stored (if its body completes within the object limit).
    pub storing: bool,
    /// Why it is not stored, when that is known from its head (`too-large`:
    /// its `Content-Length` is over the object limit).
    pub not_stored_because: Option<&'static str>,
    /// Whether it answers a revalidation of a stored response.
    pub revalidated: bool,
    /// The whole response once its body is complete (stored or not): what
    /// a client that asked for more than the plain body (a range, a
    /// validator match, only the head) is answered from. Closed without a
    /// value when the body broke or was too large to hold.
    pub whole: watch::Receiver<Option<Arc<CachedResponse>>>,
}

/// Accounts every shared body's memory and cut-loose readers in the metrics.
struct StreamMetrics {
    retained: prometheus_client::metrics::gauge::Gauge,
    cut: prometheus_client::metrics::counter::Counter,
}

impl StreamObserver for StreamMetrics {
    fn retained(&self, delta: i64) {
        self.retained.inc_by(delta);
    }

    fn cut_loose(&self) {
        self.cut.inc();
    }
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
            from_shared_tier: false,
        });
        self.leader.finish();
    }

    /// Hands every waiting client a response another instance fetched,
    /// found in the shared tier (and copied here first), then ends the flight.
    fn arrived(self, response: Arc<CachedResponse>) {
        self.leader.publish(FlightOutcome::Shared {
            fwd_status: response.status,
            response,
            stored: false,
            revalidated: false,
            from_shared_tier: true,
        });
        self.leader.finish();
    }

    /// The origin failed: nothing is stored, every waiting client gets the
    /// error. Returns `false`: nothing reached the shared tier.
    fn failed(self, error: OriginError) -> bool {
        self.leader.publish(FlightOutcome::Failed(Arc::new(error)));
        self.leader.finish();
        false
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
    /// The request's own cache directives: whether a shared entry answers it.
    wishes: RequestDirectives,
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
            key: cx.key().clone(),
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
            wishes: cx.wishes().clone(),
            request: cx.facts(),
            route: route.clone(),
            route_metrics: cx.route_metrics.clone(),
            stale,
        }
    }

    pub(super) async fn run(mut self, publish: Publish) {
        let state = Arc::clone(&self.state);
        let _in_flight = GaugeGuard::new(&state.metrics.flights_in_progress);
        let lease = match self.claim().await {
            FleetClaim::Arrived(entry) => return publish.arrived(entry),
            FleetClaim::Fetch(lease) => lease,
        };
        let shared = self.fetch_and_publish(publish).await;
        if let Some(lease) = lease {
            lease.release(shared).await;
        }
    }

    /// Asks the tier beyond this process, then the fleet, whether this fill
    /// is needed: an entry that answers the request as it is ends it; a
    /// stale one found there is what it revalidates (when none was here).
    /// With a fleet, only the instance that wins the key's lock (or one
    /// that waited for it in vain) goes on to fetch.
    async fn claim(&mut self) -> FleetClaim {
        let Some(shared) = self.state.shared.clone() else {
            return FleetClaim::Fetch(None);
        };
        let (policy, wishes) = (&self.route.freshness, &self.wishes);
        let usable =
            |entry: &CachedResponse| entry.reuse(Instant::now(), wishes, policy) == Reuse::Fresh;
        let found = shared
            .lookup(&self.key, &self.request_headers, policy)
            .await;
        let claim = match found {
            Some(entry) if usable(&entry) => {
                self.state.metrics.fleet.hits.inc();
                FleetClaim::Arrived(entry)
            }
            found => {
                if self.stale.is_none() {
                    self.stale = found;
                }
                match &self.state.fleet {
                    Some(fleet) => {
                        let bound = self.route.lock_timeout / 2;
                        fleet
                            .claim(&self.key, &self.request_headers, policy, usable, bound)
                            .await
                    }
                    None => FleetClaim::Fetch(None),
                }
            }
        };
        if let FleetClaim::Arrived(entry) = &claim {
            self.state
                .cache
                .insert(self.key.clone(), Arc::clone(entry), &self.request_headers);
        }
        claim
    }

    /// Fetches (or revalidates), stores and publishes; returns whether the
    /// answer reached the shared tier.
    async fn fetch_and_publish(&self, publish: Publish) -> bool {
        let mut revalidating = self.stale.as_ref().filter(|stale| stale.has_validator);
        // A stale variant without a validator is simply fetched again (a miss).
        let revalidation = revalidating.is_some();
        loop {
            let mut headers = self.origin_headers.clone();
            if let Some(stored) = revalidating {
                headers.extend(policy::conditional_headers(&stored.headers.to_map()));
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
                let shared = self.store(publish.key(), &entry).await;
                publish.shared(entry, true, StatusCode::NOT_MODIFIED, true);
                return shared;
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
            stored.body(),
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
        record_origin_exchange(&state.metrics, &self.route_metrics, request_time, &fetched);
        let mut response = fetched?;
        let received_at = SystemTime::now();
        let timing = Timing::new(request_time, Instant::now(), received_at);
        prepare_origin_head(response.headers_mut(), received_at);
        Ok((response, timing))
    }

    /// Judges a whole response (not a 304 for a revalidation) once, and
    /// hands it on: streamed to the leader's client alone when it may not be
    /// shared; else published to every waiting client as soon as its head is
    /// here, its body shared as it arrives, and stored once complete when it
    /// may be and fits the object limit. An answer larger than that is
    /// streamed to the clients already reading it, never stored, and the key
    /// is passed from then on. `revalidation` says whether it answers a
    /// conditional request. Returns whether the answer reached the shared tier.
    async fn complete(
        &self,
        mut response: OriginResponse,
        timing: Timing,
        revalidation: bool,
        publish: Publish,
    ) -> bool {
        let state = &self.state;
        let status = response.status();
        let verdict: Verdict = policy::judge(
            &self.request,
            status,
            response.headers(),
            &self.route.freshness,
        );
        if verdict.shareability == Shareability::Private {
            self.release(publish, response, Vec::new(), "unshareable");
            return false;
        }
        let declared_too_large = response
            .content_length()
            .is_some_and(|len| len > state.max_object_size as u64);
        // A server error answering for a stale entry never replaces it, even
        // with explicit freshness: stale-if-error may still serve the stale
        // one, and a stored error would answer everyone for its lifetime.
        let replaces_stale_with_error = status.is_server_error() && self.stale.is_some();
        let storing = verdict.shareability == Shareability::Store
            && !replaces_stale_with_error
            && !declared_too_large;
        let variant = Variant::capture(
            vary_names(response.headers()),
            &self.route.forward_headers,
            &self.request_headers,
        );
        let observer = Arc::new(StreamMetrics {
            retained: state.metrics.stream_retained_bytes.clone(),
            cut: state.metrics.stream_readers_cut.clone(),
        });
        let (writer, body) = shared_stream(self.route.stream_lag_limit, observer);
        let (whole, whole_receiver) = watch::channel(None);
        publish
            .leader
            .publish(FlightOutcome::Streaming(Arc::new(StreamingAnswer {
                status,
                headers: client_headers(response.headers()),
                variant: variant.clone(),
                timing,
                body,
                storing,
                not_stored_because: declared_too_large.then_some("too-large"),
                revalidated: revalidation,
                whole: whole_receiver,
            })));
        let mut leader = Some(publish.leader);
        if declared_too_large {
            self.stop_storing(&writer, &mut leader, status);
        }
        let declared = response.content_length();
        let mut received = 0usize;
        // The chunk that completes a declared length: pushed only once the
        // entry is in the cache, since with it a client has the whole body
        // and may ask again at once.
        let mut last = None;
        loop {
            if !writer.ready().await {
                // Too large to store, and nobody reads it any more.
                return false;
            }
            match self.origin.read_chunk(&mut response).await {
                Ok(Some(chunk)) => {
                    received += chunk.len();
                    if leader.is_some() && declared == Some(received as u64) {
                        last = Some(chunk);
                        break;
                    }
                    writer.push(chunk);
                    if received > state.max_object_size && leader.is_some() {
                        self.stop_storing(&writer, &mut leader, status);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%error, "the origin's body broke: every reader's response fails");
                    // Nothing stored: the flight ends (the leader dropped) and
                    // the next request fetches afresh.
                    writer.fail(&error.to_string());
                    return false;
                }
            }
        }
        let Some(leader) = leader else {
            writer.finish();
            return false;
        };
        let mut chunks = writer.chunks();
        chunks.extend(last.clone());
        let mut headers = std::mem::take(response.headers_mut());
        drop(response);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(received));
        let entry = Arc::new(CachedResponse::new(
            status,
            headers,
            verdict.directives,
            concat(chunks, received),
            variant,
            timing,
            &self.route.freshness,
        ));
        let shared = if storing {
            self.store(leader.key(), &entry).await
        } else {
            self.forget_stale(status);
            false
        };
        // Readers see the end only once the entry is stored (here and in the
        // shared tier): a client that read the whole body and asks again, of
        // this instance or another, finds it.
        if let Some(last) = last {
            writer.push(last);
        }
        writer.finish();
        whole.send_replace(Some(entry));
        // Only now, the entry stored: a newcomer finds the slot or the entry.
        leader.finish();
        shared
    }

    /// The answer is too large to store: the key is passed from now on (the
    /// flight ends, so newcomers go straight to the origin), and the body is
    /// only relayed to the clients already reading it, within their lag limit.
    fn stop_storing(
        &self,
        writer: &StreamWriter,
        leader: &mut Option<Leader<CacheKey, FlightOutcome>>,
        status: StatusCode,
    ) {
        self.forget_stale(status);
        if let Some(leader) = leader.take() {
            self.state.pass_marks.mark(
                leader.key().clone(),
                Instant::now() + self.route.hit_for_pass,
            );
            leader.finish();
        }
        writer.stop_keeping();
    }

    /// The answer may not be shared: remember the key as pass, and hand the
    /// answer (streamed after `prefix`, already read) to the leader's client
    /// alone; followers fetch for themselves.
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

    /// Stores `entry` under `key`, here and in the tier beyond this process;
    /// returns whether the latter took it. Called before the flight
    /// finishes: a request arriving in between finds either the slot or the
    /// entry, never neither.
    async fn store(&self, key: &CacheKey, entry: &Arc<CachedResponse>) -> bool {
        self.state
            .cache
            .insert(key.clone(), Arc::clone(entry), &self.request_headers);
        self.state.pass_marks.clear(key);
        match &self.state.shared {
            Some(shared) => {
                shared
                    .store(key, entry, &self.request_headers, &self.route.freshness)
                    .await
            }
            None => false,
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

/// The origin's (prepared) head as clients receive it: without the
/// `Corral-Cache-Control` field meant for corral alone.
fn client_headers(origin: &HeaderMap) -> HeaderMap {
    let mut headers = origin.clone();
    headers.remove(&CORRAL_CACHE_CONTROL);
    headers
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
