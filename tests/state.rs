//! Per-tenant facade state over real HTTP against the real gateway: create
//! then read back; list with `limit` / `starting_after`; update; delete then
//! the API's own 404; another tenant's id answers exactly like a missing
//! one; state survives a restart with the file store and is shared by two
//! replicas on one Redis; the plan's storage quota refuses with
//! `storage_quota_exceeded`; a payment intent's 3-D Secure challenge flow
//! (scenario rule, then the `/_sandbox/…/authenticate` helper), a decline
//! and a refund; `POST /_sandbox/reset` wipes state but keeps credentials
//! and quota counts; seed profiles are deterministic, counted in
//! `sample_data`, and an unknown one is refused at provisioning.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{PAYMENTS, TestGateway, problem, sandbox_dir, start_gateway};
use serde_json::{Value, json};
use tempfile::TempDir;

const SCENARIOS: &str = include_str!("../fixtures/payments/scenarios.yaml");
const FINTECH: &str = include_str!("../examples/seeds/fintech_default.yaml");
const RETAIL: &str = include_str!("../examples/seeds/retail_default.yaml");

const POLICY: &str = "plans:
  trial:
    quotas:
      - { requests: 1000, per: lifetime }
  tiny:
    storage: 2KiB
default_plan: trial
";

/// A stateful payments sandbox (`store` is a YAML line, or empty for memory).
fn dir(store: &str) -> TempDir {
    dir_with(store, SCENARIOS)
}

/// The same with its own scenario file.
fn dir_with(store: &str, scenarios: &str) -> TempDir {
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\n{store}admin: {{ token_env: CARGO_PKG_NAME }}\nauth:\n  api_keys: {{ prefix: sk_sandbox_, live_prefixes: [sk_live_] }}\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    scenarios: fixtures/payments/scenarios.yaml\n    mode: facade\n    state:\n      effects:\n        - operation: createRefund\n          target: payment_intents\n          id: /payment_intent\n          require: {{ status: succeeded }}\n          fill: {{ amount: /amount_received - /amount_refunded, currency: /currency }}\n          add: {{ amount_refunded: /amount }}\n          cap: {{ amount_refunded: /amount_received }}\n"
    );
    sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
        ("fixtures/payments/scenarios.yaml", scenarios),
        ("policies/plans.yaml", POLICY),
        ("seeds/fintech_default.yaml", FINTECH),
        ("seeds/retail_default.yaml", RETAIL),
    ])
}

/// The admin token (`admin.token_env: CARGO_PKG_NAME`).
const TOKEN: &str = env!("CARGO_PKG_NAME");

/// Provisions a sandbox through the admin API; returns its answer.
async fn provision(gw: &TestGateway, extra: Value) -> Value {
    let mut body = json!({"prospect_company": "Acme", "prospect_email": "dev@acme.test"});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let r = common::client()
        .post(gw.admin_url("/internal/sandboxes"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("provision");
    assert_eq!(r.status(), 201);
    r.json().await.expect("json")
}

/// (sandbox id, API key) of a new sandbox.
async fn tenant(gw: &TestGateway, extra: Value) -> (String, String) {
    let v = provision(gw, extra).await;
    (
        v["sandbox_id"].as_str().expect("id").to_owned(),
        v["credentials"]["api_key"]
            .as_str()
            .expect("key")
            .to_owned(),
    )
}

async fn send(
    gw: &TestGateway,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = common::client()
        .request(method, gw.url(path))
        .bearer_auth(key);
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

async fn post(gw: &TestGateway, key: &str, path: &str, body: Value) -> (u16, Value) {
    send(gw, key, reqwest::Method::POST, path, Some(body)).await
}

async fn get(gw: &TestGateway, key: &str, path: &str) -> (u16, Value) {
    send(gw, key, reqwest::Method::GET, path, None).await
}

#[tokio::test]
async fn create_read_list_update_delete() {
    let gw = start_gateway(dir("")).await;
    let (_, key) = tenant(&gw, json!({})).await;
    let before = sandgate::tenants::now_secs();
    let (s, a) = post(
        &gw,
        &key,
        "/payments/v1/customers",
        json!({"email": "ada@example.com", "name": "Ada", "metadata": {"tier": "gold"}}),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    let id = a["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("cus_"), "{id}");
    assert_ne!(id, "cus_NffrFeUfNV2Hib");
    assert_eq!(a["email"], "ada@example.com");
    assert_eq!(
        a["phone"],
        Value::Null,
        "not sent: emptied, not the example's"
    );
    assert_eq!(a["metadata"], json!({"tier": "gold"}));
    assert!(a["created"].as_u64().expect("created") >= before);
    let (s, read) = get(&gw, &key, &format!("/payments/v1/customers/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(read, a, "read back as created");

    // Four more; a list is newest first, paged by limit / starting_after.
    let mut ids = vec![id.clone()];
    for i in 0..4 {
        let (_, c) = post(
            &gw,
            &key,
            "/payments/v1/customers",
            json!({"name": format!("c{i}")}),
        )
        .await;
        ids.push(c["id"].as_str().expect("id").to_owned());
    }
    ids.reverse();
    let (s, page) = get(&gw, &key, "/payments/v1/customers?limit=2").await;
    assert_eq!(s, 200, "{page}");
    let got: Vec<&str> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(got, ids[..2].to_vec());
    assert_eq!(page["has_more"], true);
    let (_, page) = get(
        &gw,
        &key,
        &format!("/payments/v1/customers?limit=10&starting_after={}", ids[1]),
    )
    .await;
    let got: Vec<&str> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(got, ids[2..].to_vec());
    assert_eq!(page["has_more"], false);
    let (_, page) = get(&gw, &key, "/payments/v1/customers?email=ada@example.com").await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1), "{page}");

    // Update: only what is sent; "" unsets; metadata merges.
    let (s, u) = post(
        &gw,
        &key,
        &format!("/payments/v1/customers/{id}"),
        json!({"phone": "+15555550123", "name": "", "metadata": {"vip": "yes"}}),
    )
    .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["phone"], "+15555550123");
    assert_eq!(u["name"], Value::Null);
    assert_eq!(u["email"], "ada@example.com");
    assert_eq!(u["metadata"], json!({"tier": "gold", "vip": "yes"}));
    let (_, read) = get(&gw, &key, &format!("/payments/v1/customers/{id}")).await;
    assert_eq!(read, u);

    // Delete, then the API's own 404.
    let (s, d) = send(
        &gw,
        &key,
        reqwest::Method::DELETE,
        &format!("/payments/v1/customers/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(d, json!({"id": id, "object": "customer", "deleted": true}));
    let (s, e) = get(&gw, &key, &format!("/payments/v1/customers/{id}")).await;
    assert_eq!(s, 404);
    assert_eq!(e["error"]["code"], "resource_missing");
    assert_eq!(e["error"]["message"], format!("No such customer: '{id}'"));
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn another_tenants_id_answers_exactly_like_a_missing_one() {
    let gw = start_gateway(dir("")).await;
    let (_, a) = tenant(&gw, json!({})).await;
    let (_, b) = tenant(&gw, json!({})).await;
    let (_, c) = post(&gw, &a, "/payments/v1/customers", json!({"name": "A's"})).await;
    let id = c["id"].as_str().expect("id");
    let path = format!("/payments/v1/customers/{id}");
    let (s, _) = get(&gw, &a, &path).await;
    assert_eq!(s, 200);
    // B reads A's id, then A reads an id that never existed but is the same
    // text for B: both see only their own keys.
    let (s1, e1) = get(&gw, &b, &path).await;
    send(&gw, &a, reqwest::Method::DELETE, &path, None).await;
    let (s2, e2) = get(&gw, &a, &path).await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(e1, e2, "identical bodies");
    // B cannot update or delete it either.
    let (s, _) = post(&gw, &b, &path, json!({"name": "mine"})).await;
    assert_eq!(s, 404);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn state_survives_a_restart_with_the_file_store() {
    let gw = start_gateway(dir("store: { kind: file, path: data/sandgate.redb }\n")).await;
    let (_, key) = tenant(&gw, json!({})).await;
    let (_, c) = post(&gw, &key, "/payments/v1/customers", json!({"name": "Kept"})).await;
    let id = c["id"].as_str().expect("id").to_owned();
    let TestGateway { running, dir, .. } = gw;
    assert!(running.expect("running").shutdown().await);
    let gw = start_gateway(dir).await;
    let (s, read) = get(&gw, &key, &format!("/payments/v1/customers/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(read, c);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn the_storage_quota_refuses_what_would_not_fit() {
    let gw = start_gateway(dir("")).await;
    let (id, key) = tenant(&gw, json!({"plan": "tiny"})).await;
    let mut created = 0;
    let refusal = loop {
        let r = common::client()
            .post(gw.url("/payments/v1/customers"))
            .bearer_auth(&key)
            .json(&json!({"name": "x".repeat(200)}))
            .send()
            .await
            .expect("request");
        if r.status() != 200 {
            break r;
        }
        created += 1;
        assert!(created < 20, "2 KiB holds a handful");
    };
    assert!(created >= 3, "{created}");
    let p = problem(refusal, 413, "storage_quota_exceeded").await;
    assert_eq!(p["tenant"], id.as_str());
    assert_eq!(p["rule"], "plans.tiny.storage");
    assert_eq!(p["storage"]["limit"], 2048);
    // Nothing half-stored: the list has exactly what was created.
    let (_, page) = get(&gw, &key, "/payments/v1/customers?limit=100").await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(created));
    // Deleting frees room again.
    let first = page["data"][0]["id"].as_str().expect("id").to_owned();
    send(
        &gw,
        &key,
        reqwest::Method::DELETE,
        &format!("/payments/v1/customers/{first}"),
        None,
    )
    .await;
    let (s, _) = post(
        &gw,
        &key,
        "/payments/v1/customers",
        json!({"name": "again"}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_challenge_then_success_then_refunds() {
    let gw = start_gateway(dir("")).await;
    let (_, key) = tenant(&gw, json!({})).await;
    let (s, pi) = post(
        &gw,
        &key,
        "/payments/v1/payment_intents",
        json!({"amount": 1500, "currency": "eur"}),
    )
    .await;
    assert_eq!(s, 200, "{pi}");
    let id = pi["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("pi_"));
    assert_eq!(pi["status"], "requires_payment_method");
    assert!(
        pi["client_secret"]
            .as_str()
            .is_some_and(|c| c.starts_with(&format!("{id}_secret_"))),
        "{pi}"
    );
    // A refund before success is the API's own 400.
    let (s, e) = post(
        &gw,
        &key,
        "/payments/v1/refunds",
        json!({"payment_intent": id}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["param"], "payment_intent");

    // Confirm with the challenge card: requires_action, stored.
    let confirm = format!("/payments/v1/payment_intents/{id}/confirm");
    let (s, c) = post(
        &gw,
        &key,
        &confirm,
        json!({"payment_method": "pm_card_authenticationRequired", "return_url": "https://shop.example/done"}),
    )
    .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["status"], "requires_action");
    assert_eq!(c["amount"], 1500);
    assert_eq!(
        c["next_action"]["redirect_to_url"]["return_url"],
        "https://shop.example/done"
    );
    assert!(
        c["next_action"]["redirect_to_url"]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with(&id))
    );
    let (_, read) = get(&gw, &key, &format!("/payments/v1/payment_intents/{id}")).await;
    assert_eq!(read["status"], "requires_action");

    // The helper completes the challenge.
    let helper = format!("/_sandbox/payment_intents/{id}/authenticate");
    let (s, done) = post(&gw, &key, &helper, json!({})).await;
    assert_eq!(s, 200, "{done}");
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["amount_received"], 1500);
    assert_eq!(done["next_action"], Value::Null);
    // Twice is refused: it no longer needs a challenge.
    let r = common::client()
        .post(gw.url(&helper))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    problem(r, 409, "action_not_applicable").await;

    // Refunds: part, then the rest by default, then nothing is left.
    let (s, r1) = post(
        &gw,
        &key,
        "/payments/v1/refunds",
        json!({"payment_intent": id, "amount": 500}),
    )
    .await;
    assert_eq!(s, 200, "{r1}");
    assert!(r1["id"].as_str().is_some_and(|r| r.starts_with("re_")));
    assert_eq!(r1["currency"], "eur");
    let (_, read) = get(&gw, &key, &format!("/payments/v1/payment_intents/{id}")).await;
    assert_eq!(read["amount_refunded"], 500);
    let (s, r2) = post(
        &gw,
        &key,
        "/payments/v1/refunds",
        json!({"payment_intent": id}),
    )
    .await;
    assert_eq!(s, 200, "{r2}");
    assert_eq!(r2["amount"], 1000, "the rest");
    let (_, read) = get(&gw, &key, &format!("/payments/v1/payment_intents/{id}")).await;
    assert_eq!(read["amount_refunded"], 1500);
    let (s, e) = post(
        &gw,
        &key,
        "/payments/v1/refunds",
        json!({"payment_intent": id, "amount": 1}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["code"], "amount_too_large");
    let (s, _) = post(
        &gw,
        &key,
        "/payments/v1/refunds",
        json!({"payment_intent": "pi_doesnotexist"}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_declined_card_leaves_the_intent_requiring_a_payment_method() {
    let gw = start_gateway(dir("")).await;
    let (_, key) = tenant(&gw, json!({})).await;
    let (_, pi) = post(
        &gw,
        &key,
        "/payments/v1/payment_intents",
        json!({"amount": 2500, "currency": "usd"}),
    )
    .await;
    let id = pi["id"].as_str().expect("id").to_owned();
    let (s, e) = post(
        &gw,
        &key,
        &format!("/payments/v1/payment_intents/{id}/confirm"),
        json!({"payment_method": "pm_card_visa_chargeDeclined"}),
    )
    .await;
    assert_eq!(s, 402);
    assert_eq!(e["error"]["decline_code"], "generic_decline");
    let (_, read) = get(&gw, &key, &format!("/payments/v1/payment_intents/{id}")).await;
    assert_eq!(read["status"], "requires_payment_method");
    assert_eq!(
        read["last_payment_error"]["decline_code"],
        "generic_decline"
    );
    // Then an approved card succeeds, for the intent's own amount.
    let (s, ok) = post(
        &gw,
        &key,
        &format!("/payments/v1/payment_intents/{id}/confirm"),
        json!({"payment_method": "pm_card_visa"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(ok["status"], "succeeded");
    assert_eq!(ok["amount_received"], 2500);
    assert_eq!(ok["last_payment_error"], Value::Null);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn reset_wipes_state_keeps_credentials_and_quota_counts_and_reseeds() {
    let gw = start_gateway(dir("")).await;
    let v = provision(&gw, json!({"sample_data_persona": "fintech_default"})).await;
    assert_eq!(
        v["sample_data"],
        json!({"customers": 5, "payment_intents": 3})
    );
    let id = v["sandbox_id"].as_str().expect("id").to_owned();
    let key = v["credentials"]["api_key"]
        .as_str()
        .expect("key")
        .to_owned();
    let (_, seeded) = get(&gw, &key, "/payments/v1/customers?limit=100").await;
    assert_eq!(seeded["data"].as_array().map(Vec::len), Some(5));
    let (_, mine) = post(&gw, &key, "/payments/v1/customers", json!({"name": "Mine"})).await;
    let mine = mine["id"].as_str().expect("id").to_owned();

    let usage = |gw: &TestGateway| {
        let url = gw.url("/_sandbox/usage");
        let key = key.clone();
        async move {
            let u: Value = common::client()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .expect("usage")
                .json()
                .await
                .expect("json");
            u["usage"]["quotas"][0]["used"].as_u64().expect("used")
        }
    };
    let used_before = usage(&gw).await;
    let r = common::client()
        .post(gw.url("/_sandbox/reset"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("reset");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["sandbox_id"], id.as_str());
    assert_eq!(
        body["sample_data"],
        json!({"customers": 5, "payment_intents": 3})
    );
    // Credentials still work; own objects are gone; quota counts were kept
    // (usage itself is not a counted API call; the reset is not either).
    let (s, _) = get(&gw, &key, &format!("/payments/v1/customers/{mine}")).await;
    assert_eq!(s, 404);
    assert!(
        usage(&gw).await > used_before,
        "counts kept and still counting"
    );
    // The same tenant gets identical seed objects after a reset.
    let (_, again) = get(&gw, &key, "/payments/v1/customers?limit=100").await;
    assert_eq!(again, seeded);
    // And through the admin API too.
    let r = common::client()
        .post(gw.admin_url(&format!("/internal/sandboxes/{id}/reset")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin reset");
    assert_eq!(r.status(), 200);
    let (_, third) = get(&gw, &key, "/payments/v1/customers?limit=100").await;
    assert_eq!(third, seeded);
    let (_, pis) = get(&gw, &key, "/payments/v1/customers?limit=1").await;
    assert_eq!(pis["has_more"], true);

    // Another tenant with the same persona gets its own (different) objects.
    let (_, other) = tenant(&gw, json!({"sample_data_persona": "fintech_default"})).await;
    let (_, theirs) = get(&gw, &other, "/payments/v1/customers?limit=100").await;
    assert_ne!(theirs["data"][0]["id"], seeded["data"][0]["id"]);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn an_unknown_persona_is_refused_with_its_pointer() {
    let gw = start_gateway(dir("")).await;
    let r = common::client()
        .post(gw.admin_url("/internal/sandboxes"))
        .bearer_auth(TOKEN)
        .json(&json!({"prospect_company": "Acme", "prospect_email": "dev@acme.test", "sample_data_persona": "nope"}))
        .send()
        .await
        .expect("provision");
    let p = problem(r, 400, "invalid_body").await;
    assert_eq!(p["errors"][0]["pointer"], "/sample_data_persona");
    let v = provision(&gw, json!({"sample_data_persona": "retail_default"})).await;
    assert_eq!(
        v["sample_data"],
        json!({"customers": 8, "payment_intents": 4})
    );
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_public_api_stays_stateless() {
    // Same contract and `state`, but `auth: none`: no tenant, no state.
    let config = "listeners:\n  - addr: 127.0.0.1:0\nauth:\n  api_keys: { prefix: sk_sandbox_, live_prefixes: [sk_live_] }\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n    auth: none\n    state: {}\n";
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await;
    let r = common::client()
        .get(gw.url("/payments/v1/customers/cus_NffrFeUfNV2Hib"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("sandgate-source")
            .and_then(|v| v.to_str().ok()),
        Some("example")
    );
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
        // Owned by the guard from here on: killed and waited for on drop.
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
async fn two_replicas_on_one_redis_share_state() {
    let redis = Redis::start().await;
    let store = format!("store: {{ kind: redis, url: \"{}\" }}\n", redis.url);
    let one = start_gateway(dir(&store)).await;
    let two = start_gateway(dir(&store)).await;
    let (_, key) = tenant(&one, json!({})).await;
    let (s, c) = post(
        &one,
        &key,
        "/payments/v1/customers",
        json!({"name": "Shared"}),
    )
    .await;
    assert_eq!(s, 200);
    let id = c["id"].as_str().expect("id").to_owned();
    let (s, read) = get(&two, &key, &format!("/payments/v1/customers/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(read, c);
    let (s, u) = post(
        &two,
        &key,
        &format!("/payments/v1/customers/{id}"),
        json!({"phone": "+15550000"}),
    )
    .await;
    assert_eq!(s, 200);
    let (_, read) = get(&one, &key, &format!("/payments/v1/customers/{id}")).await;
    assert_eq!(read, u);
    // Ids from both replicas come from one sequence: a list stays ordered.
    let (_, c2) = post(
        &two,
        &key,
        "/payments/v1/customers",
        json!({"name": "Second"}),
    )
    .await;
    let (_, page) = get(&one, &key, "/payments/v1/customers").await;
    assert_eq!(page["data"][0]["id"], c2["id"]);
    assert_eq!(page["data"][1]["id"], id.as_str());
    assert!(one.shutdown().await);
    assert!(two.shutdown().await);
    drop(redis);
}

/// A request with extra headers; returns (status, headers, JSON body).
async fn send_with(
    gw: &TestGateway,
    key: &str,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = common::client()
        .request(method, gw.url(path))
        .bearer_auth(key);
    for (name, value) in headers {
        rb = rb.header(*name, *value);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body");
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_test_clock_dry_runs_and_idempotency_keys_apply_to_state() {
    let gw = start_gateway(dir("")).await;
    let (_, key) = tenant(&gw, json!({})).await;
    let customers = "/payments/v1/customers";
    let count = |v: &Value| v["data"].as_array().map_or(0, Vec::len);

    // The tenant's clock stamps what it creates.
    let (s, _) = post(
        &gw,
        &key,
        "/_sandbox/clock",
        json!({"frozen_time": "2027-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, a) = post(&gw, &key, customers, json!({"email": "a@example.com"})).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["created"], 1_798_761_600, "{a}");
    let (s, _) = post(&gw, &key, "/_sandbox/clock", json!({"advance": "30d"})).await;
    assert_eq!(s, 200);
    let (s, b) = post(&gw, &key, customers, json!({"email": "b@example.com"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["created"], 1_798_761_600 + 30 * 86_400, "{b}");

    // A dry-run create answers the object it would create, and stores
    // nothing.
    let (s, h, dry) = send_with(
        &gw,
        &key,
        reqwest::Method::POST,
        customers,
        &[("x-dry-run", "true")],
        Some(json!({"email": "dry@example.com"})),
    )
    .await;
    assert_eq!(s, 200, "{dry}");
    assert_eq!(h["x-dry-run"], "simulated");
    assert_eq!(dry["email"], "dry@example.com");
    let dry_id = dry["id"].as_str().expect("id");
    assert!(dry_id.starts_with("cus_"), "{dry}");
    let (s, _) = get(&gw, &key, &format!("{customers}/{dry_id}")).await;
    assert_eq!(s, 404, "a dry run stores nothing");
    let (_, list) = get(&gw, &key, customers).await;
    assert_eq!(count(&list), 2, "{list}");

    // A dry-run confirm answers the moved state and leaves the stored
    // intent as it was.
    let (_, pi) = post(
        &gw,
        &key,
        "/payments/v1/payment_intents",
        json!({"amount": 900, "currency": "eur"}),
    )
    .await;
    let pi_id = pi["id"].as_str().expect("id").to_owned();
    let (s, _, moved) = send_with(
        &gw,
        &key,
        reqwest::Method::POST,
        &format!("/payments/v1/payment_intents/{pi_id}/confirm"),
        &[("x-dry-run", "true")],
        Some(json!({"payment_method": "pm_card_authenticationRequired", "return_url": "https://shop.example/done"})),
    )
    .await;
    assert_eq!(s, 200, "{moved}");
    assert_eq!(moved["status"], "requires_action", "{moved}");
    let (_, stored) = get(&gw, &key, &format!("/payments/v1/payment_intents/{pi_id}")).await;
    assert_eq!(stored["status"], "requires_payment_method", "{stored}");

    // An idempotency key: created once, the same object replayed.
    let idem = [("idempotency-key", "create-cus-42")];
    let body = json!({"email": "once@example.com"});
    let (s, h1, first) = send_with(
        &gw,
        &key,
        reqwest::Method::POST,
        customers,
        &idem,
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 200, "{first}");
    assert!(h1.get("idempotent-replayed").is_none());
    let (s, h2, again) = send_with(
        &gw,
        &key,
        reqwest::Method::POST,
        customers,
        &idem,
        Some(body),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(again, first);
    let (_, list) = get(&gw, &key, customers).await;
    assert_eq!(count(&list), 3, "created once: {list}");

    // A reset wipes the clock too: real time again.
    let (s, _) = post(&gw, &key, "/_sandbox/reset", json!({})).await;
    assert_eq!(s, 200);
    let (_, clock) = get(&gw, &key, "/_sandbox/clock").await;
    assert_eq!(clock["frozen"], false, "{clock}");
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_time_based_rule_follows_the_tenants_clock() {
    // A simulated card-network outage on 2027-06-01: the approved test
    // method declines while the tenant's clock is in that day.
    let outage = "rules:
  - name: card network outage
    operations: [confirmPaymentIntent]
    key: /payment_method
    during: { from: \"2027-06-01T00:00:00Z\", until: \"2027-06-02T00:00:00Z\" }
    when:
      pm_card_visa: generic_decline
";
    let scenarios = SCENARIOS.replacen("rules:\n", outage, 1);
    assert_ne!(scenarios, SCENARIOS, "the rule was inserted");
    let gw = start_gateway(dir_with("", &scenarios)).await;
    let (_, key) = tenant(&gw, json!({})).await;
    let confirm_at = |day: &'static str| {
        let (gw, key) = (&gw, key.clone());
        async move {
            let (s, _) = post(
                gw,
                &key,
                "/_sandbox/clock",
                json!({ "frozen_time": format!("{day}T12:00:00Z") }),
            )
            .await;
            assert_eq!(s, 200);
            let (_, pi) = post(
                gw,
                &key,
                "/payments/v1/payment_intents",
                json!({"amount": 700, "currency": "eur"}),
            )
            .await;
            let id = pi["id"].as_str().expect("id").to_owned();
            post(
                gw,
                &key,
                &format!("/payments/v1/payment_intents/{id}/confirm"),
                json!({"payment_method": "pm_card_visa"}),
            )
            .await
        }
    };
    let (s, before) = confirm_at("2027-05-31").await;
    assert_eq!(
        (s, &before["status"]),
        (200, &json!("succeeded")),
        "{before}"
    );
    let (s, during) = confirm_at("2027-06-01").await;
    assert_eq!(s, 402, "{during}");
    assert_eq!(
        during["error"]["decline_code"], "generic_decline",
        "{during}"
    );
    let (s, after) = confirm_at("2027-06-02").await;
    assert_eq!((s, &after["status"]), (200, &json!("succeeded")), "{after}");
    assert!(gw.shutdown().await);
}
