//! Pooled HTTP/1.1 connections to a plain-`http` backend, one pool per
//! worker thread, over hyper's own connection API.
//!
//! hyper-util's general-purpose client (still used for `https` backends,
//! where ALPN may pick h2) hashes its pool key with SipHash on every
//! checkout and return, wraps each connection in several layers, and spawns
//! a task per request to wait for the connection to become idle again: about
//! a sixth of the instructions of a forwarded request. Here a worker keeps its
//! idle connections in a plain stack; a response body hands its connection
//! back the moment it has been read to the end.
//!
//! Invariants:
//! - a connection is only ever used by one request at a time: it is out of
//!   the pool from checkout until its response body has ended, and a body
//!   that does not end (dropped early, or broken) never returns it;
//! - at most `max_idle` idle connections per worker, none kept past
//!   `idle_timeout` (a sweep task per worker runs while any is idle);
//! - a request that a pooled connection could not take (closed by the
//!   backend while idle) is sent again on another connection; a request
//!   the backend may have seen never is.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::body::Body;

/// Why an exchange with the backend failed.
#[derive(Debug)]
pub(super) enum PoolError {
    /// No connection could be opened (resolution, refusal, or the connect
    /// timeout).
    Connect(std::io::Error),
    /// The exchange itself failed (including the client's own body).
    Exchange(hyper::Error),
}

/// The idle connections to one backend, per worker thread.
#[derive(Debug)]
pub(super) struct Pool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Slot 0 is for threads that are not workers
    /// ([`crate::server::worker_slot`]); each slot is only ever locked by
    /// its own thread, so the lock is never contended.
    slots: Box<[Mutex<Slot>]>,
}

#[derive(Debug, Default)]
struct Slot {
    idle: Vec<Idle>,
    /// Whether a sweep task is running for this slot.
    sweeping: bool,
}

#[derive(Debug)]
struct Idle {
    tx: SendRequest<Body>,
    since: quanta::Instant,
}

impl Pool {
    /// A pool for the backend at `host:port`, with a slot for each of
    /// `workers` threads and one for other threads.
    pub(super) fn new(
        host: &str,
        port: u16,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
        workers: usize,
    ) -> Arc<Pool> {
        // `[::1]` in a URL is `::1` to the resolver.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Arc::new(Pool {
            host,
            port,
            connect_timeout,
            idle_timeout,
            max_idle,
            slots: (0..=workers).map(|_| Mutex::default()).collect(),
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection of
    /// this worker, or on a new one, and returns the response with a body
    /// that gives the connection back when it ends.
    pub(super) async fn send(
        self: &Arc<Pool>,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let slot = crate::server::worker_slot().min(self.slots.len() - 1);
        while let Some(mut tx) = self.checkout(slot) {
            // Just after its previous response, a connection may be a moment
            // away from taking the next request; a closed one says so here.
            if tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, tx, slot)),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection had closed. Try another.
                    Some(back) => req = back,
                    None => return Err(PoolError::Exchange(e.into_error())),
                },
            }
        }
        let mut tx = self.connect().await?;
        match tx.send_request(req).await {
            Ok(resp) => Ok(self.pooled(resp, tx, slot)),
            Err(e) => Err(PoolError::Exchange(e)),
        }
    }

    /// The most recently used live idle connection of `slot`.
    fn checkout(&self, slot: usize) -> Option<SendRequest<Body>> {
        let mut s = self.slots[slot].lock().expect("pool slot lock");
        while let Some(idle) = s.idle.pop() {
            if !idle.tx.is_closed() && idle.since.elapsed() < self.idle_timeout {
                return Some(idle.tx);
            }
        }
        None
    }

    /// Opens a connection, driven by a task on the calling thread.
    async fn connect(&self) -> Result<SendRequest<Body>, PoolError> {
        let stream = tokio::time::timeout(self.connect_timeout, async {
            let mut last = None;
            for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address")
            }))
        })
        .await
        .map_err(|_| {
            PoolError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(PoolError::Connect)?;
        stream.set_nodelay(true).map_err(PoolError::Connect)?;
        let (tx, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Exchange)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }

    /// `resp` with a body that returns `tx` to `slot` when it ends.
    fn pooled(
        self: &Arc<Pool>,
        resp: Response<Incoming>,
        tx: SendRequest<Body>,
        slot: usize,
    ) -> Response<PooledBody> {
        let (parts, inner) = resp.into_parts();
        let body = PooledBody {
            inner,
            back: Some(GiveBack {
                pool: self.clone(),
                tx,
                slot,
            }),
        };
        Response::from_parts(parts, body)
    }

    /// Keeps `tx` as an idle connection of `slot`, unless it is closed or
    /// the slot is full.
    fn give_back(self: &Arc<Pool>, slot: usize, tx: SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let mut s = self.slots[slot].lock().expect("pool slot lock");
        if s.idle.len() >= self.max_idle {
            return;
        }
        s.idle.push(Idle {
            tx,
            since: quanta::Instant::now(),
        });
        if !s.sweeping && tokio::runtime::Handle::try_current().is_ok() {
            s.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self), slot, self.idle_timeout));
        }
    }
}

/// Closes the idle connections of `slot` that have been idle for
/// `timeout`, every `timeout / 2`, until the slot has none (or the pool is
/// gone with its configuration).
async fn sweep(pool: Weak<Pool>, slot: usize, timeout: Duration) {
    let every = (timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut s = pool.slots[slot].lock().expect("pool slot lock");
        s.idle
            .retain(|i| !i.tx.is_closed() && i.since.elapsed() < timeout);
        if s.idle.is_empty() {
            s.sweeping = false;
            return;
        }
    }
}

/// Where a connection goes when its response has been read.
struct GiveBack {
    pool: Arc<Pool>,
    tx: SendRequest<Body>,
    slot: usize,
}

impl GiveBack {
    fn run(self) {
        self.pool.give_back(self.slot, self.tx);
    }
}

/// A backend's response body that returns its connection to the pool once
/// it has been read to the end (and never if it has not).
pub(super) struct PooledBody {
    inner: Incoming,
    back: Option<GiveBack>,
}

impl hyper::body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            // A broken body leaves its connection unusable.
            Poll::Ready(Some(Err(_))) => {
                this.back = None;
                false
            }
            Poll::Pending => false,
        };
        if ended && let Some(back) = this.back.take() {
            back.run();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing to read (a 204, say) may never be polled.
        if self.inner.is_end_stream()
            && let Some(back) = self.back.take()
        {
            back.run();
        }
    }
}
