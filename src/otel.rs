//! OpenTelemetry export (cargo feature `otlp`, off by default): one server
//! span per request, sent over OTLP/HTTP (protobuf) to the collector named by
//! the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) environment variable. Without that
//! variable nothing is exported, even in a build with the feature.
//!
//! The span is the gateway's span of [`crate::trace_context`]: the same
//! trace id and span id the backend received in `traceparent`, with the
//! caller's span as parent, so the caller's, the gateway's and the
//! backend's spans join into one trace. The span is built when the request
//! is answered, with its real start and end times; the SDK's batch
//! processor sends it from its own thread, never on the request path.
//! Attributes carry no secret: method, status, API, operation, refusal
//! code, answer source, dry run, request id and tenant id.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};

use crate::telemetry::RequestCompleted;

static EXPORT: OnceLock<Option<(SdkTracerProvider, SdkTracer)>> = OnceLock::new();

thread_local! {
    /// The ids of the span being built on this thread (the gateway's span
    /// of the request): the SDK takes its ids from its id generator, so the
    /// generator hands out these.
    static NEXT: Cell<Option<([u8; 16], [u8; 8])>> = const { Cell::new(None) };
}

/// Gives the SDK the ids of [`crate::trace_context::TraceContext`].
#[derive(Debug, Default)]
struct GatewayIds(RandomIdGenerator);

impl IdGenerator for GatewayIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT.with(Cell::get)
            .map_or_else(|| self.0.new_trace_id(), |(t, _)| TraceId::from_bytes(t))
    }

    fn new_span_id(&self) -> SpanId {
        NEXT.with(Cell::get)
            .map_or_else(|| self.0.new_span_id(), |(_, s)| SpanId::from_bytes(s))
    }
}

/// Whether an OTLP endpoint is configured in the environment.
fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

/// Starts the exporter when an endpoint is configured; returns whether it
/// runs. Call once, at start.
pub fn init() -> bool {
    EXPORT
        .get_or_init(|| {
            if !configured() {
                return None;
            }
            let exporter = match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "OTLP exporter not started");
                    return None;
                }
            };
            let provider = SdkTracerProvider::builder()
                .with_id_generator(GatewayIds::default())
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("sandgate")
                        .build(),
                )
                .build();
            let tracer = provider.tracer("sandgate");
            tracing::info!("exporting request spans over OTLP");
            Some((provider, tracer))
        })
        .is_some()
}

/// Sends the spans still queued (at shutdown).
pub fn shutdown() {
    if let Some(Some((provider, _))) = EXPORT.get()
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "OTLP exporter did not flush");
    }
}

/// Records the request's span, when exporting.
pub fn export(done: &RequestCompleted<'_>) {
    let Some(Some((_, tracer))) = EXPORT.get() else {
        return;
    };
    let trace = done.trace;
    let ended = SystemTime::now();
    let started = ended.checked_sub(done.latency).unwrap_or(ended);
    let parent = match trace.parent_id {
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
            TraceFlags::new(trace.flags),
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let mut attributes = vec![
        KeyValue::new("http.request.method", done.method.to_string()),
        KeyValue::new("http.response.status_code", i64::from(done.status)),
        KeyValue::new("sandgate.request_id", done.request_id.to_owned()),
        KeyValue::new("sandgate.dry_run", done.dry_run),
    ];
    let mut add = |key: &'static str, value: Option<&str>| {
        if let Some(v) = value {
            attributes.push(KeyValue::new(key, v.to_owned()));
        }
    };
    add("sandgate.api", done.api.map(|(name, _)| name));
    add("sandgate.operation", done.operation);
    add("sandgate.mode", done.mode);
    add("sandgate.tenant", done.tenant);
    add("sandgate.refusal.code", done.code);
    add("sandgate.source", done.source);
    if let Some(up) = done.upstream_latency {
        attributes.push(KeyValue::new(
            "sandgate.upstream_latency_ms",
            up.as_secs_f64() * 1000.0,
        ));
    }
    let name = match (done.api, done.operation) {
        (_, Some(op)) => format!("{} {op}", done.method),
        (Some((api, _)), None) => format!("{} {api}", done.method),
        (None, None) => done.method.to_string(),
    };
    NEXT.with(|n| n.set(Some((trace.trace_id, trace.span_id))));
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_start_time(started)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    NEXT.with(|n| n.set(None));
    if done.status >= 500 {
        span.set_status(Status::error(done.code.unwrap_or("server error")));
    }
    span.end_with_timestamp(ended);
}
