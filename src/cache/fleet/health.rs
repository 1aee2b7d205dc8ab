//! Whether Redis is worth asking: a breaker over consecutive failures, so a
//! dead or hung Redis costs requests no latency, and one log line per change
//! of state rather than one per request.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::metrics::FleetOp;

/// Consecutive failures that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;

/// How long an open breaker skips Redis before letting requests try again.
const OPEN_FOR: Duration = Duration::from_millis(500);

/// The fleet's view of Redis.
pub(super) struct Health {
    /// Reference point for `open_until`.
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// Milliseconds after `epoch` until which calls are skipped.
    open_until: AtomicU64,
    /// Whether the last state logged (and exported) was "up".
    up: AtomicBool,
    /// Whether the purge channel is subscribed on the current notification connection.
    purge_subscribed: AtomicBool,
    gauge: Gauge,
}

impl Health {
    pub(super) fn new(gauge: Gauge) -> Health {
        Health {
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            up: AtomicBool::new(false),
            purge_subscribed: AtomicBool::new(false),
            gauge,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go to Redis now: not while the breaker is open.
    pub(super) fn allows(&self) -> bool {
        self.now_ms() >= self.open_until.load(Ordering::Relaxed)
    }

    /// Whether the fleet is in use (the last call, or probe, succeeded).
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A call succeeded: the breaker closes, and a fleet that was down is up.
    pub(super) fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if !self.up.swap(true, Ordering::Relaxed) {
            self.gauge.set(1);
            tracing::info!("fleet: Redis answers; sharing the cache and the fetch lock");
        }
    }

    /// A call failed: after [`FAILURES_TO_OPEN`] in a row the breaker opens
    /// and the instance runs on its own until a call succeeds again.
    pub(super) fn failed(&self, op: FleetOp, reason: &str) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < FAILURES_TO_OPEN {
            return;
        }
        let until = self.now_ms() + u64::try_from(OPEN_FOR.as_millis()).unwrap_or(u64::MAX);
        self.open_until.store(until, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            self.gauge.set(0);
            self.purge_subscribed.store(false, Ordering::Relaxed);
            tracing::warn!(
                op = op.as_str(),
                reason,
                "fleet: Redis unreachable; coalescing on this instance alone until it answers"
            );
        }
    }

    /// The notification connection dropped: its purge subscription is gone
    /// until the keeper (or the automatic resubscription) restores it.
    pub(super) fn notifications_lost(&self) {
        self.purge_subscribed.store(false, Ordering::Relaxed);
    }

    /// Whether the purge channel is known to be subscribed.
    pub(super) fn purge_subscribed(&self) -> bool {
        self.purge_subscribed.load(Ordering::Relaxed)
    }

    /// The purge channel was subscribed.
    pub(super) fn subscribed_purges(&self) {
        self.purge_subscribed.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn repeated_failures_open_the_breaker_for_a_while_and_a_success_closes_it() {
        let health = Health::new(Gauge::default());
        health.succeeded();
        assert!(health.is_up());
        for _ in 0..FAILURES_TO_OPEN - 1 {
            health.failed(FleetOp::Get, "refused");
        }
        assert!(health.allows() && health.is_up(), "not yet");
        health.failed(FleetOp::Get, "refused");
        assert!(!health.allows() && !health.is_up(), "open");
        tokio::time::advance(OPEN_FOR).await;
        assert!(health.allows(), "half-open after the pause");
        health.succeeded();
        assert!(health.allows() && health.is_up());
    }
}
