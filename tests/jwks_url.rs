//! Issuer key sets fetched from a URL, against a real JWKS server: key
//! rotation picked up on an unknown `kid`, at most one fetch per cooldown
//! whatever tokens claim, the last good key set kept while the issuer is
//! down, a clear 503 while no key set was ever obtained, and verified
//! tokens never served from the cache past their `exp`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{PAYMENTS, TestGateway, TestUpstream, problem, sandbox_dir, start_gateway};
use http_body_util::{BodyExt as _, Full};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sandgate::tenants::{self, DAY};
use serde_json::json;

const ISS: &str = "https://auth.sandbox.example.com";
const AUD: &str = "https://api.sandbox.example.com";
const CUSTOMER: &str = "/payments/v1/customers/cus_NffrFeUfNV2Hib";
const COOLDOWN: Duration = Duration::from_secs(2);

/// A signing key with its public JWK under `kid`.
struct SigningKey {
    key: EncodingKey,
    jwk: Jwk,
}

fn signing_key(kid: &str) -> SigningKey {
    let pem = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("encoding key");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    SigningKey { key, jwk }
}

/// What the JWKS server answers: a status and a body.
type Answer = Arc<Mutex<(u16, String)>>;

fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
    .expect("jwks")
}

async fn jwks_server(answer: Answer) -> TestUpstream {
    TestUpstream::start(move |_, _| {
        let (status, body) = answer.lock().expect("lock").clone();
        async move {
            let mut r = http::Response::new(Full::new(Bytes::from(body)).boxed());
            *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
    })
    .await
}

async fn gateway(jwks_addr: std::net::SocketAddr, leeway: &str) -> (TestGateway, String) {
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\nauth:\n  issuers:\n    - issuer: {ISS}\n      audiences: [{AUD}]\n      jwks:\n        url: http://{jwks_addr}/.well-known/jwks.json\n        min_refetch_interval: 2s\n        refresh: 10m\n        timeout: 2s\n      algorithms: [ES256]\n      leeway: {leeway}\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n"
    );
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await;
    let (t, _) = tenants::new_tenant(
        "Acme",
        "dev@acme.test",
        tenants::now_secs(),
        Duration::from_secs(7 * DAY),
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
    (gw, t.id)
}

/// A fresh token (a new `jti` each time, so no cache answers for it).
fn token(key: &SigningKey, kid: &str, tenant: &str, ttl: u64) -> String {
    let now = tenants::now_secs();
    let claims = json!({"iss": ISS, "aud": AUD, "exp": now + ttl, "iat": now, "sub": "cli_partner", "tenant": tenant, "jti": ulid::Ulid::new().to_string()});
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, &claims, &key.key).expect("sign")
}

async fn call(gw: &TestGateway, token: &str) -> reqwest::Response {
    common::client()
        .get(gw.url(CUSTOMER))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

/// Waits until the server has answered `n` fetches (the prefetch at start
/// runs in the background).
async fn fetched(server: &TestUpstream, n: usize) {
    for _ in 0..100 {
        if server.seen().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("expected {n} fetches, saw {}", server.seen().len());
}

#[tokio::test]
async fn rotation_is_picked_up_with_at_most_one_fetch_per_cooldown() {
    let k1 = signing_key("k1");
    let k2 = signing_key("k2");
    let answer: Answer = Arc::new(Mutex::new((200, jwks(&[&k1]))));
    let server = jwks_server(answer.clone()).await;
    let (gw, tenant) = gateway(server.addr, "30s").await;
    fetched(&server, 1).await;

    let resp = call(&gw, &token(&k1, "k1", &tenant, 600)).await;
    assert_eq!(resp.status(), 200, "k1 verifies");
    assert_eq!(server.seen().len(), 1, "fetched once, at start");

    // The issuer rotates in k2. Within the cooldown of the last fetch,
    // tokens naming unknown kids (k2, or made-up ones) cause no fetch.
    *answer.lock().expect("lock") = (200, jwks(&[&k1, &k2]));
    problem(
        call(&gw, &token(&k2, "k2", &tenant, 600)).await,
        401,
        "unknown_key",
    )
    .await;
    for i in 0..20 {
        let resp = call(&gw, &token(&k2, &format!("made-up-{i}"), &tenant, 600)).await;
        problem(resp, 401, "unknown_key").await;
    }
    assert_eq!(server.seen().len(), 1, "no fetch within the cooldown");

    // After the cooldown, the first unknown kid refetches and k2 verifies.
    tokio::time::sleep(COOLDOWN + Duration::from_millis(200)).await;
    let resp = call(&gw, &token(&k2, "k2", &tenant, 600)).await;
    assert_eq!(resp.status(), 200, "k2 verifies after the refetch");
    assert_eq!(server.seen().len(), 2);
    let resp = call(&gw, &token(&k2, "k3", &tenant, 600)).await;
    problem(resp, 401, "unknown_key").await;
    assert_eq!(
        server.seen().len(),
        2,
        "the next unknown kid waits for the cooldown"
    );
    let seen = &server.seen()[1];
    assert_eq!(seen.uri, "/.well-known/jwks.json");

    // The issuer goes down: the fetch fails, the last good set stays.
    *answer.lock().expect("lock") = (503, "down".into());
    tokio::time::sleep(COOLDOWN + Duration::from_millis(200)).await;
    let resp = call(&gw, &token(&k2, "k4", &tenant, 600)).await;
    problem(resp, 401, "unknown_key").await;
    assert_eq!(server.seen().len(), 3, "the refetch was tried");
    for (k, kid) in [(&k1, "k1"), (&k2, "k2")] {
        let resp = call(&gw, &token(k, kid, &tenant, 600)).await;
        assert_eq!(
            resp.status(),
            200,
            "{kid} still verifies while the issuer is down"
        );
    }
    // Keys named by the token itself are never fetched.
    assert!(
        server
            .seen()
            .iter()
            .all(|s| s.uri == "/.well-known/jwks.json")
    );
}

#[tokio::test]
async fn an_issuer_down_since_start_gives_503_until_it_answers() {
    let k1 = signing_key("k1");
    let answer: Answer = Arc::new(Mutex::new((500, "oops".into())));
    let server = jwks_server(answer.clone()).await;
    let (gw, tenant) = gateway(server.addr, "30s").await;
    fetched(&server, 1).await;

    let resp = call(&gw, &token(&k1, "k1", &tenant, 600)).await;
    let p = problem(resp, 503, "issuer_keys_unavailable").await;
    assert_eq!(p["stage"], "identify");
    assert_eq!(p["retryable"], true);
    assert!(
        p["detail"].as_str().unwrap_or_default().contains(ISS),
        "{p}"
    );

    *answer.lock().expect("lock") = (200, jwks(&[&k1]));
    tokio::time::sleep(COOLDOWN + Duration::from_millis(200)).await;
    let resp = call(&gw, &token(&k1, "k1", &tenant, 600)).await;
    assert_eq!(resp.status(), 200, "verifies once the issuer answers");
}

#[tokio::test]
async fn a_cached_token_is_not_accepted_past_its_exp_nor_with_another_signature() {
    let k1 = signing_key("k1");
    let answer: Answer = Arc::new(Mutex::new((200, jwks(&[&k1]))));
    let server = jwks_server(answer).await;
    let (gw, tenant) = gateway(server.addr, "0s").await;
    fetched(&server, 1).await;

    let short = token(&k1, "k1", &tenant, 2);
    for _ in 0..3 {
        assert_eq!(call(&gw, &short).await.status(), 200);
    }
    // The cache is keyed on the whole token: the same header and claims
    // with a tampered signature are verified, and refused.
    let (signed, sig) = short.rsplit_once('.').expect("three parts");
    let mut sig = sig.as_bytes().to_vec();
    sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{signed}.{}", String::from_utf8(sig).expect("ascii"));
    problem(call(&gw, &tampered).await, 401, "bad_signature").await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    problem(call(&gw, &short).await, 401, "token_expired").await;
}

#[test]
fn jwks_urls_must_be_https_or_loopback_and_exclusive_with_files() {
    let cases = [
        (
            "jwks: { url: http://auth.example.com/jwks.json }",
            "must use https://",
        ),
        (
            "jwks: { url: https://auth.example.com/jwks.json, file: keys/jwks.json }",
            "exactly one of `file` and `url`",
        ),
        ("jwks: {}", "exactly one of `file` and `url`"),
        (
            "jwks: { url: https://auth.example.com/jwks.json, min_refetch_interval: 0s }",
            "min_refetch_interval",
        ),
    ];
    for (jwks, expected) in cases {
        let config = format!(
            "listeners:\n  - addr: 127.0.0.1:0\nauth:\n  issuers:\n    - issuer: {ISS}\n      audiences: [{AUD}]\n      {jwks}\napis: []\n"
        );
        let dir = sandbox_dir(&[("sandgate.yaml", &config), ("keys/jwks.json", "{}")]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandgate"))
            .args(["check", "--config"])
            .arg(dir.path())
            .output()
            .expect("run check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{jwks}: {stdout}");
        assert!(
            stdout.contains("sandgate.yaml:") && stdout.contains(expected),
            "{jwks}: {stdout}"
        );
    }
}
