//! Where a sandbox's files come from (a directory, or the demo built into the
//! binary) and how a problem in one of them is reported (`file:line: message`).

use std::fmt;
use std::path::{Path, PathBuf};

/// The files of one sandbox: `sandgate.yaml` and everything it names.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory on disk; paths in the files are relative to it.
    Dir(PathBuf),
    /// Files compiled into the binary (the bundled demo), as (path, contents).
    Embedded(&'static [(&'static str, &'static str)]),
}

impl Source {
    /// The name of the main configuration file inside a sandbox.
    pub const MAIN_FILE: &'static str = "sandgate.yaml";

    /// Reads the text of `rel` (a path relative to the sandbox).
    pub fn read_to_string(&self, rel: &Path) -> Result<String, String> {
        String::from_utf8(self.read(rel)?).map_err(|_| {
            format!(
                "file `{}` is not UTF-8 text",
                self.display_path(rel).display()
            )
        })
    }

    /// Reads the bytes of `rel` (a path relative to the sandbox).
    pub fn read(&self, rel: &Path) -> Result<Vec<u8>, String> {
        match self {
            Source::Dir(dir) => {
                let path = dir.join(rel);
                std::fs::read(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        format!("file `{}` does not exist", path.display())
                    }
                    _ => format!("cannot read `{}`: {e}", path.display()),
                })
            }
            Source::Embedded(files) => files
                .iter()
                .find(|(name, _)| Path::new(name) == rel)
                .map(|(_, text)| text.as_bytes().to_vec())
                .ok_or_else(|| format!("file `{}` is not part of the bundled demo", rel.display())),
        }
    }

    /// The files directly in directory `rel` whose names end in one of
    /// `extensions`, sorted by name (none when the directory is missing).
    pub fn list(&self, rel: &Path, extensions: &[&str]) -> Vec<PathBuf> {
        let wanted = |p: &Path| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
        };
        let mut out: Vec<PathBuf> = match self {
            Source::Dir(dir) => std::fs::read_dir(dir.join(rel))
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                        .map(|e| rel.join(e.file_name()))
                        .filter(|p| wanted(p))
                        .collect()
                })
                .unwrap_or_default(),
            Source::Embedded(files) => files
                .iter()
                .map(|(name, _)| PathBuf::from(name))
                .filter(|p| p.parent() == Some(rel) && wanted(p))
                .collect(),
        };
        out.sort();
        out
    }

    /// How a file of this source is named in messages.
    pub fn display_path(&self, rel: &Path) -> PathBuf {
        match self {
            Source::Dir(dir) => dir.join(rel),
            Source::Embedded(_) => Path::new("<demo>").join(rel),
        }
    }
}

/// One problem found while loading a sandbox, located in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as it should be shown to the person who wrote it.
    pub file: PathBuf,
    /// The 1-based line, when it is known.
    pub line: Option<u64>,
    /// What is wrong, in a full sentence.
    pub message: String,
}

impl ConfigError {
    /// A problem at `line` of `file` (line 0 means unknown).
    pub fn new(file: impl Into<PathBuf>, line: u64, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: (line > 0).then_some(line),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in one load, in file order.
#[derive(Clone, Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses YAML (or JSON, which is YAML) into `T`, turning a syntax or type
/// error into a located [`ConfigError`].
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(0);
        let options = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
        let message = e.render_with_options(options);
        ConfigError::new(file, line, strip_location_suffix(&message))
    })
}

/// serde-saphyr appends " at line X column Y" to plain messages; the line
/// already leads our message, so the suffix is dropped.
fn strip_location_suffix(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_owned(),
        None => first.to_owned(),
    }
}
