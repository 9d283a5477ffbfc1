//! The cluster store: Redis (or Valkey), shared by every replica.
//!
//! Keys live under `sandgate:`; a tenant's keys carry its id as a hash tag
//! (`sandgate:t/{sbx_…}/…`), so everything one tenant owns lands on one
//! Redis Cluster slot and a script can touch several of its keys at once.
//! Expiry is Redis's own (`PX`). The connection is a `ConnectionManager`:
//! one multiplexed connection that reconnects by itself after Redis comes
//! back; every operation is bounded by `store.timeout`, so a slow or
//! unreachable Redis answers `Unavailable` in time instead of hanging a
//! request.
//!
//! Ordered scans (`scan`) read every matching key with `SCAN` and sort
//! them here: fine for listing tenants and other admin reads, not for the
//! request path.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use super::{Store, StoreError, StoreFuture};

/// Source of [`RedisStore`] ids.
static STORE_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    /// This thread's own connection to each Redis store it has used (by
    /// store id); see [`RedisStore::connection`].
    static WORKER_CONNS: std::cell::RefCell<Vec<(u64, ConnectionManager)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Every key of sandgate starts with this.
const NAMESPACE: &str = "sandgate:";

/// A store in Redis.
#[derive(Clone)]
pub struct RedisStore {
    /// The connection made at start, on the runtime that connected (the
    /// control runtime); used from threads that are not workers.
    conn: ConnectionManager,
    /// For the workers' own connections.
    client: redis::Client,
    config: redis::aio::ConnectionManagerConfig,
    /// Tells this store's connections apart in [`WORKER_CONNS`].
    id: u64,
    timeout: Duration,
    incr: redis::Script,
    /// Until when (ms after `epoch`) Redis counts as down: set by a
    /// timeout or a connection failure, for one `timeout`.
    down_until: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The origin of `down_until`.
    epoch: std::time::Instant,
    /// Whether a failure of this handle marks Redis down. The handle given
    /// to background workers ([`Store::for_background`]) does not: a
    /// worker retrying after a restart must not put requests in a window
    /// of refusals.
    trips: bool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The Redis key of store key `key`: namespaced, the tenant hash-tagged.
pub fn redis_key(key: &str) -> String {
    match key.strip_prefix("t/").and_then(|r| r.split_once('/')) {
        Some((tenant, rest)) => format!("{NAMESPACE}t/{{{tenant}}}/{rest}"),
        None => format!("{NAMESPACE}{key}"),
    }
}

/// The store key of Redis key `rkey`.
fn store_key(rkey: &str) -> Option<String> {
    let key = rkey.strip_prefix(NAMESPACE)?;
    match key.strip_prefix("t/{").and_then(|r| r.split_once("}/")) {
        Some((tenant, rest)) => Some(format!("t/{tenant}/{rest}")),
        None => Some(key.to_owned()),
    }
}

/// A `SCAN MATCH` pattern for every Redis key of store keys starting with `prefix`.
fn pattern(prefix: &str) -> String {
    let mapped = match prefix.strip_prefix("t/") {
        // A whole tenant id (with its slash) can be tagged; a partial one cannot.
        Some(r) if r.contains('/') => redis_key(prefix),
        _ => format!("{NAMESPACE}{prefix}"),
    };
    let mut out = String::with_capacity(mapped.len() + 1);
    for c in mapped.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    // Under a tagged tenant, `{` and `}` are literal; a bare `t/` prefix
    // must also match the braces of every tenant's tag.
    out.push('*');
    out
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`); operations time out after `timeout`.
    pub async fn connect(url: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(timeout.max(Duration::from_millis(200)))
            .set_response_timeout(timeout)
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let conn = tokio::time::timeout(
            timeout.max(Duration::from_secs(2)),
            ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await
        .map_err(|_| unavailable(format!("no answer from {url}")))?
        .map_err(unavailable)?;
        Ok(RedisStore {
            conn,
            client,
            config,
            id: STORE_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            timeout,
            down_until: std::sync::Arc::default(),
            epoch: std::time::Instant::now(),
            trips: true,
            incr: redis::Script::new(
                r"local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v == tonumber(ARGV[1]) and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v",
            ),
        })
    }

    /// The connection to use on this thread. A worker thread (a
    /// single-threaded runtime) gets its own, made on first use, so its
    /// exchanges with Redis stay on its runtime like its upstream pool: a
    /// shared connection's driver task would live on the control runtime,
    /// and every request would cross threads twice. Other threads share
    /// the one made at start. A multiplexed connection: clones are cheap.
    pub async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        if Handle::current().runtime_flavor() != RuntimeFlavor::CurrentThread {
            return Ok(self.conn.clone());
        }
        let mine = WORKER_CONNS.with_borrow(|conns| {
            conns
                .iter()
                .find(|(id, _)| *id == self.id)
                .map(|(_, c)| c.clone())
        });
        if let Some(conn) = mine {
            return Ok(conn);
        }
        let conn = self
            .bounded(ConnectionManager::new_with_config(
                self.client.clone(),
                self.config.clone(),
            ))
            .await?;
        WORKER_CONNS.with_borrow_mut(|conns| {
            if !conns.iter().any(|(id, _)| *id == self.id) {
                conns.push((self.id, conn.clone()));
            }
        });
        Ok(conn)
    }

    /// The configured operation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs a background operation (batches of the trace writer): bounded
    /// by at least 2 s, since a batch may be large, and never marking Redis
    /// as down, so background trouble does not refuse requests.
    async fn background<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout.max(Duration::from_secs(2)), f)
            .await
            .map_err(|_| unavailable("a background batch timed out"))?
            .map_err(unavailable)
    }

    /// Runs one Redis operation within `timeout`. A timeout or a broken
    /// connection marks Redis down for one `timeout`: operations in that
    /// window fail at once instead of each waiting a full `timeout`, so a
    /// request that needs the store several times (identity, clock,
    /// limits) still gets its answer within about one `timeout`, and a
    /// struggling Redis is not piled on. The first operation after the
    /// window tries Redis again.
    pub async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        let now = || u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if now() < self.down_until.load(Ordering::Relaxed) {
            return Err(unavailable(format!(
                "redis failed less than {} ago; not asked again yet",
                humantime::format_duration(self.timeout)
            )));
        }
        let trip = || {
            if !self.trips {
                return;
            }
            let window = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
            self.down_until
                .store(now().saturating_add(window), Ordering::Relaxed);
        };
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                {
                    trip();
                }
                Err(unavailable(e))
            }
            Err(_) => {
                trip();
                Err(unavailable(format!(
                    "redis did not answer within {}",
                    humantime::format_duration(self.timeout)
                )))
            }
        }
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.connection().await?;
        let pattern = pattern(prefix);
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .bounded(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            out.extend(
                batch
                    .iter()
                    .filter_map(|k| store_key(k).map(|s| (s, k.clone())))
                    .filter(|(s, _)| s.starts_with(prefix))
                    .map(|(_, k)| k),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }
}

fn px(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|t| (t.as_millis() as u64).max(1))
}

impl Store for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            self.bounded(conn.get(redis_key(key))).await
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(redis_key(key)).arg(value);
            if let Some(ms) = px(ttl) {
                cmd.arg("PX").arg(ms);
            }
            self.bounded(cmd.query_async::<()>(&mut conn)).await
        })
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(redis_key(key)).arg(value).arg("NX");
            if let Some(ms) = px(ttl) {
                cmd.arg("PX").arg(ms);
            }
            let set: Option<String> = self.bounded(cmd.query_async(&mut conn)).await?;
            Ok(set.is_some())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let n: u64 = self.bounded(conn.del(redis_key(key))).await?;
            Ok(n > 0)
        })
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        Box::pin(async move {
            let mut keys: Vec<(String, String)> = self
                .keys(prefix)
                .await?
                .into_iter()
                .filter_map(|rk| store_key(&rk).map(|k| (k, rk)))
                .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
                .collect();
            keys.sort();
            keys.truncate(limit);
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut conn = self.connection().await?;
            let rkeys: Vec<&str> = keys.iter().map(|(_, rk)| rk.as_str()).collect();
            let values: Vec<Option<Vec<u8>>> = self
                .bounded(redis::cmd("MGET").arg(&rkeys).query_async(&mut conn))
                .await?;
            // A key that expired between SCAN and MGET is left out.
            Ok(keys
                .into_iter()
                .zip(values)
                .filter_map(|((k, _), v)| v.map(|v| (k, v)))
                .collect())
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let keys = self.keys(prefix).await?;
            let mut conn = self.connection().await?;
            let mut removed = 0u64;
            for chunk in keys.chunks(500) {
                let n: u64 = self
                    .bounded(redis::cmd("UNLINK").arg(chunk).query_async(&mut conn))
                    .await?;
                removed += n;
            }
            Ok(removed)
        })
    }

    fn incr<'a>(&'a self, key: &'a str, by: i64, ttl: Option<Duration>) -> StoreFuture<'a, i64> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let mut inv = self.incr.key(redis_key(key));
            inv.arg(by).arg(px(ttl).unwrap_or(0));
            self.bounded(inv.invoke_async(&mut conn)).await
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut conn = self.connection().await?;
            let rkeys: Vec<String> = keys.iter().map(|k| redis_key(k)).collect();
            self.background(redis::cmd("MGET").arg(&rkeys).query_async(&mut conn))
                .await
        })
    }

    fn incr_background<'a>(&'a self, key: &'a str, by: i64) -> StoreFuture<'a, i64> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let mut inv = self.incr.key(redis_key(key));
            inv.arg(by).arg(0);
            self.background(inv.invoke_async(&mut conn)).await
        })
    }

    fn write_many(&self, writes: Vec<super::Write>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            let mut conn = self.connection().await?;
            let mut pipe = redis::pipe();
            for w in writes {
                match w {
                    super::Write::Put { key, value, ttl } => {
                        let cmd = pipe.cmd("SET").arg(redis_key(&key)).arg(value);
                        if let Some(ms) = px(ttl) {
                            cmd.arg("PX").arg(ms);
                        }
                        cmd.ignore();
                    }
                    super::Write::Delete { key } => {
                        pipe.cmd("DEL").arg(redis_key(&key)).ignore();
                    }
                }
            }
            self.background(pipe.query_async::<()>(&mut conn)).await
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn for_background(&self) -> Option<super::SharedStore> {
        Some(std::sync::Arc::new(RedisStore {
            conn: self.conn.clone(),
            client: self.client.clone(),
            config: self.config.clone(),
            id: self.id,
            timeout: self.timeout,
            incr: self.incr.clone(),
            // It still skips Redis while the request path counts it down.
            down_until: self.down_until.clone(),
            epoch: self.epoch,
            trips: false,
        }))
    }

    fn as_redis(&self) -> Option<&RedisStore> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_keys_are_hash_tagged_and_map_back() {
        for (key, rkey) in [
            ("t/sbx_1/quota/day/0", "sandgate:t/{sbx_1}/quota/day/0"),
            ("g/clients/cli_1", "sandgate:g/clients/cli_1"),
            ("t/sbx_1/", "sandgate:t/{sbx_1}/"),
        ] {
            assert_eq!(redis_key(key), rkey);
            assert_eq!(store_key(rkey).as_deref(), Some(key));
        }
        assert_eq!(pattern("t/sbx_1/"), "sandgate:t/{sbx_1}/*");
        assert_eq!(pattern("t/"), "sandgate:t/*");
        assert_eq!(pattern("g/a*b"), "sandgate:g/a\\*b*");
    }
}
