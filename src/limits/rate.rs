//! In-process rate limiting: GCRA per (tenant, rule), with governor's keyed
//! limiters behind a small type whose clock is injected, so the decisions
//! are tested without sleeping.
//!
//! One [`RateLimiter`] per configured rate rule (a plan's `rate`, an API's
//! or an operation's), keyed by tenant id. Keys of tenants that have been
//! idle long enough to be full again are dropped by [`RuleLimiter::retain_recent`],
//! which the gateway calls periodically, so memory stays bounded by the
//! tenants active within one refill period.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// A configured rate: `requests` per `per`, with bursts up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period.
    pub requests: NonZeroU32,
    /// The period.
    pub per: Duration,
    /// The largest burst (at least 1).
    pub burst: NonZeroU32,
}

impl Rate {
    /// The time one request's allowance takes to come back.
    pub fn interval(&self) -> Duration {
        self.per / self.requests.get()
    }

    fn quota(&self) -> Option<Quota> {
        Quota::with_period(self.interval()).map(|q| q.allow_burst(self.burst))
    }
}

/// Keys are tenant ids, which the gateway makes (not the caller), so the
/// map hashes them with foldhash rather than SipHash.
type Hasher = foldhash::fast::RandomState;

type Limiter<C> =
    RateLimiter<String, DashMapStateStore<String, Hasher>, C, StateInformationMiddleware>;

/// One rule's limiter.
pub struct RuleLimiter<C: Clock = MonotonicClock> {
    /// The rate it enforces.
    pub rate: Rate,
    limiter: Limiter<C>,
    clock: C,
}

/// The outcome of one rule for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; this many more requests fit in the burst now, and the
    /// burst is whole again after `reset`.
    Allowed {
        /// Requests left in the burst.
        remaining: u32,
        /// Time until the burst is whole again.
        reset: Duration,
    },
    /// Refused; the next request fits after `retry_after`.
    Limited {
        /// Time until one more request is allowed.
        retry_after: Duration,
    },
}

impl<C: Clock + Clone> RuleLimiter<C> {
    /// A limiter for `rate`, reading time from `clock`; `None` when the
    /// rate's interval rounds to zero.
    pub fn with_clock(rate: Rate, clock: C) -> Option<Self> {
        let quota = rate.quota()?;
        let limiter =
            RateLimiter::dashmap_with_clock_and_hasher(quota, clock.clone(), Hasher::default())
                .with_middleware::<StateInformationMiddleware>();
        Some(RuleLimiter {
            rate,
            limiter,
            clock,
        })
    }

    /// Decides one request of `tenant`, counting it when allowed.
    pub fn check(&self, tenant: &String) -> Decision {
        match self.limiter.check_key(tenant) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.rate.burst.get().saturating_sub(remaining);
                Decision::Allowed {
                    remaining,
                    reset: self.rate.interval() * used,
                }
            }
            Err(not_until) => Decision::Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Forgets tenants whose allowance is whole again.
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
    }

    /// How many tenants this limiter holds state for.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

impl RuleLimiter<MonotonicClock> {
    /// A limiter for `rate` on the monotonic clock.
    pub fn new(rate: Rate) -> Option<Self> {
        Self::with_clock(rate, MonotonicClock)
    }
}

impl<C: Clock> std::fmt::Debug for RuleLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleLimiter")
            .field("rate", &self.rate)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn rate(requests: u32, per_ms: u64, burst: u32) -> Rate {
        Rate {
            requests: NonZeroU32::new(requests).expect("nonzero"),
            per: Duration::from_millis(per_ms),
            burst: NonZeroU32::new(burst).expect("nonzero"),
        }
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(10, 1000, 20), clock.clone()).expect("limiter");
        let t = String::from("sbx_a");
        for i in 0..20 {
            match l.check(&t) {
                Decision::Allowed { remaining, .. } => assert_eq!(remaining, 19 - i),
                d => panic!("request {i}: {d:?}"),
            }
        }
        match l.check(&t) {
            Decision::Limited { retry_after } => {
                assert_eq!(retry_after, Duration::from_millis(100))
            }
            d => panic!("{d:?}"),
        }
        // 100 ms later, exactly one more.
        clock.advance(Duration::from_millis(100));
        assert!(matches!(
            l.check(&t),
            Decision::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(l.check(&t), Decision::Limited { .. }));
        // Over 10 s, the steady rate: 100 requests.
        let mut allowed = 0;
        for _ in 0..1000 {
            clock.advance(Duration::from_millis(10));
            if matches!(l.check(&t), Decision::Allowed { .. }) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 100);
    }

    #[test]
    fn tenants_are_independent_and_idle_ones_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(1, 1000, 1), clock.clone()).expect("limiter");
        let (a, b) = (String::from("a"), String::from("b"));
        assert!(matches!(l.check(&a), Decision::Allowed { .. }));
        assert!(matches!(l.check(&a), Decision::Limited { .. }));
        assert!(matches!(l.check(&b), Decision::Allowed { .. }));
        assert_eq!(l.len(), 2);
        clock.advance(Duration::from_secs(2));
        l.retain_recent();
        assert!(l.is_empty());
    }

    #[test]
    fn a_million_tenants_are_forgotten_once_idle() {
        // Memory stays bounded: a million distinct keys, each seen once,
        // are all dropped by the periodic sweep once their burst is whole.
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(10, 1000, 10), clock.clone()).expect("limiter");
        for i in 0..1_000_000u32 {
            let t = format!("sbx_{i}");
            assert!(matches!(l.check(&t), Decision::Allowed { .. }));
        }
        assert_eq!(l.len(), 1_000_000);
        // Not yet whole again: kept (their state still matters).
        clock.advance(Duration::from_millis(10));
        l.retain_recent();
        assert_eq!(l.len(), 1_000_000);
        clock.advance(Duration::from_secs(1));
        l.retain_recent();
        assert!(l.is_empty());
    }

    #[test]
    fn reset_is_when_the_burst_is_whole_again() {
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(5, 1000, 5), clock).expect("limiter");
        let t = String::from("t");
        let _ = l.check(&t);
        let _ = l.check(&t);
        assert_eq!(
            l.check(&t),
            Decision::Allowed {
                remaining: 2,
                reset: Duration::from_millis(600)
            }
        );
    }
}
