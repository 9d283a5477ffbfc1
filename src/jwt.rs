//! JWT verification for sandbox issuers (RFC 8725 practices): the issuer is
//! read first only to pick its configuration (and to refuse production
//! tokens); the algorithm must be on that issuer's allow-list; the key comes
//! from its configured key set by `kid`, never from a URL or key named by the
//! token (`jku`, `x5u`, `jwk` are ignored); `crit` is refused; `exp`, `iss`
//! and `aud` are required and `nbf` is checked, with a leeway of at most 60 s.
//!
//! Key sets come from a file (read at load) or a URL ([`Keys`]: fetched at
//! start, refreshed in the background, refetched on an unknown `kid` at most
//! once per `min_refetch_interval`, the last good set kept while the issuer
//! is down). Verified tokens are remembered in a bounded [`TokenCache`]
//! keyed on a hash of the whole token, each entry dropped at the token's
//! `exp`, so a busy client costs one hash and one lookup per request.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;

use crate::config::{ConfigError, IssuerConfig, JwksConfig, Source};
use crate::refusal::Refusal;

/// The largest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// One compiled sandbox issuer.
pub struct Issuer {
    /// Its `iss`.
    pub issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    /// Its key set.
    keys: Arc<Keys>,
    /// The claim naming the tenant.
    pub tenant_claim: String,
    /// The claim holding the scopes.
    pub scopes_claim: String,
    leeway: u64,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.current.load().len())
            .finish_non_exhaustive()
    }
}

/// (kid, key) pairs of a key set.
type KeyList = Vec<(Option<String>, DecodingKey)>;

/// An issuer's key set: fixed (from a file or the built-in issuer) or
/// fetched from a URL and kept fresh.
pub struct Keys {
    current: ArcSwap<KeyList>,
    remote: Option<Remote>,
}

/// Where and how a key set is fetched.
struct Remote {
    url: http::Uri,
    refresh: Duration,
    min_interval: Duration,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// One fetch at a time; holds when the last one started.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    /// When the current set was fetched.
    fetched_at: ArcSwap<Option<Instant>>,
    /// A background refresh is under way.
    refreshing: AtomicBool,
}

impl Keys {
    /// A fixed key set.
    pub fn fixed(keys: KeyList) -> Arc<Keys> {
        Arc::new(Keys {
            current: ArcSwap::from_pointee(keys),
            remote: None,
        })
    }

    fn remote(cfg: &JwksConfig, url: http::Uri) -> Result<Arc<Keys>, String> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            roots
        })
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.timeout.get()));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // No pool: fetches are rare, and an unpooled connection never
        // outlives the runtime (worker thread) that opened it.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(Arc::new(Keys {
            current: ArcSwap::from_pointee(Vec::new()),
            remote: Some(Remote {
                url,
                refresh: cfg.refresh.get(),
                min_interval: cfg.min_refetch_interval.get(),
                timeout: cfg.timeout.get(),
                client,
                fetch: tokio::sync::Mutex::new(None),
                fetched_at: ArcSwap::from_pointee(None),
                refreshing: AtomicBool::new(false),
            }),
        }))
    }

    /// The URL of a fetched key set.
    pub fn url(&self) -> Option<&http::Uri> {
        self.remote.as_ref().map(|r| &r.url)
    }

    /// Whether two key sets are fetched the same way (so a reload can keep
    /// the one already fetched).
    fn same_remote(&self, other: &Keys) -> bool {
        match (&self.remote, &other.remote) {
            (Some(a), Some(b)) => {
                a.url == b.url
                    && a.refresh == b.refresh
                    && a.min_interval == b.min_interval
                    && a.timeout == b.timeout
            }
            _ => false,
        }
    }

    /// Fetches the set now unless one was fetched (or tried) within
    /// `min_refetch_interval`; concurrent callers wait for the one fetch.
    /// Returns whether the set changed hands (a fetch succeeded).
    pub async fn refetch(&self) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        let mut last = remote.fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < remote.min_interval) {
            return false;
        }
        *last = Some(Instant::now());
        match remote.fetch_keys().await {
            Ok(keys) => {
                tracing::info!(url = %remote.url, keys = keys.len(), "JWKS fetched");
                self.current.store(Arc::new(keys));
                remote.fetched_at.store(Arc::new(Some(Instant::now())));
                metrics::counter!("sandgate_jwks_fetches_total", "result" => "ok").increment(1);
                true
            }
            Err(e) => {
                let kept = self.current.load().len();
                tracing::warn!(url = %remote.url, error = %e, kept_keys = kept, "JWKS fetch failed; keeping the last good key set");
                metrics::counter!("sandgate_jwks_fetches_total", "result" => "error").increment(1);
                false
            }
        }
    }

    /// Starts a background refresh when the set is older than `refresh`.
    fn refresh_if_stale(self: &Arc<Self>) {
        let Some(remote) = &self.remote else { return };
        let stale = remote
            .fetched_at
            .load()
            .is_none_or(|t| t.elapsed() >= remote.refresh);
        if stale
            && !remote.refreshing.swap(true, Ordering::AcqRel)
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let keys = self.clone();
            tokio::spawn(async move {
                keys.refetch().await;
                if let Some(r) = &keys.remote {
                    r.refreshing.store(false, Ordering::Release);
                }
            });
        }
    }
}

impl Remote {
    async fn fetch_keys(&self) -> Result<KeyList, String> {
        let req = http::Request::get(self.url.clone())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .header(
                http::header::USER_AGENT,
                concat!("sandgate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let body = tokio::time::timeout(self.timeout, async {
            let resp = self.client.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                msg
            })?;
            if !resp.status().is_success() {
                return Err(format!("the issuer answered {}", resp.status()));
            }
            Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("reading the key set failed: {e}"))
        })
        .await
        .map_err(|_| format!("no answer within {:?}", self.timeout))??;
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| format!("the answer is not a JWKS document: {e}"))?;
        let keys: KeyList = set
            .keys
            .iter()
            .filter_map(|jwk| {
                DecodingKey::from_jwk(jwk)
                    .ok()
                    .map(|k| (jwk.common.key_id.clone(), k))
            })
            .collect();
        if keys.is_empty() {
            return Err("the key set has no usable keys".into());
        }
        Ok(keys)
    }
}

/// Reads a JWKS document into (kid, key) pairs; `what` names it in messages.
pub fn parse_jwks(text: &str, what: &str) -> Result<KeyList, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("{what} is not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("a key of {what} is not usable: {e}"))?;
        keys.push((jwk.common.key_id.clone(), key));
    }
    if keys.is_empty() {
        return Err(format!("{what} has no keys"));
    }
    Ok(keys)
}

impl Issuer {
    /// Compiles an issuer, reading its key set file or preparing to fetch
    /// its key set URL. `file` names sandgate.yaml.
    pub fn build(cfg: &IssuerConfig, source: &Source, file: &Path) -> Result<Issuer, ConfigError> {
        let line = cfg.issuer.referenced.line();
        let keys = match (&cfg.jwks.file, &cfg.jwks.url) {
            (Some(path), _) => {
                let line = path.referenced.line();
                let text = source
                    .read_to_string(&path.value)
                    .map_err(|m| ConfigError::new(file, line, m))?;
                let what = format!("`{}`", path.value.display());
                Keys::fixed(parse_jwks(&text, &what).map_err(|m| ConfigError::new(file, line, m))?)
            }
            (None, Some(url)) => {
                let line = url.referenced.line();
                let uri: http::Uri = url.value.parse().map_err(|e| {
                    ConfigError::new(file, line, format!("jwks url is not a URL: {e}"))
                })?;
                Keys::remote(&cfg.jwks, uri).map_err(|m| ConfigError::new(file, line, m))?
            }
            (None, None) => {
                return Err(ConfigError::new(file, line, "`jwks` needs `file` or `url`"));
            }
        };
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| {
                Algorithm::from_str(&a.value).map_err(|_| {
                    ConfigError::new(
                        file,
                        a.referenced.line(),
                        format!("unknown algorithm `{}`", a.value),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Issuer {
            issuer: cfg.issuer.value.clone(),
            audiences: cfg.audiences.clone(),
            algorithms,
            keys,
            tenant_claim: cfg.tenant_claim.clone(),
            scopes_claim: cfg.scopes_claim.clone(),
            leeway: cfg.leeway.get().as_secs(),
        })
    }

    /// An issuer with a fixed key set (the built-in issuer).
    pub fn fixed(
        issuer: String,
        audiences: Vec<String>,
        algorithm: Algorithm,
        keys: KeyList,
    ) -> Issuer {
        Issuer {
            issuer,
            audiences,
            algorithms: vec![algorithm],
            keys: Keys::fixed(keys),
            tenant_claim: "tenant".into(),
            scopes_claim: "scope".into(),
            leeway: 30,
        }
    }

    /// Its key set.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// Uses `previous`'s key set when both fetch the same URL the same way,
    /// so a reload neither refetches nor forgets the last good set.
    pub fn inherit_keys(&mut self, previous: &Issuer) {
        if self.keys.same_remote(&previous.keys) {
            self.keys = previous.keys.clone();
        }
    }
}

/// A verified token, reduced to what the identify stage needs.
#[derive(Debug)]
pub struct Verified {
    /// Index of the issuer in [`Verifier::issuers`].
    pub issuer: usize,
    /// The tenant (sandbox id) the token names.
    pub tenant: String,
    /// The client (`client_id`, `azp` or `sub`).
    pub client: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// `exp`, Unix seconds.
    pub exp: u64,
}

/// How long a verified token is remembered at most (its `exp` usually
/// comes first).
const MAX_CACHED: Duration = Duration::from_secs(3600);

/// Drops each cached token at its `exp`.
struct UntilExp;

impl moka::Expiry<[u8; 32], Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Verified>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.exp.saturating_sub(crate::tenants::now_secs());
        Some(Duration::from_secs(left).min(MAX_CACHED))
    }
}

/// Verified tokens by SHA-256 of the whole token; bounded, entries never
/// outliving their token's `exp`.
pub struct TokenCache(moka::sync::Cache<[u8; 32], Arc<Verified>>);

impl TokenCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: u64) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExp)
                .build(),
        )
    }
}

/// The sandbox issuers, the production issuers to refuse, and the cache of
/// verified tokens.
pub struct Verifier {
    /// Sandbox issuers (configured ones, then the built-in issuer).
    pub issuers: Vec<Issuer>,
    /// Production token issuers (refused with an explanation).
    pub production: Vec<String>,
    cache: TokenCache,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers)
            .field("production", &self.production)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `issuers`, refusing tokens of `production` issuers.
    pub fn new(issuers: Vec<Issuer>, production: Vec<String>) -> Self {
        Self {
            issuers,
            production,
            cache: TokenCache::new(100_000),
        }
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Verifies `token`: from the cache when it was verified before and has
    /// not expired, else in full.
    pub async fn verify(&self, token: &str) -> Result<Arc<Verified>, Refusal> {
        let hash: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| Refusal::Internal)?;
        if let Some(v) = self.cache.0.get(&hash) {
            return Ok(v);
        }
        let (index, claims) = verify(token, &self.issuers, &self.production).await?;
        let issuer = &self.issuers[index];
        let tenant = claims
            .get(&issuer.tenant_claim)
            .and_then(Value::as_str)
            .ok_or(Refusal::UnknownTenant)?
            .to_owned();
        let scopes = match claims.get(&issuer.scopes_claim) {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let client = ["client_id", "azp", "sub"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned();
        let verified = Arc::new(Verified {
            issuer: index,
            tenant,
            client,
            scopes,
            exp: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
        });
        if verified.exp > crate::tenants::now_secs() {
            self.cache.0.insert(hash, verified.clone());
        }
        Ok(verified)
    }

    /// Keeps the key sets `previous` already fetched (see [`Issuer::inherit_keys`]).
    pub fn inherit_keys(&mut self, previous: &Verifier) {
        for issuer in &mut self.issuers {
            if let Some(old) = previous.issuers.iter().find(|o| o.issuer == issuer.issuer) {
                issuer.inherit_keys(old);
            }
        }
    }

    /// Fetches every URL key set that has not been fetched yet.
    pub async fn prefetch(&self) {
        for issuer in &self.issuers {
            if let Some(remote) = &issuer.keys.remote
                && remote.fetched_at.load().is_none()
            {
                issuer.keys.refetch().await;
            }
        }
    }
}

/// Whether a credential has the shape of a JWS compact token.
pub fn looks_like_jwt(cred: &str) -> bool {
    cred.starts_with("eyJ") && cred.bytes().filter(|b| *b == b'.').count() == 2
}

fn malformed(why: &'static str) -> Refusal {
    Refusal::MalformedToken { why }
}

/// Verifies `token` against the configured issuers (no cache); returns the
/// index of its issuer and the verified claims.
pub async fn verify(
    token: &str,
    issuers: &[Issuer],
    production: &[String],
) -> Result<(usize, Value), Refusal> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| malformed("its header is not valid"))?;
    if header.crit.is_some() {
        return Err(malformed(
            "it has a `crit` header this gateway does not understand",
        ));
    }
    // The unverified issuer only chooses which configuration to verify with.
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| malformed("it is not three parts"))?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| malformed("its payload is not base64url"))?;
    let claims: Value =
        serde_json::from_slice(&payload).map_err(|_| malformed("its payload is not JSON"))?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("it has no `iss` claim"))?;
    if production.iter().any(|p| p == iss) {
        return Err(Refusal::ProductionToken {
            issuer: iss.to_owned(),
            sandbox: issuers.iter().map(|i| i.issuer.clone()).collect(),
        });
    }
    let Some((index, issuer)) = issuers.iter().enumerate().find(|(_, i)| i.issuer == iss) else {
        return Err(Refusal::WrongIssuer {
            accepted: issuers.iter().map(|i| i.issuer.clone()).collect(),
        });
    };
    if !issuer.algorithms.contains(&header.alg) {
        return Err(Refusal::AlgorithmNotAllowed {
            alg: format!("{:?}", header.alg),
            allowed: issuer.algorithms.iter().map(|a| format!("{a:?}")).collect(),
        });
    }
    issuer.keys.refresh_if_stale();
    let mut keys = issuer.keys.current.load_full();
    if !has_candidate(&keys, header.kid.as_deref()) && issuer.keys.remote.is_some() {
        // A key the set lacks may be a rotation: fetch the set again (at
        // most once per `min_refetch_interval`, whatever tokens say).
        issuer.keys.refetch().await;
        keys = issuer.keys.current.load_full();
    }
    if keys.is_empty() {
        return Err(Refusal::IssuerKeysUnavailable {
            issuer: issuer.issuer.clone(),
        });
    }
    let candidates: Vec<&DecodingKey> = match &header.kid {
        Some(kid) => keys
            .iter()
            .filter(|(k, _)| k.as_deref() == Some(kid.as_str()))
            .map(|(_, key)| key)
            .collect(),
        None => keys.iter().map(|(_, key)| key).collect(),
    };
    if candidates.is_empty() {
        return Err(Refusal::UnknownKey {
            issuer: issuer.issuer.clone(),
        });
    }
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.set_issuer(&[&issuer.issuer]);
    validation.set_audience(&issuer.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.leeway = issuer.leeway;
    let mut last = Refusal::BadSignature;
    for key in candidates {
        match jsonwebtoken::decode::<Value>(token, key, &validation) {
            Ok(data) => return Ok((index, data.claims)),
            Err(e) => {
                last = match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat => Refusal::BadSignature,
                    ErrorKind::ExpiredSignature => Refusal::TokenExpired {
                        at: claims
                            .get("exp")
                            .and_then(Value::as_u64)
                            .map(rfc3339)
                            .unwrap_or_default(),
                    },
                    ErrorKind::ImmatureSignature => Refusal::TokenNotYetValid {
                        at: claims
                            .get("nbf")
                            .and_then(Value::as_u64)
                            .map(rfc3339)
                            .unwrap_or_default(),
                    },
                    ErrorKind::InvalidAudience => Refusal::WrongAudience {
                        accepted: issuer.audiences.clone(),
                    },
                    ErrorKind::InvalidIssuer => Refusal::WrongIssuer {
                        accepted: vec![issuer.issuer.clone()],
                    },
                    ErrorKind::MissingRequiredClaim(_) => {
                        malformed("it lacks a required claim (`exp`, `iss` and `aud` are required)")
                    }
                    _ => malformed("it could not be decoded"),
                };
                if !matches!(last, Refusal::BadSignature) {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

fn has_candidate(keys: &KeyList, kid: Option<&str>) -> bool {
    match kid {
        Some(kid) => keys.iter().any(|(k, _)| k.as_deref() == Some(kid)),
        None => !keys.is_empty(),
    }
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}
