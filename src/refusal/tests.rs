use super::*;
use http_body_util::BodyExt;

async fn render(r: Refusal) -> (StatusCode, http::HeaderMap, Value) {
    let resp = r.into_response("req_test");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).expect("json"),
    )
}

#[tokio::test]
async fn every_refusal_has_the_problem_shape() {
    let all = vec![
        Refusal::UriTooLong {
            len: 9000,
            max: 8192,
        },
        Refusal::TooManyHeaders {
            count: 101,
            max: 100,
        },
        Refusal::HeadersTooLarge {
            bytes: 70000,
            max: 65536,
        },
        Refusal::HeaderTooLarge {
            name: "authorization",
            bytes: 9000,
            max: 8192,
            rule: "limits.max_authorization",
        },
        Refusal::PayloadTooLarge {
            declared: Some(2),
            max: 1,
            rule: "limits.max_body".into(),
        },
        Refusal::UnreadableBody,
        Refusal::RequestTimeout {
            after: "30s".into(),
        },
        Refusal::InvalidPath {
            reason: "has a `..` segment",
        },
        Refusal::MisdirectedHost {
            host: "evil".into(),
            hosts: vec!["localhost".into()],
        },
        Refusal::UnknownApi {
            path: "/x".into(),
            apis: vec![("a".into(), "/a".into())],
        },
        Refusal::UnknownOperation {
            api: "a".into(),
            method: "GET".into(),
            path: "/y".into(),
            nearest: vec!["/x".into()],
        },
        Refusal::MethodNotAllowed {
            api: "a".into(),
            method: "PUT".into(),
            path: "/x".into(),
            allow: vec!["GET".into()],
        },
        Refusal::NoExample {
            api: "a".into(),
            operation: "op".into(),
        },
        Refusal::UpstreamUnavailable { api: "a".into() },
        Refusal::UpstreamTimeout {
            api: "a".into(),
            after: "5s".into(),
        },
        Refusal::UpstreamError { api: "a".into() },
        Refusal::AdminNotFound { path: "/x".into() },
        Refusal::AdminTokenUnset {
            env: "SANDGATE_ADMIN_TOKEN".into(),
        },
        Refusal::AdminUnauthorized,
        Refusal::MissingCredentials {
            api: "a".into(),
            accepted: vec!["a sandbox API key".into()],
            token_url: Some("https://api.sandbox.example.com/oauth/token".into()),
        },
        Refusal::ProductionCredentials {
            sandbox_prefix: "sk_sandbox_".into(),
        },
        Refusal::UnknownApiKey,
        Refusal::ProductionToken {
            issuer: "https://auth.example.com".into(),
            sandbox: vec!["https://auth.sandbox.example.com".into()],
        },
        Refusal::WrongIssuer {
            accepted: vec!["https://auth.sandbox.example.com".into()],
        },
        Refusal::WrongAudience {
            accepted: vec!["https://api.sandbox.example.com".into()],
        },
        Refusal::AlgorithmNotAllowed {
            alg: "HS256".into(),
            allowed: vec!["ES256".into()],
        },
        Refusal::UnknownKey {
            issuer: "https://auth.sandbox.example.com".into(),
        },
        Refusal::IssuerKeysUnavailable {
            issuer: "https://auth.sandbox.example.com".into(),
        },
        Refusal::InvalidRequest {
            api: "payments".into(),
            operation: "createPaymentIntent".into(),
            errors: vec![sandgate_violation()],
        },
        Refusal::UnsatisfiablePreference {
            api: "payments".into(),
            operation: "createPaymentIntent".into(),
            asked: "code=418".into(),
            codes: vec![200, 402],
            examples: vec!["default".into()],
        },
        Refusal::RealCardNumber {
            api: "payments".into(),
            pointer: "/payment_method_data/card/number".into(),
        },
        Refusal::StorageQuotaExceeded {
            tenant: "sbx_1".into(),
            plan: "trial".into(),
            limit: 1024,
            used: 1000,
            needed: 400,
        },
        Refusal::StateObjectInvalid {
            api: "payments".into(),
            operation: "createCustomer".into(),
            pointer: "/email".into(),
            message: "not an email".into(),
        },
        Refusal::ActionNotApplicable {
            action: "authenticate".into(),
            id: "pi_1".into(),
            needs: "status \"requires_action\" (it has \"succeeded\")".into(),
        },
        Refusal::UnsupportedMediaType {
            api: "payments".into(),
            operation: "createPaymentIntent".into(),
            got: "text/plain".into(),
            accepted: vec!["application/x-www-form-urlencoded".into()],
        },
        Refusal::BadSignature,
        Refusal::TokenExpired {
            at: "2026-01-01T00:00:00Z".into(),
        },
        Refusal::TokenNotYetValid {
            at: "2027-01-01T00:00:00Z".into(),
        },
        Refusal::MalformedToken {
            why: "it has no `iss` claim",
        },
        Refusal::UnknownTenant,
        Refusal::UnknownClientCertificate { field: "san_uri" },
        Refusal::ClientIdentityUnclear {
            field: "san_uri",
            found: 2,
        },
        Refusal::MalformedCredentials {
            sandbox_prefix: "sk_sandbox_".into(),
        },
        Refusal::SandboxExpired {
            id: "sbx_1".into(),
            expired_at: "2027-01-01T00:00:00Z".into(),
        },
        Refusal::FeatureNotEnabled {
            api: "a".into(),
            enabled: vec!["b".into()],
        },
        Refusal::SandboxNotFound { id: "sbx_1".into() },
        Refusal::SandboxDeactivated { id: "sbx_1".into() },
        Refusal::InvalidBody {
            errors: vec![("/expiry_days".into(), "must be a number".into())],
        },
        Refusal::ExtensionLimit {
            id: "sbx_1".into(),
            latest: "2027-01-01T00:00:00Z".into(),
            max_days: 30,
        },
        Refusal::CapacityReached { max: 1 },
        Refusal::StoreUnavailable {
            stage: Stage::Identify,
        },
        Refusal::InvalidDryRunHeader {
            value: "maybe".into(),
        },
        Refusal::DryRunUnsupported {
            api: "a".into(),
            mode: "refuse",
        },
        Refusal::DryRunRequired {
            api: "a".into(),
            method: "DELETE".into(),
            rule: "apis.a.require_dry_run[0]".into(),
        },
        Refusal::InvalidIdempotencyKey {
            len: 300,
            why: "is longer than 255 characters",
        },
        Refusal::IdempotencyKeyReused {
            first: "POST /a/x".into(),
        },
        Refusal::IdempotencyConflict,
        Refusal::ClockBackwards {
            now: "2027-01-01T00:00:00Z".into(),
            asked: "2026-01-01T00:00:00Z".into(),
        },
        Refusal::InvalidClockRequest {
            why: "body is not a JSON object".into(),
        },
        Refusal::Internal,
    ];
    let mut codes = std::collections::HashSet::new();
    for r in all {
        let code = r.code();
        // production_credentials is one code for keys and tokens alike.
        assert!(
            codes.insert(code) || code == "production_credentials",
            "duplicate code {code}"
        );
        let (status, headers, body) = render(r).await;
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "application/problem+json",
            "{code}"
        );
        assert_eq!(body["status"], status.as_u16(), "{code}");
        assert_eq!(body["code"], code);
        assert_eq!(body["request_id"], "req_test");
        for field in ["type", "title", "detail", "stage", "hint"] {
            assert!(
                body[field].as_str().is_some_and(|s| !s.is_empty()),
                "{code} lacks {field}"
            );
        }
        assert!(
            body["type"]
                .as_str()
                .is_some_and(|t| t.ends_with(&code.replace('_', "-")))
        );
        assert!(
            code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{code}"
        );
    }
}

#[tokio::test]
async fn method_not_allowed_sets_allow() {
    let (status, headers, body) = render(Refusal::MethodNotAllowed {
        api: "payments".into(),
        method: "PUT".into(),
        path: "/v1/customers".into(),
        allow: vec!["GET".into(), "POST".into()],
    })
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "GET, POST");
    assert_eq!(body["rule"], "apis.payments.contract");
    assert_eq!(body["allow"], json!(["GET", "POST"]));
}

fn sandgate_violation() -> crate::contract::schema::Violation {
    crate::contract::schema::Violation {
        pointer: "/body/amount".into(),
        message: "\"x\" is not of type \"integer\"".into(),
        keyword: "type".into(),
    }
}

#[test]
fn a_refusal_stays_small() {
    // clippy's `result_large_err` threshold: every stage returns
    // `Result<_, Refusal>`, so a big variant would bloat every return.
    assert!(
        std::mem::size_of::<Refusal>() <= 128,
        "{}",
        std::mem::size_of::<Refusal>()
    );
}

#[tokio::test]
async fn the_write_refusals_say_what_to_do() {
    let (status, headers, body) = render(Refusal::DryRunRequired {
        api: "payments".into(),
        method: "DELETE".into(),
        rule: "apis.payments.require_dry_run[0]".into(),
    })
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_REQUIRED);
    assert_eq!(body["stage"], "admit");
    assert_eq!(body["rule"], "apis.payments.require_dry_run[0]");
    assert!(
        body["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("X-Dry-Run: true")
    );
    let (status, headers2, body) = render(Refusal::IdempotencyConflict).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["stage"], "idempotency");
    assert_eq!(body["retryable"], true);
    assert_eq!(headers2[header::RETRY_AFTER], "1");
    assert!(!headers.contains_key(header::RETRY_AFTER));
}

#[test]
fn the_demo_contract_documents_every_stage() {
    // Every stage a refusal can name, and a compile error here when one is
    // added: the demo contract's problem schema must then list it too
    // (schemathesis checks answers against that schema).
    let all = [
        Stage::Edge,
        Stage::Route,
        Stage::Identify,
        Stage::Admit,
        Stage::Limit,
        Stage::Validate,
        Stage::Dispatch,
        Stage::Admin,
        Stage::Idempotency,
        Stage::Sandbox,
    ];
    for s in all {
        match s {
            Stage::Edge
            | Stage::Route
            | Stage::Identify
            | Stage::Admit
            | Stage::Limit
            | Stage::Validate
            | Stage::Dispatch
            | Stage::Admin
            | Stage::Idempotency
            | Stage::Sandbox => {}
        }
    }
    let doc: Value = serde_saphyr::from_str(include_str!("../../contracts/payments.yaml"))
        .expect("the demo contract parses");
    let documented: Vec<&str> = doc
        .pointer("/components/schemas/Problem/properties/stage/enum")
        .and_then(Value::as_array)
        .expect("Problem.stage enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for s in all {
        // The admin stage answers on the admin listener, never on an API.
        if s != Stage::Admin {
            assert!(
                documented.contains(&s.as_str()),
                "contracts/payments.yaml: Problem.stage does not list `{}`",
                s.as_str()
            );
        }
    }
}
