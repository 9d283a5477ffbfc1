//! The bundled demo contract served by the facade: every documented
//! operation answers its documented example, with its status and media
//! type, over HTTP/1.1 and h2c; JSON and form bodies are both accepted.

mod common;

use std::path::Path;

use common::{PAYMENTS, payments_config, problem, sandbox_dir, start_gateway};
use sandgate::contract::Contract;

/// Fills `{param}` segments with a plausible id for the parameter.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{customer}" => "cus_test123",
            "{intent}" => "pi_test123",
            s if s.starts_with('{') => "x_test",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_operation_answers_its_documented_example() {
    let contract =
        Contract::from_text(Path::new("payments.yaml"), PAYMENTS).expect("demo contract compiles");
    assert!(
        contract.operations.len() >= 9,
        "customers, payment intents, refunds"
    );
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &payments_config("")),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await;
    for client in [common::client(), common::h2c_client()] {
        for op in &contract.operations {
            let example = op
                .example
                .as_ref()
                .unwrap_or_else(|| panic!("{} has an example", op.id));
            let url = gw.url(&format!("/payments{}", concrete(&op.template)));
            let resp = client
                .request(op.method.clone(), &url)
                .header("host", "localhost")
                .send()
                .await
                .expect("request");
            assert_eq!(
                resp.status(),
                example.status,
                "{} {}",
                op.method,
                op.template
            );
            assert_eq!(
                resp.headers()["content-type"],
                example.content_type,
                "{}",
                op.id
            );
            assert_eq!(resp.headers()["sandgate-source"], "example");
            assert_eq!(resp.bytes().await.expect("body"), example.body, "{}", op.id);
        }
    }
}

#[tokio::test]
async fn json_and_form_bodies_are_accepted_and_head_has_no_body() {
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &payments_config("")),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await;
    let c = common::client();
    let json = c
        .post(gw.url("/payments/v1/payment_intents"))
        .json(&serde_json::json!({"amount": 2000, "currency": "usd"}))
        .send()
        .await
        .expect("json");
    assert_eq!(json.status(), 200);
    let form = c
        .post(gw.url("/payments/v1/payment_intents"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=2000&currency=usd&metadata[order_id]=6735")
        .send()
        .await
        .expect("form");
    assert_eq!(form.status(), 200);
    let body: serde_json::Value = form.json().await.expect("json");
    assert_eq!(body["object"], "payment_intent");

    let head = c
        .head(gw.url("/payments/v1/customers/cus_NffrFeUfNV2Hib"))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 200);
    assert!(head.bytes().await.expect("body").is_empty());

    let body = problem(
        c.put(gw.url("/payments/v1/customers"))
            .send()
            .await
            .expect("put"),
        405,
        "method_not_allowed",
    )
    .await;
    assert_eq!(body["allow"], serde_json::json!(["GET", "POST", "HEAD"]));
}

#[tokio::test]
async fn an_operation_without_example_is_501() {
    let contract = "openapi: 3.0.3\ninfo: { title: T, version: \"1\" }\npaths:\n  /v1/things:\n    get:\n      operationId: listThings\n      responses: { \"200\": { description: ok, content: { application/json: { schema: { type: array } } } } }\n";
    let config = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: things\n    prefix: /things\n    contract: c.yaml\n    mode: facade\n";
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("c.yaml", contract),
    ]))
    .await;
    let body = problem(
        common::client()
            .get(gw.url("/things/v1/things"))
            .send()
            .await
            .expect("request"),
        501,
        "no_example",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("listThings")),
        "{body}"
    );
    assert_eq!(body["rule"], "apis.things.contract");
}
