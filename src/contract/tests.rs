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
