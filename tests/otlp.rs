//! The OTLP exporter (cargo feature `otlp`; `.ci/run` runs this file with
//! `--features otlp`): the real `sandgate serve` process, pointed at a real
//! HTTP collector stand-in by `OTEL_EXPORTER_OTLP_ENDPOINT`, exports the
//! request's span over OTLP/HTTP protobuf with the caller's trace id, the
//! caller's span as parent and the gateway's span id (the one the backend
//! received in `traceparent`).
#![cfg(feature = "otlp")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{TestUpstream, sandbox_dir};
use http_body_util::{BodyExt, Full};

/// Kills the gateway when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn request_spans_are_exported_over_otlp_with_the_callers_trace() {
    // The collector stand-in keeps every export it receives.
    let exports: Arc<Mutex<Vec<(String, String, Bytes)>>> = Arc::default();
    let keep = exports.clone();
    let collector = TestUpstream::start(move |parts, body| {
        let keep = keep.clone();
        async move {
            let ct = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            keep.lock()
                .expect("lock")
                .push((parts.uri.path().to_owned(), ct, body));
            http::Response::new(Full::new(Bytes::new()).boxed())
        }
    })
    .await;
    let backend = TestUpstream::echo().await;
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: echo\n    prefix: /echo\n    mode: upstream\n    upstream: {{ url: \"http://{}\" }}\n",
        backend.addr
    );
    let dir = sandbox_dir(&[("sandgate.yaml", &config)]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["serve", "--config"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", collector.addr),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sandgate serve");
    let stdout = child.stdout.take().expect("stdout");
    let _gateway = Killed(child);
    // Stdout is read to its end on a thread of its own, so the gateway
    // never writes into a closed pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let public = rx
        .iter()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix("listening public http://")
                .map(|rest| {
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
        })
        .expect("the public address is printed");

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let resp = common::client()
        .get(format!("http://{public}/echo/orders"))
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let forwarded = backend.seen()[0].headers["traceparent"]
        .to_str()
        .expect("text")
        .to_owned();
    let gateway_span = forwarded.split('-').nth(2).expect("span id").to_owned();

    // The batch processor sends within its schedule delay; wait, bounded.
    let mut found = None;
    for _ in 0..200 {
        found = exports
            .lock()
            .expect("lock")
            .iter()
            .find(|(_, _, body)| contains(body, &hex(trace)))
            .cloned();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (path, content_type, body) = found.expect("an export carrying the caller's trace id");
    assert_eq!(path, "/v1/traces");
    assert_eq!(content_type, "application/x-protobuf");
    assert!(
        contains(&body, &hex(&gateway_span)),
        "the gateway's span id"
    );
    assert!(
        contains(&body, &hex(caller_span)),
        "the caller's span as parent"
    );
    for text in ["sandgate", "GET echo", "sandgate.source", "upstream"] {
        assert!(contains(&body, text.as_bytes()), "{text} in the span");
    }
}
