//! Safe writes over real HTTP against the real gateway and a real upstream
//! server that counts the writes it receives: `X-Dry-Run` (simulated,
//! refused and forwarded dry runs, the write counter staying at zero when
//! the backend did not declare it takes them; bad values; GET marked
//! not-applicable; `require_dry_run` → 428), `Idempotency-Key` (replay with
//! `Idempotent-Replayed`, a reused key, the in-flight conflict of two
//! concurrent requests, keys over 255 bytes, requests refused before
//! dispatch not stored, a replay across two replicas sharing a real
//! `redis-server`), and the tenant's test clock (get, freeze, advance,
//! backwards, dry run, back to real time, `Sandgate-Clock` at the backend).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{PAYMENTS, TestGateway, TestUpstream, UpBody, problem, sandbox_dir, start_gateway};
use http::Response;
use http_body_util::{BodyExt, Full};
use sandgate::tenants::{self, DAY};

const POLICY: &str =
    "plans:\n  big:\n    rate: { requests: 1000, per: 1s, burst: 1000 }\ndefault_plan: big\n";

/// A backend that counts the writes it receives and answers each with
/// `{"n": <write number>, "path": …}`; `/slow` answers after 700 ms.
async fn backend() -> (TestUpstream, Arc<AtomicUsize>) {
    let writes = Arc::new(AtomicUsize::new(0));
    let w = writes.clone();
    let up = TestUpstream::start(move |parts, _body| {
        let w = w.clone();
        async move {
            let n = if parts.method == http::Method::GET {
                0
            } else {
                w.fetch_add(1, Ordering::SeqCst) + 1
            };
            if parts.uri.path().ends_with("/slow") {
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            let text = format!("{{\"n\":{n},\"path\":\"{}\"}}", parts.uri.path());
            let mut r: Response<UpBody> = Response::new(Full::new(Bytes::from(text)).boxed());
            *r.status_mut() = if parts.method == http::Method::POST {
                http::StatusCode::CREATED
            } else {
                http::StatusCode::OK
            };
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
    })
    .await;
    (up, writes)
}

/// The sandbox: the payments facade, and four upstream APIs on one backend
/// (`orders` simulates without a contract and requires dry-run DELETEs,
/// `pay-up` simulates from the payments contract, `legacy` refuses dry
/// runs, `ledger` forwards them).
fn config(backend: &str, store: &str) -> String {
    format!(
        "listeners:\n  - addr: 127.0.0.1:0\n{store}auth:\n  api_keys: {{ prefix: sk_sandbox_, live_prefixes: [sk_live_] }}\napis:
  - name: payments
    prefix: /payments
    contract: contracts/payments.yaml
    mode: facade
  - name: orders
    prefix: /orders
    mode: upstream
    upstream: {{ url: \"http://{backend}\" }}
    require_dry_run:
      - methods: [DELETE]
  - name: pay-up
    prefix: /pay-up
    contract: contracts/payments.yaml
    mode: upstream
    upstream: {{ url: \"http://{backend}\" }}
  - name: legacy
    prefix: /legacy
    mode: upstream
    dry_run: refuse
    upstream: {{ url: \"http://{backend}\" }}
  - name: ledger
    prefix: /ledger
    mode: upstream
    dry_run: forward
    upstream: {{ url: \"http://{backend}\" }}
"
    )
}

async fn gateway(backend: &TestUpstream, store: &str) -> TestGateway {
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config(&backend.addr.to_string(), store)),
        ("contracts/payments.yaml", PAYMENTS),
        ("policies/plans.yaml", POLICY),
    ]))
    .await
}

/// A tenant of `gw`; returns its API key.
async fn tenant(gw: &TestGateway) -> String {
    let now = tenants::now_secs();
    let (mut t, creds) =
        tenants::new_tenant("Acme", "dev@acme.test", now, Duration::ZERO, "sk_sandbox_")
            .expect("tenant");
    t.plan = "big".into();
    t.expires_at = now + 7 * DAY;
    let registry = gw
        .running
        .as_ref()
        .expect("running")
        .gateway
        .registry()
        .clone();
    registry.put(&t).await.expect("store tenant");
    creds.api_key
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

const INTENT: &str = r#"{"amount": 2000, "currency": "usd"}"#;

#[tokio::test]
async fn a_dry_run_write_never_reaches_a_backend_that_did_not_declare_it() {
    let (up, writes) = backend().await;
    let gw = gateway(&up, "").await;
    let key = tenant(&gw).await;
    let c = common::client();

    // simulate, no contract: a plain answer saying what was checked.
    let r = c
        .post(gw.url("/orders/v1/things"))
        .bearer_auth(&key)
        .header("x-dry-run", "true")
        .json(&serde_json::json!({"name": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-dry-run"), "simulated");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["object"], "dry_run");
    assert_eq!(body["forwarded"], false);
    assert_eq!(body["path"], "/v1/things");

    // simulate, with a contract: the facade's answer for the operation.
    let r = c
        .post(gw.url("/pay-up/v1/payment_intents"))
        .bearer_auth(&key)
        .header("x-dry-run", "true")
        .header("content-type", "application/json")
        .body(INTENT)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-dry-run"), "simulated");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["object"], "payment_intent");

    // refuse: 400, nothing sent.
    let r = c
        .delete(gw.url("/legacy/v1/things/1"))
        .bearer_auth(&key)
        .header("x-dry-run", "true")
        .send()
        .await
        .expect("send");
    assert_eq!(header(&r, "x-dry-run"), "simulated");
    let p = problem(r, 400, "dry_run_unsupported").await;
    assert_eq!(p["stage"], "dispatch");
    assert_eq!(p["rule"], "apis.legacy.dry_run");

    // The facade simulates too (it has no backend at all).
    let r = c
        .post(gw.url("/payments/v1/payment_intents"))
        .bearer_auth(&key)
        .header("x-dry-run", "true")
        .header("content-type", "application/json")
        .body(INTENT)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-dry-run"), "simulated");

    assert_eq!(
        writes.load(Ordering::SeqCst),
        0,
        "no write reached the backend"
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());

    // forward: the backend declared it takes dry runs, and is told.
    let r = c
        .put(gw.url("/ledger/v1/entries/1"))
        .bearer_auth(&key)
        .header("x-dry-run", "TRUE")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-dry-run"), "simulated");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-dry-run"], "true");

    // A normal write to the same backend carries no X-Dry-Run, even when
    // the client sent `false`.
    let r = c
        .put(gw.url("/ledger/v1/entries/1"))
        .bearer_auth(&key)
        .header("x-dry-run", "false")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-dry-run"), "");
    assert!(!up.seen()[1].headers.contains_key("x-dry-run"));
}

#[tokio::test]
async fn the_dry_run_header_is_true_or_false_and_reads_are_not_applicable() {
    let (up, writes) = backend().await;
    let gw = gateway(&up, "").await;
    let key = tenant(&gw).await;
    let c = common::client();
    let r = c
        .post(gw.url("/orders/v1/things"))
        .bearer_auth(&key)
        .header("x-dry-run", "maybe")
        .body("{}")
        .send()
        .await
        .expect("send");
    let p = problem(r, 400, "invalid_dry_run_header").await;
    assert_eq!(p["stage"], "edge");
    assert!(p["detail"].as_str().unwrap_or_default().contains("maybe"));

    let r = c
        .get(gw.url("/orders/v1/things"))
        .bearer_auth(&key)
        .header("x-dry-run", "true")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-dry-run"), "not-applicable");
    assert_eq!(up.seen().len(), 1, "a GET runs as usual");

    // require_dry_run: a DELETE on `orders` must be a dry run.
    let r = c
        .delete(gw.url("/orders/v1/things/1"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("send");
    let p = problem(r, 428, "dry_run_required").await;
    assert_eq!(p["stage"], "admit");
    assert_eq!(p["rule"], "apis.orders.require_dry_run[0]");
    assert!(
        p["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("X-Dry-Run: true")
    );
    let r = c
        .delete(gw.url("/orders/v1/things/1"))
        .bearer_auth(&key)
        .header("x-dry-run", "true")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-dry-run"), "simulated");
    assert_eq!(writes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer() {
    let (up, writes) = backend().await;
    let gw = gateway(&up, "").await;
    let key = tenant(&gw).await;
    let c = common::client();
    let post = |path: &str, idem: &str, body: &'static str| {
        c.post(gw.url(path))
            .bearer_auth(&key)
            .header("idempotency-key", idem)
            .header("content-type", "application/json")
            .body(body)
    };

    let first = post("/orders/v1/things", "k-1", r#"{"a":1}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(first.status(), 201);
    assert_eq!(header(&first, "idempotent-replayed"), "");
    let first_body = first.text().await.expect("body");
    let again = post("/orders/v1/things", "k-1", r#"{"a":1}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(again.status(), 201);
    assert_eq!(header(&again, "idempotent-replayed"), "true");
    assert_eq!(header(&again, "content-type"), "application/json");
    assert!(!header(&again, "x-request-id").is_empty());
    assert_eq!(again.text().await.expect("body"), first_body);
    assert_eq!(writes.load(Ordering::SeqCst), 1, "the backend ran it once");

    // The same key with another body, or another path: refused.
    let r = post("/orders/v1/things", "k-1", r#"{"a":2}"#)
        .send()
        .await
        .expect("send");
    let p = problem(r, 400, "idempotency_key_reused").await;
    assert_eq!(p["stage"], "idempotency");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("POST /orders/v1/things")
    );
    let r = post("/orders/v1/other", "k-1", r#"{"a":1}"#)
        .send()
        .await
        .expect("send");
    problem(r, 400, "idempotency_key_reused").await;

    // Facade answers are replayed too.
    let a = post("/payments/v1/payment_intents", "k-facade", INTENT)
        .send()
        .await
        .expect("send");
    assert_eq!(a.status(), 200);
    let a_body = a.text().await.expect("body");
    let b = post("/payments/v1/payment_intents", "k-facade", INTENT)
        .send()
        .await
        .expect("send");
    assert_eq!(header(&b, "idempotent-replayed"), "true");
    assert_eq!(b.text().await.expect("body"), a_body);

    // Over 255 bytes: refused.
    let long = "k".repeat(256);
    let r = post("/orders/v1/things", &long, "{}")
        .send()
        .await
        .expect("send");
    let p = problem(r, 400, "invalid_idempotency_key").await;
    assert!(p["detail"].as_str().unwrap_or_default().contains("256"));
    let ok = post("/orders/v1/things", &"k".repeat(255), "{}")
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 201);

    // A dry run neither replays nor stores.
    let r = post("/orders/v1/things", "k-dry", "{}")
        .header("x-dry-run", "true")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "idempotent-replayed"), "");
    let real = post("/orders/v1/things", "k-dry", "{}")
        .send()
        .await
        .expect("send");
    assert_eq!(real.status(), 201, "the dry run left no record");
    assert_eq!(header(&real, "idempotent-replayed"), "");
}

#[tokio::test]
async fn a_request_refused_before_dispatch_leaves_its_key_unused() {
    let (up, writes) = backend().await;
    let gw = gateway(&up, "").await;
    let key = tenant(&gw).await;
    let c = common::client();
    // Fails validation (amount must be an integer): refused, not stored.
    let r = c
        .post(gw.url("/pay-up/v1/payment_intents"))
        .bearer_auth(&key)
        .header("idempotency-key", "k-2")
        .header("content-type", "application/json")
        .body(r#"{"amount": "lots", "currency": "usd"}"#)
        .send()
        .await
        .expect("send");
    problem(r, 400, "invalid_request").await;
    // The same key with a corrected request runs, and is then stored.
    for replayed in ["", "true"] {
        let r = c
            .post(gw.url("/pay-up/v1/payment_intents"))
            .bearer_auth(&key)
            .header("idempotency-key", "k-2")
            .header("content-type", "application/json")
            .body(INTENT)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 201);
        assert_eq!(header(&r, "idempotent-replayed"), replayed);
    }
    assert_eq!(writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_key_in_flight_is_refused_with_409() {
    let (up, writes) = backend().await;
    let gw = gateway(&up, "").await;
    let key = tenant(&gw).await;
    let c = common::client();
    let send = || {
        c.post(gw.url("/orders/v1/slow"))
            .bearer_auth(&key)
            .header("idempotency-key", "k-slow")
            .body("{}")
            .send()
    };
    let (a, b) = tokio::join!(send(), send());
    let (a, b) = (a.expect("a"), b.expect("b"));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409]);
    let conflict = if a.status() == 409 { a } else { b };
    assert_eq!(header(&conflict, "retry-after"), "1");
    let p = problem(conflict, 409, "idempotency_conflict").await;
    assert_eq!(p["retryable"], true);
    assert_eq!(writes.load(Ordering::SeqCst), 1);
    // Once the first one finished, the key replays its answer.
    let r = send().await.expect("send");
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "idempotent-replayed"), "true");
    assert_eq!(writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_test_clock_is_set_advanced_and_forwarded() {
    let (up, _writes) = backend().await;
    let gw = gateway(&up, "").await;
    let key = tenant(&gw).await;
    let c = common::client();
    let clock = |method: http::Method, body: Option<&'static str>| {
        let mut rb = c
            .request(method, gw.url("/_sandbox/clock"))
            .bearer_auth(&key);
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b);
        }
        rb.send()
    };

    let r = clock(http::Method::GET, None).await.expect("send");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["frozen"], false);
    assert!(v["frozen_time"].is_null());

    let r = clock(
        http::Method::POST,
        Some(r#"{"frozen_time": "2027-01-01T00:00:00Z"}"#),
    )
    .await
    .expect("send");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["frozen"], true);
    assert_eq!(v["now"], "2027-01-01T00:00:00Z");

    let r = clock(http::Method::POST, Some(r#"{"advance": "30d"}"#))
        .await
        .expect("send");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["now"], "2027-01-31T00:00:00Z");

    // Backwards: refused, and the clock stays.
    let r = clock(
        http::Method::POST,
        Some(r#"{"frozen_time": "2027-01-02T00:00:00Z"}"#),
    )
    .await
    .expect("send");
    let p = problem(r, 400, "clock_backwards").await;
    assert_eq!(p["stage"], "sandbox");
    for bad in [
        r#"{"advance": "-1d"}"#,
        r#"{"frozen_time": "soon"}"#,
        r#"{"advance": "1d", "frozen_time": "2030-01-01T00:00:00Z"}"#,
        "[]",
    ] {
        let r = clock(http::Method::POST, Some(bad)).await.expect("send");
        problem(r, 400, "invalid_clock_request").await;
    }
    // A dry run says what would happen and changes nothing.
    let r = c
        .post(gw.url("/_sandbox/clock"))
        .bearer_auth(&key)
        .header("x-dry-run", "true")
        .body(r#"{"advance": "1d"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(header(&r, "x-dry-run"), "simulated");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["now"], "2027-02-01T00:00:00Z");
    let r = clock(http::Method::GET, None).await.expect("send");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["now"], "2027-01-31T00:00:00Z");

    // The backend learns the tenant's time.
    let r = c
        .get(gw.url("/orders/v1/things"))
        .bearer_auth(&key)
        .header("sandgate-clock", "1999-01-01T00:00:00Z")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    assert_eq!(
        seen.last().expect("seen").headers["sandgate-clock"],
        "2027-01-31T00:00:00Z"
    );

    // PUT is not a clock method; DELETE returns to real time.
    let r = clock(http::Method::PUT, Some("{}")).await.expect("send");
    problem(r, 405, "method_not_allowed").await;
    let r = clock(http::Method::DELETE, None).await.expect("send");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["frozen"], false);
    let real = tenants::now_secs();
    let now = v["now_unix"].as_u64().expect("now_unix");
    assert!(now.abs_diff(real) < 5, "{now} vs {real}");
    // Once real again, backends get no clock header.
    c.get(gw.url("/orders/v1/things"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("send");
    let seen = up.seen();
    assert!(
        !seen
            .last()
            .expect("seen")
            .headers
            .contains_key("sandgate-clock")
    );

    // Another tenant's clock is its own.
    let other = tenant(&gw).await;
    let r = c
        .get(gw.url("/_sandbox/clock"))
        .bearer_auth(&other)
        .send()
        .await
        .expect("send");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["frozen"], false);
    // Without credentials: refused like any tenant endpoint.
    let r = c.get(gw.url("/_sandbox/clock")).send().await.expect("send");
    problem(r, 401, "missing_credentials").await;
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
async fn two_replicas_sharing_redis_replay_one_answer_and_share_the_clock() {
    let redis = Redis::start().await;
    let (up, writes) = backend().await;
    let store = format!("store: {{ kind: redis, url: \"{}\" }}\n", redis.url);
    let a = gateway(&up, &store).await;
    let b = gateway(&up, &store).await;
    let key = tenant(&a).await;
    let c = common::client();
    let post = |gw: &TestGateway| {
        c.post(gw.url("/orders/v1/things"))
            .bearer_auth(&key)
            .header("idempotency-key", "k-cluster")
            .body(r#"{"x":1}"#)
            .send()
    };
    let first = post(&a).await.expect("send");
    assert_eq!(first.status(), 201);
    let first_body = first.text().await.expect("body");
    let again = post(&b).await.expect("send");
    assert_eq!(again.status(), 201);
    assert_eq!(header(&again, "idempotent-replayed"), "true");
    assert_eq!(again.text().await.expect("body"), first_body);
    assert_eq!(writes.load(Ordering::SeqCst), 1);

    // A clock set through one replica is the other's (within its cache TTL).
    let r = c
        .post(a.url("/_sandbox/clock"))
        .bearer_auth(&key)
        .body(r#"{"frozen_time": "2030-06-01T00:00:00Z"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let r = c
        .get(b.url("/_sandbox/clock"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("send");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["now"], "2030-06-01T00:00:00Z");
}

#[tokio::test]
async fn require_dry_run_can_single_out_try_it_tokens() {
    let config = "listeners:\n  - addr: 127.0.0.1:0\nauth:\n  api_keys: { prefix: sk_sandbox_, live_prefixes: [sk_live_] }\n  builtin_issuer:\n    issuer: https://api.sandbox.example.com\n    signing_key: keys/issuer.pem\n    scopes: [payments:write, try_it]\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n    require_dry_run:\n      - { methods: [DELETE], scopes: [try_it] }\n";
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("policies/plans.yaml", POLICY),
    ]))
    .await;
    let now = tenants::now_secs();
    let (mut t, creds) =
        tenants::new_tenant("Acme", "dev@acme.test", now, Duration::ZERO, "sk_sandbox_")
            .expect("tenant");
    t.plan = "big".into();
    t.expires_at = now + 7 * DAY;
    let registry = gw
        .running
        .as_ref()
        .expect("running")
        .gateway
        .registry()
        .clone();
    registry.put(&t).await.expect("store tenant");
    let c = common::client();
    let token = |scope: &'static str| {
        let c = c.clone();
        let url = gw.url("/oauth/token");
        let (id, secret) = (creds.client_id.clone(), creds.client_secret.clone());
        async move {
            let r = c
                .post(url)
                .basic_auth(id, Some(secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("grant_type=client_credentials&scope={scope}"))
                .send()
                .await
                .expect("token request");
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.expect("json");
            v["access_token"].as_str().expect("token").to_owned()
        }
    };
    let try_it = token("try_it").await;
    let partner = token("payments%3Awrite").await;
    let delete = |cred: &str| {
        c.delete(gw.url("/payments/v1/customers/cus_NffrFeUfNV2Hib"))
            .bearer_auth(cred.to_owned())
    };
    let r = delete(&try_it).send().await.expect("send");
    let p = problem(r, 428, "dry_run_required").await;
    assert_eq!(p["rule"], "apis.payments.require_dry_run[0]");
    let r = delete(&try_it)
        .header("x-dry-run", "true")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-dry-run"), "simulated");
    // Other tokens and API keys are not covered by the rule.
    for cred in [partner.as_str(), creds.api_key.as_str()] {
        let r = delete(cred).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-dry-run"), "");
    }
    // A try_it token may still create (the rule names DELETE only).
    let r = c
        .post(gw.url("/payments/v1/customers"))
        .bearer_auth(&try_it)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
}
