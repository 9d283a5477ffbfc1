//! Seed profiles: synthetic sample data loaded into a sandbox when it is
//! provisioned with `sample_data_persona` and again after every reset.
//!
//! A profile is `seeds/<name>.yaml` in the sandbox directory (the bundled
//! demo has `fintech_default` and `retail_default`):
//!
//! ```yaml
//! api: payments                # a facade API with `state`
//! resources:                   # created in this order
//!   - resource: customers
//!     count: 5
//!     fields:                  # top-level fields; anything else is literal
//!       name: { pick: [Ada Lovelace, Grace Hopper] }   # one of, at random
//!       email: { format: "customer{n}@example.com" }    # {n}: 1, 2, …
//!   - resource: payment_intents
//!     count: 3
//!     fields:
//!       amount: { range: [500, 50000] }                # an integer in [a, b]
//!       customer: { ref: customers }                   # a seeded object's id
//!       amount_received: { same_as: amount }           # another field's value
//! ```
//!
//! Deterministic: the generator is seeded from SHA-256 of (profile,
//! tenant id), ids come from the tenant's sequence (which a reset
//! restarts) and `created` counts back from the sandbox's creation, so
//! the same profile and tenant give the same objects, at provisioning and
//! after every reset. Each profile is built and checked against the
//! contract when the sandbox loads.

use std::collections::BTreeMap;
use std::path::Path;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::{ConfigError, Source};
use crate::sandbox::Api;
use crate::store::{SharedStore, StoreError};

/// One seed file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    /// The API whose state is seeded.
    api: String,
    /// What to create, in order.
    resources: Vec<SeedResource>,
}

/// Objects of one resource.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedResource {
    /// The resource name.
    resource: String,
    /// How many.
    count: u32,
    /// Field values or generators.
    #[serde(default)]
    fields: Map<String, Value>,
}

/// A loaded profile.
#[derive(Debug)]
pub struct Profile {
    api: String,
    resources: Vec<SeedResource>,
}

/// Every seed profile of the sandbox, by name.
#[derive(Debug, Default)]
pub struct Seeds {
    /// Profiles by name (file stem).
    pub profiles: BTreeMap<String, Profile>,
}

/// An object to store: (resource, id, object).
type Planned = (String, String, Value);

impl Seeds {
    /// Loads `seeds/*.yaml` and checks each profile against `apis`.
    pub fn load(source: &Source, apis: &[Api]) -> Result<Seeds, Vec<ConfigError>> {
        let mut profiles = BTreeMap::new();
        let mut errors = Vec::new();
        for rel in source.list(Path::new("seeds"), &["yaml", "yml"]) {
            let path = source.display_path(&rel);
            let Some(name) = rel.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = match source.read_to_string(&rel) {
                Ok(t) => t,
                Err(m) => {
                    errors.push(ConfigError::new(&path, 0, m));
                    continue;
                }
            };
            let file: ProfileFile = match crate::config::parse_yaml(&path, &text) {
                Ok(f) => f,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let profile = Profile {
                api: file.api,
                resources: file.resources,
            };
            // Built once for a made-up tenant: every object must match.
            if let Err(m) = plan(&profile, apis, name, "sbx_check", 1_767_225_600, 0) {
                errors.push(ConfigError::new(
                    &path,
                    0,
                    format!("seed profile `{name}`: {m}"),
                ));
                continue;
            }
            profiles.insert(name.to_owned(), profile);
        }
        if errors.is_empty() {
            Ok(Seeds { profiles })
        } else {
            Err(errors)
        }
    }
}

/// Builds the objects of `profile` for `tenant` (ids from sequence
/// `first_seq + 1` on), each checked against the contract.
fn plan(
    profile: &Profile,
    apis: &[Api],
    name: &str,
    tenant: &str,
    created_at: u64,
    first_seq: u64,
) -> Result<Vec<Planned>, String> {
    let api = apis
        .iter()
        .find(|a| *a.name == *profile.api)
        .ok_or_else(|| format!("no API `{}`", profile.api))?;
    let state = api
        .state
        .as_ref()
        .ok_or_else(|| format!("API `{}` has no `state`", profile.api))?;
    let digest = crate::facade::generate::seed_of(&[name.as_bytes(), tenant.as_bytes()]);
    let mut rng = ChaCha8Rng::seed_from_u64(digest);
    let total: u64 = profile.resources.iter().map(|r| u64::from(r.count)).sum();
    let mut seq = first_seq;
    let mut made: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for r in &profile.resources {
        let ri = state.resource(&r.resource).ok_or_else(|| {
            format!(
                "API `{}` has no stateful resource `{}`",
                api.name, r.resource
            )
        })?;
        let resource = &state.resources[ri];
        // Seeds may set any field of the object, not only requestable ones.
        if let Some(k) = r.fields.keys().find(|k| !resource.properties.contains(k)) {
            return Err(format!("`{}` objects have no field `{k}`", r.resource));
        }
        for n in 1..=r.count {
            seq += 1;
            let mut fields = Map::new();
            for (k, v) in &r.fields {
                let value = generate(v, n, &mut rng, &made, &fields)?;
                fields.insert(k.clone(), value);
            }
            let id = super::objects::make_id(&resource.prefix, seq, rng.next_u64());
            // Oldest first, an hour apart, ending at the sandbox's creation.
            let created = created_at.saturating_sub((total + first_seq - seq) * 3600);
            let obj = super::build(resource, Some(&Value::Object(fields)), &id, created);
            if let Some(op) = state.read_op.get(ri).copied().flatten()
                && let Some((at, why)) = state.violation(op, 200, &obj)
            {
                return Err(format!(
                    "a `{}` object does not match the contract at {at}: {why}",
                    r.resource
                ));
            }
            made.entry(r.resource.clone()).or_default().push(id.clone());
            out.push((resource.name.clone(), id, obj));
        }
    }
    Ok(out)
}

/// A field value: a generator (`pick`, `range`, `format`, `ref`,
/// `same_as`) or a literal.
fn generate(
    v: &Value,
    n: u32,
    rng: &mut ChaCha8Rng,
    made: &BTreeMap<String, Vec<String>>,
    fields: &Map<String, Value>,
) -> Result<Value, String> {
    let Some((kind, arg)) = v
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
    else {
        return Ok(v.clone());
    };
    Ok(match (kind.as_str(), arg) {
        ("pick", Value::Array(items)) if !items.is_empty() => {
            items[(rng.next_u64() % items.len() as u64) as usize].clone()
        }
        ("range", Value::Array(b)) if b.len() == 2 => {
            let (lo, hi) = (b[0].as_i64().unwrap_or(0), b[1].as_i64().unwrap_or(0));
            if hi < lo {
                return Err(format!("range [{lo}, {hi}] is empty"));
            }
            json!(lo + (rng.next_u64() % ((hi - lo) as u64 + 1)) as i64)
        }
        ("format", Value::String(f)) => json!(f.replace("{n}", &n.to_string())),
        ("ref", Value::String(res)) => {
            let ids = made
                .get(res)
                .filter(|ids| !ids.is_empty())
                .ok_or_else(|| format!("`ref: {res}` names no resource seeded before it"))?;
            json!(ids[(rng.next_u64() % ids.len() as u64) as usize])
        }
        ("same_as", Value::String(f)) => fields
            .get(f)
            .cloned()
            .ok_or_else(|| format!("`same_as: {f}` names no field set before it"))?,
        _ => v.clone(),
    })
}

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// No such profile.
    #[error("no seed profile `{0}`")]
    Unknown(String),
    /// The profile does not fit the loaded sandbox.
    #[error("seed profile `{0}`: {1}")]
    Invalid(String, String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Loads profile `name` into the state of `tenant` (created at
/// `created_at`); returns how many objects of each resource it stored.
pub async fn load(
    seeds: &Seeds,
    apis: &[Api],
    store: &SharedStore,
    tenant: &str,
    created_at: u64,
    name: &str,
) -> Result<BTreeMap<String, u64>, SeedError> {
    let profile = seeds
        .profiles
        .get(name)
        .ok_or_else(|| SeedError::Unknown(name.to_owned()))?;
    let objects = super::objects::Objects {
        store,
        tenant,
        commit: true,
    };
    // The sequence is where a fresh (or freshly reset) tenant's starts.
    let first = objects.next_seq().await?.saturating_sub(1);
    let planned = plan(profile, apis, name, tenant, created_at, first)
        .map_err(|m| SeedError::Invalid(name.to_owned(), m))?;
    let mut counts = BTreeMap::new();
    for (i, (resource, id, obj)) in planned.iter().enumerate() {
        if i > 0 {
            objects.next_seq().await?;
        }
        objects.put(resource, id, obj, 0, None).await?;
        *counts.entry(resource.clone()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Wipes the tenant's sandbox data ([`crate::tenants::Registry::reset`]:
/// state, idempotency records, clock; credentials and quota counts stay),
/// then loads its seed profile again; returns (entries removed, objects
/// loaded by resource).
pub async fn reset(
    sandbox: &crate::sandbox::Sandbox,
    registry: &crate::tenants::Registry,
    tenant: &crate::tenants::Tenant,
) -> Result<(u64, BTreeMap<String, u64>), SeedError> {
    let removed = registry.reset(&tenant.id).await?;
    let counts = match &tenant.sample_data_persona {
        Some(p) => {
            load(
                &sandbox.seeds,
                &sandbox.apis,
                registry.store(),
                &tenant.id,
                tenant.created_at,
                p,
            )
            .await?
        }
        None => BTreeMap::new(),
    };
    Ok((removed, counts))
}
