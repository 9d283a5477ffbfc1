//! Record mode: exchanges proxied to the backend are written as fixtures,
//! one file per exchange, into the API's `fixtures` directory, so the same
//! sandbox can later answer them itself (`facade` or `hybrid` mode, after a
//! reload).
//!
//! Nothing secret is written: request headers are not recorded at all
//! (so no `Authorization`, cookies or API keys); response headers lose
//! `Set-Cookie` and anything credential-like; body fields named in
//! `record.scrub_fields` (and the built-in names) become `[scrubbed]`; and a
//! string that looks like a real card number (Luhn-valid, 12–19 digits) and
//! is not one of the sandbox's test cards keeps only its last four digits.
//!
//! Files are written whole under a temporary name and then renamed, so a
//! reload never reads half a recording.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::Value;

use crate::trace::scrub::Scrubber;

/// Well-known public test card numbers (Stripe's), kept as they are even
/// when no scenario rule lists them.
const TEST_CARDS: [&str; 12] = [
    "4242424242424242",
    "4000056655665556",
    "5555555555554444",
    "2223003122003222",
    "5200828282828210",
    "378282246310005",
    "371449635398431",
    "6011111111111117",
    "3056930009020004",
    "36227206271667",
    "3566002020360505",
    "6200000000000005",
];

/// Response headers never recorded.
const DROPPED_HEADERS: [&str; 12] = [
    "set-cookie",
    "date",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "server",
    "x-request-id",
    "www-authenticate",
    "authorization",
    "sandgate-contract-drift",
];

/// Writes one API's recordings.
#[derive(Debug)]
pub struct Recorder {
    api: String,
    dir: PathBuf,
    scrub: Scrubber,
    /// Largest response body recorded.
    pub max_body: usize,
    seq: AtomicU64,
}

/// One exchange to record.
pub struct Exchange<'a> {
    /// The operation id, when the contract knows the request.
    pub operation: Option<&'a str>,
    /// Method.
    pub method: &'a http::Method,
    /// The path the API sees (prefix stripped).
    pub path: &'a str,
    /// Raw query.
    pub query: Option<&'a str>,
    /// The request body as the contract types it (or parsed JSON).
    pub request_body: Option<Value>,
    /// The backend's status.
    pub status: http::StatusCode,
    /// The backend's response headers.
    pub headers: &'a http::HeaderMap,
    /// The backend's body, parsed (JSON only), `None` when empty.
    pub response_body: Option<Value>,
}

#[derive(Serialize)]
struct File<'a> {
    fixtures: [Recorded<'a>; 1],
}

#[derive(Serialize)]
struct Recorded<'a> {
    name: String,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    query: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Value>,
    response: RecordedResponse,
}

#[derive(Serialize)]
struct RecordedResponse {
    status: u16,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Value>,
}

impl Recorder {
    /// A recorder for API `api` writing into `dir` (an existing directory).
    pub fn new(
        api: &str,
        dir: PathBuf,
        scrub_fields: &[String],
        test_cards: impl Iterator<Item = String>,
        max_body: usize,
    ) -> Recorder {
        Recorder {
            api: api.to_owned(),
            dir,
            scrub: Scrubber::for_recording(
                scrub_fields,
                TEST_CARDS.iter().map(|s| (*s).to_owned()).chain(test_cards),
            ),
            max_body,
            seq: AtomicU64::new(0),
        }
    }

    /// The fixture file text for `ex`, scrubbed, and its file name.
    pub fn render(&self, ex: &Exchange<'_>) -> (String, String) {
        let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let label = ex
            .operation
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}{}", ex.method, ex.path.replace('/', "_")));
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(80)
            .collect();
        let name = format!("recorded-{label}-{id}");
        let query = ex
            .query
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .map(|(k, v)| {
                        let v = if self.scrub.is_secret_field(&k) {
                            crate::trace::scrub::SCRUBBED.to_owned()
                        } else {
                            self.scrub.text(&v).into_owned()
                        };
                        (k, v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let headers = ex
            .headers
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                !DROPPED_HEADERS.contains(&k)
                    && !["cookie", "token", "secret", "auth", "key"]
                        .iter()
                        .any(|w| k.contains(w))
            })
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_owned(), v.to_owned()))
            })
            .collect();
        let file = File {
            fixtures: [Recorded {
                name: name.clone(),
                method: ex.method.as_str(),
                path: ex.path,
                query,
                body: ex.request_body.clone().map(|b| self.scrubbed(b)),
                response: RecordedResponse {
                    status: ex.status.as_u16(),
                    headers,
                    body: ex.response_body.clone().map(|b| self.scrubbed(b)),
                },
            }],
        };
        let yaml = serde_saphyr::to_string(&file).unwrap_or_default();
        let text = format!(
            "# Recorded by sandgate (record mode) from API `{}`: {} {} -> {}.\n\
             # Request headers are not recorded; secrets and real card numbers are scrubbed.\n{yaml}",
            self.api,
            ex.method,
            ex.path,
            ex.status.as_u16()
        );
        (format!("{name}-{seq}.yaml"), text)
    }

    /// Writes the recording of `ex` in the background (never blocking the
    /// response); failures are logged and counted.
    pub fn record(&self, ex: &Exchange<'_>) {
        let (file_name, text) = self.render(ex);
        let dir = self.dir.clone();
        let api = self.api.clone();
        tokio::task::spawn_blocking(move || {
            let tmp = dir.join(format!(".{file_name}.tmp"));
            let result = std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, dir.join(&file_name)));
            match result {
                Ok(()) => {
                    metrics::counter!("sandgate_recordings_total", "api" => api.clone(), "result" => "written").increment(1);
                    tracing::info!(api = %api, file = %file_name, "recorded an exchange as a fixture");
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    metrics::counter!("sandgate_recordings_total", "api" => api.clone(), "result" => "failed").increment(1);
                    tracing::warn!(api = %api, dir = %dir.display(), error = %e, "could not write a recording");
                }
            }
        });
    }

    /// Counts an exchange that was proxied but not recorded, and why.
    pub fn skipped(&self, why: &'static str) {
        metrics::counter!("sandgate_recordings_total", "api" => self.api.clone(), "result" => why)
            .increment(1);
        tracing::debug!(api = %self.api, why, "exchange not recorded");
    }

    fn scrubbed(&self, v: Value) -> Value {
        self.scrub.json_with(v, &|s| escape_template(&s))
    }
}

/// Recorded text that looks like a template is kept literal.
fn escape_template(s: &str) -> String {
    if s.contains("{{") || s.contains("{%") {
        format!("{{% raw %}}{s}{{% endraw %}}")
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scrubs_secrets_and_real_cards() {
        let r = Recorder::new(
            "payments",
            PathBuf::from("/nonexistent"),
            &["SSN".to_owned()],
            std::iter::once("4000000000000002".to_owned()),
            1024,
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("set-cookie", http::HeaderValue::from_static("s=1"));
        headers.insert("x-api-key-echo", http::HeaderValue::from_static("sk_live"));
        headers.insert("x-trace", http::HeaderValue::from_static("abc"));
        let ex = Exchange {
            operation: Some("createCharge"),
            method: &http::Method::POST,
            path: "/v1/charges",
            query: Some("api_key=sk_test_123&expand[]=customer"),
            request_body: Some(json!({
                "card": {"number": "4000 0566 5566 5556", "cvc": "123"},
                "other": "5105105105105100",
                "text": "paid with 5105-1051-0510-5100 today",
                "test": "4000000000000002",
                "ssn": "078-05-1120",
                "note": "{{ oops }}"
            })),
            status: http::StatusCode::OK,
            headers: &headers,
            response_body: Some(json!({"id": "ch_1", "client_secret": "pi_secret_x"})),
        };
        let (name, text) = r.render(&ex);
        assert!(name.starts_with("recorded-createCharge-") && name.ends_with(".yaml"));
        for gone in [
            "sk_test_123",
            "\"123\"",
            "5105105105105100",
            "078-05-1120",
            "pi_secret_x",
            "s=1",
            "sk_live",
        ] {
            assert!(!text.contains(gone), "{gone} leaked into:\n{text}");
        }
        for kept in [
            "************5100",
            "paid with ************5100 today",
            "4000000000000002",
            "4000 0566 5566 5556",
            "x-trace",
            "{% raw %}{{ oops }}{% endraw %}",
        ] {
            assert!(text.contains(kept), "{kept} missing from:\n{text}");
        }
    }
}
