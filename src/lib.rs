//! corral: a caching reverse proxy that stops thundering herds.
//!
//! # Layout
//!
//! - [`config`]: the TOML schema, defaults, validation, compiled routes.
//! - [`http`]: pure HTTP caching semantics (shareability, keys, `Cache-Status`).
//! - [`cache`]: the byte-bounded hot cache and freshness maths.
//! - [`coalesce`]: the flight map: one fetch per key at a time, generic.
//! - [`origin`]: the pooled outbound clients (one per origin) and their typed errors.
//! - [`tls`]: rustls plumbing: the crypto provider, PEM files, the listeners'
//!   swappable certificates, why an origin's certificate was refused.
//! - [`proxy`]: the per-request service tying the above together.
//! - [`metrics`]: every metric, in one injected registry.
//! - [`logging`]: the batched log output, and the access log's pre-formatted lines.
//! - [`admin`]: metrics, health, purge and reload on their own listener.
//! - [`reload`]: re-reading the config file (SIGHUP, `POST /reload`).
//! - [`replay`]: Idempotency-Key records: a retried write reaches the origin once.
//! - [`server`]: listeners, connection limits, graceful shutdown.
//! - [`testing`]: tools outside the proxy: the in-process origin for tests and
//!   benchmarks, and the flash-sale demonstration behind `corral demo`.
//!
//! The caller binds the listeners and supplies the shutdown signal ([`Corral::serve`]),
//! so tests run many instances side by side on ephemeral ports.
#![warn(missing_docs)]
// One bad request must not take a worker down: no unwrap/expect outside tests.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod redis_link;
pub mod reload;
pub mod replay;
pub mod server;
pub mod testing;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use ::http::request::Parts;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::origin::OriginSpec;
use crate::proxy::Proxy;
use crate::reload::Reloader;
use crate::server::{ConnectionLimits, ListenerMetrics, NoQuickPath};
use crate::tls::{ListenerCertificates, ListenerTls};

/// Why corral could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The proxy could not be built (its origin client, or its fleet).
    #[error(transparent)]
    Build(#[from] crate::proxy::BuildError),
    /// A certificate, key or CA file the config names cannot be used, or an
    /// origin's client cannot be built; each problem at its position.
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    /// rustls refused the listeners' TLS configuration.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// A configured corral instance, ready to serve on listeners the caller binds.
pub struct Corral {
    proxy: Proxy,
    limits: ConnectionLimits,
    /// `server.quick_hits`: fresh hits answered before hyper.
    quick_hits: bool,
    tls: ListenerTls,
    reloader: Reloader,
}

impl Corral {
    /// Builds the proxy, its cache, its origins' clients, its listeners' TLS
    /// and its metrics from `config`.
    ///
    /// # Errors
    /// [`StartError`] when a file the config names cannot be used or an
    /// origin's client cannot be built.
    pub fn new(config: &Config) -> Result<Corral, StartError> {
        Corral::with_shared_tier(config, None)
    }

    /// Like [`Corral::new`], with `shared` as the cache tier beyond this
    /// process (a fleet's), which local leaders look up before the origin
    /// and every stored fill writes.
    ///
    /// # Errors
    /// As [`Corral::new`].
    pub fn with_shared_tier(
        config: &Config,
        shared: Option<Arc<dyn crate::cache::Tier>>,
    ) -> Result<Corral, StartError> {
        tls::install_crypto_provider();
        let certificates = ListenerCertificates::load(config).map_err(|p| config.refuse(p))?;
        let tls = ListenerTls::new(&certificates)?;
        let metrics = Arc::new(Metrics::new());
        let proxy = Proxy::with_shared_tier(config, metrics, shared)?;
        Ok(Corral {
            reloader: Reloader::new(proxy.clone(), tls.clone(), config.clone(), None),
            proxy,
            limits: ConnectionLimits::from_config(&config.server),
            quick_hits: config.server.quick_hits,
            tls,
        })
    }

    /// Records that the config came from `path`, so SIGHUP and `POST /reload`
    /// can re-read it. Without it, reloads are refused.
    pub fn with_config_file(mut self, config: &Config, path: PathBuf) -> Corral {
        self.reloader = Reloader::new(
            self.proxy.clone(),
            self.tls.clone(),
            config.clone(),
            Some(path),
        );
        self
    }

    /// The handle that re-reads and applies the config file.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The proxy service (its cache and metrics are reachable through it).
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Serves proxied traffic on `listener` and the admin endpoints on `admin`
    /// until `shutdown` resolves, then drains both within the shutdown timeout.
    pub async fn serve(
        self,
        listener: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let (stop, stopped) = watch::channel(false);
        let wait_stop = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let proxy = self.proxy.clone();
        let traffic = server::serve(
            listener,
            self.limits.clone(),
            ListenerMetrics::of(proxy.metrics()),
            self.tls.server.as_ref().map(|tls| tls.acceptor()),
            move |request, client| proxy.clone().serve(request, client),
            self.quick_hits.then(|| {
                let proxy = self.proxy.clone();
                move |parts: &Parts, client| proxy.answer_hit_at_once(parts, client)
            }),
            wait_stop(stopped.clone()),
        );
        let admin_handler = Admin::new(self.proxy.clone(), self.reloader.clone());
        let admin_limits = ConnectionLimits {
            max_connections: 64,
            ..self.limits.clone()
        };
        let admin_traffic = server::serve(
            admin,
            admin_limits,
            ListenerMetrics::default(),
            self.tls.admin.as_ref().map(|tls| tls.acceptor()),
            move |request, _client| {
                let admin_handler = admin_handler.clone();
                async move { admin_handler.handle(request).await }
            },
            None::<NoQuickPath>,
            wait_stop(stopped),
        );
        let trigger = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, draining in-flight requests");
            let _ = stop.send(true);
        };
        tokio::join!(traffic, admin_traffic, trigger);
    }
}

/// Loads and checks every file `config` names, as starting would: each
/// listener's certificate chain and key (readable, PEM, the key matching the
/// certificate) and each origin's CA bundle. Binds nothing, contacts nothing.
///
/// # Errors
/// Every problem found, each at the position of its setting.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    let mut problems = ListenerCertificates::load(config).err().unwrap_or_default();
    problems.extend(
        config
            .all_origins()
            .filter_map(|(name, origin)| OriginSpec::load(name, origin).err()),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(config.refuse(problems))
    }
}
