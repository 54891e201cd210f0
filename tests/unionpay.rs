//! UnionPay 5.1.0 end to end against the in-process simulator, with real certificates:
//! the buyer's browser posts our signed front form → the simulator's cashier → a signed
//! notification whose certificate chains to the configured root → SUCCESS; close,
//! refunds and refund query through the real adapter; hostile notifications, among them
//! an impostor certificate with the real one's name and serial.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use paygate::channels::unionpay::wire::{self, Params};
use paygate::channels::unionpay::{UnionPayConnector, UnionPaySettings};
use paygate::config::Config;
use paygate::crypto::{Certificate, RsaSigner, TrustStore};
use paygate_actors::clock::Clock;
use paygate_actors::ports::ChannelConnector;
use paygate_actors::refund::RefundState;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(20);

fn up_node(tweak: impl FnOnce(&mut Config)) -> TestNode {
    TestNode::start_with(|c| {
        if let Some(sim) = c.sim.as_mut() {
            sim.time_scale = 0.001;
        }
        tweak(c);
    })
}

/// A node whose UnionPay notifications go nowhere: only what the test posts reaches it.
fn node_hearing_only_the_test() -> TestNode {
    up_node(|c| {
        for ch in c.channels.iter_mut().filter(|ch| ch.provider == "unionpay") {
            ch.settings.insert("notify_url".into(), toml::Value::String("http://127.0.0.1:9/nowhere".into()));
        }
    })
}

fn setting(t: &TestNode, name: &str) -> String {
    let c = test_config(t.dir.path());
    let ch = c.channels.iter().find(|ch| ch.provider == "unionpay").unwrap();
    ch.settings[name].as_str().unwrap().to_owned()
}

fn trade(t: &TestNode, id: &str) -> Value {
    sim_get(t, &format!("/sim/unionpay/trades/{id}"))
}

/// The real adapter, configured as the node's channel is.
fn adapter(t: &TestNode) -> UnionPayConnector {
    let cert = Certificate::from_pem("mer", &setting(t, "signing_certificate")).unwrap();
    let roots = Certificate::bundle_from_pem("roots", &setting(t, "trusted_roots")).unwrap();
    UnionPayConnector::new(
        UnionPaySettings {
            mer_id: setting(t, "mer_id"),
            cert_id: cert.serial_decimal,
            signing_key: RsaSigner::from_text("mer", &setting(t, "signing_private_key")).unwrap(),
            trust: TrustStore::new(roots, vec![]).unwrap(),
            signer: setting(t, "signer_identity"),
            gateway_url: format!("{}/gateway/api", sim_url(t)),
            front_url: format!("{}/", t.url),
            back_url: format!("{}/callback/unionpay", t.url),
            timeout: Duration::from_secs(5),
        },
        paygate::http::client::HttpClient::new(),
    )
}

/// A consume notification for `id`, signed by `key` and carrying `cert_pem`.
fn notification(t: &TestNode, id: &str, amount: &str, mer_id: &str, key: &RsaSigner, cert_pem: &str) -> Params {
    let cert = Certificate::from_pem("c", cert_pem).unwrap();
    let mut p: Params = [
        ("version", "5.1.0"),
        ("encoding", "UTF-8"),
        ("bizType", "000201"),
        ("accessType", "0"),
        ("txnType", "01"),
        ("txnSubType", "01"),
        ("merId", mer_id),
        ("orderId", id),
        ("txnTime", trade(t, id)["txnTime"].as_str().unwrap_or("20261123120000")),
        ("txnAmt", amount),
        ("currencyCode", "156"),
        ("queryId", "202611231200000000077"),
        ("respCode", "00"),
        ("respMsg", "成功[0000000]"),
        ("signPubKeyCert", cert_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    wire::sign(&mut p, key, &cert.serial_decimal);
    p
}

fn sim_signer(t: &TestNode) -> (RsaSigner, String) {
    let u = test_config(t.dir.path()).sim.unwrap().unionpay.unwrap();
    (RsaSigner::from_text("sim", &u.signing_private_key).unwrap(), u.signing_certificate)
}

fn impostor() -> (RsaSigner, String) {
    let dir = format!("{}/tests/fixtures/unionpay", env!("CARGO_MANIFEST_DIR"));
    let key = std::fs::read_to_string(format!("{dir}/rogue.key")).unwrap();
    (RsaSigner::from_text("rogue", &key).unwrap(), std::fs::read_to_string(format!("{dir}/rogue.crt")).unwrap())
}

fn callback(t: &TestNode, p: &Params) -> (u16, String) {
    let r = ureq::post(&format!("{}/callback/unionpay", t.url))
        .set("content-type", "application/x-www-form-urlencoded")
        .send_bytes(wire::form(p).as_bytes());
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_buyer_posts_the_signed_front_form_pays_and_the_notification_settles_the_order() {
    let t = up_node(|_| {});
    let c = t.client();
    let a = c.pay_by("UNION_PAY", "UP-E2E-1", "12.34");
    assert_eq!((a.code(), a.data("status"), a.data("channel")), ("SUCCESS", "PAYING", "unionpay-sim"), "{a:?}");
    assert_eq!(a.data("pay_scene"), "WEB", "UnionPay's default product is the web front form");
    let id = a.data("pay_order_no").to_owned();
    let pay_url = a.data("pay_url").to_owned();
    assert_eq!(pay_url, format!("{}/h5/{id}", t.url), "our page posts the form: UnionPay takes no GET");

    // Until the buyer submits the form, UnionPay knows no such trade.
    assert_eq!(sim_get(&t, &format!("/sim/unionpay/trades/{id}"))["error"], "no such trade");
    let (status, cashier) = submit_front_form(&pay_url);
    assert_eq!(status, 200, "{cashier}");
    assert!(cashier.contains("12.34") && cashier.contains("OPEN"), "{cashier}");
    let token = between(&cashier, "/unionpay/cashier/", "\"");
    let paid = ureq::post(&format!("{}/unionpay/cashier/{token}", sim_url(&t))).send_string("").unwrap();
    assert!(paid.into_string().unwrap().contains("PAID"));
    let q = wait_status(&c, &id, "SUCCESS", LONG);
    assert_eq!(q.data("channel_trade_no"), trade(&t, &id)["queryId"].as_str().unwrap());
}

#[test]
fn a_front_form_edited_in_the_browser_is_refused_by_unionpay() {
    let t = up_node(|_| {});
    let c = t.client();
    let a = c.pay_by("UNION_PAY", "UP-TAMPER-1", "50.00");
    let page = ureq::get(a.data("pay_url")).call().unwrap().into_string().unwrap();
    let action = between(&page, "action=\"", "\"");
    let mut form: Vec<(String, String)> = page
        .split("<input ")
        .skip(1)
        .map(|i| (between(i, "name=\"", "\""), html_escape::decode_html_entities(&between(i, "value=\"", "\"")).into()))
        .collect();
    for (k, v) in form.iter_mut() {
        if k == "txnAmt" {
            *v = "1".into();
        }
    }
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = ureq::post(&action).send_form(&pairs);
    let Err(ureq::Error::Status(400, r)) = r else { panic!("{r:?}") };
    assert!(r.into_string().unwrap().contains("验证签名失败"));
}

#[test]
fn close_refunds_refund_query_and_the_settlement_file_through_the_real_adapter() {
    let t = up_node(|_| {});
    let c = t.client();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let up = adapter(&t);

    // Never submitted: closing asks UnionPay (no such trade) and closes.
    let a = c.pay_by("UNION_PAY", "UP-CLOSE-1", "5.00");
    assert_eq!(c.close_id(a.data("pay_order_no")).data("status"), "CLOSED");

    // Paid, then refunded in two parts; UnionPay refunds asynchronously.
    let a = c.pay_by("UNION_PAY", "UP-REFUND-1", "100.00");
    let id = a.data("pay_order_no").to_owned();
    assert_eq!(submit_front_form(a.data("pay_url")).0, 200);
    sim_post(&t, "/sim/unionpay/pay", json!({ "out_trade_no": id }));
    let q = wait_status(&c, &id, "SUCCESS", LONG);
    let mut paid = trade_ref(&id, 10_000);
    paid.channel_trade_no = Some(q.data("channel_trade_no").to_owned());
    let informational = || metric(&t.url, "paygate_callbacks_total{provider=\"unionpay\",result=\"informational\"} ");
    let before = informational();
    let refund = |no: &str, fen: i64| rt.block_on(up.refund(refund_of(paid.clone(), no, fen))).unwrap();
    assert_eq!(refund("R-1", 3_000), RefundState::Processing);
    assert_eq!(refund("R-1", 3_000), RefundState::Processing, "the same refund again: no second refund");
    assert!(matches!(refund("R-2", 8_000), RefundState::Failed(ref e) if e.starts_with("38")), "more than is left");
    assert_eq!(refund("R-2", 7_000), RefundState::Processing);
    assert_eq!(trade(&t, &id)["refunded"], 10_000);
    let asked = |no: &str| rt.block_on(up.query_refund(refund_of(paid.clone(), no, 0))).unwrap();
    assert_eq!(asked("R-2"), RefundState::Success);
    assert_eq!(asked("R-9"), RefundState::NotFound, "never asked: may be asked again");
    // The refunds' notifications are genuine and change no order: taken, not applied.
    assert!(eventually(LONG, || (informational() >= before + 2.0).then_some(())).is_some());
    assert_eq!(c.query_id(&id).data("status"), "SUCCESS");

    // The settlement file: none for a day that has not ended; the next day, the payment
    // and both refunds, with UnionPay's fee charged and given back.
    let today = paygate::channels::alipay::wire::date(paygate_actors::clock::SystemClock.now_ms());
    assert!(rt.block_on(up.download_bill(today.clone())).unwrap().is_empty());
    sim_post(&t, "/sim/clock", json!({ "advance_secs": 86_400 }));
    let lines = rt.block_on(up.download_bill(today)).unwrap();
    let mine: Vec<_> = lines.iter().filter(|l| l.pay_order_no == id).collect();
    assert_eq!(mine.iter().map(|l| l.amount_minor).collect::<Vec<_>>(), [10_000, -3_000, -7_000], "{lines:?}");
    assert_eq!(mine.iter().map(|l| l.fee_minor).collect::<Vec<_>>(), [60, -18, -42]);
    assert!(mine.iter().all(|l| l.channel_trade_no == q.data("channel_trade_no")));
}

#[test]
fn a_notification_signed_with_a_merchant_certificate_of_the_same_root_does_not_pay_the_order() {
    // Every merchant holds a certificate from UnionPay's CA: the chain alone proves
    // nothing about who signed "paid".
    let t = node_hearing_only_the_test();
    let c = t.client();
    let id = c.pay_by("UNION_PAY", "UP-FORGED-MER-1", "12.34").data("pay_order_no").to_owned();
    let (mer_id, mer_cert) = (setting(&t, "mer_id"), setting(&t, "signing_certificate"));
    let mer_key = RsaSigner::from_text("mer", &setting(&t, "signing_private_key")).unwrap();
    let roots = Certificate::bundle_from_pem("roots", &setting(&t, "trusted_roots")).unwrap();
    let cert = Certificate::from_pem("mer", &mer_cert).unwrap();
    assert!(TrustStore::new(roots, vec![]).unwrap().vouches_for(&cert, now_secs()), "it does chain to the root");
    let forged = notification(&t, &id, "1234", &mer_id, &mer_key, &mer_cert);
    assert_eq!(callback(&t, &forged), (400, "fail".to_owned()));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.query_id(&id).data("status"), "PAYING", "nothing was paid");
}

#[test]
fn hostile_notifications_change_nothing_and_are_answered_fail() {
    let t = node_hearing_only_the_test();
    let c = t.client();
    let a = c.pay_by("UNION_PAY", "UP-HOSTILE-1", "9.99");
    let id = a.data("pay_order_no").to_owned();
    assert_eq!(submit_front_form(a.data("pay_url")).0, 200);
    let (mer_id, sim) = (setting(&t, "mer_id"), sim_signer(&t));
    let (sim_key, sim_cert) = (&sim.0, sim.1.as_str());
    let fail = (400, "fail".to_owned());

    // The impostor: same subject, same serial as UnionPay's certificate, another root.
    let (rogue_key, rogue_cert) = impostor();
    assert_eq!(callback(&t, &notification(&t, &id, "999", &mer_id, &rogue_key, &rogue_cert)), fail);
    // UnionPay's certificate, but the impostor's key signed.
    assert_eq!(callback(&t, &notification(&t, &id, "999", &mer_id, &rogue_key, sim_cert)), fail);
    // Tampered after signing.
    let mut tampered = notification(&t, &id, "999", &mer_id, sim_key, sim_cert);
    tampered.insert("txnAmt".into(), "1".into());
    assert_eq!(callback(&t, &tampered), fail);
    // Another merchant's, malformed, huge.
    assert_eq!(callback(&t, &notification(&t, &id, "999", "777290058119999", sim_key, sim_cert)), fail);
    assert_eq!(callback(&t, &Params::new()), fail);
    let huge = ureq::post(&format!("{}/callback/unionpay", t.url)).send_bytes(&vec![b'a'; 200 * 1024]);
    assert!(matches!(huge, Err(ureq::Error::Status(413, _))));
    assert_eq!(c.query_id(&id).data("status"), "PAYING");

    // Well signed, the wrong amount: changes nothing, raises an alert.
    let alerts = || metric(&t.url, "paygate_alerts_total{kind=\"callback_mismatch\"} ");
    let before = alerts();
    assert_eq!(callback(&t, &notification(&t, &id, "1", &mer_id, sim_key, sim_cert)), fail);
    assert!(alerts() > before);
    assert_eq!(c.query_id(&id).data("status"), "PAYING");

    // Ten identical genuine notifications at once: one state change, ten "ok".
    let good = Arc::new(wire::form(&notification(&t, &id, "999", &mer_id, sim_key, sim_cert)));
    let barrier = Arc::new(Barrier::new(10));
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let (good, barrier, url) = (Arc::clone(&good), Arc::clone(&barrier), t.url.clone());
            std::thread::spawn(move || {
                barrier.wait();
                ureq::post(&format!("{url}/callback/unionpay")).send_string(&good).map(|r| r.status()).unwrap_or(0)
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let q = c.query_id(&id);
    assert_eq!((q.data("status"), q.data("channel_trade_no")), ("SUCCESS", "202611231200000000077"));
}

#[test]
fn an_unverifiable_answer_is_an_unknown_outcome_and_an_unverifiable_notification_is_asked_about() {
    let t = node_hearing_only_the_test();
    let c = t.client();
    let a = c.pay_by("UNION_PAY", "UP-UNKNOWN-1", "2.00");
    let id = a.data("pay_order_no").to_owned();
    assert_eq!(submit_front_form(a.data("pay_url")).0, 200);
    sim_post(&t, "/sim/unionpay/pay", json!({ "out_trade_no": id }));

    // Closing asks UnionPay; its answer does not verify: not closed, not failed.
    sim_post(&t, "/sim/unionpay/faults", json!({ "bad_signature_rate": 1.0 }));
    let closed = c.close_id(&id);
    sim_post(&t, "/sim/unionpay/faults", json!({}));
    assert_eq!(closed.code(), "CHANNEL_ERROR", "{closed:?}");
    assert_eq!(c.query_id(&id).data("status"), "PAYING");

    // A notification signed by a certificate we cannot trust: refused, but UnionPay is
    // asked about the order it names, and that answer settles it.
    let (rogue_key, rogue_cert) = impostor();
    let forged = notification(&t, &id, "200", &setting(&t, "mer_id"), &rogue_key, &rogue_cert);
    assert_eq!(callback(&t, &forged).0, 400);
    wait_status(&c, &id, "SUCCESS", LONG);
}
