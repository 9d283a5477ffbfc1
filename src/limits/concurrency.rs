//! Requests in flight per tenant: a plan's `concurrency` caps how many of a
//! tenant's requests the gateway works on at once. A slot is taken in the
//! limit stage and given back when the response body has been sent (or
//! dropped), so a slow streaming download holds its slot to the end.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Counts = HashMap<Arc<str>, Arc<AtomicU32>, foldhash::fast::RandomState>;

/// Every tenant's requests in flight on this node: one counter per tenant,
/// shared by the workers.
///
/// Each worker keeps the counters it used lately in a cache of its own, so
/// taking a slot touches only the tenant's counter (one compare-and-swap;
/// its cache line is the only one the workers share for it), not a map
/// behind a lock. A counter stays in the map while it counts a request or a
/// worker's cache holds it, so every worker always counts on the same one;
/// [`InFlight::prune`] drops the others periodically.
#[derive(Debug)]
pub struct InFlight {
    /// Tells this node's counters from another's in the workers' caches
    /// (tests run several gateways in one process).
    id: u64,
    counts: Mutex<Counts>,
}

impl Default for InFlight {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        InFlight {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            counts: Mutex::default(),
        }
    }
}

/// Most counters a worker keeps in its cache; when full, it starts over.
const LOCAL_MAX: usize = 4096;

/// A worker's counters: tenant → (owner's id, counter).
type Local = HashMap<Box<str>, (u64, Arc<AtomicU32>), foldhash::fast::RandomState>;

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(HashMap::default());
}

/// A slot held by one request; given back on drop.
#[derive(Debug)]
pub struct Slot {
    count: Arc<AtomicU32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `tenant`'s counter, from this worker's cache or the shared map.
    fn counter(&self, tenant: &str) -> Arc<AtomicU32> {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            if let Some((id, count)) = local.get(tenant)
                && *id == self.id
            {
                return Arc::clone(count);
            }
            let count = Arc::clone(
                self.lock()
                    .entry(Arc::from(tenant))
                    .or_insert_with(|| Arc::new(AtomicU32::new(0))),
            );
            if local.len() >= LOCAL_MAX {
                local.clear();
            }
            local.insert(Box::from(tenant), (self.id, Arc::clone(&count)));
            count
        })
    }

    /// A slot for `tenant` when it has fewer than `max` requests in flight.
    pub fn acquire(&self, tenant: &str, max: u32) -> Option<Slot> {
        let count = self.counter(tenant);
        // Compare-and-swap, never add-then-undo: a request over the cap
        // never shows as in flight, even for an instant, so it cannot make
        // another one look over the cap.
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot { count })
    }

    /// `tenant`'s requests in flight now.
    pub fn current(&self, tenant: &str) -> u32 {
        self.lock()
            .get(tenant)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Forgets the counters of tenants with nothing in flight that no
    /// worker's cache holds.
    pub fn prune(&self) {
        self.lock()
            .retain(|_, c| c.load(Ordering::Acquire) > 0 || Arc::strong_count(c) > 1);
    }

    /// Empties the calling thread's cache (tests).
    #[cfg(test)]
    fn forget_local() {
        LOCAL.with(|l| l.borrow_mut().clear());
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
        // Pruning keeps the counters a worker's cache holds...
        f.prune();
        assert_eq!(f.lock().len(), 2, "both are in this thread's cache");
        // ...and otherwise forgets only the tenants with nothing in flight.
        InFlight::forget_local();
        f.prune();
        assert_eq!(f.lock().len(), 1, "b is idle, a is not");
        drop(s3);
        f.prune();
        assert!(f.lock().is_empty());
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
