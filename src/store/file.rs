//! The embedded file store (redb): ACID, crash-safe (every write is a
//! durable transaction, so a `kill -9` loses nothing that was acknowledged),
//! one file. Operations run on tokio's blocking pool.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::memory::parse_counter;
use super::{NowMillis, Store, StoreError, StoreFuture, bump, expiry, system_now};

/// key → 8-byte big-endian expiry (ms since epoch, 0 = never) ++ value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// The redb-backed store.
#[derive(Clone)]
pub struct FileStore {
    db: Arc<Database>,
    now: NowMillis,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore").finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn encode(expires: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&expires.to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn decode(raw: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt("entry shorter than its header".into()));
    }
    let (head, value) = raw.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(head);
    Ok((u64::from_be_bytes(b), value))
}

fn live(expires: u64, now: u64) -> bool {
    expires == 0 || expires > now
}

impl FileStore {
    /// Opens (or creates) the database file at `path`, creating its directory.
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        Self::open_with_clock(path, system_now)
    }

    /// Opens the database with the given clock (for tests).
    pub fn open_with_clock(path: &Path, now: NowMillis) -> Result<FileStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(unavailable)?;
        tx.open_table(KV).map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(FileStore {
            db: Arc::new(db),
            now,
        })
    }

    fn blocking<'a, T: Send + 'static>(
        &'a self,
        f: impl FnOnce(&Database, u64) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'a, T> {
        let db = self.db.clone();
        let now = (self.now)();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db, now))
                .await
                .map_err(unavailable)?
        })
    }

    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>, u64) -> Result<T, StoreError>
        + Send
        + 'static,
    ) -> StoreFuture<'_, T> {
        self.blocking(move |db, now| {
            let tx = db.begin_write().map_err(unavailable)?;
            let out = {
                let mut table = tx.open_table(KV).map_err(unavailable)?;
                f(&mut table, now)?
            };
            tx.commit().map_err(unavailable)?;
            Ok(out)
        })
    }
}

impl Store for FileStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        let key = key.to_owned();
        self.blocking(move |db, now| {
            let tx = db.begin_read().map_err(unavailable)?;
            let table = tx.open_table(KV).map_err(unavailable)?;
            let Some(raw) = table.get(key.as_str()).map_err(unavailable)? else {
                return Ok(None);
            };
            let (expires, value) = decode(raw.value())?;
            Ok(live(expires, now).then(|| value.to_vec()))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        let key = key.to_owned();
        self.write(move |t, now| {
            t.insert(key.as_str(), encode(expiry(now, ttl), &value).as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        let key = key.to_owned();
        self.write(move |t, now| {
            let present = match t.get(key.as_str()).map_err(unavailable)? {
                Some(raw) => live(decode(raw.value())?.0, now),
                None => false,
            };
            if present {
                return Ok(false);
            }
            t.insert(key.as_str(), encode(expiry(now, ttl), &value).as_slice())
                .map_err(unavailable)?;
            Ok(true)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        let key = key.to_owned();
        self.write(move |t, now| {
            let removed = t.remove(key.as_str()).map_err(unavailable)?;
            match removed {
                Some(raw) => Ok(live(decode(raw.value())?.0, now)),
                None => Ok(false),
            }
        })
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        self.blocking(move |db, now| {
            let tx = db.begin_read().map_err(unavailable)?;
            let table = tx.open_table(KV).map_err(unavailable)?;
            let start = after.clone().unwrap_or_else(|| prefix.clone());
            let mut out = Vec::new();
            for item in table.range(start.as_str()..).map_err(unavailable)? {
                let (k, v) = item.map_err(unavailable)?;
                let key = k.value();
                if after.as_deref() == Some(key) {
                    continue;
                }
                if !key.starts_with(prefix.as_str()) || out.len() >= limit {
                    break;
                }
                let (expires, value) = decode(v.value())?;
                if live(expires, now) {
                    out.push((key.to_owned(), value.to_vec()));
                }
            }
            Ok(out)
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        let prefix = prefix.to_owned();
        self.write(move |t, _| {
            let doomed: Vec<String> = t
                .range(prefix.as_str()..)
                .map_err(unavailable)?
                .map(|item| item.map(|(k, _)| k.value().to_owned()))
                .take_while(|k| k.as_ref().map_or(true, |k| k.starts_with(prefix.as_str())))
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            for k in &doomed {
                t.remove(k.as_str()).map_err(unavailable)?;
            }
            Ok(doomed.len() as u64)
        })
    }

    fn incr<'a>(&'a self, key: &'a str, by: i64, ttl: Option<Duration>) -> StoreFuture<'a, i64> {
        let key = key.to_owned();
        self.write(move |t, now| {
            let current = match t.get(key.as_str()).map_err(unavailable)? {
                Some(raw) => {
                    let (expires, value) = decode(raw.value())?;
                    if live(expires, now) {
                        Some((parse_counter(value)?, expires))
                    } else {
                        None
                    }
                }
                None => None,
            };
            let (value, expires) = bump(current, by, now, ttl);
            t.insert(
                key.as_str(),
                encode(expires, value.to_string().as_bytes()).as_slice(),
            )
            .map_err(unavailable)?;
            Ok(value)
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        let keys = keys.to_vec();
        self.blocking(move |db, now| {
            let tx = db.begin_read().map_err(unavailable)?;
            let table = tx.open_table(KV).map_err(unavailable)?;
            let mut out = Vec::with_capacity(keys.len());
            for key in &keys {
                out.push(match table.get(key.as_str()).map_err(unavailable)? {
                    Some(raw) => {
                        let (expires, value) = decode(raw.value())?;
                        live(expires, now).then(|| value.to_vec())
                    }
                    None => None,
                });
            }
            Ok(out)
        })
    }

    fn write_many(&self, writes: Vec<super::Write>) -> StoreFuture<'_, ()> {
        self.write(move |t, now| {
            for w in writes {
                match w {
                    super::Write::Put { key, value, ttl } => {
                        t.insert(key.as_str(), encode(expiry(now, ttl), &value).as_slice())
                            .map_err(unavailable)?;
                    }
                    super::Write::Delete { key } => {
                        t.remove(key.as_str()).map_err(unavailable)?;
                    }
                }
            }
            Ok(())
        })
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}
