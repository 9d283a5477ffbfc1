//! Drift: live backend responses checked against the API's contract.
//!
//! For an API that proxies (`upstream`, `hybrid`, `record`) and has a
//! contract, a sample of responses is read (up to `drift.max_body`) and
//! checked: the status must be documented for the operation, the
//! `Content-Type` must be one the contract lists for that status, and a JSON
//! body must validate against the response schema. A mismatch increments
//! `sandgate_contract_drift_total{api,operation}`, is logged with its JSON
//! pointer, and is named in the `Sandgate-Contract-Drift` response header.
//!
//! Response schemas are compiled on first use, once per (operation,
//! documented response), so a large contract costs nothing until it drifts.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;
use serde_json::Value;

use crate::contract::schema::{self, Compiled, Direction};
use crate::contract::{Contract, escape_pointer, resolve};

/// The response header naming what drifted (comma-separated: JSON pointers
/// into the body, `status`, `content-type`).
pub const SANDGATE_CONTRACT_DRIFT: http::HeaderName =
    http::HeaderName::from_static("sandgate-contract-drift");

/// At most this many violations are reported per response.
const MAX_VIOLATIONS: usize = 10;

/// One documented response of an operation.
struct Documented {
    /// `200`, `2XX` or `default`.
    key: String,
    /// The documented media types (`application/json`, `*/*`, …).
    media: Vec<String>,
    /// The JSON schema, when a JSON media type has one.
    schema: Option<Value>,
    compiled: OnceLock<Option<Compiled>>,
}

/// The drift checker of one API.
pub struct Checker {
    /// Documented responses, by operation index.
    operations: Vec<Vec<Documented>>,
    /// The contract's converted response components, built on first use.
    components: OnceLock<Value>,
    /// Checks one response in `every` (1 = all).
    sample: f64,
    seen: AtomicU64,
    /// Largest body read for a check.
    pub max_body: usize,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("operations", &self.operations.len())
            .field("sample", &self.sample)
            .finish()
    }
}

/// One way a response differs from the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// `status`, `content-type`, or a JSON pointer into the body (`/` for
    /// the whole body).
    pub at: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl Checker {
    /// The checker for `contract`, checking a `sample` fraction of responses
    /// with bodies up to `max_body`; `None` when `sample` is 0.
    pub fn new(contract: &Contract, sample: f64, max_body: usize) -> Option<Checker> {
        if sample <= 0.0 {
            return None;
        }
        let operations = contract
            .operations
            .iter()
            .map(|op| {
                let pointer = format!(
                    "/paths/{}/{}",
                    escape_pointer(&op.template),
                    op.method.as_str().to_ascii_lowercase()
                );
                let Some(responses) = contract
                    .doc
                    .pointer(&pointer)
                    .and_then(|o| o.get("responses"))
                    .and_then(Value::as_object)
                else {
                    return Vec::new();
                };
                responses
                    .iter()
                    .map(|(key, r)| {
                        let r = resolve(&contract.doc, r);
                        let content = r.get("content").and_then(Value::as_object);
                        let media: Vec<String> = content
                            .map(|c| c.keys().map(|k| k.to_ascii_lowercase()).collect())
                            .unwrap_or_default();
                        let schema = content.and_then(|c| {
                            c.iter()
                                .find(|(k, _)| is_json(k))
                                .and_then(|(_, m)| m.get("schema"))
                                .cloned()
                        });
                        Documented {
                            key: key.to_ascii_uppercase(),
                            media,
                            schema,
                            compiled: OnceLock::new(),
                        }
                    })
                    .collect()
            })
            .collect();
        Some(Checker {
            operations,
            components: OnceLock::new(),
            sample: sample.min(1.0),
            seen: AtomicU64::new(0),
            max_body,
        })
    }

    /// Whether this response is one of the sample to check. Evenly spaced:
    /// with `sample: 0.25`, every fourth response.
    pub fn sampled(&self) -> bool {
        if self.sample >= 1.0 {
            return true;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.sample).floor() > (n * self.sample).floor()
    }

    /// What drifted in the response `status` / `content_type` / `body` of
    /// operation `op` (the body as received; empty when there is none).
    pub fn check(
        &self,
        contract: &Contract,
        op: usize,
        status: http::StatusCode,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Vec<Drift> {
        let Some(documented) = self.operations.get(op) else {
            return Vec::new();
        };
        let code = status.as_str();
        let range = format!("{}XX", &code[..1]);
        let Some(d) = documented
            .iter()
            .find(|d| d.key == code)
            .or_else(|| documented.iter().find(|d| d.key == range))
            .or_else(|| documented.iter().find(|d| d.key == "DEFAULT"))
        else {
            return vec![Drift {
                at: "status".into(),
                message: format!(
                    "status {code} is not documented (documented: {})",
                    documented
                        .iter()
                        .map(|d| d.key.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }];
        };
        if body.is_empty() || d.media.is_empty() {
            // Nothing documented for the body, or no body: nothing to compare.
            return Vec::new();
        }
        let media = content_type
            .map(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if !d.media.iter().any(|m| media_matches(m, &media)) {
            return vec![Drift {
                at: "content-type".into(),
                message: format!(
                    "Content-Type `{}` is not documented for status {code} (documented: {})",
                    if media.is_empty() { "(none)" } else { &media },
                    d.media.join(", ")
                ),
            }];
        }
        if !is_json(&media) {
            return Vec::new();
        }
        let Some(compiled) = d
            .compiled
            .get_or_init(|| {
                let schema = d.schema.as_ref()?;
                let components = self
                    .components
                    .get_or_init(|| schema::components(&contract.doc, Direction::Response));
                Compiled::new(&schema::rooted(
                    schema::convert(schema, Direction::Response),
                    components,
                ))
                .ok()
            })
            .as_ref()
        else {
            return Vec::new();
        };
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return vec![Drift {
                    at: "/".into(),
                    message: format!("the body is not valid JSON: {e}"),
                }];
            }
        };
        compiled
            .violations(&value, MAX_VIOLATIONS)
            .into_iter()
            .map(|v| Drift {
                at: if v.pointer.is_empty() {
                    "/".into()
                } else {
                    v.pointer
                },
                message: v.message,
            })
            .collect()
    }
}

/// The `Sandgate-Contract-Drift` value for `drifts`: where each is.
pub fn header_value(drifts: &[Drift]) -> HeaderValue {
    let mut out = String::new();
    for d in drifts {
        if !out.is_empty() {
            out.push_str(", ");
        }
        // Pointers carry the body's own keys: keep the header printable.
        out.extend(
            d.at.chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '?' }),
        );
        if out.len() > 512 {
            out.truncate(512);
            out.push('…');
            break;
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("drift"))
}

fn is_json(media: &str) -> bool {
    let media = media.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json") || media.to_ascii_lowercase().ends_with("+json")
}

/// Whether documented media range `documented` covers `actual`.
fn media_matches(documented: &str, actual: &str) -> bool {
    let documented = documented.split(';').next().unwrap_or("").trim();
    match documented.split_once('/') {
        Some(("*", "*")) => true,
        Some((t, "*")) => actual.split_once('/').is_some_and(|(at, _)| at == t),
        _ => documented == actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> Contract {
        let text = r##"
openapi: 3.0.3
info: {title: t, version: "1"}
paths:
  /things/{id}:
    get:
      operationId: getThing
      parameters: [{name: id, in: path, required: true, schema: {type: string}}]
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Thing"}
        4XX:
          description: error
          content:
            application/json:
              schema: {type: object, required: [error]}
components:
  schemas:
    Thing:
      type: object
      required: [id, amount]
      properties:
        id: {type: string}
        amount: {type: integer}
"##;
        Contract::from_text(std::path::Path::new("t.yaml"), text).expect("contract")
    }

    #[test]
    fn finds_each_kind_of_drift() {
        let c = contract();
        let k = Checker::new(&c, 1.0, 1 << 20).expect("checker");
        let ok = http::StatusCode::OK;
        let json = Some("application/json; charset=utf-8");
        let cases: &[(http::StatusCode, Option<&str>, &str, &[&str])] = &[
            (ok, json, r#"{"id":"t_1","amount":5}"#, &[]),
            (ok, json, r#"{"id":"t_1","amount":"5"}"#, &["/amount"]),
            (ok, json, r#"{"amount":5}"#, &["/id"]),
            (ok, json, r#"{"id":"t_1","amount":5"#, &["/"]),
            (ok, Some("text/html"), "<html>", &["content-type"]),
            (http::StatusCode::IM_A_TEAPOT, json, "{}", &["/error"]),
            (http::StatusCode::BAD_GATEWAY, json, "{}", &["status"]),
            (ok, None, "", &[]),
        ];
        for (status, ct, body, want) in cases {
            let got: Vec<String> = k
                .check(&c, 0, *status, *ct, body.as_bytes())
                .into_iter()
                .map(|d| d.at)
                .collect();
            assert_eq!(&got, want, "{status} {ct:?} {body}");
        }
    }

    #[test]
    fn samples_evenly() {
        let c = contract();
        let k = Checker::new(&c, 0.25, 1024).expect("checker");
        let picked = (0..100).filter(|_| k.sampled()).count();
        assert_eq!(picked, 25);
        assert!(Checker::new(&c, 0.0, 1024).is_none());
    }
}
