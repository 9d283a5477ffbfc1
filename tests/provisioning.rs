//! The provisioning API over real HTTP against the real binary: the whole
//! sandbox lifecycle, the service token, validation, capacity, and that
//! tenants survive a `kill -9` of a gateway on the file store.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{PAYMENTS, payments_config, problem, sandbox_dir};
use serde_json::{Value, json};

const TOKEN: &str = "test-service-token-0123456789";

/// A gateway process, killed on drop.
struct Proc {
    child: Child,
    admin: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `sandgate serve` on `dir` (token in the environment unless
    /// `token` is None) and waits for its printed admin address.
    fn start(dir: &Path, token: Option<&str>) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandgate"));
        cmd.args(["serve", "--config"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("SANDGATE_LOG", "warn")
            .env_remove("SANDGATE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(t) = token {
            cmd.env("SANDGATE_ADMIN_TOKEN", t);
        }
        let mut child = cmd.spawn().expect("spawn sandgate");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("listening admin http://") {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let admin = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the gateway printed its admin address")
            .parse()
            .expect("admin address");
        Proc { child, admin }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

fn config(extra: &str) -> String {
    format!(
        "{}store:\n  kind: file\n  path: data/sandgate.redb\n{extra}",
        payments_config("")
    )
}

fn client() -> reqwest::Client {
    common::client()
}

async fn create(p: &Proc, body: Value) -> reqwest::Response {
    client()
        .post(p.url("/internal/sandboxes"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn the_whole_lifecycle() {
    let dir = sandbox_dir(&[
        (
            "sandgate.yaml",
            &config(
                "tenants:\n  max_active_sandboxes: 2\nauth:\n  builtin_issuer:\n    signing_key: keys/issuer.pem\n",
            ),
        ),
        ("contracts/payments.yaml", PAYMENTS),
    ]);
    let p = Proc::start(dir.path(), Some(TOKEN));
    let c = client();

    // Create: 201, credentials shown once, 14 days by default.
    let resp = create(&p, json!({"prospect_company": "Acme", "prospect_email": "dev@acme.test", "deal_id": "D-1", "industry": "fintech"})).await;
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let created: Value = resp.json().await.expect("json");
    let id = created["sandbox_id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("sbx_"), "{created}");
    assert_eq!(location, format!("/internal/sandboxes/{id}/status"));
    assert_eq!(created["status"], "ready");
    let key = created["credentials"]["api_key"].as_str().expect("api key");
    assert!(key.starts_with("sk_sandbox_") && key.len() > 60, "{key}");
    assert!(
        created["credentials"]["client_secret"]
            .as_str()
            .is_some_and(|s| s.len() == 64)
    );
    assert!(
        created["credentials"]["token_url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/oauth/token"))
    );

    // Status and list.
    let st: Value = c
        .get(p.url(&location))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(st["status"], "active");
    assert_eq!(st["days_remaining"], 14);
    assert_eq!(st["deal_id"], "D-1");
    let all: Value = c
        .get(p.url("/internal/sandboxes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(all["sandboxes"].as_array().map(Vec::len), Some(1));
    assert!(
        !all.to_string().contains(key),
        "a secret is never shown again"
    );

    // Extend within 30 days, then past it.
    let ext = c
        .post(p.url(&format!("/internal/sandboxes/{id}/extend")))
        .bearer_auth(TOKEN)
        .json(&json!({"additional_days": 7}))
        .send()
        .await
        .expect("extend");
    assert_eq!(ext.status(), 200);
    assert_eq!(
        ext.json::<Value>().await.expect("json")["days_remaining"],
        21
    );
    let body = problem(
        c.post(p.url(&format!("/internal/sandboxes/{id}/extend")))
            .bearer_auth(TOKEN)
            .json(&json!({"additional_days": 10}))
            .send()
            .await
            .expect("extend"),
        422,
        "extension_limit",
    )
    .await;
    assert_eq!(body["rule"], "tenants.max_lifetime_days");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("latest possible expiry")),
        "{body}"
    );

    // Capacity: two active at most.
    assert_eq!(
        create(
            &p,
            json!({"prospect_company": "Beta", "prospect_email": "b@beta.test"})
        )
        .await
        .status(),
        201
    );
    problem(
        create(
            &p,
            json!({"prospect_company": "Gamma", "prospect_email": "g@gamma.test"}),
        )
        .await,
        429,
        "capacity_reached",
    )
    .await;

    // Reset keeps the sandbox; delete deactivates it and frees a slot.
    let reset = c
        .post(p.url(&format!("/internal/sandboxes/{id}/reset")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("reset");
    assert_eq!(reset.status(), 200);
    let del: Value = c
        .delete(p.url(&format!("/internal/sandboxes/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("delete")
        .json()
        .await
        .expect("json");
    assert_eq!(del["status"], "deactivated");
    assert_eq!(del["archived"], true);
    problem(
        c.post(p.url(&format!("/internal/sandboxes/{id}/extend")))
            .bearer_auth(TOKEN)
            .json(&json!({"additional_days": 1}))
            .send()
            .await
            .expect("extend"),
        409,
        "sandbox_deactivated",
    )
    .await;
    assert_eq!(
        create(
            &p,
            json!({"prospect_company": "Gamma", "prospect_email": "g@gamma.test"})
        )
        .await
        .status(),
        201
    );
}

#[tokio::test]
async fn refusals_are_explained() {
    let dir = sandbox_dir(&[
        ("sandgate.yaml", &config("")),
        ("contracts/payments.yaml", PAYMENTS),
    ]);
    let p = Proc::start(dir.path(), Some(TOKEN));
    let c = client();
    let url = p.url("/internal/sandboxes");

    let r = c.get(&url).send().await.expect("request");
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or("")),
        Some("Bearer")
    );
    problem(r, 401, "unauthorized").await;
    let body = problem(
        c.get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .expect("request"),
        401,
        "unauthorized",
    )
    .await;
    assert!(!body.to_string().contains(TOKEN));

    let body = problem(
        c.post(&url)
            .bearer_auth(TOKEN)
            .json(&json!({"prospect_company": "A"}))
            .send()
            .await
            .expect("request"),
        400,
        "invalid_body",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("prospect_email")),
        "{body}"
    );
    let body = problem(
        c.post(&url).bearer_auth(TOKEN).json(&json!({"prospect_company": "", "prospect_email": "nope", "expiry_days": 99, "features_enabled": ["payments", "ledger"]})).send().await.expect("request"),
        400,
        "invalid_body",
    )
    .await;
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert_eq!(
        pointers,
        [
            "/prospect_company",
            "/prospect_email",
            "/expiry_days",
            "/features_enabled/1"
        ],
        "{body}"
    );
    let body = problem(
        c.post(&url)
            .bearer_auth(TOKEN)
            .json(&json!({"prospect_company": "A", "prospect_email": "a@a.test", "colour": "red"}))
            .send()
            .await
            .expect("request"),
        400,
        "invalid_body",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("colour")),
        "{body}"
    );

    problem(
        c.get(p.url("/internal/sandboxes/sbx_nope/status"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request"),
        404,
        "sandbox_not_found",
    )
    .await;
}

#[tokio::test]
async fn without_a_token_the_api_is_disabled() {
    let dir = sandbox_dir(&[
        ("sandgate.yaml", &config("")),
        ("contracts/payments.yaml", PAYMENTS),
    ]);
    let p = Proc::start(dir.path(), None);
    let body = problem(
        client()
            .get(p.url("/internal/sandboxes"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request"),
        503,
        "admin_token_unset",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("SANDGATE_ADMIN_TOKEN")),
        "{body}"
    );
}

#[tokio::test]
async fn tenants_survive_kill_9_on_the_file_store() {
    let dir = sandbox_dir(&[
        ("sandgate.yaml", &config("")),
        ("contracts/payments.yaml", PAYMENTS),
    ]);
    let id = {
        let mut p = Proc::start(dir.path(), Some(TOKEN));
        let created: Value = create(
            &p,
            json!({"prospect_company": "Acme", "prospect_email": "dev@acme.test"}),
        )
        .await
        .json()
        .await
        .expect("json");
        // SIGKILL: no chance to flush anything that was not already durable.
        p.child.kill().expect("kill -9");
        let _ = p.child.wait();
        created["sandbox_id"].as_str().expect("id").to_owned()
    };
    let p = Proc::start(dir.path(), Some(TOKEN));
    let st: Value = client()
        .get(p.url(&format!("/internal/sandboxes/{id}/status")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(st["sandbox_id"], id.as_str());
    assert_eq!(st["status"], "active");
    assert_eq!(st["prospect_company"], "Acme");
}
