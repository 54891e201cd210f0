//! SHA256withRSA (PKCS#1 v1.5): the one signing helper for Alipay RSA2, WeChat Pay v3
//! and UnionPay 5.1.0. Keys are read from PEM (PKCS#8 or PKCS#1) or from the bare base64
//! DER that the providers' consoles hand out.

use base64::Engine;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{Keypair, RandomizedSigner, SignatureEncoding, Verifier};
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

impl PartialEq for RsaVerifier {
    fn eq(&self, other: &Self) -> bool {
        let (a, b): (&RsaPublicKey, &RsaPublicKey) = (self.0.as_ref(), other.0.as_ref());
        a == b
    }
}

impl Eq for RsaVerifier {}

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

    /// The signature of `message`, standard base64 with padding. The private-key
    /// operation is blinded with fresh randomness, so its timing says nothing about the
    /// key; PKCS#1 v1.5 signatures are the same bytes either way.
    pub fn sign_base64(&self, message: &[u8]) -> String {
        let signature = self.0.sign_with_rng(&mut rand::rngs::OsRng, message);
        base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
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
        match base64::engine::general_purpose::STANDARD.decode(signature.trim()) {
            Ok(bytes) => self.verify_bytes(message, &bytes),
            Err(_) => false,
        }
    }

    /// Whether the raw `signature` signs `message`.
    pub fn verify_bytes(&self, message: &[u8], signature: &[u8]) -> bool {
        Signature::try_from(signature).is_ok_and(|sig| self.0.verify(message, &sig).is_ok())
    }
}

/// An X.509 certificate as the providers use them: to name a key by its serial, carry
/// the key, and prove it through a chain to a root we trust.
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
    /// May sign other certificates (basicConstraints CA).
    pub is_ca: bool,
    /// The subject's common name (CN), when it has one in a text form.
    pub common_name: Option<String>,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    tbs: Vec<u8>,
    signature: Vec<u8>,
    sha256_rsa: bool,
}

const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
const BASIC_CONSTRAINTS: &str = "2.5.29.19";
const COMMON_NAME: &str = "2.5.4.3";

/// The first CN of `name` written as UTF8String, PrintableString or IA5String.
fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    use x509_cert::der::{Tag, Tagged};
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid.to_string() == COMMON_NAME)
        .find(|atv| matches!(atv.value.tag(), Tag::Utf8String | Tag::PrintableString | Tag::Ia5String))
        .and_then(|atv| std::str::from_utf8(atv.value.value()).ok().map(str::to_owned))
}

/// The subject CN of a DER certificate, if it has one in a text form.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    common_name(&cert.tbs_certificate.subject)
}

impl Certificate {
    /// Reads one PEM certificate whose key is RSA; `what` names it in errors.
    pub fn from_pem(what: &str, pem: &str) -> Result<Certificate, KeyError> {
        use x509_cert::der::{Decode, DecodePem, Encode};
        let err = || KeyError(what.to_owned());
        let cert = x509_cert::Certificate::from_pem(pem.trim().as_bytes()).map_err(|_| err())?;
        let tbs = &cert.tbs_certificate;
        let serial = tbs.serial_number.as_bytes();
        let first = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
        let serial = serial.get(first..).unwrap_or_default();
        let spki = tbs.subject_public_key_info.to_der().map_err(|_| err())?;
        let key = RsaPublicKey::from_public_key_der(&spki).map_err(|_| err())?;
        let secs = |t: x509_cert::time::Time| i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX);
        let is_ca = tbs
            .extensions
            .iter()
            .flatten()
            .filter(|e| e.extn_id.to_string() == BASIC_CONSTRAINTS)
            .any(|e| x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes()).is_ok_and(|b| b.ca));
        Ok(Certificate {
            serial_hex: hex::encode_upper(serial),
            serial_decimal: rsa::BigUint::from_bytes_be(serial).to_string(),
            key: RsaVerifier(VerifyingKey::new(key)),
            not_before: secs(tbs.validity.not_before),
            not_after: secs(tbs.validity.not_after),
            is_ca,
            common_name: common_name(&tbs.subject),
            subject: tbs.subject.to_der().map_err(|_| err())?,
            issuer: tbs.issuer.to_der().map_err(|_| err())?,
            tbs: tbs.to_der().map_err(|_| err())?,
            signature: cert.signature.raw_bytes().to_vec(),
            sha256_rsa: cert.signature_algorithm.oid.to_string() == SHA256_WITH_RSA,
        })
    }

    /// Reads every certificate in a PEM bundle.
    pub fn bundle_from_pem(what: &str, pem: &str) -> Result<Vec<Certificate>, KeyError> {
        const END: &str = "-----END CERTIFICATE-----";
        let certs: Vec<Certificate> = pem
            .split_inclusive(END)
            .filter(|part| part.contains("-----BEGIN CERTIFICATE-----"))
            .map(|part| Certificate::from_pem(what, part))
            .collect::<Result<_, _>>()?;
        if certs.is_empty() {
            return Err(KeyError(what.to_owned()));
        }
        Ok(certs)
    }

    /// Whether `now` (unix seconds) is within its validity.
    pub fn valid_at(&self, now: i64) -> bool {
        (self.not_before..=self.not_after).contains(&now)
    }

    /// Whether `issuer`, a CA, signed this certificate (SHA256withRSA).
    pub fn issued_by(&self, issuer: &Certificate) -> bool {
        issuer.is_ca
            && self.issuer == issuer.subject
            && self.sha256_rsa
            && issuer.key.verify_bytes(&self.tbs, &self.signature)
    }
}

/// Certificates we trust to vouch for a provider's signing certificate: roots, and
/// intermediates that a root signed. Paths are at most leaf → intermediate → root.
#[derive(Debug, Clone)]
pub struct TrustStore {
    anchors: Vec<Certificate>,
}

impl TrustStore {
    /// Trusts `roots`, and each of `intermediates` that one of them issued.
    pub fn new(roots: Vec<Certificate>, intermediates: Vec<Certificate>) -> Result<TrustStore, KeyError> {
        for i in &intermediates {
            if !roots.iter().any(|r| i.issued_by(r)) {
                return Err(KeyError(format!(
                    "intermediate certificate {} is not issued by a trusted root",
                    i.serial_decimal
                )));
            }
        }
        if roots.iter().any(|r| !r.is_ca) {
            return Err(KeyError("a trusted root is not a CA certificate".into()));
        }
        let mut anchors = roots;
        anchors.extend(intermediates);
        Ok(TrustStore { anchors })
    }

    /// Whether `leaf` is valid at `now` (unix seconds) and issued by a trusted
    /// certificate that is valid then too.
    pub fn vouches_for(&self, leaf: &Certificate, now: i64) -> bool {
        leaf.valid_at(now) && self.anchors.iter().any(|a| a.valid_at(now) && leaf.issued_by(a))
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

    fn unionpay(name: &str) -> Certificate {
        let text =
            std::fs::read_to_string(format!("{}/tests/fixtures/unionpay/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        Certificate::from_pem(name, &text).unwrap()
    }

    #[test]
    fn a_chain_holds_only_to_the_root_that_signed_it_and_only_while_valid() {
        let (root, sign, rogue) = (unionpay("root.crt"), unionpay("sign.crt"), unionpay("rogue.crt"));
        let now = sign.not_before + 86_400;
        let store = TrustStore::new(vec![root.clone()], vec![]).unwrap();
        assert!(root.is_ca && !sign.is_ca);
        assert!(store.vouches_for(&sign, now));
        // Same subject, same serial, another root's signature: not ours.
        assert_eq!((rogue.serial_decimal.as_str(), rogue.issuer == sign.issuer), ("69629715588", true));
        assert!(!store.vouches_for(&rogue, now));
        assert!(!store.vouches_for(&sign, sign.not_after + 1), "expired");
        assert!(!store.vouches_for(&sign, sign.not_before - 1), "not yet valid");
        // A leaf is not a CA: nothing it signs is trusted.
        assert!(!unionpay("mer.crt").issued_by(&sign));
        assert!(TrustStore::new(vec![root.clone()], vec![rogue.clone()]).is_err(), "an intermediate must chain");
        assert!(TrustStore::new(vec![sign], vec![]).is_err(), "a root must be a CA");
        let bundle =
            std::fs::read_to_string(format!("{}/tests/fixtures/unionpay/root.crt", env!("CARGO_MANIFEST_DIR")));
        let two = format!("{}\n{}", bundle.as_ref().unwrap(), bundle.as_ref().unwrap());
        assert_eq!(Certificate::bundle_from_pem("roots", &two).unwrap().len(), 2);
        assert!(Certificate::bundle_from_pem("roots", "no certificates").is_err());
    }
}
