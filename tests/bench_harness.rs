//! `paygate bench` end to end, briefly: it must start its servers and the node, run
//! every phase in interleaved rounds, and print the JSON report docs/performance.md describes.
//! Only that it works and what it reports is checked here; its figures are measured
//! with the release build, never asserted in tests.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use paygate::storage::codec::decode_record;
use paygate::storage::segment::{list_segments, read_segment, record_at, segment_path, SEGMENT_HEADER};
use paygate_actors::order::OrderEvent;
use paygate_actors::ports::Record;

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_short_bench_run_reports_every_phase_without_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["bench", "--duration", "2", "--rounds", "2", "--connections", "4", "--json"])
        .env("RUST_LOG", "error")
        // A read cache far smaller than the orders the pay slices make: most queries
        // read the views, which the report must show.
        .env("PAYGATE_ORDERS__READ_CACHE_BYTES", "131072")
        .output()
        .expect("run paygate bench");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    for key in [
        "pay_rps",
        "query_rps",
        "baseline_rps",
        "pay_ratio",
        "query_ratio",
        "pay_p99_ms",
        "query_p99_ms",
        "rss_mb",
        "floor_ratio",
        "auth_floor_ratio",
        "pay_floor_ratio",
        "pay_to_pay_floor",
        "pay_cpu_budget_us",
    ] {
        let v = report[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(v > 0.0, "{key} = {v}");
    }
    assert_eq!(report["errors"], serde_json::json!({}), "no unintended errors");
    assert_eq!(report["rounds"], 2);
    for phase in ["baseline", "floor", "payfloor", "authfloor", "pay", "query", "mix"] {
        let p = &report["phases"][phase];
        assert!(p["requests"].as_u64().unwrap_or(0) > 0, "{phase} measured nothing: {p}");
        assert!(p["server_cpu_us_per_request"].as_f64().unwrap_or(0.0) > 0.0, "{phase} has no CPU figure: {p}");
        assert!(p["generator_cpu_us_per_request"].as_f64().unwrap_or(0.0) > 0.0, "{phase}: no generator CPU: {p}");
    }
    // The floors that authenticate must accept the generator's signed requests: a floor
    // answering errors would bound nothing.
    for phase in ["payfloor", "authfloor"] {
        assert_eq!(report["phases"][phase]["errors"], serde_json::json!({}), "{phase} refused requests");
    }
    let share = report["query_views_share"].as_f64().unwrap_or_else(|| panic!("no query_views_share: {report}"));
    assert!((0.5..=1.0).contains(&share), "with 64 kept orders most queries read the views, not {share}");
    // Pay is charged for passivating its orders, so it costs more CPU than a query.
    let cpu = |phase: &str| report["phases"][phase]["server_cpu_us_per_request"].as_f64().unwrap_or(0.0);
    assert!(cpu("pay") > cpu("query"), "pay {} µs, query {} µs", cpu("pay"), cpu("query"));
}

/// The pay floor does what it claims, over real HTTP with real signatures: a signed pay
/// becomes a PAYING order answered with its QR code, a bad one is refused as the node
/// refuses it, and the order's creation and acceptance are in its journal.
#[test]
fn the_pay_floor_authenticates_validates_journals_and_answers_a_pay() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["bench-baseline", "--listen", &format!("127.0.0.1:{port}"), "--workers", "1", "--pay"])
        .arg("--journal-dir")
        .arg(&journal)
        .arg("--auth-config")
        .arg(config_dir())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the pay floor");
    let _floor = Killed(child);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    eventually(Duration::from_secs(30), || std::net::TcpStream::connect(addr).ok()).expect("the floor listens");
    let client = Client::new(&format!("http://{addr}"), MERCHANT, SECRET);

    let paid = client.pay("FLOOR-1", "12.34");
    assert_eq!(paid.code(), "SUCCESS", "{paid:?}");
    assert_eq!((paid.data("status"), paid.data("order_no"), paid.data("amount")), ("PAYING", "FLOOR-1", "12.34"));
    assert!(paid.data("qr_code").starts_with("data:image/png;base64,"), "{paid:?}");
    let id = paid.data("pay_order_no").to_owned();
    assert!(paid.data("code_url").ends_with(&id), "{paid:?}");

    let bad_amount = client.call("/api/v1/payment/pay", Client::pay_params("FLOOR-2", "-1"));
    assert_eq!(bad_amount.code(), "INVALID_PARAM", "{bad_amount:?}");
    let mut forged = client.sign(Client::pay_params("FLOOR-3", "1.00"));
    forged.insert("amount".into(), "100.00".into());
    let forged = post_raw(&format!("http://{addr}/api/v1/payment/pay"), &serde_json::to_vec(&forged).unwrap());
    assert_eq!(forged.map(|a| a.code().to_owned()).as_deref(), Some("SIGN_ERROR"));

    // Answered means durable: the record is in the journal now, before the floor stops.
    let mut events = Vec::new();
    for n in list_segments(&journal).unwrap() {
        let buf = read_segment(&segment_path(&journal, n)).unwrap();
        let mut at = SEGMENT_HEADER;
        while let Some(frame) = record_at(&buf, at) {
            let Record::Order { pay_order_no, events: e, .. } = decode_record(frame.payload).unwrap() else {
                panic!("the pay floor journals only orders");
            };
            events.extend(e.into_iter().map(|e| (pay_order_no.as_str().to_owned(), e)));
            at = frame.next;
        }
    }
    assert_eq!(events.len(), 2, "one order, created and accepted: {events:?}");
    assert!(events.iter().all(|(no, _)| *no == id), "{events:?}");
    assert!(matches!(events[0].1, OrderEvent::Created { .. }), "{events:?}");
}
