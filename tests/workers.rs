//! Worker threads: with `pin_workers: true` each worker is bound to one of
//! the CPUs the process may run on (round robin) and still serves every
//! connection sent its way; without it the scheduler places them.

mod common;

use std::collections::BTreeSet;

use common::{payments_config, sandbox_dir, start_gateway};

const PAYMENTS: &str = include_str!("../contracts/payments.yaml");

/// CPUs in a `Cpus_allowed_list` value such as `0-3,6`.
fn cpu_list(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
                out.extend(a..=b);
            }
            None => out.push(part.parse().expect("cpu")),
        }
    }
    out
}

/// The CPUs a thread (or, with `self`, the process's main thread) may run on.
fn allowed(task: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{task}/status"))
        .or_else(|_| std::fs::read_to_string("/proc/self/status"))
        .expect("status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list");
    cpu_list(line)
}

/// Ids of this process's threads named like the gateway's workers.
fn worker_threads() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|e| {
            let id = e.ok()?.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/self/task/{id}/comm")).ok()?;
            comm.starts_with("sandgate-worke").then_some(id)
        })
        .collect()
}

/// The gateway's new worker threads (not in `before`), once all `n` have
/// started (a thread names itself, and binds itself, as it starts).
async fn new_workers(before: &BTreeSet<String>, n: usize, pinned: bool) -> BTreeSet<String> {
    let started = std::time::Instant::now();
    loop {
        let now: BTreeSet<String> = worker_threads().difference(before).cloned().collect();
        if now.len() == n && (!pinned || now.iter().all(|t| allowed(t).len() == 1)) {
            return now;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{n} workers never started: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn all_answer(gw: &common::TestGateway) {
    // Several connections, so that every worker is likely to get some.
    for _ in 0..8 {
        let c = common::client();
        for _ in 0..3 {
            let r = c
                .get(gw.url("/payments/v1/customers/cus_1"))
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), 200);
        }
    }
}

#[tokio::test]
async fn pinned_workers_are_bound_one_cpu_each_and_serve() {
    let process = allowed("self");
    let before = worker_threads();

    // Not pinned: the workers may run wherever the process may.
    let config = format!("workers: 3\n{}", payments_config(""));
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await;
    let free = new_workers(&before, 3, false).await;
    for t in &free {
        assert_eq!(allowed(t), process, "an unpinned worker");
    }
    all_answer(&gw).await;
    assert!(gw.shutdown().await);

    // Pinned: three workers on the process's CPUs, round robin.
    let before = worker_threads();
    let config = format!("workers: 3\npin_workers: true\n{}", payments_config(""));
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
    ]))
    .await;
    let pinned = new_workers(&before, 3, true).await;
    let mut got: Vec<usize> = pinned
        .iter()
        .map(|t| {
            let cpus = allowed(t);
            assert_eq!(cpus.len(), 1, "a pinned worker has one CPU: {cpus:?}");
            cpus[0]
        })
        .collect();
    got.sort_unstable();
    let mut want: Vec<usize> = (0..3).map(|i| process[i % process.len()]).collect();
    want.sort_unstable();
    assert_eq!(got, want, "worker i on the i-th CPU of {process:?}");
    all_answer(&gw).await;
    assert!(gw.shutdown().await);
}
