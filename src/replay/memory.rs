//! The record store of an instance without a fleet: claims and records in
//! this process, forgotten on restart.
//!
//! Claims live in a `DashMap` (never evicted: a claim dropped for space would
//! let a duplicate run), capped at [`MAX_CLAIMS`]; records in a moka cache
//! weighted by bytes, capped at [`CAPACITY`], least recently used out first
//! (moka's default admission policy may refuse a new entry outright, which
//! for a record would mean a retry running again at once). Every claim and
//! record carries its own deadline on tokio's clock, checked on each read, so
//! leases and TTLs follow a paused clock in tests; moka's own expiry (on the
//! std clock) only reclaims the memory afterwards.
//!
//! A key's claim and record change under the key's `DashMap` shard lock, so a
//! claim and a completion of one key never interleave: a claimant finds
//! either the claim or the record, never neither. No lock is held across an
//! `.await` (nothing here awaits).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use moka::Expiry;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use tokio::time::Instant;

use super::{Held, Record, RecordKey, Slot, StoreError, Ticket};

/// Bytes of records kept at most; past it the least recently used go first.
pub const CAPACITY: u64 = 64 * 1024 * 1024;

/// Claims held at most (in flight, or of unknown outcome until their lease
/// ends); past it new claims are refused (503) rather than risk a duplicate.
pub const MAX_CLAIMS: usize = 100_000;

/// Expired claims are swept out once every this many claims.
const SWEEP_EVERY: u64 = 1024;

struct HeldClaim {
    ticket: Ticket,
    unknown: bool,
    expires_at: Instant,
}

struct Kept {
    record: Arc<Record>,
    expires_at: Instant,
    weight: u32,
}

/// Lets moka reclaim a record once its TTL (on tokio's clock) has passed.
struct UntilExpired;

impl Expiry<RecordKey, Arc<Kept>> for UntilExpired {
    fn expire_after_create(
        &self,
        _key: &RecordKey,
        kept: &Arc<Kept>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(kept.expires_at.saturating_duration_since(Instant::now()))
    }
}

/// Claims and records in this process.
pub struct MemoryStore {
    claims: DashMap<RecordKey, HeldClaim>,
    records: Cache<RecordKey, Arc<Kept>>,
    claims_made: AtomicU64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store holding at most [`CAPACITY`] bytes of records.
    pub fn new() -> MemoryStore {
        MemoryStore {
            claims: DashMap::new(),
            records: Cache::builder()
                .max_capacity(CAPACITY)
                .weigher(|_key: &RecordKey, kept: &Arc<Kept>| kept.weight)
                .expire_after(UntilExpired)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
            claims_made: AtomicU64::new(0),
        }
    }

    /// Claims `key` for `ticket` for `lease`, unless a live claim or an
    /// unexpired record is there (see [`Slot`]).
    pub(super) fn claim(
        &self,
        key: &RecordKey,
        ticket: &Ticket,
        lease: Duration,
    ) -> Result<Slot, StoreError> {
        let now = Instant::now();
        self.make_room(now)?;
        match self.claims.entry(*key) {
            Entry::Occupied(claim) if claim.get().expires_at > now => {
                let claim = claim.get();
                Ok(Slot::Held(Held {
                    fingerprint: claim.ticket.fingerprint,
                    unknown: claim.unknown,
                    remaining: claim.expires_at - now,
                }))
            }
            entry => {
                if let Some(record) = self.record(key, now) {
                    if let Entry::Occupied(expired) = entry {
                        expired.remove();
                    }
                    return Ok(Slot::Recorded(record));
                }
                let claim = HeldClaim {
                    ticket: ticket.clone(),
                    unknown: false,
                    expires_at: now + lease,
                };
                match entry {
                    Entry::Occupied(mut expired) => {
                        expired.insert(claim);
                    }
                    Entry::Vacant(vacant) => {
                        vacant.insert(claim);
                    }
                }
                Ok(Slot::Claimed)
            }
        }
    }

    /// Sweeps expired claims now and then, and refuses a claim past
    /// [`MAX_CLAIMS`]. Called before taking a shard lock: `retain` and `len`
    /// lock every shard.
    fn make_room(&self, now: Instant) -> Result<(), StoreError> {
        let made = self.claims_made.fetch_add(1, Ordering::Relaxed);
        if made % SWEEP_EVERY == SWEEP_EVERY - 1 || self.claims.len() >= MAX_CLAIMS {
            self.claims.retain(|_, claim| claim.expires_at > now);
        }
        if self.claims.len() >= MAX_CLAIMS {
            return Err(StoreError::Full);
        }
        Ok(())
    }

    fn record(&self, key: &RecordKey, now: Instant) -> Option<Arc<Record>> {
        let kept = self.records.get(key)?;
        if kept.expires_at > now {
            return Some(Arc::clone(&kept.record));
        }
        self.records.invalidate(key);
        None
    }

    /// Extends `ticket`'s claim on `key` to `lease` from now; `false` when
    /// the claim is no longer its (or its outcome was declared unknown).
    pub(super) fn renew(&self, key: &RecordKey, ticket: &Ticket, lease: Duration) -> bool {
        match self.claims.get_mut(key) {
            Some(mut claim) if claim.ticket == *ticket && !claim.unknown => {
                claim.expires_at = Instant::now() + lease;
                true
            }
            _ => false,
        }
    }

    /// Replaces `ticket`'s claim on `key` with `record`, kept for `ttl`;
    /// `false` (nothing written) when the claim is no longer its.
    pub(super) fn complete(
        &self,
        key: &RecordKey,
        ticket: &Ticket,
        record: &Arc<Record>,
        ttl: Duration,
    ) -> bool {
        let Entry::Occupied(claim) = self.claims.entry(*key) else {
            return false;
        };
        if claim.get().ticket != *ticket {
            return false;
        }
        // The record first, then the claim goes: under the shard lock, so a
        // claimant sees one or the other.
        let kept = Kept {
            record: Arc::clone(record),
            expires_at: Instant::now() + ttl,
            weight: u32::try_from(record.encoded_len()).unwrap_or(u32::MAX),
        };
        self.records.insert(*key, Arc::new(kept));
        claim.remove();
        true
    }

    /// Removes `ticket`'s claim on `key`, if it still holds it.
    pub(super) fn release(&self, key: &RecordKey, ticket: &Ticket) {
        self.claims
            .remove_if(key, |_, claim| claim.ticket == *ticket);
    }

    /// Marks `ticket`'s claim on `key` as of unknown outcome, held for
    /// `lease` from now and never renewed again.
    pub(super) fn mark_unknown(&self, key: &RecordKey, ticket: &Ticket, lease: Duration) {
        if let Some(mut claim) = self.claims.get_mut(key)
            && claim.ticket == *ticket
        {
            claim.unknown = true;
            claim.expires_at = Instant::now() + lease;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::*;
    use crate::replay::key::Fingerprint;

    const LEASE: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(3600);

    fn key(n: u8) -> RecordKey {
        let credential = super::super::key::Credential::of(&HeaderMap::new(), None);
        let idempotency_key = super::super::key::IdempotencyKey::parse(&[b'k', b'a' + n]).unwrap();
        RecordKey::new(
            "r",
            &credential,
            &http::Method::POST,
            "/p",
            &idempotency_key,
        )
    }

    fn ticket(n: u8) -> Ticket {
        Ticket::new(Fingerprint::from_bytes([n; 32]))
    }

    fn record() -> Arc<Record> {
        Arc::new(Record::new(
            StatusCode::CREATED,
            HeaderMap::new(),
            Some(Bytes::from_static(b"done")),
            Fingerprint::from_bytes([1; 32]),
        ))
    }

    fn held(slot: Result<Slot, StoreError>) -> Held {
        match slot {
            Ok(Slot::Held(held)) => held,
            other => panic!("expected a held claim, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_claim_per_key_until_it_completes_then_the_record() {
        let store = MemoryStore::new();
        let (first, second) = (ticket(1), ticket(2));
        assert!(matches!(
            store.claim(&key(0), &first, LEASE),
            Ok(Slot::Claimed)
        ));
        let held = held(store.claim(&key(0), &second, LEASE));
        assert_eq!(held.fingerprint, first.fingerprint);
        assert!(!held.unknown);
        assert!(
            matches!(store.claim(&key(1), &second, LEASE), Ok(Slot::Claimed)),
            "keys are independent"
        );
        assert!(
            !store.complete(&key(0), &second, &record(), TTL),
            "only the owner completes"
        );
        assert!(store.complete(&key(0), &first, &record(), TTL));
        assert!(
            matches!(store.claim(&key(0), &second, LEASE), Ok(Slot::Recorded(r)) if r == record())
        );
        tokio::time::advance(TTL).await;
        assert!(
            matches!(store.claim(&key(0), &second, LEASE), Ok(Slot::Claimed)),
            "past its TTL the record is gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_claim_frees_the_key_and_an_unknown_one_holds_it_for_its_lease() {
        let store = MemoryStore::new();
        let (first, second) = (ticket(1), ticket(2));
        assert!(matches!(
            store.claim(&key(0), &first, LEASE),
            Ok(Slot::Claimed)
        ));
        store.release(&key(0), &second);
        assert!(
            !held(store.claim(&key(0), &second, LEASE)).unknown,
            "only the owner releases"
        );
        store.release(&key(0), &first);
        assert!(matches!(
            store.claim(&key(0), &second, LEASE),
            Ok(Slot::Claimed)
        ));

        tokio::time::advance(LEASE / 2).await;
        store.mark_unknown(&key(0), &second, LEASE);
        assert!(
            !store.renew(&key(0), &second, LEASE),
            "an unknown outcome is never renewed"
        );
        let held = held(store.claim(&key(0), &first, LEASE));
        assert!(held.unknown);
        assert_eq!(held.remaining, LEASE);
        tokio::time::advance(LEASE).await;
        assert!(
            matches!(store.claim(&key(0), &first, LEASE), Ok(Slot::Claimed)),
            "the lease ran out"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_claim_outlives_its_first_lease() {
        let store = MemoryStore::new();
        let owner = ticket(1);
        assert!(matches!(
            store.claim(&key(0), &owner, LEASE),
            Ok(Slot::Claimed)
        ));
        tokio::time::advance(LEASE - Duration::from_secs(1)).await;
        assert!(store.renew(&key(0), &owner, LEASE));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            held(store.claim(&key(0), &ticket(2), LEASE)).remaining,
            LEASE - Duration::from_secs(2)
        );
    }
}
