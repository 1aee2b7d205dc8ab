//! The fleet-wide fetch lock: one instance fetches a key for the whole fleet.
//!
//! A local leader that found nothing usable in the shared tier subscribes to
//! the key's channel, then tries `SET lock token NX PX lease` (a script that
//! also reads the entry, so an entry that landed in between is not missed).
//! The winner fetches, renewing its lease every third of it, stores the
//! entry, then announces the end on the channel and deletes the lock only if
//! it still holds it (compare-and-delete: never someone else's lock). Losers
//! wait for the announcement; a lost one costs one re-check when the
//! holder's lease would have run out (the lock's `PTTL`), never a poll. A
//! holder that died leaves a lock that expires: the next re-check takes it.
//!
//! Per miss, an instance sends a constant number of commands whatever the
//! number of its waiting clients: they wait on the local flight, not here.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderMap;
use redis::Script;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Fleet;
use crate::cache::entry::CachedResponse;
use crate::cache::key::CacheKey;
use crate::config::FreshnessPolicy;
use crate::metrics::{FleetOp, FleetWaitOutcome};

/// The announcement of a fetch whose answer was stored.
pub(super) const STORED: &[u8] = b"stored";

/// The announcement of a fetch that stored nothing (an answer that may not be
/// shared, or a failure): waiters fetch for themselves.
const NOT_STORED: &[u8] = b"none";

/// Added to a lock's remaining lease before re-checking it, so a holder's
/// release (or its lease's expiry) has happened by then.
const RECHECK_MARGIN: Duration = Duration::from_millis(50);

/// The scripts, loaded once per server by hash (`EVALSHA`, reloaded after a
/// Redis restart by the `redis` crate).
pub(super) struct Scripts {
    elect: Script,
    renew: Script,
    release: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            // KEYS: entry, lock. ARGV: token, lease in ms. Returns
            // {won (1|0), the lock's remaining ms, the entry or ""}: the entry
            // comes last, an absent one as "", since a Lua nil would end the array.
            elect: Script::new(
                r"local won = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
                local entry = redis.call('GET', KEYS[1]) or ''
                if won then return {1, 0, entry} end
                return {0, redis.call('PTTL', KEYS[2]), entry}",
            ),
            // KEYS: lock. ARGV: token, lease in ms.
            renew: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
                end
                return 0",
            ),
            // KEYS: lock, channel. ARGV: token, announcement.
            release: Script::new(
                r"redis.call('PUBLISH', KEYS[2], ARGV[2])
                if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('DEL', KEYS[1])
                end
                return 0",
            ),
        }
    }
}

/// What the fleet says a local leader should do.
pub enum FleetClaim {
    /// Another instance's answer, from the shared tier: serve it.
    Arrived(Arc<CachedResponse>),
    /// Fetch from the origin: for the whole fleet when holding the lease
    /// (release it when done), for this instance alone without one (no
    /// fleet, Redis unavailable, or the wait ran out).
    Fetch(Option<Lease>),
}

/// How one election went.
enum Election {
    Won(Lease, Option<Vec<u8>>),
    Lost {
        lock_remaining: Duration,
        entry: Option<Vec<u8>>,
    },
    Unavailable,
}

impl Fleet {
    /// Decides who fetches `key` for `request`: waits (at most `bound`) for
    /// another instance's fetch, or wins the lock and fetches for the fleet.
    /// `usable` says whether a shared entry answers this request as it is
    /// (fresh enough for it).
    pub async fn claim(
        self: &Arc<Self>,
        key: &CacheKey,
        request: &HeaderMap,
        policy: &FreshnessPolicy,
        usable: impl Fn(&CachedResponse) -> bool,
        bound: Duration,
    ) -> FleetClaim {
        let deadline = Instant::now() + bound;
        // Subscribed before electing, so an announcement cannot fall between
        // losing and listening.
        let Some(mut subscription) = self.subscribe(key).await else {
            return FleetClaim::Fetch(None);
        };
        let arrived = |value: Option<Vec<u8>>| {
            value
                .and_then(|value| self.decode(value, request, policy))
                .filter(|entry| usable(entry))
        };
        loop {
            match self.elect(key).await {
                Election::Unavailable => return FleetClaim::Fetch(None),
                Election::Won(lease, entry) => {
                    self.metrics.elections_won.inc();
                    if let Some(entry) = arrived(entry) {
                        // Stored between our lookup and the election.
                        lease.release(true).await;
                        self.metrics.hits.inc();
                        return FleetClaim::Arrived(entry);
                    }
                    return FleetClaim::Fetch(Some(lease));
                }
                Election::Lost {
                    lock_remaining,
                    entry,
                } => {
                    if let Some(entry) = arrived(entry) {
                        self.metrics.hits.inc();
                        return FleetClaim::Arrived(entry);
                    }
                    self.metrics.elections_lost.inc();
                    let recheck_at =
                        (Instant::now() + lock_remaining + RECHECK_MARGIN).min(deadline);
                    match subscription.wait(recheck_at).await {
                        Some(true) => {
                            self.metrics.wait(FleetWaitOutcome::Notified);
                            if let Some(entry) = self
                                .get(key, request, policy)
                                .await
                                .filter(|entry| usable(entry))
                            {
                                self.metrics.hits.inc();
                                return FleetClaim::Arrived(entry);
                            }
                        }
                        Some(false) => {
                            self.metrics.wait(FleetWaitOutcome::Notified);
                            return FleetClaim::Fetch(None);
                        }
                        None if Instant::now() >= deadline => {
                            self.metrics.wait(FleetWaitOutcome::TimedOut);
                            return FleetClaim::Fetch(None);
                        }
                        None => self.metrics.wait(FleetWaitOutcome::Rechecked),
                    }
                }
            }
        }
    }

    async fn elect(self: &Arc<Self>, key: &CacheKey) -> Election {
        let token = format!("{:032x}", fastrand::u128(..));
        let lease_ms = u64::try_from(self.lock_lease.as_millis()).unwrap_or(u64::MAX);
        let (entry_name, lock_name) = (self.names.entry(key), self.names.lock(key));
        let mut commands = self.commands.clone();
        let scripts = Arc::clone(&self.scripts);
        let ballot = token.clone();
        let result: Option<(i64, i64, Vec<u8>)> = self
            .call(FleetOp::Elect, async move {
                scripts
                    .elect
                    .key(&entry_name)
                    .key(&lock_name)
                    .arg(&ballot)
                    .arg(lease_ms)
                    .invoke_async(&mut commands)
                    .await
            })
            .await;
        let Some((won, lock_remaining_ms, entry)) = result else {
            return Election::Unavailable;
        };
        let entry = (!entry.is_empty()).then_some(entry);
        if won == 1 {
            return Election::Won(Lease::new(self, key, token), entry);
        }
        Election::Lost {
            lock_remaining: Duration::from_millis(u64::try_from(lock_remaining_ms).unwrap_or(0)),
            entry,
        }
    }

    /// Listens on `key`'s channel; `None` when Redis is unavailable.
    async fn subscribe(self: &Arc<Self>, key: &CacheKey) -> Option<Subscription> {
        let channel = self.names.done(key);
        let announced = self
            .waiters
            .entry(channel.clone())
            .or_insert_with(|| watch::Sender::new(None))
            .subscribe();
        let subscription = Subscription {
            fleet: Arc::clone(self),
            channel,
            announced,
            disconnects: self.disconnects.subscribe(),
        };
        let mut notifications = self.notifications.clone();
        let channel = subscription.channel.clone();
        self.call(FleetOp::Subscribe, async move {
            notifications.subscribe(&channel).await
        })
        .await?;
        Some(subscription)
    }
}

/// A local wait on one key's channel; leaving it unsubscribes (in the background).
struct Subscription {
    fleet: Arc<Fleet>,
    channel: String,
    announced: watch::Receiver<Option<bool>>,
    disconnects: watch::Receiver<u64>,
}

impl Subscription {
    /// The next announcement (`true`: the answer was stored), or `None` at
    /// `until`, or at once if the notification connection dropped (an
    /// announcement may have been lost).
    async fn wait(&mut self, until: Instant) -> Option<bool> {
        tokio::select! {
            changed = self.announced.changed() => match changed {
                Ok(()) => *self.announced.borrow_and_update(),
                Err(_) => None,
            },
            _ = self.disconnects.changed() => None,
            () = tokio::time::sleep_until(until) => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The last local waiter removes the slot; a newer one may have taken
        // it over (then its receiver keeps the count above one).
        self.fleet
            .waiters
            .remove_if(&self.channel, |_, sender| sender.receiver_count() <= 1);
        let fleet = Arc::clone(&self.fleet);
        let channel = std::mem::take(&mut self.channel);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if fleet.waiters.contains_key(&channel) {
                    return;
                }
                let mut notifications = fleet.notifications.clone();
                // Not through the breaker: a notification connection being
                // re-established must not take the command path down with it.
                let left = fleet
                    .link
                    .run(fleet.lookup_timeout, async move {
                        notifications.unsubscribe(&channel).await
                    })
                    .await;
                if left.is_err() {
                    fleet.metrics.error(FleetOp::Subscribe);
                }
            });
        }
    }
}

/// The fetch lock for one key, held by this instance: renewed every third of
/// the lease while it lives. [`Lease::release`] announces the fetch's end
/// and deletes the lock; dropped without it (the fill task died), it
/// announces that nothing was stored, so waiters move on at once.
pub struct Lease {
    fleet: Arc<Fleet>,
    lock: String,
    channel: String,
    token: String,
    renewal: JoinHandle<()>,
    released: bool,
}

impl Lease {
    fn new(fleet: &Arc<Fleet>, key: &CacheKey, token: String) -> Lease {
        let lock = fleet.names.lock(key);
        let renewal = tokio::spawn(renew(Arc::clone(fleet), lock.clone(), token.clone()));
        Lease {
            fleet: Arc::clone(fleet),
            lock,
            channel: fleet.names.done(key),
            token,
            renewal,
            released: false,
        }
    }

    /// Ends the fetch: announces whether its answer was `stored` in the
    /// shared tier (call it after the write), then deletes the lock if this
    /// instance still holds it.
    pub async fn release(mut self, stored: bool) {
        self.released = true;
        self.renewal.abort();
        let (lock, channel, token) = (
            std::mem::take(&mut self.lock),
            std::mem::take(&mut self.channel),
            std::mem::take(&mut self.token),
        );
        let announcement = if stored { STORED } else { NOT_STORED };
        release(&self.fleet, lock, channel, token, announcement).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
        if self.released {
            return;
        }
        let (fleet, lock, channel, token) = (
            Arc::clone(&self.fleet),
            std::mem::take(&mut self.lock),
            std::mem::take(&mut self.channel),
            std::mem::take(&mut self.token),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&fleet, lock, channel, token, NOT_STORED).await });
        }
    }
}

async fn release(
    fleet: &Fleet,
    lock: String,
    channel: String,
    token: String,
    announcement: &'static [u8],
) {
    let mut commands = fleet.commands.clone();
    let scripts = Arc::clone(&fleet.scripts);
    let _: Option<i64> = fleet
        .call(FleetOp::Release, async move {
            scripts
                .release
                .key(&lock)
                .key(&channel)
                .arg(&token)
                .arg(announcement)
                .invoke_async(&mut commands)
                .await
        })
        .await;
}

/// Extends the lease every third of it while the holder is alive; stops
/// when the lock is no longer this holder's.
async fn renew(fleet: Arc<Fleet>, lock: String, token: String) {
    let lease = fleet.lock_lease;
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval_at(Instant::now() + lease / 3, lease / 3);
    loop {
        tick.tick().await;
        let mut commands = fleet.commands.clone();
        let scripts = Arc::clone(&fleet.scripts);
        let (lock_name, ballot) = (lock.clone(), token.clone());
        let renewed: Option<i64> = fleet
            .call(FleetOp::Renew, async move {
                scripts
                    .renew
                    .key(&lock_name)
                    .arg(&ballot)
                    .arg(lease_ms)
                    .invoke_async(&mut commands)
                    .await
            })
            .await;
        match renewed {
            Some(1) => {
                fleet.metrics.lease_renewals.inc();
            }
            Some(_) => {
                tracing::debug!(lock, "fleet: lost a fetch lock before the fetch ended");
                return;
            }
            // Redis unavailable: try again next time; the lease may lapse.
            None => {}
        }
    }
}
