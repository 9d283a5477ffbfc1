//! Fixtures over real HTTP: exact and templated paths, query, header and
//! body-subset matching with priority, templated bodies that keep JSON
//! types, delays, the order scenario → fixture → example, and a fixture
//! the contract does not allow refused at load with `file:line`; body
//! matching by JSON pointer and regex; the faults `reset` (a TCP RST),
//! `malformed_body` and `timeout`.

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

const FAULTS: &str = r#"fixtures:
  - name: crash
    method: GET
    path: /v1/customers/cus_reset
    response: { status: 200, fault: reset }
  - name: garbage
    method: GET
    path: /v1/customers/cus_garbage
    response:
      status: 200
      fault: malformed_body
      body: { id: cus_garbage, object: customer, created: 1767225600, email: null, name: null, description: null, phone: null, metadata: {}, livemode: false }
  - name: hang
    method: GET
    path: /v1/customers/cus_hang
    response: { status: 200, fault: timeout }
  - name: order by pointer
    method: POST
    path: /v1/payment_intents
    body_equals: { /metadata/order: "A-17" }
    body_regex: { /description: "^Order [0-9]+$" }
    response:
      status: 200
      headers: { x-matched: pointer }
      body: { id: pi_ptr, object: payment_intent, amount: "{{ body.amount }}" }
"#;

async fn fault_gateway() -> TestGateway {
    let config = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    fixtures: fixtures\n    mode: facade\n    upstream: { url: \"http://127.0.0.1:9\", timeout: 1s }\n";
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("fixtures/faults.yaml", FAULTS),
    ]))
    .await
}

#[tokio::test]
async fn fixture_faults_reset_corrupt_and_time_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = fault_gateway().await;

    // reset: the client gets a TCP RST and not one byte of a response.
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(b"GET /payments/v1/customers/cus_reset HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    match s.read(&mut buf).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!(
            "expected a reset, read {n} bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
    // The gateway itself is fine: the next connection is served.
    let c = common::client();
    let resp = c
        .get(gw.url("/payments/v1/customers/cus_acme"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);

    // malformed_body: the promised JSON is cut in half.
    let resp = c
        .get(gw.url("/payments/v1/customers/cus_garbage"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("sandgate-fault")
            .and_then(|v| v.to_str().ok()),
        Some("malformed_body")
    );
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let text = resp.text().await.expect("body");
    assert!(text.starts_with("{\"id\":\"cus_garbage\""), "{text}");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    // timeout: 504 after the API's timeout, as a silent backend.
    let started = Instant::now();
    let resp = c
        .get(gw.url("/payments/v1/customers/cus_hang"))
        .send()
        .await
        .expect("request");
    let p = common::problem(resp, 504, "upstream_timeout").await;
    assert!(started.elapsed() >= Duration::from_secs(1), "{p}");
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn fixtures_match_on_json_pointers_and_regexes() {
    let gw = fault_gateway().await;
    let c = common::client();
    let post = |form: Vec<(&'static str, &'static str)>| {
        c.post(gw.url("/payments/v1/payment_intents"))
            .form(&form)
            .send()
    };
    let base = vec![("amount", "1500"), ("currency", "usd")];
    let cases: &[(&[(&str, &str)], bool)] = &[
        (
            &[("metadata[order]", "A-17"), ("description", "Order 42")],
            true,
        ),
        (
            &[("metadata[order]", "A-18"), ("description", "Order 42")],
            false,
        ),
        (
            &[
                ("metadata[order]", "A-17"),
                ("description", "Order forty-two"),
            ],
            false,
        ),
        (&[("description", "Order 42")], false),
    ];
    for (extra, matched) in cases {
        let mut form = base.clone();
        form.extend_from_slice(extra);
        let resp = post(form).await.expect("request");
        assert_eq!(resp.status(), 200, "{extra:?}");
        let by_pointer = resp.headers().get("x-matched").is_some();
        assert_eq!(by_pointer, *matched, "{extra:?}");
        if *matched {
            let body: Value = resp.json().await.expect("json");
            assert_eq!(body["amount"], 1500);
        }
    }
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_bad_body_regex_is_a_load_error() {
    let bad = "fixtures:\n  - name: broken\n    method: POST\n    path: /v1/payment_intents\n    body_regex: { /description: \"(unclosed\" }\n    response: { status: 200 }\n";
    let config = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    fixtures: fixtures\n    mode: facade\n";
    let dir = sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("fixtures/bad.yaml", bad),
    ]);
    let errors = sandgate::sandbox::Sandbox::load(
        &sandgate::config::Source::Dir(dir.path().to_owned()),
        &sandgate::Overrides {
            listen: None,
            admin_listen: None,
            check_only: true,
        },
    )
    .map(|_| ())
    .expect_err("a broken regex")
    .to_string();
    assert!(errors.contains("bad.yaml:5:"), "{errors}");
    assert!(errors.contains("body_regex `/description`"), "{errors}");
}
