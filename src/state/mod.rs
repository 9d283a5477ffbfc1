//! Per-tenant state for facade APIs: a partner creates an object, then
//! reads, lists, updates and deletes it, and scenario rules move it
//! (a payment that needs a challenge, then succeeds; a refund).
//!
//! Turned on per API by `apis[].state`; only requests of an identified
//! tenant have state (a public API stays stateless). Resources are
//! inferred from the contract ([`resources`]); objects live in the store
//! under the tenant's prefix ([`objects`]); every object is checked
//! against the operation's response schema before it is stored or
//! answered, and one that would not match is refused
//! (`state_object_invalid`), never stored. Seed profiles fill a new or
//! reset sandbox ([`seed`]).
//!
//! Seams for the clock and dry runs: every entry point takes `now` (Unix
//! seconds: the tenant's clock) and `commit` (false: compute the answer a
//! real request would get, write nothing, count nothing) in [`Ctx`].

pub mod config;
pub mod objects;
pub mod resources;
pub mod seed;

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::body::{Body, full};
use crate::facade::scenarios::{Answer, Matched, StatePatch};
use crate::refusal::{Refusal, Stage};
use crate::sandbox::Api;
use crate::store::{SharedStore, StoreError};
use objects::{Objects, Write};
pub use resources::{Role, State};

/// Who the state belongs to and how to write it.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The store.
    pub store: &'a SharedStore,
    /// The tenant's id.
    pub tenant: &'a str,
    /// The tenant's plan (for refusals).
    pub plan: &'a str,
    /// The plan's `storage`, in bytes.
    pub storage: Option<u64>,
    /// The tenant's clock, Unix seconds (stored objects' `created`).
    pub now: u64,
    /// False: a dry run (nothing written, nothing counted).
    pub commit: bool,
}

impl<'a> Ctx<'a> {
    fn objects(&self) -> Objects<'a> {
        Objects {
            store: self.store,
            tenant: self.tenant,
            commit: self.commit,
        }
    }
}

/// One request, as state sees it.
pub struct Request<'a> {
    /// The operation index.
    pub op: usize,
    /// The path relative to the API.
    pub path: &'a str,
    /// The query string.
    pub query: Option<&'a str>,
    /// The typed body.
    pub body: Option<&'a Value>,
}

/// The marker of answers from state (`Sandgate-Source: state`).
const SOURCE: &str = "state";

fn store_err(e: StoreError) -> Refusal {
    tracing::warn!(error = %e, "store failed while reading or writing state");
    Refusal::StoreUnavailable {
        stage: Stage::Dispatch,
    }
}

/// A JSON answer from state.
fn respond(status: u16, value: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        crate::facade::SANDGATE_SOURCE,
        HeaderValue::from_static(SOURCE),
    );
    r
}

/// Answers `value` with `status` after checking it against the
/// operation's response schema.
fn checked(
    api: &Api,
    state: &State,
    op: usize,
    status: u16,
    value: &Value,
) -> Result<Response<Body>, Refusal> {
    check(api, state, op, status, value)?;
    Ok(respond(status, value))
}

fn check(api: &Api, state: &State, op: usize, status: u16, value: &Value) -> Result<(), Refusal> {
    match state.violation(op, status, value) {
        None => Ok(()),
        Some((pointer, message)) => Err(Refusal::StateObjectInvalid {
            api: api.name.to_string(),
            operation: op_id(api, op),
            pointer: if pointer.is_empty() {
                "/".into()
            } else {
                pointer
            },
            message,
        }),
    }
}

fn op_id(api: &Api, op: usize) -> String {
    api.contract
        .as_ref()
        .and_then(|c| c.operations.get(op))
        .map(|o| o.id.clone())
        .unwrap_or_default()
}

/// Replaces `from` by `to` in every string of `v`.
fn replace_strings(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s.contains(from) => *s = s.replace(from, to),
        Value::Array(a) => a.iter_mut().for_each(|x| replace_strings(x, from, to)),
        Value::Object(o) => o.values_mut().for_each(|x| replace_strings(x, from, to)),
        _ => {}
    }
}

/// Sets `pointer` in `v`, creating objects on the way.
fn set_pointer(v: &mut Value, pointer: &str, value: Value) {
    let mut cur = v;
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (i, t) in tokens.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(o) = cur else { return };
        if i + 1 == tokens.len() {
            o.insert(t.clone(), value);
            return;
        }
        cur = o.entry(t.clone()).or_insert(Value::Object(Map::new()));
    }
}

/// A merge patch in which `null` *sets* null (a stored object keeps its
/// nullable fields, such as `next_action: null`), objects merge key by key
/// and anything else replaces.
fn merge_set(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(cur) if cur.is_object() && v.is_object() => merge_set(cur, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Applies a scenario outcome's `state` patch to `object`.
pub fn apply_patch(
    object: &mut Value,
    patch: &StatePatch,
    request: Option<&Value>,
    answer: &Value,
) {
    let id = object
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(m) = &patch.merge {
        let mut m = m.clone();
        replace_strings(&mut m, "{id}", &id);
        merge_set(object, &m);
    }
    let sources = json!({
        "object": object.clone(),
        "request": request.cloned().unwrap_or(Value::Null),
        "answer": answer,
    });
    for (to, from) in &patch.copy {
        if let Some(v) = sources.pointer(from) {
            set_pointer(object, to, v.clone());
        }
    }
}

/// The value of path parameter number `index` (0: the item's id).
fn item_id<'p>(template: &str, path: &'p str) -> Option<&'p str> {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    let at = t.iter().position(|s| s.starts_with('{'))?;
    p.get(at).copied().filter(|s| !s.is_empty())
}

/// The API's own error answer for `op`: its documented example for
/// `status` (or its first documented error) with `code`, `message` and
/// `param` set in the error object, as the contract shapes errors.
fn api_error(
    state: &State,
    op: usize,
    status: u16,
    code: &str,
    message: &str,
    param: Option<&str>,
) -> Response<Body> {
    let (status, mut body) = match state.example(op, status) {
        Some(e) => (status, e.clone()),
        None => match state.error_statuses(op).first() {
            Some(s) => (*s, state.example(op, *s).cloned().unwrap_or(Value::Null)),
            None => (status, json!({"error": {}})),
        },
    };
    fn set(v: &mut Value, code: &str, message: &str, param: Option<&str>) -> bool {
        let Value::Object(o) = v else { return false };
        if o.contains_key("message") {
            o.insert("message".into(), json!(message));
            if o.contains_key("code") {
                o.insert("code".into(), json!(code));
            }
            if o.contains_key("param") {
                o.insert("param".into(), json!(param));
            }
            if o.contains_key("decline_code") {
                o.insert("decline_code".into(), Value::Null);
            }
            return true;
        }
        o.values_mut().any(|x| set(x, code, message, param))
    }
    if !set(&mut body, code, message, param) {
        body = json!({"error": {"code": code, "message": message, "param": param}});
    }
    if let Some((at, why)) = state.violation(op, status, &body) {
        tracing::warn!(
            at,
            why,
            "state: an error answer does not match the contract"
        );
    }
    respond(status, &body)
}

/// The 404 of `op` for a missing `id`: its documented 404 example with the
/// example's id replaced. A missing object and another tenant's object
/// answer exactly alike (the key is the tenant's: nothing else is read).
fn not_found(state: &State, op: usize, resource: usize, id: &str) -> Response<Body> {
    let r = &state.resources[resource];
    match (state.example(op, 404), &r.example_id) {
        (Some(e), Some(ex)) => {
            let mut e = e.clone();
            replace_strings(&mut e, ex, id);
            respond(404, &e)
        }
        _ => api_error(
            state,
            op,
            404,
            "resource_missing",
            &format!("No such {}: '{id}'", singular(&r.name)),
            None,
        ),
    }
}

fn singular(name: &str) -> &str {
    name.strip_suffix('s').unwrap_or(name)
}

/// Random bits for an id (not security relevant: ids are keyed per tenant).
fn random() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

/// A new object of `resource`: the base, request fields the object has,
/// a fresh id and `created`.
pub fn build(resource: &resources::Resource, fields: Option<&Value>, id: &str, now: u64) -> Value {
    let mut obj = resource.base.clone();
    if let Value::Object(o) = &mut obj {
        for (k, v) in &resource.optional {
            o.insert(k.clone(), v.clone());
        }
        if let Some(Value::Object(b)) = fields {
            for (k, v) in b {
                if resource.properties.contains(k) {
                    o.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if let Some(ex) = &resource.example_id {
        replace_strings(&mut obj, ex, id);
    }
    if let Value::Object(o) = &mut obj {
        o.insert("id".into(), json!(id));
        if resource.properties.iter().any(|p| p == "created") {
            o.insert("created".into(), json!(now));
        }
    }
    obj
}

/// Answers a request of a stateful API, when its operation has a role;
/// `None` leaves it to scenario rules, fixtures and examples.
pub async fn answer(
    api: &Api,
    state: &State,
    req: Request<'_>,
    ctx: &Ctx<'_>,
) -> Option<Result<Response<Body>, Refusal>> {
    let (ri, role) = (*state.roles.get(req.op)?)?;
    let contract = api.contract.as_ref()?;
    let op = &contract.operations[req.op];
    Some(run(api, state, ri, role, op, &req, ctx).await)
}

async fn run(
    api: &Api,
    state: &State,
    ri: usize,
    role: Role,
    op: &crate::contract::Operation,
    req: &Request<'_>,
    ctx: &Ctx<'_>,
) -> Result<Response<Body>, Refusal> {
    let objects = ctx.objects();
    let resource = &state.resources[ri];
    let ok = resources::success(op).unwrap_or(200);
    match role {
        Role::Create => create(api, state, ri, req, ctx, ok).await,
        Role::List => list(api, state, ri, req, ctx, ok).await,
        Role::Read | Role::Update | Role::Delete | Role::Action => {
            let Some(id) = item_id(&op.template, req.path) else {
                return Err(Refusal::Internal);
            };
            let Some(mut obj) = objects.get(&resource.name, id).await.map_err(store_err)? else {
                return Ok(not_found(state, req.op, ri, id));
            };
            let old = objects::size(&obj);
            match role {
                Role::Read => checked(api, state, req.op, ok, &obj),
                Role::Update => {
                    update_fields(&mut obj, req.body, &resource.properties);
                    check(api, state, req.op, ok, &obj)?;
                    store(api, state, ri, id, &obj, old, ctx).await?;
                    Ok(respond(ok, &obj))
                }
                Role::Delete => {
                    objects
                        .delete(&resource.name, id, old)
                        .await
                        .map_err(store_err)?;
                    let mut body = state
                        .example(req.op, ok)
                        .cloned()
                        .unwrap_or_else(|| json!({"id": id, "deleted": true}));
                    if let Some(ex) = &resource.example_id {
                        replace_strings(&mut body, ex, id);
                    }
                    checked(api, state, req.op, ok, &body)
                }
                _ => action(api, state, ri, req, ctx, ok, id, obj, old).await,
            }
        }
    }
}

/// Stores `obj` within the plan's storage.
async fn store(
    api: &Api,
    state: &State,
    ri: usize,
    id: &str,
    obj: &Value,
    old: u64,
    ctx: &Ctx<'_>,
) -> Result<(), Refusal> {
    let _ = api;
    match ctx
        .objects()
        .put(&state.resources[ri].name, id, obj, old, ctx.storage)
        .await
        .map_err(store_err)?
    {
        Write::Done => Ok(()),
        Write::OverQuota(used, needed) => Err(Refusal::StorageQuotaExceeded {
            tenant: ctx.tenant.to_owned(),
            plan: ctx.plan.to_owned(),
            limit: ctx.storage.unwrap_or(0),
            used,
            needed,
        }),
    }
}

/// Stripe-style update: only the fields sent change; an empty string
/// unsets a field (`null`, or `{}` for an object such as `metadata`);
/// object fields are merged key by key, an empty value removing a key.
fn update_fields(obj: &mut Value, body: Option<&Value>, properties: &[String]) {
    let (Value::Object(o), Some(Value::Object(b))) = (obj, body) else {
        return;
    };
    for (k, v) in b {
        if !properties.contains(k) || k == "id" {
            continue;
        }
        let current = o.get_mut(k);
        match (current, v) {
            (Some(Value::Object(cur)), Value::String(s)) if s.is_empty() => cur.clear(),
            (_, Value::String(s)) if s.is_empty() => {
                o.insert(k.clone(), Value::Null);
            }
            (Some(Value::Object(cur)), Value::Object(patch)) => {
                for (mk, mv) in patch {
                    if mv.as_str() == Some("") || mv.is_null() {
                        cur.shift_remove(mk);
                    } else {
                        cur.insert(mk.clone(), mv.clone());
                    }
                }
            }
            _ => {
                o.insert(k.clone(), v.clone());
            }
        }
    }
}

async fn create(
    api: &Api,
    state: &State,
    ri: usize,
    req: &Request<'_>,
    ctx: &Ctx<'_>,
    ok: u16,
) -> Result<Response<Body>, Refusal> {
    let objects = ctx.objects();
    let resource = &state.resources[ri];
    // An effect's target is checked before anything is written.
    let mut target = None;
    if let Some(effect) = state.effects.get(&req.op) {
        let e = &effect.config;
        let tres = &state.resources[effect.target];
        let param = e.id.trim_start_matches('/');
        let Some(tid) = req
            .body
            .and_then(|b| b.pointer(&e.id))
            .and_then(Value::as_str)
        else {
            return Err(Refusal::Internal);
        };
        let Some(t) = objects.get(&tres.name, tid).await.map_err(store_err)? else {
            return Ok(api_error(
                state,
                req.op,
                400,
                "resource_missing",
                &format!("No such {}: '{tid}'", singular(&tres.name)),
                Some(param),
            ));
        };
        for (k, want) in &e.require {
            let have = t.get(k).unwrap_or(&Value::Null);
            if have != want {
                return Ok(api_error(
                    state,
                    req.op,
                    400,
                    "invalid_state",
                    &format!(
                        "{} '{tid}' has {k} {have}; this needs {want}.",
                        singular(&tres.name)
                    ),
                    Some(param),
                ));
            }
        }
        target = Some((effect, tid.to_owned(), t));
    }
    let seq = objects.next_seq().await.map_err(store_err)?;
    let id = objects::make_id(&resource.prefix, seq, random());
    let mut obj = build(resource, req.body, &id, ctx.now);
    if let Some((effect, _, t)) = &target {
        for (field, expr) in &effect.config.fill {
            if req.body.and_then(|b| b.get(field)).is_none()
                && let Some(v) = eval(expr, t)
            {
                set_pointer(&mut obj, &format!("/{field}"), v);
            }
        }
    }
    // Scenario rules on the create body (a test card given at creation).
    let mut scenario_rule = None;
    if let (Some(s), Some(body)) = (&api.scenarios, req.body) {
        match s.find(req.op, body, ctx.now) {
            Matched::RealCard { pointer } => {
                return Err(Refusal::RealCardNumber {
                    api: api.name.to_string(),
                    pointer: pointer.to_owned(),
                });
            }
            Matched::Answer {
                rule,
                answer,
                state: patch,
            } => match answer {
                Answer::Respond(r) if r.status.is_success() => {
                    if let Some(p) = patch {
                        let answered: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                        apply_patch(&mut obj, p, req.body, &answered);
                    }
                    scenario_rule = Some(rule);
                }
                // A declined or timed-out creation stores nothing.
                _ => return crate::facade::scenario(api, rule, answer).await,
            },
            Matched::None => {}
        }
    }
    check(api, state, req.op, ok, &obj)?;
    if let Some((effect, tid, mut t)) = target {
        let e = &effect.config;
        let tres = &state.resources[effect.target];
        let param = e.id.trim_start_matches('/');
        let told = objects::size(&t);
        for (field, from) in &e.add {
            let add = obj.pointer(from).and_then(Value::as_i64).unwrap_or(0);
            if add <= 0 {
                return Ok(api_error(
                    state,
                    req.op,
                    400,
                    "invalid_state",
                    &format!("Nothing left to apply to {} '{tid}'.", singular(&tres.name)),
                    Some(param),
                ));
            }
            let cur = t.get(field).and_then(Value::as_i64).unwrap_or(0);
            set_pointer(&mut t, &format!("/{field}"), json!(cur + add));
        }
        for (field, max) in &e.cap {
            let v = t.get(field).and_then(Value::as_i64).unwrap_or(0);
            let m = t.pointer(max).and_then(Value::as_i64).unwrap_or(0);
            if v > m {
                return Ok(api_error(
                    state,
                    req.op,
                    400,
                    "amount_too_large",
                    &format!(
                        "This would bring {field} of {} '{tid}' to {v}, over its {} of {m}.",
                        singular(&tres.name),
                        max.trim_start_matches('/')
                    ),
                    Some("amount"),
                ));
            }
        }
        if let Some(read) = state.read_op.get(effect.target).copied().flatten() {
            check(api, state, read, 200, &t)?;
        }
        store(api, state, ri, &id, &obj, 0, ctx).await?;
        store(api, state, effect.target, &tid, &t, told, ctx).await?;
    } else {
        store(api, state, ri, &id, &obj, 0, ctx).await?;
    }
    let mut resp = respond(ok, &obj);
    if let Some(rule) = scenario_rule
        && let Ok(v) = HeaderValue::from_str(rule)
    {
        resp.headers_mut()
            .insert(crate::facade::SANDGATE_SCENARIO, v);
    }
    Ok(resp)
}

/// `/a` (a pointer into `t`) or `/a - /b` (their difference).
fn eval(expr: &str, t: &Value) -> Option<Value> {
    match expr.split_once(" - ") {
        Some((a, b)) => {
            let a = t.pointer(a.trim())?.as_i64()?;
            let b = t.pointer(b.trim())?.as_i64()?;
            Some(json!(a - b))
        }
        None => t.pointer(expr.trim()).cloned(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn action(
    api: &Api,
    state: &State,
    ri: usize,
    req: &Request<'_>,
    ctx: &Ctx<'_>,
    ok: u16,
    id: &str,
    mut obj: Value,
    old: u64,
) -> Result<Response<Body>, Refusal> {
    let matched = match (&api.scenarios, req.body) {
        (Some(s), Some(body)) => s.find(req.op, body, ctx.now),
        _ => Matched::None,
    };
    match matched {
        Matched::None => checked(api, state, req.op, ok, &obj),
        Matched::RealCard { pointer } => Err(Refusal::RealCardNumber {
            api: api.name.to_string(),
            pointer: pointer.to_owned(),
        }),
        Matched::Answer {
            rule,
            answer,
            state: patch,
        } => {
            let Answer::Respond(r) = answer else {
                return crate::facade::scenario(api, rule, answer).await;
            };
            if let Some(p) = patch {
                let answered: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                apply_patch(&mut obj, p, req.body, &answered);
                check(api, state, req.op, ok, &obj)?;
                store(api, state, ri, id, &obj, old, ctx).await?;
            }
            if r.status.is_success() {
                let mut resp = checked(api, state, req.op, r.status.as_u16(), &obj)?;
                if let Ok(v) = HeaderValue::from_str(rule) {
                    resp.headers_mut()
                        .insert(crate::facade::SANDGATE_SCENARIO, v);
                }
                Ok(resp)
            } else {
                crate::facade::scenario(api, rule, answer).await
            }
        }
    }
}

async fn list(
    api: &Api,
    state: &State,
    ri: usize,
    req: &Request<'_>,
    ctx: &Ctx<'_>,
    ok: u16,
) -> Result<Response<Body>, Refusal> {
    let resource = &state.resources[ri];
    let mut limit = 10usize;
    let mut after = None;
    let mut before = None;
    let mut filters = Vec::new();
    for (k, v) in form_urlencoded::parse(req.query.unwrap_or("").as_bytes()) {
        match &*k {
            "limit" => limit = v.parse::<usize>().unwrap_or(10).clamp(1, 100),
            "starting_after" => after = Some(v.into_owned()),
            "ending_before" => before = Some(v.into_owned()),
            _ if resource.properties.iter().any(|p| *p == *k) => {
                filters.push((k.into_owned(), v.into_owned()));
            }
            _ => {}
        }
    }
    let objects = ctx.objects();
    let (page, has_more) = if filters.is_empty() && before.is_none() {
        let mut page = objects
            .list(&resource.name, after.as_deref(), limit + 1)
            .await
            .map_err(store_err)?;
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    } else {
        let all: Vec<Value> = objects
            .list(&resource.name, None, usize::MAX)
            .await
            .map_err(store_err)?
            .into_iter()
            .filter(|o| {
                filters.iter().all(|(k, v)| match o.get(k) {
                    Some(Value::String(s)) => s == v,
                    Some(other) => serde_json::from_str::<Value>(v).is_ok_and(|x| &x == other),
                    None => false,
                })
            })
            .collect();
        let id_of = |o: &Value| o.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
        let mut window: Vec<Value> = all
            .into_iter()
            .filter(|o| after.as_ref().is_none_or(|a| id_of(o) > *a))
            .filter(|o| before.as_ref().is_none_or(|b| id_of(o) < *b))
            .collect();
        if before.is_some() && after.is_none() {
            // The page just before the cursor: the last `limit` of the window.
            let more = window.len() > limit;
            let start = window.len().saturating_sub(limit);
            (window.split_off(start), more)
        } else {
            let more = window.len() > limit;
            window.truncate(limit);
            (window, more)
        }
    };
    let mut body = state
        .example(req.op, ok)
        .cloned()
        .unwrap_or_else(|| json!({"object": "list", "data": [], "has_more": false}));
    if let Value::Object(o) = &mut body {
        let field = o
            .iter()
            .find(|(_, v)| v.is_array())
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| "data".into());
        o.insert(field, Value::Array(page));
        if o.contains_key("has_more") {
            o.insert("has_more".into(), json!(has_more));
        }
    }
    checked(api, state, req.op, ok, &body)
}

/// Runs test helper `action` (`POST /_sandbox/{resource}/{id}/{action}`)
/// on object `id` of `resource` in `api`: the answer is the moved object,
/// or the API's own 404 for a missing one.
pub async fn helper(
    api: &Api,
    state: &State,
    action: &crate::facade::scenarios::Action,
    name: &str,
    id: &str,
    ctx: &Ctx<'_>,
) -> Result<Response<Body>, Refusal> {
    let Some(ri) = state.resource(&action.resource) else {
        return Err(Refusal::Internal);
    };
    let read = state.read_op.get(ri).copied().flatten();
    let objects = ctx.objects();
    let Some(mut obj) = objects.get(&action.resource, id).await.map_err(store_err)? else {
        return Ok(match read {
            Some(op) => not_found(state, op, ri, id),
            None => respond(404, &json!({"error": {"code": "resource_missing"}})),
        });
    };
    for (k, want) in &action.when {
        let have = obj.get(k).cloned().unwrap_or(Value::Null);
        if &have != want {
            return Err(Refusal::ActionNotApplicable {
                action: name.to_owned(),
                id: id.to_owned(),
                needs: format!("{k} {want} (it has {have})"),
            });
        }
    }
    let old = objects::size(&obj);
    apply_patch(&mut obj, &action.patch, None, &Value::Null);
    if let Some(op) = read {
        check(api, state, op, 200, &obj)?;
    }
    store(api, state, ri, id, &obj, old, ctx).await?;
    Ok(respond(200, &obj))
}

#[cfg(test)]
mod tests;
