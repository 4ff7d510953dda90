//! `CircuitBreaker`: stops sending calls to an endpoint that keeps failing, then probes it.
//!
//! ```text
//!            failure rate >= threshold over the window (with >= min_calls calls)
//!   Closed ─────────────────────────────────────────────────────────────────────► Open
//!     ▲                                                                            │
//!     │ a trial succeeds                                   open_for has passed     │
//!     │                                                                            ▼
//!     └───────────────────────────── HalfOpen ◄─────────────────────────────────────┘
//!                                  (at most half_open_trials calls at once;
//!                                   a failed trial reopens the breaker)
//! ```
//!
//! Only transport failures and timeouts count as failures: an answer from the server — even
//! "not the leader" or "key not found" — means the endpoint is alive and counts as a success.
//! Time is `tokio::time::Instant`, so tests drive it with a paused clock.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Breaker thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// The rolling window outcomes are counted over.
    pub window: Duration,
    /// Fewest calls in the window before the breaker may open.
    pub min_calls: usize,
    /// Failure share (0.0-1.0) at or above which the breaker opens.
    pub failure_rate: f64,
    /// How long the breaker stays open before letting trial calls through.
    pub open_for: Duration,
    /// Trial calls allowed at once while half-open.
    pub half_open_trials: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_calls: 5,
            failure_rate: 0.5,
            open_for: Duration::from_secs(2),
            half_open_trials: 1,
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open { until: Instant },
    HalfOpen { trials_in_flight: usize },
}

impl BreakerState {
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half-open",
        }
    }
}

/// One endpoint's breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    outcomes: VecDeque<(Instant, bool)>,
    transitions: u64,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            outcomes: VecDeque::new(),
            transitions: 0,
        }
    }

    /// The state as of `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open { until } if now >= until => BreakerState::HalfOpen { trials_in_flight: 0 },
            s => s,
        }
    }

    /// How many times the state changed.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Whether a call would be let through at `now`, without taking a trial slot.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { trials_in_flight } => trials_in_flight < self.config.half_open_trials,
        }
    }

    fn set(&mut self, state: BreakerState) {
        if std::mem::discriminant(&state) != std::mem::discriminant(&self.state) {
            self.transitions += 1;
        }
        self.state = state;
    }

    /// Lets a call through if the breaker allows it, taking a trial slot when half-open. Every
    /// `true` must be followed by one [`Self::record`].
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        let state = self.state(now);
        match state {
            BreakerState::Closed => true,
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { trials_in_flight } if trials_in_flight < self.config.half_open_trials => {
                self.set(BreakerState::HalfOpen {
                    trials_in_flight: trials_in_flight + 1,
                });
                true
            }
            BreakerState::HalfOpen { .. } => {
                self.set(state);
                false
            }
        }
    }

    /// Records the outcome of a call let through by [`Self::try_acquire`]. Returns the new
    /// state when it changed.
    pub fn record(&mut self, now: Instant, success: bool) -> Option<BreakerState> {
        let before = self.state;
        match self.state(now) {
            BreakerState::HalfOpen { .. } => {
                if success {
                    self.outcomes.clear();
                    self.set(BreakerState::Closed);
                } else {
                    self.set(BreakerState::Open {
                        until: now + self.config.open_for,
                    });
                }
            }
            BreakerState::Open { .. } => {
                // A call let through before the breaker opened; its outcome changes nothing.
            }
            BreakerState::Closed => {
                self.outcomes.push_back((now, success));
                while self
                    .outcomes
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > self.config.window)
                {
                    self.outcomes.pop_front();
                }
                let calls = self.outcomes.len();
                let failures = self.outcomes.iter().filter(|(_, ok)| !ok).count();
                if !success
                    && calls >= self.config.min_calls
                    && failures as f64 >= self.config.failure_rate * calls as f64
                {
                    self.set(BreakerState::Open {
                        until: now + self.config.open_for,
                    });
                }
            }
        }
        (std::mem::discriminant(&before) != std::mem::discriminant(&self.state)).then_some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 4,
            failure_rate: 0.5,
            open_for: Duration::from_secs(2),
            half_open_trials: 2,
        }
    }

    fn call(b: &mut CircuitBreaker, ok: bool) {
        let now = Instant::now();
        assert!(b.try_acquire(now), "call refused in state {:?}", b.state(now));
        b.record(now, ok);
    }

    #[tokio::test(start_paused = true)]
    async fn it_stays_closed_below_the_volume_threshold() {
        let mut b = CircuitBreaker::new(config());
        for _ in 0..3 {
            call(&mut b, false);
        }
        assert_eq!(b.state(Instant::now()), BreakerState::Closed, "3 calls < min_calls 4");
    }

    #[tokio::test(start_paused = true)]
    async fn it_opens_at_the_failure_rate_and_not_below() {
        let mut b = CircuitBreaker::new(config());
        for ok in [true, true, true, false, false] {
            call(&mut b, ok);
        }
        assert_eq!(b.state(Instant::now()), BreakerState::Closed, "2/5 failures < 50%");
        call(&mut b, false);
        assert!(
            matches!(b.state(Instant::now()), BreakerState::Open { .. }),
            "3/6 = 50%"
        );
        assert!(!b.try_acquire(Instant::now()));
        assert_eq!(b.transitions(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_leave_the_window() {
        let mut b = CircuitBreaker::new(config());
        for _ in 0..3 {
            call(&mut b, false);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        call(&mut b, false);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Closed,
            "only 1 failure in the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_limits_trials_and_closes_on_success() {
        let mut b = CircuitBreaker::new(config());
        for _ in 0..4 {
            call(&mut b, false);
        }
        assert!(!b.would_allow(Instant::now()));
        tokio::time::advance(Duration::from_secs(2)).await;
        let now = Instant::now();
        assert_eq!(b.state(now), BreakerState::HalfOpen { trials_in_flight: 0 });
        assert!(b.try_acquire(now) && b.try_acquire(now), "two trials allowed");
        assert!(!b.try_acquire(now), "a third is not");
        assert_eq!(b.record(now, true), Some(BreakerState::Closed));
        assert!(b.try_acquire(now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens_it() {
        let mut b = CircuitBreaker::new(config());
        for _ in 0..4 {
            call(&mut b, false);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let now = Instant::now();
        assert!(b.try_acquire(now));
        assert!(matches!(b.record(now, false), Some(BreakerState::Open { .. })));
        assert!(!b.try_acquire(now));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(!b.would_allow(Instant::now()), "open for another full period");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.would_allow(Instant::now()));
    }
}
