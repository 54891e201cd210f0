//! Refunds at the simulated providers, over loopback HTTP with their real signatures:
//! WeChat Pay's refund notifications in both APIs (and forged ones refused), UnionPay's,
//! a payment taken after its order was closed refunded by the gateway itself, and a
//! kill -9 of the node in the middle of refunds checked against the provider's records.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use paygate::channels::wechat::v2::wire as v2wire;
use paygate::channels::wechat::v3::wire as v3wire;
use paygate::crypto::RsaSigner;
use paygate_actors::clock::Clock;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::refund::Refund;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn refund(c: &Client, pay_order_no: &str, refund_no: &str, amount: &str) -> Answer {
    c.call(
        "/api/v1/refund/apply",
        params(&[("pay_order_no", pay_order_no), ("refund_no", refund_no), ("refund_amount", amount)]),
    )
}

fn refund_query(c: &Client, refund_order_no: &str) -> Answer {
    c.call("/api/v1/refund/query", params(&[("refund_order_no", refund_order_no)]))
}

/// Waits until the refund reaches `status`; panics with the last answer otherwise.
fn settles_to(c: &Client, refund_order_no: &str, status: &str) -> Answer {
    eventually(WAIT, || Some(refund_query(c, refund_order_no)).filter(|q| q.data("status") == status))
        .unwrap_or_else(|| panic!("{refund_order_no} never {status}: {:?}", refund_query(c, refund_order_no)))
}

/// A node whose WECHAT_PAY channel speaks `provider` only. Refund queries come late, so
/// what settles a refund here is WeChat's notification.
fn wechat_node(provider: &'static str) -> TestNode {
    TestNode::start_with(move |c| {
        if let Some(sim) = c.sim.as_mut() {
            sim.time_scale = 0.001;
        }
        c.channels.retain(|ch| !ch.provider.starts_with("wechat") || ch.provider == provider);
        c.orders.refund_query_first_after_secs = 600;
    })
}

fn channel_setting(t: &TestNode, provider: &str, name: &str) -> String {
    let c = test_config(t.dir.path());
    let ch = c.channels.iter().find(|ch| ch.provider == provider).unwrap();
    ch.settings[name].as_str().unwrap().to_owned()
}

/// A paid WECHAT_PAY order of `amount`.
fn paid_at_wechat(t: &TestNode, order_no: &str, amount: &str) -> String {
    let c = t.client();
    let id = c.pay_by("WECHAT_PAY", order_no, amount).data("pay_order_no").to_owned();
    sim_post(t, "/sim/wechat/pay", json!({ "out_trade_no": id }));
    wait_status(&c, &id, "SUCCESS", WAIT);
    id
}

/// The refunds the simulator holds for a trade: (out_refund_no, fee, status).
fn wechat_refunds(t: &TestNode, id: &str) -> Vec<(String, i64, String)> {
    let trade = sim_get(t, &format!("/sim/wechat/trades/{id}"));
    let list = trade["refunds"].as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (s("out_refund_no"), r["refund_fee"].as_i64().unwrap_or(-1), s("status"))
        })
        .collect()
}

#[test]
fn wechat_refunds_are_settled_by_wechats_notifications_in_both_apis() {
    for provider in ["wechat_v2", "wechat_v3"] {
        let t = wechat_node(provider);
        let c = t.client();
        let id = paid_at_wechat(&t, "RF-WX", "10.00");

        // Accepted, carried out a moment later, notified.
        let r = refund(&c, &id, "WX-1", "4.00");
        assert_eq!((r.code(), r.data("status")), ("SUCCESS", "REFUNDING"), "{provider}: {r:?}");
        let done = r.data("refund_order_no").to_owned();
        assert_eq!(settles_to(&c, &done, "SUCCESS").data("order_status"), "PARTIALLY_REFUNDED");

        // Taken from the merchant, not delivered to the buyer: review, the amount held.
        sim_post(&t, "/sim/wechat/faults", json!({ "refund_outcome": "ABNORMAL" }));
        let abnormal = refund(&c, &id, "WX-2", "1.00").data("refund_order_no").to_owned();
        let q = settles_to(&c, &abnormal, "MANUAL_REVIEW");
        assert!(q.data("failure").contains("could not take the refund"), "{provider}: {q:?}");
        // Closed at WeChat: failed, the amount released.
        sim_post(&t, "/sim/wechat/faults", json!({ "refund_outcome": "CLOSED" }));
        let closed = refund(&c, &id, "WX-3", "2.00").data("refund_order_no").to_owned();
        settles_to(&c, &closed, "FAILED");
        sim_post(&t, "/sim/wechat/faults", json!({}));
        assert_eq!(refund(&c, &id, "WX-4", "5.01").code(), "REFUND_EXCEEDS_PAID", "4 done + 1 held of 10");
        let last = refund(&c, &id, "WX-5", "5.00").data("refund_order_no").to_owned();
        settles_to(&c, &last, "SUCCESS");

        // WeChat holds exactly these refunds, each once, under our numbers.
        let expected =
            [(done, 400, "SUCCESS"), (abnormal, 100, "ABNORMAL"), (closed, 200, "CLOSED"), (last, 500, "SUCCESS")]
                .map(|(no, fee, status)| (no, fee, status.to_owned()));
        assert_eq!(wechat_refunds(&t, &id), expected, "{provider}");
        let order = c.query_id(&id);
        assert_eq!((order.data("status"), order.data("refunded_amount")), ("PARTIALLY_REFUNDED", "9.00"));
    }
}

/// POSTs a callback; answers status and body.
fn post_callback(url: &str, headers: &[(&'static str, String)], body: &[u8]) -> (u16, String) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let r = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    (r.status(), r.into_string().unwrap_or_default())
}

/// A refund the node recorded but WeChat never received (its call failed with a 500):
/// REFUNDING, with nothing genuine on its way.
fn refund_wechat_never_saw(t: &TestNode, id: &str, refund_no: &str, amount: &str) -> String {
    sim_post(t, "/sim/wechat/faults", json!({ "error_rate": 1.0 }));
    let r = refund(&t.client(), id, refund_no, amount);
    sim_post(t, "/sim/wechat/faults", json!({}));
    assert_eq!(r.data("status"), "REFUNDING", "{r:?}");
    r.data("refund_order_no").to_owned()
}

#[test]
fn forged_wechat_v2_refund_notifications_are_refused() {
    let t = wechat_node("wechat_v2");
    let c = t.client();
    let id = paid_at_wechat(&t, "RF-WX2-F", "10.00");
    let no = refund_wechat_never_saw(&t, &id, "F-1", "3.00");
    let setting = |name: &str| channel_setting(&t, "wechat_v2", name);
    let notification = |api_key: &str, mch_id: &str, refund_fee: &str| {
        let details: v2wire::Params = [
            ("out_refund_no", no.as_str()),
            ("out_trade_no", id.as_str()),
            ("refund_fee", refund_fee),
            ("refund_id", "50300000000000000000001"),
            ("refund_status", "SUCCESS"),
            ("total_fee", "1000"),
            ("transaction_id", "4200000000000000000001"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let sealed = v2wire::seal_req_info(api_key, v2wire::document("root", &details).as_bytes());
        let doc: v2wire::Params = [
            ("return_code", "SUCCESS".to_owned()),
            ("appid", setting("appid")),
            ("mch_id", mch_id.to_owned()),
            ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS".to_owned()),
            ("req_info", sealed),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        v2wire::to_xml(&doc).into_bytes()
    };
    let url = format!("{}/callback/wechat/v2", t.url);
    let xml = [("content-type", "text/xml".to_owned())];
    let (key, mch_id) = (setting("api_key"), setting("mch_id"));
    for (why, body) in [
        ("sealed under another key", notification("not-our-api-key", &mch_id, "300")),
        ("another merchant's", notification(&key, "1900000999", "300")),
        ("an amount we did not ask for", notification(&key, &mch_id, "301")),
    ] {
        let (status, reply) = post_callback(&url, &xml, &body);
        assert!(status == 200 && reply.contains("FAIL"), "{why}: {status} {reply}");
        assert_eq!(refund_query(&c, &no).data("status"), "REFUNDING", "{why}");
    }
    // The same notification, genuine: taken.
    let (status, reply) = post_callback(&url, &xml, &notification(&key, &mch_id, "300"));
    assert!(status == 200 && reply.contains("SUCCESS"), "{status} {reply}");
    assert_eq!(refund_query(&c, &no).data("status"), "SUCCESS");
}

#[test]
fn forged_wechat_v3_refund_notifications_are_refused() {
    let t = wechat_node("wechat_v3");
    let c = t.client();
    let id = paid_at_wechat(&t, "RF-WX3-F", "10.00");
    let no = refund_wechat_never_saw(&t, &id, "F-1", "3.00");
    let setting = |name: &str| channel_setting(&t, "wechat_v3", name);
    let api_v3_key = v3wire::api_v3_key(&setting("api_v3_key")).unwrap();
    let platform = test_config(t.dir.path()).sim.unwrap().wechat.unwrap().platform.unwrap();
    let platform = (RsaSigner::from_text("platform", &platform.private_key).unwrap(), platform.serial);
    let merchant = (RsaSigner::from_text("merchant", &setting("merchant_private_key")).unwrap(), platform.1.clone());
    let event = |mchid: &str, status: &str| {
        let resource = json!({
            "mchid": mchid, "out_trade_no": id, "transaction_id": "4200000000000000000001",
            "out_refund_no": no, "refund_id": "50300000000000000000001", "refund_status": status,
            "user_received_account": "支付用户零钱",
            "amount": { "total": 1000, "refund": 300, "payer_total": 1000, "payer_refund": 300 },
        });
        let (nonce, ciphertext) = v3wire::encrypt(&api_v3_key, "refund", resource.to_string().as_bytes()).unwrap();
        json!({
            "id": "EV-1", "create_time": "2026-12-01T12:00:00+08:00", "resource_type": "encrypt-resource",
            "event_type": format!("REFUND.{status}"), "summary": "退款关闭",
            "resource": { "original_type": "refund", "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                          "associated_data": "refund", "nonce": nonce },
        })
        .to_string()
        .into_bytes()
    };
    let url = format!("{}/callback/wechat/v3", t.url);
    let now = paygate_actors::clock::SystemClock.now_ms() / 1000;
    let signed = |by: &(RsaSigner, String), body: &[u8]| {
        let mut h = v3wire::signature_headers(&by.0, &by.1, body, now);
        h.push(("content-type", "application/json".to_owned()));
        h
    };
    let ours = setting("mchid");
    for (why, signer, body) in [
        ("signed with a key that is not WeChat's", &merchant, event(&ours, "CLOSED")),
        ("another merchant's", &platform, event("1900000999", "CLOSED")),
    ] {
        let (status, reply) = post_callback(&url, &signed(signer, &body), &body);
        assert_eq!(status, 500, "{why}: {reply}");
        assert_eq!(refund_query(&c, &no).data("status"), "REFUNDING", "{why}");
    }
    // Genuine: the refund was closed at WeChat, so it failed and its amount is free.
    let body = event(&ours, "CLOSED");
    let (status, reply) = post_callback(&url, &signed(&platform, &body), &body);
    assert_eq!(status, 204, "{reply}");
    assert_eq!(refund_query(&c, &no).data("status"), "FAILED");
    assert_eq!(refund(&c, &id, "F-2", "10.00").code(), "SUCCESS", "nothing held any more");
}

#[test]
fn unionpay_refunds_settle_by_notification_and_a_late_payment_is_refunded_automatically() {
    let t = TestNode::start_with(|c| {
        if let Some(sim) = c.sim.as_mut() {
            sim.time_scale = 0.001;
        }
        c.orders.refund_query_first_after_secs = 600;
    });
    let c = t.client();
    let trade = |id: &str| sim_get(&t, &format!("/sim/unionpay/trades/{id}"));

    // A refund: UnionPay answers "accepted" and its notification settles it.
    let a = c.pay_by("UNION_PAY", "RF-UP-1", "6.00");
    let id = a.data("pay_order_no").to_owned();
    assert_eq!(submit_front_form(a.data("pay_url")).0, 200);
    sim_post(&t, "/sim/unionpay/pay", json!({ "out_trade_no": id }));
    wait_status(&c, &id, "SUCCESS", WAIT);
    let r = refund(&c, &id, "UP-1", "2.50");
    assert_eq!(r.code(), "SUCCESS", "{r:?}");
    settles_to(&c, r.data("refund_order_no"), "SUCCESS");
    assert_eq!(trade(&id)["refunded"], 250);

    // UnionPay cannot close a trade: closed here, the buyer can still pay it there.
    let ep = MerchantEndpoint::start(Reply::Status(200, "SUCCESS"));
    let mut p = Client::pay_params("RF-UP-LATE", "8.00");
    p.insert("pay_method".into(), "UNION_PAY".into());
    p.insert("notify_url".into(), ep.url.clone());
    let a = c.call("/api/v1/payment/pay", p);
    let late = a.data("pay_order_no").to_owned();
    assert_eq!(submit_front_form(a.data("pay_url")).0, 200);
    assert_eq!(c.close_id(&late).data("status"), "CLOSED");
    let alerts = || metric(&t.url, "paygate_alerts_total{kind=\"late_payment\"}");
    let alerted = alerts();
    sim_post(&t, "/sim/unionpay/pay", json!({ "out_trade_no": late }));

    // The gateway records it, refunds it by itself, and tells the merchant.
    let auto = Refund::number(&PayOrderNo::parse(&late).unwrap(), 0);
    let q = eventually(WAIT, || {
        let q = c.call("/api/v1/refund/query", params(&[("refund_no", &format!("AUTO-{auto}"))]));
        (q.data("status") == "SUCCESS").then_some(q)
    })
    .expect("the late payment refunded");
    assert_eq!((q.data("refund_order_no"), q.data("refund_amount")), (auto.as_str(), "8.00"));
    assert_eq!((q.data("order_status"), q.data("refunded_amount")), ("CLOSED", "0.00"), "the order stays closed");
    let queryid = trade(&late)["queryId"].as_str().unwrap().to_owned();
    assert_eq!(q.data("late_payment"), queryid);
    assert_eq!(trade(&late)["refunded"], 800, "returned to the buyer at UnionPay");
    let order = c.query_id(&late);
    assert_eq!(order.data("status"), "CLOSED");
    assert_eq!(order.json["data"]["late_payments"][0]["channel_trade_no"], queryid.as_str());
    assert_eq!(order.json["data"]["late_payments"][0]["amount"], "8.00");
    assert!(alerts() > alerted);
    let told = ep.wait_for(2, WAIT);
    let kinds: Vec<(String, String)> =
        told.iter().map(|n| (n.json()["notify_type"].clone(), n.json()["status"].clone())).collect();
    assert_eq!(kinds, [("PAY".to_owned(), "CLOSED".to_owned()), ("REFUND".to_owned(), "SUCCESS".to_owned())]);
    assert_eq!(told[1].json()["refund_no"], format!("AUTO-{auto}"));
}

#[test]
fn with_automatic_refunds_off_a_late_payment_is_recorded_and_left_to_an_operator() {
    let t = TestNode::start_with(|c| c.orders.refund_late_payments = false);
    let c = t.client();
    let a = c.pay_by("UNION_PAY", "RF-UP-OFF", "3.00");
    let id = a.data("pay_order_no").to_owned();
    assert_eq!(submit_front_form(a.data("pay_url")).0, 200);
    assert_eq!(c.close_id(&id).data("status"), "CLOSED");
    sim_post(&t, "/sim/unionpay/pay", json!({ "out_trade_no": id }));
    let order = eventually(WAIT, || Some(c.query_id(&id)).filter(|o| o.json["data"]["late_payments"].is_array()))
        .expect("the late payment recorded");
    assert_eq!(order.data("status"), "CLOSED");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sim_get(&t, &format!("/sim/unionpay/trades/{id}"))["refunded"], 0, "nothing refunded");
    let none = c.call(
        "/api/v1/refund/query",
        params(&[("refund_order_no", &Refund::number(&PayOrderNo::parse(&id).unwrap(), 0))]),
    );
    assert_eq!(none.code(), "ORDER_NOT_FOUND", "{none:?}");
}

/// The shipped configuration with WeChat Pay v3 at a standalone simulator at `base`.
fn config_with_wechat_at(base: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&config_dir(), dir.path());
    let path = dir.path().join("channels.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (before, v3) = text.split_at(text.find("code = \"wechat-v3-sim\"").unwrap());
    let moved = v3.replacen("gateway_url = \"builtin\"", &format!("gateway_url = \"{base}\""), 1);
    assert_ne!(moved, v3);
    std::fs::write(&path, format!("{before}{moved}")).unwrap();
    dir
}

#[test]
fn refunds_at_wechat_survive_kill_9_of_the_node_none_lost_none_twice() {
    // WeChat is a process of its own, as it is in life: it outlives the node.
    let sim = StandaloneSim::start();
    let base = sim.base.clone();
    let sim_post = |path: &str, body: Value| sim.post(path, body);
    let (config, data) = (config_with_wechat_at(&base), tempfile::tempdir().unwrap());
    let env =
        [("PAYGATE_ORDERS__REFUND_QUERY_FIRST_AFTER_SECS", "1"), ("PAYGATE_ORDERS__REFUND_QUERY_INTERVAL_SECS", "1")];
    let node = BinNode::start_with_config(config.path(), data.path(), &env);
    let c = node.client();
    let a = c.pay_by("WECHAT_PAY", "RF-KILL-WX", "20.00");
    assert_eq!(a.data("channel"), "wechat-v3-sim", "{a:?}");
    let id = a.data("pay_order_no").to_owned();
    sim_post("/sim/wechat/pay", json!({ "out_trade_no": id }));
    wait_status(&c, &id, "SUCCESS", WAIT);

    // Twenty refunds of 1.00 at once, each call at WeChat slowed down; the node is killed
    // while most are recorded, asked, or waiting their turn.
    sim_post("/sim/wechat/faults", json!({ "latency_ms": 150 }));
    let (tx, rx) = std::sync::mpsc::channel();
    let askers: Vec<_> = (0..20)
        .map(|i| {
            let (c, id, tx) = (c.clone(), id.clone(), tx.clone());
            std::thread::spawn(move || {
                let p = params(&[("pay_order_no", &id), ("refund_no", &format!("KW-{i}")), ("refund_amount", "1.00")]);
                let _ = tx.send(c.post_signed("/api/v1/refund/apply", p));
            })
        })
        .collect();
    for _ in 0..4 {
        let answered = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(answered.map(|a| a.code().to_owned()).as_deref(), Some("SUCCESS"));
    }
    node.kill9();
    for a in askers {
        a.join().unwrap();
    }
    sim_post("/sim/wechat/faults", json!({}));
    let trade =
        || -> Value { ureq::get(&format!("{base}/sim/wechat/trades/{id}")).call().unwrap().into_json().unwrap() };
    let before_restart = trade()["refunds"].as_array().map_or(0, Vec::len);
    assert!((4..20).contains(&before_restart), "killed mid-way: {before_restart} refunds at WeChat");

    // The merchant asks again for every refund it had no answer to — it asks for all.
    let node = BinNode::start_with_config(config.path(), data.path(), &env);
    let c = node.client();
    let mut numbers = BTreeSet::new();
    for i in 0..20 {
        let again = refund(&c, &id, &format!("KW-{i}"), "1.00");
        assert_eq!(again.code(), "SUCCESS", "{again:?}");
        numbers.insert(again.data("refund_order_no").to_owned());
    }
    assert_eq!(numbers.len(), 20);
    for no in &numbers {
        settles_to(&c, no, "SUCCESS");
    }
    let order = c.query_id(&id);
    assert_eq!((order.data("status"), order.data("refunded_amount")), ("REFUNDED", "20.00"));

    // WeChat's own records: the same twenty refunds, each once, 1.00 each.
    let trade = trade();
    let at_wechat: Vec<(String, i64)> = trade["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["out_refund_no"].as_str().unwrap().to_owned(), r["refund_fee"].as_i64().unwrap()))
        .collect();
    assert_eq!(at_wechat.len(), 20, "{at_wechat:?}");
    assert_eq!(at_wechat.iter().map(|(no, _)| no.clone()).collect::<BTreeSet<_>>(), numbers);
    assert!(at_wechat.iter().all(|(_, fee)| *fee == 100));
    assert_eq!(trade["refunded_fee"], 2_000);
}
