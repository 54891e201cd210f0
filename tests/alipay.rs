//! Alipay end to end: a node with its in-process simulator, real RSA2 signatures both
//! ways, real HTTP. Merchant pays → the buyer pays at the simulator's cashier → signed
//! notification → SUCCESS; close, refund, refund query and the bill through the real
//! adapter; hostile callbacks; a create whose answer is lost, settled by query.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use paygate::channels::alipay::wire::{self, Params};
use paygate::channels::alipay::{AlipayConnector, AlipaySettings};
use paygate::config::Config;
use paygate::crypto::{RsaSigner, RsaVerifier};
use paygate_actors::clock::Clock;
use paygate_actors::ports::ChannelConnector;
use paygate_actors::refund::RefundState;
use serde_json::{json, Value};

const PAY: &str = "/api/v1/payment/pay";
const LONG: Duration = Duration::from_secs(20);

fn alipay_node(tweak: impl FnOnce(&mut Config)) -> TestNode {
    TestNode::start_with(|c| {
        if let Some(sim) = c.sim.as_mut() {
            // Alipay retries after 4 min, 10 min, …: a thousandth of that here.
            sim.time_scale = 0.001;
        }
        tweak(c);
    })
}

fn sim_trade(t: &TestNode, pay_order_no: &str) -> Value {
    sim_get(t, &format!("/sim/alipay/trades/{pay_order_no}"))
}

fn channel_settings(t: &TestNode) -> Config {
    let mut c = test_config(t.dir.path());
    c.channels.retain(|ch| ch.provider == "alipay");
    c
}

/// The real adapter, configured as the node's channel is, for the calls the merchant
/// API does not expose yet (refunds, bills).
fn adapter(t: &TestNode) -> AlipayConnector {
    let config = channel_settings(t);
    let ch = &config.channels[0];
    let s = |k: &str| ch.settings[k].as_str().unwrap().to_owned();
    AlipayConnector::new(
        AlipaySettings {
            app_id: s("app_id"),
            seller_id: Some(s("seller_id")),
            gateway_url: format!("{}/alipay/gateway.do", sim_url(t)),
            app_private_key: RsaSigner::from_text("app", &s("app_private_key")).unwrap(),
            alipay_public_key: RsaVerifier::from_text("alipay", &s("alipay_public_key")).unwrap(),
            notify_url: format!("{}/callback/alipay", t.url),
            timeout: Duration::from_secs(5),
        },
        paygate::http::client::HttpClient::new(),
    )
}

/// Signs a notification as the simulator (Alipay) would, with its private key.
fn forged_by_alipay(t: &TestNode, mut p: Params) -> Vec<u8> {
    let config = test_config(t.dir.path());
    let key = config.sim.unwrap().alipay.unwrap().alipay_private_key;
    wire::sign_notification(&mut p, &RsaSigner::from_text("sim", &key).unwrap());
    wire::form(&p).into_bytes()
}

fn callback(t: &TestNode, body: &[u8]) -> (u16, String) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let r = agent
        .post(&format!("{}/callback/alipay", t.url))
        .set("content-type", "application/x-www-form-urlencoded; charset=utf-8")
        .send_bytes(body);
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    (r.status(), r.into_string().unwrap())
}

#[test]
fn buyer_pays_at_the_alipay_cashier_and_the_signed_notification_settles_the_order() {
    let t = alipay_node(|_| {});
    let c = t.client();
    let a = c.pay_by("ALIPAY", "ALI-E2E-1", "88.88");
    assert_eq!((a.status, a.code()), (200, "SUCCESS"), "{a:?}");
    assert_eq!((a.data("status"), a.data("channel")), ("PAYING", "alipay-sim"));
    let id = a.data("pay_order_no").to_owned();
    // The QR code is Alipay's own code URL, and it leads to the simulator's cashier.
    let code_url = a.data("code_url").to_owned();
    assert!(code_url.starts_with(&format!("{}/alipay/qr/", sim_url(&t))), "{code_url}");
    assert_eq!(decode_qr(a.data("qr_code")), code_url);
    // Until the buyer scans, Alipay does not know the trade.
    assert_eq!(sim_trade(&t, &id)["scanned"], false);

    // The buyer scans (opens the page) and pays.
    let page = ureq::get(&code_url).call().unwrap().into_string().unwrap();
    assert!(page.contains("88.88"), "{page}");
    let paid = ureq::post(&code_url).send_string("").unwrap().into_string().unwrap();
    assert!(paid.contains("TRADE_SUCCESS"), "{paid}");

    let q = wait_status(&c, &id, "SUCCESS", LONG);
    let trade = sim_trade(&t, &id);
    assert_eq!(q.data("channel_trade_no"), trade["trade_no"].as_str().unwrap());
    assert!(!q.data("paid_time").is_empty());
    assert_eq!(c.query_no("ALI-E2E-1").data("status"), "SUCCESS");
}

#[test]
fn web_and_wap_scenes_send_the_buyer_to_a_signed_alipay_page_and_the_payment_settles() {
    let t = alipay_node(|_| {});
    let c = t.client();
    let gateway = format!("{}/alipay/gateway.do?", sim_url(&t));
    for (scene, method, product) in
        [("WEB", "alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY"), ("WAP", "alipay.trade.wap.pay", "QUICK_WAP_WAY")]
    {
        let order_no = format!("ALI-{scene}-1");
        let mut p = Client::pay_params(&order_no, "12.34");
        p.insert("pay_method".into(), "ALIPAY".into());
        p.insert("pay_scene".into(), scene.into());
        p.insert("return_url".into(), "https://shop.example/done".into());
        let a = c.call(PAY, p);
        assert_eq!((a.status, a.code(), a.data("status")), (200, "SUCCESS", "PAYING"), "{a:?}");
        assert_eq!(a.data("pay_scene"), scene);
        assert!(a.data("code_url").is_empty() && a.data("qr_code").is_empty(), "a page is not a code: {a:?}");
        let id = a.data("pay_order_no").to_owned();

        // pay_url is the signed gateway request itself, which the buyer's browser opens.
        let pay_url = a.data("pay_url").to_owned();
        let query = pay_url.strip_prefix(&gateway).unwrap_or_else(|| panic!("{pay_url}"));
        let params = wire::parse_form(query.as_bytes());
        assert_eq!(params["method"], method);
        assert_eq!(params["return_url"], "https://shop.example/done");
        let biz: Value = serde_json::from_str(&params["biz_content"]).unwrap();
        assert_eq!((biz["out_trade_no"].as_str(), biz["product_code"].as_str()), (Some(id.as_str()), Some(product)));
        assert_eq!(biz["total_amount"], "12.34");

        // A buyer who edits the amount in the URL is refused by Alipay: it is signed.
        let tampered = pay_url.replace("12.34", "0.01");
        assert_ne!(tampered, pay_url);
        let refused = ureq::get(&tampered).call();
        assert!(matches!(refused, Err(ureq::Error::Status(400, _))), "{refused:?}");
        assert_eq!(c.query_id(&id).data("status"), "PAYING");

        // The real page shows the order; paying there notifies the gateway.
        let page = ureq::get(&pay_url).call().unwrap().into_string().unwrap();
        assert!(page.contains("12.34"), "{page}");
        let action = page.split("action=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
        let paid = ureq::post(&format!("{}{action}", sim_url(&t))).send_string("").unwrap().into_string().unwrap();
        assert!(paid.contains("TRADE_SUCCESS"), "{paid}");
        let q = wait_status(&c, &id, "SUCCESS", LONG);
        assert_eq!((q.data("pay_scene"), q.data("pay_url")), (scene, pay_url.as_str()));
    }
}

#[test]
fn close_refund_refund_query_and_the_bill_through_the_real_adapter() {
    let t = alipay_node(|_| {});
    let c = t.client();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let alipay = adapter(&t);

    // Close: the merchant closes an unpaid order; the code no longer pays.
    let a = c.pay_by("ALIPAY", "ALI-CLOSE-1", "5.00");
    let closing = a.data("pay_order_no").to_owned();
    ureq::get(a.data("code_url")).call().unwrap(); // scanned, not paid
    let closed = c.close_id(&closing);
    assert_eq!(closed.data("status"), "CLOSED", "{closed:?}");
    assert_eq!(sim_trade(&t, &closing)["status"], "TRADE_CLOSED");
    let refused = sim_post(&t, "/sim/alipay/pay", json!({ "out_trade_no": closing }));
    assert!(refused["error"].as_str().unwrap().contains("closed"));

    // Pay, then refund in two parts, idempotently.
    let a = c.pay_by("ALIPAY", "ALI-REFUND-1", "100.00");
    let id = a.data("pay_order_no").to_owned();
    sim_post(&t, "/sim/alipay/pay", json!({ "out_trade_no": id }));
    wait_status(&c, &id, "SUCCESS", LONG);
    let refund = |no: &str, fen: i64| rt.block_on(alipay.refund(refund_of(trade_ref(&id, 10_000), no, fen))).unwrap();
    assert_eq!(refund("R-1", 3_000), RefundState::Success);
    assert_eq!(refund("R-1", 3_000), RefundState::Success, "the same out_request_no again: no second refund");
    assert!(matches!(refund("R-2", 8_000), RefundState::Failed(_)), "more than what is left");
    assert_eq!(refund("R-2", 7_000), RefundState::Success);
    assert_eq!(sim_trade(&t, &id)["refunded_amount"], "100.00");
    assert_eq!(sim_trade(&t, &id)["status"], "TRADE_CLOSED", "fully refunded");
    let asked = rt.block_on(alipay.query_refund(refund_of(trade_ref(&id, 10_000), "R-2", 0))).unwrap();
    assert_eq!(asked, RefundState::Success);
    let unknown = rt.block_on(alipay.query_refund(refund_of(trade_ref(&id, 10_000), "R-9", 0))).unwrap();
    assert_eq!(unknown, RefundState::NotFound, "code 10000 alone is not a refund");
    // The refund notifications (TRADE_CLOSED with refund_fee) never move the order back.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.query_id(&id).data("status"), "SUCCESS");

    // Today's bill does not exist yet; after midnight (the simulator's clock moved) it
    // lists the payment and both refunds, fees included.
    let today = wire::date(paygate_actors::clock::SystemClock.now_ms());
    assert!(rt.block_on(alipay.download_bill(today.clone())).unwrap().is_empty());
    sim_post(&t, "/sim/clock", json!({ "advance_secs": 86_400 }));
    let lines = rt.block_on(alipay.download_bill(today)).unwrap();
    let mine: Vec<_> = lines.iter().filter(|l| l.pay_order_no == id).collect();
    assert_eq!(mine.len(), 3, "{lines:?}");
    assert_eq!(mine.iter().map(|l| l.amount_minor).sum::<i64>(), 0, "paid 100.00, refunded 30.00 + 70.00");
    assert_eq!(mine[0].amount_minor, 10_000);
    assert_eq!(mine[0].fee_minor, 60, "0.6%");
    assert!(mine.iter().all(|l| l.channel_trade_no == sim_trade(&t, &id)["trade_no"].as_str().unwrap()));
}

#[test]
fn hostile_callbacks_change_nothing_and_are_answered_fail() {
    let t = alipay_node(|_| {});
    let c = t.client();
    let a = c.pay_by("ALIPAY", "ALI-HOSTILE-1", "10.00");
    let id = a.data("pay_order_no").to_owned();
    let app_id = channel_settings(&t).channels[0].settings["app_id"].as_str().unwrap().to_owned();
    let notice = |amount: &str, app: &str| -> Params {
        [
            ("notify_time", "2026-11-23 12:00:00"),
            ("notify_type", "trade_status_sync"),
            ("notify_id", "n1"),
            ("app_id", app),
            ("seller_id", "2088000000000001"),
            ("charset", "utf-8"),
            ("version", "1.0"),
            ("trade_no", "2026112322001000000099"),
            ("out_trade_no", id.as_str()),
            ("trade_status", "TRADE_SUCCESS"),
            ("total_amount", amount),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let alerts_before = metric(&t.url, "paygate_alerts_total{kind=\"callback_mismatch\"} ");

    // Signed by someone else (our own app key is not Alipay's).
    let mut p = notice("10.00", &app_id);
    let app_key = channel_settings(&t).channels[0].settings["app_private_key"].as_str().unwrap().to_owned();
    wire::sign_notification(&mut p, &RsaSigner::from_text("app", &app_key).unwrap());
    assert_eq!(callback(&t, wire::form(&p).as_bytes()), (200, "fail".into()));
    // Tampered after signing.
    let mut p = notice("10.00", &app_id);
    let good = forged_by_alipay(&t, p.clone());
    p = wire::parse_form(&good);
    p.insert("total_amount".into(), "0.01".into());
    assert_eq!(callback(&t, wire::form(&p).as_bytes()), (200, "fail".into()));
    // Well signed, but the amount is not the order's: an alert, no change.
    let wrong_amount = forged_by_alipay(&t, notice("0.01", &app_id));
    assert_eq!(callback(&t, &wrong_amount), (200, "fail".into()));
    assert!(metric(&t.url, "paygate_alerts_total{kind=\"callback_mismatch\"} ") > alerts_before);
    // Well signed, another app (merchant): not ours.
    let other_app = forged_by_alipay(&t, notice("10.00", "2021000000009999"));
    assert_eq!(callback(&t, &other_app), (200, "fail".into()));
    // Well signed, our app, another seller (partner id): not ours either.
    let mut other_seller = notice("10.00", &app_id);
    other_seller.insert("seller_id".into(), "2088000000009999".into());
    assert_eq!(callback(&t, &forged_by_alipay(&t, other_seller)), (200, "fail".into()));
    // Malformed and huge bodies.
    assert_eq!(callback(&t, b"%%%&&&=="), (200, "fail".into()));
    assert_eq!(callback(&t, &vec![b'a'; 200 * 1024]).0, 413);
    assert_eq!(c.query_id(&id).data("status"), "PAYING", "nothing above changed the order");

    // Ten identical, valid notifications at once: one state change, ten "success".
    let valid = Arc::new(forged_by_alipay(&t, notice("10.00", &app_id)));
    let barrier = Arc::new(Barrier::new(10));
    let url = t.url.clone();
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let (valid, barrier, url) = (Arc::clone(&valid), Arc::clone(&barrier), url.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let r = ureq::post(&format!("{url}/callback/alipay"))
                    .set("content-type", "application/x-www-form-urlencoded")
                    .send_bytes(&valid)
                    .unwrap();
                r.into_string().unwrap()
            })
        })
        .collect();
    let replies: Vec<String> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(replies.iter().all(|r| r == "success"), "{replies:?}");
    assert_eq!(c.query_id(&id).data("status"), "SUCCESS");
    let paid_time = c.query_id(&id).data("paid_time").to_owned();
    // Replayed later, and a late TRADE_CLOSED: the order does not move.
    assert_eq!(callback(&t, &valid), (200, "success".into()));
    let mut closed = notice("10.00", &app_id);
    closed.insert("trade_status".into(), "TRADE_CLOSED".into());
    let _ = callback(&t, &forged_by_alipay(&t, closed));
    let q = c.query_id(&id);
    assert_eq!((q.data("status"), q.data("paid_time")), ("SUCCESS", paid_time.as_str()));
}

#[test]
fn a_create_whose_answer_is_lost_stays_paying_and_a_query_settles_it() {
    let t = alipay_node(|c| {
        for ch in c.channels.iter_mut().filter(|ch| ch.provider == "alipay") {
            ch.timeout_ms = 500;
            // Notifications go nowhere: only the active query can settle the order.
            ch.settings.insert("notify_url".into(), toml::Value::String("http://127.0.0.1:9/nowhere".into()));
        }
        c.orders.query_first_after_secs = 1;
    });
    let c = t.client();
    sim_post(&t, "/sim/alipay/faults", json!({ "timeout_rate": 1.0 }));
    let a = c.pay_by("ALIPAY", "ALI-LOST-1", "3.00");
    sim_post(&t, "/sim/alipay/faults", json!({}));
    // The merchant learns the outcome is unknown; the order is PAYING, not failed.
    assert_eq!((a.status, a.code()), (502, "CHANNEL_ERROR"), "{a:?}");
    assert!(a.json["message"].as_str().unwrap().contains("PAYING"), "{a:?}");
    let q = c.query_no("ALI-LOST-1");
    assert_eq!(q.data("status"), "PAYING", "an unknown outcome is not a failure");
    let id = q.data("pay_order_no").to_owned();
    // The trade was made at Alipay although its answer was lost; the buyer pays it.
    sim_post(&t, "/sim/alipay/pay", json!({ "out_trade_no": id }));
    let q = wait_status(&c, &id, "SUCCESS", LONG);
    assert_eq!(q.data("channel_trade_no"), sim_trade(&t, &id)["trade_no"].as_str().unwrap());
}

#[test]
fn an_unverifiable_callback_makes_the_node_ask_alipay() {
    let t = alipay_node(|c| {
        for ch in c.channels.iter_mut().filter(|ch| ch.provider == "alipay") {
            ch.settings.insert("notify_url".into(), toml::Value::String("http://127.0.0.1:9/nowhere".into()));
        }
    });
    let c = t.client();
    let a = c.pay_by("ALIPAY", "ALI-UNVERIFIED-1", "2.00");
    let id = a.data("pay_order_no").to_owned();
    sim_post(&t, "/sim/alipay/pay", json!({ "out_trade_no": id }));
    // A notification whose signature cannot be checked: refused, but Alipay is asked.
    let body = format!("out_trade_no={id}&trade_status=TRADE_SUCCESS&total_amount=2.00&sign=bad");
    let skipped = || metric(&t.url, "paygate_callback_reconciles_total{result=\"skipped\"} ");
    let before = skipped();
    assert_eq!(callback(&t, body.as_bytes()), (200, "fail".into()));
    // A flood of them about the same order costs Alipay no more queries.
    for _ in 0..20 {
        assert_eq!(callback(&t, body.as_bytes()), (200, "fail".into()));
    }
    assert!(skipped() >= before + 20.0, "{} -> {}", before, skipped());
    wait_status(&c, &id, "SUCCESS", LONG);
}

#[test]
fn a_gateway_talks_to_a_standalone_paygate_sim() {
    let sim = StandaloneSim::start();
    let base = sim.base.clone();
    let t = TestNode::start_with(|c| {
        for ch in c.channels.iter_mut().filter(|ch| ch.provider == "alipay") {
            ch.settings.insert("gateway_url".into(), toml::Value::String(format!("{base}/alipay/gateway.do")));
        }
    });
    let c = t.client();
    let a = c.pay_by("ALIPAY", "ALI-STANDALONE-1", "7.00");
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    let id = a.data("pay_order_no").to_owned();
    assert!(a.data("code_url").starts_with(&base));
    assert_eq!(sim.post("/sim/alipay/pay", json!({ "out_trade_no": id }))["trade_no"].as_str().map(str::len), Some(28));
    wait_status(&c, &id, "SUCCESS", LONG);
}

#[test]
fn the_simulators_control_routes_refuse_what_they_do_not_know() {
    let t = TestNode::start();
    let post = |path: &str, body: Value| match ureq::post(&format!("{}{path}", sim_url(&t))).send_json(body) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(status, r)) => (status, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    let (status, body) = post("/sim/alipay/faults", json!({ "bogus": 1 }));
    assert!(status == 400 && body.contains("bogus"), "an unknown fault was accepted: {status} {body}");
    assert_eq!(post("/sim/alipay/pay", json!({ "out_trade_no": "P000" })).0, 404, "an unknown trade");
    assert_eq!(post("/sim/clock", json!({ "advance_secs": 1, "extra": true })).0, 400, "an unknown clock field");
    assert_eq!(post("/sim/alipay/faults", json!({ "latency_ms": 0 })).0, 200);
}
