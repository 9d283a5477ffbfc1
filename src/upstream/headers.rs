//! Header hygiene between client and backend.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::{Forwarded, header_value};

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Identity headers a client could forge to impersonate a tenant, a client
/// certificate or another network position. Removed before forwarding; the
/// gateway sets the trustworthy ones itself. Any header starting with
/// `x-sandgate-` or `sandgate-` is removed too.
pub const IDENTITY_HEADERS: [&str; 14] = [
    "x-forwarded-client-cert",
    "x-client-cert",
    "x-ssl-client-cert",
    "x-client-verify",
    "x-tenant-id",
    "x-tenant",
    "x-client-id",
    "x-user-id",
    "x-real-ip",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
];

/// Whether `name` (lowercase, as `HeaderName`s are) is in [`HOP_BY_HOP`].
/// A `match` rather than a scan of the list: this runs for every header
/// of every forwarded request and answer, and the compiler dispatches on
/// the length first.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Whether `name` is in [`IDENTITY_HEADERS`] or has a gateway prefix.
fn is_forged_identity(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-client-cert"
            | "x-client-cert"
            | "x-ssl-client-cert"
            | "x-client-verify"
            | "x-tenant-id"
            | "x-tenant"
            | "x-client-id"
            | "x-user-id"
            | "x-real-ip"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-port"
    ) || name.starts_with("x-sandgate-")
        || name.starts_with("sandgate-")
}

/// Removes every header for which `doomed` is true, plus any named in
/// `Connection`. One pass over the headers present; nothing is removed (or
/// hashed) for a request that has none of them, which is the usual case.
fn strip(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let mut names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| doomed(k.as_str()))
        .cloned()
        .collect();
    if headers.contains_key(header::CONNECTION) {
        names.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                // Hop-by-hop names went in the pass above (most answers
                // say `keep-alive`): no name to parse for them.
                .filter(|n| !HOP_BY_HOP.iter().any(|h| n.eq_ignore_ascii_case(h)))
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()),
        );
    }
    for name in names {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, is_hop_by_hop);
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_SANDGATE_TENANT: HeaderName = HeaderName::from_static("x-sandgate-tenant");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const X_DRY_RUN: HeaderName = HeaderName::from_static("x-dry-run");
const SANDGATE_CLOCK: HeaderName = HeaderName::from_static("sandgate-clock");

/// Prepares a client's headers for the backend. `dry_run` comes from the
/// request's [`super::Permit`]: only then does the backend see
/// `X-Dry-Run: true`; a client's own `X-Dry-Run` never passes through.
pub(super) fn prepare_request(headers: &mut HeaderMap, fwd: Forwarded<'_>, dry_run: bool) {
    // The backend's Host comes from its own URL, set by the client.
    // When the gateway identified the caller, its secret stays here: the
    // backend learns the tenant from X-Sandgate-Tenant instead.
    let authenticated = fwd.tenant.is_some();
    strip(headers, |n| {
        n == "host"
            || is_hop_by_hop(n)
            || is_forged_identity(n)
            || n == "x-dry-run"
            || (authenticated && (n == "authorization" || n == "x-api-key"))
    });
    if dry_run {
        headers.insert(X_DRY_RUN, HeaderValue::from_static("true"));
    }
    // `sandgate-*` from the client was removed above: only the gateway's
    // own clock reaches the backend.
    if let Some(at) = fwd.clock {
        let text = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(at),
        )
        .to_string();
        if let Some(v) = header_value(&text) {
            headers.insert(SANDGATE_CLOCK, v);
        }
    }
    if let Some(v) = fwd.tenant.and_then(header_value) {
        headers.insert(X_SANDGATE_TENANT, v);
    }
    headers.insert(X_FORWARDED_FOR, fwd.client_ip);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    if let Some(v) = fwd.host {
        headers.insert(X_FORWARDED_HOST, v);
    }
    if let Some(v) = header_value(fwd.request_id) {
        headers.insert(crate::edge::X_REQUEST_ID, v);
    }
    fwd.trace.propagate(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matches_agree_with_the_documented_lists() {
        for n in HOP_BY_HOP {
            assert!(is_hop_by_hop(n), "{n}");
            assert!(!is_forged_identity(n), "{n}");
        }
        for n in IDENTITY_HEADERS {
            assert!(is_forged_identity(n), "{n}");
            assert!(!is_hop_by_hop(n), "{n}");
        }
        for n in [
            "host",
            "content-type",
            "x-request-id",
            "accept",
            "tee",
            "x-forwarded",
        ] {
            assert!(!is_hop_by_hop(n) && !is_forged_identity(n), "{n}");
        }
        assert!(is_forged_identity("x-sandgate-anything") && is_forged_identity("sandgate-clock"));
    }

    #[test]
    fn connection_options_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Private, close"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        // RFC 9110 §7.6.1: a field named like any option goes, even `close`.
        h.insert("close", HeaderValue::from_static("1"));
        h.insert("x-public", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-public"]);
    }

    #[test]
    fn hygiene_removes_hop_by_hop_and_forged_identity() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("x-forwarded-client-cert", "Hash=forged"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-sandgate-tenant", "victim"),
            ("x-dry-run", "false"),
            ("sandgate-clock", "2001-01-01T00:00:00Z"),
            ("host", "api.sandbox.example.com"),
            ("accept", "application/json"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        prepare_request(
            &mut h,
            Forwarded {
                client_ip: HeaderValue::from_static("10.0.0.7"),
                proto: "https",
                host: Some(HeaderValue::from_static("api.sandbox.example.com")),
                request_id: "req_1",
                tenant: None,
                clock: None,
                capture: None,
                trace: &crate::trace_context::TraceContext::new_root(),
            },
            false,
        );
        for gone in [
            "connection",
            "x-secret-hop",
            "te",
            "transfer-encoding",
            "x-forwarded-client-cert",
            "x-sandgate-tenant",
            "x-dry-run",
            "sandgate-clock",
            "host",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.sandbox.example.com");
        assert_eq!(h["x-request-id"], "req_1");
        assert_eq!(h["accept"], "application/json");
    }
}
