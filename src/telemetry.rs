//! Logs and metrics. One typed event per thing that happens, emitting the
//! log line and the metric together. Metric labels are bounded: API names
//! come from configuration, codes and stages from the refusal enum; never a
//! tenant, a path or a request id.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use thread_local::ThreadLocal;

use crate::refusal::Refusal;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// `sandgate_limit_batch_size`: requests decided per Redis limit call.
pub const BATCH_SIZE: &str = "sandgate_limit_batch_size";

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ];
            // Every histogram is a duration in seconds but one: the
            // requests per Redis limit call, a count from 1 to the largest
            // batch (`limits::cluster::MAX_BATCH`).
            let batch = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
            let handle = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(BATCH_SIZE.into()),
                    &batch,
                )
                .ok()?
                .install_recorder()
                .ok()?;
            let upkeep = handle.clone();
            // Histograms are drained periodically so memory stays flat.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Output format of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sets up `tracing`. The filter comes from `SANDGATE_LOG` (e.g.
/// `info`, `warn,sandgate::access=off`), default `info`.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SANDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Metric handles of one API, registered once when the sandbox is built so
/// the hot path only touches atomics.
#[derive(Debug)]
pub struct ApiMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl ApiMetrics {
    /// Registers the handles of API `api`.
    pub fn new(api: &str) -> Self {
        let c = |class: &'static str| metrics::counter!("sandgate_requests_total", "api" => api.to_owned(), "status_class" => class);
        Self {
            by_class: [c("1xx"), c("2xx"), c("3xx"), c("4xx"), c("5xx")],
            duration: metrics::histogram!("sandgate_request_duration_seconds", "api" => api.to_owned()),
        }
    }
}

/// A request was answered (served or refused).
pub struct RequestCompleted<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The API's metrics and name, when the request was routed.
    pub api: Option<(&'a str, &'a ApiMetrics)>,
    /// The operation id, when resolved.
    pub operation: Option<&'a str>,
    /// The API's mode (`upstream`, `facade`, `hybrid`, `record`), when routed.
    pub mode: Option<&'static str>,
    /// The identified tenant (a log field only: never a metric label).
    pub tenant: Option<&'a str>,
    /// The method.
    pub method: &'a http::Method,
    /// The response status.
    pub status: u16,
    /// The refusal code, when refused.
    pub code: Option<&'static str>,
    /// Where the answer came from.
    pub source: Option<&'static str>,
    /// Whether this was a dry-run write.
    pub dry_run: bool,
    /// Time from request head to response head.
    pub latency: Duration,
    /// Time to the backend's response head, when a backend answered.
    pub upstream_latency: Option<Duration>,
    /// The W3C trace of the request.
    pub trace: &'a crate::trace_context::TraceContext,
}

impl RequestCompleted<'_> {
    /// Emits the access-log line and the request metrics.
    pub fn emit(&self) {
        let class = usize::from((self.status / 100).clamp(1, 5)) - 1;
        match self.api {
            Some((_, m)) => {
                m.by_class[class].increment(1);
                m.duration.record(self.latency.as_secs_f64());
            }
            None => {
                const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
                metrics::counter!("sandgate_unrouted_requests_total", "status_class" => CLASSES[class]).increment(1);
            }
        }
        tracing::info!(
            target: "sandgate::access",
            request_id = self.request_id,
            api = self.api.map(|(n, _)| n),
            operation = self.operation,
            mode = self.mode,
            tenant = self.tenant,
            method = %self.method,
            status = self.status,
            code = self.code,
            source = self.source,
            dry_run = self.dry_run,
            latency_ms = self.latency.as_secs_f64() * 1000.0,
            upstream_latency_ms = self.upstream_latency.map(|d| d.as_secs_f64() * 1000.0),
            trace_id = %self.trace.trace_id(),
        );
    }
}

/// A stage refused a request.
pub struct RequestRefused<'a>(pub &'a Refusal);

impl RequestRefused<'_> {
    /// Counts the refusal by stage and code.
    pub fn emit(&self) {
        metrics::counter!("sandgate_refusals_total", "stage" => self.0.stage().as_str(), "code" => self.0.code()).increment(1);
    }
}

/// The limit stage decided on a request under a plan: allowed (`None`) or
/// the refusal.
pub struct LimitDecided<'a>(pub Option<&'a Refusal>);

/// `sandgate_limit_decisions_total`, by outcome: `allowed` or the refusal code.
static LIMIT_DECISIONS: std::sync::LazyLock<[Counter; 5]> = std::sync::LazyLock::new(|| {
    LIMIT_OUTCOMES.map(|o| metrics::counter!("sandgate_limit_decisions_total", "outcome" => o))
});
const LIMIT_OUTCOMES: [&str; 5] = [
    "allowed",
    "rate_limited",
    "quota_exhausted",
    "too_many_in_flight",
    "limits_unavailable",
];

/// The limit decisions each thread has made, by outcome, on cache lines of
/// its own. A decision is made on every tenant request: one shared counter
/// would be a line every worker writes every time. The counts are summed
/// into `sandgate_limit_decisions_total` when the metrics are rendered
/// ([`render_metrics`]), so every scrape sees them all.
type Tallies = crate::limits::per_tenant::Padded<[AtomicU64; 5]>;
static LIMIT_TALLIES: std::sync::LazyLock<ThreadLocal<Tallies>> =
    std::sync::LazyLock::new(ThreadLocal::new);

/// Adds one to `tally`, one of this thread's own: only this thread writes
/// it, so a plain load and store (no locked read-modify-write, tens of
/// cycles on every decision) lose nothing; a scrape reads it whole.
fn bump(tally: &AtomicU64) {
    tally.store(tally.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl LimitDecided<'_> {
    /// Counts the decision.
    pub fn emit(&self) {
        let Some(refusal) = self.0 else {
            bump(&LIMIT_TALLIES.get_or_default()[0]);
            return;
        };
        let code = refusal.code();
        match LIMIT_OUTCOMES.iter().position(|o| *o == code) {
            Some(i) => bump(&LIMIT_TALLIES.get_or_default()[i]),
            // A refusal the limit stage does not make itself (a store
            // failure reading the plan): counted under its own code.
            None => {
                metrics::counter!("sandgate_limit_decisions_total", "outcome" => code).increment(1)
            }
        }
    }
}

/// The Prometheus text of every metric, with the counts the workers keep
/// on their own lines (see `LIMIT_TALLIES`) summed in first; `None` when no
/// recorder could be installed.
pub fn render_metrics() -> Option<String> {
    let handle = prometheus()?;
    let mut sums = [0u64; 5];
    for tallies in LIMIT_TALLIES.iter() {
        for (sum, tally) in sums.iter_mut().zip(tallies.iter()) {
            *sum += tally.load(Ordering::Relaxed);
        }
    }
    for (counter, sum) in LIMIT_DECISIONS.iter().zip(sums) {
        counter.absolute(sum);
    }
    Some(handle.render())
}

/// The configuration was (re)loaded, or a reload was refused.
pub struct ConfigReloaded<'a> {
    /// Whether the new configuration is in effect.
    pub ok: bool,
    /// The problems, when it was refused.
    pub errors: Option<&'a crate::config::ConfigErrors>,
}

impl ConfigReloaded<'_> {
    /// Logs the outcome and counts it.
    pub fn emit(&self) {
        // The log line first: whoever watches the metric can then read why.
        match self.errors {
            None => tracing::info!("configuration reloaded"),
            Some(e) => {
                tracing::error!(errors = %e, "configuration reload refused; the last good configuration keeps serving")
            }
        }
        let outcome = if self.ok { "applied" } else { "refused" };
        metrics::counter!("sandgate_config_reloads_total", "outcome" => outcome).increment(1);
    }
}
