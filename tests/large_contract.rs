//! Contracts at real-world scale, and contracts split over files: Stripe's
//! public OpenAPI 3.0 description (4 MB of YAML, 468 operations, MIT,
//! `tests/data/stripe/`) is loaded, compiled and served by the real gateway
//! in facade mode: GETs with path and query parameters answered from the
//! schema, a form POST that validates, invalid ones refused 400 with every
//! failing field, unknown paths and methods refused. A contract whose
//! `$ref`s name other files of the sandbox is served the same way, and one
//! whose `$ref` leaves the sandbox does not start, naming file and pointer.

mod common;

use std::io::Read;

use common::{TestGateway, problem, sandbox_dir, start_gateway};
use serde_json::Value;

/// Stripe's spec3.yaml, decompressed.
fn stripe_spec() -> String {
    let gz = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/stripe/spec3.yaml.gz"
    ))
    .expect("tests/data/stripe/spec3.yaml.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .expect("gunzip");
    text
}

fn config(contract: &str) -> String {
    format!(
        "listeners:\n  - addr: 127.0.0.1:0\nhosts: [localhost, 127.0.0.1]\napis:\n  - name: stripe\n    prefix: /stripe\n    contract: {contract}\n    mode: facade\n"
    )
}

async fn stripe_gateway() -> TestGateway {
    let spec = stripe_spec();
    assert!(
        spec.len() > 4_000_000,
        "the full description: {}",
        spec.len()
    );
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config("contracts/stripe.yaml")),
        ("contracts/stripe.yaml", &spec),
    ]))
    .await
}

async fn json(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("application/json"), "content type {ct}");
    resp.json().await.expect("json body")
}

fn pointers(p: &Value) -> Vec<String> {
    let mut out: Vec<String> = p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["pointer"].as_str().expect("pointer").to_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn stripe_description_is_served_in_facade_mode() {
    let gw = stripe_gateway().await;
    let c = common::client();
    let form = |path: &str, body: &str| {
        c.post(gw.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
    };

    // GET with a path parameter: answered from the response schema
    // (`anyOf: [customer, deleted_customer]`, no example in the contract).
    let resp = c
        .get(gw.url("/stripe/v1/customers/cus_NffrFeUfNV2Hib"))
        .send()
        .await
        .expect("request");
    let body = json(resp, 200).await;
    assert_eq!(body["object"], "customer", "{body}");
    assert!(body["id"].is_string(), "{body}");

    // Another resource, two path parameters.
    let resp = c
        .get(gw.url("/stripe/v1/customers/cus_1/sources/card_1"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);

    // A list with typed query parameters, valid then invalid.
    let resp = c
        .get(gw.url("/stripe/v1/payment_intents?limit=3&customer=cus_1"))
        .send()
        .await
        .expect("request");
    let body = json(resp, 200).await;
    assert_eq!(body["object"], "list", "{body}");
    assert!(body["data"].is_array(), "{body}");
    let resp = c
        .get(gw.url("/stripe/v1/payment_intents?limit=many"))
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(pointers(&p), ["/query/limit"], "{p}");

    // A form POST that validates (deepObject metadata, typed integer).
    let resp = form(
        "/stripe/v1/payment_intents",
        "amount=2000&currency=usd&metadata[order_id]=6735&capture_method=manual",
    )
    .send()
    .await
    .expect("request");
    let body = json(resp, 200).await;
    assert_eq!(body["object"], "payment_intent", "{body}");

    // The same operation, invalid: every failing field listed.
    let resp = form(
        "/stripe/v1/payment_intents",
        "amount=lots&capture_method=sometimes",
    )
    .send()
    .await
    .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(
        pointers(&p),
        ["/body/amount", "/body/capture_method", "/body/currency"],
        "{p}"
    );

    // An update with a path parameter and a form body.
    let resp = form(
        "/stripe/v1/customers/cus_1",
        "balance=12&email=a%40b.example",
    )
    .send()
    .await
    .expect("request");
    let body = json(resp, 200).await;
    assert_eq!(body["object"], "customer", "{body}");
    let resp = form("/stripe/v1/customers/cus_1", "balance=twelve")
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(pointers(&p), ["/body/balance"], "{p}");

    // What the contract does not document.
    let resp = c
        .get(gw.url("/stripe/v1/customerz"))
        .send()
        .await
        .expect("request");
    problem(resp, 404, "unknown_operation").await;
    let resp = c
        .put(gw.url("/stripe/v1/customers"))
        .send()
        .await
        .expect("request");
    problem(resp, 405, "method_not_allowed").await;
    assert!(gw.shutdown().await, "drained");
}

const SPLIT_MAIN: &str = r##"
openapi: 3.0.3
info: { title: Split, version: "1" }
paths:
  /customers:
    post:
      operationId: createCustomer
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "schemas/customer.yaml#/Customer" }
      responses:
        "200": { $ref: "./common.yaml#/Created" }
"##;

const SPLIT_CUSTOMER: &str = r##"
Customer:
  type: object
  required: [email]
  properties:
    email: { type: string, format: email }
    address: { $ref: "../common.yaml#/Address" }
"##;

const SPLIT_COMMON: &str = r##"
Address:
  type: object
  required: [city]
  properties:
    city: { type: string, minLength: 1 }
Created:
  description: created
  content:
    application/json:
      example: { id: cus_1, object: customer }
"##;

#[tokio::test]
async fn a_contract_split_over_files_is_served() {
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config("contracts/api.yaml")),
        ("contracts/api.yaml", SPLIT_MAIN),
        ("contracts/schemas/customer.yaml", SPLIT_CUSTOMER),
        ("contracts/common.yaml", SPLIT_COMMON),
    ]))
    .await;
    let c = common::client();
    let url = gw.url("/stripe/customers");
    let resp = c
        .post(&url)
        .json(&serde_json::json!({"email": "a@b.example", "address": {"city": "Paris"}}))
        .send()
        .await
        .expect("request");
    let body = json(resp, 200).await;
    assert_eq!(body["id"], "cus_1", "{body}");
    let resp = c
        .post(&url)
        .json(&serde_json::json!({"email": "nope", "address": {"city": ""}}))
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(pointers(&p), ["/body/address/city", "/body/email"], "{p}");
    assert!(gw.shutdown().await, "drained");
}

#[tokio::test]
async fn a_reference_out_of_the_sandbox_stops_the_start() {
    let dir = sandbox_dir(&[
        ("sandgate.yaml", &config("contracts/api.yaml")),
        (
            "contracts/api.yaml",
            &SPLIT_MAIN.replace("schemas/customer.yaml#/Customer", "../../etc/passwd"),
        ),
    ]);
    let overrides = sandgate::Overrides {
        listen: None,
        admin_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        check_only: false,
    };
    let Err(e) = sandgate::start(
        sandgate::config::Source::Dir(dir.path().to_owned()),
        overrides,
    )
    .await
    else {
        panic!("a contract reaching outside the sandbox must not start");
    };
    let message = e.to_string();
    assert!(message.contains("contracts/api.yaml"), "{message}");
    assert!(
        message.contains("/paths/~1customers/post/requestBody/content/application~1json/schema"),
        "{message}"
    );
    assert!(
        message.contains("outside the sandbox directory"),
        "{message}"
    );
}
