//! The admin listener, on its own port so operators can scrape, probe and
//! steer corral without touching proxied traffic.
//!
//! | endpoint | answer |
//! | --- | --- |
//! | `GET /healthz` | 200 while the process runs (never needs the token) |
//! | `GET /readyz` | 200 once listening with a loaded config |
//! | `GET /metrics` | every metric, Prometheus/OpenMetrics text |
//! | `PURGE /cache/<path>` | removes the entries for `/<path>` on every host |
//! | `POST /purge` | body: JSON list of paths; a trailing `*` makes a prefix |
//! | `POST /reload` | re-reads the config file, as SIGHUP does |
//!
//! When `admin.token` is set, every endpoint but `/healthz` requires
//! `Authorization: Bearer <token>` and answers 401 without it.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};

use crate::proxy::{BoxError, Proxy};
use crate::reload::Reloader;

/// Largest purge request body accepted.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// Everything the admin endpoints act on. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    proxy: Proxy,
    reloader: Reloader,
}

impl Admin {
    /// Admin endpoints for `proxy`, reloading through `reloader`.
    pub fn new(proxy: Proxy, reloader: Reloader) -> Admin {
        Admin { proxy, reloader }
    }

    /// Answers one admin request. Never fails: problems are 4xx/5xx answers.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let path = request.uri().path().to_owned();
        if path == "/healthz" {
            return match *request.method() {
                Method::GET | Method::HEAD => text(StatusCode::OK, "ok\n"),
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            };
        }
        if !self.authorised(request.headers()) {
            let mut response = text(StatusCode::UNAUTHORIZED, "admin token required\n");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        match (request.method().as_str(), path.as_str()) {
            ("GET", "/readyz") => text(StatusCode::OK, "ready\n"),
            ("GET", "/metrics") => self.metrics(),
            ("PURGE", cache_path) if cache_path.starts_with("/cache/") => {
                let target = &cache_path["/cache".len()..];
                let purged = self.proxy.purge(&[target.to_owned()], &[]).await;
                tracing::info!(path = target, purged, "purged by admin");
                json(StatusCode::OK, &serde_json::json!({ "purged": purged }))
            }
            ("POST", "/purge") => self.purge(request.into_body()).await,
            ("POST", "/reload") => self.reload(),
            (_, "/readyz" | "/metrics" | "/purge" | "/reload") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn authorised(&self, headers: &http::HeaderMap) -> bool {
        let settings = self.proxy.settings();
        let Some(token) = settings.admin_token.as_deref() else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|offered| same_secret(offered.trim().as_bytes(), token.as_bytes()))
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let cache = self.proxy.cache();
        let metrics = self.proxy.metrics();
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

    async fn purge<B>(&self, body: B) -> Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let bytes = match Limited::new(body, MAX_ADMIN_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                let message = format!("cannot read purge body: {error}");
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "error": message }),
                );
            }
        };
        let targets: Vec<String> = match serde_json::from_slice(&bytes) {
            Ok(targets) => targets,
            Err(error) => {
                let message = format!("purge body must be a JSON list of paths: {error}");
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "error": message }),
                );
            }
        };
        let (prefixes, exact): (Vec<String>, Vec<String>) =
            targets.into_iter().partition(|t| t.ends_with('*'));
        let prefixes: Vec<String> = prefixes
            .into_iter()
            .map(|p| p.trim_end_matches('*').to_owned())
            .collect();
        let purged = self.proxy.purge(&exact, &prefixes).await;
        tracing::info!(?exact, ?prefixes, purged, "purged by admin");
        json(StatusCode::OK, &serde_json::json!({ "purged": purged }))
    }

    fn reload(&self) -> Response<Full<Bytes>> {
        match self.reloader.reload() {
            Ok(report) => {
                tracing::info!(routes = report.routes, ignored = ?report.ignored, "config reloaded (admin)");
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "reloaded": true, "routes": report.routes, "ignored": report.ignored }),
                )
            }
            Err(error) => {
                tracing::error!(%error, "config reload refused; the running config stays");
                json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "reloaded": false, "error": error.to_string() }),
                )
            }
        }
    }
}

/// Compares secrets without an early exit on the first differing byte.
fn same_secret(offered: &[u8], expected: &[u8]) -> bool {
    offered.len() == expected.len()
        && offered
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
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

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{value}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_must_match_exactly() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3creT"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
