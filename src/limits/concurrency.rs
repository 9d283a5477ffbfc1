//! Requests in flight per tenant: a plan's `concurrency` caps how many of a
//! tenant's requests the gateway works on at once. A slot is taken in the
//! limit stage and given back when the response body has been sent (or
//! dropped), so a slow streaming download holds its slot to the end.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::per_tenant::Handle;
use super::{TenantState, TenantStates};

/// Every tenant's requests in flight on this node: one counter per tenant
/// (in its [`TenantState`]), shared by the workers and reached through
/// their own caches (see [`super::per_tenant::PerTenant`]), so taking a
/// slot touches only the tenant's counter (one compare-and-swap), not a map
/// behind a lock. [`InFlight::prune`] drops the state of idle tenants
/// periodically.
#[derive(Debug, Default)]
pub struct InFlight(Arc<TenantStates>);

/// A slot held by one request; given back on drop.
#[derive(Debug)]
pub struct Slot {
    state: Handle<TenantState>,
}

impl Slot {
    /// The state of the tenant the slot is held for.
    pub fn state(&self) -> &Handle<TenantState> {
        &self.state
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    /// The counters kept in `states` (shared with the node's quotas).
    pub fn on(states: Arc<TenantStates>) -> Self {
        InFlight(states)
    }

    /// `tenant`'s state, from this worker's cache: what
    /// [`InFlight::acquire_on`] and the quota decision take.
    pub fn state(&self, tenant: &str) -> Handle<TenantState> {
        self.0.with(tenant, Handle::clone)
    }

    /// A slot for `tenant` when it has fewer than `max` requests in flight.
    pub fn acquire(&self, tenant: &str, max: u32) -> Option<Slot> {
        Self::acquire_on(self.state(tenant), max).ok()
    }

    /// A slot for the tenant of `state` when it has fewer than `max`
    /// requests in flight: the slot keeps `state` (no second reference is
    /// taken), and a refusal gives it back.
    pub fn acquire_on(state: Handle<TenantState>, max: u32) -> Result<Slot, Handle<TenantState>> {
        // Compare-and-swap, never add-then-undo: a request over the cap
        // never shows as in flight, even for an instant, so it cannot make
        // another one look over the cap.
        match state
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            }) {
            Ok(_) => Ok(Slot { state }),
            Err(_) => Err(state),
        }
    }

    /// `tenant`'s requests in flight now.
    pub fn current(&self, tenant: &str) -> u32 {
        self.0
            .get(tenant)
            .map_or(0, |s| s.in_flight.load(Ordering::Acquire))
    }

    /// Forgets the state of tenants that no worker's cache holds with
    /// nothing in flight, no quota counter in memory and every burst whole
    /// again at `now` (see [`TenantState::is_idle`]).
    pub fn prune(&self, now: &super::rate::RuleTimes) {
        self.0.prune(|s| s.is_idle(now));
    }

    /// How many tenants have a state (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's slot until it ends.
    pub struct Holding {
        #[pin]
        body: crate::body::Body,
        slot: Option<Slot>,
    }
}

impl Holding {
    /// `body`, holding `slot` until it ends or is dropped.
    pub fn new(body: crate::body::Body, slot: Slot) -> Self {
        Holding {
            body,
            slot: Some(slot),
        }
    }
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let std::task::Poll::Ready(None) | std::task::Poll::Ready(Some(Err(_))) = &polled {
            this.slot.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_tenant_and_given_back() {
        let f = InFlight::default();
        let (a, b) = ("a", "b");
        let s1 = f.acquire(a, 2).expect("first");
        let s2 = f.acquire(a, 2).expect("second");
        assert!(f.acquire(a, 2).is_none());
        assert!(f.acquire(b, 2).is_some(), "another tenant has its own");
        drop(s1);
        assert_eq!(f.current("a"), 1);
        let s3 = f.acquire(a, 2).expect("a slot came back");
        drop(s2);
        assert_eq!(f.current("a"), 1);
        // Pruning forgets only the tenants with nothing in flight (the
        // sweep empties its own thread's cache first; what other workers'
        // caches hold is kept, see `per_tenant`).
        f.prune(&super::super::rate::RuleTimes::default());
        assert_eq!(f.len(), 1, "b is idle, a is not");
        drop(s3);
        f.prune(&super::super::rate::RuleTimes::default());
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn two_nodes_in_one_process_count_apart() {
        let (one, two) = (InFlight::default(), InFlight::default());
        let _held = one.acquire("t", 1).expect("one's slot");
        assert!(one.acquire("t", 1).is_none());
        let _other = two.acquire("t", 1).expect("two has its own count");
        assert_eq!((one.current("t"), two.current("t")), (1, 1));
    }

    #[test]
    fn workers_share_one_count_per_tenant() {
        let f = Arc::new(InFlight::default());
        let max = 50;
        // Four threads take slots until refused; together they hold exactly max.
        let held: Vec<Vec<Slot>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let f = &f;
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        while let Some(slot) = f.acquire("t", max) {
                            mine.push(slot);
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert_eq!(held.iter().map(Vec::len).sum::<usize>(), max as usize);
        assert_eq!(f.current("t"), max);
        drop(held);
        assert_eq!(f.current("t"), 0);
    }
}
