//! The seam between the request path and where stored responses live, in the
//! shape of Pingora's storage: look up, store, invalidate, purge. The
//! in-process tier ([`HotCache`](super::HotCache)) is its first
//! implementation; a shared tier (Redis, for a fleet) is a second one, and
//! the request path does not change for it.
//!
//! The hit path reads the in-process tier through its own synchronous
//! methods, so a hit pays for no boxed future; the trait is what the miss
//! path (a local leader, after election) and the fill's store go through.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::HeaderMap;

use super::entry::CachedResponse;
use super::key::CacheKey;
use super::memory::HotCache;
use crate::config::FreshnessPolicy;

/// A tier operation in flight.
pub type TierFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a purge removes, on every authority: paths (with query) equal to one
/// of `exact`, and paths starting with one of `prefixes`.
#[derive(Debug, Clone, Copy)]
pub struct Purge<'a> {
    /// Exact paths and queries.
    pub exact: &'a [String],
    /// Path prefixes.
    pub prefixes: &'a [String],
}

/// One place stored responses live.
///
/// Every operation is best effort from the client's point of view: a tier
/// that cannot answer (down, slow, a value it cannot decode) reports a miss,
/// or stores nothing, and never fails a request. Only responses that may be
/// shared are ever handed to [`Tier::store`].
pub trait Tier: Send + Sync {
    /// The most recently stored variant under `key` that `request` selects,
    /// fresh or not (the caller judges freshness), judged under `policy`
    /// (the route's) when it comes from another process; `None` on a miss.
    fn lookup<'a>(
        &'a self,
        key: &'a CacheKey,
        request: &'a HeaderMap,
        policy: &'a FreshnessPolicy,
    ) -> TierFuture<'a, Option<Arc<CachedResponse>>>;

    /// Stores `entry`, fetched for `request` on a route with `policy`, under
    /// `key`: it replaces the variants `request` selects. Visible to later
    /// lookups once it resolves, to `true`; `false` when it was not stored
    /// (too large for the tier, or the tier unavailable).
    fn store<'a>(
        &'a self,
        key: &'a CacheKey,
        entry: &'a Arc<CachedResponse>,
        request: &'a HeaderMap,
        policy: &'a FreshnessPolicy,
    ) -> TierFuture<'a, bool>;

    /// Removes every variant stored under `key`.
    fn invalidate<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, ()>;

    /// Removes every key `purge` matches; resolves to how many were removed.
    fn purge<'a>(&'a self, purge: Purge<'a>) -> TierFuture<'a, usize>;
}

impl Tier for HotCache {
    fn lookup<'a>(
        &'a self,
        key: &'a CacheKey,
        request: &'a HeaderMap,
        _policy: &'a FreshnessPolicy,
    ) -> TierFuture<'a, Option<Arc<CachedResponse>>> {
        Box::pin(std::future::ready(self.select(key, request)))
    }

    fn store<'a>(
        &'a self,
        key: &'a CacheKey,
        entry: &'a Arc<CachedResponse>,
        request: &'a HeaderMap,
        _policy: &'a FreshnessPolicy,
    ) -> TierFuture<'a, bool> {
        self.insert(key.clone(), Arc::clone(entry), request);
        Box::pin(std::future::ready(true))
    }

    fn invalidate<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, ()> {
        HotCache::invalidate(self, key);
        Box::pin(std::future::ready(()))
    }

    fn purge<'a>(&'a self, purge: Purge<'a>) -> TierFuture<'a, usize> {
        Box::pin(std::future::ready(HotCache::purge(
            self,
            purge.exact,
            purge.prefixes,
        )))
    }
}
