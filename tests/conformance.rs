//! The bundled demo (its own `sandgate.yaml`, contract and scenario rules)
//! answers as its contract says, the property schemathesis checks in CI
//! (`scripts/schemathesis.sh`), kept here as a data-driven table that runs
//! with `cargo test`: each row is a request (among them every one
//! schemathesis found accepted or undocumented), the status it must get,
//! and every answer is checked against `contracts/payments.yaml`: the status
//! is documented for the operation, the media type is documented for that
//! status, and the body matches that media type's schema. Refusals are the
//! gateway's problem+json, which the contract documents.

mod common;

use std::path::Path;

use common::{TestGateway, sandbox_dir, start_gateway};
use http::Method;
use sandgate::contract::Contract;
use sandgate::contract::schema::{self, Compiled, Direction};
use sandgate::tenants;
use serde_json::Value;

/// The demo's files, as compiled into the binary, on a free port.
async fn demo_gateway() -> TestGateway {
    let files: Vec<(&str, String)> = sandgate::demo::FILES
        .iter()
        .map(|(name, text)| {
            let text = if *name == "sandgate.yaml" {
                assert!(text.contains("addr: 127.0.0.1:8080"), "demo listener");
                text.replace("addr: 127.0.0.1:8080", "addr: 127.0.0.1:0")
            } else {
                (*text).to_owned()
            };
            (*name, text)
        })
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    start_gateway(sandbox_dir(&refs)).await
}

/// A demo tenant's API key, provisioned in the gateway's registry.
async fn api_key(gw: &TestGateway) -> String {
    let (t, creds) = tenants::new_tenant(
        "Demo",
        "demo@example.com",
        tenants::now_secs(),
        std::time::Duration::from_secs(tenants::DAY),
        "sk_sandbox_",
    )
    .expect("tenant");
    gw.running
        .as_ref()
        .expect("running")
        .gateway
        .registry()
        .put(&t)
        .await
        .expect("store tenant");
    creds.api_key
}

/// One request of the table.
struct Row {
    /// What it shows.
    what: &'static str,
    method: Method,
    /// The operation's path template in the contract.
    template: &'static str,
    /// The path and query sent, under `/payments`.
    target: &'static str,
    /// `Content-Type` and body, when there is one.
    body: Option<(&'static str, &'static str)>,
    /// Whether to send the demo tenant's key.
    authenticated: bool,
    /// The status it must get.
    status: u16,
    /// For refusals: the problem `code`, and a pointer that must be in `errors`.
    refusal: Option<(&'static str, Option<&'static str>)>,
}

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

fn rows() -> Vec<Row> {
    let ok = |what, method, template, target, body| Row {
        what,
        method,
        template,
        target,
        body,
        authenticated: true,
        status: 200,
        refusal: None,
    };
    let refused = |what, method, template, target, body, status, code, pointer| Row {
        what,
        method,
        template,
        target,
        body,
        authenticated: true,
        status,
        refusal: Some((code, pointer)),
    };
    vec![
        ok(
            "a documented customer",
            Method::GET,
            "/v1/customers/{customer}",
            "/v1/customers/cus_NffrFeUfNV2Hib",
            None,
        ),
        ok(
            "a payment intent as JSON",
            Method::POST,
            "/v1/payment_intents",
            "/v1/payment_intents",
            Some((JSON, r#"{"amount": 2000, "currency": "usd"}"#)),
        ),
        ok(
            "an array-free form with metadata",
            Method::POST,
            "/v1/customers/{customer}",
            "/v1/customers/cus_00K",
            Some((FORM, "description=&metadata[order_id]=6735")),
        ),
        refused(
            "a declined test card: the API's own error",
            Method::POST,
            "/v1/payment_intents",
            "/v1/payment_intents",
            Some((
                FORM,
                "amount=2000&currency=usd&payment_method=pm_card_visa_chargeDeclined",
            )),
            402,
            "",
            None,
        ),
        Row {
            what: "no credentials (schemathesis: undocumented problem+json on 401)",
            authenticated: false,
            ..refused(
                "",
                Method::DELETE,
                "/v1/customers/{customer}",
                "/v1/customers/cus_NffrFeUfNV2Hib",
                None,
                401,
                "missing_credentials",
                None,
            )
        },
        refused(
            "a malformed customer id (schemathesis: undocumented 400)",
            Method::GET,
            "/v1/customers/{customer}",
            "/v1/customers/e%C2%97",
            None,
            400,
            "invalid_request",
            Some("/path/customer"),
        ),
        refused(
            "a malformed customer id on delete",
            Method::DELETE,
            "/v1/customers/{customer}",
            "/v1/customers/7%C2%90",
            None,
            400,
            "invalid_request",
            Some("/path/customer"),
        ),
        refused(
            "a malformed payment intent id",
            Method::GET,
            "/v1/payment_intents/{intent}",
            "/v1/payment_intents/%22%C3%86",
            None,
            400,
            "invalid_request",
            Some("/path/intent"),
        ),
        refused(
            "a required body that is missing (schemathesis: undocumented problem+json on 400)",
            Method::POST,
            "/v1/refunds",
            "/v1/refunds",
            None,
            400,
            "invalid_request",
            Some("/body"),
        ),
        refused(
            "a query value over its maxLength",
            Method::GET,
            "/v1/customers",
            "/v1/customers?starting_after=00000000000000000000000000000000000000000000000000000000000000000",
            None,
            400,
            "invalid_request",
            Some("/query/starting_after"),
        ),
        refused(
            "a form field with an empty name (schemathesis: accepted, `additionalProperties`)",
            Method::POST,
            "/v1/customers",
            "/v1/customers",
            Some((FORM, "description=&=null")),
            400,
            "invalid_request",
            Some("/body"),
        ),
        refused(
            "only a form field with an empty name (schemathesis: accepted)",
            Method::POST,
            "/v1/customers/{customer}",
            "/v1/customers/cus_00K",
            Some((FORM, "=null")),
            400,
            "invalid_request",
            Some("/body"),
        ),
        refused(
            "a form field in broken bracket notation",
            Method::POST,
            "/v1/customers",
            "/v1/customers",
            Some((FORM, "metadata[order_id=6735")),
            400,
            "invalid_request",
            Some("/body"),
        ),
        refused(
            "a single-valued form field given twice",
            Method::POST,
            "/v1/customers",
            "/v1/customers",
            Some((FORM, "email=a@example.com&email=b@example.com")),
            400,
            "invalid_request",
            Some("/body/email"),
        ),
        refused(
            "a form field given as a value and with brackets",
            Method::POST,
            "/v1/customers/{customer}",
            "/v1/customers/cus_00K",
            Some((FORM, "metadata[order_id]=6735&metadata=")),
            400,
            "invalid_request",
            Some("/body/metadata"),
        ),
        refused(
            "a single-valued query parameter given twice",
            Method::GET,
            "/v1/customers",
            "/v1/customers?limit=5&limit=ten",
            None,
            400,
            "invalid_request",
            Some("/query/limit"),
        ),
        refused(
            "a body that is neither JSON nor a form",
            Method::POST,
            "/v1/customers",
            "/v1/customers",
            Some(("text/plain", "hello")),
            415,
            "unsupported_media_type",
            None,
        ),
        refused(
            "a real-looking card number",
            Method::POST,
            "/v1/payment_intents",
            "/v1/payment_intents",
            Some((
                FORM,
                "amount=2000&currency=usd&payment_method_data[card][number]=4111111111111111",
            )),
            400,
            "real_card_number",
            None,
        ),
    ]
}

/// The converted, compiled schema of `op`'s response `status` for `media`.
fn response_schema(
    contract: &Contract,
    method: &Method,
    template: &str,
    status: u16,
    media: &str,
) -> Result<Compiled, String> {
    let doc = &contract.doc;
    let op = doc
        .pointer(&format!(
            "/paths/{}/{}",
            sandgate::contract::escape_pointer(template),
            method.as_str().to_ascii_lowercase()
        ))
        .ok_or_else(|| format!("{method} {template} is not in the contract"))?;
    let documented: Vec<&String> = op["responses"]
        .as_object()
        .map(|r| r.keys().collect())
        .unwrap_or_default();
    let response = op["responses"]
        .get(status.to_string())
        .ok_or_else(|| format!("status {status} is not documented (only {documented:?})"))?;
    let response = sandgate::contract::resolve(doc, response);
    let content = &response["content"];
    let media_obj = content.get(media).ok_or_else(|| {
        format!(
            "media type {media} is not documented for {status} (only {:?})",
            content.as_object().map(|c| c.keys().collect::<Vec<_>>())
        )
    })?;
    let components = schema::components(doc, Direction::Response);
    Compiled::new(&schema::rooted(
        schema::convert(&media_obj["schema"], Direction::Response),
        &components,
    ))
}

#[tokio::test]
async fn every_answer_of_the_demo_is_documented_by_its_contract() {
    let contract = Contract::from_text(Path::new("contracts/payments.yaml"), common::PAYMENTS)
        .unwrap_or_else(|e| panic!("the demo contract compiles: {e:?}"));
    let gw = demo_gateway().await;
    let key = api_key(&gw).await;
    let c = common::client();
    for row in rows() {
        let mut req = c.request(
            row.method.clone(),
            gw.url(&format!("/payments{}", row.target)),
        );
        if row.authenticated {
            req = req.bearer_auth(&key);
        }
        if let Some((ct, body)) = row.body {
            req = req.header("content-type", ct).body(body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let media = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or_default()
            .trim()
            .to_owned();
        let text = resp.text().await.expect("body");
        assert_eq!(status, row.status, "{}: {text}", row.what);
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: the body is JSON ({e}): {text}", row.what));
        let compiled = response_schema(&contract, &row.method, row.template, status, &media)
            .unwrap_or_else(|e| panic!("{}: {e}", row.what));
        let violations = compiled.violations(&body, 10);
        assert!(
            violations.is_empty(),
            "{}: the answer does not match the contract: {violations:?}\n{text}",
            row.what
        );
        match row.refusal {
            Some((code, pointer)) if !code.is_empty() => {
                assert_eq!(media, "application/problem+json", "{}", row.what);
                assert_eq!(body["code"], code, "{}: {text}", row.what);
                if let Some(pointer) = pointer {
                    let at: Vec<&str> = body["errors"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["pointer"].as_str())
                        .collect();
                    assert!(at.contains(&pointer), "{}: {pointer} in {at:?}", row.what);
                }
            }
            _ => assert_eq!(media, "application/json", "{}", row.what),
        }
    }
}
