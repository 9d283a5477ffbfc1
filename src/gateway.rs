//! The public gateway: holds the current compiled sandbox (swapped
//! atomically on reload) and answers each request by running the pipeline,
//! then the respond stage (request id, metrics, access log).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::{Body as _, Incoming};

use crate::body::Body;
use crate::config::{ConfigErrors, Source};
use crate::pipeline::{self, RequestFacts};
use crate::refusal::Refusal;
use crate::sandbox::{Overrides, Sandbox};
use crate::server::{ConnInfo, Handler};
use crate::telemetry::{ConfigReloaded, RequestCompleted, RequestRefused};
use crate::tenants::Registry;

/// The public gateway.
pub struct Gateway {
    sandbox: ArcSwap<Sandbox>,
    source: Source,
    overrides: Overrides,
    ready: AtomicBool,
    registry: Registry,
}

impl Gateway {
    /// A gateway serving `sandbox`, which was loaded from `source`.
    pub fn new(sandbox: Sandbox, source: Source, overrides: Overrides, registry: Registry) -> Self {
        Self {
            registry,
            sandbox: ArcSwap::from_pointee(sandbox),
            source,
            overrides,
            ready: AtomicBool::new(false),
        }
    }

    /// The tenants.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The sandbox currently served.
    pub fn sandbox(&self) -> Arc<Sandbox> {
        self.sandbox.load_full()
    }

    /// Reloads the configuration from its source. On any problem the
    /// running configuration stays in effect. Listener addresses and TLS
    /// material of already-bound listeners change only on restart.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        match Sandbox::load(&self.source, &self.overrides) {
            Ok(mut sb) => {
                sb.inherit(&self.sandbox.load());
                let sb = Arc::new(sb);
                self.sandbox.store(sb.clone());
                // Key sets at new URLs are fetched now, not on the first token.
                if tokio::runtime::Handle::try_current().is_ok() {
                    tokio::spawn(async move { sb.jwt.prefetch().await });
                }
                ConfigReloaded {
                    ok: true,
                    errors: None,
                }
                .emit();
                Ok(())
            }
            Err(e) => {
                ConfigReloaded {
                    ok: false,
                    errors: Some(&e),
                }
                .emit();
                Err(e)
            }
        }
    }

    /// Whether the gateway is ready for traffic (listeners bound, not draining).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks the gateway ready or not ready (draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// A HEAD answer carries the GET answer's headers and no content. hyper's
/// HTTP/1.1 server drops the body itself; its HTTP/2 server would send it,
/// which clients reject as a protocol error (RFC 9113 §8.1.1).
fn drop_head_body(resp: &mut Response<Body>) {
    if let Some(len) = resp.body().size_hint().exact().filter(|n| *n > 0) {
        resp.headers_mut()
            .entry(http::header::CONTENT_LENGTH)
            .or_insert_with(|| http::HeaderValue::from(len));
    }
    *resp.body_mut() = crate::body::empty();
}

impl Handler for Gateway {
    async fn handle(&self, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Body> {
        // The TSC clock (quanta), as the decision trace's stages use.
        let started = quanta::Instant::now();
        // A guard, not a clone: no shared reference count is touched per
        // request (that cache line would bounce between the workers).
        let sandbox = self.sandbox.load();
        let method = req.method().clone();
        let mut facts = RequestFacts {
            request_id: crate::edge::request_id(req.headers()),
            trace: if sandbox.api_keys.is_some() {
                crate::trace::Recorder::new(&sandbox.traces)
            } else {
                // Without `auth` no caller is ever identified, and only an
                // identified caller's trace is kept: nothing to record.
                crate::trace::Recorder::default()
            },
            trace_context: crate::trace_context::TraceContext::from_headers(req.headers()),
            ..Default::default()
        };

        // The request timeout bounds body uploads (and, through them, the
        // whole exchange). A request without a body needs no timer of its
        // own: the pipeline is CPU-only up to dispatch, and an upstream
        // exchange is bounded by the API's `upstream.timeout`, which is
        // always shorter than `timeouts.request`.
        let result = if req.body().is_end_stream() {
            pipeline::run(&sandbox, &self.registry, req, &conn, &mut facts).await
        } else {
            crate::server::timer::timeout(
                sandbox.timeouts.request.get(),
                pipeline::run(&sandbox, &self.registry, req, &conn, &mut facts),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Refusal::RequestTimeout {
                    after: sandbox.timeouts.request.to_string(),
                })
            })
        };

        // respond: every answer carries the request id; refusals are rendered here, once.
        let (mut resp, code) = match result {
            Ok(resp) => (resp, None),
            Err(refusal) => {
                RequestRefused(&refusal).emit();
                let code = refusal.code();
                facts.refused_stage = Some(refusal.stage().as_str());
                // An identified caller is told where its trace is.
                facts.trace.refused(&refusal);
                let trace = facts.trace.link(&facts.request_id);
                (
                    refusal.into_response_traced(&facts.request_id, trace.as_deref()),
                    Some(code),
                )
            }
        };
        crate::edge::set_request_id(resp.headers_mut(), &facts.request_id);
        if let Some(marker) = facts.dry_run_asked.marker() {
            resp.headers_mut()
                .insert(pipeline::dry_run::X_DRY_RUN, marker);
        }
        if method == http::Method::HEAD {
            drop_head_body(&mut resp);
        }
        let api = facts.api.and_then(|i| sandbox.apis.get(i));
        let done = RequestCompleted {
            request_id: &facts.request_id,
            api: api.map(|a| (&*a.name, &a.metrics)),
            operation: api
                .zip(facts.operation)
                .and_then(|(a, op)| a.contract.as_ref().map(|c| c.operations[op].id.as_str())),
            mode: api.map(|a| a.mode.as_str()),
            tenant: facts.tenant.as_ref().map(|t| t.id.as_str()),
            method: &method,
            status: resp.status().as_u16(),
            code,
            source: facts.source.map(|s| s.as_str()),
            dry_run: facts.dry_run,
            latency: started.elapsed(),
            upstream_latency: facts.upstream_latency,
            trace: &facts.trace_context,
        };
        done.emit();
        #[cfg(feature = "otlp")]
        crate::otel::export(&done);
        // analytics: one try_send to the background worker (never blocks).
        crate::analytics::observe(&sandbox, &facts, resp.status().as_u16(), code);
        // The decision trace: queued when the answer's body has gone out.
        let mut resp = crate::trace::finish(
            self.registry.traces(),
            &sandbox,
            &mut facts,
            resp,
            started.elapsed(),
        );
        // Where the tenant stands, on every tenant answer. Added after the
        // trace has copied the answer's headers: it keeps the standing
        // itself (two shared values, not two more map entries to copy).
        if let Some(standing) = facts.standing.take() {
            let h = resp.headers_mut();
            h.insert(pipeline::limit::RATELIMIT_POLICY, standing.policy);
            h.insert(pipeline::limit::RATELIMIT, standing.limit);
        }
        // The in-flight slot, unless the trace's tee holds it: given back
        // when the body has been sent.
        match facts.slot.take() {
            Some(slot) => resp.map(|b| {
                http_body_util::BodyExt::boxed(crate::limits::concurrency::Holding::new(b, slot))
            }),
            None => resp,
        }
    }
}
