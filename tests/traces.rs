//! Decision traces and the request log over real HTTP: a refused request
//! (validation 400, rate-limit 429) looked up by its id shows the refusing
//! stage, rule and code; a served one shows its mode and target; another
//! tenant's id answers 404 exactly like an unknown one; the listing's
//! filters and limit; no secret or full card number anywhere in a trace;
//! the ring keeps `max_per_tenant` traces, newest first, also with a client
//! id used twice; bodies are cut at `max_body`; refusals carry a `trace`
//! link for identified callers only; the admin listing; and two gateways
//! sharing a real `redis-server` see each other's traces.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{PAYMENTS, TestGateway, client, problem, sandbox_dir, start_gateway};
use sandgate::tenants::{self, DAY};
use serde_json::{Value, json};

const SCENARIOS: &str = include_str!("../fixtures/payments/scenarios.yaml");

const POLICY: &str = "plans:
  roomy:
    rate: { requests: 100000, per: 1s, burst: 100000 }
  tiny:
    rate: { requests: 2, per: 60s, burst: 2 }
default_plan: roomy
";

/// A gateway with API keys, the payments facade with its scenario rules,
/// and `traces` (YAML flow mapping, or empty for the defaults).
async fn gateway_with(traces: &str, store: &str) -> TestGateway {
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\n{store}admin: {{ token_env: CARGO_PKG_NAME }}\n{traces}auth:\n  api_keys: {{ prefix: sk_sandbox_, live_prefixes: [sk_live_] }}\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    scenarios: fixtures/payments/scenarios.yaml\n    mode: facade\n  - name: open\n    prefix: /open\n    contract: contracts/payments.yaml\n    mode: facade\n    auth: none\n"
    );
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
        ("fixtures/payments/scenarios.yaml", SCENARIOS),
        ("policies/plans.yaml", POLICY),
    ]))
    .await
}

async fn gateway() -> TestGateway {
    gateway_with("traces: { scrub_fields: [ssn] }\n", "").await
}

/// A tenant on `plan`; returns (id, API key).
async fn tenant(gw: &TestGateway, plan: &str) -> (String, String) {
    let now = tenants::now_secs();
    let (mut t, creds) =
        tenants::new_tenant("Acme", "dev@acme.test", now, Duration::ZERO, "sk_sandbox_")
            .expect("tenant");
    t.plan = plan.to_owned();
    t.expires_at = now + 7 * DAY;
    let registry = gw
        .running
        .as_ref()
        .expect("running")
        .gateway
        .registry()
        .clone();
    registry.put(&t).await.expect("store tenant");
    (t.id, creds.api_key)
}

const CUSTOMER: &str = "/payments/v1/customers/cus_NffrFeUfNV2Hib";
const CREATE: &str = "/payments/v1/payment_intents";

fn request_id(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned()
}

/// `GET path` with `key`: (status, body text).
async fn get_text(gw: &TestGateway, key: &str, path: &str) -> (u16, String) {
    let r = client()
        .get(gw.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// The trace of `id`, which must exist.
async fn trace(gw: &TestGateway, key: &str, id: &str) -> Value {
    let (status, text) = get_text(gw, key, &format!("/_sandbox/requests/{id}")).await;
    assert_eq!(status, 200, "trace of {id}: {text}");
    serde_json::from_str(&text).expect("trace JSON")
}

async fn listing(gw: &TestGateway, key: &str, query: &str) -> Vec<Value> {
    let (status, text) = get_text(gw, key, &format!("/_sandbox/requests{query}")).await;
    assert_eq!(status, 200, "listing {query}: {text}");
    let v: Value = serde_json::from_str(&text).expect("listing JSON");
    v["requests"].as_array().expect("requests").clone()
}

fn stage<'a>(trace: &'a Value, name: &str) -> &'a Value {
    trace["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {trace}"))
}

#[tokio::test]
async fn a_refused_request_shows_the_refusing_stage_rule_and_code() {
    let gw = gateway().await;
    let (_, key) = tenant(&gw, "roomy").await;
    let c = client();

    // Validation: 400 invalid_request, with a trace link.
    let r = c
        .post(gw.url(CREATE))
        .header("x-api-key", &key)
        .json(&json!({"amount": "lots", "currency": "usd"}))
        .send()
        .await
        .expect("request");
    let id = request_id(&r);
    let body = problem(r, 400, "invalid_request").await;
    assert_eq!(body["trace"], format!("/_sandbox/requests/{id}"));
    let t = trace(&gw, &key, &id).await;
    assert_eq!(t["request_id"], id);
    assert_eq!(t["status"], 400);
    assert_eq!(t["operation"], "createPaymentIntent");
    assert_eq!(t["refusal"]["code"], "invalid_request");
    assert_eq!(t["refusal"]["stage"], "validate");
    // What was sent is in it: the refused body too.
    assert_eq!(t["request"]["body"]["content"]["amount"], "lots", "{t}");
    let v = stage(&t, "validate");
    assert_eq!(v["verdict"], "refused");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    // The stages before it passed; nothing ran after it.
    assert_eq!(stage(&t, "limit")["verdict"], "passed");
    assert!(
        !t["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .any(|s| s["stage"] == "dispatch"),
        "{t}"
    );

    // A rate limit: the third request of a 2-per-minute plan.
    let (_, tiny) = tenant(&gw, "tiny").await;
    for _ in 0..2 {
        let r = c
            .get(gw.url(CUSTOMER))
            .header("x-api-key", &tiny)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    let r = c
        .get(gw.url(CUSTOMER))
        .header("x-api-key", &tiny)
        .send()
        .await
        .expect("request");
    let id = request_id(&r);
    let body = problem(r, 429, "rate_limited").await;
    assert_eq!(body["trace"], format!("/_sandbox/requests/{id}"));
    let t = trace(&gw, &tiny, &id).await;
    assert_eq!(t["refusal"]["code"], "rate_limited");
    assert_eq!(t["refusal"]["stage"], "limit");
    let rule = t["refusal"]["rule"].as_str().expect("a rule");
    assert!(rule.starts_with("plans.tiny"), "{rule}");
    let l = stage(&t, "limit");
    assert_eq!(l["verdict"], "refused");
    assert_eq!(l["rule"], rule);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_served_request_shows_its_mode_target_and_every_stage() {
    let gw = gateway().await;
    let (tenant_id, key) = tenant(&gw, "roomy").await;
    let c = client();
    let r = c
        .post(gw.url(CREATE))
        .header("x-api-key", &key)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"amount": 2000, "currency": "usd", "payment_method": "pm_card_visa"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let text = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .expect(name)
            .to_owned()
    };
    let (policy, standing) = (text("ratelimit-policy"), text("ratelimit"));
    let t = trace(&gw, &key, &id).await;
    // The limit stage names the plan and where the tenant stood: the very
    // rate-limit headers of the answer.
    assert_eq!(
        stage(&t, "limit")["reason"],
        format!(
            "plan roomy: within its limits (RateLimit-Policy: {policy}; RateLimit: {standing})"
        )
        .as_str()
    );
    // The trace's copy of the answer's headers has them too.
    assert_eq!(
        t["response"]["headers"]["ratelimit-policy"],
        policy.as_str()
    );
    assert_eq!(t["response"]["headers"]["ratelimit"], standing.as_str());
    assert_eq!(t["sandbox_id"], tenant_id.as_str());
    assert_eq!(t["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(t["mode"], "facade");
    assert_eq!(t["source"], "scenario");
    assert_eq!(t["target"], "scenario rule 'test payment methods'");
    assert_eq!(t["api"], "payments");
    assert_eq!(t["status"], 200);
    assert_eq!(t["dry_run"], false);
    assert!(t["tenant_time"].is_string(), "{t}");
    assert!(t["latency_ms"].as_f64().is_some(), "{t}");
    assert!(t.get("refusal").is_none(), "{t}");
    let names: Vec<&str> = t["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["stage"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "edge",
            "dry_run",
            "route",
            "identify",
            "admit",
            "require_dry_run",
            "clock",
            "limit",
            "validate",
            "idempotency",
            "dispatch"
        ]
    );
    assert_eq!(
        stage(&t, "route")["reason"],
        "API payments, operation createPaymentIntent"
    );
    let who = stage(&t, "identify")["reason"].as_str().expect("reason");
    assert!(who.ends_with(&format!("→ tenant {tenant_id}")), "{who}");
    assert!(
        who.contains(&format!("…{}", &key[key.len() - 4..])),
        "{who}"
    );
    assert_eq!(
        stage(&t, "dispatch")["reason"],
        "answered from scenario: scenario rule 'test payment methods'"
    );
    // Request and response bodies are in it.
    assert_eq!(t["request"]["body"]["content"]["amount"], 2000);
    assert_eq!(t["response"]["body"]["content"]["status"], "succeeded");
    assert_eq!(t["response"]["body"]["truncated"], false);

    // An example answer.
    let r = c
        .get(gw.url(CUSTOMER))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("request");
    let t = trace(&gw, &key, &request_id(&r)).await;
    assert_eq!(t["source"], "example");
    // Without a traceparent the gateway started a trace of its own.
    let started = t["trace_id"].as_str().expect("trace id");
    assert!(started.len() == 32 && started != "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(stage(&t, "idempotency")["verdict"], "skipped");
    gw.shutdown().await;
}

/// A 404 problem with what differs between two lookups (the id asked for,
/// the lookup's own request id) taken out.
fn normalized(mut v: Value, asked: &str) -> Value {
    let o = v.as_object_mut().expect("object");
    o.remove("request_id");
    let detail = o["detail"].as_str().expect("detail").replace(asked, "<id>");
    o.insert("detail".into(), json!(detail));
    v
}

#[tokio::test]
async fn another_tenants_request_is_not_found_like_an_unknown_one() {
    let gw = gateway().await;
    let (_, a) = tenant(&gw, "roomy").await;
    let (_, b) = tenant(&gw, "roomy").await;
    let c = client();
    let r = c
        .get(gw.url(CUSTOMER))
        .header("x-api-key", &a)
        .header("x-request-id", "acme-order-1")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    // A finds it; B does not, exactly as for an id that never existed.
    trace(&gw, &a, "acme-order-1").await;
    let lookup = |id: &'static str| {
        c.get(gw.url(&format!("/_sandbox/requests/{id}")))
            .header("x-api-key", &b)
            .send()
    };
    let theirs = problem(
        lookup("acme-order-1").await.expect("request"),
        404,
        "request_not_found",
    )
    .await;
    let unknown = problem(
        lookup("never-sent-1").await.expect("request"),
        404,
        "request_not_found",
    )
    .await;
    assert_eq!(
        normalized(theirs, "acme-order-1"),
        normalized(unknown, "never-sent-1")
    );
    // B's listing has none of A's requests.
    assert!(listing(&gw, &b, "").await.is_empty());
    // Without credentials: the usual 401, nothing about traces.
    let r = c
        .get(gw.url("/_sandbox/requests/acme-order-1"))
        .send()
        .await
        .expect("request");
    let body = problem(r, 401, "missing_credentials").await;
    assert!(body.get("trace").is_none(), "{body}");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_listing_filters_by_status_operation_and_code() {
    let gw = gateway().await;
    let (tenant_id, key) = tenant(&gw, "roomy").await;
    let c = client();
    for _ in 0..2 {
        let r = c
            .get(gw.url(CUSTOMER))
            .header("x-api-key", &key)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    let r = c
        .post(gw.url(CREATE))
        .header("x-api-key", &key)
        .json(&json!({"currency": "usd"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 400);
    let bad = request_id(&r);
    let r = c
        .post(gw.url(CREATE))
        .header("x-api-key", &key)
        .json(&json!({"amount": 5, "currency": "usd"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let newest = request_id(&r);

    let all = listing(&gw, &key, "").await;
    assert_eq!(all.len(), 4);
    assert_eq!(all[0]["request_id"], newest.as_str());
    assert_eq!(all[0]["trace"], format!("/_sandbox/requests/{newest}"));
    let failed = listing(&gw, &key, "?status=400").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["request_id"], bad.as_str());
    assert_eq!(failed[0]["code"], "invalid_request");
    assert_eq!(listing(&gw, &key, "?status=2xx").await.len(), 3);
    assert_eq!(listing(&gw, &key, "?operation=getCustomer").await.len(), 2);
    assert_eq!(
        listing(&gw, &key, "?operation=createPaymentIntent&status=200")
            .await
            .len(),
        1
    );
    let coded = listing(&gw, &key, "?code=invalid_request").await;
    assert_eq!(coded.len(), 1);
    assert_eq!(coded[0]["request_id"], bad.as_str());
    let one = listing(&gw, &key, "?limit=1").await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["request_id"], newest.as_str());
    // The lookups themselves are not in the log.
    assert_eq!(listing(&gw, &key, "").await.len(), 4);

    // A bad parameter points at itself.
    for (query, pointer) in [
        ("?limit=0", "/query/limit"),
        ("?limit=500", "/query/limit"),
        ("?status=abc", "/query/status"),
        ("?colour=red", "/query/colour"),
    ] {
        let r = c
            .get(gw.url(&format!("/_sandbox/requests{query}")))
            .header("x-api-key", &key)
            .send()
            .await
            .expect("request");
        let body = problem(r, 400, "invalid_request").await;
        assert_eq!(body["errors"][0]["pointer"], pointer, "{query}: {body}");
        // Lookups are not kept, so their refusals link to nothing.
        assert!(body.get("trace").is_none(), "{body}");
    }

    // The operators' view of the same log.
    let admin = |path: String| {
        c.get(gw.admin_url(&path))
            .bearer_auth(env!("CARGO_PKG_NAME"))
            .send()
    };
    let id = tenant_id;
    let r = admin(format!("/internal/sandboxes/{id}/requests?status=400"))
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["requests"].as_array().expect("requests").len(), 1);
    let r = admin(format!("/internal/sandboxes/{id}/requests/{bad}"))
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["refusal"]["code"], "invalid_request");
    let r = admin(format!("/internal/sandboxes/{id}/requests/nope-1"))
        .await
        .expect("request");
    problem(r, 404, "request_not_found").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn no_secret_or_full_card_number_is_kept() {
    let gw = gateway().await;
    let (_, key) = tenant(&gw, "roomy").await;
    let c = client();
    // A served create with a test card, its CVC and a configured field.
    let r = c
        .post(gw.url(CREATE))
        .header("x-api-key", &key)
        .header("cookie", "session=cookie-secret-value")
        .header("x-session-token", "token-secret-value")
        .json(&json!({
            "amount": 2000,
            "currency": "usd",
            "description": "paid with 4000 0566 5566 5556 today",
            "metadata": {"ssn": "078-05-1120", "note": "keep me"},
            "payment_method_data": {"type": "card", "card": {"number": "4242424242424242", "cvc": "987"}}
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let served = request_id(&r);
    // A card number in the query and in the path, and the key as Bearer.
    let r = c
        .get(gw.url(
            "/payments/v1/customers/cus_5555555555554444?expand=4000056655665556&client_secret=qs-secret-value",
        ))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    let queried = request_id(&r);
    let mut texts = Vec::new();
    for id in [&served, &queried] {
        let (status, text) = get_text(&gw, &key, &format!("/_sandbox/requests/{id}")).await;
        assert_eq!(status, 200, "{text}");
        texts.push(text);
    }
    texts.push(get_text(&gw, &key, "/_sandbox/requests").await.1);
    let all = texts.join("\n");
    for secret in [
        key.as_str(),
        "cookie-secret-value",
        "token-secret-value",
        "qs-secret-value",
        "078-05-1120",
        "4242424242424242",
        "4000 0566 5566 5556",
        "4000056655665556",
        "5555555555554444",
    ] {
        assert!(!all.contains(secret), "{secret} is in a trace:\n{all}");
    }
    for kept in [
        "************4242",
        "************5556",
        "************4444",
        "keep me",
        "[scrubbed]",
    ] {
        assert!(all.contains(kept), "{kept} is missing:\n{all}");
    }
    let t: Value = serde_json::from_str(&texts[0]).expect("json");
    assert_eq!(t["request"]["headers"]["x-api-key"], "[scrubbed]");
    assert_eq!(t["request"]["headers"]["cookie"], "[scrubbed]");
    assert_eq!(
        t["request"]["body"]["content"]["metadata"]["ssn"],
        "[scrubbed]"
    );
    assert_eq!(
        t["request"]["body"]["content"]["payment_method_data"]["card"]["cvc"],
        "[scrubbed]"
    );
    let t: Value = serde_json::from_str(&texts[1]).expect("json");
    assert_eq!(t["request"]["headers"]["authorization"], "[scrubbed]");
    assert_eq!(t["path"], "/payments/v1/customers/cus_************4444");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_ring_keeps_the_newest_max_per_tenant() {
    let gw = gateway_with("traces: { max_per_tenant: 5 }\n", "").await;
    let (_, key) = tenant(&gw, "roomy").await;
    let c = client();
    let send = |id: String| {
        c.get(gw.url(CUSTOMER))
            .header("x-api-key", &key)
            .header("x-request-id", id)
            .send()
    };
    for i in 0..8 {
        assert_eq!(
            send(format!("ring-{i}")).await.expect("request").status(),
            200
        );
    }
    let ids = |rows: Vec<Value>| -> Vec<String> {
        rows.iter()
            .map(|r| r["request_id"].as_str().expect("id").to_owned())
            .collect()
    };
    assert_eq!(
        ids(listing(&gw, &key, "").await),
        ["ring-7", "ring-6", "ring-5", "ring-4", "ring-3"]
    );
    let (status, _) = get_text(&gw, &key, "/_sandbox/requests/ring-0").await;
    assert_eq!(status, 404, "an overwritten trace is gone");
    trace(&gw, &key, "ring-3").await;
    // A client id sent twice: the ring still holds five; the id finds the newest.
    assert_eq!(send("dup".into()).await.expect("request").status(), 200);
    let r = c
        .post(gw.url(CREATE))
        .header("x-api-key", &key)
        .header("x-request-id", "dup")
        .json(&json!({"amount": 7, "currency": "usd"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(
        ids(listing(&gw, &key, "").await),
        ["dup", "dup", "ring-7", "ring-6", "ring-5"]
    );
    assert_eq!(trace(&gw, &key, "dup").await["method"], "POST");
    gw.shutdown().await;
}

#[tokio::test]
async fn bodies_are_cut_at_max_body() {
    let gw = gateway_with("traces: { max_body: 64B }\n", "").await;
    let (_, key) = tenant(&gw, "roomy").await;
    let description = "x".repeat(300);
    let r = client()
        .post(gw.url(CREATE))
        .header("x-api-key", &key)
        .json(&json!({"amount": 2000, "currency": "usd", "description": description, "payment_method_data": {"card": {"number": "4242424242424242", "cvc": "123"}}}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let t = trace(&gw, &key, &id).await;
    for side in ["request", "response"] {
        let body = &t[side]["body"];
        assert_eq!(body["truncated"], true, "{side}: {body}");
        assert!(
            body["bytes"].as_u64().expect("bytes") > 64,
            "{side}: {body}"
        );
        let content = body["content"].as_str().expect("cut JSON is kept as text");
        assert!(content.len() <= 64, "{side}: {content}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn refusals_link_their_trace_for_identified_callers_only() {
    let gw = gateway().await;
    let (_, key) = tenant(&gw, "roomy").await;
    let c = client();
    // Anonymous, and a key of no sandbox: no trace, nothing tenant-specific.
    let r = c.get(gw.url(CUSTOMER)).send().await.expect("request");
    let body = problem(r, 401, "missing_credentials").await;
    assert!(body.get("trace").is_none(), "{body}");
    let r = c
        .get(gw.url(CUSTOMER))
        .header("x-api-key", "sk_sandbox_nobody0000000000000000")
        .send()
        .await
        .expect("request");
    let body = problem(r, 401, "unknown_api_key").await;
    assert!(body.get("trace").is_none(), "{body}");
    // A public API's refusal to an anonymous caller.
    let r = c
        .post(gw.url("/open/v1/payment_intents"))
        .json(&json!({"currency": "usd"}))
        .send()
        .await
        .expect("request");
    let body = problem(r, 400, "invalid_request").await;
    assert!(body.get("trace").is_none(), "{body}");
    // A tenant endpoint's refusal after identification links its trace.
    let r = c
        .post(gw.url("/_sandbox/clock"))
        .header("x-api-key", &key)
        .json(&json!({"advance": "soon"}))
        .send()
        .await
        .expect("request");
    let id = request_id(&r);
    let body = problem(r, 400, "invalid_clock_request").await;
    assert_eq!(body["trace"], format!("/_sandbox/requests/{id}"));
    let t = trace(&gw, &key, &id).await;
    assert_eq!(stage(&t, "sandbox")["verdict"], "refused");
    assert_eq!(t["refusal"]["code"], "invalid_clock_request");
    gw.shutdown().await;
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
async fn two_gateways_sharing_redis_see_each_others_traces() {
    let redis = Redis::start().await;
    let store = format!(
        "store: {{ kind: redis, url: \"{}\", timeout: 500ms }}\n",
        redis.url
    );
    let a = gateway_with("traces: { max_per_tenant: 3 }\n", &store).await;
    let b = gateway_with("traces: { max_per_tenant: 3 }\n", &store).await;
    let (_, key) = tenant(&a, "roomy").await;
    let c = client();
    let r = c
        .post(a.url(CREATE))
        .header("x-api-key", &key)
        .json(&json!({"amount": "no", "currency": "usd"}))
        .send()
        .await
        .expect("request");
    let id = request_id(&r);
    problem(r, 400, "invalid_request").await;
    // Written by A (A's lookup waits for its own queue), read by B.
    trace(&a, &key, &id).await;
    let t = trace(&b, &key, &id).await;
    assert_eq!(t["refusal"]["code"], "invalid_request");
    // The ring bound holds across replicas: two more on each.
    for gw in [&a, &b, &a, &b] {
        let r = c
            .get(gw.url(CUSTOMER))
            .header("x-api-key", &key)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        trace(gw, &key, &request_id(&r)).await;
    }
    assert_eq!(listing(&b, &key, "").await.len(), 3);
    assert_eq!(listing(&a, &key, "?status=2xx").await.len(), 3);
    let (status, _) = get_text(&b, &key, &format!("/_sandbox/requests/{id}")).await;
    assert_eq!(status, 404, "pushed out of the ring");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_body_streamed_to_a_backend_is_teed_into_the_trace() {
    let backend = common::TestUpstream::echo().await;
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\nauth:\n  api_keys: {{ prefix: sk_sandbox_, live_prefixes: [sk_live_] }}\napis:\n  - name: backend\n    prefix: /backend\n    mode: upstream\n    upstream: {{ url: \"http://{}\" }}\n",
        backend.addr
    );
    let gw = start_gateway(sandbox_dir(&[("sandgate.yaml", &config)])).await;
    let (_, key) = tenant(&gw, "roomy").await;
    let body = format!(
        "{{\"card\": \"5555555555554444\", \"password\": \"pw-secret-value\", \"pad\": \"{}\"}}",
        "y".repeat(40_000)
    );
    let r = client()
        .post(gw.url("/backend/charges"))
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    // The backend got the whole body.
    let answer: Value = r.json().await.expect("json");
    assert_eq!(answer["body_len"], body.len());
    let t = trace(&gw, &key, &id).await;
    assert_eq!(t["mode"], "upstream");
    assert_eq!(t["source"], "upstream");
    assert!(t["upstream_latency_ms"].as_f64().is_some(), "{t}");
    let b = &t["request"]["body"];
    assert_eq!(b["truncated"], true, "{b}");
    assert_eq!(b["bytes"], body.len());
    let text = t.to_string();
    assert!(!text.contains("5555555555554444"), "{text}");
    assert!(!text.contains("pw-secret-value"), "{text}");
    assert!(text.contains("************4444"), "{text}");
    assert_eq!(t["response"]["body"]["content"]["body_len"], body.len());
    gw.shutdown().await;
}
