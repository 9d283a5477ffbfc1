use super::*;
use http::Method;

const SPEC: &str = r##"
openapi: 3.0.3
info: { title: Pets, version: "1" }
paths:
  /pets:
    get:
      operationId: listPets
      responses:
        "200":
          description: ok
          content:
            application/json:
              example: [{ id: p_1 }]
    post:
      operationId: createPet
      responses:
        "201": { $ref: "#/components/responses/Pet" }
        "200": { description: also ok }
  /pets/{pet}:
    get:
      operationId: getPet
      responses:
        "404": { description: missing }
        "200":
          description: ok
          content:
            application/json:
              schema: { $ref: "#/components/schemas/Pet" }
    delete:
      operationId: deletePet
      responses:
        "204": { description: gone }
  /pets/{pet}/photo:
    get:
      responses:
        "200":
          description: no example here
          content:
            image/png: {}
components:
  schemas:
    Pet:
      type: object
      example: { id: p_2, name: Rex }
  responses:
    Pet:
      description: created
      content:
        application/json:
          examples:
            first: { $ref: "#/components/examples/Rex" }
  examples:
    Rex: { value: { id: p_3 } }
"##;

fn contract() -> Contract {
    Contract::from_text(Path::new("pets.yaml"), SPEC).expect("contract loads")
}

fn op_for<'a>(c: &'a Contract, method: Method, path: &str) -> Option<&'a Operation> {
    match c.router.resolve(&method, path) {
        OperationMatch::Found { operation, .. } => Some(&c.operations[operation]),
        _ => None,
    }
}

#[test]
fn routes_and_examples_table() {
    let c = contract();
    // (method, path, operation id, status, body)
    let table: &[(Method, &str, &str, u16, &str)] = &[
        (Method::GET, "/pets", "listPets", 200, r#"[{"id":"p_1"}]"#),
        (Method::POST, "/pets", "createPet", 200, ""),
        (
            Method::GET,
            "/pets/p_9",
            "getPet",
            200,
            r#"{"id":"p_2","name":"Rex"}"#,
        ),
        (
            Method::HEAD,
            "/pets/p_9",
            "getPet",
            200,
            r#"{"id":"p_2","name":"Rex"}"#,
        ),
        (Method::DELETE, "/pets/p_9", "deletePet", 204, ""),
    ];
    for (method, path, id, status, body) in table {
        let op = op_for(&c, method.clone(), path).unwrap_or_else(|| panic!("{method} {path}"));
        assert_eq!(op.id, *id);
        let ex = op.example.as_ref().expect("example");
        assert_eq!(ex.status.as_u16(), *status, "{id}");
        assert_eq!(std::str::from_utf8(&ex.body).expect("utf8"), *body, "{id}");
    }
    let photo = op_for(&c, Method::GET, "/pets/p_1/photo").expect("photo op");
    assert_eq!(photo.id, "GET /pets/{pet}/photo");
    assert!(photo.example.is_none());
}

#[test]
fn path_params_are_extracted() {
    let c = contract();
    assert!(matches!(
        c.router.resolve(&Method::GET, "/pets/p_42"),
        OperationMatch::Found { .. }
    ));
    assert_eq!(
        c.router.params("/pets/p_42"),
        vec![("pet".to_owned(), "p_42".to_owned())]
    );
    assert!(c.router.params("/nothing/here").is_empty());
}

#[test]
fn wrong_method_and_unknown_path() {
    let c = contract();
    assert_eq!(
        c.router.resolve(&Method::PUT, "/pets"),
        OperationMatch::MethodNotAllowed {
            template: "/pets".into(),
            allow: vec!["GET".into(), "POST".into(), "HEAD".into()]
        }
    );
    assert_eq!(
        c.router.resolve(&Method::GET, "/petz"),
        OperationMatch::NotFound
    );
    assert_eq!(c.router.nearest("/petz")[0], "/pets");
}

#[test]
fn broken_documents_are_refused_with_a_location() {
    let e = Contract::from_text(
        Path::new("x.yaml"),
        "openapi: 3.1.0\ninfo: {title: x, version: '1'}\npaths: {}\n",
    )
    .expect_err("3.1");
    assert!(e[0].message.contains("3.1.0"), "{}", e[0]);
    let e = Contract::from_text(
        Path::new("x.yaml"),
        "openapi: 3.0.3\ninfo: {title: x}\npaths: {}\n",
    )
    .expect_err("no version");
    assert!(e[0].message.contains("/info"), "{}", e[0]);
    let e =
        Contract::from_text(Path::new("x.yaml"), "openapi: 3.0.3\ninfo: [\n").expect_err("syntax");
    assert!(e[0].line.is_some(), "{}", e[0]);
}

#[test]
fn numeric_version_and_empty_path_items() {
    let e = Contract::from_text(
        Path::new("x.yaml"),
        "openapi: 3.0\ninfo: {title: x, version: '1'}\npaths: {}\n",
    )
    .expect_err("number");
    assert!(e[0].message.contains("as a string"), "{}", e[0]);
    let c = Contract::from_text(
        Path::new("x.yaml"),
        "openapi: 3.0.3\ninfo: {title: x, version: '1'}\npaths:\n  /empty: {}\n",
    )
    .expect("loads");
    assert_eq!(
        c.router.resolve(&Method::GET, "/empty"),
        OperationMatch::NotFound,
        "nothing documented: 404, not 405 with an empty Allow"
    );
}

/// The parts of a JSON `POST` to `path`.
fn json_post<'a>(
    path: &'a str,
    headers: &'a http::HeaderMap,
    body: &'a [u8],
) -> request::RequestParts<'a> {
    request::RequestParts {
        path,
        query: None,
        headers,
        body,
    }
}

fn json_headers() -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h
}

/// A contract split over several files of a sandbox directory.
const SPLIT_MAIN: &str = r##"
openapi: 3.0.3
info: { title: Split, version: "1" }
paths:
  /customers:
    post:
      operationId: createCustomer
      parameters:
        - $ref: "./common.yaml#/components/parameters/Limit"
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "schemas/customer.yaml#/Customer" }
      responses:
        "200": { $ref: "responses/ok.yaml" }
        "404": { $ref: "common.yaml#/components/responses/NotFound" }
  /items:
    $ref: "paths/items.yaml#/Items"
components:
  schemas:
    Customer: { type: string, description: "a name the copy must not take" }
"##;

const SPLIT_CUSTOMER: &str = r##"
Customer:
  type: object
  required: [name, address]
  properties:
    name: { type: string, minLength: 1 }
    address: { $ref: "#/Address" }
    balance: { $ref: "../common.yaml#/components/schemas/Money" }
    parent: { $ref: "#/Customer" }
    example: { type: string, example: { $ref: "not/a/ref.yaml" } }
Address:
  type: object
  required: [city]
  properties:
    city: { type: string, nullable: true }
"##;

const SPLIT_COMMON: &str = r##"
components:
  schemas:
    Money: { type: integer, minimum: 0 }
  parameters:
    Limit:
      name: limit
      in: query
      schema: { type: integer, maximum: 10 }
  responses:
    NotFound:
      description: missing
      content:
        application/json:
          example: { error: not_found }
"##;

const SPLIT_OK: &str = r##"
description: created
content:
  application/json:
    schema: { $ref: "../schemas/customer.yaml#/Customer" }
    example: { name: Ada, address: { city: Paris } }
"##;

const SPLIT_ITEMS: &str = r##"
Items:
  get:
    operationId: listItems
    responses:
      "200":
        description: ok
        content:
          application/json:
            schema: { $ref: "../common.yaml#/components/schemas/Money" }
            example: 3
"##;

fn split_files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("contracts/api.yaml", SPLIT_MAIN),
        ("contracts/schemas/customer.yaml", SPLIT_CUSTOMER),
        ("contracts/common.yaml", SPLIT_COMMON),
        ("contracts/responses/ok.yaml", SPLIT_OK),
        ("contracts/paths/items.yaml", SPLIT_ITEMS),
    ]
}

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (rel, text) in files {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    dir
}

fn load_split(files: &[(&str, &str)]) -> Result<Contract, Vec<crate::config::ConfigError>> {
    let dir = dir_with(files);
    Contract::load(
        &Source::Dir(dir.path().to_owned()),
        Path::new("contracts/api.yaml"),
    )
}

#[test]
fn relative_file_refs_are_resolved_and_validate_like_local_ones() {
    let c = load_split(&split_files()).unwrap_or_else(|e| panic!("loads: {e:?}"));
    // Path item inlined from paths/items.yaml, its example served.
    let items = op_for(&c, Method::GET, "/items").expect("items op");
    assert_eq!(items.id, "listItems");
    let ex = items.example.as_ref().expect("example");
    assert_eq!(&ex.body[..], b"3");
    // The response `$ref: responses/ok.yaml` (a whole file) gives the example.
    let create = op_for(&c, Method::POST, "/customers").expect("create op");
    let ex = create.example.as_ref().expect("example");
    assert_eq!(
        std::str::from_utf8(&ex.body).expect("utf8"),
        r#"{"name":"Ada","address":{"city":"Paris"}}"#
    );
    // Copies take free names in `components`; the contract's own is kept.
    let schemas = &c.doc["components"]["schemas"];
    assert_eq!(schemas["Customer"]["type"], "string");
    assert_eq!(schemas["Customer_2"]["required"][0], "name");
    assert_eq!(
        schemas["Customer_2"]["properties"]["parent"]["$ref"], "#/components/schemas/Customer_2",
        "a recursive schema stays recursive"
    );
    assert_eq!(
        schemas["Customer_2"]["properties"]["example"]["example"]["$ref"], "not/a/ref.yaml",
        "literal data is not a reference"
    );
    // Validation goes through the referenced schemas (nullable converted,
    // minimum from common.yaml, the parameter from common.yaml).
    let h = json_headers();
    let ok = br#"{"name":"Ada","address":{"city":null},"balance":5,"parent":{"name":"B","address":{"city":"x"}}}"#;
    assert_eq!(
        create
            .request
            .check("/customers", &json_post("/customers", &h, ok)),
        Ok(())
    );
    let bad = br#"{"name":"","balance":-1,"parent":{"name":"B","address":{}}}"#;
    let Err(request::Mismatch::Invalid(v)) = create
        .request
        .check("/customers", &json_post("/customers", &h, bad))
    else {
        panic!("refused")
    };
    let mut pointers: Vec<&str> = v.iter().map(|v| v.pointer.as_str()).collect();
    pointers.sort_unstable();
    assert_eq!(
        pointers,
        [
            "/body/address",
            "/body/balance",
            "/body/name",
            "/body/parent/address/city"
        ],
        "{v:?}"
    );
    let mut query = json_post("/customers", &h, ok);
    query.query = Some("limit=11");
    let Err(request::Mismatch::Invalid(v)) = create.request.check("/customers", &query) else {
        panic!("limit refused")
    };
    assert_eq!(v[0].pointer, "/query/limit", "{v:?}");
}

static EMBEDDED: &[(&str, &str)] = &[
    ("contracts/api.yaml", SPLIT_MAIN),
    ("contracts/schemas/customer.yaml", SPLIT_CUSTOMER),
    ("contracts/common.yaml", SPLIT_COMMON),
    ("contracts/responses/ok.yaml", SPLIT_OK),
    ("contracts/paths/items.yaml", SPLIT_ITEMS),
];

#[test]
fn relative_file_refs_resolve_in_an_embedded_source() {
    let c = Contract::load(&Source::Embedded(EMBEDDED), Path::new("contracts/api.yaml"))
        .unwrap_or_else(|e| panic!("loads: {e:?}"));
    assert!(op_for(&c, Method::GET, "/items").is_some());
    assert_eq!(c.doc["components"]["schemas"]["Money"]["minimum"], 0);
}

/// Loads the split contract with `file` replaced (or added), expecting one
/// error; returns (file as shown, message).
fn split_error(file: &str, text: &str) -> (String, String) {
    let mut files = split_files();
    files.retain(|(f, _)| *f != file);
    files.push((file, text));
    let errors = load_split(&files).expect_err("refused");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    (e.file.display().to_string(), e.to_string())
}

#[test]
fn broken_references_are_load_errors_naming_the_file_and_the_pointer() {
    let main_with = |r: &str| SPLIT_MAIN.replace("schemas/customer.yaml#/Customer", r);
    let at = "at /paths/~1customers/post/requestBody/content/application~1json/schema";
    // (main's replacement reference, what the message says)
    let table: &[(&str, &str)] = &[
        ("schemas/nobody.yaml#/Customer", "does not exist"),
        (
            "schemas/customer.yaml#/Custmer",
            "`/Custmer` does not resolve",
        ),
        ("schemas/customer.yaml#Customer", "not a JSON pointer"),
        ("../../etc/passwd", "leads outside the sandbox directory"),
        ("/etc/passwd", "absolute paths are refused"),
        (
            "https://example.com/customer.yaml#/Customer",
            "URLs are not fetched",
        ),
        ("file:///etc/passwd", "URLs are not fetched"),
    ];
    for (reference, says) in table {
        let (file, message) = split_error("contracts/api.yaml", &main_with(reference));
        assert!(file.ends_with("contracts/api.yaml"), "{message}");
        assert!(message.contains(at), "{reference}: {message}");
        assert!(message.contains(reference), "{reference}: {message}");
        assert!(message.contains(says), "{reference}: {message}");
    }
    // A pointer that does not resolve inside a referenced file: that file
    // and the pointer of its `$ref`.
    let (file, message) = split_error(
        "contracts/schemas/customer.yaml",
        &SPLIT_CUSTOMER.replace("#/Address", "#/Adress"),
    );
    assert!(
        file.ends_with("contracts/schemas/customer.yaml"),
        "{message}"
    );
    assert!(
        message.contains("at /Customer/properties/address: `$ref: #/Adress`"),
        "{message}"
    );
    // A referenced file that does not parse: the referencing place, and the
    // broken file with its line.
    let (file, message) = split_error("contracts/common.yaml", "components:\n  schemas: [\n");
    assert!(file.ends_with("contracts/api.yaml"), "{message}");
    assert!(
        message.contains("at /paths/~1customers/post/parameters/0"),
        "{message}"
    );
    assert!(message.contains("contracts/common.yaml:"), "{message}");
    // Structure checked in the referenced file, reported there.
    let (file, message) = split_error(
        "contracts/common.yaml",
        &SPLIT_COMMON.replace("in: query", "in: nowhere"),
    );
    assert!(file.ends_with("contracts/common.yaml"), "{message}");
    assert!(
        message.contains("invalid OpenAPI at /components/parameters/Limit"),
        "{message}"
    );
}

#[test]
fn reference_cycles_across_files_are_refused() {
    let mut files = split_files();
    files.push(("contracts/a.yaml", "A: { $ref: \"b.yaml#/B\" }\n"));
    files.push(("contracts/b.yaml", "B: { $ref: \"a.yaml#/A\" }\n"));
    let main = SPLIT_MAIN.replace("schemas/customer.yaml#/Customer", "a.yaml#/A");
    files.retain(|(f, _)| *f != "contracts/api.yaml");
    files.push(("contracts/api.yaml", &main));
    let errors = load_split(&files).expect_err("cycle");
    let message = errors[0].to_string();
    assert!(message.contains("cycle"), "{message}");
    assert!(
        message.contains("contracts/a.yaml#/A → contracts/b.yaml#/B → contracts/a.yaml#/A"),
        "{message}"
    );
    assert!(
        message.contains("at /paths/~1customers/post/requestBody/content/application~1json/schema"),
        "{message}"
    );
}

#[test]
fn local_references_must_resolve_and_other_files_need_a_directory() {
    let spec = SPEC.replace("#/components/examples/Rex", "#/components/examples/Rx");
    let e = Contract::from_text(Path::new("pets.yaml"), &spec).expect_err("dangling");
    assert!(
        e[0].message
            .contains("at /components/responses/Pet/content/application~1json/examples/first")
            && e[0]
                .message
                .contains("`/components/examples/Rx` does not resolve"),
        "{}",
        e[0]
    );
    let spec = SPEC.replace("#/components/examples/Rex", "examples.yaml#/Rex");
    let e = Contract::from_text(Path::new("pets.yaml"), &spec).expect_err("no directory");
    assert!(e[0].message.contains("sandbox directory"), "{}", e[0]);
}

#[cfg(unix)]
#[test]
fn a_symlink_out_of_the_sandbox_is_refused() {
    let outside = dir_with(&[("secret.yaml", "Customer: { type: object }\n")]);
    let dir = dir_with(&split_files());
    std::os::unix::fs::symlink(
        outside.path().join("secret.yaml"),
        dir.path().join("contracts/schemas/link.yaml"),
    )
    .expect("symlink");
    std::fs::write(
        dir.path().join("contracts/api.yaml"),
        SPLIT_MAIN.replace("customer.yaml#/Customer", "link.yaml#/Customer"),
    )
    .expect("write");
    let e = Contract::load(
        &Source::Dir(dir.path().to_owned()),
        Path::new("contracts/api.yaml"),
    )
    .expect_err("symlink");
    assert!(e[0].message.contains("symbolic link"), "{}", e[0]);
}
