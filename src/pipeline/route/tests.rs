use super::*;
use crate::config::Source;
use crate::sandbox::Overrides;

const CONFIG: &str = r#"
hosts: [api.sandbox.example.com, localhost]
apis:
  - name: pets
    prefix: /pets
    contract: pets.yaml
    mode: facade
  - name: pets-admin
    prefix: /pets/admin
    mode: upstream
    upstream: { url: "http://127.0.0.1:9" }
  - name: raw
    prefix: /raw
    mode: upstream
    strip_prefix: false
    upstream: { url: "http://127.0.0.1:9/base" }
"#;

const PETS: &str = r#"
openapi: 3.0.3
info: { title: Pets, version: "1" }
paths:
  /v1/pets:
    get: { operationId: listPets, responses: { "200": { description: ok } } }
  /v1/pets/{pet}:
    get: { operationId: getPet, responses: { "200": { description: ok } } }
    delete: { operationId: deletePet, responses: { "204": { description: ok } } }
"#;

static FILES: &[(&str, &str)] = &[("sandgate.yaml", CONFIG), ("pets.yaml", PETS)];

fn sandbox() -> Sandbox {
    Sandbox::load(&Source::Embedded(FILES), &Overrides::default()).expect("sandbox loads")
}

fn req(method: &str, host: &str, path: &str) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(())
        .expect("request")
}

/// (method, host, path) → Ok((api, operation, path seen by the API)) or Err(code).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Result<(&'static str, Option<&'static str>, &'static str), &'static str>,
);

#[test]
fn route_table() {
    let sb = sandbox();
    let table: &[Case] = &[
        (
            "GET",
            "localhost:8080",
            "/pets/v1/pets",
            Ok(("pets", Some("listPets"), "/v1/pets")),
        ),
        (
            "GET",
            "API.SANDBOX.EXAMPLE.COM",
            "/pets/v1/pets/p_1",
            Ok(("pets", Some("getPet"), "/v1/pets/p_1")),
        ),
        (
            "HEAD",
            "localhost",
            "/pets/v1/pets/p_1",
            Ok(("pets", Some("getPet"), "/v1/pets/p_1")),
        ),
        (
            "POST",
            "localhost",
            "/pets/admin/anything",
            Ok(("pets-admin", None, "/anything")),
        ),
        (
            "GET",
            "localhost",
            "/pets/admin",
            Ok(("pets-admin", None, "/")),
        ),
        ("GET", "localhost", "/raw/x", Ok(("raw", None, "/raw/x"))),
        (
            "GET",
            "evil.example.com",
            "/pets/v1/pets",
            Err("misdirected_host"),
        ),
        ("GET", "localhost", "/petsx/v1/pets", Err("unknown_api")),
        ("GET", "localhost", "/", Err("unknown_api")),
        (
            "GET",
            "localhost",
            "/pets/v1/petz",
            Err("unknown_operation"),
        ),
        (
            "PUT",
            "localhost",
            "/pets/v1/pets/p_1",
            Err("method_not_allowed"),
        ),
    ];
    for (method, host, path, expect) in table {
        let r = req(method, host, path);
        let got = route(&sb, &r).map(|routed| {
            let op = routed.operation.map(|i| {
                routed.api.contract.as_ref().expect("contract").operations[i]
                    .id
                    .as_str()
            });
            (
                routed.api.name.to_string(),
                op.map(str::to_owned),
                routed.api_path(r.uri().path()).to_owned(),
            )
        });
        match (expect, got) {
            (Ok((api, op, p)), Ok((gapi, gop, gp))) => {
                assert_eq!(
                    (*api, op.map(str::to_owned), *p),
                    (gapi.as_str(), gop, gp.as_str()),
                    "{method} {path}"
                );
            }
            (Err(code), Err(refusal)) => assert_eq!(*code, refusal.code(), "{method} {path}"),
            (e, g) => panic!("{method} {host} {path}: expected {e:?}, got {g:?}"),
        }
    }
}

#[test]
fn unknown_operation_suggests_nearest_paths() {
    let sb = sandbox();
    let r = req("GET", "localhost", "/pets/v1/petz");
    match route(&sb, &r) {
        Err(Refusal::UnknownOperation { nearest, .. }) => {
            assert_eq!(nearest.first().map(String::as_str), Some("/v1/pets"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn host_fast_path_agrees_with_the_parse() {
    let sb = sandbox();
    for host in [
        "localhost",
        "LOCALHOST",
        "localhost:8080",
        "localhost:",
        "localhost:80a",
        "localhostx",
        "localhos",
        "[::1]:8080",
        "evil.example.com",
        "localhost.evil.com",
        "",
    ] {
        let r = req("GET", host, "/pets/v1/pets");
        let fast = sb
            .hosts
            .iter()
            .any(|h| super::host_matches(host.as_bytes(), h));
        let parsed =
            request_host(&r).is_some_and(|h| sb.hosts.iter().any(|s| s.eq_ignore_ascii_case(h)));
        // The fast path may only accept what the full parse accepts.
        assert!(
            !fast || parsed,
            "{host:?}: fast path accepts, parse refuses"
        );
        assert_eq!(check_host(&sb, &r).is_ok(), parsed, "{host:?}");
    }
}

#[test]
fn host_parsing() {
    assert_eq!(request_host(&req("GET", "[::1]:8080", "/")), Some("::1"));
    assert_eq!(
        request_host(&req("GET", "Example.COM", "/")),
        Some("Example.COM")
    );
    assert_eq!(
        request_host(&req("GET", "example.com:443", "/")),
        Some("example.com")
    );
}
