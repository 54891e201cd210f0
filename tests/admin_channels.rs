//! The operator's view of channels: `GET /admin/channels` shows each channel's
//! configuration and live state; `POST /admin/channels/{code}` disables, enables or
//! re-weights one while the node runs, journaled so that it holds after a restart.

mod common;

use common::*;
use serde_json::{json, Value};

fn channel<'a>(list: &'a Value, code: &str) -> &'a Value {
    list["data"]["channels"].as_array().unwrap().iter().find(|c| c["code"] == code).unwrap()
}

#[test]
fn operators_see_channels_and_change_them_live_and_for_good() {
    let t = TestNode::start();
    let c = t.client();
    assert_eq!(c.pay_by("ALIPAY", "AC-1", "2.00").data("channel"), "alipay-sim");

    let (status, list) = admin(&t, "GET", "/admin/channels", None);
    assert_eq!(status, 200, "{list}");
    let main = channel(&list, "alipay-sim");
    for field in ["provider", "methods", "weight", "status", "breaker", "success_rate", "latency_p95_ms", "day_volume"]
    {
        assert!(!main[field].is_null(), "{field}: {main}");
    }
    assert_eq!(main["provider"], "alipay");
    assert_eq!(main["methods"], json!(["ALIPAY"]));
    assert_eq!(main["weight"], 100);
    assert_eq!(main["status"], "ENABLED");
    assert_eq!(main["breaker"], "CLOSED");
    assert_eq!(main["day_volume"], "2.00", "the open order counts against the day");
    let sim = sim_url(&t);
    assert!(main["gateway_url"].as_str().unwrap().starts_with(&sim), "{main}");
    assert_eq!(channel(&list, "sandbox")["gateway_url"], "", "in process");

    // Disabled: payments go to the sibling account.
    let (status, changed) = admin(&t, "POST", "/admin/channels/alipay-sim", Some(json!({ "status": "DISABLED" })));
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["data"]["status"], "DISABLED");
    let moved = eventually(std::time::Duration::from_secs(5), || {
        let a = c.pay_by("ALIPAY", &format!("AC-{}", rand_suffix()), "1.00");
        (a.data("channel") == "alipay-sim-2").then_some(a)
    });
    assert!(moved.is_some(), "payments move to the enabled account");

    // Re-weighted: the sibling is now preferred even once the first is enabled again.
    let (status, _) = admin(&t, "POST", "/admin/channels/alipay-sim-2", Some(json!({ "weight": 500 })));
    assert_eq!(status, 200);
    let (status, _) = admin(&t, "POST", "/admin/channels/alipay-sim", Some(json!({ "status": "ENABLED" })));
    assert_eq!(status, 200);
    let (status, _) = admin(&t, "POST", "/admin/channels/wechat-sim", Some(json!({ "status": "DISABLED" })));
    assert_eq!(status, 200);

    // Refused: unknown fields, unknown values, nothing to change, unknown channel, no token.
    for bad in [json!({ "status": "OFF" }), json!({ "bogus": 1 }), json!({}), json!({ "weight": -1 })] {
        let (status, answer) = admin(&t, "POST", "/admin/channels/alipay-sim", Some(bad.clone()));
        assert_eq!((status, answer["code"].as_str()), (400, Some("INVALID_PARAM")), "{bad}: {answer}");
    }
    assert_eq!(admin(&t, "POST", "/admin/channels/nope", Some(json!({ "weight": 1 }))).0, 404);
    assert_eq!(admin(&t, "DELETE", "/admin/channels/alipay-sim", None).0, 405);
    let anonymous = ureq::get(&format!("{}/admin/channels", t.url)).call();
    assert!(matches!(anonymous, Err(ureq::Error::Status(401, _))));

    // After a restart the settings hold: read back from the journal.
    let t = t.restart(|_| {});
    let (_, list) = admin(&t, "GET", "/admin/channels", None);
    assert_eq!(channel(&list, "alipay-sim-2")["weight"], 500);
    assert_eq!(channel(&list, "alipay-sim")["status"], "ENABLED");
    assert_eq!(channel(&list, "alipay-sim")["weight"], 100);
    assert_eq!(channel(&list, "wechat-sim")["status"], "DISABLED");
    let c = t.client();
    assert_eq!(c.pay_by("ALIPAY", "AC-AFTER", "1.00").data("channel"), "alipay-sim-2");
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("M{}", N.fetch_add(1, Ordering::Relaxed))
}

#[test]
fn operators_change_a_merchants_routing_live_and_for_good() {
    const PATH: &str = "/admin/merchants/M20240101001/routing";
    let t = TestNode::start();
    let c = t.client();
    let (status, routing) = admin(&t, "GET", PATH, None);
    assert_eq!(status, 200, "{routing}");
    assert_eq!(routing["data"]["routing"]["ALIPAY"], "priority", "{routing}");
    assert_eq!(c.pay_by("ALIPAY", "RT-0", "1.00").data("channel"), "alipay-sim");

    // Weighted from the next payment on: the lighter account (50 to 100) takes a share.
    let change = json!({ "method": "ALIPAY", "strategy": "weighted" });
    let (status, routing) = admin(&t, "POST", PATH, Some(change));
    assert_eq!((status, &routing["data"]["routing"]["ALIPAY"]), (200, &json!("weighted")), "{routing}");
    let channels: Vec<String> =
        (1..=30).map(|i| c.pay_by("ALIPAY", &format!("RT-{i}"), "1.00").data("channel").to_owned()).collect();
    assert!(channels.iter().any(|ch| ch == "alipay-sim-2"), "{channels:?}");
    assert!(channels.iter().all(|ch| ch.starts_with("alipay-sim")), "{channels:?}");

    // Refused: what the change cannot mean, and who may not make it.
    for (body, field) in [
        (json!({ "method": "PAYPAL", "strategy": "weighted" }), "method"),
        (json!({ "method": "ALIPAY", "strategy": "cheapest" }), "strategy"),
        (json!({ "method": "ALIPAY" }), "body"),
    ] {
        let (status, answer) = admin(&t, "POST", PATH, Some(body));
        assert_eq!((status, answer["code"].as_str()), (400, Some("INVALID_PARAM")), "{answer}");
        assert!(answer["message"].as_str().unwrap().contains(field), "{answer}");
    }
    let (status, _) = admin(
        &t,
        "POST",
        "/admin/merchants/NOBODY/routing",
        Some(json!({ "method": "ALIPAY", "strategy": "weighted" })),
    );
    assert_eq!(status, 404);
    let anonymous = ureq::get(&format!("{}{PATH}", t.url)).call();
    assert!(matches!(anonymous, Err(ureq::Error::Status(401, _))));

    // After a restart the change holds: read back from the journal.
    let t = t.restart(|_| {});
    let (_, routing) = admin(&t, "GET", PATH, None);
    assert_eq!(routing["data"]["routing"]["ALIPAY"], "weighted", "{routing}");
    let (_, routing) = admin(&t, "POST", PATH, Some(json!({ "method": "ALIPAY", "strategy": "priority" })));
    assert_eq!(routing["data"]["routing"]["ALIPAY"], "priority");
    let c = t.client();
    for i in 31..=40 {
        assert_eq!(c.pay_by("ALIPAY", &format!("RT-{i}"), "1.00").data("channel"), "alipay-sim");
    }
}
