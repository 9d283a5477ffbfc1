//! Dry run: `X-Dry-Run: true` on a write (POST, PUT, PATCH, DELETE) runs
//! every stage up to dispatch and then simulates; nothing is sent to a
//! backend that has not declared it understands the header, no state is
//! committed and no idempotency record is written.
//!
//! This module decides the three things that happen before dispatch: the
//! header is parsed right after the edge (a bad value is refused before any
//! other work), the API's `require_dry_run` rules are checked right after
//! admit (they depend on the caller's scopes), and the marker that goes on
//! the answer. Whether a dry run may reach the backend is decided by
//! [`crate::upstream::Permit`], the only way to call the proxy.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::identify::Principal;
use crate::refusal::Refusal;
use crate::sandbox::Api;

/// The request header asking for a dry run, and the response header
/// saying what was done with it.
pub const X_DRY_RUN: HeaderName = HeaderName::from_static("x-dry-run");

/// What the client asked for with `X-Dry-Run`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Asked {
    /// No header, or `false`: a normal request.
    #[default]
    No,
    /// `true` on a write: simulate it.
    Write,
    /// `true` on a method that changes nothing (GET, HEAD, OPTIONS): the
    /// request runs as usual and is marked `not-applicable`.
    NotApplicable,
}

impl Asked {
    /// The response marker: `simulated` for a dry-run write (on every
    /// answer, refusals included: nothing was done either way),
    /// `not-applicable` for a dry run of a method that changes nothing.
    pub fn marker(self) -> Option<HeaderValue> {
        match self {
            Asked::No => None,
            Asked::Write => Some(HeaderValue::from_static("simulated")),
            Asked::NotApplicable => Some(HeaderValue::from_static("not-applicable")),
        }
    }
}

/// Whether `method` is a write (a dry run and an idempotency key apply).
pub fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Parses `X-Dry-Run`: absent or `false` → [`Asked::No`]; `true` →
/// [`Asked::Write`] on a write, [`Asked::NotApplicable`] otherwise; any
/// other value (or the header sent twice) → 400 `invalid_dry_run_header`.
/// Case and surrounding spaces do not matter.
pub fn parse(method: &Method, headers: &HeaderMap) -> Result<Asked, Refusal> {
    let mut values = headers.get_all(X_DRY_RUN).iter();
    let Some(value) = values.next() else {
        return Ok(Asked::No);
    };
    let invalid = || Refusal::InvalidDryRunHeader {
        value: String::from_utf8_lossy(value.as_bytes())
            .chars()
            .take(32)
            .collect(),
    };
    if values.next().is_some() {
        return Err(invalid());
    }
    let text = value.to_str().map_err(|_| invalid())?.trim();
    if text.eq_ignore_ascii_case("false") {
        Ok(Asked::No)
    } else if text.eq_ignore_ascii_case("true") {
        Ok(if is_write(method) {
            Asked::Write
        } else {
            Asked::NotApplicable
        })
    } else {
        Err(invalid())
    }
}

/// One compiled `require_dry_run` rule of an API.
#[derive(Debug)]
pub struct Requirement {
    /// Its configuration path, e.g. `apis.payments.require_dry_run[0]`.
    pub rule: String,
    /// Write methods covered (empty: all).
    pub methods: Vec<Method>,
    /// Operation indexes covered (empty: all).
    pub operations: Vec<usize>,
    /// Scopes, any of which makes a caller covered (empty: every caller).
    pub scopes: Vec<String>,
}

impl Requirement {
    /// Whether the rule covers this write.
    fn covers(&self, method: &Method, operation: Option<usize>, scopes: &[String]) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.operations.is_empty()
                || operation.is_some_and(|op| self.operations.contains(&op)))
            && (self.scopes.is_empty() || scopes.iter().any(|s| self.scopes.contains(s)))
    }
}

/// The admit-stage check: a write covered by one of the API's
/// `require_dry_run` rules must be a dry run (428 `dry_run_required`).
pub fn require(
    api: &Api,
    method: &Method,
    operation: Option<usize>,
    principal: Option<&Principal>,
    asked: Asked,
) -> Result<(), Refusal> {
    if asked == Asked::Write || !is_write(method) || api.require_dry_run.is_empty() {
        return Ok(());
    }
    let scopes: &[String] = principal.map_or(&[], |p| &p.scopes);
    match api
        .require_dry_run
        .iter()
        .find(|r| r.covers(method, operation, scopes))
    {
        Some(r) => Err(Refusal::DryRunRequired {
            api: api.name.to_string(),
            method: method.to_string(),
            rule: r.rule.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_DRY_RUN, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn the_header_is_true_false_or_refused() {
        let cases: &[(&Method, &[&str], Option<Asked>)] = &[
            (&Method::POST, &[], Some(Asked::No)),
            (&Method::POST, &["false"], Some(Asked::No)),
            (&Method::POST, &["true"], Some(Asked::Write)),
            (&Method::DELETE, &[" TRUE "], Some(Asked::Write)),
            (&Method::GET, &["true"], Some(Asked::NotApplicable)),
            (&Method::HEAD, &["true"], Some(Asked::NotApplicable)),
            (&Method::GET, &["false"], Some(Asked::No)),
            (&Method::POST, &["maybe"], None),
            (&Method::GET, &["1"], None),
            (&Method::POST, &[""], None),
            (&Method::POST, &["true", "true"], None),
        ];
        for (method, values, expect) in cases {
            let got = parse(method, &headers(values)).ok();
            assert_eq!(got, *expect, "{method} {values:?}");
        }
        let Err(r) = parse(&Method::PUT, &headers(&["maybe"])) else {
            panic!("refused");
        };
        assert_eq!(r.code(), "invalid_dry_run_header");
        assert_eq!(r.status(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_requirement_covers_only_what_it_names() {
        let r = Requirement {
            rule: "apis.a.require_dry_run[0]".into(),
            methods: vec![Method::DELETE],
            operations: vec![],
            scopes: vec!["try_it".into()],
        };
        let try_it = ["try_it".to_owned()];
        assert!(r.covers(&Method::DELETE, Some(1), &try_it));
        assert!(!r.covers(&Method::POST, Some(1), &try_it));
        assert!(!r.covers(&Method::DELETE, Some(1), &[]));
        let op = Requirement {
            rule: "apis.a.require_dry_run[1]".into(),
            methods: vec![],
            operations: vec![3],
            scopes: vec![],
        };
        assert!(op.covers(&Method::POST, Some(3), &[]));
        assert!(!op.covers(&Method::POST, Some(2), &[]));
        assert!(!op.covers(&Method::POST, None, &[]));
    }
}
