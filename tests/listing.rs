//! Listings of a merchant's orders and refunds: newest first, by status, paged with a
//! cursor that stays correct while new orders arrive.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn list(c: &Client, path: &str, extra: &[(&str, &str)]) -> Answer {
    let mut p = params(&[("start_time", "2020-01-01T00:00:00Z")]);
    for (k, v) in extra {
        p.insert(k.to_string(), v.to_string());
    }
    c.call(path, p)
}

/// Every page of a listing: the records' ids under `id_field`, and how many pages.
fn all_pages(c: &Client, path: &str, key: &str, id_field: &str, extra: &[(&str, &str)]) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = extra.to_vec();
        if let Some(c) = &cursor {
            args.push(("cursor", c.as_str()));
        }
        let a = list(c, path, &args);
        assert_eq!(a.code(), "SUCCESS", "{a:?}");
        pages += 1;
        let items = a.json["data"][key].as_array().unwrap();
        ids.extend(items.iter().map(|o| o[id_field].as_str().unwrap().to_owned()));
        match a.json["data"]["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (ids, pages),
        }
        assert!(pages < 100, "the listing does not end");
    }
}

#[test]
fn orders_are_listed_newest_first_by_status_and_paged_without_gaps_or_repeats() {
    let t = TestNode::start();
    let c = t.client();
    let mut created = Vec::new();
    for i in 0..25 {
        let id = c.pay(&format!("LS-{i:02}"), "1.00").data("pay_order_no").to_owned();
        if i % 5 == 0 {
            sandbox_pay(&t.url, &id);
            wait_status(&c, &id, "SUCCESS", WAIT);
        }
        created.push(id);
    }
    // Another merchant's order is never listed.
    let other = Client::new(&t.url, LEGACY_MERCHANT, LEGACY_SECRET);
    let mut p = Client::pay_params("LS-OTHER", "1.00");
    p.insert("sign_type".into(), "MD5".into());
    assert_eq!(other.call("/api/v1/payment/pay", p).code(), "SUCCESS");
    t.order_count(); // the views show every order

    let first = list(&c, "/api/v1/payment/list", &[("limit", "10")]);
    let orders = first.json["data"]["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 10);
    let times: Vec<time::OffsetDateTime> = orders
        .iter()
        .map(|o| {
            let t = o["create_time"].as_str().unwrap();
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    assert_eq!(orders[0]["pay_order_no"], created[24].as_str());

    // Paging while new orders arrive: each old order exactly once, the new ones not in
    // later pages (they are newer than the cursor).
    let cursor = first.json["data"]["next_cursor"].as_str().unwrap().to_owned();
    for i in 0..3 {
        c.pay(&format!("LS-NEW-{i}"), "1.00");
    }
    t.order_count();
    let (rest, _) =
        all_pages(&c, "/api/v1/payment/list", "orders", "pay_order_no", &[("limit", "10"), ("cursor", &cursor)]);
    let mut seen: Vec<String> = orders.iter().map(|o| o["pay_order_no"].as_str().unwrap().to_owned()).collect();
    seen.extend(rest);
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!((seen.len(), distinct.len()), (25, 25), "no gap, no repeat");
    assert_eq!(distinct, created.iter().collect::<HashSet<_>>());

    let (paid, _) = all_pages(&c, "/api/v1/payment/list", "orders", "pay_order_no", &[("status", "SUCCESS")]);
    let expected: HashSet<String> = created.iter().step_by(5).cloned().collect();
    assert_eq!(paid.into_iter().collect::<HashSet<_>>(), expected);

    // A range: nothing before the first order, nothing after now.
    let none = c.call(
        "/api/v1/payment/list",
        params(&[("start_time", "2020-01-01T00:00:00Z"), ("end_time", "2020-01-02T00:00:00Z")]),
    );
    assert_eq!(none.json["data"]["orders"], Value::Array(vec![]));
    assert!(none.json["data"]["next_cursor"].is_null());
    // A start in the future with no end is an empty range, not a mistake.
    let later = c.call("/api/v1/payment/list", params(&[("start_time", "2999-01-01T00:00:00Z")]));
    assert_eq!(later.code(), "SUCCESS", "{later:?}");
    assert_eq!(later.json["data"]["orders"], Value::Array(vec![]));
}

#[test]
fn refunds_are_listed_and_bad_listing_requests_are_refused() {
    let t = TestNode::start();
    let c = t.client();
    let id = c.pay("LR-1", "5.00").data("pay_order_no").to_owned();
    sandbox_pay(&t.url, &id);
    wait_status(&c, &id, "SUCCESS", WAIT);
    for i in 0..4 {
        let p = params(&[("pay_order_no", &id), ("refund_no", &format!("LR-R{i}")), ("refund_amount", "1.00")]);
        assert_eq!(c.call("/api/v1/refund/apply", p).code(), "SUCCESS");
    }
    t.order_count();
    let (refunds, pages) = all_pages(&c, "/api/v1/refund/list", "refunds", "refund_no", &[("limit", "3")]);
    assert_eq!(refunds, ["LR-R3", "LR-R2", "LR-R1", "LR-R0"], "newest first");
    assert_eq!(pages, 2);
    let (done, _) = all_pages(&c, "/api/v1/refund/list", "refunds", "refund_no", &[("status", "SUCCESS")]);
    assert_eq!(done.len(), 4);
    let (failed, _) = all_pages(&c, "/api/v1/refund/list", "refunds", "refund_no", &[("status", "FAILED")]);
    assert!(failed.is_empty());

    for (field, value) in [
        ("limit", "101"),
        ("limit", "0"),
        ("status", "PAID"),
        ("cursor", "not-a-cursor!"),
        ("end_time", "2019-01-01T00:00:00Z"),
        ("start_time", "yesterday"),
    ] {
        let a = list(&c, "/api/v1/payment/list", &[(field, value)]);
        assert_eq!(a.code(), "INVALID_PARAM", "{field}={value}: {a:?}");
        assert!(a.json["message"].as_str().unwrap().contains(field), "{a:?}");
    }
    let a = c.call("/api/v1/refund/list", params(&[]));
    assert_eq!(a.code(), "INVALID_PARAM");
    assert!(a.json["message"].as_str().unwrap().contains("start_time"), "{a:?}");
}
