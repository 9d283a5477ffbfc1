//! The validate stage over real HTTP, against the demo payments contract:
//! JSON and form bodies (deepObject `metadata[...]`, typed from their
//! strings), query, path and header parameters, every failing field listed
//! with a JSON pointer, 415 for a media type the operation does not take,
//! `report` and `off` modes, and an upstream API whose backend never sees
//! a request the contract refuses.

mod common;

use common::{PAYMENTS, TestGateway, TestUpstream, problem, sandbox_dir, start_gateway};
use serde_json::{Value, json};

async fn gateway(extra_apis: &str) -> TestGateway {
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &common::payments_config(extra_apis)),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await
}

fn pointers(p: &Value) -> Vec<String> {
    p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["pointer"].as_str().expect("pointer").to_owned())
        .collect()
}

fn error_at<'a>(p: &'a Value, pointer: &str) -> &'a Value {
    p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .find(|e| e["pointer"] == pointer)
        .unwrap_or_else(|| panic!("no error at {pointer}: {p}"))
}

#[tokio::test]
async fn json_bodies_are_checked_and_every_failing_field_listed() {
    let gw = gateway("").await;
    let c = common::client();
    let url = gw.url("/payments/v1/payment_intents");

    let ok = c
        .post(&url)
        .json(&json!({"amount": 2000, "currency": "usd", "metadata": {"order_id": "6735"}}))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);

    let resp = c
        .post(&url)
        .json(&json!({"amount": "20", "currency": "USD", "customer": "nobody", "colour": "red"}))
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(p["stage"], "validate");
    assert_eq!(p["rule"], "apis.payments.validate");
    let at = pointers(&p);
    for expected in ["/body/amount", "/body/currency", "/body/customer", "/body"] {
        assert!(at.contains(&expected.to_owned()), "{expected} in {at:?}");
    }
    assert_eq!(error_at(&p, "/body/amount")["keyword"], "type");
    assert_eq!(error_at(&p, "/body/currency")["keyword"], "pattern");
    assert_eq!(error_at(&p, "/body")["keyword"], "additionalProperties");
    assert!(
        error_at(&p, "/body")["message"]
            .as_str()
            .is_some_and(|m| m.contains("colour")),
        "{p}"
    );

    // Missing required fields are pointed at by name.
    let resp = c.post(&url).json(&json!({})).send().await.expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(error_at(&p, "/body/amount")["keyword"], "required");
    assert_eq!(error_at(&p, "/body/currency")["keyword"], "required");

    // Not JSON at all.
    let resp = c
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"amount\": 20,")
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(error_at(&p, "/body")["keyword"], "syntax");

    // A required body that is missing.
    let resp = c.post(&url).send().await.expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(error_at(&p, "/body")["keyword"], "required");
}

#[tokio::test]
async fn form_bodies_are_typed_from_their_strings() {
    let gw = gateway("").await;
    let c = common::client();
    let url = gw.url("/payments/v1/payment_intents");
    let form = |body: &'static str| {
        c.post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let ok = form("amount=2000&currency=usd&confirm=true&metadata[order_id]=6735")
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap_or_default());

    let resp = form("amount=twenty&currency=usd&confirm=maybe&metadata[order_id]=6735")
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(error_at(&p, "/body/amount")["keyword"], "type");
    assert_eq!(error_at(&p, "/body/confirm")["keyword"], "type");
    assert_eq!(pointers(&p).len(), 2, "{p}");

    let long = format!("amount=1&currency=usd&metadata[note]={}", "x".repeat(600));
    let resp = c
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(long)
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(error_at(&p, "/body/metadata/note")["keyword"], "maxLength");
}

#[tokio::test]
async fn a_media_type_the_operation_does_not_take_is_415() {
    let gw = gateway("").await;
    let resp = common::client()
        .post(gw.url("/payments/v1/payment_intents"))
        .header("content-type", "text/plain")
        .body("amount=2000")
        .send()
        .await
        .expect("request");
    let p = problem(resp, 415, "unsupported_media_type").await;
    let accepted = p["accepted"].as_array().expect("accepted");
    assert!(accepted.contains(&json!("application/json")), "{p}");
    assert!(
        accepted.contains(&json!("application/x-www-form-urlencoded")),
        "{p}"
    );
}

#[tokio::test]
async fn query_path_and_header_parameters_are_checked() {
    let gw = gateway("").await;
    let c = common::client();
    let ok = c
        .get(gw.url("/payments/v1/customers?limit=5&starting_after=cus_1"))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);

    let resp = c
        .get(gw.url("/payments/v1/customers?limit=500"))
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(error_at(&p, "/query/limit")["keyword"], "maximum");

    let resp = c
        .get(gw.url("/payments/v1/customers?limit=ten"))
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(error_at(&p, "/query/limit")["keyword"], "type");

    // The path parameter's pattern.
    let resp = c
        .get(gw.url("/payments/v1/customers/not_a_customer"))
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(error_at(&p, "/path/customer")["keyword"], "pattern");

    // A header parameter's maxLength.
    let resp = c
        .post(gw.url("/payments/v1/customers"))
        .header("idempotency-key", "k".repeat(300))
        .json(&json!({"email": "jenny.rosen@example.com"}))
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(
        error_at(&p, "/header/idempotency-key")["keyword"],
        "maxLength"
    );
}

#[tokio::test]
async fn report_mode_lets_through_and_says_why_off_mode_does_not_check() {
    let up = TestUpstream::echo().await;
    let extra = format!(
        "  - name: reported\n    prefix: /reported\n    contract: contracts/payments.yaml\n    mode: facade\n    validate: report\n  - name: unchecked\n    prefix: /unchecked\n    contract: contracts/payments.yaml\n    mode: upstream\n    validate: off\n    upstream: {{ url: \"http://{}\" }}\n",
        up.addr
    );
    let gw = gateway(&extra).await;
    let c = common::client();
    let resp = c
        .get(gw.url("/reported/v1/customers?limit=500"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("sandgate-validation")
            .and_then(|v| v.to_str().ok()),
        Some("invalid_request; count=1; at=\"/query/limit\"")
    );
    let resp = c
        .get(gw.url("/unchecked/v1/customers?limit=500"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("sandgate-validation"));
    assert_eq!(up.seen().len(), 1, "off: the backend got it");
}

#[tokio::test]
async fn an_upstream_backend_never_sees_what_the_contract_refuses() {
    let up = TestUpstream::echo().await;
    let extra = format!(
        "  - name: real\n    prefix: /real\n    contract: contracts/payments.yaml\n    mode: upstream\n    upstream: {{ url: \"http://{}\" }}\n",
        up.addr
    );
    let gw = gateway(&extra).await;
    let c = common::client();
    let resp = c
        .post(gw.url("/real/v1/payment_intents"))
        .json(&json!({"amount": -5, "currency": "usd"}))
        .send()
        .await
        .expect("request");
    let p = problem(resp, 400, "invalid_request").await;
    assert_eq!(error_at(&p, "/body/amount")["keyword"], "minimum");
    assert!(up.seen().is_empty(), "nothing reached the backend");

    // A valid body is read for the check and forwarded whole.
    let body = json!({"amount": 2000, "currency": "usd"}).to_string();
    let resp = c
        .post(gw.url("/real/v1/payment_intents"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, body.len());
    assert_eq!(seen[0].uri, "/v1/payment_intents");
}
