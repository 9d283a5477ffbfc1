//! Decision traces and the request log: what each stage decided about a
//! request and why, kept per tenant so a partner can look any of its
//! requests up by id ("why was I blocked").
//!
//! ```text
//! request path   Recorder in RequestFacts: one Entry per stage (static
//!                names, lazy reasons; formatting only once the caller is
//!                identified); the respond step (gateway) turns it into a
//!                Pending record and wraps the response body in a Tee
//! Tee            copies the first traces.max_body bytes of the answer and
//!                submits the record when the body ends or is dropped
//! Sink           a bounded queue (try_send: a full queue drops and counts)
//! write_behind   background task: scrubs, serializes, and writes batches
//!                to the store's per-tenant ring (ring.rs)
//! api            GET /_sandbox/requests[/{id}] and the admin listing
//! ```
//!
//! Invariant: a trace never holds a secret. Secret headers and body fields
//! are replaced by `[scrubbed]` and card numbers keep their last four digits
//! ([`scrub`]), before anything is written.

pub mod api;
pub mod config;
pub mod reasons;
mod ring;
pub mod scrub;
mod tee;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

// A stage's timing reads the TSC (quanta), not the system clock: about a
// dozen reads per request, where `clock_gettime` cost ~3 % of a worker.
use quanta::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, Uri};

use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::pipeline::RequestFacts;
use crate::refusal::Refusal;
use crate::sandbox::Sandbox;

pub use ring::{Filter, Sink, Summary, list, lookup, write_behind};

/// The path of a request's trace on the public listener.
pub const LOOKUP_PREFIX: &str = "/_sandbox/requests/";

/// What a stage decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Let the request through.
    Passed,
    /// Refused it (the request ended here).
    Refused,
    /// Did not apply to this request.
    Skipped,
    /// Let it through with a remark (report-mode validation, a replayed answer).
    Noted,
}

/// Why a stage decided what it did. The common reasons keep only what
/// they are made of and are written out by the background writer, so the
/// request path formats nothing for them (and a trace that is never
/// written costs no formatting at all).
#[derive(Debug, Default)]
enum Reason {
    #[default]
    None,
    Static(&'static str),
    Text(String),
    /// The API and operation route chose.
    Route,
    /// How the caller was identified.
    Identified,
    /// The tenant's sandbox was admitted.
    Admitted,
    /// The tenant's clock.
    Clock,
    /// The limit stage let the request through; `true` when a rate
    /// applies, whose standing (`RateLimit-Policy` and `RateLimit`) the
    /// answer carries: the trace renders it from the answer's standing
    /// (`Pending::standing`) when it is written.
    Limit(bool),
    /// The body matched the operation.
    Validated,
    /// What dispatch answered with.
    Dispatch,
}

/// One stage's decision.
#[derive(Debug)]
struct Entry {
    stage: &'static str,
    verdict: Verdict,
    reason: Reason,
    rule: Option<String>,
    started: Instant,
    /// When the stage ended (the next one started); the duration is worked
    /// out only for a trace that is written.
    ended: Option<Instant>,
}

/// The compiled `traces:` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether traces are kept.
    pub enabled: bool,
    /// Ring size per tenant.
    pub max_per_tenant: u32,
    /// TTL of a trace.
    pub max_age: Duration,
    /// Largest body part kept.
    pub max_body: usize,
    /// The scrubber (built-in and configured field names).
    pub scrubber: Arc<scrub::Scrubber>,
    /// Queue capacity (read at start).
    pub queue: usize,
    /// The writer's CPU budget, percent of one core.
    pub writer_cpu_percent: u8,
}

impl Settings {
    /// Compiles the `traces:` section.
    pub fn new(c: &config::TracesConfig) -> Settings {
        Settings {
            enabled: c.enabled,
            max_per_tenant: c.max_per_tenant.value.max(1),
            max_age: c.max_age.value.get(),
            max_body: c.max_body.value.as_usize(),
            scrubber: Arc::new(scrub::Scrubber::for_traces(&c.scrub_fields)),
            queue: c.queue.value.max(1),
            writer_cpu_percent: c.writer_cpu_percent.value.clamp(1, 100),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::new(&config::TracesConfig::default())
    }
}

/// The request as the trace shows it, captured once the caller is
/// identified (clones that share the request's buffers).
#[derive(Debug)]
struct Head {
    method: Method,
    uri: Uri,
    /// Empty when not captured (see `headers_captured`).
    headers: HeaderMap,
    /// The trace writer had room when the caller was identified, so the
    /// headers were copied. Under a flood that fills the writer's queue
    /// they are not (most such traces are never written): an error's trace
    /// is still written, and says its headers were not captured.
    headers_captured: bool,
}

/// Who the identified caller is, as the trace tells it.
#[derive(Debug)]
struct Who {
    tenant: Arc<crate::tenants::Tenant>,
    via: crate::pipeline::identify::Via,
    client: Arc<str>,
    /// The last four characters of an API key (UTF-8, at most 16 bytes).
    key_tail: ([u8; 16], u8),
}

impl Who {
    fn key_tail(&self) -> &str {
        std::str::from_utf8(&self.key_tail.0[..usize::from(self.key_tail.1)]).unwrap_or_default()
    }
}

/// The per-request recorder, in [`RequestFacts::trace`]. Every call is a
/// no-op or a push of a static name until the caller is identified.
#[derive(Debug, Default)]
pub struct Recorder {
    entries: Vec<Entry>,
    /// Traces are enabled for this sandbox.
    enabled: bool,
    /// The identified caller (then the trace is kept).
    who: Option<Who>,
    /// Never kept (trace lookups, so reading the log never pushes the
    /// partner's real requests out of it).
    unkept: bool,
    max_body: usize,
    head: Option<Head>,
    request_body: Option<(Bytes, usize)>,
    /// The first bytes of a request body streamed to a backend.
    streamed: Option<Arc<Capture>>,
    refusal: Option<RefusalFacts>,
}

thread_local! {
    /// Stage lists of finished requests whose trace was not kept, for the
    /// next requests of this thread: one allocation fewer per request.
    static SPARE_ENTRIES: std::cell::RefCell<Vec<Vec<Entry>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Most spare stage lists a thread keeps.
const MAX_SPARE_ENTRIES: usize = 64;

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.entries.capacity() == 0 {
            return;
        }
        let mut entries = std::mem::take(&mut self.entries);
        entries.clear();
        // `try_with`: a recorder dropped while its thread exits.
        let _ = SPARE_ENTRIES.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut()
                && spare.len() < MAX_SPARE_ENTRIES
            {
                spare.push(entries);
            }
        });
    }
}

/// The first `max_body` bytes of a request body that streams on to a
/// backend, copied as they pass (the stream is never held back).
#[derive(Debug)]
pub struct Capture {
    buf: std::sync::Mutex<bytes::BytesMut>,
    total: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl Capture {
    /// Copies what still fits of `data`.
    pub fn push(&self, data: &Bytes) {
        self.total
            .fetch_add(data.len(), std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut buf) = self.buf.lock() {
            let room = self.max.saturating_sub(buf.len());
            if room > 0 {
                buf.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
    }

    /// What was copied, and the body's size so far.
    fn taken(&self) -> (Bytes, usize) {
        let buf = self
            .buf
            .lock()
            .map(|b| Bytes::copy_from_slice(&b))
            .unwrap_or_default();
        (buf, self.total.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What a refusal said, as the trace keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefusalFacts {
    /// Its stable code.
    pub code: String,
    /// Its title.
    pub title: String,
    /// Its detail.
    pub detail: String,
    /// The stage that refused.
    pub stage: String,
    /// The configuration entry that decided, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Its HTTP status.
    pub status: u16,
}

impl Recorder {
    /// A recorder for a request to `sandbox`.
    pub fn new(settings: &Settings) -> Recorder {
        let mut rec = Recorder::default();
        rec.enabled = settings.enabled;
        rec.max_body = settings.max_body;
        rec
    }

    /// Whether this request's trace will be kept (and is worth formatting).
    pub fn kept(&self) -> bool {
        self.enabled && self.who.is_some() && !self.unkept
    }

    fn close(&mut self, now: Instant) {
        if let Some(e) = self.entries.last_mut()
            && e.ended.is_none()
        {
            e.ended = Some(now);
        }
    }

    /// Stage `stage` starts: the previous stage ends (it let the request through).
    pub fn enter(&mut self, stage: &'static str) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        self.close(now);
        if self.entries.capacity() == 0 {
            self.entries = SPARE_ENTRIES
                .with_borrow_mut(Vec::pop)
                .unwrap_or_else(|| Vec::with_capacity(14));
        }
        self.entries.push(Entry {
            stage,
            verdict: Verdict::Passed,
            reason: Reason::None,
            rule: None,
            started: now,
            ended: None,
        });
    }

    fn current(&mut self) -> Option<&mut Entry> {
        self.entries.last_mut()
    }

    /// The current stage's reason.
    pub fn note(&mut self, reason: &'static str) {
        if let Some(e) = self.current() {
            e.reason = Reason::Static(reason);
        }
    }

    /// The current stage's reason, formatted only when the trace is kept.
    pub fn note_with(&mut self, reason: impl FnOnce() -> String) {
        if self.kept()
            && let Some(e) = self.entries.last_mut()
        {
            e.reason = Reason::Text(reason());
        }
    }

    /// The current stage's reason is the routing decision.
    pub fn note_route(&mut self) {
        if let Some(e) = self.current() {
            e.reason = Reason::Route;
        }
    }

    /// The current stage's reason is what dispatch answered with.
    pub fn note_dispatch(&mut self) {
        if let Some(e) = self.current() {
            e.reason = Reason::Dispatch;
        }
    }

    /// The current stage admitted the identified tenant's sandbox.
    pub fn note_admitted(&mut self) {
        if let Some(e) = self.current() {
            e.reason = Reason::Admitted;
        }
    }

    /// The current stage read the tenant's clock (`RequestFacts::tenant_now`).
    pub fn note_clock(&mut self) {
        if let Some(e) = self.current() {
            e.reason = Reason::Clock;
        }
    }

    /// The limit stage's verdict: the plan's standing, when one applies.
    pub fn note_limit(&mut self, standing: Option<&crate::pipeline::limit::Standing>) {
        if self.kept()
            && let Some(e) = self.entries.last_mut()
        {
            e.reason = Reason::Limit(standing.is_some());
        }
    }

    /// The body matched the routed operation.
    pub fn note_validated(&mut self) {
        if let Some(e) = self.current() {
            e.reason = Reason::Validated;
        }
    }

    /// The current stage's configuration pointer.
    pub fn rule(&mut self, rule: impl FnOnce() -> String) {
        if self.kept()
            && let Some(e) = self.entries.last_mut()
        {
            e.rule = Some(rule());
        }
    }

    /// The current stage did not apply to this request.
    pub fn skipped(&mut self, reason: &'static str) {
        if let Some(e) = self.current() {
            e.verdict = Verdict::Skipped;
            e.reason = Reason::Static(reason);
        }
    }

    /// The current stage let the request through with a remark.
    pub fn noted(&mut self, reason: impl FnOnce() -> String) {
        if let Some(e) = self.current() {
            e.verdict = Verdict::Noted;
        }
        self.note_with(reason);
    }

    /// The caller is identified as `principal`: from now on the trace is
    /// kept. Captures the request head (scrubbed later, in the background).
    pub fn identified<B>(
        &mut self,
        principal: &crate::pipeline::identify::Principal,
        req: &http::Request<B>,
        sink: &Sink,
    ) {
        if !self.enabled {
            return;
        }
        let mut key_tail = ([0u8; 16], 0u8);
        if principal.via == crate::pipeline::identify::Via::ApiKey {
            let key = req
                .headers()
                .get(crate::pipeline::identify::X_API_KEY)
                .or_else(|| req.headers().get(http::header::AUTHORIZATION))
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let tail = last4(key).as_bytes();
            let n = tail.len().min(16);
            key_tail.0[..n].copy_from_slice(&tail[..n]);
            key_tail.1 = u8::try_from(n).unwrap_or(0);
        }
        self.who = Some(Who {
            tenant: principal.tenant.clone(),
            via: principal.via,
            client: principal.client.clone(),
            key_tail,
        });
        let headers_captured = sink.likely_room();
        self.head = Some(Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: if headers_captured {
                req.headers().clone()
            } else {
                HeaderMap::new()
            },
            headers_captured,
        });
        if let Some(e) = self.entries.last_mut() {
            e.reason = Reason::Identified;
        }
    }

    /// The caller is anonymous (a public API): nobody can look this
    /// request up, so the rest of it is not recorded (no clock reads per
    /// stage on the public routes).
    pub fn anonymous(&mut self) {
        self.enabled = false;
    }

    /// This request's trace is not kept (a trace lookup).
    pub fn unkept(&mut self) {
        self.unkept = true;
    }

    /// The request body, as read by validate or dispatch (its first
    /// `max_body` bytes are kept; no copy is made).
    pub fn request_body(&mut self, body: &Bytes) {
        if self.kept() && self.request_body.is_none() {
            let n = body.len().min(self.max_body);
            self.request_body = Some((body.slice(..n), body.len()));
        }
    }

    /// A capture for a request body about to stream to a backend, when the
    /// trace is kept and the body has not been read already.
    pub fn capture(&mut self, body: &crate::body::RequestBody) -> Option<Arc<Capture>> {
        if !self.kept()
            || self.request_body.is_some()
            || !matches!(body, crate::body::RequestBody::Streaming(_))
        {
            return None;
        }
        let c = Arc::new(Capture {
            buf: std::sync::Mutex::new(bytes::BytesMut::new()),
            total: std::sync::atomic::AtomicUsize::new(0),
            max: self.max_body,
        });
        self.streamed = Some(c.clone());
        Some(c)
    }

    /// The request was refused with `refusal` (by the current stage).
    pub fn refused(&mut self, refusal: &Refusal) {
        if !self.kept() {
            return;
        }
        let stage = refusal.stage().as_str();
        match self.entries.last_mut() {
            Some(e) if e.ended.is_none() => e.verdict = Verdict::Refused,
            // Refused outside any stage (the request timeout): an entry of its own.
            _ => {
                self.enter(stage);
                if let Some(e) = self.entries.last_mut() {
                    e.verdict = Verdict::Refused;
                }
            }
        }
        let rule = refusal.rule();
        if let Some(e) = self.entries.last_mut() {
            e.reason = Reason::Text(refusal.detail());
            e.rule.clone_from(&rule);
        }
        self.refusal = Some(RefusalFacts {
            code: refusal.code().to_owned(),
            title: refusal.title().to_owned(),
            detail: refusal.detail(),
            stage: stage.to_owned(),
            rule,
            status: refusal.status().as_u16(),
        });
    }

    /// The `trace` member of a refusal: the path of this request's trace,
    /// when it is kept.
    pub fn link(&self, request_id: &str) -> Option<String> {
        self.kept().then(|| format!("{LOOKUP_PREFIX}{request_id}"))
    }
}

/// The last four characters of a credential (never more).
fn last4(s: &str) -> &str {
    let s = s.trim();
    if s.len() < 12 {
        return "";
    }
    let mut start = s.len() - 4;
    while !s.is_char_boundary(start) {
        start -= 1;
    }
    &s[start..]
}

/// The respond step's part: when the request's trace is kept, turns the
/// recorder into a pending record and wraps the answer's body so that its
/// first `max_body` bytes are copied and the record is queued when the body
/// ends (or is dropped); the wrapper then also holds the request's
/// in-flight slot (`facts.slot`, taken). Otherwise the answer passes
/// untouched.
pub fn finish(
    sink: &Sink,
    sandbox: &Sandbox,
    facts: &mut RequestFacts,
    resp: Response<Body>,
    latency: Duration,
) -> Response<Body> {
    if !facts.trace.kept() || !sink.has_room(resp.status().as_u16() >= 400) {
        return resp;
    }
    let mut rec = std::mem::take(&mut facts.trace);
    rec.close(Instant::now());
    let api = facts.api.and_then(|i| sandbox.apis.get(i));
    let operation = api
        .zip(facts.operation)
        .and_then(|(a, op)| a.contract.as_ref().map(|c| c.operations[op].id.clone()));
    let source = facts.source.map(|s| s.as_str());
    let target = target_of(resp.headers());
    let stages = std::mem::take(&mut rec.entries);
    let (head, who) = match (rec.head.take(), rec.who.take()) {
        (Some(h), Some(w)) => (h, w),
        _ => return resp,
    };
    let pending = Pending {
        who,
        request_id: facts.request_id.clone(),
        at_ms: crate::store::system_now(),
        tenant_now: facts.tenant_now,
        clock_set: facts.clock_set,
        head,
        api: api.map(|a| a.name.to_string()),
        prefix: api
            .filter(|_| operation.is_none())
            .map(|a| a.prefix.clone()),
        mode: api.map(|a| a.mode.as_str()),
        operation,
        source,
        target,
        status: resp.status().as_u16(),
        dry_run: facts.dry_run,
        refusal: rec.refusal.take(),
        stages,
        latency,
        upstream: facts.upstream_latency,
        trace_id: facts.trace_context.trace_id,
        request_body: rec.request_body.take(),
        streamed: rec.streamed.take(),
        response_headers: resp.headers().clone(),
        standing: facts.standing.clone(),
        response_body: Vec::new(),
        response_kept: 0,
        response_total: 0,
        response_complete: false,
        max_body: rec.max_body,
        scrubber: sandbox.traces.scrubber.clone(),
    };
    // The tee holds the in-flight slot too: one body wrapper, not two.
    tee::wrap(sink.clone(), pending, resp, facts.slot.take())
}

/// What answered, as the facade's headers name it.
#[derive(Debug)]
enum Target {
    Scenario(HeaderValue),
    Fixture(HeaderValue),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, v) = match self {
            Target::Scenario(v) => ("scenario rule", v),
            Target::Fixture(v) => ("fixture", v),
        };
        write!(f, "{kind} '{}'", String::from_utf8_lossy(v.as_bytes()))
    }
}

/// The scenario rule or fixture that answered, from the facade's headers.
fn target_of(headers: &HeaderMap) -> Option<Target> {
    if let Some(rule) = headers.get(&crate::facade::SANDGATE_SCENARIO) {
        return Some(Target::Scenario(rule.clone()));
    }
    headers
        .get(&crate::facade::fixtures::SANDGATE_FIXTURE)
        .map(|f| Target::Fixture(f.clone()))
}

/// One stage as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    /// The stage's name (`edge`, `route`, `identify`, …).
    pub stage: String,
    /// What it decided.
    pub verdict: Verdict,
    /// Why, for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The configuration entry that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Time spent in the stage, µs.
    pub micros: u64,
}

/// A finished request on its way to the background writer: everything
/// raw (scrubbing and serializing happen off the request path).
#[derive(Debug)]
pub struct Pending {
    who: Who,
    request_id: String,
    at_ms: u64,
    tenant_now: Option<u64>,
    clock_set: bool,
    head: Head,
    api: Option<String>,
    /// The API's prefix, when no operation was routed (the route reason).
    prefix: Option<String>,
    mode: Option<&'static str>,
    operation: Option<String>,
    source: Option<&'static str>,
    target: Option<Target>,
    status: u16,
    dry_run: bool,
    refusal: Option<RefusalFacts>,
    stages: Vec<Entry>,
    latency: Duration,
    upstream: Option<Duration>,
    /// The W3C trace id of the request.
    trace_id: [u8; 16],
    request_body: Option<(Bytes, usize)>,
    streamed: Option<Arc<Capture>>,
    /// The answer's headers, but for the two rate-limit headers: the
    /// gateway adds those after the trace copies the rest, and the trace
    /// keeps them in `standing`.
    response_headers: HeaderMap,
    /// The `RateLimit-Policy` and `RateLimit` values of the answer, when it
    /// has them.
    standing: Option<crate::pipeline::limit::Standing>,
    /// The first `max_body` bytes of the answer, as the frames that carried
    /// them (shared, not copied; the last one may be cut).
    response_body: Vec<Bytes>,
    response_kept: usize,
    response_total: usize,
    response_complete: bool,
    max_body: usize,
    scrubber: Arc<scrub::Scrubber>,
}

/// A body as a trace shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BodyView {
    /// Its size in bytes (as far as it was seen).
    pub bytes: usize,
    /// Whether only the first `traces.max_body` bytes are kept.
    pub truncated: bool,
    /// The content: JSON (scrubbed) when it parsed, text otherwise.
    pub content: serde_json::Value,
}

/// A message (request or response) as a trace shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageView {
    /// Headers, secret ones scrubbed.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Set when the headers were not captured, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_omitted: Option<String>,
    /// The body, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyView>,
}

/// A stored decision trace (what `GET /_sandbox/requests/{id}` answers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    /// The request id.
    pub request_id: String,
    /// The tenant (sandbox) that sent it.
    pub sandbox_id: String,
    /// When it arrived (server time, RFC 3339).
    pub received_at: String,
    /// The tenant's clock at the time (its test clock when set), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_time: Option<String>,
    /// Whether the tenant's test clock was set.
    pub test_clock: bool,
    /// Method.
    pub method: String,
    /// Path (card numbers masked).
    pub path: String,
    /// Query string (scrubbed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The operation id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The API's mode (`facade`, `upstream`, `hybrid`, `record`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Where the answer came from (`scenario`, `fixture`, `example`,
    /// `generated`, `state`, `upstream`, `replayed`, `simulated`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The scenario rule or fixture that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The answer's status.
    pub status: u16,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// The refusal, when the gateway refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<RefusalFacts>,
    /// Time to the response head, ms.
    pub latency_ms: f64,
    /// Time the backend took to send its response head, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_latency_ms: Option<f64>,
    /// The W3C trace id (the caller's `traceparent`, or the one the gateway
    /// started), to find the request in a distributed trace and the
    /// access log. Absent in traces stored before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// Every stage, in order.
    pub stages: Vec<Stage>,
    /// The request.
    pub request: MessageView,
    /// The response.
    pub response: MessageView,
}

fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Pending {
    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.who.tenant.id
    }

    /// A bare trace of `tenant`'s request `request_id` (tests of the queue).
    #[cfg(test)]
    pub(crate) fn bare(tenant: &str, request_id: &str, at_ms: u64) -> Box<Pending> {
        let t = crate::tenants::Tenant {
            id: tenant.into(),
            prospect_company: String::new(),
            prospect_email: String::new(),
            deal_id: None,
            industry: None,
            persona: None,
            plan: "free".into(),
            features_enabled: None,
            sample_data_persona: None,
            mtls_identities: Vec::new(),
            client_id: String::new(),
            client_secret_sha256: String::new(),
            api_key_sha256: String::new(),
            created_at: 0,
            expires_at: 0,
            deactivated_at: None,
            expired_at: None,
        };
        Box::new(Pending {
            who: Who {
                tenant: Arc::new(t),
                via: crate::pipeline::identify::Via::ApiKey,
                client: "c".into(),
                key_tail: ([0; 16], 0),
            },
            request_id: request_id.into(),
            at_ms,
            tenant_now: None,
            clock_set: false,
            head: Head {
                method: Method::GET,
                uri: Uri::from_static("/x"),
                headers: HeaderMap::new(),
                headers_captured: true,
            },
            api: None,
            prefix: None,
            mode: None,
            operation: None,
            source: None,
            target: None,
            status: 200,
            dry_run: false,
            refusal: None,
            stages: Vec::new(),
            latency: Duration::ZERO,
            upstream: None,
            trace_id: [0; 16],
            request_body: None,
            streamed: None,
            response_headers: HeaderMap::new(),
            standing: None,
            response_body: Vec::new(),
            response_kept: 0,
            response_total: 0,
            response_complete: true,
            max_body: 0,
            scrubber: Arc::new(scrub::Scrubber::for_traces(&[])),
        })
    }

    /// The request id.
    #[cfg(test)]
    pub(crate) fn request_id(&self) -> &str {
        &self.request_id
    }

    /// When the request arrived, ms since the Unix epoch.
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }

    /// The text of a reason kept in its raw form.
    fn reason(&self, r: Reason) -> Option<String> {
        let t = &self.who.tenant;
        Some(match r {
            Reason::None => return None,
            Reason::Static(r) => r.to_owned(),
            Reason::Text(r) => self.scrubber.text(&r).into_owned(),
            Reason::Route => match (&self.api, &self.operation, &self.prefix) {
                (Some(a), Some(op), _) => format!("API {a}, operation {op}"),
                (Some(a), None, Some(p)) => format!("API {a} (prefix {p})"),
                _ => return None,
            },
            Reason::Identified => {
                use crate::pipeline::identify::Via;
                let how = match self.who.via {
                    Via::ApiKey => format!("api key …{}", self.who.key_tail()),
                    Via::Jwt => format!("JWT of client {}", self.who.client),
                    Via::Mtls => format!("client certificate {}", self.who.client),
                };
                format!("{how} → tenant {}", t.id)
            }
            Reason::Admitted => reasons::admitted(t, self.api.as_deref().unwrap_or_default()),
            Reason::Clock => reasons::clock(self.tenant_now?, self.clock_set),
            Reason::Limit(standing) => reasons::limit(
                &t.plan,
                standing
                    .then_some(self.standing.as_ref())
                    .flatten()
                    .map(|s| (&s.policy, &s.limit)),
            ),
            Reason::Validated => format!(
                "matches operation {} of the contract",
                self.operation.as_deref()?
            ),
            Reason::Dispatch => match (self.source, &self.target) {
                (Some(s), Some(t)) => format!("answered from {s}: {t}"),
                (Some(s), None) => format!("answered from {s}"),
                _ => return None,
            },
        })
    }

    /// Scrubs and renders the stored trace (in the background writer).
    pub fn render(mut self) -> Trace {
        let entries = std::mem::take(&mut self.stages);
        let stages = entries
            .into_iter()
            .map(|e| Stage {
                stage: e.stage.to_owned(),
                verdict: e.verdict,
                reason: self.reason(e.reason),
                rule: e.rule,
                micros: e.ended.map_or(0, |end| {
                    u64::try_from(end.duration_since(e.started).as_micros()).unwrap_or(u64::MAX)
                }),
            })
            .collect();
        let s = &*self.scrubber;
        let content_type = |h: &HeaderMap| {
            h.get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let req_ct = content_type(&self.head.headers);
        let resp_ct = content_type(&self.response_headers);
        let streamed = self
            .streamed
            .as_ref()
            .map(|c| c.taken())
            .filter(|(_, total)| *total > 0);
        let request_body = self
            .request_body
            .as_ref()
            .or(streamed.as_ref())
            .map(|(b, total)| BodyView {
                bytes: *total,
                truncated: *total > b.len(),
                content: body_content(s, b, req_ct.as_deref(), *total > b.len()),
            });
        let response_body = (self.response_total > 0).then(|| {
            let truncated = self.response_total > self.response_kept;
            let whole;
            let bytes: &[u8] = match self.response_body.as_slice() {
                [one] => one,
                frames => {
                    whole = frames.concat();
                    &whole
                }
            };
            BodyView {
                bytes: self.response_total,
                truncated,
                content: body_content(s, bytes, resp_ct.as_deref(), truncated),
            }
        });
        let _ = self.response_complete;
        Trace {
            request_id: self.request_id,
            sandbox_id: self.who.tenant.id.clone(),
            received_at: rfc3339_ms(self.at_ms),
            tenant_time: self.tenant_now.map(crate::clock::rfc3339),
            test_clock: self.clock_set,
            method: self.head.method.to_string(),
            path: s.text(self.head.uri.path()).into_owned(),
            query: self.head.uri.query().map(|q| s.form(q)),
            api: self.api,
            operation: self.operation,
            mode: self.mode.map(str::to_owned),
            source: self.source.map(str::to_owned),
            target: self.target.as_ref().map(ToString::to_string),
            status: self.status,
            dry_run: self.dry_run,
            refusal: self.refusal,
            latency_ms: self.latency.as_secs_f64() * 1000.0,
            upstream_latency_ms: self.upstream.map(|d| d.as_secs_f64() * 1000.0),
            trace_id: crate::trace_context::Hex(&self.trace_id).to_string(),
            stages,
            request: MessageView {
                headers: headers_view(s, &self.head.headers),
                headers_omitted: (!self.head.headers_captured).then(|| {
                    "not captured: the trace writer was behind when this request arrived \
                     (a flood of requests); its stages and bodies are complete"
                        .to_owned()
                }),
                body: request_body,
            },
            response: MessageView {
                headers: {
                    let mut h = headers_view(s, &self.response_headers);
                    if let Some(st) = &self.standing {
                        for (name, value) in [
                            (crate::pipeline::limit::RATELIMIT_POLICY, &st.policy),
                            (crate::pipeline::limit::RATELIMIT, &st.limit),
                        ] {
                            h.insert(
                                name.as_str().to_owned(),
                                String::from_utf8_lossy(value.as_bytes()).into_owned(),
                            );
                        }
                    }
                    h
                },
                headers_omitted: None,
                body: response_body,
            },
        }
    }
}

/// Headers as a trace shows them: secret ones `[scrubbed]`, cards masked,
/// repeated ones joined with `, `.
fn headers_view(s: &scrub::Scrubber, h: &HeaderMap) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for (name, value) in h {
        let v = if scrub::is_secret_header(name.as_str()) {
            scrub::SCRUBBED.to_owned()
        } else {
            s.text(&String::from_utf8_lossy(value.as_bytes()))
                .into_owned()
        };
        out.entry(name.as_str().to_owned())
            .and_modify(|e: &mut String| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

/// A body's content: scrubbed JSON when it is whole JSON, a scrubbed form,
/// or text with secret JSON members and cards masked; a binary body is
/// described, not shown.
fn body_content(
    s: &scrub::Scrubber,
    bytes: &[u8],
    content_type: Option<&str>,
    truncated: bool,
) -> serde_json::Value {
    use serde_json::Value;
    if bytes.is_empty() {
        return Value::Null;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        // Cut in the middle of a character: keep what is whole.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return Value::String(format!("[{} bytes, not text]", bytes.len())),
    };
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if media == "application/x-www-form-urlencoded" {
        return Value::String(s.form(text));
    }
    if !truncated && let Ok(v) = serde_json::from_str::<Value>(text) {
        return s.json(v);
    }
    let t = text.trim_start();
    if t.starts_with('{') || t.starts_with('[') {
        return Value::String(s.text(&scrub::partial_json(s, text)).into_owned());
    }
    Value::String(s.text(text).into_owned())
}
