//! UnionPay online gateway 5.1.0 on the wire (CHANNELS.md §3): the signing string,
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

/// Whether `p` is signed by the certificate it carries in `signPubKeyCert`, and that
/// certificate is one `trust` vouches for at `now` (unix seconds).
pub fn verify(p: &Params, trust: &TrustStore, now: i64) -> bool {
    let Some(pem) = p.get("signPubKeyCert") else {
        return false;
    };
    let Ok(cert) = Certificate::from_pem("signPubKeyCert", pem) else {
        return false;
    };
    trust.vouches_for(&cert, now) && verify_with(p, &cert.key)
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

    #[test]
    fn a_message_verifies_only_through_a_certificate_the_roots_vouch_for() {
        let root = Certificate::from_pem("root", &fixture("unionpay/root.crt")).unwrap();
        let trust = TrustStore::new(vec![root], vec![]).unwrap();
        let rogue_key = RsaSigner::from_text("rogue", &fixture("unionpay/rogue.key")).unwrap();
        let rogue_cert = Certificate::from_pem("rogue", &fixture("unionpay/rogue.crt")).unwrap();
        let mut p: Params = [("respCode".to_owned(), "00".to_owned())].into_iter().collect();
        p.insert("signPubKeyCert".into(), fixture("unionpay/rogue.crt"));
        sign(&mut p, &rogue_key, &rogue_cert.serial_decimal);
        let now = rogue_cert.not_before + 60;
        assert!(verify_with(&p, &rogue_cert.key), "well signed by the certificate it carries");
        assert!(!verify(&p, &trust, now), "but that certificate is not from a trusted root");
        p.insert("signPubKeyCert".into(), fixture("unionpay/sign.crt"));
        assert!(!verify(&p, &trust, now), "a trusted certificate whose key did not sign");
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
