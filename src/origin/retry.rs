//! When to try an origin request again, and when not to: exponential backoff
//! with full jitter, a retry budget that caps retries at a fraction of the
//! origin traffic, `Retry-After` parsing, and the gate that holds every
//! request back until an origin's `Retry-After` has expired.
//!
//! Everything here is pure or a short critical section; times come from
//! tokio's clock (passed in, or `tokio::time::Instant`), so paused-time tests
//! are exact.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::window::SlidingWindow;

/// Exponential backoff with full jitter: the delay before retry `n` (0-based)
/// is uniform in `[0, min(cap, base × 2ⁿ)]`, so retries from many requests
/// spread out instead of arriving at the origin together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// Backoff starting at `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap }
    }

    /// The largest delay before retry `attempt` (0 is the first retry):
    /// `min(cap, base × 2^attempt)`, without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before retry `attempt` for a uniform `unit` in `[0, 1]`
    /// (clamped): `unit × ceiling(attempt)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        self.ceiling(attempt).mul_f64(unit)
    }

    /// The delay before retry `attempt`, drawn at random (full jitter).
    pub fn jittered(&self, attempt: u32) -> Duration {
        self.delay(attempt, fastrand::f64())
    }
}

/// Counter indexes in the budget's window.
const REQUESTS: usize = 0;
const RETRIES: usize = 1;

/// Caps retries at `ratio` × the requests sent over a sliding window, so that
/// retries can add at most that fraction to origin traffic: when an origin is
/// down, retrying cannot multiply its load.
///
/// Strict: with no requests in the window there is nothing to spend, so a
/// quiet origin's first failures are not retried until enough requests have
/// been seen (`1 / ratio` of them for one retry).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    window: SlidingWindow,
}

impl RetryBudget {
    /// A budget of `ratio` retries per request over `window`. A negative or
    /// non-finite ratio allows no retries.
    pub fn new(ratio: f64, window: Duration, now: Instant) -> RetryBudget {
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            ratio
        } else {
            0.0
        };
        RetryBudget {
            ratio,
            window: SlidingWindow::new(window, now),
        }
    }

    /// Records one first attempt (not a retry) sent at `now`.
    pub fn record_request(&mut self, now: Instant) {
        self.window.add(now, REQUESTS, 1);
    }

    /// Takes one retry from the budget if it allows one at `now`.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let [requests, retries] = self.window.totals(now);
        // A small epsilon so that 0.2 × 5 allows exactly one retry despite rounding.
        let allowed = self.ratio * requests as f64 + 1e-9;
        if (retries + 1) as f64 <= allowed {
            self.window.add(now, RETRIES, 1);
            true
        } else {
            false
        }
    }
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an
/// HTTP-date in any of the three forms a recipient must accept, in any case
/// ([`crate::http::date::parse_http_date`]), read against the wall clock `now`. A date in the past means no
/// wait. `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only an absurdly long value fails to parse; treat it as "very long".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = crate::http::date::parse_http_date(value)?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Holds every request to an origin back until the time its last
/// `Retry-After` named. Closing only ever extends the pause.
#[derive(Debug, Default)]
pub struct RetryAfterGate {
    until: Mutex<Option<Instant>>,
}

impl RetryAfterGate {
    /// An open gate.
    pub fn new() -> RetryAfterGate {
        RetryAfterGate::default()
    }

    /// Keeps the gate closed until `until`, unless it already is for longer.
    /// Returns whether this call extended the pause.
    pub fn close_until(&self, until: Instant) -> bool {
        let mut current = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        match *current {
            Some(existing) if existing >= until => false,
            _ => {
                *current = Some(until);
                true
            }
        }
    }

    /// How long the gate stays closed after `now`; `None` when it is open.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        let until = *self.until.lock().unwrap_or_else(PoisonError::into_inner);
        until.filter(|until| *until > now).map(|until| until - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap() {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let ceilings: Vec<u128> = (0..7).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [50, 100, 200, 400, 800, 1000, 1000]);
        // No overflow however many attempts.
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(1));
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.ceiling(40), Duration::MAX);
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling() {
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(300));
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 0..20 {
            let ceiling = backoff.ceiling(attempt);
            assert!(ceiling <= Duration::from_millis(300));
            for _ in 0..200 {
                let delay = backoff.delay(attempt, rng.f64());
                assert!(
                    delay <= ceiling,
                    "attempt {attempt}: {delay:?} > {ceiling:?}"
                );
            }
            assert!(backoff.jittered(attempt) <= ceiling);
        }
        assert_eq!(backoff.delay(3, 0.0), Duration::ZERO);
        assert_eq!(backoff.delay(3, 1.0), Duration::from_millis(80));
        assert_eq!(backoff.delay(3, 7.0), Duration::from_millis(80));
        assert_eq!(backoff.delay(3, -1.0), Duration::ZERO);
        assert_eq!(backoff.delay(3, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn full_jitter_uses_the_whole_range() {
        fastrand::seed(42);
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let draws: Vec<Duration> = (0..500).map(|_| backoff.jittered(0)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(20)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(80)));
    }

    #[test]
    fn budget_allows_its_ratio_of_the_requests_in_the_window() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.2, Duration::from_secs(10), t0);
        assert!(
            !budget.try_withdraw(t0),
            "nothing to spend before any request"
        );
        for _ in 0..4 {
            budget.record_request(t0);
        }
        assert!(!budget.try_withdraw(t0), "4 × 0.2 < 1");
        budget.record_request(t0);
        assert!(budget.try_withdraw(t0), "5 × 0.2 = 1");
        assert!(!budget.try_withdraw(t0), "spent");
        for _ in 0..5 {
            budget.record_request(t0);
        }
        assert!(budget.try_withdraw(t0));
        assert!(!budget.try_withdraw(t0));
    }

    #[test]
    fn budget_caps_retries_of_a_hard_down_origin() {
        // Every request fails and wants 3 retries: no more than 20% extra traffic.
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.2, Duration::from_secs(10), t0);
        let mut sent = 0u64;
        for i in 0..1_000u64 {
            let now = t0 + Duration::from_millis(i);
            budget.record_request(now);
            sent += 1;
            for _ in 0..3 {
                if budget.try_withdraw(now) {
                    sent += 1;
                }
            }
        }
        assert!(sent <= 1_200, "{sent}");
        assert!(sent >= 1_190, "{sent}");
    }

    #[test]
    fn budget_is_regained_as_the_window_slides() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(1.0, Duration::from_secs(1), t0);
        budget.record_request(t0);
        assert!(budget.try_withdraw(t0));
        assert!(!budget.try_withdraw(t0));
        let later = t0 + Duration::from_secs(2);
        assert!(!budget.try_withdraw(later), "old requests no longer count");
        budget.record_request(later);
        assert!(budget.try_withdraw(later));
    }

    #[test]
    fn budget_with_no_ratio_never_retries() {
        let t0 = Instant::now();
        for ratio in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut budget = RetryBudget::new(ratio, Duration::from_secs(1), t0);
            for _ in 0..100 {
                budget.record_request(t0);
            }
            assert!(!budget.try_withdraw(t0), "{ratio}");
        }
    }

    fn at(secs: u64) -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 1994-11-06T08:49:37Z, the RFC's example date.
    const RFC_EXAMPLE: u64 = 784_111_777;

    #[test]
    fn retry_after_seconds() {
        let now = at(RFC_EXAMPLE);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-5", "1.5", "5s", "soon"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_http_date_in_all_three_forms() {
        let now = at(RFC_EXAMPLE - 90);
        for date in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_retry_after(date, now),
                Some(Duration::from_secs(90)),
                "{date:?}"
            );
        }
        // A date already past means "no wait", not "ignore".
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at(RFC_EXAMPLE + 5)),
            Some(Duration::ZERO)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gate_holds_requests_until_retry_after_expires() {
        let gate = RetryAfterGate::new();
        let start = Instant::now();
        assert_eq!(gate.remaining(start), None);
        // A 429 with `Retry-After: 2`.
        let pause = parse_retry_after("2", SystemTime::now()).unwrap();
        assert!(gate.close_until(start + pause));
        assert_eq!(gate.remaining(Instant::now()), Some(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert_eq!(
            gate.remaining(Instant::now()),
            Some(Duration::from_millis(1))
        );
        // A shorter pause does not shorten it.
        assert!(!gate.close_until(Instant::now() + Duration::from_millis(1)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(gate.remaining(Instant::now()), None);
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }
}
