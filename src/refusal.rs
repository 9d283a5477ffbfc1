//! Refusals: every reason the gateway itself says "no", as one typed enum,
//! rendered in exactly one place as RFC 9457 `application/problem+json`.
//!
//! A refusal is the *gateway's* answer. An API's own error (a declined test
//! card, a missing customer) is shaped by that API's contract instead.
//!
//! Invariant: no stage writes an error response by hand; each returns a
//! [`Refusal`] and [`Refusal::into_response`] renders it.

use std::fmt::Write as _;

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::body::{Body, full};

/// The pipeline stage that decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Connection and request-head limits, before anything sandbox-specific.
    Edge,
    /// Host, API and operation resolution.
    Route,
    /// Credentials → principal.
    Identify,
    /// Tenant status and plan.
    Admit,
    /// The tenant's rate limits and quotas.
    Limit,
    /// The request against the API's contract.
    Validate,
    /// Producing the answer: facade or upstream.
    Dispatch,
    /// The internal admin listener.
    Admin,
    /// `Idempotency-Key`: replaying, or claiming the key, before dispatch.
    Idempotency,
    /// The tenant's own endpoints under `/_sandbox/` (test clock, usage).
    Sandbox,
}

impl Stage {
    /// The stage's name as it appears in refusals, logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Edge => "edge",
            Stage::Route => "route",
            Stage::Identify => "identify",
            Stage::Admit => "admit",
            Stage::Limit => "limit",
            Stage::Validate => "validate",
            Stage::Dispatch => "dispatch",
            Stage::Admin => "admin",
            Stage::Idempotency => "idempotency",
            Stage::Sandbox => "sandbox",
        }
    }
}

/// Every reason the gateway refuses a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The request URI is longer than `limits.max_uri`.
    UriTooLong {
        /// Length of the URI sent.
        len: usize,
        /// The configured limit.
        max: u64,
    },
    /// More header fields than `limits.max_headers`.
    TooManyHeaders {
        /// Number of fields sent.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// Header fields larger in total than `limits.max_header_bytes`.
    HeadersTooLarge {
        /// Total size sent.
        bytes: usize,
        /// The configured limit.
        max: u64,
    },
    /// One header field larger than its own limit (e.g. `Authorization`).
    HeaderTooLarge {
        /// The header's name.
        name: &'static str,
        /// Its size.
        bytes: usize,
        /// The configured limit.
        max: u64,
        /// The configuration key of the limit.
        rule: &'static str,
    },
    /// The body is larger than the API's body limit.
    PayloadTooLarge {
        /// The announced `Content-Length`, when there was one.
        declared: Option<u64>,
        /// The limit that applied.
        max: u64,
        /// The configuration key of the limit.
        rule: String,
    },
    /// The request body could not be read (the client aborted or sent a
    /// malformed chunked body).
    UnreadableBody,
    /// The request was not completed within `timeouts.request`.
    RequestTimeout {
        /// The configured timeout, human readable.
        after: String,
    },
    /// The path has dot segments or encoded slashes, which the gateway never
    /// routes (they are how path-confusion and SSRF attacks start).
    InvalidPath {
        /// What exactly is wrong with it.
        reason: &'static str,
    },
    /// The `Host` is not one the sandbox serves.
    MisdirectedHost {
        /// The host that was asked for.
        host: String,
        /// The hosts served.
        hosts: Vec<String>,
    },
    /// No API is served under the path.
    UnknownApi {
        /// The path asked for.
        path: String,
        /// The APIs served, as (name, prefix).
        apis: Vec<(String, String)>,
    },
    /// The API's contract documents no operation at this path.
    UnknownOperation {
        /// The API.
        api: String,
        /// The method asked for.
        method: String,
        /// The path asked for, relative to the API.
        path: String,
        /// The closest documented path templates, best first.
        nearest: Vec<String>,
    },
    /// The path is documented, but not for this method.
    MethodNotAllowed {
        /// The API.
        api: String,
        /// The method asked for.
        method: String,
        /// The documented path template.
        path: String,
        /// The methods documented for it.
        allow: Vec<String>,
    },
    /// The facade has nothing to answer with: the contract documents no
    /// example for the operation's success response.
    NoExample {
        /// The API.
        api: String,
        /// The operation id.
        operation: String,
    },
    /// The backend refused the connection or could not be reached.
    UpstreamUnavailable {
        /// The API.
        api: String,
    },
    /// The backend did not send a response head in time.
    UpstreamTimeout {
        /// The API.
        api: String,
        /// The configured timeout, human readable.
        after: String,
    },
    /// The backend broke the exchange (protocol error, reset).
    UpstreamError {
        /// The API.
        api: String,
    },
    /// Nothing is served at this admin path.
    AdminNotFound {
        /// The path asked for.
        path: String,
    },
    /// No credentials on a request to an API that requires them.
    MissingCredentials {
        /// The API.
        api: String,
        /// The kinds of credential accepted, described for a person.
        accepted: Vec<String>,
        /// Where to get a token (the built-in issuer's token endpoint).
        token_url: Option<String>,
    },
    /// Production credentials sent to the sandbox.
    ProductionCredentials {
        /// The sandbox key prefix to use instead.
        sandbox_prefix: String,
    },
    /// A sandbox API key that belongs to no active sandbox.
    UnknownApiKey,
    /// A token from a production issuer.
    ProductionToken {
        /// The production issuer.
        issuer: String,
        /// The sandbox issuers to get a token from instead.
        sandbox: Vec<String>,
    },
    /// A token from an issuer that is not configured.
    WrongIssuer {
        /// The accepted issuers.
        accepted: Vec<String>,
    },
    /// A token for another audience.
    WrongAudience {
        /// The accepted audiences.
        accepted: Vec<String>,
    },
    /// A token signed with an algorithm the issuer is not allowed to use.
    AlgorithmNotAllowed {
        /// The token's algorithm.
        alg: String,
        /// The allowed ones.
        allowed: Vec<String>,
    },
    /// A token signed by a key the issuer's key set does not have.
    UnknownKey {
        /// The issuer.
        issuer: String,
    },
    /// The request does not match its operation in the contract.
    InvalidRequest {
        /// The API.
        api: String,
        /// The operation.
        operation: String,
        /// Every violation found (at most 50).
        errors: Vec<crate::contract::schema::Violation>,
    },
    /// A request body of a media type the operation does not take.
    UnsupportedMediaType {
        /// The API.
        api: String,
        /// The operation.
        operation: String,
        /// The request's media type (empty when it sent none).
        got: String,
        /// The media types the operation takes.
        accepted: Vec<String>,
    },
    /// A `Prefer` header asks for a response the contract does not document.
    UnsatisfiablePreference {
        /// The API.
        api: String,
        /// The operation.
        operation: String,
        /// The preferences asked for.
        asked: String,
        /// Documented statuses.
        codes: Vec<u16>,
        /// Documented example names.
        examples: Vec<String>,
    },
    /// A rate rule of the tenant's plan has no allowance left now.
    RateLimited {
        /// The tenant.
        tenant: String,
        /// Its plan.
        plan: String,
        /// Which level of the plan the rule is at.
        scope: crate::limits::Scope,
        /// The config path of the rule, e.g. `plans.trial.rate`.
        rule: String,
        /// Requests per window.
        requests: u32,
        /// The window.
        per: std::time::Duration,
        /// The burst.
        burst: u32,
        /// Seconds until the next request is allowed (at least 1).
        retry_after: u64,
    },
    /// The store that keeps the limits' counters failed or was too slow,
    /// and `store.on_error` is `fail_closed`.
    LimitsUnavailable {
        /// The store kind (`redis`, `file`, `memory`).
        store: &'static str,
    },
    /// The tenant already has its plan's maximum of requests in flight.
    TooManyInFlight {
        /// The tenant.
        tenant: String,
        /// Its plan.
        plan: String,
        /// The plan's `concurrency`.
        max: u32,
    },
    /// A quota of the tenant's plan is used up for its period.
    QuotaExhausted {
        /// The tenant.
        tenant: String,
        /// Its plan.
        plan: String,
        /// The config path of the quota, e.g. `plans.trial.quotas[0]`.
        rule: String,
        /// Requests allowed per period.
        requests: u64,
        /// The period.
        period: crate::limits::quota::Period,
        /// When it resets (Unix seconds; `None` for a lifetime quota).
        resets_at: Option<u64>,
    },
    /// Storing the object would take the tenant past its plan's `storage`.
    StorageQuotaExceeded {
        /// The tenant.
        tenant: String,
        /// Its plan.
        plan: String,
        /// The plan's storage, bytes.
        limit: u64,
        /// Bytes stored now.
        used: u64,
        /// Bytes the write needs.
        needed: u64,
    },
    /// The object a stateful request would store or answer does not match
    /// the contract's response schema.
    StateObjectInvalid {
        /// The API.
        api: String,
        /// The operation.
        operation: String,
        /// Where in the object (JSON pointer).
        pointer: String,
        /// What is wrong.
        message: String,
    },
    /// A `/_sandbox/` test helper action does not apply to the object in
    /// its current state.
    ActionNotApplicable {
        /// The action.
        action: String,
        /// The object's id.
        id: String,
        /// What it needs and what the object has, e.g.
        /// `status "requires_action" (it has "succeeded")`.
        needs: String,
    },
    /// A value a scenario rule keys on looks like a real card number.
    RealCardNumber {
        /// The API.
        api: String,
        /// Where in the body (JSON pointer).
        pointer: String,
    },
    /// The issuer's key set (fetched from its URL) has never been
    /// obtained: the issuer has been unreachable since the gateway started.
    IssuerKeysUnavailable {
        /// The issuer.
        issuer: String,
    },
    /// A token whose signature does not verify.
    BadSignature,
    /// A token past its `exp`.
    TokenExpired {
        /// When it expired (RFC 3339).
        at: String,
    },
    /// A token before its `nbf`.
    TokenNotYetValid {
        /// When it becomes valid (RFC 3339).
        at: String,
    },
    /// A token that cannot be understood.
    MalformedToken {
        /// What is wrong with it.
        why: &'static str,
    },
    /// A valid token naming no sandbox of this gateway.
    UnknownTenant,
    /// A verified client certificate whose identity maps to no sandbox.
    UnknownClientCertificate {
        /// The identity field used (`san_uri`, …).
        field: &'static str,
    },
    /// A verified client certificate with zero or several identities of the
    /// configured kind.
    ClientIdentityUnclear {
        /// The identity field used.
        field: &'static str,
        /// How many were found.
        found: usize,
    },
    /// A credential that is not a sandbox API key.
    MalformedCredentials {
        /// The sandbox key prefix.
        sandbox_prefix: String,
    },
    /// The tenant's sandbox has expired.
    SandboxExpired {
        /// The sandbox.
        id: String,
        /// When it expired (RFC 3339).
        expired_at: String,
    },
    /// The tenant's sandbox does not include this API.
    FeatureNotEnabled {
        /// The API.
        api: String,
        /// The APIs it includes.
        enabled: Vec<String>,
    },
    /// `/internal/*` is disabled: the service-token variable is unset.
    AdminTokenUnset {
        /// The variable's name (never its value).
        env: String,
    },
    /// `/internal/*` without the right service token.
    AdminUnauthorized,
    /// No sandbox with this id.
    SandboxNotFound {
        /// The id asked for.
        id: String,
    },
    /// The sandbox is deactivated; it cannot change any more.
    SandboxDeactivated {
        /// The id.
        id: String,
    },
    /// The JSON body of an admin request is not valid.
    InvalidBody {
        /// Every problem, as (JSON pointer, message).
        errors: Vec<(String, String)>,
    },
    /// An extension would take the sandbox past its longest life.
    ExtensionLimit {
        /// The sandbox.
        id: String,
        /// The latest possible expiry (RFC 3339).
        latest: String,
        /// The configured longest life, in days.
        max_days: u32,
    },
    /// No more sandboxes may be active at once.
    CapacityReached {
        /// The configured maximum.
        max: usize,
    },
    /// The store did not answer.
    StoreUnavailable {
        /// The stage that needed it.
        stage: Stage,
    },
    /// `X-Dry-Run` with a value other than `true` or `false`.
    InvalidDryRunHeader {
        /// The value sent (at most 32 characters).
        value: String,
    },
    /// A dry-run write to an API whose backend does not take dry runs
    /// (`dry_run: refuse`).
    DryRunUnsupported {
        /// The API.
        api: String,
        /// Its `dry_run` mode.
        mode: &'static str,
    },
    /// A write that a `require_dry_run` rule says must be a dry run.
    DryRunRequired {
        /// The API.
        api: String,
        /// The method.
        method: String,
        /// The rule, e.g. `apis.payments.require_dry_run[0]`.
        rule: String,
    },
    /// An `Idempotency-Key` that is empty, too long or not visible ASCII.
    InvalidIdempotencyKey {
        /// Its length in bytes.
        len: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An `Idempotency-Key` already used for a different request.
    IdempotencyKeyReused {
        /// Method and path of the request the key was first used with.
        first: String,
    },
    /// The first request with this `Idempotency-Key` is still in flight.
    IdempotencyConflict,
    /// A test-clock change that would move the tenant's time backwards.
    ClockBackwards {
        /// The clock's current time (RFC 3339).
        now: String,
        /// The time asked for (RFC 3339).
        asked: String,
    },
    /// No request with this id in the tenant's request log (another
    /// tenant's id answers exactly the same).
    RequestNotFound {
        /// The request id asked for.
        request_id: String,
    },
    /// A test-clock request that cannot be understood.
    InvalidClockRequest {
        /// What is wrong with it.
        why: String,
    },
    /// A bug or an unexpected condition inside the gateway.
    Internal,
}

impl Refusal {
    /// Stable snake_case identifier a client can branch on.
    pub const fn code(&self) -> &'static str {
        match self {
            Refusal::UriTooLong { .. } => "uri_too_long",
            Refusal::TooManyHeaders { .. } => "too_many_headers",
            Refusal::HeadersTooLarge { .. } => "headers_too_large",
            Refusal::HeaderTooLarge { .. } => "header_too_large",
            Refusal::PayloadTooLarge { .. } => "payload_too_large",
            Refusal::UnreadableBody => "unreadable_body",
            Refusal::RequestTimeout { .. } => "request_timeout",
            Refusal::InvalidPath { .. } => "invalid_path",
            Refusal::MisdirectedHost { .. } => "misdirected_host",
            Refusal::UnknownApi { .. } => "unknown_api",
            Refusal::UnknownOperation { .. } => "unknown_operation",
            Refusal::MethodNotAllowed { .. } => "method_not_allowed",
            Refusal::NoExample { .. } => "no_example",
            Refusal::UpstreamUnavailable { .. } => "upstream_unavailable",
            Refusal::UpstreamTimeout { .. } => "upstream_timeout",
            Refusal::UpstreamError { .. } => "upstream_error",
            Refusal::AdminNotFound { .. } => "not_found",
            Refusal::AdminTokenUnset { .. } => "admin_token_unset",
            Refusal::MissingCredentials { .. } => "missing_credentials",
            Refusal::ProductionCredentials { .. } => "production_credentials",
            Refusal::UnknownApiKey => "unknown_api_key",
            Refusal::ProductionToken { .. } => "production_credentials",
            Refusal::WrongIssuer { .. } => "wrong_issuer",
            Refusal::WrongAudience { .. } => "wrong_audience",
            Refusal::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            Refusal::UnknownKey { .. } => "unknown_key",
            Refusal::IssuerKeysUnavailable { .. } => "issuer_keys_unavailable",
            Refusal::InvalidRequest { .. } => "invalid_request",
            Refusal::RealCardNumber { .. } => "real_card_number",
            Refusal::StorageQuotaExceeded { .. } => "storage_quota_exceeded",
            Refusal::StateObjectInvalid { .. } => "state_object_invalid",
            Refusal::ActionNotApplicable { .. } => "action_not_applicable",
            Refusal::UnsatisfiablePreference { .. } => "unsatisfiable_preference",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::QuotaExhausted { .. } => "quota_exhausted",
            Refusal::TooManyInFlight { .. } => "too_many_in_flight",
            Refusal::LimitsUnavailable { .. } => "limits_unavailable",
            Refusal::UnsupportedMediaType { .. } => "unsupported_media_type",
            Refusal::BadSignature => "bad_signature",
            Refusal::TokenExpired { .. } => "token_expired",
            Refusal::TokenNotYetValid { .. } => "token_not_yet_valid",
            Refusal::MalformedToken { .. } => "malformed_token",
            Refusal::UnknownTenant => "unknown_tenant",
            Refusal::UnknownClientCertificate { .. } => "unknown_client_certificate",
            Refusal::ClientIdentityUnclear { .. } => "client_identity_unclear",
            Refusal::MalformedCredentials { .. } => "malformed_credentials",
            Refusal::SandboxExpired { .. } => "sandbox_expired",
            Refusal::FeatureNotEnabled { .. } => "feature_not_enabled",
            Refusal::AdminUnauthorized => "unauthorized",
            Refusal::SandboxNotFound { .. } => "sandbox_not_found",
            Refusal::SandboxDeactivated { .. } => "sandbox_deactivated",
            Refusal::InvalidBody { .. } => "invalid_body",
            Refusal::ExtensionLimit { .. } => "extension_limit",
            Refusal::CapacityReached { .. } => "capacity_reached",
            Refusal::StoreUnavailable { .. } => "store_unavailable",
            Refusal::InvalidDryRunHeader { .. } => "invalid_dry_run_header",
            Refusal::DryRunUnsupported { .. } => "dry_run_unsupported",
            Refusal::DryRunRequired { .. } => "dry_run_required",
            Refusal::InvalidIdempotencyKey { .. } => "invalid_idempotency_key",
            Refusal::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            Refusal::IdempotencyConflict => "idempotency_conflict",
            Refusal::ClockBackwards { .. } => "clock_backwards",
            Refusal::InvalidClockRequest { .. } => "invalid_clock_request",
            Refusal::RequestNotFound { .. } => "request_not_found",
            Refusal::Internal => "internal_error",
        }
    }

    /// The HTTP status.
    pub const fn status(&self) -> StatusCode {
        match self {
            Refusal::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Refusal::TooManyHeaders { .. }
            | Refusal::HeadersTooLarge { .. }
            | Refusal::HeaderTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UnreadableBody | Refusal::InvalidPath { .. } => StatusCode::BAD_REQUEST,
            Refusal::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Refusal::MisdirectedHost { .. } => StatusCode::MISDIRECTED_REQUEST,
            Refusal::UnknownApi { .. }
            | Refusal::UnknownOperation { .. }
            | Refusal::AdminNotFound { .. }
            | Refusal::SandboxNotFound { .. } => StatusCode::NOT_FOUND,
            Refusal::AdminTokenUnset { .. }
            | Refusal::StoreUnavailable { .. }
            | Refusal::IssuerKeysUnavailable { .. }
            | Refusal::LimitsUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::AdminUnauthorized
            | Refusal::MissingCredentials { .. }
            | Refusal::ProductionCredentials { .. }
            | Refusal::UnknownApiKey
            | Refusal::MalformedCredentials { .. }
            | Refusal::ProductionToken { .. }
            | Refusal::WrongIssuer { .. }
            | Refusal::AlgorithmNotAllowed { .. }
            | Refusal::UnknownKey { .. }
            | Refusal::BadSignature
            | Refusal::TokenExpired { .. }
            | Refusal::TokenNotYetValid { .. }
            | Refusal::MalformedToken { .. }
            | Refusal::UnknownTenant => StatusCode::UNAUTHORIZED,
            Refusal::WrongAudience { .. }
            | Refusal::UnknownClientCertificate { .. }
            | Refusal::ClientIdentityUnclear { .. } => StatusCode::FORBIDDEN,
            Refusal::SandboxExpired { .. } | Refusal::FeatureNotEnabled { .. } => {
                StatusCode::FORBIDDEN
            }
            Refusal::SandboxDeactivated { .. } => StatusCode::CONFLICT,
            Refusal::InvalidBody { .. }
            | Refusal::InvalidRequest { .. }
            | Refusal::RealCardNumber { .. } => StatusCode::BAD_REQUEST,
            Refusal::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::ExtensionLimit { .. }
            | Refusal::UnsatisfiablePreference { .. }
            | Refusal::StateObjectInvalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::StorageQuotaExceeded { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::ActionNotApplicable { .. } => StatusCode::CONFLICT,
            Refusal::CapacityReached { .. }
            | Refusal::RateLimited { .. }
            | Refusal::QuotaExhausted { .. }
            | Refusal::TooManyInFlight { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::NoExample { .. } => StatusCode::NOT_IMPLEMENTED,
            Refusal::UpstreamUnavailable { .. } | Refusal::UpstreamError { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Refusal::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Refusal::InvalidDryRunHeader { .. }
            | Refusal::DryRunUnsupported { .. }
            | Refusal::InvalidIdempotencyKey { .. }
            | Refusal::IdempotencyKeyReused { .. }
            | Refusal::ClockBackwards { .. }
            | Refusal::InvalidClockRequest { .. } => StatusCode::BAD_REQUEST,
            Refusal::DryRunRequired { .. } => StatusCode::PRECONDITION_REQUIRED,
            Refusal::IdempotencyConflict => StatusCode::CONFLICT,
            Refusal::RequestNotFound { .. } => StatusCode::NOT_FOUND,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stage that decided.
    pub const fn stage(&self) -> Stage {
        match self {
            Refusal::UriTooLong { .. }
            | Refusal::TooManyHeaders { .. }
            | Refusal::HeadersTooLarge { .. }
            | Refusal::HeaderTooLarge { .. }
            | Refusal::PayloadTooLarge { .. }
            | Refusal::UnreadableBody
            | Refusal::RequestTimeout { .. }
            | Refusal::InvalidPath { .. } => Stage::Edge,
            Refusal::MisdirectedHost { .. }
            | Refusal::UnknownApi { .. }
            | Refusal::UnknownOperation { .. }
            | Refusal::MethodNotAllowed { .. } => Stage::Route,
            Refusal::RateLimited { .. }
            | Refusal::QuotaExhausted { .. }
            | Refusal::TooManyInFlight { .. }
            | Refusal::LimitsUnavailable { .. } => Stage::Limit,
            Refusal::NoExample { .. }
            | Refusal::RealCardNumber { .. }
            | Refusal::StorageQuotaExceeded { .. }
            | Refusal::StateObjectInvalid { .. }
            | Refusal::ActionNotApplicable { .. }
            | Refusal::UnsatisfiablePreference { .. }
            | Refusal::UpstreamUnavailable { .. }
            | Refusal::UpstreamTimeout { .. }
            | Refusal::UpstreamError { .. }
            | Refusal::Internal => Stage::Dispatch,
            Refusal::MissingCredentials { .. }
            | Refusal::ProductionCredentials { .. }
            | Refusal::UnknownApiKey
            | Refusal::MalformedCredentials { .. }
            | Refusal::WrongAudience { .. }
            | Refusal::UnknownClientCertificate { .. }
            | Refusal::ClientIdentityUnclear { .. }
            | Refusal::ProductionToken { .. }
            | Refusal::WrongIssuer { .. }
            | Refusal::AlgorithmNotAllowed { .. }
            | Refusal::UnknownKey { .. }
            | Refusal::IssuerKeysUnavailable { .. }
            | Refusal::BadSignature
            | Refusal::TokenExpired { .. }
            | Refusal::TokenNotYetValid { .. }
            | Refusal::MalformedToken { .. }
            | Refusal::UnknownTenant => Stage::Identify,
            Refusal::SandboxExpired { .. } | Refusal::FeatureNotEnabled { .. } => Stage::Admit,
            Refusal::InvalidRequest { .. } | Refusal::UnsupportedMediaType { .. } => {
                Stage::Validate
            }
            Refusal::AdminNotFound { .. }
            | Refusal::AdminTokenUnset { .. }
            | Refusal::AdminUnauthorized
            | Refusal::SandboxNotFound { .. }
            | Refusal::SandboxDeactivated { .. }
            | Refusal::InvalidBody { .. }
            | Refusal::ExtensionLimit { .. }
            | Refusal::CapacityReached { .. } => Stage::Admin,
            Refusal::StoreUnavailable { stage } => *stage,
            Refusal::InvalidDryRunHeader { .. } => Stage::Edge,
            Refusal::DryRunRequired { .. } => Stage::Admit,
            Refusal::DryRunUnsupported { .. } => Stage::Dispatch,
            Refusal::InvalidIdempotencyKey { .. }
            | Refusal::IdempotencyKeyReused { .. }
            | Refusal::IdempotencyConflict => Stage::Idempotency,
            Refusal::ClockBackwards { .. }
            | Refusal::InvalidClockRequest { .. }
            | Refusal::RequestNotFound { .. } => Stage::Sandbox,
        }
    }

    /// Short, fixed summary of the problem type.
    pub const fn title(&self) -> &'static str {
        match self {
            Refusal::UriTooLong { .. } => "Request URI too long",
            Refusal::TooManyHeaders { .. } => "Too many request headers",
            Refusal::HeadersTooLarge { .. } => "Request headers too large",
            Refusal::HeaderTooLarge { .. } => "Request header too large",
            Refusal::PayloadTooLarge { .. } => "Request body too large",
            Refusal::UnreadableBody => "Request body could not be read",
            Refusal::RequestTimeout { .. } => "Request not completed in time",
            Refusal::InvalidPath { .. } => "Path not accepted",
            Refusal::MisdirectedHost { .. } => "Host not served here",
            Refusal::UnknownApi { .. } => "No API at this path",
            Refusal::UnknownOperation { .. } => "Operation not in the contract",
            Refusal::MethodNotAllowed { .. } => "Method not allowed",
            Refusal::NoExample { .. } => "No example to answer with",
            Refusal::UpstreamUnavailable { .. } => "Sandbox backend unavailable",
            Refusal::UpstreamTimeout { .. } => "Sandbox backend timed out",
            Refusal::UpstreamError { .. } => "Sandbox backend failed",
            Refusal::AdminNotFound { .. } => "Not found",
            Refusal::AdminTokenUnset { .. } => "Provisioning API disabled",
            Refusal::MissingCredentials { .. } => "Sandbox credentials required",
            Refusal::ProductionCredentials { .. } => "Production credentials refused",
            Refusal::UnknownApiKey => "Unknown sandbox API key",
            Refusal::ProductionToken { .. } => "Production credentials refused",
            Refusal::WrongIssuer { .. } => "Token from an unknown issuer",
            Refusal::WrongAudience { .. } => "Token for another audience",
            Refusal::AlgorithmNotAllowed { .. } => "Token algorithm not allowed",
            Refusal::UnknownKey { .. } => "Token signed by an unknown key",
            Refusal::IssuerKeysUnavailable { .. } => "Issuer's keys unavailable",
            Refusal::InvalidRequest { .. } => "Request does not match the contract",
            Refusal::RealCardNumber { .. } => "Real card number refused",
            Refusal::StorageQuotaExceeded { .. } => "Storage quota exceeded",
            Refusal::StateObjectInvalid { .. } => "Object would not match the contract",
            Refusal::ActionNotApplicable { .. } => "Action does not apply",
            Refusal::UnsatisfiablePreference { .. } => "Preferred response not documented",
            Refusal::RateLimited { .. } => "Rate limit reached",
            Refusal::QuotaExhausted { .. } => "Quota used up",
            Refusal::TooManyInFlight { .. } => "Too many requests in flight",
            Refusal::LimitsUnavailable { .. } => "Limits cannot be checked",
            Refusal::UnsupportedMediaType { .. } => "Unsupported media type",
            Refusal::BadSignature => "Token signature invalid",
            Refusal::TokenExpired { .. } => "Token expired",
            Refusal::TokenNotYetValid { .. } => "Token not yet valid",
            Refusal::MalformedToken { .. } => "Token not understood",
            Refusal::UnknownTenant => "Token names no sandbox",
            Refusal::UnknownClientCertificate { .. } => "Client certificate maps to no sandbox",
            Refusal::ClientIdentityUnclear { .. } => "Client certificate identity unclear",
            Refusal::MalformedCredentials { .. } => "Credentials not understood",
            Refusal::SandboxExpired { .. } => "Sandbox expired",
            Refusal::FeatureNotEnabled { .. } => "API not enabled for this sandbox",
            Refusal::AdminUnauthorized => "Service token required",
            Refusal::SandboxNotFound { .. } => "No such sandbox",
            Refusal::SandboxDeactivated { .. } => "Sandbox deactivated",
            Refusal::InvalidBody { .. } => "Invalid request body",
            Refusal::ExtensionLimit { .. } => "Extension beyond the longest sandbox life",
            Refusal::CapacityReached { .. } => "Sandbox capacity reached",
            Refusal::StoreUnavailable { .. } => "Store unavailable",
            Refusal::InvalidDryRunHeader { .. } => "X-Dry-Run header not understood",
            Refusal::DryRunUnsupported { .. } => "Dry run not supported by this API",
            Refusal::DryRunRequired { .. } => "Dry run required",
            Refusal::InvalidIdempotencyKey { .. } => "Idempotency-Key not accepted",
            Refusal::IdempotencyKeyReused { .. } => "Idempotency-Key reused for another request",
            Refusal::IdempotencyConflict => "Request with this Idempotency-Key in progress",
            Refusal::ClockBackwards { .. } => "Test clock cannot go backwards",
            Refusal::InvalidClockRequest { .. } => "Test clock request not understood",
            Refusal::RequestNotFound { .. } => "No such request in the request log",
            Refusal::Internal => "Internal gateway error",
        }
    }

    /// The configuration entry that decided, when one did.
    pub fn rule(&self) -> Option<String> {
        match self {
            Refusal::UriTooLong { .. } => Some("limits.max_uri".into()),
            Refusal::TooManyHeaders { .. } => Some("limits.max_headers".into()),
            Refusal::HeadersTooLarge { .. } => Some("limits.max_header_bytes".into()),
            Refusal::HeaderTooLarge { rule, .. } => Some((*rule).into()),
            Refusal::PayloadTooLarge { rule, .. } => Some(rule.clone()),
            Refusal::RequestTimeout { .. } => Some("timeouts.request".into()),
            Refusal::MisdirectedHost { .. } => Some("hosts".into()),
            Refusal::UnknownApi { .. } => Some("apis".into()),
            Refusal::UnknownOperation { api, .. }
            | Refusal::MethodNotAllowed { api, .. }
            | Refusal::NoExample { api, .. } => Some(format!("apis.{api}.contract")),
            Refusal::UpstreamUnavailable { api } | Refusal::UpstreamError { api } => {
                Some(format!("apis.{api}.upstream.url"))
            }
            Refusal::UpstreamTimeout { api, .. } => Some(format!("apis.{api}.upstream.timeout")),
            Refusal::AdminTokenUnset { .. } | Refusal::AdminUnauthorized => {
                Some("admin.token_env".into())
            }
            // The tenant endpoints exist because tenants do (`auth.api_keys`).
            Refusal::MissingCredentials { api, .. } if api == crate::tenant_api::API_NAME => {
                Some("auth.api_keys".into())
            }
            Refusal::MissingCredentials { api, .. } => Some(format!("apis.{api}.auth")),
            Refusal::ProductionCredentials { .. } => Some("auth.api_keys.live_prefixes".into()),
            Refusal::ProductionToken { .. } => Some("auth.production_issuers".into()),
            Refusal::WrongIssuer { .. }
            | Refusal::WrongAudience { .. }
            | Refusal::AlgorithmNotAllowed { .. }
            | Refusal::UnknownKey { .. }
            | Refusal::IssuerKeysUnavailable { .. }
            | Refusal::BadSignature
            | Refusal::TokenExpired { .. }
            | Refusal::TokenNotYetValid { .. }
            | Refusal::MalformedToken { .. }
            | Refusal::UnknownTenant => Some("auth.issuers".into()),
            Refusal::UnknownClientCertificate { .. } | Refusal::ClientIdentityUnclear { .. } => {
                Some("auth.mtls.identity".into())
            }
            Refusal::UnknownApiKey | Refusal::MalformedCredentials { .. } => {
                Some("auth.api_keys".into())
            }
            Refusal::SandboxExpired { .. } => Some("tenants.max_lifetime_days".into()),
            Refusal::FeatureNotEnabled { .. } => Some("features_enabled".into()),
            Refusal::InvalidRequest { api, .. } | Refusal::UnsupportedMediaType { api, .. } => {
                Some(format!("apis.{api}.validate"))
            }
            Refusal::RealCardNumber { api, .. } => Some(format!("apis.{api}.scenarios")),
            Refusal::StorageQuotaExceeded { plan, .. } => Some(format!("plans.{plan}.storage")),
            Refusal::StateObjectInvalid { api, .. } => Some(format!("apis.{api}.state")),
            Refusal::ActionNotApplicable { .. } => None,
            Refusal::UnsatisfiablePreference { api, .. } => Some(format!("apis.{api}.contract")),
            Refusal::RateLimited { rule, .. } | Refusal::QuotaExhausted { rule, .. } => {
                Some(rule.clone())
            }
            Refusal::TooManyInFlight { plan, .. } => Some(format!("plans.{plan}.concurrency")),
            Refusal::LimitsUnavailable { .. } => Some("store.on_error".into()),
            Refusal::ExtensionLimit { .. } => Some("tenants.max_lifetime_days".into()),
            Refusal::CapacityReached { .. } => Some("tenants.max_active_sandboxes".into()),
            Refusal::DryRunUnsupported { api, .. } => Some(format!("apis.{api}.dry_run")),
            Refusal::DryRunRequired { rule, .. } => Some(rule.clone()),
            Refusal::InvalidIdempotencyKey { .. }
            | Refusal::InvalidDryRunHeader { .. }
            | Refusal::IdempotencyKeyReused { .. }
            | Refusal::IdempotencyConflict
            | Refusal::ClockBackwards { .. }
            | Refusal::InvalidClockRequest { .. }
            | Refusal::RequestNotFound { .. } => None,
            Refusal::UnreadableBody
            | Refusal::InvalidPath { .. }
            | Refusal::AdminNotFound { .. }
            | Refusal::SandboxNotFound { .. }
            | Refusal::SandboxDeactivated { .. }
            | Refusal::InvalidBody { .. }
            | Refusal::StoreUnavailable { .. }
            | Refusal::Internal => None,
        }
    }

    /// What happened, specific to this request. Never contains a secret.
    pub fn detail(&self) -> String {
        match self {
            Refusal::UriTooLong { len, max } => {
                format!("The request URI is {len} bytes long; at most {max} bytes are accepted.")
            }
            Refusal::TooManyHeaders { count, max } => {
                format!("The request has {count} header fields; at most {max} are accepted.")
            }
            Refusal::HeadersTooLarge { bytes, max } => format!(
                "The request's header fields total {bytes} bytes; at most {max} bytes are accepted."
            ),
            Refusal::HeaderTooLarge {
                name, bytes, max, ..
            } => format!(
                "The `{name}` header is {bytes} bytes long; at most {max} bytes are accepted."
            ),
            Refusal::PayloadTooLarge {
                declared: Some(n),
                max,
                ..
            } => format!(
                "The request body is {n} bytes (Content-Length); at most {max} bytes are accepted."
            ),
            Refusal::PayloadTooLarge {
                declared: None,
                max,
                ..
            } => {
                format!("The request body is larger than the {max} bytes accepted.")
            }
            Refusal::UnreadableBody => {
                "The request body ended early or was not valid HTTP framing.".into()
            }
            Refusal::RequestTimeout { after } => {
                format!("The request was not completed within {after}.")
            }
            Refusal::InvalidPath { reason } => format!("The request path {reason}."),
            Refusal::MisdirectedHost { host, .. } => {
                format!("This gateway does not serve the host '{host}'.")
            }
            Refusal::UnknownApi { path, apis } => {
                let mut d = format!("No API is served at '{path}'. APIs served:");
                for (i, (name, prefix)) in apis.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    let _ = write!(d, "{sep}'{name}' at {prefix}");
                }
                d.push('.');
                d
            }
            Refusal::UnknownOperation {
                api, method, path, ..
            } => format!("API '{api}' documents no operation at {method} {path}."),
            Refusal::MethodNotAllowed {
                api,
                method,
                path,
                allow,
            } => format!(
                "API '{api}' documents {path} for {}, not for {method}.",
                allow.join(", ")
            ),
            Refusal::NoExample { api, operation } => format!(
                "API '{api}' runs as a facade, and the contract documents neither an example nor a schema for the success response of '{operation}'."
            ),
            Refusal::UpstreamUnavailable { api } => {
                format!("The sandbox backend of API '{api}' could not be reached.")
            }
            Refusal::UpstreamTimeout { api, after } => {
                format!("The sandbox backend of API '{api}' did not answer within {after}.")
            }
            Refusal::UpstreamError { api } => format!(
                "The sandbox backend of API '{api}' broke off the exchange before a complete response."
            ),
            Refusal::AdminNotFound { path } => {
                format!("Nothing is served at '{path}' on the admin listener.")
            }
            Refusal::MissingCredentials { api, accepted, .. }
                if api == crate::tenant_api::API_NAME =>
            {
                format!(
                    "The sandbox's own endpoints ({}…) answer only with your sandbox credentials: {}.",
                    crate::tenant_api::PREFIX,
                    accepted.join("; or ")
                )
            }
            Refusal::MissingCredentials { api, accepted, .. } => format!(
                "API '{api}' needs sandbox credentials: {}.",
                accepted.join("; or ")
            ),
            Refusal::ProductionToken { issuer, sandbox } => format!(
                "The token was issued by the production issuer '{issuer}'. This is the sandbox: it accepts tokens from {} only.",
                sandbox.join(", ")
            ),
            Refusal::WrongIssuer { accepted } => format!(
                "The token's issuer is not accepted here; accepted issuers: {}.",
                accepted.join(", ")
            ),
            Refusal::WrongAudience { accepted } => format!(
                "The token is not meant for this gateway; accepted audiences: {}.",
                accepted.join(", ")
            ),
            Refusal::AlgorithmNotAllowed { alg, allowed } => format!(
                "The token is signed with {alg}; this issuer may only use {}.",
                allowed.join(", ")
            ),
            Refusal::UnknownKey { issuer } => {
                format!("The token's signing key is not in the key set of '{issuer}'.")
            }
            Refusal::InvalidRequest {
                api,
                operation,
                errors,
            } => {
                let first = errors
                    .first()
                    .map(|e| format!(" First: {} at {}.", e.message, e.pointer))
                    .unwrap_or_default();
                format!(
                    "The request to operation '{operation}' of API '{api}' does not match the contract: {} problem(s), each listed in `errors`.{first}",
                    errors.len()
                )
            }
            Refusal::UnsatisfiablePreference {
                api,
                operation,
                asked,
                ..
            } => format!(
                "The request prefers `{asked}`, but operation '{operation}' of API '{api}' documents no such response (or, for `dynamic=true`, no JSON schema to generate it from)."
            ),
            Refusal::RateLimited {
                tenant,
                plan,
                scope,
                requests,
                per,
                burst,
                retry_after,
                ..
            } => format!(
                "Sandbox '{tenant}' (plan '{plan}') has used its {} rate limit of {requests} requests per {} (bursts up to {burst}); the next request is allowed in {retry_after} s.",
                scope.as_str(),
                humantime::format_duration(*per)
            ),
            Refusal::LimitsUnavailable { store } => format!(
                "The {store} store that keeps usage counters did not answer in time, and this sandbox refuses requests it cannot count (store.on_error: fail_closed)."
            ),
            Refusal::TooManyInFlight { tenant, plan, max } => format!(
                "Sandbox '{tenant}' (plan '{plan}') already has {max} requests in flight, its plan's maximum."
            ),
            Refusal::QuotaExhausted {
                tenant,
                plan,
                requests,
                period,
                resets_at,
                ..
            } => match resets_at {
                Some(at) => format!(
                    "Sandbox '{tenant}' (plan '{plan}') has used its quota of {requests} requests per {} (UTC); it resets at {}.",
                    period.as_str(),
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(*at)
                    )
                ),
                None => format!(
                    "Sandbox '{tenant}' (plan '{plan}') has used its lifetime quota of {requests} requests."
                ),
            },
            Refusal::StorageQuotaExceeded {
                tenant,
                plan,
                limit,
                used,
                needed,
            } => format!(
                "Sandbox '{tenant}' (plan '{plan}') stores {used} bytes of state; this write needs {needed} more and the plan allows {limit}."
            ),
            Refusal::StateObjectInvalid {
                api,
                operation,
                pointer,
                message,
            } => format!(
                "The object this request to API '{api}' (operation '{operation}') would store or answer does not match the contract at {pointer}: {message}. Nothing was stored."
            ),
            Refusal::ActionNotApplicable { action, id, needs } => {
                format!("Action '{action}' needs '{id}' to have {needs}.")
            }
            Refusal::RealCardNumber { api, pointer } => format!(
                "The value at {pointer} of this request to API '{api}' looks like a real card number. This is a sandbox: never send real card data to it. The number was not stored or logged."
            ),
            Refusal::UnsupportedMediaType {
                api,
                operation,
                got,
                accepted,
            } => format!(
                "Operation '{operation}' of API '{api}' takes {} bodies, not {}.",
                accepted.join(" or "),
                if got.is_empty() {
                    "a body without Content-Type".to_owned()
                } else {
                    format!("'{got}'")
                }
            ),
            Refusal::InvalidDryRunHeader { value } => {
                format!("`X-Dry-Run: {value}` is neither `true` nor `false` (sent once).")
            }
            Refusal::DryRunUnsupported { api, mode } => format!(
                "API '{api}' does not take dry runs (`dry_run: {mode}`): its backend cannot simulate a write, and the gateway never sends a dry run to a backend that has not declared it can."
            ),
            Refusal::DryRunRequired { api, method, .. } => format!(
                "A policy of API '{api}' says this {method} must be a dry run for this caller; nothing was done."
            ),
            Refusal::InvalidIdempotencyKey { len, why } => {
                format!("The Idempotency-Key ({len} bytes) {why}.")
            }
            Refusal::IdempotencyKeyReused { first } => format!(
                "This Idempotency-Key was first used with a different request ({first}, or the same with another body); a key names exactly one request."
            ),
            Refusal::IdempotencyConflict => {
                "Another request with this Idempotency-Key is still being processed.".into()
            }
            Refusal::ClockBackwards { now, asked } => format!(
                "The sandbox's test clock is at {now}; it only moves forward, and {asked} is earlier."
            ),
            Refusal::InvalidClockRequest { why } => format!("The test clock request {why}."),
            Refusal::RequestNotFound { request_id } => {
                format!("No request with id '{request_id}' is in this sandbox's request log.")
            }
            Refusal::IssuerKeysUnavailable { issuer } => format!(
                "The key set of '{issuer}' could not be fetched since the gateway started, so no token of it can be verified yet."
            ),
            Refusal::BadSignature => "The token's signature does not verify.".into(),
            Refusal::TokenExpired { at } => format!("The token expired at {at}."),
            Refusal::TokenNotYetValid { at } => format!("The token is not valid before {at}."),
            Refusal::MalformedToken { why } => format!("The token is not accepted: {why}."),
            Refusal::UnknownTenant => {
                "The token is valid but names no sandbox of this gateway (check its tenant claim)."
                    .into()
            }
            Refusal::UnknownClientCertificate { field } => format!(
                "The client certificate is valid, but its {field} identity belongs to no active sandbox."
            ),
            Refusal::ClientIdentityUnclear { field, found } => format!(
                "The client certificate must carry exactly one {field} identity; it carries {found}."
            ),
            Refusal::ProductionCredentials { sandbox_prefix } => format!(
                "The request carries a production API key. This is the sandbox: it accepts only sandbox keys (they start with `{sandbox_prefix}`)."
            ),
            Refusal::UnknownApiKey => {
                "The sandbox API key belongs to no active sandbox (it may have been deactivated)."
                    .into()
            }
            Refusal::MalformedCredentials { sandbox_prefix } => format!(
                "The credential sent is not a sandbox API key (those start with `{sandbox_prefix}`)."
            ),
            Refusal::SandboxExpired { id, expired_at } => {
                format!("Sandbox '{id}' expired at {expired_at}.")
            }
            Refusal::FeatureNotEnabled { api, enabled } => format!(
                "This sandbox includes the APIs {}; '{api}' is not one of them.",
                enabled.join(", ")
            ),
            Refusal::AdminTokenUnset { env } => format!(
                "The provisioning API is disabled: the environment variable {env} that holds its service token is not set."
            ),
            Refusal::AdminUnauthorized => {
                "The request has no valid service token in `Authorization: Bearer …`.".into()
            }
            Refusal::SandboxNotFound { id } => format!("No sandbox has the id '{id}'."),
            Refusal::SandboxDeactivated { id } => {
                format!("Sandbox '{id}' is deactivated and can no longer change.")
            }
            Refusal::InvalidBody { errors } => {
                let list: Vec<String> = errors.iter().map(|(p, m)| format!("{p}: {m}")).collect();
                format!("The request body is not valid: {}.", list.join("; "))
            }
            Refusal::ExtensionLimit {
                id,
                latest,
                max_days,
            } => format!(
                "Sandbox '{id}' may live at most {max_days} days in total; the latest possible expiry is {latest}."
            ),
            Refusal::CapacityReached { max } => {
                format!("{max} sandboxes are active, the most allowed at once.")
            }
            Refusal::StoreUnavailable { .. } => "The gateway's store did not answer.".into(),
            Refusal::Internal => "The gateway failed while handling this request.".into(),
        }
    }

    /// What the caller can do next.
    pub fn hint(&self) -> String {
        match self {
            Refusal::UriTooLong { .. } => "Move long parameters into a request body.".into(),
            Refusal::TooManyHeaders { .. } | Refusal::HeadersTooLarge { .. } => {
                "Send fewer or smaller headers (large cookies are the usual cause).".into()
            }
            Refusal::HeaderTooLarge { name, .. } => format!("Send a shorter `{name}` header."),
            Refusal::PayloadTooLarge { .. } => {
                "Send a smaller body; the limit is set per API by the sandbox operators.".into()
            }
            Refusal::UnreadableBody => "Resend the request with a complete body.".into(),
            Refusal::RequestTimeout { .. } => {
                "Send the request body promptly, or retry on a faster connection.".into()
            }
            Refusal::InvalidPath { .. } => {
                "Send the canonical path: no `.` or `..` segments and no encoded `/` or `\\`.".into()
            }
            Refusal::MisdirectedHost { hosts, .. } => {
                format!("Send the request to one of: {}.", hosts.join(", "))
            }
            Refusal::UnknownApi { apis, .. } => match apis.first() {
                Some((_, prefix)) => format!("Start the path with an API's prefix, e.g. {prefix}/…"),
                None => "This sandbox serves no API yet.".into(),
            },
            Refusal::UnknownOperation { nearest, .. } if !nearest.is_empty() => {
                format!("Documented paths close to it: {}.", nearest.join(", "))
            }
            Refusal::UnknownOperation { .. } => {
                "Check the path against the API's OpenAPI contract.".into()
            }
            Refusal::MethodNotAllowed { allow, .. } => {
                format!("Use one of: {}.", allow.join(", "))
            }
            Refusal::NoExample { .. } => {
                "Ask the API's team to add an `example` to the success response in the contract.".into()
            }
            Refusal::UpstreamUnavailable { .. } | Refusal::UpstreamError { .. } => {
                "Retry later; if it persists, tell the sandbox operators.".into()
            }
            Refusal::UpstreamTimeout { .. } => {
                "Retry later (use an Idempotency-Key for writes); if it persists, tell the sandbox operators.".into()
            }
            Refusal::AdminNotFound { .. } => {
                "The admin listener serves /healthz, /readyz, /metrics and /internal/sandboxes.".into()
            }
            Refusal::AdminTokenUnset { env } => {
                format!("Set {env} in the gateway's environment and restart it.")
            }
            Refusal::MissingCredentials {
                token_url: Some(url),
                ..
            } => format!(
                "Use the sandbox credentials you were given at provisioning; with the client id and secret, get a token at {url} (OAuth client credentials grant)."
            ),
            Refusal::MissingCredentials { .. } | Refusal::UnknownApiKey | Refusal::MalformedCredentials { .. } => {
                "Use the sandbox credentials you were given at provisioning; ask your sandbox contact for new ones if they are lost.".into()
            }
            Refusal::ProductionToken { .. } => {
                "Never send production tokens to the sandbox; get a token from a sandbox issuer.".into()
            }
            Refusal::WrongIssuer { .. }
            | Refusal::WrongAudience { .. }
            | Refusal::AlgorithmNotAllowed { .. }
            | Refusal::UnknownKey { .. }
            | Refusal::BadSignature
            | Refusal::MalformedToken { .. }
            | Refusal::UnknownTenant => {
                "Get a new token from your sandbox issuer, for this gateway's audience.".into()
            }
            Refusal::UnknownClientCertificate { .. } => {
                "Ask your sandbox contact to register this certificate's identity for your sandbox.".into()
            }
            Refusal::ClientIdentityUnclear { .. } => {
                "Use a client certificate with exactly one identity of the kind this sandbox maps.".into()
            }
            Refusal::TokenExpired { .. } | Refusal::TokenNotYetValid { .. } => {
                "Get a fresh token (and check the client's clock).".into()
            }
            Refusal::ProductionCredentials { .. } => {
                "Never send production credentials to the sandbox; use the sandbox API key from your sandbox provisioning email.".into()
            }
            Refusal::SandboxExpired { .. } => {
                "Ask your sandbox contact to extend it (POST /internal/sandboxes/{id}/extend), or to provision a new one.".into()
            }
            Refusal::FeatureNotEnabled { .. } => {
                "Ask your sandbox contact to enable this API for your sandbox.".into()
            }
            Refusal::AdminUnauthorized => {
                "Send `Authorization: Bearer <service token>`; the token is in the variable named by admin.token_env.".into()
            }
            Refusal::SandboxNotFound { .. } => {
                "List the sandboxes with GET /internal/sandboxes.".into()
            }
            Refusal::SandboxDeactivated { .. } => "Provision a new sandbox.".into(),
            Refusal::InvalidBody { .. } => {
                "Fix the fields listed in `errors` and send the request again.".into()
            }
            Refusal::ExtensionLimit { latest, .. } => {
                format!("Extend by fewer days (to {latest} at the latest), or provision a new sandbox.")
            }
            Refusal::CapacityReached { .. } => {
                "Deactivate sandboxes that are no longer used (DELETE /internal/sandboxes/{id}), or raise tenants.max_active_sandboxes.".into()
            }
            Refusal::StoreUnavailable { .. } => "Retry shortly; if it persists, check the store.".into(),
            Refusal::InvalidRequest { .. } => {
                "Fix each field listed in `errors` (its `pointer` says where: /path, /query, /header or /body); the API's contract is the reference.".into()
            }
            Refusal::UnsatisfiablePreference { .. } => {
                "Ask for one of the documented statuses (`Prefer: code=…`) or example names (`Prefer: example=…`) listed in `available`.".into()
            }
            Refusal::RateLimited { retry_after, .. } => format!(
                "Wait {retry_after} s (Retry-After) and spread requests out; the RateLimit headers on every answer say how much is left. A bigger plan raises the limit."
            ),
            Refusal::LimitsUnavailable { .. } => {
                "Retry shortly (Retry-After); if it persists, tell the sandbox operators their store is unreachable.".into()
            }
            Refusal::TooManyInFlight { .. } => {
                "Wait for some of your requests to finish, then retry (Retry-After); send fewer requests at once.".into()
            }
            Refusal::QuotaExhausted { resets_at, .. } => match resets_at {
                Some(_) => "Wait until the quota resets (Retry-After), or ask for a bigger plan.".into(),
                None => "Ask your sandbox contact for a bigger plan, or reset the sandbox's usage.".into(),
            },
            Refusal::StorageQuotaExceeded { .. } => {
                "Delete objects you no longer need, reset the sandbox (POST /_sandbox/reset), or ask for a plan with more storage.".into()
            }
            Refusal::StateObjectInvalid { .. } => {
                "Change the field named in the detail; if the request is valid, the sandbox's contract or configuration needs fixing: report the request id to its operators.".into()
            }
            Refusal::ActionNotApplicable { .. } => {
                "Bring the object into the state the action needs first (for example, confirm a payment intent with pm_card_authenticationRequired before authenticating it).".into()
            }
            Refusal::RealCardNumber { .. } => {
                "Use a test card number (4242424242424242 succeeds, 4000000000000002 is declined) or a test payment method such as pm_card_visa.".into()
            }
            Refusal::UnsupportedMediaType { accepted, .. } => format!(
                "Send the body as {} with a matching Content-Type.",
                accepted.join(" or ")
            ),
            Refusal::IssuerKeysUnavailable { .. } => {
                "Retry shortly; if it persists, tell the sandbox operators their token issuer's key set URL is unreachable.".into()
            }
            Refusal::InvalidDryRunHeader { .. } => {
                "Send `X-Dry-Run: true` to simulate a write, or leave the header out (or send `false`) for a real one.".into()
            }
            Refusal::DryRunUnsupported { .. } => {
                "Send the request without X-Dry-Run, or ask the API's team to support dry runs (dry_run: simulate or forward).".into()
            }
            Refusal::DryRunRequired { .. } => {
                "Add `X-Dry-Run: true` to the request to see what it would do; use credentials without this restriction for a real write.".into()
            }
            Refusal::InvalidIdempotencyKey { .. } => {
                "Send a key of 1 to 255 visible ASCII characters, such as a UUID.".into()
            }
            Refusal::IdempotencyKeyReused { .. } => {
                "Use a new Idempotency-Key (e.g. a fresh UUID) for each distinct request; retry a request with its own key and the very same body.".into()
            }
            Refusal::IdempotencyConflict => {
                "Wait for the first request to finish, then retry with the same key to get its answer (Retry-After).".into()
            }
            Refusal::ClockBackwards { .. } => {
                "Advance the clock (`{\"advance\": \"1d\"}`) or set a later `frozen_time`; DELETE /_sandbox/clock returns to real time.".into()
            }
            Refusal::InvalidClockRequest { .. } => {
                "Send {\"frozen_time\": \"2027-01-01T00:00:00Z\"} or {\"advance\": \"30d\"} (exactly one of them).".into()
            }
            Refusal::RequestNotFound { .. } => {
                "Use the X-Request-Id of an answer sent to this sandbox's own credentials; the log keeps the latest requests (traces.max_per_tenant) for traces.max_age. GET /_sandbox/requests lists them.".into()
            }
            Refusal::Internal => "Retry; if it persists, report the request id to the sandbox operators.".into(),
        }
    }

    /// Whether retrying the same request can succeed.
    pub const fn retryable(&self) -> bool {
        matches!(
            self,
            Refusal::RequestTimeout { .. }
                | Refusal::UpstreamUnavailable { .. }
                | Refusal::UpstreamTimeout { .. }
                | Refusal::UpstreamError { .. }
                | Refusal::StoreUnavailable { .. }
                | Refusal::IssuerKeysUnavailable { .. }
                | Refusal::RateLimited { .. }
                | Refusal::TooManyInFlight { .. }
                | Refusal::LimitsUnavailable { .. }
                | Refusal::IdempotencyConflict
                | Refusal::QuotaExhausted {
                    resets_at: Some(_),
                    ..
                }
                | Refusal::Internal
        )
    }

    /// Renders the refusal as RFC 9457 problem+json. The only place a refusal
    /// becomes a response.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        self.into_response_traced(request_id, None)
    }

    /// Renders the refusal like [`Refusal::into_response`], with a `trace`
    /// member (the path of the request's decision trace) when the caller
    /// was identified and its trace is kept.
    pub fn into_response_traced(self, request_id: &str, trace: Option<&str>) -> Response<Body> {
        let mut body = Map::new();
        let code = self.code();
        body.insert(
            "type".into(),
            json!(format!(
                "https://docs.sandgate.dev/problems/{}",
                code.replace('_', "-")
            )),
        );
        body.insert("title".into(), json!(self.title()));
        body.insert("status".into(), json!(self.status().as_u16()));
        body.insert("detail".into(), json!(self.detail()));
        body.insert("code".into(), json!(code));
        body.insert("stage".into(), json!(self.stage().as_str()));
        if let Some(rule) = self.rule() {
            body.insert("rule".into(), json!(rule));
        }
        body.insert("hint".into(), json!(self.hint()));
        body.insert("request_id".into(), json!(request_id));
        body.insert("retryable".into(), json!(self.retryable()));
        if let Some(trace) = trace {
            body.insert("trace".into(), json!(trace));
        }
        match &self {
            Refusal::UnknownOperation { nearest, .. } if !nearest.is_empty() => {
                body.insert("nearest".into(), json!(nearest));
            }
            Refusal::MethodNotAllowed { allow, .. } => {
                body.insert("allow".into(), json!(allow));
            }
            Refusal::InvalidRequest { errors, .. } => {
                let list: Vec<Value> = errors
                    .iter()
                    .map(|e| json!({"pointer": e.pointer, "message": e.message, "keyword": e.keyword}))
                    .collect();
                body.insert("errors".into(), Value::Array(list));
            }
            Refusal::UnsupportedMediaType { accepted, .. } => {
                body.insert("accepted".into(), json!(accepted));
            }
            Refusal::RateLimited {
                tenant,
                plan,
                scope,
                requests,
                per,
                burst,
                retry_after,
                ..
            } => {
                body.insert("tenant".into(), json!(tenant));
                body.insert("plan".into(), json!(plan));
                body.insert("retry_after".into(), json!(retry_after));
                body.insert(
                    "limit".into(),
                    json!({"scope": scope.as_str(), "requests": requests, "per": humantime::format_duration(*per).to_string(), "burst": burst}),
                );
            }
            Refusal::TooManyInFlight { tenant, plan, max } => {
                body.insert("tenant".into(), json!(tenant));
                body.insert("plan".into(), json!(plan));
                body.insert("concurrency".into(), json!(max));
            }
            Refusal::QuotaExhausted {
                tenant,
                plan,
                requests,
                period,
                resets_at,
                ..
            } => {
                body.insert("tenant".into(), json!(tenant));
                body.insert("plan".into(), json!(plan));
                body.insert(
                    "quota".into(),
                    json!({"requests": requests, "per": period.as_str()}),
                );
                if let Some(at) = resets_at {
                    body.insert(
                        "resets_at".into(),
                        json!(
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + std::time::Duration::from_secs(*at)
                            )
                            .to_string()
                        ),
                    );
                }
            }
            Refusal::UnsatisfiablePreference {
                codes, examples, ..
            } => {
                body.insert(
                    "available".into(),
                    json!({"codes": codes, "examples": examples}),
                );
            }
            Refusal::InvalidBody { errors } => {
                let list: Vec<Value> = errors
                    .iter()
                    .map(|(p, m)| json!({"pointer": p, "message": m}))
                    .collect();
                body.insert("errors".into(), Value::Array(list));
            }
            Refusal::StorageQuotaExceeded {
                tenant,
                plan,
                limit,
                used,
                needed,
            } => {
                body.insert("tenant".into(), json!(tenant));
                body.insert("plan".into(), json!(plan));
                body.insert(
                    "storage".into(),
                    json!({"limit": limit, "used": used, "needed": needed}),
                );
            }
            Refusal::StateObjectInvalid { pointer, .. } => {
                body.insert("pointer".into(), json!(pointer));
            }
            Refusal::UnknownApi { apis, .. } => {
                let list: Vec<Value> = apis
                    .iter()
                    .map(|(n, p)| json!({"name": n, "prefix": p}))
                    .collect();
                body.insert("apis".into(), Value::Array(list));
            }
            _ => {}
        }
        let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        let mut resp = Response::new(full(bytes));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Refusal::MethodNotAllowed { allow, .. } = &self
            && let Ok(v) = HeaderValue::from_str(&allow.join(", "))
        {
            headers.insert(header::ALLOW, v);
        }
        if let Refusal::RateLimited { retry_after, .. } = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if let Refusal::TooManyInFlight { .. }
        | Refusal::LimitsUnavailable { .. }
        | Refusal::IdempotencyConflict = &self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Refusal::QuotaExhausted {
            resets_at: Some(at),
            ..
        } = &self
        {
            let wait = at.saturating_sub(crate::tenants::now_secs()).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
        }
        match &self {
            Refusal::AdminUnauthorized | Refusal::MissingCredentials { .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Refusal::ProductionCredentials { .. }
            | Refusal::UnknownApiKey
            | Refusal::MalformedCredentials { .. }
            | Refusal::ProductionToken { .. }
            | Refusal::WrongIssuer { .. }
            | Refusal::AlgorithmNotAllowed { .. }
            | Refusal::UnknownKey { .. }
            | Refusal::BadSignature
            | Refusal::TokenExpired { .. }
            | Refusal::TokenNotYetValid { .. }
            | Refusal::MalformedToken { .. }
            | Refusal::UnknownTenant => {
                // RFC 6750 §3.
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        // The request body may be left partly unread, and hyper then closes
        // an HTTP/1.1 connection after the answer: say so, or the client
        // reuses it and its next request fails.
        if matches!(
            self,
            Refusal::RequestTimeout { .. }
                | Refusal::PayloadTooLarge { .. }
                | Refusal::UnreadableBody
        ) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests;
