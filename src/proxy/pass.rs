//! The pass branch: a request relayed to the origin and its answer relayed
//! back, both streamed, never cached or coalesced; and what an unsafe
//! request's success invalidates.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{self, HeaderMap};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use tokio::time::Instant;

use super::body::{BoxError, ProxyBody};
use super::context::{RequestContext, path_and_query, request_host, route_timeouts};
use super::error::ProxyError;
use super::forward;
use super::render::{Answer, CacheOutcome, CacheStatus};
use super::{Proxy, record_origin_exchange};
use crate::cache::CacheKey;
use crate::cache::policy::PassReason;
use crate::http::directives::CORRAL_CACHE_CONTROL;
use crate::http::{VIA_CORRAL, append_to_list, ensure_date, same_origin_path, strip_hop_by_hop};
use crate::origin::OriginResponse;

impl Proxy {
    /// Relays a request to the origin and its answer back, both streamed.
    /// `has_body` says whether `body` carries the client's body (else it is
    /// empty, and no framing header goes upstream).
    ///
    /// Boxed, like [`Proxy::lead`], to keep hits and followers small.
    pub(super) fn pass<'a>(
        &'a self,
        cx: &'a RequestContext<'a>,
        body: reqwest::Body,
        has_body: bool,
        reason: PassReason,
    ) -> Pin<Box<impl Future<Output = Answer> + Send + 'a>> {
        Box::pin(self.pass_inline(cx, body, has_body, reason))
    }

    async fn pass_inline(
        &self,
        cx: &RequestContext<'_>,
        body: reqwest::Body,
        has_body: bool,
        reason: PassReason,
    ) -> Answer {
        let state = &self.state;
        let (parts, route) = (cx.parts, cx.route);
        let outcome = CacheOutcome::Pass(reason);
        let headers = forward::pass_headers(
            &parts.headers,
            cx.client,
            cx.scheme,
            route,
            cx.upstream_host.as_ref(),
            has_body,
        );
        let started = Instant::now();
        let sent = cx
            .origin
            .forward(
                parts.method.clone(),
                path_and_query(parts),
                headers,
                body,
                cx.origin.timeouts(route.map(route_timeouts).as_ref()),
            )
            .await;
        record_origin_exchange(&state.metrics, cx.route_metrics, started, &sent);
        match sent {
            Ok(mut response) => {
                let status = response.status();
                prepare_origin_head(response.headers_mut(), SystemTime::now());
                let cache_status = CacheStatus {
                    fwd_status: Some(status),
                    ..CacheStatus::of(outcome)
                };
                relay(response, Vec::new(), cache_status)
            }
            Err(error) => ProxyError::Origin(Arc::new(error)).into_answer(outcome, cx.path()),
        }
    }

    /// After a successful (2xx or 3xx) answer to an unsafe request, removes
    /// what is stored for its URL, and for its `Location` and
    /// `Content-Location` when they are on the same host (RFC 9111 §4.4).
    pub(super) fn invalidate_after_unsafe(&self, cx: &RequestContext<'_>, answer: &Answer) {
        let parts = cx.parts;
        let status = answer.response.status();
        if parts.method.is_safe() || !(status.is_success() || status.is_redirection()) {
            return;
        }
        let mut doomed = vec![cx.key().clone()];
        // `Location` names the host the client addressed; the key holds the
        // authority sent upstream.
        let addressed = request_host(parts);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let target = answer
                .response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|target| same_origin_path(addressed, parts.uri.path(), target));
            if let Some(path) = target {
                doomed.push(CacheKey::new(cx.key().authority(), &path));
            }
        }
        for key in &doomed {
            self.state.cache.invalidate(key);
        }
        // The shared tier (and, through it, every instance of a fleet) drops
        // them too, without holding up this answer.
        if let Some(shared) = &self.state.shared {
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                for key in &doomed {
                    shared.invalidate(key).await;
                }
            });
        }
    }
}

/// What every origin response head gets before anyone reads it, once: its
/// hop-by-hop fields removed (RFC 9110 §7.6.1), corral added to `Via`, and a
/// `Date` when it had none (RFC 9110 §6.6.1).
pub(super) fn prepare_origin_head(headers: &mut HeaderMap, received_at: SystemTime) {
    strip_hop_by_hop(headers);
    append_to_list(headers, &header::VIA, VIA_CORRAL);
    ensure_date(headers, received_at);
}

/// Turns a prepared origin response ([`prepare_origin_head`]) into a client
/// answer: `Corral-Cache-Control` (corral's alone) removed, the body streamed
/// after `prefix` (the part already read).
pub(super) fn relay(
    response: OriginResponse,
    prefix: Vec<Bytes>,
    cache_status: CacheStatus,
) -> Answer {
    let response: Response<reqwest::Body> = response.into();
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(&CORRAL_CACHE_CONTROL);
    let body = if prefix.is_empty() {
        ProxyBody::stream(body)
    } else {
        let rest = BodyDataStream::new(body).map_err(BoxError::from);
        let whole = futures_util::stream::iter(prefix.into_iter().map(Ok)).chain(rest);
        ProxyBody::Stream(BodyExt::boxed_unsync(StreamBody::new(
            whole.map_ok(Frame::data),
        )))
    };
    Answer::new(Response::from_parts(parts, body), cache_status)
}

/// The status an origin answer that was not stored reports.
pub(super) fn unstored(
    outcome: CacheOutcome,
    fwd: StatusCode,
    detail: &'static str,
) -> CacheStatus {
    CacheStatus {
        fwd_status: Some(fwd),
        detail: Some(detail),
        ..CacheStatus::of(outcome)
    }
}
