//! `Backoff`: exponential backoff with full jitter between retries.
//!
//! The n-th delay is a uniform random duration in `[0, min(cap, base * 2^n)]` ("full jitter",
//! as in the AWS architecture blog's analysis): many clients retrying after the same failure
//! spread out instead of hitting the new leader together.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        }
    }
}

/// The delays of one call's retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self { policy, attempt: 0 }
    }

    /// The upper bound of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.policy.base.saturating_mul(factor).min(self.policy.cap)
    }

    /// The next delay: uniform in `[0, ceiling]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_a_doubling_ceiling_up_to_the_cap() {
        let policy = BackoffPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
        };
        let mut b = Backoff::new(policy);
        let expected = [10, 20, 40, 80, 100, 100, 100];
        for ms in expected {
            assert_eq!(b.ceiling(), Duration::from_millis(ms));
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(ms), "{d:?} over {ms} ms");
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..1000 {
            let mut b = Backoff::new(BackoffPolicy {
                base: Duration::from_millis(100),
                cap: Duration::from_millis(100),
            });
            let d = b.next_delay();
            seen_low |= d < Duration::from_millis(25);
            seen_high |= d > Duration::from_millis(75);
        }
        assert!(seen_low && seen_high, "full jitter should cover the whole range");
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(BackoffPolicy::default());
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
    }
}
