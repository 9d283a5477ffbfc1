//! Stored objects: keys, ids, the storage count, reads and writes through
//! the [`Store`](crate::store::Store).
//!
//! Keys, under the tenant's prefix (`t/<tenant>/`):
//!
//! ```text
//! state/r/<resource>/<id>   one object (JSON)
//! state/seq                 the tenant's id sequence (atomic incr)
//! state/bytes               bytes of stored objects (atomic incr)
//! ```
//!
//! An id is the resource's prefix, 9 characters that count *down* with
//! the tenant's sequence, and 8 random ones: ids sort newest first, so a
//! forward scan of the resource's keys is a list in the contract's order
//! (newest first) and `starting_after` is a scan after that key.

use serde_json::Value;

use crate::store::{SharedStore, StoreError, keys};

/// Digits in ASCII order, so the text order of ids is their numeric order.
const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// 62^9 - 1: the largest sequence part.
const SEQ_MAX: u64 = 13_537_086_546_263_551;

/// Where a tenant's state lives, and whether writes happen (`commit`).
#[derive(Clone, Copy)]
pub struct Objects<'a> {
    /// The store.
    pub store: &'a SharedStore,
    /// The tenant.
    pub tenant: &'a str,
    /// False: a dry run; nothing is written and nothing counted.
    pub commit: bool,
}

/// What a storage write decided.
#[derive(Debug)]
pub enum Write {
    /// Stored (or, in a dry run, would have been).
    Done,
    /// The plan's storage would be exceeded: (bytes used, bytes needed).
    OverQuota(u64, u64),
}

fn base62(mut n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// An id for the `seq`-th object of a tenant: `prefix` + a part that sorts
/// newest first + a random part from `random`.
pub fn make_id(prefix: &str, seq: u64, random: u64) -> String {
    format!(
        "{prefix}{}{}",
        base62(SEQ_MAX.saturating_sub(seq), 9),
        base62(random, 8).chars().rev().collect::<String>()
    )
}

impl Objects<'_> {
    fn key(&self, rest: &str) -> String {
        keys::tenant_key(self.tenant, &format!("{}{rest}", keys::STATE))
    }

    /// The key of object `id` of `resource`.
    pub fn object_key(&self, resource: &str, id: &str) -> String {
        self.key(&format!("r/{resource}/{id}"))
    }

    /// The next value of the tenant's id sequence (a dry run reads it
    /// without moving it).
    pub async fn next_seq(&self) -> Result<u64, StoreError> {
        let key = self.key("seq");
        if self.commit {
            Ok(self.store.incr(&key, 1, None).await?.max(0) as u64)
        } else {
            Ok(counter(self.store.get(&key).await?) + 1)
        }
    }

    /// Bytes of stored objects.
    pub async fn bytes(&self) -> Result<u64, StoreError> {
        Ok(counter(self.store.get(&self.key("bytes")).await?))
    }

    /// The object `id` of `resource`.
    pub async fn get(&self, resource: &str, id: &str) -> Result<Option<Value>, StoreError> {
        if id.contains('/') {
            return Ok(None);
        }
        match self.store.get(&self.object_key(resource, id)).await? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(e.to_string())),
            None => Ok(None),
        }
    }

    /// Stores `object` (replacing `old`, of `old_len` bytes) within
    /// `limit` bytes of storage. The count is reserved with one atomic
    /// increment first, and given back when over the limit, so concurrent
    /// writers (on any replica) can never pass it together.
    pub async fn put(
        &self,
        resource: &str,
        id: &str,
        object: &Value,
        old_len: u64,
        limit: Option<u64>,
    ) -> Result<Write, StoreError> {
        let bytes = serde_json::to_vec(object).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let delta = bytes.len() as i64 - old_len as i64;
        let count = self.key("bytes");
        if !self.commit {
            let used = self.bytes().await?;
            let after = used.saturating_add_signed(delta);
            return Ok(match limit {
                Some(l) if delta > 0 && after > l => Write::OverQuota(used, delta as u64),
                _ => Write::Done,
            });
        }
        let after = self.store.incr(&count, delta, None).await?;
        if let Some(l) = limit
            && delta > 0
            && after.max(0) as u64 > l
        {
            self.store.incr(&count, -delta, None).await?;
            return Ok(Write::OverQuota(
                (after - delta).max(0) as u64,
                delta as u64,
            ));
        }
        self.store
            .put(&self.object_key(resource, id), bytes, None)
            .await?;
        Ok(Write::Done)
    }

    /// Deletes object `id` (of `len` bytes); returns whether it existed.
    pub async fn delete(&self, resource: &str, id: &str, len: u64) -> Result<bool, StoreError> {
        if !self.commit {
            return Ok(true);
        }
        let gone = self.store.delete(&self.object_key(resource, id)).await?;
        if gone {
            self.store
                .incr(&self.key("bytes"), -(len as i64), None)
                .await?;
        }
        Ok(gone)
    }

    /// Up to `limit` objects of `resource` after id `after`, newest first.
    pub async fn list(
        &self,
        resource: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let prefix = self.key(&format!("r/{resource}/"));
        let after_key = after.map(|a| format!("{prefix}{a}"));
        let page = self
            .store
            .scan(&prefix, after_key.as_deref(), limit)
            .await?;
        page.iter()
            .map(|(_, v)| serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }
}

/// The stored size of `object`.
pub fn size(object: &Value) -> u64 {
    serde_json::to_vec(object).map_or(0, |b| b.len() as u64)
}

fn counter(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map_or(0, |n| n.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::make_id;

    #[test]
    fn ids_sort_newest_first() {
        let a = make_id("cus_", 1, 7);
        let b = make_id("cus_", 2, 3);
        let c = make_id("cus_", 1000, u64::MAX);
        assert!(c < b && b < a, "{a} {b} {c}");
        assert!(a.starts_with("cus_") && a.len() == 4 + 17);
        assert!(a[4..].chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
