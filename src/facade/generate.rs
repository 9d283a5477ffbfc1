//! Responses generated from the contract's schema, for operations without an
//! example and for `Prefer: dynamic=true`. Deterministic: the same request
//! (method, path, query and body) gives the same answer, so a test suite can
//! rely on it.
//!
//! The generator follows `$ref`s, takes a schema's own `example` or
//! `default` when it has one, picks among `enum` values by the seed, merges
//! `allOf`, takes the first branch of `oneOf`/`anyOf`, fills every property
//! of an object, one item of an array, strings by `format` (date-time,
//! date, email, uuid, uri) and numbers within their bounds. Patterns are
//! not inverted: a string with a `pattern` and no example gets a
//! placeholder that may not match it.

use serde_json::{Map, Value, json};

/// A small deterministic generator (SplitMix64).
struct Seed(u64);

impl Seed {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A seed from the request's identity.
pub fn seed_of(parts: &[&[u8]]) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_le_bytes(b)
}

/// A value for `schema` (an OpenAPI schema of document `doc`).
pub fn generate(doc: &Value, schema: &Value, seed: u64) -> Value {
    gen_value(doc, schema, &mut Seed(seed), 0)
}

const MAX_DEPTH: usize = 8;

fn gen_value(doc: &Value, schema: &Value, seed: &mut Seed, depth: usize) -> Value {
    let s = crate::contract::resolve(doc, schema);
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(e) = s.get("example").or_else(|| s.get("default")) {
        return e.clone();
    }
    if let Some(Value::Array(values)) = s.get("enum")
        && !values.is_empty()
    {
        let non_null: Vec<&Value> = values.iter().filter(|v| !v.is_null()).collect();
        if !non_null.is_empty() {
            return non_null[(seed.next() % non_null.len() as u64) as usize].clone();
        }
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        let mut merged = Map::new();
        for branch in all {
            if let Value::Object(o) = gen_value(doc, branch, seed, depth + 1) {
                merged.extend(o);
            }
        }
        return Value::Object(merged);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(first) = s.get(key).and_then(Value::as_array).and_then(|a| a.first()) {
            return gen_value(doc, first, seed, depth + 1);
        }
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.get("properties").is_some() => "object",
        _ if s.get("items").is_some() => "array",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut out = Map::new();
            for (name, prop) in s
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if prop.get("writeOnly").and_then(Value::as_bool) == Some(true) {
                    continue;
                }
                out.insert(name.clone(), gen_value(doc, prop, seed, depth + 1));
            }
            Value::Object(out)
        }
        "array" => {
            let min = s
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1);
            let items = s.get("items").cloned().unwrap_or(json!({}));
            Value::Array(
                (0..min.min(3))
                    .map(|_| gen_value(doc, &items, seed, depth + 1))
                    .collect(),
            )
        }
        "integer" => {
            let min = s.get("minimum").and_then(Value::as_i64).unwrap_or(0);
            let max = s
                .get("maximum")
                .and_then(Value::as_i64)
                .unwrap_or(min.saturating_add(1000))
                .max(min);
            let span = (max - min) as u64 + 1;
            json!(min + (seed.next() % span) as i64)
        }
        "number" => {
            let min = s.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
            json!(min + (seed.next() % 1000) as f64 / 10.0)
        }
        "boolean" => json!(seed.next().is_multiple_of(2)),
        "null" => Value::Null,
        _ => Value::String(string_for(s, seed)),
    }
}

fn string_for(s: &Value, seed: &mut Seed) -> String {
    let n = seed.next();
    let text = match s.get("format").and_then(Value::as_str) {
        Some("date-time") => "2026-01-01T00:00:00Z".to_owned(),
        Some("date") => "2026-01-01".to_owned(),
        Some("email") => format!("user{}@example.com", n % 1000),
        Some("uuid") => format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            n >> 32,
            (n >> 16) & 0xffff,
            n & 0xfff,
            (n >> 12) & 0xfff,
            n & 0xffff_ffff_ffff
        ),
        Some("uri") | Some("url") => "https://example.com/".to_owned(),
        _ => format!("string_{:x}", n & 0xffff_ffff),
    };
    let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
    let max = s
        .get("maxLength")
        .and_then(Value::as_u64)
        .map(|m| m as usize);
    let mut text = text;
    while text.len() < min {
        text.push('x');
    }
    if let Some(max) = max {
        text.truncate(max);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped() {
        let doc = json!({"components": {"schemas": {"Amount": {"type": "integer", "minimum": 1, "maximum": 5}}}});
        let schema = json!({"type": "object", "properties": {
            "id": {"type": "string", "example": "pi_1"},
            "amount": {"$ref": "#/components/schemas/Amount"},
            "status": {"type": "string", "enum": ["a", "b", "c"]},
            "created": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}},
            "note": {"type": "string", "nullable": true}
        }});
        let a = generate(&doc, &schema, 7);
        assert_eq!(a, generate(&doc, &schema, 7), "same seed, same answer");
        assert_eq!(a["id"], "pi_1");
        assert!((1..=5).contains(&a["amount"].as_i64().expect("int")));
        assert!(["a", "b", "c"].contains(&a["status"].as_str().expect("enum")));
        assert_eq!(a["created"], "2026-01-01T00:00:00Z");
        assert!(a["tags"][0].as_str().is_some_and(|t| t.len() <= 4));
    }
}
