//! Sandbox JWTs over real HTTP (RFC 8725 attack list): a valid token from a
//! configured issuer resolves to its tenant; every way a token can be wrong
//! is refused with its own code, and nothing named by a token is fetched.

mod common;

use base64::Engine as _;
use common::{PAYMENTS, TestGateway, problem, sandbox_dir, start_gateway};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sandgate::tenants::{self, DAY};
use serde_json::{Value, json};

const ISS: &str = "https://auth.sandbox.example.com";
const AUD: &str = "https://api.sandbox.example.com";
const CUSTOMER: &str = "/payments/v1/customers/cus_NffrFeUfNV2Hib";

struct Keys {
    key: EncodingKey,
    other: EncodingKey,
    jwks: String,
}

fn keys() -> Keys {
    let pem = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("encoding key");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk");
    jwk.common.key_id = Some("k1".into());
    let other_pem = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let other = EncodingKey::from_ec_pem(other_pem.as_bytes()).expect("encoding key");
    Keys {
        key,
        other,
        jwks: serde_json::to_string(&JwkSet { keys: vec![jwk] }).expect("jwks"),
    }
}

fn now() -> u64 {
    tenants::now_secs()
}

fn claims(tenant: &str) -> Value {
    json!({"iss": ISS, "aud": AUD, "exp": now() + 600, "iat": now(), "sub": "cli_partner", "tenant": tenant, "scope": "payments:read payments:write"})
}

fn sign(key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).expect("sign")
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
}

async fn gateway(k: &Keys) -> (TestGateway, String) {
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\nauth:\n  issuers:\n    - issuer: {ISS}\n      audiences: [{AUD}]\n      jwks: {{ file: keys/jwks.json }}\n      algorithms: [ES256]\n  production_issuers: [https://auth.example.com]\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n"
    );
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
        ("keys/jwks.json", &k.jwks),
    ]))
    .await;
    let (t, _) = tenants::new_tenant(
        "Acme",
        "dev@acme.test",
        now(),
        std::time::Duration::from_secs(7 * DAY),
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
        .expect("tenant");
    (gw, t.id)
}

#[tokio::test]
async fn a_valid_sandbox_token_is_accepted() {
    let k = keys();
    let (gw, tenant) = gateway(&k).await;
    let token = sign(&k.key, Some("k1"), &claims(&tenant));
    let r = common::client()
        .get(gw.url(CUSTOMER))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn every_bad_token_has_its_own_refusal() {
    let k = keys();
    let (gw, tenant) = gateway(&k).await;
    let c = common::client();
    let with = |mut v: Value, f: &dyn Fn(&mut Value)| {
        f(&mut v);
        v
    };
    // (case, token, status, code)
    let header_es = json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
    let good = sign(&k.key, Some("k1"), &claims(&tenant));
    let sig = good.rsplit('.').next().expect("signature").to_owned();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "expired",
            sign(
                &k.key,
                Some("k1"),
                &with(claims(&tenant), &|v| v["exp"] = json!(now() - 3600)),
            ),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            sign(
                &k.key,
                Some("k1"),
                &with(claims(&tenant), &|v| v["nbf"] = json!(now() + 3600)),
            ),
            401,
            "token_not_yet_valid",
        ),
        (
            "missing exp",
            sign(
                &k.key,
                Some("k1"),
                &with(claims(&tenant), &|v| {
                    v.as_object_mut().expect("obj").remove("exp");
                }),
            ),
            401,
            "malformed_token",
        ),
        (
            "wrong audience",
            sign(
                &k.key,
                Some("k1"),
                &with(claims(&tenant), &|v| v["aud"] = json!("https://elsewhere")),
            ),
            403,
            "wrong_audience",
        ),
        (
            "unknown issuer",
            sign(
                &k.key,
                Some("k1"),
                &with(claims(&tenant), &|v| {
                    v["iss"] = json!("https://evil.example")
                }),
            ),
            401,
            "wrong_issuer",
        ),
        (
            "production issuer",
            sign(
                &k.key,
                Some("k1"),
                &with(claims(&tenant), &|v| {
                    v["iss"] = json!("https://auth.example.com")
                }),
            ),
            401,
            "production_credentials",
        ),
        (
            "unknown kid",
            sign(&k.key, Some("k9"), &claims(&tenant)),
            401,
            "unknown_key",
        ),
        (
            "signed by another key",
            sign(&k.other, Some("k1"), &claims(&tenant)),
            401,
            "bad_signature",
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{sig}",
                b64(&header_es),
                b64(&with(claims(&tenant), &|v| v["tenant"] = json!("sbx_other")))
            ),
            401,
            "bad_signature",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none"})),
                b64(&claims(&tenant))
            ),
            401,
            "malformed_token",
        ),
        (
            "HS256 with the public key as secret",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims(&tenant),
                &EncodingKey::from_secret(k.jwks.as_bytes()),
            )
            .expect("hs256"),
            401,
            "algorithm_not_allowed",
        ),
        (
            "unknown crit",
            format!(
                "{}.{}.{sig}",
                b64(&json!({"alg": "ES256", "kid": "k1", "crit": ["exp-ext"], "exp-ext": 1})),
                b64(&claims(&tenant))
            ),
            401,
            "malformed_token",
        ),
        (
            "unknown tenant",
            sign(&k.key, Some("k1"), &claims("sbx_nobody")),
            401,
            "unknown_tenant",
        ),
    ];
    for (case, token, status, code) in cases {
        let r = c
            .get(gw.url(CUSTOMER))
            .bearer_auth(&token)
            .send()
            .await
            .expect("request");
        let body = problem(r, status, code).await;
        assert_eq!(body["stage"], "identify", "{case}");
        assert!(
            !body.to_string().contains(&token),
            "{case}: the token is never echoed"
        );
    }
}

#[tokio::test]
async fn keys_named_by_a_token_are_never_fetched() {
    let k = keys();
    let (gw, tenant) = gateway(&k).await;
    // An attacker's own key, advertised through jku and an embedded jwk.
    let attacker = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let jku = format!("http://{}/jwks.json", attacker.local_addr().expect("addr"));
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    h.jku = Some(jku);
    h.jwk = Some(Jwk::from_encoding_key(&k.other, Algorithm::ES256).expect("jwk"));
    let token = jsonwebtoken::encode(&h, &claims(&tenant), &k.other).expect("sign");
    problem(
        common::client()
            .get(gw.url(CUSTOMER))
            .bearer_auth(&token)
            .send()
            .await
            .expect("request"),
        401,
        "bad_signature",
    )
    .await;
    let fetched =
        tokio::time::timeout(std::time::Duration::from_millis(200), attacker.accept()).await;
    assert!(
        fetched.is_err(),
        "the gateway connected to the URL named by the token"
    );
}
