//! Per-tenant limit state that every worker of a node shares, reached
//! through a cache of each worker's own.
//!
//! The in-process limits keep one small value per tenant (its
//! [`super::TenantState`]: the requests in flight, the GCRA cells, the
//! quota counters). The workers must share it (a tenant's requests land on
//! any worker, and the limits are exact), but they need not share the map
//! that finds it. A
//! [`PerTenant`] keeps its values in one map behind a lock, and each worker
//! keeps the values it used lately in a cache of its own (a `ThreadLocal`
//! of the map, freed with it); a request looks its tenant up there, so the
//! only memory the workers share for it is the value itself, not a map's
//! lock or a shard's, nor a reference count.
//!
//! Each value sits alone on cache lines of its own, aligned to 128 bytes
//! ([`Padded`]): the workers write it on every request, and a neighbour
//! sharing its line (any small allocation of the thread that made it)
//! would bounce between the cores with it.
//!
//! A value stays in the shared map while a worker's cache holds it, so every
//! worker always works on the same one; [`PerTenant::prune`] drops the
//! others that the caller says are idle. A worker's cache holds at most
//! [`LOCAL_MAX`] tenants and starts over when full, so memory stays bounded
//! by the tenants active between two prunes plus the workers' caches.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use thread_local::ThreadLocal;

/// Keys are tenant ids, which the gateway makes (not the caller), so the
/// maps hash them with foldhash rather than SipHash.
type Hasher = foldhash::fast::RandomState;

/// Most tenants a worker keeps in its cache; when full, it starts over.
pub const LOCAL_MAX: usize = 4096;

/// A value alone in its cache lines: 128 bytes, as a core's prefetcher
/// fetches lines in pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// A tenant's value as the workers share it.
pub type Shared<T> = Arc<Padded<T>>;

/// A worker's handle to a shared value: what its cache holds and what a
/// request keeps past the lookup (an in-flight slot). Cloning it counts on
/// the worker's own allocation, never on the shared value's reference
/// count, which would be another line bouncing between the cores.
///
/// Two handles are equal when they reach the same value (the rate
/// limiters key their decisions by it: see [`super::rate`]).
pub struct Handle<T>(Arc<Shared<T>>);

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle(Arc::clone(&self.0))
    }
}

impl<T> std::ops::Deref for Handle<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0.0
    }
}

impl<T> PartialEq for Handle<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for Handle<T> {}

impl<T> std::hash::Hash for Handle<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&*self.0), state);
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.0.fmt(f)
    }
}

/// One worker's cache of a [`PerTenant`]: tenant → value. Padded, so the
/// caches of two workers (neighbours in the `ThreadLocal`) never share a
/// cache line: each is written (borrowed) on every lookup.
type Local<T> = Padded<RefCell<HashMap<Box<str>, Handle<T>, Hasher>>>;

/// One value of type `T` per tenant, shared by the workers (see the module
/// documentation).
pub struct PerTenant<T: Send + Sync> {
    shared: Mutex<HashMap<Arc<str>, Shared<T>, Hasher>>,
    /// Each worker's cache.
    local: ThreadLocal<Local<T>>,
}

impl<T: Send + Sync> std::fmt::Debug for PerTenant<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerTenant").finish_non_exhaustive()
    }
}

impl<T: Send + Sync> Default for PerTenant<T> {
    fn default() -> Self {
        PerTenant {
            shared: Mutex::default(),
            local: ThreadLocal::new(),
        }
    }
}

impl<T: Default + Send + Sync> PerTenant<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Shared<T>, Hasher>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on `tenant`'s value (made with `T::default()` the first
    /// time), found in this worker's cache or else in the shared map.
    pub fn with<R>(&self, tenant: &str, f: impl FnOnce(&Handle<T>) -> R) -> R {
        let local = self.local.get_or_default();
        // `f` runs on the cached value in place: no reference count (a
        // cache line the workers share) is touched to find it.
        if let Ok(cached) = local.try_borrow()
            && let Some(value) = cached.get(tenant)
        {
            return f(value);
        }
        f(&self.cache(local, tenant))
    }

    /// `tenant`'s value from the shared map (made when missing), put in
    /// this worker's cache.
    #[cold]
    fn cache(&self, local: &Local<T>, tenant: &str) -> Handle<T> {
        let value = Handle(Arc::new(Arc::clone(
            self.lock().entry(Arc::from(tenant)).or_default(),
        )));
        if let Ok(mut local) = local.try_borrow_mut() {
            if local.len() >= LOCAL_MAX {
                local.clear();
            }
            local.insert(Box::from(tenant), value.clone());
        }
        value
    }

    /// `tenant`'s value, if it has one (read from the shared map; the
    /// usage endpoints use it, not the request path).
    pub fn get(&self, tenant: &str) -> Option<Shared<T>> {
        self.lock().get(tenant).cloned()
    }

    /// Calls `f` with every tenant and its value.
    pub fn for_each(&self, mut f: impl FnMut(&str, &T)) {
        let all: Vec<(Arc<str>, Shared<T>)> = self
            .lock()
            .iter()
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect();
        for (tenant, value) in &all {
            f(tenant, &value.0);
        }
    }

    /// Forgets the values `idle` says are idle that no worker's cache
    /// (nor a [`Handle`] taken from one) holds. The calling thread's cache of this map is emptied first, so
    /// a sweep from any thread finds the values only it was holding.
    pub fn prune(&self, idle: impl Fn(&T) -> bool) {
        self.forget_local();
        self.lock()
            .retain(|_, v| Arc::strong_count(v) > 1 || !idle(v));
    }

    /// How many tenants have a value.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no tenant has one.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Empties the calling thread's cache.
    pub fn forget_local(&self) {
        if let Some(local) = self.local.get()
            && let Ok(mut local) = local.try_borrow_mut()
        {
            local.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn workers_share_one_value_per_tenant() {
        let map: Arc<PerTenant<AtomicU32>> = Arc::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let map = &map;
                s.spawn(move || {
                    for _ in 0..1000 {
                        map.with("t", |v| v.fetch_add(1, Ordering::Relaxed));
                        map.with("u", |v| v.fetch_add(2, Ordering::Relaxed));
                    }
                });
            }
        });
        let count = |t: &str| map.get(t).map(|v| v.load(Ordering::Relaxed));
        assert_eq!(count("t"), Some(4000));
        assert_eq!(count("u"), Some(8000));
        assert_eq!(count("v"), None);
    }

    #[test]
    fn two_maps_on_one_thread_keep_their_own_values() {
        let (one, two) = (
            PerTenant::<AtomicU32>::default(),
            PerTenant::<AtomicU32>::default(),
        );
        one.with("t", |v| v.store(1, Ordering::Relaxed));
        two.with("t", |v| v.store(2, Ordering::Relaxed));
        assert_eq!(one.with("t", |v| v.load(Ordering::Relaxed)), 1);
        assert_eq!(two.with("t", |v| v.load(Ordering::Relaxed)), 2);
    }

    #[test]
    fn prune_keeps_what_a_cache_holds_and_what_is_busy() {
        let map: Arc<PerTenant<AtomicU32>> = Arc::default();
        map.with("idle", |_| ());
        map.with("busy", |v| v.store(1, Ordering::Relaxed));
        // Another thread caches "held": the sweep here must keep it.
        let (cached, release) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            s.spawn(|| {
                map.with("held", |_| ());
                cached.wait();
                release.wait();
                map.forget_local();
            });
            cached.wait();
            map.prune(|v| v.load(Ordering::Relaxed) == 0);
            let mut left: Vec<String> = Vec::new();
            map.for_each(|t, _| left.push(t.to_owned()));
            left.sort();
            assert_eq!(left, ["busy", "held"]);
            release.wait();
        });
        map.prune(|v| v.load(Ordering::Relaxed) == 0);
        assert_eq!(map.len(), 1, "only the busy one is left");
        // The value a worker works on is the one in the map.
        map.with("busy", |v| v.store(0, Ordering::Relaxed));
        map.prune(|v| v.load(Ordering::Relaxed) == 0);
        assert!(map.is_empty());
    }
}
