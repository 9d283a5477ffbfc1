//! The upstream proxy against real test upstreams: paths and queries,
//! header hygiene, bodies streaming both ways, and the explained refusals
//! when the backend is down, slow or redirects.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{PAYMENTS, TestGateway, TestUpstream, problem, sandbox_dir, start_gateway};
use http::Response;
use http_body_util::{BodyExt, Full, StreamBody};

async fn gateway(apis: &str) -> TestGateway {
    let config = format!("listeners:\n  - addr: 127.0.0.1:0\napis:\n{apis}");
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await
}

fn api(name: &str, url: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    prefix: /{name}\n    mode: upstream\n    upstream: {{ url: \"{url}\"{extra} }}\n"
    )
}

#[tokio::test]
async fn paths_queries_and_header_hygiene() {
    let up = TestUpstream::echo().await;
    let base = format!("http://{}/base", up.addr);
    let gw = gateway(&(api("echo", &format!("http://{}", up.addr), "") + &api("based", &base, "")))
        .await;
    let c = common::client();

    let r = c
        .get(gw.url("/echo/v1/things?limit=3&expand[]=a"))
        .header("x-request-id", "client-chosen-id-1")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret-hop")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-client-cert", "Hash=forged")
        .header("x-tenant-id", "victim")
        .header("x-sandgate-tenant", "victim")
        .header("forwarded", "for=6.6.6.6")
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-chosen-id-1");
    let seen = up.seen();
    assert_eq!(
        seen.len(),
        1,
        "exactly one upstream request per client request"
    );
    let s = &seen[0];
    assert_eq!(
        s.uri, "/v1/things?limit=3&expand[]=a",
        "prefix stripped, query unchanged"
    );
    for gone in [
        "x-hop",
        "te",
        "proxy-authorization",
        "x-forwarded-client-cert",
        "x-tenant-id",
        "x-sandgate-tenant",
        "forwarded",
    ] {
        assert!(!s.headers.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(s.headers["x-forwarded-proto"], "http");
    assert!(
        s.headers["x-forwarded-host"]
            .to_str()
            .is_ok_and(|h| h.starts_with("127.0.0.1:"))
    );
    assert_eq!(s.headers["x-request-id"], "client-chosen-id-1");
    assert_eq!(s.headers["accept"], "application/json");

    let r = c.get(gw.url("/based/x")).send().await.expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.seen().last().map(|s| s.uri.clone()).as_deref(),
        Some("/base/x"),
        "base path prepended"
    );
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    const SIZE: usize = 32 * 1024 * 1024;
    // The upstream answers a download as a stream of 64 KiB chunks.
    let up = TestUpstream::start(|parts, body| async move {
        if parts.uri.path() == "/download" {
            let chunks = (0..SIZE / 65536).map(|_| {
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![
                    7u8;
                    65536
                ])))
            });
            let stream = futures_util::stream::iter(chunks);
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        } else {
            Response::new(Full::new(Bytes::from(body.len().to_string())).boxed())
        }
    })
    .await;
    let gw = gateway(&format!("  - name: files\n    prefix: /files\n    mode: upstream\n    max_body: 64MiB\n    upstream: {{ url: \"http://{}\" }}\n", up.addr)).await;
    let c = common::client();

    let r = c
        .post(gw.url("/files/upload"))
        .body(vec![1u8; SIZE])
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.expect("body"),
        SIZE.to_string(),
        "the upstream received every byte"
    );

    let r = c
        .get(gw.url("/files/download"))
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200);
    let mut total = 0usize;
    let mut stream = r.bytes_stream();
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        assert!(chunk.iter().all(|b| *b == 7));
        total += chunk.len();
    }
    assert_eq!(total, SIZE);
}

#[tokio::test]
async fn a_down_backend_is_502_without_its_address() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let gw = gateway(&api(
        "down",
        &format!("http://127.0.0.1:{port}"),
        ", connect_timeout: 2s",
    ))
    .await;
    let body = problem(
        common::client()
            .get(gw.url("/down/x"))
            .send()
            .await
            .expect("request"),
        502,
        "upstream_unavailable",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("'down'")),
        "{body}"
    );
    assert!(
        !body.to_string().contains(&port.to_string()),
        "the backend's address is not disclosed: {body}"
    );
    assert_eq!(body["retryable"], true);
}

#[tokio::test]
async fn a_slow_backend_is_504_after_its_timeout() {
    let up = TestUpstream::start(|_, _| async {
        std::future::pending::<()>().await;
        Response::new(Full::new(Bytes::new()).boxed())
    })
    .await;
    let gw = gateway(&api(
        "slow",
        &format!("http://{}", up.addr),
        ", timeout: 300ms",
    ))
    .await;
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        common::client().get(gw.url("/slow/x")).send(),
    )
    .await
    .expect("answered within 10 s")
    .expect("request");
    let body = problem(resp, 504, "upstream_timeout").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(body["rule"], "apis.slow.upstream.timeout");
}

#[tokio::test]
async fn redirects_are_passed_on_never_followed() {
    let target = TestUpstream::echo().await;
    let location = format!("http://{}/stolen", target.addr);
    let up = TestUpstream::start(move |_, _| {
        let location = location.clone();
        async move {
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = http::StatusCode::FOUND;
            r.headers_mut()
                .insert("location", location.parse().expect("location"));
            r.headers_mut()
                .insert("x-backend", "kept".parse().expect("value"));
            r.headers_mut()
                .insert("keep-alive", "timeout=5".parse().expect("value"));
            r
        }
    })
    .await;
    let gw = gateway(&api("redir", &format!("http://{}", up.addr), "")).await;
    let r = common::client()
        .get(gw.url("/redir/x"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 302);
    assert!(
        r.headers()["location"]
            .to_str()
            .is_ok_and(|l| l.ends_with("/stolen"))
    );
    assert_eq!(r.headers()["x-backend"], "kept");
    assert!(
        !r.headers().contains_key("keep-alive"),
        "hop-by-hop response headers are removed"
    );
    assert!(
        target.seen().is_empty(),
        "the redirect target was never contacted"
    );
}

#[tokio::test]
async fn oversized_chunked_upload_is_413_and_h2c_clients_reach_h1_backends() {
    let up = TestUpstream::echo().await;
    let gw = gateway(&format!("  - name: small\n    prefix: /small\n    mode: upstream\n    max_body: 1KiB\n    upstream: {{ url: \"http://{}\" }}\n", up.addr)).await;
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..8).map(|_| Ok(Bytes::from(vec![b'x'; 512]))).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = common::client()
        .post(gw.url("/small/up"))
        .body(body)
        .send()
        .await
        .expect("request");
    problem(resp, 413, "payload_too_large").await;
    assert!(
        up.seen().iter().all(|s| s.body_len <= 1024),
        "no complete oversized body reached the upstream"
    );

    let r = common::h2c_client()
        .get(gw.url("/small/ok"))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.seen().last().map(|s| s.version),
        Some(http::Version::HTTP_11)
    );
}

/// A TLS upstream (ALPN h2 and http/1.1) with a certificate from `pki`,
/// answering with the HTTP version it saw.
async fn tls_upstream(pki: &common::Pki) -> std::net::SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("certs");
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).expect("key");
    let mut cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            format!("{:?}", req.version()),
                        ))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_backends_with_a_configured_ca_use_h2() {
    let pki = common::Pki::new();
    let addr = tls_upstream(&pki).await;
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: secure\n    prefix: /secure\n    mode: upstream\n    upstream: {{ url: \"https://localhost:{port}\", ca: certs/ca.pem }}\n  - name: untrusted\n    prefix: /untrusted\n    mode: upstream\n    upstream: {{ url: \"https://localhost:{port}\" }}\n",
        port = addr.port()
    );
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("certs/ca.pem", &pki.ca_pem),
    ]))
    .await;
    let c = common::client();
    let r = c.get(gw.url("/secure/x")).send().await.expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.expect("body"),
        "HTTP/2.0",
        "ALPN chose h2 to the backend"
    );
    // Without the CA the backend's certificate is not trusted: 502, never a plaintext fallback.
    problem(
        c.get(gw.url("/untrusted/x")).send().await.expect("request"),
        502,
        "upstream_unavailable",
    )
    .await;
}
