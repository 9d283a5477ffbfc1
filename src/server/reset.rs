//! Resetting a connection on purpose: the fixture fault `reset` makes the
//! client see what a crashed backend looks like (a TCP RST, no response).
//!
//! A connection's stream is wrapped in [`Resettable`]; a handler flips the
//! connection's [`ResetSwitch`] and returns. The next read or write on the
//! stream sets `SO_LINGER` to zero and fails, so hyper drops the connection
//! and the kernel answers with RST instead of an orderly FIN. Until the
//! switch is flipped the wrapper only adds one relaxed atomic load per
//! I/O call.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Shared between a connection's [`ConnInfo`](super::ConnInfo) and its stream.
#[derive(Clone, Debug, Default)]
pub struct ResetSwitch(Arc<AtomicBool>);

impl ResetSwitch {
    /// Asks for the connection to be reset: nothing more is written to it.
    pub fn reset(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A stream whose socket can be made to close with RST.
pub trait ZeroLinger {
    /// Sets `SO_LINGER` to zero, so closing the socket sends RST.
    fn zero_linger(&self);
}

impl ZeroLinger for TcpStream {
    fn zero_linger(&self) {
        let _ = self.set_zero_linger();
    }
}

impl ZeroLinger for tokio_rustls::server::TlsStream<TcpStream> {
    fn zero_linger(&self) {
        let _ = self.get_ref().0.set_zero_linger();
    }
}

pin_project_lite::pin_project! {
    /// A connection stream that fails every I/O call once its switch is set.
    pub struct Resettable<S> {
        #[pin]
        inner: S,
        switch: ResetSwitch,
    }
}

impl<S: ZeroLinger> Resettable<S> {
    /// Wraps `inner`, controlled by `switch`.
    pub fn new(inner: S, switch: ResetSwitch) -> Self {
        Resettable { inner, switch }
    }
}

fn tripped<S: ZeroLinger>(inner: &S, switch: &ResetSwitch) -> Option<io::Error> {
    switch.is_set().then(|| {
        inner.zero_linger();
        io::Error::new(io::ErrorKind::ConnectionReset, "reset by a fixture fault")
    })
}

impl<S: AsyncRead + ZeroLinger> AsyncRead for Resettable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(e) = tripped(&*this.inner, this.switch) {
            return Poll::Ready(Err(e));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + ZeroLinger> AsyncWrite for Resettable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if let Some(e) = tripped(&*this.inner, this.switch) {
            return Poll::Ready(Err(e));
        }
        this.inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if let Some(e) = tripped(&*this.inner, this.switch) {
            return Poll::Ready(Err(e));
        }
        this.inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(e) = tripped(&*this.inner, this.switch) {
            return Poll::Ready(Err(e));
        }
        this.inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(e) = tripped(&*this.inner, this.switch) {
            return Poll::Ready(Err(e));
        }
        this.inner.poll_shutdown(cx)
    }
}
