//! Modes that reach a real backend with a contract: `hybrid` (scenario rules
//! and fixtures first, else the upstream), `record` (proxy, and write the
//! exchanges as scrubbed fixtures) then replay in `facade` mode, and drift
//! checks of live responses (metric, log, `Sandgate-Contract-Drift`).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{PAYMENTS, TestGateway, TestUpstream, UpBody, sandbox_dir, start_gateway};
use http::Response;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// A customer as the contract describes it.
fn customer(id: &str, description: &str) -> Value {
    json!({
        "id": id, "object": "customer", "created": 1767225600,
        "email": "dev@acme.test", "name": "Acme", "description": description,
        "phone": null, "metadata": {}, "livemode": false
    })
}

fn json_response(status: u16, content_type: &'static str, body: String) -> Response<UpBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
    r.headers_mut()
        .insert("content-type", http::HeaderValue::from_static(content_type));
    r
}

/// A backend that answers customers (and drifts on some ids).
async fn backend() -> TestUpstream {
    TestUpstream::start(|parts, _body| async move {
        let path = parts.uri.path().to_owned();
        let id = path.rsplit('/').next().unwrap_or_default().to_owned();
        match (parts.method.as_str(), id.as_str()) {
            ("POST", "customers") => json_response(
                200,
                "application/json",
                customer("cus_new", "paid with 5105105105105100").to_string(),
            ),
            (_, "cus_bad") => json_response(
                200,
                "application/json",
                json!({"id": "cus_bad", "object": "customer", "created": "yesterday"}).to_string(),
            ),
            (_, "cus_html") => json_response(200, "text/html", "<h1>oops</h1>".into()),
            (_, "cus_teapot") => json_response(418, "application/json", "{}".into()),
            _ => json_response(
                200,
                "application/json",
                customer(&id, "from the backend").to_string(),
            ),
        }
    })
    .await
}

fn config(mode: &str, upstream: &TestUpstream, extra: &str) -> String {
    format!(
        "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: {mode}\n    upstream: {{ url: \"http://{}\", timeout: 2s }}\n{extra}",
        upstream.addr
    )
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

const FIXTURE: &str = r#"fixtures:
  - name: acme
    method: GET
    path: /v1/customers/cus_acme
    response:
      status: 200
      body: { id: cus_acme, object: customer, created: 1767225600, email: dev@acme.test, name: Acme, description: from a fixture, phone: null, metadata: {}, livemode: false }
"#;

#[tokio::test]
async fn hybrid_answers_rules_and_fixtures_and_proxies_the_rest() {
    let up = backend().await;
    let gw = start_gateway(sandbox_dir(&[
        (
            "sandgate.yaml",
            &config(
                "hybrid",
                &up,
                "    scenarios: scenarios.yaml\n    fixtures: fixtures\n",
            ),
        ),
        ("contracts/payments.yaml", PAYMENTS),
        (
            "scenarios.yaml",
            include_str!("../fixtures/payments/scenarios.yaml"),
        ),
        ("fixtures/acme.yaml", FIXTURE),
    ]))
    .await;
    let c = common::client();

    // A fixture matches: the backend is not asked.
    let resp = c
        .get(gw.url("/payments/v1/customers/cus_acme"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "sandgate-source").as_deref(), Some("fixture"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["description"], "from a fixture");
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    // A scenario rule matches: the backend is not asked either.
    let resp = c
        .post(gw.url("/payments/v1/payment_intents"))
        .form(&[
            ("amount", "2000"),
            ("currency", "usd"),
            ("payment_method", "pm_card_visa_chargeDeclined"),
            ("confirm", "true"),
        ])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 402);
    assert_eq!(
        header(&resp, "sandgate-source").as_deref(),
        Some("scenario")
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    // A real card number is refused before it can reach the backend.
    let resp = c
        .post(gw.url("/payments/v1/payment_intents"))
        .form(&[
            ("amount", "2000"),
            ("currency", "usd"),
            ("payment_method_data[type]", "card"),
            ("payment_method_data[card][number]", "5105105105105100"),
        ])
        .send()
        .await
        .expect("request");
    let p = resp.json::<Value>().await.expect("json");
    assert_eq!(p["code"], "real_card_number", "{p}");
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    // Nothing matches: the backend answers, with the request body intact.
    let resp = c
        .get(gw.url("/payments/v1/customers/cus_other"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "sandgate-source"), None);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["description"], "from the backend");
    let resp = c
        .post(gw.url("/payments/v1/customers"))
        .form(&[("email", "new@acme.test"), ("name", "New")])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].uri, "/v1/customers/cus_other");
    assert_eq!(seen[1].method, http::Method::POST);
    assert_eq!(
        seen[1].body_len,
        "email=new%40acme.test&name=New".len(),
        "the form reached the backend whole"
    );
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn live_responses_are_checked_for_drift() {
    let up = backend().await;
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config("upstream", &up, "")),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await;
    let c = common::client();
    // (id, the drift header names, a piece of the backend's own body)
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("cus_good", None, "from the backend"),
        ("cus_bad", Some("/created, /description"), "yesterday"),
        ("cus_html", Some("content-type"), "<h1>oops</h1>"),
        ("cus_teapot", Some("status"), "{}"),
    ];
    for (id, drift, sent) in cases {
        let resp = c
            .get(gw.url(&format!("/payments/v1/customers/{id}")))
            .send()
            .await
            .expect("request");
        let got = header(&resp, "sandgate-contract-drift");
        match drift {
            None => assert_eq!(got, None, "{id}"),
            Some(want) => {
                let got = got.unwrap_or_default();
                // Every named place is reported (others may follow).
                for part in want.split(", ") {
                    assert!(got.split(", ").any(|g| g == part), "{id}: {got}");
                }
            }
        }
        // The backend's answer is passed on as it came.
        let text = resp.text().await.expect("body");
        assert!(text.contains(sent), "{id}: {text}");
    }
    let metrics = c
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("sandgate_contract_drift_total")
                && l.contains("api=\"payments\"")
                && l.contains("operation=\"getCustomer\"")
        })
        .unwrap_or_else(|| panic!("no drift metric in:\n{metrics}"));
    assert!(line.ends_with(" 3"), "{line}");
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn drift_sample_zero_checks_nothing() {
    let up = backend().await;
    let gw = start_gateway(sandbox_dir(&[
        (
            "sandgate.yaml",
            &config("upstream", &up, "    drift: { sample: 0 }\n"),
        ),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await;
    let resp = common::client()
        .get(gw.url("/payments/v1/customers/cus_bad"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "sandgate-contract-drift"), None);
    assert!(gw.shutdown().await);
}

/// Waits until `dir` holds `n` recordings and returns their texts.
async fn recordings(dir: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut texts: Vec<String> = std::fs::read_dir(dir)
            .expect("fixtures dir")
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("recorded-") && name.ends_with(".yaml")
            })
            .map(|e| std::fs::read_to_string(e.path()).expect("read"))
            .collect();
        if texts.len() >= n || Instant::now() > deadline {
            texts.sort();
            return texts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn record_then_replay_without_the_backend() {
    let up = backend().await;
    let dir = sandbox_dir(&[
        (
            "sandgate.yaml",
            &config("record", &up, "    fixtures: fixtures\n"),
        ),
        ("contracts/payments.yaml", PAYMENTS),
    ]);
    std::fs::create_dir(dir.path().join("fixtures")).expect("mkdir");
    let gw = start_gateway(dir).await;
    let c = common::client();
    let get = c
        .get(gw.url("/payments/v1/customers/cus_rec"))
        .header("authorization", "Bearer secret-token-xyz")
        .header("cookie", "session=cookie-secret")
        .send()
        .await
        .expect("request");
    assert_eq!(get.status(), 200);
    let recorded_get: Value = get.json().await.expect("json");
    let post = c
        .post(gw.url("/payments/v1/customers?expand[]=sources"))
        .header("x-api-key", "sk_sandbox_not_recorded")
        .form(&[("email", "new@acme.test"), ("name", "New")])
        .send()
        .await
        .expect("request");
    assert_eq!(post.status(), 200);
    assert_eq!(up.seen().len(), 2);

    let fixtures = gw.dir.path().join("fixtures");
    let texts = recordings(&fixtures, 2).await;
    assert_eq!(texts.len(), 2, "{texts:?}");
    let all = texts.join("\n");
    for secret in [
        "secret-token-xyz",
        "cookie-secret",
        "sk_sandbox_not_recorded",
        "5105105105105100",
    ] {
        assert!(!all.contains(secret), "{secret} recorded:\n{all}");
    }
    assert!(all.contains("paid with ************5100"), "{all}");
    assert!(all.contains("/v1/customers/cus_rec"), "{all}");

    // Replay: the same sandbox in facade mode answers from the recordings.
    let TestGateway { running, dir, .. } = gw;
    assert!(running.expect("running").shutdown().await);
    let yaml = std::fs::read_to_string(dir.path().join("sandgate.yaml")).expect("read");
    std::fs::write(
        dir.path().join("sandgate.yaml"),
        yaml.replace("mode: record", "mode: facade"),
    )
    .expect("write");
    let gw = start_gateway(dir).await;
    let resp = c
        .get(gw.url("/payments/v1/customers/cus_rec"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "sandgate-source").as_deref(), Some("fixture"));
    assert_eq!(resp.json::<Value>().await.expect("json"), recorded_get);
    let resp = c
        .post(gw.url("/payments/v1/customers?expand[]=sources"))
        .form(&[("email", "new@acme.test"), ("name", "New")])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "sandgate-source").as_deref(), Some("fixture"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["id"], "cus_new");
    assert_eq!(body["description"], "paid with ************5100");
    assert_eq!(up.seen().len(), 2, "the replay never reached the backend");
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn modes_that_need_more_are_load_errors() {
    let up = backend().await;
    for (extra_mode, extra, want) in [
        ("hybrid", "", "neither `scenarios` nor `fixtures`"),
        ("record", "", "no `fixtures` directory"),
        (
            "upstream",
            "    drift: { sample: 2 }\n",
            "drift.sample 2 must be between 0 and 1",
        ),
    ] {
        let dir = sandbox_dir(&[
            ("sandgate.yaml", &config(extra_mode, &up, extra)),
            ("contracts/payments.yaml", PAYMENTS),
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
        .expect_err(extra_mode)
        .to_string();
        assert!(errors.contains(want), "{extra_mode}: {errors}");
        assert!(errors.contains("sandgate.yaml:"), "{errors}");
    }
}
