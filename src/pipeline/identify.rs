//! Identify: the request's credentials → a [`Principal`] (which tenant,
//! which client, how it proved it). Only sandbox credentials are accepted;
//! production ones are refused with an explanation, and no secret is ever
//! echoed or logged.
//!
//! Credentials, in order: a Bearer JWT from a sandbox issuer (configured or
//! built in), a sandbox API key (`Authorization: Bearer sk_sandbox_…` or
//! `X-Api-Key`), and, when no credential header is sent, a verified client
//! certificate.

use std::sync::Arc;

use http::{HeaderMap, header};
use rustls::pki_types::CertificateDer;

use crate::jwt;
use crate::refusal::{Refusal, Stage};
use crate::sandbox::{Api, Sandbox};
use crate::tenants::{Registry, Tenant, sha256_hex};

/// How the caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A sandbox API key.
    ApiKey,
    /// A JWT from a sandbox issuer.
    Jwt,
    /// A verified client certificate.
    Mtls,
}

impl Via {
    /// Name used in logs and events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Via::ApiKey => "api_key",
            Via::Jwt => "jwt",
            Via::Mtls => "mtls",
        }
    }
}

/// An identified caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The tenant's record.
    pub tenant: Arc<Tenant>,
    /// The client (the OAuth client id for API keys too).
    pub client: String,
    /// Granted scopes (API keys carry none: full access to the sandbox).
    pub scopes: Vec<String>,
    /// How it was proved.
    pub via: Via,
}

/// The credential of a request, if any: a Bearer token or an `X-Api-Key`.
fn credential(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    bearer
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .filter(|c| !c.is_empty())
}

/// Identifies the caller of `api`. `Ok(None)`: the API is public.
pub async fn identify(
    api: &Api,
    sandbox: &Sandbox,
    headers: &HeaderMap,
    peer: Option<&[CertificateDer<'static>]>,
    registry: &Registry,
) -> Result<Option<Principal>, Refusal> {
    let Some(keys) = sandbox.api_keys.as_ref().filter(|_| api.auth_required) else {
        return Ok(None);
    };
    let Some(cred) = credential(headers) else {
        // No credential header: a verified client certificate can stand in.
        if let (Some(kind), Some(leaf)) = (sandbox.mtls_identity, peer.and_then(<[_]>::first)) {
            return identify_mtls(leaf, kind, registry).await.map(Some);
        }
        return Err(missing(api, sandbox));
    };
    if jwt::looks_like_jwt(cred) && !sandbox.jwt.is_empty() {
        return identify_jwt(cred, sandbox, registry).await.map(Some);
    }
    if keys
        .live_prefixes
        .iter()
        .any(|p| cred.starts_with(p.as_str()))
    {
        tracing::warn!(api = %api.name, "production API key refused");
        return Err(Refusal::ProductionCredentials {
            sandbox_prefix: keys.prefix.clone(),
        });
    }
    if !cred.starts_with(keys.prefix.as_str()) {
        return Err(Refusal::MalformedCredentials {
            sandbox_prefix: keys.prefix.clone(),
        });
    }
    let tenant = registry
        .by_api_key_hash(&sha256_hex(cred))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "store failed while identifying a caller");
            Refusal::StoreUnavailable {
                stage: Stage::Identify,
            }
        })?
        .ok_or(Refusal::UnknownApiKey)?;
    Ok(Some(Principal {
        client: tenant.client_id.clone(),
        tenant,
        scopes: Vec::new(),
        via: Via::ApiKey,
    }))
}

/// The refusal for a request without credentials: what this sandbox
/// accepts and where to get a token.
fn missing(api: &Api, sandbox: &Sandbox) -> Refusal {
    let mut accepted = Vec::new();
    if let Some(k) = &sandbox.api_keys {
        accepted.push(format!(
            "a sandbox API key (`{}…`) in `Authorization: Bearer …` or `X-Api-Key`",
            k.prefix
        ));
    }
    if !sandbox.jwt.is_empty() {
        let issuers: Vec<&str> = sandbox
            .jwt
            .issuers
            .iter()
            .map(|i| i.issuer.as_str())
            .collect();
        accepted.push(format!(
            "a token from {} in `Authorization: Bearer …`",
            issuers.join(" or ")
        ));
    }
    if sandbox.mtls_identity.is_some() {
        accepted.push("a registered client certificate (on the TLS listener)".into());
    }
    Refusal::MissingCredentials {
        api: api.name.to_string(),
        accepted,
        token_url: sandbox.builtin_issuer.as_ref().map(|b| {
            format!(
                "{}{}",
                b.issuer.trim_end_matches('/'),
                crate::issuer::TOKEN_PATH
            )
        }),
    }
}

/// A JWT from a sandbox issuer → its tenant.
async fn identify_jwt(
    token: &str,
    sandbox: &Sandbox,
    registry: &Registry,
) -> Result<Principal, Refusal> {
    let token = sandbox.jwt.verify(token).await?;
    let tenant = registry
        .by_id(&token.tenant)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "store failed while identifying a caller");
            Refusal::StoreUnavailable {
                stage: Stage::Identify,
            }
        })?
        .filter(|t| t.deactivated_at.is_none())
        .ok_or(Refusal::UnknownTenant)?;
    Ok(Principal {
        tenant,
        client: token.client.clone(),
        scopes: token.scopes.clone(),
        via: Via::Jwt,
    })
}

/// A verified client certificate → its tenant.
async fn identify_mtls(
    leaf: &CertificateDer<'static>,
    kind: crate::config::MtlsIdentity,
    registry: &Registry,
) -> Result<Principal, Refusal> {
    let identity = crate::mtls::identity(leaf, kind)?;
    let tenant = registry
        .by_mtls_identity(&identity)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "store failed while identifying a caller");
            Refusal::StoreUnavailable {
                stage: Stage::Identify,
            }
        })?
        .ok_or(Refusal::UnknownClientCertificate {
            field: kind.as_str(),
        })?;
    Ok(Principal {
        client: identity,
        tenant: Arc::new(tenant),
        scopes: Vec::new(),
        via: Via::Mtls,
    })
}
