//! HTTPS for the simulator: a certificate authority made at start (rcgen) and a server
//! certificate it signs for the simulator's host names, so a node can be pointed at the
//! simulator exactly as at a provider — over TLS, trusting one more CA.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What the simulator serves HTTPS with, and the CA that vouches for it.
pub struct SimTls {
    /// The server configuration (rustls on ring, TLS 1.2 and 1.3).
    pub server: Arc<rustls::ServerConfig>,
    /// The CA certificate, PEM: what a client must trust.
    pub ca_pem: String,
}

/// Makes a CA and a server certificate for `hosts` (names or IP addresses). Clients
/// may present a certificate issued by one of `client_cas` (PEM; checked by rustls, and
/// then whose it is by the route that needs one); none need to.
pub fn generate(hosts: &[String], client_cas: &[&str]) -> Result<SimTls, String> {
    let fail = |what: &str, e: rcgen::Error| format!("simulator TLS: {what}: {e}");
    let ca_key = KeyPair::generate().map_err(|e| fail("CA key", e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.distinguished_name.push(DnType::CommonName, "paygate simulator CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail("CA", e))?;

    let key = KeyPair::generate().map_err(|e| fail("server key", e))?;
    let mut leaf = CertificateParams::new(hosts.to_vec()).map_err(|e| fail("server certificate", e))?;
    leaf.distinguished_name.push(DnType::CommonName, "paygate simulator");
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key).map_err(|e| fail("server certificate", e))?;

    let chain = vec![CertificateDer::from(leaf_cert.der().to_vec())];
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("simulator TLS: {e}"))?;
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for pem in client_cas {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("simulator TLS: client CA: {e}"))?;
                roots.add(cert).map_err(|e| format!("simulator TLS: client CA: {e}"))?;
            }
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("simulator TLS: client CA: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    };
    let server = builder.with_single_cert(chain, private).map_err(|e| format!("simulator TLS: {e}"))?;
    Ok(SimTls { server: Arc::new(server), ca_pem: ca_cert.pem() })
}
