//! Criterion micro-benchmarks of the request path's CPU-only pieces:
//! routing (demo contract and a 500-path contract), the edge head checks,
//! and rendering a refusal. Run with `cargo bench --bench routing`.

// criterion's macros generate functions without doc comments.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use sandgate::Overrides;
use sandgate::config::Source;
use sandgate::pipeline::route::route;
use sandgate::refusal::Refusal;
use sandgate::sandbox::Sandbox;

/// A contract with `n` templated paths, and the sandbox serving it.
fn big_sandbox(n: usize) -> Sandbox {
    let mut spec = String::from("openapi: 3.0.3\ninfo: { title: Big, version: \"1\" }\npaths:\n");
    for i in 0..n {
        spec.push_str(&format!(
            "  /v1/resource{i}/{{id}}:\n    get: {{ operationId: get{i}, responses: {{ \"200\": {{ description: ok, content: {{ application/json: {{ example: {{ id: x }} }} }} }} }} }}\n"
        ));
    }
    let config =
        "apis:\n  - name: big\n    prefix: /big\n    contract: big.yaml\n    mode: facade\n";
    let files: &'static [(&'static str, &'static str)] = Box::leak(
        vec![
            ("sandgate.yaml", config),
            ("big.yaml", Box::leak(spec.into_boxed_str()) as &str),
        ]
        .into_boxed_slice(),
    );
    Sandbox::load(&Source::Embedded(files), &Overrides::default()).expect("big sandbox loads")
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri)
        .header("host", "localhost")
        .header("accept", "application/json")
        .body(())
        .expect("request")
}

fn benches(c: &mut Criterion) {
    let demo = Sandbox::load(&sandgate::demo::source(), &Overrides::default()).expect("demo loads");
    let hit = get("/payments/v1/customers/cus_NffrFeUfNV2Hib");
    let miss = get("/payments/v1/customerz/cus_1");
    c.bench_function("route/demo/templated hit", |b| {
        b.iter(|| route(black_box(&demo), black_box(&hit)).map(|r| r.operation))
    });
    c.bench_function("route/demo/unknown operation (refusal)", |b| {
        b.iter(|| route(black_box(&demo), black_box(&miss)).map(|r| r.operation))
    });

    let no_api = get("/nowhere/v1/things");
    c.bench_function("route/demo/unknown api (refusal)", |b| {
        b.iter(|| route(black_box(&demo), black_box(&no_api)).map(|r| r.operation))
    });

    let big = big_sandbox(500);
    let deep = get("/big/v1/resource499/abc");
    c.bench_function("route/500 paths/last path", |b| {
        b.iter(|| route(black_box(&big), black_box(&deep)).map(|r| r.operation))
    });
    // A refused unknown path scores every documented template for the
    // "nearest paths" hint, so its cost grows with the contract.
    let deep_miss = get("/big/v1/resourze499/abc");
    c.bench_function("route/500 paths/unknown operation (refusal)", |b| {
        b.iter(|| route(black_box(&big), black_box(&deep_miss)).map(|r| r.operation))
    });

    c.bench_function("edge/check_head", |b| {
        b.iter(|| sandgate::edge::check_head(black_box(&demo.limits), black_box(&hit)))
    });
    c.bench_function("edge/request_id (fresh ULID)", |b| {
        b.iter(|| sandgate::edge::request_id(black_box(hit.headers())))
    });

    // The facade's answer for the routed demo hit: the prepared example,
    // its content type and the `sandgate-source` header.
    let routed = route(&demo, &hit).expect("demo hit routes");
    let op = routed
        .api
        .contract
        .as_ref()
        .zip(routed.operation)
        .map(|(c, i)| &c.operations[i])
        .expect("demo hit has an operation");
    c.bench_function("facade/answer (documented example)", |b| {
        b.iter(|| sandgate::facade::answer(black_box(&routed.api.name), black_box(op)))
    });

    // Every CPU-only step of a facade hit that the gateway adds on top of
    // hyper: request id, head checks, routing, the answer and its id header.
    c.bench_function("facade hit, CPU-only steps together", |b| {
        b.iter(|| {
            let id = sandgate::edge::request_id(black_box(hit.headers()));
            sandgate::edge::check_head(&demo.limits, black_box(&hit)).expect("head ok");
            let r = route(black_box(&demo), black_box(&hit)).expect("routes");
            let op = r
                .api
                .contract
                .as_ref()
                .zip(r.operation)
                .map(|(c, i)| &c.operations[i])
                .expect("operation");
            let mut resp = sandgate::facade::answer(&r.api.name, op).expect("answer");
            sandgate::edge::set_request_id(resp.headers_mut(), &id);
            resp
        })
    });

    c.bench_function("refusal/render unknown_operation", |b| {
        b.iter(|| {
            Refusal::UnknownOperation {
                api: "payments".into(),
                method: "GET".into(),
                path: "/v1/customerz/cus_1".into(),
                nearest: vec!["/v1/customers".into(), "/v1/customers/{customer}".into()],
            }
            .into_response(black_box("req_01M81GMSXJ4ZJKZV4ZDPXNCHM1"))
        })
    });
}

criterion_group!(
    routing,
    benches,
    identify_benches,
    facade_benches,
    limit_benches
);
criterion_main!(routing);

/// The identify stage: a sandbox API key and a JWT resolved from their
/// caches (every request of a credential but the first), and a token's full
/// verification the first time it is seen (ES256, RS256).
fn identify_benches(c: &mut Criterion) {
    use std::sync::Arc;

    use sandgate::pipeline::identify::identify;
    use sandgate::store::MemoryStore;
    use sandgate::tenants::{self, Registry};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    // Two issuers: ES256 (a fresh P-256 key) and RS256 (a 2048-bit test key).
    let es_pem = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let es_key = EncodingKey::from_ec_pem(es_pem.as_bytes()).expect("ES256 key");
    let rs_key =
        EncodingKey::from_rsa_pem(include_bytes!("data/rs256-test-key.pem")).expect("RS256 key");
    let jwks = |key: &EncodingKey, alg| {
        let mut jwk = Jwk::from_encoding_key(key, alg).expect("jwk");
        jwk.common.key_id = Some("k1".into());
        let text = serde_json::to_string(&JwkSet { keys: vec![jwk] }).expect("jwks");
        &*Box::leak(text.into_boxed_str())
    };
    let files: &'static [(&'static str, &'static str)] = Box::leak(
        vec![
            (
                "sandgate.yaml",
                "auth:\n  issuers:\n    - { issuer: https://es.example, audiences: [https://api.example], jwks: { file: es.json }, algorithms: [ES256] }\n    - { issuer: https://rs.example, audiences: [https://api.example], jwks: { file: rs.json }, algorithms: [RS256] }\napis:\n  - name: payments\n    prefix: /payments\n    contract: p.yaml\n    mode: facade\n",
            ),
            ("p.yaml", include_str!("../contracts/payments.yaml")),
            ("es.json", jwks(&es_key, Algorithm::ES256)),
            ("rs.json", jwks(&rs_key, Algorithm::RS256)),
        ]
        .into_boxed_slice(),
    );
    let sb = Sandbox::load(&Source::Embedded(files), &Overrides::default()).expect("sandbox loads");
    let registry = Registry::new(Arc::new(MemoryStore::new()));
    let (t, creds) = tenants::new_tenant(
        "Acme",
        "dev@acme.test",
        tenants::now_secs(),
        std::time::Duration::from_secs(86_400),
        "sk_sandbox_",
    )
    .expect("tenant");
    rt.block_on(registry.put(&t)).expect("tenant stored");
    let api = &sb.apis[0];
    let req = Request::get("/payments/v1/customers/cus_1")
        .header("authorization", format!("Bearer {}", creds.api_key))
        .body(())
        .expect("request");
    c.bench_function("identify/api key, cached", |b| {
        b.iter(|| {
            rt.block_on(identify(
                black_box(api),
                &sb,
                req.headers(),
                None,
                &registry,
            ))
            .map(|p| p.is_some())
        })
    });

    let token = |iss: &str, alg, key: &EncodingKey| {
        let now = tenants::now_secs();
        let claims = serde_json::json!({"iss": iss, "aud": "https://api.example", "exp": now + 3600, "iat": now, "sub": "cli_bench", "tenant": t.id, "scope": "payments:read"});
        let mut h = Header::new(alg);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &claims, key).expect("sign")
    };
    let es = token("https://es.example", Algorithm::ES256, &es_key);
    let rs = token("https://rs.example", Algorithm::RS256, &rs_key);
    let req = Request::get("/payments/v1/customers/cus_1")
        .header("authorization", format!("Bearer {es}"))
        .body(())
        .expect("request");
    c.bench_function("identify/jwt ES256, cached", |b| {
        b.iter(|| {
            rt.block_on(identify(
                black_box(api),
                &sb,
                req.headers(),
                None,
                &registry,
            ))
            .map(|p| p.is_some())
        })
    });
    assert!(
        rt.block_on(identify(api, &sb, req.headers(), None, &registry))
            .is_ok_and(|p| p.is_some_and(|p| p.tenant.id == t.id)),
        "the ES256 token identifies its tenant"
    );
    // A token seen for the first time: full verification, no cache.
    for (name, tok) in [("ES256", &es), ("RS256", &rs)] {
        assert!(
            rt.block_on(sandgate::jwt::verify(
                tok,
                &sb.jwt.issuers,
                &sb.jwt.production
            ))
            .is_ok(),
            "the {name} token verifies"
        );
        c.bench_function(&format!("jwt/verify {name}, cold"), |b| {
            b.iter(|| {
                rt.block_on(sandgate::jwt::verify(
                    black_box(tok),
                    &sb.jwt.issuers,
                    &sb.jwt.production,
                ))
                .is_ok()
            })
        });
    }
}

/// The validate stage's check of a typical JSON body (create a payment
/// intent) and of the demo's GET, and scenario-rule matching, on the
/// bundled demo.
fn facade_benches(c: &mut Criterion) {
    use sandgate::contract::request::RequestParts;

    let sb = Sandbox::load(&sandgate::demo::source(), &Overrides::default()).expect("demo loads");
    let api = &sb.apis[0];
    let contract = api.contract.as_ref().expect("contract");
    let index = |id: &str| {
        contract
            .operations
            .iter()
            .position(|o| o.id == id)
            .expect("operation")
    };
    let create = &contract.operations[index("createPaymentIntent")];
    let get = &contract.operations[index("getCustomer")];
    let body = br#"{"amount":2000,"currency":"usd","customer":"cus_NffrFeUfNV2Hib","description":"Order 6735","payment_method":"pm_card_visa","metadata":{"order_id":"6735"}}"#;
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("header"));
    let parts = RequestParts {
        path: "/v1/payment_intents",
        query: None,
        headers: &headers,
        body,
    };
    assert!(create.request.check(&create.template, &parts).is_ok());
    c.bench_function("validate/create payment intent, JSON body", |b| {
        b.iter(|| {
            create
                .request
                .check(&create.template, black_box(&parts))
                .is_ok()
        })
    });
    let empty = http::HeaderMap::new();
    let get_parts = RequestParts {
        path: "/v1/customers/cus_NffrFeUfNV2Hib",
        query: None,
        headers: &empty,
        body: b"",
    };
    assert!(get.request.check(&get.template, &get_parts).is_ok());
    c.bench_function("validate/get customer, path parameter", |b| {
        b.iter(|| {
            get.request
                .check(&get.template, black_box(&get_parts))
                .is_ok()
        })
    });
    let scenarios = api.scenarios.as_ref().expect("demo scenarios");
    let typed = create.request.typed_body(&headers, body).expect("typed");
    let op = index("createPaymentIntent");
    assert!(matches!(
        scenarios.find(op, &typed, 0),
        sandgate::facade::scenarios::Matched::Answer { .. }
    ));
    fixture_benches(c, &sb);
    c.bench_function("scenarios/type the body and find the rule", |b| {
        b.iter(|| {
            let typed = create
                .request
                .typed_body(&headers, black_box(body))
                .expect("typed");
            matches!(
                scenarios.find(op, &typed, 0),
                sandgate::facade::scenarios::Matched::Answer { .. }
            )
        })
    });
}

/// Fixture matching with 1,000 fixtures: the last one matching (every
/// fixture is looked at) and a request none matches.
fn fixture_benches(c: &mut Criterion, demo: &Sandbox) {
    use sandgate::facade::fixtures::{Fixtures, Request};

    let contract = demo.apis[0].contract.as_ref().expect("contract");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = String::from("fixtures:\n");
    for i in 0..1000 {
        text.push_str(&format!(
            "  - name: f{i}\n    method: POST\n    path: /v1/payment_intents\n    body: {{ metadata: {{ order_id: \"{i}\" }} }}\n    response: {{ status: 200, body: {{ n: \"{{{{ body.amount }}}}\" }} }}\n"
        ));
    }
    std::fs::write(dir.path().join("many.yaml"), text).expect("write");
    let source = sandgate::config::Source::Dir(dir.path().to_owned());
    let fixtures = Fixtures::load(
        &source,
        std::path::Path::new("."),
        Some(contract),
        std::path::Path::new("sandgate.yaml"),
        0,
    )
    .expect("fixtures load");
    let headers = http::HeaderMap::new();
    let last =
        serde_json::json!({"amount": 2000, "currency": "usd", "metadata": {"order_id": "999"}});
    let none =
        serde_json::json!({"amount": 2000, "currency": "usd", "metadata": {"order_id": "x"}});
    let req = |body| Request {
        method: &http::Method::POST,
        path: "/v1/payment_intents",
        query: None,
        headers: &headers,
        body: Some(body),
        now: None,
    };
    assert_eq!(fixtures.find(&req(&last)), Some("f999"));
    assert_eq!(fixtures.find(&req(&none)), None);
    c.bench_function("fixtures/1000 fixtures, the last matches", |b| {
        b.iter(|| fixtures.find(black_box(&req(&last))).is_some())
    });
    c.bench_function("fixtures/1000 fixtures, none matches", |b| {
        b.iter(|| fixtures.find(black_box(&req(&none))).is_none())
    });
}

/// One in-process rate decision (GCRA, keyed by tenant), as the limit stage
/// makes it for each rule that applies.
fn limit_benches(c: &mut Criterion) {
    use sandgate::limits::rate::{Rate, RuleLimiter};
    let rate = Rate {
        requests: std::num::NonZeroU32::new(1_000_000).expect("nonzero"),
        per: std::time::Duration::from_secs(1),
        burst: std::num::NonZeroU32::new(1_000_000).expect("nonzero"),
    };
    let limiter = RuleLimiter::new(rate).expect("limiter");
    let states = sandgate::limits::TenantStates::default();
    let tenant = states.with("sbx_01bench", sandgate::limits::per_tenant::Handle::clone);
    c.bench_function("limit/in-process rate decision (GCRA, keyed)", |b| {
        b.iter(|| limiter.check(black_box(&tenant)))
    });
    redis_limit_benches(c, rate);
}

/// A `redis-server` of the bench's own on a free port, killed on drop.
struct BenchRedis(std::process::Child);

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One cluster limit decision (the script: GCRA and quotas) against a real
/// local `redis-server`, one request at a time: the round trip to Redis
/// plus the script, as the limit stage pays it with `store.kind: redis`.
fn redis_limit_benches(c: &mut Criterion, rate: sandgate::limits::rate::Rate) {
    use sandgate::limits::cluster;
    use sandgate::limits::quota::{Period, Quota};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test.sh installs it)");
    let _redis = BenchRedis(child);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("redis://127.0.0.1:{port}/0");
    let store = rt.block_on(async {
        for _ in 0..200 {
            if let Ok(s) =
                sandgate::store::RedisStore::connect(&url, std::time::Duration::from_secs(1)).await
            {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {port}");
    });
    let quota = |period, i| Quota {
        requests: u64::MAX / 2,
        period,
        path: format!("plans.bench.quotas[{i}]"),
    };
    let spec = cluster::Spec {
        tenant: "sbx_01bench".to_owned(),
        rules: vec![("plans.bench.rate".to_owned(), rate)],
        quotas: vec![quota(Period::Day, 0), quota(Period::Lifetime, 1)],
    };
    let now = sandgate::tenants::now_secs();
    c.bench_function(
        "limit/redis decision (1 rate rule + 2 quotas, one script)",
        |b| {
            b.iter(|| {
                let out = rt.block_on(cluster::decide(&store, black_box(&spec), now));
                assert!(matches!(out, Ok(cluster::Outcome::Allowed(_))));
            })
        },
    );
}
