//! Listeners and connections: TCP accept with a connection cap, the TLS
//! handshake (with a deadline), HTTP/1.1 and HTTP/2 on the same port
//! (ALPN on TLS, prior knowledge on plain TCP), protocol limits, and
//! graceful draining on shutdown.

mod reset;
pub mod timer;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::body::Body;
use crate::config::{LimitsConfig, TimeoutsConfig};

pub use reset::ResetSwitch;
use reset::Resettable;

thread_local! {
    static WORKER_SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as public-listener worker `index` (0-based).
pub fn set_worker(index: usize) {
    WORKER_SLOT.with(|s| s.set(index + 1));
}

/// 1 + the current worker's index, or 0 on a thread that is not a worker.
/// Per-worker resources (upstream connection pools) are indexed by it.
pub fn worker_slot() -> usize {
    WORKER_SLOT.with(std::cell::Cell::get)
}

/// What is known about the connection a request came on. Shared by every
/// request of the connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client's verified certificate chain (leaf first), when it sent one.
    pub peer_certificates: Option<Vec<CertificateDer<'static>>>,
    /// Resets the connection (TCP RST) instead of writing anything more:
    /// the fixture fault `reset`.
    pub reset: ResetSwitch,
    /// The client's IP address as `X-Forwarded-For` text, made on the
    /// connection's first forwarded request and reused by the rest.
    pub forwarded_for: std::sync::OnceLock<http::HeaderValue>,
}

impl ConnInfo {
    /// A connection from `remote`.
    pub fn new(
        remote: SocketAddr,
        tls: bool,
        peer_certificates: Option<Vec<CertificateDer<'static>>>,
        reset: ResetSwitch,
    ) -> Self {
        Self {
            remote,
            tls,
            peer_certificates,
            reset,
            forwarded_for: std::sync::OnceLock::new(),
        }
    }

    /// The client's IP address as `X-Forwarded-For` carries it.
    pub fn forwarded_for(&self) -> &http::HeaderValue {
        self.forwarded_for.get_or_init(|| {
            http::HeaderValue::from_str(&self.remote.ip().to_string())
                .expect("an IP address is a valid header value")
        })
    }
}

/// Something that answers requests: the public gateway or the admin API.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Never fails: every error is already a response.
    fn handle(
        &self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Protocol settings of a connection, taken from the configuration current
/// when the connection is accepted.
#[derive(Clone, Debug)]
pub struct ConnSettings {
    /// Hyper's own head limits: twice the configured ones, so requests over
    /// the configured limit still reach the edge stage and get problem+json.
    pub h1_max_headers: usize,
    /// Hyper's read buffer limit (the head must fit in it).
    pub h1_max_buf: usize,
    /// HTTP/2 header list limit.
    pub h2_max_header_list: u32,
    /// HTTP/2 concurrent streams.
    pub h2_max_streams: u32,
    /// HTTP/2 stream window.
    pub h2_stream_window: u32,
    /// HTTP/2 connection window.
    pub h2_connection_window: u32,
    /// Deadline for a complete request head (and HTTP/1 keep-alive idle time).
    pub header_read: Duration,
    /// Deadline for the TLS handshake.
    pub tls_handshake: Duration,
}

impl ConnSettings {
    /// Derives connection settings from configuration.
    pub fn new(limits: &LimitsConfig, timeouts: &TimeoutsConfig) -> Self {
        let head = limits
            .max_header_bytes
            .as_usize()
            .saturating_add(limits.max_uri.as_usize());
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Self {
            h1_max_headers: limits.max_headers.saturating_mul(2).max(100),
            h1_max_buf: head.saturating_mul(2).max(8192),
            h2_max_header_list: clamp((head as u64).saturating_mul(2)),
            h2_max_streams: limits.h2_max_concurrent_streams,
            h2_stream_window: clamp(limits.h2_stream_window.bytes()),
            h2_connection_window: clamp(limits.h2_connection_window.bytes()),
            header_read: timeouts.header_read.get(),
            tls_handshake: timeouts.tls_handshake.get(),
        }
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        // On a worker thread, the header-read deadline armed for every
        // request head stays out of tokio's timer wheel (see `timer`).
        if worker_slot() != 0 {
            b.http1().timer(timer::WorkerTimer);
        } else {
            b.http1().timer(TokioTimer::new());
        }
        b.http1()
            .header_read_timeout(self.header_read)
            .max_headers(self.h1_max_headers)
            .max_buf_size(self.h1_max_buf)
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.h2_max_streams)
            .initial_stream_window_size(self.h2_stream_window)
            .initial_connection_window_size(self.h2_connection_window)
            .max_header_list_size(self.h2_max_header_list)
            .max_pending_accept_reset_streams(50)
            .max_local_error_reset_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        b
    }
}

/// Runs the accept loop of one listener until `stop` turns true. `slots`
/// caps the open connections (shared by every worker accepting on the
/// same address). Each
/// connection task is spawned on `tracker`, so shutdown can wait for them;
/// when `stop` turns true, each connection finishes its in-flight requests
/// and closes (HTTP/2 GOAWAY, HTTP/1 `Connection: close`).
#[allow(clippy::too_many_arguments)]
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Arc<H>,
    settings: impl Fn() -> ConnSettings + Send + 'static,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Backpressure: with every slot taken, new clients wait in the
        // kernel's accept queue instead of being accepted and starved.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let settings = settings();
        let handler = handler.clone();
        let tls = tls.clone();
        let conn_stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let reset = ResetSwitch::default();
                    let info = Arc::new(ConnInfo::new(remote, false, None, reset.clone()));
                    let io = TokioIo::new(Resettable::new(stream, reset));
                    serve_conn(io, info, handler, &settings, conn_stop).await;
                }
                Some(acceptor) => {
                    let tls_stream =
                        match tokio::time::timeout(settings.tls_handshake, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                                metrics::counter!("sandgate_tls_handshake_failures_total")
                                    .increment(1);
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "TLS handshake timed out");
                                metrics::counter!("sandgate_tls_handshake_failures_total")
                                    .increment(1);
                                return;
                            }
                        };
                    let peer = tls_stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
                    let reset = ResetSwitch::default();
                    let info = Arc::new(ConnInfo::new(remote, true, peer, reset.clone()));
                    let io = TokioIo::new(Resettable::new(tls_stream, reset));
                    serve_conn(io, info, handler, &settings, conn_stop).await;
                }
            }
        });
    }
}

/// The waker the stop signal is polled with: it wakes the connection's task
/// and records that the signal did.
struct StopWake {
    fired: AtomicBool,
    task: std::task::Waker,
}

impl std::task::Wake for StopWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Relaxed);
        self.task.wake_by_ref();
    }
}

async fn serve_conn<I, H>(
    io: TokioIo<I>,
    info: Arc<ConnInfo>,
    handler: Arc<H>,
    settings: &ConnSettings,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let info_remote = info.remote;
    // `auto`'s protocol sniffing (is this the HTTP/2 preface?) has no
    // deadline, and HTTP/2 has no header-read timeout: a client that connects
    // and never completes a request head would hold a connection slot
    // forever. Until its first request arrives, a connection lives at most
    // `header_read`.
    let first_request = Arc::new(AtomicBool::new(false));
    let seen = first_request.clone();
    let service = service_fn(move |req| {
        seen.store(true, Ordering::Relaxed);
        let handler = handler.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(handler.handle(req, info).await) }
    });
    let builder = settings.builder();
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let stopped = async { stop.wait_for(|s| *s).await.map(|_| ()) };
    tokio::pin!(stopped);
    // Polled by hand rather than with `select!`: the first-request deadline
    // is dropped as soon as a request has arrived, instead of being polled
    // on every wake-up of the connection for `header_read`.
    let mut first_deadline = Some(Box::pin(tokio::time::sleep(settings.header_read)));
    let mut draining = false;
    let mut stop_waker: Option<Arc<StopWake>> = None;
    let result = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if let Some(deadline) = &mut first_deadline {
            if first_request.load(Ordering::Relaxed) {
                first_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        // The stop signal is polled only when it woke the task (its own
        // waker says so), not on every request of every connection.
        if !draining {
            let waker = match &stop_waker {
                Some(w) if w.task.will_wake(cx.waker()) => w,
                _ => stop_waker.insert(Arc::new(StopWake {
                    fired: AtomicBool::new(true),
                    task: cx.waker().clone(),
                })),
            };
            if waker.fired.swap(false, Ordering::Relaxed) {
                let w = std::task::Waker::from(waker.clone());
                if stopped
                    .as_mut()
                    .poll(&mut std::task::Context::from_waker(&w))
                    .is_ready()
                {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                    if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                }
            }
        }
        Poll::Pending
    })
    .await;
    let Some(result) = result else {
        tracing::debug!(remote = %info_remote, "no request head within header_read; closing");
        return;
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
