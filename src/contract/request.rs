//! What an operation accepts, compiled from its contract: parameters (path,
//! query, header) with their serialization style and schema, and the request
//! body's media types with theirs. [`RequestSpec::check`] turns a request
//! into typed values (a query string is text; its schema says `integer`) and
//! reports every violation with a JSON pointer a person can follow:
//! `/path/customer`, `/query/limit`, `/query/metadata/order_id`,
//! `/header/idempotency-key`, `/body/amount`.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::schema::{self, Compiled, Direction, Violation};

/// Most violations reported for one request.
pub const MAX_VIOLATIONS: usize = 50;

/// Where a parameter is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Location {
    Path,
    Query,
    Header,
}

/// How a parameter's value is serialized (OpenAPI `style`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Simple,
    Form,
    DeepObject,
    SpaceDelimited,
    PipeDelimited,
}

#[derive(Debug)]
struct Param {
    name: String,
    /// Where its violations are reported, e.g. `/query/limit`.
    at: String,
    location: Location,
    required: bool,
    style: Style,
    explode: bool,
    /// The converted schema (for coercion).
    schema: Value,
    compiled: Compiled,
    /// The one scalar type its schema allows, when it is that simple (most
    /// path and header parameters): its text is typed without walking the
    /// schema on every request.
    simple: Option<Simple>,
}

/// A parameter schema of exactly one scalar type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Simple {
    String,
    Integer,
    Number,
    Boolean,
}

#[derive(Debug)]
struct Media {
    /// Lower-case media range, e.g. `application/json`, `application/*`.
    range: String,
    schema: Value,
    compiled: Option<Compiled>,
}

/// A request body the operation documents.
#[derive(Debug)]
struct BodySpec {
    required: bool,
    media: Vec<Media>,
}

/// What an operation accepts.
#[derive(Debug)]
pub struct RequestSpec {
    params: Vec<Param>,
    body: Option<BodySpec>,
    /// The contract's converted components, for `$ref`s met while coercing.
    components: Arc<Value>,
}

/// Why a request does not fit its operation.
#[derive(Debug, PartialEq)]
pub enum Mismatch {
    /// Values that violate the contract.
    Invalid(Vec<Violation>),
    /// A body of a media type the operation does not take.
    UnsupportedMediaType {
        /// The request's media type.
        got: String,
        /// The media types the operation takes.
        accepted: Vec<String>,
    },
}

/// The parts of a request the check reads.
pub struct RequestParts<'a> {
    /// The path the API sees (prefix stripped where configured).
    pub path: &'a str,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
    /// The request body.
    pub body: &'a [u8],
}

impl RequestSpec {
    /// Compiles what operation `op` (of path item `item`, both with local
    /// `$ref`s still in place) accepts. `components` are the contract's
    /// converted components (see [`schema::components`]).
    pub fn build(
        doc: &Value,
        item: &Value,
        op: &Value,
        components: &Arc<Value>,
    ) -> Result<RequestSpec, String> {
        let mut params: Vec<Param> = Vec::new();
        // Path-item parameters first; the operation's override by (name, in).
        for list in [item.get("parameters"), op.get("parameters")]
            .into_iter()
            .flatten()
        {
            for (i, p) in list.as_array().into_iter().flatten().enumerate() {
                let p = super::examples::resolve(doc, p);
                let name = p
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("parameter {i} has no `name`"))?;
                let location = match p.get("in").and_then(Value::as_str) {
                    Some("path") => Location::Path,
                    Some("query") => Location::Query,
                    Some("header") => Location::Header,
                    // Cookies are not validated.
                    Some("cookie") => continue,
                    other => return Err(format!("parameter `{name}` has `in: {other:?}`")),
                };
                let style = match p.get("style").and_then(Value::as_str) {
                    Some("deepObject") => Style::DeepObject,
                    Some("spaceDelimited") => Style::SpaceDelimited,
                    Some("pipeDelimited") => Style::PipeDelimited,
                    Some("form") => Style::Form,
                    Some("simple") => Style::Simple,
                    Some(other) => {
                        return Err(format!(
                            "parameter `{name}`: style `{other}` is not supported"
                        ));
                    }
                    None if location == Location::Query => Style::Form,
                    None => Style::Simple,
                };
                let explode = p
                    .get("explode")
                    .and_then(Value::as_bool)
                    .unwrap_or(style == Style::Form);
                let raw_schema = p.get("schema").cloned().unwrap_or(Value::Bool(true));
                let converted = schema::convert(&raw_schema, Direction::Request);
                let compiled = Compiled::new(&schema::rooted(converted.clone(), components))
                    .map_err(|m| format!("parameter `{name}`: {m}"))?;
                let name = if location == Location::Header {
                    name.to_ascii_lowercase()
                } else {
                    name.to_owned()
                };
                params.retain(|q| !(q.name == name && q.location == location));
                let prefix = match location {
                    Location::Path => "/path/",
                    Location::Query => "/query/",
                    Location::Header => "/header/",
                };
                params.push(Param {
                    at: format!("{prefix}{}", super::escape_pointer(&name)),
                    required: location == Location::Path
                        || p.get("required").and_then(Value::as_bool) == Some(true),
                    name,
                    location,
                    style,
                    explode,
                    schema: converted,
                    compiled,
                    simple: None,
                });
            }
        }
        let body = match op.get("requestBody") {
            None => None,
            Some(rb) => {
                let rb = super::examples::resolve(doc, rb);
                let mut media = Vec::new();
                for (range, m) in rb
                    .get("content")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let (schema, compiled) = match m.get("schema") {
                        Some(s) => {
                            let converted = schema::convert(s, Direction::Request);
                            let compiled =
                                Compiled::new(&schema::rooted(converted.clone(), components))
                                    .map_err(|e| format!("request body `{range}`: {e}"))?;
                            (converted, Some(compiled))
                        }
                        None => (Value::Bool(true), None),
                    };
                    media.push(Media {
                        range: range.to_ascii_lowercase(),
                        schema,
                        compiled,
                    });
                }
                Some(BodySpec {
                    required: rb.get("required").and_then(Value::as_bool) == Some(true),
                    media,
                })
            }
        };
        let mut spec = RequestSpec {
            params,
            body,
            components: components.clone(),
        };
        let simple: Vec<Option<Simple>> =
            spec.params.iter().map(|p| spec.simple(&p.schema)).collect();
        for (p, s) in spec.params.iter_mut().zip(simple) {
            p.simple = s;
        }
        Ok(spec)
    }

    /// The one scalar type `schema` allows, when it allows exactly one of
    /// the seven JSON types.
    fn simple(&self, schema: &Value) -> Option<Simple> {
        let types = [
            "string", "integer", "number", "boolean", "null", "array", "object",
        ];
        let allowed: Vec<&str> = types
            .into_iter()
            .filter(|t| self.is_type(schema, t))
            .collect();
        match allowed.as_slice() {
            ["string"] => Some(Simple::String),
            ["integer"] => Some(Simple::Integer),
            ["number"] => Some(Simple::Number),
            ["boolean"] => Some(Simple::Boolean),
            _ => None,
        }
    }

    /// The text of a path or header parameter as the JSON value its schema
    /// expects ([`RequestSpec::text_value`], without the schema walk for a
    /// simple one).
    fn param_value(&self, p: &Param, raw: &str) -> Value {
        match p.simple {
            Some(Simple::String) => Value::String(raw.to_owned()),
            Some(Simple::Integer) => raw
                .parse::<i64>()
                .map_or_else(|_| Value::String(raw.to_owned()), Value::from),
            Some(Simple::Number) => raw
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| Value::String(raw.to_owned()), Value::Number),
            Some(Simple::Boolean) => match raw {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(raw.to_owned()),
            },
            None => self.text_value(&p.schema, raw, p.style, p.explode),
        }
    }

    /// The body as the contract types it (JSON parsed; a form read with
    /// bracket notation and typed by the schema), when its media type is
    /// one of those and it parses.
    pub fn typed_body(&self, headers: &http::HeaderMap, body: &[u8]) -> Option<Value> {
        let spec = self.body.as_ref()?;
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())?
            .split(';')
            .next()?
            .trim()
            .to_ascii_lowercase();
        if content_type == "application/json" || content_type.ends_with("+json") {
            return serde_json::from_slice(body).ok();
        }
        if content_type == "application/x-www-form-urlencoded" {
            let media = spec
                .media
                .iter()
                .find(|m| media_matches(&m.range, &content_type))?;
            return Some(self.coerce(&media.schema, form_tree(form_urlencoded::parse(body))));
        }
        None
    }

    /// Whether the operation documents a request body.
    pub fn has_body(&self) -> bool {
        self.body.is_some()
    }

    /// Checks a request against the operation; `template` is the matched
    /// path template.
    pub fn check(&self, template: &str, req: &RequestParts<'_>) -> Result<(), Mismatch> {
        let mut violations = Vec::new();
        let query: Vec<(String, String)> = req
            .query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let path_values = path_params(template, req.path);
        for p in &self.params {
            if violations.len() >= MAX_VIOLATIONS {
                break;
            }
            let value = match p.location {
                Location::Path => path_values
                    .iter()
                    .find(|(n, _)| *n == p.name)
                    .map(|(_, v)| self.param_value(p, v)),
                Location::Header => req
                    .headers
                    .get(p.name.as_str())
                    .map(|v| self.param_value(p, &String::from_utf8_lossy(v.as_bytes()))),
                Location::Query => self.query_value(p, &query),
            };
            match value {
                None if p.required => violations.push(Violation {
                    pointer: p.at.clone(),
                    message: format!(
                        "{} parameter `{}` is required",
                        match p.location {
                            Location::Path => "path",
                            Location::Query => "query",
                            Location::Header => "header",
                        },
                        p.name
                    ),
                    keyword: "required".into(),
                }),
                None => {}
                Some(v) => {
                    for mut e in p.compiled.violations(&v, MAX_VIOLATIONS) {
                        e.pointer = format!("{}{}", p.at, e.pointer);
                        violations.push(e);
                    }
                }
            }
        }
        if let Some(spec) = &self.body {
            self.check_body(spec, req, &mut violations)?;
        }
        violations.truncate(MAX_VIOLATIONS);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Mismatch::Invalid(violations))
        }
    }

    fn check_body(
        &self,
        spec: &BodySpec,
        req: &RequestParts<'_>,
        violations: &mut Vec<Violation>,
    ) -> Result<(), Mismatch> {
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        let accepted = || spec.media.iter().map(|m| m.range.clone()).collect();
        if req.body.is_empty() {
            if spec.required {
                violations.push(Violation {
                    pointer: "/body".into(),
                    message: format!(
                        "a request body is required ({})",
                        spec.media
                            .iter()
                            .map(|m| m.range.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    keyword: "required".into(),
                });
            }
            return Ok(());
        }
        let Some(content_type) = content_type else {
            return Err(Mismatch::UnsupportedMediaType {
                got: String::new(),
                accepted: accepted(),
            });
        };
        let Some(media) = spec
            .media
            .iter()
            .find(|m| media_matches(&m.range, &content_type))
        else {
            return Err(Mismatch::UnsupportedMediaType {
                got: content_type,
                accepted: accepted(),
            });
        };
        let value = if content_type == "application/json" || content_type.ends_with("+json") {
            match serde_json::from_slice::<Value>(req.body) {
                Ok(v) => v,
                Err(e) => {
                    violations.push(Violation {
                        pointer: "/body".into(),
                        message: format!("the body is not valid JSON: {e}"),
                        keyword: "syntax".into(),
                    });
                    return Ok(());
                }
            }
        } else if content_type == "application/x-www-form-urlencoded" {
            let tree = form_tree(form_urlencoded::parse(req.body));
            self.coerce(&media.schema, tree)
        } else {
            // Other media types (multipart, binary) are not inspected.
            return Ok(());
        };
        if let Some(compiled) = &media.compiled {
            for mut e in compiled.violations(&value, MAX_VIOLATIONS) {
                e.pointer = format!("/body{}", e.pointer);
                violations.push(e);
            }
        }
        Ok(())
    }

    /// A query parameter's value, by its style.
    fn query_value(&self, p: &Param, query: &[(String, String)]) -> Option<Value> {
        match p.style {
            Style::DeepObject => {
                let prefix = format!("{}[", p.name);
                let mut tree = form_tree(
                    query
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix))
                        .map(|(k, v)| (k.as_str().into(), v.as_str().into())),
                );
                let value = tree.get_mut(p.name.as_str())?.take();
                Some(self.coerce(&p.schema, value))
            }
            _ if p.explode && self.is_type(&p.schema, "array") => {
                // `name=a&name=b`, and `name[]=a&name[]=b` as many clients send it.
                let bracketed = format!("{}[]", p.name);
                let values: Vec<&str> = query
                    .iter()
                    .filter(|(k, _)| *k == p.name || *k == bracketed)
                    .map(|(_, v)| v.as_str())
                    .collect();
                if values.is_empty() {
                    return None;
                }
                let items = self.items_of(&p.schema);
                Some(Value::Array(
                    values.iter().map(|v| self.scalar(&items, v)).collect(),
                ))
            }
            _ => {
                let mut values = query
                    .iter()
                    .filter(|(k, _)| *k == p.name)
                    .map(|(_, v)| self.text_value(&p.schema, v, p.style, p.explode));
                let first = values.next()?;
                let rest: Vec<Value> = values.collect();
                if rest.is_empty() {
                    return Some(first);
                }
                // A single-valued parameter given more than once: keep every
                // value (an array), so the schema check refuses it instead of
                // one value being picked silently.
                Some(Value::Array(std::iter::once(first).chain(rest).collect()))
            }
        }
    }

    /// A value serialized as text (path, header, non-exploded query).
    fn text_value(&self, schema: &Value, raw: &str, style: Style, explode: bool) -> Value {
        if self.is_type(schema, "array") {
            let sep = match style {
                Style::SpaceDelimited => ' ',
                Style::PipeDelimited => '|',
                _ => ',',
            };
            let items = self.items_of(schema);
            return Value::Array(
                raw.split(sep)
                    .map(|v| self.scalar(&items, v.trim()))
                    .collect(),
            );
        }
        if self.is_type(schema, "object") && !explode {
            // `k1,v1,k2,v2`
            let parts: Vec<&str> = raw.split(',').collect();
            let mut obj = Map::new();
            for kv in parts.chunks(2) {
                if let [k, v] = kv {
                    obj.insert((*k).to_owned(), Value::String((*v).to_owned()));
                }
            }
            return self.coerce(schema, Value::Object(obj));
        }
        self.scalar(schema, raw)
    }

    /// Follows a `#/components/…` reference.
    fn deref<'s>(&'s self, schema: &'s Value) -> &'s Value {
        let mut s = schema;
        for _ in 0..16 {
            match s.get("$ref").and_then(Value::as_str) {
                Some(r) => match r
                    .strip_prefix("#")
                    .and_then(|p| p.strip_prefix("/components"))
                    .and_then(|p| self.components.pointer(p))
                {
                    Some(next) => s = next,
                    None => return s,
                },
                None => return s,
            }
        }
        s
    }

    /// Whether `schema` (through references and `allOf`/`anyOf`/`oneOf`)
    /// declares type `t`.
    fn is_type(&self, schema: &Value, t: &str) -> bool {
        let s = self.deref(schema);
        match s.get("type") {
            Some(Value::String(x)) => return x == t,
            Some(Value::Array(xs)) => return xs.iter().any(|x| x == t),
            _ => {}
        }
        ["allOf", "anyOf", "oneOf"].iter().any(|k| {
            s.get(*k)
                .and_then(Value::as_array)
                .is_some_and(|list| list.iter().any(|b| self.is_type(b, t)))
        })
    }

    fn items_of(&self, schema: &Value) -> Value {
        self.deref(schema)
            .get("items")
            .cloned()
            .unwrap_or(Value::Bool(true))
    }

    /// Text → the JSON value its schema expects, when it parses as one;
    /// otherwise the text itself (the schema check then says what is wrong).
    fn scalar(&self, schema: &Value, raw: &str) -> Value {
        if self.is_type(schema, "integer")
            && let Ok(n) = raw.parse::<i64>()
        {
            return Value::from(n);
        }
        if self.is_type(schema, "number")
            && let Ok(n) = raw.parse::<f64>()
            && let Some(n) = serde_json::Number::from_f64(n)
        {
            return Value::Number(n);
        }
        if self.is_type(schema, "boolean") {
            match raw {
                "true" => return Value::Bool(true),
                "false" => return Value::Bool(false),
                _ => {}
            }
        }
        if self.is_type(schema, "null") && raw.is_empty() && !self.is_type(schema, "string") {
            return Value::Null;
        }
        Value::String(raw.to_owned())
    }

    /// A tree of strings (from a form or a deepObject) → typed by `schema`.
    fn coerce(&self, schema: &Value, value: Value) -> Value {
        let s = self.deref(schema);
        match value {
            // A form field sent once, for an array (`expand=customer`): a
            // one-item array, as the form style with `explode` serializes it.
            Value::String(text) if self.is_type(s, "array") && !self.is_type(s, "string") => {
                Value::Array(vec![self.scalar(&self.items_of(s), &text)])
            }
            Value::String(text) => self.scalar(s, &text),
            Value::Object(obj) if self.is_type(s, "array") => {
                // `items[0][price]=…`: indexed keys, in index order.
                let mut indexed: Vec<(usize, Value)> = Vec::new();
                for (k, v) in obj {
                    match k.parse::<usize>() {
                        Ok(i) => indexed.push((i, v)),
                        Err(_) => return Value::Null,
                    }
                }
                indexed.sort_by_key(|(i, _)| *i);
                let items = self.items_of(s);
                Value::Array(
                    indexed
                        .into_iter()
                        .map(|(_, v)| self.coerce(&items, v))
                        .collect(),
                )
            }
            Value::Object(obj) => {
                let props = self.property_schemas(s);
                Value::Object(
                    obj.into_iter()
                        .map(|(k, v)| {
                            let sub = props
                                .iter()
                                .find(|(n, _)| *n == k)
                                .map(|(_, s)| (*s).clone())
                                .or_else(|| {
                                    s.get("additionalProperties")
                                        .filter(|a| a.is_object())
                                        .cloned()
                                })
                                .unwrap_or(Value::Bool(true));
                            let v = self.coerce(&sub, v);
                            (k, v)
                        })
                        .collect(),
                )
            }
            Value::Array(items) => {
                let item = self.items_of(s);
                Value::Array(items.into_iter().map(|v| self.coerce(&item, v)).collect())
            }
            other => other,
        }
    }

    /// Property schemas of an object schema, `allOf` branches included.
    fn property_schemas<'s>(&'s self, schema: &'s Value) -> Vec<(&'s str, &'s Value)> {
        let s = self.deref(schema);
        let mut out: Vec<(&str, &Value)> = s
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        for key in ["allOf", "anyOf", "oneOf"] {
            for branch in s.get(key).and_then(Value::as_array).into_iter().flatten() {
                out.extend(self.property_schemas(branch));
            }
        }
        out
    }
}

/// Whether a media range from the contract covers a request's media type.
fn media_matches(range: &str, media: &str) -> bool {
    range == media
        || range == "*/*"
        || range
            .strip_suffix("/*")
            .is_some_and(|t| media.split('/').next() == Some(t))
}

/// Values of a path's parameters, by matching it against its template.
fn path_params<'t, 'p>(template: &'t str, path: &'p str) -> Vec<(&'t str, Cow<'p, str>)> {
    let mut out = Vec::new();
    // Byte scans: every delimiter is ASCII, so each slice below starts and
    // ends on a character boundary (and this runs on every request).
    let (template, path) = (
        template.trim_start_matches('/'),
        path.trim_start_matches('/'),
    );
    let (tb, pb) = (template.as_bytes(), path.as_bytes());
    if memchr::memchr(b'{', tb).is_none() {
        return out;
    }
    let next_slash =
        |b: &[u8], from: usize| memchr::memchr(b'/', &b[from..]).map_or(b.len(), |n| from + n);
    let (mut ti, mut pi) = (0, 0);
    loop {
        let (te, pe) = (next_slash(tb, ti), next_slash(pb, pi));
        let (t, p) = (&template[ti..te], &path[pi..pe]);
        let seg = t.as_bytes();
        if let (Some(open), Some(close)) = (
            seg.iter().position(|&c| c == b'{'),
            seg.iter().rposition(|&c| c == b'}'),
        ) && open < close
            && let Some(v) = p
                .strip_prefix(&t[..open])
                .and_then(|rest| rest.strip_suffix(&t[close + 1..]))
        {
            out.push((&t[open + 1..close], percent_decode(v)));
        }
        if te == tb.len() || pe == pb.len() {
            break;
        }
        (ti, pi) = (te + 1, pe + 1);
    }
    out
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if memchr::memchr(b'%', s.as_bytes()).is_none() {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = b.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(h), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Form pairs with bracket keys (`metadata[order_id]=6735`,
/// `items[0][price]=p_1`, `expand[]=customer`) → a tree of strings:
/// objects for `[key]`, arrays for `[]`; indexed `[0]` stay object keys
/// until a schema says the value is an array.
///
/// Nothing sent is dropped, so the schema check sees everything: a key that
/// is not `name[seg]…` bracket notation (an empty key, `[x]`, an unclosed
/// `a[b`, text after the last `]`) is a field named by the whole key, and a
/// field given more than once (`email=a&email=b`, or both as a value and
/// with brackets) becomes an array of everything given for it.
fn form_tree<'a, I>(pairs: I) -> Value
where
    I: IntoIterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
{
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        let value = Value::String(value.into_owned());
        match bracket_path(&key) {
            Some(path) => insert(&mut root, &path, value),
            None => {
                if let Value::Object(obj) = &mut root {
                    put(obj, key.into_owned(), value);
                }
            }
        }
    }
    root
}

/// Sets field `name`; a field given again keeps every value (an array).
fn put(obj: &mut Map<String, Value>, name: String, value: Value) {
    match obj.get_mut(&name) {
        Some(Value::Array(list)) => list.push(value),
        Some(existing) => *existing = Value::Array(vec![existing.take(), value]),
        None => {
            obj.insert(name, value);
        }
    }
}

/// `a[b][]` → `["a", "b", ""]`; `None` when the key is not bracket notation
/// with a non-empty head.
fn bracket_path(key: &str) -> Option<Vec<&str>> {
    let (head, mut rest) = match key.find(['[', ']']) {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if head.is_empty() {
        return None;
    }
    let mut path = vec![head];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let close = inner.find(']')?;
        let seg = &inner[..close];
        if seg.contains('[') {
            return None;
        }
        path.push(seg);
        rest = &inner[close + 1..];
    }
    Some(path)
}

fn insert(node: &mut Value, path: &[&str], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if first.is_empty() {
        // `[]`: append. Whatever was given before without `[]` stays, as
        // the array's first item.
        match node {
            Value::Array(_) => {}
            Value::Object(o) if o.is_empty() => *node = Value::Array(Vec::new()),
            _ => *node = Value::Array(vec![node.take()]),
        }
        if let Value::Array(list) = node {
            if rest.is_empty() {
                list.push(value);
            } else {
                let mut child = Value::Object(Map::new());
                insert(&mut child, rest, value);
                list.push(child);
            }
        }
        return;
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let Value::Object(obj) = node else { return };
    let name = (*first).to_owned();
    if rest.is_empty() {
        put(obj, name, value);
        return;
    }
    let child = obj.entry(name).or_insert_with(|| Value::Object(Map::new()));
    if child.is_object() || rest[0].is_empty() {
        insert(child, rest, value);
        return;
    }
    // `a=1&a[b]=2`, or `a[]=1&a[b]=2`: both kept, side by side.
    let mut sub = Value::Object(Map::new());
    insert(&mut sub, rest, value);
    match child {
        Value::Array(list) => list.push(sub),
        other => *other = Value::Array(vec![other.take(), sub]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_trees() {
        let t = form_tree(form_urlencoded::parse(
            b"amount=2000&metadata[order_id]=6735&expand[]=customer&expand[]=invoice&items[0][price]=p_1&items[1][price]=p_2",
        ));
        assert_eq!(
            t,
            json!({"amount": "2000", "metadata": {"order_id": "6735"}, "expand": ["customer", "invoice"], "items": {"0": {"price": "p_1"}, "1": {"price": "p_2"}}})
        );
    }

    /// Nothing a form sends is dropped or silently replaced: each row is
    /// (body, the tree the schema check sees).
    #[test]
    fn form_trees_keep_everything_sent() {
        let table: &[(&[u8], Value)] = &[
            // An empty key (schemathesis sent `=null` where the schema allows
            // no such property): a field named "", not nothing.
            (
                b"description=&=null",
                json!({"description": "", "": "null"}),
            ),
            (b"[email]=a", json!({"[email]": "a"})),
            (b"metadata[a=1", json!({"metadata[a": "1"})),
            (b"metadata[a]x=1", json!({"metadata[a]x": "1"})),
            (b"a]b=1", json!({"a]b": "1"})),
            (b"a[b[c]]=1", json!({"a[b[c]]": "1"})),
            // Given more than once: every value kept.
            (b"email=a&email=b", json!({"email": ["a", "b"]})),
            (b"a=1&a=2&a=3", json!({"a": ["1", "2", "3"]})),
            (b"a[]=1&a=2", json!({"a": ["1", "2"]})),
            (b"a=1&a[]=2", json!({"a": ["1", "2"]})),
            (b"a=1&a[b]=2", json!({"a": ["1", {"b": "2"}]})),
            (b"a[b]=2&a=1", json!({"a": [{"b": "2"}, "1"]})),
            (b"a[b]=1&a[]=2", json!({"a": [{"b": "1"}, "2"]})),
            (b"a[]=1&a[b]=2", json!({"a": ["1", {"b": "2"}]})),
            (b"m[k]=1&m[k]=2", json!({"m": {"k": ["1", "2"]}})),
            // Well-formed notation is unchanged.
            (b"a[][b]=1&a[][b]=2", json!({"a": [{"b": "1"}, {"b": "2"}]})),
            (
                b"a[b][c]=1&a[b][d]=2",
                json!({"a": {"b": {"c": "1", "d": "2"}}}),
            ),
        ];
        for (body, want) in table {
            let got = form_tree(form_urlencoded::parse(body));
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(body));
        }
    }

    /// A simple parameter is typed exactly as the schema walk types it.
    #[test]
    fn simple_parameters_type_like_the_schema_walk() {
        let components = Arc::new(json!({"schemas": {"Id": {"type": "string"}}}));
        let spec = RequestSpec {
            params: Vec::new(),
            body: None,
            components,
        };
        let schemas = [
            (
                json!({"type": "string", "pattern": "^c"}),
                Some(Simple::String),
            ),
            (
                json!({"$ref": "#/components/schemas/Id"}),
                Some(Simple::String),
            ),
            (json!({"type": "integer"}), Some(Simple::Integer)),
            (json!({"type": "number"}), Some(Simple::Number)),
            (json!({"type": "boolean"}), Some(Simple::Boolean)),
            (json!({"type": ["string", "null"]}), None),
            (
                json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
                None,
            ),
            (json!({"type": "array", "items": {"type": "integer"}}), None),
            (json!(true), None),
        ];
        for (schema, want) in schemas {
            assert_eq!(spec.simple(&schema), want, "{schema}");
            let Some(kind) = want else { continue };
            for raw in ["cus_1", "42", "-7", "4.5", "true", "false", "", "1e3"] {
                let p = Param {
                    name: "p".into(),
                    at: "/path/p".into(),
                    location: Location::Path,
                    required: true,
                    style: Style::Simple,
                    explode: false,
                    schema: schema.clone(),
                    compiled: Compiled::new(&json!({})).expect("compiles"),
                    simple: Some(kind),
                };
                assert_eq!(
                    spec.param_value(&p, raw),
                    spec.text_value(&schema, raw, Style::Simple, false),
                    "{schema} {raw:?}"
                );
            }
        }
    }

    #[test]
    fn path_values() {
        let owned = |v: Vec<(&str, Cow<'_, str>)>| -> Vec<(String, String)> {
            v.into_iter()
                .map(|(n, v)| (n.to_owned(), v.into_owned()))
                .collect()
        };
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        // (template, path, the parameters found)
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let table: &[Case<'_>] = &[
            (
                "/v1/customers/{customer}",
                "/v1/customers/cus%201",
                &[("customer", "cus 1")],
            ),
            (
                "/v1/files/{id}.json",
                "/v1/files/f_1.json",
                &[("id", "f_1")],
            ),
            ("/v1/a/{x}/b/{y}", "/v1/a/1/b/2", &[("x", "1"), ("y", "2")]),
            ("v1/a/{x}", "/v1/a/é", &[("x", "é")]),
            ("/v1/customers", "/v1/customers", &[]),
            // The path ends early: the missing parameter is absent.
            ("/v1/a/{x}/b/{y}", "/v1/a/1", &[("x", "1")]),
            // A suffix that does not match, and braces the wrong way round.
            ("/v1/files/{id}.json", "/v1/files/f_1.yaml", &[]),
            ("/v1/}x{", "/v1/abc", &[]),
        ];
        for (template, path, want) in table {
            assert_eq!(
                owned(path_params(template, path)),
                pairs(want),
                "{template} {path}"
            );
        }
        // Nothing decoded, nothing copied.
        let got = path_params("/v1/customers/{customer}", "/v1/customers/cus_1");
        assert!(matches!(got[0].1, Cow::Borrowed("cus_1")));
    }

    #[test]
    fn media_ranges() {
        assert!(media_matches("application/json", "application/json"));
        assert!(media_matches("application/*", "application/json"));
        assert!(media_matches("*/*", "text/plain"));
        assert!(!media_matches("application/json", "text/plain"));
    }
}
