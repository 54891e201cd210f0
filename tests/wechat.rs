//! WeChat Pay API v2 end to end against the in-process simulator: native pay → buyer
//! pays → signed XML notification → SUCCESS, in HMAC-SHA256 and in MD5; close, refunds
//! and the bill through the real adapter; hostile callbacks; a lost create answer.

mod common;

use std::time::Duration;

use common::*;
use paygate::channels::wechat::v2::wire::{self, Params};
use paygate::channels::wechat::v2::{WechatV2Connector, WechatV2Settings};
use paygate::config::Config;
use paygate_actors::clock::Clock;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::money::{Currency, Money};
use paygate_actors::ports::{ChannelConnector, TradeRef};
use paygate_actors::refund::RefundState;
use paygate_actors::signing::SignType;
use serde_json::{json, Value};

const PAY: &str = "/api/v1/payment/pay";
const LONG: Duration = Duration::from_secs(20);

fn wechat_node(sign_type: &str, tweak: impl FnOnce(&mut Config)) -> TestNode {
    let sign_type = sign_type.to_owned();
    TestNode::start_with(move |c| {
        if let Some(sim) = c.sim.as_mut() {
            sim.time_scale = 0.001;
        }
        // The v3 channel of the same account is tested in tests/wechat_v3.rs.
        c.channels.retain(|ch| ch.provider != "wechat_v3");
        for ch in c.channels.iter_mut().filter(|ch| ch.provider == "wechat_v2") {
            ch.settings.insert("sign_type".into(), toml::Value::String(sign_type.clone()));
        }
        tweak(c);
    })
}

fn setting(t: &TestNode, name: &str) -> String {
    let c = test_config(t.dir.path());
    let ch = c.channels.iter().find(|ch| ch.provider == "wechat_v2").unwrap();
    ch.settings[name].as_str().unwrap().to_owned()
}

fn trade(t: &TestNode, id: &str) -> Value {
    sim_get(t, &format!("/sim/wechat/trades/{id}"))
}

fn callback(t: &TestNode, body: &[u8]) -> (u16, Params) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let r = match agent.post(&format!("{}/callback/wechat/v2", t.url)).set("content-type", "text/xml").send_bytes(body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = r.status();
    (status, wire::from_xml(r.into_string().unwrap().as_bytes()).unwrap_or_default())
}

fn notification(t: &TestNode, id: &str, total_fee: &str, mch_id: &str) -> Params {
    let mut p: Params = [
        ("appid", setting(t, "appid")),
        ("mch_id", mch_id.to_owned()),
        ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS".into()),
        ("return_code", "SUCCESS".into()),
        ("result_code", "SUCCESS".into()),
        ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into()),
        ("trade_type", "NATIVE".into()),
        ("bank_type", "CMC".into()),
        ("total_fee", total_fee.into()),
        ("cash_fee", total_fee.into()),
        ("fee_type", "CNY".into()),
        ("transaction_id", "4200000000000000000099".into()),
        ("out_trade_no", id.into()),
        ("time_end", "20261123120000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    wire::sign(&mut p, &setting(t, "api_key"), SignType::HmacSha256);
    p
}

fn adapter(t: &TestNode) -> WechatV2Connector {
    WechatV2Connector::new(
        WechatV2Settings {
            appid: setting(t, "appid"),
            mch_id: setting(t, "mch_id"),
            api_key: setting(t, "api_key"),
            sign_type: SignType::HmacSha256,
            base_url: format!("{}/wechat", sim_url(t)),
            notify_url: format!("{}/callback/wechat/v2", t.url),
            timeout: Duration::from_secs(5),
        },
        paygate::http::client::HttpClient::new(),
    )
}

fn pay_and_settle(t: &TestNode, c: &Client, order_no: &str, amount: &str) -> String {
    let a = c.pay_by("WECHAT_PAY", order_no, amount);
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    let id = a.data("pay_order_no").to_owned();
    sim_post(t, "/sim/wechat/pay", json!({ "out_trade_no": id }));
    wait_status(c, &id, "SUCCESS", LONG);
    id
}

#[test]
fn native_pay_then_the_buyer_pays_and_the_notification_settles_it_in_both_sign_types() {
    for sign_type in ["HMAC-SHA256", "MD5"] {
        let t = wechat_node(sign_type, |_| {});
        let c = t.client();
        // NATIVE is WeChat's name for the scan product, which is also what no scene means.
        let scene = if sign_type == "MD5" { "NATIVE" } else { "" };
        let mut p = Client::pay_params("WX-E2E-1", "12.34");
        p.insert("pay_method".into(), "WECHAT_PAY".into());
        p.insert("pay_scene".into(), scene.into());
        let a = c.call(PAY, p);
        assert_eq!((a.code(), a.data("status"), a.data("channel")), ("SUCCESS", "PAYING", "wechat-sim"), "{a:?}");
        assert_eq!(a.data("pay_scene"), if scene.is_empty() { "QR" } else { scene });
        let id = a.data("pay_order_no").to_owned();
        let code_url = a.data("code_url").to_owned();
        assert!(code_url.starts_with("weixin://wxpay/bizpayurl?pr="), "{code_url}");
        assert_eq!(decode_qr(a.data("qr_code")), code_url);
        assert_eq!(trade(&t, &id)["total_fee"], 1234);
        // The buyer pays at the simulator's cashier for that code.
        let token = code_url.rsplit('=').next().unwrap();
        let page = ureq::post(&format!("{}/wechat/cashier/{token}", sim_url(&t))).send_string("").unwrap();
        assert!(page.into_string().unwrap().contains("SUCCESS"));
        let q = wait_status(&c, &id, "SUCCESS", LONG);
        assert_eq!(q.data("channel_trade_no"), trade(&t, &id)["transaction_id"].as_str().unwrap(), "{sign_type}");
    }
}

#[test]
fn close_refunds_refund_query_and_the_bill_through_the_real_adapter() {
    let t = wechat_node("HMAC-SHA256", |_| {});
    let c = t.client();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let wx = adapter(&t);

    let a = c.pay_by("WECHAT_PAY", "WX-CLOSE-1", "1.00");
    let closing = a.data("pay_order_no").to_owned();
    assert_eq!(c.close_id(&closing).data("status"), "CLOSED");
    assert_eq!(trade(&t, &closing)["trade_state"], "CLOSED");
    assert!(sim_post(&t, "/sim/wechat/pay", json!({ "out_trade_no": closing }))["error"].is_string());

    let id = pay_and_settle(&t, &c, "WX-REFUND-1", "50.00");
    let tref = TradeRef {
        pay_order_no: PayOrderNo::parse(&id).unwrap(),
        channel_trade_no: None,
        amount: Money::from_minor(5_000, Currency::CNY),
        create_time: 0,
    };
    let refund = |no: &str, fen: i64| rt.block_on(wx.refund(refund_of(tref.clone(), no, fen))).unwrap();
    assert_eq!(refund("WR-1", 1_000), RefundState::Processing, "accepted; WeChat finishes it later");
    assert_eq!(refund("WR-1", 1_000), RefundState::Processing, "idempotent");
    assert!(matches!(refund("WR-2", 4_001), RefundState::Failed(_)));
    let query = |no: &str| rt.block_on(wx.query_refund(refund_of(tref.clone(), no, 0))).unwrap();
    eventually(LONG, || (query("WR-1") == RefundState::Success).then_some(())).expect("carried out");
    assert_eq!(query("WR-NONE"), RefundState::NotFound, "a refund WeChat never heard of may be asked again");
    assert_eq!(trade(&t, &id)["refunded_fee"], 1_000);
    assert_eq!(c.query_id(&id).data("status"), "SUCCESS");

    let today = paygate::channels::alipay::wire::date(paygate_actors::clock::SystemClock.now_ms());
    assert!(rt.block_on(wx.download_bill(today.clone())).unwrap().is_empty(), "no bill for a day not ended");
    sim_post(&t, "/sim/clock", json!({ "advance_secs": 86_400 }));
    let lines = rt.block_on(wx.download_bill(today)).unwrap();
    let mine: Vec<_> = lines.iter().filter(|l| l.pay_order_no == id).collect();
    assert_eq!(mine.iter().map(|l| l.amount_minor).collect::<Vec<_>>(), [5_000, -1_000], "{lines:?}");
    assert_eq!(mine[0].fee_minor, 30);
}

#[test]
fn hostile_notifications_change_nothing() {
    let t = wechat_node("HMAC-SHA256", |_| {});
    let c = t.client();
    let a = c.pay_by("WECHAT_PAY", "WX-HOSTILE-1", "10.00");
    let id = a.data("pay_order_no").to_owned();
    let fail =
        |(status, reply): (u16, Params)| status == 200 && reply.get("return_code").map(String::as_str) == Some("FAIL");
    let mch_id = setting(&t, "mch_id");

    let mut tampered = notification(&t, &id, "1000", &mch_id);
    tampered.insert("total_fee".into(), "1".into());
    assert!(fail(callback(&t, wire::to_xml(&tampered).as_bytes())));
    let mut unsigned = notification(&t, &id, "1000", &mch_id);
    unsigned.insert("sign".into(), "0".repeat(64));
    assert!(fail(callback(&t, wire::to_xml(&unsigned).as_bytes())));
    let alerts = metric(&t.url, "paygate_alerts_total{kind=\"callback_mismatch\"} ");
    assert!(fail(callback(&t, wire::to_xml(&notification(&t, &id, "1", &mch_id)).as_bytes())), "wrong amount");
    assert!(metric(&t.url, "paygate_alerts_total{kind=\"callback_mismatch\"} ") > alerts);
    assert!(fail(callback(&t, wire::to_xml(&notification(&t, &id, "1000", "1900009999")).as_bytes())), "other mch");
    assert!(fail(callback(&t, b"<xml><a>")));
    assert!(fail(callback(&t, b"<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><a>&e;</a></xml>")));
    assert_eq!(callback(&t, &vec![b'<'; 100 * 1024]).0, 413);
    assert_eq!(c.query_id(&id).data("status"), "PAYING");

    let valid = wire::to_xml(&notification(&t, &id, "1000", &mch_id));
    for _ in 0..3 {
        let (status, reply) = callback(&t, valid.as_bytes());
        assert_eq!((status, reply["return_code"].as_str()), (200, "SUCCESS"));
    }
    assert_eq!(c.query_id(&id).data("status"), "SUCCESS");
}

#[test]
fn a_create_whose_answer_is_lost_is_settled_by_query() {
    let t = wechat_node("HMAC-SHA256", |c| {
        for ch in c.channels.iter_mut().filter(|ch| ch.provider == "wechat_v2") {
            ch.timeout_ms = 500;
            ch.settings.insert("notify_url".into(), toml::Value::String("http://127.0.0.1:9/nowhere".into()));
        }
        c.orders.query_first_after_secs = 1;
    });
    let c = t.client();
    sim_post(&t, "/sim/wechat/faults", json!({ "timeout_rate": 1.0 }));
    let a = c.pay_by("WECHAT_PAY", "WX-LOST-1", "3.00");
    sim_post(&t, "/sim/wechat/faults", json!({}));
    assert_eq!((a.status, a.code()), (502, "CHANNEL_ERROR"), "{a:?}");
    let q = c.query_no("WX-LOST-1");
    assert_eq!(q.data("status"), "PAYING");
    let id = q.data("pay_order_no").to_owned();
    sim_post(&t, "/sim/wechat/pay", json!({ "out_trade_no": id }));
    wait_status(&c, &id, "SUCCESS", LONG);
}
