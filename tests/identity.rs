//! Identify and admit over real HTTP: sandbox API keys resolve to their
//! tenant, production keys and anything else are refused with an
//! explanation that never echoes the secret, expired sandboxes and APIs
//! outside a sandbox's features are refused, and an upstream backend learns
//! the tenant without ever seeing the caller's key.

mod common;

use common::{PAYMENTS, TestGateway, TestUpstream, problem, sandbox_dir, start_gateway};
use sandgate::tenants::{self, DAY};

/// Provisions a tenant directly in the gateway's registry; returns its API key.
async fn tenant(
    gw: &TestGateway,
    features: Option<Vec<&str>>,
    expires_in: i64,
) -> (String, String) {
    let now = tenants::now_secs();
    let (mut t, creds) = tenants::new_tenant(
        "Acme",
        "dev@acme.test",
        now - DAY,
        std::time::Duration::ZERO,
        "sk_sandbox_",
    )
    .expect("tenant");
    t.features_enabled = features.map(|f| f.into_iter().map(str::to_owned).collect());
    t.expires_at = now.saturating_add_signed(expires_in);
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

async fn gateway(up: &TestUpstream) -> TestGateway {
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\ntenants: {{ sweep_interval: 1s }}\nauth:\n  api_keys: {{ prefix: sk_sandbox_, live_prefixes: [sk_live_] }}\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n  - name: echo\n    prefix: /echo\n    mode: upstream\n    upstream: {{ url: \"http://{}\" }}\n  - name: status\n    prefix: /status\n    mode: upstream\n    auth: none\n    upstream: {{ url: \"http://{}\" }}\n",
        up.addr, up.addr
    );
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await
}

const CUSTOMER: &str = "/payments/v1/customers/cus_NffrFeUfNV2Hib";

#[tokio::test]
async fn api_keys_resolve_to_their_tenant() {
    let up = TestUpstream::echo().await;
    let gw = gateway(&up).await;
    let (id, key) = tenant(&gw, None, 7 * DAY as i64).await;
    let c = common::client();

    let r = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let r = c
        .get(gw.url(CUSTOMER))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);

    // The backend learns the tenant, never the key; a forged tenant header is replaced.
    let r = c
        .get(gw.url("/echo/x"))
        .bearer_auth(&key)
        .header("x-sandgate-tenant", "sbx_victim")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    let last = seen.last().expect("upstream saw the request");
    assert_eq!(last.headers["x-sandgate-tenant"], id.as_str());
    assert!(
        !last.headers.contains_key("authorization"),
        "the sandbox key is not forwarded"
    );
    assert!(!format!("{:?}", last.headers).contains(&key));

    // A public API needs nothing.
    assert_eq!(
        c.get(gw.url("/status/ping"))
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
}

#[tokio::test]
async fn bad_credentials_are_explained_without_echoing_them() {
    let up = TestUpstream::echo().await;
    let gw = gateway(&up).await;
    let c = common::client();

    let r = c.get(gw.url(CUSTOMER)).send().await.expect("request");
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body = problem(r, 401, "missing_credentials").await;
    assert_eq!(body["stage"], "identify");
    assert_eq!(body["rule"], "apis.payments.auth");

    let live = "sk_live_51HxYzSecretProductionKey0123456789";
    let r = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(live)
        .send()
        .await
        .expect("request");
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    let body = problem(r, 401, "production_credentials").await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("sk_sandbox_")),
        "{body}"
    );
    assert!(
        !body.to_string().contains("51HxYz"),
        "the secret is never echoed: {body}"
    );

    let body = problem(
        c.get(gw.url(CUSTOMER))
            .bearer_auth("sk_sandbox_0000")
            .send()
            .await
            .expect("request"),
        401,
        "unknown_api_key",
    )
    .await;
    assert!(!body.to_string().contains("sk_sandbox_0000"));
    problem(
        c.get(gw.url(CUSTOMER))
            .bearer_auth("hello")
            .send()
            .await
            .expect("request"),
        401,
        "malformed_credentials",
    )
    .await;
    assert!(up.seen().is_empty(), "no refused request reached a backend");
}

#[tokio::test]
async fn expired_sandboxes_and_disabled_apis_are_refused() {
    let up = TestUpstream::echo().await;
    let gw = gateway(&up).await;
    let c = common::client();

    let (id, key) = tenant(&gw, None, -60).await;
    let body = problem(
        c.get(gw.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request"),
        403,
        "sandbox_expired",
    )
    .await;
    assert_eq!(body["stage"], "admit");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&id) && d.contains("expired at")),
        "{body}"
    );
    assert!(
        body["hint"].as_str().is_some_and(|h| h.contains("extend")),
        "{body}"
    );

    let (_, key) = tenant(&gw, Some(vec!["echo"]), 7 * DAY as i64).await;
    let body = problem(
        c.get(gw.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request"),
        403,
        "feature_not_enabled",
    )
    .await;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("echo")),
        "{body}"
    );
    assert_eq!(
        c.get(gw.url("/echo/ok"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
}

#[tokio::test]
async fn a_deactivated_sandbox_key_stops_working_at_once() {
    let up = TestUpstream::echo().await;
    let gw = gateway(&up).await;
    let c = common::client();
    let (id, key) = tenant(&gw, None, 7 * DAY as i64).await;
    assert_eq!(
        c.get(gw.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
    let registry = gw
        .running
        .as_ref()
        .expect("running")
        .gateway
        .registry()
        .clone();
    let t = registry.get(&id).await.expect("get").expect("tenant");
    registry
        .deactivate(t, tenants::now_secs())
        .await
        .expect("deactivate");
    problem(
        c.get(gw.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request"),
        401,
        "unknown_api_key",
    )
    .await;
}

#[tokio::test]
async fn the_background_sweep_marks_expired_sandboxes() {
    let up = TestUpstream::echo().await;
    let gw = gateway(&up).await;
    let (expired, _) = tenant(&gw, None, -60).await;
    let (active, _) = tenant(&gw, None, 7 * DAY as i64).await;
    let registry = gw
        .running
        .as_ref()
        .expect("running")
        .gateway
        .registry()
        .clone();
    let mut marked = None;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        marked = registry
            .get(&expired)
            .await
            .expect("get")
            .and_then(|t| t.expired_at);
        if marked.is_some() {
            break;
        }
    }
    assert!(
        marked.is_some(),
        "the sweep (every 1s) marked the expired sandbox"
    );
    let active = registry.get(&active).await.expect("get").expect("tenant");
    assert_eq!(active.expired_at, None, "an active sandbox is left alone");
}
