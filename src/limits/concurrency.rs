//! Requests in flight per tenant: a plan's `concurrency` caps how many of a
//! tenant's requests the gateway works on at once. A slot is taken in the
//! limit stage and given back when the response body has been sent (or
//! dropped), so a slow streaming download holds its slot to the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Counts = HashMap<Arc<str>, u32, foldhash::fast::RandomState>;

/// Every tenant's requests in flight on this node. A tenant's entry stays
/// when its count drops to zero (the next request finds it without
/// allocating); [`InFlight::prune`] drops the idle ones periodically.
#[derive(Debug, Default)]
pub struct InFlight {
    counts: Mutex<Counts>,
}

/// A slot held by one request; given back on drop.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<InFlight>,
    tenant: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(n) = self.owner.lock().get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
        }
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `tenant` when it has fewer than `max` requests in flight.
    pub fn acquire(self: &Arc<Self>, tenant: &str, max: u32) -> Option<Slot> {
        let mut counts = self.lock();
        let key = match counts.get_key_value(tenant) {
            Some((k, _)) => Arc::clone(k),
            None => {
                let k: Arc<str> = Arc::from(tenant);
                counts.insert(Arc::clone(&k), 0);
                k
            }
        };
        let n = counts.get_mut(&key)?;
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: Arc::clone(self),
            tenant: key,
        })
    }

    /// `tenant`'s requests in flight now.
    pub fn current(&self, tenant: &str) -> u32 {
        self.lock().get(tenant).copied().unwrap_or(0)
    }

    /// Forgets the tenants with nothing in flight.
    pub fn prune(&self) {
        self.lock().retain(|_, n| *n > 0);
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
        let f = Arc::new(InFlight::default());
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
        // Pruning forgets only the tenants with nothing in flight.
        f.prune();
        assert_eq!(f.lock().len(), 1, "b is idle, a is not");
        drop(s3);
        f.prune();
        assert!(f.lock().is_empty());
    }
}
