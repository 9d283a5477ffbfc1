//! The usage-event taxonomy (issue 7): names and properties are a contract
//! with the analytics tools that read them, so they are spelled here once.

use serde_json::{Map, Value, json};

/// A new sandbox was provisioned (admin API).
pub const PROVISIONED: &str = "sandbox_provisioned";
/// The tenant's first authenticated request.
pub const FIRST_LOGIN: &str = "sandbox_first_login";
/// The first request, and the first after `analytics.session_idle`.
pub const SESSION_STARTED: &str = "sandbox_session_started";
/// The first use of an operation in a session.
pub const FEATURE_USED: &str = "sandbox_feature_used";
/// A configured workflow was completed within a session.
pub const WORKFLOW_COMPLETED: &str = "sandbox_workflow_completed";
/// A write created state (objects of the tenant's own).
pub const DATA_UPLOADED: &str = "sandbox_data_uploaded";
/// A 5xx answer, or a refusal other than a rate limit.
pub const ERROR_ENCOUNTERED: &str = "sandbox_error_encountered";
/// `GET /_sandbox/help`, or a trace lookup.
pub const HELP_REQUESTED: &str = "sandbox_help_requested";
/// A configured milestone, once per tenant.
pub const MILESTONE_ACHIEVED: &str = "sandbox_milestone_achieved";
/// The expiry sweep found the sandbox expired, once.
pub const EXPIRED: &str = "sandbox_expired";

/// Every event name (metric label values).
pub const ALL: &[&str] = &[
    PROVISIONED,
    FIRST_LOGIN,
    SESSION_STARTED,
    FEATURE_USED,
    WORKFLOW_COMPLETED,
    DATA_UPLOADED,
    ERROR_ENCOUNTERED,
    HELP_REQUESTED,
    MILESTONE_ACHIEVED,
    EXPIRED,
];

/// One usage event, as every sink receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Unique id (a ULID).
    pub id: String,
    /// The event name (one of [`ALL`]).
    pub name: &'static str,
    /// Server time it was emitted, RFC 3339 (real time, not the tenant's clock).
    pub timestamp: String,
    /// The sandbox (tenant) id.
    pub sandbox_id: String,
    /// The CRM deal of the sandbox.
    pub deal_id: Option<String>,
    /// The event's own properties (the taxonomy's).
    pub properties: Map<String, Value>,
}

impl Event {
    /// A new event stamped now with a fresh id.
    pub fn new(
        name: &'static str,
        sandbox_id: &str,
        deal_id: Option<&str>,
        properties: Map<String, Value>,
    ) -> Self {
        Self {
            id: ulid::Ulid::new().to_string(),
            name,
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            sandbox_id: sandbox_id.to_owned(),
            deal_id: deal_id.map(str::to_owned),
            properties,
        }
    }

    /// The JSON-lines form: the common fields, then `properties`.
    pub fn to_json(&self) -> Value {
        json!({
            "event_id": self.id,
            "event": self.name,
            "timestamp": self.timestamp,
            "sandbox_id": self.sandbox_id,
            "deal_id": self.deal_id,
            "properties": self.properties,
        })
    }

    /// One element of a PostHog `/batch/` request: `distinct_id` is the
    /// sandbox id; the common fields are repeated in `properties`, and the
    /// event id is PostHog's de-duplication key (`$insert_id`).
    pub fn to_posthog(&self) -> Value {
        let mut props = self.properties.clone();
        props.insert("event_id".into(), json!(self.id));
        props.insert("sandbox_id".into(), json!(self.sandbox_id));
        props.insert("deal_id".into(), json!(self.deal_id));
        props.insert("$insert_id".into(), json!(self.id));
        json!({
            "event": self.name,
            "distinct_id": self.sandbox_id,
            "properties": props,
            "timestamp": self.timestamp,
        })
    }
}

/// Builds a property map from `(name, value)` pairs.
pub fn props<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
