//! WeChat Pay API v2 on the wire: flat XML documents with CDATA values,
//! signed with the API key (MD5 or HMAC-SHA256, the same scheme as our merchant API, so
//! the one helper in `paygate_actors::signing` serves both). Shared by the adapter and
//! the simulator.

use std::collections::BTreeMap;

use paygate_actors::signing::{self, SignType};
use quick_xml::events::Event;
use quick_xml::Reader;
use time::{OffsetDateTime, UtcOffset};

/// Parameters by name.
pub type Params = BTreeMap<String, String>;

/// Largest XML document read.
pub const MAX_XML: usize = 64 * 1024;

/// `<xml><k><![CDATA[v]]></k>…</xml>`.
pub fn to_xml(params: &Params) -> String {
    document("xml", params)
}

/// The same document under another root element (a refund notification's `req_info`
/// holds a `<root>`).
pub fn document(root: &str, params: &Params) -> String {
    let mut out = format!("<{root}>");
    for (k, v) in params {
        out.push('<');
        out.push_str(k);
        out.push_str("><![CDATA[");
        // A CDATA section cannot hold its own terminator: split it across two sections.
        out.push_str(&v.replace("]]>", "]]]]><![CDATA[>"));
        out.push_str("]]></");
        out.push_str(k);
        out.push('>');
    }
    out.push_str(&format!("</{root}>"));
    out
}

/// Reads a flat `<xml>` document (text or CDATA values); `None` if it is not one.
pub fn from_xml(body: &[u8]) -> Option<Params> {
    if body.len() > MAX_XML {
        return None;
    }
    let mut reader = Reader::from_reader(body);
    let mut params = Params::new();
    let (mut depth, mut current, mut value) = (0usize, None::<String>, String::new());
    let mut seen_root = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                depth += 1;
                let name = std::str::from_utf8(e.name().as_ref()).ok()?.to_owned();
                match depth {
                    1 if name == "xml" || name == "root" => seen_root = true,
                    2 => {
                        current = Some(name);
                        value.clear();
                    }
                    _ => return None,
                }
            }
            Event::Text(t) if depth == 2 => value.push_str(&t.unescape().ok()?),
            Event::CData(c) if depth == 2 => value.push_str(std::str::from_utf8(&c).ok()?),
            Event::End(_) => {
                if depth == 2 {
                    params.insert(current.take()?, std::mem::take(&mut value));
                }
                depth = depth.checked_sub(1)?;
            }
            Event::Empty(e) if depth == 1 => {
                params.insert(std::str::from_utf8(e.name().as_ref()).ok()?.to_owned(), String::new());
            }
            Event::DocType(_) => return None,
            Event::Eof => break,
            _ => {}
        }
    }
    (seen_root && depth == 0).then_some(params)
}

/// The sign type a document names (MD5 when absent, as WeChat defaults).
pub fn sign_type_of(params: &Params) -> Option<SignType> {
    match params.get("sign_type").map(String::as_str) {
        None | Some("") | Some("MD5") => Some(SignType::Md5),
        Some("HMAC-SHA256") => Some(SignType::HmacSha256),
        Some(_) => None,
    }
}

/// Signs a document in place with the API key.
pub fn sign(params: &mut Params, api_key: &str, sign_type: SignType) {
    if sign_type == SignType::HmacSha256 {
        params.insert("sign_type".into(), "HMAC-SHA256".into());
    }
    params.remove("sign");
    let s = signing::sign(params, api_key, sign_type);
    params.insert("sign".into(), s);
}

/// Checks a document's signature with the scheme it names.
pub fn verify(params: &Params, api_key: &str) -> bool {
    sign_type_of(params).is_some_and(|st| signing::verify(params, api_key, st))
}

/// `yyyyMMddHHmmss`, Beijing time.
pub fn time14(ms: i64) -> String {
    let offset = UtcOffset::from_hms(8, 0, 0).unwrap_or(UtcOffset::UTC);
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset);
    format!("{:04}{:02}{:02}{:02}{:02}{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
}

/// Reads `yyyyMMddHHmmss` in Beijing time into unix millis.
pub fn parse_time14(t: &str) -> Option<i64> {
    if t.len() != 14 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (d, h) = t.split_at(8);
    let text =
        format!("{}-{}-{} {}:{}:{}", d.get(..4)?, d.get(4..6)?, d.get(6..)?, h.get(..2)?, h.get(2..4)?, h.get(4..)?);
    crate::channels::alipay::wire::parse_timestamp(&text)
}

/// A random nonce_str.
pub fn nonce() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..32).filter_map(|_| ALPHABET.get(rng.gen_range(0..ALPHABET.len())).map(|b| char::from(*b))).collect()
}

/// The key that seals a refund notification's `req_info`: the API key's MD5, as 32
/// lowercase hex characters.
fn refund_key(api_key: &str) -> [u8; 32] {
    use md5::Digest;
    let mut key = [0u8; 32];
    // Hex of a 16-byte digest fills the 32 bytes exactly: this cannot fail.
    let _ = hex::encode_to_slice(md5::Md5::digest(api_key.as_bytes()), &mut key);
    key
}

/// Seals a refund notification's details as WeChat does: AES-256-ECB under
/// [`refund_key`], PKCS#7, base64.
pub fn seal_req_info(api_key: &str, plain: &[u8]) -> String {
    use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyInit};
    use base64::Engine;
    let sealed = ecb::Encryptor::<aes::Aes256>::new(&refund_key(api_key).into()).encrypt_padded_vec_mut::<Pkcs7>(plain);
    base64::engine::general_purpose::STANDARD.encode(sealed)
}

/// Opens a refund notification's `req_info`; `None` unless it decrypts under our key to
/// well-padded bytes. The padding may run to 32 bytes: some senders pad to that block.
/// ECB carries no integrity of its own; the caller also checks what it says against
/// the refund it names.
pub fn open_req_info(api_key: &str, req_info: &str) -> Option<Vec<u8>> {
    use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, KeyInit};
    use base64::Engine;
    let sealed = base64::engine::general_purpose::STANDARD.decode(req_info.trim()).ok()?;
    if sealed.is_empty() || sealed.len() % 16 != 0 {
        return None;
    }
    let mut plain = ecb::Decryptor::<aes::Aes256>::new(&refund_key(api_key).into())
        .decrypt_padded_vec_mut::<NoPadding>(&sealed)
        .ok()?;
    let pad = usize::from(*plain.last()?);
    let body_len = plain.len().checked_sub(pad).filter(|_| (1..=32).contains(&pad))?;
    if !plain.get(body_len..)?.iter().all(|b| usize::from(*b) == pad) {
        return None;
    }
    plain.truncate(body_len);
    Some(plain)
}

/// The answer WeChat expects to a notification it should stop sending.
pub const ACK: &[u8] =
    b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// The answer that makes WeChat retry.
pub const NACK: &[u8] =
    b"<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[rejected]]></return_msg></xml>";

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn xml_round_trips_including_cdata_terminators_and_chinese() {
        let p = doc(&[("body", "茶 & <tea> ]]> done"), ("total_fee", "1"), ("empty", "")]);
        assert_eq!(from_xml(to_xml(&p).as_bytes()).unwrap(), p);
        let plain = b"<xml><return_code>SUCCESS</return_code><total_fee>100</total_fee></xml>";
        assert_eq!(from_xml(plain).unwrap()["total_fee"], "100");
        assert!(from_xml(b"<xml><a><b>nested</b></a></xml>").is_none());
        assert!(from_xml(b"<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><a>&e;</a></xml>").is_none());
        assert!(from_xml(b"not xml").is_none());
        assert!(from_xml(b"<xml><a>unclosed</xml>").is_none());
    }

    #[test]
    fn signs_with_md5_by_default_and_hmac_when_named() {
        // The example of WeChat Pay's v2 signing guide (key 192006250b4c09247ec02edce69f6a2d).
        let mut p = doc(&[
            ("appid", "wxd930ea5d5a258f4f"),
            ("mch_id", "10000100"),
            ("device_info", "1000"),
            ("body", "test"),
            ("nonce_str", "ibuaiVcKdpRxkhJA"),
        ]);
        let key = "192006250b4c09247ec02edce69f6a2d";
        sign(&mut p, key, SignType::Md5);
        assert_eq!(p["sign"], "9A0A8659F005D6984697E2CA0A9CF3B7");
        assert!(verify(&p, key));
        // The guide's HMAC example signs the same text (no sign_type in it).
        assert_eq!(
            signing::sign(&p, key, SignType::HmacSha256),
            "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
        );
        let mut h = p.clone();
        sign(&mut h, key, SignType::HmacSha256);
        assert_eq!(h["sign_type"], "HMAC-SHA256");
        assert!(verify(&h, key));
        h.insert("body".into(), "tampered".into());
        assert!(!verify(&h, key));
        assert_eq!(time14(0), "19700101080000");
    }

    #[test]
    fn req_info_opens_only_under_its_api_key() {
        let inner = "<root><out_refund_no><![CDATA[R1]]></out_refund_no></root>";
        let sealed = seal_req_info("k1", inner.as_bytes());
        assert_eq!(open_req_info("k1", &sealed).as_deref(), Some(inner.as_bytes()));
        assert_eq!(open_req_info("k2", &sealed), None, "another key decrypts to bad padding");
        for junk in ["", "not base64!", "AAAA", &sealed[..sealed.len() - 4]] {
            assert_eq!(open_req_info("k1", junk), None, "{junk:?}");
        }
        // The key is the API key's MD5 in lowercase hex.
        assert_eq!(&refund_key("192006250b4c09247ec02edce69f6a2d")[..8], b"d96eb16a");
    }
}
