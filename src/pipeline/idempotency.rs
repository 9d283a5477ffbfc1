//! Idempotency keys, with Stripe's semantics: the first completed answer to
//! a write carrying `Idempotency-Key` is stored for the tenant (24 h by
//! default) and replayed, with `Idempotent-Replayed: true`, to every retry
//! with the same key and the same request; the same key with another
//! request is refused (400 `idempotency_key_reused`), and a retry while the
//! first request is still running is refused (409 `idempotency_conflict`).
//!
//! The stage sits between validate and dispatch, so a request refused
//! before dispatch never claims or stores a key. It applies to identified
//! tenants only, on the API's `idempotency.methods`, and never to a dry run.
//!
//! One record per (tenant, key), at `t/<tenant>/idem/<sha256(key)>`, as
//! JSON: first an `in_flight` lock written with the store's atomic
//! `put_if_absent` and a short TTL (so replicas sharing Redis agree on who
//! runs the request, and a crashed replica's lock expires), then, once the
//! answer is complete, the `done` record (status, the headers that belong
//! to the answer, the body) written over it with the long TTL. Both carry
//! the SHA-256 fingerprint of the request (method, path and query, body).
//!
//! What is stored: every answer dispatch completes (the API's own errors,
//! 4xx and 5xx from a backend, included). Not stored, and the lock
//! released so a retry runs again: a refusal of the gateway at dispatch
//! (backend unreachable or timed out, body too large, …), an injected
//! fixture fault, and an answer whose body is larger than
//! `idempotency.max_response` (passed on to the client whole).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::route::Routed;
use crate::body::{Body, RequestBody};
use crate::refusal::{Refusal, Stage};
use crate::store::{SharedStore, StoreError, keys};

/// The request header carrying the key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header marking a replayed answer.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The longest key accepted, in bytes (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// An API's idempotency settings, compiled.
#[derive(Debug)]
pub struct Policy {
    /// Methods that honour a key.
    pub methods: Vec<Method>,
    /// How long a completed answer is kept.
    pub ttl: Duration,
    /// Largest answer body stored.
    pub max_response: usize,
    /// How long the first request's lock lives (longer than any exchange).
    pub lock_ttl: Duration,
}

impl Policy {
    /// The policy of `cfg`; `None` when no method takes a key.
    pub fn new(cfg: &crate::config::IdempotencyConfig, lock_ttl: Duration) -> Option<Policy> {
        let methods: Vec<Method> = cfg
            .methods
            .iter()
            .filter_map(|m| m.value.parse().ok())
            .collect();
        (!methods.is_empty()).then(|| Policy {
            methods,
            ttl: cfg.ttl.get(),
            max_response: cfg.max_response.as_usize(),
            lock_ttl,
        })
    }
}

/// Checks the `Idempotency-Key` header, if any: 1 to 255 visible ASCII
/// characters, sent once. Run by [`begin`] when the key would be used,
/// after validate, so an API whose contract documents the header explains
/// its own limits first.
pub fn check_key(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut all = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(v) = all.next() else {
        return Ok(());
    };
    let len = v.as_bytes().len();
    let why = if all.next().is_some() {
        "is sent more than once"
    } else if len == 0 {
        "is empty"
    } else if len > MAX_KEY_LEN {
        "is longer than 255 characters"
    } else if !v.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
        "has characters other than visible ASCII"
    } else {
        return Ok(());
    };
    Err(Refusal::InvalidIdempotencyKey { len, why })
}

/// A stored record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Record {
    /// The first request holds the key and is running.
    InFlight {
        fingerprint: String,
        first: String,
        started_at: u64,
    },
    /// Its answer.
    Done {
        fingerprint: String,
        first: String,
        created_at: u64,
        status: u16,
        headers: Vec<(String, String)>,
        /// Base64 (standard) of the body.
        body: String,
    },
}

impl Record {
    fn fingerprint(&self) -> &str {
        match self {
            Record::InFlight { fingerprint, .. } | Record::Done { fingerprint, .. } => fingerprint,
        }
    }
    fn first(&self) -> &str {
        match self {
            Record::InFlight { first, .. } | Record::Done { first, .. } => first,
        }
    }
}

/// What the stage decided.
pub enum Outcome {
    /// A stored answer to replay.
    Replay(Response<Body>),
    /// Go on to dispatch with this body; with a claim, hand the answer to
    /// [`Claim::finish`].
    Proceed {
        /// The key, held by this request.
        claim: Option<Claim>,
        /// The request body (read, when a claim needed its fingerprint).
        body: RequestBody,
    },
}

/// The stage: replays, refuses, or claims the key for this request.
/// `tenant` is the identified tenant; without one the key is ignored (and
/// passed on to a backend like any other header).
pub async fn begin(
    store: &SharedStore,
    routed: &Routed<'_>,
    parts: &Parts,
    body: RequestBody,
    tenant: Option<&str>,
    dry_run: bool,
) -> Result<Outcome, Refusal> {
    let api = routed.api;
    let (Some(policy), Some(tenant), false) = (&api.idempotency, tenant, dry_run) else {
        return Ok(Outcome::Proceed { claim: None, body });
    };
    let Some(key) = parts
        .headers
        .get(IDEMPOTENCY_KEY)
        .filter(|_| policy.methods.contains(&parts.method))
    else {
        return Ok(Outcome::Proceed { claim: None, body });
    };
    check_key(&parts.headers)?;
    // The fingerprint covers the body: read it (within the API's limit).
    crate::edge::check_content_length(&parts.headers, api.max_body, &api.max_body_rule)?;
    let bytes = match body {
        RequestBody::Streaming(b) => {
            crate::edge::read_body(b, api.max_body, &api.max_body_rule).await?
        }
        RequestBody::Read(b) => b,
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    let fingerprint = fingerprint(&parts.method, path_and_query, &bytes);
    let first = format!("{} {}", parts.method, parts.uri.path());
    let record_key = keys::tenant_key(
        tenant,
        &format!(
            "idem/{}",
            crate::tenants::sha256_hex(&String::from_utf8_lossy(key.as_bytes()))
        ),
    );
    let unavailable = |e: StoreError| {
        tracing::warn!(error = %e, "store failed on an idempotency key");
        Refusal::StoreUnavailable {
            stage: Stage::Idempotency,
        }
    };
    // Two rounds: a lock that vanished between the read and the claim
    // (its request ended) is read again.
    for _ in 0..2 {
        if let Some(raw) = store.get(&record_key).await.map_err(unavailable)? {
            let record = match serde_json::from_slice::<Record>(&raw) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable idempotency record; discarded");
                    store.delete(&record_key).await.map_err(unavailable)?;
                    continue;
                }
            };
            if record.fingerprint() != fingerprint {
                return Err(Refusal::IdempotencyKeyReused {
                    first: record.first().to_owned(),
                });
            }
            return match record {
                Record::InFlight { .. } => Err(Refusal::IdempotencyConflict),
                Record::Done {
                    status,
                    headers,
                    body,
                    ..
                } => replay(status, &headers, &body),
            };
        }
        let lock = Record::InFlight {
            fingerprint: fingerprint.clone(),
            first: first.clone(),
            started_at: crate::tenants::now_secs(),
        };
        let value = serde_json::to_vec(&lock).map_err(|_| Refusal::Internal)?;
        if store
            .put_if_absent(&record_key, value, Some(policy.lock_ttl))
            .await
            .map_err(unavailable)?
        {
            return Ok(Outcome::Proceed {
                claim: Some(Claim {
                    store: store.clone(),
                    key: record_key,
                    fingerprint,
                    first,
                    ttl: policy.ttl,
                    max_response: policy.max_response,
                    api: api.name.clone(),
                    timeout: api.timeout,
                    held: true,
                }),
                body: RequestBody::Read(bytes),
            });
        }
    }
    Err(Refusal::IdempotencyConflict)
}

/// SHA-256 (hex) of the request: method, path and query, body.
fn fingerprint(method: &Method, path_and_query: &str, body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(method.as_str().as_bytes());
    ctx.update(b"\n");
    ctx.update(path_and_query.as_bytes());
    ctx.update(b"\n");
    ctx.update(body);
    crate::tenants::hex(ctx.finish().as_ref())
}

/// A stored answer, as a response marked replayed.
fn replay(status: u16, headers: &[(String, String)], body: &str) -> Result<Outcome, Refusal> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| Refusal::Internal)?;
    let mut resp = Response::new(crate::body::full(bytes));
    *resp.status_mut() = StatusCode::from_u16(status).map_err(|_| Refusal::Internal)?;
    let h = resp.headers_mut();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
    h.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    Ok(Outcome::Replay(resp))
}

/// Headers of an answer that are not stored: hop-by-hop ones, framing,
/// and what belongs to one exchange rather than to the answer (request id,
/// rate-limit standing, validation report, date, cookies).
fn per_exchange(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "date"
            | "set-cookie"
            | "retry-after"
            | "x-request-id"
            | "ratelimit"
            | "ratelimit-policy"
            | "sandgate-validation"
    )
}

/// The key, held by the request that claimed it. Dropped without
/// [`Claim::finish`] (the client went away, the request timed out), it
/// releases the key in the background so a retry can run.
pub struct Claim {
    store: SharedStore,
    key: String,
    fingerprint: String,
    first: String,
    ttl: Duration,
    max_response: usize,
    api: Arc<str>,
    timeout: Duration,
    held: bool,
}

impl Claim {
    /// Stores dispatch's answer (see the module's rules) and hands it on.
    pub async fn finish(
        mut self,
        answer: Result<Response<Body>, Refusal>,
    ) -> Result<Response<Body>, Refusal> {
        let resp = match answer {
            Ok(resp)
                if !resp
                    .headers()
                    .contains_key(crate::facade::fixtures::SANDGATE_FAULT) =>
            {
                resp
            }
            other => {
                self.release().await;
                return other;
            }
        };
        let (head, body) = resp.into_parts();
        let peeked =
            match tokio::time::timeout(self.timeout, crate::body::peek(body, self.max_response))
                .await
            {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::warn!(api = %self.api, error = %e, "backend response body failed");
                    self.release().await;
                    return Err(Refusal::UpstreamError {
                        api: self.api.to_string(),
                    });
                }
                Err(_) => {
                    self.release().await;
                    return Err(Refusal::UpstreamTimeout {
                        api: self.api.to_string(),
                        after: humantime::format_duration(self.timeout).to_string(),
                    });
                }
            };
        let Some(bytes) = peeked.complete else {
            metrics::counter!("sandgate_idempotency_not_stored_total", "why" => "too_large")
                .increment(1);
            tracing::info!(api = %self.api, max = self.max_response, "answer too large to store for its idempotency key; key released");
            self.release().await;
            return Ok(Response::from_parts(head, peeked.body));
        };
        let record = Record::Done {
            fingerprint: std::mem::take(&mut self.fingerprint),
            first: std::mem::take(&mut self.first),
            created_at: crate::tenants::now_secs(),
            status: head.status.as_u16(),
            headers: head
                .headers
                .iter()
                .filter(|(k, _)| !per_exchange(k))
                .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_owned())))
                .collect(),
            body: base64::engine::general_purpose::STANDARD.encode(&bytes),
        };
        match serde_json::to_vec(&record) {
            Ok(value) => match self.store.put(&self.key, value, Some(self.ttl)).await {
                Ok(()) => self.held = false,
                Err(e) => {
                    tracing::warn!(error = %e, "store failed writing an idempotency record; key released");
                    self.release().await;
                }
            },
            Err(_) => self.release().await,
        }
        Ok(Response::from_parts(head, crate::body::full(bytes)))
    }

    /// Removes the lock, so a retry with the key runs again.
    async fn release(&mut self) {
        if self.held {
            self.held = false;
            if let Err(e) = self.store.delete(&self.key).await {
                tracing::warn!(error = %e, "store failed releasing an idempotency key; it expires with its lock");
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.held
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let store = self.store.clone();
            let key = std::mem::take(&mut self.key);
            rt.spawn(async move {
                let _ = store.delete(&key).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> bytes::Bytes {
        bytes::Bytes::from(s.to_owned())
    }

    #[test]
    fn keys_are_1_to_255_visible_ascii() {
        let mut h = HeaderMap::new();
        assert!(check_key(&h).is_ok());
        for (v, ok) in [
            ("k".repeat(255), true),
            ("k".repeat(256), false),
            (String::new(), false),
            ("has space".into(), false),
            ("0d1b-uuid-like".into(), true),
        ] {
            h.insert(IDEMPOTENCY_KEY, HeaderValue::from_str(&v).expect("value"));
            assert_eq!(check_key(&h).is_ok(), ok, "{v:?}");
        }
        h.append(IDEMPOTENCY_KEY, HeaderValue::from_static("again"));
        assert_eq!(
            check_key(&h).map_err(|r| r.code()),
            Err("invalid_idempotency_key")
        );
    }

    #[test]
    fn the_fingerprint_covers_method_path_and_body() {
        let a = fingerprint(&Method::POST, "/p/v1/x?a=1", &b("{}"));
        assert_eq!(a, fingerprint(&Method::POST, "/p/v1/x?a=1", &b("{}")));
        assert_ne!(a, fingerprint(&Method::PUT, "/p/v1/x?a=1", &b("{}")));
        assert_ne!(a, fingerprint(&Method::POST, "/p/v1/x?a=2", &b("{}")));
        assert_ne!(a, fingerprint(&Method::POST, "/p/v1/x?a=1", &b("{ }")));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn only_the_answers_own_headers_are_stored() {
        for kept in ["content-type", "location", "sandgate-source", "x-custom"] {
            assert!(!per_exchange(&HeaderName::from_static(kept)), "{kept}");
        }
        for dropped in [
            "content-length",
            "transfer-encoding",
            "x-request-id",
            "ratelimit",
            "ratelimit-policy",
            "set-cookie",
        ] {
            assert!(per_exchange(&HeaderName::from_static(dropped)), "{dropped}");
        }
    }

    #[test]
    fn a_record_round_trips_as_json() {
        let r = Record::Done {
            fingerprint: "f".into(),
            first: "POST /x".into(),
            created_at: 1,
            status: 201,
            headers: vec![("content-type".into(), "application/json".into())],
            body: "e30=".into(),
        };
        let text = serde_json::to_string(&r).expect("json");
        assert!(text.starts_with("{\"state\":\"done\""), "{text}");
        let back: Record = serde_json::from_str(&text).expect("back");
        assert_eq!(back.fingerprint(), "f");
        let Ok(Outcome::Replay(resp)) =
            replay(201, &[("content-type".into(), "a/b".into())], "e30=")
        else {
            panic!("a replay");
        };
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()[IDEMPOTENT_REPLAYED], "true");
    }
}
