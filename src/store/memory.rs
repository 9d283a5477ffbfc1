//! The in-memory store: a mutex-protected ordered map. Nothing survives the
//! process; for tests and throwaway demos.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{NowMillis, Store, StoreError, StoreFuture, bump, expiry, system_now};

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    /// Expiry in ms since the epoch; 0 = never.
    expires: u64,
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    map: Mutex<BTreeMap<String, Entry>>,
    now: NowMillis,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_clock(system_now)
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store on the given clock (for tests).
    pub fn with_clock(now: NowMillis) -> Self {
        Self {
            map: Mutex::new(BTreeMap::new()),
            now,
        }
    }

    fn locked<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Entry>, u64) -> T,
    ) -> Result<T, StoreError> {
        let now = (self.now)();
        let mut map = self
            .map
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?;
        Ok(f(&mut map, now))
    }
}

fn live(e: &Entry, now: u64) -> bool {
    e.expires == 0 || e.expires > now
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        let r = self.locked(|m, now| m.get(key).filter(|e| live(e, now)).map(|e| e.value.clone()));
        Box::pin(async move { r })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        let r = self.locked(|m, now| {
            m.insert(
                key.to_owned(),
                Entry {
                    value,
                    expires: expiry(now, ttl),
                },
            );
        });
        Box::pin(async move { r })
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        let r = self.locked(|m, now| {
            if m.get(key).is_some_and(|e| live(e, now)) {
                return false;
            }
            m.insert(
                key.to_owned(),
                Entry {
                    value,
                    expires: expiry(now, ttl),
                },
            );
            true
        });
        Box::pin(async move { r })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        let r = self.locked(|m, now| m.remove(key).is_some_and(|e| live(&e, now)));
        Box::pin(async move { r })
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        let r = self.locked(|m, now| {
            let start = after.map_or_else(|| prefix.to_owned(), str::to_owned);
            m.range(start..)
                .filter(|(k, _)| after.is_none_or(|a| k.as_str() != a))
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter(|(_, e)| live(e, now))
                .take(limit)
                .map(|(k, e)| (k.clone(), e.value.clone()))
                .collect()
        });
        Box::pin(async move { r })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        let r = self.locked(|m, _| {
            let doomed: Vec<String> = m
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &doomed {
                m.remove(k);
            }
            doomed.len() as u64
        });
        Box::pin(async move { r })
    }

    fn incr<'a>(&'a self, key: &'a str, by: i64, ttl: Option<Duration>) -> StoreFuture<'a, i64> {
        let r = self.locked(|m, now| {
            let current = match m.get(key) {
                Some(e) if live(e, now) => Some((parse_counter(&e.value)?, e.expires)),
                _ => None,
            };
            let (value, expires) = bump(current, by, now, ttl);
            m.insert(
                key.to_owned(),
                Entry {
                    value: value.to_string().into_bytes(),
                    expires,
                },
            );
            Ok(value)
        });
        Box::pin(async move { r? })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// Counters are stored as decimal text (as Redis does).
pub(super) fn parse_counter(bytes: &[u8]) -> Result<i64, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Corrupt("counter is not an integer".into()))
}
