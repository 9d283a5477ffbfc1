//! Scenario rules over real HTTP, with the demo's own files: every Stripe
//! test payment method and test card number gets its documented outcome
//! (JSON and form bodies), a real-looking card number is refused without
//! being echoed, the timeout card answers 504 after the API's timeout, and
//! a broken scenario file is a located load error.

mod common;

use std::time::{Duration, Instant};

use common::{PAYMENTS, TestGateway, problem, sandbox_dir, start_gateway};
use serde_json::{Value, json};

const SCENARIOS: &str = include_str!("../fixtures/payments/scenarios.yaml");

/// The demo payments facade with its scenario rules and a 1 s API timeout
/// (the timeout card waits that long).
async fn gateway() -> TestGateway {
    let config = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    scenarios: fixtures/payments/scenarios.yaml\n    mode: facade\n    upstream: { url: \"http://127.0.0.1:9\", timeout: 1s }\n";
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("fixtures/payments/scenarios.yaml", SCENARIOS),
    ]))
    .await
}

/// (status, decline_code or payment intent status) of an answer.
async fn outcome(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()
            .get("sandgate-source")
            .and_then(|v| v.to_str().ok()),
        Some("scenario")
    );
    let body: Value = resp.json().await.expect("JSON");
    let what = if status == 402 {
        body["error"]["decline_code"]
            .as_str()
            .or_else(|| body["error"]["code"].as_str())
            .unwrap_or_default()
            .to_owned()
    } else {
        body["status"].as_str().unwrap_or_default().to_owned()
    };
    (status, what)
}

#[tokio::test]
async fn test_payment_methods_and_card_numbers_get_their_outcomes() {
    let gw = gateway().await;
    let c = common::client();
    let create = gw.url("/payments/v1/payment_intents");
    let confirm = gw.url("/payments/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa/confirm");

    let methods = [
        ("pm_card_visa", 200, "succeeded"),
        ("pm_card_visa_chargeDeclined", 402, "generic_decline"),
        (
            "pm_card_visa_chargeDeclinedInsufficientFunds",
            402,
            "insufficient_funds",
        ),
        ("pm_card_authenticationRequired", 200, "requires_action"),
    ];
    for (pm, status, what) in methods {
        // As a form on create, as JSON on confirm.
        let resp = c
            .post(&create)
            .form(&[
                ("amount", "2000"),
                ("currency", "usd"),
                ("payment_method", pm),
            ])
            .send()
            .await
            .expect("request");
        assert_eq!(
            outcome(resp).await,
            (status, what.to_owned()),
            "create {pm}"
        );
        let resp = c
            .post(&confirm)
            .json(&json!({"payment_method": pm}))
            .send()
            .await
            .expect("request");
        assert_eq!(
            outcome(resp).await,
            (status, what.to_owned()),
            "confirm {pm}"
        );
    }

    let cards = [
        ("4242424242424242", 200, "succeeded"),
        ("4000000000000002", 402, "generic_decline"),
        ("4000000000009995", 402, "insufficient_funds"),
        ("4000000000009987", 402, "lost_card"),
        ("4000000000009979", 402, "stolen_card"),
        ("4000000000000069", 402, "expired_card"),
        ("4000000000000127", 402, "incorrect_cvc"),
        ("4000000000000119", 402, "processing_error"),
        ("4000002760003184", 200, "requires_action"),
        ("4242 4242 4242 4242", 200, "succeeded"),
    ];
    for (number, status, what) in cards {
        let resp = c
            .post(&create)
            .form(&[
                ("amount", "2000"),
                ("currency", "usd"),
                ("payment_method_data[type]", "card"),
                ("payment_method_data[card][number]", number),
                ("payment_method_data[card][exp_month]", "12"),
                ("payment_method_data[card][exp_year]", "2034"),
                ("payment_method_data[card][cvc]", "123"),
            ])
            .send()
            .await
            .expect("request");
        assert_eq!(
            outcome(resp).await,
            (status, what.to_owned()),
            "card {number}"
        );
    }

    // requires_action carries the next action to follow.
    let resp = c
        .post(&confirm)
        .json(&json!({"payment_method": "pm_card_authenticationRequired"}))
        .send()
        .await
        .expect("request");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["next_action"]["type"], "redirect_to_url", "{body}");

    // Without a rule's value, the contract's example answers.
    let resp = c
        .post(&create)
        .form(&[("amount", "2000"), ("currency", "usd")])
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.headers()
            .get("sandgate-source")
            .and_then(|v| v.to_str().ok()),
        Some("example")
    );
}

#[tokio::test]
async fn a_real_card_number_is_refused_and_never_echoed() {
    let gw = gateway().await;
    let real = "5555555555554444";
    let resp = common::client()
        .post(gw.url("/payments/v1/payment_intents"))
        .json(&json!({"amount": 2000, "currency": "usd", "payment_method_data": {"type": "card", "card": {"number": real}}}))
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "real_card_number").await;
    assert!(!p.to_string().contains(real), "{p}");
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/payment_method_data/card/number")),
        "{p}"
    );
}

#[tokio::test]
async fn the_timeout_card_answers_504_after_the_api_timeout() {
    let gw = gateway().await;
    let started = Instant::now();
    let resp = common::client()
        .post(gw.url("/payments/v1/payment_intents"))
        .form(&[
            ("amount", "2000"),
            ("currency", "usd"),
            ("payment_method", "pm_card_sandgate_timeout"),
        ])
        .send()
        .await
        .expect("request");
    let p = problem(resp, 504, "upstream_timeout").await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited the API's 1s timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(p["retryable"], true);
}

#[test]
fn a_broken_scenario_file_is_a_located_load_error() {
    let broken = "outcomes:\n  declined:\n    status: 402\n    body: { error: { type: card_error } }\n  odd:\n    status: 200\n    merge: { status: 12 }\nrules:\n  - name: cards\n    operations: [createPaymentIntent, noSuchOperation]\n    key: /payment_method\n    when:\n      pm_card_visa: missing_outcome\n      pm_card_visa_chargeDeclined: declined\n      pm_odd: odd\n";
    let config = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    scenarios: scenarios.yaml\n    mode: facade\n";
    let dir = sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("scenarios.yaml", broken),
    ]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["check", "--config"])
        .arg(dir.path())
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let file = dir.path().join("scenarios.yaml").display().to_string();
    for (line, needle) in [
        (10, "no operation `noSuchOperation`"),
        (13, "no outcome `missing_outcome`"),
        (3, "at /error/message: \"message\" is a required property"),
        (6, "at /status"),
    ] {
        assert!(
            stdout.contains(&format!("{file}:{line}: ")) && stdout.contains(needle),
            "{file}:{line} {needle} in:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn prefer_picks_a_documented_response_or_says_what_is_available() {
    let gw = gateway().await;
    let c = common::client();
    let create = gw.url("/payments/v1/payment_intents");
    let confirm = gw.url("/payments/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa/confirm");
    let form = [
        ("amount", "2000"),
        ("currency", "usd"),
        ("payment_method", "pm_card_visa"),
    ];

    // `code=` wins over the scenario rule pm_card_visa would match.
    let resp = c
        .post(&create)
        .header("prefer", "code=402")
        .form(&form)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 402);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "card_error", "{body}");

    let resp = c
        .post(&confirm)
        .header("prefer", "example=requires_action")
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["status"], "requires_action", "{body}");

    // `dynamic=true`: generated from the response schema, a valid payment intent.
    let resp = c
        .post(&create)
        .header("prefer", "dynamic=true")
        .form(&form)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("sandgate-source")
            .and_then(|v| v.to_str().ok()),
        Some("generated")
    );
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["object"], "payment_intent", "{body}");
    assert!(body["amount"].is_i64(), "{body}");

    for prefer in [
        "code=418",
        "example=nope",
        "code=200, example=nope",
        "dynamic=true; code=418",
    ] {
        let resp = c
            .post(&create)
            .header("prefer", prefer)
            .form(&form)
            .send()
            .await
            .expect("request");
        let p = problem(resp, 422, "unsatisfiable_preference").await;
        let codes = p["available"]["codes"].as_array().expect("codes");
        assert!(
            codes.contains(&json!(200)) && codes.contains(&json!(402)),
            "{prefer}: {p}"
        );
    }

    // Other preferences (RFC 7240) are not ours and change nothing.
    let resp = c
        .post(&create)
        .header("prefer", "return=minimal")
        .form(&[("amount", "2000"), ("currency", "usd")])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
}
