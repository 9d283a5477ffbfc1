//! The facade: answers an API's requests from its contract, without any
//! backend. This first version answers with the operation's documented
//! example; scenario rules, fixtures, state and generated responses come with
//! the facade issue, in front of the example in order of precedence.

pub mod fixtures;
pub mod generate;
pub mod record;
pub mod scenarios;

use http::{HeaderValue, Response, header};

use crate::body::{Body, empty, full};
use crate::contract::Operation;
use crate::refusal::Refusal;

/// Says which facade source produced an answer (`example`; later also
/// `scenario`, `fixture`, `state`, `generated`).
pub const SANDGATE_SOURCE: http::HeaderName = http::HeaderName::from_static("sandgate-source");

/// The response header naming the scenario rule that answered.
pub const SANDGATE_SCENARIO: http::HeaderName = http::HeaderName::from_static("sandgate-scenario");

/// The `Prefer` header (RFC 7240), looked up on every facade request.
const PREFER: http::HeaderName = http::HeaderName::from_static("prefer");

/// A prepared response, marked with its source.
fn prepared(example: &crate::contract::PreparedResponse, source: &'static str) -> Response<Body> {
    let body = if example.body.is_empty() {
        empty()
    } else {
        full(example.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = example.status;
    let h = resp.headers_mut();
    if !example.body.is_empty() {
        h.insert(header::CONTENT_TYPE, example.content_type.clone());
    }
    h.insert(SANDGATE_SOURCE, HeaderValue::from_static(source));
    resp
}

/// The answer of scenario rule `rule`.
pub async fn scenario(
    api: &crate::sandbox::Api,
    rule: &str,
    answer: &scenarios::Answer,
) -> Result<Response<Body>, Refusal> {
    match answer {
        scenarios::Answer::Respond(r) => {
            let mut resp = prepared(r, "scenario");
            if let Ok(v) = HeaderValue::from_str(rule) {
                resp.headers_mut().insert(SANDGATE_SCENARIO, v);
            }
            Ok(resp)
        }
        scenarios::Answer::Timeout => Err(timed_out(api).await),
    }
}

/// Waits the API's timeout, then refuses as a backend that never answered
/// would be refused (504 `upstream_timeout`).
pub async fn timed_out(api: &crate::sandbox::Api) -> Refusal {
    tokio::time::sleep(api.timeout).await;
    Refusal::UpstreamTimeout {
        api: api.name.to_string(),
        after: humantime::format_duration(api.timeout).to_string(),
    }
}

/// The response a `Prefer` header asks for (`code=402`, `example=NAME`,
/// `dynamic=true`, as Prism understands them), when it asks for one:
/// `None` when the request has no such preference.
pub fn preferred(
    api: &str,
    contract: &crate::contract::Contract,
    op: &Operation,
    headers: &http::HeaderMap,
    seed: impl FnOnce() -> u64,
) -> Option<Result<Response<Body>, Refusal>> {
    let mut code: Option<&str> = None;
    let mut example: Option<&str> = None;
    let mut dynamic = false;
    let mut asked = Vec::new();
    for value in headers.get_all(PREFER) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split([',', ';']) {
            let Some((k, v)) = token.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "code" => code = Some(v),
                "example" => example = Some(v),
                "dynamic" => dynamic = v.eq_ignore_ascii_case("true"),
                _ => continue,
            }
            asked.push(token.trim().to_owned());
        }
    }
    if asked.is_empty() {
        return None;
    }
    let unsatisfiable = || Refusal::UnsatisfiablePreference {
        api: api.to_owned(),
        operation: op.id.clone(),
        asked: asked.join(", "),
        codes: op.documented.iter().map(|d| d.status.as_u16()).collect(),
        examples: op
            .documented
            .iter()
            .flat_map(|d| d.examples.iter().map(|(n, _)| n.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    if dynamic {
        let code = code.and_then(|c| c.parse::<u16>().ok());
        return Some(generated(contract, op, seed(), code).ok_or_else(unsatisfiable));
    }
    let candidates: Vec<&crate::contract::Documented> = match code {
        Some(c) => op
            .documented
            .iter()
            .filter(|d| d.status.as_str() == c)
            .collect(),
        None => {
            // Successes first, then the rest, each by status.
            let mut all: Vec<_> = op.documented.iter().collect();
            all.sort_by_key(|d| (!d.status.is_success(), d.status));
            all
        }
    };
    let found = candidates.iter().find_map(|d| match example {
        Some(name) => d.examples.iter().find(|(n, _)| n == name).map(|(_, r)| r),
        None => d.examples.first().map(|(_, r)| r),
    });
    Some(match found {
        Some(r) => Ok(prepared(r, "example")),
        None => Err(unsatisfiable()),
    })
}

/// A response generated from the schema of `op`'s response `code` (default:
/// its lowest documented 2xx), deterministic for `seed`; `None` when that
/// response has no JSON schema.
pub fn generated(
    contract: &crate::contract::Contract,
    op: &Operation,
    seed: u64,
    code: Option<u16>,
) -> Option<Response<Body>> {
    let doc = &contract.doc;
    let responses = doc
        .pointer(&format!(
            "/paths/{}/{}",
            crate::contract::escape_pointer(&op.template),
            op.method.as_str().to_ascii_lowercase()
        ))?
        .get("responses")?
        .as_object()?;
    let (status, response) = responses
        .iter()
        .filter_map(|(k, v)| k.parse::<u16>().ok().map(|c| (c, v)))
        .filter(|(c, _)| code.map_or((200..300).contains(c), |want| *c == want))
        .min_by_key(|(c, _)| *c)?;
    let schema = crate::contract::resolve(doc, response)
        .get("content")?
        .get("application/json")?
        .get("schema")?;
    let body = generate::generate(doc, schema, seed);
    let prepared_response = crate::contract::PreparedResponse {
        status: http::StatusCode::from_u16(status).ok()?,
        content_type: HeaderValue::from_static("application/json"),
        body: serde_json::to_vec(&body).ok()?.into(),
    };
    Some(prepared(&prepared_response, "generated"))
}

/// The documented example of `op`, or `no_example`.
pub fn answer(api: &str, op: &Operation) -> Result<Response<Body>, Refusal> {
    let Some(example) = &op.example else {
        return Err(Refusal::NoExample {
            api: api.to_owned(),
            operation: op.id.clone(),
        });
    };
    Ok(prepared(example, "example"))
}
