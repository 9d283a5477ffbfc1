//! The planner, case by case: which requests it builds from a contract and
//! its fixtures, and why it skips what it cannot build.

use std::path::Path;

use serde_json::{Value, json};

use super::plan::{Case, Planned};
use crate::config::Source;
use crate::contract::Contract;
use crate::facade::fixtures::Fixtures;

const CONTRACT: &str = r##"
openapi: 3.0.3
info: {title: t, version: "1"}
paths:
  /v1/things/{thing}:
    parameters:
      - {name: thing, in: path, required: true, schema: {type: string, pattern: "^th_[a-z0-9]+$"}}
    get:
      operationId: getThing
      parameters:
        - {name: limit, in: query, required: true, schema: {type: integer, minimum: 5, maximum: 9}}
        - {name: expand, in: query, required: false, schema: {type: string}}
        - {name: X-Tenant, in: header, required: true, schema: {type: string, enum: [acme]}}
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Thing"}
              example: {id: th_abc1, amount: 3}
  /v1/things:
    post:
      operationId: createThing
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/ThingParams"}
      responses:
        "200": {description: ok}
  /v1/forms:
    post:
      operationId: postForm
      requestBody:
        content:
          application/x-www-form-urlencoded:
            schema: {type: object}
            examples:
              small: {value: {a: "1", meta: {k: v}, tags: [x, z]}}
              big: {value: {a: "2"}}
      responses:
        "200": {description: ok}
  /v1/locked/{code}:
    get:
      operationId: getLocked
      parameters:
        - {name: code, in: path, required: true, schema: {type: string, pattern: "^zz[0-9]{40}$"}}
      responses:
        "200": {description: ok}
components:
  schemas:
    Thing:
      type: object
      required: [id, amount]
      properties:
        id: {type: string}
        amount: {type: integer}
    ThingParams:
      type: object
      additionalProperties: false
      required: [amount]
      properties:
        amount: {type: integer, minimum: 1}
        code: {type: string, pattern: "^[A-Z]{4}$"}
"##;

fn contract() -> Contract {
    Contract::from_text(Path::new("t.yaml"), CONTRACT).expect("contract compiles")
}

fn ok(case: &Case) -> &Planned {
    case.request
        .as_ref()
        .unwrap_or_else(|why| panic!("{} skipped: {why}", case.name))
}

fn body_json(p: &Planned) -> Value {
    let (ct, bytes) = p.body.as_ref().expect("a body");
    assert_eq!(ct, "application/json");
    serde_json::from_slice(bytes).expect("JSON body")
}

#[test]
fn operations_become_requests_that_fit_the_contract() {
    let c = contract();
    let cases = super::plan(&c, None, &[]);
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "getThing: request built from the contract",
            "createThing: request built from the contract",
            "postForm: request example `small`",
            "postForm: request example `big`",
            "getLocked: request built from the contract",
        ]
    );

    // A path parameter with a pattern takes an example string that fits it;
    // a required query parameter a generated value within its bounds; a
    // required header its enum; an optional parameter is left out.
    let get = ok(&cases[0]);
    assert_eq!(get.method, http::Method::GET);
    let (path, query) = get.path_and_query.split_once('?').expect("a query string");
    assert_eq!(path, "/v1/things/th_abc1");
    let limit: i64 = query
        .strip_prefix("limit=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("limit in {query}"));
    assert!((5..=9).contains(&limit), "{limit}");
    assert_eq!(get.headers.len(), 1);
    assert_eq!(get.headers[0].0, "x-tenant");
    assert_eq!(get.headers[0].1, "acme");
    assert!(get.body.is_none());
    assert_eq!(cases[0].expect, None);

    // A required body without an example: generated, and when the full
    // object does not fit (the pattern of `code`), only its required part.
    let create = ok(&cases[1]);
    let body = body_json(create);
    assert!(body["amount"].as_i64().is_some_and(|a| a >= 1), "{body}");
    assert!(body.get("code").is_none(), "{body}");

    // Form examples, one case each, with bracketed keys.
    let (ct, bytes) = ok(&cases[2]).body.as_ref().expect("form body");
    assert_eq!(ct, "application/x-www-form-urlencoded");
    let pairs: Vec<(String, String)> = form_urlencoded::parse(bytes).into_owned().collect();
    let want: Vec<(String, String)> = [
        ("a", "1"),
        ("meta[k]", "v"),
        ("tags[]", "x"),
        ("tags[]", "z"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(pairs, want);

    // No value fits: skipped, and the reason names the parameter.
    let why = cases[4].request.as_ref().expect_err("skipped");
    assert!(why.contains("path parameter `code`"), "{why}");
}

#[test]
fn only_keeps_the_named_operations() {
    let c = contract();
    let cases = super::plan(&c, None, &["postForm".to_owned()]);
    assert_eq!(cases.len(), 2);
    assert!(cases.iter().all(|c| c.operation == "postForm"));
}

const FIXTURES: &str = r#"fixtures:
  - name: one thing
    method: GET
    path: /v1/things/{id}
    query: { limit: "7" }
    headers: { x-tenant: acme }
    response: { status: 200, body: { id: th_abc1, amount: 3 } }
  - name: big thing
    method: POST
    path: /v1/things
    body: { amount: 500 }
    body_equals: { /code: ABCD }
    response: { status: 201 }
  - name: coded thing
    method: POST
    path: /v1/things
    body_regex: { /code: "^Q" }
    response: { status: 200 }
  - name: broken
    method: GET
    path: /v1/things/th_x
    response: { status: 200, fault: reset }
  - name: elsewhere
    method: GET
    path: /v2/nothing
    response: { status: 200 }
"#;

#[test]
fn fixtures_become_requests_that_match_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("fx")).expect("mkdir");
    std::fs::write(dir.path().join("fx/things.yaml"), FIXTURES).expect("write");
    let c = contract();
    let fixtures = Fixtures::load(
        &Source::Dir(dir.path().to_owned()),
        Path::new("fx"),
        Some(&c),
        Path::new("sandgate.yaml"),
        1,
    )
    .expect("fixtures load");
    let cases = super::plan(&c, Some(&fixtures), &[]);
    let fixture = |name: &str| {
        cases
            .iter()
            .find(|c| c.name.ends_with(&format!("fixture `{name}`")))
            .unwrap_or_else(|| panic!("no case for fixture {name}"))
    };

    // Right after its operation; the template segment takes the contract's
    // value, the fixture's query and headers are sent as they are.
    let at = cases
        .iter()
        .position(|c| c.name == "getThing: fixture `one thing`")
        .expect("fixture case");
    assert_eq!(cases[at - 1].operation, "getThing");
    let one = fixture("one thing");
    assert_eq!(one.expect, Some(http::StatusCode::OK));
    let p = ok(one);
    assert_eq!(p.path_and_query, "/v1/things/th_abc1?limit=7");
    assert!(
        p.headers
            .iter()
            .any(|(k, v)| k == "x-tenant" && v == "acme")
    );

    // The body subset and pointer values merged into a valid request body.
    let big = fixture("big thing");
    assert_eq!(big.expect, Some(http::StatusCode::CREATED));
    assert_eq!(body_json(ok(big)), json!({"amount": 500, "code": "ABCD"}));

    for (name, reason) in [
        ("coded thing", "body_regex `/code`"),
        ("broken", "fault (`reset`)"),
        ("elsewhere", "no operation for GET /v2/nothing"),
    ] {
        let why = fixture(name).request.as_ref().expect_err("skipped");
        assert!(why.contains(reason), "{name}: {why}");
    }
    assert_eq!(
        cases.last().map(|c| c.operation.as_str()),
        Some("/v2/nothing"),
        "fixtures without an operation come last"
    );
}

#[test]
fn exit_status_needs_a_case_that_ran_and_no_failure() {
    use super::{Counts, Summary};
    let status = |passed, failed, skipped| {
        Summary {
            counts: Counts {
                passed,
                failed,
                skipped,
            },
        }
        .exit_status()
    };
    assert_eq!(status(3, 0, 0), 0);
    assert_eq!(status(3, 0, 2), 0, "skipped cases are listed, not failures");
    assert_eq!(status(3, 1, 0), 1);
    assert_eq!(
        status(0, 0, 4),
        1,
        "a run that checked nothing is not a pass"
    );
    assert_eq!(status(0, 0, 0), 1);
}

#[test]
fn header_errors_never_show_the_value() {
    let (name, value) =
        super::parse_header("Authorization:  Bearer sk_sandbox_1 ").expect("parses");
    assert_eq!(name, "authorization");
    assert_eq!(value, "Bearer sk_sandbox_1");
    assert!(value.is_sensitive());
    for raw in [
        "Authorization Bearer sk_sandbox_1",
        "Bad Name: sk_sandbox_1",
        "X-Key: sk_sandbox_1\u{7f}",
    ] {
        let e = super::parse_header(raw).expect_err(raw);
        assert!(!e.contains("sk_sandbox_1"), "{e}");
    }
}
