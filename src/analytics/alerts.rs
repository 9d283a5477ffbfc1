//! Alerts to the team that runs the sandbox: Slack-compatible webhooks
//! (`{"text": …}` posted as JSON). Each condition fires once per tenant
//! (claimed with the store's `put_if_absent` under
//! `t/<tenant>/analytics/alerts/<condition>`, so replicas agree); delivery
//! is retried with backoff, failures counted. The text names the sandbox,
//! the company, the deal and what happened; never a credential, and the
//! webhook URLs themselves are never logged (Slack's carry a secret).

use bytes::Bytes;
use tokio::sync::mpsc;

use super::settings::Alerts;
use super::sinks;

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The tenant uploaded its own data, or completed 3+ workflows in one session.
    HighIntent,
    /// No session for `stall_after` since the last activity after the first login.
    Stall,
    /// 2+ errors in one session.
    ErrorRisk,
    /// Every milestone achieved.
    EvaluationComplete,
}

impl Condition {
    /// The condition's name (store key, metric label, alert text).
    pub const fn as_str(self) -> &'static str {
        match self {
            Condition::HighIntent => "high_intent",
            Condition::Stall => "stall",
            Condition::ErrorRisk => "error_risk",
            Condition::EvaluationComplete => "evaluation_complete",
        }
    }

    /// A short human title.
    const fn title(self) -> &'static str {
        match self {
            Condition::HighIntent => "High intent",
            Condition::Stall => "Stalled",
            Condition::ErrorRisk => "Error risk",
            Condition::EvaluationComplete => "Evaluation complete",
        }
    }
}

/// Who an alert is about.
pub struct Subject<'a> {
    /// The sandbox id.
    pub sandbox_id: &'a str,
    /// The prospect's company.
    pub company: &'a str,
    /// The CRM deal.
    pub deal_id: Option<&'a str>,
}

/// The alert's text: `[High intent] Sandbox sbx_… (Acme, deal D-1): …`.
pub fn text(condition: Condition, who: &Subject<'_>, what: &str) -> String {
    format!(
        "[{}] Sandbox {} ({}, deal {}): {}",
        condition.title(),
        who.sandbox_id,
        who.company,
        who.deal_id.unwrap_or("none"),
        what
    )
}

/// The queue in front of the webhooks.
pub struct Alerter {
    tx: Option<mpsc::Sender<String>>,
    depth: metrics::Gauge,
}

/// Alerts waiting for delivery, at most.
const QUEUE: usize = 1024;

impl Alerter {
    /// Starts the delivery task (none without webhooks).
    pub fn start(cfg: &Alerts) -> Alerter {
        let depth = metrics::gauge!("sandgate_analytics_sink_queue_depth", "sink" => "webhook");
        if cfg.webhooks.is_empty() {
            return Alerter { tx: None, depth };
        }
        let Some(client) = sinks::http_client(cfg.timeout) else {
            tracing::error!("analytics.alerts: no TLS client; webhooks are off");
            return Alerter { tx: None, depth };
        };
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        let cfg = cfg.clone();
        let d = depth.clone();
        tokio::spawn(async move {
            while let Some(text) = rx.recv().await {
                d.decrement(1.0);
                let body = Bytes::from(
                    serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default(),
                );
                for url in &cfg.webhooks {
                    let ok = sinks::with_retries("webhook", cfg.max_attempts, || {
                        sinks::post_json(&client, url, body.clone(), cfg.timeout)
                    })
                    .await;
                    if !ok {
                        sinks::dropped("webhook", "delivery_failed", 1);
                    }
                }
            }
        });
        Alerter {
            tx: Some(tx),
            depth,
        }
    }

    /// Whether any webhook is configured.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `text` for every webhook.
    pub fn send(&self, condition: Condition, text: String) {
        metrics::counter!("sandgate_analytics_alerts_total", "condition" => condition.as_str())
            .increment(1);
        tracing::info!(target: "sandgate::analytics", condition = condition.as_str(), "alert");
        let Some(tx) = &self.tx else { return };
        match tx.try_send(text) {
            Ok(()) => self.depth.increment(1.0),
            Err(_) => sinks::dropped("webhook", "queue_full", 1),
        }
    }
}
