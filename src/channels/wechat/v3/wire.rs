//! WeChat Pay API v3 on the wire: the `Authorization` header
//! signed over `METHOD\nPATH\nTIMESTAMP\nNONCE\nBODY\n` with the merchant key, answers and
//! notifications signed over `TIMESTAMP\nNONCE\nBODY\n` with the platform key, and
//! AEAD_AES_256_GCM resources (notifications, certificates) under the APIv3 key. Used by
//! the adapter and, the other way round, by the simulator.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use rand::Rng;

use crate::crypto::{RsaSigner, RsaVerifier};

/// The one signature scheme v3 has.
pub const SCHEMA: &str = "WECHATPAY2-SHA256-RSA2048";
/// Header: unix seconds of the signature.
pub const TIMESTAMP: &str = "wechatpay-timestamp";
/// Header: the signature's nonce.
pub const NONCE: &str = "wechatpay-nonce";
/// Header: the signature, base64.
pub const SIGNATURE: &str = "wechatpay-signature";
/// Header: the serial of the platform certificate that signed.
pub const SERIAL: &str = "wechatpay-serial";
/// Header: always [`SCHEMA`].
pub const SIGNATURE_TYPE: &str = "wechatpay-signature-type";
/// Notifications further than this from our clock are refused (replays).
pub const MAX_SKEW_SECS: i64 = 300;

/// What the merchant signs: `METHOD\nPATH_AND_QUERY\nTIMESTAMP\nNONCE\nBODY\n`.
pub fn request_message(method: &str, path_and_query: &str, timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n").into_bytes();
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// What the platform signs: `TIMESTAMP\nNONCE\nBODY\n` (an empty body for 204).
pub fn answer_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{timestamp}\n{nonce}\n").into_bytes();
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// A random nonce of `len` characters from `[0-9A-Z]`.
pub fn nonce(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::thread_rng();
    (0..len).map(|_| char::from(ALPHABET.get(rng.gen_range(0..ALPHABET.len())).copied().unwrap_or(b'0'))).collect()
}

/// The fields of an `Authorization: WECHATPAY2-SHA256-RSA2048 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The merchant.
    pub mchid: String,
    /// The nonce signed.
    pub nonce_str: String,
    /// Unix seconds signed.
    pub timestamp: String,
    /// The serial of the merchant certificate whose key signed.
    pub serial_no: String,
    /// The signature, base64.
    pub signature: String,
}

impl Authorization {
    /// Signs a request now.
    pub fn sign(
        key: &RsaSigner,
        mchid: &str,
        serial_no: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_secs: i64,
    ) -> Authorization {
        let (timestamp, nonce_str) = (now_secs.to_string(), nonce(32));
        let signature = key.sign_base64(&request_message(method, path_and_query, &timestamp, &nonce_str, body));
        Authorization { mchid: mchid.to_owned(), nonce_str, timestamp, serial_no: serial_no.to_owned(), signature }
    }

    /// The header value.
    pub fn header(&self) -> String {
        format!(
            "{SCHEMA} mchid=\"{}\",nonce_str=\"{}\",signature=\"{}\",timestamp=\"{}\",serial_no=\"{}\"",
            self.mchid, self.nonce_str, self.signature, self.timestamp, self.serial_no
        )
    }

    /// Reads a header value; `None` unless it has the schema and every field.
    pub fn parse(header: &str) -> Option<Authorization> {
        let rest = header.strip_prefix(SCHEMA)?.trim_start();
        let field = |name: &str| {
            rest.split(',').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        Some(Authorization {
            mchid: field("mchid")?,
            nonce_str: field("nonce_str")?,
            timestamp: field("timestamp")?,
            serial_no: field("serial_no")?,
            signature: field("signature")?,
        })
    }

    /// Whether it signs this request with `key`.
    pub fn verify(&self, key: &RsaVerifier, method: &str, path_and_query: &str, body: &[u8]) -> bool {
        let message = request_message(method, path_and_query, &self.timestamp, &self.nonce_str, body);
        key.verify_base64(&message, &self.signature)
    }
}

/// The headers that sign an answer or a notification with the platform key.
pub fn signature_headers(key: &RsaSigner, serial: &str, body: &[u8], now_secs: i64) -> Vec<(&'static str, String)> {
    let (timestamp, nonce) = (now_secs.to_string(), nonce(32));
    let signature = key.sign_base64(&answer_message(&timestamp, &nonce, body));
    vec![
        (TIMESTAMP, timestamp),
        (NONCE, nonce),
        (SIGNATURE, signature),
        (SERIAL, serial.to_owned()),
        (SIGNATURE_TYPE, SCHEMA.to_owned()),
    ]
}

/// Whether `headers` sign `body` with the platform key `key` of serial `serial`; with
/// `now_secs`, also that the signature is at most [`MAX_SKEW_SECS`] away from it.
pub fn verify_signed(
    headers: &[(String, String)],
    body: &[u8],
    serial: &str,
    key: &RsaVerifier,
    now_secs: Option<i64>,
) -> bool {
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let (Some(ts), Some(nonce), Some(signature), Some(their_serial)) =
        (get(TIMESTAMP), get(NONCE), get(SIGNATURE), get(SERIAL))
    else {
        return false;
    };
    if their_serial != serial || get(SIGNATURE_TYPE).is_some_and(|t| t != SCHEMA) {
        return false;
    }
    if let Some(now) = now_secs {
        match ts.parse::<i64>() {
            Ok(t) if (now - t).abs() <= MAX_SKEW_SECS => {}
            _ => return false,
        }
    }
    key.verify_base64(&answer_message(ts, nonce, body), signature)
}

/// An AEAD_AES_256_GCM resource: `ciphertext` is base64 of the ciphertext and the
/// 16-byte tag; `nonce` is used as its 12 bytes of text.
pub fn decrypt(api_v3_key: &[u8; 32], nonce: &str, associated_data: &str, ciphertext: &str) -> Option<Vec<u8>> {
    if nonce.len() != 12 {
        return None;
    }
    let sealed = base64::engine::general_purpose::STANDARD.decode(ciphertext).ok()?;
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(api_v3_key));
    let payload = Payload { msg: &sealed, aad: associated_data.as_bytes() };
    cipher.decrypt(Nonce::from_slice(nonce.as_bytes()), payload).ok()
}

/// Encrypts a resource; answers the nonce and the base64 ciphertext.
pub fn encrypt(api_v3_key: &[u8; 32], associated_data: &str, plaintext: &[u8]) -> Option<(String, String)> {
    let nonce_text = nonce(12);
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(api_v3_key));
    let payload = Payload { msg: plaintext, aad: associated_data.as_bytes() };
    let sealed = cipher.encrypt(Nonce::from_slice(nonce_text.as_bytes()), payload).ok()?;
    Some((nonce_text, base64::engine::general_purpose::STANDARD.encode(sealed)))
}

/// The APIv3 key as configured: exactly 32 bytes of text.
pub fn api_v3_key(text: &str) -> Option<[u8; 32]> {
    text.as_bytes().try_into().ok()
}

/// RFC 3339 in Beijing time, as v3 writes times (`2026-11-23T18:00:00+08:00`).
pub fn rfc3339_beijing(ms: i64) -> String {
    let offset = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub use paygate_actors::time_fmt::parse_rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (RsaSigner, RsaVerifier) {
        let pem = include_str!("../../../../tests/fixtures/rsa/app_private.pem");
        let signer = RsaSigner::from_text("test", pem).unwrap();
        let verifier = signer.verifier();
        (signer, verifier)
    }

    #[test]
    fn the_authorization_header_round_trips_and_covers_method_path_and_body() {
        let (key, public) = keys();
        let body = br#"{"mchid":"1900000001"}"#;
        let auth = Authorization::sign(&key, "1900000001", "ABC", "POST", "/v3/pay/transactions/native", body, 1);
        let parsed = Authorization::parse(&auth.header()).unwrap();
        assert_eq!(parsed, auth);
        assert!(parsed.verify(&public, "POST", "/v3/pay/transactions/native", body));
        assert!(!parsed.verify(&public, "GET", "/v3/pay/transactions/native", body));
        assert!(!parsed.verify(&public, "POST", "/v3/pay/transactions/jsapi", body));
        assert!(!parsed.verify(&public, "POST", "/v3/pay/transactions/native", b"{}"));
        assert_eq!(Authorization::parse("WECHATPAY2-SHA256-RSA2048 mchid=\"1\""), None);
    }

    #[test]
    fn the_signed_message_has_a_trailing_newline_also_for_an_empty_body() {
        assert_eq!(request_message("GET", "/v3/certificates", "1", "N", b""), b"GET\n/v3/certificates\n1\nN\n\n");
        assert_eq!(answer_message("1", "N", b""), b"1\nN\n\n");
    }

    #[test]
    fn answers_verify_only_with_their_serial_key_body_and_fresh_time() {
        let (key, public) = keys();
        let h: Vec<(String, String)> =
            signature_headers(&key, "S1", b"{}", 1_000).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert!(verify_signed(&h, b"{}", "S1", &public, Some(1_200)));
        assert!(verify_signed(&h, b"{}", "S1", &public, None));
        assert!(!verify_signed(&h, b"{ }", "S1", &public, None), "another body");
        assert!(!verify_signed(&h, b"{}", "S2", &public, None), "another certificate");
        assert!(!verify_signed(&h, b"{}", "S1", &public, Some(1_400)), "older than five minutes");
        assert!(!verify_signed(&h[1..], b"{}", "S1", &public, None), "a header missing");
    }

    #[test]
    fn resources_decrypt_only_with_the_key_nonce_and_associated_data_they_were_sealed_with() {
        let key = api_v3_key("0123456789abcdef0123456789ABCDEF").unwrap();
        let (nonce, ct) = encrypt(&key, "transaction", b"{\"trade_state\":\"SUCCESS\"}").unwrap();
        assert_eq!(nonce.len(), 12);
        assert_eq!(decrypt(&key, &nonce, "transaction", &ct).unwrap(), b"{\"trade_state\":\"SUCCESS\"}");
        assert_eq!(decrypt(&key, &nonce, "certificate", &ct), None);
        assert_eq!(decrypt(&key, "000000000000", "transaction", &ct), None);
        let other = api_v3_key("0123456789abcdef0123456789ABCDEX").unwrap();
        assert_eq!(decrypt(&other, &nonce, "transaction", &ct), None);
        assert_eq!(api_v3_key("short"), None);
    }

    #[test]
    fn decrypts_a_vector_sealed_by_an_independent_implementation() {
        // python3 -c 'from cryptography.hazmat.primitives.ciphers.aead import AESGCM; import base64;
        //   print(base64.b64encode(AESGCM(b"0123456789abcdef0123456789ABCDEF").encrypt(
        //   b"NONCE0123456", b"{\"trade_state\":\"SUCCESS\"}", b"transaction")).decode())'
        let key = api_v3_key("0123456789abcdef0123456789ABCDEF").unwrap();
        let ct = "akWgCyz1yDJX0mjvOdjskb4BrLAF+wzikn1rfhpeZTqQTRur8XVE4Q0=";
        assert_eq!(decrypt(&key, "NONCE0123456", "transaction", ct).unwrap(), br#"{"trade_state":"SUCCESS"}"#);
    }

    #[test]
    fn times_are_beijing_rfc3339() {
        assert_eq!(rfc3339_beijing(1_700_000_000_000), "2023-11-15T06:13:20+08:00");
        assert_eq!(parse_rfc3339("2023-11-15T06:13:20+08:00"), Some(1_700_000_000_000));
    }
}
