//! Client-facing listeners: accept loop, per-connection tasks, connection cap,
//! header limits and bounded graceful shutdown. Knows nothing about caching: it
//! hands each request to a service.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::ServerConfig;

/// Pause after an accept error (e.g. out of file descriptors) so the loop does
/// not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Limits applied to every client connection.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Longest time to receive a complete request head.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_size: usize,
    /// Most connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Longest wait for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits `[server]` asks for.
    pub fn from_config(server: &ServerConfig) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: server.header_read_timeout,
            max_header_size: usize::try_from(server.max_header_size.as_u64()).unwrap_or(usize::MAX),
            max_connections: server.max_connections.max(1),
            shutdown_timeout: server.shutdown_timeout,
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on `listener` until `shutdown`
/// resolves, then stops accepting and gives open connections
/// `limits.shutdown_timeout` to finish their in-flight requests.
///
/// `handler` is called once per request with the client's address.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    connections_open: Gauge,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_size.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let response = handler(request, client);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let builder = Arc::clone(&builder);
        let open = connections_open.clone();
        let watched = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            open.inc();
            if let Err(error) = watched.await {
                tracing::debug!(%client, error = %error, "connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!("all connections drained"),
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(timeout = ?limits.shutdown_timeout, "shutdown grace period ended with connections still open");
        }
    }
}
