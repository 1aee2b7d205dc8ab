//! The flight map: at most one fetch per key at a time.
//!
//! The first caller to [`FlightMap::join`] a key becomes its [`Leader`]; callers
//! that arrive while that leader holds the slot become [`Follower`]s and await the
//! value the leader publishes. Followers are woken by the publication itself (a
//! `watch` channel), never by polling.
//!
//! Publishing and finishing are two steps. [`Leader::publish`] hands followers
//! the value (they wake at once; callers arriving later still join and get it),
//! and the slot stays. [`Leader::finish`] (or dropping the leader) removes the
//! slot. In between, the caller can finish what newcomers must find elsewhere
//! once the slot is gone (a cache write, a body still streaming): a newcomer
//! always finds either the slot or that result, never neither. Dropping a
//! leader that never published (failure, panic, cancellation) removes the slot
//! and tells followers [`WaitError::Abandoned`] so they can elect a new leader
//! instead of inheriting a failure. No lock is held across an `.await`: the
//! map's shard lock is taken only inside `join` and the removals.
//!
//! A fetch's body reaches its waiting callers through a [`stream::SharedStream`]:
//! every reader gets the same chunks, at its own pace, as they arrive.
//!
//! This module knows nothing about HTTP, caching or metrics: it is generic over
//! the key and the published value.

pub mod stream;

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;
use tokio::time::Instant;

/// A sharded map of in-flight fetches, one slot per key. Cloning is cheap and
/// every clone shares the same slots.
pub struct FlightMap<K, V> {
    shared: Arc<Shared<K, V>>,
}

struct Shared<K, V> {
    slots: DashMap<K, Slot<V>>,
    next_id: AtomicU64,
}

/// One in-flight fetch. Followers subscribe through the slot's sender clone; the
/// channel closes (waking followers with `Abandoned`) once the slot is removed and
/// the leader's own sender is dropped.
struct Slot<V> {
    id: u64,
    publish: watch::Sender<Option<V>>,
}

impl<K, V> Clone for FlightMap<K, V> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, V> Default for FlightMap<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    fn default() -> Self {
        Self::new()
    }
}

/// What [`FlightMap::join`] made of the caller.
pub enum Join<K: Hash + Eq + Clone, V: Clone> {
    /// Nobody was fetching this key: the caller must fetch, [`Leader::publish`]
    /// and [`Leader::finish`] (or drop the leader to give up).
    Leader(Leader<K, V>),
    /// A fetch is under way: await its outcome with [`Follower::wait`].
    Follower(Follower<V>),
}

/// The right, and the duty, to fetch one key. Exactly one exists per slot.
///
/// Dropping it removes the slot; if it never published, every follower wakes
/// with [`WaitError::Abandoned`].
pub struct Leader<K: Hash + Eq + Clone, V: Clone> {
    shared: Arc<Shared<K, V>>,
    key: K,
    id: u64,
    publish: watch::Sender<Option<V>>,
}

/// A caller waiting for another caller's fetch of the same key.
pub struct Follower<V> {
    outcome: watch::Receiver<Option<V>>,
}

/// Why a follower got no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed before the leader published.
    #[error("timed out waiting for the in-flight fetch")]
    TimedOut,
    /// The leader went away (failed, panicked or was cancelled) without publishing.
    #[error("the in-flight fetch was abandoned")]
    Abandoned,
}

impl<K, V> FlightMap<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    /// An empty map.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                slots: DashMap::new(),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Becomes the leader for `key` if no fetch is in flight, or a follower of the
    /// fetch that is. Never blocks beyond the shard lock of `key`.
    pub fn join(&self, key: K) -> Join<K, V> {
        match self.shared.slots.entry(key) {
            Entry::Occupied(slot) => Join::Follower(Follower {
                outcome: slot.get().publish.subscribe(),
            }),
            Entry::Vacant(vacant) => {
                let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                let (publish, _) = watch::channel(None);
                let key = vacant.key().clone();
                vacant.insert(Slot {
                    id,
                    publish: publish.clone(),
                });
                Join::Leader(Leader {
                    shared: Arc::clone(&self.shared),
                    key,
                    id,
                    publish,
                })
            }
        }
    }

    /// Number of keys with a fetch in flight.
    pub fn in_flight(&self) -> usize {
        self.shared.slots.len()
    }

    /// Number of callers currently waiting on `key`'s fetch (0 when none is in flight).
    pub fn waiting(&self, key: &K) -> usize {
        self.shared
            .slots
            .get(key)
            .map_or(0, |slot| slot.publish.receiver_count())
    }
}

impl<K, V> Leader<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    /// The key this leader fetches.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Number of callers waiting on this leader's outcome right now.
    pub fn waiting(&self) -> usize {
        self.publish.receiver_count()
    }

    /// A follower of this very flight: how the leader's own caller, having
    /// handed the leader to the task that fetches, awaits the outcome the
    /// same way every other caller does.
    pub fn follow(&self) -> Follower<V> {
        Follower {
            outcome: self.publish.subscribe(),
        }
    }

    /// Hands `value` to every follower, now and until the slot is removed;
    /// the slot stays (see [`Leader::finish`]). A later publication replaces
    /// the value for followers that have not taken it yet.
    pub fn publish(&self, value: V) {
        self.publish.send_replace(Some(value));
    }

    /// Removes the slot: the next caller to join leads a new flight. Callers
    /// that must find the outcome elsewhere once the slot is gone (a cache)
    /// write it there *before* calling this, so a newcomer sees either the
    /// slot or the stored value, never neither.
    pub fn finish(self) {
        // Drop removes the slot; followers already hold the value.
    }
}

impl<K, V> Drop for Leader<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    fn drop(&mut self) {
        // Only our own slot: a newer leader may already own this key.
        self.shared
            .slots
            .remove_if(&self.key, |_, slot| slot.id == self.id);
        // Dropping `publish` next closes the channel: followers that saw no value
        // wake with `Abandoned`.
    }
}

impl<V: Clone> Follower<V> {
    /// Waits for the leader's value for as long as the flight lasts: for the
    /// caller whose own request leads it (the fetch is bounded by its own
    /// time limits, and a dropped leader ends the wait).
    ///
    /// # Errors
    /// [`WaitError::Abandoned`] when the leader gave up without a value.
    pub async fn outcome(mut self) -> Result<V, WaitError> {
        loop {
            if let Some(value) = self.outcome.borrow_and_update().as_ref() {
                return Ok(value.clone());
            }
            if self.outcome.changed().await.is_err() {
                return published(&self.outcome).ok_or(WaitError::Abandoned);
            }
        }
    }

    /// Waits for the leader's value until `deadline`.
    ///
    /// Returns at once if the value is already published. Cancel-safe: dropping
    /// the future (the client left) releases everything the follower held.
    ///
    /// # Errors
    /// [`WaitError::TimedOut`] when `deadline` passes first,
    /// [`WaitError::Abandoned`] when the leader gave up without a value.
    pub fn wait(self, deadline: Instant) -> impl Future<Output = Result<V, WaitError>> {
        // An async block over the receiver alone, not an `async fn` (which
        // keeps a second copy of its arguments): a caller keeps this future
        // for as long as it waits, and there may be many thousands of them.
        let Follower { mut outcome } = self;
        async move {
            loop {
                if let Some(value) = outcome.borrow_and_update().as_ref() {
                    return Ok(value.clone());
                }
                match tokio::time::timeout_at(deadline, outcome.changed()).await {
                    Err(_) => return Err(WaitError::TimedOut),
                    Ok(Ok(())) => continue,
                    Ok(Err(_closed)) => {
                        // The sender is gone; it may still have published just before.
                        return published(&outcome).ok_or(WaitError::Abandoned);
                    }
                }
            }
        }
    }
}

/// The value published before the leader went away, if any.
fn published<V: Clone>(outcome: &watch::Receiver<Option<V>>) -> Option<V> {
    outcome.borrow().as_ref().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn leader(join: Join<&'static str, u32>) -> Leader<&'static str, u32> {
        match join {
            Join::Leader(leader) => leader,
            Join::Follower(_) => panic!("expected to lead"),
        }
    }

    fn follower(join: Join<&'static str, u32>) -> Follower<u32> {
        match join {
            Join::Follower(follower) => follower,
            Join::Leader(_) => panic!("expected to follow"),
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(start_paused = true)]
    async fn second_join_follows_and_receives_the_leaders_value() {
        let map = FlightMap::new();
        let lead = leader(map.join("k"));
        let waiting = follower(map.join("k"));
        assert_eq!(map.waiting(&"k"), 1);
        let handle = tokio::spawn(waiting.wait(far()));
        lead.publish(7);
        lead.finish();
        assert_eq!(handle.await.unwrap(), Ok(7));
        assert_eq!(map.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn finishing_removes_the_slot_so_the_next_join_leads() {
        let map = FlightMap::new();
        let lead = leader(map.join("k"));
        lead.publish(1);
        lead.finish();
        let _again = leader(map.join("k"));
    }

    #[tokio::test(start_paused = true)]
    async fn published_but_unfinished_flight_keeps_its_slot_for_newcomers() {
        let map = FlightMap::new();
        let lead = leader(map.join("k"));
        lead.publish(5);
        // Until the leader finishes (its cache write, its body), a newcomer
        // follows and gets the value: it never finds neither slot nor value.
        let late = follower(map.join("k"));
        assert_eq!(map.in_flight(), 1);
        assert_eq!(late.wait(Instant::now()).await, Ok(5));
        lead.finish();
        assert_eq!(map.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_leaders_own_caller_follows_its_flight() {
        let map = FlightMap::new();
        let lead = leader(map.join("k"));
        let own = tokio::spawn(lead.follow().outcome());
        let task = tokio::spawn(async move {
            lead.publish(9);
            lead.finish();
        });
        task.await.unwrap();
        assert_eq!(own.await.unwrap(), Ok(9));
        let abandoned = leader(map.join("k"));
        let own = abandoned.follow();
        drop(abandoned);
        assert_eq!(own.outcome().await, Err(WaitError::Abandoned));
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_leader_frees_the_slot_and_wakes_followers_abandoned() {
        let map = FlightMap::new();
        let lead = leader(map.join("k"));
        let waiting = tokio::spawn(follower(map.join("k")).wait(far()));
        drop(lead);
        assert_eq!(waiting.await.unwrap(), Err(WaitError::Abandoned));
        let _next = leader(map.join("k"));
    }

    #[tokio::test(start_paused = true)]
    async fn panicking_leader_task_frees_the_slot() {
        let map: FlightMap<&'static str, u32> = FlightMap::new();
        let lead = leader(map.join("k"));
        let waiting = tokio::spawn(follower(map.join("k")).wait(far()));
        let task = tokio::spawn(async move {
            let _lead = lead;
            panic!("fetch blew up");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(waiting.await.unwrap(), Err(WaitError::Abandoned));
        assert_eq!(map.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn follower_wait_is_bounded_by_its_deadline() {
        let map = FlightMap::new();
        let _lead = leader(map.join("k"));
        let waiting = follower(map.join("k"));
        let deadline = Instant::now() + Duration::from_millis(250);
        assert_eq!(waiting.wait(deadline).await, Err(WaitError::TimedOut));
        assert_eq!(Instant::now(), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_follower_releases_its_place() {
        let map = FlightMap::new();
        let lead = leader(map.join("k"));
        let waiting = tokio::spawn(follower(map.join("k")).wait(far()));
        tokio::task::yield_now().await;
        assert_eq!(lead.waiting(), 1);
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert_eq!(lead.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn follower_joining_after_publication_gets_the_value_at_once() {
        let map = FlightMap::new();
        let lead = leader(map.join("k"));
        let early = follower(map.join("k"));
        lead.publish(3);
        let late = follower(map.join("k"));
        assert_eq!(late.wait(Instant::now()).await, Ok(3));
        assert_eq!(early.wait(Instant::now()).await, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_never_wait_on_each_other() {
        let map = FlightMap::new();
        let _a = leader(map.join("a"));
        let b = leader(map.join("b"));
        let waiting_b = follower(map.join("b"));
        b.publish(2);
        b.finish();
        assert_eq!(waiting_b.wait(Instant::now()).await, Ok(2));
        assert_eq!(map.in_flight(), 1);
    }

    #[test]
    fn old_leader_never_removes_a_newer_slot() {
        let map: FlightMap<&'static str, u32> = FlightMap::new();
        let first = leader(map.join("k"));
        // Simulate the slot having been replaced by a newer leader.
        map.shared.slots.remove(&"k");
        let second = leader(map.join("k"));
        drop(first);
        assert_eq!(map.in_flight(), 1);
        drop(second);
        assert_eq!(map.in_flight(), 0);
    }
}
