//! Scenario rules: tables that key an outcome on a value of the request, so
//! a partner's test suite can reach every case it must handle (Stripe-style
//! test cards: approved, declined, challenge, timeout) deterministically.
//!
//! A scenario file (`apis[].scenarios`) names **outcomes** (a status and a
//! body: literal, or a JSON merge patch onto the operation's documented
//! example for that status; or a timeout) and **rules** (which operations,
//! which request value by JSON pointer, and a table value → outcome). Every
//! outcome is prepared once per operation at load and checked against the
//! operation's response schema for its status, so a rule can never answer
//! something the contract does not allow.
//!
//! A rule marked `card_numbers: true` also guards real card data: a value
//! that looks like a real card number (12–19 digits passing the Luhn check)
//! and is not in its table is refused with `real_card_number`, and the
//! number is never echoed or logged.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::config::{ConfigError, Source};
use crate::contract::schema::{self, Compiled, Direction};
use crate::contract::{Contract, PreparedResponse, resolve};

/// A scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    /// Named outcomes.
    outcomes: BTreeMap<String, OutcomeConfig>,
    /// The rules, tried in order.
    rules: Vec<RuleConfig>,
    /// Test helpers that move a stored object (stateful APIs only), by
    /// name: `POST /_sandbox/{resource}/{id}/{action}`.
    #[serde(default)]
    actions: BTreeMap<String, ActionConfig>,
}

/// A test helper that moves a stored object by an outcome's `state` patch,
/// such as completing a 3-D Secure challenge.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionConfig {
    /// The resource it applies to (`payment_intents`).
    resource: String,
    /// Top-level fields the stored object must have (`{status: requires_action}`).
    #[serde(default)]
    when: serde_json::Map<String, Value>,
    /// The outcome whose `state` patch is applied.
    outcome: Spanned<String>,
}

/// How an outcome moves a stored object (stateful APIs): a JSON merge
/// patch, then values copied by JSON pointer.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatePatch {
    /// Merge patch onto the stored object: objects merge key by key, and
    /// (unlike RFC 7396) `null` sets a field to null; the text `{id}` in a
    /// string is replaced by the object's id.
    #[serde(default)]
    pub merge: Option<Value>,
    /// Object pointer → source pointer into
    /// `{"object": stored object, "request": request body, "answer": outcome body}`;
    /// a source that is absent is skipped.
    #[serde(default)]
    pub copy: BTreeMap<String, String>,
}

/// A compiled test helper action.
#[derive(Debug, Clone)]
pub struct Action {
    /// The resource it applies to.
    pub resource: String,
    /// Fields the stored object must have.
    pub when: serde_json::Map<String, Value>,
    /// The patch applied.
    pub patch: StatePatch,
}

/// What an outcome answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomeConfig {
    /// The status.
    status: Spanned<u16>,
    /// The body, as is.
    body: Option<Value>,
    /// A JSON merge patch (RFC 7396) applied to the operation's documented
    /// example for `status`.
    merge: Option<Value>,
    /// Which named example of that status to start from (default: the first).
    example: Option<String>,
    /// Answer as a backend that never answers would: 504 after the API's
    /// timeout.
    #[serde(default)]
    timeout: bool,
    /// How the outcome moves the stored object of a stateful API.
    state: Option<StatePatch>,
}

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    /// Shown in the `Sandgate-Scenario` header.
    name: String,
    /// `operationId`s it applies to.
    operations: Vec<Spanned<String>>,
    /// JSON pointer into the request body (typed, as validation sees it).
    key: String,
    /// Values of the key → outcome names.
    when: BTreeMap<String, Spanned<String>>,
    /// Refuse real-looking card numbers not in `when`.
    #[serde(default)]
    card_numbers: bool,
    /// Only while the tenant's clock is in this window (a time-based rule,
    /// such as a simulated card-network outage a partner reaches by
    /// moving its test clock).
    during: Option<Spanned<DuringConfig>>,
}

/// A window of the tenant's time: `from` (inclusive) to `until`
/// (exclusive), RFC 3339 UTC; either may be left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DuringConfig {
    from: Option<String>,
    until: Option<String>,
}

/// What a matched rule answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A prepared response.
    Respond(PreparedResponse),
    /// A timed-out backend.
    Timeout,
}

/// A rule compiled for one operation.
#[derive(Debug)]
struct Rule {
    name: String,
    key: String,
    card_numbers: bool,
    /// The window of the tenant's time it applies in, Unix seconds
    /// [from, until).
    during: Option<(u64, u64)>,
    table: HashMap<String, (Answer, Option<StatePatch>)>,
}

/// The scenario rules of one API, by operation index.
#[derive(Debug, Default)]
pub struct Scenarios {
    by_operation: Vec<Vec<Rule>>,
    /// Test helper actions by name.
    pub actions: BTreeMap<String, Action>,
}

/// The result of matching a request.
#[derive(Debug)]
pub enum Matched<'a> {
    /// No rule applies.
    None,
    /// Rule `rule` answers.
    Answer {
        /// The rule's name.
        rule: &'a str,
        /// Its answer.
        answer: &'a Answer,
        /// How it moves a stored object, when the API is stateful.
        state: Option<&'a StatePatch>,
    },
    /// A real-looking card number at `pointer`.
    RealCard {
        /// Where in the body.
        pointer: &'a str,
    },
}

impl Scenarios {
    /// Loads and compiles the scenario file `rel` for `contract`. `file`
    /// names sandgate.yaml, `line` the `scenarios` key.
    pub fn load(
        source: &Source,
        rel: &Path,
        contract: &Contract,
        file: &Path,
        line: u64,
    ) -> Result<Scenarios, Vec<ConfigError>> {
        let text = source
            .read_to_string(rel)
            .map_err(|m| vec![ConfigError::new(file, line, format!("scenarios: {m}"))])?;
        let path = source.display_path(rel);
        let cfg: ScenarioFile = crate::config::parse_yaml(&path, &text).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let mut by_operation: Vec<Vec<Rule>> =
            (0..contract.operations.len()).map(|_| Vec::new()).collect();
        let doc = &contract.doc;
        let components = schema::components(doc, Direction::Response);
        // Each (outcome, operation) is prepared, and reported, once.
        let mut prepared: HashMap<(String, usize), Option<Answer>> = HashMap::new();
        for r in &cfg.rules {
            let during = match &r.during {
                None => None,
                Some(d) => {
                    let at = |t: &Option<String>, open: u64| {
                        match t {
                        None => Ok(open),
                        Some(text) => crate::clock::parse_rfc3339(text).ok_or_else(|| {
                            format!(
                                "rule `{}`: `during` time `{text}` is not RFC 3339 UTC, such as 2027-01-01T00:00:00Z",
                                r.name
                            )
                        }),
                    }
                    };
                    match (at(&d.value.from, 0), at(&d.value.until, u64::MAX)) {
                        (Ok(from), Ok(until)) if from < until => Some((from, until)),
                        (Ok(_), Ok(_)) => {
                            errors.push(ConfigError::new(
                                &path,
                                d.referenced.line(),
                                format!(
                                    "rule `{}`: `during.from` must be before `during.until`",
                                    r.name
                                ),
                            ));
                            None
                        }
                        (Err(m), _) | (_, Err(m)) => {
                            errors.push(ConfigError::new(&path, d.referenced.line(), m));
                            None
                        }
                    }
                }
            };
            if !r.key.starts_with('/') {
                errors.push(ConfigError::new(
                    &path,
                    0,
                    format!(
                        "rule `{}`: `key` must be a JSON pointer into the body, such as /payment_method",
                        r.name
                    ),
                ));
            }
            for op_name in &r.operations {
                let Some(index) = contract
                    .operations
                    .iter()
                    .position(|o| o.id == op_name.value)
                else {
                    errors.push(ConfigError::new(
                        &path,
                        op_name.referenced.line(),
                        format!(
                            "rule `{}`: the contract has no operation `{}`",
                            r.name, op_name.value
                        ),
                    ));
                    continue;
                };
                let op = &contract.operations[index];
                let op_doc = doc
                    .pointer(&format!(
                        "/paths/{}/{}",
                        crate::contract::escape_pointer(&op.template),
                        op.method.as_str().to_ascii_lowercase()
                    ))
                    .unwrap_or(&Value::Null);
                let mut table = HashMap::new();
                for (value, outcome_name) in &r.when {
                    let Some(outcome) = cfg.outcomes.get(&outcome_name.value) else {
                        errors.push(ConfigError::new(
                            &path,
                            outcome_name.referenced.line(),
                            format!(
                                "rule `{}`: no outcome `{}` (outcomes: {})",
                                r.name,
                                outcome_name.value,
                                cfg.outcomes.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                        continue;
                    };
                    let answer = prepared
                        .entry((outcome_name.value.clone(), index))
                        .or_insert_with(|| match prepare(doc, op_doc, outcome, &components) {
                            Ok(answer) => Some(answer),
                            Err(m) => {
                                errors.push(ConfigError::new(
                                    &path,
                                    outcome.status.referenced.line(),
                                    format!(
                                        "outcome `{}` for operation `{}`: {m}",
                                        outcome_name.value, op.id
                                    ),
                                ));
                                None
                            }
                        });
                    if let Some(answer) = answer {
                        table.insert(value.clone(), (answer.clone(), outcome.state.clone()));
                    }
                }
                by_operation[index].push(Rule {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    card_numbers: r.card_numbers,
                    during,
                    table,
                });
            }
        }
        let mut actions = BTreeMap::new();
        for (name, a) in &cfg.actions {
            match cfg
                .outcomes
                .get(&a.outcome.value)
                .and_then(|o| o.state.clone())
            {
                Some(patch) => {
                    actions.insert(
                        name.clone(),
                        Action {
                            resource: a.resource.clone(),
                            when: a.when.clone(),
                            patch,
                        },
                    );
                }
                None => errors.push(ConfigError::new(
                    &path,
                    a.outcome.referenced.line(),
                    format!(
                        "action `{name}`: outcome `{}` does not exist or has no `state` patch",
                        a.outcome.value
                    ),
                )),
            }
        }
        if errors.is_empty() {
            Ok(Scenarios {
                by_operation,
                actions,
            })
        } else {
            Err(errors)
        }
    }

    /// Whether any rule applies to operation `op`.
    pub fn applies_to(&self, op: usize) -> bool {
        self.by_operation.get(op).is_some_and(|r| !r.is_empty())
    }

    /// The first rule of operation `op` whose key has a value in its table
    /// (rules with a `during` window only while `now`, the tenant's time in
    /// Unix seconds, is in it).
    pub fn find(&self, op: usize, body: &Value, now: u64) -> Matched<'_> {
        for rule in self.by_operation.get(op).into_iter().flatten() {
            if rule
                .during
                .is_some_and(|(from, until)| now < from || now >= until)
            {
                continue;
            }
            let Some(v) = body.pointer(&rule.key) else {
                continue;
            };
            let mut text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            if rule.card_numbers {
                // `4242 4242 4242 4242` is `4242424242424242`.
                text.retain(|c| c != ' ' && c != '-');
            }
            if let Some((answer, state)) = rule.table.get(&text) {
                return Matched::Answer {
                    rule: &rule.name,
                    answer,
                    state: state.as_ref(),
                };
            }
            if rule.card_numbers && looks_like_card(&text) {
                return Matched::RealCard { pointer: &rule.key };
            }
        }
        Matched::None
    }
}

/// Builds an outcome's answer for one operation and checks it against the
/// operation's response schema for its status.
fn prepare(
    doc: &Value,
    op: &Value,
    outcome: &OutcomeConfig,
    components: &Value,
) -> Result<Answer, String> {
    if outcome.timeout {
        return Ok(Answer::Timeout);
    }
    let status = StatusCode::from_u16(outcome.status.value)
        .map_err(|_| format!("`{}` is not an HTTP status", outcome.status.value))?;
    let response = op
        .get("responses")
        .and_then(|r| {
            r.get(status.as_str())
                .or_else(|| r.get(format!("{}XX", status.as_u16() / 100)))
                .or_else(|| r.get("default"))
        })
        .map(|r| resolve(doc, r));
    let media = response
        .and_then(|r| r.get("content"))
        .and_then(|c| c.get("application/json"));
    let base = match (&outcome.body, media) {
        (Some(body), _) => body.clone(),
        (None, Some(m)) => {
            let named = outcome.example.as_deref();
            let example = match named {
                Some(name) => m
                    .get("examples")
                    .and_then(|e| e.get(name))
                    .map(|e| resolve(doc, e))
                    .and_then(|e| e.get("value")),
                None => m.get("example").or_else(|| {
                    m.get("examples")
                        .and_then(Value::as_object)
                        .and_then(|e| e.values().next())
                        .map(|e| resolve(doc, e))
                        .and_then(|e| e.get("value"))
                }),
            };
            example.cloned().ok_or_else(|| {
                format!(
                    "the contract documents no example{} for status {status}; give a `body`",
                    named.map(|n| format!(" `{n}`")).unwrap_or_default()
                )
            })?
        }
        (None, None) => {
            return Err(format!(
                "the contract documents no JSON response for status {status}; give a `body`"
            ));
        }
    };
    let body = match &outcome.merge {
        Some(patch) => merge_patch(base, patch),
        None => base,
    };
    if let Some(s) = media.and_then(|m| m.get("schema")) {
        let compiled = Compiled::new(&schema::rooted(
            schema::convert(s, Direction::Response),
            components,
        ))?;
        if let Some(v) = compiled.violations(&body, 5).first() {
            return Err(format!(
                "the answer does not match the contract's response schema for status {status} at {}: {}",
                if v.pointer.is_empty() {
                    "/"
                } else {
                    &v.pointer
                },
                v.message
            ));
        }
    }
    Ok(Answer::Respond(PreparedResponse {
        status,
        content_type: HeaderValue::from_static("application/json"),
        body: Bytes::from(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
    }))
}

/// RFC 7396 JSON merge patch.
fn merge_patch(mut target: Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    if !target.is_object() {
        target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = &mut target {
        for (k, v) in p {
            if v.is_null() {
                // Keeps the other members in their documented order.
                t.shift_remove(k);
            } else if let Some(current) = t.get_mut(k) {
                *current = merge_patch(current.take(), v);
            } else {
                t.insert(k.clone(), merge_patch(Value::Null, v));
            }
        }
    }
    target
}

/// Whether `s` looks like a real payment card number: 12 to 19 digits
/// (spaces and dashes ignored) that pass the Luhn check.
pub fn looks_like_card(s: &str) -> bool {
    let digits: Vec<u32> = s
        .chars()
        .filter(|c| *c != ' ' && *c != '-')
        .map(|c| c.to_digit(10))
        .collect::<Option<_>>()
        .unwrap_or_default();
    if !(12..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

impl Scenarios {
    /// Every card number that a `card_numbers` rule lists (the sandbox's
    /// test cards), digits only.
    pub fn test_card_numbers(&self) -> impl Iterator<Item = &str> {
        self.by_operation
            .iter()
            .flatten()
            .filter(|r| r.card_numbers)
            .flat_map(|r| r.table.keys().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn luhn() {
        assert!(looks_like_card("4242424242424242"));
        assert!(looks_like_card("4242 4242 4242 4242"));
        assert!(looks_like_card("5555-5555-5555-4444"));
        assert!(!looks_like_card("4242424242424241"));
        assert!(!looks_like_card("424242"));
        assert!(!looks_like_card("pm_card_visa"));
    }

    #[test]
    fn merge_patches() {
        assert_eq!(
            merge_patch(
                json!({"a": 1, "b": {"c": 2, "d": 3}}),
                &json!({"a": null, "b": {"c": 4}, "e": 5})
            ),
            json!({"b": {"c": 4, "d": 3}, "e": 5})
        );
    }
}
