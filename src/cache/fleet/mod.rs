//! The fleet: a cache tier and a fetch lock shared by every corral instance
//! through Redis (or Valkey), so a fleet makes one origin request per key.
//!
//! One [`Fleet`] per instance holds two auto-reconnecting connections
//! (the `redis` crate's `ConnectionManager`, RESP3): one multiplexed for
//! commands, one for notifications (pub/sub, resubscribed by itself after a
//! reconnect). Never a connection per waiter.
//!
//! Redis is an optimisation, never a dependency of an answer: every call is
//! bounded by `lookup_timeout`, any failure reads as "no fleet for this
//! request" (a miss, no lock, nothing stored), and after repeated failures a
//! breaker skips Redis for a while so a dead Redis costs no latency. The
//! instance goes back to the fleet by itself once Redis answers again.
//! State changes are logged once, not per request.
//!
//! Redis I/O runs on the link's own thread ([`crate::redis_link`]).
//!
//! The names it uses are in [`names`]; the election in [`lock`].

mod health;
mod lock;
mod names;

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use dashmap::DashMap;
use http::header::HeaderMap;
use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, RedisResult, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use lock::{FleetClaim, Lease};

use super::entry::CachedResponse;
use super::key::CacheKey;
use super::memory::HotCache;
use super::tier::{Purge, Tier, TierFuture};
use super::wire;
use crate::config::{FleetConfig, FreshnessPolicy};
use crate::metrics::{FleetMetrics, FleetOp};
use crate::redis_link::{LinkError, RedisLink};
use health::Health;
use names::Names;

/// How long an admin purge may spend scanning Redis.
const PURGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the keeper checks a fleet that is down, and re-subscribes the
/// purge channel when it is not subscribed.
const KEEPER_INTERVAL: Duration = Duration::from_millis(250);

/// Why a fleet could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The `redis` URL is unusable, or the I/O thread could not start.
    #[error("fleet.redis: {0}")]
    Link(#[from] LinkError),
}

/// What one instance sends every other on the purge channel.
#[derive(Debug, Serialize, Deserialize)]
struct PurgeMessage {
    /// The sending instance (it has already applied the purge).
    from: String,
    /// Paths (with query) removed on every authority.
    #[serde(default)]
    exact: Vec<String>,
    /// Path prefixes removed on every authority.
    #[serde(default)]
    prefixes: Vec<String>,
    /// Encoded cache keys removed.
    #[serde(default)]
    keys: Vec<String>,
}

/// One instance's membership of the fleet. Cheap to share (`Arc`); its
/// background tasks end when the last `Arc` goes.
pub struct Fleet {
    link: Arc<RedisLink>,
    commands: ConnectionManager,
    notifications: ConnectionManager,
    names: Names,
    lookup_timeout: Duration,
    lock_lease: Duration,
    max_value_size: usize,
    health: Health,
    /// Local waits for another instance's fetch, by the channel they listen
    /// on: the dispatcher forwards each notification to its waiter.
    waiters: DashMap<String, watch::Sender<Option<bool>>>,
    /// Bumped whenever the notification connection drops: waiters re-check
    /// at once, since a notification may have been lost.
    disconnects: watch::Sender<u64>,
    /// This instance's copy of the cache, which purges from other instances drop.
    local: HotCache,
    /// Identifies this instance's own purge messages.
    instance: String,
    metrics: FleetMetrics,
    scripts: Arc<lock::Scripts>,
}

impl Fleet {
    /// Joins the fleet `config` describes, with `local` as this instance's
    /// cache (what fleet-wide purges remove from here). Connects lazily and
    /// never fails for an unreachable Redis: until it answers, the instance
    /// runs on its own. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`FleetError::Url`] when `config.redis` is absent or not a Redis URL.
    pub fn start(
        config: &FleetConfig,
        local: HotCache,
        metrics: FleetMetrics,
    ) -> Result<Arc<Fleet>, FleetError> {
        let url = config.redis.as_ref().map(|url| url.get_ref().as_str());
        let (pushes, pushed) = mpsc::unbounded_channel::<PushInfo>();
        let (link, notifications) =
            RedisLink::open(url.unwrap_or_default(), config.lookup_timeout, pushes)?;
        let commands = link.commands();
        metrics.up.set(0);
        let fleet = Arc::new(Fleet {
            link: Arc::new(link),
            commands,
            notifications,
            names: Names::new(&config.key_prefix),
            lookup_timeout: config.lookup_timeout,
            lock_lease: config.lock_lease,
            max_value_size: usize::try_from(config.max_value_size.as_u64()).unwrap_or(usize::MAX),
            health: Health::new(metrics.up.clone()),
            waiters: DashMap::new(),
            disconnects: watch::Sender::new(0),
            local,
            instance: format!("{:032x}", fastrand::u128(..)),
            metrics,
            scripts: Arc::new(lock::Scripts::new()),
        });
        tokio::spawn(dispatch(Arc::downgrade(&fleet), pushed));
        tokio::spawn(keep(Arc::downgrade(&fleet)));
        Ok(fleet)
    }

    /// The most any one Redis round trip may add to a request.
    pub fn lookup_timeout(&self) -> Duration {
        self.lookup_timeout
    }

    /// The fleet's metric handles.
    pub fn metrics(&self) -> &FleetMetrics {
        &self.metrics
    }

    /// Runs one Redis operation under the lookup timeout and the breaker:
    /// `None` when it was skipped, failed or timed out (counted under `op`).
    async fn call<T: Send + 'static>(
        &self,
        op: FleetOp,
        operation: impl Future<Output = RedisResult<T>> + Send + 'static,
    ) -> Option<T> {
        self.call_within(op, self.lookup_timeout, operation).await
    }

    async fn call_within<T: Send + 'static>(
        &self,
        op: FleetOp,
        bound: Duration,
        operation: impl Future<Output = RedisResult<T>> + Send + 'static,
    ) -> Option<T> {
        if !self.health.allows() {
            self.metrics.error(FleetOp::Skipped);
            return None;
        }
        let started = Instant::now();
        match self.link.run(bound, operation).await {
            Ok(value) => {
                self.metrics.round_trip(op, started.elapsed());
                self.health.succeeded();
                Some(value)
            }
            Err(failure) => {
                self.metrics.error(op);
                self.health.failed(op, &failure.to_string());
                None
            }
        }
    }

    /// The link to Redis, for other users of the same connections (the
    /// idempotency store).
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    /// The entry stored under `key`, decoded and placed on this process's
    /// clock under `policy`, if it is there, decodes, and is the variant
    /// `request` selects. A value that does not decode is counted and read
    /// as a miss (the next fill replaces it).
    async fn get(
        &self,
        key: &CacheKey,
        request: &HeaderMap,
        policy: &FreshnessPolicy,
    ) -> Option<Arc<CachedResponse>> {
        let name = self.names.entry(key);
        let mut commands = self.commands.clone();
        let value: Option<Vec<u8>> = self
            .call(FleetOp::Get, async move {
                redis::cmd("GET")
                    .arg(&name)
                    .query_async(&mut commands)
                    .await
            })
            .await?;
        self.decode(value?, request, policy)
    }

    /// `value` (an entry name's contents) as an entry for `request`, if it is one.
    fn decode(
        &self,
        value: Vec<u8>,
        request: &HeaderMap,
        policy: &FreshnessPolicy,
    ) -> Option<Arc<CachedResponse>> {
        let wire = match wire::decode(&Bytes::from(value)) {
            Ok(wire) => wire,
            Err(error) => {
                self.metrics.error(FleetOp::Decode);
                tracing::debug!(%error, "fleet: a shared entry does not decode; read as a miss");
                return None;
            }
        };
        let entry = CachedResponse::from_wire(wire, policy, Instant::now(), SystemTime::now());
        entry.variant.matches(request).then(|| Arc::new(entry))
    }

    /// Announces a purge to every other instance (they drop their copies).
    async fn announce_purge(&self, exact: &[String], prefixes: &[String], keys: Vec<String>) {
        let message = PurgeMessage {
            from: self.instance.clone(),
            exact: exact.to_vec(),
            prefixes: prefixes.to_vec(),
            keys,
        };
        let Ok(payload) = serde_json::to_vec(&message) else {
            return;
        };
        let channel = self.names.purge_channel();
        let mut commands = self.commands.clone();
        let _: Option<i64> = self
            .call(FleetOp::Purge, async move {
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(payload)
                    .query_async(&mut commands)
                    .await
            })
            .await;
    }

    /// Applies another instance's purge to this instance's cache.
    fn apply_purge(&self, payload: &[u8]) {
        let Ok(message) = serde_json::from_slice::<PurgeMessage>(payload) else {
            tracing::debug!("fleet: a purge message that is not corral's; ignored");
            return;
        };
        if message.from == self.instance {
            return;
        }
        if !message.exact.is_empty() || !message.prefixes.is_empty() {
            self.local.purge(&message.exact, &message.prefixes);
        }
        for key in message.keys.iter().filter_map(|key| CacheKey::decode(key)) {
            self.local.invalidate(&key);
        }
    }

    /// Entry names under the prefix whose path is one of `exact` or starts
    /// with one of `prefixes`, from a `SCAN` of the whole keyspace (an admin
    /// operation), then removed.
    async fn remove_matching(
        mut commands: ConnectionManager,
        names: Names,
        exact: Vec<String>,
        prefixes: Vec<String>,
    ) -> RedisResult<usize> {
        let pattern = names.entry_pattern();
        let mut cursor: u64 = 0;
        let mut doomed = Vec::new();
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut commands)
                .await?;
            doomed.extend(found.into_iter().filter(|name| {
                names.key_of_entry(name).is_some_and(|key| {
                    let path = key.path_and_query();
                    exact.iter().any(|e| e == path)
                        || prefixes.iter().any(|p| path.starts_with(p.as_str()))
                })
            }));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for batch in doomed.chunks(500) {
            let _: i64 = redis::cmd("UNLINK")
                .arg(batch)
                .query_async(&mut commands)
                .await?;
        }
        Ok(doomed.len())
    }
}

impl Tier for Fleet {
    fn lookup<'a>(
        &'a self,
        key: &'a CacheKey,
        request: &'a HeaderMap,
        policy: &'a FreshnessPolicy,
    ) -> TierFuture<'a, Option<Arc<CachedResponse>>> {
        Box::pin(self.get(key, request, policy))
    }

    /// Writes `entry` with a time to live of its remaining freshness plus its
    /// stale windows; larger than `max_value_size` encoded, it is not written.
    fn store<'a>(
        &'a self,
        key: &'a CacheKey,
        entry: &'a Arc<CachedResponse>,
        _request: &'a HeaderMap,
        policy: &'a FreshnessPolicy,
    ) -> TierFuture<'a, bool> {
        Box::pin(async move {
            let wire = entry.to_wire(policy);
            let remaining = wire
                .lifetime
                .saturating_sub(entry.current_age(Instant::now()));
            let keep = remaining + wire.stale_while_revalidate.max(wire.stale_if_error);
            let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1);
            let too_large = wire::encoded_len(&wire).is_ok_and(|len| len > self.max_value_size);
            if too_large {
                return false;
            }
            let Ok(value) = wire::encode(&wire) else {
                return false;
            };
            let name = self.names.entry(key);
            let mut commands = self.commands.clone();
            let written: Option<()> = self
                .call(FleetOp::Set, async move {
                    redis::cmd("SET")
                        .arg(&name)
                        .arg(value.as_ref())
                        .arg("PX")
                        .arg(keep_ms)
                        .query_async(&mut commands)
                        .await
                })
                .await;
            written.is_some()
        })
    }

    /// Removes `key`'s entry from Redis, and tells every instance to drop its copy.
    fn invalidate<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, ()> {
        Box::pin(async move {
            let name = self.names.entry(key);
            let mut commands = self.commands.clone();
            let _: Option<i64> = self
                .call(FleetOp::Purge, async move {
                    redis::cmd("UNLINK")
                        .arg(&name)
                        .query_async(&mut commands)
                        .await
                })
                .await;
            self.announce_purge(&[], &[], vec![key.as_str().to_owned()])
                .await;
        })
    }

    /// Removes every matching entry from Redis (resolving to how many), and
    /// tells every other instance to purge its own cache the same way.
    fn purge<'a>(&'a self, purge: Purge<'a>) -> TierFuture<'a, usize> {
        Box::pin(async move {
            let announced = self.announce_purge(purge.exact, purge.prefixes, Vec::new());
            let removed = Fleet::remove_matching(
                self.commands.clone(),
                self.names.clone(),
                purge.exact.to_vec(),
                purge.prefixes.to_vec(),
            );
            let (removed, ()) = tokio::join!(
                self.call_within(FleetOp::Purge, PURGE_TIMEOUT, removed),
                announced
            );
            removed.unwrap_or(0)
        })
    }
}

/// Forwards pushed messages: a key's notification to its waiter, a purge
/// to this instance's cache; a dropped notification connection wakes every
/// waiter to re-check. Ends with the fleet.
async fn dispatch(fleet: Weak<Fleet>, mut pushed: mpsc::UnboundedReceiver<PushInfo>) {
    while let Some(push) = pushed.recv().await {
        let Some(fleet) = fleet.upgrade() else {
            return;
        };
        match push.kind {
            PushKind::Message => {
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    continue;
                };
                let channel = String::from_utf8_lossy(&channel);
                if channel == fleet.names.purge_channel() {
                    fleet.apply_purge(&payload);
                } else if let Some(waiter) = fleet.waiters.get(channel.as_ref()) {
                    waiter.send_replace(Some(payload.as_slice() == lock::STORED));
                }
            }
            PushKind::Disconnection => {
                fleet.disconnects.send_modify(|count| *count += 1);
                fleet.health.notifications_lost();
            }
            _ => {}
        }
    }
}

/// Keeps the notification connection subscribed to the purge channel, and
/// probes a fleet that is down so it comes back without waiting for traffic.
async fn keep(fleet: Weak<Fleet>) {
    let mut tick = tokio::time::interval(KEEPER_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(fleet) = fleet.upgrade() else {
            return;
        };
        let bound = fleet.lookup_timeout.max(KEEPER_INTERVAL);
        if !fleet.health.is_up() {
            let mut commands = fleet.commands.clone();
            let probe = async move { redis::cmd("PING").query_async::<()>(&mut commands).await };
            if fleet.link.run(bound, probe).await.is_ok() {
                fleet.health.succeeded();
            }
        }
        if fleet.health.is_up() && !fleet.health.purge_subscribed() {
            let mut notifications = fleet.notifications.clone();
            let channel = fleet.names.purge_channel();
            let subscribe = async move { notifications.subscribe(&channel).await };
            if fleet.link.run(bound, subscribe).await.is_ok() {
                fleet.health.subscribed_purges();
            }
        }
    }
}
