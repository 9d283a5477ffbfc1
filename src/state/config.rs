//! The `apis[].state` section of `sandgate.yaml`: turns per-tenant state on
//! for a facade API, and overrides what is inferred from the contract.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `apis[].state`: per-tenant state for a facade API. Present (even empty,
/// `state: {}`) turns it on; resources are inferred from the contract.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Overrides of inferred resources, by resource name (the last literal
    /// segment of the collection path, such as `customers`).
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceConfig>,
    /// Creations that change another stored object (a refund raises its
    /// payment intent's refunded amount).
    #[serde(default)]
    pub effects: Vec<EffectConfig>,
}

/// Overrides for one resource.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// `false` leaves the resource stateless.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The id prefix (default: from the create operation's example id,
    /// `cus_NffrFeUfNV2Hib` → `cus_`).
    pub prefix: Option<String>,
    /// The operationId that creates (default: POST on the collection path).
    pub create: Option<String>,
    /// The operationId that reads one (default: GET on the item path).
    pub read: Option<String>,
    /// The operationId that updates one (default: PATCH, PUT or POST on the item path).
    pub update: Option<String>,
    /// The operationId that deletes one (default: DELETE on the item path).
    pub delete: Option<String>,
    /// The operationId that lists them (default: GET on the collection path).
    pub list: Option<String>,
}

fn yes() -> bool {
    true
}

/// A creation that changes another stored object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EffectConfig {
    /// The create operation (`createRefund`).
    pub operation: String,
    /// The resource of the changed object (`payment_intents`).
    pub target: String,
    /// JSON pointer into the request body naming the target's id (`/payment_intent`).
    pub id: String,
    /// Top-level fields the target must have (`{status: succeeded}`).
    #[serde(default)]
    pub require: serde_json::Map<String, Value>,
    /// Fields of the new object filled from the target when the request
    /// does not give them: a pointer into the target (`/currency`) or the
    /// difference of two (`/amount_received - /amount_refunded`).
    #[serde(default)]
    pub fill: BTreeMap<String, String>,
    /// Target field ← the target's value plus the new object's value at a
    /// pointer (`amount_refunded: /amount`).
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Target field → a pointer into the target it may not exceed after
    /// `add` (`amount_refunded: /amount_received`).
    #[serde(default)]
    pub cap: BTreeMap<String, String>,
}
