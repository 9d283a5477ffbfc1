//! The Redis store, end to end: a real `redis-server` started by the test
//! on a free port; three replicas sharing it admit exactly a burst and
//! exactly a quota under hundreds of concurrent requests spread over them;
//! tenants provisioned through one gateway are served by another; quota
//! counts of one replica are seen by the next; a stalled Redis (SIGSTOP)
//! is answered within the store timeout in the configured mode
//! (`fail_closed` → 503 `limits_unavailable`, `fail_open` → allowed) and
//! service resumes by itself after SIGCONT; a killed Redis is answered the
//! same way, and a Redis restarted on its address is used again without
//! restarting the gateway; both faults, under steady load, in both modes:
//! every answer within the timeout, then recovery; a steady stream over
//! three replicas is admitted at the configured rate (within 2 %).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{PAYMENTS, TestGateway, problem, sandbox_dir, start_gateway};
use sandgate::tenants::{self, DAY};

/// A `redis-server` of this test's own on a free port, killed on drop.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(port).await
    }

    /// Starts one on `port` (a restart after a kill reuses the port).
    async fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let redis = Redis {
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

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const POLICY: &str = "plans:\n  metered:\n    quotas: [ { requests: 5, per: lifetime } ]\n  bursty:\n    rate: { requests: 10, per: 60s, burst: 10 }\n  daily:\n    quotas: [ { requests: 25, per: day } ]\n  steady:\n    rate: { requests: 100, per: 1s, burst: 5 }\n  roomy:\n    rate: { requests: 100000, per: 1s, burst: 100000 }\n    quotas: [ { requests: 10000000, per: day } ]\n";

async fn replica(redis: &Redis, on_error: &str) -> TestGateway {
    replica_with(redis, on_error, "200ms").await
}

/// A replica whose Redis operations may take up to `timeout`.
async fn replica_with(redis: &Redis, on_error: &str, timeout: &str) -> TestGateway {
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\nstore: {{ kind: redis, url: \"{}\", timeout: {timeout}, on_error: {on_error} }}\nauth:\n  api_keys: {{ prefix: sk_sandbox_, live_prefixes: [sk_live_] }}\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n",
        redis.url
    );
    start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
        ("policies/plans.yaml", POLICY),
    ]))
    .await
}

async fn tenant(gw: &TestGateway) -> (String, String) {
    tenant_on(gw, "metered").await
}

async fn tenant_on(gw: &TestGateway, plan: &str) -> (String, String) {
    let (t, key) = tenant_record(gw, plan).await;
    (t.id, key)
}

/// A tenant on `plan`, stored through `gw`; returns its record (to store
/// again in a Redis that lost it) and its API key.
async fn tenant_record(gw: &TestGateway, plan: &str) -> (tenants::Tenant, String) {
    let now = tenants::now_secs();
    let (mut t, creds) = tenants::new_tenant(
        "Acme",
        "dev@acme.test",
        now,
        std::time::Duration::ZERO,
        "sk_sandbox_",
    )
    .expect("tenant");
    t.plan = plan.into();
    t.expires_at = now + 7 * DAY;
    let registry = gw
        .running
        .as_ref()
        .expect("running")
        .gateway
        .registry()
        .clone();
    registry.put(&t).await.expect("store tenant");
    (t, creds.api_key)
}

const CUSTOMER: &str = "/payments/v1/customers/cus_NffrFeUfNV2Hib";

#[tokio::test]
async fn replicas_share_tenants_and_quota_counts() {
    let redis = Redis::start().await;
    let a = replica(&redis, "fail_closed").await;
    let (_, key) = tenant(&a).await;
    let c = common::client();
    for _ in 0..3 {
        let r = c
            .get(a.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    // Replica A stops (writing its counts); replica B knows the tenant and
    // its count from Redis: two of five left.
    assert!(a.shutdown().await);
    let b = replica(&redis, "fail_closed").await;
    for _ in 0..2 {
        let r = c
            .get(b.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    let r = c
        .get(b.url(CUSTOMER))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    problem(r, 429, "quota_exhausted").await;
    assert!(b.shutdown().await);
}

#[tokio::test]
async fn a_stalled_redis_is_answered_in_the_configured_mode_then_recovers() {
    for (mode, stalled_status) in [("fail_closed", 503), ("fail_open", 200)] {
        let redis = Redis::start().await;
        let gw = replica(&redis, mode).await;
        let (id, key) = tenant(&gw).await;
        let c = common::client();
        let r = c
            .get(gw.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "{mode}");
        // Forget the counts in memory, so the next decision needs Redis;
        // the caller stays identified from the gateway's caches.
        let registry = gw
            .running
            .as_ref()
            .expect("running")
            .gateway
            .registry()
            .clone();
        registry.quotas().reset(&id).await.expect("reset");
        redis.signal("STOP");
        let r = c
            .get(gw.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), stalled_status, "{mode}");
        if stalled_status == 503 {
            let p = problem(r, 503, "limits_unavailable").await;
            assert_eq!(p["rule"], "store.on_error");
            assert_eq!(p["stage"], "limit");
        }
        redis.signal("CONT");
        // Back by itself: no restart.
        let mut recovered = false;
        for _ in 0..100 {
            let r = c
                .get(gw.url(CUSTOMER))
                .bearer_auth(&key)
                .send()
                .await
                .expect("request");
            if r.status() == 200 {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(recovered, "{mode}: no recovery after SIGCONT");
        assert!(gw.shutdown().await);
    }
}

/// Sends `n` concurrent requests spread over `replicas`; returns how many
/// were answered 200 and how many 429.
async fn spread(replicas: &[TestGateway], key: &str, n: usize) -> (usize, usize) {
    let c = common::client();
    let requests = (0..n).map(|i| {
        let c = c.clone();
        let url = replicas[i % replicas.len()].url(CUSTOMER);
        let key = key.to_owned();
        tokio::spawn(async move { c.get(url).bearer_auth(key).send().await })
    });
    let (mut ok, mut limited) = (0, 0);
    for r in futures_util::future::join_all(requests).await {
        match r.expect("task").expect("request").status().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn three_replicas_admit_exactly_the_burst_and_the_quota() {
    let redis = Redis::start().await;
    let mut replicas = Vec::new();
    // Exactness, not latency: a generous timeout for a loaded test machine.
    for _ in 0..3 {
        replicas.push(replica_with(&redis, "fail_closed", "5s").await);
    }
    let (_, bursty) = tenant_on(&replicas[0], "bursty").await;
    assert_eq!(spread(&replicas, &bursty, 600).await, (10, 590));
    let (_, daily) = tenant_on(&replicas[0], "daily").await;
    assert_eq!(spread(&replicas, &daily, 300).await, (25, 275));
    // The requests per script call are a count, bucketed as one (1 to
    // 512), not in the seconds buckets of the duration histograms.
    let text = common::client()
        .get(replicas[0].admin_url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let buckets: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("sandgate_limit_batch_size_bucket{le=\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert_eq!(
        buckets,
        [
            "1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "+Inf"
        ],
        "{text}"
    );
    let calls: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sandgate_limit_batch_size_count "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a batch size count");
    assert!(calls >= 1.0, "{text}");
    for r in replicas {
        assert!(r.shutdown().await);
    }
}

#[tokio::test]
async fn a_killed_redis_is_answered_in_time_and_a_restarted_one_is_used_again() {
    let redis = Redis::start().await;
    let port: u16 = redis
        .url
        .trim_start_matches("redis://127.0.0.1:")
        .trim_end_matches("/0")
        .parse()
        .expect("port");
    let gw = replica(&redis, "fail_closed").await;
    let (_, key) = tenant_on(&gw, "daily").await;
    let c = common::client();
    let r = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    // Killed mid-use: the caller is still identified from the caches; the
    // quota decision cannot be made and is refused, promptly.
    drop(redis);
    let r = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    let p = problem(r, 503, "limits_unavailable").await;
    assert_eq!(p["stage"], "limit");
    // A new Redis on the same address: the gateway reconnects by itself.
    // (It starts empty, so the tenant is provisioned again.)
    let redis = Redis::start_on(port).await;
    let registry = gw
        .running
        .as_ref()
        .expect("running")
        .gateway
        .registry()
        .clone();
    let mut stored = false;
    for _ in 0..100 {
        if registry
            .store()
            .put("probe", b"1".to_vec(), None)
            .await
            .is_ok()
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored, "the store did not reconnect");
    let (_, key) = tenant_on(&gw, "daily").await;
    // Each worker has its own connection; the first request on one after
    // the restart may still find it broken (and starts its reconnection).
    let mut answered = Vec::new();
    for _ in 0..100 {
        let r = c
            .get(gw.url(CUSTOMER))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        answered.push(r.status().as_u16());
        if r.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        answered.last(),
        Some(&200),
        "never served again: {answered:?}"
    );
    assert!(
        answered.iter().all(|s| *s == 200 || *s == 503),
        "{answered:?}"
    );
    assert!(gw.shutdown().await);
    drop(redis);
}

#[tokio::test]
async fn three_replicas_admit_a_steady_stream_at_the_configured_rate() {
    // 100 requests/s, burst 5, decided in Redis; offered: about 1,000/s
    // spread over three replicas, for 3 s.
    let redis = Redis::start().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica_with(&redis, "fail_closed", "5s").await);
    }
    let (_, key) = tenant_on(&replicas[0], "steady").await;
    let urls = replicas.iter().map(|r| r.url(CUSTOMER)).collect();
    let load = common::Load::start(urls, &key, 4, Duration::from_millis(4));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = load.stop().await;
    assert!(
        samples.iter().all(|s| s.status == 200 || s.status == 429),
        "only 200 and 429 expected"
    );
    assert!(samples.iter().filter(|s| s.status == 429).count() > samples.len() / 2);
    let rate = common::admitted_rate(&samples, 5);
    eprintln!("admitted {rate:.2}/s of {} requests", samples.len());
    assert!(
        (rate - 100.0).abs() <= 2.0,
        "admitted {rate:.2}/s over three replicas, configured 100/s ({} requests sent)",
        samples.len()
    );
    for r in replicas {
        assert!(r.shutdown().await);
    }
}

/// What happens to Redis in [`fault_under_load`].
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGSTOP, then SIGCONT: connections stay open, nothing answers.
    Stall,
    /// SIGKILL, then a new (empty) Redis on the same port.
    Kill,
}

/// Steady load on one replica (`timeout: 300ms`); one second into it Redis
/// fails for a second, then comes back. Every answer must come within the
/// timeout (plus slack for a busy test machine), be 200 or, while Redis is
/// away and only in `fail_closed`, 503 `limits_unavailable`, and 200s must
/// return after the fault.
async fn fault_under_load(fault: Fault, mode: &str) {
    let redis = Redis::start().await;
    let port: u16 = redis
        .url
        .trim_start_matches("redis://127.0.0.1:")
        .trim_end_matches("/0")
        .parse()
        .expect("port");
    let gw = replica_with(&redis, mode, "300ms").await;
    let (tenant, key) = tenant_record(&gw, "roomy").await;
    let load = common::Load::start(vec![gw.url(CUSTOMER)], &key, 4, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault_at = load.started.elapsed();
    let redis = match fault {
        Fault::Stall => {
            redis.signal("STOP");
            tokio::time::sleep(Duration::from_secs(1)).await;
            redis.signal("CONT");
            redis
        }
        Fault::Kill => {
            drop(redis);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let redis = Redis::start_on(port).await;
            // The new Redis is empty: the provisioning system stores the
            // tenant again (the gateway's caches still know it meanwhile).
            let registry = gw
                .running
                .as_ref()
                .expect("running")
                .gateway
                .registry()
                .clone();
            let mut stored = false;
            for _ in 0..100 {
                if registry.put(&tenant).await.is_ok() {
                    stored = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(stored, "the store did not reconnect");
            redis
        }
    };
    let back_at = load.started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = load.stop().await;
    let what = format!("{fault:?} in {mode}");
    let slowest = samples.iter().map(|s| s.took).max().expect("samples");
    eprintln!(
        "{what}: {} requests, {} refused, slowest {slowest:?}",
        samples.len(),
        samples.iter().filter(|s| s.status != 200).count()
    );
    // 300 ms is the configured timeout; the rest is slack for a test
    // machine running other tests at the same time, yet less than a second
    // timeout (a decision that waited for Redis twice).
    assert!(
        slowest < Duration::from_millis(550),
        "{what}: an answer took {slowest:?}"
    );
    for s in &samples {
        // After a failure the store is not asked again for one timeout, and
        // a worker's connection may first fail once more (a broken pipe,
        // then a reconnect), so refusals may go on for a little after Redis
        // is back: never past the recovery bound checked below.
        let during = s.sent + s.took >= fault_at && s.sent <= back_at + RECOVERY;
        // `fail_open` is for limit decisions. Identifying a caller whose
        // credential is not cached cannot fail open: the test rewrites the
        // tenant when Redis is back (a killed Redis lost it), which clears
        // the identity caches, so until the workers have reconnected such a
        // request is refused `store_unavailable` in either mode.
        let identity = s.code.as_deref() == Some("store_unavailable");
        let ok =
            s.status == 200 || (s.status == 503 && during && (mode == "fail_closed" || identity));
        assert!(ok, "{what}: {s:?} (fault {fault_at:?}..{back_at:?})");
    }
    let refused = samples.iter().filter(|s| s.status == 503).count();
    if mode == "fail_closed" {
        assert!(refused > 0, "{what}: the fault was never noticed");
    }
    let recovered = samples
        .iter()
        .filter(|s| s.sent > back_at + RECOVERY)
        .collect::<Vec<_>>();
    assert!(
        !recovered.is_empty() && recovered.iter().all(|s| s.status == 200),
        "{what}: no recovery within {RECOVERY:?}"
    );
    assert!(gw.shutdown().await);
    drop(redis);
}

/// How soon after Redis is back every answer is served again: after a
/// failure the store is skipped for one timeout (300 ms here), and a
/// worker's connection may fail once more when Redis is back (a broken
/// pipe found by its next request, up to one timeout later), which starts
/// another such window: two timeouts, plus slack for a busy test machine.
const RECOVERY: Duration = Duration::from_millis(800);

#[tokio::test]
async fn redis_faults_under_load_are_answered_in_time_in_each_mode() {
    for mode in ["fail_closed", "fail_open"] {
        for fault in [Fault::Stall, Fault::Kill] {
            fault_under_load(fault, mode).await;
        }
    }
}
