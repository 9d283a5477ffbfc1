//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the
//! `traceparent` a caller sends is accepted, and the gateway's own span
//! continues its trace to the backend.
//!
//! A request with a valid `traceparent` keeps its trace id and sampled flag;
//! the gateway is a new span whose parent is the caller's span, and the
//! backend receives `traceparent: 00-<trace id>-<gateway span id>-<flags>`
//! plus the caller's `tracestate`, unchanged. A request without one, or with
//! one that is malformed (or repeated), starts a new trace, as the
//! specification says a receiver must; its `tracestate` is then dropped.
//! The trace id is in the access-log line, so a partner's distributed trace
//! and the gateway's log meet.

use std::cell::RefCell;
use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` passed on (the specification's 32 members of at most
/// 256 characters are not needed to follow a trace through one hop; longer
/// values are dropped rather than cut mid-member).
const MAX_TRACESTATE: usize = 512;

/// The sampled flag.
const SAMPLED: u8 = 0x01;

/// The trace this request belongs to and the gateway's span in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (16 bytes, never all zero).
    pub trace_id: [u8; 16],
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// The gateway's span for this request.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// The caller's `tracestate`, passed on unchanged.
    pub state: Option<HeaderValue>,
}

impl Default for TraceContext {
    fn default() -> Self {
        Self::new_root()
    }
}

thread_local! {
    /// Ids need to be unique, not secret: a per-thread ChaCha stream seeded
    /// once from the OS costs a few nanoseconds per id, no system call.
    static IDS: RefCell<ChaCha8Rng> = RefCell::new(seeded());
}

fn seeded() -> ChaCha8Rng {
    let mut seed = [0u8; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).is_err() {
        // Not secret: the time and the thread make ids unique enough.
        let now = crate::store::system_now();
        seed[..8].copy_from_slice(&now.to_le_bytes());
        let thread = format!("{:?}", std::thread::current().id());
        for (i, b) in thread.bytes().enumerate() {
            seed[8 + i % 24] ^= b;
        }
    }
    ChaCha8Rng::from_seed(seed)
}

/// A random id that is not all zero (an all-zero id is invalid).
fn random_id<const N: usize>() -> [u8; N] {
    IDS.with(|rng| {
        let mut rng = rng.borrow_mut();
        loop {
            let mut id = [0u8; N];
            rng.fill_bytes(&mut id);
            if id.iter().any(|b| *b != 0) {
                return id;
            }
        }
    })
}

impl TraceContext {
    /// A new trace, sampled, with the gateway's span as its root.
    pub fn new_root() -> Self {
        // Both ids from one draw: one thread-local access per request.
        let ids: [u8; 24] = random_id();
        let (mut trace_id, mut span_id) = ([0u8; 16], [0u8; 8]);
        trace_id.copy_from_slice(&ids[..16]);
        span_id.copy_from_slice(&ids[16..]);
        if trace_id == [0; 16] {
            trace_id = random_id();
        }
        if span_id == [0; 8] {
            span_id = random_id();
        }
        Self {
            trace_id,
            parent_id: None,
            span_id,
            flags: SAMPLED,
            state: None,
        }
    }

    /// The context of a request: the caller's trace when its `traceparent`
    /// is valid, otherwise a new one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut all = headers.get_all(TRACEPARENT).iter();
        let (Some(value), None) = (all.next(), all.next()) else {
            return Self::new_root();
        };
        let Some((trace_id, parent_id, flags)) = parse_traceparent(value.as_bytes()) else {
            return Self::new_root();
        };
        Self {
            trace_id,
            parent_id: Some(parent_id),
            span_id: random_id(),
            flags,
            state: tracestate(headers),
        }
    }

    /// Whether the trace is sampled (bit 0 of the flags).
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id(&self) -> Hex<'_> {
        Hex(&self.trace_id)
    }

    /// The gateway's span id as 16 lowercase hex digits.
    pub fn span_id(&self) -> Hex<'_> {
        Hex(&self.span_id)
    }

    /// The `traceparent` the backend receives: this trace, with the
    /// gateway's span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        // `00-` trace id `-` span id `-` flags: 55 bytes, encoded in place
        // (this runs for every request forwarded to a backend).
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex_into(&self.span_id, &mut out[36..52]);
        out[52] = b'-';
        hex_into(&[self.flags], &mut out[53..55]);
        HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
    }

    /// Sets `traceparent` (and `tracestate`, when the caller sent one) on
    /// the headers going to a backend, replacing the caller's.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent());
        match &self.state {
            Some(state) => {
                headers.insert(TRACESTATE, state.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }
}

/// Lowercase hex digits of an id.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.chunks(16) {
            let mut buf = [0u8; 32];
            let out = &mut buf[..chunk.len() * 2];
            hex_into(chunk, out);
            f.write_str(std::str::from_utf8(out).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

/// Lowercase hex digits of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// The caller's `tracestate`: several header lines are one list (RFC 9110
/// field combination); an over-long or non-text one is dropped.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut lines = headers.get_all(TRACESTATE).iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return (first.len() <= MAX_TRACESTATE && first.to_str().is_ok()).then(|| first.clone());
    };
    let mut joined = String::new();
    for v in [first, second].into_iter().chain(lines) {
        let v = v.to_str().ok()?.trim();
        if v.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(v);
        if joined.len() > MAX_TRACESTATE {
            return None;
        }
    }
    HeaderValue::from_str(&joined).ok()
}

/// Parses a `traceparent` value (trace-context §3.2): version, trace id,
/// parent id, flags. Version `ff` is invalid; a future version is read as
/// version 00 when its first four fields have version 00's shape.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 {
        return None;
    }
    let version = hex_byte(v[0], v[1])?;
    if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    if version == 0 && v.len() != 55 {
        return None;
    }
    if version > 0 && v.len() > 55 && v[55] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(v[3 + 2 * i], v[4 + 2 * i])?;
    }
    let mut parent_id = [0u8; 8];
    for (i, b) in parent_id.iter_mut().enumerate() {
        *b = hex_byte(v[36 + 2 * i], v[37 + 2 * i])?;
    }
    let flags = hex_byte(v[53], v[54])?;
    if trace_id.iter().all(|b| *b == 0) || parent_id.iter().all(|b| *b == 0) {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

/// Two lowercase hex digits (uppercase is invalid in `traceparent`).
fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    Some(digit(hi)? << 4 | digit(lo)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let cx = TraceContext::from_headers(&headers(&[
            ("traceparent", VALID),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]));
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            cx.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert!(cx.sampled());
        let out = cx.traceparent();
        let out = out.to_str().expect("text");
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_ne!(
            &out[36..52],
            "00f067aa0ba902b7",
            "the gateway is a new span"
        );
        assert_eq!(out[36..52], cx.span_id().to_string());
        let mut fwd = headers(&[("tracestate", "forged=1"), ("traceparent", "forged")]);
        cx.propagate(&mut fwd);
        assert_eq!(fwd["tracestate"], "congo=t61rcWkgMzE");
        assert_eq!(fwd.get_all("traceparent").iter().count(), 1);
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            let cx = TraceContext::from_headers(&headers(&[
                ("traceparent", bad),
                ("tracestate", "a=b"),
            ]));
            assert_eq!(cx.parent_id, None, "{bad:?} must not be continued");
            assert_eq!(
                cx.state, None,
                "tracestate goes with an invalid traceparent"
            );
            assert_ne!(cx.trace_id, [0; 16]);
        }
        // Two traceparent headers: which is right cannot be known.
        let cx =
            TraceContext::from_headers(&headers(&[("traceparent", VALID), ("traceparent", VALID)]));
        assert_eq!(cx.parent_id, None);
    }

    #[test]
    fn a_future_version_is_read_as_version_00() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-the-future-holds";
        let cx = TraceContext::from_headers(&headers(&[("traceparent", v)]));
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(!cx.sampled());
        assert!(cx.traceparent().to_str().expect("text").starts_with("00-"));
    }

    #[test]
    fn tracestate_lines_are_joined_and_bounded() {
        let cx = TraceContext::from_headers(&headers(&[
            ("traceparent", VALID),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ]));
        assert_eq!(
            cx.state.as_ref().map(|v| v.as_bytes()),
            Some(&b"a=1,b=2"[..])
        );
        let long = format!("a={}", "x".repeat(600));
        let cx =
            TraceContext::from_headers(&headers(&[("traceparent", VALID), ("tracestate", &long)]));
        assert_eq!(cx.state, None);
    }

    #[test]
    fn new_traces_have_distinct_ids() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        assert_eq!(a.traceparent().len(), 55);
    }
}
