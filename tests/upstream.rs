//! The upstream proxy, end to end: the real gateway on 127.0.0.1:0 in front
//! of real backends started by each test (plain HTTP/1.1 + h2c, and TLS
//! with ALPN h2 + http/1.1). Covers path and query mapping, header hygiene
//! in both directions, request ids, one backend request per client request,
//! bodies streaming both ways without buffering, body limits, and the
//! explained refusals for a refused connection, a silent backend, an
//! untrusted certificate; redirects are passed on, never followed.

mod common;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Pki, Seen, TestGateway, TestUpstream, problem, sandbox_dir, start_gateway};
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// Bound on any single wait in these tests: generous for a loaded CI
/// machine, and only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

/// Chunk size of the streamed bodies.
const CHUNK: usize = 64 * 1024;

/// Size of the large streamed bodies.
const BIG: usize = 64 * 1024 * 1024;

/// The sandbox config with the given `apis:` items (already indented).
fn config(apis: &str) -> String {
    format!("listeners:\n  - addr: 127.0.0.1:0\napis:\n{apis}")
}

/// Starts the gateway with the given `apis:` items and extra files.
async fn gateway_with(apis: &str, files: &[(&str, &str)]) -> TestGateway {
    let config = config(apis);
    let mut all = vec![("sandgate.yaml", config.as_str())];
    all.extend_from_slice(files);
    start_gateway(sandbox_dir(&all)).await
}

/// Starts the gateway with the given `apis:` items.
async fn gateway(apis: &str) -> TestGateway {
    gateway_with(apis, &[]).await
}

/// One upstream API item: `name` at `/name`, proxied to `url`. `api_extra`
/// is added to the API (`, key: value` lines are not YAML: give whole lines
/// such as `    max_body: 1KiB\n`), `upstream_extra` inside the flow mapping
/// of `upstream` (e.g. `, timeout: 300ms`).
fn api(name: &str, url: &str, api_extra: &str, upstream_extra: &str) -> String {
    format!(
        "  - name: {name}\n    prefix: /{name}\n    mode: upstream\n{api_extra}    upstream: {{ url: \"{url}\"{upstream_extra} }}\n"
    )
}

/// A header as text ("" when absent or not text).
fn header<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Body type of the probe backends written in this file.
type ProbeBody = BoxBody<Bytes, std::io::Error>;

/// A response with a text body.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProbeBody> {
    let mut r = Response::new(Full::new(body.into()).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r
}

/// Serves `handler` on 127.0.0.1:0, over TLS when `tls` is given (HTTP/1.1
/// or h2 as ALPN decides), else HTTP/1.1 and h2c. Runs until the test ends.
async fn serve<H, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, handler: H) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProbeBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind probe");
    let addr = listener.local_addr().expect("probe addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(acceptor) => {
                        // A failed handshake (an untrusting gateway) just ends the connection.
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            });
        }
    });
    addr
}

/// A TLS acceptor with the server certificate of `pki`, offering `alpn`.
fn tls_acceptor(pki: &Pki, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("server certs");
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).expect("server key");
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A recording backend (TLS or not) that answers 200 with the HTTP version
/// it saw as the body; returns its address and what it saw.
async fn recording(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = serve(tls, move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes());
            let body_len = body.as_ref().map_or(0, Bytes::len);
            log.lock().expect("lock").push(Seen {
                method: parts.method.clone(),
                uri: parts
                    .uri
                    .path_and_query()
                    .map_or_else(String::new, |pq| pq.to_string()),
                headers: parts.headers.clone(),
                body_len,
                version: parts.version,
            });
            text(StatusCode::OK, format!("{:?} {body_len}", parts.version))
        }
    })
    .await;
    (addr, seen)
}

/// The byte pattern of the large bodies: byte `i` of a body is `i % 251`,
/// so a lost, repeated or reordered chunk is noticed. `period` holds one
/// chunk plus one period, so any chunk is a zero-copy slice of it.
fn period() -> Bytes {
    (0..CHUNK + 251)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// The pattern's bytes `offset..offset + CHUNK`.
fn pattern_chunk(period: &Bytes, offset: usize) -> Bytes {
    let start = offset % 251;
    period.slice(start..start + CHUNK)
}

/// Whether `data`, found at `offset` of a body, follows the pattern.
fn follows_pattern(period: &Bytes, offset: usize, data: &[u8]) -> bool {
    data.chunks(CHUNK).enumerate().all(|(i, piece)| {
        let start = (offset + i * CHUNK) % 251;
        piece == &period[start..start + piece.len()]
    })
}

/// What the streaming backend observed of one request.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// The request head arrived (the body may still be on its way).
    Head,
    /// The whole body arrived: its length and whether it followed the pattern.
    Complete(usize, bool),
    /// The body broke off after this many bytes.
    Broken(usize),
}

/// A backend that reports each request's head and the fate of its body as
/// they happen, reading the body as a stream (never holding it whole), and
/// answers `<len> <pattern ok>`.
async fn streaming_sink(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let period = period();
    let addr = serve(tls, move |req: Request<Incoming>| {
        let tx = tx.clone();
        let period = period.clone();
        async move {
            let _ = tx.send(Event::Head);
            let mut body = req.into_body();
            let (mut len, mut ok) = (0usize, true);
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            ok &= follows_pattern(&period, len, &data);
                            len += data.len();
                        }
                    }
                    Err(_) => {
                        let _ = tx.send(Event::Broken(len));
                        return text(StatusCode::BAD_REQUEST, "broken");
                    }
                }
            }
            let _ = tx.send(Event::Complete(len, ok));
            text(StatusCode::OK, format!("{len} {ok}"))
        }
    })
    .await;
    (addr, rx)
}

/// A request body fed through a channel, so the test decides when each
/// chunk is sent.
fn channel_body() -> (mpsc::Sender<Bytes>, reqwest::Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    (tx, reqwest::Body::wrap_stream(stream))
}

/// Waits (bounded) for the streaming backend's next event.
async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>, what: &str) -> Event {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("the backend is running")
}

#[tokio::test]
async fn paths_map_prefix_base_path_and_query_unchanged() {
    let up = TestUpstream::echo().await;
    let origin = format!("http://{}", up.addr);
    let apis = [
        api("echo", &origin, "", ""),
        // A trailing slash on the base path is not doubled.
        api("based", &format!("{origin}/base/"), "", ""),
        api("kept", &origin, "    strip_prefix: false\n", ""),
        api(
            "keptbased",
            &format!("{origin}/base"),
            "    strip_prefix: false\n",
            "",
        ),
    ]
    .concat();
    let gw = gateway(&apis).await;
    let c = common::client();

    let query = "limit=3&expand[]=a&q=caf%C3%A9&s=a%2Fb%3Dc&empty=&flag&x=1&x=2";
    let table = [
        (
            format!("/echo/v1/things?{query}"),
            format!("/v1/things?{query}"),
        ),
        // The path is appended as sent: never decoded or re-encoded.
        (
            "/echo/v1/caf%C3%A9/a%20b".into(),
            "/v1/caf%C3%A9/a%20b".into(),
        ),
        ("/echo".into(), "/".into()),
        ("/echo?only=query".into(), "/?only=query".into()),
        ("/echo/".into(), "/".into()),
        ("/based/v1/x?y=1".into(), "/base/v1/x?y=1".into()),
        ("/kept/v1/x?y=1".into(), "/kept/v1/x?y=1".into()),
        ("/keptbased/v1/x".into(), "/base/keptbased/v1/x".into()),
    ];
    for (i, (sent, expected)) in table.iter().enumerate() {
        let r = c.get(gw.url(sent)).send().await.expect("request");
        assert_eq!(r.status(), 200, "{sent}");
        let seen = up.seen();
        assert_eq!(seen.len(), i + 1, "one upstream request for {sent}");
        assert_eq!(&seen[i].uri, expected, "{sent}");
    }
}

#[tokio::test]
async fn hop_by_hop_and_forged_identity_headers_never_reach_the_upstream() {
    let up = TestUpstream::echo().await;
    let gw = gateway(&api("echo", &format!("http://{}", up.addr), "", "")).await;
    let gw_host = gw.url("").trim_start_matches("http://").to_owned();
    let c = common::client();

    let r = c
        .get(gw.url("/echo/v1/things"))
        .header("connection", "keep-alive, x-hop-one, X-Hop-Two")
        .header("x-hop-one", "named by connection")
        .header("x-hop-two", "named by connection, other case")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("proxy-connection", "keep-alive")
        .header(
            "x-forwarded-client-cert",
            "Hash=forged;Subject=\"CN=victim\"",
        )
        .header("x-client-cert", "forged")
        .header("x-ssl-client-cert", "forged")
        .header("x-client-verify", "SUCCESS")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-for", "7.7.7.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-port", "443")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .header("x-tenant-id", "victim")
        .header("x-tenant", "victim")
        .header("x-client-id", "victim")
        .header("x-user-id", "victim")
        .header("x-sandgate-tenant", "victim")
        .header("x-sandgate-anything", "forged")
        .header("sandgate-source", "forged")
        .header("accept", "application/json")
        .header("x-custom", "end-to-end")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let rid = header(r.headers(), "x-request-id").to_owned();
    assert!(rid.starts_with("req_"), "a fresh request id: {rid}");

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    for gone in [
        "x-hop-one",
        "x-hop-two",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "x-forwarded-client-cert",
        "x-client-cert",
        "x-ssl-client-cert",
        "x-client-verify",
        "x-forwarded-port",
        "x-real-ip",
        "forwarded",
        "x-tenant-id",
        "x-tenant",
        "x-client-id",
        "x-user-id",
        "x-sandgate-tenant",
        "x-sandgate-anything",
        "sandgate-source",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream: {h:?}");
    }
    // hyper's client may announce its own keep-alive; never the client's list.
    for v in h.get_all("connection") {
        let v = v.to_str().unwrap_or("").to_ascii_lowercase();
        assert!(!v.contains("x-hop"), "client Connection forwarded: {v}");
    }
    let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff, ["127.0.0.1"], "only the gateway's own X-Forwarded-For");
    assert_eq!(header(h, "x-forwarded-proto"), "http");
    assert_eq!(header(h, "x-forwarded-host"), gw_host);
    assert_eq!(header(h, "x-request-id"), rid, "same id as the client got");
    assert_eq!(
        header(h, "host"),
        up.addr.to_string(),
        "the backend's own Host"
    );
    assert_eq!(header(h, "accept"), "application/json");
    assert_eq!(header(h, "x-custom"), "end-to-end");

    // Upgrade is hop-by-hop too: the gateway never asks the backend to switch protocols.
    let r = c
        .get(gw.url("/echo/ws"))
        .header("upgrade", "websocket")
        .send()
        .await
        .expect("request with upgrade");
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        !seen[1].headers.contains_key("upgrade"),
        "{:?}",
        seen[1].headers
    );
}

#[tokio::test]
async fn request_ids_reach_the_upstream() {
    let up = TestUpstream::echo().await;
    let gw = gateway(&api("echo", &format!("http://{}", up.addr), "", "")).await;
    for c in [common::client(), common::h2c_client()] {
        // A valid inbound id is kept, so the caller can correlate.
        let r = c
            .get(gw.url("/echo/a"))
            .header("x-request-id", "trace-ABC_123.4:5")
            .send()
            .await
            .expect("request");
        assert_eq!(header(r.headers(), "x-request-id"), "trace-ABC_123.4:5");
        let last = up.seen().pop().expect("seen");
        assert_eq!(header(&last.headers, "x-request-id"), "trace-ABC_123.4:5");

        // An invalid one is replaced, for the backend too.
        let r = c
            .get(gw.url("/echo/b"))
            .header("x-request-id", "two words")
            .send()
            .await
            .expect("request");
        let rid = header(r.headers(), "x-request-id").to_owned();
        assert!(rid.starts_with("req_"), "{rid}");
        let last = up.seen().pop().expect("seen");
        assert_eq!(header(&last.headers, "x-request-id"), rid);
        assert_eq!(last.headers.get_all("x-request-id").iter().count(), 1);

        // Without one, the fresh id is the backend's too.
        let r = c.get(gw.url("/echo/c")).send().await.expect("request");
        let rid = header(r.headers(), "x-request-id").to_owned();
        assert!(rid.starts_with("req_"), "{rid}");
        let last = up.seen().pop().expect("seen");
        assert_eq!(header(&last.headers, "x-request-id"), rid);
    }
}

#[tokio::test]
async fn exactly_one_upstream_request_per_client_request() {
    let up = TestUpstream::echo().await;
    let gw = gateway(&api("echo", &format!("http://{}", up.addr), "", "")).await;
    let mut ids = BTreeSet::new();

    // Sequential, on one keep-alive HTTP/1.1 connection, with and without bodies.
    let c = common::client();
    for i in 0..10usize {
        let r = if i % 2 == 0 {
            c.get(gw.url(&format!("/echo/seq/{i}"))).send().await
        } else {
            c.post(gw.url(&format!("/echo/seq/{i}")))
                .body(vec![b'b'; i * 100])
                .send()
                .await
        }
        .expect("request");
        assert_eq!(r.status(), 200);
        ids.insert(header(r.headers(), "x-request-id").to_owned());
        r.bytes().await.expect("body");
    }

    // Concurrent, as streams of one h2c connection.
    let h2 = common::h2c_client();
    let answers = futures_util::future::join_all((0..20usize).map(|i| {
        let req = h2
            .post(gw.url(&format!("/echo/par/{i}")))
            .body(vec![b'p'; i]);
        async move { req.send().await.expect("h2c request") }
    }))
    .await;
    for r in answers {
        assert_eq!(r.status(), 200);
        ids.insert(header(r.headers(), "x-request-id").to_owned());
    }

    let seen = up.seen();
    assert_eq!(seen.len(), 30, "one backend request per client request");
    assert_eq!(ids.len(), 30, "distinct request ids");
    let upstream_ids: BTreeSet<String> = seen
        .iter()
        .map(|s| header(&s.headers, "x-request-id").to_owned())
        .collect();
    assert_eq!(upstream_ids, ids, "each client request reached it once");
    for s in &seen {
        let (kind, i) = s
            .uri
            .trim_start_matches('/')
            .split_once('/')
            .expect("kind/i");
        let i: usize = i.parse().expect("index");
        let expected = match kind {
            "seq" if i % 2 == 1 => i * 100,
            "seq" => 0,
            _ => i,
        };
        assert_eq!(s.body_len, expected, "body of {}", s.uri);
    }
}

#[tokio::test]
async fn a_large_upload_streams_to_the_upstream_without_buffering() {
    let (addr, mut events) = streaming_sink(None).await;
    let gw = gateway(&api(
        "files",
        &format!("http://{addr}"),
        "    max_body: 64MiB\n",
        "",
    ))
    .await;
    let period = period();
    let (tx, body) = channel_body();
    let pending = tokio::spawn(common::client().post(gw.url("/files/up")).body(body).send());

    tx.send(pattern_chunk(&period, 0))
        .await
        .expect("first chunk");
    // The rest of the body is not sent yet: a gateway that buffered the
    // upload could not have forwarded the request head.
    assert_eq!(
        next_event(&mut events, "the request head at the backend").await,
        Event::Head
    );
    for i in 1..BIG / CHUNK {
        tx.send(pattern_chunk(&period, i * CHUNK))
            .await
            .expect("chunk");
    }
    drop(tx);

    let resp = tokio::time::timeout(PATIENCE * 3, pending)
        .await
        .expect("upload finished in time")
        .expect("task")
        .expect("upload");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), format!("{BIG} true"));
    assert_eq!(
        next_event(&mut events, "the body's end").await,
        Event::Complete(BIG, true),
        "every byte, in order"
    );
}

#[tokio::test]
async fn a_large_download_streams_to_the_client_without_buffering() {
    let go = Arc::new(Notify::new());
    let finished = Arc::new(AtomicBool::new(false));
    let period = period();
    let (go2, finished2, period2) = (go.clone(), finished.clone(), period.clone());
    let addr = serve(None, move |_req: Request<Incoming>| {
        let (go, finished, period) = (go2.clone(), finished2.clone(), period2.clone());
        async move {
            let (tx, rx) = mpsc::channel::<Bytes>(2);
            // The first chunk now; the rest only once the test has seen the
            // first one arrive at the client.
            tokio::spawn(async move {
                if tx.send(pattern_chunk(&period, 0)).await.is_err() {
                    return;
                }
                go.notified().await;
                for i in 1..BIG / CHUNK {
                    if tx.send(pattern_chunk(&period, i * CHUNK)).await.is_err() {
                        return;
                    }
                }
                finished.store(true, Ordering::SeqCst);
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
    })
    .await;
    let gw = gateway(&api("files", &format!("http://{addr}"), "", "")).await;

    let mut resp =
        tokio::time::timeout(PATIENCE, common::client().get(gw.url("/files/big")).send())
            .await
            .expect("response head while the backend is still producing")
            .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "content-type"),
        "application/octet-stream"
    );
    let first = tokio::time::timeout(PATIENCE, resp.chunk())
        .await
        .expect("first bytes while the backend is still producing")
        .expect("chunk")
        .expect("a first chunk");
    assert!(!first.is_empty());
    assert!(
        !finished.load(Ordering::SeqCst),
        "the backend had not finished"
    );
    assert!(follows_pattern(&period, 0, &first));
    go.notify_one();

    let mut total = first.len();
    let mut in_order = true;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the download keeps flowing")
    {
        let chunk = chunk.expect("chunk");
        in_order &= follows_pattern(&period, total, &chunk);
        total += chunk.len();
    }
    assert_eq!(total, BIG, "every byte arrived");
    assert!(in_order, "bytes arrived in order and unaltered");
    assert!(finished.load(Ordering::SeqCst));
}

/// A chunked upload that goes over the API's `max_body` after the backend
/// has seen the head: the client gets 413 and the backend never gets a
/// complete request.
async fn chunked_upload_over_max_body(
    gw: &TestGateway,
    events: &mut mpsc::UnboundedReceiver<Event>,
) {
    let (tx, body) = channel_body();
    let pending = tokio::spawn(common::client().post(gw.url("/small/up")).body(body).send());
    tx.send(Bytes::from(vec![b'x'; 512])).await.expect("chunk");
    tx.send(Bytes::from(vec![b'x'; 512])).await.expect("chunk");
    assert_eq!(next_event(events, "the request head").await, Event::Head);
    // 1536 bytes: over the 1 KiB limit.
    tx.send(Bytes::from(vec![b'x'; 512])).await.expect("chunk");
    let resp = tokio::time::timeout(PATIENCE, pending)
        .await
        .expect("answered in time")
        .expect("task")
        .expect("response");
    assert_eq!(header(resp.headers(), "connection"), "close");
    let body = problem(resp, 413, "payload_too_large").await;
    assert_eq!(body["rule"], "apis.small.max_body", "{body}");
    match next_event(events, "the backend's view of the body").await {
        Event::Broken(n) => assert!(n <= 1024, "{n} bytes reached the backend"),
        other => panic!("the backend got a complete request: {other:?}"),
    }
    drop(tx);
}

#[tokio::test]
async fn an_oversized_upload_is_413_and_the_upstream_never_sees_it_complete() {
    let (addr, mut events) = streaming_sink(None).await;
    let gw = gateway(&api(
        "small",
        &format!("http://{addr}"),
        "    max_body: 1KiB\n",
        "",
    ))
    .await;
    chunked_upload_over_max_body(&gw, &mut events).await;

    // A declared Content-Length over the limit is refused before any backend work.
    let resp = common::client()
        .post(gw.url("/small/up"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("request");
    let body = problem(resp, 413, "payload_too_large").await;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("2048")),
        "{body}"
    );
    assert!(
        events.try_recv().is_err(),
        "the backend was not contacted for a declared oversized body"
    );

    // At the limit is fine.
    let resp = common::client()
        .post(gw.url("/small/up"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(next_event(&mut events, "head").await, Event::Head);
    assert_eq!(
        next_event(&mut events, "body").await,
        Event::Complete(1024, false)
    );
}

#[tokio::test]
async fn an_oversized_upload_to_an_h2_upstream_is_413_too() {
    let pki = Pki::new();
    let (addr, mut events) = streaming_sink(Some(tls_acceptor(&pki, &[b"h2"]))).await;
    let gw = gateway_with(
        &api(
            "small",
            &format!("https://localhost:{}", addr.port()),
            "    max_body: 1KiB\n",
            ", ca: ca.pem",
        ),
        &[("ca.pem", &pki.ca_pem)],
    )
    .await;
    chunked_upload_over_max_body(&gw, &mut events).await;
}

#[tokio::test]
async fn a_refused_connection_is_502_naming_the_api_not_the_url() {
    // A port held for the whole test that nothing listens on.
    let dead = common::DeadPort::new();
    let port = dead.addr.port();
    let gw = gateway(&api("down", &format!("http://127.0.0.1:{port}"), "", "")).await;
    let resp = common::client()
        .get(gw.url("/down/v1/x"))
        .header("x-request-id", "fixed-id")
        .send()
        .await
        .expect("request");
    let body = problem(resp, 502, "upstream_unavailable").await;
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("'down'"), "names the API: {detail}");
    let all = body.to_string();
    for secret in [
        format!("127.0.0.1:{port}"),
        port.to_string(),
        "http://".into(),
    ] {
        assert!(!all.contains(&secret), "discloses {secret}: {all}");
    }
    assert_eq!(body["stage"], "dispatch");
    assert_eq!(body["rule"], "apis.down.upstream.url");
    assert_eq!(body["retryable"], true);
}

#[tokio::test]
async fn a_silent_upstream_is_504_after_its_timeout() {
    let arrived = Arc::new(Notify::new());
    let arrived2 = arrived.clone();
    let addr = serve(None, move |_req: Request<Incoming>| {
        let arrived = arrived2.clone();
        async move {
            arrived.notify_one();
            std::future::pending::<()>().await;
            text(StatusCode::OK, "never")
        }
    })
    .await;
    let gw = gateway(&api(
        "slow",
        &format!("http://{addr}"),
        "",
        ", timeout: 300ms",
    ))
    .await;
    let started = Instant::now();
    let resp = tokio::time::timeout(PATIENCE, common::client().get(gw.url("/slow/x")).send())
        .await
        .expect("the gateway answered, bounded by its own timeout")
        .expect("request");
    let elapsed = started.elapsed();
    tokio::time::timeout(PATIENCE, arrived.notified())
        .await
        .expect("the backend did get the request");
    let body = problem(resp, 504, "upstream_timeout").await;
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(body["rule"], "apis.slow.upstream.timeout");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("'slow'") && d.contains("300ms")),
        "{body}"
    );
    assert_eq!(body["retryable"], true);
}

#[tokio::test]
async fn redirects_are_passed_on_never_followed() {
    let target = TestUpstream::echo().await;
    let location = format!("http://{}/stolen", target.addr);
    let up = TestUpstream::start(move |parts, _| {
        let location = location.clone();
        async move {
            let code: u16 = parts
                .uri
                .path()
                .rsplit('/')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(302);
            let mut r = Response::new(Full::new(Bytes::from_static(b"moved")).boxed());
            *r.status_mut() = StatusCode::from_u16(code).expect("status");
            r.headers_mut()
                .insert("location", location.parse().expect("location"));
            r
        }
    })
    .await;
    let gw = gateway(&api("redir", &format!("http://{}", up.addr), "", "")).await;
    let expected_location = format!("http://{}/stolen", target.addr);
    for c in [common::client(), common::h2c_client()] {
        for code in [301u16, 302, 303, 307, 308] {
            let r = c
                .post(gw.url(&format!("/redir/to/{code}")))
                .body("payload")
                .send()
                .await
                .expect("request");
            assert_eq!(r.status().as_u16(), code);
            assert_eq!(header(r.headers(), "location"), expected_location);
            assert_eq!(r.text().await.expect("body"), "moved");
        }
    }
    assert_eq!(up.seen().len(), 10, "one backend request each");
    assert!(
        target.seen().is_empty(),
        "the redirect target was never contacted"
    );
}

#[tokio::test]
async fn statuses_and_headers_pass_through_minus_hop_by_hop() {
    let up = TestUpstream::start(|parts, _| async move {
        let code: u16 = parts
            .uri
            .path()
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let body = if code == 204 || code == 304 {
            Bytes::new()
        } else {
            Bytes::from(format!("{{\"status\":{code}}}"))
        };
        let mut r = Response::new(Full::new(body).boxed());
        *r.status_mut() = StatusCode::from_u16(code).expect("status");
        let h = r.headers_mut();
        for (k, v) in [
            ("content-type", "application/vnd.test+json"),
            ("etag", "\"v1\""),
            ("cache-control", "max-age=60"),
            ("x-backend", "kept"),
            ("connection", "x-backend-hop"),
            ("x-backend-hop", "named by connection"),
            ("keep-alive", "timeout=5, max=100"),
            ("proxy-authenticate", "Basic realm=\"backend\""),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("trailer", "x-checksum"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        h.append("set-cookie", HeaderValue::from_static("a=1; Path=/"));
        h.append("set-cookie", HeaderValue::from_static("b=2; Path=/"));
        r
    })
    .await;
    let gw = gateway(&api("st", &format!("http://{}", up.addr), "", "")).await;
    for c in [common::client(), common::h2c_client()] {
        for code in [200u16, 201, 202, 204, 400, 404, 409, 418, 429, 500, 503] {
            let r = c
                .get(gw.url(&format!("/st/{code}")))
                .send()
                .await
                .expect("request");
            assert_eq!(r.status().as_u16(), code, "status passed through");
            let h = r.headers().clone();
            // The backend's own answers are not turned into problem+json.
            assert_eq!(header(&h, "content-type"), "application/vnd.test+json");
            assert_eq!(header(&h, "etag"), "\"v1\"");
            assert_eq!(header(&h, "cache-control"), "max-age=60");
            assert_eq!(header(&h, "x-backend"), "kept");
            let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
            assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
            for gone in [
                "x-backend-hop",
                "keep-alive",
                "proxy-authenticate",
                "proxy-connection",
                "upgrade",
                "trailer",
            ] {
                assert!(
                    !h.contains_key(gone),
                    "{gone} passed to the client ({code})"
                );
            }
            for v in h.get_all("connection") {
                let v = v.to_str().unwrap_or("").to_ascii_lowercase();
                assert!(!v.contains("x-backend-hop"), "backend Connection kept: {v}");
            }
            assert!(header(&h, "x-request-id").starts_with("req_"));
            let body = r.bytes().await.expect("body");
            if code == 204 {
                assert!(body.is_empty());
            } else {
                assert_eq!(body, format!("{{\"status\":{code}}}"));
            }
        }
        // HEAD: the backend's headers, no body.
        let r = c.head(gw.url("/st/200")).send().await.expect("head");
        assert_eq!(r.status(), 200);
        assert_eq!(header(r.headers(), "x-backend"), "kept");
        assert_eq!(header(r.headers(), "content-length"), "14");
        assert!(r.bytes().await.expect("body").is_empty());
    }
}

#[tokio::test]
async fn an_https_upstream_with_the_configured_ca_is_reached_over_h2() {
    let pki = Pki::new();
    let (h2_addr, h2_seen) = recording(Some(tls_acceptor(&pki, &[b"h2", b"http/1.1"]))).await;
    let (h1_addr, h1_seen) = recording(Some(tls_acceptor(&pki, &[b"http/1.1"]))).await;
    let apis = [
        api(
            "both",
            &format!("https://localhost:{}/base", h2_addr.port()),
            "",
            ", ca: certs/ca.pem",
        ),
        api(
            "h1only",
            &format!("https://localhost:{}", h1_addr.port()),
            "",
            ", ca: certs/ca.pem",
        ),
    ]
    .concat();
    let gw = gateway_with(&apis, &[("certs/ca.pem", &pki.ca_pem)]).await;
    let gw_host = gw.url("").trim_start_matches("http://").to_owned();

    for (n, c) in [common::client(), common::h2c_client()]
        .into_iter()
        .enumerate()
    {
        let r = c
            .post(gw.url("/both/v1/x?q=1"))
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("te", "trailers")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-custom", "kept")
            .body(vec![b'z'; 100_000])
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        let rid = header(r.headers(), "x-request-id").to_owned();
        assert_eq!(
            r.text().await.expect("body"),
            "HTTP/2.0 100000",
            "ALPN chose h2 to the backend; the body arrived whole"
        );
        let seen = h2_seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), n + 1);
        let s = &seen[n];
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.method, http::Method::POST);
        assert_eq!(s.uri, "/base/v1/x?q=1");
        assert!(!s.headers.contains_key("x-hop"));
        assert!(!s.headers.contains_key("connection"));
        assert_eq!(header(&s.headers, "x-forwarded-for"), "127.0.0.1");
        assert_eq!(header(&s.headers, "x-forwarded-proto"), "http");
        assert_eq!(header(&s.headers, "x-forwarded-host"), gw_host);
        assert_eq!(header(&s.headers, "x-request-id"), rid);
        assert_eq!(header(&s.headers, "x-custom"), "kept");

        let r = c.get(gw.url("/h1only/y")).send().await.expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "HTTP/1.1 0");
        let seen = h1_seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), n + 1);
        assert_eq!(seen[n].version, Version::HTTP_11);
        assert_eq!(seen[n].uri, "/y");
        assert_eq!(
            header(&seen[n].headers, "host"),
            format!("localhost:{}", h1_addr.port())
        );
    }
}

#[tokio::test]
async fn an_untrusted_https_upstream_is_502() {
    let pki = Pki::new();
    let other = Pki::new();
    let (addr, seen) = recording(Some(tls_acceptor(&pki, &[b"h2", b"http/1.1"]))).await;
    let url = format!("https://localhost:{}", addr.port());
    let apis = [
        // No CA: the system roots do not know the test CA.
        api("noca", &url, "", ""),
        // Another CA: the certificate does not chain to it.
        api("wrongca", &url, "", ", ca: other-ca.pem"),
    ]
    .concat();
    let gw = gateway_with(&apis, &[("other-ca.pem", &other.ca_pem)]).await;
    for name in ["noca", "wrongca"] {
        let resp = common::client()
            .get(gw.url(&format!("/{name}/x")))
            .send()
            .await
            .expect("request");
        let body = problem(resp, 502, "upstream_unavailable").await;
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("'{name}'"))),
            "{body}"
        );
    }
    assert!(
        seen.lock().expect("lock").is_empty(),
        "no request was sent over an untrusted connection"
    );
}

#[tokio::test]
async fn an_h2c_client_reaches_an_http11_upstream() {
    let up = TestUpstream::echo().await;
    let gw = gateway(&api("echo", &format!("http://{}", up.addr), "", "")).await;
    let gw_host = gw.url("").trim_start_matches("http://").to_owned();
    let c = common::h2c_client();

    let r = c
        .get(gw.url("/echo/v1/things?limit=1"))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(r.version(), Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let json: serde_json::Value = r.json().await.expect("json");
    assert_eq!(json["path"], "/v1/things?limit=1");

    let r = c
        .post(gw.url("/echo/v1/things"))
        .body(vec![b'q'; 300_000])
        .send()
        .await
        .expect("h2c post");
    assert_eq!(r.status(), 200);
    let json: serde_json::Value = r.json().await.expect("json");
    assert_eq!(json["body_len"], 300_000);

    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_11, "HTTP/1.1 to the backend");
        // The :authority of the HTTP/2 request becomes X-Forwarded-Host.
        assert_eq!(header(&s.headers, "x-forwarded-host"), gw_host);
        assert_eq!(header(&s.headers, "host"), up.addr.to_string());
    }
    assert_eq!(seen[1].body_len, 300_000);
}

#[tokio::test]
async fn an_http_1_0_backend_does_not_downgrade_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let gw = gateway(&api("old", &format!("http://{addr}"), "", "")).await;
    let c = common::client();
    for _ in 0..2 {
        let resp = c.get(gw.url("/old/x")).send().await.expect("request");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), Version::HTTP_11);
        assert!(resp.headers().get("connection").is_none());
        assert_eq!(resp.text().await.expect("body"), "ok");
    }
    assert!(gw.shutdown().await);
}

/// What a [`raw_backend`] does after each response.
#[derive(Clone, Copy, PartialEq)]
enum AfterResponse {
    /// Keeps the connection open for the next request.
    KeepAlive,
    /// Closes it without saying so (no `Connection: close`), as a backend
    /// with a short keep-alive timeout does.
    CloseSilently,
}

/// Connections a [`raw_backend`] accepted, and how many of them the
/// gateway has closed.
#[derive(Default)]
struct ConnCounts {
    accepted: std::sync::atomic::AtomicUsize,
    closed_by_peer: std::sync::atomic::AtomicUsize,
}

/// A bodiless-GET HTTP/1.1 backend written on raw sockets, answering every
/// request with a `size`-byte body, counting its connections.
async fn raw_backend(after: AfterResponse, size: usize) -> (SocketAddr, Arc<ConnCounts>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(ConnCounts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                c.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    buf.drain(..end + 4);
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                    let mut out = head.into_bytes();
                    out.resize(out.len() + size, b'x');
                    if s.write_all(&out).await.is_err() {
                        c.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    if after == AfterResponse::CloseSilently {
                        return;
                    }
                }
            });
        }
    });
    (addr, counts)
}

/// Waits until `cond` holds (at most [`PATIENCE`]).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connections_to_a_backend_are_reused_and_closed_when_idle() {
    let (addr, counts) = raw_backend(AfterResponse::KeepAlive, 3000).await;
    let gw = gateway(&api(
        "kept",
        &format!("http://{addr}"),
        "",
        ", pool_idle_timeout: 300ms",
    ))
    .await;
    let c = common::client();
    for i in 0..20 {
        let resp = c
            .get(gw.url(&format!("/kept/{i}")))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.expect("body").len(), 3000);
    }
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        1,
        "20 requests in turn on one client connection take one backend connection"
    );
    assert_eq!(counts.closed_by_peer.load(Ordering::SeqCst), 0);
    // Idle past pool_idle_timeout: the gateway closes it.
    eventually("the idle backend connection is closed", || {
        counts.closed_by_peer.load(Ordering::SeqCst) == 1
    })
    .await;
    let resp = c.get(gw.url("/kept/again")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2, "a new one after");
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_backend_that_closes_idle_connections_costs_no_request() {
    let (addr, counts) = raw_backend(AfterResponse::CloseSilently, 10).await;
    let gw = gateway(&api("short", &format!("http://{addr}"), "", "")).await;
    let c = common::client();
    for i in 0..10 {
        let resp = c
            .get(gw.url(&format!("/short/{i}")))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.bytes().await.expect("body").len(), 10);
        // Time for the close to arrive before the next request (sending on
        // a connection the backend is closing at that very moment is a race
        // no HTTP/1.1 client can win for a request that is not idempotent).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 10);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_response_read_only_in_part_does_not_return_its_connection() {
    let (addr, counts) = raw_backend(AfterResponse::KeepAlive, 8 * 1024 * 1024).await;
    let gw = gateway(&api("big", &format!("http://{addr}"), "", "")).await;
    // The client takes the head and a first piece, then goes away.
    let mut resp = common::client()
        .get(gw.url("/big/1"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert!(resp.chunk().await.expect("a chunk").is_some());
    drop(resp);
    // The backend connection, mid-response, is closed, never reused.
    eventually("the half-read backend connection is closed", || {
        counts.closed_by_peer.load(Ordering::SeqCst) == 1
    })
    .await;
    let resp = common::client()
        .get(gw.url("/big/2"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.bytes().await.expect("body").len(),
        8 * 1024 * 1024,
        "a whole response of its own"
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    assert!(gw.shutdown().await);
}
