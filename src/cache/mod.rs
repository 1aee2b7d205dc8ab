//! What is stored, where, and what RFC 9111 lets a shared cache do with it.
//!
//! - [`entry`]: the stored response, everything about its freshness computed
//!   once when it is stored, and its [`wire`] form for other processes;
//! - [`key`]: the unambiguous cache key;
//! - [`tier`]: the lookup / store / purge seam every tier implements;
//! - [`fleet`]: the tier shared by a fleet of instances in Redis, and the
//!   fleet-wide fetch lock;
//! - [`memory`]: the in-process tier (moka, weighted by bytes), which a hit
//!   reads synchronously;
//! - [`policy`]: RFC 9111 (lifetime, storability, reuse, shareability) as
//!   pure functions.
//!
//! Freshness is decided on tokio's clock, so paused-time tests are exact.
//! moka's own expiry (on the std clock) only reclaims memory once an entry
//! can no longer be served, stale windows included
//! ([`CachedResponse::keep_until`]).

pub mod entry;
pub mod fleet;
pub mod key;
pub mod memory;
pub mod policy;
pub mod tier;
pub mod wire;

pub use entry::{
    CachedResponse, EVICTION_GRACE, NO_REQUEST_DIRECTIVES, StoredHeaders, Timing, Variant,
};
pub use key::CacheKey;
pub use memory::{HotCache, PassMarks};
pub use tier::{Purge, Tier, TierFuture};

#[cfg(test)]
mod tests;
