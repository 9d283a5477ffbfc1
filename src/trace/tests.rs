//! The scrubber and the card masker, table-driven; the listing filters; the
//! ring in the memory store.

use std::collections::HashSet;

use serde_json::json;

use super::ring::{Filter, StatusFilter};
use super::scrub::{self, Scrubber, mask_cards};

#[test]
fn luhn_and_masking_table() {
    let none = HashSet::new();
    // (input, expected) with traces' 13-digit minimum.
    let cases: &[(&str, &str)] = &[
        ("4242424242424242", "************4242"),
        ("card 4242 4242 4242 4242 ok", "card ************4242 ok"),
        ("4242-4242-4242-4242", "************4242"),
        ("378282246310005", "***********0005"),   // Amex, 15
        ("6011111111111117", "************1117"), // Discover
        ("4242424242424241", "4242424242424241"), // Luhn fails
        ("424242424242", "424242424242"),         // 12 digits: too short
        ("12345", "12345"),
        (
            "order 1234 4242 4242 4242 4242",
            "order 1234 ************4242",
        ),
        (
            "a=4000056655665556&b=5555555555554444",
            "a=************5556&b=************4444",
        ),
        (
            "/v1/cards/4242424242424242/charges",
            "/v1/cards/************4242/charges",
        ),
        ("4242  4242 4242 4242", "4242  4242 4242 4242"), // double space: separate numbers
        ("no digits here", "no digits here"),
        ("ünïcode 4242424242424242 ✓", "ünïcode ************4242 ✓"),
    ];
    for (input, want) in cases {
        assert_eq!(mask_cards(input, 13, &none), *want, "input {input:?}");
    }
    assert!(scrub::luhn(b"4242424242424242"));
    assert!(!scrub::luhn(b"4242424242424241"));
    assert!(scrub::luhn(b"79927398713"));
}

#[test]
fn recording_keeps_its_test_cards_traces_do_not() {
    let rec = Scrubber::for_recording(&[], std::iter::once("4242424242424242".to_owned()));
    assert_eq!(rec.text("4242424242424242"), "4242424242424242");
    assert_eq!(rec.text("5105105105105100"), "************5100");
    let traces = Scrubber::for_traces(&[]);
    assert_eq!(traces.text("4242424242424242"), "************4242");
}

#[test]
fn json_scrub_table() {
    let s = Scrubber::for_traces(&["SSN".to_owned()]);
    let cases = [
        (
            json!({"password": "hunter2"}),
            json!({"password": "[scrubbed]"}),
        ),
        (
            json!({"Client_Secret": "x"}),
            json!({"Client_Secret": "[scrubbed]"}),
        ),
        (json!({"ssn": "078-05-1120"}), json!({"ssn": "[scrubbed]"})),
        (json!({"token": null}), json!({"token": null})),
        (
            json!({"card": {"number": "4242424242424242", "cvc": "123"}}),
            json!({"card": {"number": "************4242", "cvc": "[scrubbed]"}}),
        ),
        (
            json!({"n": 4242424242424242u64}),
            json!({"n": "************4242"}),
        ),
        (
            json!({"n": 1732370000000u64}),
            json!({"n": 1732370000000u64}),
        ),
        (
            json!([{"api_key": "k"}, "5555555555554444"]),
            json!([{"api_key": "[scrubbed]"}, "************4444"]),
        ),
        (
            json!({"amount": 2000, "currency": "usd"}),
            json!({"amount": 2000, "currency": "usd"}),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(s.json(input.clone()), want, "input {input}");
    }
}

#[test]
fn form_and_query_scrub() {
    let s = Scrubber::for_traces(&["ssn".to_owned()]);
    let out = s.form(
        "amount=2000&card%5Bnumber%5D=4242424242424242&card[cvc]=123&api_key=sk_x&ssn=1&q=ok",
    );
    for gone in ["4242424242424242", "123", "sk_x", "ssn=1"] {
        assert!(!out.contains(gone), "{gone} in {out}");
    }
    assert!(out.contains("amount=2000"), "{out}");
    assert!(out.contains("4242"), "{out}");
    assert!(out.contains("q=ok"), "{out}");
}

#[test]
fn truncated_json_scrubs_what_it_sees() {
    let s = Scrubber::for_traces(&[]);
    let cut = r#"{"amount": 5, "password" : "hunter2", "nested": {"token": 12345, "card": "4242424242424242", "note": "abc"#;
    let out = s.text(&scrub::partial_json(&s, cut)).into_owned();
    assert!(!out.contains("hunter2"), "{out}");
    assert!(!out.contains("12345"), "{out}");
    assert!(!out.contains("4242424242424242"), "{out}");
    assert!(out.contains("************4242"), "{out}");
    assert!(out.contains(r#""amount": 5"#), "{out}");
    assert!(out.contains(r#""note": "abc"#), "{out}");
}

#[test]
fn secret_headers() {
    for (name, secret) in [
        ("authorization", true),
        ("proxy-authorization", true),
        ("cookie", true),
        ("set-cookie", true),
        ("x-api-key", true),
        ("x-auth-token", true),
        ("x-client-secret", true),
        ("content-type", false),
        ("x-request-id", false),
        ("idempotency-key", true),
    ] {
        assert_eq!(scrub::is_secret_header(name), secret, "{name}");
    }
}

#[test]
fn filter_parsing() {
    assert_eq!(Filter::parse(None), Ok(Filter::default()));
    let f = Filter::parse(Some(
        "limit=5&status=4xx&operation=createPaymentIntent&code=rate_limited",
    ))
    .expect("valid");
    assert_eq!(f.limit, 5);
    assert_eq!(f.status, Some(StatusFilter::Class(4)));
    assert_eq!(f.operation.as_deref(), Some("createPaymentIntent"));
    assert_eq!(f.code.as_deref(), Some("rate_limited"));
    assert_eq!(
        Filter::parse(Some("status=429")).expect("valid").status,
        Some(StatusFilter::Exact(429))
    );
    for (q, pointer) in [
        ("limit=0", "/query/limit"),
        ("limit=101", "/query/limit"),
        ("limit=abc", "/query/limit"),
        ("status=42", "/query/status"),
        ("status=6xx", "/query/status"),
        ("code=Rate-Limited", "/query/code"),
        ("operation=a/b", "/query/operation"),
        ("colour=red", "/query/colour"),
    ] {
        let (at, _) = Filter::parse(Some(q)).expect_err(q);
        assert_eq!(at, pointer, "{q}");
    }
}

fn config_error(traces: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "apis:\n  - name: a\n    prefix: /a\n    mode: upstream\n    upstream: {{ url: http://127.0.0.1:1 }}\ntraces:\n{traces}"
    );
    std::fs::write(dir.path().join("sandgate.yaml"), text).expect("write");
    let errs = crate::config::Config::load(&crate::config::Source::Dir(dir.path().to_owned()))
        .expect_err("refused");
    let e = errs.0.first().expect("one error");
    format!("{}:{}", e.line.unwrap_or(0), e.message)
}

#[test]
fn traces_config_defaults_and_errors_with_lines() {
    let d = super::Settings::default();
    assert!(d.enabled);
    assert_eq!(d.max_per_tenant, 1000);
    assert_eq!(d.max_age, std::time::Duration::from_secs(7 * 86_400));
    assert_eq!(d.max_body, 16 * 1024);
    assert_eq!(d.queue, 10_000);
    for (traces, line, says) in [
        ("  max_per_tenant: 5\n  colour: red\n", "8:", "colour"),
        ("  max_per_tenant: 0\n", "7:", "max_per_tenant"),
        ("  enabled: true\n  max_age: 0s\n", "8:", "max_age"),
        ("  max_body: 2MiB\n", "7:", "max_body"),
        ("  queue: 0\n", "7:", "queue"),
        ("  max_age: soon\n", "7:", "duration"),
    ] {
        let e = config_error(traces);
        assert!(e.starts_with(line) && e.contains(says), "{traces:?}: {e}");
    }
}

/// A request identified while the writer's queue is full (here: the writer
/// has not started, so there is no room at all) keeps its method and path
/// but not a copy of its headers, and its trace says so; with room, the
/// headers are there and nothing is said.
#[test]
fn headers_are_not_copied_while_the_writer_is_behind() {
    let mut rec = super::Recorder::new(&super::Settings::default());
    let p = super::Pending::bare("sbx_01", "req_0", 0);
    let principal = crate::pipeline::identify::Principal {
        tenant: std::sync::Arc::clone(&p.who.tenant),
        client: "c".into(),
        scopes: std::sync::Arc::from(Vec::new()),
        via: crate::pipeline::identify::Via::ApiKey,
        limit_state: None,
    };
    let req = http::Request::builder()
        .uri("/payments/v1/customers")
        .header("x-partner", "acme")
        .body(())
        .expect("request");
    rec.identified(&principal, &req, &super::Sink::new());
    let head = rec.head.as_ref().expect("a head");
    assert!(!head.headers_captured);
    assert!(head.headers.is_empty());
    assert_eq!(head.uri.path(), "/payments/v1/customers");

    let mut p = super::Pending::bare("sbx_01", "req_1", 0);
    p.head.headers_captured = false;
    let omitted = p.render().request.headers_omitted;
    assert!(omitted.is_some_and(|why| why.contains("trace writer was behind")));
    let p = super::Pending::bare("sbx_01", "req_2", 0);
    let view = p.render();
    assert!(view.request.headers_omitted.is_none());
    assert!(view.response.headers_omitted.is_none());
}
