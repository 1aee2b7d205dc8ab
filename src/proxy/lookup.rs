//! The cacheable branch: a GET or HEAD on a caching route is answered from
//! the cache, served stale while one background request refreshes it, or
//! joins the key's flight, as its leader or as a follower. Leader and
//! followers read the flight's one outcome the same way ([`Proxy::answer_flight`]).

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::{Either, OptionFuture};
use http::Method;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::context::RequestContext;
use super::error::ProxyError;
use super::fill::{Fill, FlightOutcome, Publish};
use super::render::{self, Answer, CacheOutcome, CacheStatus, StaleReason};
use super::{GaugeGuard, MAX_ELECTIONS, Proxy, ProxyBody};
use crate::cache::CachedResponse;
use crate::cache::policy::{PassReason, Reuse};
use crate::coalesce::{Join, Leader, WaitError};
use crate::config::Route;
use crate::http::directives::RequestDirectives;
use crate::origin::{OriginError, Refusal};

/// Who is reading a flight's outcome.
enum Role {
    /// The request whose fetch it is; an answer only it may see arrives here.
    Leader(oneshot::Receiver<Answer>),
    /// A request that waited on another's fetch.
    Follower,
}

/// What a follower does after reading the flight's outcome.
enum Next {
    /// Answer the client.
    Answer(Answer),
    /// The leader vanished without an answer: elect again.
    Reelect,
    /// The leader fetched another variant: elect again for this one, once
    /// its slot is gone.
    OtherVariant,
}

impl Proxy {
    /// GET or HEAD on a caching route, answered from the cache when it can
    /// be at once: a fresh hit, or a stale answer while it is revalidated in
    /// the background. Otherwise `Err` hands over the variant it found, fresh
    /// or not, for [`Proxy::miss`].
    ///
    /// Synchronous, so a hit is answered before any future exists for it.
    pub(super) fn answer_from_cache(
        &self,
        cx: &RequestContext<'_>,
        route: &Route,
        now: Instant,
    ) -> Result<Answer, Option<Arc<CachedResponse>>> {
        let parts = cx.parts;
        // The variant this request selects, fresh or not: looked up once
        // here, and once more by a leader (a flight may have landed between).
        let stored =
            cx.with_encoded_key(|key| self.state.cache.select_at(key, &parts.headers, now));
        if let Some(entry) = &stored {
            let age = entry.current_age(now);
            match entry.reuse_at_age(age, cx.wishes(), &route.freshness) {
                Reuse::Fresh => return Ok(render::hit(entry, parts, age)),
                Reuse::Stale {
                    may_serve_while_revalidate: true,
                    ..
                } => {
                    self.refresh_in_background(cx, entry, route);
                    let status = CacheStatus::of(CacheOutcome::Stale(StaleReason::WhileRevalidate));
                    return Ok(render::from_entry(entry, status, parts, now));
                }
                Reuse::Stale { .. } => {}
            }
        }
        Err(stored)
    }

    /// The variant this request selects and its age at `now`, when it is
    /// fresh enough to be a hit ([`Reuse::Fresh`], as [`Proxy::answer_from_cache`]
    /// judges it); `None` otherwise.
    pub(super) fn fresh_entry(
        &self,
        cx: &RequestContext<'_>,
        route: &Route,
        now: Instant,
    ) -> Option<(Arc<CachedResponse>, std::time::Duration)> {
        let entry =
            cx.with_encoded_key(|key| self.state.cache.select_at(key, &cx.parts.headers, now))?;
        let age = entry.current_age(now);
        (entry.reuse_at_age(age, cx.wishes(), &route.freshness) == Reuse::Fresh)
            .then_some((entry, age))
    }

    /// A request the cache could not answer as it is: refused when the
    /// client said `only-if-cached`, passed when the key is marked
    /// hit-for-pass, else it joins the key's flight, as its leader or as a
    /// follower. `stored` is the variant it found, unusable as it is.
    ///
    /// Boxed: a hit's future never carries the miss's state. A parked
    /// follower's whole state is this future, paid once per waiting client,
    /// so it keeps only what waiting needs: what a woken follower needs
    /// ([`Proxy::answer_flight`]) is boxed when it wakes, and the timer for a
    /// slow origin's stale answer exists only when there is one. (An async
    /// block rather than an `async fn`, whose arguments would be stored twice.)
    pub(super) fn miss<'a>(
        &'a self,
        cx: &'a RequestContext<'a>,
        route: &'a Route,
        stored: Option<Arc<CachedResponse>>,
    ) -> Pin<Box<impl Future<Output = Answer> + Send + 'a>> {
        Box::pin(async move {
            let now = Instant::now();
            if cx.wishes().only_if_cached {
                return ProxyError::NotCached.into_answer(CacheOutcome::Error, cx.path());
            }
            if self.state.pass_marks.is_marked(cx.key(), now) {
                let body = reqwest::Body::from(Bytes::new());
                return self.pass(cx, body, false, PassReason::HitForPass).await;
            }
            let deadline = now + route.lock_timeout;
            let mut abandoned = 0;
            while abandoned < MAX_ELECTIONS {
                let follower = match self.state.flights.join(cx.key().clone()) {
                    Join::Leader(leader) => return self.lead_or_hit(leader, cx, route).await,
                    Join::Follower(follower) => follower,
                };
                let metrics = &self.state.metrics;
                metrics.flight_followers.inc();
                let waited = {
                    let _waiting = GaugeGuard::new(&metrics.followers_waiting);
                    tokio::select! {
                        waited = follower.wait(deadline) => waited,
                        Some(entry) = self.stale_for_slow_origin(cx, route, stored.as_ref()) => {
                            let status = CacheStatus::of(CacheOutcome::Stale(StaleReason::SlowOrigin));
                            return render::from_entry(&entry, status, cx.parts, Instant::now());
                        }
                    }
                };
                // The answer is returned at once, never held across the
                // yield: a value live across two awaits is laid out beside
                // every state of the future, the parked one included.
                let other_variant = match self
                    .answer_flight(cx, route, stored.as_ref(), waited, Role::Follower)
                    .await
                {
                    Next::Answer(answer) => return answer,
                    Next::Reelect => {
                        abandoned += 1;
                        false
                    }
                    Next::OtherVariant => true,
                };
                if other_variant {
                    tokio::task::yield_now().await;
                }
            }
            ProxyError::FetchLost.into_answer(CacheOutcome::Coalesced, cx.path())
        })
    }

    /// The flight's new leader: answers from the cache if the key was
    /// filled since this request looked (and ends the flight), else leads
    /// the fetch.
    fn lead_or_hit<'a>(
        &'a self,
        leader: Leader<crate::cache::CacheKey, FlightOutcome>,
        cx: &'a RequestContext<'a>,
        route: &'a Route,
    ) -> Either<Ready<Answer>, Pin<Box<impl Future<Output = Answer> + Send + 'a>>> {
        let stored = self.state.cache.select(cx.key(), &cx.parts.headers);
        if let Some(entry) = &stored {
            let age = entry.current_age(Instant::now());
            if entry.reuse_at_age(age, cx.wishes(), &route.freshness) == Reuse::Fresh {
                leader.publish(FlightOutcome::Shared {
                    response: Arc::clone(entry),
                    stored: true,
                    fwd_status: entry.status,
                    revalidated: false,
                    from_shared_tier: false,
                });
                leader.finish();
                return Either::Left(ready(render::hit(entry, cx.parts, age)));
            }
        }
        Either::Right(self.lead(leader, cx, route, stored))
    }

    /// Spawns the fetch as its own task (so this client leaving cannot cancel
    /// it) and reads the flight's outcome as every follower does. `stored` is
    /// the variant this request found unusable as it was: the fetch
    /// revalidates it.
    ///
    /// Boxed: only a leader takes this branch, so its state is kept out of
    /// the future of every hit and every parked follower.
    fn lead<'a>(
        &'a self,
        leader: Leader<crate::cache::CacheKey, FlightOutcome>,
        cx: &'a RequestContext<'a>,
        route: &'a Route,
        stored: Option<Arc<CachedResponse>>,
    ) -> Pin<Box<impl Future<Output = Answer> + Send + 'a>> {
        Box::pin(async move {
            let (private, handed) = oneshot::channel();
            let own = leader.follow();
            let fill = Fill::new(&self.state, cx, route, stored.clone());
            tokio::spawn(fill.run(Publish {
                leader,
                private: Some(private),
            }));
            let slow = self.stale_for_slow_origin(cx, route, stored.as_ref());
            let waited = tokio::select! {
                waited = own.outcome() => waited,
                // The fetch goes on for the cache; this client has waited enough.
                Some(entry) = slow => {
                    let status = CacheStatus::of(CacheOutcome::Stale(StaleReason::SlowOrigin));
                    return render::from_entry(&entry, status, cx.parts, Instant::now());
                }
            };
            let next = self
                .answer_flight(cx, route, stored.as_ref(), waited, Role::Leader(handed))
                .await;
            match next {
                Next::Answer(answer) => answer,
                // The fill task died (it panicked) without an answer.
                Next::Reelect | Next::OtherVariant => {
                    ProxyError::FetchLost.into_answer(CacheOutcome::Miss, cx.path())
                }
            }
        })
    }

    /// Turns a flight's outcome into this request's answer, the same way for
    /// the leader's client and for followers. `stored` is the variant this
    /// request found, served instead when the origin failed and it may be.
    ///
    /// Boxed: only a woken follower (or the leader's client) needs its
    /// state, so every parked follower's future stays without it.
    fn answer_flight<'a>(
        &'a self,
        cx: &'a RequestContext<'a>,
        route: &'a Route,
        stored: Option<&'a Arc<CachedResponse>>,
        waited: Result<FlightOutcome, WaitError>,
        role: Role,
    ) -> Pin<Box<impl Future<Output = Next> + Send + 'a>> {
        Box::pin(self.answer_flight_inline(cx, route, stored, waited, role))
    }

    async fn answer_flight_inline(
        &self,
        cx: &RequestContext<'_>,
        route: &Route,
        stored: Option<&Arc<CachedResponse>>,
        waited: Result<FlightOutcome, WaitError>,
        role: Role,
    ) -> Next {
        let parts = cx.parts;
        let collapsed = matches!(role, Role::Follower);
        let outcome = if collapsed {
            CacheOutcome::Coalesced
        } else {
            CacheOutcome::Miss
        };
        match (waited, role) {
            (
                Ok(FlightOutcome::Shared {
                    response,
                    stored: was_stored,
                    fwd_status,
                    revalidated,
                    from_shared_tier,
                }),
                role,
            ) if matches!(role, Role::Leader(_)) || response.variant.matches(&parts.headers) => {
                if from_shared_tier {
                    // Another instance's fetch, found in the shared tier.
                    let now = Instant::now();
                    let status = CacheStatus {
                        ttl: Some(response.ttl_secs(now)),
                        detail: Some("fleet"),
                        ..CacheStatus::of(CacheOutcome::Hit)
                    };
                    return Next::Answer(render::from_entry(&response, status, parts, now));
                }
                if response.status.is_server_error()
                    && let Some(stale) = self.stale_for(cx, route, stored, StaleReason::IfError)
                {
                    return Next::Answer(stale);
                }
                let status = CacheStatus {
                    fwd_status: Some(fwd_status),
                    stored: was_stored && !collapsed,
                    ..CacheStatus::of(if revalidated {
                        CacheOutcome::Revalidated { collapsed }
                    } else {
                        outcome
                    })
                };
                Next::Answer(render::from_entry(&response, status, parts, Instant::now()))
            }
            (Ok(FlightOutcome::Shared { .. }), _) => Next::OtherVariant,
            (Ok(FlightOutcome::Streaming(streaming)), role)
                if matches!(role, Role::Leader(_)) || streaming.variant.matches(&parts.headers) =>
            {
                if streaming.status.is_server_error()
                    && let Some(stale) = self.stale_for(cx, route, stored, StaleReason::IfError)
                {
                    return Next::Answer(stale);
                }
                let status = CacheStatus {
                    fwd_status: Some(streaming.status),
                    stored: streaming.storing && !collapsed,
                    detail: streaming.not_stored_because,
                    ..CacheStatus::of(if streaming.revalidated {
                        CacheOutcome::Revalidated { collapsed }
                    } else {
                        outcome
                    })
                };
                if render::wants_whole(parts) {
                    let mut whole = streaming.whole.clone();
                    if let Ok(entry) = whole.wait_for(Option::is_some).await
                        && let Some(entry) = entry.as_ref()
                    {
                        return Next::Answer(render::from_entry(
                            entry,
                            status,
                            parts,
                            Instant::now(),
                        ));
                    }
                    // The body broke, or was too large to hold: this client
                    // asks the origin itself, as newcomers to the key do.
                    let body = reqwest::Body::from(Bytes::new());
                    return Next::Answer(self.pass(cx, body, false, PassReason::Unshareable).await);
                }
                match render::from_stream(&streaming, status) {
                    Some(answer) => Next::Answer(answer),
                    // Too large to store, and its start already gone: this
                    // client goes to the origin itself, as newcomers do.
                    None => {
                        let body = reqwest::Body::from(Bytes::new());
                        Next::Answer(self.pass(cx, body, false, PassReason::Unshareable).await)
                    }
                }
            }
            (Ok(FlightOutcome::Streaming(_)), _) => Next::OtherVariant,
            (Ok(FlightOutcome::Unshareable), Role::Leader(handed)) => match handed.await {
                // Too large to store, so the fill fetched the whole object
                // without the client's Range: ask again with it, as later
                // requests for the key will (hit-for-pass).
                Ok(answer)
                    if parts.headers.contains_key(http::header::RANGE)
                        && answer.response.status() == http::StatusCode::OK =>
                {
                    drop(answer);
                    let body = reqwest::Body::from(Bytes::new());
                    Next::Answer(self.pass(cx, body, false, PassReason::Unshareable).await)
                }
                Ok(mut answer) => {
                    if parts.method == Method::HEAD {
                        *answer.response.body_mut() = ProxyBody::empty();
                    }
                    Next::Answer(answer)
                }
                Err(_fill_task_died) => Next::Reelect,
            },
            (Ok(FlightOutcome::Unshareable), Role::Follower) => {
                let body = reqwest::Body::from(Bytes::new());
                Next::Answer(self.pass(cx, body, false, PassReason::Unshareable).await)
            }
            (Ok(FlightOutcome::Failed(error)), _) => {
                Next::Answer(self.failed(cx, route, stored, error, outcome))
            }
            (Err(WaitError::TimedOut), _) => {
                // Invariant 6: stale content if the origin allows it, else 504.
                let stale = self
                    .stale_for(cx, route, stored, StaleReason::IfError)
                    .or_else(|| self.stale_for(cx, route, stored, StaleReason::Disconnected));
                Next::Answer(stale.unwrap_or_else(|| {
                    ProxyError::LockTimeout.into_answer(CacheOutcome::Coalesced, cx.path())
                }))
            }
            (Err(WaitError::Abandoned), _) => Next::Reelect,
        }
    }

    /// Starts one background refresh of the stale `entry`, unless a fetch for
    /// the key is already under way (it will refresh it) or the entry was
    /// replaced since it was looked up. Nobody waits for it.
    fn refresh_in_background(
        &self,
        cx: &RequestContext<'_>,
        entry: &Arc<CachedResponse>,
        route: &Route,
    ) {
        let Join::Leader(leader) = self.state.flights.join(cx.key().clone()) else {
            return;
        };
        let current = self.state.cache.select(cx.key(), &cx.parts.headers);
        if !current.is_some_and(|current| Arc::ptr_eq(&current, entry)) {
            // Refreshed (or removed) between the lookup and the join.
            return;
        }
        let fill = Fill::new(&self.state, cx, route, Some(Arc::clone(entry)));
        tokio::spawn(fill.run(Publish {
            leader,
            private: None,
        }));
    }

    /// `stored`, rendered as a stale answer for `reason`, if it may be served
    /// for it: [`StaleReason::IfError`] when the client and the origin allow
    /// it because the origin failed or answered 5xx (stale-if-error);
    /// [`StaleReason::Disconnected`] when the origin cannot be reached, the
    /// origin did not forbid stale use, and it is no more than the route's
    /// `stale_if_disconnected` past its freshness.
    fn stale_for(
        &self,
        cx: &RequestContext<'_>,
        route: &Route,
        stored: Option<&Arc<CachedResponse>>,
        reason: StaleReason,
    ) -> Option<Answer> {
        let now = Instant::now();
        let entry = stored?;
        let allowed = match reason {
            StaleReason::Disconnected => servable_disconnected(entry, route, cx.wishes(), now),
            _ => matches!(
                entry.reuse(now, cx.wishes(), &route.freshness),
                Reuse::Fresh
                    | Reuse::Stale {
                        may_serve_if_error: true,
                        ..
                    }
            ),
        };
        allowed.then(|| {
            let status = CacheStatus::of(CacheOutcome::Stale(reason));
            render::from_entry(entry, status, cx.parts, now)
        })
    }

    /// Resolves, after the route's `stale_deadline`, to `Some(stored)` when
    /// it could be served were the origin unreachable: a client that could
    /// get it does not wait on a slow origin for longer. Otherwise resolves
    /// to `None` at once, which disables a `select!` arm matching `Some`.
    ///
    /// Its timer is boxed, and made only when there is something to serve:
    /// a follower with nothing stale to offer carries a pointer, not a timer.
    fn stale_for_slow_origin(
        &self,
        cx: &RequestContext<'_>,
        route: &Route,
        stored: Option<&Arc<CachedResponse>>,
    ) -> OptionFuture<Pin<Box<impl Future<Output = Arc<CachedResponse>> + Send + 'static>>> {
        let deadline = Instant::now() + route.stale_deadline;
        stored
            .filter(|_| !route.stale_deadline.is_zero())
            .filter(|entry| servable_disconnected(entry, route, cx.wishes(), deadline))
            .cloned()
            .map(|entry| {
                Box::pin(async move {
                    tokio::time::sleep_until(deadline).await;
                    entry
                })
            })
            .into()
    }

    /// Answers a request whose fetch failed: with `stored` when the origin was
    /// not contacted to protect it (breaker open, `Retry-After`, overload) and
    /// the origin did not forbid stale use, however stale; when it failed
    /// (error, timeout) within the variant's stale-if-error window; else with
    /// the error.
    fn failed(
        &self,
        cx: &RequestContext<'_>,
        route: &Route,
        stored: Option<&Arc<CachedResponse>>,
        error: Arc<OriginError>,
        outcome: CacheOutcome,
    ) -> Answer {
        let stale = match stale_reason(&error) {
            Some(reason) => stored
                .filter(|entry| entry.may_serve_disconnected())
                .map(|entry| {
                    let status = CacheStatus::of(CacheOutcome::Stale(reason));
                    render::from_entry(entry, status, cx.parts, Instant::now())
                }),
            None => self
                .stale_for(cx, route, stored, StaleReason::IfError)
                .or_else(|| {
                    error
                        .is_disconnection()
                        .then(|| self.stale_for(cx, route, stored, StaleReason::Disconnected))
                        .flatten()
                }),
        };
        stale.unwrap_or_else(|| ProxyError::Origin(error).into_answer(outcome, cx.path()))
    }
}

/// Whether `entry` may be served at `now` while the origin cannot be reached:
/// neither the origin nor the client forbade stale use (RFC 9111 §4.2.4: the
/// client's `no-cache`, `max-age` and `min-fresh` ask for the origin's word;
/// `max-stale` only widens), and it is no more than the route's
/// `stale_if_disconnected` past its freshness.
fn servable_disconnected(
    entry: &CachedResponse,
    route: &Route,
    wishes: &RequestDirectives,
    now: Instant,
) -> bool {
    let client_accepts_stale =
        !wishes.no_cache && wishes.max_age.is_none() && wishes.min_fresh.is_none();
    client_accepts_stale
        && !route.stale_if_disconnected.is_zero()
        && entry.may_serve_disconnected()
        && entry.staleness(now) <= route.stale_if_disconnected
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

#[cfg(test)]
mod tests {
    //! Memory guards. Every waiting follower holds the `miss` future (boxed)
    //! and, inside hyper's per-connection slot, the `dispatch` future; 10,000
    //! followers hold 10,000 of each. Sizes are the compiler's layout of the
    //! futures, so they are exact and need no runtime; the limits leave a
    //! little room for compiler versions, not for an inlined future.

    use std::future::Future;
    use std::mem::size_of;
    use std::net::SocketAddr;

    use http::request::Parts;
    use hyper::body::Incoming;

    use super::*;
    use crate::metrics::RouteMetrics;
    use crate::proxy::context::Arrival;
    use crate::proxy::upstream::Upstream;

    /// The size of the future `call` returns, without calling it.
    fn future_size<A, F: Future>(_call: impl FnOnce(A) -> F) -> usize {
        size_of::<F>()
    }

    /// The size of the boxed future `call` returns, without calling it.
    fn boxed_size<A, F: Future>(_call: impl FnOnce(A) -> Pin<Box<F>>) -> usize {
        size_of::<F>()
    }

    #[test]
    fn a_parked_follower_holds_only_what_waiting_needs() {
        // 376 bytes with rustc 1.95: the flight's receiver, the wait's timer
        // and change notification, the deadline, a few references. The
        // state of a woken follower (`answer_flight`, 600 bytes) is boxed.
        let parked = boxed_size(
            |(proxy, cx, route): (&Proxy, &RequestContext<'_>, &Route)| proxy.miss(cx, route, None),
        );
        assert!(
            parked <= 416,
            "a parked follower's future is {parked} bytes"
        );
    }

    #[test]
    fn the_future_a_cacheable_request_is_served_in_stays_small() {
        // 272 bytes with rustc 1.95: the request's context and the cache
        // lookup's future. What only admission and routing need is dropped
        // before it exists, and the uncacheable branches are boxed.
        let dispatched = future_size(
            |(proxy, parts, body, client, metrics, origin): (
                &Proxy,
                &Parts,
                Incoming,
                SocketAddr,
                &RouteMetrics,
                &Upstream,
            )| {
                let arrival = Arrival {
                    client,
                    at: Instant::now(),
                };
                proxy.dispatch(parts, body, arrival, None, metrics, origin)
            },
        );
        assert!(
            dispatched <= 304,
            "the dispatch future is {dispatched} bytes"
        );
    }
}
