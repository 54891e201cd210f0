//! The merchant's daily bill: a real data directory holding yesterday's payments and
//! refunds (written through the real journal), a node started on it, the file
//! downloaded over HTTP.

mod common;

use std::time::Duration;

use common::*;
use paygate::load::recovery::{fresh_storage, write_orders};
use paygate_actors::money::{Currency, Money};
use paygate_actors::order::{OrderEvent, OrderSpec, PayMethod};
use paygate_actors::refund::{Refund, RefundEvent, RefundSpec};

const DAY_MS: i64 = 86_400_000;
const BEIJING_MS: i64 = 8 * 3_600_000;

/// The business date (Beijing time) of `ms`.
fn business_date(ms: i64) -> String {
    paygate_actors::time_fmt::date(ms + BEIJING_MS)
}

fn now_ms() -> i64 {
    now_secs() * 1000
}

/// Writes into `dir`: `paid` paid orders of the demo merchant at `at`, the first of them
/// with a refund of 0.40; one closed order, one still open, and one paid order of the
/// other merchant.
fn history(dir: &std::path::Path, at: i64, paid: u64) {
    let config = test_config(dir);
    let storage = fresh_storage(&config, dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let total = paid + 3;
    write_orders(&rt, &storage, total, move |id, i| {
        let merchant = if i == paid + 2 { LEGACY_MERCHANT } else { MERCHANT };
        let spec = OrderSpec {
            expire_minutes: Some(600),
            ..OrderSpec::new(
                merchant,
                format!("B{i}"),
                Money::from_minor(1_000, Currency::CNY),
                "bill",
                PayMethod::Sandbox,
            )
        };
        // The second order went through Alipay, whose fee is 0.6%.
        let channel = if i == 1 { "alipay-sim" } else { "sandbox" };
        let mut events = vec![
            OrderEvent::created(id.clone(), spec, channel.into(), at, 600 * 60_000),
            OrderEvent::ChannelAccepted { code_url: format!("sandbox://{id}"), channel_trade_no: None, at },
        ];
        match i {
            i if i < paid || i == paid + 2 => {
                events.push(OrderEvent::Paid { channel_trade_no: format!("T{i}"), amount_minor: 1_000, at });
                if i == 0 {
                    let refund_order_no = Refund::number(id, 0);
                    let spec = RefundSpec {
                        refund_no: "BR-1".into(),
                        amount_minor: 40,
                        reason: Some("a, b".into()),
                        notify_url: None,
                    };
                    events.push(OrderEvent::Refund {
                        refund_order_no: refund_order_no.clone(),
                        event: RefundEvent::Requested { spec, at },
                    });
                    events.push(OrderEvent::Refund { refund_order_no, event: RefundEvent::Succeeded { at } });
                }
            }
            i if i == paid => events.push(OrderEvent::Closed { at }),
            _ => {}
        }
        vec![(1, events)]
    })
    .unwrap();
    storage.close();
}

fn download(c: &Client, date: &str) -> ureq::Response {
    let body = serde_json::to_vec(&c.sign(params(&[("bill_date", date)]))).unwrap();
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    match agent.post(&format!("{}/api/v1/bill/download", c.base)).send_bytes(&body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn yesterdays_bill_lists_every_final_payment_and_refund_of_the_merchant() {
    let dir = tempfile::tempdir().unwrap();
    let yesterday = now_ms() - DAY_MS;
    history(dir.path(), yesterday, 3);
    let t = TestNode::start_in(dir, |_| {});
    let c = t.client();
    let r = download(&c, &business_date(yesterday));
    assert_eq!(r.status(), 200);
    assert!(r.content_type().starts_with("text/csv"));
    assert!(r.header("content-disposition").unwrap().contains(".csv"));
    let text = r.into_string().unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header[0], "type");
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let kinds: Vec<(&str, &str)> = rows.iter().map(|r| (&r[col("type")], &r[col("status")])).collect();
    let count = |k: (&str, &str)| kinds.iter().filter(|x| **x == k).count();
    assert_eq!(count(("PAY", "SUCCESS")), 3, "{text}");
    assert_eq!(count(("PAY", "CLOSED")), 1, "{text}");
    assert_eq!(count(("REFUND", "SUCCESS")), 1, "{text}");
    assert_eq!(rows.len(), 5, "the open order and the other merchant's are not in it: {text}");
    let refund = rows.iter().find(|r| &r[col("type")] == "REFUND").unwrap();
    assert_eq!((&refund[col("refund_no")], &refund[col("refund_amount")]), ("BR-1", "0.40"));
    assert_eq!(&refund[col("reason")], "a, b", "quoted, not split");
    let fees: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| &r[col("status")] == "SUCCESS" && &r[col("type")] == "PAY")
        .map(|r| (&r[col("channel")], &r[col("fee")]))
        .collect();
    assert!(fees.contains(&("alipay-sim", "0.06")), "0.6% of 10.00: {fees:?}");
    assert_eq!(fees.iter().filter(|f| **f == ("sandbox", "0.00")).count(), 2, "{fees:?}");

    // Today has not ended; a date must be a date.
    let today = download(&c, &business_date(now_ms()));
    assert_eq!(today.status(), 400);
    assert!(today.into_string().unwrap().contains("has not ended"));
    let bad = download(&c, "2024-13-01");
    assert_eq!(bad.status(), 400);
    // A day with nothing is a file with only its header.
    let empty = download(&c, "2024-01-01").into_string().unwrap();
    assert_eq!(empty.lines().count(), 1, "{empty}");
}

#[test]
fn a_large_day_streams() {
    let dir = tempfile::tempdir().unwrap();
    let yesterday = now_ms() - DAY_MS;
    history(dir.path(), yesterday, 30_000);
    let t = TestNode::start_in(dir, |c| c.storage.cache_bytes = 64 << 20);
    let r = download(&t.client(), &business_date(yesterday));
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "sent as it is read, not assembled first");
    assert!(r.header("content-length").is_none());
    let text = r.into_string().unwrap();
    assert_eq!(text.lines().count(), 1 + 30_000 + 1 + 1, "header, the paid, the closed, the refund");
}
