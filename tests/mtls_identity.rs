//! mTLS identities over real TLS: a verified client certificate whose SAN
//! URI (a SPIFFE id) is registered to a sandbox identifies that tenant; an
//! unregistered identity, zero or several URI SANs are refused with why; a
//! credential header still takes precedence; a forged X-Forwarded-Client-Cert
//! header identifies nobody.

mod common;

use common::{PAYMENTS, Pki, TestGateway, problem, sandbox_dir, start_gateway, tls_client};
use sandgate::tenants::{self, DAY};

const CUSTOMER: &str = "/payments/v1/customers/cus_NffrFeUfNV2Hib";
const SPIFFE: &str = "spiffe://partners.example/acme/billing";

async fn gateway(pki: &Pki) -> TestGateway {
    let config = "listeners:\n  - addr: 127.0.0.1:0\n    tls: { cert: certs/server.pem, key: certs/server.key, client_ca: certs/ca.pem, client_auth: optional }\nhosts: [localhost]\nauth:\n  mtls: { identity: san_uri }\napis:\n  - name: payments\n    prefix: /payments\n    contract: contracts/payments.yaml\n    mode: facade\n";
    let gw = start_gateway(sandbox_dir(&[
        ("sandgate.yaml", config),
        ("contracts/payments.yaml", PAYMENTS),
        ("certs/server.pem", &pki.server_cert),
        ("certs/server.key", &pki.server_key),
        ("certs/ca.pem", &pki.ca_pem),
    ]))
    .await;
    let (mut t, _) = tenants::new_tenant(
        "Acme",
        "dev@acme.test",
        tenants::now_secs(),
        std::time::Duration::from_secs(7 * DAY),
        "sk_sandbox_",
    )
    .expect("tenant");
    t.mtls_identities = vec![SPIFFE.into()];
    gw.running
        .as_ref()
        .expect("running")
        .gateway
        .registry()
        .put(&t)
        .await
        .expect("tenant");
    gw
}

fn url(gw: &TestGateway) -> String {
    format!("https://localhost:{}{CUSTOMER}", gw.tls_addr().port())
}

#[tokio::test]
async fn a_registered_spiffe_id_identifies_its_tenant() {
    let pki = Pki::new();
    let gw = gateway(&pki).await;
    let (cert, key) = pki.client("acme-billing", &[SPIFFE]);
    let r = tls_client(&pki.ca_pem, Some((&cert, &key)), false)
        .get(url(&gw))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn unclear_or_unknown_identities_are_refused() {
    let pki = Pki::new();
    let gw = gateway(&pki).await;
    let cases: Vec<(&[&str], u16, &str)> = vec![
        (
            &["spiffe://partners.example/someone-else"],
            403,
            "unknown_client_certificate",
        ),
        (&[], 403, "client_identity_unclear"),
        (
            &[SPIFFE, "spiffe://partners.example/second"],
            403,
            "client_identity_unclear",
        ),
    ];
    for (sans, status, code) in cases {
        let (cert, key) = pki.client("client", sans);
        let r = tls_client(&pki.ca_pem, Some((&cert, &key)), false)
            .get(url(&gw))
            .send()
            .await
            .expect("request");
        let body = problem(r, status, code).await;
        assert_eq!(body["stage"], "identify");
        assert_eq!(body["rule"], "auth.mtls.identity");
    }
    // No certificate and no credential: nothing identifies the caller.
    let r = tls_client(&pki.ca_pem, None, false)
        .get(url(&gw))
        .send()
        .await
        .expect("request");
    problem(r, 401, "missing_credentials").await;
    // A forged client-certificate header is not a certificate.
    let r = tls_client(&pki.ca_pem, None, false)
        .get(url(&gw))
        .header("x-forwarded-client-cert", format!("URI={SPIFFE}"))
        .send()
        .await
        .expect("request");
    problem(r, 401, "missing_credentials").await;
}
