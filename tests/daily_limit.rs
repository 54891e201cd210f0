//! A channel's daily limit (seed table channel_config.daily_limit) over real HTTP: open
//! and paid orders count, closed ones stop counting, a repeated request counts once,
//! and a kill -9 does not reopen the day.

mod common;

use common::*;

/// The shipped configuration with the sandbox channel limited to 100.00 a day.
fn limited_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&config_dir(), dir.path());
    let path = dir.path().join("channels.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let limited =
        text.replacen("single_limit = \"50000.00\"", "single_limit = \"50000.00\"\ndaily_limit = \"100.00\"", 1);
    assert_ne!(limited, text);
    std::fs::write(&path, limited).unwrap();
    dir
}

#[test]
fn the_daily_limit_holds_across_repeats_closes_and_a_kill_9() {
    let (config, data) = (limited_config(), tempfile::tempdir().unwrap());
    let node = BinNode::start_with_config(config.path(), data.path(), &[]);
    let c = node.client();
    let first = c.pay("DAY-1", "60.00");
    assert_eq!(first.data("status"), "PAYING", "{first:?}");
    assert_eq!(c.pay("DAY-1", "60.00").data("pay_order_no"), first.data("pay_order_no"), "a repeat counts once");
    let over = c.pay("DAY-2", "50.00");
    assert_eq!((over.status, over.code()), (503, "NO_AVAILABLE_CHANNEL"), "110.00 would pass the limit");
    assert!(over.json["message"].as_str().unwrap().contains("SANDBOX"), "{over:?}");
    let second = c.pay("DAY-3", "40.00");
    assert_eq!(second.data("status"), "PAYING", "exactly 100.00");
    assert_eq!(c.pay("DAY-4", "0.01").code(), "NO_AVAILABLE_CHANNEL");

    // A closed order stops counting.
    assert_eq!(c.close_id(second.data("pay_order_no")).data("status"), "CLOSED");
    assert_eq!(c.pay("DAY-5", "30.00").data("status"), "PAYING");

    // After a kill -9 the day is rebuilt from the journal: 90.00 are taken.
    node.kill9();
    let node = BinNode::start_with_config(config.path(), data.path(), &[]);
    let c = node.client();
    assert_eq!(c.pay("DAY-6", "20.00").code(), "NO_AVAILABLE_CHANNEL");
    assert_eq!(c.pay("DAY-7", "10.00").data("status"), "PAYING");
    assert_eq!(c.pay("DAY-8", "0.01").code(), "NO_AVAILABLE_CHANNEL");
}

#[test]
fn a_bad_daily_limit_or_fee_rate_is_refused_at_start() {
    for (line, named) in [("daily_limit = \"-5\"", "daily_limit"), ("fee_rate = \"1.5\"", "fee_rate")] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&config_dir(), dir.path());
        let path = dir.path().join("channels.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("timeout_ms = 3000", &format!("timeout_ms = 3000\n{line}"), 1)).unwrap();
        let data = tempfile::tempdir().unwrap();
        let out = BinNode::command_with_config(dir.path(), data.path(), free_port(), &[]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{err}");
    }
}
