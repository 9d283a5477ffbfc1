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
use crate::tenants::{Registry, Tenant};

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

/// An identified caller. Cheap to clone (reference-counted parts).
#[derive(Clone, Debug)]
pub struct Principal {
    /// The tenant's record.
    pub tenant: Arc<Tenant>,
    /// The client (the OAuth client id for API keys too).
    pub client: Arc<str>,
    /// Granted scopes (API keys carry none: full access to the sandbox).
    pub scopes: Arc<[String]>,
    /// How it was proved.
    pub via: Via,
    /// The tenant's in-process limit state on this node (requests in
    /// flight, quota counters), when the worker's credential cache had it at
    /// hand: the limit stage then finds it without a lookup.
    pub limit_state: Option<LimitState>,
}

/// A worker's handle to a tenant's limit state.
pub type LimitState = crate::limits::per_tenant::Handle<crate::limits::TenantState>;

/// The `X-Api-Key` header (a name made once, not parsed per lookup).
pub const X_API_KEY: header::HeaderName = header::HeaderName::from_static("x-api-key");

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
                .get(X_API_KEY)
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
    if sandbox.api_keys.is_none() || !api.auth_required {
        return Ok(None);
    }
    caller(&api.name, sandbox, headers, peer, registry)
        .await
        .map(Some)
}

/// Identifies a caller that must present sandbox credentials (`api` names
/// what it called, in refusals and logs).
pub async fn caller(
    api: &str,
    sandbox: &Sandbox,
    headers: &HeaderMap,
    peer: Option<&[CertificateDer<'static>]>,
    registry: &Registry,
) -> Result<Principal, Refusal> {
    let Some(cred) = credential(headers) else {
        // No credential header: a verified client certificate can stand in.
        if let (Some(kind), Some(leaf)) = (sandbox.mtls_identity, peer.and_then(<[_]>::first)) {
            return identify_mtls(leaf, kind, registry).await;
        }
        return Err(missing(api, sandbox));
    };
    // The common case: a credential this worker resolved moments ago.
    let fingerprint = local::fingerprint(cred);
    if let Some(p) = local::get(registry, sandbox, fingerprint) {
        return Ok(p);
    }
    let digest = local::digest(cred);
    let (principal, exp) = identify_credential(api, sandbox, cred, &digest, registry).await?;
    local::put(registry, sandbox, fingerprint, &principal, exp);
    Ok(principal)
}

/// Resolves a credential header (JWT or API key) through the shared caches
/// and the store; returns the principal and, for a token, its `exp`.
async fn identify_credential(
    api: &str,
    sandbox: &Sandbox,
    cred: &str,
    digest: &[u8; 32],
    registry: &Registry,
) -> Result<(Principal, Option<u64>), Refusal> {
    let Some(keys) = sandbox.api_keys.as_ref() else {
        return Err(Refusal::Internal);
    };
    if jwt::looks_like_jwt(cred) && !sandbox.jwt.is_empty() {
        return identify_jwt(cred, sandbox, registry).await;
    }
    if keys
        .live_prefixes
        .iter()
        .any(|p| cred.starts_with(p.as_str()))
    {
        tracing::warn!(api = %api, "production API key refused");
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
        .by_api_key_hash(&crate::tenants::hex(digest))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "store failed while identifying a caller");
            Refusal::StoreUnavailable {
                stage: Stage::Identify,
            }
        })?
        .ok_or(Refusal::UnknownApiKey)?;
    Ok((
        Principal {
            client: Arc::from(tenant.client_id.as_str()),
            tenant,
            scopes: Arc::from([]),
            via: Via::ApiKey,
            limit_state: None,
        },
        None,
    ))
}

/// The refusal for a request without credentials: what this sandbox
/// accepts and where to get a token.
fn missing(api: &str, sandbox: &Sandbox) -> Refusal {
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
        api: api.to_owned(),
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
) -> Result<(Principal, Option<u64>), Refusal> {
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
    Ok((
        Principal {
            tenant,
            client: Arc::from(token.client.as_str()),
            scopes: Arc::from(token.scopes.as_slice()),
            via: Via::Jwt,
            limit_state: None,
        },
        Some(token.exp),
    ))
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
        client: Arc::from(identity),
        tenant: Arc::new(tenant),
        scopes: Arc::from([]),
        via: Via::Mtls,
        limit_state: None,
    })
}

/// A small per-worker cache of resolved credentials, in front of the shared
/// caches: a hit costs one keyed SipHash and one lookup in a map only this thread
/// touches, and hands out a tenant record whose reference count only this
/// thread changes (a shared one would bounce between the cores on every
/// request).
///
/// An entry is used only while the registry has seen no change since it was
/// made (so a deactivation on this replica takes effect at once), for at
/// most a second (so a change made by another replica is seen
/// within a second of the shared caches' TTL), never past its token's
/// `exp`, and only for the sandbox configuration it was made under.
mod local {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Instant;

    use super::Principal;
    use crate::sandbox::Sandbox;
    use crate::tenants::Registry;

    /// Most entries per worker; when full, the map is cleared.
    const MAX_ENTRIES: usize = 4096;
    /// How long an entry is used.
    const TTL: std::time::Duration = std::time::Duration::from_secs(1);

    struct Entry {
        principal: Principal,
        generation: u64,
        until: Instant,
        exp: Option<u64>,
    }

    /// (registry, sandbox, [`fingerprint`] of the credential).
    type Key = (u64, u64, u128);

    thread_local! {
        // foldhash: the keys are already keyed hashes, bounded in number.
        static ENTRIES: RefCell<HashMap<Key, Entry, foldhash::fast::RandomState>> =
            RefCell::new(HashMap::default());
    }

    /// The credential's keyed 128-bit SipHash-2-4, under a key drawn at
    /// random when the process starts and never shown: what the cache
    /// keeps instead of the credential. SipHash is a pseudo-random
    /// function: without the key, no one can make two credentials meet
    /// (and by chance, two of them meet once in 2^64 pairs), and it costs a
    /// fraction of a SHA-256 (a JWT is ten SHA-256 blocks; the cache is hit
    /// on nearly every request).
    pub fn fingerprint(cred: &str) -> u128 {
        use siphasher::sip128::Hasher128 as _;
        use std::hash::Hasher as _;
        static KEY: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| {
            let mut k = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                .expect("the system's random number generator");
            k
        });
        let mut h = siphasher::sip128::SipHasher24::new_with_key(key);
        h.write(cred.as_bytes());
        h.finish128().as_u128()
    }

    /// SHA-256 of a credential.
    pub fn digest(cred: &str) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, cred.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    pub fn get(registry: &Registry, sandbox: &Sandbox, fingerprint: u128) -> Option<Principal> {
        let key = (registry.id(), sandbox.id, fingerprint);
        ENTRIES.with(|m| {
            let m = m.borrow();
            let e = m.get(&key)?;
            let fresh = e.generation == registry.generation()
                && Instant::now() < e.until
                && e.exp.is_none_or(|exp| crate::tenants::now_secs() < exp);
            fresh.then(|| e.principal.clone())
        })
    }

    pub fn put(
        registry: &Registry,
        sandbox: &Sandbox,
        fingerprint: u128,
        principal: &Principal,
        exp: Option<u64>,
    ) {
        let entry = Entry {
            // This thread's own copy of the record: a hit clones these
            // `Arc`s, and their counts then stay in this worker's cache.
            principal: Principal {
                tenant: Arc::new((*principal.tenant).clone()),
                client: Arc::from(&*principal.client),
                scopes: Arc::from(&*principal.scopes),
                via: principal.via,
                // Found once per entry, not on every hit.
                limit_state: (!sandbox.plans.plans.is_empty())
                    .then(|| registry.in_flight().state(&principal.tenant.id)),
            },
            generation: registry.generation(),
            until: Instant::now() + TTL,
            exp,
        };
        ENTRIES.with(|m| {
            let mut m = m.borrow_mut();
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
            m.insert((registry.id(), sandbox.id, fingerprint), entry);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::local::fingerprint;

    #[test]
    fn a_credential_has_one_fingerprint_and_a_changed_one_another() {
        let key = "sk_sandbox_4eC39HqLyjWDarjtT1zdp7dc";
        assert_eq!(fingerprint(key), fingerprint(key));
        let mut seen = std::collections::HashSet::new();
        seen.insert(fingerprint(key));
        // Every one-character change, and every prefix, is another credential.
        for i in 0..key.len() {
            let mut changed = key.as_bytes().to_vec();
            changed[i] ^= 1;
            let changed = String::from_utf8(changed).expect("ASCII");
            assert!(seen.insert(fingerprint(&changed)), "{changed}");
            assert!(seen.insert(fingerprint(&key[..i])), "prefix {i}");
        }
    }
}
