//! Fixtures: recorded or hand-written exchanges a facade API answers with,
//! after scenario rules and before the contract's examples.
//!
//! A fixture file (any `*.yaml` in the API's `fixtures` directory) lists
//! fixtures, each matching on the method and path (exact, or a template of
//! the contract), query parameters, headers and a subset of the typed body,
//! with a priority; its response has a status, headers and a body whose
//! strings are minijinja templates over the request (`path`, `query`,
//! `headers`, `body`), `now` (Unix seconds, the tenant's test clock when it
//! is set) and `new_id(prefix)`. A string
//! that is exactly one `{{ expression }}` keeps the expression's JSON type.
//! Bodies without templates are checked against the contract at load.
//!
//! Besides the body subset, a fixture can require values at JSON pointers
//! (`body_equals`) or strings matching a regex there (`body_regex`). A
//! response can carry a fault instead of (or in) its answer: `reset` (the
//! connection is reset, nothing is sent), `malformed_body` (the body is cut
//! in half, so it is not valid JSON) or `timeout` (504 after the API's
//! timeout, as a backend that never answers).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use crate::body::{Body, full};
use crate::config::{ConfigError, Source};
use crate::contract::schema::{self, Compiled, Direction};
use crate::contract::{Contract, resolve};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    fixtures: Vec<FixtureConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureConfig {
    /// Shown in the `Sandgate-Fixture` header.
    name: Spanned<String>,
    /// HTTP method. Default: any.
    method: Option<String>,
    /// The path the API sees: exact (`/v1/customers/cus_acme`) or a
    /// contract template (`/v1/customers/{customer}`).
    path: String,
    /// Query parameters that must have these values.
    #[serde(default)]
    query: BTreeMap<String, String>,
    /// Headers that must have these values (names case-insensitive).
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A JSON value the typed body must contain (objects: a subset).
    body: Option<Value>,
    /// JSON pointer → the value the typed body must have there.
    #[serde(default)]
    body_equals: BTreeMap<String, Value>,
    /// JSON pointer → a regex the value there (a string, or a number as
    /// text) must match.
    #[serde(default)]
    body_regex: BTreeMap<String, Spanned<String>>,
    /// Higher first. Default: 0; ties keep file order.
    #[serde(default)]
    priority: i32,
    /// What to answer.
    response: ResponseConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseConfig {
    status: Spanned<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<Value>,
    /// Wait this long before answering (e.g. `300ms`).
    delay: Option<crate::config::Duration>,
    /// Misbehave: `reset`, `malformed_body` or `timeout`.
    fault: Option<Fault>,
}

/// A fixture's way of failing, as a broken backend would.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Reset the connection (TCP RST) without sending a response.
    Reset,
    /// Send the status and headers, then a body cut in half (invalid JSON).
    MalformedBody,
    /// Answer 504 `upstream_timeout` after the API's timeout.
    Timeout,
}

/// What a matching fixture answers.
#[derive(Debug)]
pub enum Answer {
    /// This response.
    Respond(Response<Body>),
    /// Reset the connection; fixture `name` asked for it.
    Reset {
        /// The fixture's name.
        name: String,
    },
    /// Time out as a backend would.
    Timeout,
}

/// One compiled fixture.
#[derive(Debug)]
struct Fixture {
    name: String,
    method: Option<http::Method>,
    /// Path segments; `None` matches any one segment (a template parameter).
    segments: Vec<Option<String>>,
    /// Template parameter names by segment index.
    params: Vec<(usize, String)>,
    query: Vec<(String, String)>,
    headers: Vec<(HeaderName, String)>,
    body: Option<Value>,
    body_equals: Vec<(String, Value)>,
    body_regex: Vec<(String, regex::Regex)>,
    priority: i32,
    status: StatusCode,
    response_headers: Vec<(HeaderName, HeaderValue)>,
    response_body: Option<Value>,
    templated: bool,
    delay: Option<Duration>,
    fault: Option<Fault>,
}

/// The fixtures of one API, highest priority first.
#[derive(Debug, Default)]
pub struct Fixtures {
    list: Vec<Fixture>,
    index: Index,
}

/// Finds the few fixtures that can match a request without looking at
/// every one: a fixture whose body matchers fix a scalar at some JSON
/// pointer is filed under (pointer, value as text); the request's value at
/// each such pointer is looked up once. Fixtures with no such value are
/// always candidates. Candidates are then checked in full, in list order,
/// so the index only ever skips fixtures that cannot match.
#[derive(Debug, Default)]
struct Index {
    /// Per pointer: value text → positions in the list.
    by_value: Vec<(String, std::collections::HashMap<String, Vec<usize>>)>,
    /// Positions of fixtures without an indexed value.
    always: Vec<usize>,
}

impl Index {
    fn build(list: &[Fixture]) -> Index {
        let mut index = Index::default();
        for (i, f) in list.iter().enumerate() {
            let key = f
                .body_equals
                .iter()
                .find_map(|(p, v)| scalar_text(v).map(|t| (p.clone(), t)))
                .or_else(|| f.body.as_ref().and_then(|b| first_leaf(b, String::new())));
            match key {
                None => index.always.push(i),
                Some((pointer, text)) => {
                    let slot = match index.by_value.iter().position(|(p, _)| *p == pointer) {
                        Some(slot) => slot,
                        None => {
                            index.by_value.push((pointer, Default::default()));
                            index.by_value.len() - 1
                        }
                    };
                    index.by_value[slot].1.entry(text).or_default().push(i);
                }
            }
        }
        index
    }

    /// Positions of the fixtures that may match a request with `body`, in
    /// list order.
    fn candidates(&self, body: Option<&Value>) -> Vec<usize> {
        let mut out = self.always.clone();
        if let Some(body) = body {
            for (pointer, map) in &self.by_value {
                if let Some(hits) = body
                    .pointer(pointer)
                    .and_then(scalar_text)
                    .and_then(|t| map.get(&t))
                {
                    out.extend_from_slice(hits);
                }
            }
        }
        out.sort_unstable();
        out
    }
}

/// A scalar as the text `contains` compares it by (`None`: not indexable).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The first scalar reached through objects only, with its pointer.
fn first_leaf(v: &Value, pointer: String) -> Option<(String, String)> {
    match v {
        Value::Object(o) => o.iter().find_map(|(k, x)| {
            first_leaf(
                x,
                format!("{pointer}/{}", crate::contract::escape_pointer(k)),
            )
        }),
        // An array is compared whole; the whole body is not a pointer key.
        Value::Array(_) => None,
        _ if pointer.is_empty() => None,
        other => scalar_text(other).map(|t| (pointer, t)),
    }
}

/// The request facts a fixture matches on and renders with.
pub struct Request<'a> {
    /// Method.
    pub method: &'a http::Method,
    /// The path the API sees.
    pub path: &'a str,
    /// Raw query.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a http::HeaderMap,
    /// The typed body, if any.
    pub body: Option<&'a Value>,
    /// The tenant's time (its test clock), Unix seconds; `None`: real time.
    pub now: Option<u64>,
}

impl Fixtures {
    /// Loads every `*.yaml` of directory `rel` (sorted by name) for API
    /// `contract`. `file`/`line` locate the `fixtures` key.
    pub fn load(
        source: &Source,
        rel: &Path,
        contract: Option<&Contract>,
        file: &Path,
        line: u64,
    ) -> Result<Fixtures, Vec<ConfigError>> {
        let Source::Dir(dir) = source else {
            return Ok(Fixtures::default());
        };
        let full_dir = dir.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&full_dir)
            .map_err(|e| {
                vec![ConfigError::new(
                    file,
                    line,
                    format!("fixtures directory `{}`: {e}", full_dir.display()),
                )]
            })?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect();
        names.sort();
        let mut errors = Vec::new();
        let mut list = Vec::new();
        let components = std::sync::OnceLock::new();
        for name in names {
            let rel_file = rel.join(&name);
            let path = source.display_path(&rel_file);
            let text = match source.read_to_string(&rel_file) {
                Ok(t) => t,
                Err(m) => {
                    errors.push(ConfigError::new(&path, 0, m));
                    continue;
                }
            };
            let parsed: FixtureFile = match crate::config::parse_yaml(&path, &text) {
                Ok(f) => f,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            for f in parsed.fixtures {
                match compile(f, contract, &components) {
                    Ok(fx) => list.push(fx),
                    Err((line, m)) => errors.push(ConfigError::new(&path, line, m)),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Stable: equal priorities keep file order.
        list.sort_by_key(|f| std::cmp::Reverse(f.priority));
        let index = Index::build(&list);
        Ok(Fixtures { list, index })
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The first fixture that matches, if any, with the request's path
    /// segments and query.
    fn first<'r>(&self, req: &Request<'r>) -> Option<(&Fixture, Segments<'r>, Query)> {
        let query = parse_query(req.query);
        let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        let found = self
            .index
            .candidates(req.body)
            .into_iter()
            .map(|i| &self.list[i])
            .find(|f| f.matches(req, &segments, &query))?;
        Some((found, segments, query))
    }

    /// The name of the first fixture that matches, if any.
    pub fn find(&self, req: &Request<'_>) -> Option<&str> {
        self.first(req).map(|(f, _, _)| f.name.as_str())
    }

    /// The answer of the first fixture that matches, if any.
    pub async fn answer(&self, req: &Request<'_>) -> Option<Answer> {
        let (fixture, segments, query) = self.first(req)?;
        if let Some(d) = fixture.delay {
            tokio::time::sleep(d).await;
        }
        Some(match fixture.fault {
            Some(Fault::Reset) => Answer::Reset {
                name: fixture.name.clone(),
            },
            Some(Fault::Timeout) => Answer::Timeout,
            Some(Fault::MalformedBody) | None => {
                Answer::Respond(fixture.respond(req, &segments, &query))
            }
        })
    }
}

/// A request path split at `/`.
type Segments<'r> = Vec<&'r str>;
/// A request query, decoded.
type Query = Vec<(String, String)>;

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn compile(
    f: FixtureConfig,
    contract: Option<&Contract>,
    components: &std::sync::OnceLock<Value>,
) -> Result<Fixture, (u64, String)> {
    let line = f.name.referenced.line();
    let name = f.name.value.clone();
    let err = |m: String| (line, format!("fixture `{name}`: {m}"));
    let method = f
        .method
        .as_deref()
        .map(|m| {
            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| err(format!("`{m}` is not an HTTP method")))
        })
        .transpose()?;
    if !f.path.starts_with('/') {
        return Err(err(format!("path `{}` must start with `/`", f.path)));
    }
    let mut segments = Vec::new();
    let mut params = Vec::new();
    for (i, s) in f.path.trim_start_matches('/').split('/').enumerate() {
        if let Some(p) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            params.push((i, p.to_owned()));
            segments.push(None);
        } else {
            segments.push(Some(s.to_owned()));
        }
    }
    let headers = f
        .headers
        .iter()
        .map(|(k, v)| {
            HeaderName::from_bytes(k.as_bytes())
                .map(|h| (h, v.clone()))
                .map_err(|_| err(format!("`{k}` is not a header name")))
        })
        .collect::<Result<_, _>>()?;
    let status = StatusCode::from_u16(f.response.status.value).map_err(|_| {
        (
            f.response.status.referenced.line(),
            format!(
                "fixture `{name}`: `{}` is not an HTTP status",
                f.response.status.value
            ),
        )
    })?;
    let mut response_headers = Vec::new();
    for (k, v) in &f.response.headers {
        let h = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| err(format!("`{k}` is not a header name")))?;
        let v = HeaderValue::from_str(v)
            .map_err(|_| err(format!("header `{k}` has an invalid value")))?;
        response_headers.push((h, v));
    }
    let mut body_equals = Vec::new();
    for (pointer, value) in f.body_equals {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(err(format!(
                "body_equals: `{pointer}` is not a JSON pointer (it starts with `/`)"
            )));
        }
        body_equals.push((pointer, value));
    }
    let mut body_regex = Vec::new();
    for (pointer, re) in f.body_regex {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(err(format!(
                "body_regex: `{pointer}` is not a JSON pointer (it starts with `/`)"
            )));
        }
        let compiled = regex::Regex::new(&re.value).map_err(|e| {
            (
                re.referenced.line(),
                format!("fixture `{name}`: body_regex `{pointer}`: {e}"),
            )
        })?;
        body_regex.push((pointer, compiled));
    }
    let templated = f.response.body.as_ref().is_some_and(has_template);
    let mut env = minijinja::Environment::new();
    if let Some(body) = &f.response.body {
        check_templates(&mut env, body).map_err(|m| err(format!("response body: {m}")))?;
    }
    // A body without templates is checked against the contract now.
    if let (Some(c), Some(body), false) = (contract, &f.response.body, templated)
        && let Some(m) = contract_mismatch(c, components, method.as_ref(), &f.path, status, body)
    {
        return Err((
            f.response.status.referenced.line(),
            format!("fixture `{name}`: {m}"),
        ));
    }
    Ok(Fixture {
        name,
        method,
        segments,
        params,
        query: f.query.into_iter().collect(),
        headers,
        body: f.body,
        body_equals,
        body_regex,
        priority: f.priority,
        status,
        response_headers,
        response_body: f.response.body,
        templated,
        delay: f.response.delay.map(|d| d.get()),
        fault: f.response.fault,
    })
}

fn has_template(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("{{") || s.contains("{%"),
        Value::Array(a) => a.iter().any(has_template),
        Value::Object(o) => o.values().any(has_template),
        _ => false,
    }
}

fn check_templates(env: &mut minijinja::Environment<'_>, v: &Value) -> Result<(), String> {
    match v {
        Value::String(s) if s.contains("{{") || s.contains("{%") => env
            .template_from_str(s)
            .map(|_| ())
            .map_err(|e| format!("template `{s}`: {e}")),
        Value::Array(a) => a.iter().try_for_each(|x| check_templates(env, x)),
        Value::Object(o) => o.values().try_for_each(|x| check_templates(env, x)),
        _ => Ok(()),
    }
}

/// Why a fixed fixture body does not fit the contract, if it does not.
fn contract_mismatch(
    c: &Contract,
    components: &std::sync::OnceLock<Value>,
    method: Option<&http::Method>,
    path: &str,
    status: StatusCode,
    body: &Value,
) -> Option<String> {
    let api_path = path.to_owned();
    let methods: Vec<&http::Method> = match method {
        Some(m) => vec![m],
        None => return None,
    };
    let op = methods
        .iter()
        .find_map(|m| match c.router.resolve(m, &api_path) {
            crate::contract::OperationMatch::Found { operation } => Some(&c.operations[operation]),
            _ => None,
        })?;
    let op_doc = c.doc.pointer(&format!(
        "/paths/{}/{}",
        crate::contract::escape_pointer(&op.template),
        op.method.as_str().to_ascii_lowercase()
    ))?;
    let response = op_doc
        .get("responses")
        .and_then(|r| r.get(status.as_str()))?;
    let s = resolve(&c.doc, response)
        .get("content")?
        .get("application/json")?
        .get("schema")?;
    // Converted once per load, not once per fixture: a large contract's
    // components are megabytes.
    let components = components.get_or_init(|| schema::components(&c.doc, Direction::Response));
    let compiled = Compiled::new(&schema::rooted(
        schema::convert(s, Direction::Response),
        components,
    ))
    .ok()?;
    let violations = compiled.violations(body, 10);
    if violations.is_empty() {
        return None;
    }
    let each: Vec<String> = violations
        .iter()
        .map(|v| {
            format!(
                "at {}: {}",
                if v.pointer.is_empty() {
                    "/"
                } else {
                    &v.pointer
                },
                v.message
            )
        })
        .collect();
    Some(format!(
        "the response body does not match the contract for {} {} {status}: {}",
        op.method,
        op.template,
        each.join("; ")
    ))
}

/// Whether `want` is contained in `have` (objects: every member of `want`
/// matches; anything else: equal, numbers and strings compared as text).
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Number(h), Value::String(w)) | (Value::String(w), Value::Number(h)) => {
            h.to_string() == *w
        }
        _ => have == want,
    }
}

impl Fixture {
    fn matches(&self, req: &Request<'_>, segments: &[&str], query: &[(String, String)]) -> bool {
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return false;
        }
        if segments.len() != self.segments.len()
            || !self
                .segments
                .iter()
                .zip(segments)
                .all(|(want, got)| want.as_deref().is_none_or(|w| w == *got))
        {
            return false;
        }
        if !self
            .query
            .iter()
            .all(|(k, v)| query.iter().any(|(qk, qv)| qk == k && qv == v))
        {
            return false;
        }
        if !self.headers.iter().all(|(k, v)| {
            req.headers
                .get_all(k)
                .iter()
                .any(|h| h.to_str().is_ok_and(|h| h == v))
        }) {
            return false;
        }
        if self.body.is_none() && self.body_equals.is_empty() && self.body_regex.is_empty() {
            return true;
        }
        let Some(have) = req.body else {
            return false;
        };
        self.body.as_ref().is_none_or(|want| contains(have, want))
            && self
                .body_equals
                .iter()
                .all(|(p, want)| have.pointer(p).is_some_and(|v| contains(v, want)))
            && self.body_regex.iter().all(|(p, re)| match have.pointer(p) {
                Some(Value::String(s)) => re.is_match(s),
                Some(Value::Number(n)) => re.is_match(&n.to_string()),
                Some(Value::Bool(b)) => re.is_match(if *b { "true" } else { "false" }),
                _ => false,
            })
    }

    fn respond(
        &self,
        req: &Request<'_>,
        segments: &[&str],
        query: &[(String, String)],
    ) -> Response<Body> {
        let mut body = match (&self.response_body, self.templated) {
            (None, _) => Bytes::new(),
            (Some(b), false) => Bytes::from(serde_json::to_vec(b).unwrap_or_default()),
            (Some(b), true) => {
                let ctx = self.context(req, segments, query);
                let env = environment();
                Bytes::from(serde_json::to_vec(&render(&env, b, &ctx)).unwrap_or_default())
            }
        };
        if self.fault == Some(Fault::MalformedBody) {
            // Half a JSON document is never a JSON document.
            body = if body.len() < 2 {
                Bytes::from_static(b"{\"")
            } else {
                body.slice(..body.len() / 2)
            };
        }
        let mut resp = Response::new(full(body.clone()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        if !body.is_empty() {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        for (k, v) in &self.response_headers {
            h.insert(k.clone(), v.clone());
        }
        h.insert(super::SANDGATE_SOURCE, HeaderValue::from_static("fixture"));
        if self.fault == Some(Fault::MalformedBody) {
            h.insert(SANDGATE_FAULT, HeaderValue::from_static("malformed_body"));
        }
        if let Ok(v) = HeaderValue::from_str(&self.name) {
            h.insert(SANDGATE_FIXTURE, v);
        }
        resp
    }

    fn context(&self, req: &Request<'_>, segments: &[&str], query: &[(String, String)]) -> Value {
        let path: Map<String, Value> = self
            .params
            .iter()
            .filter_map(|(i, n)| {
                segments
                    .get(*i)
                    .map(|s| (n.clone(), Value::String((*s).to_owned())))
            })
            .collect();
        let query: Map<String, Value> = query
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let headers: Map<String, Value> = req
            .headers
            .iter()
            // Credentials never reach a template.
            .filter(|(k, _)| {
                *k != header::AUTHORIZATION && *k != header::COOKIE && k.as_str() != "x-api-key"
            })
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_owned(), Value::String(v.to_owned())))
            })
            .collect();
        serde_json::json!({
            "method": req.method.as_str(),
            "path": path,
            "query": query,
            "headers": headers,
            "body": req.body.cloned().unwrap_or(Value::Null),
            "now": req.now.unwrap_or_else(crate::tenants::now_secs),
        })
    }
}

/// The response header naming the fixture that answered.
pub const SANDGATE_FIXTURE: HeaderName = HeaderName::from_static("sandgate-fixture");

/// The response header naming a fault a fixture injected on purpose.
pub const SANDGATE_FAULT: HeaderName = HeaderName::from_static("sandgate-fault");

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.add_function("new_id", |prefix: String| -> String {
        format!(
            "{prefix}_{}",
            ulid::Ulid::new().to_string().to_ascii_lowercase()
        )
    });
    env
}

/// Renders every template string of `v`.
fn render(env: &minijinja::Environment<'_>, v: &Value, ctx: &Value) -> Value {
    match v {
        Value::String(s) if s.contains("{{") || s.contains("{%") => {
            let t = s.trim();
            // Exactly one expression: keep its type.
            if let Some(expr) = t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}"))
                && !expr.contains("{{")
                && let Ok(e) = env.compile_expression(expr.trim())
                && let Ok(out) = e.eval(minijinja::Value::from_serialize(ctx))
                && let Ok(json) = serde_json::to_value(&out)
            {
                return json;
            }
            match env.render_str(s, minijinja::Value::from_serialize(ctx)) {
                Ok(out) => Value::String(out),
                Err(e) => Value::String(format!("<template error: {e}>")),
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| render(env, x, ctx)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), render(env, x, ctx)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A fixture's request matcher and expected answer, read-only: what
/// `sandgate contract-test` replays against a target.
#[derive(Debug)]
pub struct FixtureSpec<'a> {
    /// The fixture's name.
    pub name: &'a str,
    /// The method it matches (`None`: any).
    pub method: Option<&'a http::Method>,
    /// The path as written: exact, or with `{param}` segments.
    pub path: String,
    /// Query parameters that must have these values.
    pub query: &'a [(String, String)],
    /// Headers that must have these values.
    pub headers: &'a [(HeaderName, String)],
    /// A JSON value the typed body must contain.
    pub body: Option<&'a Value>,
    /// JSON pointer → the value the body must have there.
    pub body_equals: &'a [(String, Value)],
    /// JSON pointer → a regex the value there must match.
    pub body_regex: &'a [(String, regex::Regex)],
    /// The status it answers with.
    pub status: StatusCode,
    /// The fault it injects instead of a plain answer, if any.
    pub fault: Option<Fault>,
}

// Read access for `sandgate contract-test` (kept apart from the matching
// code above).
impl Fixtures {
    /// Every fixture's matcher and status, highest priority first.
    pub fn specs(&self) -> Vec<FixtureSpec<'_>> {
        self.list
            .iter()
            .map(|f| FixtureSpec {
                name: &f.name,
                method: f.method.as_ref(),
                path: format!(
                    "/{}",
                    f.segments
                        .iter()
                        .enumerate()
                        .map(|(i, s)| match s {
                            Some(s) => s.clone(),
                            None => f
                                .params
                                .iter()
                                .find(|(at, _)| *at == i)
                                .map_or_else(|| "{}".to_owned(), |(_, n)| format!("{{{n}}}")),
                        })
                        .collect::<Vec<_>>()
                        .join("/")
                ),
                query: &f.query,
                headers: &f.headers,
                body: f.body.as_ref(),
                body_equals: &f.body_equals,
                body_regex: &f.body_regex,
                status: f.status,
                fault: f.fault,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_matching() {
        let have = json!({"amount": 5000, "currency": "usd", "metadata": {"a": "1", "b": "2"}});
        assert!(contains(&have, &json!({"amount": 5000})));
        assert!(contains(
            &have,
            &json!({"amount": "5000", "metadata": {"b": "2"}})
        ));
        assert!(!contains(&have, &json!({"amount": 1})));
        assert!(!contains(&have, &json!({"missing": 1})));
    }

    #[test]
    fn the_index_never_hides_a_match() {
        let yaml = r#"fixtures:
  - { name: by-amount, path: /p, body: { amount: 5000 }, response: { status: 200 } }
  - { name: by-text-amount, path: /p, body: { amount: "7000" }, response: { status: 200 } }
  - { name: by-order, path: /p, body_equals: { /metadata/order: A-1 }, response: { status: 200 } }
  - { name: nested, path: /p, body: { card: { brand: visa } }, response: { status: 200 } }
  - { name: by-array, path: /p, body: { tags: [a, b] }, response: { status: 200 } }
  - { name: any, path: /p, body_regex: { /note: "^x" }, response: { status: 200 } }
  - { name: no-body, path: /q, response: { status: 200 } }
"#;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f.yaml"), yaml).expect("write");
        let f = Fixtures::load(
            &Source::Dir(dir.path().to_owned()),
            Path::new("."),
            None,
            Path::new("sandgate.yaml"),
            0,
        )
        .expect("load");
        let headers = http::HeaderMap::new();
        let cases = [
            ("/p", json!({"amount": 5000}), Some("by-amount")),
            ("/p", json!({"amount": "5000"}), Some("by-amount")),
            ("/p", json!({"amount": 7000}), Some("by-text-amount")),
            (
                "/p",
                json!({"amount": 1, "metadata": {"order": "A-1"}}),
                Some("by-order"),
            ),
            (
                "/p",
                json!({"card": {"brand": "visa", "last4": "4242"}}),
                Some("nested"),
            ),
            ("/p", json!({"tags": ["a", "b"]}), Some("by-array")),
            ("/p", json!({"note": "xyz"}), Some("any")),
            ("/p", json!({"note": "nope"}), None),
            ("/q", json!({}), Some("no-body")),
        ];
        for (path, body, want) in cases {
            let req = Request {
                method: &http::Method::POST,
                path,
                query: None,
                headers: &headers,
                body: Some(&body),
                now: None,
            };
            assert_eq!(f.find(&req), want, "{path} {body}");
            // The same answer as looking at every fixture in order.
            let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let full = f
                .list
                .iter()
                .find(|x| x.matches(&req, &segments, &[]))
                .map(|x| x.name.as_str());
            assert_eq!(full, want, "{path} {body}");
        }
    }

    #[test]
    fn templates_keep_types() {
        let env = environment();
        let ctx = json!({"body": {"amount": 5000}, "path": {"customer": "cus_1"}});
        let out = render(
            &env,
            &json!({"amount": "{{ body.amount }}", "id": "{{ path.customer }}", "text": "for {{ path.customer }}", "fresh": "{{ new_id('pi') }}"}),
            &ctx,
        );
        assert_eq!(out["amount"], 5000);
        assert_eq!(out["id"], "cus_1");
        assert_eq!(out["text"], "for cus_1");
        assert!(out["fresh"].as_str().is_some_and(|s| s.starts_with("pi_")));
    }
}
