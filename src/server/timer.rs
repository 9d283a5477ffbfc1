//! Per-request deadlines on worker threads, without tokio's timer wheel:
//! hyper's HTTP/1 header-read deadline ([`WorkerTimer`]), an upstream
//! exchange's and a request body's ([`timeout`]).
//!
//! hyper arms its header-read timer before every request head it reads on
//! a keep-alive connection and drops it as soon as the head is parsed. With
//! tokio's timer each of those is a boxed `Sleep`, an insertion into the
//! runtime's timer wheel and a removal from it: about 1,000 instructions of
//! a facade request (`benches/instructions.sh`). A deadline of seconds
//! needs no such precision. Here each worker thread keeps the deadlines of
//! its connections in a slab, and one task per worker, running only while
//! a deadline is pending, looks at them every [`TICK`] and wakes the
//! connections whose deadline has passed. Arming, polling and dropping a
//! deadline touch only the worker's own slab.
//!
//! A deadline never fires early (the time compared is read after the
//! deadline was set) and at most about [`TICK`] late.
//!
//! Only worker threads (single-threaded runtimes: a connection never moves
//! to another thread) use it; elsewhere connections keep tokio's timer.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often a worker with pending deadlines looks at them.
pub const TICK: Duration = Duration::from_millis(50);

/// hyper's timer for HTTP/1 connections served on a worker thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerTimer;

impl hyper::rt::Timer for WorkerTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline {
            deadline,
            slot: None,
        })
    }
}

/// `fut`, or [`TimedOut`] once `after` has passed. On a worker thread the
/// deadline is one of the worker's own (see the module), elsewhere tokio's
/// timer: per-request deadlines (an upstream exchange, a request body) stay
/// out of tokio's timer wheel on the request path.
pub async fn timeout<F: Future>(after: Duration, fut: F) -> Result<F::Output, TimedOut> {
    if super::worker_slot() == 0 {
        return tokio::time::timeout(after, fut).await.map_err(|_| TimedOut);
    }
    let mut deadline = Deadline {
        deadline: Instant::now() + after,
        slot: None,
    };
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if Pin::new(&mut deadline).poll(cx).is_ready() {
            return Poll::Ready(Err(TimedOut));
        }
        Poll::Pending
    })
    .await
}

/// A [`timeout`] passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut;

/// One armed deadline. It takes a slot in its worker's slab on its first
/// pending poll and gives it back when dropped.
#[derive(Debug)]
struct Deadline {
    deadline: Instant,
    /// The slot in this thread's slab, once registered.
    slot: Option<(u64, usize)>,
}

impl hyper::rt::Sleep for Deadline {}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let spawn_ticker = SLAB.with_borrow_mut(|slab| {
            // The time of the last tick: never later than now, so a
            // deadline it has passed has really passed.
            if slab.now.is_some_and(|now| now >= this.deadline) {
                return None;
            }
            match this.slot {
                Some((thread, i)) if thread == slab.thread => {
                    let entry = &mut slab.entries[i];
                    if !entry
                        .waker
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        entry.waker = Some(cx.waker().clone());
                    }
                    Some(false)
                }
                _ => {
                    this.slot = Some((slab.thread, slab.insert(this.deadline, cx.waker())));
                    let start = !slab.ticking;
                    slab.ticking = true;
                    Some(start)
                }
            }
        });
        match spawn_ticker {
            None => Poll::Ready(()),
            Some(start) => {
                if start {
                    tokio::spawn(tick());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some((thread, i)) = self.slot {
            // `try_with`: a connection dropped while the thread exits.
            let _ = SLAB.try_with(|slab| {
                if let Ok(mut slab) = slab.try_borrow_mut()
                    && slab.thread == thread
                {
                    slab.remove(i);
                }
            });
        }
    }
}

thread_local! {
    static SLAB: RefCell<Slab> = RefCell::new(Slab::new());
}

/// This thread's pending deadlines.
#[derive(Debug)]
struct Slab {
    /// Tells this thread's slots from another's (a value per thread).
    thread: u64,
    entries: Vec<Entry>,
    free: Vec<usize>,
    pending: usize,
    /// Whether this thread's ticker task is running.
    ticking: bool,
    /// When the ticker last looked.
    now: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    deadline: Instant,
    /// `None` for a free slot, or once woken.
    waker: Option<Waker>,
    used: bool,
}

impl Slab {
    fn new() -> Self {
        static THREADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            thread: THREADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            entries: Vec::new(),
            free: Vec::new(),
            pending: 0,
            ticking: false,
            now: None,
        }
    }

    fn insert(&mut self, deadline: Instant, waker: &Waker) -> usize {
        let entry = Entry {
            deadline,
            waker: Some(waker.clone()),
            used: true,
        };
        self.pending += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = entry;
                i
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(e) = self.entries.get_mut(i)
            && e.used
        {
            e.used = false;
            e.waker = None;
            self.pending -= 1;
            self.free.push(i);
        }
    }

    /// Takes the wakers of the deadlines passed at `now`; says whether any
    /// deadline is still pending.
    fn expire(&mut self, now: Instant, woken: &mut Vec<Waker>) -> bool {
        self.now = Some(now);
        for e in &mut self.entries {
            if e.used
                && e.deadline <= now
                && let Some(w) = e.waker.take()
            {
                woken.push(w);
            }
        }
        self.pending > 0
    }
}

/// The ticker of one worker thread: runs while deadlines are pending.
async fn tick() {
    // Cancelled with its runtime, it lets the next ticker of this thread start.
    struct Ticking;
    impl Drop for Ticking {
        fn drop(&mut self) {
            let _ = SLAB.try_with(|slab| {
                if let Ok(mut slab) = slab.try_borrow_mut() {
                    slab.ticking = false;
                }
            });
        }
    }
    let _ticking = Ticking;
    let mut woken = Vec::new();
    loop {
        tokio::time::sleep(TICK).await;
        let more = SLAB.with_borrow_mut(|slab| slab.expire(Instant::now(), &mut woken));
        // Woken outside the borrow: a waker may run code that arms another.
        for w in woken.drain(..) {
            w.wake();
        }
        if !more {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer as _;

    #[tokio::test(flavor = "current_thread")]
    async fn fires_after_its_deadline_and_not_before() {
        let started = Instant::now();
        WorkerTimer.sleep(Duration::from_millis(120)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(120), "fired early: {took:?}");
        assert!(
            took < Duration::from_millis(120) + TICK * 4,
            "fired late: {took:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropped_deadlines_free_their_slots_and_the_ticker_stops() {
        // Many deadlines armed and dropped before they fire, as hyper does
        // once a head is parsed.
        for _ in 0..100 {
            let mut d = WorkerTimer.sleep(Duration::from_secs(60));
            let pending = std::future::poll_fn(|cx| Poll::Ready(d.as_mut().poll(cx))).await;
            assert!(pending.is_pending());
        }
        SLAB.with_borrow(|s| {
            assert_eq!(s.pending, 0);
            assert!(
                s.entries.len() <= 1,
                "slots are reused: {}",
                s.entries.len()
            );
        });
        // The ticker ends once nothing is pending.
        tokio::time::sleep(TICK * 3).await;
        SLAB.with_borrow(|s| assert!(!s.ticking));
        // And starts again for a new deadline.
        WorkerTimer.sleep(Duration::from_millis(10)).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn timeout_on_a_worker_thread_uses_the_worker_deadline() {
        crate::server::set_worker(0);
        let started = Instant::now();
        let out = timeout(Duration::from_millis(100), std::future::pending::<()>()).await;
        let took = started.elapsed();
        assert_eq!(out, Err(TimedOut));
        assert!(took >= Duration::from_millis(100), "early: {took:?}");
        assert!(
            took < Duration::from_millis(100) + TICK * 4,
            "late: {took:?}"
        );
        SLAB.with_borrow(|s| assert_eq!(s.pending, 0, "its slot was given back"));
        assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn many_deadlines_fire_in_order() {
        let started = Instant::now();
        let a = WorkerTimer.sleep(Duration::from_millis(60));
        let b = WorkerTimer.sleep(Duration::from_millis(200));
        a.await;
        let at_a = started.elapsed();
        b.await;
        let at_b = started.elapsed();
        assert!(at_a >= Duration::from_millis(60) && at_b >= Duration::from_millis(200));
        assert!(at_a < at_b);
    }
}
