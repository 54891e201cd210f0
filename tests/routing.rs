//! Routing strategies per merchant and pay method, over HTTP against the simulator: the
//! strategy orders the channels, the order keeps how its channel was chosen (strategy,
//! candidates, those passed over and why), and a strategy naming no pay method is
//! refused at start.

mod common;

use std::collections::HashMap;

use common::*;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::order::Order;
use paygate_actors::ports::OrderStore;
use paygate_actors::strategy::{Route, Strategy};
use serde_json::json;

fn stored(t: &TestNode, id: &str) -> Order {
    t.order_count();
    t.node().views.load(&PayOrderNo::parse(id).unwrap()).unwrap().unwrap()
}

#[test]
fn each_merchant_routes_each_method_by_its_strategy_and_the_order_keeps_why() {
    let t = TestNode::start_with(|c| {
        let m = c.merchants.iter_mut().find(|m| m.merchant_id == MERCHANT).unwrap();
        m.routing.insert("ALIPAY".into(), Strategy::LowestFee);
        m.routing.insert("WECHAT_PAY".into(), Strategy::Weighted);
        let cheaper = c.channels.iter_mut().find(|ch| ch.code == "alipay-sim-2").unwrap();
        cheaper.fee_rate = Some("0.0055".into());
    });
    let c = t.client();

    // Lowest fee: the lighter but cheaper account first.
    let a = c.pay_by("ALIPAY", "RT-1", "10.00");
    assert_eq!(a.data("channel"), "alipay-sim-2", "{a:?}");
    let route = stored(&t, a.data("pay_order_no")).route.unwrap();
    assert_eq!(
        route,
        Route {
            strategy: Strategy::LowestFee,
            candidates: vec!["alipay-sim-2".into(), "alipay-sim".into()],
            passed_over: vec![],
        }
    );

    // Its account down: the next candidate, and the order says why the first was not used.
    sim_post(&t, "/sim/alipay/faults", json!({ "app_id": "2021000000000002", "outage": true }));
    let a = c.pay_by("ALIPAY", "RT-2", "10.00");
    assert_eq!(a.data("channel"), "alipay-sim", "{a:?}");
    let route = stored(&t, a.data("pay_order_no")).route.unwrap();
    assert_eq!(route.passed_over.len(), 1, "{route:?}");
    assert!(
        route.passed_over[0].starts_with("alipay-sim-2: ") && route.passed_over[0].contains("HTTP 503"),
        "{route:?}"
    );
    sim_post(&t, "/sim/alipay/faults", json!({}));

    // Weighted: traffic shared in proportion to weight (v3 100, v2 50).
    let mut by_channel: HashMap<String, u32> = HashMap::new();
    for i in 0..90 {
        let a = c.pay_by("WECHAT_PAY", &format!("RT-W{i}"), "1.00");
        assert_eq!(a.code(), "SUCCESS", "{a:?}");
        *by_channel.entry(a.data("channel").to_owned()).or_default() += 1;
    }
    let (v3, v2) = (by_channel["wechat-v3-sim"], by_channel["wechat-sim"]);
    assert_eq!(v3 + v2, 90);
    assert!((40..=80).contains(&v3) && v2 >= 10, "v3 {v3}, v2 {v2}: about 2 to 1");

    // Unnamed methods: priority.
    let a = c.pay("RT-S", "1.00");
    let route = stored(&t, a.data("pay_order_no")).route.unwrap();
    assert_eq!((route.strategy, route.candidates), (Strategy::Priority, vec!["sandbox".to_owned()]));
}

#[test]
fn a_strategy_for_no_pay_method_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&config_dir(), dir.path());
    let merchants = dir.path().join("merchants.toml");
    let mut text = std::fs::read_to_string(&merchants).unwrap();
    // For the last merchant of the file.
    text.push_str("\n[merchants.routing]\nALIPAI = \"adaptive\"\n");
    std::fs::write(&merchants, text).unwrap();
    let e = paygate::config::Config::load(dir.path(), &Default::default()).expect_err("refused");
    assert!(e.to_string().contains("routing names \"ALIPAI\""), "{e}");
}
