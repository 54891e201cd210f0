//! Failover when a channel's answer is lost, over HTTP against the real simulator: the
//! trade that may exist is asked about and closed before the payment moves to the other
//! account, and — whatever the simulator's faults do to either account, and even if a
//! buyer pays every trade the simulator holds — at most one payment of an order is kept;
//! any other is refunded.

mod common;

use std::time::Duration;

use common::*;
use paygate_actors::ports::OrderStore;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};

const MAIN: &str = "alipay-sim";
const SIBLING: &str = "alipay-sim-2";
const MAIN_APP: &str = "2021000000000001";
const SIBLING_APP: &str = "2021000000000002";

/// A node whose Alipay calls time out after 800 ms, so that lost answers cost little.
fn node() -> TestNode {
    TestNode::start_with(|c| {
        for ch in c.channels.iter_mut().filter(|ch| ch.provider == "alipay") {
            ch.timeout_ms = 800;
        }
    })
}

fn trade(t: &TestNode, app_id: &str, id: &str) -> Value {
    sim_get(t, &format!("/sim/alipay/trades/{id}?app_id={app_id}"))
}

#[test]
fn a_lost_answer_is_settled_before_the_payment_moves_to_the_other_account() {
    let t = node();
    let c = t.client();
    // The main account carries out its next call and never answers it.
    sim_post(&t, "/sim/alipay/faults", json!({ "app_id": MAIN_APP, "timeout_rate": 1.0, "calls": 1 }));
    let a = c.pay_by("ALIPAY", "FU-1", "1.00");
    assert_eq!((a.code(), a.data("channel")), ("SUCCESS", SIBLING), "{a:?}");
    let id = a.data("pay_order_no").to_owned();

    // The main account's trade exists, was asked about and closed; the buyer can pay
    // only the sibling's.
    assert_eq!(trade(&t, MAIN_APP, &id)["status"], "TRADE_CLOSED");
    assert_eq!(trade(&t, SIBLING_APP, &id)["status"], "WAIT_BUYER_PAY");
    let refused = sim_post(&t, "/sim/alipay/pay", json!({ "out_trade_no": id, "app_id": MAIN_APP }));
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("closed")), "{refused}");
    let paid = sim_post(&t, "/sim/alipay/pay", json!({ "out_trade_no": id, "app_id": SIBLING_APP }));
    assert!(paid["trade_no"].is_string(), "{paid}");
    wait_status(&c, &id, "SUCCESS", Duration::from_secs(10));

    // The order keeps why: the abandoned channel and its trade's fate.
    t.order_count();
    let stored = t.node().views.load(&paygate_actors::ids::PayOrderNo::parse(&id).unwrap()).unwrap().unwrap();
    assert_eq!(stored.abandoned, [MAIN]);
    let route = stored.route.unwrap();
    assert!(route.passed_over[0].starts_with("alipay-sim: ") && route.passed_over[0].ends_with("its trade was closed"));

    // When the lost answer's trade cannot be settled (the account answers nothing), the
    // order stays with it: PAYING, never a second trade on a guess.
    sim_post(&t, "/sim/alipay/faults", json!({ "app_id": MAIN_APP, "timeout_rate": 1.0 }));
    let a = c.pay_by("ALIPAY", "FU-2", "1.00");
    assert_eq!(a.code(), "CHANNEL_ERROR", "{a:?}");
    assert!(a.json["message"].as_str().unwrap_or_default().contains("PAYING"), "{a:?}");
    let o = c.query_no("FU-2");
    assert_eq!((o.data("status"), o.data("channel")), ("PAYING", MAIN), "{o:?}");
    assert_eq!(
        sim_get(&t, &format!("/sim/alipay/trades/{}?app_id={SIBLING_APP}", o.data("pay_order_no")))["error"],
        "no such trade"
    );
}

#[test]
fn a_payment_on_a_trade_given_up_on_is_refunded_there_and_flagged() {
    let t = node();
    let c = t.client();
    // The main account loses its next answer, and (as Alipay may) closing a code never
    // scanned leaves it payable.
    let faults = json!({ "app_id": MAIN_APP, "timeout_rate": 1.0, "calls": 1, "unscanned_close_keeps_code": true });
    sim_post(&t, "/sim/alipay/faults", faults);
    let a = c.pay_by("ALIPAY", "FU-LATE", "1.00");
    assert_eq!((a.code(), a.data("channel")), ("SUCCESS", SIBLING), "{a:?}");
    let id = a.data("pay_order_no").to_owned();
    // Other tests of this binary may add to it; none takes from it.
    let alerts = || metric(&t.url, "paygate_alerts_total{kind=\"late_payment\"} ");
    let alerts_before = alerts();

    // Someone pays the abandoned trade: its channel's signed notification is believed,
    // the payment is refunded at that account, and the order still waits for its own.
    let paid = sim_post(&t, "/sim/alipay/pay", json!({ "out_trade_no": id, "app_id": MAIN_APP }));
    assert!(paid["trade_no"].is_string(), "{paid}");
    let refunded = eventually(Duration::from_secs(10), || {
        let tr = trade(&t, MAIN_APP, &id);
        (tr["refunded_amount"] == "1.00").then_some(tr)
    });
    assert!(refunded.is_some(), "the abandoned trade's payment was not refunded: {}", trade(&t, MAIN_APP, &id));
    let o = c.query_id(&id);
    assert_eq!((o.data("status"), o.data("channel")), ("PAYING", SIBLING), "{o:?}");
    assert_eq!(o.json["data"]["late_payments"][0]["channel_trade_no"], paid["trade_no"], "{o:?}");
    assert!(alerts() > alerts_before, "flagged");

    // The order's own payment settles it.
    sim_post(&t, "/sim/alipay/pay", json!({ "out_trade_no": id, "app_id": SIBLING_APP }));
    wait_status(&c, &id, "SUCCESS", Duration::from_secs(10));
    assert_eq!(trade(&t, SIBLING_APP, &id)["refunded_amount"], "0.00");
}

/// What one account's gateway does during a payment.
#[derive(Debug, Clone)]
enum AccountFault {
    Healthy,
    /// Everything answered 503: certainly not carried out.
    Outage,
    /// The next `n` calls answered 500 before they are carried out.
    Errors(u32),
    /// The next `n` calls carried out and never answered.
    Hangs(u32),
    /// The next `n` calls carried out, answered with a signature that does not verify.
    BadSignatures(u32),
}

impl AccountFault {
    fn body(&self, app_id: &str) -> Value {
        match self {
            AccountFault::Healthy => json!({ "app_id": app_id }),
            AccountFault::Outage => json!({ "app_id": app_id, "outage": true }),
            AccountFault::Errors(n) => json!({ "app_id": app_id, "error_rate": 1.0, "calls": n }),
            AccountFault::Hangs(n) => json!({ "app_id": app_id, "timeout_rate": 1.0, "calls": n }),
            AccountFault::BadSignatures(n) => json!({ "app_id": app_id, "bad_signature_rate": 1.0, "calls": n }),
        }
    }
}

fn account_fault() -> impl Strategy<Value = AccountFault> {
    // Weighted towards lost answers, where trades are given up on.
    prop_oneof![
        2 => Just(AccountFault::Healthy),
        2 => Just(AccountFault::Outage),
        1 => (1..4u32).prop_map(AccountFault::Errors),
        3 => (1..3u32).prop_map(AccountFault::Hangs),
        2 => (1..3u32).prop_map(AccountFault::BadSignatures),
    ]
}

/// Whether a trade was paid (refunded or not).
fn paid(trade: &Value) -> bool {
    trade["status"] == "TRADE_SUCCESS" || trade["refunded_amount"].as_str().is_some_and(|r| r != "0.00")
}

#[test]
fn whatever_the_faults_at_most_one_payment_of_an_order_is_kept() {
    let t = node();
    let c = t.client();
    let mut runner = TestRunner::new(RunnerConfig { cases: 40, failure_persistence: None, ..RunnerConfig::default() });
    let n = std::sync::atomic::AtomicUsize::new(0);
    let cases = (account_fault(), account_fault(), any::<bool>());
    let result = runner.run(&cases, |(main, sibling, keeps_code)| {
        let order_no = format!("PROP-{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        sim_post(&t, "/sim/alipay/faults", json!({}));
        let mut main_faults = main.body(MAIN_APP);
        main_faults["unscanned_close_keeps_code"] = json!(keeps_code);
        sim_post(&t, "/sim/alipay/faults", main_faults);
        sim_post(&t, "/sim/alipay/faults", sibling.body(SIBLING_APP));
        let answer = c.pay_by("ALIPAY", &order_no, "1.00");
        sim_post(&t, "/sim/alipay/faults", json!({}));
        let order = c.query_no(&order_no);
        if order.code() != "SUCCESS" {
            // Never recorded: the merchant was not told otherwise, and nothing was left
            // open that anyone was shown (each channel certainly refused, or its trade
            // was given up on).
            prop_assert_ne!(answer.code(), "SUCCESS", "{:?}", answer);
            return Ok(());
        }
        let id = order.data("pay_order_no").to_owned();
        // The worst buyer: pays every trade of the order the simulator holds, at both
        // accounts, whether or not anyone was shown its code.
        for app in [MAIN_APP, SIBLING_APP] {
            sim_post(&t, "/sim/alipay/pay", json!({ "out_trade_no": id, "app_id": app }));
        }
        let settled = eventually(Duration::from_secs(10), || {
            let trades = [trade(&t, MAIN_APP, &id), trade(&t, SIBLING_APP, &id)];
            let o = c.query_id(&id);
            let own = if o.data("channel") == MAIN { MAIN_APP } else { SIBLING_APP };
            let paid: Vec<&Value> = trades.iter().filter(|tr| paid(tr)).collect();
            let kept: Vec<&&Value> = paid.iter().filter(|tr| tr["refunded_amount"] != tr["total_amount"]).collect();
            // Settled: at most one payment kept, the order's own, and the order knows
            // it; any other was refunded, and is on the order as a late payment. A
            // second payment is possible only where closing left a code payable.
            let late = o.json["data"]["late_payments"].as_array().map_or(0, Vec::len);
            let ok = match kept.as_slice() {
                [] => o.data("status") != "SUCCESS",
                [one] => o.data("status") == "SUCCESS" && one["app_id"] == own,
                _ => false,
            } && late == paid.len() - kept.len()
                && (paid.len() <= 1 || keeps_code);
            ok.then_some(())
        });
        if settled.is_none() {
            let trades = [trade(&t, MAIN_APP, &id), trade(&t, SIBLING_APP, &id)];
            return Err(TestCaseError::fail(format!(
                "faults {main:?}/{sibling:?} keeps_code {keeps_code}: pay answered {answer:?}; order {:?}; \
                 trades {trades:?}",
                c.query_id(&id)
            )));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
