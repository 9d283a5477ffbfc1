//! Fixtures over real HTTP: exact and templated paths, query, header and
//! body-subset matching with priority, templated bodies that keep JSON
//! types, delays, the order scenario → fixture → example, and a fixture
//! the contract does not allow refused at load with `file:line`.

mod common;

use std::time::{Duration, Instant};

use common::{PAYMENTS, TestGateway, sandbox_dir, start_gateway};
use serde_json::{Value, json};

const FIXTURES: &str = r#"fixtures:
  - name: acme customer
    method: GET
    path: /v1/customers/cus_acme
    response:
      status: 200
      body: { id: cus_acme, object: customer, created: 1767225600, email: dev@acme.test, name: Acme, description: null, phone: null, metadata: {}, livemode: false }
  - name: any customer, slow
    method: GET
    path: /v1/customers/{customer}
    headers: { x-test-case: slow }
    response:
      status: 200
      delay: 300ms
      body: { id: "{{ path.customer }}", object: customer, created: "{{ now }}", email: slow@example.com, name: Slow, description: null, phone: null, metadata: {}, livemode: false }
  - name: big payment
    method: POST
    path: /v1/payment_intents
    body: { amount: 5000, metadata: { campaign: spring } }
    priority: 5
    response:
      status: 200
      headers: { x-fixture-kind: big }
      body:
        id: "{{ new_id('pi') }}"
        object: payment_intent
        amount: "{{ body.amount }}"
        currency: "{{ body.currency }}"
        description: "Big payment of {{ body.amount }}"
"#;

async fn gateway() -> TestGateway {
    let config = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    scenarios: scenarios.yaml\n    fixtures: fixtures\n    mode: facade\n";
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        (
            "scenarios.yaml",
            include_str!("../fixtures/payments/scenarios.yaml"),
        ),
        ("fixtures/customers.yaml", FIXTURES),
    ]))
    .await
}

fn source(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("sandgate-source")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn fixtures_match_and_render() {
    let gw = gateway().await;
    let c = common::client();

    let resp = c
        .get(gw.url("/payments/v1/customers/cus_acme"))
        .send()
        .await
        .expect("request");
    assert_eq!(source(&resp), "fixture");
    assert_eq!(
        resp.headers()
            .get("sandgate-fixture")
            .and_then(|v| v.to_str().ok()),
        Some("acme customer")
    );
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["email"], "dev@acme.test");

    // Without the header, another customer is the contract's example.
    let resp = c
        .get(gw.url("/payments/v1/customers/cus_other"))
        .send()
        .await
        .expect("request");
    assert_eq!(source(&resp), "example");

    // With it, the templated fixture answers after its delay.
    let started = Instant::now();
    let resp = c
        .get(gw.url("/payments/v1/customers/cus_other"))
        .header("x-test-case", "slow")
        .send()
        .await
        .expect("request");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(source(&resp), "fixture");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["id"], "cus_other");
    assert!(
        body["created"].is_u64(),
        "a lone expression keeps its type: {body}"
    );

    // Body subset, from a form: typed by the contract, then matched.
    let resp = c
        .post(gw.url("/payments/v1/payment_intents"))
        .form(&[
            ("amount", "5000"),
            ("currency", "eur"),
            ("metadata[campaign]", "spring"),
            ("metadata[other]", "x"),
        ])
        .send()
        .await
        .expect("request");
    assert_eq!(source(&resp), "fixture");
    assert_eq!(
        resp.headers()
            .get("x-fixture-kind")
            .and_then(|v| v.to_str().ok()),
        Some("big")
    );
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["amount"], 5000);
    assert_eq!(body["currency"], "eur");
    assert_eq!(body["description"], "Big payment of 5000");
    assert!(
        body["id"].as_str().is_some_and(|id| id.starts_with("pi_")),
        "{body}"
    );

    // A scenario rule comes first.
    let resp = c
        .post(gw.url("/payments/v1/payment_intents"))
        .json(&json!({"amount": 5000, "currency": "eur", "metadata": {"campaign": "spring"}, "payment_method": "pm_card_visa_chargeDeclined"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 402);
    assert_eq!(source(&resp), "scenario");

    // Another amount: no fixture, the example.
    let resp = c
        .post(gw.url("/payments/v1/payment_intents"))
        .json(&json!({"amount": 10, "currency": "eur"}))
        .send()
        .await
        .expect("request");
    assert_eq!(source(&resp), "example");
}

#[test]
fn a_fixture_the_contract_does_not_allow_is_a_load_error() {
    let broken = "fixtures:\n  - name: wrong customer\n    method: GET\n    path: /v1/customers/cus_acme\n    response:\n      status: 200\n      body: { id: cus_acme, object: invoice }\n";
    let config = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    fixtures: fixtures\n    mode: facade\n";
    let dir = sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("fixtures/broken.yaml", broken),
    ]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["check", "--config"])
        .arg(dir.path())
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let at = format!("{}:6: ", dir.path().join("fixtures/broken.yaml").display());
    assert!(
        stdout.contains(&at)
            && stdout.contains("wrong customer")
            && stdout.contains("does not match the contract"),
        "{stdout}"
    );
}
