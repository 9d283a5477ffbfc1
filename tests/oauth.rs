//! The built-in token issuer over real HTTP: client credentials with
//! `client_secret_basic` and `client_secret_post`, the RFC 6749 error shape
//! for every way a token request can be wrong, discovery and JWKS documents
//! that verify the tokens it hands out, a signing key generated once (mode
//! 0600) and kept across restarts, and tokens that stop working when their
//! sandbox is deactivated.

mod common;

use base64::Engine as _;
use common::{PAYMENTS, TestGateway, problem, sandbox_dir, start_gateway};
use sandgate::tenants::{self, Credentials, DAY};
use serde_json::Value;

const ISS: &str = "https://api.sandbox.example.com";
const CUSTOMER: &str = "/payments/v1/customers/cus_NffrFeUfNV2Hib";

fn config() -> String {
    format!(
        "listeners:\n  - addr: 127.0.0.1:0\nauth:\n  builtin_issuer:\n    issuer: {ISS}\n    signing_key: keys/issuer.pem\n    token_ttl: 10m\n    scopes: [payments:read, payments:write]\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n"
    )
}

async fn gateway_in(dir: tempfile::TempDir) -> TestGateway {
    start_gateway(dir).await
}

async fn gateway() -> TestGateway {
    gateway_in(sandbox_dir(&[
        ("sandgate.yaml", &config()),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await
}

/// Provisions a tenant in the gateway's registry.
async fn tenant(gw: &TestGateway, expires_in: u64) -> (tenants::Tenant, Credentials) {
    let (t, creds) = tenants::new_tenant(
        "Acme",
        "dev@acme.test",
        tenants::now_secs(),
        std::time::Duration::from_secs(expires_in),
        "sk_sandbox_",
    )
    .expect("tenant");
    registry(gw).put(&t).await.expect("store tenant");
    (t, creds)
}

fn registry(gw: &TestGateway) -> sandgate::tenants::Registry {
    gw.running
        .as_ref()
        .expect("running")
        .gateway
        .registry()
        .clone()
}

fn form(c: &reqwest::Client, gw: &TestGateway, body: &str) -> reqwest::RequestBuilder {
    c.post(gw.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
}

/// Checks an RFC 6749 §5.2 error answer.
async fn oauth_error(resp: reqwest::Response, status: u16, error: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status for {error}");
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    if status == 401 {
        assert!(
            resp.headers().contains_key("www-authenticate"),
            "401 names the scheme"
        );
    }
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"], error, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("three parts");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("JSON claims")
}

#[tokio::test]
async fn client_credentials_with_basic_or_post_give_a_token_the_gateway_accepts() {
    let gw = gateway().await;
    let (t, creds) = tenant(&gw, 7 * DAY).await;
    let c = common::client();

    // client_secret_basic
    let resp = form(&c, &gw, "grant_type=client_credentials")
        .basic_auth(&creds.client_id, Some(&creds.client_secret))
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["token_type"], "Bearer");
    let ttl = body["expires_in"].as_u64().expect("expires_in");
    assert!((590..=600).contains(&ttl), "token_ttl 10m: {ttl}");
    assert_eq!(body["scope"], "payments:read payments:write");
    let token = body["access_token"].as_str().expect("access_token");
    let claims = claims_of(token);
    assert_eq!(claims["iss"], ISS);
    assert_eq!(claims["aud"], ISS);
    assert_eq!(claims["tenant"], t.id.as_str());
    assert_eq!(claims["client_id"], creds.client_id.as_str());

    let resp = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "the gateway accepts its own token");

    // client_secret_post, with a narrower scope.
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&scope=payments%3Aread",
        creds.client_id, creds.client_secret
    );
    let resp = form(&c, &gw, &body).send().await.expect("token request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["scope"], "payments:read");
    assert_eq!(
        claims_of(body["access_token"].as_str().expect("token"))["scope"],
        "payments:read"
    );
}

#[tokio::test]
async fn every_bad_token_request_gets_its_oauth_error() {
    let gw = gateway().await;
    let (_, creds) = tenant(&gw, 7 * DAY).await;
    let c = common::client();
    let grant = "grant_type=client_credentials";

    // Wrong secret, unknown client, no client authentication at all.
    let resp = form(&c, &gw, grant)
        .basic_auth(&creds.client_id, Some("not-the-secret"))
        .send()
        .await
        .expect("request");
    let body = oauth_error(resp, 401, "invalid_client").await;
    assert!(
        !body.to_string().contains("not-the-secret"),
        "never echo a secret"
    );
    let resp = form(&c, &gw, grant)
        .basic_auth("cli_nobody", Some(&creds.client_secret))
        .send()
        .await
        .expect("request");
    oauth_error(resp, 401, "invalid_client").await;
    let resp = form(&c, &gw, grant).send().await.expect("request");
    oauth_error(resp, 401, "invalid_client").await;

    // Both authentication methods at once.
    let body = format!("{grant}&client_id={}", creds.client_id);
    let resp = form(&c, &gw, &body)
        .basic_auth(&creds.client_id, Some(&creds.client_secret))
        .send()
        .await
        .expect("request");
    oauth_error(resp, 400, "invalid_request").await;

    let ok =
        |body: &str| form(&c, &gw, body).basic_auth(&creds.client_id, Some(&creds.client_secret));
    // No grant type, another grant type, a repeated parameter, a scope it cannot grant.
    oauth_error(
        ok("scope=payments%3Aread").send().await.expect("request"),
        400,
        "invalid_request",
    )
    .await;
    oauth_error(
        ok("grant_type=password&username=a&password=b")
            .send()
            .await
            .expect("request"),
        400,
        "unsupported_grant_type",
    )
    .await;
    oauth_error(
        ok("grant_type=client_credentials&grant_type=client_credentials")
            .send()
            .await
            .expect("request"),
        400,
        "invalid_request",
    )
    .await;
    let body = oauth_error(
        ok("grant_type=client_credentials&scope=admin")
            .send()
            .await
            .expect("request"),
        400,
        "invalid_scope",
    )
    .await;
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("payments:read")),
        "names the grantable scopes: {body}"
    );

    // Not a form.
    let resp = c
        .post(gw.url("/oauth/token"))
        .basic_auth(&creds.client_id, Some(&creds.client_secret))
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .expect("request");
    oauth_error(resp, 400, "invalid_request").await;

    // The token endpoint takes POST only.
    let resp = c.get(gw.url("/oauth/token")).send().await.expect("request");
    assert_eq!(
        resp.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    problem(resp, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn expired_and_deactivated_sandboxes_get_no_tokens_and_their_tokens_stop_working() {
    let gw = gateway().await;
    let c = common::client();

    // Expired: no token, with the reason.
    let (mut expired, creds) = tenant(&gw, DAY).await;
    expired.expires_at = tenants::now_secs() - 60;
    registry(&gw).put(&expired).await.expect("store");
    let resp = form(&c, &gw, "grant_type=client_credentials")
        .basic_auth(&creds.client_id, Some(&creds.client_secret))
        .send()
        .await
        .expect("request");
    let body = oauth_error(resp, 400, "unauthorized_client").await;
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("expired")),
        "{body}"
    );

    // A token issued before deactivation stops working at once.
    let (t, creds) = tenant(&gw, DAY).await;
    let resp = form(&c, &gw, "grant_type=client_credentials")
        .basic_auth(&creds.client_id, Some(&creds.client_secret))
        .send()
        .await
        .expect("request");
    let token: Value = resp.json().await.expect("JSON");
    let token = token["access_token"].as_str().expect("token").to_owned();
    let ok = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    registry(&gw)
        .deactivate(t, tenants::now_secs())
        .await
        .expect("deactivate");
    let resp = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    problem(resp, 401, "unknown_tenant").await;
    let resp = form(&c, &gw, "grant_type=client_credentials")
        .basic_auth(&creds.client_id, Some(&creds.client_secret))
        .send()
        .await
        .expect("request");
    oauth_error(resp, 401, "invalid_client").await;
}

#[tokio::test]
async fn discovery_and_jwks_describe_the_issuer_and_verify_its_tokens() {
    let gw = gateway().await;
    let (_, creds) = tenant(&gw, DAY).await;
    let c = common::client();
    let conf: Value = c
        .get(gw.url("/.well-known/openid-configuration"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(conf["issuer"], ISS);
    assert_eq!(conf["token_endpoint"], format!("{ISS}/oauth/token"));
    assert_eq!(conf["jwks_uri"], format!("{ISS}/.well-known/jwks.json"));

    let jwks: jsonwebtoken::jwk::JwkSet = c
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JWKS");
    assert_eq!(jwks.keys.len(), 1);
    let resp: Value = form(&c, &gw, "grant_type=client_credentials")
        .basic_auth(&creds.client_id, Some(&creds.client_secret))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    let token = resp["access_token"].as_str().expect("token");
    // Verify the token independently, with the published key only.
    let header = jsonwebtoken::decode_header(token).expect("header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("the token's kid is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_issuer(&[ISS]);
    v.set_audience(&[ISS]);
    jsonwebtoken::decode::<Value>(token, &key, &v).expect("verifies with the published key");
}

#[tokio::test]
async fn the_signing_key_is_generated_once_private_and_kept_across_restarts() {
    let dir = sandbox_dir(&[
        ("sandgate.yaml", &config()),
        ("contracts/payments.yaml", PAYMENTS),
    ]);
    let key_path = dir.path().join("keys/issuer.pem");
    assert!(!key_path.exists());
    // `sandgate check` validates without creating it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["check", "--config"])
        .arg(dir.path())
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!key_path.exists(), "check creates nothing");

    let gw = gateway_in(dir).await;
    let pem = std::fs::read_to_string(&key_path).expect("key generated at start");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    }
    let c = common::client();
    let jwks1: Value = c
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    // Restart on the same directory: the same key, so tokens stay valid.
    let dir = {
        let mut gw = gw;
        gw.running.take().expect("running").shutdown().await;
        gw.dir
    };
    let gw = gateway_in(dir).await;
    assert_eq!(
        std::fs::read_to_string(&key_path).expect("key"),
        pem,
        "the key is not replaced"
    );
    let jwks2: Value = c
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(jwks1, jwks2);

    // A key file that is not a key is a located load error.
    std::fs::write(&key_path, "not a key").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["check", "--config"])
        .arg(gw.dir.path())
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("sandgate.yaml:") && stdout.contains("PRIVATE KEY"),
        "{stdout}"
    );
}

#[tokio::test]
async fn each_credential_reaches_only_its_own_tenant() {
    let up = common::TestUpstream::echo().await;
    let config = format!(
        "{}  - name: echo\n    prefix: /echo\n    mode: upstream\n    upstream: {{ url: \"http://{}\" }}\n",
        config(),
        up.addr
    );
    let gw = gateway_in(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await;
    let (a, creds_a) = tenant(&gw, DAY).await;
    let (b, creds_b) = tenant(&gw, DAY).await;
    let c = common::client();
    let token_of = |creds: &Credentials| {
        form(&c, &gw, "grant_type=client_credentials")
            .basic_auth(&creds.client_id, Some(&creds.client_secret))
    };
    let mut calls = Vec::new();
    for (t, creds) in [(&a, &creds_a), (&b, &creds_b)] {
        let tok: Value = token_of(creds)
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("JSON");
        let tok = tok["access_token"].as_str().expect("token").to_owned();
        calls.push((t.id.clone(), format!("Bearer {tok}")));
        calls.push((t.id.clone(), format!("Bearer {}", creds.api_key)));
    }
    let other = |id: &str| {
        if id == a.id {
            b.id.clone()
        } else {
            a.id.clone()
        }
    };
    for (owner, auth) in &calls {
        // The caller also claims the other tenant in the header the backend trusts.
        let resp = c
            .get(gw.url("/echo/v1/whoami"))
            .header("authorization", auth)
            .header("x-sandgate-tenant", other(owner))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
    }
    let seen = up.seen();
    assert_eq!(seen.len(), calls.len());
    for ((owner, _), s) in calls.iter().zip(&seen) {
        let tenants: Vec<_> = s.headers.get_all("x-sandgate-tenant").iter().collect();
        assert_eq!(
            tenants,
            vec![owner.as_str()],
            "the backend learns exactly the credential's tenant"
        );
        assert!(
            !s.headers.contains_key("authorization"),
            "credentials are not forwarded"
        );
    }
}
