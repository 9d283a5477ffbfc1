//! Resources inferred from the contract, compiled once per load.
//!
//! A *collection* path (`/v1/customers`) with a POST is a resource named
//! after its last segment (`customers`); the path with one more parameter
//! segment (`/v1/customers/{customer}`) is its *item*. GET on the item
//! reads, PATCH / PUT / POST updates, DELETE deletes; GET on the collection
//! lists. A POST below the item (`/v1/payment_intents/{intent}/confirm`) is
//! an *action* on the object (scenario rules move it); so is a nested
//! collection (`/v1/customers/{customer}/sources`) in this version.
//! `apis[].state` overrides any of this.

use std::collections::HashMap;

use serde_json::Value;

use super::config::{EffectConfig, StateConfig};
use crate::config::ConfigError;
use crate::contract::schema::{self, Compiled, Direction};
use crate::contract::{Contract, Operation, resolve};

/// What an operation does to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Creates an object.
    Create,
    /// Reads one.
    Read,
    /// Updates one.
    Update,
    /// Deletes one.
    Delete,
    /// Lists them.
    List,
    /// An action on one (scenario rules move it).
    Action,
}

/// One stateful resource.
#[derive(Debug)]
pub struct Resource {
    /// Its name (`customers`).
    pub name: String,
    /// The id prefix (`cus_`).
    pub prefix: String,
    /// The id of the create operation's example, replaced by the real id
    /// wherever it appears in a built object (`client_secret`).
    pub example_id: Option<String>,
    /// The object a creation starts from: the create operation's
    /// documented example, or one generated from its response schema.
    pub base: Value,
    /// Top-level properties of the object's schema.
    pub properties: Vec<String>,
    /// The operation that creates one.
    pub create: usize,
    /// Properties of the create request that the object has: absent from a
    /// request, they are emptied (`null` when nullable, `{}` for objects)
    /// rather than kept from the example.
    pub optional: Vec<(String, Value)>,
}

/// A compiled effect (see [`EffectConfig`]).
#[derive(Debug)]
pub struct Effect {
    /// The changed object's resource index.
    pub target: usize,
    /// The configuration.
    pub config: EffectConfig,
}

/// The state of one API: resources, the role of each operation, compiled
/// response schemas.
#[derive(Debug)]
pub struct State {
    /// The resources.
    pub resources: Vec<Resource>,
    /// By operation index: (resource index, role).
    pub roles: Vec<Option<(usize, Role)>>,
    /// By operation index: the effect of that creation.
    pub effects: HashMap<usize, Effect>,
    /// (operation index, status) → the compiled response schema.
    validators: HashMap<(usize, u16), Compiled>,
    /// (operation index, status) → the documented JSON example.
    examples: HashMap<(usize, u16), Value>,
    /// By resource: the operation that reads one (for the helper actions).
    pub read_op: Vec<Option<usize>>,
}

fn segments(t: &str) -> Vec<&str> {
    t.split('/').filter(|s| !s.is_empty()).collect()
}

fn is_param(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with('}')
}

/// The operation's documented response object for `status`.
fn response<'a>(doc: &'a Value, op: &Operation, status: u16) -> Option<&'a Value> {
    let r = doc
        .pointer(&format!(
            "/paths/{}/{}/responses",
            crate::contract::escape_pointer(&op.template),
            op.method.as_str().to_ascii_lowercase()
        ))?
        .get(status.to_string())?;
    Some(resolve(doc, r))
}

/// The lowest documented 2xx status of an operation.
pub fn success(op: &Operation) -> Option<u16> {
    op.documented
        .iter()
        .map(|d| d.status.as_u16())
        .filter(|s| (200..300).contains(s))
        .min()
}

fn json_media<'a>(doc: &'a Value, op: &Operation, status: u16) -> Option<&'a Value> {
    response(doc, op, status)?
        .get("content")?
        .get("application/json")
}

fn example_of(doc: &Value, media: &Value) -> Option<Value> {
    media.get("example").cloned().or_else(|| {
        media
            .get("examples")?
            .as_object()?
            .values()
            .next()
            .map(|e| resolve(doc, e))
            .and_then(|e| e.get("value"))
            .cloned()
    })
}

/// The prefix of an example id: `cus_NffrFeUfNV2Hib` → `cus_`.
pub fn prefix_of(id: &str) -> Option<String> {
    let at = id.rfind('_')?;
    let (p, rest) = id.split_at(at + 1);
    (!rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric())).then(|| p.to_owned())
}

impl State {
    /// Infers the resources of `contract`, applying `cfg`.
    pub fn compile(
        contract: &Contract,
        cfg: &StateConfig,
        file: &std::path::Path,
        line: u64,
    ) -> Result<State, Vec<ConfigError>> {
        let doc = &contract.doc;
        let ops = &contract.operations;
        let mut errors = Vec::new();
        let err = |m: String| ConfigError::new(file, line, m);
        let by_id = |id: &str| ops.iter().position(|o| o.id == id);
        let mut resources = Vec::new();
        let mut roles: Vec<Option<(usize, Role)>> = vec![None; ops.len()];
        let mut read_op = Vec::new();
        for (ci, create) in ops.iter().enumerate() {
            let segs = segments(&create.template);
            let Some(name) = segs.last().filter(|s| !is_param(s)) else {
                continue;
            };
            if create.method != http::Method::POST {
                continue;
            }
            // A POST below another resource's item path is an action on
            // that item (`/v1/payment_intents/{intent}/confirm`), not a
            // collection of its own.
            let below_an_item = ops.iter().any(|o| {
                let s = segments(&o.template);
                o.method == http::Method::POST
                    && !s.is_empty()
                    && segs.len() > s.len() + 1
                    && segs.starts_with(&s)
                    && is_param(segs[s.len()])
            });
            if below_an_item {
                continue;
            }
            let over = cfg.resources.get(*name);
            if over.is_some_and(|o| !o.enabled) {
                continue;
            }
            let ri = resources.len();
            let pick = |explicit: Option<&String>, found: Option<usize>| match explicit {
                Some(id) => by_id(id),
                None => found,
            };
            let create_i = pick(over.and_then(|o| o.create.as_ref()), Some(ci));
            let Some(create_i) = create_i else {
                errors.push(err(format!(
                    "state: resource `{name}`: `create` names no operation"
                )));
                continue;
            };
            // The item path: the collection plus one parameter segment.
            let item = ops.iter().find_map(|o| {
                let s = segments(&o.template);
                (s.len() == segs.len() + 1 && s.starts_with(&segs) && is_param(s[segs.len()]))
                    .then(|| o.template.clone())
            });
            let find = |pred: &dyn Fn(&Operation) -> bool| ops.iter().position(pred);
            let on_item = |m: http::Method| {
                let item = item.clone();
                find(&move |o: &Operation| Some(&o.template) == item.as_ref() && o.method == m)
            };
            let on_coll = |m: http::Method| {
                find(&|o: &Operation| o.template == create.template && o.method == m)
            };
            let read = pick(
                over.and_then(|o| o.read.as_ref()),
                on_item(http::Method::GET),
            );
            let update = pick(
                over.and_then(|o| o.update.as_ref()),
                on_item(http::Method::PATCH)
                    .or_else(|| on_item(http::Method::PUT))
                    .or_else(|| on_item(http::Method::POST)),
            );
            let delete = pick(
                over.and_then(|o| o.delete.as_ref()),
                on_item(http::Method::DELETE),
            );
            let list = pick(
                over.and_then(|o| o.list.as_ref()),
                on_coll(http::Method::GET),
            );
            let create_op = &ops[create_i];
            let status = success(create_op).unwrap_or(200);
            let media = json_media(doc, create_op, status);
            let object_schema = media.and_then(|m| m.get("schema")).map(|s| resolve(doc, s));
            let base = media
                .and_then(|m| example_of(doc, m))
                .or_else(|| {
                    object_schema.map(|s| crate::facade::generate::generate(doc, s, ri as u64))
                })
                .unwrap_or(Value::Null);
            if !base.is_object() {
                // Not an object API; leave it stateless.
                continue;
            }
            let example_id = base.get("id").and_then(Value::as_str).map(str::to_owned);
            let prefix = over
                .and_then(|o| o.prefix.clone())
                .or_else(|| example_id.as_deref().and_then(prefix_of))
                .unwrap_or_default();
            let properties: Vec<String> = object_schema
                .and_then(|s| s.get("properties"))
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_else(|| {
                    base.as_object()
                        .map(|o| o.keys().cloned().collect())
                        .unwrap_or_default()
                });
            let optional = optional_fields(doc, create_op, object_schema, &properties);
            for (i, role) in [
                (Some(create_i), Role::Create),
                (read, Role::Read),
                (update, Role::Update),
                (delete, Role::Delete),
                (list, Role::List),
            ] {
                if let Some(i) = i {
                    roles[i] = Some((ri, role));
                }
            }
            // Actions: POSTs below the item path.
            if let Some(item) = &item {
                let item_segs = segments(item);
                for (i, o) in ops.iter().enumerate() {
                    let s = segments(&o.template);
                    if roles[i].is_none()
                        && o.method == http::Method::POST
                        && s.len() > item_segs.len()
                        && s.starts_with(&item_segs)
                    {
                        roles[i] = Some((ri, Role::Action));
                    }
                }
            }
            read_op.push(read);
            resources.push(Resource {
                name: (*name).to_owned(),
                create: create_i,
                prefix,
                example_id,
                base,
                properties,
                optional,
            });
        }
        let mut effects = HashMap::new();
        for e in &cfg.effects {
            let Some(op) = by_id(&e.operation) else {
                errors.push(err(format!(
                    "state: effect on `{}`: the contract has no such operation",
                    e.operation
                )));
                continue;
            };
            let Some(target) = resources.iter().position(|r| r.name == e.target) else {
                errors.push(err(format!(
                    "state: effect on `{}`: no stateful resource `{}`",
                    e.operation, e.target
                )));
                continue;
            };
            effects.insert(
                op,
                Effect {
                    target,
                    config: EffectConfig {
                        operation: e.operation.clone(),
                        target: e.target.clone(),
                        id: e.id.clone(),
                        require: e.require.clone(),
                        fill: e.fill.clone(),
                        add: e.add.clone(),
                        cap: e.cap.clone(),
                    },
                },
            );
        }
        for name in cfg.resources.keys() {
            if !resources.iter().any(|r| &r.name == name)
                && cfg.resources.get(name).is_some_and(|o| o.enabled)
            {
                errors.push(err(format!(
                    "state: resource `{name}` is not a collection with a POST in the contract"
                )));
            }
        }
        // Compile the response schemas of every stateful operation.
        let components = schema::components(doc, Direction::Response);
        let mut validators = HashMap::new();
        let mut examples = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            if roles[i].is_none() {
                continue;
            }
            for d in &op.documented {
                let status = d.status.as_u16();
                let Some(media) = json_media(doc, op, status) else {
                    continue;
                };
                if let Some(ex) = example_of(doc, media) {
                    examples.insert((i, status), ex);
                }
                if let Some(s) = media.get("schema") {
                    match Compiled::new(&schema::rooted(
                        schema::convert(s, Direction::Response),
                        &components,
                    )) {
                        Ok(c) => {
                            validators.insert((i, status), c);
                        }
                        Err(m) => errors.push(err(format!(
                            "state: operation `{}` status {status}: {m}",
                            op.id
                        ))),
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(State {
                resources,
                roles,
                effects,
                validators,
                examples,
                read_op,
            })
        } else {
            Err(errors)
        }
    }

    /// The first violation of `value` against operation `op`'s response
    /// schema for `status`, as (pointer, message).
    pub fn violation(&self, op: usize, status: u16, value: &Value) -> Option<(String, String)> {
        let v = self.validators.get(&(op, status))?;
        v.violations(value, 1)
            .into_iter()
            .next()
            .map(|v| (v.pointer, v.message))
    }

    /// The documented JSON example of operation `op`'s response `status`.
    pub fn example(&self, op: usize, status: u16) -> Option<&Value> {
        self.examples.get(&(op, status))
    }

    /// The documented error statuses of `op` with a JSON example, lowest first.
    pub fn error_statuses(&self, op: usize) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .examples
            .keys()
            .filter(|(o, s)| *o == op && *s >= 400)
            .map(|(_, s)| *s)
            .collect();
        v.sort_unstable();
        v
    }

    /// The resource named `name`.
    pub fn resource(&self, name: &str) -> Option<usize> {
        self.resources.iter().position(|r| r.name == name)
    }
}

/// The create request's properties that the object also has, with the
/// value an object gets when a request leaves them out.
fn optional_fields(
    doc: &Value,
    create: &Operation,
    object_schema: Option<&Value>,
    properties: &[String],
) -> Vec<(String, Value)> {
    let Some(req) = doc
        .pointer(&format!(
            "/paths/{}/post/requestBody",
            crate::contract::escape_pointer(&create.template)
        ))
        .map(|r| resolve(doc, r))
        .and_then(|r| r.get("content"))
        .and_then(Value::as_object)
        .and_then(|c| c.values().next())
        .and_then(|m| m.get("schema"))
        .map(|s| resolve(doc, s))
    else {
        return Vec::new();
    };
    let required: Vec<&str> = req
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = req.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in props.keys() {
        if required.contains(&name.as_str()) || !properties.contains(name) {
            continue;
        }
        let Some(s) = object_schema
            .and_then(|o| o.get("properties"))
            .and_then(|p| p.get(name))
            .map(|s| resolve(doc, s))
        else {
            continue;
        };
        if s.get("nullable").and_then(Value::as_bool) == Some(true) {
            out.push((name.clone(), Value::Null));
        } else if s.get("type").and_then(Value::as_str) == Some("object") {
            out.push((name.clone(), Value::Object(serde_json::Map::new())));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::prefix_of;

    #[test]
    fn prefixes_come_from_example_ids() {
        assert_eq!(prefix_of("cus_NffrFeUfNV2Hib").as_deref(), Some("cus_"));
        assert_eq!(
            prefix_of("pi_3MtwBwLkdIwHu7ix28a3tqPa").as_deref(),
            Some("pi_")
        );
        assert_eq!(prefix_of("sub_sched_1Mr3").as_deref(), Some("sub_sched_"));
        assert_eq!(prefix_of("12345"), None);
    }
}
