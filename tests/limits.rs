//! Rate limits of a tenant's plan over real HTTP: a burst hit by many
//! concurrent requests admits exactly the burst; the refusal names the
//! tenant, plan, scope and rule with `Retry-After`; operation rules apply
//! before the API's and the plan's; `RateLimit-Policy` / `RateLimit` on
//! every tenant answer; tenants are independent; quotas admit exactly
//! their size under concurrency, refuse with `quota_exhausted` and survive
//! a restart with the file store; a steady stream faster than the rate is
//! admitted at the configured rate (within 2 %); the admin API changes a
//! tenant's plan; policy mistakes are load errors with `file:line`.

mod common;

use common::{PAYMENTS, TestGateway, problem, sandbox_dir, start_gateway};
use sandgate::tenants::{self, DAY};

const POLICY: &str = "plans:
  trial:
    rate: { requests: 5, per: 60s, burst: 5 }
    apis:
      payments:
        operations:
          createPaymentIntent: { rate: { requests: 2, per: 60s } }
  big:
    rate: { requests: 1000, per: 1s, burst: 1000 }
  metered:
    quotas:
      - { requests: 7, per: day }
      - { requests: 9, per: lifetime }
  steady:
    rate: { requests: 100, per: 1s, burst: 5 }
default_plan: trial
";

async fn gateway() -> TestGateway {
    let config = "listeners:\n  - addr: 127.0.0.1:0\nauth:\n  api_keys: { prefix: sk_sandbox_, live_prefixes: [sk_live_] }\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n";
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("policies/plans.yaml", POLICY),
    ]))
    .await
}

/// A tenant on `plan`; returns (id, API key).
async fn tenant(gw: &TestGateway, plan: &str) -> (String, String) {
    let now = tenants::now_secs();
    let (mut t, creds) = tenants::new_tenant(
        "Acme",
        "dev@acme.test",
        now,
        std::time::Duration::ZERO,
        "sk_sandbox_",
    )
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

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_burst_admits_exactly_its_size_under_concurrency() {
    let gw = gateway().await;
    let (id, key) = tenant(&gw, "trial").await;
    let c = common::client();
    let requests = (0..200).map(|_| {
        let c = c.clone();
        let url = gw.url(CUSTOMER);
        let key = key.clone();
        tokio::spawn(async move { c.get(url).bearer_auth(key).send().await })
    });
    let mut ok = 0;
    let mut limited = Vec::new();
    for r in futures_util::future::join_all(requests).await {
        let r = r.expect("task").expect("request");
        match r.status().as_u16() {
            200 => ok += 1,
            429 => limited.push(r),
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, 5, "the burst is 5");
    assert_eq!(limited.len(), 195);
    let r = limited.pop().expect("a refusal");
    let retry: u64 = header(&r, "retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!((1..=12).contains(&retry), "{retry}");
    assert_eq!(header(&r, "ratelimit-policy"), "\"plan\";q=5;w=60");
    assert!(
        header(&r, "ratelimit").starts_with("\"plan\";r=0;t="),
        "{}",
        header(&r, "ratelimit")
    );
    let p = problem(r, 429, "rate_limited").await;
    assert_eq!(p["stage"], "limit");
    assert_eq!(p["rule"], "plans.trial.rate");
    assert_eq!(p["tenant"], id.as_str());
    assert_eq!(p["plan"], "trial");
    assert_eq!(p["limit"]["scope"], "plan");
    assert_eq!(p["limit"]["requests"], 5);
    assert_eq!(p["limit"]["burst"], 5);
    assert_eq!(p["retry_after"], retry);
    assert_eq!(p["retryable"], true);
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("5 requests per 1m"), "{detail}");

    // Another tenant has its own allowance.
    let (_, other) = tenant(&gw, "trial").await;
    let r = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(&other)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit"), "\"plan\";r=4;t=12");
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn the_operation_rule_applies_first() {
    let gw = gateway().await;
    let (_, key) = tenant(&gw, "trial").await;
    let c = common::client();
    let create = || {
        c.post(gw.url("/payments/v1/payment_intents"))
            .bearer_auth(&key)
            .form(&[("amount", "2000"), ("currency", "usd")])
            .send()
    };
    for left in [1, 0] {
        let r = create().await.expect("request");
        assert_eq!(r.status(), 200);
        // The operation's rule (2 of 2, then 1) is closer to its limit than the plan's.
        assert_eq!(header(&r, "ratelimit-policy"), "\"operation\";q=2;w=60");
        assert!(header(&r, "ratelimit").starts_with(&format!("\"operation\";r={left};")));
    }
    let p = problem(create().await.expect("request"), 429, "rate_limited").await;
    assert_eq!(
        p["rule"],
        "plans.trial.apis.payments.operations.createPaymentIntent.rate"
    );
    assert_eq!(p["limit"]["scope"], "operation");
    // The plan's own allowance was not spent by the refused request: 3 left.
    let r = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit"), "\"plan\";r=2;t=36");
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn an_unknown_plan_falls_back_to_the_default_plan() {
    let gw = gateway().await;
    let (_, key) = tenant(&gw, "no-such-plan").await;
    let r = common::client()
        .get(gw.url(CUSTOMER))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-policy"), "\"plan\";q=5;w=60");
    assert!(gw.shutdown().await);
}

#[test]
fn policy_mistakes_are_load_errors_with_file_and_line() {
    let cases = [
        (
            "plans:\n  trial:\n    rate: { requests: 0, per: 1s }\n",
            3,
            "at least 1",
        ),
        (
            "plans:\n  trial:\n    rate: { requests: 5, per: 1s, burts: 3 }\n",
            3,
            "burts",
        ),
        (
            "plans:\n  trial:\n    apis:\n      nope: { rate: { requests: 1, per: 1s } }\n",
            4,
            "`apis.nope` names no API",
        ),
        (
            "plans:\n  trial:\n    apis:\n      payments:\n        operations:\n          noSuchOp: { rate: { requests: 1, per: 1s } }\n",
            6,
            "payments.operations.noSuchOp",
        ),
        (
            "plans: {}\ndefault_plan: gold\n",
            2,
            "`default_plan: gold` names no plan",
        ),
    ];
    for (policy, line, fragment) in cases {
        let config = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n";
        let dir = sandbox_dir(&[
            ("sandgate.yaml", config),
            ("contracts/payments.yaml", PAYMENTS),
            ("policies/plans.yaml", policy),
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
        .expect_err(fragment)
        .to_string();
        let at = format!("plans.yaml:{line}: ");
        assert!(errors.contains(&at), "{fragment}: no `{at}` in {errors}");
        assert!(errors.contains(fragment), "{fragment}: {errors}");
    }
}

#[tokio::test]
async fn quotas_admit_exactly_their_size_and_say_when_they_reset() {
    let gw = gateway().await;
    let (id, key) = tenant(&gw, "metered").await;
    let c = common::client();
    let requests = (0..60).map(|_| {
        let c = c.clone();
        let url = gw.url(CUSTOMER);
        let key = key.clone();
        tokio::spawn(async move { c.get(url).bearer_auth(key).send().await })
    });
    let mut statuses = Vec::new();
    let mut refusal = None;
    for r in futures_util::future::join_all(requests).await {
        let r = r.expect("task").expect("request");
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            refusal = Some(r);
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 7);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 53);
    let r = refusal.expect("a refusal");
    let retry: u64 = header(&r, "retry-after").parse().expect("Retry-After");
    assert!((1..=86_400).contains(&retry), "{retry}");
    let p = problem(r, 429, "quota_exhausted").await;
    assert_eq!(p["rule"], "plans.metered.quotas[0]");
    assert_eq!(p["tenant"], id.as_str());
    assert_eq!(p["plan"], "metered");
    assert_eq!(p["quota"]["requests"], 7);
    assert_eq!(p["quota"]["per"], "day");
    let resets = p["resets_at"].as_str().unwrap_or_default();
    assert!(resets.ends_with("T00:00:00Z"), "{resets}");
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn quota_counts_survive_a_restart_with_the_file_store() {
    let config = "listeners:\n  - addr: 127.0.0.1:0\nstore: { kind: file, path: data/sandgate.redb }\nauth:\n  api_keys: { prefix: sk_sandbox_, live_prefixes: [sk_live_] }\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n";
    let policy = "plans:\n  small:\n    quotas: [ { requests: 3, per: lifetime } ]\n";
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("policies/plans.yaml", policy),
    ]))
    .await;
    let (_, key) = tenant(&gw, "small").await;
    let c = common::client();
    for _ in 0..2 {
        let r = c
            .get(gw.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    let TestGateway { running, dir, .. } = gw;
    assert!(running.expect("running").shutdown().await);
    let gw = start_gateway(dir).await;
    let r = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "the third of three");
    let r = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert!(
        r.headers().get("retry-after").is_none(),
        "a lifetime quota never resets"
    );
    let p = problem(r, 429, "quota_exhausted").await;
    assert_eq!(p["rule"], "plans.small.quotas[0]");
    assert_eq!(p["retryable"], false);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_full_concurrency_cap_refuses_until_a_slot_comes_back() {
    let config = "listeners:\n  - addr: 127.0.0.1:0\nauth:\n  api_keys: { prefix: sk_sandbox_, live_prefixes: [sk_live_] }\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    fixtures: fixtures\n    mode: facade\n";
    let slow = "fixtures:\n  - name: slow\n    method: GET\n    path: /v1/customers/{customer}\n    response:\n      status: 200\n      delay: 400ms\n      body: { id: cus_slow, object: customer, created: 1, email: null, name: null, description: null, phone: null, metadata: {}, livemode: false }\n";
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("fixtures/slow.yaml", slow),
        (
            "policies/plans.yaml",
            "plans:\n  pair:\n    concurrency: 2\n",
        ),
    ]))
    .await;
    let (id, key) = tenant(&gw, "pair").await;
    let c = common::client();
    let requests = (0..6).map(|_| {
        let c = c.clone();
        let url = gw.url(CUSTOMER);
        let key = key.clone();
        tokio::spawn(async move { c.get(url).bearer_auth(key).send().await })
    });
    let mut ok = 0;
    let mut refused = None;
    for r in futures_util::future::join_all(requests).await {
        let r = r.expect("task").expect("request");
        match r.status().as_u16() {
            200 => ok += 1,
            429 => refused = Some(r),
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 2);
    let r = refused.expect("a refusal");
    assert_eq!(header(&r, "retry-after"), "1");
    let p = problem(r, 429, "too_many_in_flight").await;
    assert_eq!(p["rule"], "plans.pair.concurrency");
    assert_eq!(p["concurrency"], 2);
    assert_eq!(p["tenant"], id.as_str());
    // Every slot came back with its response.
    for _ in 0..2 {
        let r = c
            .get(gw.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn the_admin_api_shows_and_resets_usage() {
    // The admin token is read from the variable `admin.token_env` names;
    // cargo sets CARGO_PKG_NAME for every test process.
    let token = env!("CARGO_PKG_NAME");
    let config = "listeners:\n  - addr: 127.0.0.1:0\nadmin: { token_env: CARGO_PKG_NAME }\nauth:\n  api_keys: { prefix: sk_sandbox_, live_prefixes: [sk_live_] }\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n";
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("policies/plans.yaml", POLICY),
    ]))
    .await;
    let (id, key) = tenant(&gw, "metered").await;
    let c = common::client();
    for _ in 0..3 {
        let r = c
            .get(gw.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    let status: serde_json::Value = c
        .get(gw.admin_url(&format!("/internal/sandboxes/{id}/status")))
        .bearer_auth(token)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    let usage = &status["usage"];
    assert_eq!(usage["plan"], "metered", "{status}");
    assert_eq!(usage["quotas"][0]["rule"], "plans.metered.quotas[0]");
    assert_eq!(usage["quotas"][0]["used"], 3);
    assert_eq!(usage["quotas"][0]["remaining"], 4);
    assert_eq!(usage["quotas"][1]["per"], "lifetime");
    assert_eq!(usage["quotas"][1]["resets_at"], serde_json::Value::Null);

    let reset: serde_json::Value = c
        .post(gw.admin_url(&format!("/internal/sandboxes/{id}/usage/reset")))
        .bearer_auth(token)
        .send()
        .await
        .expect("reset")
        .json()
        .await
        .expect("json");
    assert_eq!(reset["usage"]["quotas"][0]["used"], 0, "{reset}");
    assert_eq!(reset["usage"]["quotas"][1]["used"], 0, "{reset}");

    // A plan change takes effect at once: the `trial` plan's rate now
    // applies, and quota counts are kept.
    let patch = |body: serde_json::Value| {
        c.patch(gw.admin_url(&format!("/internal/sandboxes/{id}")))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let r = patch(serde_json::json!({"plan": "gold"}))
        .await
        .expect("patch");
    let p = problem(r, 400, "invalid_body").await;
    assert_eq!(p["errors"][0]["pointer"], "/plan", "{p}");
    let r = patch(serde_json::json!({"plan": "trial", "colour": "red"}))
        .await
        .expect("patch");
    problem(r, 400, "invalid_body").await;
    let r = patch(serde_json::json!({"plan": "trial"}))
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    let changed: serde_json::Value = r.json().await.expect("json");
    assert_eq!(changed["plan"], "trial", "{changed}");
    let r = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-policy"), "\"plan\";q=5;w=60");
    let r = c
        .patch(gw.admin_url("/internal/sandboxes/sbx_nope"))
        .bearer_auth(token)
        .json(&serde_json::json!({"plan": "trial"}))
        .send()
        .await
        .expect("patch");
    problem(r, 404, "sandbox_not_found").await;

    // Provisioning: a plan must be one of the policies' plans; without
    // one, the sandbox gets default_plan.
    let create = |body: serde_json::Value| {
        c.post(gw.admin_url("/internal/sandboxes"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let r = create(serde_json::json!({"prospect_company": "Acme", "prospect_email": "a@acme.test", "plan": "gold"}))
        .await
        .expect("create");
    let p = problem(r, 400, "invalid_body").await;
    assert_eq!(p["errors"][0]["pointer"], "/plan", "{p}");
    let r =
        create(serde_json::json!({"prospect_company": "Acme", "prospect_email": "a@acme.test"}))
            .await
            .expect("create");
    assert_eq!(r.status(), 201);
    let made: serde_json::Value = r.json().await.expect("json");
    assert_eq!(made["plan"], "trial");
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_tenant_sees_its_own_usage_and_nobody_else_does() {
    let gw = gateway().await;
    let (id, key) = tenant(&gw, "metered").await;
    let (other_id, other) = tenant(&gw, "trial").await;
    let c = common::client();
    for _ in 0..2 {
        let r = c
            .get(gw.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    let mine: serde_json::Value = c
        .get(gw.url("/_sandbox/usage"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    assert_eq!(mine["sandbox_id"], id.as_str());
    assert_eq!(mine["usage"]["plan"], "metered");
    assert_eq!(mine["usage"]["quotas"][0]["used"], 2, "{mine}");
    assert_eq!(mine["usage"]["quotas"][0]["remaining"], 5);
    // Reading usage counts against nothing.
    let again: serde_json::Value = c
        .get(gw.url("/_sandbox/usage"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    assert_eq!(again["usage"]["quotas"][0]["used"], 2);
    // Another tenant sees its own.
    let theirs: serde_json::Value = c
        .get(gw.url("/_sandbox/usage"))
        .bearer_auth(&other)
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    assert_eq!(theirs["sandbox_id"], other_id.as_str());
    assert_eq!(theirs["usage"]["plan"], "trial");
    assert_eq!(theirs["usage"]["rates"][0]["rule"], "plans.trial.rate");
    // Without credentials: the usual explanation of what is accepted.
    let r = c
        .get(gw.url("/_sandbox/usage"))
        .send()
        .await
        .expect("usage");
    let p = problem(r, 401, "missing_credentials").await;
    // It names the setting that exists (tenants come from auth.api_keys),
    // not an API called `_sandbox`.
    assert_eq!(p["rule"], "auth.api_keys", "{p}");
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/_sandbox/") && !d.contains("API '")),
        "{p}"
    );
    let r = c
        .post(gw.url("/_sandbox/usage"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("usage");
    problem(r, 405, "method_not_allowed").await;
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_steady_stream_is_admitted_at_the_configured_rate() {
    // 100 requests/s, burst 5; offered: 4 senders, one request every 4 ms
    // each (about 1,000/s), for 3 s.
    let gw = gateway().await;
    let (_, key) = tenant(&gw, "steady").await;
    let load = common::Load::start(
        vec![gw.url(CUSTOMER)],
        &key,
        4,
        std::time::Duration::from_millis(4),
    );
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let samples = load.stop().await;
    assert!(
        samples.iter().all(|s| s.status == 200 || s.status == 429),
        "only 200 and 429 expected"
    );
    let limited = samples.iter().filter(|s| s.status == 429).count();
    assert!(limited > samples.len() / 2, "the load must exceed the rate");
    let rate = common::admitted_rate(&samples, 5);
    eprintln!("admitted {rate:.2}/s of {} requests", samples.len());
    assert!(
        (rate - 100.0).abs() <= 2.0,
        "admitted {rate:.2}/s, configured 100/s ({} requests sent)",
        samples.len()
    );
    assert!(gw.shutdown().await);
}
