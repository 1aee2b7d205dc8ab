//! The circuit breaker: a pure Closed/Open/HalfOpen state machine fed with
//! request outcomes ([`CircuitBreaker`]), and the shared handle the origin
//! client uses ([`Breaker`]), which logs every transition and keeps the
//! `corral_circuit_state` gauge.
//!
//! - **Closed**: requests flow; outcomes are counted over a sliding window.
//!   When at least `min_requests` outcomes are in the window and the share of
//!   failures reaches `failure_rate`, the breaker opens.
//! - **Open**: no request reaches the origin for `open_for`.
//! - **HalfOpen**: exactly one request (the probe) goes through. Its success
//!   closes the breaker with a fresh window; its failure reopens it. A probe
//!   that ends without an outcome (its caller went away) frees the probe slot
//!   for the next request.
//!
//! (In linkerd's vocabulary an "open gate" admits traffic; here, as in most
//! breakers, an *open circuit* admits none.)

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use super::window::SlidingWindow;

/// How long a request turned away while the probe is out is told to wait.
const PROBE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Counter indexes in the closed state's window.
const SUCCESSES: usize = 0;
const FAILURES: usize = 1;

/// The breaker's state, as logged and exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow to the origin.
    Closed,
    /// Requests are answered without the origin.
    Open,
    /// One probe request is allowed through to test the origin.
    HalfOpen,
}

impl CircuitState {
    /// Stable lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// The value of the `corral_circuit_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Share of failed outcomes in the window (0 to 1) that opens the breaker.
    pub failure_rate: f64,
    /// Fewest outcomes in the window before the rate is judged at all.
    pub min_requests: u64,
    /// Length of the sliding window outcomes are counted over.
    pub window: Duration,
    /// How long the breaker stays open before letting a probe through.
    pub open_for: Duration,
}

/// A change of state, reported so that it can be logged and exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: CircuitState,
    /// The state entered.
    pub to: CircuitState,
}

/// What the breaker tells one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go ahead.
    Pass,
    /// Half-open: go ahead as the one probe; the outcome decides the state.
    Probe,
    /// Do not contact the origin; it may be worth trying after this long.
    Reject(Duration),
}

#[derive(Debug, Clone)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The pure state machine. Callers pass `now` from tokio's clock.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    /// Outcomes while closed; started afresh each time the breaker closes.
    window: SlidingWindow,
    state: State,
}

impl CircuitBreaker {
    /// A closed breaker with an empty window.
    pub fn new(policy: BreakerPolicy, now: Instant) -> CircuitBreaker {
        CircuitBreaker {
            policy,
            window: SlidingWindow::new(policy.window, now),
            state: State::Closed,
        }
    }

    /// The current state (an open breaker whose time is up reads as open
    /// until the next [`admit`](Self::admit) moves it to half-open).
    pub fn state(&self) -> CircuitState {
        match self.state {
            State::Closed => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Decides whether a request may go to the origin at `now`.
    pub fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        match &mut self.state {
            State::Closed => (Admit::Pass, None),
            State::Open { until } if now < *until => (Admit::Reject(*until - now), None),
            State::Open { .. } => {
                self.state = State::HalfOpen { probing: true };
                (
                    Admit::Probe,
                    Some(Transition {
                        from: CircuitState::Open,
                        to: CircuitState::HalfOpen,
                    }),
                )
            }
            State::HalfOpen { probing: true } => (Admit::Reject(PROBE_RETRY_AFTER), None),
            State::HalfOpen { probing } => {
                *probing = true;
                (Admit::Probe, None)
            }
        }
    }

    /// Feeds the outcome of one admitted request (`probe`: it was admitted as
    /// the half-open probe). Outcomes of requests admitted before the breaker
    /// opened are ignored once it has.
    pub fn record(&mut self, now: Instant, probe: bool, success: bool) -> Option<Transition> {
        match &mut self.state {
            State::Closed => {
                if probe {
                    return None;
                }
                let outcome = if success { SUCCESSES } else { FAILURES };
                self.window.add(now, outcome, 1);
                let [successes, failures] = self.window.totals(now);
                let total = successes + failures;
                let tripped = !success
                    && total >= self.policy.min_requests.max(1)
                    && failures as f64 >= self.policy.failure_rate * total as f64;
                tripped.then(|| self.open(now, CircuitState::Closed))
            }
            State::HalfOpen { probing: true } if probe => Some(if success {
                self.state = State::Closed;
                self.window = SlidingWindow::new(self.policy.window, now);
                Transition {
                    from: CircuitState::HalfOpen,
                    to: CircuitState::Closed,
                }
            } else {
                self.open(now, CircuitState::HalfOpen)
            }),
            State::Open { .. } | State::HalfOpen { .. } => None,
        }
    }

    /// The probe ended without an outcome: let the next request probe.
    pub fn abandon_probe(&mut self) {
        if let State::HalfOpen { probing } = &mut self.state {
            *probing = false;
        }
    }

    fn open(&mut self, now: Instant, from: CircuitState) -> Transition {
        self.state = State::Open {
            until: now + self.policy.open_for,
        };
        Transition {
            from,
            to: CircuitState::Open,
        }
    }
}

/// One origin's breaker, shared by every request to it. Each transition is
/// logged and sets the state gauge; the lock is never held across an await.
#[derive(Debug)]
pub struct Breaker {
    origin: String,
    machine: Mutex<CircuitBreaker>,
    gauge: Gauge,
}

impl Breaker {
    /// A closed breaker for `origin` (its label in logs), reporting its state
    /// into `gauge`.
    pub fn new(origin: String, policy: BreakerPolicy, gauge: Gauge) -> Breaker {
        gauge.set(CircuitState::Closed.gauge_value());
        Breaker {
            origin,
            machine: Mutex::new(CircuitBreaker::new(policy, Instant::now())),
            gauge,
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.lock().state()
    }

    /// Asks to send one request now. The ticket must be given the request's
    /// outcome with [`BreakerTicket::record`]; dropped without one, it counts
    /// as nothing (and frees the probe slot if it was the probe).
    ///
    /// # Errors
    /// The breaker is open (or its probe is out): how long to wait.
    pub fn admit(self: &Arc<Self>) -> Result<BreakerTicket, Duration> {
        let (admission, transition) = {
            let mut machine = self.lock();
            let decided = machine.admit(Instant::now());
            self.export(decided.1);
            decided
        };
        self.log(transition);
        match admission {
            Admit::Pass => Ok(BreakerTicket::new(self, false)),
            Admit::Probe => Ok(BreakerTicket::new(self, true)),
            Admit::Reject(wait) => Err(wait),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the gauge; called under the lock so that racing transitions land
    /// in order.
    fn export(&self, transition: Option<Transition>) {
        if let Some(transition) = transition {
            self.gauge.set(transition.to.gauge_value());
        }
    }

    fn log(&self, transition: Option<Transition>) {
        let Some(Transition { from, to }) = transition else {
            return;
        };
        let (from, to_name) = (from.as_str(), to.as_str());
        match to {
            CircuitState::Open => tracing::warn!(
                origin = %self.origin, from, to = to_name,
                "circuit breaker opened: answering without the origin"
            ),
            CircuitState::HalfOpen => tracing::info!(
                origin = %self.origin, from, to = to_name,
                "circuit breaker half-open: letting one probe through"
            ),
            CircuitState::Closed => tracing::info!(
                origin = %self.origin, from, to = to_name,
                "circuit breaker closed: the probe succeeded"
            ),
        }
    }
}

/// Permission for one request, owed its outcome.
#[derive(Debug)]
pub struct BreakerTicket {
    breaker: Arc<Breaker>,
    probe: bool,
    recorded: bool,
}

impl BreakerTicket {
    fn new(breaker: &Arc<Breaker>, probe: bool) -> BreakerTicket {
        BreakerTicket {
            breaker: Arc::clone(breaker),
            probe,
            recorded: false,
        }
    }

    /// Whether this request is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports whether the request succeeded (the origin is healthy).
    pub fn record(mut self, success: bool) {
        self.recorded = true;
        let breaker = &self.breaker;
        let transition = {
            let mut machine = breaker.lock();
            let transition = machine.record(Instant::now(), self.probe, success);
            breaker.export(transition);
            transition
        };
        breaker.log(transition);
    }
}

impl Drop for BreakerTicket {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.lock().abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(5);

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: OPEN_FOR,
        }
    }

    fn opened(t0: Instant) -> CircuitBreaker {
        let mut breaker = CircuitBreaker::new(policy(), t0);
        for _ in 0..4 {
            breaker.record(t0, false, false);
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        breaker
    }

    #[test]
    fn stays_closed_below_the_minimum_volume() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(policy(), t0);
        for _ in 0..3 {
            assert_eq!(breaker.record(t0, false, false), None);
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(breaker.admit(t0), (Admit::Pass, None));
    }

    #[test]
    fn opens_when_the_failure_rate_is_reached_at_volume() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(policy(), t0);
        breaker.record(t0, false, true);
        breaker.record(t0, false, true);
        breaker.record(t0, false, false);
        assert_eq!(breaker.state(), CircuitState::Closed, "1 in 3 failed");
        let opened = breaker.record(t0, false, false);
        assert_eq!(
            opened,
            Some(Transition {
                from: CircuitState::Closed,
                to: CircuitState::Open
            })
        );
        assert_eq!(breaker.admit(t0), (Admit::Reject(OPEN_FOR), None));
    }

    #[test]
    fn stays_closed_below_the_failure_rate() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(policy(), t0);
        for _ in 0..100 {
            breaker.record(t0, false, true);
            breaker.record(t0, false, true);
            breaker.record(t0, false, false);
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(policy(), t0);
        for _ in 0..3 {
            breaker.record(t0, false, false);
        }
        let later = t0 + Duration::from_secs(11);
        assert_eq!(breaker.record(later, false, false), None);
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn open_rejects_until_open_for_then_admits_exactly_one_probe() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        let almost = t0 + OPEN_FOR - Duration::from_millis(1);
        assert_eq!(
            breaker.admit(almost),
            (Admit::Reject(Duration::from_millis(1)), None)
        );
        let due = t0 + OPEN_FOR;
        assert_eq!(
            breaker.admit(due),
            (
                Admit::Probe,
                Some(Transition {
                    from: CircuitState::Open,
                    to: CircuitState::HalfOpen
                })
            )
        );
        for _ in 0..10 {
            assert_eq!(breaker.admit(due), (Admit::Reject(PROBE_RETRY_AFTER), None));
        }
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
    }

    #[test]
    fn probe_success_closes_with_a_fresh_window() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        let due = t0 + OPEN_FOR;
        breaker.admit(due);
        let closed = breaker.record(due, true, true);
        assert_eq!(
            closed,
            Some(Transition {
                from: CircuitState::HalfOpen,
                to: CircuitState::Closed
            })
        );
        assert_eq!(breaker.admit(due), (Admit::Pass, None));
        // The failures that opened it are forgotten.
        for _ in 0..3 {
            breaker.record(due, false, false);
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn probe_failure_reopens_for_open_for() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        let due = t0 + OPEN_FOR;
        breaker.admit(due);
        let reopened = breaker.record(due, true, false);
        assert_eq!(
            reopened,
            Some(Transition {
                from: CircuitState::HalfOpen,
                to: CircuitState::Open
            })
        );
        assert_eq!(breaker.admit(due), (Admit::Reject(OPEN_FOR), None));
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        let due = t0 + OPEN_FOR;
        assert_eq!(breaker.admit(due).0, Admit::Probe);
        breaker.abandon_probe();
        assert_eq!(breaker.admit(due), (Admit::Probe, None));
    }

    #[test]
    fn late_outcomes_of_earlier_requests_do_not_move_an_open_breaker() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        assert_eq!(breaker.record(t0, false, true), None);
        assert_eq!(breaker.state(), CircuitState::Open);
        let due = t0 + OPEN_FOR;
        breaker.admit(due);
        // A success from a request admitted while closed is not the probe.
        assert_eq!(breaker.record(due, false, true), None);
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn shared_breaker_exports_its_state_and_frees_a_dropped_probe() {
        let gauge = Gauge::default();
        let breaker = Arc::new(Breaker::new("origin".into(), policy(), gauge.clone()));
        assert_eq!(gauge.get(), 0);
        for _ in 0..4 {
            breaker.admit().unwrap().record(false);
        }
        assert_eq!(gauge.get(), 1);
        assert_eq!(breaker.admit().unwrap_err(), OPEN_FOR);
        tokio::time::advance(OPEN_FOR).await;
        let probe = breaker.admit().unwrap();
        assert!(probe.is_probe());
        assert_eq!(gauge.get(), 2);
        assert!(breaker.admit().is_err(), "only one probe at a time");
        drop(probe);
        let probe = breaker.admit().unwrap();
        assert!(probe.is_probe(), "a dropped probe frees the slot");
        probe.record(true);
        assert_eq!(gauge.get(), 0);
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert!(!breaker.admit().unwrap().is_probe());
    }
}
