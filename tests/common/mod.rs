//! Shared helpers of the integration tests: a sandbox directory in a temp
//! dir, the real gateway started on 127.0.0.1:0, a real upstream server,
//! certificates made with rcgen, and HTTP clients. Plain functions, no macros.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sandgate::config::Source;
use sandgate::{Overrides, Running};
use tempfile::TempDir;
use tokio::net::TcpListener;

/// The demo payments contract, as shipped.
pub const PAYMENTS: &str = include_str!("../../contracts/payments.yaml");

/// Writes `files` (relative path, contents) into a fresh temp dir.
pub fn sandbox_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(dir.path(), files);
    dir
}

/// Writes `files` under `dir`, creating parent directories.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }
}

/// A gateway running in this process on real sockets.
pub struct TestGateway {
    /// The running gateway (take it to shut down).
    pub running: Option<Running>,
    /// Public listeners (address, is TLS).
    pub public: Vec<(SocketAddr, bool)>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The sandbox directory (kept alive as long as the gateway).
    pub dir: TempDir,
}

impl TestGateway {
    /// Base URL of the first plain listener.
    pub fn url(&self, path: &str) -> String {
        let (addr, _) = self
            .public
            .iter()
            .find(|(_, tls)| !tls)
            .expect("a plain listener");
        format!("http://{addr}{path}")
    }

    /// Address of the first TLS listener.
    pub fn tls_addr(&self) -> SocketAddr {
        self.public
            .iter()
            .find(|(_, tls)| *tls)
            .expect("a TLS listener")
            .0
    }

    /// URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Drains and stops the gateway; returns whether it drained in time.
    pub async fn shutdown(mut self) -> bool {
        self.running.take().expect("running").shutdown().await
    }
}

/// Starts the gateway on the sandbox in `dir`. Listener addresses in the
/// config should use port 0; the admin listener is forced to 127.0.0.1:0.
pub async fn start_gateway(dir: TempDir) -> TestGateway {
    let overrides = Overrides {
        listen: None,
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        check_only: false,
    };
    let running = sandgate::start(Source::Dir(dir.path().to_owned()), overrides)
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    TestGateway {
        public: running.public.clone(),
        admin: running.admin,
        running: Some(running),
        dir,
    }
}

/// A sandbox with the demo payments facade plus the given extra APIs YAML
/// (already indented as list items), served on 127.0.0.1:0.
pub fn payments_config(extra_apis: &str) -> String {
    format!(
        "listeners:\n  - addr: 127.0.0.1:0\nhosts: [localhost, 127.0.0.1]\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n{extra_apis}"
    )
}

/// An HTTP/1.1 client that never uses a proxy and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .http1_only()
        .build()
        .expect("client")
}

/// An h2c (HTTP/2 prior knowledge) client.
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .http2_prior_knowledge()
        .build()
        .expect("client")
}

/// Parses a problem+json body and checks the fields every refusal carries.
pub async fn problem(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status for {code}");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    assert_eq!(
        ct.as_deref(),
        Some("application/problem+json"),
        "content type for {code}"
    );
    let rid = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .expect("x-request-id");
    let body: serde_json::Value = resp.json().await.expect("problem json");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["request_id"], rid.as_str(), "{body}");
    for field in ["type", "title", "detail", "stage", "hint"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "{code}: missing {field} in {body}"
        );
    }
    body
}

/// One request as a test upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: http::Method,
    /// Path and query.
    pub uri: String,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body length.
    pub body_len: usize,
    /// HTTP version.
    pub version: http::Version,
}

/// Body type of the test upstream's responses.
pub type UpBody = BoxBody<Bytes, Infallible>;

/// A real HTTP server (HTTP/1.1 and h2c) on 127.0.0.1:0 that records every
/// request it receives and answers with `respond`.
pub struct TestUpstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Every request received, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestUpstream {
    /// Starts a server answering with `respond(request, body bytes)`.
    pub async fn start<F, Fut>(respond: F) -> TestUpstream
    where
        F: Fn(http::request::Parts, Bytes) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<UpBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let respond = Arc::new(respond);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let respond = respond.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let respond = respond.clone();
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            seen.lock().expect("lock").push(Seen {
                                method: parts.method.clone(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers.clone(),
                                body_len: bytes.len(),
                                version: parts.version,
                            });
                            Ok::<_, Infallible>(respond(parts, bytes).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestUpstream { addr, seen }
    }

    /// A server that answers 200 with a small JSON body naming the path.
    pub async fn echo() -> TestUpstream {
        Self::start(|parts, body| async move {
            let text = format!("{{\"path\":\"{}\",\"body_len\":{}}}", parts.uri, body.len());
            let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            r
        })
        .await
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Test PKI made with rcgen: a CA, a server certificate for localhost and
/// 127.0.0.1, and client certificates signed by the CA.
pub struct Pki {
    /// CA certificate (PEM).
    pub ca_pem: String,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    /// Server certificate chain (PEM).
    pub server_cert: String,
    /// Server key (PEM).
    pub server_key: String,
}

impl Pki {
    /// A fresh CA and server certificate.
    pub fn new() -> Pki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sandgate test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let mut sp =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        sp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let sk = rcgen::KeyPair::generate().expect("key");
        let server = sp.signed_by(&sk, &ca_cert, &ca_key).expect("server cert");
        Pki {
            ca_pem: ca_cert.pem(),
            server_cert: server.pem(),
            server_key: sk.serialize_pem(),
            ca_cert,
            ca_key,
        }
    }

    /// A client certificate with common name `cn` (and the given SAN URIs),
    /// signed by this CA: (certificate PEM, key PEM).
    pub fn client(&self, cn: &str, san_uris: &[&str]) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        for uri in san_uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().expect("uri")));
        }
        let k = rcgen::KeyPair::generate().expect("key");
        let c = p
            .signed_by(&k, &self.ca_cert, &self.ca_key)
            .expect("client cert");
        (c.pem(), k.serialize_pem())
    }
}

/// A self-signed client certificate from no known CA: (cert PEM, key PEM).
pub fn self_signed_client(cn: &str) -> (String, String) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let k = rcgen::KeyPair::generate().expect("key");
    let c = p.self_signed(&k).expect("cert");
    (c.pem(), k.serialize_pem())
}

/// An HTTPS client trusting `ca_pem`, optionally presenting a client
/// identity (cert PEM + key PEM). `h2` forces HTTP/2 via ALPN; otherwise HTTP/1.1.
pub fn tls_client(ca_pem: &str, identity: Option<(&str, &str)>, h2: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca"))
        .redirect(reqwest::redirect::Policy::none());
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}\n{key}");
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    b = if h2 {
        b.http2_prior_knowledge()
    } else {
        b.http1_only()
    };
    b.build().expect("tls client")
}

/// One answer seen by [`Load`]: when it was sent (since the load began),
/// how long it took, its status (0: no answer at all) and, for a refusal,
/// its problem `code`.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When the request was sent, from the start of the load.
    pub sent: std::time::Duration,
    /// Time to the response head.
    pub took: std::time::Duration,
    /// The response status; 0 when the request failed without one.
    pub status: u16,
    /// The refusal's `code`, when the answer was not a 200.
    pub code: Option<String>,
}

/// Steady traffic from `tasks` concurrent senders, each sending one
/// request every `every` (never two at once), round-robin over `urls`, with
/// `key` as the bearer credential, until [`Load::stop`]. The senders run on
/// a thread and runtime of their own, so the gateway's background work on
/// the test's runtime (trace writer, analytics, sweeps) never delays them:
/// what is measured is the gateway, not the test's scheduling.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
    /// When the load began.
    pub started: std::time::Instant,
}

impl Load {
    /// Starts the senders.
    pub fn start(urls: Vec<String>, key: &str, tasks: usize, every: std::time::Duration) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = std::time::Instant::now();
        let key = key.to_owned();
        let flag = stop.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("load runtime");
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let c = client();
                let senders: Vec<_> = (0..tasks)
                    .map(|i| {
                        let (c, urls, key, stop) =
                            (c.clone(), urls.clone(), key.clone(), flag.clone());
                        tokio::spawn(send(c, urls, key, stop, i, every, started))
                    })
                    .collect();
                let mut all = Vec::new();
                for t in senders {
                    all.extend(t.await.expect("load task"));
                }
                all
            })
        });
        Load {
            stop,
            thread,
            started,
        }
    }

    /// Stops the senders; returns every answer, in the order sent.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let thread = self.thread;
        let mut all = tokio::task::spawn_blocking(move || thread.join().expect("load thread"))
            .await
            .expect("join");
        all.sort_by_key(|s| s.sent);
        all
    }
}

/// One sender of [`Load`].
async fn send(
    c: reqwest::Client,
    urls: Vec<String>,
    key: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    first: usize,
    every: std::time::Duration,
    started: std::time::Instant,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = first;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tick.tick().await;
        let url = &urls[n % urls.len()];
        n += 1;
        let sent = std::time::Instant::now();
        let resp = c.get(url).bearer_auth(&key).send().await;
        let took = sent.elapsed();
        let status = resp.as_ref().map_or(0, |r| r.status().as_u16());
        let code = match resp {
            Ok(r) if status != 200 => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned)),
            _ => None,
        };
        samples.push(Sample {
            sent: sent - started,
            took,
            status,
            code,
        });
    }
    samples
}

/// The rate (per second) at which `samples` were admitted (200) after the
/// first `burst` admissions: admissions past the burst divided by the time
/// from the first request sent to the last answer.
pub fn admitted_rate(samples: &[Sample], burst: usize) -> f64 {
    let admitted = samples.iter().filter(|s| s.status == 200).count();
    let first = samples.first().expect("samples").sent;
    let last = samples
        .iter()
        .map(|s| s.sent + s.took)
        .max()
        .expect("samples");
    (admitted.saturating_sub(burst)) as f64 / (last - first).as_secs_f64()
}

/// A local address that refuses every connection and that no other test can
/// take while this value lives: the port is bound but never listened on.
///
/// (Binding a listener and dropping it frees the port for the next test that
/// binds port 0, which then receives what was meant to go nowhere.)
pub struct DeadPort {
    _socket: socket2::Socket,
    /// `127.0.0.1:<port>`.
    pub addr: SocketAddr,
}

impl DeadPort {
    /// Reserves a port on 127.0.0.1 that refuses connections.
    pub fn new() -> DeadPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        socket.bind(&any.into()).expect("bind");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet address");
        DeadPort {
            _socket: socket,
            addr,
        }
    }
}
