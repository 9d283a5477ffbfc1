//! In-process rate limiting: GCRA per (tenant, rule), with governor's keyed
//! limiters behind a small type whose clock is injected, so the decisions
//! are tested without sleeping.
//!
//! One [`RuleLimiter`] per configured rate rule (a plan's `rate`, an API's
//! or an operation's), keyed by the tenant's [`TenantState`] handle.
//! governor does the GCRA; its state, one cell per (tenant, rule), lives in
//! the tenant's state ([`TenantCells`]), next to its requests in flight and
//! its quota counters: the limit stage, which holds that state already,
//! finds a rule's cell by scanning a few slots for the rule's id, with no
//! lookup by tenant, and the cells are on the cache lines the workers share
//! for the tenant anyway. The cells go when the tenant's state is
//! forgotten: once nothing is in flight, no quota counter is in memory and
//! every cell's burst is whole again ([`TenantCells::is_whole`]), so memory
//! follows the tenants active lately.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, QuantaClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::TenantState;
use super::per_tenant::Handle;

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

/// How many rules' cells a tenant keeps inline: the most rules one
/// request is checked against (its plan's, its API's and its
/// operation's). A tenant that uses more rules keeps the others in a short
/// list under its own lock.
pub const INLINE_CELLS: usize = 3;

/// A margin for [`TenantCells::is_whole`]: a limiter's own idea of when it
/// started is a few nanoseconds after the one it reports its time from.
const WHOLE_MARGIN: u64 = 1_000_000;

/// A tenant's GCRA cells, one per rule it has used: governor's theoretical
/// arrival time of the tenant's next request, in nanoseconds since the
/// rule's limiter started (0: never used).
#[derive(Debug, Default)]
pub struct TenantCells {
    inline: [CellSlot; INLINE_CELLS],
    /// (rule id, arrival time) for rules past the inline ones.
    more: Mutex<Vec<(u64, u64)>>,
}

/// One inline cell and the rule that owns it (0: free). A slot is owned
/// by its first rule until the tenant's state is forgotten.
#[derive(Debug, Default)]
struct CellSlot {
    rule: AtomicU64,
    tat: AtomicU64,
}

impl TenantCells {
    /// The inline cell of `rule`, taking a free slot the first time; `None`
    /// when every slot is taken by other rules.
    fn slot(&self, rule: u64) -> Option<&AtomicU64> {
        if let Some(s) = self
            .inline
            .iter()
            .find(|s| s.rule.load(Ordering::Acquire) == rule)
        {
            return Some(&s.tat);
        }
        // Claimed in order, so two workers claiming for one rule at once
        // meet on the same slot.
        self.inline.iter().find_map(|s| {
            match s
                .rule
                .compare_exchange(0, rule, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => Some(&s.tat),
                Err(owner) if owner == rule => Some(&s.tat),
                Err(_) => None,
            }
        })
    }

    fn more(&self) -> std::sync::MutexGuard<'_, Vec<(u64, u64)>> {
        self.more.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs governor's decision `f` on `rule`'s cell and stores what it
    /// returns, atomically.
    fn measure_and_replace<T, F, E>(&self, rule: u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let read = |tat: u64| NonZeroU64::new(tat).map(|n| Nanos::from(n.get()));
        if let Some(cell) = self.slot(rule) {
            // As governor's own in-memory state does: decide on the value
            // read, and write the new one only if nobody changed it since.
            let mut prev = cell.load(Ordering::Acquire);
            loop {
                let (result, next) = f(read(prev))?;
                match cell.compare_exchange_weak(
                    prev,
                    next.into(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok(result),
                    Err(now) => prev = now,
                }
            }
        }
        let mut more = self.more();
        let i = match more.iter().position(|(r, _)| *r == rule) {
            Some(i) => i,
            None => {
                more.push((rule, 0));
                more.len() - 1
            }
        };
        let (result, next) = f(read(more[i].1))?;
        more[i].1 = next.into();
        Ok(result)
    }

    /// Whether every cell's burst is whole again, the time now on each
    /// rule's clock being in `now` (rules missing from it are gone from the
    /// configuration: their cells no longer matter).
    pub fn is_whole(&self, now: &RuleTimes) -> bool {
        let whole = |rule: u64, tat: u64| {
            rule == 0
                || tat == 0
                || now
                    .0
                    .get(&rule)
                    .is_none_or(|&now| tat.saturating_add(WHOLE_MARGIN) <= now)
        };
        self.inline.iter().all(|s| {
            whole(
                s.rule.load(Ordering::Acquire),
                s.tat.load(Ordering::Acquire),
            )
        }) && self.more().iter().all(|&(rule, tat)| whole(rule, tat))
    }
}

/// The time now on each rule's clock, by rule id: what
/// [`TenantCells::is_whole`] compares the cells with.
#[derive(Debug, Default)]
pub struct RuleTimes(HashMap<u64, u64>);

impl RuleTimes {
    /// Adds `limiter`'s time now.
    pub fn add<C: Clock>(&mut self, limiter: &RuleLimiter<C>) {
        self.0.insert(limiter.id, limiter.elapsed());
    }
}

/// The state store of one rule's limiter: the rule's cell in each tenant's
/// [`TenantCells`], found by the rule's id.
#[derive(Debug)]
pub struct Cells {
    rule: u64,
}

impl StateStore for Cells {
    type Key = Handle<TenantState>;

    fn measure_and_replace<T, F, E>(&self, key: &Handle<TenantState>, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        key.rates.measure_and_replace(self.rule, f)
    }
}

type Limiter<C> = RateLimiter<Handle<TenantState>, Cells, C, StateInformationMiddleware>;

/// One rule's limiter.
pub struct RuleLimiter<C: Clock = QuantaClock> {
    /// The rate it enforces.
    pub rate: Rate,
    /// Its id, unique in the process: what its cells are found by.
    id: u64,
    /// `rate.interval()`, worked out once (a `Duration` division takes a
    /// few integer divisions, each tens of cycles).
    interval: Duration,
    limiter: Limiter<C>,
    clock: C,
    /// The clock's time when the limiter was made (at most its own start).
    origin: C::Instant,
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
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let quota = rate.quota()?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let origin = clock.now();
        let limiter: Limiter<C> = RateLimiter::new(quota, Cells { rule: id }, clock.clone());
        Some(RuleLimiter {
            rate,
            id,
            interval: rate.interval(),
            limiter,
            clock,
            origin,
        })
    }

    /// Decides one request of the tenant whose state is `tenant`, counting
    /// it when allowed.
    pub fn check(&self, tenant: &Handle<TenantState>) -> Decision {
        match self.limiter.check_key(tenant) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.rate.burst.get().saturating_sub(remaining);
                Decision::Allowed {
                    remaining,
                    reset: self.interval * used,
                }
            }
            Err(not_until) => Decision::Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }
}

impl<C: Clock> RuleLimiter<C> {
    /// Nanoseconds since the limiter was made: at least the time on its
    /// cells' scale.
    fn elapsed(&self) -> u64 {
        self.clock.now().duration_since(self.origin).into()
    }
}

impl RuleLimiter<QuantaClock> {
    /// A limiter for `rate` on quanta's clock: monotonic, read from the
    /// CPU's time-stamp counter where it is steady (falling back to the
    /// OS's monotonic clock), so a decision reads the time in a few
    /// instructions rather than a `clock_gettime` call.
    pub fn new(rate: Rate) -> Option<Self> {
        Self::with_clock(rate, QuantaClock::default())
    }
}

impl<C: Clock> std::fmt::Debug for RuleLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleLimiter")
            .field("rate", &self.rate)
            .field("id", &self.id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::TenantStates;
    use governor::clock::FakeRelativeClock;

    fn rate(requests: u32, per_ms: u64, burst: u32) -> Rate {
        Rate {
            requests: NonZeroU32::new(requests).expect("nonzero"),
            per: Duration::from_millis(per_ms),
            burst: NonZeroU32::new(burst).expect("nonzero"),
        }
    }

    fn state(states: &TenantStates, tenant: &str) -> Handle<TenantState> {
        states.with(tenant, Handle::clone)
    }

    fn times(limiters: &[&RuleLimiter<FakeRelativeClock>]) -> RuleTimes {
        let mut t = RuleTimes::default();
        for l in limiters {
            t.add(l);
        }
        t
    }

    /// Forgets the idle tenants of `states` (held by nobody).
    fn prune(states: &TenantStates, now: &RuleTimes) {
        states.prune(|s| s.is_idle(now));
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(10, 1000, 20), clock.clone()).expect("limiter");
        let states = TenantStates::default();
        let t = state(&states, "sbx_a");
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
    fn tenants_and_rules_are_independent_and_idle_ones_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(1, 1000, 1), clock.clone()).expect("limiter");
        let states = TenantStates::default();
        let (a, b) = (state(&states, "a"), state(&states, "b"));
        assert!(matches!(l.check(&a), Decision::Allowed { .. }));
        assert!(matches!(l.check(&a), Decision::Limited { .. }));
        assert!(matches!(l.check(&b), Decision::Allowed { .. }));
        // More rules than a tenant keeps inline: each keeps its own cell.
        let others: Vec<_> = (0..INLINE_CELLS + 2)
            .map(|_| RuleLimiter::with_clock(rate(1, 1000, 1), clock.clone()).expect("limiter"))
            .collect();
        for o in &others {
            assert!(matches!(o.check(&a), Decision::Allowed { .. }));
            assert!(matches!(o.check(&a), Decision::Limited { .. }));
        }
        assert!(matches!(l.check(&a), Decision::Limited { .. }));
        drop((a, b));
        let mut all: Vec<&RuleLimiter<FakeRelativeClock>> = others.iter().collect();
        all.push(&l);
        // Held by no worker, but not whole again: kept.
        prune(&states, &times(&all));
        assert_eq!(states.len(), 2);
        clock.advance(Duration::from_secs(2));
        prune(&states, &times(&all));
        assert!(states.is_empty());
    }

    #[test]
    fn a_million_tenants_are_forgotten_once_idle() {
        // Memory stays bounded: a million distinct keys, each seen once,
        // are all dropped by the periodic sweep once their burst is whole.
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(10, 1000, 10), clock.clone()).expect("limiter");
        let states = TenantStates::default();
        for i in 0..1_000_000u32 {
            let t = state(&states, &format!("sbx_{i}"));
            assert!(matches!(l.check(&t), Decision::Allowed { .. }));
        }
        states.forget_local();
        assert_eq!(states.len(), 1_000_000);
        // Not yet whole again: kept (their state still matters).
        clock.advance(Duration::from_millis(10));
        prune(&states, &times(&[&l]));
        assert_eq!(states.len(), 1_000_000);
        clock.advance(Duration::from_secs(1));
        prune(&states, &times(&[&l]));
        assert!(states.is_empty());
    }

    #[test]
    fn cells_of_rules_gone_from_the_configuration_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(1, 60_000, 1), clock.clone()).expect("limiter");
        let states = TenantStates::default();
        assert!(matches!(
            l.check(&state(&states, "a")),
            Decision::Allowed { .. }
        ));
        prune(&states, &times(&[&l]));
        assert_eq!(states.len(), 1, "its rule still counts it");
        prune(&states, &RuleTimes::default());
        assert!(states.is_empty());
    }

    #[test]
    fn reset_is_when_the_burst_is_whole_again() {
        let clock = FakeRelativeClock::default();
        let l = RuleLimiter::with_clock(rate(5, 1000, 5), clock).expect("limiter");
        let states = TenantStates::default();
        let t = state(&states, "t");
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
