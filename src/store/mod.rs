//! The store: where tenants, credentials and (with later issues) counters,
//! state, idempotency records and traces live. One trait, several backends:
//! `memory` (tests, throwaway demos), `file` (embedded redb: survives a
//! restart and a `kill -9`), and `redis` (shared by replicas; limits issue).
//!
//! Keys are strings; everything that belongs to a tenant is under
//! [`keys::tenant`]'s prefix, so a reset is one `delete_prefix` and one
//! tenant can never name another tenant's key.

mod file;
mod measured;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

pub use file::FileStore;
pub use measured::Measured;
pub use memory::MemoryStore;
pub use redis::{RedisStore, redis_key};

/// Why a store operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded.
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

/// The future every store operation returns.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// A key-value store with expiry, ordered scans and atomic counters.
pub trait Store: Send + Sync + 'static {
    /// The value at `key`, unless absent or expired.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;
    /// Sets `key`, replacing any value; `ttl` makes it expire.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()>;
    /// Sets `key` only when it is absent (or expired); returns whether it was set.
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool>;
    /// Removes `key`; returns whether it was present.
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;
    /// Live entries whose key starts with `prefix`, in key order, after the
    /// key `after` (exclusive) when given, at most `limit`.
    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Vec<u8>)>>;
    /// Removes every key starting with `prefix`; returns how many.
    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64>;
    /// Atomically adds `by` to the integer at `key` (absent counts as 0) and
    /// returns the new value. `ttl` is applied when the counter is created.
    fn incr<'a>(&'a self, key: &'a str, by: i64, ttl: Option<Duration>) -> StoreFuture<'a, i64>;
    /// Like [`Store::incr`] without a TTL, for background writers: on
    /// Redis a failure or a slow answer does not count the store as down
    /// for the request path's operations.
    fn incr_background<'a>(&'a self, key: &'a str, by: i64) -> StoreFuture<'a, i64> {
        self.incr(key, by, None)
    }
    /// The values at `keys`, in order (absent or expired: `None`). One
    /// round trip where the backend allows (Redis `MGET`, one redb read
    /// transaction); the default asks key by key. For background work: on
    /// Redis a failure does not count the store as down.
    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                out.push(self.get(k).await?);
            }
            Ok(out)
        })
    }
    /// Applies `writes` in order, as one batch for the background writers
    /// (decision traces): one redb transaction, one Redis pipeline; the
    /// default writes them one by one.
    fn write_many(&self, writes: Vec<Write>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            for w in writes {
                match w {
                    Write::Put { key, value, ttl } => self.put(&key, value, ttl).await?,
                    Write::Delete { key } => {
                        self.delete(&key).await?;
                    }
                }
            }
            Ok(())
        })
    }
    /// The backend's name (`memory`, `file`, `redis`), for logs and metrics.
    fn kind(&self) -> &'static str;
    /// A handle on the same store for background workers (analytics,
    /// sweeps), when it should behave differently from the request path's:
    /// the Redis store's background handle never marks Redis down, so a
    /// worker's failures cannot refuse requests. `None`: use this one.
    fn for_background(&self) -> Option<SharedStore> {
        None
    }
    /// The Redis store, when this is one (cluster-wide limit decisions run
    /// as scripts in it).
    fn as_redis(&self) -> Option<&RedisStore> {
        None
    }
}

/// One write of a batch ([`Store::write_many`]).
#[derive(Debug, Clone)]
pub enum Write {
    /// Sets `key` (see [`Store::put`]).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Expiry.
        ttl: Option<Duration>,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
}

/// A shared store.
pub type SharedStore = Arc<dyn Store>;

/// Milliseconds since the Unix epoch: stored expiry times survive restarts.
pub type NowMillis = fn() -> u64;

/// The system clock, in milliseconds since the Unix epoch.
pub fn system_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Expiry instant of a value written at `now` with `ttl` (0: never).
fn expiry(now: u64, ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| now.saturating_add(t.as_millis() as u64).max(1))
}

/// The counter after adding `by`: an existing live counter (value, expiry)
/// keeps its expiry; a new one starts at `by` and expires after `ttl`.
fn bump(current: Option<(i64, u64)>, by: i64, now: u64, ttl: Option<Duration>) -> (i64, u64) {
    match current {
        Some((v, expires)) => (v.saturating_add(by), expires),
        None => (by, expiry(now, ttl)),
    }
}

/// Key layout. Every tenant-owned key starts with `t/<tenant>/`.
pub mod keys {
    /// Prefix of everything a tenant owns.
    pub fn tenant(tenant: &str) -> String {
        format!("t/{tenant}/")
    }
    /// A key owned by `tenant`.
    pub fn tenant_key(tenant: &str, rest: &str) -> String {
        format!("t/{tenant}/{rest}")
    }

    /// The facade state of a tenant (`crate::state`): stored objects,
    /// their id sequence and byte count.
    pub const STATE: &str = "state/";
    /// A tenant's idempotency records (`Idempotency-Key`).
    pub const IDEMPOTENCY: &str = "idem/";
    /// A tenant's test clock (one key).
    pub const CLOCK: &str = "clock";
    /// A tenant's usage analytics (`crate::analytics`): session record,
    /// "once" claims, engagement counters. Not in [`RESETTABLE`]: a reset
    /// wipes the sandbox's data, not the history of how it was used.
    pub const ANALYTICS: &str = "analytics/";
    /// A tenant's request log: decision traces in a ring (`crate::trace`).
    /// Not wiped by a reset: it is the history the partner debugs with.
    pub const TRACES: &str = "trace/";

    /// What a sandbox reset wipes, relative to [`tenant`]: the tenant's
    /// state, idempotency records and test clock. Everything else under the
    /// tenant's prefix survives a reset: its quota counters (`quota/`, so a
    /// reset never hands out a fresh allowance), rate-limit state
    /// (`rate/`) and the request log ([`TRACES`]). A key that is a prefix (ends in `/`) wipes everything
    /// under it; one that does not is a single key.
    pub const RESETTABLE: &[&str] = &[STATE, IDEMPOTENCY, CLOCK];
}

#[cfg(test)]
pub(crate) mod tests;
