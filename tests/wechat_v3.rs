//! WeChat Pay API v3 end to end against the in-process simulator, with real RSA
//! signatures both ways and AES-256-GCM resources: native pay → buyer pays → encrypted,
//! signed notification → SUCCESS; close, refunds, refund query, the bill and the platform
//! certificates through the real adapter; hostile notifications; unverifiable answers.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use paygate::channels::wechat::v3::wire;
use paygate::channels::wechat::v3::{WechatV3Connector, WechatV3Settings};
use paygate::config::Config;
use paygate::crypto::{Certificate, RsaSigner};
use paygate_actors::clock::Clock;
use paygate_actors::ports::ChannelConnector;
use paygate_actors::refund::RefundState;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(20);

fn v3_node(tweak: impl FnOnce(&mut Config)) -> TestNode {
    TestNode::start_with(|c| {
        if let Some(sim) = c.sim.as_mut() {
            sim.time_scale = 0.001;
        }
        c.channels.retain(|ch| ch.provider != "wechat_v2");
        tweak(c);
    })
}

fn setting(t: &TestNode, name: &str) -> String {
    let c = test_config(t.dir.path());
    let ch = c.channels.iter().find(|ch| ch.provider == "wechat_v3").unwrap();
    ch.settings[name].as_str().unwrap().to_owned()
}

fn api_v3_key(t: &TestNode) -> [u8; 32] {
    wire::api_v3_key(&setting(t, "api_v3_key")).unwrap()
}

/// The simulator's platform key: what signs WeChat's notifications.
fn platform_key(t: &TestNode) -> (RsaSigner, String) {
    let p = test_config(t.dir.path()).sim.unwrap().wechat.unwrap().platform.unwrap();
    (RsaSigner::from_text("platform", &p.private_key).unwrap(), p.serial)
}

fn trade(t: &TestNode, id: &str) -> Value {
    sim_get(t, &format!("/sim/wechat/trades/{id}"))
}

fn now_secs() -> i64 {
    paygate_actors::clock::SystemClock.now_ms() / 1000
}

/// A transaction resource as WeChat would send it for order `id`.
fn transaction(t: &TestNode, id: &str, total: i64, mchid: &str) -> Value {
    json!({
        "appid": setting(t, "appid"), "mchid": mchid, "out_trade_no": id, "transaction_id": "4200000000000000000077",
        "trade_type": "NATIVE", "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
        "success_time": "2026-11-23T12:00:00+08:00", "amount": { "total": total, "payer_total": total, "currency": "CNY" },
    })
}

/// A notification body whose resource is `resource` sealed under `key`.
fn notification_body(resource: &Value, key: &[u8; 32]) -> Vec<u8> {
    let (nonce, ciphertext) = wire::encrypt(key, "transaction", resource.to_string().as_bytes()).unwrap();
    json!({
        "id": "EV-2018022511223320873", "create_time": "2026-11-23T12:00:00+08:00",
        "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
        "resource": { "original_type": "transaction", "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                      "associated_data": "transaction", "nonce": nonce },
    })
    .to_string()
    .into_bytes()
}

/// Posts a notification with the signature headers of `signer` over `signed_body`
/// (normally the body itself) at `time`.
fn callback_signed(
    t: &TestNode,
    body: &[u8],
    signed_body: &[u8],
    signer: &(RsaSigner, String),
    time: i64,
) -> (u16, String) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let mut req = agent.post(&format!("{}/callback/wechat/v3", t.url)).set("content-type", "application/json");
    for (k, v) in wire::signature_headers(&signer.0, &signer.1, signed_body, time) {
        req = req.set(k, &v);
    }
    let r = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    (r.status(), r.into_string().unwrap())
}

fn callback(t: &TestNode, body: &[u8]) -> (u16, String) {
    callback_signed(t, body, body, &platform_key(t), now_secs())
}

/// The real adapter, configured as the node's channel is, for the calls the merchant
/// API does not expose yet (refunds, bills, certificates).
fn adapter(t: &TestNode) -> WechatV3Connector {
    let platform = Certificate::from_pem("platform", &setting(t, "platform_certificate")).unwrap();
    WechatV3Connector::new(
        WechatV3Settings {
            appid: setting(t, "appid"),
            mchid: setting(t, "mchid"),
            merchant_serial: setting(t, "merchant_serial"),
            merchant_key: RsaSigner::from_text("merchant", &setting(t, "merchant_private_key")).unwrap(),
            platform_serial: platform.serial_hex,
            platform_key: platform.key,
            api_v3_key: api_v3_key(t),
            base_url: sim_url(t),
            notify_url: format!("{}/callback/wechat/v3", t.url),
            timeout: Duration::from_secs(5),
        },
        paygate::http::client::HttpClient::new(),
    )
}

#[test]
fn native_pay_then_the_buyer_pays_and_the_encrypted_notification_settles_it() {
    let t = v3_node(|_| {});
    let c = t.client();
    let a = c.pay_by("WECHAT_PAY", "WX3-E2E-1", "12.34");
    assert_eq!((a.code(), a.data("status"), a.data("channel")), ("SUCCESS", "PAYING", "wechat-v3-sim"), "{a:?}");
    let id = a.data("pay_order_no").to_owned();
    let code_url = a.data("code_url").to_owned();
    assert!(code_url.starts_with("weixin://wxpay/bizpayurl?pr="), "{code_url}");
    assert_eq!(decode_qr(a.data("qr_code")), code_url);
    assert_eq!((trade(&t, &id)["total_fee"].as_i64(), trade(&t, &id)["api"].as_str()), (Some(1234), Some("v3")));

    let token = code_url.rsplit('=').next().unwrap();
    let page = ureq::post(&format!("{}/wechat/cashier/{token}", sim_url(&t))).send_string("").unwrap();
    assert!(page.into_string().unwrap().contains("SUCCESS"));
    let q = wait_status(&c, &id, "SUCCESS", LONG);
    assert_eq!(q.data("channel_trade_no"), trade(&t, &id)["transaction_id"].as_str().unwrap());
}

#[test]
fn close_refunds_refund_query_the_bill_and_the_certificates_through_the_real_adapter() {
    let t = v3_node(|_| {});
    let c = t.client();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let wx = adapter(&t);

    // The certificate list is signed with the key we pin and opens under our APIv3 key.
    let certs = rt.block_on(wx.certificates()).unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(
        certs[0].serial_no,
        Certificate::from_pem("p", &setting(&t, "platform_certificate")).unwrap().serial_hex
    );

    // The simulator holds the merchant to its signature, and signs even its refusals.
    let key = RsaSigner::from_text("merchant", &setting(&t, "merchant_private_key")).unwrap();
    let path = "/v3/pay/transactions/native";
    let auth = wire::Authorization::sign(
        &key,
        &setting(&t, "mchid"),
        &setting(&t, "merchant_serial"),
        "POST",
        path,
        b"{}",
        now_secs(),
    );
    let r = ureq::post(&format!("{}{path}", sim_url(&t))).set("authorization", &auth.header()).send_string("{\"x\":1}");
    let Err(ureq::Error::Status(401, r)) = r else { panic!("{r:?}") };
    assert_eq!(r.header(wire::SIGNATURE_TYPE), Some(wire::SCHEMA));
    assert!(r.into_string().unwrap().contains("SIGN_ERROR"));

    // Close: 204 (signed over the empty body); the code no longer pays.
    let a = c.pay_by("WECHAT_PAY", "WX3-CLOSE-1", "5.00");
    let closing = a.data("pay_order_no").to_owned();
    assert_eq!(c.close_id(&closing).data("status"), "CLOSED");
    assert_eq!(trade(&t, &closing)["trade_state"], "CLOSED");
    assert!(sim_post(&t, "/sim/wechat/pay", json!({ "out_trade_no": closing }))["error"].is_string());

    // Refunds: partial, repeated, too much, the rest.
    let a = c.pay_by("WECHAT_PAY", "WX3-REFUND-1", "100.00");
    let id = a.data("pay_order_no").to_owned();
    sim_post(&t, "/sim/wechat/pay", json!({ "out_trade_no": id }));
    wait_status(&c, &id, "SUCCESS", LONG);
    let refund = |no: &str, fen: i64| rt.block_on(wx.refund(refund_of(trade_ref(&id, 10_000), no, fen))).unwrap();
    // WeChat accepts a refund and carries it out a moment later.
    assert_eq!(refund("R3-1", 3_000), RefundState::Processing);
    let again = refund("R3-1", 3_000);
    assert!(matches!(again, RefundState::Processing | RefundState::Success), "the same out_refund_no again: {again:?}");
    assert!(matches!(refund("R3-2", 8_000), RefundState::Failed(ref e) if e.contains("NOT_ENOUGH")));
    assert_eq!(refund("R3-2", 7_000), RefundState::Processing);
    assert_eq!(trade(&t, &id)["refunded_fee"], 10_000, "no second refund under R3-1");
    let query = |no: &str| rt.block_on(wx.query_refund(refund_of(trade_ref(&id, 10_000), no, 0))).unwrap();
    eventually(LONG, || (query("R3-2") == RefundState::Success).then_some(())).expect("carried out");
    assert_eq!(query("R3-NONE"), RefundState::NotFound, "a refund WeChat never heard of may be asked again");

    // The bill: none for today yet; tomorrow, today's payment and refunds with fees.
    let today = paygate::channels::alipay::wire::date(paygate_actors::clock::SystemClock.now_ms());
    assert!(rt.block_on(wx.download_bill(today.clone())).unwrap().is_empty(), "no bill for a day not ended");
    sim_post(&t, "/sim/clock", json!({ "advance_secs": 86_400 }));
    let lines = rt.block_on(wx.download_bill(today)).unwrap();
    let mine: Vec<_> = lines.iter().filter(|l| l.pay_order_no == id).collect();
    assert_eq!(mine.len(), 3, "{lines:?}");
    assert_eq!(mine.iter().map(|l| l.amount_minor).sum::<i64>(), 0, "paid 100.00, refunded 30.00 + 70.00");
    assert_eq!(mine.iter().map(|l| l.fee_minor).sum::<i64>(), 0, "fees returned with full refunds");
}

#[test]
fn hostile_notifications_change_nothing_and_are_answered_as_failures() {
    let t = v3_node(|c| {
        for ch in c.channels.iter_mut().filter(|ch| ch.provider == "wechat_v3") {
            // Only the notifications this test sends reach the node.
            ch.settings.insert("notify_url".into(), toml::Value::String("http://127.0.0.1:9/nowhere".into()));
        }
    });
    let c = t.client();
    let a = c.pay_by("WECHAT_PAY", "WX3-HOSTILE-1", "9.99");
    let id = a.data("pay_order_no").to_owned();
    let key = api_v3_key(&t);
    let mchid = setting(&t, "mchid");
    let good = notification_body(&transaction(&t, &id, 999, &mchid), &key);
    let stranger =
        (RsaSigner::from_text("x", include_str!("fixtures/rsa/provider_private.pem")).unwrap(), platform_key(&t).1);
    let alerts = || metric(&t.url, "paygate_alerts_total{kind=\"callback_mismatch\"} ");

    let refused = |(status, body): (u16, String)| status == 500 && body.contains("FAIL");
    assert!(refused(callback_signed(&t, &good, &good, &stranger, now_secs())), "signed by another key");
    assert!(refused(callback_signed(&t, &good, b"{}", &platform_key(&t), now_secs())), "tampered after signing");
    assert!(refused(callback_signed(&t, &good, &good, &platform_key(&t), now_secs() - 600)), "ten minutes old");
    let other_key = wire::api_v3_key("ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ").unwrap();
    assert!(
        refused(callback(&t, &notification_body(&transaction(&t, &id, 999, &mchid), &other_key))),
        "another APIv3 key"
    );
    assert!(
        refused(callback(&t, &notification_body(&transaction(&t, &id, 999, "1900009999"), &key))),
        "another merchant"
    );
    assert!(refused(callback(&t, b"{\"resource\":")), "malformed");
    assert_eq!(callback(&t, &vec![b'x'; 200 * 1024]).0, 413, "huge");
    assert_eq!(c.query_id(&id).data("status"), "PAYING");

    // Well signed, but not the order's amount: changes nothing, raises an alert.
    let before = alerts();
    assert!(refused(callback(&t, &notification_body(&transaction(&t, &id, 1, &mchid), &key))), "wrong amount");
    assert!(alerts() > before);
    assert_eq!(c.query_id(&id).data("status"), "PAYING");

    // Ten identical good notifications at once: one state change, every one acknowledged.
    let barrier = Arc::new(Barrier::new(10));
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let (barrier, body, url, signer) = (Arc::clone(&barrier), good.clone(), t.url.clone(), platform_key(&t));
            std::thread::spawn(move || {
                barrier.wait();
                let mut req = ureq::post(&format!("{url}/callback/wechat/v3"));
                for (k, v) in wire::signature_headers(&signer.0, &signer.1, &body, now_secs()) {
                    req = req.set(k, &v);
                }
                req.send_bytes(&body).map(|r| r.status()).unwrap_or(0)
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
    let q = c.query_id(&id);
    assert_eq!((q.data("status"), q.data("channel_trade_no")), ("SUCCESS", "4200000000000000000077"));
    // Replayed later (within the window): acknowledged, nothing moves.
    assert_eq!(callback(&t, &good).0, 204);
    assert_eq!(c.query_id(&id).data("update_time"), q.data("update_time"));
}

#[test]
fn an_answer_that_does_not_verify_is_an_unknown_outcome_settled_later() {
    let t = v3_node(|c| c.orders.query_first_after_secs = 1);
    let c = t.client();
    let before = metric(&t.url, "paygate_alerts_total{kind=\"channel_answer_unverified\"} ");
    sim_post(&t, "/sim/wechat/faults", json!({ "bad_signature_rate": 1.0 }));
    let a = c.pay_by("WECHAT_PAY", "WX3-BADSIG-1", "4.00");
    sim_post(&t, "/sim/wechat/faults", json!({}));
    assert_eq!((a.status, a.code()), (502, "CHANNEL_ERROR"), "{a:?}");
    assert!(metric(&t.url, "paygate_alerts_total{kind=\"channel_answer_unverified\"} ") > before);
    let q = c.query_no("WX3-BADSIG-1");
    assert_eq!(q.data("status"), "PAYING", "the trade may exist at WeChat: never failed on a guess");
    // WeChat did open it; the buyer pays; the notification settles it.
    let id = q.data("pay_order_no").to_owned();
    sim_post(&t, "/sim/wechat/pay", json!({ "out_trade_no": id }));
    wait_status(&c, &id, "SUCCESS", LONG);
}

#[test]
fn a_notification_that_cannot_be_verified_but_opens_makes_the_node_ask_wechat() {
    let t = v3_node(|c| {
        for ch in c.channels.iter_mut().filter(|ch| ch.provider == "wechat_v3") {
            ch.settings.insert("notify_url".into(), toml::Value::String("http://127.0.0.1:9/nowhere".into()));
        }
    });
    let c = t.client();
    let id = c.pay_by("WECHAT_PAY", "WX3-UNVERIFIED-1", "2.00").data("pay_order_no").to_owned();
    sim_post(&t, "/sim/wechat/pay", json!({ "out_trade_no": id }));
    // Signed by a key we cannot check (say, a rotated certificate): refused, but asked about.
    let body = notification_body(&transaction(&t, &id, 200, &setting(&t, "mchid")), &api_v3_key(&t));
    let stranger =
        (RsaSigner::from_text("x", include_str!("fixtures/rsa/provider_private.pem")).unwrap(), "NEW".into());
    assert_eq!(callback_signed(&t, &body, &body, &stranger, now_secs()).0, 500);
    wait_status(&c, &id, "SUCCESS", LONG);
}
