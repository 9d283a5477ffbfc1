//! Where events go: a JSON-lines file rotated by size, and an HTTP batch
//! endpoint compatible with PostHog's `/batch/` capture API. Each sink has
//! its own bounded queue and task; a full queue drops the event (counted),
//! a failed delivery is retried with exponential backoff a few times, then
//! dropped (counted). Nothing here can block or fail a request.
//!
//! Metrics (label `sink` is `file`, `posthog` or `webhook`):
//! `sandgate_analytics_events_total{event}`,
//! `sandgate_analytics_sink_queue_depth{sink}`,
//! `sandgate_analytics_events_dropped_total{sink, reason}` (`queue_full`,
//! `delivery_failed`), `sandgate_analytics_delivery_failures_total{sink}`
//! (every failed attempt).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use super::events::Event;
use super::settings::{BatchSink, FileSink, Settings};

/// The outbound HTTP client of the batch sink and the webhooks (the same
/// hyper + rustls stack as the JWKS fetcher; system roots).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client with `timeout` to connect.
pub fn http_client(timeout: Duration) -> Option<HttpClient> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        roots
    })
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Some(Client::builder(TokioExecutor::new()).build(connector))
}

/// Posts `body` as JSON to `url`; any answer but 2xx is a failure. The
/// error never contains the URL (a webhook URL can be a secret).
pub async fn post_json(
    client: &HttpClient,
    url: &http::Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<(), String> {
    let req = http::Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("sandgate/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(timeout, async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        // Read the answer so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    })
    .await
    .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// The wait before retry `attempt` (1, 2, …): 200ms doubling, at most 10s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.saturating_sub(1).min(6)))
        .min(Duration::from_secs(10))
}

/// Runs `op` up to `attempts` times, waiting [`backoff`] between tries and
/// counting each failure for `sink`; false when every attempt failed.
pub async fn with_retries<F, Fut>(sink: &'static str, attempts: u32, mut op: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    for attempt in 1..=attempts.max(1) {
        match op().await {
            Ok(()) => return true,
            Err(e) => {
                metrics::counter!("sandgate_analytics_delivery_failures_total", "sink" => sink)
                    .increment(1);
                tracing::warn!(sink, attempt, error = %e, "analytics delivery failed");
                if attempt < attempts {
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }
    false
}

/// Counts `n` events dropped by `sink` for `reason`.
pub fn dropped(sink: &'static str, reason: &'static str, n: u64) {
    metrics::counter!("sandgate_analytics_events_dropped_total", "sink" => sink, "reason" => reason)
        .increment(n);
}

/// The queue in front of one sink.
struct SinkQueue {
    name: &'static str,
    tx: mpsc::Sender<Arc<Event>>,
    depth: metrics::Gauge,
}

/// Hands every event to every sink.
pub struct Dispatcher {
    sinks: Vec<SinkQueue>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Dispatcher {
    /// Starts the configured sinks' tasks (on the current runtime).
    pub fn start(settings: &Settings) -> Dispatcher {
        let mut sinks = Vec::new();
        let mut tasks = Vec::new();
        if let Some(f) = &settings.file {
            let (tx, rx) = mpsc::channel(f.queue);
            let depth = metrics::gauge!("sandgate_analytics_sink_queue_depth", "sink" => "file");
            tasks.push(tokio::spawn(file_sink(f.clone(), rx, depth.clone())));
            sinks.push(SinkQueue {
                name: "file",
                tx,
                depth,
            });
        }
        if let Some(p) = &settings.posthog {
            let (tx, rx) = mpsc::channel(p.queue);
            let depth = metrics::gauge!("sandgate_analytics_sink_queue_depth", "sink" => "posthog");
            tasks.push(tokio::spawn(batch_sink(p.clone(), rx, depth.clone())));
            sinks.push(SinkQueue {
                name: "posthog",
                tx,
                depth,
            });
        }
        Dispatcher { sinks, tasks }
    }

    /// Closes the queues and waits until every sink has delivered (or
    /// dropped) what they held.
    pub async fn close(self) {
        drop(self.sinks);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Counts `event` and queues it for every sink (dropping, counted, where
    /// a queue is full).
    pub fn emit(&self, event: Event) {
        metrics::counter!("sandgate_analytics_events_total", "event" => event.name).increment(1);
        tracing::debug!(target: "sandgate::analytics", event = event.name, sandbox_id = %event.sandbox_id, "usage event");
        let event = Arc::new(event);
        for s in &self.sinks {
            match s.tx.try_send(event.clone()) {
                Ok(()) => s.depth.increment(1.0),
                Err(_) => dropped(s.name, "queue_full", 1),
            }
        }
    }
}

/// The file sink's task: batches of queued events appended as JSON lines.
async fn file_sink(cfg: FileSink, mut rx: mpsc::Receiver<Arc<Event>>, depth: metrics::Gauge) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = rx.recv_many(&mut buf, 256).await;
        if n == 0 {
            return;
        }
        depth.decrement(n as f64);
        let lines: Arc<Vec<Vec<u8>>> = Arc::new(
            buf.iter()
                .map(|e| {
                    let mut line = serde_json::to_vec(&e.to_json()).unwrap_or_default();
                    line.push(b'\n');
                    line
                })
                .collect(),
        );
        let ok = with_retries("file", cfg.max_attempts, || {
            let (cfg, lines) = (cfg.clone(), lines.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    append_lines(&cfg.path, cfg.max_size, cfg.keep, &lines)
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?
            }
        })
        .await;
        if !ok {
            dropped("file", "delivery_failed", n as u64);
        }
    }
}

/// `path` with `.n` appended.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Rotates `path`: `.keep` is deleted, `.n` becomes `.n+1`, the file
/// becomes `.1` (with `keep: 0` it is simply removed).
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(rotated(path, keep));
    for n in (1..keep).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    std::fs::rename(path, rotated(path, 1))
}

/// Appends `lines` to `path`, rotating before a line that would take the
/// file past `max_size` (a line is never split; a single line larger than
/// `max_size` gets a file of its own).
pub fn append_lines(
    path: &Path,
    max_size: u64,
    keep: u32,
    lines: &[Vec<u8>],
) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut size = std::fs::metadata(path).map_or(0, |m| m.len());
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    };
    let mut file = open()?;
    for line in lines {
        if size > 0 && size + line.len() as u64 > max_size {
            file.flush()?;
            drop(file);
            rotate(path, keep)?;
            file = open()?;
            size = 0;
        }
        file.write_all(line)?;
        size += line.len() as u64;
    }
    file.flush()
}

/// The PostHog body of `events`.
pub fn posthog_body(api_key: &str, events: &[Arc<Event>]) -> Bytes {
    let batch: Vec<serde_json::Value> = events.iter().map(|e| e.to_posthog()).collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "api_key": api_key, "batch": batch }))
            .unwrap_or_default(),
    )
}

/// The batch sink's task: up to `batch_size` events, or what arrived within
/// `flush_interval` of the first, per request.
async fn batch_sink(cfg: BatchSink, mut rx: mpsc::Receiver<Arc<Event>>, depth: metrics::Gauge) {
    let api_key = std::env::var(&cfg.api_key_env).unwrap_or_default();
    if api_key.is_empty() {
        tracing::warn!(
            env = %cfg.api_key_env,
            "analytics.sinks.posthog: the API key variable is unset or empty; batches are sent without a key"
        );
    }
    let Some(client) = http_client(cfg.timeout) else {
        tracing::error!("analytics.sinks.posthog: no TLS client; the sink is off");
        return;
    };
    let mut batch: Vec<Arc<Event>> = Vec::with_capacity(cfg.batch_size);
    loop {
        batch.clear();
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + cfg.flush_interval;
        while batch.len() < cfg.batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        depth.decrement(batch.len() as f64);
        let body = posthog_body(&api_key, &batch);
        let ok = with_retries("posthog", cfg.max_attempts, || {
            post_json(&client, &cfg.url, body.clone(), cfg.timeout)
        })
        .await;
        if !ok {
            dropped("posthog", "delivery_failed", batch.len() as u64);
        }
    }
}
