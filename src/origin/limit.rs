//! Back-pressure toward the origin: at most `max_concurrent` requests in
//! flight; past that, requests wait in a bounded FIFO queue for at most
//! `queue_timeout`; past that, they are shed at once.
//!
//! A permit is held from just before a request is sent until its response
//! body has been read or dropped, so the origin never has more than
//! `max_concurrent` of corral's requests to work on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a request was shed instead of sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Every slot was busy and the queue was full.
    QueueFull,
    /// The request waited in the queue for `queue_timeout` (or until its own
    /// deadline) without a slot coming free.
    QueueTimeout,
}

/// The metric handles a limit keeps up to date.
#[derive(Debug, Clone)]
pub struct LimitGauges {
    /// Requests holding a slot now.
    pub in_flight: Gauge,
    /// Requests waiting in the queue now.
    pub queued: Gauge,
    /// How long queued requests waited, whether or not they got a slot.
    pub queue_wait: Histogram,
}

/// One origin's concurrency limit and queue.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    /// Requests in the queue now; only ever changed through [`QueuePlace`].
    queued: AtomicUsize,
    queue_depth: usize,
    queue_timeout: Duration,
    gauges: LimitGauges,
}

impl ConcurrencyLimit {
    /// A limit of `max_concurrent` (at least 1) with a queue of `queue_depth`
    /// places, each waited in for at most `queue_timeout`.
    pub fn new(
        max_concurrent: usize,
        queue_depth: usize,
        queue_timeout: Duration,
        gauges: LimitGauges,
    ) -> ConcurrencyLimit {
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        ConcurrencyLimit {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            queued: AtomicUsize::new(0),
            queue_depth,
            queue_timeout,
            gauges,
        }
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Takes a slot: at once if one is free, else after waiting in the queue
    /// (first come, first served) until `queue_timeout` or `deadline`,
    /// whichever is sooner. Cancel-safe: a caller that goes away leaves its
    /// queue place.
    ///
    /// # Errors
    /// [`Shed::QueueFull`] when the queue has no place, [`Shed::QueueTimeout`]
    /// when no slot came free in time.
    pub async fn acquire(&self, deadline: Instant) -> Result<LimitPermit, Shed> {
        // A free slot only exists when nobody is queued: the semaphore hands
        // released slots to waiters first.
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(self.permit(slot));
        }
        let _place = QueuePlace::take(self).ok_or(Shed::QueueFull)?;
        let started = Instant::now();
        let give_up = (started + self.queue_timeout).min(deadline);
        let waited =
            tokio::time::timeout_at(give_up, Arc::clone(&self.slots).acquire_owned()).await;
        self.gauges
            .queue_wait
            .observe(started.elapsed().as_secs_f64());
        match waited {
            Ok(Ok(slot)) => Ok(self.permit(slot)),
            // The semaphore is never closed; treat it like a timeout if it were.
            Ok(Err(_)) | Err(_) => Err(Shed::QueueTimeout),
        }
    }

    fn permit(&self, slot: OwnedSemaphorePermit) -> LimitPermit {
        self.gauges.in_flight.inc();
        LimitPermit {
            _slot: slot,
            in_flight: self.gauges.in_flight.clone(),
        }
    }
}

/// A place in the queue, given back however the wait ends.
struct QueuePlace<'a> {
    limit: &'a ConcurrencyLimit,
}

impl<'a> QueuePlace<'a> {
    fn take(limit: &'a ConcurrencyLimit) -> Option<QueuePlace<'a>> {
        limit
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |queued| {
                (queued < limit.queue_depth).then_some(queued + 1)
            })
            .ok()?;
        limit.gauges.queued.inc();
        Some(QueuePlace { limit })
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.limit.queued.fetch_sub(1, Ordering::SeqCst);
        self.limit.gauges.queued.dec();
    }
}

/// One request's slot toward the origin; freed when dropped.
#[derive(Debug)]
pub struct LimitPermit {
    _slot: OwnedSemaphorePermit,
    in_flight: Gauge,
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAR: Duration = Duration::from_secs(3600);

    fn limit(max: usize, depth: usize, timeout: Duration) -> ConcurrencyLimit {
        let gauges = LimitGauges {
            in_flight: Gauge::default(),
            queued: Gauge::default(),
            queue_wait: Histogram::new([0.1, 1.0]),
        };
        ConcurrencyLimit::new(max, depth, timeout, gauges)
    }

    #[tokio::test(start_paused = true)]
    async fn free_slots_are_taken_at_once_then_queue_then_shed() {
        let limit = Arc::new(limit(2, 1, Duration::from_secs(5)));
        let deadline = Instant::now() + FAR;
        let a = limit.acquire(deadline).await.unwrap();
        let _b = limit.acquire(deadline).await.unwrap();
        assert_eq!(limit.in_flight(), 2);
        assert_eq!(limit.gauges.in_flight.get(), 2);

        let queued = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.acquire(deadline).await.map(|_| ()) }
        });
        while limit.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(limit.gauges.queued.get(), 1);
        assert_eq!(limit.acquire(deadline).await.unwrap_err(), Shed::QueueFull);

        drop(a);
        assert_eq!(queued.await.unwrap(), Ok(()));
        assert_eq!(limit.queued(), 0);
        assert_eq!(limit.gauges.queued.get(), 0);
        assert_eq!(limit.in_flight(), 1, "the queued request's slot was freed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gives_up_after_the_queue_timeout() {
        let limit = limit(1, 4, Duration::from_secs(5));
        let _held = limit.acquire(Instant::now() + FAR).await.unwrap();
        let started = Instant::now();
        let shed = limit.acquire(started + FAR).await.unwrap_err();
        assert_eq!(shed, Shed::QueueTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(limit.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gives_up_at_its_deadline_if_sooner() {
        let limit = limit(1, 4, Duration::from_secs(5));
        let _held = limit.acquire(Instant::now() + FAR).await.unwrap();
        let started = Instant::now();
        let shed = limit
            .acquire(started + Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(shed, Shed::QueueTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn no_queue_means_shed_at_once() {
        let limit = limit(1, 0, Duration::from_secs(5));
        let _held = limit.acquire(Instant::now() + FAR).await.unwrap();
        let started = Instant::now();
        assert_eq!(
            limit.acquire(started + FAR).await.unwrap_err(),
            Shed::QueueFull
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_leaves_its_queue_place() {
        let limit = limit(1, 1, FAR);
        let _held = limit.acquire(Instant::now() + FAR).await.unwrap();
        let wait = limit.acquire(Instant::now() + FAR);
        let cancelled = tokio::time::timeout(Duration::from_millis(10), wait).await;
        assert!(cancelled.is_err());
        assert_eq!(limit.queued(), 0);
        assert_eq!(limit.gauges.queued.get(), 0);
    }
}
