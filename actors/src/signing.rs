//! The merchant API signature: one helper per scheme, used to verify
//! requests, to sign notifications and by the CLI client.
//!
//! Text to sign: the non-empty parameters except `sign`, sorted by key, joined as
//! `k=v` with `&`, then `&key=<secret>`. HMAC-SHA256 (keyed by the secret) or, for
//! legacy merchants, MD5 of that text; uppercase hex.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A merchant API signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SignType {
    /// HMAC-SHA256 keyed by the merchant secret (the default).
    #[serde(rename = "HMAC-SHA256")]
    HmacSha256,
    /// MD5, only for merchants configured as legacy.
    #[serde(rename = "MD5")]
    Md5,
}

impl SignType {
    /// The wire name used in `sign_type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SignType::HmacSha256 => "HMAC-SHA256",
            SignType::Md5 => "MD5",
        }
    }

    /// Parses a `sign_type` value.
    pub fn parse(text: &str) -> Option<SignType> {
        match text {
            "HMAC-SHA256" => Some(SignType::HmacSha256),
            "MD5" => Some(SignType::Md5),
            _ => None,
        }
    }
}

/// Signed parameters as the signature reads them: text keys in order and text values,
/// owned, or borrowed from the request they were parsed from.
pub trait ParamMap {
    /// The value of `key`.
    fn param(&self, key: &str) -> Option<&str>;
    /// Every parameter, by key.
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)>;
}

impl<K: Borrow<str> + Ord, V: AsRef<str>> ParamMap for BTreeMap<K, V> {
    fn param(&self, key: &str) -> Option<&str> {
        self.get(key).map(AsRef::as_ref)
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().map(|(k, v)| (k.borrow(), v.as_ref()))
    }
}

/// Hands the text signed for `params` (which may contain `sign`; it is skipped) to
/// `sink` piece by piece, so a check can hash it without building it.
fn signed_pieces(params: &impl ParamMap, secret: &str, mut sink: impl FnMut(&[u8])) {
    let mut first = true;
    for (k, v) in params.pairs() {
        if k == "sign" || v.is_empty() {
            continue;
        }
        if !first {
            sink(b"&");
        }
        first = false;
        sink(k.as_bytes());
        sink(b"=");
        sink(v.as_bytes());
    }
    sink(if first { b"key=" } else { b"&key=" });
    sink(secret.as_bytes());
}

/// A signature's bytes (32 for HMAC-SHA256, 16 for MD5).
struct Signature {
    bytes: [u8; 32],
    len: usize,
}

impl Signature {
    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

fn digest(sign_type: SignType, params: &impl ParamMap, secret: &str) -> Option<Signature> {
    let mut bytes = [0u8; 32];
    let len = match sign_type {
        SignType::HmacSha256 => {
            // HMAC accepts keys of any length, so this cannot fail.
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
            signed_pieces(params, secret, |piece| mac.update(piece));
            // HMAC-SHA256's output is 32 bytes by its type, the length of `bytes`.
            bytes.copy_from_slice(&mac.finalize().into_bytes());
            32
        }
        SignType::Md5 => {
            let mut md5 = Md5::new();
            signed_pieces(params, secret, |piece| md5.update(piece));
            bytes.get_mut(..16)?.copy_from_slice(&md5.finalize());
            16
        }
    };
    Some(Signature { bytes, len })
}

/// Signs `params` with `secret`: uppercase hex.
pub fn sign(params: &impl ParamMap, secret: &str, sign_type: SignType) -> String {
    digest(sign_type, params, secret).map(|d| hex::encode_upper(d.as_slice())).unwrap_or_default()
}

/// Checks `params["sign"]` in constant time. Hex case is not significant.
pub fn verify(params: &impl ParamMap, secret: &str, sign_type: SignType) -> bool {
    let Some(expected) = digest(sign_type, params, secret) else {
        return false;
    };
    let mut given = [0u8; 32];
    let Some(given) = given.get_mut(..expected.len) else {
        return false;
    };
    let decoded = params.param("sign").is_some_and(|s| hex::decode_to_slice(s, given).is_ok());
    decoded && bool::from(expected.as_slice().ct_eq(given))
}

/// The `Paygate-Signature` header of a notification `body` sent at `t` (unix seconds):
/// `t=<t>,v1=<lowercase hex HMAC-SHA256(secret, "<t>.<body>")>`, for receivers that
/// verify the raw bytes they got.
pub fn payload_signature_header(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(payload_mac(secret, t, body)))
}

fn payload_mac(secret: &str, t: i64, body: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // HMAC accepts keys of any length.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

/// Checks a `Paygate-Signature` header against `body`: one of its `v1` values matches
/// (constant time) and its `t` is within `tolerance_secs` of `now_secs`.
pub fn verify_payload_signature(secret: &str, header: &str, body: &[u8], now_secs: i64, tolerance_secs: i64) -> bool {
    let mut t = None;
    let mut given = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => given.push(v),
            _ => {}
        }
    }
    let Some(t) = t.filter(|t| (now_secs - t).abs() <= tolerance_secs) else {
        return false;
    };
    let expected = payload_mac(secret, t, body);
    given.iter().any(|v| {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(v, &mut bytes).is_ok() && bool::from(expected.ct_eq(&bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact text that is signed for `params`.
    fn sign_text(params: &BTreeMap<String, String>, secret: &str) -> String {
        let mut text = Vec::new();
        signed_pieces(params, secret, |piece| text.extend_from_slice(piece));
        String::from_utf8(text).unwrap()
    }

    fn params() -> BTreeMap<String, String> {
        [("merchant_id", "M1"), ("amount", "100.00"), ("body", ""), ("timestamp", "1704067200")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn text_skips_sign_and_empty_values_and_sorts() {
        let mut p = params();
        p.insert("sign".into(), "X".into());
        assert_eq!(sign_text(&p, "s3cret"), "amount=100.00&merchant_id=M1&timestamp=1704067200&key=s3cret");
    }

    #[test]
    fn known_vectors() {
        // Made with:
        //   printf '%s' 'amount=100.00&merchant_id=M1&timestamp=1704067200&key=s3cret' \
        //     | openssl dgst -sha256 -hmac s3cret
        //   printf '%s' '…same text…' | md5sum
        let p = params();
        assert_eq!(
            sign(&p, "s3cret", SignType::HmacSha256),
            "8A08C84CBCE409B6BE0ABE120EEBAD437D3362A0F1F6911454E7768837809E7C"
        );
        assert_eq!(sign(&p, "s3cret", SignType::Md5), "AB944CC646113AC201F91A1FF2EE00A2");
    }

    #[test]
    fn round_trip_and_tamper() {
        for st in [SignType::HmacSha256, SignType::Md5] {
            let mut p = params();
            let s = sign(&p, "k", st);
            p.insert("sign".into(), s.to_lowercase());
            assert!(verify(&p, "k", st));
            assert!(!verify(&p, "other", st));
            p.insert("amount".into(), "100.01".into());
            assert!(!verify(&p, "k", st));
        }
        let mut p = params();
        p.insert("sign".into(), "not-hex".into());
        assert!(!verify(&p, "k", SignType::HmacSha256));
    }
}
