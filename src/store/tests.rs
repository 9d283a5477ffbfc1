//! One conformance suite, run against every backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;

static FAKE_NOW: AtomicU64 = AtomicU64::new(1_000_000);

fn fake_now() -> u64 {
    FAKE_NOW.load(Ordering::SeqCst)
}

async fn conformance(s: &dyn Store) {
    assert_eq!(s.get("a").await.expect("get"), None);
    s.put("a", b"1".to_vec(), None).await.expect("put");
    assert_eq!(s.get("a").await.expect("get"), Some(b"1".to_vec()));
    assert!(
        !s.put_if_absent("a", b"2".to_vec(), None)
            .await
            .expect("pia")
    );
    assert!(
        s.put_if_absent("b", b"2".to_vec(), None)
            .await
            .expect("pia")
    );
    assert!(s.delete("a").await.expect("del"));
    assert!(!s.delete("a").await.expect("del"));

    for k in [
        "t/acme/x/3",
        "t/acme/x/1",
        "t/acme/x/2",
        "t/acmf/x/1",
        "t/acm/x/1",
    ] {
        s.put(k, k.as_bytes().to_vec(), None).await.expect("put");
    }
    let keys = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(s.scan("t/acme/", None, 10).await.expect("scan")),
        ["t/acme/x/1", "t/acme/x/2", "t/acme/x/3"]
    );
    assert_eq!(
        keys(
            s.scan("t/acme/", Some("t/acme/x/1"), 1)
                .await
                .expect("scan")
        ),
        ["t/acme/x/2"]
    );
    assert_eq!(s.delete_prefix("t/acme/").await.expect("delp"), 3);
    assert!(s.scan("t/acme/", None, 10).await.expect("scan").is_empty());
    assert_eq!(
        s.get("t/acmf/x/1").await.expect("get"),
        Some(b"t/acmf/x/1".to_vec()),
        "a neighbour tenant is untouched"
    );

    assert_eq!(s.incr("c", 1, None).await.expect("incr"), 1);
    assert_eq!(s.incr("c", 5, None).await.expect("incr"), 6);
    assert_eq!(s.incr("c", -2, None).await.expect("incr"), 4);
}

async fn expiry_suite(s: &dyn Store) {
    s.put("e", b"v".to_vec(), Some(Duration::from_secs(10)))
        .await
        .expect("put");
    s.incr("ec", 1, Some(Duration::from_secs(10)))
        .await
        .expect("incr");
    FAKE_NOW.fetch_add(5_000, Ordering::SeqCst);
    assert!(s.get("e").await.expect("get").is_some());
    assert_eq!(
        s.incr("ec", 1, Some(Duration::from_secs(10)))
            .await
            .expect("incr"),
        2,
        "ttl is kept, not renewed"
    );
    FAKE_NOW.fetch_add(6_000, Ordering::SeqCst);
    assert!(s.get("e").await.expect("get").is_none());
    assert!(s.scan("e", None, 10).await.expect("scan").is_empty());
    assert!(
        s.put_if_absent("e", b"w".to_vec(), None)
            .await
            .expect("pia"),
        "an expired key counts as absent"
    );
    assert_eq!(
        s.incr("ec", 1, None).await.expect("incr"),
        1,
        "an expired counter restarts"
    );
}

#[tokio::test]
async fn memory_store_conforms() {
    conformance(&MemoryStore::new()).await;
}

#[tokio::test]
async fn file_store_conforms_and_persists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data/sandgate.redb");
    {
        let s = FileStore::open(&path).expect("open");
        conformance(&s).await;
        s.put("t/acme/keep", b"yes".to_vec(), None)
            .await
            .expect("put");
    }
    let s = FileStore::open(&path).expect("reopen");
    assert_eq!(
        s.get("t/acme/keep").await.expect("get"),
        Some(b"yes".to_vec())
    );
}

#[tokio::test]
async fn expiry_follows_the_injected_clock() {
    expiry_suite(&MemoryStore::with_clock(fake_now)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    expiry_suite(&FileStore::open_with_clock(&dir.path().join("s.redb"), fake_now).expect("open"))
        .await;
}

#[tokio::test]
async fn concurrent_increments_are_atomic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores: Vec<std::sync::Arc<dyn Store>> = vec![
        std::sync::Arc::new(MemoryStore::new()),
        std::sync::Arc::new(FileStore::open(&dir.path().join("c.redb")).expect("open")),
    ];
    for s in stores {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.incr("n", 1, None).await.expect("incr") })
            })
            .collect();
        for t in tasks {
            t.await.expect("join");
        }
        assert_eq!(
            s.incr("n", 0, None).await.expect("incr"),
            50,
            "{}",
            s.kind()
        );
    }
}

/// A `redis-server` of this test's own on a free port, killed on drop.
pub(crate) struct TestRedis {
    child: std::process::Child,
    /// `redis://127.0.0.1:<port>/0`.
    pub url: String,
}

impl TestRedis {
    /// Starts one and waits until it answers. Panics (never skips) when
    /// `redis-server` is not installed: `scripts/test.sh` installs it.
    pub(crate) async fn start() -> TestRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let redis = TestRedis {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    pub(crate) fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal}");
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redis_store_conforms_and_expires() {
    let redis = TestRedis::start().await;
    let s = RedisStore::connect(&redis.url, Duration::from_millis(500))
        .await
        .expect("connect");
    conformance(&s).await;
    // Real expiry: Redis keeps its own time.
    s.put("e", b"v".to_vec(), Some(Duration::from_millis(150)))
        .await
        .expect("put");
    assert_eq!(
        s.incr("ec", 1, Some(Duration::from_millis(150)))
            .await
            .expect("incr"),
        1
    );
    assert_eq!(
        s.incr("ec", 1, Some(Duration::from_millis(150)))
            .await
            .expect("incr"),
        2
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.get("e").await.expect("get").is_none());
    assert_eq!(s.incr("ec", 1, None).await.expect("incr"), 1, "restarted");
    // Concurrent increments are atomic.
    let s = std::sync::Arc::new(s);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.incr("n", 1, None).await.expect("incr") })
        })
        .collect();
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(s.incr("n", 0, None).await.expect("incr"), 50);
}

#[tokio::test]
async fn a_stalled_redis_fails_within_the_timeout_and_recovers() {
    let redis = TestRedis::start().await;
    let s = RedisStore::connect(&redis.url, Duration::from_millis(100))
        .await
        .expect("connect");
    s.put("k", b"v".to_vec(), None).await.expect("put");
    redis.signal("STOP");
    let started = std::time::Instant::now();
    let r = s.get("k").await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    // Bounded by the timeout, not by TCP (generous for a loaded machine).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    redis.signal("CONT");
    let mut back = None;
    for _ in 0..100 {
        if let Ok(v) = s.get("k").await {
            back = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back, Some(b"v".to_vec()), "the same store answers again");
}
