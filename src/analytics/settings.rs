//! The `analytics:` configuration compiled against the loaded APIs: per
//! operation its first tag and differentiator flag (read once from the
//! contract), workflows and milestones resolved, sink paths resolved.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::config::AnalyticsConfig;
use crate::config::Source;
use crate::sandbox::Api;

/// The contract extension that marks an operation as a differentiator.
pub const DIFFERENTIATOR: &str = "x-sandgate-differentiator";

/// What analytics knows of one operation.
#[derive(Debug)]
pub struct OpInfo {
    /// The operationId.
    pub id: Arc<str>,
    /// The operation's first tag (`feature_category`).
    pub tag: Option<Arc<str>>,
    /// `x-sandgate-differentiator: true` on the operation.
    pub differentiator: bool,
}

/// What analytics knows of one API (same order as [`crate::sandbox::Sandbox::apis`]).
#[derive(Debug)]
pub struct ApiInfo {
    /// The API's name.
    pub name: Arc<str>,
    /// Its operations, by index.
    pub ops: Vec<OpInfo>,
    /// Names of its stateful resources, by index (`data_type`).
    pub resources: Vec<Arc<str>>,
}

/// One workflow step: an operationId, of one API or of any.
#[derive(Debug)]
pub struct Step {
    /// The API, when the workflow names one.
    pub api: Option<Arc<str>>,
    /// The operationId.
    pub op: Arc<str>,
}

/// A workflow.
#[derive(Debug)]
pub struct Workflow {
    /// Its name.
    pub name: Arc<str>,
    /// Its steps, in order.
    pub steps: Vec<Step>,
}

impl Workflow {
    /// Whether step `i` is operation `op` of API `api`.
    pub fn is_step(&self, i: usize, api: &str, op: &str) -> bool {
        self.steps
            .get(i)
            .is_some_and(|s| &*s.op == op && s.api.as_deref().is_none_or(|a| a == api))
    }
}

/// What achieves a milestone.
#[derive(Debug, PartialEq, Eq)]
pub enum MilestoneKind {
    /// A successful request to this operationId.
    Operation(Arc<str>),
    /// Completing this workflow (by name).
    Workflow(Arc<str>),
    /// Emitting this event.
    Event(&'static str),
}

/// A milestone.
#[derive(Debug)]
pub struct Milestone {
    /// Its name.
    pub name: Arc<str>,
    /// What achieves it.
    pub kind: MilestoneKind,
}

/// The file sink, resolved.
#[derive(Clone, Debug)]
pub struct FileSink {
    /// The file.
    pub path: PathBuf,
    /// Rotation size, bytes.
    pub max_size: u64,
    /// Rotated files kept.
    pub keep: u32,
    /// Queue capacity.
    pub queue: usize,
    /// Attempts per batch.
    pub max_attempts: u32,
}

/// The PostHog batch sink, resolved.
#[derive(Clone, Debug)]
pub struct BatchSink {
    /// The batch URL.
    pub url: http::Uri,
    /// The variable holding the API key (read when the sink starts).
    pub api_key_env: String,
    /// Most events per request.
    pub batch_size: usize,
    /// Longest wait for a batch to fill.
    pub flush_interval: std::time::Duration,
    /// Time allowed per request.
    pub timeout: std::time::Duration,
    /// Attempts per batch.
    pub max_attempts: u32,
    /// Queue capacity.
    pub queue: usize,
}

/// Alerts, resolved.
#[derive(Clone, Debug)]
pub struct Alerts {
    /// Webhook URLs. They can hold secrets (Slack's do): never logged.
    pub webhooks: Vec<http::Uri>,
    /// Stall threshold, seconds of tenant time.
    pub stall_after: u64,
    /// How often the stall sweep runs.
    pub check_interval: std::time::Duration,
    /// Time allowed per webhook request.
    pub timeout: std::time::Duration,
    /// Attempts per alert and webhook.
    pub max_attempts: u32,
}

/// The compiled `analytics:` section.
#[derive(Debug)]
pub struct Settings {
    /// [`crate::sandbox::Sandbox::id`] of the configuration compiled (an
    /// observation's indices are only read against their own).
    pub sandbox: u64,
    /// Whether requests are observed.
    pub enabled: bool,
    /// Session idle time, seconds of tenant time.
    pub session_idle: u64,
    /// Capacity of the request-path queue.
    pub queue: usize,
    /// Per API (in the sandbox's order).
    pub apis: Vec<ApiInfo>,
    /// Workflows.
    pub workflows: Vec<Workflow>,
    /// Milestones, in order.
    pub milestones: Vec<Milestone>,
    /// The file sink.
    pub file: Option<FileSink>,
    /// The batch sink.
    pub posthog: Option<BatchSink>,
    /// Alerts.
    pub alerts: Alerts,
}

impl Default for Settings {
    fn default() -> Self {
        Self::build(&AnalyticsConfig::default(), &[], &Source::Embedded(&[]), 0)
    }
}

/// Reads `paths[template][method]` of a contract document.
fn operation_object<'a>(
    doc: &'a Value,
    template: &str,
    method: &http::Method,
) -> Option<&'a Value> {
    doc.get("paths")?
        .get(template)?
        .get(method.as_str().to_ascii_lowercase())
}

impl Settings {
    /// Compiles `cfg` for `apis` (already in the sandbox's order). Its
    /// references were checked by [`super::config::check`]; anything that
    /// does not resolve is left out.
    pub fn build(cfg: &AnalyticsConfig, apis: &[Api], source: &Source, sandbox: u64) -> Settings {
        let apis_info = apis
            .iter()
            .map(|a| ApiInfo {
                name: a.name.clone(),
                ops: a
                    .contract
                    .iter()
                    .flat_map(|c| {
                        c.operations.iter().map(|op| {
                            let obj = operation_object(&c.doc, &op.template, &op.method);
                            OpInfo {
                                id: Arc::from(op.id.as_str()),
                                tag: obj
                                    .and_then(|o| o.get("tags"))
                                    .and_then(|t| t.get(0))
                                    .and_then(Value::as_str)
                                    .map(Arc::from),
                                differentiator: obj
                                    .and_then(|o| o.get(DIFFERENTIATOR))
                                    .and_then(Value::as_bool)
                                    .unwrap_or(false),
                            }
                        })
                    })
                    .collect(),
                resources: a
                    .state
                    .iter()
                    .flat_map(|s| s.resources.iter().map(|r| Arc::from(r.name.as_str())))
                    .collect(),
            })
            .collect();
        let workflows = cfg
            .workflows
            .iter()
            .map(|w| Workflow {
                name: Arc::from(w.name.value.as_str()),
                steps: w
                    .steps
                    .iter()
                    .map(|s| Step {
                        api: w.api.as_ref().map(|a| Arc::from(a.value.as_str())),
                        op: Arc::from(s.value.as_str()),
                    })
                    .collect(),
            })
            .collect();
        let milestones = cfg
            .milestones
            .iter()
            .filter_map(|m| {
                let kind = if let Some(op) = &m.operation {
                    MilestoneKind::Operation(Arc::from(op.value.as_str()))
                } else if let Some(w) = &m.workflow {
                    MilestoneKind::Workflow(Arc::from(w.value.as_str()))
                } else {
                    let e = m.event.as_ref()?;
                    MilestoneKind::Event(
                        super::config::MILESTONE_EVENTS
                            .iter()
                            .find(|n| **n == e.value)?,
                    )
                };
                Some(Milestone {
                    name: Arc::from(m.name.value.as_str()),
                    kind,
                })
            })
            .collect();
        let file = cfg.sinks.file.as_ref().map(|f| FileSink {
            path: match source {
                Source::Dir(dir) => dir.join(&f.path),
                Source::Embedded(_) => f.path.clone(),
            },
            max_size: f.max_size.bytes().max(1),
            keep: f.keep,
            queue: f.queue.get(),
            max_attempts: f.max_attempts.max(1),
        });
        let posthog = cfg.sinks.posthog.as_ref().and_then(|p| {
            Some(BatchSink {
                url: super::config::check_url(&p.url.value).ok()?,
                api_key_env: p.api_key_env.clone(),
                batch_size: p.batch_size.get(),
                flush_interval: p.flush_interval.get(),
                timeout: p.timeout.get(),
                max_attempts: p.max_attempts.max(1),
                queue: p.queue.get(),
            })
        });
        Settings {
            sandbox,
            enabled: cfg.enabled,
            session_idle: cfg.session_idle.get().as_secs().max(1),
            queue: cfg.queue.get(),
            apis: apis_info,
            workflows,
            milestones,
            file,
            posthog,
            alerts: Alerts {
                webhooks: cfg
                    .alerts
                    .webhooks
                    .iter()
                    .filter_map(|w| super::config::check_url(&w.value).ok())
                    .collect(),
                stall_after: cfg.alerts.stall_after.get().as_secs(),
                check_interval: cfg.alerts.check_interval.get(),
                timeout: cfg.alerts.timeout.get(),
                max_attempts: cfg.alerts.max_attempts.max(1),
            },
        }
    }

    /// The operation `op` of API `api`, when both are known.
    pub fn op(&self, api: Option<usize>, op: Option<usize>) -> Option<(&ApiInfo, &OpInfo)> {
        let a = self.apis.get(api?)?;
        Some((a, a.ops.get(op?)?))
    }
}
