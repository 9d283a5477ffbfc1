//! Usage analytics end to end: the real gateway, real requests, and real
//! HTTP receivers in the test for the PostHog batch sink and the webhooks.
//! Provisioning → `sandbox_provisioned` with its properties and
//! `distinct_id`; a sequence of requests drives first login, sessions
//! (the tenant clock advanced 31m starts session 2), features (once per
//! session), workflows, data uploads (not for a dry run), errors, help and
//! milestones; alerts fire once each (high intent, error risk, evaluation
//! complete, and a stall after 3 days of tenant time); the engagement
//! endpoints add the signals up; the JSON-lines file rotates at its size;
//! no credential or card number appears in any event or webhook body; a
//! dead receiver leaves requests alone and is counted in `/metrics`; two
//! replicas sharing a real Redis emit each "once" event once; a backend's
//! 201 is an upload, a simulated dry run is not.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{PAYMENTS, TestGateway, TestUpstream, sandbox_dir, start_gateway};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const SCENARIOS: &str = include_str!("../fixtures/payments/scenarios.yaml");

/// The admin token (`admin.token_env: CARGO_PKG_NAME`); the PostHog key is
/// read from the same variable.
const TOKEN: &str = env!("CARGO_PKG_NAME");

/// How long a test waits for something that should happen.
const WAIT: Duration = Duration::from_secs(15);

/// A real HTTP server recording every JSON body posted to it.
struct Receiver {
    addr: std::net::SocketAddr,
    rx: mpsc::UnboundedReceiver<Value>,
    /// Every body received so far (raw text), for the secrecy checks.
    raw: Arc<Mutex<Vec<String>>>,
    /// Every body received so far, parsed.
    bodies: Vec<Value>,
}

impl Receiver {
    async fn start() -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let raw2 = raw.clone();
        let up = TestUpstream::start(move |_parts, body: Bytes| {
            let (tx, raw) = (tx.clone(), raw2.clone());
            async move {
                raw.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&body).into_owned());
                let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                let mut r = http::Response::new(Full::new(Bytes::from_static(b"{}")).boxed());
                r.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
        })
        .await;
        Receiver {
            addr: up.addr,
            rx,
            raw,
            bodies: Vec::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until `pred` holds for the bodies received so far.
    async fn until(&mut self, what: &str, pred: impl Fn(&[Value]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !pred(&self.bodies) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(v)) => self.bodies.push(v),
                _ => panic!("waited in vain for {what}; got {:#?}", self.bodies),
            }
        }
    }

    fn raw(&self) -> Vec<String> {
        self.raw.lock().expect("lock").clone()
    }
}

/// The events of PostHog batch bodies.
fn events(bodies: &[Value]) -> Vec<&Value> {
    bodies
        .iter()
        .flat_map(|b| b["batch"].as_array().into_iter().flatten())
        .collect()
}

/// The events named `name` for sandbox `id`.
fn named<'a>(bodies: &'a [Value], name: &str, id: &str) -> Vec<&'a Value> {
    events(bodies)
        .into_iter()
        .filter(|e| e["event"] == name && e["distinct_id"] == id)
        .collect()
}

/// Webhook texts.
fn texts(bodies: &[Value]) -> Vec<String> {
    bodies
        .iter()
        .filter_map(|b| b["text"].as_str().map(str::to_owned))
        .collect()
}

/// A stateful payments sandbox with analytics (`analytics` is YAML for
/// the section's body, indented by two spaces).
fn dir(store: &str, analytics: &str) -> tempfile::TempDir {
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\n{store}admin: {{ token_env: CARGO_PKG_NAME }}\nauth:\n  api_keys: {{ prefix: sk_sandbox_, live_prefixes: [sk_live_] }}\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    scenarios: fixtures/payments/scenarios.yaml\n    mode: facade\n    state: {{}}\nanalytics:\n{analytics}"
    );
    sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
        ("fixtures/payments/scenarios.yaml", SCENARIOS),
    ])
}

/// Workflows and milestones of the tests.
const TAXONOMY: &str = "  session_idle: 30m
  workflows:
    - name: onboard
      steps: [createCustomer, getCustomer]
    - name: pay
      api: payments
      steps: [createPaymentIntent, confirmPaymentIntent]
  milestones:
    - { name: first_customer, operation: createCustomer }
    - { name: paid, workflow: pay }
    - { name: asked_for_help, event: sandbox_help_requested }
";

/// Provisions a sandbox; returns (id, API key).
async fn provision(gw: &TestGateway, body: Value) -> (String, String) {
    let r = common::client()
        .post(gw.admin_url("/internal/sandboxes"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("provision");
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.expect("json");
    (
        v["sandbox_id"].as_str().expect("id").to_owned(),
        v["credentials"]["api_key"]
            .as_str()
            .expect("key")
            .to_owned(),
    )
}

/// Sends a request with the tenant's key (and extra headers); (status, body).
async fn send(
    gw: &TestGateway,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut rb = common::client()
        .request(method, gw.url(path))
        .bearer_auth(key);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get(gw: &TestGateway, key: &str, path: &str) -> (u16, Value) {
    send(gw, key, reqwest::Method::GET, path, None, &[]).await
}

async fn post(gw: &TestGateway, key: &str, path: &str, body: Value) -> (u16, Value) {
    send(gw, key, reqwest::Method::POST, path, Some(body), &[]).await
}

async fn admin_get(gw: &TestGateway, path: &str) -> Value {
    let r = common::client()
        .get(gw.admin_url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.expect("json")
}

/// The lines of the file sink (the file and its rotations, oldest first).
fn file_lines(dir: &std::path::Path) -> (Vec<Value>, Vec<u64>) {
    let base = dir.join("events/events.jsonl");
    let mut files = Vec::new();
    for n in (1..=20).rev() {
        let mut p = base.as_os_str().to_owned();
        p.push(format!(".{n}"));
        files.push(std::path::PathBuf::from(p));
    }
    files.push(base);
    let mut lines = Vec::new();
    let mut sizes = Vec::new();
    for f in files.iter().filter(|f| f.exists()) {
        let text = std::fs::read_to_string(f).expect("read");
        sizes.push(text.len() as u64);
        for l in text.lines() {
            lines.push(serde_json::from_str(l).expect("a JSON line"));
        }
    }
    (lines, sizes)
}

#[tokio::test]
async fn events_scores_and_alerts_from_real_requests() {
    let mut posthog = Receiver::start().await;
    let mut hooks = Receiver::start().await;
    let analytics = format!(
        "{TAXONOMY}  sinks:\n    file: {{ path: events/events.jsonl, max_size: 2KiB, keep: 20 }}\n    posthog: {{ url: \"{}\", api_key_env: CARGO_PKG_NAME, flush_interval: 20ms }}\n  alerts:\n    webhooks: [\"{}\"]\n    stall_after: 3d\n    check_interval: 50ms\n",
        posthog.url("/batch/"),
        hooks.url("/hook")
    );
    let gw = start_gateway(dir("", &analytics)).await;

    // Provisioning: sandbox_provisioned, distinct_id = the sandbox id.
    let (id, key) = provision(
        &gw,
        json!({"prospect_company": "Acme Corp", "prospect_email": "dev@acme.test",
               "deal_id": "D-42", "industry": "fintech", "persona": "developer"}),
    )
    .await;
    let (other, _) = provision(
        &gw,
        json!({"prospect_company": "Idle Inc", "prospect_email": "x@idle.test"}),
    )
    .await;
    posthog
        .until("sandbox_provisioned", |b| {
            !named(b, "sandbox_provisioned", &id).is_empty()
        })
        .await;
    assert_eq!(
        posthog.bodies[0]["api_key"], TOKEN,
        "the key from api_key_env"
    );
    let p = named(&posthog.bodies, "sandbox_provisioned", &id)[0].clone();
    assert_eq!(p["properties"]["deal_id"], "D-42");
    assert_eq!(p["properties"]["industry"], "fintech");
    assert_eq!(p["properties"]["persona"], "developer");
    assert_eq!(p["properties"]["sample_data_records"], 0);
    assert_eq!(p["properties"]["sandbox_id"], id.as_str());
    assert!(
        p["properties"]["event_id"]
            .as_str()
            .is_some_and(|s| s.len() == 26)
    );
    assert!(humantime::parse_rfc3339(p["timestamp"].as_str().expect("timestamp")).is_ok());

    // Session 1: first login, session start, features once per session.
    assert_eq!(get(&gw, &key, "/payments/v1/customers").await.0, 200);
    assert_eq!(get(&gw, &key, "/payments/v1/customers").await.0, 200);
    // A dry run uses the feature but creates nothing (no data_uploaded),
    // and a card number in its body goes nowhere.
    let (s, _) = send(
        &gw,
        &key,
        reqwest::Method::POST,
        "/payments/v1/customers",
        Some(json!({"name": "dry", "metadata": {"card": "4242424242424242"}})),
        &[("x-dry-run", "true")],
    )
    .await;
    assert_eq!(s, 200);
    let (s, cus) = post(
        &gw,
        &key,
        "/payments/v1/customers",
        json!({"name": "Ada", "email": "ada@example.com"}),
    )
    .await;
    assert_eq!(s, 200, "{cus}");
    let cus_id = cus["id"].as_str().expect("id");
    assert_eq!(
        get(&gw, &key, &format!("/payments/v1/customers/{cus_id}"))
            .await
            .0,
        200
    );
    let (s, pi) = post(
        &gw,
        &key,
        "/payments/v1/payment_intents",
        json!({"amount": 1500, "currency": "eur"}),
    )
    .await;
    assert_eq!(s, 200, "{pi}");
    let pi_id = pi["id"].as_str().expect("id");
    let (s, c) = post(
        &gw,
        &key,
        &format!("/payments/v1/payment_intents/{pi_id}/confirm"),
        json!({"payment_method": "pm_card_visa"}),
    )
    .await;
    assert_eq!((s, &c["status"]), (200, &json!("succeeded")), "{c}");
    // Three validation errors in the session: error risk fires once.
    for bad in [5, 6, 7] {
        let (s, _) = post(&gw, &key, "/payments/v1/customers", json!({"email": bad})).await;
        assert_eq!(s, 400);
    }
    let (s, help) = get(&gw, &key, "/_sandbox/help?feature=createCustomer").await;
    assert_eq!(s, 200, "{help}");
    assert_eq!(help["sandbox_id"], id.as_str());
    assert_eq!(help["apis"][0]["name"], "payments");
    assert!(
        help["apis"][0]["operations"]
            .as_array()
            .expect("operations")
            .iter()
            .any(|o| o["operation_id"] == "confirmPaymentIntent" && o["tag"] == "payment_intents")
    );
    assert!(help["endpoints"].as_array().is_some_and(|e| e.len() >= 5));

    posthog
        .until("the help request's milestone", |b| {
            named(b, "sandbox_milestone_achieved", &id).len() == 3
        })
        .await;
    let b = &posthog.bodies;
    let login = named(b, "sandbox_first_login", &id);
    assert_eq!(login.len(), 1);
    assert_eq!(login[0]["properties"]["login_method"], "api_key");
    assert!(
        login[0]["properties"]["hours_since_provisioned"]
            .as_f64()
            .is_some_and(|h| h < 1.0)
    );
    let sessions = named(b, "sandbox_session_started", &id);
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["properties"]["session_number"], 1);
    assert_eq!(sessions[0]["properties"]["days_since_provisioned"], 0);
    let features: Vec<(String, Value, Value)> = named(b, "sandbox_feature_used", &id)
        .iter()
        .map(|e| {
            (
                e["properties"]["feature_name"]
                    .as_str()
                    .expect("name")
                    .to_owned(),
                e["properties"]["feature_category"].clone(),
                e["properties"]["is_differentiator"].clone(),
            )
        })
        .collect();
    assert_eq!(
        features,
        vec![
            ("listCustomers".into(), json!("customers"), json!(false)),
            ("createCustomer".into(), json!("customers"), json!(false)),
            ("getCustomer".into(), json!("customers"), json!(false)),
            (
                "createPaymentIntent".into(),
                json!("payment_intents"),
                json!(true)
            ),
            (
                "confirmPaymentIntent".into(),
                json!("payment_intents"),
                json!(true)
            ),
        ],
        "each operation once in the session, in order"
    );
    let uploads: Vec<(Value, Value)> = named(b, "sandbox_data_uploaded", &id)
        .iter()
        .map(|e| {
            (
                e["properties"]["data_type"].clone(),
                e["properties"]["record_count"].clone(),
            )
        })
        .collect();
    assert_eq!(
        uploads,
        vec![
            (json!("customers"), json!(1)),
            (json!("payment_intents"), json!(1))
        ],
        "real creations only, not the dry run"
    );
    let workflows: Vec<(Value, Value)> = named(b, "sandbox_workflow_completed", &id)
        .iter()
        .map(|e| {
            (
                e["properties"]["workflow_name"].clone(),
                e["properties"]["steps_completed"].clone(),
            )
        })
        .collect();
    assert_eq!(
        workflows,
        vec![(json!("onboard"), json!(2)), (json!("pay"), json!(2))]
    );
    for w in named(b, "sandbox_workflow_completed", &id) {
        assert!(w["properties"]["duration_seconds"].as_u64().is_some());
    }
    let errors = named(b, "sandbox_error_encountered", &id);
    assert_eq!(errors.len(), 3);
    for e in &errors {
        assert_eq!(e["properties"]["error_type"], "invalid_request");
        assert_eq!(e["properties"]["feature_name"], "createCustomer");
        assert_eq!(e["properties"]["severity"], "low");
    }
    let help_events = named(b, "sandbox_help_requested", &id);
    assert_eq!(help_events.len(), 1);
    assert_eq!(help_events[0]["properties"]["help_type"], "help_page");
    assert_eq!(
        help_events[0]["properties"]["context_feature"],
        "createCustomer"
    );
    let milestones: Vec<(Value, Value, Value)> = named(b, "sandbox_milestone_achieved", &id)
        .iter()
        .map(|e| {
            let p = &e["properties"];
            (
                p["milestone_name"].clone(),
                p["milestone_index"].clone(),
                p["total_milestones"].clone(),
            )
        })
        .collect();
    assert_eq!(
        milestones,
        vec![
            (json!("first_customer"), json!(1), json!(3)),
            (json!("paid"), json!(2), json!(3)),
            (json!("asked_for_help"), json!(3), json!(3)),
        ]
    );
    // Every event carries a unique id, the sandbox and the deal.
    let all = events(b).len();
    let ids: std::collections::HashSet<&str> = events(b)
        .iter()
        .map(|e| e["properties"]["event_id"].as_str().expect("event_id"))
        .collect();
    assert_eq!(ids.len(), all);
    for e in events(b).iter().filter(|e| e["distinct_id"] == id.as_str()) {
        assert_eq!(e["properties"]["deal_id"], "D-42", "{e}");
        assert_eq!(e["properties"]["sandbox_id"], id.as_str());
    }

    // Alerts so far: high intent (data), error risk, evaluation complete; once each.
    hooks.until("three alerts", |b| texts(b).len() >= 3).await;
    let t = texts(&hooks.bodies);
    for (tag, what) in [
        ("[High intent]", "uploaded its own data"),
        ("[Error risk]", "2 errors in one session"),
        ("[Evaluation complete]", "all 3 milestones"),
    ] {
        let found: Vec<&String> = t.iter().filter(|x| x.starts_with(tag)).collect();
        assert_eq!(found.len(), 1, "{tag} once: {t:?}");
        assert!(found[0].contains(what), "{found:?}");
        assert!(
            found[0].contains(&id) && found[0].contains("Acme Corp") && found[0].contains("D-42")
        );
    }

    // Session 2: 31 minutes later on the tenant's clock.
    let (s, _) = post(&gw, &key, "/_sandbox/clock", json!({"advance": "31m"})).await;
    assert_eq!(s, 200);
    assert_eq!(get(&gw, &key, "/payments/v1/customers").await.0, 200);
    posthog
        .until("session 2", |b| {
            named(b, "sandbox_session_started", &id).len() == 2
        })
        .await;
    posthog
        .until("listCustomers again in session 2", |b| {
            named(b, "sandbox_feature_used", &id)
                .iter()
                .filter(|e| e["properties"]["feature_name"] == "listCustomers")
                .count()
                == 2
        })
        .await;
    assert_eq!(
        named(&posthog.bodies, "sandbox_session_started", &id)[1]["properties"]["session_number"],
        2
    );

    // Three days of silence on the tenant's clock: a stall, once.
    let (s, _) = post(&gw, &key, "/_sandbox/clock", json!({"advance": "73h"})).await;
    assert_eq!(s, 200);
    hooks
        .until("the stall alert", |b| {
            texts(b).iter().any(|t| t.starts_with("[Stalled]"))
        })
        .await;
    // Ten more sweeps (50ms each) have every chance to repeat it; none may.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(v) = hooks.rx.try_recv() {
        hooks.bodies.push(v);
    }
    let stalls: Vec<String> = texts(&hooks.bodies)
        .into_iter()
        .filter(|t| t.starts_with("[Stalled]"))
        .collect();
    assert_eq!(stalls.len(), 1, "{stalls:?}");
    assert!(stalls[0].contains(&id), "{stalls:?}");
    assert!(
        !texts(&hooks.bodies).iter().any(|t| t.contains(&other)),
        "the idle sandbox never logged in"
    );
    // The tenant comes back: session 3.
    assert_eq!(get(&gw, &key, "/payments/v1/customers").await.0, 200);
    posthog
        .until("session 3", |b| {
            named(b, "sandbox_session_started", &id).len() == 3
        })
        .await;

    // Engagement: the signals add up by the table.
    let e = admin_get(&gw, &format!("/internal/sandboxes/{id}/engagement")).await;
    let line = |signal: &str| {
        e["breakdown"]
            .as_array()
            .expect("breakdown")
            .iter()
            .find(|l| l["signal"] == signal)
            .map(|l| {
                (
                    l["count"].as_i64().expect("count"),
                    l["points"].as_i64().expect("points"),
                    l["cap"].as_i64().expect("cap"),
                )
            })
            .unwrap_or_else(|| panic!("{signal} in {e}"))
    };
    let want = [
        ("first_login_within_24h", (1, 10, 10)),
        ("sessions_after_first", (2, 10, 25)),
        ("unique_features", (5, 15, 30)),
        ("differentiator_features", (2, 10, 15)),
        ("workflows_completed", (2, 16, 24)),
        ("data_uploaded", (2, 15, 15)),
        ("milestones", (3, 30, 30)),
        ("help_requested", (1, 2, 6)),
        ("errors", (3, -9, -15)),
    ];
    for (signal, expected) in want {
        assert_eq!(line(signal), expected, "{signal}: {e}");
    }
    assert_eq!(e["score"], 99, "{e}");
    assert_eq!(e["tier"], "Champion");
    let list = admin_get(&gw, "/internal/engagement").await;
    let rows = list["sandboxes"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["sandbox_id"].as_str(), rows[0]["score"].as_i64()),
        (Some(id.as_str()), Some(99))
    );
    assert_eq!(
        (rows[1]["sandbox_id"].as_str(), rows[1]["score"].as_i64()),
        (Some(other.as_str()), Some(0))
    );
    assert_eq!(rows[1]["tier"], "Cold");

    // The file sink holds the same events, rotated at 2 KiB.
    let total = events(&posthog.bodies).len();
    let deadline = tokio::time::Instant::now() + WAIT;
    let (lines, sizes) = loop {
        let (lines, sizes) = file_lines(gw.dir.path());
        if lines.len() >= total || tokio::time::Instant::now() > deadline {
            break (lines, sizes);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), total, "every event in the file");
    assert!(sizes.len() >= 3, "rotated: {sizes:?}");
    assert!(sizes.iter().all(|s| *s <= 2048), "{sizes:?}");
    let mut file_ids: Vec<&str> = lines
        .iter()
        .map(|l| l["event_id"].as_str().expect("id"))
        .collect();
    let mut batch_ids: Vec<&str> = events(&posthog.bodies)
        .iter()
        .map(|e| e["properties"]["event_id"].as_str().expect("id"))
        .collect();
    file_ids.sort_unstable();
    batch_ids.sort_unstable();
    assert_eq!(file_ids, batch_ids);
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["properties"].is_object())
    );

    // No secret anywhere: the tenant's key, an Authorization header, a card number.
    let mut everything = posthog.raw();
    everything.extend(hooks.raw());
    everything.extend(lines.iter().map(Value::to_string));
    for text in &everything {
        for secret in [
            key.as_str(),
            "Bearer",
            "authorization",
            "4242424242424242",
            "sk_sandbox_",
        ] {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
    }
    assert!(gw.shutdown().await);
}

/// The sum of the samples of metric `name` that carry every label of
/// `labels` (`key="value"`); 0 when there are none.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_dead_receiver_leaves_requests_alone_and_is_counted() {
    // A port nobody listens on, held for the whole test.
    let port = common::DeadPort::new();
    let dead = port.addr;
    let analytics = format!(
        "{TAXONOMY}  sinks:\n    posthog: {{ url: \"http://{dead}/batch/\", api_key_env: CARGO_PKG_NAME, flush_interval: 10ms, max_attempts: 2, queue: 2, timeout: 1s }}\n  alerts:\n    webhooks: [\"http://{dead}/hook\"]\n    max_attempts: 2\n"
    );
    let gw = start_gateway(dir("", &analytics)).await;
    let (_, key) = provision(
        &gw,
        json!({"prospect_company": "Acme", "prospect_email": "dev@acme.test"}),
    )
    .await;
    // Every request is answered as usual, including writes that raise alerts.
    for i in 0..30 {
        let (s, _) = post(
            &gw,
            &key,
            "/payments/v1/customers",
            json!({"name": format!("c{i}")}),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(
            get(&gw, &key, "/payments/v1/customers?limit=1").await.0,
            200
        );
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = common::client()
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let failures = metric(
            &text,
            "sandgate_analytics_delivery_failures_total",
            &["sink=\"posthog\""],
        );
        let dropped = "sandgate_analytics_events_dropped_total";
        let failed_batches = metric(
            &text,
            dropped,
            &["sink=\"posthog\"", "reason=\"delivery_failed\""],
        );
        let full = metric(
            &text,
            dropped,
            &["sink=\"posthog\"", "reason=\"queue_full\""],
        );
        let hook_failures = metric(
            &text,
            "sandgate_analytics_delivery_failures_total",
            &["sink=\"webhook\""],
        );
        if failures >= 2.0 && failed_batches >= 1.0 && full >= 1.0 && hook_failures >= 2.0 {
            assert!(text.contains("sandgate_analytics_sink_queue_depth{sink=\"posthog\"}"));
            assert!(
                text.contains("sandgate_analytics_events_total{event=\"sandbox_feature_used\"}")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "failures {failures}, failed {failed_batches}, full {full}, hooks {hook_failures}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.shutdown().await);
}

/// A `redis-server` of this test's own on a free port, killed on drop.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let redis = Redis {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {port}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn replicas_sharing_redis_emit_once_events_once() {
    let redis = Redis::start().await;
    let mut posthog = Receiver::start().await;
    let store = format!(
        "store: {{ kind: redis, url: \"{}\", timeout: 1s }}\n",
        redis.url
    );
    let analytics = format!(
        "{TAXONOMY}  sinks:\n    posthog: {{ url: \"{}\", api_key_env: CARGO_PKG_NAME, flush_interval: 10ms }}\n",
        posthog.url("/batch/")
    );
    let a = start_gateway(dir(&store, &analytics)).await;
    let b = start_gateway(dir(&store, &analytics)).await;
    let (id, key) = provision(
        &a,
        json!({"prospect_company": "Acme", "prospect_email": "dev@acme.test"}),
    )
    .await;
    // The same requests, alternately to each replica.
    for i in 0..10 {
        let gw = if i % 2 == 0 { &a } else { &b };
        assert_eq!(get(gw, &key, "/payments/v1/customers").await.0, 200);
    }
    // A help request through each replica marks the end of its stream.
    for gw in [&a, &b] {
        assert_eq!(get(gw, &key, "/_sandbox/help").await.0, 200);
    }
    posthog
        .until("both help requests", |bodies| {
            named(bodies, "sandbox_help_requested", &id).len() == 2
        })
        .await;
    let bodies = &posthog.bodies;
    assert_eq!(named(bodies, "sandbox_first_login", &id).len(), 1);
    assert_eq!(named(bodies, "sandbox_session_started", &id).len(), 1);
    assert_eq!(named(bodies, "sandbox_feature_used", &id).len(), 1);
    // One milestone (asked_for_help), claimed once across replicas.
    assert_eq!(named(bodies, "sandbox_milestone_achieved", &id).len(), 1);
    // Both replicas read the same counters.
    for gw in [&a, &b] {
        let e = admin_get(gw, &format!("/internal/sandboxes/{id}/engagement")).await;
        assert_eq!(e["counts"]["sessions"], 1, "{e}");
        assert_eq!(e["counts"]["features"], 1, "{e}");
        assert_eq!(e["counts"]["help"], 2, "{e}");
        assert_eq!(e["counts"]["milestones"], 1, "{e}");
    }
    assert!(a.shutdown().await);
    assert!(b.shutdown().await);
}

#[tokio::test]
async fn a_backend_creation_is_data_uploaded() {
    let mut posthog = Receiver::start().await;
    // A backend that creates (201) on POST and answers 200 otherwise.
    let backend = TestUpstream::start(|parts, _body| async move {
        let status = if parts.method == http::Method::POST {
            201
        } else {
            200
        };
        let mut r =
            http::Response::new(Full::new(Bytes::from_static(b"{\"id\":\"cus_1\"}")).boxed());
        *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        r
    })
    .await;
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\nadmin: {{ token_env: CARGO_PKG_NAME }}\nauth:\n  api_keys: {{ prefix: sk_sandbox_, live_prefixes: [sk_live_] }}\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: upstream\n    dry_run: simulate\n    upstream: {{ url: \"http://{}\", timeout: 2s }}\nanalytics:\n  sinks:\n    posthog: {{ url: \"{}\", api_key_env: CARGO_PKG_NAME, flush_interval: 10ms }}\n",
        backend.addr,
        posthog.url("/batch/")
    );
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await;
    let (id, key) = provision(
        &gw,
        json!({"prospect_company": "Acme", "prospect_email": "dev@acme.test"}),
    )
    .await;
    // A dry run is simulated: nothing created.
    let (s, _) = send(
        &gw,
        &key,
        reqwest::Method::POST,
        "/payments/v1/customers",
        Some(json!({"name": "dry"})),
        &[("x-dry-run", "true")],
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = post(&gw, &key, "/payments/v1/customers", json!({"name": "Ada"})).await;
    assert_eq!(s, 201);
    assert_eq!(get(&gw, &key, "/payments/v1/customers").await.0, 200);
    // The help request marks the end of the stream.
    assert_eq!(get(&gw, &key, "/_sandbox/help").await.0, 200);
    posthog
        .until("the help request", |b| {
            !named(b, "sandbox_help_requested", &id).is_empty()
        })
        .await;
    let uploads = named(&posthog.bodies, "sandbox_data_uploaded", &id);
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0]["properties"]["data_type"], "customers");
    assert_eq!(uploads[0]["properties"]["record_count"], 1);

    // Looking up a request's decision trace is a help request about its
    // operation.
    let c = common::client();
    let resp = c
        .post(gw.url("/payments/v1/customers"))
        .bearer_auth(&key)
        .header("x-request-id", "req-looked-up")
        .json(&json!({"name": "Grace"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 201);
    let resp = c
        .get(gw.url("/_sandbox/requests/req-looked-up"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("lookup");
    assert_eq!(resp.status(), 200);
    posthog
        .until("the trace lookup", |b| {
            named(b, "sandbox_help_requested", &id)
                .iter()
                .any(|e| e["properties"]["help_type"] == "trace_lookup")
        })
        .await;
    let lookups: Vec<&Value> = named(&posthog.bodies, "sandbox_help_requested", &id)
        .into_iter()
        .filter(|e| e["properties"]["help_type"] == "trace_lookup")
        .collect();
    assert_eq!(lookups.len(), 1, "{lookups:?}");
    assert_eq!(
        lookups[0]["properties"]["context_feature"],
        "createCustomer"
    );
    assert!(gw.shutdown().await);
}
