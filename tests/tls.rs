//! TLS and mTLS on a real listener: a sandbox with a plain listener and a
//! TLS listener (certificates made by rcgen in the test), for each
//! `client_auth` policy. HTTP/1.1 and HTTP/2 (ALPN) over TLS and h2c on the
//! plain listener all reach the demo facade; a client certificate that is
//! missing (when required), self-signed or from another CA fails the
//! handshake, so no request is ever answered on such a connection.

mod common;

use std::time::Duration;

use common::{Pki, TestGateway, self_signed_client, start_gateway, tls_client};
use http::Version;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The facade operation every contract version is guaranteed to have.
const CUSTOMER: &str = "/payments/v1/customers/cus_NffrFeUfNV2Hib";

/// Starts a gateway with a plain listener first and a TLS listener second,
/// whose TLS section has `client_auth: <auth>` (and `client_ca` unless `off`).
async fn gateway(pki: &Pki, auth: &str) -> TestGateway {
    let client_ca = if auth == "off" {
        String::new()
    } else {
        "      client_ca: certs/ca.pem\n".to_owned()
    };
    let yaml = format!(
        "listeners:\n  - addr: 127.0.0.1:0\n  - addr: 127.0.0.1:0\n    tls:\n      cert: certs/server.pem\n      key: certs/server.key\n{client_ca}      client_auth: {auth}\nhosts: [localhost, 127.0.0.1]\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n"
    );
    let dir = common::sandbox_dir(&[
        ("sandgate.yaml", &yaml),
        ("contracts/payments.yaml", common::PAYMENTS),
        ("certs/ca.pem", &pki.ca_pem),
        ("certs/server.pem", &pki.server_cert),
        ("certs/server.key", &pki.server_key),
    ]);
    let gw = start_gateway(dir).await;
    assert_eq!(
        gw.public.iter().map(|(_, tls)| *tls).collect::<Vec<_>>(),
        [false, true],
        "one plain and one TLS listener, in configuration order"
    );
    gw
}

fn https_url(gw: &TestGateway, path: &str) -> String {
    format!("https://{}{path}", gw.tls_addr())
}

/// Asserts that `client` gets the facade's 200 JSON answer over `version`.
async fn assert_facade_answer(client: &reqwest::Client, url: &str, version: Version, what: &str) {
    let resp = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: request failed: {e:?}"));
    assert_eq!(resp.status(), 200, "{what}");
    assert_eq!(resp.version(), version, "{what}: negotiated protocol");
    assert_eq!(
        resp.headers()
            .get("sandgate-source")
            .and_then(|v| v.to_str().ok()),
        Some("example"),
        "{what}: answered by the facade"
    );
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ct.contains("json"), "{what}: content type {ct}");
    let body: serde_json::Value = resp.json().await.expect("JSON body");
    assert!(body.is_object(), "{what}: {body}");
}

/// Asserts that a request from `client` fails (the handshake is refused),
/// and returns the error text for the failure message.
async fn assert_refused(client: &reqwest::Client, url: &str, what: &str) {
    let result = tokio::time::timeout(Duration::from_secs(10), client.get(url).send())
        .await
        .unwrap_or_else(|_| panic!("{what}: the refused handshake hung"));
    match result {
        Ok(resp) => panic!(
            "{what}: expected the TLS handshake to fail, got {} {:?}",
            resp.status(),
            resp.version()
        ),
        Err(e) => assert!(
            e.is_connect() || e.is_request(),
            "{what}: unexpected kind of error {e:?}"
        ),
    }
}

/// The handshake-failure counter of the admin metrics (0 before the first
/// failure). The metrics recorder is shared by every gateway of this test
/// process, so callers compare against a value read earlier.
async fn handshake_failures(gw: &TestGateway) -> f64 {
    let text = common::client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find(|l| l.starts_with("sandgate_tls_handshake_failures_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls (bounded) until the counter is at least `before + n`: it is
/// incremented just after the server sends its alert, so it may lag the
/// client's error by a moment.
async fn assert_handshake_failures_counted(gw: &TestGateway, before: f64, n: u32) {
    let mut now = before;
    for _ in 0..100 {
        now = handshake_failures(gw).await;
        if now >= before + f64::from(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sandgate_tls_handshake_failures_total went from {before} to {now}, expected +{n}");
}

#[tokio::test]
async fn client_auth_off_serves_http1_and_http2_over_tls() {
    let pki = Pki::new();
    let gw = gateway(&pki, "off").await;
    let url = https_url(&gw, CUSTOMER);
    assert_facade_answer(
        &tls_client(&pki.ca_pem, None, false),
        &url,
        Version::HTTP_11,
        "off, HTTP/1.1",
    )
    .await;
    assert_facade_answer(
        &tls_client(&pki.ca_pem, None, true),
        &url,
        Version::HTTP_2,
        "off, HTTP/2 via ALPN",
    )
    .await;
    // No certificate is requested, so a client that has one is served too.
    let (cert, key) = pki.client("partner-a", &[]);
    assert_facade_answer(
        &tls_client(&pki.ca_pem, Some((&cert, &key)), false),
        &url,
        Version::HTTP_11,
        "off, client with a certificate",
    )
    .await;
    // A client that does not trust the server's CA refuses the gateway.
    let other = Pki::new();
    assert_refused(
        &tls_client(&other.ca_pem, None, false),
        &url,
        "off, client trusting another CA",
    )
    .await;
    assert!(gw.shutdown().await, "drained");
}

#[tokio::test]
async fn client_auth_required_accepts_only_ca_signed_certificates() {
    let pki = Pki::new();
    let gw = gateway(&pki, "required").await;
    let url = https_url(&gw, CUSTOMER);
    let before = handshake_failures(&gw).await;

    let (cert, key) = pki.client("partner-a", &["spiffe://sandbox.example/partner-a"]);
    assert_facade_answer(
        &tls_client(&pki.ca_pem, Some((&cert, &key)), false),
        &url,
        Version::HTTP_11,
        "required, CA-signed, HTTP/1.1",
    )
    .await;
    assert_facade_answer(
        &tls_client(&pki.ca_pem, Some((&cert, &key)), true),
        &url,
        Version::HTTP_2,
        "required, CA-signed, HTTP/2",
    )
    .await;

    for h2 in [false, true] {
        assert_refused(
            &tls_client(&pki.ca_pem, None, h2),
            &url,
            &format!("required, no certificate (h2={h2})"),
        )
        .await;
        let (cert, key) = self_signed_client("intruder");
        assert_refused(
            &tls_client(&pki.ca_pem, Some((&cert, &key)), h2),
            &url,
            &format!("required, self-signed certificate (h2={h2})"),
        )
        .await;
        let other = Pki::new();
        let (cert, key) = other.client("partner-a", &[]);
        assert_refused(
            &tls_client(&pki.ca_pem, Some((&cert, &key)), h2),
            &url,
            &format!("required, certificate from another CA (h2={h2})"),
        )
        .await;
    }
    assert_handshake_failures_counted(&gw, before, 6).await;

    // The plain listener of the same sandbox is unaffected by mTLS.
    let resp = common::client()
        .get(gw.url(CUSTOMER))
        .send()
        .await
        .expect("plain request");
    assert_eq!(resp.status(), 200);
    assert!(gw.shutdown().await, "drained");
}

#[tokio::test]
async fn client_auth_optional_accepts_no_certificate_but_refuses_a_bad_one() {
    let pki = Pki::new();
    let gw = gateway(&pki, "optional").await;
    let url = https_url(&gw, CUSTOMER);

    assert_facade_answer(
        &tls_client(&pki.ca_pem, None, false),
        &url,
        Version::HTTP_11,
        "optional, no certificate, HTTP/1.1",
    )
    .await;
    assert_facade_answer(
        &tls_client(&pki.ca_pem, None, true),
        &url,
        Version::HTTP_2,
        "optional, no certificate, HTTP/2",
    )
    .await;
    let (cert, key) = pki.client("partner-a", &[]);
    assert_facade_answer(
        &tls_client(&pki.ca_pem, Some((&cert, &key)), true),
        &url,
        Version::HTTP_2,
        "optional, CA-signed certificate",
    )
    .await;

    let before = handshake_failures(&gw).await;
    let other = Pki::new();
    let (cert, key) = other.client("partner-a", &[]);
    assert_refused(
        &tls_client(&pki.ca_pem, Some((&cert, &key)), false),
        &url,
        "optional, certificate from another CA",
    )
    .await;
    let (cert, key) = self_signed_client("intruder");
    assert_refused(
        &tls_client(&pki.ca_pem, Some((&cert, &key)), true),
        &url,
        "optional, self-signed certificate",
    )
    .await;
    assert_handshake_failures_counted(&gw, before, 2).await;
    assert!(gw.shutdown().await, "drained");
}

#[tokio::test]
async fn plain_listener_speaks_http1_and_h2c() {
    let pki = Pki::new();
    let gw = gateway(&pki, "off").await;
    assert_facade_answer(
        &common::client(),
        &gw.url(CUSTOMER),
        Version::HTTP_11,
        "plain HTTP/1.1",
    )
    .await;
    assert_facade_answer(
        &common::h2c_client(),
        &gw.url(CUSTOMER),
        Version::HTTP_2,
        "h2c prior knowledge",
    )
    .await;
    assert!(gw.shutdown().await, "drained");
}

#[tokio::test]
async fn plaintext_http_on_the_tls_listener_gets_no_http_answer() {
    let pki = Pki::new();
    let gw = gateway(&pki, "off").await;
    let mut s = tokio::net::TcpStream::connect(gw.tls_addr())
        .await
        .expect("connect");
    s.write_all(format!("GET {CUSTOMER} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the TLS listener kept a plaintext client open"
    );
    assert!(
        !out.starts_with(b"HTTP/"),
        "plaintext got an HTTP answer: {}",
        String::from_utf8_lossy(&out)
    );
    // And a TLS client on the plain listener fails rather than being served.
    let plain = gw.public.first().expect("plain listener").0;
    assert_refused(
        &tls_client(&pki.ca_pem, None, false),
        &format!("https://{plain}{CUSTOMER}"),
        "TLS client on the plain listener",
    )
    .await;
    assert!(gw.shutdown().await, "drained");
}
