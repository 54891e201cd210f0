//! `paygate client` as a user meets it: a node that is not running, a pipe closed early,
//! options after the subcommand, amounts that look like flags, errors that name limits.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

fn paygate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_node_that_is_not_running_is_named_with_how_to_start_one() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = paygate(&["client", "pay", "--amount", "1.00", "--url", &url]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("the node at {url} is not reachable")), "{err}");
    assert!(err.contains("serve"), "says how to start one: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let t = TestNode::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["client", "pay", "--amount", "1.00", "--url", &t.url])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As `| head -0` would: the reader is gone before the answer is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(t.order_count(), 1, "the payment was made all the same");
}

#[test]
fn options_go_after_the_subcommand_and_amounts_are_judged_by_the_node() {
    let t = TestNode::start();
    // A negative amount reaches the node, which says what is wrong with it.
    let out = paygate(&["client", "pay", "--amount", "-1", "--url", &t.url]);
    assert_eq!(out.status.code(), Some(1));
    let answer = text(&out.stdout);
    assert!(answer.contains("INVALID_PARAM") && answer.contains("amount"), "{answer}");
    // Over every channel's single limit: the answer names the limit.
    let out = paygate(&["client", "pay", "--amount", "60000.00", "--url", &t.url]);
    let answer = text(&out.stdout);
    assert!(answer.contains("60000.00 exceeds the single-payment limit 50000.00 of every SANDBOX channel"), "{answer}");
    // Either number names an order; neither is refused by the parser, naming both.
    let out = paygate(&["client", "pay", "--amount", "2.00", "--order-no", "CLI-ORDER-1", "--url", &t.url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = paygate(&["client", "query", "--order-no", "CLI-ORDER-1", "--url", &t.url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("PAYING"));
    let out = paygate(&["client", "query", "--url", &t.url]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("--pay-order-no") && err.contains("--order-no"), "{err}");
}
