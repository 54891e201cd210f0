//! UnionPay online gateway 5.1.0 on the wire: the signing string,
//! signatures (SHA-256 as lowercase hex, then SHA256withRSA over that hex text), the
//! signing certificate carried in `signPubKeyCert` and checked against trusted roots,
//! and the gateway's answers, which are `k=v&…` with raw values.

use sha2::{Digest, Sha256};

use crate::crypto::{Certificate, RsaSigner, RsaVerifier, TrustStore};

pub use crate::channels::alipay::wire::{form, parse_form, Params};
pub use crate::channels::wechat::v2::wire::{parse_time14 as parse_txn_time, time14 as txn_time};

/// The protocol version this speaks.
pub const VERSION: &str = "5.1.0";
/// RSA.
pub const SIGN_METHOD: &str = "01";

/// The string a signature covers: every field but `signature`, sorted by key, `k=v`
/// joined with `&`, raw values.
pub fn signing_string(p: &Params) -> String {
    p.iter().filter(|(k, _)| k.as_str() != "signature").map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn digest_hex(p: &Params) -> String {
    hex::encode(Sha256::digest(signing_string(p).as_bytes()))
}

/// Signs `p` with the key of certificate `cert_id`: sets certId, signMethod and signature.
pub fn sign(p: &mut Params, key: &RsaSigner, cert_id: &str) {
    p.insert("certId".into(), cert_id.to_owned());
    p.insert("signMethod".into(), SIGN_METHOD.into());
    p.remove("signature");
    let signature = key.sign_base64(digest_hex(p).as_bytes());
    p.insert("signature".into(), signature);
}

/// Whether `key` signed `p`.
pub fn verify_with(p: &Params, key: &RsaVerifier) -> bool {
    let signature = p.get("signature").map(String::as_str).unwrap_or_default();
    p.get("signMethod").is_some_and(|m| m == SIGN_METHOD) && key.verify_base64(digest_hex(p).as_bytes(), signature)
}

/// The identity UnionPay's production signing certificate names (the third `@` field of
/// its CN, as UnionPay's SDKs read it).
pub const UNIONPAY_SIGNER: &str = "中国银联股份有限公司";

/// The identity a UnionPay certificate's CN names: `<type>@<id>@<identity>@<seq>` → its
/// third field, as UnionPay's SDKs read it.
pub fn signer_identity(cert: &Certificate) -> Option<&str> {
    cert.common_name.as_deref()?.split('@').nth(2)
}

/// Why a message from "UnionPay" is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    /// No `signPubKeyCert`, or not a certificate.
    #[error("signPubKeyCert is missing or not a certificate")]
    NoCertificate,
    /// The certificate is outside its validity, or no trusted root issued it.
    #[error("certificate {serial} is not valid now or does not chain to a trusted root")]
    Untrusted {
        /// Its serial, decimal.
        serial: String,
    },
    /// A trusted certificate, but not UnionPay's signing certificate (a merchant's, say).
    #[error("certificate {serial} names {found:?}, not UnionPay's signer {expected:?}")]
    NotTheSigner {
        /// Its serial, decimal.
        serial: String,
        /// The identity it names.
        found: String,
        /// The identity UnionPay's signing certificate names.
        expected: String,
    },
    /// The signature does not verify with the certificate's key.
    #[error("the signature does not verify with certificate {serial}")]
    BadSignature {
        /// Its serial, decimal.
        serial: String,
    },
}

/// Believes `p` only when it is signed by the certificate it carries in `signPubKeyCert`,
/// and that certificate is valid at `now` (unix seconds), chains to `trust` and names
/// `signer` as its identity. Every merchant's certificate chains to the same root, so the
/// chain alone would let any merchant sign "paid".
pub fn verify(p: &Params, trust: &TrustStore, signer: &str, now: i64) -> Result<(), Unverified> {
    let cert = p
        .get("signPubKeyCert")
        .and_then(|pem| Certificate::from_pem("signPubKeyCert", pem).ok())
        .ok_or(Unverified::NoCertificate)?;
    let serial = || cert.serial_decimal.clone();
    if !trust.vouches_for(&cert, now) {
        return Err(Unverified::Untrusted { serial: serial() });
    }
    match signer_identity(&cert) {
        Some(found) if found == signer => {}
        found => {
            return Err(Unverified::NotTheSigner {
                serial: serial(),
                found: found.or(cert.common_name.as_deref()).unwrap_or_default().to_owned(),
                expected: signer.to_owned(),
            })
        }
    }
    if !verify_with(p, &cert.key) {
        return Err(Unverified::BadSignature { serial: serial() });
    }
    Ok(())
}

/// An answer as the gateway writes it: `k=v&…`, values not encoded.
pub fn raw_answer(p: &Params) -> String {
    p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// Reads a gateway answer: split at `&`, each pair at its first `=`.
pub fn parse_answer(body: &str) -> Params {
    body.trim().split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// A UnionPay orderId (8–40 of `[0-9A-Za-z]`) for a refund number: itself when it
/// already is one, else a digest of it, so the same refund always has the same id.
pub fn refund_order_id(pay_order_no: &str, refund_no: &str) -> String {
    if (8..=40).contains(&refund_no.len()) && refund_no.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return refund_no.to_owned();
    }
    let digest = hex::encode(Sha256::digest(format!("{pay_order_no}/{refund_no}").as_bytes()));
    format!("R{}", digest.get(..31).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn the_signature_is_rsa_over_the_hex_digest_of_the_sorted_fields() {
        let key = RsaSigner::from_text("k", &fixture("rsa/app_private.pem")).unwrap();
        let mut p: Params = [("txnAmt", "100"), ("merId", "777290058110048"), ("orderId", "P1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        sign(&mut p, &key, "68759663125");
        assert_eq!(signing_string(&p), "certId=68759663125&merId=777290058110048&orderId=P1&signMethod=01&txnAmt=100");
        // What is signed is the lowercase hex text of the SHA-256, not the digest bytes.
        let hex_text = hex::encode(Sha256::digest(signing_string(&p).as_bytes()));
        assert_eq!(p["signature"], key.sign_base64(hex_text.as_bytes()));
        assert!(verify_with(&p, &key.verifier()));
        let mut tampered = p.clone();
        tampered.insert("txnAmt".into(), "1".into());
        assert!(!verify_with(&tampered, &key.verifier()));
    }

    const SIM_SIGNER: &str = "00040000:SIGN";

    fn trusted_root() -> TrustStore {
        TrustStore::new(vec![Certificate::from_pem("root", &fixture("unionpay/root.crt")).unwrap()], vec![]).unwrap()
    }

    fn signed_by(key_file: &str, cert_file: &str) -> (Params, Certificate) {
        let key = RsaSigner::from_text(key_file, &fixture(key_file)).unwrap();
        let cert = Certificate::from_pem(cert_file, &fixture(cert_file)).unwrap();
        let mut p: Params = [("respCode".to_owned(), "00".to_owned())].into_iter().collect();
        p.insert("signPubKeyCert".into(), fixture(cert_file));
        sign(&mut p, &key, &cert.serial_decimal);
        (p, cert)
    }

    #[test]
    fn a_message_verifies_only_through_a_certificate_the_roots_vouch_for() {
        let trust = trusted_root();
        let (mut p, rogue_cert) = signed_by("unionpay/rogue.key", "unionpay/rogue.crt");
        let now = rogue_cert.not_before + 60;
        assert!(verify_with(&p, &rogue_cert.key), "well signed by the certificate it carries");
        assert_eq!(signer_identity(&rogue_cert), Some(SIM_SIGNER), "with UnionPay's name");
        assert!(
            matches!(verify(&p, &trust, SIM_SIGNER, now), Err(Unverified::Untrusted { .. })),
            "but that certificate is not from a trusted root"
        );
        p.insert("signPubKeyCert".into(), fixture("unionpay/sign.crt"));
        assert!(
            matches!(verify(&p, &trust, SIM_SIGNER, now), Err(Unverified::BadSignature { .. })),
            "a trusted certificate whose key did not sign"
        );
        p.remove("signPubKeyCert");
        assert_eq!(verify(&p, &trust, SIM_SIGNER, now), Err(Unverified::NoCertificate));
    }

    #[test]
    fn a_merchant_certificate_from_the_same_root_is_not_unionpays() {
        let trust = trusted_root();
        let (p, mer) = signed_by("unionpay/mer.key", "unionpay/mer.crt");
        let now = mer.not_before + 60;
        assert!(trust.vouches_for(&mer, now) && verify_with(&p, &mer.key), "chained and well signed");
        let refused = verify(&p, &trust, SIM_SIGNER, now);
        assert!(matches!(&refused, Err(Unverified::NotTheSigner { found, .. }) if found == "777290058110048"));
        // UnionPay's real signing certificate names UnionPay; the simulator's, the test
        // environment's identity. Either way one name, from configuration.
        assert!(matches!(verify(&p, &trust, UNIONPAY_SIGNER, now), Err(Unverified::NotTheSigner { .. })));
    }

    #[test]
    fn unionpays_signing_certificate_is_believed_only_within_its_validity() {
        let trust = trusted_root();
        let (p, sign_cert) = signed_by("unionpay/sign.key", "unionpay/sign.crt");
        assert_eq!(verify(&p, &trust, SIM_SIGNER, sign_cert.not_before + 60), Ok(()));
        assert!(verify(&p, &trust, UNIONPAY_SIGNER, sign_cert.not_before + 60).is_err(), "another identity");
        for outside in [sign_cert.not_before - 1, sign_cert.not_after + 1] {
            assert!(matches!(verify(&p, &trust, SIM_SIGNER, outside), Err(Unverified::Untrusted { .. })));
        }
    }

    #[test]
    fn answers_keep_raw_values_with_equals_signs_and_newlines() {
        let p: Params = [("signature", "ab+/cd=="), ("signPubKeyCert", "-----BEGIN\r\nx=\r\n-----END")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(parse_answer(&raw_answer(&p)), p);
    }

    #[test]
    fn refund_numbers_become_stable_union_pay_order_ids() {
        assert_eq!(refund_order_id("P1", "RF20261123000001"), "RF20261123000001");
        let id = refund_order_id("P1", "R-1");
        assert_eq!((id.len(), id.bytes().all(|b| b.is_ascii_alphanumeric())), (32, true));
        assert_eq!(id, refund_order_id("P1", "R-1"));
        assert_ne!(id, refund_order_id("P2", "R-1"));
    }
}
