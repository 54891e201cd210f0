//! Risk control over HTTP with the shipped rules (config/risk.toml): ALLOW, REVIEW and
//! DENY as merchants see them, lists and rules changed live through the admin API, and
//! a restart that is not a way around velocity.

mod common;

use common::*;
use serde_json::json;

/// A sandbox payment with the buyer's details.
fn pay(c: &Client, order_no: &str, amount: &str, buyer: &[(&str, &str)]) -> Answer {
    let mut p = Client::pay_params(order_no, amount);
    for (k, v) in buyer {
        p.insert((*k).into(), (*v).into());
    }
    c.call("/api/v1/payment/pay", p)
}

fn message(a: &Answer) -> &str {
    a.json["message"].as_str().unwrap_or_default()
}

#[test]
fn the_twenty_first_pay_from_a_device_within_a_minute_is_refused_and_kept_refused() {
    let t = TestNode::start();
    let c = t.client();
    for i in 1..=20 {
        let a = pay(&c, &format!("RV-{i}"), "1.00", &[("device_id", "dev-burst"), ("user_id", &format!("u{}", i % 4))]);
        assert_eq!(a.code(), "SUCCESS", "pay {i}: {a:?}");
    }
    let a = pay(&c, "RV-21", "1.00", &[("device_id", "dev-burst"), ("user_id", "u1")]);
    assert_eq!((a.status, a.code()), (403, "RISK_REJECTED"), "{a:?}");
    assert!(message(&a).contains("TOO_MANY_PAYMENTS"), "{a:?}");
    assert!(!message(&a).contains("velocity"), "no internals: {a:?}");
    // The refusal is recorded with the order: a repeat is refused the same way, and the
    // order is FAILED without a channel.
    let again = pay(&c, "RV-21", "1.00", &[("device_id", "dev-burst"), ("user_id", "u1")]);
    assert_eq!(again.code(), "RISK_REJECTED", "{again:?}");
    let q = c.query_no("RV-21");
    assert_eq!(q.data("status"), "FAILED", "{q:?}");
    t.order_count();
    let stored = stored_order(&t, q.data("pay_order_no"));
    let risk = stored.risk.unwrap();
    assert_eq!((risk.decision.as_str(), risk.rules[0].as_str(), risk.version), ("DENY", "velocity.device.1m", 0));
    // Another device is not held back, and the others were allowed and recorded so.
    assert_eq!(pay(&c, "RV-22", "1.00", &[("device_id", "dev-calm")]).code(), "SUCCESS");
    let allowed = stored_order(&t, c.query_no("RV-1").data("pay_order_no")).risk.unwrap();
    assert_eq!(allowed.decision.as_str(), "ALLOW");
    assert_eq!(
        metric(&t.url, "paygate_risk_rule_hits_total{rule=\"velocity.device.1m\"} "),
        1.0,
        "the repeat was not judged again"
    );
    assert!(metric(&t.url, "paygate_risk_decisions_total{decision=\"DENY\"} ") >= 1.0);

    // A restart is not a free pass: the device's minute is counted again from the
    // journal (the node restarts within the minute).
    let t = t.restart(|_| {});
    let c = t.client();
    let a = pay(&c, "RV-23", "1.00", &[("device_id", "dev-burst"), ("user_id", "u2")]);
    assert_eq!(a.code(), "RISK_REJECTED", "{a:?}");
}

#[test]
fn operators_change_lists_and_rules_live_and_for_good() {
    let t = TestNode::start();
    let c = t.client();
    let (status, risk) = admin(&t, "GET", "/admin/risk", None);
    assert_eq!(status, 200, "{risk}");
    assert_eq!(risk["data"]["version"], 0);
    assert_eq!(risk["data"]["rules"]["velocity"][0]["id"], "velocity.device.1m");

    // Block a user: refused from the next payment on; unblocked, paying again.
    let entry = json!({ "list": "block", "kind": "user_id", "value": "u-123" });
    let (status, changed) = admin(&t, "POST", "/admin/risk/lists", Some(entry.clone()));
    assert_eq!((status, &changed["data"]["version"]), (200, &json!(1)), "{changed}");
    let a = pay(&c, "RL-1", "5.00", &[("user_id", "u-123")]);
    assert_eq!((a.status, a.code()), (403, "RISK_REJECTED"), "{a:?}");
    assert!(message(&a).contains("BLOCKED"), "{a:?}");
    assert_eq!(pay(&c, "RL-2", "5.00", &[("user_id", "u-456")]).code(), "SUCCESS");
    let range = json!({ "list": "block", "kind": "cidr", "value": "198.51.100.7/24" });
    let (_, changed) = admin(&t, "POST", "/admin/risk/lists", Some(range));
    let lists = changed["data"]["lists"].as_array().unwrap();
    assert!(lists.iter().any(|e| e["kind"] == "cidr" && e["value"] == "198.51.100.0/24"), "{changed}");
    assert_eq!(pay(&c, "RL-3", "5.00", &[("client_ip", "198.51.100.200")]).code(), "RISK_REJECTED");
    let (status, _) = admin(&t, "DELETE", "/admin/risk/lists", Some(entry.clone()));
    assert_eq!(status, 200);
    assert_eq!(pay(&c, "RL-4", "5.00", &[("user_id", "u-123")]).code(), "SUCCESS");
    let (status, _) = admin(&t, "DELETE", "/admin/risk/lists", Some(entry));
    assert_eq!(status, 404, "not on the list any more");

    // Refused: entries and rules that cannot mean anything.
    for bad in [
        json!({ "list": "block", "kind": "ip", "value": "1.2.3" }),
        json!({ "list": "grey", "kind": "ip", "value": "1.2.3.4" }),
    ] {
        let (status, answer) = admin(&t, "POST", "/admin/risk/lists", Some(bad));
        assert_eq!((status, answer["code"].as_str()), (400, Some("INVALID_PARAM")), "{answer}");
    }
    let (_, current) = admin(&t, "GET", "/admin/risk", None);
    let mut rules = current["data"]["rules"].clone();
    rules["model"]["review_at"] = json!(0.9);
    rules["model"]["deny_at"] = json!(0.5);
    let (status, answer) = admin(&t, "PUT", "/admin/risk/rules", Some(rules));
    assert_eq!(status, 400, "{answer}");

    // An amount far above the user's norm goes to review and ahead; the queue shows it.
    for i in 0..5 {
        assert_eq!(pay(&c, &format!("RR-{i}"), "10.00", &[("user_id", "u-norm")]).code(), "SUCCESS");
    }
    let a = pay(&c, "RR-BIG", "9000.00", &[("user_id", "u-norm")]);
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    // The queue is read from the views, a few milliseconds behind.
    let reviews = eventually(std::time::Duration::from_secs(5), || {
        let (_, reviews) = admin(&t, "GET", "/admin/risk/reviews", None);
        (reviews["data"]["reviews"][0]["order_no"] == "RR-BIG").then_some(reviews)
    })
    .expect("RR-BIG in the review queue");
    let queued = &reviews["data"]["reviews"][0];
    assert_eq!(queued["order_no"], "RR-BIG", "{reviews}");
    assert_eq!(queued["risk"]["rules"], json!(["anomaly.user_amount"]), "{reviews}");

    // Reviews refuse from now on.
    let mut rules = current["data"]["rules"].clone();
    rules["review"] = json!("deny");
    let (status, changed) = admin(&t, "PUT", "/admin/risk/rules", Some(rules));
    assert_eq!(status, 200, "{changed}");
    let version = changed["data"]["version"].clone();
    let a = pay(&c, "RR-BIG-2", "9000.00", &[("user_id", "u-norm")]);
    assert_eq!(a.code(), "RISK_REJECTED", "{a:?}");
    assert!(message(&a).contains("UNUSUAL_PAYMENT"), "{a:?}");

    // After a restart the changes hold.
    let t = t.restart(|_| {});
    let (_, risk) = admin(&t, "GET", "/admin/risk", None);
    assert_eq!(risk["data"]["version"], version);
    assert_eq!(risk["data"]["rules"]["review"], "deny");
    assert_eq!(risk["data"]["lists"].as_array().map(Vec::len), Some(1), "{risk}");
    let a = pay(&t.client(), "RL-5", "5.00", &[("client_ip", "198.51.100.1")]);
    assert_eq!(a.code(), "RISK_REJECTED");
    let anonymous = ureq::get(&format!("{}/admin/risk", t.url)).call();
    assert!(matches!(anonymous, Err(ureq::Error::Status(401, _))));
}

#[test]
fn a_blocked_card_or_account_is_refused_and_a_card_number_is_never_taken() {
    let t = TestNode::start();
    let c = t.client();
    let entry = json!({ "list": "block", "kind": "account", "value": "tok_stolen_card_7f3a" });
    let (status, changed) = admin(&t, "POST", "/admin/risk/lists", Some(entry));
    assert_eq!(status, 200, "{changed}");
    let a = pay(&c, "RA-1", "5.00", &[("user_id", "u-fresh"), ("buyer_account", "tok_stolen_card_7f3a")]);
    assert_eq!((a.status, a.code()), (403, "RISK_REJECTED"), "{a:?}");
    assert!(message(&a).contains("BLOCKED"), "{a:?}");
    let q = c.query_no("RA-1");
    t.order_count();
    let rules = stored_order(&t, q.data("pay_order_no")).risk.unwrap().rules;
    assert_eq!(rules, ["list.block.account"]);
    // The same user with another card pays; the token is used, not kept.
    let a = pay(&c, "RA-2", "5.00", &[("user_id", "u-fresh"), ("buyer_account", "tok_good_card_19c2")]);
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    // A card number is refused before anything is decided or stored.
    for card in ["4111111111111111", "4111 1111 1111 1111"] {
        let a = pay(&c, "RA-3", "5.00", &[("buyer_account", card)]);
        assert_eq!((a.status, a.code()), (400, "INVALID_PARAM"), "{a:?}");
        assert!(message(&a).contains("buyer_account"), "{a:?}");
    }
    assert_eq!(c.query_no("RA-3").code(), "ORDER_NOT_FOUND");
    t.order_count();
    let node = t.restart(|_| {});
    let mut found = Vec::new();
    let mut dirs = vec![node.dir.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                for needle in [&b"tok_good_card_19c2"[..], b"4111111111111111", b"4111 1111"] {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push((path.clone(), String::from_utf8_lossy(needle).into_owned()));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "kept in the data directory: {found:?}");
}

#[test]
fn operators_approve_or_reject_reviewed_payments_and_a_rejection_undoes_the_payment() {
    let t = TestNode::start();
    let c = t.client();
    for i in 0..5 {
        assert_eq!(pay(&c, &format!("RV-N{i}"), "10.00", &[("user_id", "u-rev")]).code(), "SUCCESS");
    }
    // Three payments far above the user's norm: each goes ahead, under review.
    let ids: Vec<String> = ["RV-A", "RV-B", "RV-C"]
        .iter()
        .map(|no| {
            let a = pay(&c, no, "9000.00", &[("user_id", "u-rev")]);
            assert_eq!(a.code(), "SUCCESS", "{a:?}");
            a.data("pay_order_no").to_owned()
        })
        .collect();
    let (a, b, paid) = (&ids[0], &ids[1], &ids[2]);
    sandbox_pay(&t.url, paid);
    wait_status(&c, paid, "SUCCESS", std::time::Duration::from_secs(5));
    let queued = |t: &TestNode| -> Vec<String> {
        let (_, reviews) = admin(t, "GET", "/admin/risk/reviews", None);
        reviews["data"]["reviews"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["order_no"].as_str().unwrap().to_owned())
            .collect()
    };
    eventually(std::time::Duration::from_secs(5), || (queued(&t).len() == 3).then_some(())).expect("three reviews");

    let verdict = |t: &TestNode, id: &str, decision: &str| {
        admin(t, "POST", &format!("/admin/risk/reviews/{id}"), Some(json!({ "decision": decision })))
    };
    // Approved: it stands, and leaves the queue.
    let (status, answer) = verdict(&t, a, "approve");
    assert_eq!((status, answer["data"]["review"].as_str()), (200, Some("approved")), "{answer}");
    assert_eq!(answer["data"]["status"], "PAYING");
    // Rejected while unpaid: closed (at the channel, then here).
    let (status, answer) = verdict(&t, b, "reject");
    assert_eq!((status, answer["data"]["status"].as_str()), (200, Some("CLOSED")), "{answer}");
    assert_eq!(c.query_id(b).data("status"), "CLOSED");
    // Rejected once paid: refunded in full under a number of its own.
    let (status, answer) = verdict(&t, paid, "reject");
    assert_eq!((status, answer["data"]["review"].as_str()), (200, Some("rejected")), "{answer}");
    let refunded = wait_status(&c, paid, "REFUNDED", std::time::Duration::from_secs(5));
    assert_eq!(refunded.data("refunded_amount"), "9000.00", "{refunded:?}");
    let refund = c.call("/api/v1/refund/query", params(&[("refund_no", &format!("REVIEW-{paid}"))]));
    assert_eq!((refund.code(), refund.data("status")), ("SUCCESS", "SUCCESS"), "{refund:?}");
    eventually(std::time::Duration::from_secs(5), || queued(&t).is_empty().then_some(())).expect("queue emptied");

    // A repeat of a verdict changes nothing; the other verdict, an order never under
    // review, an unknown order and a bad body are refused.
    assert_eq!(verdict(&t, a, "approve").0, 200);
    let (status, answer) = verdict(&t, a, "reject");
    assert_eq!((status, answer["code"].as_str()), (422, Some("ORDER_STATUS_ERROR")), "{answer}");
    let calm = c.query_no("RV-N0").data("pay_order_no").to_owned();
    let (status, answer) = verdict(&t, &calm, "approve");
    assert_eq!(answer["code"], "ORDER_STATUS_ERROR", "{status} {answer}");
    assert_eq!(verdict(&t, "P000000000000000000000", "approve").0, 404);
    let (status, answer) = verdict(&t, a, "maybe");
    assert_eq!((status, answer["code"].as_str()), (400, Some("INVALID_PARAM")), "{answer}");

    // The verdicts are journaled: after a restart the queue stays empty and the
    // answers stand.
    let t = t.restart(|_| {});
    assert!(queued(&t).is_empty());
    let stored = stored_order(&t, a);
    assert_eq!(stored.review, Some(true));
}

#[test]
fn a_reviewed_payment_that_failed_at_its_channel_is_not_said_to_be_refused_by_risk() {
    let t = TestNode::start();
    let c = t.client();
    for i in 0..5 {
        assert_eq!(pay(&c, &format!("RF-N{i}"), "10.00", &[("user_id", "u-rf")]).code(), "SUCCESS");
    }
    let a = pay(&c, "RF-BIG", "9000.00", &[("user_id", "u-rf")]);
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    let id = a.data("pay_order_no").to_owned();
    let failed = ureq::post(&format!("{}/admin/sandbox/orders/{id}/fail", t.url))
        .set("authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(failed.status(), 200);
    wait_status(&c, &id, "FAILED", std::time::Duration::from_secs(5));
    // Its repeat answers as for any payment that failed at its channel, not with a risk
    // refusal it never had.
    let again = pay(&c, "RF-BIG", "9000.00", &[("user_id", "u-rf")]);
    assert_eq!(again.code(), "CHANNEL_ERROR", "{again:?}");
}

fn stored_order(t: &TestNode, id: &str) -> paygate_actors::order::Order {
    use paygate_actors::ports::OrderStore;
    t.node().views.load(&paygate_actors::ids::PayOrderNo::parse(id).unwrap()).unwrap().unwrap()
}
