use super::*;

fn load_text(text: &str) -> Result<Config, ConfigErrors> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sandgate.yaml"), text).expect("write");
    Config::load(&Source::Dir(dir.path().to_owned()))
}

fn first_error(text: &str) -> String {
    let errs = load_text(text).expect_err("config should be refused");
    let e = errs.0.first().expect("one error");
    format!("{}:{}", e.line.unwrap_or(0), e.message)
}

#[test]
fn minimal_config_gets_defaults() {
    let c = load_text("apis:\n  - name: a\n    prefix: /a\n    mode: upstream\n    upstream: { url: http://127.0.0.1:1 }\n").expect("valid");
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.limits.max_body, ByteSize::mib(1));
    assert_eq!(c.timeouts.header_read, Duration::from_secs(10));
    assert!(c.apis[0].strip_prefix);
}

#[test]
fn unknown_key_is_located() {
    let e =
        first_error("apis:\n  - name: a\n    prefix: /a\n    mode: upstream\n    upstrem: {}\n");
    assert!(e.starts_with("5:"), "{e}");
    assert!(e.contains("upstrem"), "{e}");
}

#[test]
fn wrong_type_is_located() {
    let e = first_error("limits:\n  max_headers: many\napis: []\n");
    assert!(e.starts_with("2:"), "{e}");
}

#[test]
fn duplicate_keys_are_refused() {
    let e = first_error("apis: []\napis: []\n");
    assert!(e.starts_with("2:"), "{e}");
}

#[test]
fn semantic_errors_point_at_the_line() {
    let e = first_error("apis:\n  - name: a\n    prefix: /a\n    mode: facade\n");
    assert!(e.starts_with("4:") && e.contains("contract"), "{e}");
    let e = first_error(
        "apis:\n  - name: a\n    prefix: /a\n    mode: upstream\n    upstream:\n      url: ftp://x\n",
    );
    assert!(e.starts_with("6:") && e.contains("http"), "{e}");
    let e = first_error(
        "apis:\n  - name: a\n    prefix: /a/\n    mode: upstream\n    upstream: { url: http://x }\n",
    );
    assert!(e.starts_with("3:"), "{e}");
    let e = first_error(
        "apis:\n  - name: a\n    prefix: /a\n    mode: upstream\n    upstream: { url: 'http://u:p@x' }\n",
    );
    assert!(e.contains("credentials") && !e.contains("u:p"), "{e}");
}

#[test]
fn bad_duration_and_size_are_explained() {
    let e = first_error("timeouts:\n  request: soon\napis: []\n");
    assert!(e.starts_with("2:") && e.contains("duration"), "{e}");
    let e = first_error("limits:\n  max_body: lots\napis: []\n");
    assert!(e.starts_with("2:") && e.contains("size"), "{e}");
}

#[test]
fn upstream_timeout_must_be_shorter_than_the_request_timeout() {
    let e = first_error(
        "timeouts: { request: 10s }\napis:\n  - name: a\n    prefix: /a\n    mode: upstream\n    upstream:\n      url: http://x\n      timeout: 10s\n",
    );
    assert!(e.starts_with("8:") && e.contains("shorter"), "{e}");
    let e = first_error(
        "timeouts: { request: 20s }\napis:\n  - name: a\n    prefix: /a\n    mode: upstream\n    upstream:\n      url: http://x\n",
    );
    assert!(
        e.starts_with("7:") && e.contains("25s"),
        "the default (25s) is checked too: {e}"
    );
}

#[test]
fn hosts_are_bare_names() {
    for bad in ["localhost:8080", "'[::1]'", "a/b"] {
        let e = first_error(&format!(
            "hosts: [{bad}]\napis:\n  - name: a\n    prefix: /a\n    mode: upstream\n    upstream: {{ url: http://x }}\n"
        ));
        assert!(e.contains("bare host name"), "{bad}: {e}");
    }
    assert!(load_text("hosts: [localhost, '::1', 10.0.0.1]\napis:\n  - name: a\n    prefix: /a\n    mode: upstream\n    upstream: { url: http://x }\n").is_ok());
}
