//! OpenAPI 3.0 Schema Objects → JSON Schema (2020-12), compiled once per
//! operation with the `jsonschema` crate.
//!
//! OpenAPI 3.0's schema dialect differs from JSON Schema in a few places,
//! each rewritten here: `nullable: true` becomes a `null` type (or a `null`
//! branch), boolean `exclusiveMinimum`/`exclusiveMaximum` become the numeric
//! form, and in request schemas `readOnly` properties are not required.
//! `discriminator`, `xml`, `example` and other annotations are dropped
//! (`oneOf`/`anyOf` do the selecting). `$ref`s to `#/components/…` resolve
//! against the contract's own components, converted the same way; the ones
//! a schema reaches are embedded in its compiled root (see [`rooted`]).

use serde_json::{Map, Value};

/// Which side of the exchange a schema describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A request (readOnly properties are not required).
    Request,
    /// A response (writeOnly properties are not required).
    Response,
}

/// Keywords whose value is a schema.
const SCHEMA_KEYWORDS: [&str; 4] = ["items", "not", "additionalProperties", "additionalItems"];
/// Keywords whose value is a list of schemas.
const SCHEMA_LISTS: [&str; 3] = ["allOf", "anyOf", "oneOf"];
/// OpenAPI-only keywords with no JSON Schema meaning.
const DROPPED: [&str; 7] = [
    "nullable",
    "discriminator",
    "xml",
    "externalDocs",
    "example",
    "deprecated",
    "x-sandgate-differentiator",
];

/// Converts one OpenAPI schema (recursively).
pub fn convert(schema: &Value, dir: Direction) -> Value {
    let Value::Object(obj) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        if DROPPED.contains(&k.as_str()) {
            continue;
        }
        let v = if SCHEMA_KEYWORDS.contains(&k.as_str()) {
            convert(v, dir)
        } else if SCHEMA_LISTS.contains(&k.as_str()) {
            match v {
                Value::Array(list) => Value::Array(list.iter().map(|s| convert(s, dir)).collect()),
                other => other.clone(),
            }
        } else if k == "properties" || k == "patternProperties" {
            match v {
                Value::Object(props) => Value::Object(
                    props
                        .iter()
                        .map(|(name, s)| (name.clone(), convert(s, dir)))
                        .collect(),
                ),
                other => other.clone(),
            }
        } else {
            v.clone()
        };
        out.insert(k.clone(), v);
    }
    // Boolean exclusive bounds (JSON Schema draft 4 style) → numeric.
    for (flag, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        match out.get(flag) {
            Some(Value::Bool(true)) => {
                if let Some(b) = out.remove(bound) {
                    out.insert(flag.into(), b);
                } else {
                    out.remove(flag);
                }
            }
            Some(Value::Bool(false)) => {
                out.remove(flag);
            }
            _ => {}
        }
    }
    // Properties the other side writes are not required from this one.
    let hidden = match dir {
        Direction::Request => "readOnly",
        Direction::Response => "writeOnly",
    };
    if let (Some(Value::Object(props)), Some(Value::Array(required))) =
        (obj.get("properties"), out.get("required").cloned())
    {
        let kept: Vec<Value> = required
            .into_iter()
            .filter(|r| {
                r.as_str()
                    .and_then(|n| props.get(n))
                    .and_then(|p| p.get(hidden))
                    .and_then(Value::as_bool)
                    != Some(true)
            })
            .collect();
        out.insert("required".into(), Value::Array(kept));
    }
    if obj.get("nullable").and_then(Value::as_bool) == Some(true) {
        return nullable(out);
    }
    Value::Object(out)
}

/// A converted schema that also accepts `null`.
fn nullable(mut out: Map<String, Value>) -> Value {
    if let Some(Value::Array(values)) = out.get_mut("enum")
        && !values.contains(&Value::Null)
    {
        values.push(Value::Null);
    }
    match out.get("type").cloned() {
        Some(Value::String(t)) => {
            out.insert("type".into(), Value::Array(vec![t.into(), "null".into()]));
            Value::Object(out)
        }
        Some(Value::Array(mut ts)) => {
            if !ts.iter().any(|t| t == "null") {
                ts.push("null".into());
            }
            out.insert("type".into(), Value::Array(ts));
            Value::Object(out)
        }
        _ => serde_json::json!({"anyOf": [Value::Object(out), {"type": "null"}]}),
    }
}

/// The root a schema is compiled under: the schema itself, plus those of
/// the contract's converted `components` that it reaches through
/// `#/components/…` references (transitively), so that they resolve.
///
/// Only the reached components are copied: a schema cannot observe a
/// component it never references, so validation is the same as with all of
/// them, and a large contract (hundreds of components) is not copied,
/// crawled and indexed again for every schema it compiles.
pub fn rooted(schema: Value, components: &Value) -> Value {
    match schema {
        Value::Object(mut obj) => {
            if let Value::Object(all) = components {
                let reached = reached(&obj, all);
                if !reached.is_empty() {
                    obj.insert("components".into(), Value::Object(reached));
                }
            }
            Value::Object(obj)
        }
        other => other,
    }
}

/// The entries of `components` (whole sections or named entries) that
/// `schema` reaches through `#/components/…` references, transitively.
fn reached(schema: &Map<String, Value>, components: &Map<String, Value>) -> Map<String, Value> {
    let mut out: Map<String, Value> = Map::new();
    let mut pending: Vec<&Map<String, Value>> = vec![schema];
    while let Some(obj) = pending.pop() {
        if let Some(Value::String(r)) = obj.get("$ref")
            && let Some(target) = r.strip_prefix("#/components")
            && let Some(Value::Object(entry)) = component_entry(target, components, &mut out)
        {
            pending.push(entry);
        }
        let mut values: Vec<&Value> = obj.values().collect();
        while let Some(value) = values.pop() {
            match value {
                Value::Array(list) => values.extend(list),
                Value::Object(child) => pending.push(child),
                _ => {}
            }
        }
    }
    out
}

/// Copies the component a `#/components…` pointer (`target`, without that
/// prefix) lands in, `section/name` (or the whole section, or everything),
/// into `out`; returns it when it was not there yet (to be walked for its
/// own references).
fn component_entry<'c>(
    target: &str,
    components: &'c Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Option<&'c Value> {
    let mut tokens = target.split('/').skip(1).map(unescape_token);
    let Some(section) = tokens.next() else {
        // `#/components` itself: everything, so nothing more to walk.
        out.clone_from(components);
        return None;
    };
    let (section_key, section_value) = components.get_key_value(section.as_str())?;
    let Some(name) = tokens.next() else {
        let had = out.insert(section_key.clone(), section_value.clone());
        return (had.as_ref() != Some(section_value)).then_some(section_value);
    };
    let Value::Object(entries) = section_value else {
        return None;
    };
    let (name_key, entry) = entries.get_key_value(name.as_str())?;
    let copied = out
        .entry(section_key.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(copied) = copied else {
        return None;
    };
    if copied.contains_key(name_key.as_str()) {
        return None;
    }
    copied.insert(name_key.clone(), entry.clone());
    Some(entry)
}

/// One JSON-pointer token of a `$ref` (a URI fragment): percent-decoded,
/// then `~1` → `/` and `~0` → `~` (RFC 6901).
fn unescape_token(token: &str) -> String {
    percent_encoding::percent_decode_str(token)
        .decode_utf8_lossy()
        .replace("~1", "/")
        .replace("~0", "~")
}

/// The contract's `components`, with every schema converted for `dir`.
pub fn components(doc: &Value, dir: Direction) -> Value {
    let Some(Value::Object(components)) = doc.get("components") else {
        return Value::Null;
    };
    let mut out = components.clone();
    if let Some(Value::Object(schemas)) = components.get("schemas") {
        out.insert(
            "schemas".into(),
            Value::Object(
                schemas
                    .iter()
                    .map(|(n, s)| (n.clone(), convert(s, dir)))
                    .collect(),
            ),
        );
    }
    Value::Object(out)
}

/// A compiled schema.
pub struct Compiled {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled")
    }
}

/// One way an instance fails its schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer into the instance.
    pub pointer: String,
    /// What is wrong, for a person.
    pub message: String,
    /// The JSON Schema keyword that failed (`type`, `required`, …).
    pub keyword: String,
}

impl Compiled {
    /// Compiles a rooted, converted schema.
    ///
    /// `pattern`s use the linear-time `regex` engine (no catastrophic
    /// backtracking on hostile input); a pattern that needs look-around or
    /// backreferences falls back to `fancy-regex` with a backtracking limit.
    pub fn new(root: &Value) -> Result<Compiled, String> {
        let options = || {
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
        };
        let validator = match options()
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .build(root)
        {
            Ok(v) => v,
            Err(_) => options()
                .with_pattern_options(
                    jsonschema::PatternOptions::fancy_regex().backtrack_limit(10_000),
                )
                .build(root)
                .map_err(|e| format!("schema does not compile: {e}"))?,
        };
        Ok(Compiled { validator })
    }

    /// Every violation of `instance`, at most `max` of them.
    pub fn violations(&self, instance: &Value, max: usize) -> Vec<Violation> {
        // The common case, valid, without building an error iterator.
        if self.validator.is_valid(instance) {
            return Vec::new();
        }
        self.validator
            .iter_errors(instance)
            .take(max)
            .map(|e| {
                let schema_path = e.schema_path().to_string();
                let keyword = schema_path
                    .rsplit('/')
                    .find(|s| !s.is_empty() && s.parse::<usize>().is_err())
                    .unwrap_or("schema")
                    .to_owned();
                let mut pointer = e.instance_path().to_string();
                if keyword == "required"
                    && let jsonschema::error::ValidationErrorKind::Required { property } = e.kind()
                    && let Some(name) = property.as_str()
                {
                    pointer.push('/');
                    pointer.push_str(&super::escape_pointer(name));
                }
                Violation {
                    pointer,
                    message: e.to_string(),
                    keyword,
                }
            })
            .collect()
    }

    /// Whether `instance` is valid.
    pub fn is_valid(&self, instance: &Value) -> bool {
        self.validator.is_valid(instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(schema: Value, components: Value) -> Compiled {
        let components = components_of(components);
        Compiled::new(&rooted(convert(&schema, Direction::Request), &components)).expect("compiles")
    }

    fn components_of(schemas: Value) -> Value {
        components(
            &json!({"components": {"schemas": schemas}}),
            Direction::Request,
        )
    }

    #[test]
    fn nullable_and_exclusive_bounds_and_refs() {
        let c = compile(
            json!({"type": "object", "required": ["amount", "id"], "properties": {
                "amount": {"type": "integer", "minimum": 0, "exclusiveMinimum": true},
                "note": {"type": "string", "nullable": true},
                "id": {"type": "string", "readOnly": true},
                "customer": {"$ref": "#/components/schemas/Customer"}
            }}),
            json!({"Customer": {"type": "object", "required": ["email"], "properties": {"email": {"type": "string", "format": "email"}}}}),
        );
        assert!(c.is_valid(&json!({"amount": 1, "note": null})));
        let v = c.violations(&json!({"amount": 0}), 10);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].pointer, "/amount");
        assert_eq!(v[0].keyword, "exclusiveMinimum");
        let v = c.violations(
            &json!({"customer": {"email": "not-an-email"}, "note": 3}),
            10,
        );
        let pointers: Vec<&str> = v.iter().map(|v| v.pointer.as_str()).collect();
        assert!(pointers.contains(&"/amount"), "{v:?}");
        assert!(pointers.contains(&"/customer/email"), "{v:?}");
        assert!(pointers.contains(&"/note"), "{v:?}");
        assert!(
            v.iter()
                .any(|v| v.pointer == "/amount" && v.keyword == "required"),
            "{v:?}"
        );
    }

    #[test]
    fn nullable_enum_and_untyped() {
        let c = compile(
            json!({"type": "object", "properties": {
                "status": {"type": "string", "enum": ["a", "b"], "nullable": true},
                "any": {"nullable": true, "allOf": [{"type": "integer"}]}
            }}),
            Value::Null,
        );
        assert!(c.is_valid(&json!({"status": null, "any": null})));
        assert!(c.is_valid(&json!({"status": "a", "any": 3})));
        assert!(!c.is_valid(&json!({"status": "c"})));
        assert!(!c.is_valid(&json!({"any": "x"})));
    }
}
