//! The cases of a contract test, planned from the contract and the
//! fixtures before anything is sent.
//!
//! An operation gets one case per documented request example (the
//! preferred media type's `example`, each of its `examples`, else its
//! schema's `example`), or, when it documents none, one request built from
//! the contract. A fixture gets one case: its method, path, query, headers
//! and body matcher turned into a request that matches it. Required
//! parameters are filled from the contract: the parameter's own example,
//! its schema's example, default or first enum value, else a string from
//! the contract's examples that fits the parameter's schema (a
//! `customer` path parameter with `pattern: ^cus_` gets the `cus_…` id the
//! examples use), else a value generated from the schema; every candidate
//! is checked against the parameter's schema first. A case that cannot be
//! built says why and is reported as skipped.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Map, Value};

use crate::contract::schema::{self, Compiled, Direction};
use crate::contract::{Contract, Operation, OperationMatch, escape_pointer, resolve};
use crate::facade::fixtures::{Fault, FixtureSpec};
use crate::facade::generate;

/// One case: a request and what its answer must be.
#[derive(Debug)]
pub struct Case {
    /// Shown in the output and as the JUnit test case name, e.g.
    /// ``createCustomer: request example `default` ``.
    pub name: String,
    /// The operation's id (the JUnit class name); the fixture's path when
    /// the contract has no operation for it.
    pub operation: String,
    /// Index into the contract's operations, when there is one.
    pub op: Option<usize>,
    /// The request, or why none can be built (the case is skipped).
    pub request: Result<Planned, String>,
    /// The status a fixture case expects; `None`: any documented status.
    pub expect: Option<StatusCode>,
}

/// A request ready to send.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The method.
    pub method: Method,
    /// Path and query, appended to the target URL.
    pub path_and_query: String,
    /// Headers the case needs (parameters, fixture matchers); credentials
    /// are added when sending.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Content type and bytes of the body, if any.
    pub body: Option<(HeaderValue, Bytes)>,
}

/// Plans the cases of one contract.
pub struct Planner<'a> {
    contract: &'a Contract,
    /// The contract's components converted for requests.
    components: Value,
    /// Every string of the contract's examples, in document order.
    pool: Vec<String>,
}

/// One parameter of an operation, as documented.
struct Param<'a> {
    name: &'a str,
    location: &'a str,
    required: bool,
    doc: &'a Value,
}

/// The request body an operation documents, in its preferred media type.
struct BodyDoc<'a> {
    media: &'a str,
    media_doc: &'a Value,
    required: bool,
}

impl<'a> Planner<'a> {
    /// A planner for `contract`.
    pub fn new(contract: &'a Contract) -> Planner<'a> {
        let mut pool = Vec::new();
        collect_example_strings(&contract.doc, false, &mut pool);
        let mut seen = std::collections::HashSet::new();
        pool.retain(|s| seen.insert(s.clone()));
        Planner {
            contract,
            components: schema::components(&contract.doc, Direction::Request),
            pool,
        }
    }

    /// The cases of operation `index`.
    pub fn operation_cases(&self, index: usize) -> Vec<Case> {
        let op = &self.contract.operations[index];
        let case = |name: String, request: Result<Planned, String>| Case {
            name,
            operation: op.id.clone(),
            op: Some(index),
            request,
            expect: None,
        };
        let Some((item, op_doc)) = self.docs(op) else {
            return vec![case(
                format!("{}: request built from the contract", op.id),
                Err("the operation is not found in the document".into()),
            )];
        };
        let params = params(&self.contract.doc, item, op_doc);
        let body = body_doc(&self.contract.doc, op_doc);
        let examples = body
            .as_ref()
            .map(|b| body_examples(&self.contract.doc, b.media_doc))
            .unwrap_or_default();
        if examples.is_empty() {
            let request = self.build(op, &params).and_then(|(path, query, headers)| {
                let body = match &body {
                    Some(b) if b.required => {
                        let value = self.generated_body(op, b)?;
                        Some(encode(b.media, &value)?)
                    }
                    _ => None,
                };
                Ok(planned(op.method.clone(), path, &query, headers, body))
            });
            return vec![case(
                format!("{}: request built from the contract", op.id),
                request,
            )];
        }
        examples
            .into_iter()
            .map(|(name, value)| {
                let request = self.build(op, &params).and_then(|(path, query, headers)| {
                    let media = body.as_ref().map_or("application/json", |b| b.media);
                    let body = encode(media, value)?;
                    Ok(planned(
                        op.method.clone(),
                        path,
                        &query,
                        headers,
                        Some(body),
                    ))
                });
                case(format!("{}: request example `{name}`", op.id), request)
            })
            .collect()
    }

    /// The case of fixture `spec`.
    pub fn fixture_case(&self, spec: &FixtureSpec<'_>) -> Case {
        let found = self.operation_of(spec);
        let (operation, op) = match found {
            Some(i) => (self.contract.operations[i].id.clone(), Some(i)),
            None => (spec.path.clone(), None),
        };
        let mut case = Case {
            name: format!("{operation}: fixture `{}`", spec.name),
            operation,
            op,
            request: Err(String::new()),
            expect: Some(spec.status),
        };
        case.request = match (spec.fault, op) {
            (Some(fault), _) => Err(format!(
                "the fixture injects a fault (`{}`), which a backend is not expected to reproduce",
                fault_name(fault)
            )),
            (None, None) => Err(format!(
                "the contract has no operation for {} {}",
                spec.method.map_or("any method", Method::as_str),
                spec.path
            )),
            (None, Some(i)) => self.fixture_request(spec, &self.contract.operations[i]),
        };
        case
    }

    /// The operation a fixture's method and path resolve to.
    fn operation_of(&self, spec: &FixtureSpec<'_>) -> Option<usize> {
        let methods: Vec<Method> = match spec.method {
            Some(m) => vec![m.clone()],
            None => [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ]
            .into(),
        };
        methods
            .iter()
            .find_map(|m| match self.contract.router.resolve(m, &spec.path) {
                OperationMatch::Found { operation } => Some(operation),
                _ => None,
            })
    }

    fn fixture_request(&self, spec: &FixtureSpec<'_>, op: &Operation) -> Result<Planned, String> {
        let (item, op_doc) = self
            .docs(op)
            .ok_or("the operation is not found in the document")?;
        let params = params(&self.contract.doc, item, op_doc);
        let query: Vec<(String, String)> = spec.query.to_vec();
        let header_names: Vec<String> = spec.headers.iter().map(|(k, _)| k.to_string()).collect();
        let (mut pairs, mut headers) = self.extras(op, &params, &query, &header_names)?;
        pairs.splice(0..0, query);
        for (k, v) in spec.headers {
            let v = HeaderValue::from_str(v)
                .map_err(|_| format!("header `{k}` of the fixture is not a valid value"))?;
            headers.push((k.clone(), v));
        }
        // The fixture's path: template segments take the contract's values.
        let template: Vec<&str> = op.template.trim_start_matches('/').split('/').collect();
        let mut segments = Vec::new();
        for (i, seg) in spec.path.trim_start_matches('/').split('/').enumerate() {
            if !(seg.starts_with('{') && seg.ends_with('}')) {
                segments.push(seg.to_owned());
                continue;
            }
            let t = template.get(i).copied().unwrap_or(seg);
            match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                Some(name) => {
                    let p = params
                        .iter()
                        .find(|p| p.location == "path" && p.name == name)
                        .ok_or_else(|| format!("path parameter `{name}` is not documented"))?;
                    segments.push(encode_segment(&simple(&self.value_for(op, p)?)));
                }
                None => segments.push(t.to_owned()),
            }
        }
        let path = format!("/{}", segments.join("/"));

        let documented = body_doc(&self.contract.doc, op_doc);
        let needs_body =
            spec.body.is_some() || !spec.body_equals.is_empty() || !spec.body_regex.is_empty();
        let mut body: Option<Value> = match &documented {
            Some(b) => match body_examples(&self.contract.doc, b.media_doc).first() {
                Some((_, v)) => Some((*v).clone()),
                None if b.required || needs_body => Some(self.generated_body(op, b)?),
                None => None,
            },
            None if needs_body => Some(Value::Object(Map::new())),
            None => None,
        };
        if let Some(want) = spec.body {
            merge(body.get_or_insert(Value::Object(Map::new())), want);
        }
        for (pointer, want) in spec.body_equals {
            set_pointer(
                body.get_or_insert(Value::Object(Map::new())),
                pointer,
                want.clone(),
            )?;
        }
        for (pointer, re) in spec.body_regex {
            let text = body
                .as_ref()
                .and_then(|b| b.pointer(pointer))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            if !text.as_deref().is_some_and(|t| re.is_match(t)) {
                return Err(format!(
                    "body_regex `{pointer}` needs a value matching `{re}`, and the request example has none"
                ));
            }
        }
        let media = documented.as_ref().map_or("application/json", |b| b.media);
        let body = body.map(|b| encode(media, &b)).transpose()?;
        Ok(planned(op.method.clone(), path, &pairs, headers, body))
    }

    /// The path item and operation object of `op`.
    fn docs(&self, op: &Operation) -> Option<(&'a Value, &'a Value)> {
        let doc = &*self.contract.doc;
        let item = resolve(
            doc,
            doc.pointer(&format!("/paths/{}", escape_pointer(&op.template)))?,
        );
        let op_doc = item.get(op.method.as_str().to_ascii_lowercase())?;
        Some((item, op_doc))
    }

    /// The path, query pairs and headers of `op`'s required parameters.
    #[allow(clippy::type_complexity)]
    fn build(
        &self,
        op: &Operation,
        params: &[Param<'_>],
    ) -> Result<
        (
            String,
            Vec<(String, String)>,
            Vec<(HeaderName, HeaderValue)>,
        ),
        String,
    > {
        let path = self.path_for(op, params)?;
        let (query, headers) = self.extras(op, params, &[], &[])?;
        Ok((path, query, headers))
    }

    /// `op`'s template with its path parameters filled in.
    fn path_for(&self, op: &Operation, params: &[Param<'_>]) -> Result<String, String> {
        let mut path = String::new();
        for seg in op.template.trim_start_matches('/').split('/') {
            path.push('/');
            match seg.find('{').zip(seg.rfind('}')) {
                Some((open, close)) if open < close => {
                    let name = &seg[open + 1..close];
                    let p = params
                        .iter()
                        .find(|p| p.location == "path" && p.name == name)
                        .ok_or_else(|| format!("path parameter `{name}` is not documented"))?;
                    path.push_str(&seg[..open]);
                    path.push_str(&encode_segment(&simple(&self.value_for(op, p)?)));
                    path.push_str(&seg[close + 1..]);
                }
                _ => path.push_str(seg),
            }
        }
        Ok(path)
    }

    /// Query pairs and headers of `op`'s required query and header
    /// parameters, but those named in `have_query` / `have_headers`.
    #[allow(clippy::type_complexity)]
    fn extras(
        &self,
        op: &Operation,
        params: &[Param<'_>],
        have_query: &[(String, String)],
        have_headers: &[String],
    ) -> Result<(Vec<(String, String)>, Vec<(HeaderName, HeaderValue)>), String> {
        let mut query = Vec::new();
        let mut headers = Vec::new();
        for p in params.iter().filter(|p| p.required) {
            match p.location {
                "query" if !have_query.iter().any(|(k, _)| k == p.name) => {
                    let style = p.doc.get("style").and_then(Value::as_str);
                    query.extend(query_pairs(p.name, &self.value_for(op, p)?, style));
                }
                "header" if !have_headers.iter().any(|h| h.eq_ignore_ascii_case(p.name)) => {
                    // OpenAPI ignores these three as header parameters.
                    if ["accept", "content-type", "authorization"]
                        .contains(&p.name.to_ascii_lowercase().as_str())
                    {
                        continue;
                    }
                    let name = HeaderName::from_bytes(p.name.as_bytes())
                        .map_err(|_| format!("`{}` is not a header name", p.name))?;
                    let value = HeaderValue::from_str(&simple(&self.value_for(op, p)?))
                        .map_err(|_| format!("header `{}`: not a valid value", p.name))?;
                    headers.push((name, value));
                }
                _ => {}
            }
        }
        Ok((query, headers))
    }

    /// A value for parameter `p` that fits its schema.
    fn value_for(&self, op: &Operation, p: &Param<'_>) -> Result<Value, String> {
        let doc = &*self.contract.doc;
        let schema = p.doc.get("schema").map(|s| resolve(doc, s));
        let compiled = schema.and_then(|s| {
            Compiled::new(&schema::rooted(
                schema::convert(s, Direction::Request),
                &self.components,
            ))
            .ok()
        });
        let fits = |v: &Value| compiled.as_ref().is_none_or(|c| c.is_valid(v));
        let mut candidates: Vec<Value> = Vec::new();
        candidates.extend(p.doc.get("example").cloned());
        if let Some(first) = p
            .doc
            .get("examples")
            .and_then(Value::as_object)
            .and_then(|m| m.values().next())
        {
            candidates.extend(resolve(doc, first).get("value").cloned());
        }
        if let Some(s) = schema {
            candidates.extend(s.get("example").cloned());
            candidates.extend(s.get("default").cloned());
            if let Some(Value::Array(values)) = s.get("enum") {
                candidates.extend(values.iter().find(|v| !v.is_null()).cloned());
            }
        }
        if let Some(v) = candidates.into_iter().find(|v| fits(v)) {
            return Ok(v);
        }
        let stringy = schema
            .and_then(|s| s.get("type"))
            .is_none_or(|t| t == "string");
        if let (true, Some(_)) = (stringy, &compiled)
            && let Some(s) = self
                .pool
                .iter()
                .find(|s| fits(&Value::String((*s).clone())))
        {
            return Ok(Value::String(s.clone()));
        }
        if let Some(s) = schema {
            let seed = generate::seed_of(&[op.id.as_bytes(), p.name.as_bytes()]);
            let v = generate::generate(doc, s, seed);
            if fits(&v) {
                return Ok(v);
            }
        }
        Err(format!(
            "required {} parameter `{}` has no example, and no value found or generated fits its schema",
            p.location, p.name
        ))
    }

    /// A body for `op` generated from its schema, checked against it.
    fn generated_body(&self, op: &Operation, b: &BodyDoc<'_>) -> Result<Value, String> {
        let doc = &*self.contract.doc;
        let Some(s) = b.media_doc.get("schema") else {
            return Err(format!(
                "the request body ({}) has no example and no schema to build one from",
                b.media
            ));
        };
        let compiled = Compiled::new(&schema::rooted(
            schema::convert(s, Direction::Request),
            &self.components,
        ))
        .map_err(|e| format!("the request body schema: {e}"))?;
        let seed = generate::seed_of(&[op.id.as_bytes(), b"body"]);
        let full = generate::generate(doc, s, seed);
        if compiled.is_valid(&full) {
            return Ok(full);
        }
        let minimal = generate::generate(doc, &required_only(doc, s, 0), seed);
        if compiled.is_valid(&minimal) {
            return Ok(minimal);
        }
        let why = compiled
            .violations(&minimal, 1)
            .into_iter()
            .next()
            .map(|v| {
                format!(
                    " (at {}: {})",
                    if v.pointer.is_empty() {
                        "/"
                    } else {
                        &v.pointer
                    },
                    v.message
                )
            })
            .unwrap_or_default();
        Err(format!(
            "the request body has no example, and the one built from its schema does not fit it{why}"
        ))
    }
}

fn planned(
    method: Method,
    path: String,
    query: &[(String, String)],
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<(HeaderValue, Bytes)>,
) -> Planned {
    let mut path_and_query = path;
    if !query.is_empty() {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in query {
            ser.append_pair(k, v);
        }
        path_and_query.push('?');
        path_and_query.push_str(&ser.finish());
    }
    Planned {
        method,
        path_and_query,
        headers,
        body,
    }
}

/// The parameters of an operation: the path item's, overridden by the
/// operation's (same name and location).
fn params<'a>(doc: &'a Value, item: &'a Value, op: &'a Value) -> Vec<Param<'a>> {
    let mut out: Vec<Param<'a>> = Vec::new();
    for list in [item.get("parameters"), op.get("parameters")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
    {
        for p in list {
            let p = resolve(doc, p);
            let (Some(name), Some(location)) = (
                p.get("name").and_then(Value::as_str),
                p.get("in").and_then(Value::as_str),
            ) else {
                continue;
            };
            let param = Param {
                name,
                location,
                required: location == "path"
                    || p.get("required").and_then(Value::as_bool) == Some(true),
                doc: p,
            };
            match out
                .iter_mut()
                .find(|q| q.name == name && q.location == location)
            {
                Some(q) => *q = param,
                None => out.push(param),
            }
        }
    }
    out
}

/// The operation's request body in its preferred media type: JSON, then
/// a form, then the first listed.
fn body_doc<'a>(doc: &'a Value, op: &'a Value) -> Option<BodyDoc<'a>> {
    let rb = resolve(doc, op.get("requestBody")?);
    let content = rb.get("content")?.as_object()?;
    let (media, media_doc) = content
        .iter()
        .find(|(m, _)| is_json(m))
        .or_else(|| content.iter().find(|(m, _)| is_form(m)))
        .or_else(|| content.iter().next())?;
    Some(BodyDoc {
        media,
        media_doc,
        required: rb.get("required").and_then(Value::as_bool) == Some(true),
    })
}

/// The documented examples of a media type object, by name (`example` is
/// named `default`); the schema's own `example` when there are none.
fn body_examples<'a>(doc: &'a Value, media: &'a Value) -> Vec<(String, &'a Value)> {
    let mut out = Vec::new();
    if let Some(e) = media.get("example") {
        out.push(("default".to_owned(), e));
    }
    for (name, e) in media
        .get("examples")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(v) = resolve(doc, e).get("value") {
            out.push((name.clone(), v));
        }
    }
    if out.is_empty()
        && let Some(e) = media
            .get("schema")
            .map(|s| resolve(doc, s))
            .and_then(|s| s.get("example"))
    {
        out.push(("schema example".to_owned(), e));
    }
    out
}

/// Every string inside an `example`, or the `value` of an `examples`
/// entry, anywhere in `v`.
fn collect_example_strings(v: &Value, inside: bool, out: &mut Vec<String>) {
    match v {
        Value::String(s) if inside => out.push(s.clone()),
        Value::Array(a) => a
            .iter()
            .for_each(|x| collect_example_strings(x, inside, out)),
        Value::Object(o) => {
            for (k, x) in o {
                let into = inside || k == "example" || k == "examples";
                collect_example_strings(x, into, out);
            }
        }
        _ => {}
    }
}

/// `schema` with only its required properties (recursively), so a
/// generated value leaves out the optional fields it may get wrong.
fn required_only(doc: &Value, schema: &Value, depth: usize) -> Value {
    let s = resolve(doc, schema);
    let Value::Object(obj) = s else {
        return s.clone();
    };
    if depth > 8 {
        return s.clone();
    }
    let mut out = obj.clone();
    if let Some(Value::Object(props)) = obj.get("properties") {
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let kept: Map<String, Value> = props
            .iter()
            .filter(|(k, _)| required.contains(&k.as_str()))
            .map(|(k, p)| (k.clone(), required_only(doc, p, depth + 1)))
            .collect();
        out.insert("properties".into(), Value::Object(kept));
    }
    Value::Object(out)
}

/// Deep-merges `want` into `base` (objects member by member; anything else
/// replaced).
fn merge(base: &mut Value, want: &Value) {
    match (base, want) {
        (Value::Object(b), Value::Object(w)) => {
            for (k, v) in w {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, w) => *b = w.clone(),
    }
}

/// Sets the value at JSON pointer `pointer`, creating objects on the way.
fn set_pointer(root: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    if pointer.is_empty() {
        *root = value;
        return Ok(());
    }
    let tokens: Vec<String> = pointer
        .trim_start_matches('/')
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut node = root;
    for (i, t) in tokens.iter().enumerate() {
        let last = i + 1 == tokens.len();
        node = match node {
            Value::Object(o) => {
                if last {
                    o.insert(t.clone(), value);
                    return Ok(());
                }
                o.entry(t.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
            }
            Value::Array(a) => {
                let slot = t
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| a.get_mut(n))
                    .ok_or_else(|| format!("body_equals `{pointer}`: no array item `{t}`"))?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            _ => return Err(format!("body_equals `{pointer}`: `{t}` is inside a scalar")),
        };
    }
    Ok(())
}

/// The body bytes of `value` sent as `media`.
fn encode(media: &str, value: &Value) -> Result<(HeaderValue, Bytes), String> {
    let content_type = HeaderValue::from_str(media)
        .map_err(|_| format!("media type `{media}` is not a valid header value"))?;
    let bytes = if is_json(media) {
        Bytes::from(serde_json::to_vec(value).map_err(|e| e.to_string())?)
    } else if is_form(media) {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        form_pairs("", value, &mut |k, v| {
            ser.append_pair(k, v);
        });
        Bytes::from(ser.finish())
    } else if let Value::String(s) = value {
        Bytes::from(s.clone())
    } else {
        return Err(format!(
            "a `{media}` body can only be sent from a string example"
        ));
    };
    Ok((content_type, bytes))
}

/// Form pairs of `value` under `key`: `metadata[order_id]=6735`,
/// `expand[]=customer`, `items[0][price]=p_1`.
fn form_pairs(key: &str, value: &Value, emit: &mut dyn FnMut(&str, &str)) {
    match value {
        Value::Object(o) => {
            for (k, v) in o {
                let k = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}[{k}]")
                };
                form_pairs(&k, v, emit);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let k = if v.is_object() || v.is_array() {
                    format!("{key}[{i}]")
                } else {
                    format!("{key}[]")
                };
                form_pairs(&k, v, emit);
            }
        }
        Value::Null => {}
        Value::String(s) => emit(key, s),
        other => emit(key, &other.to_string()),
    }
}

/// Query pairs of parameter `name` with `value` (form style, exploded, or
/// `deepObject`).
fn query_pairs(name: &str, value: &Value, style: Option<&str>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match (value, style) {
        (Value::Object(_), Some("deepObject")) => form_pairs(name, value, &mut |k, v| {
            out.push((k.to_owned(), v.to_owned()));
        }),
        (Value::Object(o), _) => {
            for (k, v) in o {
                out.push((k.clone(), simple(v)));
            }
        }
        (Value::Array(a), _) => {
            for v in a {
                out.push((name.to_owned(), simple(v)));
            }
        }
        (v, _) => out.push((name.to_owned(), simple(v))),
    }
    out
}

/// The `simple` style text of a value: `a,b` for arrays, `k,v` for objects.
fn simple(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(simple).collect::<Vec<_>>().join(","),
        Value::Object(o) => o
            .iter()
            .flat_map(|(k, v)| [k.clone(), simple(v)])
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters kept).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a media type is JSON (`application/json`, `…+json`).
pub fn is_json(media: &str) -> bool {
    let m = media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    m == "application/json" || m.ends_with("+json")
}

fn is_form(media: &str) -> bool {
    media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

fn fault_name(f: Fault) -> &'static str {
    match f {
        Fault::Reset => "reset",
        Fault::MalformedBody => "malformed_body",
        Fault::Timeout => "timeout",
    }
}
