//! Starting and stopping a gateway: bind every listener, run the accept
//! loops, reload on SIGHUP, drain on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::config::{ConfigErrors, Source};
use crate::gateway::Gateway;
use crate::sandbox::{Overrides, Sandbox};
use crate::server::{self, ConnSettings};

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running gateway.
pub struct Running {
    /// Bound addresses of the public listeners, in configuration order, and
    /// whether each is TLS.
    pub public: Vec<(SocketAddr, bool)>,
    /// Bound address of the admin listener.
    pub admin: SocketAddr,
    /// The gateway itself (for reloads and readiness).
    pub gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    admin_tracker: TaskTracker,
    tracker: TaskTracker,
    grace: Duration,
}

/// Loads the sandbox at `source` and starts serving it.
pub async fn start(source: Source, overrides: Overrides) -> Result<Running, StartError> {
    crate::telemetry::prometheus();
    let sandbox = Sandbox::load(&source, &overrides)?;
    let grace = sandbox.timeouts.shutdown_grace.get();
    let max_conns = sandbox.limits.max_connections;

    let mut bound = Vec::new();
    for l in &sandbox.listeners {
        let listener = TcpListener::bind(l.addr)
            .await
            .map_err(|e| StartError::Bind {
                addr: l.addr,
                source: e,
            })?;
        let tls = l.tls.clone().map(TlsAcceptor::from);
        bound.push((listener, tls));
    }
    let admin_listener =
        TcpListener::bind(sandbox.admin_listen)
            .await
            .map_err(|e| StartError::Bind {
                addr: sandbox.admin_listen,
                source: e,
            })?;

    let gateway = Arc::new(Gateway::new(sandbox, source, overrides));
    let (stop, stop_rx) = watch::channel(false);
    let tracker = TaskTracker::new();

    let mut public = Vec::new();
    for (listener, tls) in bound {
        let addr = listener.local_addr().map_err(|e| StartError::Bind {
            addr: sandbox_addr(&listener),
            source: e,
        })?;
        public.push((addr, tls.is_some()));
        let gw = gateway.clone();
        // Each new connection takes the limits of the configuration current at accept time.
        let settings = move || {
            let sb = gw.sandbox();
            ConnSettings::new(&sb.limits, &sb.timeouts)
        };
        tokio::spawn(server::serve(
            listener,
            tls,
            gateway.clone(),
            settings,
            max_conns,
            tracker.clone(),
            stop_rx.clone(),
        ));
    }
    let admin = admin_listener.local_addr().map_err(|e| StartError::Bind {
        addr: sandbox_addr(&admin_listener),
        source: e,
    })?;
    let admin_handler = Arc::new(Admin::new(gateway.clone()));
    let gw = gateway.clone();
    let admin_settings = move || {
        let sb = gw.sandbox();
        ConnSettings::new(&sb.limits, &sb.timeouts)
    };
    // The admin listener has its own stop signal: it keeps answering
    // (/readyz says 503) while the public listeners drain.
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let admin_tracker = TaskTracker::new();
    tokio::spawn(server::serve(
        admin_listener,
        None,
        admin_handler,
        admin_settings,
        64,
        admin_tracker.clone(),
        admin_stop_rx,
    ));
    drop(stop_rx);
    gateway.set_ready(true);
    Ok(Running {
        public,
        admin,
        gateway,
        stop,
        admin_stop,
        admin_tracker,
        tracker,
        grace,
    })
}

fn sandbox_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to the configured
    /// grace period) and returns whether every connection drained in time.
    pub async fn shutdown(self) -> bool {
        self.gateway.set_ready(false);
        let _ = self.stop.send(true);
        self.tracker.close();
        let drained = tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_ok();
        let _ = self.admin_stop.send(true);
        self.admin_tracker.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.admin_tracker.wait())
            .await;
        drained
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP, then drains.
    pub async fn run_until_signal(self) -> std::io::Result<bool> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = self.gateway.reload();
                }
            }
        }
        tracing::info!(grace = ?self.grace, "shutting down: draining in-flight requests");
        let drained = self.shutdown().await;
        if !drained {
            tracing::warn!("grace period over; closing the remaining connections");
        }
        Ok(drained)
    }
}
