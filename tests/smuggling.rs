//! HTTP/1 request smuggling and malformed framing, sent as raw bytes to the
//! real gateway in front of a real upstream. Whatever the trick, the upstream
//! must see exactly one well-formed request per request the gateway accepted,
//! and never a request hidden inside another one's body.

mod common;

use std::time::Duration;

use common::{TestUpstream, payments_config, sandbox_dir, start_gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw` on a fresh connection and returns everything the gateway
/// wrote back until it closed the connection (bounded by a timeout).
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    // A still-open keep-alive connection is fine: what was answered so far counts.
    let _ = read;
    String::from_utf8_lossy(&out).into_owned()
}

/// Status lines in a raw response stream (a body need not end with a newline).
fn status_lines(resp: &str) -> Vec<&str> {
    resp.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &resp[i..(i + 12).min(resp.len())])
        .collect()
}

async fn setup() -> (common::TestGateway, TestUpstream) {
    let up = TestUpstream::echo().await;
    let api = format!(
        "  - name: echo\n    prefix: /echo\n    mode: upstream\n    upstream: {{ url: \"http://{}\" }}\n",
        up.addr
    );
    let dir = sandbox_dir(&[
        ("sandgate.yaml", &payments_config(&api)),
        ("contracts/payments.yaml", common::PAYMENTS),
    ]);
    (start_gateway(dir).await, up)
}

fn addr(gw: &common::TestGateway) -> std::net::SocketAddr {
    gw.public.first().expect("listener").0
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_not_smuggled() {
    let (gw, up) = setup().await;
    let raw = b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let resp = exchange(addr(&gw), raw).await;
    let seen = up.seen();
    assert!(
        seen.iter().all(|s| !s.uri.contains("smuggled")),
        "smuggled request reached the upstream: {seen:?}\n{resp}"
    );
    assert!(seen.len() <= 1, "{seen:?}");
    for s in &seen {
        assert!(
            !(s.headers.contains_key("content-length")
                && s.headers.contains_key("transfer-encoding")),
            "{s:?}"
        );
    }
}

#[tokio::test]
async fn duplicate_differing_content_length_is_refused() {
    let (gw, up) = setup().await;
    let raw = b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 30\r\n\r\nhelloGET /echo/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let resp = exchange(addr(&gw), raw).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

#[tokio::test]
async fn obfuscated_transfer_encoding_is_not_smuggled() {
    let (gw, up) = setup().await;
    for te in ["xchunked", "chunked, identity", "identity", " chunked"] {
        let raw = format!(
            "POST /echo/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: {te}\r\nContent-Length: 4\r\nConnection: close\r\n\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
        );
        let resp = exchange(addr(&gw), raw.as_bytes()).await;
        assert!(
            up.seen().iter().all(|s| !s.uri.contains("smuggled")),
            "TE {te:?}: {resp}"
        );
    }
}

#[tokio::test]
async fn chunk_size_overflow_is_refused() {
    let (gw, up) = setup().await;
    let raw = b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n";
    let resp = exchange(addr(&gw), raw).await;
    // The head was valid, so the request may have started upstream, but the
    // body never completed: the upstream saw no complete body and the client
    // did not get a 2xx.
    assert!(
        status_lines(&resp)
            .iter()
            .all(|l| !l.starts_with("HTTP/1.1 2")),
        "{resp}"
    );
    assert!(
        up.seen().iter().all(|s| s.body_len == 0 || s.body_len == 1),
        "{:?}",
        up.seen()
    );
}

#[tokio::test]
async fn pipelined_requests_each_reach_the_upstream_once() {
    let (gw, up) = setup().await;
    let raw = b"GET /echo/one HTTP/1.1\r\nHost: localhost\r\n\r\nGET /echo/two HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let resp = exchange(addr(&gw), raw).await;
    assert_eq!(status_lines(&resp).len(), 2, "{resp}");
    let uris: Vec<String> = up.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, vec!["/one".to_owned(), "/two".to_owned()]);
}

#[tokio::test]
async fn bare_lf_and_invalid_header_bytes_are_refused() {
    let (gw, up) = setup().await;
    let resp = exchange(
        addr(&gw),
        b"GET /echo/a HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\rb\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = exchange(
        addr(&gw),
        b"GET /echo/a HTTP/1.1\r\nHost: localhost\r\nX-Bad\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}
