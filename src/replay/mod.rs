//! Idempotency-Key records: a retried write reaches the origin at most once
//! (DESIGN invariant 12), following draft-ietf-httpapi-idempotency-key-header
//! and Stripe's documented behaviour.
//!
//! A request names its write with a key ([`IdempotencyKey`]); its record
//! ([`RecordKey`]) is that key under the route, the client's credential, the
//! method and the path; its [`Fingerprint`] is what it asked. [`Replay::begin`]
//! decides what one request does ([`Begin`]):
//!
//! - **claim**: nothing is recorded or claimed for the key, so this request
//!   claims it and becomes its [`Owner`]: it goes to the origin, and ends the
//!   claim one of three ways: [`Owner::complete`] with the origin's answer
//!   (any answer, 5xx included: the write may have happened),
//!   [`Owner::not_sent`] when the request provably never reached the origin
//!   (the claim is deleted, a retry may run), or [`Owner::unknown`] when it
//!   may have (the claim is kept until its lease ends; corral never guesses
//!   that a write did not happen);
//! - **replay**: a record with the same fingerprint is there: its answer is
//!   replayed, the origin untouched;
//! - **decline**: the key was used with another payload (422), or another
//!   request holds it (409), or the store cannot be asked (503).
//!
//! # Duplicates in flight
//!
//! Within one instance, duplicates of a key meet in a [`FlightMap`] keyed by
//! the record key: one request (the flight's leader) asks the store, the
//! others follow it and are woken by the outcome it publishes, bounded by the
//! route's `lock_timeout`. So an instance asks its store once per key at a
//! time, whatever the number of duplicates.
//!
//! Across instances (with `[fleet]`), the store decides: the claim is a
//! `SET NX` with a lease (`redis`), renewed by its owner while it works. A
//! leader that finds the key claimed elsewhere re-checks it with exponential
//! backoff ([`FIRST_RECHECK`] doubling to [`MAX_RECHECK`]) until the record
//! appears, the claim goes, or `lock_timeout` passes (409). A wait on the
//! fleet's pub/sub channel would wake it sooner, but that connection belongs
//! to the cache tier (`cache::fleet`, which this module may not import), and
//! a second notification connection per instance is not worth it here: a
//! duplicate reaching another instance while the first is still in flight is
//! rare (a client retrying through another instance after a timeout), and
//! costs at most a dozen small reads.
//!
//! # Stores
//!
//! With `[fleet] redis`, the `redis` store, on the fleet's own link (one
//! command connection per instance). Without, the `memory` store: bounded,
//! and forgotten on restart.

mod key;
mod memory;
mod record;
mod redis;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::{Instant, MissedTickBehavior};

pub use key::{
    Credential, Fingerprint, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, IdempotencyKey, KeyError,
    MAX_KEY_LENGTH, RecordKey,
};
pub use record::{DecodeError, EncodeError, Record};

use crate::coalesce::{FlightMap, Join, Leader, WaitError};
use crate::config::FleetConfig;
use crate::metrics::IdempotencyMetrics;
use crate::redis_link::{LinkFailure, RedisLink};
use memory::MemoryStore;
use redis::RedisStore;

/// The first pause before a leader re-checks a key claimed by another instance.
pub const FIRST_RECHECK: Duration = Duration::from_millis(20);

/// The longest pause between two re-checks of a key claimed elsewhere.
pub const MAX_RECHECK: Duration = Duration::from_millis(500);

/// How often a duplicate re-joins its key's flight after the request it
/// followed went away without an outcome, before it gives up (409).
const MAX_JOINS: usize = 4;

/// Attempts at writing a record before the claim is left to lapse.
const COMPLETE_ATTEMPTS: u32 = 3;

/// The pause between two attempts at writing a record.
const COMPLETE_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// `Retry-After` for a duplicate that gave up waiting on a request in
/// flight, for one whose original was not sent, and when the store is
/// unavailable.
pub const RETRY_SOON: Duration = Duration::from_secs(1);

/// Why the record store gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer within the bound, or answered an error.
    #[error("the record store did not answer: {0}")]
    Link(#[from] LinkFailure),
    /// A value under a record key is not a claim or a record of corral's.
    #[error("the record store holds a value that is not corral's")]
    Corrupt,
    /// A record too large for the wire form (no configured limit allows one).
    #[error("the record is too large to store")]
    Unencodable,
    /// The in-memory store holds as many claims as it may.
    #[error("too many idempotency claims held at once")]
    Full,
}

/// A claimant: a random token (whose claim it is) and the fingerprint of
/// the request it stands for (so a different payload is told at once).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ticket {
    token: u128,
    fingerprint: Fingerprint,
}

impl Ticket {
    fn new(fingerprint: Fingerprint) -> Ticket {
        Ticket {
            token: fastrand::u128(..),
            fingerprint,
        }
    }
}

/// What a store holds for a key, as a claim attempt found it.
#[derive(Debug)]
enum Slot {
    /// Nothing live: the attempt's ticket now holds the claim.
    Claimed,
    /// Another ticket's claim.
    Held(Held),
    /// A completed record.
    Recorded(Arc<Record>),
}

/// A claim held by another request.
#[derive(Debug)]
struct Held {
    /// The fingerprint of the request holding it.
    fingerprint: Fingerprint,
    /// Whether its outcome is unknown (no longer in flight).
    unknown: bool,
    /// How long until its lease ends.
    remaining: Duration,
}

/// Where claims and records live.
enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    async fn claim(
        &self,
        key: &RecordKey,
        ticket: &Ticket,
        lease: Duration,
    ) -> Result<Slot, StoreError> {
        match self {
            Store::Memory(store) => store.claim(key, ticket, lease),
            Store::Redis(store) => store.claim(key, ticket, lease).await,
        }
    }

    async fn renew(
        &self,
        key: &RecordKey,
        ticket: &Ticket,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Memory(store) => Ok(store.renew(key, ticket, lease)),
            Store::Redis(store) => store.renew(key, ticket, lease).await,
        }
    }

    async fn complete(
        &self,
        key: &RecordKey,
        ticket: &Ticket,
        record: &Arc<Record>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Memory(store) => Ok(store.complete(key, ticket, record, ttl)),
            Store::Redis(store) => store.complete(key, ticket, record, ttl).await,
        }
    }

    async fn release(&self, key: &RecordKey, ticket: &Ticket) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => {
                store.release(key, ticket);
                Ok(())
            }
            Store::Redis(store) => store.release(key, ticket).await,
        }
    }

    async fn mark_unknown(
        &self,
        key: &RecordKey,
        ticket: &Ticket,
        lease: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => {
                store.mark_unknown(key, ticket, lease);
                Ok(())
            }
            Store::Redis(store) => store.mark_unknown(key, ticket, lease).await.map(drop),
        }
    }
}

/// What a key's flight publishes to the duplicates following it: the state
/// of the key, which each judges against its own fingerprint.
#[derive(Debug, Clone)]
enum Outcome {
    /// The record: replayed to the same payload, 422 to another.
    Recorded(Arc<Record>),
    /// Claimed elsewhere and still in flight when the leader gave up waiting.
    InFlight { fingerprint: Fingerprint },
    /// Claimed, outcome unknown, until `until`.
    Unknown {
        fingerprint: Fingerprint,
        until: Instant,
    },
    /// The owner's request was provably not sent; its claim is gone.
    NotSent,
    /// The store could not be asked.
    Unavailable,
}

/// What one request with a key is to do.
pub enum Begin {
    /// Go to the origin: the key is this request's.
    Owner(Owner),
    /// Answer with this record's answer (kept, same fingerprint), without
    /// the origin.
    Replay(Arc<Record>),
    /// Answer without the origin, with an error.
    Declined(Declined),
}

/// Why a request with a key is answered with an error, the origin untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Declined {
    /// The key was used with another payload (422).
    #[error("the key was used with another payload")]
    Mismatch,
    /// Another request with the key was still in flight when this one's
    /// wait ran out (409).
    #[error("another request with the key is in flight")]
    InFlight {
        /// When to try again.
        retry_after: Duration,
    },
    /// Another request with the key ended with an unknown outcome: the key
    /// is held until its lease ends (409).
    #[error("another request with the key has an unknown outcome")]
    Unknown {
        /// When the lease ends.
        retry_after: Duration,
    },
    /// The request with the key completed, but its answer was too large to
    /// keep, so it cannot be replayed; trying again will not change that (409).
    #[error("the answer for the key was too large to keep")]
    NotKept,
    /// The request this one waited on was not sent (the origin refused it):
    /// the key is free again, this request may be sent again (503).
    #[error("the request this one waited on was not sent")]
    NotSent {
        /// When to try again.
        retry_after: Duration,
    },
    /// The record store could not be asked (503): the request is not sent
    /// unprotected.
    #[error("the record store is unavailable")]
    Unavailable {
        /// When to try again.
        retry_after: Duration,
    },
}

/// One request's key, payload and the route's settings for it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Which record it reads or writes.
    pub key: RecordKey,
    /// What it asks.
    pub fingerprint: Fingerprint,
    /// How long its claim outlives it if it stops renewing.
    pub lease: Duration,
    /// How long its record is kept.
    pub ttl: Duration,
    /// How long it waits for a duplicate in flight (the route's `lock_timeout`).
    pub wait: Duration,
}

/// An instance's Idempotency-Key records: the store and the flights of keys
/// being decided here. Shared by `Arc`.
pub struct Replay {
    store: Store,
    flights: FlightMap<RecordKey, Outcome>,
    max_answer: usize,
    metrics: IdempotencyMetrics,
}

impl Replay {
    /// Records in this process (the `memory` store), answers kept up to
    /// `max_answer` bytes of body.
    pub fn in_memory(max_answer: usize, metrics: IdempotencyMetrics) -> Replay {
        Replay::with_store(Store::Memory(MemoryStore::new()), max_answer, metrics)
    }

    /// Records in the fleet's Redis (the `redis` store) through `link` (the
    /// fleet's), answers kept up to `max_answer` bytes of body and no more
    /// than `config.max_value_size` encoded.
    pub fn in_redis(
        link: Arc<RedisLink>,
        config: &FleetConfig,
        max_answer: usize,
        metrics: IdempotencyMetrics,
    ) -> Replay {
        let max_value = usize::try_from(config.max_value_size.as_u64()).unwrap_or(usize::MAX);
        Replay::with_store(
            Store::Redis(RedisStore::new(link, config)),
            max_answer.min(max_value),
            metrics,
        )
    }

    fn with_store(store: Store, max_answer: usize, metrics: IdempotencyMetrics) -> Replay {
        Replay {
            store,
            flights: FlightMap::new(),
            max_answer,
            metrics,
        }
    }

    /// The largest answer body a record keeps; a larger answer is relayed to
    /// its client and recorded as not kept ([`Declined::NotKept`] for retries).
    pub fn max_answer(&self) -> usize {
        self.max_answer
    }

    /// Decides what the request of `attempt` does: claim its key, replay its
    /// record, or be declined. Waits (at most `attempt.wait`) while another
    /// request with the key is in flight. Counts the decision in the
    /// `corral_idempotency_*` metrics. Cancel-safe: a request that leaves
    /// while waiting frees its place; one that leaves while leading a wait
    /// wakes its followers to decide again.
    pub async fn begin(self: &Arc<Self>, attempt: Attempt) -> Begin {
        let deadline = Instant::now() + attempt.wait;
        let begin = self.join(&attempt, deadline).await;
        let metrics = &self.metrics;
        let counter = match &begin {
            Begin::Owner(_) => Some(&metrics.claims),
            Begin::Replay(_) => Some(&metrics.replays),
            Begin::Declined(Declined::Mismatch) => Some(&metrics.mismatches),
            Begin::Declined(
                Declined::InFlight { .. } | Declined::Unknown { .. } | Declined::NotKept,
            ) => Some(&metrics.conflicts),
            Begin::Declined(Declined::Unavailable { .. }) => Some(&metrics.unavailable),
            // Not a decision about the key: the origin failure it echoes is
            // counted where it happened, on the request that was refused.
            Begin::Declined(Declined::NotSent { .. }) => None,
        };
        if let Some(counter) = counter {
            counter.inc();
        }
        begin
    }

    async fn join(self: &Arc<Self>, attempt: &Attempt, deadline: Instant) -> Begin {
        for _ in 0..MAX_JOINS {
            match self.flights.join(attempt.key) {
                Join::Leader(leader) => return self.lead(leader, attempt, deadline).await,
                Join::Follower(follower) => {
                    let _waiting = Waiting::new(&self.metrics.waiting);
                    match follower.wait(deadline).await {
                        Ok(outcome) => return judge(outcome, attempt.fingerprint),
                        Err(WaitError::TimedOut) => break,
                        // The leader left without an outcome (its client
                        // went): decide again.
                        Err(WaitError::Abandoned) => continue,
                    }
                }
            }
        }
        Begin::Declined(Declined::InFlight {
            retry_after: RETRY_SOON,
        })
    }

    /// As the key's local leader: claims it, or publishes what holds it to
    /// the local duplicates, re-checking a claim in flight elsewhere until
    /// `deadline`.
    async fn lead(
        self: &Arc<Self>,
        leader: Leader<RecordKey, Outcome>,
        attempt: &Attempt,
        deadline: Instant,
    ) -> Begin {
        let ticket = Ticket::new(attempt.fingerprint);
        let mut pause = FIRST_RECHECK;
        let mut waiting = None;
        let outcome = loop {
            let slot = match self.store.claim(&attempt.key, &ticket, attempt.lease).await {
                Ok(slot) => slot,
                Err(error) => {
                    tracing::debug!(%error, "idempotency: the record store is unavailable; refusing the write");
                    break Outcome::Unavailable;
                }
            };
            match slot {
                Slot::Claimed => {
                    return Begin::Owner(Owner {
                        replay: Arc::clone(self),
                        leader: Some(leader),
                        key: attempt.key,
                        ticket,
                        lease: attempt.lease,
                        ttl: attempt.ttl,
                    });
                }
                Slot::Recorded(record) => break Outcome::Recorded(record),
                Slot::Held(held) if held.unknown => {
                    break Outcome::Unknown {
                        fingerprint: held.fingerprint,
                        until: Instant::now() + held.remaining,
                    };
                }
                Slot::Held(held) => {
                    let now = Instant::now();
                    if held.fingerprint != attempt.fingerprint || now >= deadline {
                        break Outcome::InFlight {
                            fingerprint: held.fingerprint,
                        };
                    }
                    waiting.get_or_insert_with(|| Waiting::new(&self.metrics.waiting));
                    tokio::time::sleep_until((now + pause).min(deadline)).await;
                    pause = (pause * 2).min(MAX_RECHECK);
                }
            }
        };
        leader.publish(outcome.clone());
        // Dropping the leader ends the flight: later duplicates ask the store.
        judge(outcome, attempt.fingerprint)
    }
}

/// What `outcome` means for a request with `fingerprint`.
fn judge(outcome: Outcome, fingerprint: Fingerprint) -> Begin {
    let now = Instant::now();
    let declined = match outcome {
        Outcome::Recorded(record) if record.fingerprint != fingerprint => Declined::Mismatch,
        Outcome::Recorded(record) if record.body.is_none() => Declined::NotKept,
        Outcome::Recorded(record) => return Begin::Replay(record),
        Outcome::InFlight { fingerprint: held }
        | Outcome::Unknown {
            fingerprint: held, ..
        } if held != fingerprint => Declined::Mismatch,
        Outcome::InFlight { .. } => Declined::InFlight {
            retry_after: RETRY_SOON,
        },
        Outcome::Unknown { until, .. } => Declined::Unknown {
            retry_after: until.saturating_duration_since(now).max(RETRY_SOON),
        },
        Outcome::NotSent => Declined::NotSent {
            retry_after: RETRY_SOON,
        },
        Outcome::Unavailable => Declined::Unavailable {
            retry_after: RETRY_SOON,
        },
    };
    Begin::Declined(declined)
}

/// The holder of a key's claim: the one request with the key that goes to
/// the origin. It must end the claim with [`complete`](Owner::complete),
/// [`not_sent`](Owner::not_sent) or [`unknown`](Owner::unknown), keeping it
/// alive with [`hold`](Owner::hold) meanwhile. Dropped without that (its task
/// panicked), local duplicates are told the outcome is unknown and the claim
/// lapses with its lease.
pub struct Owner {
    replay: Arc<Replay>,
    /// The key's local flight; `None` once the claim has ended.
    leader: Option<Leader<RecordKey, Outcome>>,
    key: RecordKey,
    ticket: Ticket,
    lease: Duration,
    ttl: Duration,
}

impl Owner {
    /// The fingerprint of the request that holds the claim.
    pub fn fingerprint(&self) -> Fingerprint {
        self.ticket.fingerprint
    }

    /// Renews the claim every third of its lease, for as long as it is
    /// polled (run it beside the work, and drop it when the work is done).
    /// A renewal Redis misses is tried again at the next tick; a claim found
    /// to be someone else's (its lease ran out meanwhile) is no longer renewed.
    pub async fn hold(&self) -> Infallible {
        let period = self.lease / 3;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let store = &self.replay.store;
            match store.renew(&self.key, &self.ticket, self.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        "idempotency: a claim lapsed while its request was in flight; a duplicate may have run"
                    );
                    return std::future::pending().await;
                }
                Err(error) => {
                    tracing::debug!(%error, "idempotency: a claim could not be renewed; trying again")
                }
            }
        }
    }

    /// Ends the claim with the origin's answer: local duplicates get it at
    /// once, then it is written to the store for `ttl` (tried a few times:
    /// a record that cannot be written leaves the claim to lapse, and
    /// duplicates get 409 until then), and only then does the local flight
    /// end, so a newcomer finds the flight or the record, never neither.
    pub async fn complete(mut self, record: Arc<Record>) {
        let Some(leader) = self.leader.take() else {
            return;
        };
        leader.publish(Outcome::Recorded(Arc::clone(&record)));
        let store = &self.replay.store;
        for attempt in 1..=COMPLETE_ATTEMPTS {
            match store
                .complete(&self.key, &self.ticket, &record, self.ttl)
                .await
            {
                Ok(true) => {
                    let bytes = u64::try_from(record.encoded_len()).unwrap_or(u64::MAX);
                    self.replay.metrics.stored_bytes.inc_by(bytes);
                    break;
                }
                Ok(false) => {
                    tracing::warn!(
                        "idempotency: a claim lapsed before its record was written; a retry may run again"
                    );
                    break;
                }
                Err(error) if attempt == COMPLETE_ATTEMPTS => {
                    tracing::warn!(%error, "idempotency: a record could not be written; duplicates get 409 until its claim lapses");
                }
                Err(_) => tokio::time::sleep(COMPLETE_RETRY_PAUSE).await,
            }
        }
        leader.finish();
    }

    /// Ends the claim of a request that provably never reached the origin
    /// (no connection, or refused to protect it): the claim is deleted, so a
    /// retry runs, and local duplicates are told to retry.
    pub async fn not_sent(mut self) {
        let Some(leader) = self.leader.take() else {
            return;
        };
        if let Err(error) = self.replay.store.release(&self.key, &self.ticket).await {
            tracing::warn!(%error, "idempotency: a claim could not be released; it lapses with its lease");
        }
        leader.publish(Outcome::NotSent);
        leader.finish();
    }

    /// Ends the claim of a request that may have reached the origin without
    /// an answer (a timeout or a reset once sent): the key stays held for the
    /// lease from now, and duplicates get 409 until then.
    pub async fn unknown(mut self) {
        let Some(leader) = self.leader.take() else {
            return;
        };
        let until = Instant::now() + self.lease;
        let store = &self.replay.store;
        if let Err(error) = store
            .mark_unknown(&self.key, &self.ticket, self.lease)
            .await
        {
            tracing::warn!(%error, "idempotency: an unknown outcome could not be recorded; the claim lapses with its lease");
        }
        leader.publish(Outcome::Unknown {
            fingerprint: self.ticket.fingerprint,
            until,
        });
        leader.finish();
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(leader) = self.leader.take() {
            // The work ended without saying how (a panic): whether the
            // request was sent is unknown.
            leader.publish(Outcome::Unknown {
                fingerprint: self.ticket.fingerprint,
                until: Instant::now() + self.lease,
            });
        }
    }
}

/// Holds `corral_idempotency_waiting` up while a duplicate waits.
struct Waiting(Gauge);

impl Waiting {
    fn new(gauge: &Gauge) -> Waiting {
        gauge.inc();
        Waiting(gauge.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode};

    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    fn attempt(fingerprint: u8) -> Attempt {
        let key = IdempotencyKey::parse(b"k").unwrap();
        let credential = Credential::of(&HeaderMap::new(), None);
        Attempt {
            key: RecordKey::new("r", &credential, &Method::POST, "/p", &key),
            fingerprint: Fingerprint::from_bytes([fingerprint; 32]),
            lease: LEASE,
            ttl: Duration::from_secs(3600),
            wait: Duration::from_secs(10),
        }
    }

    fn owner(begin: Begin) -> Owner {
        match begin {
            Begin::Owner(owner) => owner,
            _ => panic!("expected to own the key"),
        }
    }

    fn declined(begin: Begin) -> Declined {
        match begin {
            Begin::Declined(declined) => declined,
            _ => panic!("expected a refusal"),
        }
    }

    fn record(owner: &Owner, body: Option<&'static str>) -> Arc<Record> {
        Arc::new(Record::new(
            StatusCode::CREATED,
            HeaderMap::new(),
            body.map(|body| Bytes::from_static(body.as_bytes())),
            owner.fingerprint(),
        ))
    }

    fn replay() -> Arc<Replay> {
        Arc::new(Replay::in_memory(1024, IdempotencyMetrics::default()))
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_in_flight_follow_the_owner_and_get_its_record() {
        let replay = replay();
        let owner = owner(replay.begin(attempt(1)).await);
        let same = tokio::spawn({
            let replay = Arc::clone(&replay);
            async move { replay.begin(attempt(1)).await }
        });
        let other = tokio::spawn({
            let replay = Arc::clone(&replay);
            async move { replay.begin(attempt(2)).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(replay.metrics.waiting.get(), 2);
        let answer = record(&owner, Some("done"));
        owner.complete(Arc::clone(&answer)).await;
        assert!(matches!(same.await.unwrap(), Begin::Replay(r) if r == answer));
        assert_eq!(declined(other.await.unwrap()), Declined::Mismatch);
        assert!(
            matches!(replay.begin(attempt(1)).await, Begin::Replay(_)),
            "from the store"
        );
        assert_eq!(replay.metrics.claims.get(), 1);
        assert_eq!(replay.metrics.replays.get(), 2);
        assert_eq!(replay.metrics.mismatches.get(), 1);
        assert_eq!(replay.metrics.waiting.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_duplicate_waits_no_longer_than_its_bound() {
        let replay = replay();
        let _owner = owner(replay.begin(attempt(1)).await);
        let started = Instant::now();
        let declined = declined(replay.begin(attempt(1)).await);
        assert_eq!(
            declined,
            Declined::InFlight {
                retry_after: RETRY_SOON
            }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(replay.metrics.conflicts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn not_sent_frees_the_key_and_unknown_holds_it_for_the_lease() {
        let replay = replay();
        owner(replay.begin(attempt(1)).await).not_sent().await;
        let second = owner(replay.begin(attempt(1)).await);
        second.unknown().await;
        assert_eq!(
            declined(replay.begin(attempt(1)).await),
            Declined::Unknown { retry_after: LEASE }
        );
        tokio::time::advance(LEASE).await;
        let third = owner(replay.begin(attempt(1)).await);
        third.complete(record_for(1, None)).await;
        assert_eq!(declined(replay.begin(attempt(1)).await), Declined::NotKept);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_owner_tells_its_followers_the_outcome_is_unknown() {
        let replay = replay();
        let owner = owner(replay.begin(attempt(1)).await);
        let follower = tokio::spawn({
            let replay = Arc::clone(&replay);
            async move { replay.begin(attempt(1)).await }
        });
        tokio::task::yield_now().await;
        drop(owner);
        assert!(matches!(
            declined(follower.await.unwrap()),
            Declined::Unknown { .. }
        ));
    }

    fn record_for(fingerprint: u8, body: Option<&'static str>) -> Arc<Record> {
        Arc::new(Record::new(
            StatusCode::OK,
            HeaderMap::new(),
            body.map(|body| Bytes::from_static(body.as_bytes())),
            Fingerprint::from_bytes([fingerprint; 32]),
        ))
    }
}
