//! The real `sandgate` binary: `check` on good and broken sandbox
//! directories (exit codes and `file:line: message` output), and `serve`
//! with its printed addresses, admin endpoints, the bundled demo, graceful
//! shutdown on SIGTERM with a request in flight, and SIGHUP reloads (a
//! broken configuration is refused and the running one keeps serving).
//!
//! Every child process is owned by a guard that kills it on drop, so a
//! failing assertion never leaves a gateway behind.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{PAYMENTS, Pki, TestUpstream, payments_config, problem, sandbox_dir, write_files};
use http_body_util::{BodyExt, Full};
use tokio::sync::{Notify, mpsc};

const BIN: &str = env!("CARGO_BIN_EXE_sandgate");

/// How long a started process may take to print its addresses.
const STARTUP: Duration = Duration::from_secs(20);

/// Polling: at most `POLLS` tries, `POLL_EVERY` apart.
const POLLS: u32 = 200;
const POLL_EVERY: Duration = Duration::from_millis(50);

/// The one operation every version of the demo contract has.
const CUSTOMER: &str = "/payments/v1/customers/cus_NffrFeUfNV2Hib";

// ---------------------------------------------------------------- check

/// Runs `sandgate check --config dir`: (exit code, stdout, stderr).
fn check(dir: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir)
        .output()
        .expect("run sandgate check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A contract with one operation, for the broken-config table.
const CONTRACT: &str = "openapi: 3.0.3\ninfo: { title: T, version: \"1\" }\npaths:\n  /v1/customers/{customer}:\n    get: { responses: { \"200\": { description: ok, content: { application/json: { example: { id: cus_1 } } } } } }\n";

/// The head of a valid sandgate.yaml (lines 1–7) with one facade API whose
/// contract key is on line 7; cases append their broken lines from line 8.
const HEAD: &str = "listeners:\n  - addr: 127.0.0.1:0\napis:\n  - name: p\n    prefix: /p\n    mode: facade\n    contract: contracts/c.yaml\n";

/// Asserts every stdout line has the `file:line: message` shape.
fn assert_located(stdout: &str) {
    for line in stdout.lines() {
        let (loc, msg) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("not `file:line: message`: {line}"));
        let (_, num) = loc
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("no line number: {line}"));
        assert!(
            num.parse::<u64>().is_ok_and(|n| n > 0),
            "no line number: {line}"
        );
        assert!(!msg.trim().is_empty(), "no message: {line}");
    }
}

#[test]
fn check_accepts_a_good_sandbox_and_the_repository_demo() {
    let dir = sandbox_dir(&[
        ("sandgate.yaml", &payments_config("")),
        ("contracts/payments.yaml", PAYMENTS),
    ]);
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("ok: 1 API(s)"), "{stdout}");

    let (code, stdout, stderr) = check(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert_eq!(code, Some(0), "the repository's demo: {stdout}{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
}

/// One broken sandbox: (case, sandgate.yaml, extra files, file the problem
/// is in, its line, a fragment of the message).
type BrokenCase<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    &'a str,
    u64,
    &'a str,
);

#[test]
fn check_reports_broken_sandboxes_as_file_line_message() {
    let pki = Pki::new();
    // (case, sandgate.yaml, extra files, file the problem is in, line, fragment)
    let cases: Vec<BrokenCase<'_>> = vec![
        (
            "unknown key",
            format!("{HEAD}    prefx: /q\n"),
            vec![],
            "sandgate.yaml",
            8,
            "unknown field `prefx`",
        ),
        (
            "wrong type",
            format!("{HEAD}limits:\n  max_headers: lots\n"),
            vec![],
            "sandgate.yaml",
            9,
            "invalid",
        ),
        (
            "duplicate key",
            format!("{HEAD}hosts: [a]\nhosts: [b]\n"),
            vec![],
            "sandgate.yaml",
            9,
            "duplicate",
        ),
        (
            "missing contract file",
            HEAD.replace("contracts/c.yaml", "contracts/nope.yaml"),
            vec![],
            "sandgate.yaml",
            7,
            "does not exist",
        ),
        (
            "bad upstream url",
            format!(
                "{HEAD}  - name: up\n    prefix: /up\n    mode: upstream\n    upstream:\n      url: \"ftp://example.com\"\n"
            ),
            vec![],
            "sandgate.yaml",
            12,
            "http://",
        ),
        (
            "client_auth without client_ca",
            "listeners:\n  - addr: 127.0.0.1:0\n    tls:\n      cert: certs/s.pem\n      key: certs/s.key\n      client_auth: required\napis:\n  - name: p\n    prefix: /p\n    mode: facade\n    contract: contracts/c.yaml\n".to_owned(),
            vec![
                ("certs/s.pem", pki.server_cert.as_str()),
                ("certs/s.key", pki.server_key.as_str()),
            ],
            "sandgate.yaml",
            6,
            "client_ca",
        ),
        (
            "fixture body the contract does not allow",
            format!("{HEAD}    fixtures: fx\n"),
            vec![
                ("contracts/c.yaml", PAYMENTS),
                (
                    "fx/bad.yaml",
                    "fixtures:\n  - name: wrong\n    method: GET\n    path: /v1/customers/cus_1\n    response:\n      status: 200\n      body: { id: 42, object: customer, created: 1, email: null, name: null, description: null, phone: null, metadata: {}, livemode: maybe }\n",
                ),
            ],
            "fx/bad.yaml",
            6,
            "at /id: 42 is not of type \"string\"; at /livemode:",
        ),
        (
            "contract with a YAML syntax error",
            HEAD.to_owned(),
            vec![(
                "contracts/c.yaml",
                "openapi: 3.0.3\ninfo: { title: T, version: \"1\" }\npaths:\n  /v1/x:\n    get: { responses: [1, 2]\n",
            )],
            "contracts/c.yaml",
            5,
            "",
        ),
    ];
    for (case, yaml, extra, file, line, fragment) in cases {
        let dir = sandbox_dir(&[("sandgate.yaml", &yaml)]);
        write_files(dir.path(), &[("contracts/c.yaml", CONTRACT)]);
        write_files(dir.path(), &extra);
        let (code, stdout, stderr) = check(dir.path());
        assert_eq!(code, Some(1), "{case}: exit code\n{stdout}{stderr}");
        assert_located(&stdout);
        let at = format!("{}:{line}: ", dir.path().join(file).display());
        let hit = stdout
            .lines()
            .find(|l| l.starts_with(&at))
            .unwrap_or_else(|| panic!("{case}: no line starting with `{at}` in:\n{stdout}"));
        assert!(
            hit.contains(fragment),
            "{case}: `{fragment}` not in `{hit}`"
        );
        assert!(stderr.contains("problem(s) found"), "{case}: {stderr}");
    }
}

#[test]
fn check_reports_every_problem_at_once() {
    let yaml = format!(
        "{HEAD}  - name: up\n    prefix: /up\n    mode: upstream\n    upstream:\n      url: \"ftp://example.com\"\n  - name: q\n    prefix: /q\n    mode: facade\n    contract: contracts/nope.yaml\n"
    );
    let dir = sandbox_dir(&[("sandgate.yaml", &yaml), ("contracts/c.yaml", CONTRACT)]);
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_located(&stdout);
    let file = dir.path().join("sandgate.yaml");
    for at in [
        format!("{}:12: ", file.display()),
        format!("{}:16: ", file.display()),
    ] {
        assert!(stdout.contains(&at), "no `{at}` in:\n{stdout}");
    }
    assert!(stderr.contains("2 problem(s) found"), "{stderr}");
}

#[test]
fn check_reports_an_unsupported_contract_version() {
    let dir = sandbox_dir(&[
        ("sandgate.yaml", HEAD),
        (
            "contracts/c.yaml",
            "swagger: \"2.0\"\ninfo: { title: T, version: \"1\" }\npaths: {}\n",
        ),
    ]);
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let at = format!("{}: ", dir.path().join("contracts/c.yaml").display());
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&at) && l.contains("OpenAPI")),
        "{stdout}"
    );
}

// ---------------------------------------------------------------- serve

/// A `sandgate serve` child process. Killed (and reaped) on drop.
struct Gateway {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    public: SocketAddr,
    admin: SocketAddr,
    /// Stdout lines read while looking for the addresses.
    printed: Vec<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts `sandgate serve` with `args` on 127.0.0.1:0 and waits for
    /// both `listening` lines.
    async fn start(args: &[&str]) -> Gateway {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("SANDGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sandgate serve");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock()
                    .expect("stderr lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut gw = Gateway {
            child,
            lines,
            stderr,
            public: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            printed: Vec::new(),
        };
        let public = gw.line_starting("listening public http://").await;
        gw.public = parse_addr(&public, "listening public http://");
        let admin = gw.line_starting("listening admin http://").await;
        gw.admin = parse_addr(&admin, "listening admin http://");
        gw
    }

    /// Waits (bounded) for the next stdout line starting with `prefix`.
    async fn line_starting(&mut self, prefix: &str) -> String {
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.printed.push(line.clone());
                    if line.trim_start().starts_with(prefix) {
                        return line.trim_start().to_owned();
                    }
                }
                Ok(None) => panic!(
                    "stdout closed before `{prefix}`; printed {:?}; stderr:\n{}",
                    self.printed,
                    self.stderr()
                ),
                Err(_) => panic!(
                    "no `{prefix}` line within {STARTUP:?}; printed {:?}; stderr:\n{}",
                    self.printed,
                    self.stderr()
                ),
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Sends a signal with the `kill` command.
    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Waits (bounded polling) for the process to exit.
    async fn exit_status(&mut self) -> ExitStatus {
        for _ in 0..POLLS {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        panic!("the gateway did not exit; stderr:\n{}", self.stderr());
    }

    /// The admin `/metrics` text.
    async fn metrics(&self) -> String {
        common::client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

/// `ADDR` from `<prefix>ADDR[ anything]`.
fn parse_addr(line: &str, prefix: &str) -> SocketAddr {
    line.strip_prefix(prefix)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in `{line}`"))
}

fn payments_dir(extra_apis: &str) -> tempfile::TempDir {
    sandbox_dir(&[
        ("sandgate.yaml", &payments_config(extra_apis)),
        ("contracts/payments.yaml", PAYMENTS),
    ])
}

fn dir_arg(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().expect("utf-8 temp path")
}

#[tokio::test]
async fn serve_prints_addresses_and_answers_on_both_listeners() {
    let dir = payments_dir("");
    let mut gw = Gateway::start(&["--config", dir_arg(&dir)]).await;
    assert!(gw.public.ip().is_loopback() && gw.public.port() != 0);
    assert!(gw.admin.ip().is_loopback() && gw.admin.port() != 0);
    assert_ne!(gw.public, gw.admin);
    let c = common::client();

    let resp = c.get(gw.url(CUSTOMER)).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert!(body.is_object(), "{body}");

    for path in ["/healthz", "/readyz"] {
        let resp = c.get(gw.admin_url(path)).send().await.expect(path);
        assert_eq!(resp.status(), 200, "{path}");
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("sandgate_requests_total"),
        "no request counter in:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sandgate_requests_total")
                && l.contains("api=\"payments\"")
                && l.contains("status_class=\"2xx\"")
                && !l.ends_with(" 0")),
        "the 200 was not counted:\n{metrics}"
    );

    // The admin endpoints are not reachable from the public listener.
    let resp = c.get(gw.url("/metrics")).send().await.expect("request");
    problem(resp, 404, "unknown_api").await;

    gw.signal("-TERM");
    assert!(gw.exit_status().await.success(), "{}", gw.stderr());
}

#[tokio::test]
async fn serve_without_config_runs_the_demo_and_prints_working_curl_lines() {
    let mut gw = Gateway::start(&[]).await;
    // `curl -s -H 'Authorization: Bearer <key>' <url>`
    let curl = gw.line_starting("curl -s -H ").await;
    let rest = curl.strip_prefix("curl -s -H '").expect("curl prefix");
    let (header, url) = rest.split_once("' ").expect("quoted header, then the URL");
    let key = header
        .strip_prefix("Authorization: Bearer ")
        .expect("a Bearer header");
    assert!(key.starts_with("sk_sandbox_"), "{key}");
    assert_eq!(
        url.trim(),
        gw.url(CUSTOMER),
        "the curl line names the public listener"
    );
    let c = common::client();
    let resp = c
        .get(url.trim())
        .header("authorization", format!("Bearer {key}"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(body["object"], "customer", "{body}");
    // Without the key, the demo says what it accepts and where to get a token.
    let resp = c.get(url.trim()).send().await.expect("request");
    let p = problem(resp, 401, "missing_credentials").await;
    assert!(
        p["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("/oauth/token"),
        "{p}"
    );

    // `curl -s -u '<id>:<secret>' -d grant_type=client_credentials <url>/oauth/token`
    let curl = gw.line_starting("curl -s -u ").await;
    let rest = curl.strip_prefix("curl -s -u '").expect("curl prefix");
    let (user, rest) = rest.split_once("' ").expect("quoted credentials");
    let (id, secret) = user.split_once(':').expect("id:secret");
    let token_url = rest
        .strip_prefix("-d grant_type=client_credentials ")
        .expect("the grant")
        .trim();
    assert_eq!(token_url, gw.url("/oauth/token"));
    let resp = c
        .post(token_url)
        .basic_auth(id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 200);
    let token: serde_json::Value = resp.json().await.expect("JSON");
    let access = token["access_token"].as_str().expect("access_token");
    let resp = c
        .get(gw.url(CUSTOMER))
        .bearer_auth(access)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "the issued token is accepted");

    gw.signal("-INT");
    assert!(gw.exit_status().await.success(), "{}", gw.stderr());
}

#[tokio::test]
async fn serve_with_a_broken_config_exits_1_with_located_errors() {
    let dir = sandbox_dir(&[("sandgate.yaml", &format!("{HEAD}    prefx: /q\n"))]);
    let out = Command::new(BIN)
        .args(["serve", "--config", dir_arg(&dir)])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .expect("run sandgate serve");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = format!("{}:8: ", dir.path().join("sandgate.yaml").display());
    assert!(stderr.contains(&at), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "nothing may be served"
    );
}

/// An upstream whose answers wait for `release`; `arrived` gets a message
/// as each request reaches it.
async fn held_upstream() -> (TestUpstream, Arc<Notify>, mpsc::UnboundedReceiver<()>) {
    let release = Arc::new(Notify::new());
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let r = release.clone();
    let up = TestUpstream::start(move |_parts, _body| {
        let release = r.clone();
        let arrived = arrived_tx.clone();
        async move {
            let _ = arrived.send(());
            release.notified().await;
            let mut resp =
                http::Response::new(Full::new(Bytes::from_static(b"{\"held\":true}")).boxed());
            resp.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
    })
    .await;
    (up, release, arrived)
}

#[tokio::test]
async fn sigterm_drains_the_in_flight_request_and_exits_0() {
    let (up, release, mut arrived) = held_upstream().await;
    let dir = payments_dir(&format!(
        "  - name: slow\n    prefix: /slow\n    mode: upstream\n    upstream: {{ url: \"http://{}\" }}\n",
        up.addr
    ));
    let mut gw = Gateway::start(&["--config", dir_arg(&dir)]).await;

    let in_flight = tokio::spawn({
        let url = gw.url("/slow/v1/thing");
        async move {
            let resp = common::client().get(url).send().await?;
            let status = resp.status();
            let body = resp.text().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
    });
    tokio::time::timeout(STARTUP, arrived.recv())
        .await
        .expect("the request reached the upstream in time")
        .expect("upstream alive");

    gw.signal("-TERM");

    // Draining: readiness turns 503 while the admin listener keeps answering.
    let admin = common::client();
    let mut draining = false;
    for _ in 0..POLLS {
        let resp = admin.get(gw.admin_url("/readyz")).send().await;
        if resp.is_ok_and(|r| r.status() == 503) {
            draining = true;
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(draining, "/readyz never said 503; stderr:\n{}", gw.stderr());

    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..POLLS {
        if tokio::net::TcpStream::connect(gw.public).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(
        refused,
        "the public listener still accepts during the drain"
    );
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended before the upstream answered"
    );

    release.notify_one();
    let (status, body) = tokio::time::timeout(STARTUP, in_flight)
        .await
        .expect("the in-flight request completed in time")
        .expect("task")
        .expect("the in-flight request succeeded");
    assert_eq!(status, 200);
    assert_eq!(body, "{\"held\":true}");

    let status = gw.exit_status().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", gw.stderr());
    assert_eq!(
        up.seen().len(),
        1,
        "exactly the one request reached the upstream"
    );
}

#[tokio::test]
async fn sighup_refuses_a_broken_config_and_applies_a_valid_one() {
    let dir = payments_dir("");
    let mut gw = Gateway::start(&["--config", dir_arg(&dir)]).await;
    let c = common::client();
    let billing = gw.url("/billing/v1/customers/cus_1");

    assert_eq!(
        c.get(gw.url(CUSTOMER))
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
    problem(
        c.get(&billing).send().await.expect("request"),
        404,
        "unknown_api",
    )
    .await;

    // A broken configuration is refused; the running one keeps serving.
    write_files(
        dir.path(),
        &[("sandgate.yaml", "apis: [\n  - name: broken\n")],
    );
    gw.signal("-HUP");
    let mut refused = false;
    for _ in 0..POLLS {
        if gw
            .metrics()
            .await
            .contains("sandgate_config_reloads_total{outcome=\"refused\"}")
        {
            refused = true;
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(
        refused,
        "the broken reload was not reported; stderr:\n{}",
        gw.stderr()
    );
    // The log line is read from the child's stderr by another thread: poll.
    let mut logged = false;
    for _ in 0..POLLS {
        if gw.stderr().contains("sandgate.yaml:") {
            logged = true;
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(
        logged,
        "the refused reload's errors are logged with their location:\n{}",
        gw.stderr()
    );
    assert_eq!(
        c.get(gw.url(CUSTOMER))
            .send()
            .await
            .expect("request")
            .status(),
        200,
        "the old configuration still serves"
    );
    assert_eq!(
        c.get(gw.admin_url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );

    // A valid configuration with a second API is applied.
    write_files(
        dir.path(),
        &[(
            "sandgate.yaml",
            &payments_config(
                "  - name: billing\n    prefix: /billing\n    contract: contracts/payments.yaml\n    mode: facade\n",
            ),
        )],
    );
    gw.signal("-HUP");
    let mut served = false;
    for _ in 0..POLLS {
        let resp = c.get(&billing).send().await.expect("request");
        if resp.status() == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(
        served,
        "the new API was never served; stderr:\n{}",
        gw.stderr()
    );
    assert!(
        gw.metrics()
            .await
            .contains("sandgate_config_reloads_total{outcome=\"applied\"}")
    );
    assert_eq!(
        c.get(gw.url(CUSTOMER))
            .send()
            .await
            .expect("request")
            .status(),
        200,
        "the first API is still served"
    );

    gw.signal("-TERM");
    assert_eq!(gw.exit_status().await.code(), Some(0), "{}", gw.stderr());
}

// ---------------------------------------------------------------- access log

#[tokio::test]
async fn the_access_log_is_one_json_line_per_request_without_secrets() {
    let upstream = TestUpstream::echo().await;
    let config = format!(
        "listeners:\n  - addr: 127.0.0.1:0\nadmin: {{ token_env: CARGO_PKG_NAME }}\nauth:\n  api_keys: {{ prefix: sk_sandbox_, live_prefixes: [sk_live_] }}\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n  - name: echo\n    prefix: /echo\n    mode: upstream\n    upstream: {{ url: \"http://{}\" }}\n    dry_run: forward\n",
        upstream.addr
    );
    let dir = sandbox_dir(&[
        ("sandgate.yaml", &config),
        ("contracts/payments.yaml", PAYMENTS),
    ]);
    let gw = Gateway::start(&["--config", dir_arg(&dir), "--log-format", "json"]).await;
    let c = common::client();
    let created: serde_json::Value = c
        .post(gw.admin_url("/internal/sandboxes"))
        .bearer_auth(env!("CARGO_PKG_NAME"))
        .json(&serde_json::json!({"prospect_company": "Acme", "prospect_email": "dev@acme.test"}))
        .send()
        .await
        .expect("provision")
        .json()
        .await
        .expect("JSON");
    let key = created["credentials"]["api_key"]
        .as_str()
        .expect("api key")
        .to_owned();
    let tenant = created["sandbox_id"]
        .as_str()
        .expect("tenant id")
        .to_owned();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";

    // Served by the backend, as a dry run, with the caller's trace.
    let resp = c
        .post(gw.url("/echo/orders"))
        .bearer_auth(&key)
        .header("x-request-id", "req-upstream-1")
        .header("x-dry-run", "true")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    // Refused by validation, with a card number in the body.
    let resp = c
        .post(gw.url("/payments/v1/payment_intents"))
        .bearer_auth(&key)
        .header("x-request-id", "req-refused-1")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=oops&card[number]=4000000000000002")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);

    // The lines are written as the requests complete; wait for both.
    let mut lines = Vec::new();
    for _ in 0..POLLS {
        lines = gw
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "sandgate::access")
            .collect::<Vec<_>>();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let line = |id: &str| {
        let found: Vec<&serde_json::Value> =
            lines.iter().filter(|l| l["request_id"] == id).collect();
        assert_eq!(found.len(), 1, "one line for {id} in {lines:?}");
        found[0].clone()
    };
    let up = line("req-upstream-1");
    assert_eq!(up["tenant"], tenant.as_str(), "{up}");
    assert_eq!(up["api"], "echo", "{up}");
    assert_eq!(up["mode"], "upstream", "{up}");
    assert_eq!(up["source"], "upstream", "{up}");
    assert_eq!(up["status"], 200, "{up}");
    assert_eq!(up["dry_run"], true, "{up}");
    assert_eq!(up["trace_id"], trace, "{up}");
    assert!(up["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{up}");
    let upstream_ms = up["upstream_latency_ms"]
        .as_f64()
        .expect("upstream latency");
    assert!(
        upstream_ms > 0.0 && upstream_ms <= up["latency_ms"].as_f64().unwrap_or(0.0),
        "{up}"
    );
    assert!(
        up.get("code").is_none_or(serde_json::Value::is_null),
        "{up}"
    );

    let refused = line("req-refused-1");
    assert_eq!(refused["api"], "payments", "{refused}");
    assert_eq!(refused["operation"], "createPaymentIntent", "{refused}");
    assert_eq!(refused["mode"], "facade", "{refused}");
    assert_eq!(refused["status"], 400, "{refused}");
    assert_eq!(refused["code"], "invalid_request", "{refused}");
    assert_eq!(refused["dry_run"], false, "{refused}");
    assert!(
        refused["trace_id"]
            .as_str()
            .is_some_and(|t| t.len() == 32 && t != trace),
        "{refused}"
    );

    let all = gw.stderr();
    assert!(!all.contains(&key), "the API key is in the log");
    assert!(
        !all.contains("4000000000000002"),
        "a card number is in the log"
    );
}
