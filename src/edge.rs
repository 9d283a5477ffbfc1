//! The edge: checks of the request head that decide nothing sandbox-specific
//! (size limits, path canonicality) and the request id. Hyper enforces the
//! hard protocol limits (at twice these values); these checks turn the
//! configured limits into explained refusals.

use http::{HeaderMap, HeaderValue, Request, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::config::LimitsConfig;
use crate::refusal::Refusal;

/// The request id header.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Longest inbound `X-Request-Id` kept.
const MAX_REQUEST_ID: usize = 128;

/// The request id: a valid inbound `X-Request-Id` (1–128 characters of
/// `A-Z a-z 0-9 - _ . :`) is kept so a caller can correlate; anything else is
/// replaced by a fresh `req_<ULID>`.
pub fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return v.to_owned();
    }
    // Encoded into a stack buffer: no formatting machinery per request.
    let mut buf = [0u8; ulid::ULID_LEN];
    let ulid = ulid::Ulid::new();
    let mut id = String::with_capacity(4 + ulid::ULID_LEN);
    id.push_str("req_");
    id.push_str(ulid.array_to_str(&mut buf));
    id
}

/// Checks the request head against the configured limits.
pub fn check_head<B>(limits: &LimitsConfig, req: &Request<B>) -> Result<(), Refusal> {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len as u64 > limits.max_uri.bytes() {
        return Err(Refusal::UriTooLong {
            len: uri_len,
            max: limits.max_uri.bytes(),
        });
    }
    let headers = req.headers();
    if headers.len() > limits.max_headers {
        return Err(Refusal::TooManyHeaders {
            count: headers.len(),
            max: limits.max_headers,
        });
    }
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if bytes as u64 > limits.max_header_bytes.bytes() {
        return Err(Refusal::HeadersTooLarge {
            bytes,
            max: limits.max_header_bytes.bytes(),
        });
    }
    if let Some(auth) = headers.get(header::AUTHORIZATION)
        && auth.len() as u64 > limits.max_authorization.bytes()
    {
        return Err(Refusal::HeaderTooLarge {
            name: "authorization",
            bytes: auth.len(),
            max: limits.max_authorization.bytes(),
            rule: "limits.max_authorization",
        });
    }
    check_path(req.uri().path())
}

/// Refuses paths that are not canonical: dot segments (plain or
/// percent-encoded) and encoded slashes or backslashes. Such paths are how
/// requests escape a prefix on the way to a backend.
pub fn check_path(path: &str) -> Result<(), Refusal> {
    if !path.starts_with('/') {
        return Err(Refusal::InvalidPath {
            reason: "does not start with `/`",
        });
    }
    // Fast path, one vectorised scan: no `.`, `%` or `\` means nothing to
    // decode, no dot segment and no backslash.
    if memchr::memchr3(b'.', b'%', b'\\', path.as_bytes()).is_none() {
        return Ok(());
    }
    if memchr::memchr(b'\\', path.as_bytes()).is_some() {
        return Err(Refusal::InvalidPath {
            reason: "has a `\\`",
        });
    }
    for seg in path.split('/') {
        if is_dot_segment(seg) {
            return Err(Refusal::InvalidPath {
                reason: "has a `.` or `..` segment",
            });
        }
    }
    let b = path.as_bytes();
    for i in 0..b.len().saturating_sub(2) {
        if b[i] == b'%' {
            let hex = [b[i + 1].to_ascii_lowercase(), b[i + 2].to_ascii_lowercase()];
            if hex == *b"2f" || hex == *b"5c" {
                return Err(Refusal::InvalidPath {
                    reason: "has an encoded `/` or `\\`",
                });
            }
        }
    }
    Ok(())
}

/// `.` or `..`, with any of the dots percent-encoded (`%2e`, `%2E`).
fn is_dot_segment(seg: &str) -> bool {
    let mut dots = 0;
    let mut rest = seg.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3
            && rest[0] == b'%'
            && rest[1] == b'2'
            && rest[2].eq_ignore_ascii_case(&b'e')
        {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Refuses a body whose `Content-Length` is over `max` before reading any of it.
pub fn check_content_length(headers: &HeaderMap, max: u64, rule: &str) -> Result<(), Refusal> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max
    {
        return Err(Refusal::PayloadTooLarge {
            declared: Some(len),
            max,
            rule: rule.to_owned(),
        });
    }
    Ok(())
}

/// Reads a whole request body, at most `max` bytes.
pub async fn read_body(body: Incoming, max: u64, rule: &str) -> Result<bytes::Bytes, Refusal> {
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::PayloadTooLarge {
            declared: None,
            max,
            rule: rule.to_owned(),
        }),
        Err(_) => Err(Refusal::UnreadableBody),
    }
}

/// Sets the request id on a response.
pub fn set_request_id(headers: &mut HeaderMap, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(X_REQUEST_ID, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_table() {
        let ok = [
            "/",
            "/payments/v1/customers",
            "/a/b.c/d",
            "/a/%20b",
            "/a/..b",
            "/a/.well-known",
        ];
        let bad = [
            "/a/../b",
            "/a/./b",
            "/a/%2e%2E/b",
            "/a%2Fb",
            "/a%5cb",
            "/..",
            "/a/%2e",
            "a/b",
        ];
        for p in ok {
            assert!(check_path(p).is_ok(), "{p} should pass");
        }
        for p in bad {
            assert_eq!(
                check_path(p).map_err(|r| r.code()),
                Err("invalid_path"),
                "{p}"
            );
        }
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        assert!(request_id(&h).starts_with("req_"));
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(
            "x-request-id",
            HeaderValue::from_static("bad id with spaces"),
        );
        assert!(request_id(&h).starts_with("req_"));
    }

    #[test]
    fn head_limits() {
        let limits = LimitsConfig::default();
        let long = format!("/{}", "a".repeat(9000));
        let req = Request::get(long.as_str()).body(()).expect("req");
        assert_eq!(
            check_head(&limits, &req).map_err(|r| r.code()),
            Err("uri_too_long")
        );
        let mut b = Request::get("/");
        for i in 0..101 {
            b = b.header(format!("x-h{i}"), "v");
        }
        let req = b.body(()).expect("req");
        assert_eq!(
            check_head(&limits, &req).map_err(|r| r.code()),
            Err("too_many_headers")
        );
        let req = Request::get("/")
            .header("authorization", "x".repeat(9000))
            .body(())
            .expect("req");
        assert_eq!(
            check_head(&limits, &req).map_err(|r| r.code()),
            Err("header_too_large")
        );
    }
}
