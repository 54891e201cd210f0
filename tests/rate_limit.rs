//! Request rate limits over HTTP: a merchant beyond its token bucket gets 429
//! RATE_LIMITED with `Retry-After`, counted in `/metrics`, without touching other
//! merchants; the node's own bucket limits every merchant together.

mod common;

use std::time::Duration;

use common::*;
use paygate_actors::rate_limit::RateLimit;

const DEMO: &str = "M20240101001";

/// Queries an order that does not exist: an authenticated request that changes nothing.
fn query(c: &Client) -> (u16, String, Option<String>) {
    let body = serde_json::to_vec(&c.sign(params(&[("order_no", "NO-SUCH-ORDER")]))).unwrap();
    let r = ureq::post(&format!("{}/api/v1/payment/query", c.base))
        .set("content-type", "application/json")
        .send_bytes(&body);
    let (status, resp) = match r {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(s, r)) => (s, r),
        Err(e) => panic!("{e}"),
    };
    let retry_after = resp.header("retry-after").map(str::to_owned);
    let json: serde_json::Value = resp.into_json().unwrap();
    (status, json["code"].as_str().unwrap_or_default().to_owned(), retry_after)
}

#[test]
fn a_merchant_beyond_its_rate_waits_and_others_do_not() {
    let t = TestNode::start_with(|c| {
        let m = c.merchants.iter_mut().find(|m| m.merchant_id == DEMO).unwrap();
        m.rate_limit = Some(RateLimit { rate_per_sec: 2.0, burst: 3 });
    });
    let c = t.client();
    for i in 0..3 {
        assert_eq!(query(&c).1, "ORDER_NOT_FOUND", "request {i} is within the burst");
    }
    let (status, code, retry_after) = query(&c);
    assert_eq!((status, code.as_str()), (429, "RATE_LIMITED"));
    assert_eq!(retry_after.as_deref(), Some("1"), "half a second, rounded up");
    let limited = format!("paygate_rate_limited_total{{scope=\"merchant\",merchant_id=\"{DEMO}\"}} ");
    assert_eq!(metric(&t.url, &limited), 1.0);

    // Another merchant is not held back by it.
    let legacy = Client::new(&t.url, "M20240101002", "legacy-secret-change-me-01234567");
    assert_eq!(query(&legacy).1, "ORDER_NOT_FOUND");

    // After the wait it says, the merchant may go on.
    std::thread::sleep(Duration::from_millis(1_050));
    assert_eq!(query(&c).1, "ORDER_NOT_FOUND");
}

#[test]
fn the_node_limits_every_merchant_together() {
    let t = TestNode::start_with(|c| {
        c.server.rate_limit = Some(RateLimit { rate_per_sec: 0.5, burst: 2 });
    });
    let demo = t.client();
    let legacy = Client::new(&t.url, "M20240101002", "legacy-secret-change-me-01234567");
    assert_eq!(query(&demo).1, "ORDER_NOT_FOUND");
    assert_eq!(query(&legacy).1, "ORDER_NOT_FOUND");
    let (status, code, retry_after) = query(&demo);
    assert_eq!((status, code.as_str(), retry_after.as_deref()), (429, "RATE_LIMITED", Some("2")));
    assert_eq!(query(&legacy).0, 429, "the node's limit is shared");
    assert_eq!(metric(&t.url, "paygate_rate_limited_total{scope=\"node\"} "), 2.0);
}
