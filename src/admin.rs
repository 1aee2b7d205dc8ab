//! The admin listener: `/metrics`, `/healthz` and `/readyz`, on their own port so
//! operators can scrape and probe without touching proxied traffic.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::proxy::Proxy;

/// Answers one admin request.
///
/// - `GET /healthz`: 200 while the process runs.
/// - `GET /readyz`: 200 once the proxy is built and listening (always, by the
///   time this listener answers).
/// - `GET /metrics`: every metric in the Prometheus text format.
pub fn handle<B>(proxy: &Proxy, request: &Request<B>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/metrics") => metrics(proxy),
        (_, "/healthz" | "/readyz" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn metrics(proxy: &Proxy) -> Response<Full<Bytes>> {
    let cache = proxy.cache();
    cache.run_pending_tasks();
    let metrics = proxy.metrics();
    metrics
        .cache_entries
        .set(i64::try_from(cache.entry_count()).unwrap_or(i64::MAX));
    metrics
        .cache_bytes
        .set(i64::try_from(cache.weighted_size()).unwrap_or(i64::MAX));
    match metrics.encode() {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "encoding metrics failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n")
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
