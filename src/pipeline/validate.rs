//! Validate: the request against its operation in the API's contract —
//! path, query and header parameters (typed by their schemas and
//! serialization styles) and the body (JSON or form, by its media type).
//!
//! Per API (`validate`): `enforce` refuses with 400 `invalid_request`
//! listing every violation with a JSON pointer (or 415
//! `unsupported_media_type`), `report` lets the request through and says
//! what is wrong in a `Sandgate-Validation` response header, `off` skips
//! the stage. When the operation documents a body, it is read here (within
//! the API's body limit) and handed to dispatch already read.

use http::HeaderValue;
use http::request::Parts;

use super::route::Routed;
use crate::body::RequestBody;
use crate::config::ValidateMode;
use crate::contract::request::{Mismatch, RequestParts};
use crate::edge;
use crate::refusal::Refusal;

/// The response header that reports violations in `report` mode.
pub const SANDGATE_VALIDATION: http::HeaderName =
    http::HeaderName::from_static("sandgate-validation");

/// Checks the request; returns its body (read, when the check needed it)
/// and, in `report` mode, the header value describing what is wrong. A
/// body read here goes into the decision trace first, so a refused
/// request's trace shows what was sent.
pub async fn validate(
    routed: &Routed<'_>,
    parts: &Parts,
    body: RequestBody,
    trace: &mut crate::trace::Recorder,
) -> Result<(RequestBody, Option<HeaderValue>), Refusal> {
    let api = routed.api;
    let Some((contract, index)) = api.contract.as_ref().zip(routed.operation) else {
        return Ok((body, None));
    };
    if api.validate == ValidateMode::Off {
        return Ok((body, None));
    }
    let op = &contract.operations[index];
    let body = match body {
        RequestBody::Streaming(incoming) if op.request.has_body() => {
            edge::check_content_length(&parts.headers, api.max_body, &api.max_body_rule)?;
            RequestBody::Read(edge::read_body(incoming, api.max_body, &api.max_body_rule).await?)
        }
        other => other,
    };
    if let RequestBody::Read(b) = &body {
        trace.request_body(b);
    }
    let bytes: &[u8] = match &body {
        RequestBody::Read(b) => b,
        RequestBody::Streaming(_) => &[],
    };
    let request = RequestParts {
        path: routed.api_path(parts.uri.path()),
        query: parts.uri.query(),
        headers: &parts.headers,
        body: bytes,
    };
    let mismatch = match op.request.check(&op.template, &request) {
        Ok(()) => return Ok((body, None)),
        Err(m) => m,
    };
    let refusal = match mismatch {
        Mismatch::Invalid(errors) => Refusal::InvalidRequest {
            api: api.name.to_string(),
            operation: op.id.clone(),
            errors,
        },
        Mismatch::UnsupportedMediaType { got, accepted } => Refusal::UnsupportedMediaType {
            api: api.name.to_string(),
            operation: op.id.clone(),
            got,
            accepted,
        },
    };
    match api.validate {
        ValidateMode::Report => {
            tracing::info!(api = %api.name, operation = %op.id, code = refusal.code(), "request does not match the contract (report mode: let through)");
            Ok((body, Some(report_header(&refusal))))
        }
        _ => Err(refusal),
    }
}

/// `invalid_request; count=2; at="/query/limit /body/amount"`
fn report_header(refusal: &Refusal) -> HeaderValue {
    let text = match refusal {
        Refusal::InvalidRequest { errors, .. } => {
            let at: Vec<&str> = errors.iter().take(10).map(|e| e.pointer.as_str()).collect();
            format!(
                "invalid_request; count={}; at=\"{}\"",
                errors.len(),
                at.join(" ")
            )
        }
        other => other.code().to_owned(),
    };
    let safe: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&safe).unwrap_or_else(|_| HeaderValue::from_static("invalid_request"))
}
