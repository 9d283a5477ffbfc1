//! `sandgate contract-test`, the real binary against real servers: a
//! gateway serving the payments contract with fixtures (every case passes,
//! exit 0, a JUnit report whose test cases all pass), a drifting backend
//! (wrong status, missing required field, wrong type: exit 1, the failing
//! cases named with their JSON pointers, failures in the JUnit report,
//! credentials sent but never printed), an HTTPS target trusted through
//! `--ca`, and usage errors (exit 2).

mod common;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use common::{PAYMENTS, TestUpstream, UpBody, payments_config, sandbox_dir, start_gateway};
use http::Response;
use http_body_util::{BodyExt, Full};
use quick_junit::{Report, TestCaseStatus};

const BIN: &str = env!("CARGO_BIN_EXE_sandgate");

/// What a finished `sandgate contract-test` left: exit code, stdout, stderr.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `sandgate contract-test ARGS` off the async runtime (the gateway
/// under test keeps serving on it).
async fn contract_test(args: Vec<String>) -> Run {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("contract-test")
            .args(&args)
            .output()
            .expect("run sandgate contract-test")
    })
    .await
    .expect("join");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn path_arg(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp path").to_owned()
}

fn junit(path: &Path) -> Report {
    let xml = std::fs::read_to_string(path).expect("the JUnit report was written");
    Report::deserialize_from_str(&xml).expect("the JUnit report parses")
}

/// Fixtures the facade answers with; both are replayable against it.
const FIXTURES: &str = r#"fixtures:
  - name: acme customer
    method: GET
    path: /v1/customers/cus_acme
    response:
      status: 200
      body: { id: cus_acme, object: customer, created: 1767225600, email: dev@acme.test, name: Acme, description: null, phone: null, metadata: {}, livemode: false }
  - name: spring campaign payment
    method: POST
    path: /v1/payment_intents
    body: { metadata: { campaign: spring } }
    priority: 5
    response:
      status: 200
      body:
        id: "{{ new_id('pi') }}"
        object: payment_intent
        amount: "{{ body.amount }}"
        amount_received: 0
        amount_refunded: 0
        currency: "{{ body.currency }}"
        customer: null
        description: null
        status: requires_payment_method
        payment_method: null
        next_action: null
        last_payment_error: null
        client_secret: pi_1_secret_2
        capture_method: automatic
        created: "{{ now }}"
        livemode: false
        metadata: { campaign: spring }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conforming_gateway_passes_every_case() {
    let config = format!(
        "{}    scenarios: scenarios.yaml\n    fixtures: fixtures\n",
        payments_config("")
    );
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
        (
            "scenarios.yaml",
            include_str!("../fixtures/payments/scenarios.yaml"),
        ),
        ("fixtures/payments.yaml", FIXTURES),
    ]))
    .await;
    let report_path = gw.dir.path().join("out/contract-test.xml");
    std::fs::create_dir_all(gw.dir.path().join("out")).expect("mkdir");

    let run = contract_test(args(&[
        "--config",
        &path_arg(gw.dir.path()),
        "--api",
        "payments",
        "--target",
        &gw.url("/payments"),
        "--junit",
        &path_arg(&report_path),
        "--concurrency",
        "3",
    ]))
    .await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    // Nine operations, each with one request example or one built request,
    // plus the two fixtures.
    assert!(
        run.stdout
            .contains("11 passed, 0 failed, 0 skipped (11 case(s)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "PASS getCustomer: fixture `acme customer` (GET /v1/customers/cus_acme → 200"
        ),
        "{}",
        run.stdout
    );

    let report = junit(&report_path);
    assert_eq!(report.tests, 11);
    assert_eq!((report.failures, report.errors, report.skipped), (0, 0, 0));
    let suite = &report.test_suites[0];
    assert_eq!(suite.test_cases.len(), 11);
    for case in &suite.test_cases {
        assert!(
            matches!(case.status, TestCaseStatus::Success { .. }),
            "{}: {:?}",
            case.name.as_str(),
            case.status
        );
        assert!(
            case.classname
                .as_ref()
                .is_some_and(|c| c.as_str().starts_with("payments.")),
            "{:?}",
            case.classname
        );
    }
    let names: Vec<&str> = suite.test_cases.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "createCustomer: request example `default`",
        "getPaymentIntent: request built from the contract",
        "createPaymentIntent: fixture `spring campaign payment`",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    assert!(gw.shutdown().await);
}

fn json(status: u16, body: &str) -> Response<UpBody> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())).boxed());
    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

const SECRET: &str = "sk_sandbox_4f9cSECRETdoNotPrint";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifting_backend_fails_with_pointers() {
    // A backend that has drifted from the payments contract in three ways,
    // and still answers one operation as documented.
    let upstream = TestUpstream::start(|parts, _body| async move {
        match (parts.method.as_str(), parts.uri.path()) {
            // `email` is required by the Customer schema.
            ("GET", "/v1/customers/cus_NffrFeUfNV2Hib") => json(
                200,
                r#"{"id":"cus_NffrFeUfNV2Hib","object":"customer","created":1767225600,"name":"Jenny","description":null,"phone":null,"metadata":{},"livemode":false}"#,
            ),
            // `has_more` is a boolean.
            ("GET", "/v1/customers") => json(
                200,
                r#"{"object":"list","url":"/v1/customers","has_more":"no","data":[]}"#,
            ),
            // 500 is not documented for createCustomer.
            ("POST", "/v1/customers") => json(
                500,
                r#"{"error":{"type":"api_error","message":"boom"}}"#,
            ),
            ("DELETE", "/v1/customers/cus_NffrFeUfNV2Hib") => json(
                200,
                r#"{"id":"cus_NffrFeUfNV2Hib","object":"customer","deleted":true}"#,
            ),
            _ => json(404, r#"{"error":{"type":"invalid_request_error","message":"no"}}"#),
        }
    })
    .await;
    let dir = sandbox_dir(&[
        ("sandgate.yaml", &payments_config("")),
        ("contracts/payments.yaml", PAYMENTS),
    ]);
    let report_path = dir.path().join("report.xml");
    let run = contract_test(args(&[
        "-c",
        &path_arg(dir.path()),
        "--api",
        "payments",
        "--target",
        &format!("http://{}", upstream.addr),
        "--header",
        &format!("Authorization: Bearer {SECRET}"),
        "--junit",
        &path_arg(&report_path),
        "--only",
        "getCustomer",
        "--only",
        "listCustomers",
        "--only",
        "createCustomer",
        "--only",
        "deleteCustomer",
    ]))
    .await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    for want in [
        "FAIL getCustomer: request built from the contract",
        "/email: \"email\" is a required property",
        "FAIL listCustomers: request built from the contract",
        "/has_more: \"no\" is not of type \"boolean\"",
        "FAIL createCustomer: request example `default`",
        "status: status 500 is not documented",
        "PASS deleteCustomer: request built from the contract",
        "1 passed, 3 failed, 0 skipped",
    ] {
        assert!(out.contains(want), "`{want}` not in:\n{out}");
    }

    // The credentials reached the backend on every request, and were
    // printed nowhere.
    let seen = upstream.seen();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        assert_eq!(
            s.headers.get("authorization").and_then(|v| v.to_str().ok()),
            Some(format!("Bearer {SECRET}").as_str())
        );
    }
    let xml = std::fs::read_to_string(&report_path).expect("report");
    for text in [out, &run.stderr, &xml] {
        assert!(
            !text.contains("SECRET"),
            "a credential was printed:\n{text}"
        );
    }

    let report = junit(&report_path);
    assert_eq!((report.tests, report.failures), (4, 3));
    let suite = &report.test_suites[0];
    let failure = |name: &str| {
        let case = suite
            .test_cases
            .iter()
            .find(|c| c.name.as_str() == name)
            .unwrap_or_else(|| panic!("no test case {name}"));
        match &case.status {
            TestCaseStatus::NonSuccess {
                message,
                description,
                ..
            } => format!(
                "{}\n{}",
                message.as_ref().map_or("", |m| m.as_str()),
                description.as_ref().map_or("", |d| d.as_str())
            ),
            other => panic!("{name} did not fail: {other:?}"),
        }
    };
    let get = failure("getCustomer: request built from the contract");
    assert!(get.contains("/email:"), "{get}");
    assert!(
        get.contains("GET /v1/customers/cus_NffrFeUfNV2Hib → 200"),
        "{get}"
    );
    assert!(failure("listCustomers: request built from the contract").contains("/has_more:"));
    assert!(failure("createCustomer: request example `default`").contains("status 500"));
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let dir = sandbox_dir(&[
        ("sandgate.yaml", &payments_config("")),
        ("contracts/payments.yaml", PAYMENTS),
    ]);
    let config = path_arg(dir.path());
    let broken = sandbox_dir(&[("sandgate.yaml", "listeners: []\napis: nope\n")]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            args(&[
                "-c",
                &config,
                "--api",
                "ledger",
                "--target",
                "http://127.0.0.1:9",
            ]),
            "unknown API `ledger`; this sandbox has: payments",
        ),
        (
            args(&["--api", "nope", "--target", "http://127.0.0.1:9"]),
            "this sandbox has: payments",
        ),
        (
            args(&[
                "-c",
                &config,
                "--api",
                "payments",
                "--target",
                "http://127.0.0.1:9",
                "--only",
                "refundEverything",
            ]),
            "--only `refundEverything` is not an operationId of API `payments`",
        ),
        (
            args(&["-c", &config, "--api", "payments", "--target", "ftp://h/x"]),
            "scheme `ftp` is not http or https",
        ),
        (
            args(&[
                "-c",
                &config,
                "--api",
                "payments",
                "--target",
                "http://127.0.0.1:9",
                "-H",
                &format!("Authorization Bearer {SECRET}"),
            ]),
            "--header must be `Name: value`",
        ),
        (
            args(&[
                "-c",
                &path_arg(broken.path()),
                "--api",
                "payments",
                "--target",
                "http://127.0.0.1:9",
            ]),
            "sandgate.yaml:2",
        ),
    ];
    for (argv, want) in cases {
        let run = contract_test(argv.clone()).await;
        assert_eq!(
            run.code,
            Some(2),
            "{argv:?}\n{}\n{}",
            run.stdout,
            run.stderr
        );
        assert!(
            run.stderr.contains(want),
            "{argv:?}: `{want}` not in:\n{}",
            run.stderr
        );
        assert!(!run.stderr.contains("SECRET"), "{}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_target_is_trusted_through_ca() {
    let pki = common::Pki::new();
    let config = "listeners:\n  - addr: 127.0.0.1:0\n    tls:\n      cert: certs/server.pem\n      key: certs/server.key\nhosts: [localhost, 127.0.0.1]\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n";
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("certs/server.pem", &pki.server_cert),
        ("certs/server.key", &pki.server_key),
        ("certs/ca.pem", &pki.ca_pem),
    ]))
    .await;
    let target = format!("https://localhost:{}/payments", gw.tls_addr().port());
    let base = |extra: &[&str]| {
        let mut a = args(&[
            "-c",
            &path_arg(gw.dir.path()),
            "--api",
            "payments",
            "--target",
            &target,
            "--only",
            "getCustomer",
        ]);
        a.extend(args(extra));
        a
    };

    // Trusting the gateway's CA: the exchange happens over TLS and passes.
    let ca = path_arg(&gw.dir.path().join("certs/ca.pem"));
    let run = contract_test(base(&["--ca", &ca])).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("PASS getCustomer"), "{}", run.stdout);

    // Without it the certificate is not trusted: the case fails, saying so.
    let run = contract_test(base(&[])).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("request: the target did not answer")
            && run.stdout.to_ascii_lowercase().contains("certificate"),
        "{}",
        run.stdout
    );

    // A --ca that is not PEM is a usage error.
    let run = contract_test(base(&[
        "--ca",
        &path_arg(&gw.dir.path().join("sandgate.yaml")),
    ]))
    .await;
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("--ca `"), "{}", run.stderr);
    assert!(gw.shutdown().await);
}
