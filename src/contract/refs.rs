//! `$ref`s: every reference of a contract is checked at load, and those that
//! name another file (`schemas/customer.yaml#/Customer`, `./common.yaml`)
//! are bundled into the contract, so that the rest of the loader, the
//! validator and the facade only ever meet local `#/…` references.
//!
//! Bundling walks the document knowing what each value is (a schema, a
//! response, a parameter, …: the OpenAPI 3.0 object graph), so `$ref`s are
//! followed only where OpenAPI allows them and never inside examples,
//! defaults, enums or `x-` extensions. A referenced value is copied once into
//! the contract's own `components` under its section (`schemas`,
//! `responses`, …), named after the last token of its pointer (made unique),
//! and every reference to it is rewritten to point there; path items, which
//! have no `components` section in 3.0, are inlined. References inside a
//! referenced file are resolved against that file, so recursive schemas
//! across files stay recursive.
//!
//! Referenced files stay inside the sandbox: absolute paths, URLs and `..`
//! that leave the sandbox directory are refused (on disk a symlink that
//! leads out is refused too). A reference that does not resolve, a file
//! that is missing or does not parse, and a chain of references that never
//! reaches a value (`a.yaml#/A` → `b.yaml#/B` → `a.yaml#/A`) are load
//! errors naming the file and the JSON pointer of the `$ref`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::config::{ConfigError, Source};

/// What a value of an OpenAPI 3.0 document is, as far as references care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Document,
    Components,
    PathItem,
    Operation,
    Parameter,
    Header,
    RequestBody,
    Response,
    MediaType,
    Encoding,
    Schema,
    Example,
    Link,
    Callback,
    SecurityScheme,
}

/// How the children under one key are typed.
enum Child {
    /// One value of that kind.
    One(Kind),
    /// A map of name → value of that kind.
    Map(Kind),
    /// A list of values of that kind.
    List(Kind),
}

impl Kind {
    /// The `components` section a referenced value of this kind is copied
    /// into; `None` for path items (inlined) and kinds that cannot be
    /// references.
    fn section(self) -> Option<&'static str> {
        Some(match self {
            Kind::Schema => "schemas",
            Kind::Response => "responses",
            Kind::Parameter => "parameters",
            Kind::Example => "examples",
            Kind::RequestBody => "requestBodies",
            Kind::Header => "headers",
            Kind::SecurityScheme => "securitySchemes",
            Kind::Link => "links",
            Kind::Callback => "callbacks",
            _ => return None,
        })
    }

    /// Whether OpenAPI 3.0 allows a Reference Object in place of this kind.
    fn referable(self) -> bool {
        self == Kind::PathItem || self.section().is_some()
    }

    /// The kind of what sits under `key` in a value of this kind; `None`
    /// for literal data (examples, defaults, enums, extensions, …).
    fn child(self, key: &str) -> Option<Child> {
        use Child::{List, Map, One};
        Some(match (self, key) {
            (Kind::Document, "paths") => Map(Kind::PathItem),
            (Kind::Document, "components") => One(Kind::Components),
            (Kind::Components, "schemas") => Map(Kind::Schema),
            (Kind::Components, "responses") => Map(Kind::Response),
            (Kind::Components, "parameters") => Map(Kind::Parameter),
            (Kind::Components, "examples") => Map(Kind::Example),
            (Kind::Components, "requestBodies") => Map(Kind::RequestBody),
            (Kind::Components, "headers") => Map(Kind::Header),
            (Kind::Components, "securitySchemes") => Map(Kind::SecurityScheme),
            (Kind::Components, "links") => Map(Kind::Link),
            (Kind::Components, "callbacks") => Map(Kind::Callback),
            (
                Kind::PathItem,
                "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace",
            ) => One(Kind::Operation),
            (Kind::PathItem | Kind::Operation, "parameters") => List(Kind::Parameter),
            (Kind::Operation, "requestBody") => One(Kind::RequestBody),
            (Kind::Operation, "responses") => Map(Kind::Response),
            (Kind::Operation, "callbacks") => Map(Kind::Callback),
            (Kind::Parameter | Kind::Header | Kind::MediaType, "schema") => One(Kind::Schema),
            (Kind::Parameter | Kind::Header | Kind::MediaType, "examples") => Map(Kind::Example),
            (Kind::Parameter | Kind::Header | Kind::RequestBody | Kind::Response, "content") => {
                Map(Kind::MediaType)
            }
            (Kind::Response | Kind::Encoding, "headers") => Map(Kind::Header),
            (Kind::Response, "links") => Map(Kind::Link),
            (Kind::MediaType, "encoding") => Map(Kind::Encoding),
            (Kind::Schema, "properties") => Map(Kind::Schema),
            (Kind::Schema, "items" | "not" | "additionalProperties") => One(Kind::Schema),
            (Kind::Schema, "allOf" | "anyOf" | "oneOf") => List(Kind::Schema),
            // A callback maps runtime expressions to path items.
            (Kind::Callback, k) if !k.starts_with("x-") => One(Kind::PathItem),
            _ => return None,
        })
    }
}

/// One `$ref` found in a value: where (a pointer relative to that value),
/// what it stands for, and what it says.
struct Found {
    at: String,
    kind: Kind,
    reference: String,
}

/// Collects the `$ref`s of `value` (a `kind`), without following them.
fn scan(value: &Value, kind: Kind, path: &mut Vec<String>, out: &mut Vec<Found>) {
    let Value::Object(obj) = value else { return };
    if kind.referable()
        && let Some(Value::String(r)) = obj.get("$ref")
    {
        out.push(Found {
            at: pointer_of(path),
            kind,
            reference: r.clone(),
        });
        return;
    }
    for (key, child) in obj {
        let Some(typed) = kind.child(key) else {
            continue;
        };
        // `paths` and `responses` may carry `x-` extensions among their
        // entries; everywhere else a map's keys are names.
        let extensible = matches!(
            (kind, key.as_str()),
            (Kind::Document, "paths") | (Kind::Operation, "responses")
        );
        path.push(key.clone());
        match (typed, child) {
            (Child::One(k), v) => scan(v, k, path, out),
            (Child::Map(k), Value::Object(map)) => {
                for (name, v) in map {
                    if extensible && name.starts_with("x-") {
                        continue;
                    }
                    path.push(name.clone());
                    scan(v, k, path, out);
                    path.pop();
                }
            }
            (Child::List(k), Value::Array(list)) => {
                for (i, v) in list.iter().enumerate() {
                    path.push(i.to_string());
                    scan(v, k, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
        path.pop();
    }
}

/// A JSON pointer from unescaped tokens.
fn pointer_of(path: &[String]) -> String {
    path.iter()
        .map(|t| format!("/{}", super::escape_pointer(t)))
        .collect()
}

/// Where a bundled value came from: its place in the bundled document
/// (`/components/schemas/Customer`), the file it was copied from (as shown in
/// messages) and its pointer there.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The pointer of the copy in the bundled document.
    pub bundled: String,
    /// The referenced file, as shown in messages.
    pub file: PathBuf,
    /// The pointer of the value inside that file.
    pub pointer: String,
}

/// A contract with every `$ref` checked and every other-file `$ref` bundled.
pub struct Bundled {
    /// The document; its references are all local.
    pub doc: Value,
    /// Where each copied value came from, to report a problem inside it
    /// against the file the person wrote.
    pub origins: Vec<Origin>,
}

impl Bundled {
    /// The file and pointer a pointer of the bundled document stands for:
    /// inside a copied value, the referenced file; otherwise `None` (the
    /// contract itself).
    pub fn origin_of(&self, pointer: &str) -> Option<(PathBuf, String)> {
        self.origins.iter().find_map(|o| {
            let rest = pointer.strip_prefix(o.bundled.as_str())?;
            (rest.is_empty() || rest.starts_with('/'))
                .then(|| (o.file.clone(), format!("{}{rest}", o.pointer)))
        })
    }
}

/// What a `$ref` becomes in the bundled document.
enum Replacement {
    /// It stays as written (a local reference of the contract itself).
    Keep,
    /// A `$ref` to this local pointer (`#/components/…`).
    Ref(String),
    /// The referenced value itself (path items).
    Inline(Value),
}

/// Checks every `$ref` of `doc` (the contract at `rel` of `source`) and
/// bundles those that name other files. Without a `source` (a contract
/// given as text), a reference to another file is an error.
pub fn bundle(
    source: Option<&Source>,
    rel: &Path,
    doc: Value,
) -> Result<Bundled, Vec<ConfigError>> {
    let main = normalize(rel).unwrap_or_else(|| rel.to_owned());
    let mut b = Bundler {
        source,
        main: main.clone(),
        files: HashMap::new(),
        hoisted: HashMap::new(),
        taken: HashMap::new(),
        queue: VecDeque::new(),
        added: Vec::new(),
        origins: Vec::new(),
        errors: Vec::new(),
    };
    let doc = Rc::new(doc);
    b.files.insert(main.clone(), Some(doc.clone()));
    let replacements = b.process(&doc, &main, "", Kind::Document);
    // Copies of referenced values, and what they reference in turn.
    while let Some((file, pointer, kind, section, name)) = b.queue.pop_front() {
        let Some(value) = b.value(&file, &pointer) else {
            continue;
        };
        let mut value = value.clone();
        let reps = b.process(&value, &file, &pointer, kind);
        apply(&mut value, reps);
        b.added.push((section, name, value));
    }
    if !b.errors.is_empty() {
        return Err(b.errors);
    }
    let origins = std::mem::take(&mut b.origins);
    let added = std::mem::take(&mut b.added);
    drop(b);
    // Nothing to change (the common case): the document is used as parsed.
    if replacements.is_empty() && added.is_empty() {
        let doc = Rc::try_unwrap(doc).unwrap_or_else(|rc| (*rc).clone());
        return Ok(Bundled { doc, origins });
    }
    let mut doc = Rc::try_unwrap(doc).unwrap_or_else(|rc| (*rc).clone());
    apply(&mut doc, replacements);
    if !added.is_empty() {
        let Some(root) = doc.as_object_mut() else {
            return Ok(Bundled { doc, origins });
        };
        let components = root
            .entry("components")
            .or_insert_with(|| Value::Object(Map::new()));
        if !components.is_object() {
            *components = Value::Object(Map::new());
        }
        if let Value::Object(components) = components {
            for (section, name, value) in added {
                let section = components
                    .entry(section)
                    .or_insert_with(|| Value::Object(Map::new()));
                if !section.is_object() {
                    *section = Value::Object(Map::new());
                }
                if let Value::Object(section) = section {
                    section.insert(name, value);
                }
            }
        }
    }
    Ok(Bundled { doc, origins })
}

/// Replaces each `$ref` object at its pointer.
fn apply(value: &mut Value, replacements: Vec<(String, Replacement)>) {
    for (at, rep) in replacements {
        let Some(slot) = value.pointer_mut(&at) else {
            continue;
        };
        match rep {
            Replacement::Keep => {}
            Replacement::Ref(r) => *slot = serde_json::json!({ "$ref": r }),
            Replacement::Inline(v) => *slot = v,
        }
    }
}

/// A referenced value waiting to be copied: its file, pointer, kind, and
/// the section and name it is copied to.
type Pending = (PathBuf, String, Kind, &'static str, String);

struct Bundler<'s> {
    /// Where the files are read from.
    source: Option<&'s Source>,
    /// The contract's own path (normalized, relative to the sandbox).
    main: PathBuf,
    /// Every file read so far; `None` when it could not be read or parsed
    /// (already reported).
    files: HashMap<PathBuf, Option<Rc<Value>>>,
    /// (file, pointer, section) → the name of its copy in the section.
    hoisted: HashMap<(PathBuf, String, &'static str), String>,
    /// The names used in each section of `components`.
    taken: HashMap<&'static str, HashSet<String>>,
    /// Values named but not yet copied.
    queue: VecDeque<Pending>,
    /// Copies made: (section, name, value).
    added: Vec<(&'static str, String, Value)>,
    /// Where each copy came from.
    origins: Vec<Origin>,
    /// Every problem found.
    errors: Vec<ConfigError>,
}

impl Bundler<'_> {
    /// The replacements for the `$ref`s of `value`, a `kind` found at
    /// `base` in `file`.
    fn process(
        &mut self,
        value: &Value,
        file: &Path,
        base: &str,
        kind: Kind,
    ) -> Vec<(String, Replacement)> {
        let mut found = Vec::new();
        scan(value, kind, &mut Vec::new(), &mut found);
        let mut out = Vec::new();
        for f in found {
            let at = format!("{base}{}", f.at);
            match self.resolve(file, f.kind, &f.reference) {
                Ok(Replacement::Keep) => {}
                Ok(rep) => out.push((f.at, rep)),
                Err(Some(message)) => self.error(file, &at, &f.reference, message),
                Err(None) => {}
            }
        }
        out
    }

    fn error(&mut self, file: &Path, at: &str, reference: &str, message: String) {
        let at = if at.is_empty() { "/" } else { at };
        self.errors.push(ConfigError::new(
            self.display(file),
            0,
            format!("at {at}: `$ref: {reference}`: {message}"),
        ));
    }

    fn display(&self, file: &Path) -> PathBuf {
        match self.source {
            Some(s) => s.display_path(file),
            None => file.to_owned(),
        }
    }

    /// What the `$ref` `reference`, standing for a `kind` in `file`,
    /// becomes. `Err(None)`: the problem was already reported.
    fn resolve(
        &mut self,
        file: &Path,
        kind: Kind,
        reference: &str,
    ) -> Result<Replacement, Option<String>> {
        let (target_file, pointer) = self.locate(file, reference)?;
        self.check_chain(&target_file, &pointer)?;
        if target_file == self.main {
            return Ok(if file == self.main {
                Replacement::Keep
            } else {
                Replacement::Ref(format!("#{pointer}"))
            });
        }
        let Some(section) = kind.section() else {
            // A path item: inlined, its own references resolved in its file.
            let Some(value) = self.value(&target_file, &pointer) else {
                return Err(None);
            };
            let mut value = value.clone();
            let reps = self.process(&value, &target_file, &pointer, kind);
            apply(&mut value, reps);
            return Ok(Replacement::Inline(value));
        };
        let key = (target_file.clone(), pointer.clone(), section);
        if let Some(name) = self.hoisted.get(&key) {
            return Ok(Replacement::Ref(format!("#/components/{section}/{name}")));
        }
        let name = self.unique(section, &target_file, &pointer);
        self.hoisted.insert(key, name.clone());
        self.origins.push(Origin {
            bundled: format!("/components/{section}/{name}"),
            file: self.display(&target_file),
            pointer: pointer.clone(),
        });
        self.queue
            .push_back((target_file, pointer, kind, section, name.clone()));
        Ok(Replacement::Ref(format!("#/components/{section}/{name}")))
    }

    /// The file (normalized, relative to the sandbox) and JSON pointer that
    /// `reference`, written in `file`, names.
    fn locate(&self, file: &Path, reference: &str) -> Result<(PathBuf, String), Option<String>> {
        let (path, fragment) = match reference.split_once('#') {
            Some((p, f)) => (p, f),
            None => (reference, ""),
        };
        let pointer = decode(fragment);
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(Some(format!(
                "`#{fragment}` is not a JSON pointer (write `#/…`)"
            )));
        }
        if path.is_empty() {
            return Ok((file.to_owned(), pointer));
        }
        if has_scheme(path) {
            return Err(Some(
                "URLs are not fetched: a `$ref` may only name a file inside the sandbox directory, by a relative path".into(),
            ));
        }
        let path = decode(path);
        if path.starts_with('/') || path.starts_with('\\') || Path::new(&path).is_absolute() {
            return Err(Some(
                "absolute paths are refused: a `$ref` names a file relative to the file it is written in, inside the sandbox directory".into(),
            ));
        }
        let joined = file.parent().unwrap_or(Path::new("")).join(&path);
        let Some(target) = normalize(&joined) else {
            return Err(Some(
                "the path leads outside the sandbox directory; referenced files must stay inside it".into(),
            ));
        };
        if self.source.is_none() && target != self.main {
            return Err(Some(
                "references to other files are resolved only for a contract loaded from a sandbox directory".into(),
            ));
        }
        Ok((target, pointer))
    }

    /// Follows the chain of references that starts at (`file`, `pointer`)
    /// until a value that is not a reference; every link must resolve, and
    /// the chain must not come back on itself.
    fn check_chain(&mut self, file: &Path, pointer: &str) -> Result<(), Option<String>> {
        let mut seen: Vec<(PathBuf, String)> = Vec::new();
        let (mut file, mut pointer) = (file.to_owned(), pointer.to_owned());
        loop {
            let shown = |f: &Path, p: &str| -> String {
                if p.is_empty() {
                    f.display().to_string()
                } else {
                    format!("{}#{p}", f.display())
                }
            };
            if seen.iter().any(|(f, p)| *f == file && *p == pointer) {
                let chain: Vec<String> = seen
                    .iter()
                    .map(|(f, p)| shown(f, p))
                    .chain(std::iter::once(shown(&file, &pointer)))
                    .collect();
                return Err(Some(format!(
                    "a cycle of references that never reaches a value: {}",
                    chain.join(" → ")
                )));
            }
            let doc = self.file(&file)?;
            let Some(target) = doc.pointer(&pointer) else {
                return Err(Some(format!(
                    "`{}` does not resolve in `{}`",
                    if pointer.is_empty() { "/" } else { &pointer },
                    self.display(&file).display()
                )));
            };
            let Some(next) = target.get("$ref").and_then(Value::as_str) else {
                return Ok(());
            };
            let next = next.to_owned();
            seen.push((file.clone(), pointer.clone()));
            let (f, p) = self.locate(&file, &next).map_err(|e| {
                e.map(|m| {
                    format!(
                        "it leads to `$ref: {next}` at {}: {m}",
                        shown(&file, &pointer)
                    )
                })
            })?;
            file = f;
            pointer = p;
        }
    }

    /// The value at `pointer` of `file` (both already checked).
    fn value(&self, file: &Path, pointer: &str) -> Option<&Value> {
        self.files.get(file)?.as_ref()?.pointer(pointer)
    }

    /// The parsed `file`, read on first use. `Err(None)`: it could not be
    /// read or parsed, and that was reported once.
    fn file(&mut self, file: &Path) -> Result<Rc<Value>, Option<String>> {
        if let Some(known) = self.files.get(file) {
            return known.clone().ok_or(None);
        }
        let Some(source) = self.source else {
            return Err(Some("no sandbox directory to read it from".into()));
        };
        if let Source::Dir(dir) = source
            && let (Ok(root), Ok(real)) = (dir.canonicalize(), dir.join(file).canonicalize())
            && !real.starts_with(&root)
        {
            self.files.insert(file.to_owned(), None);
            return Err(Some(format!(
                "`{}` leads outside the sandbox directory (a symbolic link); referenced files must stay inside it",
                source.display_path(file).display()
            )));
        }
        let shown = source.display_path(file);
        let parsed = source
            .read_to_string(file)
            .map_err(|m| ConfigError::new(&shown, 0, m))
            .and_then(|text| super::parse(&shown, &text));
        match parsed {
            Ok(v) => {
                let v = Rc::new(v);
                self.files.insert(file.to_owned(), Some(v.clone()));
                Ok(v)
            }
            Err(e) => {
                self.files.insert(file.to_owned(), None);
                Err(Some(format!("the referenced file cannot be loaded: {e}")))
            }
        }
    }

    /// A name for a copy in `section`: the pointer's last token (or the
    /// file's stem), reduced to `[A-Za-z0-9._-]`, made unique.
    fn unique(&mut self, section: &'static str, file: &Path, pointer: &str) -> String {
        let base = match pointer.rsplit('/').next().filter(|t| !t.is_empty()) {
            Some(token) => token.replace("~1", "/").replace("~0", "~"),
            None => file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let mut base: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if base.is_empty() {
            base.push_str("ref");
        }
        let main = self.files.get(&self.main).cloned().flatten();
        let taken = self.taken.entry(section).or_insert_with(|| {
            main.as_deref()
                .and_then(|d| d.get("components"))
                .and_then(|c| c.get(section))
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        });
        let mut name = base.clone();
        let mut n = 2;
        while taken.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        taken.insert(name.clone());
        name
    }
}

/// Whether a reference's path part starts with a URI scheme (`https:`,
/// `file:`, …).
fn has_scheme(path: &str) -> bool {
    match path.split_once(':') {
        Some((scheme, _)) => {
            let mut chars = scheme.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// Percent-decodes a URI reference part (`$ref`s are URI references).
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `path` without `.` and `..` segments; `None` when `..` climbs above the
/// sandbox directory, or the path is rooted.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_inside_the_sandbox() {
        assert_eq!(
            normalize(Path::new("contracts/./schemas/../common.yaml")),
            Some(PathBuf::from("contracts/common.yaml"))
        );
        assert_eq!(normalize(Path::new("contracts/../../etc/passwd")), None);
        assert_eq!(normalize(Path::new("/etc/passwd")), None);
        assert!(has_scheme("https://example.com/x.yaml"));
        assert!(has_scheme("file:x.yaml"));
        assert!(!has_scheme("schemas/customer.yaml"));
        assert!(!has_scheme("./a:b.yaml"));
    }
}
