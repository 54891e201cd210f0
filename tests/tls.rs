//! The channels over HTTPS: the simulator serves TLS with a CA it makes at start, the
//! node's channels trust it, and each provider's pay and refund go through; a node
//! that does not trust the CA cannot open a trade (its handshake fails, so the call
//! certainly never reached the provider).

mod common;

use std::time::Duration;

use common::*;
use paygate::http::client::{ClientOptions, HttpClient};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// Talks to the TLS simulator as a test client that trusts its CA.
struct SimClient {
    http: HttpClient,
    base: String,
    rt: tokio::runtime::Runtime,
}

impl SimClient {
    fn new(t: &TestNode) -> SimClient {
        let sim = t.node().sim.as_ref().unwrap();
        let options = ClientOptions { ca_pem: sim.ca_pem.clone(), ..Default::default() };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        SimClient { http: HttpClient::with(&options).unwrap(), base: sim.base_url.clone(), rt }
    }

    /// What the buyer's browser does with the UnionPay pay page: post its form.
    fn submit_front_form(&self, pay_url: &str) -> u16 {
        let (action, form) = front_form(pay_url);
        assert!(action.starts_with("https://"), "{action}");
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish().into_bytes();
        let sent = self.http.post(&action, "application/x-www-form-urlencoded", body, Duration::from_secs(10));
        self.rt.block_on(sent).unwrap().status
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_vec(&body).unwrap();
        let a = self.rt.block_on(self.http.post(&url, "application/json", body, Duration::from_secs(10))).unwrap();
        serde_json::from_slice(&a.body).unwrap()
    }
}

fn refund(c: &Client, id: &str, refund_no: &str, amount: &str) -> String {
    let p = params(&[("pay_order_no", id), ("refund_no", refund_no), ("refund_amount", amount)]);
    let a = c.call("/api/v1/refund/apply", p);
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    a.data("refund_order_no").to_owned()
}

fn refund_settles(c: &Client, refund_order_no: &str) {
    let query = || c.call("/api/v1/refund/query", params(&[("refund_order_no", refund_order_no)]));
    eventually(WAIT, || Some(query()).filter(|q| q.data("status") == "SUCCESS"))
        .unwrap_or_else(|| panic!("{refund_order_no}: {:?}", query()));
}

/// Pays `method` through the TLS simulator and refunds part of it.
fn pay_and_refund(t: &TestNode, sim: &SimClient, method: &str, provider: &str, order_no: &str) {
    let c = t.client();
    let a = c.pay_by(method, order_no, "3.00");
    assert_eq!(a.code(), "SUCCESS", "{method}: {a:?}");
    let id = a.data("pay_order_no").to_owned();
    if method == "UNION_PAY" {
        assert_eq!(sim.submit_front_form(a.data("pay_url")), 200);
    }
    let paid = sim.post(&format!("/sim/{provider}/pay"), json!({ "out_trade_no": id }));
    assert!(paid.get("error").is_none(), "{paid}");
    wait_status(&c, &id, "SUCCESS", WAIT);
    let r = refund(&c, &id, &format!("{order_no}-R"), "1.00");
    refund_settles(&c, &r);
}

#[test]
fn every_provider_pays_and_refunds_over_tls_and_an_untrusted_gateway_is_refused() {
    let t = TestNode::start_with(|c| {
        let sim = c.sim.as_mut().unwrap();
        sim.tls = true;
        sim.time_scale = 0.001;
    });
    let sim = SimClient::new(&t);
    assert!(sim.base.starts_with("https://"), "{}", sim.base);

    pay_and_refund(&t, &sim, "ALIPAY", "alipay", "TLS-ALI");
    pay_and_refund(&t, &sim, "UNION_PAY", "unionpay", "TLS-UP");
    // WeChat Pay API v3 (the heavier channel), then API v2 with v3 disabled.
    pay_and_refund(&t, &sim, "WECHAT_PAY", "wechat", "TLS-WX3");
    let off = ureq::post(&format!("{}/admin/channels/wechat-v3-sim", t.url))
        .set("authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .send_json(json!({ "status": "DISABLED" }));
    assert_eq!(off.map(|r| r.status()).ok(), Some(200));
    pay_and_refund(&t, &sim, "WECHAT_PAY", "wechat", "TLS-WX2");
    let c = t.client();
    let v2 = c.call("/api/v1/payment/query", params(&[("order_no", "TLS-WX2")]));
    assert_eq!(v2.data("channel"), "wechat-sim");

    // A node whose Alipay channels point at the same HTTPS gateway without trusting its
    // CA: the handshake fails, nothing reached "Alipay", nothing is recorded.
    let gateway = format!("{}/alipay/gateway.do", sim.base);
    let u = TestNode::start_with(move |c| {
        for ch in c.channels.iter_mut().filter(|ch| ch.provider == "alipay") {
            ch.settings.insert("gateway_url".into(), toml::Value::String(gateway.clone()));
        }
    });
    let a = u.client().pay_by("ALIPAY", "TLS-UNTRUSTED", "1.00");
    assert_eq!(a.code(), "CHANNEL_ERROR", "{a:?}");
    let message = a.json["message"].as_str().unwrap();
    assert!(message.contains("certificate"), "{message}");
}

#[test]
fn a_wechat_pay_v2_refund_without_the_merchant_certificate_is_refused() {
    // The v2 channel without its API certificate; v3 off, so WECHAT_PAY goes to v2.
    let t = TestNode::start_with(|c| {
        let sim = c.sim.as_mut().unwrap();
        sim.tls = true;
        sim.time_scale = 0.001;
        let v2 = c.channels.iter_mut().find(|ch| ch.code == "wechat-sim").unwrap();
        assert!(v2.settings.remove("client_certificate").is_some());
        assert!(v2.settings.remove("client_private_key").is_some());
        c.channels.retain(|ch| ch.code != "wechat-v3-sim");
    });
    let sim = SimClient::new(&t);
    let c = t.client();
    let a = c.pay_by("WECHAT_PAY", "TLS-NOCERT", "3.00");
    assert_eq!((a.code(), a.data("channel")), ("SUCCESS", "wechat-sim"), "{a:?}");
    let id = a.data("pay_order_no").to_owned();
    assert!(sim.post("/sim/wechat/pay", json!({ "out_trade_no": id })).get("error").is_none());
    wait_status(&c, &id, "SUCCESS", WAIT);

    // Paying needs no certificate; refunding does, and WeChat Pay refuses it outright.
    let p = params(&[("pay_order_no", &id), ("refund_no", "TLS-NOCERT-R"), ("refund_amount", "1.00")]);
    let r = c.call("/api/v1/refund/apply", p);
    assert_eq!(r.data("status"), "FAILED", "{r:?}");
    let why = serde_json::to_string(&r.json).unwrap();
    assert!(why.contains("certificate"), "{why}");
}
