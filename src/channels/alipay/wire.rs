//! The Alipay open-platform wire format, shared by the adapter and the
//! simulator so that both sides agree on every byte: the signing string, the signed
//! response node, times, amounts and form bodies.

use std::collections::BTreeMap;

use paygate_actors::money::{Currency, Money};
use time::{OffsetDateTime, UtcOffset};

use crate::crypto::{RsaSigner, RsaVerifier};

/// Parameters by name; a `BTreeMap` sorts keys by byte order, as the signing string needs.
pub type Params = BTreeMap<String, String>;

/// The largest amount Alipay accepts, in fen.
pub const MAX_AMOUNT_FEN: i64 = 10_000_000_000;

/// The string a request or notification signature covers: every parameter except
/// `exclude`, sorted, `k=v` joined with `&`, raw values. Requests drop empty values;
/// notifications keep them (`keep_empty`).
pub fn signing_string(params: &Params, exclude: &[&str], keep_empty: bool) -> String {
    let mut out = String::new();
    for (k, v) in params {
        if exclude.contains(&k.as_str()) || (v.is_empty() && !keep_empty) {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Signs a request in place: `sign_type=RSA2` is part of what is signed.
pub fn sign_request(params: &mut Params, key: &RsaSigner) {
    params.insert("sign_type".into(), "RSA2".into());
    params.remove("sign");
    let sign = key.sign_base64(signing_string(params, &["sign"], false).as_bytes());
    params.insert("sign".into(), sign);
}

/// Checks a request's signature (everything but `sign`, empty values dropped).
pub fn verify_request(params: &Params, key: &RsaVerifier) -> bool {
    params.get("sign").is_some_and(|s| key.verify_base64(signing_string(params, &["sign"], false).as_bytes(), s))
}

/// Signs a notification in place: neither `sign` nor `sign_type` is covered.
pub fn sign_notification(params: &mut Params, key: &RsaSigner) {
    params.remove("sign");
    let sign = key.sign_base64(signing_string(params, &["sign", "sign_type"], true).as_bytes());
    params.insert("sign".into(), sign);
    params.insert("sign_type".into(), "RSA2".into());
}

/// Checks a notification's signature.
pub fn verify_notification(params: &Params, key: &RsaVerifier) -> bool {
    params
        .get("sign")
        .is_some_and(|s| key.verify_base64(signing_string(params, &["sign", "sign_type"], true).as_bytes(), s))
}

/// The response node of `method`: `alipay.trade.query` → `alipay_trade_query_response`.
pub fn response_node(method: &str) -> String {
    format!("{}_response", method.replace('.', "_"))
}

/// A signed response body: the node's JSON, then `"sign"` right after it, as SDKs expect.
pub fn signed_response(method: &str, node_json: &str, key: &RsaSigner) -> String {
    let sign = key.sign_base64(node_json.as_bytes());
    format!("{{\"{}\":{node_json},\"sign\":\"{sign}\"}}", response_node(method))
}

/// The exact bytes of `node`'s value in `body`, from its `{` to the matching `}`.
pub fn node_bytes<'a>(body: &'a str, node: &str) -> Option<&'a str> {
    let key = format!("\"{node}\"");
    let after_key = body.find(&key)? + key.len();
    let rest = body.get(after_key..)?;
    let open = after_key + rest.find('{')?;
    if body.get(after_key..open)?.trim() != ":" {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in body.get(open..)?.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' if !in_string => depth += 1,
            '}' if !in_string => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return body.get(open..=open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Verifies a response and returns its node, parsed; `None` if the body is malformed or
/// the signature does not cover the node's exact bytes.
pub fn verified_node(body: &str, method: &str, key: &RsaVerifier) -> Option<serde_json::Value> {
    let node = response_node(method);
    let raw = node_bytes(body, &node)?;
    let whole: serde_json::Value = serde_json::from_str(body).ok()?;
    let sign = whole.get("sign")?.as_str()?;
    if !key.verify_base64(raw.as_bytes(), sign) {
        return None;
    }
    serde_json::from_str(raw).ok()
}

fn beijing(ms: i64) -> OffsetDateTime {
    let offset = UtcOffset::from_hms(8, 0, 0).unwrap_or(UtcOffset::UTC);
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset)
}

/// `yyyy-MM-dd HH:mm:ss`, Beijing time.
pub fn timestamp(ms: i64) -> String {
    let t = beijing(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Unix millis of a `yyyy-MM-dd HH:mm:ss` Beijing time.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let local = time::PrimitiveDateTime::parse(text.trim(), &format).ok()?;
    let offset = UtcOffset::from_hms(8, 0, 0).ok()?;
    Some((local.assume_offset(offset).unix_timestamp_nanos() / 1_000_000) as i64)
}

/// `yyyy-MM-dd`, Beijing time (bill dates).
pub fn date(ms: i64) -> String {
    timestamp(ms).chars().take(10).collect()
}

/// Yuan with two decimals, as Alipay writes amounts.
pub fn yuan(fen: i64) -> String {
    Money::from_minor(fen, Currency::CNY).to_string()
}

/// Fen from Alipay's yuan text.
pub fn fen(yuan: &str) -> Option<i64> {
    Money::parse_positive(yuan.trim(), Currency::CNY, MAX_AMOUNT_FEN).ok().map(|m| m.minor())
}

/// Yuan with two decimals and a sign, as bills write refunds and fees.
pub fn signed_yuan(fen: i64) -> String {
    if fen < 0 {
        format!("-{}", yuan(fen.saturating_neg()))
    } else {
        yuan(fen)
    }
}

/// Fen from a bill's signed yuan text (exactly two decimals).
pub fn signed_fen(text: &str) -> Option<i64> {
    let t = text.trim();
    let (neg, abs) = t.strip_prefix('-').map_or((false, t), |a| (true, a));
    let (whole, frac) = abs.split_once('.').unwrap_or((abs, "00"));
    if whole.is_empty() || frac.len() != 2 || !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fen = whole.parse::<i64>().ok()?.checked_mul(100)?.checked_add(frac.parse::<i64>().ok()?)?;
    Some(if neg { -fen } else { fen })
}

/// An `application/x-www-form-urlencoded` body.
pub fn form(params: &Params) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(params.iter()).finish()
}

/// Parses a form body or query string (later keys win).
pub fn parse_form(bytes: &[u8]) -> Params {
    form_urlencoded::parse(bytes).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/rsa/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn app_key() -> RsaSigner {
        RsaSigner::from_text("app", &fixture("app_private.pem")).unwrap()
    }

    #[test]
    fn the_request_signing_string_matches_the_openssl_vector() {
        let mut p: Params = [
            ("app_id", "2021000000000001"),
            ("method", "alipay.trade.precreate"),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("timestamp", "2026-11-23 12:00:00"),
            ("version", "1.0"),
            ("notify_url", ""),
            ("biz_content", r#"{"out_trade_no":"P17000000000000001000001","total_amount":"88.88","subject":"测试"}"#),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(signing_string(&p, &["sign"], false), fixture("message.txt"));
        sign_request(&mut p, &app_key());
        assert_eq!(p["sign"], fixture("message.sig.b64").trim());
        assert!(verify_request(&p, &app_key().verifier()));
        p.insert("biz_content".into(), p["biz_content"].replace("88.88", "88.89"));
        assert!(!verify_request(&p, &app_key().verifier()));
    }

    #[test]
    fn notifications_sign_without_sign_type_and_keep_empty_values() {
        let mut p: Params =
            [("out_trade_no", "P1"), ("trade_status", "TRADE_SUCCESS"), ("total_amount", "1.00"), ("gmt_close", "")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        sign_notification(&mut p, &app_key());
        assert_eq!(p["sign_type"], "RSA2");
        assert!(verify_notification(&p, &app_key().verifier()));
        assert!(!verify_request(&p, &app_key().verifier()), "a request check covers sign_type and drops empties");
        p.insert("total_amount".into(), "100.00".into());
        assert!(!verify_notification(&p, &app_key().verifier()));
    }

    #[test]
    fn a_response_node_is_verified_over_its_exact_bytes() {
        let key = app_key();
        let node = r#"{"code":"10000","msg":"Success","out_trade_no":"P1","qr_code":"https://qr.example/a\"b}"}"#;
        let body = signed_response("alipay.trade.precreate", node, &key);
        assert_eq!(node_bytes(&body, "alipay_trade_precreate_response"), Some(node));
        let v = verified_node(&body, "alipay.trade.precreate", &key.verifier()).unwrap();
        assert_eq!(v["qr_code"], "https://qr.example/a\"b}");
        // Re-serialised (spaces added) the bytes differ, and so the signature fails.
        let spaced = body.replace(r#""code":"10000""#, r#""code": "10000""#);
        assert!(verified_node(&spaced, "alipay.trade.precreate", &key.verifier()).is_none());
        assert!(verified_node("{}", "alipay.trade.precreate", &key.verifier()).is_none());
        assert!(verified_node("not json {", "alipay.trade.precreate", &key.verifier()).is_none());
    }

    #[test]
    fn times_are_beijing_and_amounts_are_yuan() {
        assert_eq!(timestamp(0), "1970-01-01 08:00:00");
        assert_eq!(parse_timestamp(&timestamp(1_700_000_123_000)), Some(1_700_000_123_000));
        assert_eq!(parse_timestamp("2023-13-01 00:00:00"), None);
        assert_eq!(date(16 * 3_600_000), "1970-01-02");
        assert_eq!(yuan(8888), "88.88");
        assert_eq!(fen("88.88"), Some(8888));
        assert_eq!(fen("0"), None);
        assert_eq!(fen("1.001"), None);
        let p = parse_form(form(&[("a".to_string(), "x y&z=测".to_string())].into_iter().collect()).as_bytes());
        assert_eq!(p["a"], "x y&z=测");
    }
}
