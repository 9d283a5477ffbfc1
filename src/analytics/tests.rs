//! Unit tests of analytics: the engagement score as a data-driven table
//! (every cap and tier boundary), the file sink's rotation, the PostHog
//! body, backoff, and the configuration's reference checks.

use std::sync::Arc;

use super::engagement::{Counts, score, tier};
use super::events::{self, Event, props};
use super::sinks;

/// Counts with the given fields set: (name, value).
fn counts(fields: &[(&str, u64)]) -> Counts {
    let mut c = Counts::default();
    for (name, v) in fields {
        let slot = match *name {
            "first_login_24h" => &mut c.first_login_24h,
            "sessions" => &mut c.sessions,
            "features" => &mut c.features,
            "differentiators" => &mut c.differentiators,
            "workflows" => &mut c.workflows,
            "data_uploads" => &mut c.data_uploads,
            "milestones" => &mut c.milestones,
            "help" => &mut c.help,
            "errors" => &mut c.errors,
            other => panic!("unknown signal {other}"),
        };
        *slot = *v;
    }
    c
}

/// (signal counts, score, tier).
type Case = (&'static [(&'static str, u64)], i64, &'static str);

#[test]
fn score_table() {
    // (signal counts, score, tier)
    let table: &[Case] = &[
        (&[], 0, "Cold"),
        // first login within 24 h: 10, max 10 (a 0/1 flag)
        (&[("first_login_24h", 1)], 10, "Cold"),
        (&[("first_login_24h", 2)], 10, "Cold"),
        // sessions after the first: 5 each, max 25
        (&[("sessions", 1)], 0, "Cold"),
        (&[("sessions", 2)], 5, "Cold"),
        (&[("sessions", 6)], 25, "Cold"),
        (&[("sessions", 7)], 25, "Cold"),
        // unique features: 3 each, max 30
        (&[("features", 1)], 3, "Cold"),
        (&[("features", 10)], 30, "Cold"),
        (&[("features", 11)], 30, "Cold"),
        // differentiators: 5 each, max 15
        (&[("differentiators", 2)], 10, "Cold"),
        (&[("differentiators", 3)], 15, "Cold"),
        (&[("differentiators", 4)], 15, "Cold"),
        // workflows: 8 each, max 24
        (&[("workflows", 2)], 16, "Cold"),
        (&[("workflows", 3)], 24, "Cold"),
        (&[("workflows", 4)], 24, "Cold"),
        // own data: 15, max 15
        (&[("data_uploads", 1)], 15, "Cold"),
        (&[("data_uploads", 5)], 15, "Cold"),
        // milestones: 10 each, max 30
        (&[("milestones", 3)], 30, "Cold"),
        (&[("milestones", 4)], 30, "Cold"),
        // help: 2 each, max 6
        (&[("help", 3)], 6, "Cold"),
        (&[("help", 4)], 6, "Cold"),
        // errors: −3 each, at most −15; the score never goes below 0
        (&[("features", 10), ("errors", 1)], 27, "Cold"),
        (&[("features", 10), ("errors", 5)], 15, "Cold"),
        (&[("features", 10), ("errors", 6)], 15, "Cold"),
        (&[("errors", 2)], 0, "Cold"),
        // tier boundaries: 30 | 31, 60 | 61, 90 | 91
        (&[("features", 10)], 30, "Cold"),
        (&[("features", 7), ("first_login_24h", 1)], 31, "Warm"),
        (&[("features", 10), ("milestones", 3)], 60, "Warm"),
        (
            &[("features", 9), ("workflows", 3), ("first_login_24h", 1)],
            61,
            "Hot",
        ),
        (
            &[
                ("features", 10),
                ("milestones", 3),
                ("data_uploads", 1),
                ("differentiators", 3),
            ],
            90,
            "Hot",
        ),
        (
            &[
                ("features", 9),
                ("milestones", 3),
                ("data_uploads", 1),
                ("differentiators", 3),
                ("help", 2),
            ],
            91,
            "Champion",
        ),
        // everything at its cap
        (
            &[
                ("first_login_24h", 1),
                ("sessions", 100),
                ("features", 100),
                ("differentiators", 100),
                ("workflows", 100),
                ("data_uploads", 100),
                ("milestones", 100),
                ("help", 100),
            ],
            155,
            "Champion",
        ),
    ];
    for (fields, want_score, want_tier) in table {
        let e = score(&counts(fields));
        assert_eq!(e.score, *want_score, "score of {fields:?}: {e:?}");
        assert_eq!(e.tier, *want_tier, "tier of {fields:?}");
        assert_eq!(e.breakdown.len(), 9);
        for l in &e.breakdown {
            if l.per >= 0 {
                assert!(l.points <= l.cap, "{l:?}");
            } else {
                assert!(l.points >= l.cap, "{l:?}");
            }
        }
    }
}

#[test]
fn tiers_at_their_boundaries() {
    for (s, t) in [
        (-5, "Cold"),
        (0, "Cold"),
        (30, "Cold"),
        (31, "Warm"),
        (60, "Warm"),
        (61, "Hot"),
        (90, "Hot"),
        (91, "Champion"),
        (155, "Champion"),
    ] {
        assert_eq!(tier(s), t, "tier of {s}");
    }
}

#[test]
fn file_sink_rotates_at_its_size_and_keeps_n_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out/events.jsonl");
    let line = |i: usize| format!("{{\"n\":{i:04}}}\n").into_bytes(); // 11 bytes
    // 30 bytes: two lines per file.
    for i in 0..9 {
        sinks::append_lines(&path, 30, 2, &[line(i)]).expect("append");
    }
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let rotated = |n: u32| {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        std::path::PathBuf::from(s)
    };
    assert_eq!(read(&path), "{\"n\":0008}\n");
    assert_eq!(read(&rotated(1)), "{\"n\":0006}\n{\"n\":0007}\n");
    assert_eq!(read(&rotated(2)), "{\"n\":0004}\n{\"n\":0005}\n");
    assert!(!rotated(3).exists(), "only `keep` rotated files stay");
    for p in [path.clone(), rotated(1), rotated(2)] {
        assert!(std::fs::metadata(&p).expect("file").len() <= 30);
    }
    // A batch larger than the limit is split over files, never a line.
    sinks::append_lines(&path, 30, 2, &[line(9), line(10), line(11)]).expect("append");
    assert_eq!(read(&path), "{\"n\":0010}\n{\"n\":0011}\n");
    assert_eq!(read(&rotated(1)), "{\"n\":0008}\n{\"n\":0009}\n");
}

#[test]
fn posthog_batch_shape() {
    let e = Arc::new(Event::new(
        events::FEATURE_USED,
        "sbx_1",
        Some("D-1"),
        props([("feature_name", serde_json::json!("createCustomer"))]),
    ));
    let body: serde_json::Value =
        serde_json::from_slice(&sinks::posthog_body("phc_key", std::slice::from_ref(&e)))
            .expect("json");
    assert_eq!(body["api_key"], "phc_key");
    let item = &body["batch"][0];
    assert_eq!(item["event"], "sandbox_feature_used");
    assert_eq!(item["distinct_id"], "sbx_1");
    assert_eq!(item["timestamp"], e.timestamp.as_str());
    assert_eq!(item["properties"]["feature_name"], "createCustomer");
    assert_eq!(item["properties"]["sandbox_id"], "sbx_1");
    assert_eq!(item["properties"]["deal_id"], "D-1");
    assert_eq!(item["properties"]["event_id"], e.id.as_str());
    assert!(
        humantime::parse_rfc3339(&e.timestamp).is_ok(),
        "{}",
        e.timestamp
    );
    assert_ne!(
        e.id,
        Event::new(events::FEATURE_USED, "sbx_1", None, Default::default()).id
    );
}

#[test]
fn backoff_doubles_and_is_capped() {
    assert_eq!(sinks::backoff(1).as_millis(), 200);
    assert_eq!(sinks::backoff(2).as_millis(), 400);
    assert_eq!(sinks::backoff(3).as_millis(), 800);
    assert_eq!(sinks::backoff(50).as_secs(), 10);
}

/// Loads a sandbox whose `analytics:` section is `analytics`.
fn load(analytics: &str) -> Result<crate::sandbox::Sandbox, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\nanalytics:\n{analytics}"
    );
    std::fs::create_dir_all(dir.path().join("contracts")).expect("mkdir");
    std::fs::write(dir.path().join("sandgate.yaml"), config).expect("write");
    std::fs::write(
        dir.path().join("contracts/payments.yaml"),
        include_str!("../../contracts/payments.yaml"),
    )
    .expect("write");
    crate::sandbox::Sandbox::load(
        &crate::config::Source::Dir(dir.path().to_owned()),
        &crate::sandbox::Overrides {
            check_only: true,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())
}

/// The load errors of a sandbox with `analytics` (empty when it loads).
fn load_errors(analytics: &str) -> String {
    load(analytics).err().unwrap_or_default()
}

#[test]
fn references_are_checked_at_load_with_file_and_line() {
    let ok = "  workflows:\n    - name: pay\n      steps: [createCustomer, createPaymentIntent]\n  milestones:\n    - { name: first, operation: createCustomer }\n    - { name: paid, workflow: pay }\n    - { name: data, event: sandbox_data_uploaded }\n";
    assert_eq!(load_errors(ok), "");
    // Line 13 of sandgate.yaml is the unknown step.
    let bad_step = "  workflows:\n    - name: pay\n      steps:\n        - createCustomer\n        - chargeTheMoon\n";
    let e = load_errors(bad_step);
    assert!(
        e.contains("sandgate.yaml:13") && e.contains("`chargeTheMoon`"),
        "{e}"
    );
    let bad_milestone = "  milestones:\n    - { name: m, operation: nope }\n    - { name: w, workflow: nope }\n    - { name: e, event: sandbox_nope }\n    - { name: two, operation: createCustomer, event: sandbox_first_login }\n";
    let e = load_errors(bad_milestone);
    for want in [
        "operation `nope`",
        "workflow `nope`",
        "event `sandbox_nope`",
        "exactly one of",
    ] {
        assert!(e.contains(want), "{want} in {e}");
    }
    let e = load_errors("  sessions_idle: 5m\n");
    assert!(e.contains("sessions_idle"), "unknown keys are refused: {e}");
    let e = load_errors("  alerts:\n    webhooks: [\"ftp://x\"]\n");
    assert!(e.contains("webhooks") && e.contains("http"), "{e}");
}

#[test]
fn operations_know_their_tag_and_differentiator_flag() {
    let sandbox = load("  enabled: true\n").expect("loads");
    let s = &sandbox.analytics.settings;
    assert_eq!(s.session_idle, 30 * 60, "default idle time");
    let api = &s.apis[0];
    let op = |id: &str| {
        api.ops
            .iter()
            .find(|o| &*o.id == id)
            .unwrap_or_else(|| panic!("{id}"))
    };
    // The demo contract marks the 3-D Secure confirmation as a differentiator.
    assert!(op("confirmPaymentIntent").differentiator);
    assert_eq!(
        op("confirmPaymentIntent").tag.as_deref(),
        Some("payment_intents")
    );
    assert!(!op("createCustomer").differentiator);
    assert_eq!(op("createCustomer").tag.as_deref(), Some("customers"));
}

#[tokio::test]
async fn expiry_is_emitted_once_with_the_totals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: crate::store::SharedStore = Arc::new(crate::store::MemoryStore::new());
    let registry = crate::tenants::Registry::new(store.clone());
    let (mut t, _) = crate::tenants::new_tenant(
        "Acme",
        "dev@acme.test",
        1_000,
        std::time::Duration::from_secs(60),
        "sk_sandbox_",
    )
    .expect("tenant");
    t.deal_id = Some("D-7".into());
    registry.put(&t).await.expect("put");
    for (counter, n) in [("sessions", 4), ("features", 7), ("milestones", 2)] {
        store
            .incr(&super::engagement::key(&t.id, counter), n, None)
            .await
            .expect("incr");
    }
    let path = dir.path().join("events.jsonl");
    let settings = super::Settings {
        file: Some(super::settings::FileSink {
            path: path.clone(),
            max_size: 1 << 20,
            keep: 1,
            queue: 16,
            max_attempts: 1,
        }),
        ..Default::default()
    };
    let sinks = sinks::Dispatcher::start(&settings);
    let alerter = super::alerts::Alerter::start(&settings.alerts);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for _ in 0..2 {
        tx.send(super::Msg::Expired {
            tenant: t.id.clone(),
        })
        .await
        .expect("send");
    }
    drop(tx);
    super::tracker::run(
        rx,
        Arc::new(arc_swap::ArcSwap::from_pointee(settings)),
        registry,
        sinks,
        alerter,
    )
    .await
    .close()
    .await;
    let text = std::fs::read_to_string(&path).expect("the file sink wrote");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 1, "once: {text}");
    let e = &lines[0];
    assert_eq!(e["event"], "sandbox_expired");
    assert_eq!(e["sandbox_id"], t.id.as_str());
    assert_eq!(e["deal_id"], "D-7");
    assert_eq!(
        e["properties"],
        serde_json::json!({"total_sessions": 4, "total_features_used": 7, "milestones_completed": 2})
    );
}
