//! Refunds over loopback HTTP through the sandbox channel: partial and full refunds, the
//! paid-amount invariant under concurrency, idempotency, queries, and kill -9.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// A paid order of `amount`: its pay_order_no.
fn paid_order(client: &Client, order_no: &str, amount: &str) -> String {
    let a = client.pay(order_no, amount);
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    let id = a.data("pay_order_no").to_owned();
    sandbox_pay(&client.base, &id);
    wait_status(client, &id, "SUCCESS", WAIT);
    id
}

fn refund(client: &Client, pay_order_no: &str, refund_no: &str, amount: &str) -> Answer {
    client.call(
        "/api/v1/refund/apply",
        params(&[("pay_order_no", pay_order_no), ("refund_no", refund_no), ("refund_amount", amount)]),
    )
}

#[test]
fn partial_then_full_refund_moves_the_order_and_never_exceeds_what_was_paid() {
    let t = TestNode::start();
    let c = t.client();
    let id = paid_order(&c, "RF-1", "10.00");

    let a = refund(&c, &id, "RN-1", "4.00");
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    assert_eq!(a.data("status"), "SUCCESS");
    assert_eq!(a.data("refund_amount"), "4.00");
    assert_eq!(a.data("order_status"), "PARTIALLY_REFUNDED");
    assert_eq!(a.data("refunded_amount"), "4.00");
    let refund_order_no = a.data("refund_order_no").to_owned();
    assert!(refund_order_no.starts_with('R'), "{refund_order_no}");

    // The same request again is the same refund; the same number otherwise is a conflict.
    let again = refund(&c, &id, "RN-1", "4.00");
    assert_eq!(again.data("refund_order_no"), refund_order_no);
    assert_eq!(again.data("refunded_amount"), "4.00", "not refunded twice");
    let conflict = refund(&c, &id, "RN-1", "3.00");
    assert_eq!((conflict.status, conflict.code()), (409, "IDEMPOTENCY_CONFLICT"));

    let over = refund(&c, &id, "RN-2", "6.01");
    assert_eq!((over.status, over.code()), (422, "REFUND_EXCEEDS_PAID"), "{over:?}");
    let rest = refund(&c, &id, "RN-3", "6.00");
    assert_eq!(rest.data("order_status"), "REFUNDED");
    assert_eq!(c.query_id(&id).data("status"), "REFUNDED");
    assert_eq!(c.query_id(&id).data("refunded_amount"), "10.00");

    // Queries by our number, and by the merchant's (alone, or with its order).
    let q = c.call("/api/v1/refund/query", params(&[("refund_order_no", &refund_order_no)]));
    assert_eq!((q.data("refund_no"), q.data("status")), ("RN-1", "SUCCESS"));
    let q = c.call("/api/v1/refund/query", params(&[("refund_no", "RN-3"), ("pay_order_no", &id)]));
    assert_eq!(q.data("refund_amount"), "6.00");
    // At once, though the views' refund index trails the answer.
    let q = c.call("/api/v1/refund/query", params(&[("refund_no", "RN-3")]));
    assert_eq!(q.data("pay_order_no"), id, "{q:?}");
    let missing = c.call("/api/v1/refund/query", params(&[("refund_no", "NOPE")]));
    assert_eq!(missing.code(), "ORDER_NOT_FOUND");
    // Another merchant sees none of it.
    let other = Client::new(&t.url, LEGACY_MERCHANT, LEGACY_SECRET);
    let q = other.call("/api/v1/refund/query", params(&[("refund_order_no", &refund_order_no), ("sign_type", "MD5")]));
    assert_eq!(q.code(), "ORDER_NOT_FOUND");
}

#[test]
fn refunds_are_refused_clearly() {
    let t = TestNode::start();
    let c = t.client();
    let unpaid = c.pay("RF-UNPAID", "1.00").data("pay_order_no").to_owned();
    let a = refund(&c, &unpaid, "RN-U", "1.00");
    assert_eq!((a.status, a.code()), (422, "ORDER_STATUS_ERROR"), "{a:?}");
    let id = paid_order(&c, "RF-BAD", "1.00");
    for (field, value) in
        [("refund_amount", "0"), ("refund_amount", "1.001"), ("refund_amount", "abc"), ("refund_no", "no spaces")]
    {
        let mut p = params(&[("pay_order_no", &id), ("refund_no", "RN-B"), ("refund_amount", "0.50")]);
        p.insert(field.into(), value.into());
        let a = c.call("/api/v1/refund/apply", p);
        assert_eq!(a.code(), "INVALID_PARAM", "{field}={value}: {a:?}");
        assert!(a.json["message"].as_str().unwrap().contains(field), "{a:?}");
    }
    // A refund number belongs to one refund of the merchant, whatever the order.
    assert_eq!(refund(&c, &id, "RN-ONCE", "0.50").code(), "SUCCESS");
    let other = paid_order(&c, "RF-OTHER", "1.00");
    assert_eq!(refund(&c, &other, "RN-ONCE", "0.50").code(), "IDEMPOTENCY_CONFLICT");
}

#[test]
fn fifty_concurrent_refunds_of_one_yuan_on_ten_yuan_ten_succeed() {
    let t = TestNode::start();
    let c = t.client();
    let id = paid_order(&c, "RF-RACE", "10.00");
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (c, id) = (c.clone(), id.clone());
                s.spawn(move || refund(&c, &id, &format!("RACE-{i}"), "1.00"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = answers.iter().filter(|a| a.code() == "SUCCESS" && a.data("status") == "SUCCESS").count();
    let exceeded = answers.iter().filter(|a| a.code() == "REFUND_EXCEEDS_PAID").count();
    assert_eq!((ok, exceeded), (10, 40), "{answers:?}");
    let order = c.query_id(&id);
    assert_eq!((order.data("status"), order.data("refunded_amount")), ("REFUNDED", "10.00"));

    // Concurrent identical requests make one refund.
    let id = paid_order(&c, "RF-SAME", "5.00");
    let numbers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| {
                let (c, id) = (c.clone(), id.clone());
                s.spawn(move || refund(&c, &id, "SAME-1", "1.00").data("refund_order_no").to_owned())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(numbers.iter().all(|n| *n == numbers[0] && !n.is_empty()), "{numbers:?}");
    assert_eq!(c.query_id(&id).data("refunded_amount"), "1.00");

    // One refund number raced on two orders: one of them gets it.
    let a = paid_order(&c, "RF-TWO-A", "1.00");
    let b = paid_order(&c, "RF-TWO-B", "1.00");
    let codes: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let c = c.clone();
                let order = if i % 2 == 0 { a.clone() } else { b.clone() };
                s.spawn(move || {
                    let r = refund(&c, &order, "TWO-1", "1.00");
                    format!("{}:{}", r.code(), r.data("pay_order_no"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: std::collections::HashSet<&String> = codes.iter().filter(|c| c.starts_with("SUCCESS")).collect();
    assert_eq!(winners.len(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| c.starts_with("SUCCESS") || c.starts_with("IDEMPOTENCY_CONFLICT")), "{codes:?}");
}

#[test]
fn refunds_survive_kill_9_without_being_lost_or_repeated() {
    let data = tempfile::tempdir().unwrap();
    let node = BinNode::start(data.path(), &[]);
    let c = node.client();
    let id = paid_order(&c, "RF-KILL", "3.00");
    let mut numbers = Vec::new();
    for i in 0..3 {
        let a = refund(&c, &id, &format!("K-{i}"), "1.00");
        assert_eq!(a.data("status"), "SUCCESS", "{a:?}");
        numbers.push(a.data("refund_order_no").to_owned());
    }
    node.kill9();
    let node = BinNode::start(data.path(), &[]);
    let c = node.client();
    let order = c.query_id(&id);
    assert_eq!((order.data("status"), order.data("refunded_amount")), ("REFUNDED", "3.00"));
    for (i, no) in numbers.iter().enumerate() {
        let q = c.call("/api/v1/refund/query", params(&[("refund_order_no", no)]));
        assert_eq!((q.data("refund_no"), q.data("status")), (format!("K-{i}").as_str(), "SUCCESS"));
        // Asked again after the restart: the same refund, nothing new at the channel.
        let again = refund(&c, &id, &format!("K-{i}"), "1.00");
        assert_eq!(again.data("refund_order_no"), no);
    }
    let over: Value = refund(&c, &id, "K-9", "0.01").json;
    assert_eq!(over["code"], "REFUND_EXCEEDS_PAID");
}

#[test]
fn each_refund_outcome_is_notified_signed_after_the_payment() {
    let t = TestNode::start();
    let c = t.client();
    let pay_ep = MerchantEndpoint::start(Reply::Status(200, "SUCCESS"));
    let refund_ep = MerchantEndpoint::start(Reply::Status(200, "SUCCESS"));
    let mut p = Client::pay_params("RF-NOTIFY", "2.00");
    p.insert("notify_url".into(), pay_ep.url.clone());
    let id = c.call("/api/v1/payment/pay", p).data("pay_order_no").to_owned();
    sandbox_pay(&t.url, &id);
    let paid = pay_ep.wait_for(1, WAIT);
    assert_eq!(paid[0].json()["notify_type"], "PAY");

    // A refund with its own notify_url; another without one goes to the order's.
    let mut p = params(&[("pay_order_no", &id), ("refund_no", "RN-N1"), ("refund_amount", "0.50")]);
    p.insert("notify_url".into(), refund_ep.url.clone());
    assert_eq!(c.call("/api/v1/refund/apply", p).data("status"), "SUCCESS");
    let got = refund_ep.wait_for(1, WAIT);
    let fields = got[0].json();
    assert!(paygate_actors::signing::verify(&fields, SECRET, paygate_actors::signing::SignType::HmacSha256));
    let header = &got[0].headers["paygate-signature"];
    assert!(paygate_actors::signing::verify_payload_signature(SECRET, header, &got[0].body, now_secs(), 300));
    assert_eq!(fields["notify_type"], "REFUND");
    assert_eq!((fields["status"].as_str(), fields["order_status"].as_str()), ("SUCCESS", "PARTIALLY_REFUNDED"));
    assert_eq!((fields["refund_no"].as_str(), fields["refund_amount"].as_str()), ("RN-N1", "0.50"));
    assert!(fields["sequence"].parse::<u64>().unwrap() > paid[0].json()["sequence"].parse::<u64>().unwrap());

    assert_eq!(refund(&c, &id, "RN-N2", "1.50").data("order_status"), "REFUNDED");
    let got = pay_ep.wait_for(2, WAIT);
    let fields = got[1].json();
    assert_eq!((fields["notify_type"].as_str(), fields["refund_no"].as_str()), ("REFUND", "RN-N2"));
    assert_eq!(fields["order_status"], "REFUNDED");

    // The order's notifications, in order.
    let list = eventually(WAIT, || {
        let a = c.call("/api/v1/notify/query", params(&[("pay_order_no", &id)]));
        let n = a.json["data"]["notifications"].as_array().cloned().unwrap_or_default();
        (n.len() == 3 && n.iter().all(|n| n["status"] == "DELIVERED")).then_some(n)
    })
    .expect("three delivered notifications");
    let types: Vec<&str> = list.iter().map(|n| n["notify_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["PAY", "REFUND", "REFUND"]);
}

#[test]
fn an_unanswered_refund_is_settled_by_query_and_an_outage_goes_to_review() {
    let t = TestNode::start_with(|c| {
        c.orders.refund_query_first_after_secs = 1;
        c.orders.refund_query_interval_secs = 1;
        c.orders.refund_query_max_attempts = 3;
        c.channels.iter_mut().for_each(|ch| ch.timeout_ms = 1_000);
    });
    let c = t.client();
    let a = c.pay_by("ALIPAY", "RF-ALI", "5.00");
    let id = a.data("pay_order_no").to_owned();
    sim_post(&t, "/sim/alipay/pay", serde_json::json!({ "out_trade_no": id }));
    wait_status(&c, &id, "SUCCESS", WAIT);

    // Carried out at Alipay, the answer lost: REFUNDING, then settled by a query under
    // the same number — one refund at Alipay.
    sim_post(&t, "/sim/alipay/faults", serde_json::json!({ "timeout_rate": 1.0 }));
    let r = refund(&c, &id, "ALI-1", "2.00");
    assert_eq!((r.code(), r.data("status")), ("SUCCESS", "REFUNDING"), "{r:?}");
    let over = refund(&c, &id, "ALI-X", "3.01");
    assert_eq!(over.code(), "REFUND_EXCEEDS_PAID", "the refund in flight holds its amount");
    sim_post(&t, "/sim/alipay/faults", serde_json::json!({}));
    let no = r.data("refund_order_no").to_owned();
    eventually(WAIT, || {
        let q = c.call("/api/v1/refund/query", params(&[("refund_order_no", &no)]));
        (q.data("status") == "SUCCESS").then_some(())
    })
    .expect("settled by query");
    let trade = sim_get(&t, &format!("/sim/alipay/trades/{id}"));
    assert_eq!(trade["refunded_amount"], "2.00", "refunded once at Alipay: {trade}");

    // Alipay down through every query: manual review, the amount still held.
    sim_post(&t, "/sim/alipay/faults", serde_json::json!({ "outage": true }));
    let r = refund(&c, &id, "ALI-2", "3.00");
    assert_eq!(r.data("status"), "REFUNDING", "{r:?}");
    let no = r.data("refund_order_no").to_owned();
    let q = eventually(WAIT, || {
        let q = c.call("/api/v1/refund/query", params(&[("refund_order_no", &no)]));
        (q.data("status") == "MANUAL_REVIEW").then_some(q)
    })
    .expect("sent to review");
    assert!(q.data("failure").contains("3 queries"), "{q:?}");
    assert_eq!(refund(&c, &id, "ALI-3", "0.01").code(), "REFUND_EXCEEDS_PAID");
    assert!(metric(&t.url, "paygate_alerts_total{kind=\"refund_manual_review\"}") >= 1.0);
    sim_post(&t, "/sim/alipay/faults", serde_json::json!({}));
}

#[test]
fn alipays_refund_notification_settles_a_refund_whose_answer_was_lost() {
    // Queries far off: only the notification can settle the refund in this test.
    let t = TestNode::start_with(|c| {
        c.orders.refund_query_first_after_secs = 600;
        c.channels.iter_mut().for_each(|ch| ch.timeout_ms = 1_000);
    });
    let c = t.client();
    let id = c.pay_by("ALIPAY", "RF-ALI-N", "3.00").data("pay_order_no").to_owned();
    sim_post(&t, "/sim/alipay/pay", serde_json::json!({ "out_trade_no": id }));
    wait_status(&c, &id, "SUCCESS", WAIT);
    sim_post(&t, "/sim/alipay/faults", serde_json::json!({ "timeout_rate": 1.0 }));
    let r = refund(&c, &id, "ALI-N1", "1.00");
    sim_post(&t, "/sim/alipay/faults", serde_json::json!({}));
    assert_eq!(r.data("status"), "REFUNDING", "{r:?}");
    let no = r.data("refund_order_no").to_owned();
    let q = eventually(WAIT, || {
        let q = c.call("/api/v1/refund/query", params(&[("refund_order_no", &no)]));
        (q.data("status") == "SUCCESS").then_some(q)
    })
    .expect("settled by Alipay's notification");
    assert_eq!(q.data("order_status"), "PARTIALLY_REFUNDED");
}
