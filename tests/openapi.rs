//! `/openapi.json` is kept true: its paths answer, its enums are the code's enums, the
//! request fields it calls required are refused when missing, and the response fields
//! it lists are exactly what the server sends.

mod common;

use std::collections::BTreeSet;

use common::*;
use paygate_actors::error::ErrorCode;
use paygate_actors::money::Currency;
use paygate_actors::order::{OrderStatus, PayMethod, PayScene};
use serde_json::Value;

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

fn set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_owned).collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_openapi_document_matches_the_server() {
    let t = TestNode::start();
    let doc: Value = ureq::get(&format!("{}/openapi.json", t.url)).call().unwrap().into_json().unwrap();
    let schemas = &doc["components"]["schemas"];

    // Enums are the code's enums.
    let codes = strings(&schemas["Error"]["properties"]["code"]["enum"]);
    assert_eq!(codes, set(ErrorCode::ALL.iter().map(|c| c.as_str())));
    assert_eq!(strings(&schemas["Status"]["enum"]), set(OrderStatus::ALL.iter().map(|s| s.as_str())));
    let pay = &schemas["PayRequest"]["allOf"][1];
    assert_eq!(strings(&pay["properties"]["pay_method"]["enum"]), set(PayMethod::ALL.iter().map(|m| m.as_str())));
    assert_eq!(strings(&pay["properties"]["currency"]["enum"]), set(Currency::ALL.iter().map(|c| c.code())));
    let offered = pay["allOf"].as_array().unwrap().iter().find_map(|rule| {
        let alternatives = rule["anyOf"].as_array()?;
        alternatives.iter().all(|a| a["properties"]["pay_scene"].is_object()).then_some(alternatives)
    });
    let offered: Vec<(String, BTreeSet<String>)> = offered
        .expect("the pay_scene each pay_method offers")
        .iter()
        .map(|a| {
            let method = strings(&a["properties"]["pay_method"]["enum"]).into_iter().next().unwrap();
            (method, strings(&a["properties"]["pay_scene"]["enum"]))
        })
        .collect();
    let expected: Vec<(String, BTreeSet<String>)> = PayMethod::ALL
        .iter()
        .map(|&m| (m.as_str().to_owned(), set(PayScene::offered_by(m).iter().map(|s| s.as_str()))))
        .collect();
    assert_eq!(offered, expected);

    // Every documented path answers a signed request (not "no such endpoint").
    let c = t.client();
    for path in keys(&doc["paths"]) {
        let a = c.call(&path, Client::pay_params("DOC-PATH", "1.00"));
        assert_ne!(a.code(), "NOT_FOUND", "{path}");
    }

    // Fields documented as required are refused when missing, naming the field.
    let signed_required = strings(&schemas["Signed"]["required"]);
    let pay_required = strings(&pay["required"]);
    for field in signed_required.iter().chain(&pay_required) {
        let mut p = c.sign(Client::pay_params("DOC-REQ", "1.00"));
        p.remove(field);
        if !signed_required.contains(field) {
            p = c.sign({
                p.remove("sign");
                p
            });
        }
        let a = post_raw(&format!("{}/api/v1/payment/pay", t.url), &serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(a.code(), "INVALID_PARAM", "{field}: {a:?}");
        assert!(a.json["message"].as_str().unwrap().contains(field.as_str()), "{field}: {a:?}");
    }

    // Response fields are exactly the documented ones.
    let paid = c.pay("DOC-1", "1.00");
    assert_eq!(keys(&paid.json["data"]), strings(&schemas["PayData"]["required"]));
    assert_eq!(keys(&paid.json), strings(&schemas["PayAnswer"]["required"]));
    let queried = c.query_id(paid.data("pay_order_no"));
    assert_eq!(keys(&queried.json["data"]), strings(&schemas["OrderData"]["required"]));
    // A notification as documented (its endpoint is a receiver on loopback that never
    // answers: the fields are there whatever the outcome).
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut p = Client::pay_params("DOC-NOTIFY", "1.00");
    p.insert("notify_url".into(), format!("http://{}/", sink.local_addr().unwrap()));
    let id = c.call("/api/v1/payment/pay", p).data("pay_order_no").to_owned();
    assert_eq!(c.close_id(&id).code(), "SUCCESS");
    let listed = eventually(std::time::Duration::from_secs(10), || {
        let a = c.call("/api/v1/notify/query", params(&[("pay_order_no", &id)]));
        a.json["data"]["notifications"].as_array().is_some_and(|n| !n.is_empty()).then_some(a)
    })
    .unwrap();
    assert_eq!(keys(&listed.json["data"]), strings(&schemas["NotifyQueryData"]["required"]));
    let n = &listed.json["data"]["notifications"][0];
    assert_eq!(keys(n), strings(&schemas["Notification"]["required"]));
    assert!(strings(&schemas["Notification"]["properties"]["status"]["enum"]).contains(n["status"].as_str().unwrap()));
    // A refund as documented, its statuses the code's.
    assert_eq!(
        strings(&schemas["RefundData"]["properties"]["status"]["enum"]),
        set(paygate_actors::refund::RefundStatus::ALL.iter().map(|s| s.as_str()))
    );
    let paid = c.pay("DOC-REFUND", "1.00").data("pay_order_no").to_owned();
    sandbox_pay(&t.url, &paid);
    wait_status(&c, &paid, "SUCCESS", std::time::Duration::from_secs(10));
    let p = params(&[("pay_order_no", &paid), ("refund_no", "DOC-R1"), ("refund_amount", "0.40")]);
    let refunded = c.call("/api/v1/refund/apply", p);
    assert_eq!(keys(&refunded.json["data"]), strings(&schemas["RefundData"]["required"]));
    let refund_required = strings(&schemas["RefundRequest"]["allOf"][1]["required"]);
    for field in &refund_required {
        let mut p = params(&[("pay_order_no", &paid), ("refund_no", "DOC-R2"), ("refund_amount", "0.10")]);
        p.remove(field);
        let a = c.call("/api/v1/refund/apply", p);
        assert_eq!(a.code(), "INVALID_PARAM", "{field}: {a:?}");
        assert!(a.json["message"].as_str().unwrap().contains(field.as_str()), "{field}: {a:?}");
    }
    // Listings answer the documented fields.
    let listed = c.call("/api/v1/payment/list", params(&[("start_time", "2020-01-01T00:00:00Z"), ("limit", "1")]));
    let list_schema = &schemas["OrderListAnswer"]["properties"]["data"];
    assert_eq!(keys(&listed.json["data"]), strings(&list_schema["required"]));
    assert_eq!(keys(&listed.json["data"]["orders"][0]), strings(&schemas["OrderData"]["required"]));
    let listed = c.call("/api/v1/refund/list", params(&[("start_time", "2020-01-01T00:00:00Z")]));
    let list_schema = &schemas["RefundListAnswer"]["properties"]["data"];
    assert_eq!(keys(&listed.json["data"]), strings(&list_schema["required"]));
    let error = c.query_id("P000000000000000000000");
    assert_eq!(keys(&error.json), strings(&schemas["Error"]["required"]));
}
