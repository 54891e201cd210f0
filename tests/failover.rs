//! Channel outages over HTTP against the real simulator: the failing account's circuit
//! breaker opens within its failure count, payments move to the sibling account with no
//! merchant-visible error, half-open probes close the breaker once the account
//! recovers; and when every channel of a method is down, the merchant gets a clear
//! error at once, not a hang.
//!
//! One test in its own binary: the metrics registry is per process, and the counts
//! asserted here are exact.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const MAIN: &str = "alipay-sim";
const SIBLING: &str = "alipay-sim-2";

fn calls(t: &TestNode, channel: &str, outcome: &str) -> f64 {
    metric(&t.url, &format!("paygate_channel_calls_total{{channel=\"{channel}\",outcome=\"{outcome}\"}} "))
}

fn breaker(t: &TestNode, channel: &str) -> f64 {
    metric(&t.url, &format!("paygate_channel_breaker_state{{channel=\"{channel}\"}} "))
}

/// Waits until the channel's actor has moved its open breaker to half open (its open
/// time has passed: a probe may go).
fn half_open(t: &TestNode, channel: &str) {
    eventually(Duration::from_secs(10), || (breaker(t, channel) == 1.0).then_some(()))
        .unwrap_or_else(|| panic!("{channel} never half open"));
}

#[test]
fn an_account_outage_fails_over_to_its_sibling_and_the_breaker_recovers() {
    let t = TestNode::start_with(|c| {
        for ch in c.channels.iter_mut() {
            ch.breaker.open_ms = 1_500;
            ch.breaker.max_open_ms = 1_500;
        }
    });
    let c = t.client();

    // Healthy: the heavier account takes the payment.
    let a = c.pay_by("ALIPAY", "FO-0", "1.00");
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    assert_eq!(a.data("channel"), MAIN);

    // The main account's gateway answers 503 to everything; its sibling works.
    let book = sim_post(&t, "/sim/alipay/faults", json!({ "app_id": "2021000000000001", "outage": true }));
    assert_eq!(book["accounts"]["2021000000000001"]["outage"], true, "{book}");
    assert_eq!(book["outage"], false, "only that account");
    for i in 1..=100 {
        let a = c.pay_by("ALIPAY", &format!("FO-{i}"), "1.00");
        assert_eq!(a.code(), "SUCCESS", "pay {i}: {a:?}");
        assert_eq!(a.data("channel"), SIBLING, "pay {i}");
        assert!(a.data("code_url").starts_with("http"), "pay {i}: {a:?}");
    }
    // The breaker opened after 5 failures in a row; the rest never called the account.
    // Outcomes reach the channel's actor without the caller waiting, so a call may start
    // before the actor has opened it: within a couple of calls of the fifth.
    // Routing leaves out a channel whose breaker is open, so it is not even asked.
    let failed = calls(&t, MAIN, "unavailable");
    assert!((5.0..=7.0).contains(&failed), "{failed} calls reached the failing account");
    assert_eq!(breaker(&t, MAIN), 2.0, "open");
    assert_eq!(calls(&t, SIBLING, "ok"), 100.0);
    // The payments are real trades at the sibling account: paid there, its signed
    // notification (naming the sibling's app_id) settles the order.
    let id = c.pay_by("ALIPAY", "FO-1", "1.00").data("pay_order_no").to_owned();
    let paid = sim_post(&t, "/sim/alipay/pay", json!({ "out_trade_no": id }));
    assert!(paid["trade_no"].is_string(), "{paid}");
    wait_status(&c, &id, "SUCCESS", Duration::from_secs(10));

    // Still down when the open time passes: the probe fails and the breaker reopens.
    half_open(&t, MAIN);
    let a = c.pay_by("ALIPAY", "FO-101", "1.00");
    assert_eq!((a.code(), a.data("channel")), ("SUCCESS", SIBLING), "{a:?}");
    assert_eq!(calls(&t, MAIN, "unavailable"), failed + 1.0, "one probe");
    assert_eq!(breaker(&t, MAIN), 2.0, "reopened");

    // The account recovers: after the open time, one probe goes to it and closes it.
    sim_post(&t, "/sim/alipay/faults", json!({ "app_id": "2021000000000001" }));
    half_open(&t, MAIN);
    let a = c.pay_by("ALIPAY", "FO-102", "1.00");
    assert_eq!((a.code(), a.data("channel")), ("SUCCESS", MAIN), "the probe: {a:?}");
    eventually(Duration::from_secs(5), || (breaker(&t, MAIN) == 0.0).then_some(())).expect("the breaker closes");
    let a = c.pay_by("ALIPAY", "FO-103", "1.00");
    assert_eq!(a.data("channel"), MAIN, "closed again: {a:?}");

    // Every WECHAT_PAY channel is down (its API v2 and v3 channels are one account):
    // each pay tries both, answers at once and says why; once their breakers are open
    // the answer says the channels are failing, without calling them.
    sim_post(&t, "/sim/wechat/faults", json!({ "outage": true }));
    for i in 0..5 {
        let a = c.pay_by("WECHAT_PAY", &format!("FO-W{i}"), "1.00");
        assert_eq!(a.code(), "CHANNEL_ERROR", "{a:?}");
        let message = a.json["message"].as_str().unwrap();
        assert!(message.starts_with("no channel could take the payment now: "), "{message}");
        assert_eq!(message.matches("HTTP 503").count(), 2, "both channels tried: {message}");
        // Nothing was created: the order does not exist.
        let q = c.call("/api/v1/payment/query", params(&[("order_no", &format!("FO-W{i}"))]));
        assert_eq!(q.code(), "ORDER_NOT_FOUND");
    }
    // (Within a couple of calls: a breaker opens when its actor has the fifth report.)
    let a = (5..8)
        .map(|i| c.pay_by("WECHAT_PAY", &format!("FO-W{i}"), "1.00"))
        .find(|a| a.code() != "CHANNEL_ERROR")
        .expect("the breakers open");
    assert_eq!(a.code(), "NO_AVAILABLE_CHANNEL", "{a:?}");
    assert_eq!(
        a.json["message"],
        "every WECHAT_PAY channel that takes this payment is failing or disabled; try again shortly"
    );
    // The same order number is free to be paid once the channel is back.
    sim_post(&t, "/sim/wechat/faults", json!({}));
    half_open(&t, "wechat-v3-sim");
    let a = c.pay_by("WECHAT_PAY", "FO-W0", "1.00");
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
}
