//! mTLS identities: which part of a verified client certificate names the
//! client (`auth.mtls.identity`). The certificate chain was verified against
//! the listener's `client_ca` during the handshake; this only reads it.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::MtlsIdentity;
use crate::refusal::Refusal;

/// The identity of `leaf` under `kind`, or why there is none.
pub fn identity(leaf: &CertificateDer<'_>, kind: MtlsIdentity) -> Result<String, Refusal> {
    let field = kind.as_str();
    let unclear = |found| Refusal::ClientIdentityUnclear { field, found };
    let values: Vec<String> = match kind {
        MtlsIdentity::Fingerprint => {
            let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
            vec![digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()]
        }
        MtlsIdentity::SubjectCn => {
            let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|_| unclear(0))?;
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
                .collect()
        }
        MtlsIdentity::SanUri | MtlsIdentity::SanDns => {
            let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|_| unclear(0))?;
            let names = cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|ext| ext.value.general_names.clone())
                .unwrap_or_default();
            names
                .iter()
                .filter_map(|n| match (kind, n) {
                    (MtlsIdentity::SanUri, GeneralName::URI(u)) => Some((*u).to_owned()),
                    (MtlsIdentity::SanDns, GeneralName::DNSName(d)) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        }
    };
    match values.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(unclear(values.len())),
    }
}
