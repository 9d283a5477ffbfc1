//! Observability over real HTTP: a W3C `traceparent` is continued to a real
//! backend (same trace, the gateway's span as parent, `tracestate` passed
//! on) and a request without one starts a new trace; the Prometheus page on
//! the admin listener, scraped and parsed, counts requests, latencies
//! (total and upstream), refusals by stage and code, rate-limit decisions
//! and store operations, and no label carries a tenant, a request id or a
//! raw path.

mod common;

use std::collections::BTreeMap;

use common::{PAYMENTS, TestGateway, TestUpstream, client, sandbox_dir, start_gateway};
use sandgate::tenants::{self, DAY};

const POLICY: &str = "plans:
  trial:
    rate: { requests: 3, per: 60s, burst: 3 }
default_plan: trial
";

async fn gateway(upstream: &TestUpstream) -> TestGateway {
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\nauth:\n  api_keys: {{ prefix: sk_sandbox_, live_prefixes: [sk_live_] }}\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n  - name: echo\n    prefix: /echo\n    mode: upstream\n    upstream: {{ url: \"http://{}\" }}\n",
        upstream.addr
    );
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
        ("policies/plans.yaml", POLICY),
    ]))
    .await
}

/// A tenant on the default plan; returns (id, API key).
async fn tenant(gw: &TestGateway) -> (String, String) {
    let now = tenants::now_secs();
    let (mut t, creds) = tenants::new_tenant(
        "Acme",
        "dev@acme.test",
        now,
        std::time::Duration::ZERO,
        "sk_sandbox_",
    )
    .expect("tenant");
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

#[tokio::test]
async fn traceparent_is_continued_to_the_backend() {
    let upstream = TestUpstream::echo().await;
    let gw = gateway(&upstream).await;
    let (_, key) = tenant(&gw).await;
    let c = client();
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let resp = c
        .get(gw.url("/echo/orders"))
        .bearer_auth(&key)
        .header("traceparent", caller)
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let resp = c
        .get(gw.url("/echo/orders"))
        .bearer_auth(&key)
        .header("tracestate", "orphan=1")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);

    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    let forwarded = |i: usize| {
        seen[i]
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .expect("traceparent forwarded")
            .to_owned()
    };
    // Same trace, same flags; the parent is now the gateway's span.
    let first = forwarded(0);
    let parts: Vec<&str> = first.split('-').collect();
    assert_eq!(parts.len(), 4, "{first}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(parts[2].len(), 16);
    assert_ne!(parts[2], "00f067aa0ba902b7");
    assert_ne!(parts[2], "0000000000000000");
    assert_eq!(parts[3], "01");
    assert_eq!(seen[0].headers["tracestate"], "congo=t61rcWkgMzE");

    // No traceparent: a new, valid trace; a tracestate alone is dropped.
    let second = forwarded(1);
    let parts: Vec<&str> = second.split('-').collect();
    assert_eq!(parts.len(), 4, "{second}");
    assert_eq!(parts[1].len(), 32);
    assert_ne!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parts[1], "0".repeat(32));
    assert!(
        parts[1..].iter().all(|p| p
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())),
        "{second}"
    );
    assert!(!seen[1].headers.contains_key("tracestate"));
    gw.shutdown().await;
}

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format (comments skipped).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest.split_once("=\"").expect("label=\"");
                    // Values here never contain an escaped quote.
                    let (v, after) = after.split_once('"').expect("closing quote");
                    labels.insert(k.to_owned(), v.to_owned());
                    rest = after.strip_prefix(',').unwrap_or(after);
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum of the samples named `name` whose labels include `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn metrics_count_requests_latencies_refusals_limits_and_store_without_tenant_labels() {
    let upstream = TestUpstream::echo().await;
    let gw = gateway(&upstream).await;
    let (tenant_id, key) = tenant(&gw).await;
    let c = client();
    let mut request_ids = Vec::new();
    let mut send = async |req: reqwest::RequestBuilder| {
        let resp = req.bearer_auth(&key).send().await.expect("request");
        if let Some(id) = resp.headers().get("x-request-id") {
            request_ids.push(id.to_str().expect("id").to_owned());
        }
        resp.status().as_u16()
    };
    // Two upstream answers, one validation refusal, then the plan's rate
    // (3 per minute) is spent and the rest are limited.
    assert_eq!(send(c.get(gw.url("/echo/a"))).await, 200);
    assert_eq!(send(c.get(gw.url("/echo/b"))).await, 200);
    assert_eq!(
        send(
            c.post(gw.url("/payments/v1/payment_intents"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("amount=not-a-number")
        )
        .await,
        400
    );
    assert_eq!(send(c.get(gw.url("/echo/c"))).await, 429);
    assert_eq!(send(c.get(gw.url("/echo/d"))).await, 429);

    let text = c
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let samples = parse(&text);
    assert!(!samples.is_empty());

    // Requests and latency histograms, total and upstream, per API.
    assert!(
        total(
            &samples,
            "sandgate_requests_total",
            &[("api", "echo"), ("status_class", "2xx")]
        ) >= 2.0
    );
    assert!(
        total(
            &samples,
            "sandgate_requests_total",
            &[("api", "echo"), ("status_class", "4xx")]
        ) >= 2.0
    );
    assert!(
        total(
            &samples,
            "sandgate_request_duration_seconds_count",
            &[("api", "echo")]
        ) >= 4.0
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "sandgate_request_duration_seconds_bucket"
                && s.labels.get("le").is_some_and(|le| le == "+Inf")),
        "latency is a histogram with buckets"
    );
    assert!(
        total(
            &samples,
            "sandgate_upstream_duration_seconds_count",
            &[("api", "echo")]
        ) >= 2.0
    );
    assert!(
        total(
            &samples,
            "sandgate_upstream_duration_seconds_sum",
            &[("api", "echo")]
        ) > 0.0
    );
    // Refusals by stage and code.
    assert!(
        total(
            &samples,
            "sandgate_refusals_total",
            &[("stage", "validate"), ("code", "invalid_request")]
        ) >= 1.0
    );
    assert!(
        total(
            &samples,
            "sandgate_refusals_total",
            &[("stage", "limit"), ("code", "rate_limited")]
        ) >= 2.0
    );
    // Rate-limit decisions.
    assert!(
        total(
            &samples,
            "sandgate_limit_decisions_total",
            &[("outcome", "allowed")]
        ) >= 3.0
    );
    assert!(
        total(
            &samples,
            "sandgate_limit_decisions_total",
            &[("outcome", "rate_limited")]
        ) >= 2.0
    );
    // Store operations are timed (the API key lookup reads the store).
    assert!(
        total(
            &samples,
            "sandgate_store_duration_seconds_count",
            &[("store", "memory"), ("op", "get")]
        ) >= 1.0
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "sandgate_store_errors_total"),
        "store errors are exported (at zero) from the start"
    );

    // Bounded labels: never a tenant, a request id or a raw path.
    for s in &samples {
        for (k, v) in &s.labels {
            assert!(!v.contains(&tenant_id), "tenant in {}{{{k}={v}}}", s.name);
            assert!(!v.contains('/'), "a path in {}{{{k}={v}}}", s.name);
            for id in &request_ids {
                assert!(
                    !v.contains(id.as_str()),
                    "request id in {}{{{k}={v}}}",
                    s.name
                );
            }
        }
    }
    assert!(!text.contains(&key), "a secret in the metrics");
    gw.shutdown().await;
}
