//! Route: `Host` → is this sandbox served here; longest path prefix → API;
//! method + path → operation of the API's contract.

use http::{Method, Request, header};

use crate::contract::OperationMatch;
use crate::refusal::Refusal;
use crate::sandbox::{Api, Sandbox};

/// A request resolved to an API (and, with a contract, an operation).
#[derive(Debug)]
pub struct Routed<'a> {
    /// The API.
    pub api: &'a Api,
    /// Its index in [`Sandbox::apis`].
    pub api_index: usize,
    /// The path the API sees: the prefix removed when `strip_prefix` is on.
    pub path: String,
    /// The operation index in the API's contract.
    pub operation: Option<usize>,
    /// Path parameters of the operation.
    pub params: Vec<(String, String)>,
    /// The host the client asked for.
    pub host: Option<String>,
}

/// The host of a request (from `:authority` for HTTP/2, else `Host`),
/// lower-case and without the port.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
    })?;
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: [::1]:8080
        rest.split(']').next().unwrap_or(rest)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    Some(host.to_ascii_lowercase())
}

/// Resolves the request or refuses it.
pub fn route<'a, B>(sb: &'a Sandbox, req: &Request<B>) -> Result<Routed<'a>, Refusal> {
    let host = request_host(req);
    if !sb.hosts.is_empty()
        && !host
            .as_deref()
            .is_some_and(|h| sb.hosts.iter().any(|s| s == h))
    {
        return Err(Refusal::MisdirectedHost {
            host: host.unwrap_or_default(),
            hosts: sb.hosts.clone(),
        });
    }
    let path = req.uri().path();
    let Some((api_index, api)) = sb
        .apis
        .iter()
        .enumerate()
        .find(|(_, a)| prefix_matches(&a.prefix, path))
    else {
        return Err(Refusal::UnknownApi {
            path: path.to_owned(),
            apis: sb.api_list.clone(),
        });
    };
    let rest = if api.strip_prefix && api.prefix != "/" {
        match &path[api.prefix.len()..] {
            "" => "/",
            r => r,
        }
    } else {
        path
    };
    let (operation, params) = match &api.contract {
        None => (None, Vec::new()),
        Some(contract) => match contract.router.resolve(req.method(), rest) {
            OperationMatch::Found { operation, params } => (Some(operation), params),
            OperationMatch::MethodNotAllowed { template, allow } => {
                return Err(Refusal::MethodNotAllowed {
                    api: api.name.to_string(),
                    method: req.method().to_string(),
                    path: template,
                    allow,
                });
            }
            OperationMatch::NotFound => {
                return Err(Refusal::UnknownOperation {
                    api: api.name.to_string(),
                    method: req.method().to_string(),
                    path: rest.to_owned(),
                    nearest: contract.router.nearest(rest),
                });
            }
        },
    };
    Ok(Routed {
        api,
        api_index,
        path: rest.to_owned(),
        operation,
        params,
        host,
    })
}

/// Whether `prefix` covers `path` on a segment boundary.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// Whether a method may change state (for later stages: dry-run, idempotency).
pub fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

#[cfg(test)]
mod tests;
