//! SHA256withRSA (PKCS#1 v1.5): the one signing helper for Alipay RSA2, WeChat Pay v3
//! and UnionPay 5.1.0. Keys are read from PEM (PKCS#8 or PKCS#1) or from the bare base64
//! DER that the providers' consoles hand out.

use base64::Engine;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{Keypair, SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

/// A key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}: not an RSA key in PEM (PKCS#8 or PKCS#1) or base64 DER")]
pub struct KeyError(pub String);

/// A private key that signs with SHA256withRSA.
#[derive(Clone)]
pub struct RsaSigner(SigningKey<Sha256>);

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaSigner(<private key>)")
    }
}

/// A public key that verifies SHA256withRSA signatures.
#[derive(Debug, Clone)]
pub struct RsaVerifier(VerifyingKey<Sha256>);

fn der_of(text: &str) -> Option<Vec<u8>> {
    let body: String = text.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

impl RsaSigner {
    /// Reads a private key; `what` names it in errors.
    pub fn from_text(what: &str, text: &str) -> Result<RsaSigner, KeyError> {
        let text = text.trim();
        let key = if text.starts_with("-----BEGIN RSA PRIVATE KEY") {
            RsaPrivateKey::from_pkcs1_pem(text).ok()
        } else if text.starts_with("-----BEGIN") {
            RsaPrivateKey::from_pkcs8_pem(text).ok()
        } else {
            der_of(text).and_then(|der| {
                RsaPrivateKey::from_pkcs8_der(&der).ok().or_else(|| RsaPrivateKey::from_pkcs1_der(&der).ok())
            })
        };
        key.map(|k| RsaSigner(SigningKey::new(k))).ok_or_else(|| KeyError(what.to_owned()))
    }

    /// The signature of `message`, standard base64 with padding.
    pub fn sign_base64(&self, message: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0.sign(message).to_bytes())
    }

    /// The public half.
    pub fn verifier(&self) -> RsaVerifier {
        RsaVerifier(self.0.verifying_key())
    }
}

impl RsaVerifier {
    /// Reads a public key (SPKI or PKCS#1); `what` names it in errors.
    pub fn from_text(what: &str, text: &str) -> Result<RsaVerifier, KeyError> {
        let text = text.trim();
        let key = if text.starts_with("-----BEGIN RSA PUBLIC KEY") {
            RsaPublicKey::from_pkcs1_pem(text).ok()
        } else if text.starts_with("-----BEGIN") {
            RsaPublicKey::from_public_key_pem(text).ok()
        } else {
            der_of(text).and_then(|der| {
                RsaPublicKey::from_public_key_der(&der).ok().or_else(|| RsaPublicKey::from_pkcs1_der(&der).ok())
            })
        };
        key.map(|k| RsaVerifier(VerifyingKey::new(k))).ok_or_else(|| KeyError(what.to_owned()))
    }

    /// Whether `signature` (standard base64) signs `message`.
    pub fn verify_base64(&self, message: &[u8], signature: &str) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
            return false;
        };
        let Ok(sig) = Signature::try_from(bytes.as_slice()) else {
            return false;
        };
        self.0.verify(message, &sig).is_ok()
    }
}

/// An X.509 certificate as the providers use them: to name a key by its serial and
/// carry the key.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The serial, uppercase hex without leading zero bytes (WeChat's `serial_no`).
    pub serial_hex: String,
    /// The serial in decimal (UnionPay's `certId`).
    pub serial_decimal: String,
    /// Its RSA public key.
    pub key: RsaVerifier,
    /// Valid from, unix seconds.
    pub not_before: i64,
    /// Valid until, unix seconds.
    pub not_after: i64,
}

impl Certificate {
    /// Reads one PEM certificate whose key is RSA; `what` names it in errors.
    pub fn from_pem(what: &str, pem: &str) -> Result<Certificate, KeyError> {
        use x509_cert::der::{DecodePem, Encode};
        let err = || KeyError(what.to_owned());
        let cert = x509_cert::Certificate::from_pem(pem.trim().as_bytes()).map_err(|_| err())?;
        let tbs = &cert.tbs_certificate;
        let serial = tbs.serial_number.as_bytes();
        let first = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
        let serial = serial.get(first..).unwrap_or_default();
        let spki = tbs.subject_public_key_info.to_der().map_err(|_| err())?;
        let key = RsaPublicKey::from_public_key_der(&spki).map_err(|_| err())?;
        let secs = |t: x509_cert::time::Time| i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX);
        Ok(Certificate {
            serial_hex: hex::encode_upper(serial),
            serial_decimal: rsa::BigUint::from_bytes_be(serial).to_string(),
            key: RsaVerifier(VerifyingKey::new(key)),
            not_before: secs(tbs.validity.not_before),
            not_after: secs(tbs.validity.not_after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/rsa/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn signs_exactly_like_openssl_and_verifies_its_signature() {
        let message = fixture("message.txt");
        let expected = fixture("message.sig.b64");
        for key in ["app_private.pem", "app_private_pkcs1.pem"] {
            let signer = RsaSigner::from_text(key, &fixture(key)).unwrap();
            assert_eq!(signer.sign_base64(message.as_bytes()), expected.trim(), "{key}");
        }
        let verifier = RsaVerifier::from_text("app_public", &fixture("app_public.pem")).unwrap();
        assert!(verifier.verify_base64(message.as_bytes(), &expected));
        assert!(!verifier.verify_base64(b"another message", &expected));
        assert!(!verifier.verify_base64(message.as_bytes(), "bm90IGEgc2lnbmF0dXJl"));
        assert!(!verifier.verify_base64(message.as_bytes(), "%%%"));
        let other = RsaVerifier::from_text("provider_public", &fixture("provider_public.pem")).unwrap();
        assert!(!other.verify_base64(message.as_bytes(), &expected), "another key");
    }

    #[test]
    fn reads_the_bare_base64_keys_consoles_hand_out() {
        let pem = fixture("app_public.pem");
        let bare: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let v = RsaVerifier::from_text("bare", &bare).unwrap();
        assert!(v.verify_base64(fixture("message.txt").as_bytes(), &fixture("message.sig.b64")));
        let pem = fixture("app_private.pem");
        let bare: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(RsaSigner::from_text("bare", &bare).is_ok());
        assert!(RsaSigner::from_text("junk", "not a key").is_err());
    }

    #[test]
    fn reads_a_certificates_serial_key_and_validity() {
        // tests/fixtures/rsa/README.md has the openssl command that made it.
        let cert = Certificate::from_pem("cert", &fixture("app_cert.pem")).unwrap();
        assert_eq!(cert.serial_hex, "0123456789ABCDEF01");
        assert_eq!(cert.serial_decimal, "20988295479420645121");
        assert!(cert.key.verify_base64(fixture("message.txt").as_bytes(), &fixture("message.sig.b64")));
        assert_eq!(cert.not_after - cert.not_before, 3650 * 86_400);
        assert!(Certificate::from_pem("junk", &fixture("app_public.pem")).is_err());
    }
}
