//! Where traces are kept: a bounded queue from the request path to one
//! background writer per process, and a per-tenant ring in the store.
//!
//! Key layout, under the tenant's prefix `t/<tenant>/` ([`keys::TRACES`]):
//!
//! ```text
//! trace/seq          counter: the tenant's last trace number n (no TTL)
//! trace/slot/<k>     the full trace JSON of number n, k = n mod max_per_tenant
//! trace/sum/<k>      its summary (what the listing shows and filters on)
//! trace/id/<id>      {"slot": k, "seq": n}: the lookup by request id
//! ```
//!
//! Every key but the counter expires after `traces.max_age`. The ring holds
//! at most `max_per_tenant` traces: number n overwrites slot k, and the
//! writer removes the id entry of the trace it overwrites (when that entry
//! still points at the slot). A lookup is two direct gets (id, then slot)
//! and checks that the slot still holds that request, so an id whose trace
//! was overwritten (or a client id used twice, where the newest wins)
//! answers "not found" instead of another request. Request ids are
//! `[A-Za-z0-9._:-]{1,128}` (`edge::request_id`), so they are safe in a key.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::{Pending, Settings, Trace};
use crate::store::{Store, StoreError, Write, keys};

/// Most traces written in one batch (one store transaction or pipeline).
/// Larger batches spend less per trace on commits, but the writer renders
/// a batch in one go; at 64 that is a short burst of CPU, followed by its
/// pause, rather than a long one that delays the requests sharing the cores.
const BATCH: usize = 64;

/// The queue from the request path to the background writer. Cheap to
/// clone; submitting never waits.
///
/// When the queue is full (the writer is behind), a successful request is
/// not traced at all (`reason="queue_full"`: nothing is built for it), and
/// an error or refusal, the trace a partner comes looking for, pushes out
/// the oldest queued trace (`reason="overwritten"`). The
/// writer spends at most its CPU budget (`traces.writer_cpu_percent` of one
/// core): after each batch it pauses for as long as the batch took, times
/// the budget's complement. Under light traffic that pause is a fraction of
/// a millisecond; under a flood it keeps tracing from taking the cores away
/// from the requests, and what accumulates meanwhile is coalesced (only the
/// newest `max_per_tenant` of a tenant can be in its ring anyway).
#[derive(Clone, Debug, Default)]
pub struct Sink(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// One queue per worker thread (and one for any other thread), so
    /// workers never contend for a lock and a pushed-out trace is freed on
    /// the thread that made it. Set when the writer starts.
    shards: OnceLock<Box<[Shard]>>,
    /// Capacity of each shard; 0 until the writer starts.
    capacity: AtomicUsize,
    /// Work for the writer.
    wake: Notify,
    /// A lookup waits: the writer skips its pause.
    hurry: Notify,
    /// Traces accepted into the queue.
    submitted: AtomicU64,
    /// Traces pushed out of the full queue (done with, never written).
    overwritten: AtomicU64,
    /// Successful requests not traced because the queue was full.
    skipped: AtomicU64,
    /// What the writer has already added to the metrics of the two above.
    published: Mutex<(u64, u64)>,
    /// Traces the writer has finished with (written, failed or coalesced away).
    processed: OnceLock<watch::Sender<u64>>,
}

/// One worker's queue.
#[derive(Debug, Default)]
struct Shard {
    queue: Mutex<VecDeque<Box<Pending>>>,
    /// Its length (read without the lock).
    len: AtomicUsize,
}

impl Sink {
    /// A sink whose writer is not started yet (traces are dropped until then).
    pub fn new() -> Sink {
        Sink::default()
    }

    /// Opens the queue with room for `capacity` traces, shared out between
    /// `workers` worker threads; `false` when it was already started.
    fn start(&self, capacity: usize, workers: usize) -> bool {
        let shards = (0..=workers.max(1)).map(|_| Shard::default()).collect();
        if self.0.shards.set(shards).is_err() {
            return false;
        }
        let _ = self.0.processed.set(watch::Sender::new(0));
        self.0
            .capacity
            .store(capacity.div_ceil(workers.max(1)).max(1), Ordering::Release);
        true
    }

    /// The current thread's queue, once the writer runs.
    fn shard(&self) -> Option<(&Shard, usize)> {
        let capacity = self.0.capacity.load(Ordering::Acquire);
        let shards = self.0.shards.get().filter(|_| capacity > 0)?;
        Some((
            &shards[crate::server::worker_slot() % shards.len()],
            capacity,
        ))
    }

    /// Whether a success that ended now would find room in this thread's
    /// queue (counts nothing). While it would not, a request's headers are
    /// not copied for its trace: only an error's trace would be written,
    /// and it goes without them.
    pub(super) fn likely_room(&self) -> bool {
        self.shard()
            .is_some_and(|(shard, capacity)| shard.len.load(Ordering::Relaxed) < capacity)
    }

    /// Whether the trace of a request that ended with an error (`error`)
    /// or a success should be built and queued now. Counts what it turns
    /// away.
    pub(super) fn has_room(&self, error: bool) -> bool {
        let Some((shard, capacity)) = self.shard() else {
            dropped("not_started", 1);
            return false;
        };
        if error || shard.len.load(Ordering::Relaxed) < capacity {
            return true;
        }
        self.0.skipped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Adds what the request path counted to the metrics (from the writer,
    /// so requests never touch the metrics registry for it).
    fn publish(&self) {
        let Ok(mut p) = self.0.published.lock() else {
            return;
        };
        let overwritten = self.0.overwritten.load(Ordering::Acquire);
        let skipped = self.0.skipped.load(Ordering::Acquire);
        if overwritten > p.0 {
            dropped("overwritten", overwritten - p.0);
        }
        if skipped > p.1 {
            dropped("queue_full", skipped - p.1);
        }
        *p = (overwritten, skipped);
    }

    /// Queues a finished trace, pushing out the oldest when the queue is
    /// full (never waits).
    pub(super) fn submit(&self, p: Box<Pending>) {
        let Some((shard, capacity)) = self.shard() else {
            dropped("not_started", 1);
            return;
        };
        let old = {
            let Ok(mut q) = shard.queue.lock() else {
                return;
            };
            let old = (q.len() >= capacity).then(|| q.pop_front()).flatten();
            q.push_back(p);
            shard.len.store(q.len(), Ordering::Relaxed);
            // Counted under the lock, so a lookup that starts after this
            // request ended waits for it.
            self.0.submitted.fetch_add(1, Ordering::AcqRel);
            if old.is_some() {
                self.0.overwritten.fetch_add(1, Ordering::AcqRel);
            }
            old
        };
        self.0.wake.notify_one();
        // The pushed-out trace is freed here, outside the lock.
        drop(old);
    }

    /// Everything queued now.
    #[expect(
        clippy::vec_box,
        reason = "a trace is boxed once on the request path; sorting and coalescing move pointers, not records"
    )]
    fn take(&self) -> Vec<Box<Pending>> {
        let mut all = Vec::new();
        for shard in self.0.shards.get().into_iter().flatten() {
            let taken = shard.queue.lock().map(|mut q| {
                shard.len.store(0, Ordering::Relaxed);
                std::mem::take(&mut *q)
            });
            all.extend(taken.unwrap_or_default());
        }
        // The shards interleave in time: oldest first again.
        all.sort_by_key(|p| p.at_ms());
        all
    }

    fn processed(&self, n: usize) {
        if let Some(w) = self.0.processed.get() {
            w.send_modify(|v| *v += n as u64);
        }
    }

    /// Waits (at most `within`) until every trace queued before this call
    /// has been written (or dropped), so a partner who looks a request up
    /// right after its answer finds it. The writer skips its pause for it.
    /// Returns at once when nothing is pending.
    pub async fn settle(&self, within: Duration) {
        let target = self.0.submitted.load(Ordering::Acquire);
        let Some(w) = self.0.processed.get() else {
            return;
        };
        let overwritten = &self.0.overwritten;
        let done = |v: &u64| *v + overwritten.load(Ordering::Acquire) >= target;
        if done(&w.borrow()) {
            return;
        }
        self.0.hurry.notify_one();
        let mut rx = w.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(done)).await;
    }
}

fn dropped(reason: &'static str, n: u64) {
    metrics::counter!("sandgate_traces_dropped_total", "reason" => reason).increment(n);
}

fn key(tenant: &str, rest: std::fmt::Arguments<'_>) -> String {
    keys::tenant_key(tenant, &format!("{}{rest}", keys::TRACES))
}

fn seq_key(tenant: &str) -> String {
    key(tenant, format_args!("seq"))
}
fn slot_key(tenant: &str, slot: i64) -> String {
    key(tenant, format_args!("slot/{slot}"))
}
fn sum_key(tenant: &str, slot: i64) -> String {
    key(tenant, format_args!("sum/{slot}"))
}
fn sum_prefix(tenant: &str) -> String {
    key(tenant, format_args!("sum/"))
}
fn id_key(tenant: &str, request_id: &str) -> String {
    key(tenant, format_args!("id/{request_id}"))
}

/// What the lookup by id finds.
#[derive(Debug, Serialize, Deserialize)]
struct IdEntry {
    slot: i64,
    seq: i64,
}

/// One line of the request log (`GET /_sandbox/requests`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The request id.
    pub request_id: String,
    /// The tenant's trace number (newest is highest).
    pub seq: i64,
    /// Arrival, ms since the Unix epoch (server time).
    pub at_ms: u64,
    /// Arrival, RFC 3339.
    pub received_at: String,
    /// Method.
    pub method: String,
    /// Path (card numbers masked).
    pub path: String,
    /// The API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The operation id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The answer's status.
    pub status: u16,
    /// The refusal code, when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The stage that refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Where the answer came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Time to the response head, ms.
    pub latency_ms: f64,
}

impl Summary {
    fn of(t: &Trace, seq: i64, at_ms: u64) -> Summary {
        Summary {
            request_id: t.request_id.clone(),
            seq,
            at_ms,
            received_at: t.received_at.clone(),
            method: t.method.clone(),
            path: t.path.clone(),
            api: t.api.clone(),
            operation: t.operation.clone(),
            status: t.status,
            code: t.refusal.as_ref().map(|r| r.code.clone()),
            stage: t.refusal.as_ref().map(|r| r.stage.clone()),
            source: t.source.clone(),
            dry_run: t.dry_run,
            latency_ms: t.latency_ms,
        }
    }
}

/// The background writer: takes what is queued, keeps the newest
/// `max_per_tenant` of each tenant (older ones would be overwritten in the
/// ring by the same batch), scrubs and serializes them, and writes them to
/// the store in batches, pausing after each to stay within its CPU budget.
/// Runs until the task is dropped; `settings` gives the current `traces:`
/// settings (they follow reloads, except the queue size).
pub async fn write_behind(
    sink: Sink,
    store: crate::store::SharedStore,
    workers: usize,
    settings: impl Fn() -> Settings,
) {
    if !sink.start(settings().queue, workers) {
        return;
    }
    loop {
        let woken = sink.0.wake.notified();
        sink.publish();
        let queued = sink.take();
        if queued.is_empty() {
            woken.await;
            continue;
        }
        let s = settings();
        let (keep, superseded) = newest_per_tenant(queued, s.max_per_tenant as usize);
        if superseded > 0 {
            dropped("overwritten", superseded as u64);
            sink.processed(superseded);
        }
        let mut keep = keep.into_iter().peekable();
        while keep.peek().is_some() {
            let batch: Vec<Box<Pending>> = keep.by_ref().take(BATCH).collect();
            let n = batch.len();
            let started = std::time::Instant::now();
            if let Err(e) = write_batch(&*store, &s, batch.into_iter()).await {
                // The store's own failure is counted by `store::Measured`.
                dropped("store", n as u64);
                tracing::warn!(error = %e, traces = n, "could not write decision traces");
            } else {
                metrics::counter!("sandgate_traces_written_total").increment(n as u64);
            }
            sink.processed(n);
            // Stay within the budget: pause (busy × (100 − p) / p), and at
            // least POLL, so that while traffic flows the requests' submits
            // find the writer busy or asleep and wake nobody; a lookup
            // waiting for its trace cuts the pause short.
            let p = u32::from(s.writer_cpu_percent.clamp(1, 100));
            let pause = (started.elapsed() * (100 - p) / p).max(POLL);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = sink.0.hurry.notified() => {}
            }
        }
    }
}

/// The shortest pause between two batches of the writer.
const POLL: Duration = Duration::from_millis(10);

/// The newest `ring` traces of each tenant, in queue order, and how many
/// older ones were left out.
#[expect(
    clippy::vec_box,
    reason = "a trace is boxed once on the request path; sorting and coalescing move pointers, not records"
)]
fn newest_per_tenant(queued: Vec<Box<Pending>>, ring: usize) -> (Vec<Box<Pending>>, usize) {
    let mut left: HashMap<&str, usize> = HashMap::new();
    let mut keep = vec![false; queued.len()];
    for (i, p) in queued.iter().enumerate().rev() {
        let n = left.entry(p.tenant()).or_insert(ring.max(1));
        if *n > 0 {
            *n -= 1;
            keep[i] = true;
        }
    }
    drop(left);
    let total = queued.len();
    let kept: Vec<Box<Pending>> = queued
        .into_iter()
        .zip(keep)
        .filter_map(|(p, k)| k.then_some(p))
        .collect();
    let superseded = total - kept.len();
    (kept, superseded)
}

/// Writes one batch: a number per trace from each tenant's counter, the
/// id entries of the traces they overwrite removed, then every put.
async fn write_batch(
    store: &dyn Store,
    settings: &Settings,
    items: impl Iterator<Item = Box<Pending>>,
) -> Result<(), StoreError> {
    // Writing out, scrubbing and serializing is CPU work: on the blocking
    // pool, so it never holds up the tasks of the runtime the writer runs on
    // (the admin listener, other background work).
    let items: Vec<Box<Pending>> = items.collect();
    let rendered = tokio::task::spawn_blocking(move || {
        items
            .into_iter()
            .map(|p| {
                let at_ms = p.at_ms;
                let t = p.render();
                let body = json(&t);
                (at_ms, t, body)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("the trace renderer failed: {e}")))?;
    let mut by_tenant: BTreeMap<String, Vec<(u64, Trace, Vec<u8>)>> = BTreeMap::new();
    for (at_ms, t, body) in rendered {
        by_tenant
            .entry(t.sandbox_id.clone())
            .or_default()
            .push((at_ms, t, body));
    }
    let ring = i64::from(settings.max_per_tenant.max(1));
    let ttl = Some(settings.max_age);
    let mut puts = Vec::new();
    let mut overwritten_sums = Vec::new();
    for (tenant, traces) in by_tenant {
        let m = traces.len() as i64;
        let last = store.incr_background(&seq_key(&tenant), m).await?;
        for (i, (at_ms, t, body)) in traces.into_iter().enumerate() {
            let seq = last - m + 1 + i as i64;
            let slot = seq.rem_euclid(ring);
            overwritten_sums.push((tenant.clone(), slot, sum_key(&tenant, slot)));
            let summary = Summary::of(&t, seq, at_ms);
            puts.push(Write::Put {
                key: id_key(&tenant, &t.request_id),
                value: json(&IdEntry { slot, seq }),
                ttl,
            });
            puts.push(Write::Put {
                key: sum_key(&tenant, slot),
                value: json(&summary),
                ttl,
            });
            puts.push(Write::Put {
                key: slot_key(&tenant, slot),
                value: body,
                ttl,
            });
        }
    }
    // The id entries of the traces about to be overwritten, when they still
    // point at their slot (a client id used again later points elsewhere).
    let sum_keys: Vec<String> = overwritten_sums.iter().map(|(_, _, k)| k.clone()).collect();
    let old = store.get_many(&sum_keys).await?;
    let mut candidates = Vec::new();
    for ((tenant, slot, _), old) in overwritten_sums.iter().zip(old) {
        if let Some(s) = old.and_then(|b| serde_json::from_slice::<Summary>(&b).ok()) {
            candidates.push((id_key(tenant, &s.request_id), *slot, s.seq));
        }
    }
    let mut writes = Vec::with_capacity(candidates.len() + puts.len());
    if !candidates.is_empty() {
        let id_keys: Vec<String> = candidates.iter().map(|(k, _, _)| k.clone()).collect();
        let entries = store.get_many(&id_keys).await?;
        for ((k, slot, seq), e) in candidates.into_iter().zip(entries) {
            if let Some(e) = e.and_then(|b| serde_json::from_slice::<IdEntry>(&b).ok())
                && e.slot == slot
                && e.seq == seq
            {
                writes.push(Write::Delete { key: k });
            }
        }
    }
    writes.extend(puts);
    store.write_many(writes).await
}

/// A value the writer stores, as JSON (these types always serialize).
fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Whether `id` could be a request id (`edge::request_id`): anything else
/// is simply not found, and never becomes part of a key.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The trace of request `request_id` of `tenant`, as stored JSON, when
/// the tenant's log still holds it. Two direct gets, no scan.
pub async fn lookup(
    store: &dyn Store,
    tenant: &str,
    request_id: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    if !valid_request_id(request_id) {
        return Ok(None);
    }
    let Some(entry) = store.get(&id_key(tenant, request_id)).await? else {
        return Ok(None);
    };
    let Ok(entry) = serde_json::from_slice::<IdEntry>(&entry) else {
        return Ok(None);
    };
    let Some(raw) = store.get(&slot_key(tenant, entry.slot)).await? else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // The slot may hold a newer request by now.
    Ok((v.get("request_id").and_then(|r| r.as_str()) == Some(request_id)).then_some(v))
}

/// The filters of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Most entries answered (1 to 100; default 20).
    pub limit: usize,
    /// Exact status (`429`) or class (`4` for `4xx`).
    pub status: Option<StatusFilter>,
    /// Operation id.
    pub operation: Option<String>,
    /// Refusal code.
    pub code: Option<String>,
}

/// A status filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// One status.
    Exact(u16),
    /// A class: `4` is `4xx`.
    Class(u16),
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            limit: 20,
            status: None,
            operation: None,
            code: None,
        }
    }
}

impl Filter {
    /// Parses `limit=&status=&operation=&code=`; a bad or unknown
    /// parameter is `(pointer, message)` (`/query/limit`).
    pub fn parse(query: Option<&str>) -> Result<Filter, (String, String)> {
        let mut f = Filter::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let at = format!("/query/{k}");
            match &*k {
                "limit" => {
                    f.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or((at, format!("`{v}` is not a number from 1 to 100")))?;
                }
                "status" => {
                    let b = v.as_bytes();
                    f.status = Some(match b {
                        [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                            StatusFilter::Class(u16::from(c - b'0'))
                        }
                        _ => StatusFilter::Exact(
                            v.parse::<u16>()
                                .ok()
                                .filter(|s| (100..=599).contains(s))
                                .ok_or((
                                    at,
                                    format!("`{v}` is not a status (such as 429) or a class (such as 4xx)"),
                                ))?,
                        ),
                    });
                }
                "operation" => {
                    if v.is_empty()
                        || v.len() > 128
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                    {
                        return Err((at, format!("`{v}` is not an operation id")));
                    }
                    f.operation = Some(v.into_owned());
                }
                "code" => {
                    if v.is_empty()
                        || v.len() > 64
                        || !v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    {
                        return Err((
                            at,
                            format!(
                                "`{v}` is not a refusal code (snake_case, such as rate_limited)"
                            ),
                        ));
                    }
                    f.code = Some(v.into_owned());
                }
                _ => {
                    return Err((
                        at,
                        "unknown parameter; the filters are limit, status, operation and code"
                            .into(),
                    ));
                }
            }
        }
        Ok(f)
    }

    fn matches(&self, s: &Summary) -> bool {
        let status = match self.status {
            None => true,
            Some(StatusFilter::Exact(x)) => s.status == x,
            Some(StatusFilter::Class(c)) => s.status / 100 == c,
        };
        status
            && self
                .operation
                .as_ref()
                .is_none_or(|o| s.operation.as_deref() == Some(o.as_str()))
            && self
                .code
                .as_ref()
                .is_none_or(|c| s.code.as_deref() == Some(c.as_str()))
    }
}

/// The tenant's log, newest first, filtered. Reads the tenant's ring of
/// summaries (bounded by `max_per_tenant`), never the full traces.
pub async fn list(
    store: &dyn Store,
    settings: &Settings,
    tenant: &str,
    filter: &Filter,
) -> Result<Vec<Summary>, StoreError> {
    // Room for slots left over from a larger `max_per_tenant` before a reload.
    let bound = (settings.max_per_tenant as usize)
        .saturating_mul(2)
        .max(100);
    let rows = store.scan(&sum_prefix(tenant), None, bound).await?;
    let mut out: Vec<Summary> = rows
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<Summary>(&v).ok())
        .filter(|s| filter.matches(s))
        .collect();
    out.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(b.seq.cmp(&a.seq)));
    out.truncate(filter.limit);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[Box<Pending>]) -> Vec<&str> {
        v.iter().map(|p| p.request_id()).collect()
    }

    #[test]
    fn coalescing_keeps_each_tenants_newest_in_order() {
        let queued = ["a1", "b1", "a2", "a3", "b2", "a4"]
            .iter()
            .enumerate()
            .map(|(i, id)| Pending::bare(&id[..1], id, i as u64))
            .collect();
        let (kept, superseded) = newest_per_tenant(queued, 2);
        assert_eq!(ids(&kept), ["b1", "a3", "b2", "a4"]);
        assert_eq!(superseded, 2);
    }

    #[test]
    fn a_full_queue_turns_successes_away_and_keeps_errors_newest_first() {
        let sink = Sink::new();
        assert!(
            !sink.has_room(true),
            "nothing is queued before the writer starts"
        );
        assert!(sink.start(2, 1));
        assert!(!sink.start(2, 1), "starts once");
        for (i, id) in ["r1", "r2"].iter().enumerate() {
            assert!(sink.has_room(false));
            sink.submit(Pending::bare("t", id, i as u64));
        }
        // Full: a success is not even built; an error pushes out the oldest.
        assert!(!sink.has_room(false));
        assert!(sink.has_room(true));
        sink.submit(Pending::bare("t", "e3", 3));
        assert_eq!(sink.0.skipped.load(Ordering::Relaxed), 1);
        assert_eq!(sink.0.overwritten.load(Ordering::Relaxed), 1);
        let taken = sink.take();
        assert_eq!(ids(&taken), ["r2", "e3"]);
        // Taken: room again.
        assert!(sink.has_room(false));
    }

    #[test]
    fn take_merges_the_workers_queues_oldest_first() {
        let sink = Sink::new();
        assert!(sink.start(10, 2));
        sink.submit(Pending::bare("t", "late", 20));
        // Another thread is another queue (slot 0: not a worker; a worker's
        // slot is its index + 1).
        std::thread::scope(|s| {
            s.spawn(|| {
                crate::server::set_worker(0);
                sink.submit(Pending::bare("t", "early", 10));
            });
        });
        assert_eq!(ids(&sink.take()), ["early", "late"]);
    }
}
