//! A pair of counters over a sliding window of time, kept as a ring of
//! buckets: the retry budget counts (requests, retries) in one, the circuit
//! breaker (successes, failures) in another.
//!
//! Pure: the caller passes `now` (tokio's clock), so tests drive time exactly.

use std::time::Duration;

use tokio::time::Instant;

/// Buckets per window. The window slides in steps of `window / BUCKETS`, so a
/// count leaves the sum between `window - window / BUCKETS` and `window` after
/// it was added.
const BUCKETS: usize = 10;

/// Marks a bucket that has never been written.
const UNUSED: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Which step of time (since `SlidingWindow::start`) the counts belong to.
    step: u64,
    counts: [u64; 2],
}

/// Two counters summed over the last `window` of time.
#[derive(Debug, Clone)]
pub(crate) struct SlidingWindow {
    start: Instant,
    step_nanos: u128,
    buckets: [Bucket; BUCKETS],
}

impl SlidingWindow {
    /// An empty window of length `window` (at least one nanosecond per bucket).
    pub(crate) fn new(window: Duration, now: Instant) -> SlidingWindow {
        let step_nanos = (window.as_nanos() / BUCKETS as u128).max(1);
        SlidingWindow {
            start: now,
            step_nanos,
            buckets: [Bucket {
                step: UNUSED,
                counts: [0; 2],
            }; BUCKETS],
        }
    }

    fn step(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(elapsed / self.step_nanos).unwrap_or(UNUSED - 1)
    }

    /// Adds `n` to counter `which` (0 or 1) at `now`.
    pub(crate) fn add(&mut self, now: Instant, which: usize, n: u64) {
        let step = self.step(now);
        let bucket = &mut self.buckets[(step % BUCKETS as u64) as usize];
        if bucket.step != step {
            *bucket = Bucket {
                step,
                counts: [0; 2],
            };
        }
        if let Some(count) = bucket.counts.get_mut(which) {
            *count = count.saturating_add(n);
        }
    }

    /// Both counters summed over the window ending at `now`.
    pub(crate) fn totals(&self, now: Instant) -> [u64; 2] {
        let current = self.step(now);
        self.buckets
            .iter()
            .filter(|b| {
                b.step != UNUSED
                    && current
                        .checked_sub(b.step)
                        .is_some_and(|age| age < BUCKETS as u64)
            })
            .fold([0, 0], |[a, b], bucket| {
                [
                    a.saturating_add(bucket.counts[0]),
                    b.saturating_add(bucket.counts[1]),
                ]
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_leave_the_window_after_it_has_passed() {
        let t0 = Instant::now();
        let mut window = SlidingWindow::new(Duration::from_secs(10), t0);
        window.add(t0, 0, 3);
        window.add(t0 + Duration::from_secs(5), 1, 2);
        assert_eq!(window.totals(t0 + Duration::from_secs(5)), [3, 2]);
        assert_eq!(window.totals(t0 + Duration::from_millis(9_999)), [3, 2]);
        // The first bucket has slid out, the second has not.
        assert_eq!(window.totals(t0 + Duration::from_secs(10)), [0, 2]);
        assert_eq!(window.totals(t0 + Duration::from_secs(15)), [0, 0]);
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let t0 = Instant::now();
        let mut window = SlidingWindow::new(Duration::from_secs(1), t0);
        window.add(t0, 0, 7);
        // Same ring slot, one full window later.
        window.add(t0 + Duration::from_secs(1), 0, 1);
        assert_eq!(window.totals(t0 + Duration::from_secs(1)), [1, 0]);
    }
}
