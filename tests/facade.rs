//! Facade mode end to end, driven by the shipped demo contract
//! (`contracts/payments.yaml`): the test reads the contract with the
//! gateway's own loader, then sends every documented operation over HTTP/1.1
//! and h2c and expects exactly the prepared example (status, media type,
//! bytes). Also: HEAD on GET operations, JSON and form bodies, unknown
//! operations (404 with `nearest`), wrong methods (405 with `Allow`), an
//! operation without example answered from its schema (or 501
//! `no_example` without one), and body limits.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use common::{PAYMENTS, TestGateway, payments_config, problem, sandbox_dir, start_gateway};
use http::Method;
use sandgate::contract::Contract;

/// The demo contract, compiled by the gateway's own loader.
fn demo_contract() -> Contract {
    Contract::from_text(Path::new("contracts/payments.yaml"), PAYMENTS)
        .unwrap_or_else(|e| panic!("the demo contract compiles: {e:?}"))
}

/// The gateway serving the demo contract at `/payments`.
async fn demo_gateway() -> TestGateway {
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &payments_config("")),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await
}

/// Fills the `{param}` segments of a template with plausible ids.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{customer}" => "cus_test123",
            "{intent}" => "pi_test123",
            "{refund}" => "re_test123",
            s if s.starts_with('{') => "id_test123",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A header as text ("" when absent).
fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A valid form body for a write of the demo contract (the facade answers
/// the example; sending one proves bodies are read, checked and accepted).
fn body_for(method: &Method, template: &str) -> Option<(&'static str, &'static str)> {
    let body = match template {
        "/v1/payment_intents" => "amount=2000&currency=usd&metadata[order_id]=6735",
        "/v1/refunds" => "payment_intent=pi_3MtwBwLkdIwHu7ix28a3tqPa&amount=500",
        "/v1/payment_intents/{intent}/confirm" => "payment_method=pm_card_visa",
        _ => "metadata[order_id]=6735",
    };
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        .then_some(("application/x-www-form-urlencoded", body))
}

#[tokio::test]
async fn every_operation_answers_its_prepared_example_over_h1_and_h2c() {
    let contract = demo_contract();
    assert!(
        contract.operations.len() >= 9,
        "customers, payment intents and refunds: {} operations",
        contract.operations.len()
    );
    let gw = demo_gateway().await;
    for (client, version) in [
        (common::client(), http::Version::HTTP_11),
        (common::h2c_client(), http::Version::HTTP_2),
    ] {
        for op in &contract.operations {
            let example = op
                .example
                .as_ref()
                .unwrap_or_else(|| panic!("demo operation {} documents an example", op.id));
            let url = gw.url(&format!("/payments{}", concrete(&op.template)));
            let mut req = client.request(op.method.clone(), &url);
            if let Some((ct, body)) = body_for(&op.method, &op.template) {
                req = req.header("content-type", ct).body(body);
            }
            let resp = req.send().await.expect("request");
            let what = format!("{} {} ({version:?})", op.method, op.template);
            assert_eq!(resp.version(), version, "{what}");
            assert_eq!(resp.status(), example.status, "{what}");
            if example.body.is_empty() {
                assert_eq!(header(&resp, "content-type"), "", "{what}");
            } else {
                assert_eq!(
                    resp.headers().get("content-type"),
                    Some(&example.content_type),
                    "{what}"
                );
            }
            assert_eq!(header(&resp, "sandgate-source"), "example", "{what}");
            assert!(header(&resp, "x-request-id").starts_with("req_"), "{what}");
            let body = resp.bytes().await.expect("body");
            assert_eq!(body, example.body, "{what}: the prepared example bytes");
            if !body.is_empty() && example.content_type == "application/json" {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .unwrap_or_else(|e| panic!("{what}: the example is JSON: {e}"));
            }
        }
    }
}

#[tokio::test]
async fn head_on_a_get_operation_is_200_without_a_body() {
    let contract = demo_contract();
    let gw = demo_gateway().await;
    let gets: Vec<_> = contract
        .operations
        .iter()
        .filter(|op| op.method == Method::GET)
        .collect();
    assert!(gets.len() >= 3, "the demo documents GET operations");
    for client in [common::client(), common::h2c_client()] {
        for op in &gets {
            let example = op.example.as_ref().expect("example");
            let url = gw.url(&format!("/payments{}", concrete(&op.template)));
            let resp = client.head(&url).send().await.expect("head");
            assert_eq!(resp.status(), 200, "HEAD {}", op.template);
            assert_eq!(resp.status(), example.status);
            assert_eq!(
                resp.headers().get("content-type"),
                Some(&example.content_type),
                "HEAD {}",
                op.template
            );
            assert_eq!(header(&resp, "sandgate-source"), "example");
            assert_eq!(
                header(&resp, "content-length"),
                example.body.len().to_string(),
                "HEAD {} announces the GET body's length",
                op.template
            );
            assert!(
                resp.bytes().await.expect("body").is_empty(),
                "HEAD {} has no body",
                op.template
            );
        }
        // A refused HEAD has the problem's headers and no body either.
        let resp = client
            .head(gw.url("/payments/v1/nowhere"))
            .send()
            .await
            .expect("head");
        assert_eq!(resp.status(), 404);
        assert_eq!(header(&resp, "content-type"), "application/problem+json");
        assert!(resp.bytes().await.expect("body").is_empty());
    }
}

#[tokio::test]
async fn posts_with_json_and_form_bodies_are_both_answered() {
    let contract = demo_contract();
    let create = contract
        .operations
        .iter()
        .find(|op| op.id == "createPaymentIntent")
        .expect("createPaymentIntent");
    let example = create.example.as_ref().expect("example");
    let gw = demo_gateway().await;
    for client in [common::client(), common::h2c_client()] {
        let json = client
            .post(gw.url("/payments/v1/payment_intents"))
            .json(&serde_json::json!({"amount": 2000, "currency": "usd", "metadata": {"order_id": "6735"}}))
            .send()
            .await
            .expect("json post");
        assert_eq!(json.status(), example.status);
        assert_eq!(json.bytes().await.expect("body"), example.body);

        let form = client
            .post(gw.url("/payments/v1/payment_intents"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("amount=2000&currency=usd&metadata[order_id]=6735")
            .send()
            .await
            .expect("form post");
        assert_eq!(form.status(), example.status);
        assert_eq!(form.bytes().await.expect("body"), example.body);

        // A chunked body (no Content-Length) is read too.
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"amount=2000&")),
            Ok(Bytes::from_static(b"currency=usd")),
        ];
        let chunked = client
            .post(gw.url("/payments/v1/payment_intents"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .expect("chunked post");
        assert_eq!(chunked.status(), example.status);
        assert_eq!(chunked.bytes().await.expect("body"), example.body);
    }
}

#[tokio::test]
async fn an_unknown_operation_is_404_with_the_nearest_documented_paths() {
    let gw = demo_gateway().await;
    let c = common::client();

    // A typo of a documented path.
    let body = problem(
        c.get(gw.url("/payments/v1/customer"))
            .send()
            .await
            .expect("request"),
        404,
        "unknown_operation",
    )
    .await;
    let nearest: Vec<&str> = body["nearest"]
        .as_array()
        .expect("nearest")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(!nearest.is_empty() && nearest.len() <= 3, "{body}");
    assert_eq!(nearest[0], "/v1/customers", "{body}");
    assert_eq!(body["stage"], "route");
    assert_eq!(body["rule"], "apis.payments.contract");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("'payments'") && d.contains("GET /v1/customer")),
        "{body}"
    );
    assert!(
        body["hint"]
            .as_str()
            .is_some_and(|h| h.contains("/v1/customers")),
        "{body}"
    );

    // One segment too many.
    let body = problem(
        c.get(gw.url("/payments/v1/payment_intents/pi_test123/capture"))
            .send()
            .await
            .expect("request"),
        404,
        "unknown_operation",
    )
    .await;
    assert!(
        body["nearest"]
            .as_array()
            .is_some_and(|n| n.iter().any(|p| p
                .as_str()
                .is_some_and(|p| p.starts_with("/v1/payment_intents")))),
        "{body}"
    );

    // Nothing close: no `nearest`, still explained.
    let body = problem(
        c.get(gw.url("/payments/zzzz"))
            .send()
            .await
            .expect("request"),
        404,
        "unknown_operation",
    )
    .await;
    assert!(body.get("nearest").is_none(), "{body}");
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow() {
    let contract = demo_contract();
    let gw = demo_gateway().await;
    let c = common::client();
    let templates: BTreeSet<&str> = contract
        .operations
        .iter()
        .map(|op| op.template.as_str())
        .collect();
    for template in templates {
        let mut documented: BTreeSet<String> = contract
            .operations
            .iter()
            .filter(|op| op.template == template)
            .map(|op| op.method.to_string())
            .collect();
        if documented.contains("GET") {
            documented.insert("HEAD".into());
        }
        let wrong = [Method::PATCH, Method::PUT, Method::DELETE, Method::POST]
            .into_iter()
            .find(|m| !documented.contains(m.as_str()))
            .expect("some method is not documented");
        let resp = c
            .request(
                wrong.clone(),
                gw.url(&format!("/payments{}", concrete(template))),
            )
            .send()
            .await
            .expect("request");
        let allow_header: BTreeSet<String> = header(&resp, "allow")
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        let body = problem(resp, 405, "method_not_allowed").await;
        assert_eq!(allow_header, documented, "Allow of {wrong} {template}");
        let allow_body: BTreeSet<String> = body["allow"]
            .as_array()
            .expect("allow")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        assert_eq!(allow_body, documented, "{body}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(template) && d.contains(wrong.as_str())),
            "{body}"
        );
    }
}

/// A small contract: one operation without any example, one with, one
/// documented success without a body.
const NO_EXAMPLE_CONTRACT: &str = r#"openapi: 3.0.3
info: { title: Things, version: "1" }
paths:
  /v1/things:
    get:
      operationId: listThings
      responses:
        "200":
          description: ok, with neither example nor schema
          content:
            application/json: {}
    post:
      operationId: createThing
      responses:
        "201":
          description: created
          content:
            application/json:
              example: { id: thing_1 }
  /v1/widgets/{widget}:
    get:
      operationId: getWidget
      responses:
        "200":
          description: a schema, no example
          content:
            application/json:
              schema:
                type: object
                required: [id, size, kind, created]
                properties:
                  id: { type: string, minLength: 3 }
                  size: { type: integer, minimum: 1, maximum: 9 }
                  kind: { type: string, enum: [round, square] }
                  created: { type: string, format: date-time }
  /v1/things/{thing}:
    delete:
      operationId: deleteThing
      responses:
        "204": { description: gone }
"#;

#[tokio::test]
async fn an_operation_without_example_is_501_no_example() {
    let config = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: things\n    prefix: /things\n    contract: things.yaml\n    mode: facade\n    max_body: 1KiB\n";
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("things.yaml", NO_EXAMPLE_CONTRACT),
    ]))
    .await;
    for c in [common::client(), common::h2c_client()] {
        let body = problem(
            c.get(gw.url("/things/v1/things"))
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
                .is_some_and(|d| d.contains("listThings") && d.contains("'things'")),
            "{body}"
        );
        assert_eq!(body["rule"], "apis.things.contract");
        assert_eq!(body["stage"], "dispatch");
        assert_eq!(body["retryable"], false);

        // The other operations of the same contract still answer.
        let r = c
            .post(gw.url("/things/v1/things"))
            .json(&serde_json::json!({"name": "x"}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
        assert_eq!(header(&r, "content-type"), "application/json");
        assert_eq!(r.bytes().await.expect("body"), r#"{"id":"thing_1"}"#);

        let r = c
            .delete(gw.url("/things/v1/things/thing_1"))
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "sandgate-source"), "example");
        assert!(r.bytes().await.expect("body").is_empty());
    }
}

#[tokio::test]
async fn a_facade_refuses_bodies_over_its_limit() {
    let config = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: things\n    prefix: /things\n    contract: things.yaml\n    mode: facade\n    max_body: 1KiB\n";
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("things.yaml", NO_EXAMPLE_CONTRACT),
    ]))
    .await;
    let c = common::client();
    // Declared: refused on Content-Length.
    let body = problem(
        c.post(gw.url("/things/v1/things"))
            .body(vec![b'x'; 2048])
            .send()
            .await
            .expect("request"),
        413,
        "payload_too_large",
    )
    .await;
    assert_eq!(body["rule"], "apis.things.max_body");
    // Chunked: refused while reading, not ignored. The rest of the body
    // is left unread, so the connection is announced closed rather than
    // reused (the next request on this client must still succeed).
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..4).map(|_| Ok(Bytes::from(vec![b'x'; 512]))).collect();
    let resp = c
        .post(gw.url("/things/v1/things"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("request");
    assert_eq!(header(&resp, "connection"), "close");
    let body = problem(resp, 413, "payload_too_large").await;
    assert_eq!(body["rule"], "apis.things.max_body");
    // At the limit: answered.
    let r = c
        .post(gw.url("/things/v1/things"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn an_operation_with_a_schema_but_no_example_is_answered_from_the_schema() {
    let config = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: things\n    prefix: /things\n    contract: things.yaml\n    mode: facade\n";
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("things.yaml", NO_EXAMPLE_CONTRACT),
    ]))
    .await;
    let c = common::client();
    let get = |path: &'static str| c.get(gw.url(path)).send();
    let a = get("/things/v1/widgets/w_1").await.expect("request");
    assert_eq!(a.status(), 200);
    assert_eq!(header(&a, "sandgate-source"), "generated");
    let a: serde_json::Value = a.json().await.expect("JSON");
    assert!(a["id"].as_str().is_some_and(|s| s.len() >= 3), "{a}");
    assert!((1..=9).contains(&a["size"].as_i64().expect("size")), "{a}");
    assert!(
        ["round", "square"].contains(&a["kind"].as_str().expect("kind")),
        "{a}"
    );
    assert_eq!(a["created"], "2026-01-01T00:00:00Z");
    // The same request, the same answer.
    let again: serde_json::Value = get("/things/v1/widgets/w_1")
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(a, again);

    // `Prefer: dynamic=true` needs a schema: createThing documents only an example.
    let resp = c
        .post(gw.url("/things/v1/things"))
        .header("prefer", "dynamic=true")
        .send()
        .await
        .expect("request");
    problem(resp, 422, "unsatisfiable_preference").await;
}
