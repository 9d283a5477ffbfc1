//! Usage analytics (issue 7): what each prospect does with its sandbox,
//! as events (`sandbox_first_login`, `sandbox_feature_used`, …), an
//! engagement score, and alerts to the sales team.
//!
//! ```text
//! respond step (gateway)  observe(): one Observation, try_send on a bounded
//!                         queue; full → dropped and counted, never waited for
//! worker (tracker.rs)     per-tenant state (store + in-process cache) →
//!                         events, engagement counters, alert conditions
//! sinks (sinks.rs)        JSON-lines file (rotated), PostHog /batch/;
//!                         each with its own bounded queue, retries, drops
//! alerts (alerts.rs)      Slack-style webhooks, once per tenant and condition;
//!                         the stall sweep runs in the worker
//! engagement.rs           score and tier computed on read from the counters
//! ```
//!
//! Invariant: analytics never blocks or fails a request. The request path
//! costs one `try_send` of a small value; everything else (store reads and
//! writes, delivery) happens in background tasks on the control runtime.
//!
//! The worker lives as long as the gateway: it is started by
//! [`start`] (from `run::start`) and handed from one compiled sandbox to
//! the next on reload ([`Analytics::inherit`]); workflows, milestones and
//! the session idle time follow a reload, sinks and webhooks take effect
//! on restart.

pub mod alerts;
pub mod config;
pub mod engagement;
pub mod events;
pub mod help;
pub mod settings;
pub mod sinks;
mod tracker;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::pipeline::RequestFacts;
use crate::pipeline::identify::Via;
use crate::sandbox::Sandbox;
use crate::tenants::{Registry, Tenant};

pub use config::AnalyticsConfig;
pub use settings::Settings;

/// One request as analytics sees it: a few copies taken in the respond
/// step, no lookups.
#[derive(Debug)]
pub struct Observation {
    /// [`Sandbox::id`] of the configuration that served it (operation
    /// indices refer to it).
    pub sandbox: u64,
    /// The identified tenant (its record as the request saw it).
    pub tenant: Arc<Tenant>,
    /// How the caller proved who it is.
    pub via: Option<Via>,
    /// API index, once routed.
    pub api: Option<usize>,
    /// Operation index, once resolved.
    pub op: Option<usize>,
    /// The answer's status.
    pub status: u16,
    /// The refusal code, when refused.
    pub code: Option<&'static str>,
    /// The refusing stage, when refused.
    pub stage: Option<&'static str>,
    /// A dry run (it creates nothing).
    pub dry_run: bool,
    /// The tenant's clock (Unix seconds), when the pipeline got that far.
    pub now: Option<u64>,
    /// State the request created: (resource index of the API, count).
    pub created: Option<(usize, u32)>,
    /// The answer came from the API's backend (a 201 from it is a creation).
    pub backend: bool,
}

/// What the worker is told.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A request of an identified tenant.
    Request(Observation),
    /// Help was asked for.
    Help {
        tenant: String,
        help_type: &'static str,
        context: Option<String>,
    },
    /// A sandbox was provisioned.
    Provisioned {
        tenant: String,
        deal_id: Option<String>,
        industry: Option<String>,
        persona: Option<String>,
        sample_data_records: u64,
    },
    /// The expiry sweep found a sandbox expired.
    Expired { tenant: String },
}

/// The running analytics worker: the sending side of its queue and the
/// settings it reads (swapped on reload).
#[derive(Clone)]
pub struct Hub {
    tx: mpsc::Sender<Msg>,
    settings: Arc<ArcSwap<Settings>>,
}

impl Hub {
    fn send(&self, msg: Msg) {
        if self.tx.try_send(msg).is_err() {
            metrics::counter!("sandgate_analytics_observations_dropped_total").increment(1);
        }
    }
}

/// Analytics of one compiled sandbox: its settings and, once the gateway
/// runs, the worker's [`Hub`].
pub struct Analytics {
    /// The compiled `analytics:` section.
    pub settings: Arc<Settings>,
    hub: Option<Hub>,
}

impl std::fmt::Debug for Analytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analytics")
            .field("settings", &self.settings)
            .field("running", &self.hub.is_some())
            .finish()
    }
}

impl Analytics {
    /// Analytics with `settings`, not running yet.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: Arc::new(settings),
            hub: None,
        }
    }

    /// Takes over the running worker of the sandbox this one replaces, and
    /// hands it the new settings.
    pub fn inherit(&mut self, previous: &Analytics) {
        if let Some(hub) = &previous.hub {
            hub.settings.store(self.settings.clone());
            self.hub = Some(hub.clone());
        }
    }

    fn send(&self, msg: Msg) {
        if let Some(hub) = self.hub.as_ref().filter(|_| self.settings.enabled) {
            hub.send(msg);
        }
    }
}

/// Starts the worker, its sinks and alerts for `sandbox`, reading and
/// writing analytics state through `registry`'s store. Returns the future
/// that runs them (the caller spawns it and ends it at shutdown).
pub fn start(
    sandbox: &mut Sandbox,
    registry: &Registry,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let settings = sandbox.analytics.settings.clone();
    let (tx, rx) = mpsc::channel(settings.queue);
    let shared = Arc::new(ArcSwap::new(settings.clone()));
    sandbox.analytics.hub = Some(Hub {
        tx,
        settings: shared.clone(),
    });
    let sinks = sinks::Dispatcher::start(&settings);
    let alerter = alerts::Alerter::start(&settings.alerts);
    let registry = registry.clone();
    Box::pin(async move {
        tracker::run(rx, shared, registry, sinks, alerter)
            .await
            .close()
            .await;
    })
}

/// The respond step's one call: hands what happened to the worker. Only
/// identified tenants are observed. Never blocks: a full queue drops the
/// observation and counts it.
pub fn observe(sandbox: &Sandbox, facts: &RequestFacts, status: u16, code: Option<&'static str>) {
    let (Some(hub), Some(tenant)) = (&sandbox.analytics.hub, &facts.tenant) else {
        return;
    };
    if !sandbox.analytics.settings.enabled {
        return;
    }
    hub.send(Msg::Request(Observation {
        sandbox: sandbox.id,
        tenant: std::sync::Arc::clone(tenant),
        via: facts.login_method,
        api: facts.api,
        op: facts.operation,
        status,
        code,
        stage: facts.refused_stage,
        dry_run: facts.dry_run,
        now: facts.tenant_now,
        created: facts.created.filter(|_| !facts.dry_run),
        backend: matches!(
            facts.source,
            Some(crate::pipeline::dispatch::AnswerSource::Upstream)
        ),
    }));
}

/// A tenant asked for help: `help_type` is `help_page` (`GET
/// /_sandbox/help`) or `trace_lookup` (a request's decision trace);
/// `context_feature` the operationId it was about, when known.
pub fn help_requested(
    sandbox: &Sandbox,
    tenant: &str,
    help_type: &'static str,
    context_feature: Option<&str>,
) {
    sandbox.analytics.send(Msg::Help {
        tenant: tenant.to_owned(),
        help_type,
        context: context_feature.map(str::to_owned),
    });
}

/// A sandbox was provisioned with `sample_data_records` seeded objects.
pub fn provisioned(sandbox: &Sandbox, tenant: &Tenant, sample_data_records: u64) {
    sandbox.analytics.send(Msg::Provisioned {
        tenant: tenant.id.clone(),
        deal_id: tenant.deal_id.clone(),
        industry: tenant.industry.clone(),
        persona: tenant.persona.clone(),
        sample_data_records,
    });
}

/// The expiry sweep found sandbox `tenant` expired (the event is emitted
/// once per tenant, whichever replica's sweep sees it first).
pub fn expired(sandbox: &Sandbox, tenant: &str) {
    sandbox.analytics.send(Msg::Expired {
        tenant: tenant.to_owned(),
    });
}
