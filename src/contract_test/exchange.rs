//! One case against the target: the request sent (with the credentials
//! given on the command line), the answer read within the timeout, and the
//! checks: the status (documented for the operation, or the fixture's),
//! the `Content-Type` and the body against the documented response schema
//! (the same checker the gateway uses for live drift, `drift::Checker`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::plan::Case;
use crate::contract::Contract;
use crate::drift::{Checker, Drift};

/// Largest response body read and checked.
pub const MAX_BODY: usize = 8 << 20;

/// What happened to one case.
#[derive(Debug)]
pub enum Verdict {
    /// Every check passed.
    Passed,
    /// What is wrong, each with where (`status`, `content-type`, `request`
    /// or a JSON pointer into the body).
    Failed(Vec<Drift>),
    /// Not run, and why.
    Skipped(String),
}

/// The result of one case.
#[derive(Debug)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// `POST /v1/customers → 200 application/json`, when something was sent.
    pub exchange: Option<String>,
    /// How long the exchange took.
    pub elapsed: Duration,
}

/// The system's root certificates plus those of `ca` (PEM), for an HTTPS
/// target.
pub fn roots(ca: Option<&[u8]>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    // System roots are a convenience; a machine without them still works
    // with `--ca`.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca {
        for cert in crate::server::tls::parse_certs(pem)? {
            roots
                .add(cert)
                .map_err(|e| format!("an unusable certificate: {e}"))?;
        }
    }
    Ok(roots)
}

/// The target the cases are sent to.
pub struct Target {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `scheme://authority/base-path`, without a trailing `/`.
    base: String,
    /// Headers added to every request; never printed.
    credentials: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

impl Target {
    /// A target at `url` (an absolute `http`/`https` URL without
    /// credentials or query), trusting `roots` for HTTPS.
    pub fn new(
        url: &str,
        credentials: Vec<(HeaderName, HeaderValue)>,
        timeout: Duration,
        roots: rustls::RootCertStore,
    ) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err("needs a scheme and a host, e.g. http://127.0.0.1:8080/payments".into());
        };
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme `{scheme}` is not http or https"));
        }
        if authority.as_str().contains('@') {
            return Err("has credentials in it; pass them with --header or --api-key".into());
        }
        if uri.query().is_some() {
            return Err(
                "has a query; give the base URL the contract's paths are appended to".into(),
            );
        }
        let base = format!("{scheme}://{authority}{}", uri.path().trim_end_matches('/'));
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Target {
            client,
            base,
            credentials,
            timeout,
        })
    }

    /// The base URL the contract's paths are appended to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Runs `case` and checks the answer against `contract`.
    pub async fn run(&self, case: &Case, contract: &Contract, checker: &Checker) -> Outcome {
        let planned = match &case.request {
            Ok(p) => p,
            Err(why) => {
                return Outcome {
                    verdict: Verdict::Skipped(why.clone()),
                    exchange: None,
                    elapsed: Duration::ZERO,
                };
            }
        };
        let line = format!("{} {}", planned.method, planned.path_and_query);
        let started = Instant::now();
        let failed = |message: String, exchange: String| Outcome {
            verdict: Verdict::Failed(vec![Drift {
                at: "request".into(),
                message,
            }]),
            exchange: Some(exchange),
            elapsed: started.elapsed(),
        };
        let uri: Uri = match format!("{}{}", self.base, planned.path_and_query).parse() {
            Ok(u) => u,
            Err(e) => return failed(format!("the request URL is not valid: {e}"), line),
        };
        let mut req = Request::new(Full::new(
            planned
                .body
                .as_ref()
                .map(|(_, b)| b.clone())
                .unwrap_or_default(),
        ));
        *req.method_mut() = planned.method.clone();
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, */*;q=0.5"),
        );
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!(
                "sandgate-contract-test/",
                env!("CARGO_PKG_VERSION")
            )),
        );
        if let Some((ct, _)) = &planned.body {
            h.insert(header::CONTENT_TYPE, ct.clone());
        }
        for (k, v) in planned.headers.iter().chain(&self.credentials) {
            h.insert(k.clone(), v.clone());
        }
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("the target did not answer: {}", error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let bytes = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        format!("the response body is larger than {} MiB", MAX_BODY >> 20)
                    } else {
                        format!("the response body broke off: {e}")
                    }
                })?
                .to_bytes();
            Ok::<_, String>((parts, bytes))
        };
        let (parts, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(m)) => return failed(m, line),
            Err(_) => {
                return failed(
                    format!(
                        "no complete answer within {}",
                        humantime::format_duration(self.timeout)
                    ),
                    line,
                );
            }
        };
        let elapsed = started.elapsed();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let exchange = format!(
            "{line} → {}{}",
            parts.status.as_u16(),
            content_type.map(|c| format!(" {c}")).unwrap_or_default()
        );
        let problems = check(case, contract, checker, parts.status, content_type, &body);
        Outcome {
            verdict: if problems.is_empty() {
                Verdict::Passed
            } else {
                Verdict::Failed(problems)
            },
            exchange: Some(exchange),
            elapsed,
        }
    }
}

/// Everything wrong with an answer to `case`.
fn check(
    case: &Case,
    contract: &Contract,
    checker: &Checker,
    status: StatusCode,
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<Drift> {
    let mut problems = Vec::new();
    match case.expect {
        Some(want) if want != status => problems.push(Drift {
            at: "status".into(),
            message: format!(
                "expected {} (the fixture's status), got {}",
                want.as_u16(),
                status.as_u16()
            ),
        }),
        Some(_) => {}
        // A refused credential means the operation was not exercised at
        // all, even when the contract documents the refusal.
        None if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => {
            problems.push(Drift {
                at: "status".into(),
                message: format!(
                    "the target refused the request ({}); give credentials with --header or --api-key",
                    status.as_u16()
                ),
            })
        }
        None => {}
    }
    if let Some(op) = case.op {
        for d in checker.check(contract, op, status, content_type, body) {
            if !problems.contains(&d) {
                problems.push(d);
            }
        }
    }
    problems
}

/// An error with its sources, `a: b: c` (hyper's own message is terse).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
