//! Bad input gets a clear code, message and HTTP status — and stores nothing.

mod common;

use common::*;
use serde_json::json;

const PAY: &str = "/api/v1/payment/pay";

struct Case {
    name: &'static str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// A word the message must contain (the field or rule it names).
    mentions: &'static str,
}

fn signed_with(c: &Client, change: impl FnOnce(&mut Params)) -> Vec<u8> {
    let mut p = Client::pay_params("BAD-1", "10.00");
    change(&mut p);
    serde_json::to_vec(&c.sign(p)).unwrap()
}

fn cases(c: &Client) -> Vec<Case> {
    let invalid = |name, body, mentions| Case { name, body, status: 400, code: "INVALID_PARAM", mentions };
    let with = |field: &'static str, value: &str| {
        let value = value.to_owned();
        invalid(field, signed_with(c, |p| drop(p.insert(field.into(), value))), field)
    };
    let without = |field: &'static str| invalid(field, signed_with(c, |p| drop(p.remove(field))), field);
    let raw = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let mut v = vec![
        invalid("malformed JSON", b"{\"merchant_id\": ".to_vec(), "JSON"),
        invalid("not an object", b"[1,2]".to_vec(), "object"),
        invalid("empty body", Vec::new(), "JSON"),
        invalid(
            "number where a string belongs",
            raw(json!({"merchant_id": MERCHANT, "amount": 100.0, "timestamp": "1", "sign": "x"})),
            "amount",
        ),
        invalid("missing sign", raw(json!({"merchant_id": MERCHANT, "timestamp": now_secs().to_string()})), "sign"),
        without("amount"),
        without("order_no"),
        without("subject"),
        without("pay_method"),
        with("pay_method", "BITCOIN"),
        with("currency", "XXX"),
        with("expire_minutes", "0"),
        with("expire_minutes", "1e3"),
        with("notify_url", "ftp://x"),
        with("order_no", "has space"),
        with("client_ip", "999.1.1.1"),
        with("subject", "line\nbreak"),
        with("pay_scene", "WEB"),
        with("pay_scene", "qr"),
        invalid(
            "a scene the method does not offer",
            signed_with(c, |p| {
                p.insert("pay_method".into(), "WECHAT_PAY".into());
                p.insert("pay_scene".into(), "WAP".into());
            }),
            "pay_scene",
        ),
        Case {
            name: "body over 64 KiB",
            body: raw(json!({"merchant_id": MERCHANT, "body": "x".repeat(70_000)})),
            status: 413,
            code: "INVALID_PARAM",
            mentions: "65536",
        },
        Case {
            name: "unknown merchant",
            body: raw(json!(Client::new("", "NOPE", "whatever-secret-1234").sign(Client::pay_params("BAD-1", "1.00")))),
            status: 404,
            code: "MERCHANT_NOT_FOUND",
            mentions: "merchant",
        },
        Case {
            name: "bad sign",
            body: {
                let mut p = c.sign(Client::pay_params("BAD-1", "10.00"));
                p.insert("amount".into(), "10.01".into());
                raw(json!(p))
            },
            status: 401,
            code: "SIGN_ERROR",
            mentions: "signature",
        },
    ];
    for (name, skew) in [("stale timestamp", -301), ("timestamp from the future", 400)] {
        let body = signed_with(c, |p| drop(p.insert("timestamp".into(), (now_secs() + skew).to_string())));
        v.push(Case { name, body, status: 401, code: "TIMESTAMP_EXPIRED", mentions: "timestamp" });
    }
    for a in ["0", "-1", "1.001", "1e3", "abc", "12345678901234567890", "0.00", " 1.00", "100000000.01", "NaN"] {
        v.push(with("amount", a));
    }
    v
}

#[test]
fn every_bad_request_is_refused_with_its_code_and_stores_nothing() {
    let t = TestNode::start();
    let c = t.client();
    let url = format!("{}{PAY}", t.url);
    let journal_before = t.journal_bytes();
    for case in cases(&c) {
        let a = post_raw(&url, &case.body).unwrap_or_else(|| panic!("{}: no answer", case.name));
        assert_eq!((a.status, a.code()), (case.status, case.code), "{}: {a:?}", case.name);
        let message = a.json["message"].as_str().unwrap_or("");
        assert!(
            message.contains(case.mentions),
            "{}: message {message:?} should mention {:?}",
            case.name,
            case.mentions
        );
        assert!(a.json.get("data").is_none(), "{}: an error carries no data", case.name);
    }
    assert_eq!(t.order_count(), 0, "no order stored");
    assert_eq!(t.journal_bytes(), journal_before, "nothing journaled");
    assert_eq!(c.query_no("BAD-1").code(), "ORDER_NOT_FOUND");
}

#[test]
fn a_bad_request_for_an_existing_order_does_not_change_it() {
    let t = TestNode::start();
    let c = t.client();
    let id = c.pay("BAD-2", "10.00").data("pay_order_no").to_owned();
    let before = c.query_id(&id).json;
    let url = format!("{}{PAY}", t.url);
    let bad = signed_with(&c, |p| {
        p.insert("order_no".into(), "BAD-2".into());
        p.insert("amount".into(), "1e3".into());
    });
    assert_eq!(post_raw(&url, &bad).unwrap().code(), "INVALID_PARAM");
    assert_eq!(c.query_id(&id).json, before);
}

#[test]
fn wrong_methods_and_paths_get_envelopes_not_panics() {
    let t = TestNode::start();
    let r = ureq::get(&format!("{}{PAY}", t.url)).call();
    assert!(matches!(r, Err(ureq::Error::Status(405, _))));
    let r = ureq::get(&format!("{}/nope", t.url)).call();
    let Err(ureq::Error::Status(404, resp)) = r else { panic!("expected 404") };
    let body: serde_json::Value = resp.into_json().unwrap();
    assert_eq!(body["code"], "NOT_FOUND");
    let q = post_raw(
        &format!("{}/api/v1/payment/query", t.url),
        &serde_json::to_vec(&t.client().sign(params(&[("pay_order_no", "P1")]))).unwrap(),
    )
    .unwrap();
    assert_eq!((q.status, q.code()), (400, "INVALID_PARAM"));
}

#[test]
fn beyond_the_in_flight_limit_the_answer_is_429_not_a_queue() {
    let t = TestNode::start_with(|c| c.server.max_inflight = 0);
    let a = t.client().pay("LIMIT-1", "1.00");
    assert_eq!((a.status, a.code()), (429, "RATE_LIMITED"));
    assert_eq!(t.order_count(), 0);
}

#[test]
fn a_chunked_body_over_the_limit_is_refused_with_413() {
    let t = TestNode::start();
    let body = serde_json::to_vec(&json!({"merchant_id": MERCHANT, "body": "x".repeat(70_000)})).unwrap();
    // A reader makes ureq send the body chunked, without a Content-Length.
    let r = ureq::post(&format!("{}{PAY}", t.url)).send(std::io::Cursor::new(body));
    let Err(ureq::Error::Status(413, resp)) = r else { panic!("expected 413, got {r:?}") };
    let answer: serde_json::Value = resp.into_json().unwrap();
    assert_eq!(answer["code"], "INVALID_PARAM");
    assert_eq!(t.order_count(), 0);
}
