//! Route: `Host` → is this sandbox served here; longest path prefix → API;
//! method + path → operation of the API's contract.

use http::{Method, Request, header};

use crate::contract::OperationMatch;
use crate::refusal::Refusal;
use crate::sandbox::{Api, Sandbox};

/// A request resolved to an API (and, with a contract, an operation).
/// Routing allocates nothing on the success path.
#[derive(Debug)]
pub struct Routed<'a> {
    /// The API.
    pub api: &'a Api,
    /// Its index in [`Sandbox::apis`].
    pub api_index: usize,
    /// How many leading bytes of the request path the API does not see
    /// (its prefix, when `strip_prefix` is on).
    pub strip: usize,
    /// The operation index in the API's contract.
    pub operation: Option<usize>,
}

impl Routed<'_> {
    /// The path the API sees, given the request's full path.
    pub fn api_path<'p>(&self, full: &'p str) -> &'p str {
        match full.get(self.strip..) {
            Some("") | None => "/",
            Some(rest) => rest,
        }
    }
}

/// The host of a request (from `:authority` for HTTP/2, else `Host`),
/// without the port, as sent (compare it case-insensitively).
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
    })?;
    Some(if let Some(rest) = raw.strip_prefix('[') {
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
    })
}

/// Refuses a request for a host this sandbox does not serve.
pub fn check_host<B>(sb: &Sandbox, req: &Request<B>) -> Result<(), Refusal> {
    if !sb.hosts.is_empty() {
        // The common case first, on the `Host` header's bytes: a served
        // host, maybe with a port. Anything else takes the full parse.
        if req.uri().authority().is_none()
            && let Some(raw) = req.headers().get(header::HOST)
            && sb.hosts.iter().any(|h| host_matches(raw.as_bytes(), h))
        {
            return Ok(());
        }
        let host = request_host(req);
        if !host.is_some_and(|h| sb.hosts.iter().any(|s| s.eq_ignore_ascii_case(h))) {
            return Err(Refusal::MisdirectedHost {
                host: host.unwrap_or_default().to_ascii_lowercase(),
                hosts: sb.hosts.clone(),
            });
        }
    }
    Ok(())
}

/// Whether `raw` (a `Host` value) is `host`, in any case, with or without
/// a numeric port.
fn host_matches(raw: &[u8], host: &str) -> bool {
    let Some((name, rest)) = raw.split_at_checked(host.len()) else {
        return false;
    };
    name.eq_ignore_ascii_case(host.as_bytes())
        && match rest.split_first() {
            None => true,
            Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        }
}

/// Resolves the request or refuses it.
pub fn route<'a, B>(sb: &'a Sandbox, req: &Request<B>) -> Result<Routed<'a>, Refusal> {
    check_host(sb, req)?;
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
    let strip = if api.strip_prefix && api.prefix != "/" {
        api.prefix.len()
    } else {
        0
    };
    let mut routed = Routed {
        api,
        api_index,
        strip,
        operation: None,
    };
    let Some(contract) = &api.contract else {
        return Ok(routed);
    };
    let rest = routed.api_path(path);
    match contract.router.resolve(req.method(), rest) {
        OperationMatch::Found { operation } => {
            routed.operation = Some(operation);
            Ok(routed)
        }
        OperationMatch::MethodNotAllowed { template, allow } => Err(Refusal::MethodNotAllowed {
            api: api.name.to_string(),
            method: req.method().to_string(),
            path: template,
            allow,
        }),
        OperationMatch::NotFound => Err(Refusal::UnknownOperation {
            api: api.name.to_string(),
            method: req.method().to_string(),
            path: rest.to_owned(),
            nearest: contract.router.nearest(rest),
        }),
    }
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
