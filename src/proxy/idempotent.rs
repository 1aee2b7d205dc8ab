//! The Idempotency-Key branch: a POST or PATCH carrying `Idempotency-Key` on
//! a route with `idempotency = true` reaches the origin at most once per key
//! (DESIGN invariant 12); retries get the first answer replayed.
//!
//! The request body is buffered (up to the route's `idempotency_max_body`) to
//! fingerprint it; [`Replay::begin`](crate::replay::Replay::begin) then says
//! whether this request claims the key, replays its record, or is declined
//! (409, 422, 503). The claimant's exchange with the origin runs as its own
//! task, like a cache fill: a client that times out and leaves (the very
//! client that will retry) does not cancel it, so its retry finds the record,
//! or waits for it, instead of a claim of unknown outcome.
//!
//! What the exchange ends as decides the claim: any answer is recorded (5xx
//! too: the write may have happened); a request provably not sent (no
//! connection, or refused to protect the origin) releases the claim; a
//! request that may have been sent without an answer (a timeout or a reset
//! after sending, a body that broke) keeps the key held until its lease ends.
//!
//! Corral's own refusals here are `application/problem+json` (RFC 9457), with
//! the titles the Idempotency-Key draft gives.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::admission::declared_length;
use super::body::{BoxError, ProxyBody};
use super::context::{RequestContext, path_and_query, route_timeouts};
use super::error::ProxyError;
use super::forward;
use super::pass::{prepare_origin_head, relay};
use super::render::{Answer, CacheOutcome, CacheStatus};
use super::{Proxy, ProxyState, record_origin_exchange};
use crate::cache::policy::PassReason;
use crate::config::{IdempotencyPolicy, Route};
use crate::http::directives::CORRAL_CACHE_CONTROL;
use crate::metrics::{ClientLimit, RouteMetrics};
use crate::origin::{OriginClient, OriginError, OriginResponse, TimeLimit, Timeouts};
use crate::replay::{
    Attempt, Begin, Credential, Declined, Fingerprint, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED,
    IdempotencyKey, KeyError, Owner, Record, RecordKey,
};

/// The route and its settings when `parts` takes the idempotency branch: a
/// POST or PATCH on a route with `idempotency = true` that carries
/// `Idempotency-Key`, or must (`idempotency_required`). Anything else (a GET
/// with the header included) goes its usual way.
pub(super) fn applies<'r>(
    parts: &Parts,
    route: Option<&'r Route>,
) -> Option<(&'r Route, &'r IdempotencyPolicy)> {
    let route = route?;
    let policy = route.idempotency.as_ref()?;
    let write = parts.method == Method::POST || parts.method == Method::PATCH;
    let keyed = policy.required || parts.headers.contains_key(&IDEMPOTENCY_KEY);
    (write && keyed).then_some((route, policy))
}

impl Proxy {
    /// Answers a request that [`applies`] picked: a replay, a refusal, or
    /// (for the request that claims its key) the origin's answer.
    ///
    /// Boxed, like [`Proxy::pass`], to keep the hit path's future small.
    pub(super) fn idempotent<'a, B>(
        &'a self,
        cx: &'a RequestContext<'a>,
        (route, policy): (&'a Route, &'a IdempotencyPolicy),
        body: B,
        has_body: bool,
        reason: PassReason,
    ) -> Pin<Box<impl Future<Output = Answer> + Send + 'a>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Box::pin(async move {
            let outcome = CacheOutcome::Pass(reason);
            let parts = cx.parts;
            let key = match IdempotencyKey::from_headers(&parts.headers) {
                Ok(Some(key)) => key,
                Ok(None) => return self.refuse(KeyRefusal::Missing, outcome, cx),
                Err(error) => return self.refuse(KeyRefusal::Malformed(error), outcome, cx),
            };
            let body = match self
                .buffer_body(parts, body, has_body, policy.max_body)
                .await
            {
                Ok(body) => body,
                Err(refused) => return refused.into_answer(outcome, cx.path()),
            };
            let credential = Credential::of(&parts.headers, policy.identity_header.as_ref());
            let attempt = Attempt {
                key: RecordKey::new(&route.name, &credential, &parts.method, cx.path(), &key),
                fingerprint: Fingerprint::of(
                    &parts.method,
                    path_and_query(parts),
                    parts.headers.get(header::CONTENT_TYPE),
                    &body,
                ),
                lease: policy.lease,
                ttl: policy.ttl,
                wait: route.lock_timeout,
            };
            match self.state.replay.begin(attempt).await {
                Begin::Owner(owner) => self.forward_once(cx, owner, body, has_body, outcome).await,
                Begin::Replay(record) => replayed(&record, outcome),
                Begin::Declined(declined) => {
                    KeyRefusal::Declined(declined).into_answer(outcome, cx.path())
                }
            }
        })
    }

    /// Counts a refused header as a malformed request, and renders the refusal.
    fn refuse(
        &self,
        refusal: KeyRefusal,
        outcome: CacheOutcome,
        cx: &RequestContext<'_>,
    ) -> Answer {
        self.state
            .metrics
            .client_limits
            .count(ClientLimit::Malformed);
        refusal.into_answer(outcome, cx.path())
    }

    /// The whole request body, if it is at most `max_body` bytes (and within
    /// `server.max_request_body`).
    ///
    /// # Errors
    /// [`ProxyError::BodyTooLarge`] (413, counted as `body_size`) for a
    /// longer body, announced or not; [`ProxyError::BadRequest`] for one
    /// whose framing broke.
    async fn buffer_body<B>(
        &self,
        parts: &Parts,
        body: B,
        has_body: bool,
        max_body: u64,
    ) -> Result<Bytes, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if !has_body {
            return Ok(Bytes::new());
        }
        let too_large = || {
            self.state
                .metrics
                .client_limits
                .count(ClientLimit::BodySize);
            ProxyError::BodyTooLarge { limit: max_body }
        };
        // Refused unread, as the server's own limit is.
        if declared_length(parts).is_some_and(|length| length > max_body) {
            return Err(too_large());
        }
        let admission = &self.state.admission;
        let (limited, check) = admission.limit_body(body);
        let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
        match Limited::new(limited, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) => {
                if let Some(refused) = admission.body_refusal(&check) {
                    return Err(refused);
                }
                if error.downcast_ref::<LengthLimitError>().is_some() {
                    return Err(too_large());
                }
                self.state
                    .metrics
                    .client_limits
                    .count(ClientLimit::Malformed);
                Err(ProxyError::BadRequest("the request body is malformed"))
            }
        }
    }

    /// Sends the request that owns its key to the origin, in a task of its
    /// own, and answers with what the origin said (or the failure).
    async fn forward_once(
        &self,
        cx: &RequestContext<'_>,
        owner: Owner,
        body: Bytes,
        has_body: bool,
        outcome: CacheOutcome,
    ) -> Answer {
        let parts = cx.parts;
        let state = &self.state;
        let exchange = Exchange {
            state: Arc::clone(state),
            method: parts.method.clone(),
            path_and_query: path_and_query(parts).to_owned(),
            path: cx.path().to_owned(),
            headers: forward::pass_headers(
                &parts.headers,
                cx.client,
                cx.scheme,
                cx.route,
                cx.upstream_host.as_ref(),
                has_body,
            ),
            body,
            timeouts: cx.origin.timeouts(cx.route.map(route_timeouts).as_ref()),
            origin: cx.origin.clone(),
            route_metrics: cx.route_metrics.clone(),
            outcome,
        };
        let (answered, answer) = oneshot::channel();
        tokio::spawn(exchange.run(owner, answered));
        match answer.await {
            Ok(answer) => {
                self.invalidate_after_unsafe(cx, &answer);
                answer
            }
            // The task ended without an answer (it panicked); the owner's
            // drop told any duplicates the outcome is unknown.
            Err(_) => ProxyError::FetchLost.into_answer(outcome, cx.path()),
        }
    }
}

/// One claimed request's exchange with the origin, run as its own task.
struct Exchange {
    state: Arc<ProxyState>,
    /// The route's origin, as it was when the request arrived.
    origin: OriginClient,
    method: Method,
    path_and_query: String,
    /// For logs and error answers.
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
    timeouts: Timeouts,
    route_metrics: RouteMetrics,
    outcome: CacheOutcome,
}

/// How an exchange ended, which decides what becomes of the claim.
enum Exchanged {
    /// The origin answered, body and all, within what a record keeps.
    Answered {
        head: http::response::Parts,
        body: Bytes,
    },
    /// The origin answered with a body larger than a record keeps: `prefix`
    /// is what was read of it, the rest is still in `response`.
    TooLarge {
        response: OriginResponse,
        prefix: Vec<Bytes>,
    },
    /// The origin never saw the request.
    NotSent(OriginError),
    /// The origin may have seen the request, and no whole answer came back.
    Unknown(OriginError),
}

impl Exchange {
    /// Sends the request while holding the claim, ends the claim by how the
    /// exchange went, and hands the claimant's client its answer (dropped
    /// unread if that client has left).
    async fn run(self, owner: Owner, answered: oneshot::Sender<Answer>) {
        let max_answer = self.state.replay.max_answer();
        let exchanged = tokio::select! {
            exchanged = self.exchange(max_answer) => exchanged,
            never = owner.hold() => match never {},
        };
        let failed = |error: OriginError| {
            ProxyError::Origin(Arc::new(error)).into_answer(self.outcome, &self.path)
        };
        match exchanged {
            Exchanged::Answered { mut head, body } => {
                head.headers.remove(&CORRAL_CACHE_CONTROL);
                let set_cookies: Vec<HeaderValue> = head
                    .headers
                    .get_all(header::SET_COOKIE)
                    .iter()
                    .cloned()
                    .collect();
                let record = Arc::new(Record::new(
                    head.status,
                    head.headers,
                    Some(body),
                    owner.fingerprint(),
                ));
                let _ = answered.send(original(&record, set_cookies, self.outcome));
                owner.complete(record).await;
            }
            Exchanged::TooLarge { response, prefix } => {
                let mut headers = response.headers().clone();
                headers.remove(&CORRAL_CACHE_CONTROL);
                let status = response.status();
                let record = Arc::new(Record::new(status, headers, None, owner.fingerprint()));
                let cache_status = CacheStatus {
                    fwd_status: Some(status),
                    detail: Some("idempotency-answer-not-kept"),
                    ..CacheStatus::of(self.outcome)
                };
                let _ = answered.send(relay(response, prefix, cache_status));
                owner.complete(record).await;
            }
            // The claim is settled before the client hears: a retry it sends
            // at once finds the key free (or held), never the old flight.
            Exchanged::NotSent(error) => {
                owner.not_sent().await;
                let _ = answered.send(failed(error));
            }
            Exchanged::Unknown(error) => {
                owner.unknown().await;
                let _ = answered.send(failed(error));
            }
        }
    }

    /// Sends the request and reads the answer's body, up to `max_answer` bytes.
    async fn exchange(&self, max_answer: usize) -> Exchanged {
        let state = &self.state;
        let started = Instant::now();
        let sent = self
            .origin
            .forward(
                self.method.clone(),
                &self.path_and_query,
                self.headers.clone(),
                reqwest::Body::from(self.body.clone()),
                self.timeouts,
            )
            .await;
        record_origin_exchange(&state.metrics, &self.route_metrics, started, &sent);
        let mut response = match sent {
            Ok(response) => response,
            Err(error) if never_sent(&error) => return Exchanged::NotSent(error),
            Err(error) => return Exchanged::Unknown(error),
        };
        prepare_origin_head(response.headers_mut(), SystemTime::now());
        let mut body = BytesMut::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > max_answer => {
                    let prefix = vec![body.freeze(), chunk];
                    return Exchanged::TooLarge { response, prefix };
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => {
                    let (head, _) = http::Response::<reqwest::Body>::from(response).into_parts();
                    return Exchanged::Answered {
                        head,
                        body: body.freeze(),
                    };
                }
                // The origin answered, so it may have written; its answer is lost.
                Err(error) => return Exchanged::Unknown(error),
            }
        }
    }
}

/// Whether the origin provably never saw the request: corral refused it to
/// protect the origin, or no connection was ever made. Anything else (a
/// timeout or a reset once a connection existed, an answer that broke or was
/// not HTTP) may have reached it.
fn never_sent(error: &OriginError) -> bool {
    error.is_refusal()
        || matches!(
            error,
            OriginError::Connect(_)
                | OriginError::TimedOut {
                    limit: TimeLimit::Connect,
                    ..
                }
        )
}

/// The claimant's own answer: the record's, with the `Set-Cookie` fields the
/// record leaves out (the session was handed to this client, and only to it).
fn original(record: &Record, set_cookies: Vec<HeaderValue>, outcome: CacheOutcome) -> Answer {
    let mut response = Response::new(ProxyBody::full(record.body.clone().unwrap_or_default()));
    *response.status_mut() = record.status;
    let mut headers = record.headers.clone();
    for cookie in set_cookies {
        headers.append(header::SET_COOKIE, cookie);
    }
    *response.headers_mut() = headers;
    let cache_status = CacheStatus {
        fwd_status: Some(record.status),
        ..CacheStatus::of(outcome)
    };
    Answer::new(response, cache_status)
}

/// A retry's answer: the record's status, header fields and body as the
/// origin sent them, with `Idempotent-Replayed: true`.
fn replayed(record: &Record, outcome: CacheOutcome) -> Answer {
    let mut response = Response::new(ProxyBody::full(record.body.clone().unwrap_or_default()));
    *response.status_mut() = record.status;
    let mut headers = record.headers.clone();
    headers.insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    *response.headers_mut() = headers;
    let cache_status = CacheStatus {
        detail: Some("idempotent-replay"),
        ..CacheStatus::of(outcome)
    };
    Answer::new(response, cache_status)
}

/// Why a request with (or without) an Idempotency-Key is answered by corral,
/// the origin untouched: the one place these refusals become responses.
#[derive(Debug, thiserror::Error)]
enum KeyRefusal {
    /// The route requires the header and the request has none (400).
    #[error("the route requires Idempotency-Key on POST and PATCH")]
    Missing,
    /// The header is not a key (400).
    #[error(transparent)]
    Malformed(KeyError),
    /// The key's state decides against this request (409, 422, 503).
    #[error(transparent)]
    Declined(Declined),
}

/// An RFC 9457 problem: its type, title and detail.
struct Problem {
    kind: &'static str,
    title: &'static str,
    detail: String,
}

impl KeyRefusal {
    fn status(&self) -> StatusCode {
        match self {
            KeyRefusal::Missing | KeyRefusal::Malformed(_) => StatusCode::BAD_REQUEST,
            KeyRefusal::Declined(Declined::Mismatch) => StatusCode::UNPROCESSABLE_ENTITY,
            KeyRefusal::Declined(
                Declined::InFlight { .. } | Declined::Unknown { .. } | Declined::NotKept,
            ) => StatusCode::CONFLICT,
            KeyRefusal::Declined(Declined::NotSent { .. } | Declined::Unavailable { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            KeyRefusal::Declined(
                Declined::InFlight { retry_after }
                | Declined::Unknown { retry_after }
                | Declined::NotSent { retry_after }
                | Declined::Unavailable { retry_after },
            ) => Some(*retry_after),
            _ => None,
        }
    }

    /// Short, stable detail for `Cache-Status`.
    fn label(&self) -> &'static str {
        match self {
            KeyRefusal::Missing => "idempotency-key-missing",
            KeyRefusal::Malformed(_) => "idempotency-key-malformed",
            KeyRefusal::Declined(declined) => match declined {
                Declined::Mismatch => "idempotency-key-reused",
                Declined::InFlight { .. } => "idempotency-in-flight",
                Declined::Unknown { .. } => "idempotency-outcome-unknown",
                Declined::NotKept => "idempotency-answer-not-kept",
                Declined::NotSent { .. } => "idempotency-not-sent",
                Declined::Unavailable { .. } => "idempotency-unavailable",
            },
        }
    }

    fn problem(&self) -> Problem {
        let problem = |kind, title, detail: &str| Problem {
            kind,
            title,
            detail: detail.to_owned(),
        };
        match self {
            KeyRefusal::Missing => problem(
                "urn:corral:idempotency:key-missing",
                "Idempotency-Key is missing",
                "This operation requires an Idempotency-Key header: an RFC 8941 string or token of 1 to 255 characters.",
            ),
            KeyRefusal::Malformed(error) => Problem {
                kind: "urn:corral:idempotency:key-malformed",
                title: "Idempotency-Key is malformed",
                detail: format!(
                    "{error}: send one Idempotency-Key, an RFC 8941 string (\"...\") or token of 1 to 255 characters."
                ),
            },
            KeyRefusal::Declined(Declined::Mismatch) => problem(
                "urn:corral:idempotency:key-reused",
                "Idempotency-Key is already used",
                "This Idempotency-Key was used with a different request (method, target, content type or body).",
            ),
            KeyRefusal::Declined(Declined::InFlight { .. }) => problem(
                "urn:corral:idempotency:request-outstanding",
                "A request is outstanding for this Idempotency-Key",
                "An earlier request with this key is still being processed; retry later to get its answer.",
            ),
            KeyRefusal::Declined(Declined::Unknown { .. }) => problem(
                "urn:corral:idempotency:outcome-unknown",
                "The outcome of the request with this Idempotency-Key is unknown",
                "An earlier request with this key reached the origin but its answer was lost; the key is held until Retry-After, then a retry is sent.",
            ),
            KeyRefusal::Declined(Declined::NotKept) => problem(
                "urn:corral:idempotency:answer-not-kept",
                "The answer for this Idempotency-Key was not kept",
                "An earlier request with this key was processed, but its answer was too large to keep, so it cannot be replayed.",
            ),
            KeyRefusal::Declined(Declined::NotSent { .. }) => problem(
                "urn:corral:idempotency:not-sent",
                "The request with this Idempotency-Key was not sent",
                "The earlier request with this key could not reach the origin; this one may be sent again.",
            ),
            KeyRefusal::Declined(Declined::Unavailable { .. }) => problem(
                "urn:corral:idempotency:unavailable",
                "Idempotency-Key records are unavailable",
                "The request was not sent: without its records corral cannot make it happen once. Retry later.",
            ),
        }
    }

    /// Logs the refusal once and renders it as `application/problem+json`;
    /// the answer counts as `error`.
    fn into_answer(self, outcome: CacheOutcome, path: &str) -> Answer {
        tracing::debug!(path, error = %self, "idempotency: answered without the origin");
        let status = self.status();
        let Problem {
            kind,
            title,
            detail,
        } = self.problem();
        let body = serde_json::json!({
            "type": kind,
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut response = Response::new(ProxyBody::full(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up, at least 1.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(self, KeyRefusal::Missing | KeyRefusal::Malformed(_)) {
            // Refused before its body was read: nothing more on this
            // connection is trusted to be framed right (HTTP/1).
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Answer::new(response, CacheStatus::failure(outcome, self.label()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(refusal: KeyRefusal) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let answer = refusal.into_answer(CacheOutcome::Pass(PassReason::Method), "/orders");
        let (parts, body) = answer.response.into_parts();
        let ProxyBody::Full(Some(bytes)) = body else {
            panic!("a problem has a body");
        };
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[test]
    fn refusals_are_problem_json_with_the_status_the_draft_gives() {
        let (status, headers, problem) = answer(KeyRefusal::Missing);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(problem["status"], 400);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")
        );
        assert_eq!(
            headers["cache-status"],
            "corral; fwd=bypass; detail=idempotency-key-missing"
        );

        let (status, _, problem) = answer(KeyRefusal::Declined(Declined::Mismatch));
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem["title"], "Idempotency-Key is already used");

        let unknown = Declined::Unknown {
            retry_after: Duration::from_millis(29_001),
        };
        let (status, headers, _) = answer(KeyRefusal::Declined(unknown));
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(headers[header::RETRY_AFTER], "30");

        let unavailable = Declined::Unavailable {
            retry_after: Duration::from_secs(1),
        };
        let (status, headers, _) = answer(KeyRefusal::Declined(unavailable));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
    }
}
