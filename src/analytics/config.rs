//! The `analytics:` section of `sandgate.yaml`: usage events, their sinks,
//! workflows and milestones, and alerts. Typed, every field documented,
//! unknown keys refused; references (operationIds, workflow names, event
//! names) are checked at load by [`check`], with `file:line` errors.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::config::{ByteSize, ConfigError, Duration};

/// Usage analytics: events derived from the traffic of identified tenants,
/// the engagement score, and alerts. On by default, with no sinks (the
/// engagement score and alerts still work).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// Whether requests are observed and events derived at all. Default:
    /// `true`.
    pub enabled: bool,
    /// Idle time, on the tenant's clock, after which the next request
    /// starts a new session (`sandbox_session_started`). Default: `30m`.
    pub session_idle: Duration,
    /// Capacity of the queue from the request path to the analytics worker;
    /// when it is full an observation is dropped and counted
    /// (`sandgate_analytics_observations_dropped_total`), never waited for.
    /// Default: 10000.
    pub queue: NonZeroUsize,
    /// Workflows: ordered sequences of operationIds a prospect completes by
    /// successful (2xx) requests within one session
    /// (`sandbox_workflow_completed`).
    pub workflows: Vec<WorkflowConfig>,
    /// Milestones, in order; each is achieved once per tenant
    /// (`sandbox_milestone_achieved`).
    pub milestones: Vec<MilestoneConfig>,
    /// Where events are delivered. Default: none.
    pub sinks: SinksConfig,
    /// Alerts to webhooks (Slack-compatible).
    pub alerts: AlertsConfig,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_idle: Duration::from_secs(30 * 60),
            queue: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            workflows: Vec::new(),
            milestones: Vec::new(),
            sinks: SinksConfig::default(),
            alerts: AlertsConfig::default(),
        }
    }
}

/// One workflow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowConfig {
    /// Its name (`workflow_name` in events), unique.
    pub name: Spanned<String>,
    /// The API whose operations the steps name. Default: each step is
    /// looked up in every API, first match in configuration order.
    pub api: Option<Spanned<String>>,
    /// The operationIds, in order; at least two.
    pub steps: Vec<Spanned<String>>,
}

/// One milestone: exactly one of `operation`, `workflow` and `event`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilestoneConfig {
    /// Its name (`milestone_name` in events), unique.
    pub name: Spanned<String>,
    /// Achieved by the first successful (2xx) request to this operationId.
    pub operation: Option<Spanned<String>>,
    /// Achieved when this workflow (by name) is completed the first time.
    pub workflow: Option<Spanned<String>>,
    /// Achieved the first time this event is emitted, e.g.
    /// `sandbox_data_uploaded`.
    pub event: Option<Spanned<String>>,
}

/// Event sinks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    /// A JSON-lines file, rotated by size.
    pub file: Option<FileSinkConfig>,
    /// An HTTP batch endpoint compatible with PostHog's `/batch/` capture API.
    pub posthog: Option<BatchSinkConfig>,
}

/// The JSON-lines file sink: one event per line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file, relative to the sandbox directory (to the working
    /// directory for the bundled demo). Its directory is created.
    pub path: PathBuf,
    /// Size at which the file is rotated (`events.jsonl` becomes
    /// `events.jsonl.1`, `.1` becomes `.2`, …). Default: `10MiB`.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// Rotated files kept; older ones are deleted. Default: 5.
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// Capacity of the sink's queue (events beyond it are dropped and
    /// counted). Default: 10000.
    #[serde(default = "default_sink_queue")]
    pub queue: NonZeroUsize,
    /// Attempts at writing a batch before it is dropped and counted.
    /// Default: 3.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

/// The HTTP batch sink (PostHog `/batch/`): `{"api_key", "batch": [{event,
/// distinct_id, properties, timestamp}]}` posted as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSinkConfig {
    /// The batch URL, e.g. `https://eu.i.posthog.com/batch/` (`http://` is
    /// accepted too).
    pub url: Spanned<String>,
    /// The environment variable holding the project API key. The key is
    /// never written in the configuration nor logged. Default:
    /// `POSTHOG_API_KEY`.
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// Most events per request. Default: 100.
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
    /// Longest time an event waits for its batch to fill. Default: `5s`.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: Duration,
    /// Time allowed for one request (connect included). Default: `5s`.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Attempts at delivering a batch (with exponential backoff between
    /// them, from 200ms) before it is dropped and counted. Default: 3.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Capacity of the sink's queue. Default: 10000.
    #[serde(default = "default_sink_queue")]
    pub queue: NonZeroUsize,
}

/// Alerts to the sales team.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Webhook URLs; each alert is posted to every one as `{"text": …}`
    /// (Slack incoming-webhook format). Default: none (conditions are still
    /// recorded once per tenant).
    pub webhooks: Vec<Spanned<String>>,
    /// A tenant that has logged in and then starts no session for this
    /// long, on its own clock, has stalled. Default: `3d`.
    pub stall_after: Duration,
    /// How often active tenants are checked for a stall. Default: `1m`.
    pub check_interval: Duration,
    /// Time allowed for one webhook request. Default: `5s`.
    pub timeout: Duration,
    /// Attempts at delivering an alert to one webhook (exponential backoff
    /// from 200ms) before it is dropped and counted. Default: 3.
    pub max_attempts: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            stall_after: Duration::from_secs(3 * 86_400),
            check_interval: Duration::from_secs(60),
            timeout: default_timeout(),
            max_attempts: default_attempts(),
        }
    }
}

fn default_max_size() -> ByteSize {
    ByteSize::mib(10)
}
fn default_keep() -> u32 {
    5
}
fn default_sink_queue() -> NonZeroUsize {
    NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN)
}
fn default_attempts() -> u32 {
    3
}
fn default_api_key_env() -> String {
    "POSTHOG_API_KEY".into()
}
fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(100).unwrap_or(NonZeroUsize::MIN)
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Events a milestone may name with `event`.
pub const MILESTONE_EVENTS: &[&str] = &[
    crate::analytics::events::FIRST_LOGIN,
    crate::analytics::events::SESSION_STARTED,
    crate::analytics::events::FEATURE_USED,
    crate::analytics::events::WORKFLOW_COMPLETED,
    crate::analytics::events::DATA_UPLOADED,
    crate::analytics::events::ERROR_ENCOUNTERED,
    crate::analytics::events::HELP_REQUESTED,
];

/// Checks the references of `cfg` against the APIs' (name, operationIds),
/// in configuration order; every problem is a `file:line` error.
pub fn check(
    cfg: &AnalyticsConfig,
    apis: &[(String, Vec<String>)],
    file: &Path,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |line: u64, msg: String| errors.push(ConfigError::new(file, line, msg));
    let has_op = |api: Option<&str>, op: &str| {
        apis.iter()
            .filter(|(name, _)| api.is_none_or(|a| a == name))
            .any(|(_, ops)| ops.iter().any(|o| o == op))
    };
    let mut names = std::collections::HashSet::new();
    for w in &cfg.workflows {
        if !names.insert(w.name.value.as_str()) {
            err(
                w.name.referenced.line(),
                format!("analytics: workflow `{}` is defined twice", w.name.value),
            );
        }
        if let Some(api) = &w.api
            && !apis.iter().any(|(n, _)| *n == api.value)
        {
            err(
                api.referenced.line(),
                format!(
                    "analytics: workflow `{}` names API `{}`, which is not configured",
                    w.name.value, api.value
                ),
            );
            continue;
        }
        if w.steps.len() < 2 {
            err(
                w.name.referenced.line(),
                format!(
                    "analytics: workflow `{}` needs at least two steps",
                    w.name.value
                ),
            );
        }
        for step in &w.steps {
            if !has_op(w.api.as_ref().map(|a| a.value.as_str()), &step.value) {
                err(
                    step.referenced.line(),
                    format!(
                        "analytics: workflow `{}` names operation `{}`, which no contract has",
                        w.name.value, step.value
                    ),
                );
            }
        }
    }
    let mut milestones = std::collections::HashSet::new();
    for m in &cfg.milestones {
        let line = m.name.referenced.line();
        if !milestones.insert(m.name.value.as_str()) {
            err(
                line,
                format!("analytics: milestone `{}` is defined twice", m.name.value),
            );
        }
        let given = [
            m.operation.is_some(),
            m.workflow.is_some(),
            m.event.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            err(
                line,
                format!(
                    "analytics: milestone `{}` needs exactly one of `operation`, `workflow` and `event`",
                    m.name.value
                ),
            );
            continue;
        }
        if let Some(op) = &m.operation
            && !has_op(None, &op.value)
        {
            err(
                op.referenced.line(),
                format!(
                    "analytics: milestone `{}` names operation `{}`, which no contract has",
                    m.name.value, op.value
                ),
            );
        }
        if let Some(w) = &m.workflow
            && !names.contains(w.value.as_str())
        {
            err(
                w.referenced.line(),
                format!(
                    "analytics: milestone `{}` names workflow `{}`, which is not defined",
                    m.name.value, w.value
                ),
            );
        }
        if let Some(e) = &m.event
            && !MILESTONE_EVENTS.contains(&e.value.as_str())
        {
            err(
                e.referenced.line(),
                format!(
                    "analytics: milestone `{}` names event `{}`; it must be one of {}",
                    m.name.value,
                    e.value,
                    MILESTONE_EVENTS.join(", ")
                ),
            );
        }
    }
    if let Some(p) = &cfg.sinks.posthog
        && let Err(m) = check_url(&p.url.value)
    {
        err(
            p.url.referenced.line(),
            format!("analytics.sinks.posthog: {m}"),
        );
    }
    for w in &cfg.alerts.webhooks {
        if let Err(m) = check_url(&w.value) {
            err(
                w.referenced.line(),
                format!("analytics.alerts.webhooks: {m}"),
            );
        }
    }
    if cfg.session_idle.get().is_zero() {
        err(0, "analytics.session_idle must be greater than zero".into());
    }
    if cfg.alerts.check_interval.get().is_zero() {
        err(
            0,
            "analytics.alerts.check_interval must be greater than zero".into(),
        );
    }
    errors
}

/// An `http(s)://host…` URL without credentials.
pub fn check_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("`{url}` must start with http:// or https://"));
    }
    match uri.authority() {
        None => Err(format!("`{url}` has no host")),
        Some(a) if a.as_str().contains('@') => {
            Err("a URL must not carry credentials (user:password@)".into())
        }
        Some(_) => Ok(uri),
    }
}
