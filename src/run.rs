//! Starting and stopping a gateway: bind every listener, run the accept
//! loops, reload on SIGHUP, drain on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::config::{ConfigErrors, Source, StoreConfig, StoreKind};
use crate::gateway::Gateway;
use crate::sandbox::{Overrides, Sandbox};
use crate::server::{self, ConnSettings};
use crate::store::{FileStore, MemoryStore, SharedStore};
use crate::tenants::Registry;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(String),
    /// A worker thread or its runtime could not be started.
    #[error("cannot start a worker: {0}")]
    Runtime(String),
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
    workers_done: mpsc::UnboundedReceiver<()>,
    workers: usize,
    admin_stop: watch::Sender<bool>,
    admin_tracker: TaskTracker,
    grace: Duration,
}

/// Binds `addr` with `SO_REUSEPORT`, so every worker can have its own
/// accepting socket on the same port and the kernel spreads connections.
/// With `cpu`, the socket asks for the connections whose packets arrive on
/// that CPU (`SO_INCOMING_CPU`; Linux 6.2 picks among a `SO_REUSEPORT`
/// group's sockets by it, and falls back to its hash when none matches).
fn bind_reuseport(addr: SocketAddr, cpu: Option<usize>) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if let Some(cpu) = cpu {
        socket.set_cpu_affinity(cpu)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// With `pin` (`pin_workers`), the CPUs the workers are bound to: worker
/// i on the i-th CPU the process may run on, round robin.
///
/// A bound worker whose sockets ask for its CPU's connections keeps each
/// connection's work, and the wake-ups between it and its client, on one
/// core: on the 2-core VM of BENCHMARKS.md that took a bare hyper server
/// from about 220k to 400k requests/s. It is not the default because the
/// kernel places a connection by the CPU its opening packet arrived on:
/// behind a NIC that spreads flows over its queues that is balanced, but a
/// client on the same machine that opens its connections from one CPU puts
/// them all on one worker (one round in four of that benchmark did, at
/// 166k). And a bound worker cannot move away from a CPU something else
/// keeps busy.
fn worker_cpus(pin: bool, workers: usize) -> Option<Vec<core_affinity::CoreId>> {
    if !pin {
        return None;
    }
    // The CPUs this process may run on (its affinity mask).
    let Some(cpus) = core_affinity::get_core_ids().filter(|c| !c.is_empty()) else {
        tracing::warn!("pin_workers: the CPUs this process may use are unknown; workers not bound");
        return None;
    };
    let list: Vec<String> = (0..workers)
        .map(|i| cpus[i % cpus.len()].id.to_string())
        .collect();
    tracing::info!(workers, cpus = %list.join(","), "workers bound to CPUs");
    Some(cpus)
}

/// Checks that nobody listens on `addr` yet and resolves port 0, by binding
/// it once *without* `SO_REUSEPORT`. Without this, a second gateway of the
/// same user would silently join the first one's `SO_REUSEPORT` group and
/// take half its connections; with it, it fails with "address in use".
fn probe_exclusive(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an IP address"))
}

/// Opens the configured store. A file path is relative to the sandbox
/// directory (to the working directory for the bundled demo).
async fn open_store(cfg: &StoreConfig, source: &Source) -> Result<SharedStore, StartError> {
    Ok(match cfg.kind.value {
        StoreKind::Redis => {
            let url = cfg
                .url
                .as_ref()
                .map(|u| u.value.as_str())
                .unwrap_or_default();
            Arc::new(
                crate::store::RedisStore::connect(url, cfg.timeout.get())
                    .await
                    .map_err(|e| StartError::Store(e.to_string()))?,
            )
        }
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::File => {
            let path = match source {
                Source::Dir(dir) => dir.join(&cfg.path),
                Source::Embedded(_) => cfg.path.clone(),
            };
            Arc::new(FileStore::open(&path).map_err(|e| StartError::Store(e.to_string()))?)
        }
    })
}

/// One listener's sockets, one per worker.
struct Bound {
    sockets: Vec<std::net::TcpListener>,
    tls: Option<TlsAcceptor>,
    slots: Arc<Semaphore>,
}

/// Loads the sandbox at `source` and starts serving it.
///
/// The public listeners are served thread-per-core, like nginx's workers:
/// `workers` threads, each with a single-threaded tokio runtime and its own
/// `SO_REUSEPORT` socket per listener. A connection stays on one thread, so
/// the request path has no cross-thread wake-ups or work stealing. The admin
/// listener, signals and reloads stay on the caller's runtime.
pub async fn start(source: Source, overrides: Overrides) -> Result<Running, StartError> {
    crate::telemetry::prometheus();
    let mut sandbox = Sandbox::load(&source, &overrides)?;
    let grace = sandbox.timeouts.shutdown_grace.get();
    let workers = sandbox.workers;
    let cpus = worker_cpus(sandbox.pin_workers, workers);

    let mut bound = Vec::new();
    let mut public = Vec::new();
    for l in &sandbox.listeners {
        let bind_err = |addr, e| StartError::Bind { addr, source: e };
        let addr = probe_exclusive(l.addr).map_err(|e| bind_err(l.addr, e))?;
        let mut sockets = Vec::with_capacity(workers);
        // Popped from the end below: worker i takes the i-th from the end.
        for worker in (0..workers).rev() {
            let cpu = cpus.as_ref().map(|c| c[worker % c.len()].id);
            sockets.push(bind_reuseport(addr, cpu).map_err(|e| bind_err(addr, e))?);
        }
        public.push((addr, l.tls.is_some()));
        bound.push(Bound {
            sockets,
            tls: l.tls.clone().map(TlsAcceptor::from),
            slots: Arc::new(Semaphore::new(sandbox.limits.max_connections)),
        });
    }
    let admin_listener =
        TcpListener::bind(sandbox.admin_listen)
            .await
            .map_err(|e| StartError::Bind {
                addr: sandbox.admin_listen,
                source: e,
            })?;
    let admin = admin_listener.local_addr().map_err(|e| StartError::Bind {
        addr: sandbox.admin_listen,
        source: e,
    })?;

    let store: SharedStore = Arc::new(crate::store::Measured::new(
        open_store(&sandbox.store, &source).await?,
    ));
    let registry = Registry::new(store);
    // Usage analytics: the worker, its sinks and alerts, off the request path.
    let analytics = crate::analytics::start(&mut sandbox, &registry);
    let gateway = Arc::new(Gateway::new(sandbox, source, overrides, registry));
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, workers_done) = mpsc::unbounded_channel();
    // The decision trace's stage clock calibrates itself against the
    // system clock on first use (up to a few ms): now, not on a request.
    let _ = quanta::Instant::now();

    for worker in 0..workers {
        let mine: Vec<_> = bound
            .iter_mut()
            .map(|b| (b.sockets.pop(), b.tls.clone(), b.slots.clone()))
            .collect();
        let gateway = gateway.clone();
        let stop_rx = stop_rx.clone();
        let done_tx = done_tx.clone();
        let cpu = cpus.as_ref().map(|c| c[worker % c.len()]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        std::thread::Builder::new()
            .name(format!("sandgate-worker-{worker}"))
            .spawn(move || {
                server::set_worker(worker);
                if let Some(cpu) = cpu
                    && !core_affinity::set_for_current(cpu)
                {
                    tracing::warn!(worker, cpu = cpu.id, "could not bind the worker to its CPU");
                }
                runtime.block_on(async move {
                    // Connections of this worker: the runtime must keep
                    // running until they have drained.
                    let tracker = TaskTracker::new();
                    let mut loops = Vec::new();
                    for (socket, tls, slots) in mine {
                        let Some(socket) = socket else { continue };
                        let listener = match TcpListener::from_std(socket) {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot register a listener");
                                continue;
                            }
                        };
                        let gw = gateway.clone();
                        // Each new connection takes the limits of the configuration current at accept time.
                        let settings = move || {
                            let sb = gw.sandbox();
                            ConnSettings::new(&sb.limits, &sb.timeouts)
                        };
                        loops.push(tokio::spawn(server::serve(
                            listener,
                            tls,
                            gateway.clone(),
                            settings,
                            slots,
                            tracker.clone(),
                            stop_rx.clone(),
                        )));
                    }
                    for l in loops {
                        let _ = l.await;
                    }
                    tracker.close();
                    tracker.wait().await;
                });
                let _ = done_tx.send(());
            })
            .map_err(|e| StartError::Runtime(e.to_string()))?;
    }
    drop(done_tx);

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
    // Background chores end with the admin listener, at the end of a
    // shutdown, so nothing keeps the gateway (and its store) alive after it.
    let until_stopped = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
        let mut stop = admin_stop_rx.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = f => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    };
    until_stopped(Box::pin(sweep_expired(gateway.clone())));
    until_stopped(analytics);
    until_stopped(Box::pin(forget_idle_limits(gateway.clone())));
    until_stopped(Box::pin(write_quota_counts(gateway.clone())));
    // Decision traces: the queue's one writer, batching into the store.
    let gw = gateway.clone();
    until_stopped(Box::pin(crate::trace::write_behind(
        gateway.registry().traces().clone(),
        gateway.registry().background_store().clone(),
        workers,
        move || gw.sandbox().traces.clone(),
    )));
    tokio::spawn(server::serve(
        admin_listener,
        None,
        admin_handler,
        admin_settings,
        Arc::new(Semaphore::new(64)),
        admin_tracker.clone(),
        admin_stop_rx,
    ));
    // Key sets of issuers configured by URL: fetched now, in the background
    // (an issuer that is down must not keep the gateway from starting).
    let sb = gateway.sandbox();
    tokio::spawn(async move { sb.jwt.prefetch().await });
    gateway.set_ready(true);
    Ok(Running {
        public,
        admin,
        gateway,
        stop,
        workers_done,
        workers,
        admin_stop,
        admin_tracker,
        grace,
    })
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to the configured
    /// grace period) and returns whether every connection drained in time.
    pub async fn shutdown(self) -> bool {
        self.gateway.set_ready(false);
        let _ = self.stop.send(true);
        let mut done = self.workers_done;
        let workers = self.workers;
        let drained = tokio::time::timeout(self.grace, async move {
            for _ in 0..workers {
                if done.recv().await.is_none() {
                    break;
                }
            }
        })
        .await
        .is_ok();
        // Traces still queued are written while the writer still runs.
        self.gateway
            .registry()
            .traces()
            .settle(std::time::Duration::from_secs(1))
            .await;
        let _ = self.admin_stop.send(true);
        self.admin_tracker.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.admin_tracker.wait())
            .await;
        // The last quota counts go to the store before the process ends.
        if let Err(e) = self
            .gateway
            .registry()
            .quotas()
            .flush(crate::tenants::now_secs())
            .await
        {
            tracing::warn!(error = %e, "could not write the last quota counts");
        }
        drained
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP, then drains.
    /// `signals` must be installed before the gateway announces itself, so
    /// a signal sent right after start-up is handled, not fatal.
    pub async fn run_until_signal(self, signals: Signals) -> std::io::Result<bool> {
        let Signals {
            mut term,
            mut int,
            mut hup,
        } = signals;
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

/// The process signals the gateway handles, installed (so no longer fatal)
/// when this value is created.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs handlers for SIGTERM, SIGINT and SIGHUP.
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Marks expired sandboxes every `tenants.sweep_interval`, for as long as
/// the control runtime runs.
async fn sweep_expired(gateway: Arc<Gateway>) {
    loop {
        tokio::time::sleep(gateway.sandbox().tenants.sweep_interval.get()).await;
        match gateway
            .registry()
            .sweep_expired(crate::tenants::now_secs())
            .await
        {
            Ok(ids) => {
                let sandbox = gateway.sandbox();
                for id in &ids {
                    tracing::info!(tenant = %id, "sandbox expired");
                    crate::analytics::expired(&sandbox, id);
                }
                metrics::counter!("sandgate_sandboxes_expired_total").increment(ids.len() as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "expiry sweep failed; retrying at the next interval")
            }
        }
    }
}

/// Every minute, forgets the limit state (GCRA cells, in-flight count,
/// quota counters) of tenants with nothing in flight, no quota counter in
/// memory and every burst whole again, so memory follows the active
/// tenants.
async fn forget_idle_limits(gateway: Arc<Gateway>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        let now = gateway.sandbox().plans.rule_times();
        gateway.registry().in_flight().prune(&now);
    }
}

/// Every second, writes changed quota counts to the store (so they survive
/// a restart; at most a second of counts is lost to a crash).
async fn write_quota_counts(gateway: Arc<Gateway>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if let Err(e) = gateway
            .registry()
            .quotas()
            .flush(crate::tenants::now_secs())
            .await
        {
            metrics::counter!("sandgate_store_errors_total", "op" => "quota_flush").increment(1);
            tracing::warn!(error = %e, "could not write quota counts; retrying in a second");
        }
    }
}
