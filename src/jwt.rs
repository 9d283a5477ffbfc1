//! JWT verification for sandbox issuers (RFC 8725 practices): the issuer is
//! read first only to pick its configuration (and to refuse production
//! tokens); the algorithm must be on that issuer's allow-list; the key comes
//! from its configured key set by `kid`, never from a URL or key named by the
//! token (`jku`, `x5u`, `jwk` are ignored); `crit` is refused; `exp`, `iss`
//! and `aud` are required and `nbf` is checked, with a leeway of at most 60 s.

use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;

use crate::config::{ConfigError, IssuerConfig, Source};
use crate::refusal::Refusal;

/// One compiled sandbox issuer.
pub struct Issuer {
    /// Its `iss`.
    pub issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    /// (kid, key) of its key set.
    keys: Vec<(Option<String>, DecodingKey)>,
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
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Compiles an issuer, reading its key set. `file` names sandgate.yaml.
    pub fn build(cfg: &IssuerConfig, source: &Source, file: &Path) -> Result<Issuer, ConfigError> {
        let line = cfg.jwks.file.referenced.line();
        let text = source
            .read_to_string(&cfg.jwks.file.value)
            .map_err(|m| ConfigError::new(file, line, m))?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| {
            ConfigError::new(
                file,
                line,
                format!(
                    "`{}` is not a JWKS document: {e}",
                    cfg.jwks.file.value.display()
                ),
            )
        })?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                ConfigError::new(
                    file,
                    line,
                    format!(
                        "a key of `{}` is not usable: {e}",
                        cfg.jwks.file.value.display()
                    ),
                )
            })?;
            keys.push((jwk.common.key_id.clone(), key));
        }
        if keys.is_empty() {
            return Err(ConfigError::new(
                file,
                line,
                format!("`{}` has no keys", cfg.jwks.file.value.display()),
            ));
        }
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
}

/// Whether a credential has the shape of a JWS compact token.
pub fn looks_like_jwt(cred: &str) -> bool {
    cred.starts_with("eyJ") && cred.bytes().filter(|b| *b == b'.').count() == 2
}

fn malformed(why: &'static str) -> Refusal {
    Refusal::MalformedToken { why }
}

/// Verifies `token` against the configured issuers; returns the issuer and
/// the verified claims.
pub fn verify<'a>(
    token: &str,
    issuers: &'a [Issuer],
    production: &[String],
) -> Result<(&'a Issuer, Value), Refusal> {
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
    let Some(issuer) = issuers.iter().find(|i| i.issuer == iss) else {
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
    let candidates: Vec<&DecodingKey> = match &header.kid {
        Some(kid) => issuer
            .keys
            .iter()
            .filter(|(k, _)| k.as_deref() == Some(kid.as_str()))
            .map(|(_, key)| key)
            .collect(),
        None => issuer.keys.iter().map(|(_, key)| key).collect(),
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
            Ok(data) => return Ok((issuer, data.claims)),
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

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}
