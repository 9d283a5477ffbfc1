//! The built-in token issuer: an OAuth 2.0 authorization server for the
//! client credentials grant (RFC 6749 §4.4), so a tenant without an identity
//! provider of its own can still test with real JWTs.
//!
//! - `POST /oauth/token`: `grant_type=client_credentials`, the client
//!   authenticated with `client_secret_basic` or `client_secret_post` (one,
//!   not both); answers `{access_token, token_type, expires_in, scope}`, or
//!   an RFC 6749 §5.2 error (`invalid_client`, `invalid_request`, …).
//! - `GET /.well-known/jwks.json`: the public signing key.
//! - `GET /.well-known/openid-configuration`: issuer, `jwks_uri`,
//!   `token_endpoint`.
//!
//! Tokens are ES256 JWTs (`typ: at+jwt`, RFC 9068) naming the tenant in
//! `tenant`; the identify stage verifies them as it verifies any configured
//! issuer's (see [`crate::jwt`]), with no shortcut.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use crate::body::{Body, full};
use crate::config::{BuiltinIssuerConfig, ConfigError, Source};
use crate::refusal::Refusal;
use crate::sandbox::Sandbox;
use crate::tenants::{Registry, Status, Tenant, now_secs, sha256_hex};

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/oauth/token";
/// The key set's path.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The discovery document's path.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// The largest token request body read.
const MAX_FORM: u64 = 8 * 1024;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The issuer's ES256 key.
pub struct SigningKey {
    encoding: EncodingKey,
    /// RFC 7638 thumbprint of the public key, used as `kid`.
    kid: String,
    x: String,
    y: String,
    /// Kept in memory only (the bundled demo).
    ephemeral: bool,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("ephemeral", &self.ephemeral)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A key from its PKCS#8 DER.
    fn from_pkcs8(der: &[u8], ephemeral: bool) -> Result<SigningKey, String> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|e| format!("not a PKCS#8 P-256 (ES256) private key: {e}"))?;
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
            return Err("unexpected public key encoding".into());
        };
        let (x, y) = (B64URL.encode(x), B64URL.encode(y));
        let thumbprint_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64URL.encode(ring::digest::digest(
            &ring::digest::SHA256,
            thumbprint_input.as_bytes(),
        ));
        let encoding = EncodingKey::from_ec_pem(pem("PRIVATE KEY", der).as_bytes())
            .map_err(|e| format!("the key is not usable for ES256: {e}"))?;
        Ok(SigningKey {
            encoding,
            kid,
            x,
            y,
            ephemeral,
        })
    }

    /// A new random key, with its PKCS#8 DER.
    fn generate(ephemeral: bool) -> Result<(SigningKey, Vec<u8>), String> {
        let der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| "no system randomness to generate a signing key".to_owned())?;
        let key = SigningKey::from_pkcs8(der.as_ref(), ephemeral)?;
        Ok((key, der.as_ref().to_vec()))
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        json!({"kty": "EC", "crv": "P-256", "x": self.x, "y": self.y, "kid": self.kid, "use": "sig", "alg": "ES256"})
    }
}

/// PEM text of `der`.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Reads the signing key at `rel`, or creates it (mode 0600) when absent.
/// With `create` false (`sandgate check`) a missing key is not an error and
/// nothing is written. The demo (embedded source) keeps a key in memory.
fn signing_key(source: &Source, rel: &Path, create: bool) -> Result<SigningKey, String> {
    let Source::Dir(dir) = source else {
        return SigningKey::generate(true).map(|(k, _)| k);
    };
    let path: PathBuf = dir.join(rel);
    match std::fs::read(&path) {
        Ok(bytes) => {
            use rustls::pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
            let der = PrivatePkcs8KeyDer::from_pem_slice(&bytes).map_err(|e| {
                format!(
                    "`{}` is not a PEM `PRIVATE KEY` (PKCS#8): {e}",
                    path.display()
                )
            })?;
            SigningKey::from_pkcs8(der.secret_pkcs8_der(), false)
                .map_err(|m| format!("`{}`: {m}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (key, der) = SigningKey::generate(!create)?;
            if create {
                write_new_key(&path, &pem("PRIVATE KEY", &der)).map_err(|e| {
                    format!("cannot create the signing key `{}`: {e}", path.display())
                })?;
                tracing::info!(path = %path.display(), kid = %key.kid, "generated the built-in issuer's signing key");
            }
            Ok(key)
        }
        Err(e) => Err(format!("cannot read `{}`: {e}", path.display())),
    }
}

/// Writes a new private key file, readable by its owner only, never
/// replacing an existing one.
fn write_new_key(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// The compiled built-in issuer.
#[derive(Debug)]
pub struct BuiltinIssuer {
    /// Its `iss`, and the base URL of its endpoints.
    pub issuer: String,
    /// Audiences; tokens carry the first.
    pub audiences: Vec<String>,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// Grantable scopes.
    pub scopes: Vec<String>,
    key: Arc<SigningKey>,
}

impl BuiltinIssuer {
    /// Compiles the built-in issuer; `public_url` is the default `issuer`.
    pub fn build(
        cfg: &BuiltinIssuerConfig,
        public_url: &str,
        source: &Source,
        file: &Path,
        create_key: bool,
    ) -> Result<BuiltinIssuer, ConfigError> {
        let key = signing_key(source, &cfg.signing_key.value, create_key)
            .map_err(|m| ConfigError::new(file, cfg.signing_key.referenced.line(), m))?;
        let issuer = cfg
            .issuer
            .as_ref()
            .map_or_else(|| public_url.to_owned(), |i| i.value.clone());
        let audiences = cfg
            .audiences
            .clone()
            .unwrap_or_else(|| vec![issuer.clone()]);
        Ok(BuiltinIssuer {
            issuer,
            audiences,
            token_ttl: cfg.token_ttl.get(),
            scopes: cfg.scopes.clone(),
            key: Arc::new(key),
        })
    }

    /// The issuer as the identify stage verifies it: a fixed key set of one key.
    pub fn verifier(&self) -> Result<crate::jwt::Issuer, String> {
        let key = DecodingKey::from_ec_components(&self.key.x, &self.key.y)
            .map_err(|e| format!("the signing key's public half is not usable: {e}"))?;
        Ok(crate::jwt::Issuer::fixed(
            self.issuer.clone(),
            self.audiences.clone(),
            Algorithm::ES256,
            vec![(Some(self.key.kid.clone()), key)],
        ))
    }

    /// Keeps `previous`'s key when both keep theirs in memory only (the
    /// demo), so a reload does not invalidate the tokens handed out.
    pub fn inherit_key(&mut self, previous: &BuiltinIssuer) {
        if self.key.ephemeral && previous.key.ephemeral {
            self.key = previous.key.clone();
        }
    }

    /// A signed access token for `tenant`'s client with `scopes`; returns
    /// the token and its lifetime in seconds.
    pub fn mint(
        &self,
        tenant: &Tenant,
        scopes: &[&str],
        now: u64,
    ) -> Result<(String, u64), Refusal> {
        let exp = now
            .saturating_add(self.token_ttl.as_secs())
            .min(tenant.expires_at);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some("at+jwt".into());
        let claims = json!({
            "iss": self.issuer,
            "sub": tenant.client_id,
            "aud": self.audiences.first(),
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": ulid::Ulid::new().to_string(),
            "client_id": tenant.client_id,
            "tenant": tenant.id,
            "scope": scopes.join(" "),
        });
        let token = jsonwebtoken::encode(&header, &claims, &self.key.encoding).map_err(|e| {
            tracing::error!(error = %e, "signing a token failed");
            Refusal::Internal
        })?;
        Ok((token, exp.saturating_sub(now)))
    }
}

/// One of the issuer's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /oauth/token`.
    Token,
    /// `GET /.well-known/jwks.json`.
    Jwks,
    /// `GET /.well-known/openid-configuration`.
    Discovery,
}

/// The endpoint at `path`, when the sandbox has a built-in issuer.
pub fn endpoint(sandbox: &Sandbox, path: &str) -> Option<Endpoint> {
    sandbox.builtin_issuer.as_ref()?;
    match path {
        TOKEN_PATH => Some(Endpoint::Token),
        JWKS_PATH => Some(Endpoint::Jwks),
        DISCOVERY_PATH => Some(Endpoint::Discovery),
        _ => None,
    }
}

/// Answers a request to one of the issuer's endpoints.
pub async fn serve(
    endpoint: Endpoint,
    sandbox: &Sandbox,
    registry: &Registry,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let Some(issuer) = &sandbox.builtin_issuer else {
        return Err(Refusal::Internal);
    };
    let allowed: &[&str] = match endpoint {
        Endpoint::Token => &["POST"],
        Endpoint::Jwks | Endpoint::Discovery => &["GET", "HEAD"],
    };
    if !allowed.contains(&req.method().as_str()) {
        return Err(Refusal::MethodNotAllowed {
            api: "oauth".into(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            allow: allowed.iter().map(|m| (*m).to_owned()).collect(),
        });
    }
    match endpoint {
        Endpoint::Jwks => Ok(json_response(
            StatusCode::OK,
            &json!({"keys": [issuer.key.jwk()]}),
            "public, max-age=300",
        )),
        Endpoint::Discovery => {
            let base = issuer.issuer.trim_end_matches('/');
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "issuer": issuer.issuer,
                    "jwks_uri": format!("{base}{JWKS_PATH}"),
                    "token_endpoint": format!("{base}{TOKEN_PATH}"),
                    "grant_types_supported": ["client_credentials"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                    "scopes_supported": issuer.scopes,
                    "response_types_supported": ["token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                }),
                "public, max-age=300",
            ))
        }
        Endpoint::Token => Ok(match token(issuer, registry, req).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }),
    }
}

fn json_response(status: StatusCode, v: &Value, cache: &'static str) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// The client tried HTTP Basic: a 401 then names the scheme.
    basic: bool,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            basic: false,
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_client(description: impl Into<String>, basic: bool) -> Self {
        Self {
            basic,
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
        }
    }

    /// The `error` code.
    pub fn code(&self) -> &'static str {
        self.error
    }

    fn into_response(self) -> Response<Body> {
        tracing::info!(error = self.error, "token request refused");
        let mut r = json_response(
            self.status,
            &json!({"error": self.error, "error_description": self.description}),
            "no-store",
        );
        r.headers_mut()
            .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = if self.basic {
                "Basic realm=\"sandgate\", charset=\"UTF-8\""
            } else {
                "Basic realm=\"sandgate\""
            };
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        r
    }
}

/// The client credentials a token request carries, and how.
struct ClientAuth {
    id: String,
    secret: String,
    basic: bool,
}

/// `Authorization: Basic` credentials (RFC 6749 §2.3.1: both parts are
/// form-urlencoded before base64).
fn basic_credentials(headers: &http::HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        OAuthError::invalid_client(
            "the Authorization header is not valid HTTP Basic credentials",
            true,
        )
    };
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(
            "only HTTP Basic client authentication (or client_id and client_secret in the form) is accepted here",
            true,
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| -> String {
        form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

/// Compares two equal-length hex digests in constant time.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn token(
    issuer: &BuiltinIssuer,
    registry: &Registry,
    req: Request<Incoming>,
) -> Result<Response<Body>, OAuthError> {
    let basic = basic_credentials(req.headers())?;
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
        .unwrap_or(false);
    if !form_type {
        return Err(OAuthError::invalid_request(
            "send the token request as a form: Content-Type: application/x-www-form-urlencoded",
        ));
    }
    let body: Bytes = crate::edge::read_body(req.into_body(), MAX_FORM, "")
        .await
        .map_err(|_| {
            OAuthError::invalid_request(format!(
                "the token request could not be read (at most {MAX_FORM} bytes are accepted)"
            ))
        })?;
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(&body) {
        if params.iter().any(|(seen, _)| *seen == k) {
            return Err(OAuthError::invalid_request(format!(
                "parameter `{k}` is sent more than once"
            )));
        }
        params.push((k.into_owned(), v.into_owned()));
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match param("grant_type") {
        None => {
            return Err(OAuthError::invalid_request(
                "`grant_type` is missing; use grant_type=client_credentials",
            ));
        }
        Some("client_credentials") => {}
        Some(other) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!(
                    "grant type `{}` is not supported; this issuer supports client_credentials",
                    other.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    let auth = match (basic, param("client_id"), param("client_secret")) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "the client authenticates twice (HTTP Basic and form parameters); use one method",
            ));
        }
        (Some((id, secret)), None, None) => ClientAuth {
            id,
            secret,
            basic: true,
        },
        (None, Some(id), Some(secret)) => ClientAuth {
            id: id.to_owned(),
            secret: secret.to_owned(),
            basic: false,
        },
        (None, _, _) => {
            return Err(OAuthError::invalid_client(
                "client authentication is missing: send client_id and client_secret with HTTP Basic or in the form (they were given when the sandbox was provisioned)",
                false,
            ));
        }
    };
    let refused = |basic| {
        OAuthError::invalid_client(
            "unknown client or wrong secret (the secret is shown once, when the sandbox is provisioned)",
            basic,
        )
    };
    let tenant = registry
        .by_client_id(&auth.id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "store failed during a token request");
            OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the gateway's store did not answer; retry shortly",
            )
        })?
        .ok_or_else(|| refused(auth.basic))?;
    if !same_digest(&sha256_hex(&auth.secret), &tenant.client_secret_sha256) {
        return Err(refused(auth.basic));
    }
    let now = now_secs();
    match tenant.status(now) {
        Status::Active => {}
        Status::Deactivated => {
            return Err(OAuthError::invalid_client(
                "this sandbox has been deactivated; its credentials no longer work",
                auth.basic,
            ));
        }
        Status::Expired => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                format!(
                    "sandbox {} expired at {}; ask your sandbox contact to extend it",
                    tenant.id,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(tenant.expires_at)
                    )
                ),
            ));
        }
    }
    let granted: Vec<&str> = match param("scope") {
        None => issuer.scopes.iter().map(String::as_str).collect(),
        Some(asked) => {
            let asked: Vec<&str> = asked.split(' ').filter(|s| !s.is_empty()).collect();
            if let Some(unknown) = asked
                .iter()
                .find(|s| !issuer.scopes.iter().any(|g| g == *s))
            {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!(
                        "scope `{}` cannot be granted; grantable scopes: {}",
                        unknown.chars().take(64).collect::<String>(),
                        issuer.scopes.join(" ")
                    ),
                ));
            }
            asked
        }
    };
    let (token, expires_in) = issuer.mint(&tenant, &granted, now).map_err(|_| {
        OAuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the token could not be signed; report the request id to the sandbox operators",
        )
    })?;
    tracing::info!(tenant = %tenant.id, "token issued");
    let mut resp = json_response(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": granted.join(" "),
        }),
        "no-store",
    );
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(resp)
}
