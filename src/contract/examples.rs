//! The documented example the facade answers with: for an operation, the
//! lowest 2xx response, its preferred media type, and the first example found
//! in `example`, `examples` or the schema's `example`, serialized once.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde_json::Value;

/// A response prepared at load time, cloned (cheaply) per request.
#[derive(Clone, Debug)]
pub struct PreparedResponse {
    /// The documented status.
    pub status: StatusCode,
    /// The documented media type.
    pub content_type: HeaderValue,
    /// The serialized example.
    pub body: Bytes,
}

/// Follows local `$ref`s (`#/components/...`) until a value that is not a reference.
pub fn resolve<'a>(root: &'a Value, mut value: &'a Value) -> &'a Value {
    for _ in 0..32 {
        match value.get("$ref").and_then(Value::as_str) {
            Some(r) if r.starts_with('#') => match root.pointer(&r[1..]) {
                Some(target) => value = target,
                None => return value,
            },
            _ => return value,
        }
    }
    value
}

/// Picks and serializes the example of `op`'s lowest 2xx response.
/// `Ok(None)`: there is no example to give. `Err`: the contract is broken.
pub fn prepare(root: &Value, op: &Value) -> Result<Option<PreparedResponse>, String> {
    let Some(responses) = op.get("responses").and_then(Value::as_object) else {
        return Err("the operation has no `responses`".into());
    };
    let lowest = responses
        .keys()
        .filter_map(|k| {
            let code: u16 = if k.eq_ignore_ascii_case("2XX") {
                200
            } else {
                k.parse().ok()?
            };
            (200..300).contains(&code).then_some((code, k))
        })
        .min();
    let Some((code, key)) = lowest else {
        return Ok(None);
    };
    let status = StatusCode::from_u16(code).map_err(|e| e.to_string())?;
    let response = resolve(root, &responses[key.as_str()]);
    if response.get("$ref").is_some() {
        return Err(format!("response {key} has a `$ref` that does not resolve"));
    }
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        // A documented success without a body (e.g. 204): answer it as is.
        return Ok(Some(PreparedResponse {
            status,
            content_type: HeaderValue::from_static("application/json"),
            body: Bytes::new(),
        }));
    };
    let (media, media_obj) = match content
        .iter()
        .find(|(m, _)| is_json(m))
        .or_else(|| content.iter().next())
    {
        Some(pair) => pair,
        None => return Ok(None),
    };
    let Some(example) = find_example(root, media_obj) else {
        return Ok(None);
    };
    let body = match (example, is_json(media)) {
        (Value::String(s), false) => Bytes::from(s.clone()),
        (v, _) => Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?),
    };
    let content_type = HeaderValue::from_str(media)
        .map_err(|_| format!("media type `{media}` is not a valid header value"))?;
    Ok(Some(PreparedResponse {
        status,
        content_type,
        body,
    }))
}

fn is_json(media: &str) -> bool {
    let m = media.split(';').next().unwrap_or("").trim();
    m == "application/json" || m.ends_with("+json")
}

fn find_example<'a>(root: &'a Value, media: &'a Value) -> Option<&'a Value> {
    if let Some(e) = media.get("example") {
        return Some(e);
    }
    if let Some(first) = media
        .get("examples")
        .and_then(Value::as_object)
        .and_then(|m| m.values().next())
    {
        let ex = resolve(root, first);
        if let Some(v) = ex.get("value") {
            return Some(v);
        }
    }
    let schema = resolve(root, media.get("schema")?);
    schema.get("example")
}

/// Every documented response of an operation that `Prefer` can pick: its
/// status and its examples by name (`example` is named `default`; a
/// response without content has one empty answer named `default`).
#[derive(Debug)]
pub struct Documented {
    /// The status.
    pub status: StatusCode,
    /// (example name, prepared answer), in document order.
    pub examples: Vec<(String, PreparedResponse)>,
}

/// The documented responses of `op` (numeric statuses only).
pub fn documented(root: &Value, op: &Value) -> Result<Vec<Documented>, String> {
    let mut out = Vec::new();
    for (key, response) in op
        .get("responses")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Ok(code) = key.parse::<u16>() else {
            continue;
        };
        let status = StatusCode::from_u16(code).map_err(|e| format!("response {key}: {e}"))?;
        let response = resolve(root, response);
        let mut examples = Vec::new();
        match response.get("content").and_then(Value::as_object) {
            None => examples.push((
                "default".to_owned(),
                PreparedResponse {
                    status,
                    content_type: HeaderValue::from_static("application/json"),
                    body: Bytes::new(),
                },
            )),
            Some(content) => {
                let Some((media, m)) = content
                    .iter()
                    .find(|(m, _)| is_json(m))
                    .or_else(|| content.iter().next())
                else {
                    continue;
                };
                let content_type = HeaderValue::from_str(media)
                    .map_err(|_| format!("media type `{media}` is not a valid header value"))?;
                let mut named: Vec<(String, &Value)> = Vec::new();
                if let Some(e) = m.get("example") {
                    named.push(("default".to_owned(), e));
                }
                for (name, e) in m
                    .get("examples")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    if let Some(v) = resolve(root, e).get("value") {
                        named.push((name.clone(), v));
                    }
                }
                for (name, v) in named {
                    let body = match (v, is_json(media)) {
                        (Value::String(s), false) => Bytes::from(s.clone()),
                        (v, _) => Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?),
                    };
                    examples.push((
                        name,
                        PreparedResponse {
                            status,
                            content_type: content_type.clone(),
                            body,
                        },
                    ));
                }
            }
        }
        out.push(Documented { status, examples });
    }
    out.sort_by_key(|d| d.status);
    Ok(out)
}
