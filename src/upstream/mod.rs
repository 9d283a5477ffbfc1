//! The upstream proxy: a pooled hyper client per API (HTTP/1.1 and h2, TLS
//! with the system roots plus an optional CA), header hygiene, and streaming
//! bodies in both directions.
//!
//! Invariants: redirects are never followed (the client does not follow
//! them); only the configured backend is ever contacted (the request path is
//! appended to the configured base, never parsed as a URL); the backend sees
//! no hop-by-hop header and no identity header the client made up.

mod headers;
mod pool;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{Body, BoxError};
use crate::config::{ConfigError, Source, UpstreamConfig};
use crate::refusal::Refusal;

pub use headers::{IDENTITY_HEADERS, strip_hop_by_hop};

/// Facts about the client connection the proxy passes on to the backend.
#[derive(Clone, Debug)]
pub struct Forwarded<'a> {
    /// The client's IP address, as `X-Forwarded-For` text
    /// ([`crate::server::ConnInfo::forwarded_for`]).
    pub client_ip: HeaderValue,
    /// `https` or `http`, as the client connected.
    pub proto: &'static str,
    /// The host the client asked for (`Host`, or `:authority` on HTTP/2).
    pub host: Option<HeaderValue>,
    /// The identified tenant, passed on as `X-Sandgate-Tenant` (the
    /// caller's own credentials are then not forwarded).
    pub tenant: Option<&'a str>,
    /// The request id, passed on as `X-Request-Id`.
    pub request_id: &'a str,
    /// The tenant's test-clock time (Unix seconds) when its clock is set,
    /// passed on as `Sandgate-Clock` (RFC 3339).
    pub clock: Option<u64>,
    /// Where the first bytes of a streaming request body are copied for
    /// the decision trace (the body itself is never held back).
    pub capture: Option<Arc<crate::trace::Capture>>,
    /// The request's trace, passed on as `traceparent` (and `tracestate`)
    /// with the gateway's span as the parent.
    pub trace: &'a crate::trace_context::TraceContext,
}

/// Permission to send one request to a backend: [`Upstream::forward`]
/// takes one, and [`Permit::for_request`] is the only way to get one.
///
/// Invariant: a dry-run write is never forwarded to a backend that is not
/// declared `dry_run: forward`. For a dry run, `for_request` gives no
/// permit unless the API forwards dry runs, and a permit for a dry run
/// puts `X-Dry-Run: true` on the forwarded request itself (the client's own
/// `X-Dry-Run` header is always removed), so the backend cannot miss it.
#[derive(Debug)]
#[must_use]
pub struct Permit {
    dry_run: bool,
}

impl Permit {
    /// The permit for a request: always for a normal request; for a dry-run
    /// write only when the API's backend declared it understands
    /// `X-Dry-Run` (`mode` is `forward`).
    pub fn for_request(dry_run: bool, mode: crate::config::DryRunMode) -> Option<Permit> {
        match (dry_run, mode) {
            (false, _) => Some(Permit { dry_run: false }),
            (true, crate::config::DryRunMode::Forward) => Some(Permit { dry_run: true }),
            (true, _) => None,
        }
    }

    /// Whether the forwarded request is a dry run (and says so).
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

/// A configured backend with its connection pool.
#[derive(Debug)]
pub struct Upstream {
    api: Arc<str>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// `Host` for the backend (its URL's authority, without a default
    /// port), made once here rather than by the client on every request.
    host: HeaderValue,
    base_path: String,
    timeout: std::time::Duration,
    timeout_text: String,
    transport: Transport,
    /// Time to the backend's response head (`sandgate_upstream_duration_seconds`).
    duration: metrics::Histogram,
}

impl Upstream {
    /// Builds the backend of API `api` from its configuration, with a
    /// connection pool for each of `workers` threads. `file` names
    /// `sandgate.yaml` in messages.
    pub fn build(
        api: &str,
        cfg: &UpstreamConfig,
        source: &Source,
        file: &std::path::Path,
        workers: usize,
    ) -> Result<Upstream, ConfigError> {
        let line = cfg.url.referenced.line();
        let uri: Uri =
            cfg.url.value.parse().map_err(|e| {
                ConfigError::new(file, line, format!("upstream url is not a URL: {e}"))
            })?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(ConfigError::new(
                file,
                line,
                "upstream url needs a scheme and a host",
            ));
        };
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let host = host_header(&scheme, &authority)
            .ok_or_else(|| ConfigError::new(file, line, "upstream url has an unusable host"))?;

        let mut roots = rustls::RootCertStore::empty();
        // System roots are a convenience; a machine without them still works
        // with the configured `ca`.
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(ca) = &cfg.ca {
            let pem = source
                .read(&ca.value)
                .map_err(|m| ConfigError::new(file, ca.referenced.line(), m))?;
            let certs = crate::server::tls::parse_certs(&pem).map_err(|m| {
                ConfigError::new(file, ca.referenced.line(), format!("upstream `ca`: {m}"))
            })?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    ConfigError::new(
                        file,
                        ca.referenced.line(),
                        format!("upstream `ca` has an unusable certificate: {e}"),
                    )
                })?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(file, line, format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout.get()));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        // One connection pool per worker thread: a pooled connection is
        // driven by the thread that opened it, so a request never hands its
        // exchange to another thread. Slot 0 serves threads that are not
        // workers (tests, the control runtime).
        let transport = if scheme == http::uri::Scheme::HTTP {
            Transport::Plain(pool::Pool::new(
                authority.host(),
                authority.port_u16().unwrap_or(80),
                cfg.connect_timeout.get(),
                cfg.pool_idle_timeout.get(),
                cfg.pool_max_idle,
                workers,
            ))
        } else {
            Transport::Tls(
                (0..=workers)
                    .map(|_| {
                        Client::builder(TokioExecutor::new())
                            .timer(TokioTimer::new())
                            .pool_timer(TokioTimer::new())
                            .pool_idle_timeout(cfg.pool_idle_timeout.get())
                            .pool_max_idle_per_host(cfg.pool_max_idle)
                            .build(connector.clone())
                    })
                    .collect(),
            )
        };
        Ok(Upstream {
            api: Arc::from(api),
            scheme,
            authority,
            host,
            base_path,
            timeout: cfg.timeout.value.get(),
            timeout_text: cfg.timeout.value.to_string(),
            transport,
            duration: metrics::histogram!("sandgate_upstream_duration_seconds", "api" => api.to_owned()),
        })
    }

    /// Sends `req` on a connection of the calling worker's pool.
    async fn send(&self, req: Request<Body>) -> Result<Response<Body>, Failed> {
        match &self.transport {
            Transport::Plain(pool) => match pool.send(req).await {
                Ok(resp) => Ok(resp.map(boxed)),
                Err(pool::PoolError::Connect(e)) => Err(Failed {
                    connect: true,
                    error: Box::new(e),
                }),
                Err(pool::PoolError::Exchange(e)) => Err(Failed {
                    connect: false,
                    error: Box::new(e),
                }),
            },
            Transport::Tls(clients) => {
                let client = clients
                    .get(crate::server::worker_slot())
                    .unwrap_or(&clients[0]);
                match client.request(req).await {
                    Ok(resp) => Ok(resp.map(boxed)),
                    Err(e) => Err(Failed {
                        connect: e.is_connect(),
                        error: Box::new(e),
                    }),
                }
            }
        }
    }

    /// Forwards `req`, minus the first `strip` bytes of its path (the API's
    /// prefix), and returns the backend's response with its body streaming.
    /// `permit` says it may go (and whether it goes as a dry run).
    #[allow(
        clippy::too_many_arguments,
        reason = "the permit stays a parameter of its own, where no caller can miss it"
    )]
    pub async fn forward(
        &self,
        permit: Permit,
        mut parts: http::request::Parts,
        body: crate::body::RequestBody,
        strip: usize,
        max_body: u64,
        max_body_rule: &str,
        fwd: Forwarded<'_>,
    ) -> Result<Response<Body>, Refusal> {
        let path = match parts.uri.path().get(strip..) {
            Some("") | None => "/",
            Some(rest) => rest,
        };
        let mut pq = String::with_capacity(self.base_path.len() + path.len() + 64);
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = parts.uri.query() {
            pq.push('?');
            pq.push_str(q);
        }
        parts.uri = match self.transport {
            // hyper's own connection writes the URI as given: origin-form.
            Transport::Plain(_) => Uri::try_from(pq).map_err(|_| ()),
            Transport::Tls(_) => Uri::builder()
                .scheme(self.scheme.clone())
                .authority(self.authority.clone())
                .path_and_query(pq)
                .build()
                .map_err(|_| ()),
        }
        .map_err(|_| Refusal::Internal)?;
        parts.version = Version::HTTP_11;
        let capture = fwd.capture.clone();
        headers::prepare_request(&mut parts.headers, fwd, permit.dry_run);
        // The backend's Host is its own (the client's was removed above; the
        // client would otherwise format this on every request).
        parts.headers.insert(http::header::HOST, self.host.clone());

        let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
        // Errors of the client's body are marked, so a client that breaks
        // off its upload is not reported as a failing backend. They are also
        // noted aside: to an HTTP/2 backend the client only resets the
        // stream, and the exchange fails with that reset, not the body error.
        let noted = Arc::new(OnceLock::new());
        let note = noted.clone();
        let body: Body = match body {
            // Nothing to stream (a GET, say): no wrapping to allocate.
            crate::body::RequestBody::Streaming(body)
                if hyper::body::Body::is_end_stream(&body) =>
            {
                crate::body::empty()
            }
            crate::body::RequestBody::Streaming(body) => Limited::new(body, limit)
                .map_frame(move |f| {
                    if let (Some(c), Some(data)) = (&capture, f.data_ref()) {
                        c.push(data);
                    }
                    f
                })
                .map_err(move |e| -> BoxError {
                    let _ = note.set(ClientBody::of(&e));
                    Box::new(ClientBodyError(e))
                })
                .boxed(),
            crate::body::RequestBody::Read(bytes) => crate::body::full(bytes),
        };
        let req = Request::from_parts(parts, body);

        let api = || self.api.to_string();
        let sent = quanta::Instant::now();
        let exchange = crate::server::timer::timeout(self.timeout, self.send(req)).await;
        self.duration.record(sent.elapsed().as_secs_f64());
        let resp = match exchange {
            Err(_) => {
                metrics::counter!("sandgate_upstream_errors_total", "api" => self.api.to_string(), "kind" => "timeout").increment(1);
                return Err(Refusal::UpstreamTimeout {
                    api: api(),
                    after: self.timeout_text.clone(),
                });
            }
            Ok(Err(Failed { connect, error })) => {
                match client_body_error(&*error).or_else(|| noted.get().copied()) {
                    Some(ClientBody::TooLarge) => {
                        return Err(Refusal::PayloadTooLarge {
                            declared: None,
                            max: max_body,
                            rule: max_body_rule.to_owned(),
                        });
                    }
                    Some(ClientBody::Broken) => return Err(Refusal::UnreadableBody),
                    None => {}
                }
                let kind = if connect { "connect" } else { "protocol" };
                metrics::counter!("sandgate_upstream_errors_total", "api" => self.api.to_string(), "kind" => kind).increment(1);
                tracing::warn!(api = %self.api, kind, error = %error, "upstream request failed");
                return Err(if connect {
                    Refusal::UpstreamUnavailable { api: api() }
                } else {
                    Refusal::UpstreamError { api: api() }
                });
            }
            Ok(Ok(resp)) => resp,
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The client's connection has its own protocol: an HTTP/1.0 backend
        // must not turn the answer into an HTTP/1.0 response (which would
        // also end the client's keep-alive).
        parts.version = Version::default();
        Ok(Response::from_parts(parts, body))
    }
}

/// How requests reach a backend.
#[derive(Debug)]
enum Transport {
    /// `http`: hyper's HTTP/1.1 connections, pooled per worker thread.
    Plain(Arc<pool::Pool>),
    /// `https`: hyper-util's client (h2 or HTTP/1.1, as ALPN decides), one
    /// per worker thread (slot 0 for other threads).
    Tls(Box<[Client<HttpsConnector<HttpConnector>, Body>]>),
}

/// A failed exchange: whether no connection could be opened, and why.
struct Failed {
    connect: bool,
    error: BoxError,
}

/// A backend's response body, with its errors boxed.
fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static,
{
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}

/// The `Host` a backend at `scheme://authority` expects: its host, with
/// the port unless it is the scheme's default (as hyper's client sets it).
fn host_header(
    scheme: &http::uri::Scheme,
    authority: &http::uri::Authority,
) -> Option<HeaderValue> {
    let default_port = if *scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    let host = match authority.port_u16() {
        Some(p) if p != default_port => format!("{}:{p}", authority.host()),
        _ => authority.host().to_owned(),
    };
    HeaderValue::from_str(&host).ok()
}

/// An error of the client's request body (not of the backend).
#[derive(Debug)]
struct ClientBodyError(BoxError);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client request body: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[derive(Clone, Copy)]
enum ClientBody {
    TooLarge,
    Broken,
}

impl ClientBody {
    /// How the client's body failed, from its error.
    fn of(e: &BoxError) -> ClientBody {
        if e.is::<http_body_util::LengthLimitError>() {
            ClientBody::TooLarge
        } else {
            ClientBody::Broken
        }
    }
}

/// Whether a failed exchange was the client's body's fault, and how.
fn client_body_error(e: &(dyn std::error::Error + 'static)) -> Option<ClientBody> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(ClientBodyError(inner)) = err.downcast_ref::<ClientBodyError>() {
            return Some(ClientBody::of(inner));
        }
        cur = err.source();
    }
    None
}

/// A value for `X-Forwarded-For` and friends.
fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

#[cfg(test)]
mod tests {
    use super::{Permit, Uri, host_header};
    use crate::config::DryRunMode;

    #[test]
    fn the_backend_host_drops_only_a_default_port() {
        let table = [
            ("http://127.0.0.1:18081/base", "127.0.0.1:18081"),
            ("http://backend.internal", "backend.internal"),
            ("http://backend.internal:80", "backend.internal"),
            ("https://backend.internal:443", "backend.internal"),
            ("https://backend.internal:80", "backend.internal:80"),
            ("http://[::1]:8080", "[::1]:8080"),
        ];
        for (url, want) in table {
            let uri: Uri = url.parse().expect("a URL");
            let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
                panic!("{url} has a scheme and an authority");
            };
            assert_eq!(
                host_header(scheme, authority).expect("a host"),
                want,
                "{url}"
            );
        }
    }

    #[test]
    fn a_dry_run_gets_a_permit_only_from_a_forwarding_backend() {
        for mode in [
            DryRunMode::Simulate,
            DryRunMode::Forward,
            DryRunMode::Refuse,
        ] {
            let normal = Permit::for_request(false, mode).expect("a normal request goes");
            assert!(!normal.is_dry_run());
            let dry = Permit::for_request(true, mode);
            assert_eq!(
                dry.map(|p| p.is_dry_run()),
                (mode == DryRunMode::Forward).then_some(true),
                "{mode:?}"
            );
        }
    }
}
