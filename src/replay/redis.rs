//! The record store of a fleet: claims and records in the fleet's Redis, so a
//! key is claimed once whichever instance its duplicates reach.
//!
//! One Redis key per record key, `P` being the fleet's `key_prefix`:
//!
//! | value | what |
//! |-------|------|
//! | `C` token fingerprint | a claim in flight, `PX lease`, renewed by its owner |
//! | `U` token fingerprint | a claim whose outcome is unknown, `PX lease`, never renewed |
//! | `R` record | the completed record ([`Record::encode`]), `PX ttl` |
//!
//! under `Pidempotency:<hex of the record key>`. Claiming is `SET NX PX`
//! (and, when that fails, what is there, in the same script); every change
//! an owner makes (renew, complete, release, declare unknown) is a script
//! that first checks the value is still the owner's own claim, so an owner
//! whose lease ran out never overwrites the next owner's claim or record.
//!
//! Every call runs on the link's I/O thread ([`RedisLink::run`]) within the
//! fleet's `lookup_timeout`; a failure is a [`StoreError`], which the proxy
//! answers with 503: without its store, an idempotency route never writes
//! unprotected.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::key::Fingerprint;
use super::{Held, Record, RecordKey, Slot, StoreError, Ticket};
use crate::config::FleetConfig;
use crate::redis_link::{LinkFailure, RedisLink};

/// The least time a record's write may take: a record can be as large as
/// `max_value_size`, and a write that gives up leaves the claim to lapse (409
/// for duplicates until then). No client waits on it: the owner's client
/// and local duplicates have their answer before it starts.
const WRITE_BOUND_FLOOR: Duration = Duration::from_secs(1);

const CLAIM: u8 = b'C';
const UNKNOWN: u8 = b'U';
const RECORD: u8 = b'R';

/// The scripts, loaded once per server by hash (`EVALSHA`; the `redis` crate
/// loads them again after a Redis restart).
struct Scripts {
    claim: Script,
    renew: Script,
    replace: Script,
    release: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            // KEYS: name. ARGV: claim, lease ms. Returns {won (1|0), the value
            // there, its remaining ms}.
            claim: Script::new(
                r"if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
                    return {1, '', 0}
                end
                return {0, redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}",
            ),
            // KEYS: name. ARGV: claim, lease ms.
            renew: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
                end
                return 0",
            ),
            // KEYS: name. ARGV: claim, new value, its time to live in ms.
            replace: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
                    return 1
                end
                return 0",
            ),
            // KEYS: name. ARGV: claim.
            release: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('DEL', KEYS[1])
                end
                return 0",
            ),
        }
    }
}

/// Claims and records in the fleet's Redis, through the instance's one
/// command connection.
pub struct RedisStore {
    link: Arc<RedisLink>,
    commands: ConnectionManager,
    prefix: String,
    bound: Duration,
    scripts: Arc<Scripts>,
}

impl RedisStore {
    /// A store on `link` (the fleet's, shared), naming its keys under
    /// `config.key_prefix` and bounding each call by `config.lookup_timeout`.
    pub fn new(link: Arc<RedisLink>, config: &FleetConfig) -> RedisStore {
        RedisStore {
            commands: link.commands(),
            link,
            prefix: config.key_prefix.clone(),
            bound: config.lookup_timeout,
            scripts: Arc::new(Scripts::new()),
        }
    }

    fn name(&self, key: &RecordKey) -> String {
        format!("{}idempotency:{}", self.prefix, key.hex())
    }

    /// Claims `key` for `ticket` for `lease`, or says what holds it.
    pub(super) async fn claim(
        &self,
        key: &RecordKey,
        ticket: &Ticket,
        lease: Duration,
    ) -> Result<Slot, StoreError> {
        let (name, claim) = (self.name(key), claim_value(CLAIM, ticket));
        let (mut commands, scripts) = (self.commands.clone(), Arc::clone(&self.scripts));
        // Until the answer is read here, the claim may exist without anyone
        // knowing it is theirs (the call timed out after Redis ran it, or the
        // request left meanwhile): then it is released, rather than holding
        // the key until its lease ends.
        let mut unheard = Unheard(Some(self.release_claim(name.clone(), claim.clone())));
        let (won, value, remaining_ms): (i64, Vec<u8>, i64) = self
            .link
            .run(self.bound, async move {
                scripts
                    .claim
                    .key(&name)
                    .arg(&claim)
                    .arg(millis(lease))
                    .invoke_async(&mut commands)
                    .await
            })
            .await?;
        unheard.0 = None;
        if won == 1 {
            return Ok(Slot::Claimed);
        }
        let remaining = Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0));
        slot_of(&value, remaining)
    }

    /// Extends `ticket`'s claim to `lease` from now; `false` when it is no
    /// longer its.
    pub(super) async fn renew(
        &self,
        key: &RecordKey,
        ticket: &Ticket,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let (name, claim) = (self.name(key), claim_value(CLAIM, ticket));
        let (mut commands, scripts) = (self.commands.clone(), Arc::clone(&self.scripts));
        let renewed: i64 = self
            .link
            .run(self.bound, async move {
                scripts
                    .renew
                    .key(&name)
                    .arg(&claim)
                    .arg(millis(lease))
                    .invoke_async(&mut commands)
                    .await
            })
            .await?;
        Ok(renewed == 1)
    }

    /// Replaces `ticket`'s claim with `record` for `ttl`; `false` when the
    /// claim is no longer its (nothing is written then).
    pub(super) async fn complete(
        &self,
        key: &RecordKey,
        ticket: &Ticket,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut value = Vec::with_capacity(1 + record.encoded_len());
        value.push(RECORD);
        value.extend(record.encode().map_err(|_| StoreError::Unencodable)?);
        let bound = self.bound.max(WRITE_BOUND_FLOOR);
        self.replace(key, ticket, value, ttl, bound).await
    }

    /// Declares `ticket`'s claim of unknown outcome: held `lease` from now,
    /// never renewed.
    pub(super) async fn mark_unknown(
        &self,
        key: &RecordKey,
        ticket: &Ticket,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let value = claim_value(UNKNOWN, ticket);
        self.replace(key, ticket, value, lease, self.bound).await
    }

    async fn replace(
        &self,
        key: &RecordKey,
        ticket: &Ticket,
        value: Vec<u8>,
        keep: Duration,
        bound: Duration,
    ) -> Result<bool, StoreError> {
        let (name, claim) = (self.name(key), claim_value(CLAIM, ticket));
        let (mut commands, scripts) = (self.commands.clone(), Arc::clone(&self.scripts));
        let replaced: i64 = self
            .link
            .run(bound, async move {
                scripts
                    .replace
                    .key(&name)
                    .arg(&claim)
                    .arg(value)
                    .arg(millis(keep))
                    .invoke_async(&mut commands)
                    .await
            })
            .await?;
        Ok(replaced == 1)
    }

    /// Deletes `ticket`'s claim, if it still holds it.
    pub(super) async fn release(&self, key: &RecordKey, ticket: &Ticket) -> Result<(), StoreError> {
        let release = self.release_claim(self.name(key), claim_value(CLAIM, ticket));
        release.await?;
        Ok(())
    }

    /// Deletes the claim `claim` under `name` if it is still there: a
    /// future that owns everything it needs, so it can also run on its own.
    fn release_claim(
        &self,
        name: String,
        claim: Vec<u8>,
    ) -> impl Future<Output = Result<i64, LinkFailure>> + Send + 'static {
        let (link, bound) = (Arc::clone(&self.link), self.bound);
        let (mut commands, scripts) = (self.commands.clone(), Arc::clone(&self.scripts));
        async move {
            link.run(bound, async move {
                scripts
                    .release
                    .key(&name)
                    .arg(&claim)
                    .invoke_async(&mut commands)
                    .await
            })
            .await
        }
    }
}

/// The release of a claim whose outcome was not heard, run in the
/// background if dropped while still set. Commands on the one connection run
/// in order, so it runs after the claim it undoes; owner-checked, it does
/// nothing if the claim was never made.
struct Unheard<F: Future<Output = Result<i64, LinkFailure>> + Send + 'static>(Option<F>);

impl<F: Future<Output = Result<i64, LinkFailure>> + Send + 'static> Drop for Unheard<F> {
    fn drop(&mut self) {
        if let Some(release) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(release);
        }
    }
}

/// A claim's value: its state's tag, the owner's token and the fingerprint
/// of the request it stands for.
fn claim_value(tag: u8, ticket: &Ticket) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + 16 + 32);
    value.push(tag);
    value.extend_from_slice(&ticket.token.to_be_bytes());
    value.extend_from_slice(ticket.fingerprint.as_bytes());
    value
}

/// What a value found under a record key says, `remaining` being its time to live.
fn slot_of(value: &[u8], remaining: Duration) -> Result<Slot, StoreError> {
    match value.split_first() {
        Some((&RECORD, record)) => Record::decode(record)
            .map(|record| Slot::Recorded(Arc::new(record)))
            .map_err(|_| StoreError::Corrupt),
        Some((&tag @ (CLAIM | UNKNOWN), rest)) => {
            let fingerprint: [u8; 32] = rest
                .get(16..)
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or(StoreError::Corrupt)?;
            Ok(Slot::Held(Held {
                fingerprint: Fingerprint::from_bytes(fingerprint),
                unknown: tag == UNKNOWN,
                remaining,
            }))
        }
        _ => Err(StoreError::Corrupt),
    }
}

/// `duration` in whole milliseconds, at least 1 (`PX 0` is an error).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::*;

    #[test]
    fn values_read_back_as_what_they_stand_for() {
        let ticket = Ticket::new(Fingerprint::from_bytes([9; 32]));
        let second = Duration::from_secs(1);
        for (tag, unknown) in [(CLAIM, false), (UNKNOWN, true)] {
            match slot_of(&claim_value(tag, &ticket), second) {
                Ok(Slot::Held(held)) => {
                    assert_eq!(held.fingerprint, ticket.fingerprint);
                    assert_eq!(held.unknown, unknown);
                    assert_eq!(held.remaining, second);
                }
                other => panic!("{other:?}"),
            }
        }
        let record = Record::new(
            StatusCode::OK,
            HeaderMap::new(),
            Some(Bytes::from_static(b"x")),
            ticket.fingerprint,
        );
        let mut value = vec![RECORD];
        value.extend(record.encode().unwrap());
        assert!(matches!(slot_of(&value, second), Ok(Slot::Recorded(r)) if *r == record));
        for corrupt in [&b""[..], b"X", b"Cshort", b"Rnot a record"] {
            assert!(
                matches!(slot_of(corrupt, second), Err(StoreError::Corrupt)),
                "{corrupt:?}"
            );
        }
    }
}
