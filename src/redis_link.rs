//! One instance's link to Redis: a command connection and a notification
//! (pub/sub) connection, both the `redis` crate's
//! auto-reconnecting `ConnectionManager` over RESP3, and the thread their I/O
//! runs on.
//!
//! The I/O runs on a single-threaded runtime of its own: a proxy runtime
//! saturated by client requests must not starve the connections' drivers,
//! or every Redis call would time out precisely when Redis matters most.
//! Callers await results from their own runtime; [`RedisLink::run`] times an
//! operation on the I/O thread, so a busy caller cannot make a prompt answer
//! look late.
//!
//! The link never fails for an unreachable Redis: it connects lazily and
//! keeps reconnecting (at most [`RECONNECT_MAX_DELAY`] apart). What a
//! failure means is the caller's business (the fleet's breaker, an
//! idempotency store's 503).

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, RedisResult};
use tokio::sync::{mpsc, oneshot};

/// Longest wait between reconnection attempts of either connection.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// Shortest bound on establishing a connection, whatever the call timeout.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// The longest any one command may run on the connection before the
/// connection itself gives up on it (callers bound their own calls tighter).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The URL does not describe a Redis server.
    #[error("{0}")]
    Url(#[source] redis::RedisError),
    /// The thread that runs Redis I/O could not be started.
    #[error("cannot start the Redis I/O thread: {0}")]
    IoThread(#[source] std::io::Error),
}

/// Why a Redis operation gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkFailure {
    /// No answer within the caller's bound.
    #[error("timed out")]
    TimedOut,
    /// Redis (or the connection) reported an error.
    #[error("{0}")]
    Redis(#[source] redis::RedisError),
}

/// The thread the I/O runs on; it stops when this is dropped.
struct IoThread {
    handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

impl IoThread {
    fn start() -> std::io::Result<IoThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("corral-redis".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })?;
        Ok(IoThread {
            handle,
            _stop: stop,
        })
    }
}

/// One instance's connections to one Redis.
pub struct RedisLink {
    io: IoThread,
    commands: ConnectionManager,
}

impl RedisLink {
    /// A link to the Redis at `url` (`redis://…`), with a notification
    /// connection beside it whose pushed messages (and a `Disconnection` push
    /// whenever it drops) go to `pushes`, and whose subscriptions are
    /// restored after a reconnect. `connect_timeout` bounds each connection
    /// attempt (at least 250 ms).
    ///
    /// # Errors
    /// [`LinkError`] when `url` is not a Redis URL or the I/O thread cannot start.
    pub fn open(
        url: &str,
        connect_timeout: Duration,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> Result<(RedisLink, ConnectionManager), LinkError> {
        let info = url.into_connection_info().map_err(LinkError::Url)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client =
            redis::Client::open(info.set_redis_settings(settings)).map_err(LinkError::Url)?;
        let config = || {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout.max(MIN_CONNECT_TIMEOUT)))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(usize::MAX)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(RECONNECT_MAX_DELAY)
        };
        let io = IoThread::start().map_err(LinkError::IoThread)?;
        // Created within the I/O runtime: the managers spawn their tasks there.
        let _entered = io.handle.enter();
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config())
            .map_err(LinkError::Url)?;
        let notifications = ConnectionManager::new_lazy_with_config(
            client,
            config()
                .set_push_sender(pushes)
                .set_automatic_resubscription(),
        )
        .map_err(LinkError::Url)?;
        drop(_entered);
        Ok((RedisLink { io, commands }, notifications))
    }

    /// The command connection (a cheap clone sharing the one connection).
    pub fn commands(&self) -> ConnectionManager {
        self.commands.clone()
    }

    /// Runs `operation` (built on this link's connections) on the I/O
    /// thread, within `bound` measured there.
    ///
    /// # Errors
    /// [`LinkFailure`] when it failed or did not finish within `bound`.
    pub async fn run<T: Send + 'static>(
        &self,
        bound: Duration,
        operation: impl Future<Output = RedisResult<T>> + Send + 'static,
    ) -> Result<T, LinkFailure> {
        let ran = self
            .io
            .handle
            .spawn(async move { tokio::time::timeout(bound, operation).await })
            .await;
        match ran {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(LinkFailure::Redis(error)),
            Ok(Err(_)) | Err(_) => Err(LinkFailure::TimedOut),
        }
    }
}
