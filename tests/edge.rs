//! Every edge and route refusal, over a real socket against the real
//! gateway, checked as problem+json with `common::problem`: body limits (by
//! `Content-Length` before reading, and for chunked bodies while reading),
//! head limits, non-canonical paths, hosts, unknown APIs and operations,
//! methods, request ids, and the slow-client timeouts (header read and
//! whole request). Hyper's own limits, far beyond the configured ones, are
//! checked too: the answer is a 431 and nothing hangs.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestGateway, problem, sandbox_dir, start_gateway};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A small contract owned by this test: a read and a write operation.
const SHOP: &str = r#"openapi: 3.0.3
info: { title: Edge test shop, version: "1" }
paths:
  /v1/customers/{customer}:
    get:
      operationId: getCustomer
      responses: { "200": { description: ok, content: { application/json: { example: { id: cus_1 } } } } }
  /v1/uploads:
    post:
      operationId: upload
      responses: { "201": { description: created, content: { application/json: { example: { ok: true } } } } }
"#;

/// Upper bound for anything that must happen "promptly".
const PROMPT: Duration = Duration::from_secs(5);

/// Two facade APIs on the same contract: `shop` with the global body limit
/// (16KiB) and `small` with its own (1KiB). `timeouts` is extra YAML.
async fn gateway(timeouts: &str) -> TestGateway {
    let yaml = format!(
        "listeners:\n  - addr: 127.0.0.1:0\nhosts: [localhost, 127.0.0.1]\napis:\n  - name: shop\n    prefix: /shop\n    contract: contracts/shop.yaml\n    mode: facade\n  - name: small\n    prefix: /small\n    contract: contracts/shop.yaml\n    mode: facade\n    max_body: 1KiB\nlimits:\n  max_body: 16KiB\n{timeouts}"
    );
    let dir = sandbox_dir(&[("sandgate.yaml", &yaml), ("contracts/shop.yaml", SHOP)]);
    start_gateway(dir).await
}

fn addr(gw: &TestGateway) -> SocketAddr {
    gw.public.first().expect("a listener").0
}

/// Sends one request with a URI exactly as given (reqwest would normalize
/// `%2e%2e`) and an explicit `Host`, over HTTP/1.1, and returns it as a
/// reqwest response so `problem` can check it.
async fn send_verbatim(addr: SocketAddr, method: &str, uri: &str, host: &str) -> reqwest::Response {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = tokio::time::timeout(PROMPT, sender.send_request(req))
        .await
        .expect("answered in time")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    reqwest::Response::from(http::Response::from_parts(parts, bytes))
}

/// Writes `raw` on a fresh connection and reads until the server closes it
/// or `PROMPT` passes; returns what was read and whether it closed.
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may stop reading (and answer) before all of `raw` is written.
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let closed = read_until_closed(&mut s, &mut out).await;
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Reads until EOF or a reset (true), or until `PROMPT` passes (false).
async fn read_until_closed(s: &mut TcpStream, out: &mut Vec<u8>) -> bool {
    tokio::time::timeout(PROMPT, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok()
}

/// A request body that yields `first` and then never ends.
fn stalled_body(first: &'static [u8]) -> reqwest::Body {
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(first))])
        .chain(futures_util::stream::pending());
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test]
async fn body_over_the_limit_is_refused_on_content_length() {
    let gw = gateway("").await;
    let c = common::client();

    // Global limit (16KiB).
    let resp = c
        .post(gw.url("/shop/v1/uploads"))
        .body(vec![b'x'; 16 * 1024 + 1])
        .send()
        .await
        .expect("send");
    let body = problem(resp, 413, "payload_too_large").await;
    assert_eq!(body["rule"], "limits.max_body", "{body}");
    assert_eq!(body["stage"], "edge", "{body}");
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("16385") && detail.contains("Content-Length"),
        "{detail}"
    );

    // Per-API override (1KiB): 2KiB is too much for `small` but fine for `shop`.
    let resp = c
        .post(gw.url("/small/v1/uploads"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("send");
    let body = problem(resp, 413, "payload_too_large").await;
    assert_eq!(body["rule"], "apis.small.max_body", "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("1024")),
        "{body}"
    );
    let resp = c
        .post(gw.url("/shop/v1/uploads"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 201, "2KiB is within shop's limit");
}

#[tokio::test]
async fn declared_length_is_refused_before_any_body_is_read() {
    let gw = gateway("").await;
    // The body announces 10 MB and then never sends more than a few bytes:
    // only a refusal made on the header alone can answer.
    let resp = tokio::time::timeout(
        PROMPT,
        common::client()
            .post(gw.url("/small/v1/uploads"))
            .header("content-length", "10000000")
            .body(stalled_body(b"xxxx"))
            .send(),
    )
    .await
    .expect("the refusal did not wait for the body")
    .expect("send");
    let body = problem(resp, 413, "payload_too_large").await;
    assert_eq!(body["rule"], "apis.small.max_body", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("10000000")),
        "{body}"
    );
}

#[tokio::test]
async fn oversized_chunked_body_is_refused_while_reading() {
    let gw = gateway("").await;
    // No Content-Length: a streaming body goes out chunked, 4 × 512 bytes.
    let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 512])));
    let resp = tokio::time::timeout(
        PROMPT,
        common::client()
            .post(gw.url("/small/v1/uploads"))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send(),
    )
    .await
    .expect("answered in time")
    .expect("send");
    let body = problem(resp, 413, "payload_too_large").await;
    assert_eq!(body["rule"], "apis.small.max_body", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("larger than the 1024 bytes")),
        "{body}"
    );
    // The same chunked upload within the limit is answered.
    let chunks = (0..2).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 256])));
    let resp = common::client()
        .post(gw.url("/small/v1/uploads"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn head_limits_are_refused_with_431_and_414() {
    let gw = gateway("").await;
    let url = gw.url("/shop/v1/customers/cus_1");
    for client in [common::client(), common::h2c_client()] {
        let mut req = client.get(&url);
        for i in 0..120 {
            req = req.header(format!("x-extra-{i}"), "v");
        }
        let body = problem(req.send().await.expect("send"), 431, "too_many_headers").await;
        assert_eq!(body["rule"], "limits.max_headers", "{body}");
    }

    let c = common::client();
    let mut req = c.get(&url);
    for i in 0..10 {
        req = req.header(format!("x-big-{i}"), "z".repeat(7 * 1024));
    }
    let body = problem(req.send().await.expect("send"), 431, "headers_too_large").await;
    assert_eq!(body["rule"], "limits.max_header_bytes", "{body}");

    let resp = c
        .get(&url)
        .header("authorization", format!("Bearer {}", "t".repeat(9000)))
        .send()
        .await
        .expect("send");
    let body = problem(resp, 431, "header_too_large").await;
    assert_eq!(body["rule"], "limits.max_authorization", "{body}");
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.contains("authorization"), "{detail}");
    assert!(
        !detail.contains("tttt"),
        "the refusal must not echo the credential: {detail}"
    );

    let long = gw.url(&format!("/shop/v1/customers/{}", "a".repeat(9000)));
    let body = problem(
        c.get(&long).send().await.expect("send"),
        414,
        "uri_too_long",
    )
    .await;
    assert_eq!(body["rule"], "limits.max_uri", "{body}");
}

#[tokio::test]
async fn non_canonical_paths_are_refused() {
    let gw = gateway("").await;
    let resp = common::client()
        .get(gw.url("/shop/v1/customers/a%2Fb"))
        .send()
        .await
        .expect("send");
    let body = problem(resp, 400, "invalid_path").await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("encoded")),
        "{body}"
    );
    for path in [
        "/shop/v1/%2e%2e/customers/cus_1",
        "/shop/v1/%2E%2e/customers/cus_1",
        "/shop/v1/customers/../customers/cus_1",
        "/shop/v1/./customers/cus_1",
        "/shop/v1/customers/a%5cb",
    ] {
        let resp = send_verbatim(addr(&gw), "GET", path, "localhost").await;
        problem(resp, 400, "invalid_path").await;
    }
    // The canonical path is served.
    let resp = send_verbatim(addr(&gw), "GET", "/shop/v1/customers/cus_1", "localhost").await;
    assert_eq!(resp.status(), 200);
}

/// The methods of an `Allow` header.
fn allow_of(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .expect("an Allow header")
        .split(',')
        .map(|m| m.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn routing_refusals_explain_what_is_served() {
    let gw = gateway("").await;
    let c = common::client();

    let resp = send_verbatim(addr(&gw), "GET", "/shop/v1/customers/cus_1", "evil.example").await;
    let body = problem(resp, 421, "misdirected_host").await;
    assert_eq!(body["rule"], "hosts", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("evil.example")),
        "{body}"
    );
    assert!(
        body["hint"]
            .as_str()
            .is_some_and(|h| h.contains("localhost")),
        "{body}"
    );

    let resp = c.get(gw.url("/nope/v1/x")).send().await.expect("send");
    let body = problem(resp, 404, "unknown_api").await;
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("'shop' at /shop") && detail.contains("'small' at /small"),
        "{detail}"
    );
    let apis = body["apis"].as_array().expect("apis listed");
    assert_eq!(apis.len(), 2, "{body}");

    let resp = c
        .get(gw.url("/shop/v1/customer/cus_1"))
        .send()
        .await
        .expect("send");
    let body = problem(resp, 404, "unknown_operation").await;
    assert_eq!(body["rule"], "apis.shop.contract", "{body}");
    let nearest = body["nearest"].as_array().expect("nearest paths");
    assert_eq!(
        nearest.first().and_then(|v| v.as_str()),
        Some("/v1/customers/{customer}"),
        "{body}"
    );

    let resp = c
        .delete(gw.url("/shop/v1/customers/cus_1"))
        .send()
        .await
        .expect("send");
    let allow = allow_of(&resp);
    assert!(
        allow.contains(&"GET".to_owned()) && !allow.contains(&"DELETE".to_owned()),
        "{allow:?}"
    );
    let body = problem(resp, 405, "method_not_allowed").await;
    assert_eq!(body["allow"], serde_json::json!(allow), "{body}");

    let resp = c
        .get(gw.url("/small/v1/uploads"))
        .send()
        .await
        .expect("send");
    assert_eq!(allow_of(&resp), ["POST"]);
    let body = problem(resp, 405, "method_not_allowed").await;
    assert_eq!(body["rule"], "apis.small.contract", "{body}");
}

#[tokio::test]
async fn request_ids_are_echoed_when_valid_and_replaced_otherwise() {
    let gw = gateway("").await;
    let c = common::client();
    let url = gw.url("/shop/v1/customers/cus_1");
    let id_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id")
            .to_owned()
    };

    let resp = c
        .get(&url)
        .header("x-request-id", "trace-42.a:b_c")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(id_of(&resp), "trace-42.a:b_c");

    // On a refusal the id is both in the header and in the problem body.
    let resp = c
        .get(gw.url("/nope"))
        .header("x-request-id", "trace-43")
        .send()
        .await
        .expect("send");
    let body = problem(resp, 404, "unknown_api").await;
    assert_eq!(body["request_id"], "trace-43");

    let mut fresh = Vec::new();
    let long = "a".repeat(129);
    for bad in ["has spaces", "semi;colon", long.as_str()] {
        let resp = c
            .get(&url)
            .header("x-request-id", bad)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        let id = id_of(&resp);
        assert!(id.starts_with("req_") && id != bad, "{bad:?} → {id}");
        fresh.push(id);
    }
    // Without any inbound id, each request gets its own.
    let a = id_of(&c.get(&url).send().await.expect("send"));
    let b = id_of(&c.get(&url).send().await.expect("send"));
    assert!(a.starts_with("req_") && b.starts_with("req_") && a != b);
    fresh.sort();
    fresh.dedup();
    assert_eq!(fresh.len(), 3, "ids are unique");
}

#[tokio::test]
async fn slow_request_head_is_cut_off_by_header_read() {
    let gw = gateway("timeouts:\n  header_read: 1s\n").await;
    let started = Instant::now();
    let (out, closed) = raw_exchange(
        addr(&gw),
        b"GET /shop/v1/customers/cus_1 HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1",
    )
    .await;
    assert!(
        closed,
        "a partial head was still open after {PROMPT:?}: {out}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before header_read elapsed"
    );
    assert!(!out.contains(" 200 "), "a partial head was answered: {out}");

    // A complete head sent at once on the same gateway is answered.
    let (out, _) = raw_exchange(
        addr(&gw),
        b"GET /shop/v1/customers/cus_1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
}

#[tokio::test]
async fn silent_connections_are_cut_off_by_header_read() {
    let gw = gateway("timeouts:\n  header_read: 1s\n").await;
    // Nothing at all, a prefix of the HTTP/2 preface, and a whole h2c
    // preface with SETTINGS but no HEADERS: none is a request head, and
    // none may hold a connection slot forever.
    let h2_idle = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    for raw in [&b""[..], b"PRI * HTTP/2.0\r\n", h2_idle] {
        let (out, closed) = raw_exchange(addr(&gw), raw).await;
        assert!(
            closed,
            "a connection that sent {:?} was still open after {PROMPT:?}: {out}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let gw = gateway("timeouts:\n  header_read: 1s\n").await;
    let mut s = TcpStream::connect(addr(&gw)).await.expect("connect");
    s.write_all(b"GET /shop/v1/customers/cus_1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let closed = read_until_closed(&mut s, &mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(closed, "an idle keep-alive connection stayed open: {text}");
}

#[tokio::test]
async fn slow_body_gets_request_timeout() {
    let gw = gateway("timeouts:\n  request: 1s\n").await;
    let started = Instant::now();
    let resp = tokio::time::timeout(
        PROMPT,
        common::client()
            .post(gw.url("/shop/v1/uploads"))
            .header("content-length", "100")
            .body(stalled_body(b"{\"partial\":"))
            .send(),
    )
    .await
    .expect("answered within the bound")
    .expect("send");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        resp.headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close")
    );
    let body = problem(resp, 408, "request_timeout").await;
    assert_eq!(body["rule"], "timeouts.request", "{body}");
    assert_eq!(body["retryable"], true, "{body}");
}

#[tokio::test]
async fn heads_far_beyond_the_limits_get_hyper_431_and_never_hang() {
    let gw = gateway("").await;

    let mut raw = String::from("GET /shop/v1/customers/cus_1 HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..300 {
        raw.push_str(&format!("X-H{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    let (out, closed) = raw_exchange(addr(&gw), raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431 "), "300 headers: {out}");
    assert!(closed, "the connection stayed open after a 431");

    let mut raw = String::from("GET /shop/v1/customers/cus_1 HTTP/1.1\r\nHost: localhost\r\n");
    raw.push_str(&format!("X-Huge: {}\r\n\r\n", "h".repeat(256 * 1024)));
    let (out, closed) = raw_exchange(addr(&gw), raw.as_bytes()).await;
    assert!(closed, "a 256KiB header kept the connection open");
    // The unread rest of the head may reset the connection before the
    // answer is read; whatever was read must be hyper's 431.
    assert!(
        out.is_empty() || out.starts_with("HTTP/1.1 431 "),
        "256KiB header: {out}"
    );

    // The gateway is still fine afterwards.
    let resp = common::client()
        .get(gw.url("/shop/v1/customers/cus_1"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
}
