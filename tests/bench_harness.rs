//! `paygate bench` end to end, briefly: it must start its servers and the node, run
//! every phase in interleaved rounds, and print the JSON report the README documents.
//! Only that it works and what it reports is checked here; its figures are measured
//! with the release build, never asserted in tests.

use std::process::Command;

#[test]
fn a_short_bench_run_reports_every_phase_without_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["bench", "--duration", "2", "--rounds", "2", "--connections", "4", "--json"])
        .env("RUST_LOG", "error")
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
    ] {
        let v = report[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(v > 0.0, "{key} = {v}");
    }
    assert_eq!(report["errors"], serde_json::json!({}), "no unintended errors");
    assert_eq!(report["rounds"], 2);
    for phase in ["baseline", "floor", "authfloor", "pay", "query", "mix"] {
        let p = &report["phases"][phase];
        assert!(p["requests"].as_u64().unwrap_or(0) > 0, "{phase} measured nothing: {p}");
        assert!(p["server_cpu_us_per_request"].as_f64().unwrap_or(0.0) > 0.0, "{phase} has no CPU figure: {p}");
    }
    // Pay is charged for passivating its orders, so it costs more CPU than a query.
    let cpu = |phase: &str| report["phases"][phase]["server_cpu_us_per_request"].as_f64().unwrap_or(0.0);
    assert!(cpu("pay") > cpu("query"), "pay {} µs, query {} µs", cpu("pay"), cpu("query"));
}
