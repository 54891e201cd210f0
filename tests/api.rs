//! The merchant API over loopback HTTP against an in-process node: pay, query, close,
//! idempotency, isolation between merchants, the sandbox channel and its callbacks.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::order_actor::OrderActor;
use paygate_actors::registry::Registry;

const PAY: &str = "/api/v1/payment/pay";

#[test]
fn pay_then_sandbox_pays_then_query_shows_success() {
    let t = TestNode::start();
    let c = t.client();
    let a = c.pay("HAPPY-1", "100.00");
    assert_eq!((a.status, a.code()), (200, "SUCCESS"), "{a:?}");
    assert_eq!(a.data("status"), "PAYING");
    assert_eq!(a.data("amount"), "100.00");
    let id = a.data("pay_order_no").to_owned();
    assert_eq!(a.data("pay_url"), format!("{}/h5/{id}", t.url));
    assert_eq!(decode_qr(a.data("qr_code")), a.data("code_url"), "the QR code encodes the channel's code URL");

    // The buyer pays at the sandbox; its signed callback settles the order.
    t.node().sandbox.as_ref().unwrap().pay(&id).unwrap();
    let q = wait_status(&c, &id, "SUCCESS", Duration::from_secs(10));
    assert_eq!(q.data("order_no"), "HAPPY-1");
    assert_eq!(q.data("currency"), "CNY");
    assert_eq!(q.data("channel"), "sandbox");
    assert!(q.data("channel_trade_no").starts_with("SBX"));
    assert!(!q.data("paid_time").is_empty());
    assert_eq!(c.query_no("HAPPY-1").data("pay_order_no"), id, "query by order_no finds the same order");

    // A paid order cannot be closed.
    let close = c.close_id(&id);
    assert_eq!((close.status, close.code()), (422, "ORDER_STATUS_ERROR"));

    // The hosted cashier page shows the paid order.
    let page = ureq::get(&format!("{}/h5/{id}", t.url)).call().unwrap().into_string().unwrap();
    assert!(page.contains("SUCCESS") && page.contains("100.00"), "{page}");
}

#[test]
fn same_request_again_gets_the_same_answer_and_other_parameters_conflict() {
    let t = TestNode::start();
    let c = t.client();
    let first = c.pay("IDEM-1", "12.34");
    let again = c.pay("IDEM-1", "12.34");
    assert_eq!(again.code(), "SUCCESS");
    for field in ["pay_order_no", "pay_url", "qr_code", "code_url", "status", "amount"] {
        assert_eq!(first.data(field), again.data(field), "{field}");
    }
    let conflict = c.pay("IDEM-1", "12.35");
    assert_eq!((conflict.status, conflict.code()), (409, "IDEMPOTENCY_CONFLICT"));
    let mut p = Client::pay_params("IDEM-1", "12.34");
    p.insert("subject".into(), "coffee".into());
    assert_eq!(c.call(PAY, p).code(), "IDEMPOTENCY_CONFLICT");
    assert_eq!(t.order_count(), 1);
    assert_eq!(c.query_no("IDEM-1").data("amount"), "12.34", "the conflict changed nothing");
}

#[test]
fn fifty_concurrent_identical_requests_make_one_order() {
    let t = TestNode::start();
    let c = t.client();
    let body = serde_json::to_vec(&c.sign(Client::pay_params("CONC-1", "9.99"))).unwrap();
    let url = format!("{}{PAY}", t.url);
    let barrier = Arc::new(Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (barrier, body, url) = (barrier.clone(), body.clone(), url.clone());
            std::thread::spawn(move || {
                barrier.wait();
                post_raw(&url, &body).expect("an answer")
            })
        })
        .collect();
    let answers: Vec<Answer> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    let first = answers[0].data("pay_order_no").to_owned();
    assert!(!first.is_empty(), "{:?}", answers[0]);
    for a in &answers {
        assert_eq!((a.code(), a.data("pay_order_no")), ("SUCCESS", first.as_str()), "{a:?}");
    }
    assert_eq!(t.order_count(), 1, "exactly one order stored");
}

#[test]
fn close_an_unpaid_order_and_a_late_payment_is_refused() {
    let t = TestNode::start();
    let c = t.client();
    let id = c.pay("CLOSE-1", "1.00").data("pay_order_no").to_owned();
    let closed = c.close_id(&id);
    assert_eq!((closed.code(), closed.data("status")), ("SUCCESS", "CLOSED"));
    assert_eq!(c.close_id(&id).data("status"), "CLOSED", "closing again is idempotent");
    // The trade is closed at the channel too: the buyer can no longer pay it.
    assert!(t.node().sandbox.as_ref().unwrap().pay(&id).is_err());
    assert_eq!(c.query_id(&id).data("status"), "CLOSED");
}

#[test]
fn a_merchant_cannot_see_or_touch_another_merchants_order() {
    let t = TestNode::start();
    let id = t.client().pay("MINE-1", "5.00").data("pay_order_no").to_owned();
    let other = Client::new(&t.url, LEGACY_MERCHANT, LEGACY_SECRET);
    let q = other.query_id(&id);
    assert_eq!((q.status, q.code()), (404, "ORDER_NOT_FOUND"));
    assert_eq!(other.close_id(&id).code(), "ORDER_NOT_FOUND");
    assert_eq!(other.query_no("MINE-1").code(), "ORDER_NOT_FOUND");
    assert_eq!(t.client().query_id(&id).data("status"), "PAYING", "untouched");
    // The same order_no is a different order for another merchant.
    let theirs = other.pay("MINE-1", "5.00");
    assert_eq!(theirs.code(), "SUCCESS");
    assert_ne!(theirs.data("pay_order_no"), id);
}

#[test]
fn methods_without_a_configured_channel_answer_no_available_channel() {
    let t = TestNode::start();
    let c = t.client();
    let a = c.pay_by("BALANCE", "NOCH-0", "1.00");
    assert_eq!((a.status, a.code()), (503, "NO_AVAILABLE_CHANNEL"));
    assert_eq!(t.order_count(), 0);
    // Above the sandbox's single limit, no channel takes it either.
    assert_eq!(c.pay("NOCH-BIG", "50000.01").code(), "NO_AVAILABLE_CHANNEL");
}

#[test]
fn legacy_merchant_may_sign_with_md5_and_others_may_not() {
    let t = TestNode::start();
    let mut p = Client::pay_params("MD5-1", "1.00");
    p.insert("sign_type".into(), "MD5".into());
    let legacy = Client::new(&t.url, LEGACY_MERCHANT, LEGACY_SECRET);
    assert_eq!(legacy.call(PAY, p.clone()).code(), "SUCCESS");
    let a = t.client().call(PAY, p);
    assert_eq!((a.status, a.code()), (401, "SIGN_ERROR"));
}

#[test]
fn nonce_is_single_use() {
    let t = TestNode::start();
    let c = t.client();
    let mut p = Client::pay_params("NONCE-1", "1.00");
    p.insert("nonce".into(), "n-123".into());
    let body = serde_json::to_vec(&c.sign(p)).unwrap();
    let url = format!("{}{PAY}", t.url);
    assert_eq!(post_raw(&url, &body).unwrap().code(), "SUCCESS");
    let replay = post_raw(&url, &body).unwrap();
    assert_eq!((replay.status, replay.code()), (401, "TIMESTAMP_EXPIRED"));
}

#[test]
fn sandbox_admin_endpoint_pays_fails_and_needs_the_token() {
    let t = TestNode::start();
    let c = t.client();
    let paid = c.pay("ADM-1", "2.00").data("pay_order_no").to_owned();
    let failed = c.pay("ADM-2", "2.00").data("pay_order_no").to_owned();
    let admin = |path: &str, token: &str| {
        let r = ureq::post(&format!("{}/admin/sandbox/{path}", t.url))
            .set("authorization", &format!("Bearer {token}"))
            .send_string("{}");
        match r {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(s, _)) => s,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(admin(&format!("orders/{paid}/pay"), "wrong"), 401);
    assert_eq!(admin(&format!("orders/{paid}/pay"), ADMIN_TOKEN), 200);
    assert_eq!(admin(&format!("orders/{failed}/fail"), ADMIN_TOKEN), 200);
    assert_eq!(admin("orders/P000000000000000000000/pay", ADMIN_TOKEN), 404);
    wait_status(&c, &paid, "SUCCESS", Duration::from_secs(10));
    wait_status(&c, &failed, "FAILED", Duration::from_secs(10));
    // A repeated pay request for the failed order keeps answering the failure.
    assert_eq!(c.pay("ADM-2", "2.00").code(), "CHANNEL_ERROR");
}

#[test]
fn a_channel_that_never_answers_leaves_the_order_paying_until_a_query_settles_it() {
    let t = TestNode::start_with(|c| {
        c.channels[0].timeout_ms = 300;
        c.orders.query_first_after_secs = 1;
        c.orders.query_interval_secs = 1;
    });
    let c = t.client();
    let sandbox = t.node().sandbox.clone().unwrap();
    sandbox.set_settings(paygate::sandbox::SandboxSettings { hang_rate: 1.0, ..Default::default() }).unwrap();
    let a = c.pay("HANG-1", "3.00");
    assert_eq!((a.status, a.code()), (502, "CHANNEL_ERROR"), "{a:?}");
    let q = c.query_no("HANG-1");
    assert_eq!(q.data("status"), "PAYING", "an unknown outcome is not a failure");
    let id = q.data("pay_order_no").to_owned();
    // The channel recovers; the buyer had paid; the active query finds out.
    sandbox.set_settings(Default::default()).unwrap();
    sandbox.pay(&id).unwrap();
    wait_status(&c, &id, "SUCCESS", Duration::from_secs(10));
}

#[test]
fn forged_callbacks_change_nothing() {
    let t = TestNode::start();
    let c = t.client();
    let id = c.pay("FORGE-1", "8.00").data("pay_order_no").to_owned();
    let forged = serde_json::json!({
        "pay_order_no": id, "trade_no": "SBX1", "trade_status": "SUCCESS",
        "amount_minor": "800", "reason": "", "notify_time": "1", "sign": "00"
    });
    let r = ureq::post(&format!("{}/callback/sandbox", t.url)).send_json(forged);
    assert!(matches!(r, Err(ureq::Error::Status(400, _))));
    // Well signed but the wrong amount: refused, and the order stays unpaid.
    let mut p = params(&[
        ("pay_order_no", &id),
        ("trade_no", "SBX2"),
        ("trade_status", "SUCCESS"),
        ("amount_minor", "1"),
        ("reason", ""),
        ("notify_time", "1"),
    ]);
    let sign = paygate_actors::signing::sign(
        &p,
        "sandbox-notify-secret-0123456789",
        paygate_actors::signing::SignType::HmacSha256,
    );
    p.insert("sign".into(), sign);
    let r = ureq::post(&format!("{}/callback/sandbox", t.url)).send_json(&p);
    assert!(matches!(r, Err(ureq::Error::Status(400, _))));
    assert_eq!(c.query_id(&id).data("status"), "PAYING");
}

#[test]
fn healthz_and_metrics_answer() {
    let t = TestNode::start();
    let r = ureq::get(&format!("{}/healthz", t.url)).call().unwrap();
    assert_eq!(r.status(), 200);
    t.client().pay("MET-1", "1.00");
    let m = ureq::get(&format!("{}/metrics", t.url)).call().unwrap().into_string().unwrap();
    assert!(m.contains("paygate_journal_fsync_seconds"), "{m}");
    assert!(m.contains("paygate_live_order_actors"), "{m}");
    // Counts are process-wide (other tests' nodes share the recorder): at least this pay.
    assert!(metric(&t.url, r#"paygate_channel_calls_total{channel="sandbox",outcome="ok"}"#) >= 1.0, "{m}");
    // Prometheus conventions: every family explained, every count a counter.
    for line in m.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        assert!(m.contains(&format!("# HELP {name} ")), "{name} has no HELP");
        if name.ends_with("_total") {
            assert_eq!(kind, "counter", "{name}");
        }
    }
}

#[test]
fn finished_orders_leave_memory_and_are_still_served_from_their_snapshot() {
    let t = TestNode::start_with(|c| c.orders.passivate_final_ms = 100);
    let c = t.client();
    let ids: Vec<String> =
        (0..20).map(|i| c.pay(&format!("PASS-{i}"), "1.00").data("pay_order_no").to_owned()).collect();
    for id in &ids {
        assert_eq!(c.close_id(id).data("status"), "CLOSED");
    }
    let registry = t.node().registry.clone();
    eventually(Duration::from_secs(10), || (registry.live_orders() == 0).then_some(()))
        .unwrap_or_else(|| panic!("{} order actors still live", registry.live_orders()));
    // Queries read snapshots without activating anything.
    for id in &ids {
        assert_eq!(c.query_id(id).data("status"), "CLOSED");
    }
    assert_eq!(registry.live_orders(), 0);
    // A command reactivates the order from its snapshot with its full state.
    let again = c.close_id(&ids[0]);
    assert_eq!((again.code(), again.data("status")), ("SUCCESS", "CLOSED"));
    assert_eq!(c.pay("PASS-3", "1.00").data("pay_order_no"), ids[3]);
}

#[test]
fn an_injected_channel_error_is_an_unknown_outcome_not_a_failure() {
    let t = TestNode::start();
    let c = t.client();
    let sandbox = t.node().sandbox.clone().unwrap();
    sandbox
        .set_settings(paygate::sandbox::SandboxSettings { error_rate: 1.0, latency_ms: 20, ..Default::default() })
        .unwrap();
    let a = c.pay("ERR-1", "1.00");
    assert_eq!((a.status, a.code()), (502, "CHANNEL_ERROR"));
    assert_eq!(c.query_no("ERR-1").data("status"), "PAYING");
    sandbox.set_settings(Default::default()).unwrap();
    // Repeating the request once the channel is healthy completes it.
    let again = c.pay("ERR-1", "1.00");
    assert_eq!((again.code(), again.data("status")), ("SUCCESS", "PAYING"));
    assert!(!again.data("qr_code").is_empty());
}

/// Waits until every order actor has left memory.
fn all_passivated(registry: &Registry<OrderActor>) {
    eventually(Duration::from_secs(10), || (registry.live_orders() == 0).then_some(()))
        .unwrap_or_else(|| panic!("{} order actors still live", registry.live_orders()))
}

/// Room in the read cache for one of these tests' orders and not two.
const ONE_ORDER: usize = 3_000;

#[test]
fn an_order_answers_alike_from_its_actor_the_read_cache_and_its_snapshot() {
    // A read cache of one order: the second order to passivate pushes the first out.
    let t = TestNode::start_with(|c| {
        c.orders.passivate_final_ms = 100;
        c.orders.read_cache_bytes = ONE_ORDER;
    });
    let c = t.client();
    let registry = t.node().registry.clone();
    let id = c.pay("ALIKE-1", "3.00").data("pay_order_no").to_owned();
    assert_eq!(c.query_id(&id).data("status"), "PAYING");
    assert_eq!(c.close_id(&id).data("status"), "CLOSED");
    // Each state is answered afresh: the answer kept for the paying state is not reused.
    let live = c.query_id(&id);
    assert_eq!(live.data("status"), "CLOSED");
    all_passivated(&registry);
    assert_eq!(c.query_id(&id).json, live.json, "from the read cache");
    c.close_id(c.pay("ALIKE-2", "3.00").data("pay_order_no"));
    all_passivated(&registry);
    assert_eq!(c.query_no("ALIKE-1").json, live.json, "from the snapshot");
}

#[test]
fn an_order_read_from_its_snapshot_is_kept_until_it_changes() {
    let t = TestNode::start_with(|c| {
        c.orders.passivate_final_ms = 100;
        c.orders.passivate_idle_secs = 1;
        c.orders.read_cache_bytes = ONE_ORDER;
    });
    let c = t.client();
    let registry = t.node().registry.clone();
    let kept = |id: &str| registry.read_cache.get(&PayOrderNo::parse(id).unwrap()).map(|o| o.status.as_str());
    let id = c.pay("KEPT-1", "3.00").data("pay_order_no").to_owned();
    all_passivated(&registry);
    // A second order pushes the first out of a cache of one.
    c.close_id(c.pay("KEPT-2", "3.00").data("pay_order_no"));
    all_passivated(&registry);
    assert_eq!(kept(&id), None);
    let misses = registry.read_cache.misses();
    // A merchant polls it: read from its snapshot (a miss), and kept for the next poll.
    assert_eq!(c.query_id(&id).data("status"), "PAYING");
    assert_eq!(kept(&id), Some("PAYING"));
    assert_eq!(c.query_no("KEPT-1").data("status"), "PAYING");
    assert_eq!(registry.read_cache.misses(), misses + 1, "the second poll was answered from the cache");
    let shown = metric(&t.url, "paygate_read_cache_misses_total ");
    assert!(shown >= (misses + 1) as f64, "the misses are on /metrics: {shown}");
    // The buyer pays: the order comes back to life, changes and leaves again; the kept
    // state is replaced, never answered stale.
    t.node().sandbox.as_ref().unwrap().pay(&id).unwrap();
    wait_status(&c, &id, "SUCCESS", Duration::from_secs(10));
    all_passivated(&registry);
    assert_eq!(kept(&id), Some("SUCCESS"));
    assert_eq!(c.query_id(&id).data("status"), "SUCCESS");
    assert_eq!(c.query_no("KEPT-1").data("status"), "SUCCESS");
}

/// Every shipped channel takes CNY only: a payment in another currency is refused by
/// name, never opened at a channel in CNY; one that a channel takes goes out in its own
/// currency.
#[test]
fn a_currency_no_channel_takes_is_refused_by_name_and_none_is_charged_as_cny() {
    let t = TestNode::start_with(|c| {
        for ch in c.channels.iter_mut().filter(|ch| ch.provider == "unionpay") {
            ch.currencies = vec!["CNY".into(), "HKD".into()];
        }
    });
    let c = t.client();
    for (method, currency) in [("ALIPAY", "USD"), ("WECHAT_PAY", "EUR"), ("SANDBOX", "JPY")] {
        let mut p = Client::pay_params(&format!("FX-{method}"), "7.00");
        p.insert("pay_method".into(), method.into());
        p.insert("currency".into(), currency.into());
        if currency == "JPY" {
            p.insert("amount".into(), "700".into());
        }
        let a = c.call(PAY, p);
        assert_eq!((a.status, a.code()), (503, "NO_AVAILABLE_CHANNEL"), "{a:?}");
        let message = a.json["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("no channel takes {currency} payments")), "{message}");
        assert_eq!(c.query_no(&format!("FX-{method}")).code(), "ORDER_NOT_FOUND", "nothing was opened");
    }
    // HKD through the channel configured for it: the front form carries HKD's code.
    let mut p = Client::pay_params("FX-UP-HKD", "7.00");
    p.insert("pay_method".into(), "UNION_PAY".into());
    p.insert("currency".into(), "HKD".into());
    let a = c.call(PAY, p);
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    let page = ureq::get(a.data("pay_url")).call().unwrap().into_string().unwrap();
    assert!(page.contains("name=\"currencyCode\" value=\"344\""), "HKD is 344, not CNY's 156");
    assert_eq!(c.query_no("FX-UP-HKD").data("currency"), "HKD");
}
