//! A store that measures another: every operation's latency
//! (`sandgate_store_duration_seconds{store, op}`) and failures
//! (`sandgate_store_errors_total{store, op}`). The gateway opens every store
//! through it, so each backend is measured the same way without any of them
//! knowing about metrics.

use std::future::Future;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};

use super::{RedisStore, SharedStore, Store, StoreError, StoreFuture};

/// The operations, in the order of [`Measured`]'s handle arrays.
const OPS: [&str; 10] = [
    "get",
    "put",
    "put_if_absent",
    "delete",
    "scan",
    "delete_prefix",
    "incr",
    "incr_background",
    "get_many",
    "write_many",
];

#[derive(Clone, Copy)]
enum Op {
    Get,
    Put,
    PutIfAbsent,
    Delete,
    Scan,
    DeletePrefix,
    Incr,
    IncrBackground,
    GetMany,
    WriteMany,
}

/// Wraps a store and measures it.
pub struct Measured {
    inner: SharedStore,
    duration: [Histogram; OPS.len()],
    errors: [Counter; OPS.len()],
}

impl std::fmt::Debug for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Measured")
            .field("store", &self.inner.kind())
            .finish_non_exhaustive()
    }
}

impl Measured {
    /// Measures `inner`. Metric handles are registered once, here.
    pub fn new(inner: SharedStore) -> Self {
        let kind = inner.kind();
        Self {
            duration: OPS.map(|op| metrics::histogram!("sandgate_store_duration_seconds", "store" => kind, "op" => op)),
            errors: OPS.map(|op| metrics::counter!("sandgate_store_errors_total", "store" => kind, "op" => op)),
            inner,
        }
    }

    /// Times `fut` as operation `op`, counting a failure.
    async fn timed<T>(
        &self,
        op: Op,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = fut.await;
        self.duration[op as usize].record(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors[op as usize].increment(1);
        }
        result
    }
}

impl Store for Measured {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.timed(Op::Get, self.inner.get(key)))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.timed(Op::Put, self.inner.put(key, value, ttl)))
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.timed(Op::PutIfAbsent, self.inner.put_if_absent(key, value, ttl)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(self.timed(Op::Delete, self.inner.delete(key)))
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        Box::pin(self.timed(Op::Scan, self.inner.scan(prefix, after, limit)))
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(self.timed(Op::DeletePrefix, self.inner.delete_prefix(prefix)))
    }

    fn incr<'a>(&'a self, key: &'a str, by: i64, ttl: Option<Duration>) -> StoreFuture<'a, i64> {
        Box::pin(self.timed(Op::Incr, self.inner.incr(key, by, ttl)))
    }

    // The batch operations of the background writers (decision traces) go
    // to the backend's own implementations: one transaction or pipeline,
    // and on Redis no effect on the request path's down window.
    fn incr_background<'a>(&'a self, key: &'a str, by: i64) -> StoreFuture<'a, i64> {
        Box::pin(self.timed(Op::IncrBackground, self.inner.incr_background(key, by)))
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(self.timed(Op::GetMany, self.inner.get_many(keys)))
    }

    fn write_many(&self, writes: Vec<super::Write>) -> StoreFuture<'_, ()> {
        Box::pin(self.timed(Op::WriteMany, self.inner.write_many(writes)))
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn for_background(&self) -> Option<SharedStore> {
        self.inner
            .for_background()
            .map(|inner| std::sync::Arc::new(Measured::new(inner)) as SharedStore)
    }

    fn as_redis(&self) -> Option<&RedisStore> {
        self.inner.as_redis()
    }
}
