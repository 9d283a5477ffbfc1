//! OpenAPI contracts: loading (YAML or JSON, OpenAPI 3.0.x), the operation
//! router (method + path → operation, built once per configuration with
//! matchit) and the documented examples the facade answers with.

mod examples;
mod refs;
pub mod request;
mod router;
pub mod schema;

use std::path::Path;

use serde_json::Value;

use crate::config::{ConfigError, Source};

pub use examples::{Documented, PreparedResponse, resolve};
pub use router::{OperationMatch, Router};

/// One documented operation of a contract.
#[derive(Debug)]
pub struct Operation {
    /// `operationId`, or `METHOD template` when the contract gives none.
    pub id: String,
    /// The HTTP method.
    pub method: http::Method,
    /// The path template as written in the contract, e.g. `/v1/customers/{customer}`.
    pub template: String,
    /// The answer the facade gives: the example of the lowest documented 2xx
    /// response, prepared once at load. `None` when the contract has none.
    pub example: Option<PreparedResponse>,
    /// What the operation accepts (parameters and body), compiled.
    pub request: request::RequestSpec,
    /// Every documented response with its examples, for `Prefer`.
    pub documented: Vec<Documented>,
}

/// A loaded, compiled OpenAPI contract.
#[derive(Debug)]
pub struct Contract {
    /// The document's `info.title`.
    pub title: String,
    /// Every operation, in document order.
    pub operations: Vec<Operation>,
    /// Method + path → operation.
    pub router: Router,
    /// The document itself (scenario rules and fixtures read its responses).
    pub doc: std::sync::Arc<Value>,
}

const METHODS: [(&str, http::Method); 8] = [
    ("get", http::Method::GET),
    ("put", http::Method::PUT),
    ("post", http::Method::POST),
    ("delete", http::Method::DELETE),
    ("options", http::Method::OPTIONS),
    ("head", http::Method::HEAD),
    ("patch", http::Method::PATCH),
    ("trace", http::Method::TRACE),
];

impl Contract {
    /// Loads the contract at `rel` of `source`, with the files its `$ref`s
    /// name (relative to it, inside the sandbox). Errors name the file and,
    /// where they can, the line or the JSON pointer inside it.
    pub fn load(source: &Source, rel: &Path) -> Result<Contract, Vec<ConfigError>> {
        let file = source.display_path(rel);
        let doc = {
            let text = source
                .read_to_string(rel)
                .map_err(|m| vec![ConfigError::new(&file, 0, m)])?;
            parse(&file, &text).map_err(|e| vec![e])?
        };
        Self::compile(&file, doc, Some((source, rel)))
    }

    /// Compiles a contract from its text (`file` is only used in messages).
    /// Its `$ref`s must be local: there is no directory to read other files
    /// from.
    pub fn from_text(file: &Path, text: &str) -> Result<Contract, Vec<ConfigError>> {
        let doc = parse(file, text).map_err(|e| vec![e])?;
        Self::compile(file, doc, None)
    }

    /// Checks the version, bundles the `$ref`s, proves the structure and
    /// compiles every operation.
    fn compile(
        file: &Path,
        doc: Value,
        source: Option<(&Source, &Path)>,
    ) -> Result<Contract, Vec<ConfigError>> {
        if let Some(n) = doc.get("openapi").filter(|v| v.is_number()) {
            return Err(vec![ConfigError::new(
                file,
                0,
                format!(
                    "`openapi: {n}` is a number; write the version as a string, e.g. `openapi: \"3.0.3\"`"
                ),
            )]);
        }
        let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
        if !version.starts_with("3.0") {
            let msg = if version.is_empty() {
                "not an OpenAPI 3.0 document: the `openapi` field is missing".to_owned()
            } else {
                format!("OpenAPI version `{version}` is not supported; use OpenAPI 3.0.x")
            };
            return Err(vec![ConfigError::new(file, 0, msg)]);
        }
        let bundled = match source {
            Some((source, rel)) => refs::bundle(Some(source), rel, doc)?,
            None => refs::bundle(None, file, doc)?,
        };
        // The typed model proves the document's structure; the pointer says
        // where it is not (in a referenced file when it is inside a copy).
        let title = match serde_path_to_error::deserialize::<_, openapiv3::OpenAPI>(&bundled.doc) {
            Ok(typed) => typed.info.title,
            Err(e) => {
                let pointer = to_pointer(&e.path().to_string());
                let (file, pointer) = bundled
                    .origin_of(&pointer)
                    .unwrap_or_else(|| (file.to_owned(), pointer));
                return Err(vec![ConfigError::new(
                    file,
                    0,
                    format!("invalid OpenAPI at {pointer}: {}", e.inner()),
                )]);
            }
        };
        let doc = bundled.doc;

        let mut errors = Vec::new();
        let mut operations = Vec::new();
        let components = std::sync::Arc::new(schema::components(&doc, schema::Direction::Request));
        let mut routes = Vec::new();
        if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
            for (template, item) in paths {
                let item = examples::resolve(&doc, item);
                let mut ops = Vec::new();
                for (key, method) in &METHODS {
                    let Some(op) = item.get(*key) else { continue };
                    let id = op
                        .get("operationId")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("{} {template}", method.as_str()));
                    let example = match examples::prepare(&doc, op) {
                        Ok(e) => e,
                        Err(m) => {
                            let pointer = format!("/paths/{}/{key}", escape_pointer(template));
                            errors.push(ConfigError::new(file, 0, format!("at {pointer}: {m}")));
                            None
                        }
                    };
                    let request = match request::RequestSpec::build(&doc, item, op, &components) {
                        Ok(r) => r,
                        Err(m) => {
                            let pointer = format!("/paths/{}/{key}", escape_pointer(template));
                            errors.push(ConfigError::new(file, 0, format!("at {pointer}: {m}")));
                            continue;
                        }
                    };
                    let documented = match examples::documented(&doc, op) {
                        Ok(d) => d,
                        Err(m) => {
                            let pointer = format!("/paths/{}/{key}", escape_pointer(template));
                            errors.push(ConfigError::new(file, 0, format!("at {pointer}: {m}")));
                            continue;
                        }
                    };
                    ops.push((method.clone(), operations.len()));
                    operations.push(Operation {
                        id,
                        method: method.clone(),
                        template: template.clone(),
                        example,
                        request,
                        documented,
                    });
                }
                routes.push((template.clone(), ops));
            }
        }
        let router = match Router::build(routes) {
            Ok(r) => Some(r),
            Err(m) => {
                errors.push(ConfigError::new(file, 0, m));
                None
            }
        };
        match router {
            Some(router) if errors.is_empty() => Ok(Contract {
                title,
                operations,
                router,
                doc: std::sync::Arc::new(doc),
            }),
            _ => Err(errors),
        }
    }
}

/// Parses a contract (or a file one references): JSON when its first
/// non-blank character is `{`, YAML otherwise.
fn parse(file: &Path, text: &str) -> Result<Value, ConfigError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| ConfigError::new(file, e.line() as u64, format!("not valid JSON: {e}")))
    } else {
        crate::config::parse_yaml(file, text)
    }
}

/// Turns serde_path_to_error's `a.b[0].c` into a JSON pointer `/a/b/0/c`.
fn to_pointer(path: &str) -> String {
    if path == "." || path.is_empty() {
        return "/".into();
    }
    let mut out = String::new();
    for part in path.split('.') {
        for piece in part.split('[') {
            let piece = piece.trim_end_matches(']');
            if !piece.is_empty() {
                out.push('/');
                out.push_str(&escape_pointer(piece));
            }
        }
    }
    out
}

/// Escapes one JSON-pointer reference token (RFC 6901).
pub fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests;
