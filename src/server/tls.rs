//! TLS for public listeners: rustls server configuration, ALPN (h2 and
//! http/1.1) and client-certificate verification for mTLS.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;

use crate::config::{ClientAuth, ConfigError, Source, TlsConfig};

/// Parses every certificate of a PEM file.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate file ({e})"))?;
    if certs.is_empty() {
        return Err("contains no PEM certificate".into());
    }
    Ok(certs)
}

/// Builds the rustls configuration of one TLS listener. `file` names
/// `sandgate.yaml` in messages.
pub fn server_config(
    cfg: &TlsConfig,
    source: &Source,
    file: &Path,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let at = |line: u64, m: String| ConfigError::new(file, line, m);
    let cert_line = cfg.cert.referenced.line();
    let key_line = cfg.key.referenced.line();
    let chain = source.read(&cfg.cert.value).map_err(|m| at(cert_line, m))?;
    let chain = parse_certs(&chain).map_err(|m| at(cert_line, format!("`cert` {m}")))?;
    let key = source.read(&cfg.key.value).map_err(|m| at(key_line, m))?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        at(
            key_line,
            format!("`key` holds no usable PEM private key ({e})"),
        )
    })?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let auth = cfg
        .client_auth
        .as_ref()
        .map(|a| a.value)
        .unwrap_or(if cfg.client_ca.is_some() {
            ClientAuth::Optional
        } else {
            ClientAuth::Off
        });
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| at(cert_line, format!("TLS setup failed: {e}")))?;
    let builder = match (&cfg.client_ca, auth) {
        (Some(ca), ClientAuth::Optional | ClientAuth::Required) => {
            let line = ca.referenced.line();
            let pem = source.read(&ca.value).map_err(|m| at(line, m))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in parse_certs(&pem).map_err(|m| at(line, format!("`client_ca` {m}")))? {
                roots.add(cert).map_err(|e| {
                    at(
                        line,
                        format!("`client_ca` has an unusable certificate: {e}"),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| at(line, format!("`client_ca` cannot verify clients: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        at(
            key_line,
            format!("`cert` and `key` do not form a usable pair: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
