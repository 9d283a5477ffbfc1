//! Method + path → operation, with matchit. Built once per configuration.

use http::Method;

/// What a request's method and path resolve to in a contract.
#[derive(Debug, PartialEq, Eq)]
pub enum OperationMatch {
    /// A documented operation ([`Router::params`] gives its path parameters).
    Found {
        /// Index into [`super::Contract::operations`].
        operation: usize,
    },
    /// The path is documented, but not for this method.
    MethodNotAllowed {
        /// The matched template.
        template: String,
        /// The documented methods.
        allow: Vec<String>,
    },
    /// No documented path matches.
    NotFound,
}

#[derive(Debug)]
struct PathEntry {
    template: String,
    methods: Vec<(Method, usize)>,
    /// Number of `/`-separated segments, for the nearest-path prefilter.
    segments: usize,
}

/// Most templates scored for one "nearest paths" hint.
const MAX_SCORED: usize = 32;

/// The operation router of one contract.
#[derive(Debug)]
pub struct Router {
    inner: matchit::Router<usize>,
    paths: Vec<PathEntry>,
}

impl Router {
    /// Builds the router from (template, [(method, operation index)]).
    pub fn build(routes: Vec<(String, Vec<(Method, usize)>)>) -> Result<Router, String> {
        let mut inner = matchit::Router::new();
        let mut paths = Vec::with_capacity(routes.len());
        // A path item without operations documents nothing to route to.
        for (template, methods) in routes.into_iter().filter(|(_, m)| !m.is_empty()) {
            if !template.starts_with('/') {
                return Err(format!("path `{template}` must start with `/`"));
            }
            inner
                .insert(template.clone(), paths.len())
                .map_err(|e| format!("path `{template}` cannot be routed: {e}"))?;
            let segments = template.split('/').count();
            paths.push(PathEntry {
                template,
                methods,
                segments,
            });
        }
        Ok(Router { inner, paths })
    }

    /// Resolves a request. `HEAD` falls back to the `GET` operation.
    pub fn resolve(&self, method: &Method, path: &str) -> OperationMatch {
        let Ok(m) = self.inner.at(path) else {
            return OperationMatch::NotFound;
        };
        let entry = &self.paths[*m.value];
        let found = entry
            .methods
            .iter()
            .find(|(mm, _)| mm == method)
            .or_else(|| {
                (method == Method::HEAD)
                    .then(|| entry.methods.iter().find(|(mm, _)| mm == Method::GET))
                    .flatten()
            });
        match found {
            Some((_, operation)) => OperationMatch::Found {
                operation: *operation,
            },
            None => {
                let mut allow: Vec<String> = entry
                    .methods
                    .iter()
                    .map(|(m, _)| m.as_str().to_owned())
                    .collect();
                if allow.iter().any(|m| m == "GET") && !allow.iter().any(|m| m == "HEAD") {
                    allow.push("HEAD".into());
                }
                OperationMatch::MethodNotAllowed {
                    template: entry.template.clone(),
                    allow,
                }
            }
        }
    }

    /// The path parameters of `path` as (name, raw value); empty when no
    /// documented path matches. Kept apart from [`Router::resolve`] so that
    /// routing allocates nothing.
    pub fn params(&self, path: &str) -> Vec<(String, String)> {
        self.inner.at(path).map_or_else(
            |_| Vec::new(),
            |m| {
                m.params
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            },
        )
    }

    /// The documented templates closest to `path`, best first (at most 3).
    ///
    /// The cost is bounded whatever the contract's size (a refused request
    /// must not cost more than a served one): only templates with about as
    /// many segments are scored, at most [`MAX_SCORED`] of them, preferring
    /// those that share the first segment.
    pub fn nearest(&self, path: &str) -> Vec<String> {
        let segments = path.split('/').count();
        let first = path.split('/').nth(1).unwrap_or("");
        let mut candidates: Vec<&PathEntry> = self
            .paths
            .iter()
            .filter(|p| p.segments.abs_diff(segments) <= 1)
            .collect();
        if candidates.len() > MAX_SCORED {
            candidates.sort_by_key(|p| p.template.split('/').nth(1) != Some(first));
            candidates.truncate(MAX_SCORED);
        }
        let mut scored: Vec<(f64, &str)> = candidates
            .into_iter()
            .map(|p| (strsim::jaro_winkler(path, &p.template), p.template.as_str()))
            .filter(|(s, _)| *s > 0.7)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored
            .into_iter()
            .take(3)
            .map(|(_, t)| t.to_owned())
            .collect()
    }

    /// Number of documented paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether the contract documents no path.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}
