//! The built-in providers keep their trades across a restart of the node, as a real
//! provider (which never restarted) would: an order opened before a kill -9 can still be
//! paid after it, at the sandbox and at the simulated Alipay.

mod common;

use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(20);

fn admin_pay(node: &BinNode, id: &str) -> u16 {
    let url = format!("{}/admin/sandbox/orders/{id}/pay", node.url);
    match ureq::post(&url).set("authorization", "Bearer demo-admin-token").send_string("") {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_sandbox_order_opened_before_a_kill_9_is_paid_after_it() {
    let data = tempfile::tempdir().unwrap();
    let node = BinNode::start(data.path(), &[]);
    let c = node.client();
    let id = c.pay("RESTART-SBX-1", "3.00").data("pay_order_no").to_owned();
    // An opened trade is on the provider's disk within half a second.
    std::thread::sleep(Duration::from_millis(1200));
    node.kill9();

    let node = BinNode::start(data.path(), &[]);
    assert_eq!(admin_pay(&node, &id), 200, "the sandbox still knows the trade");
    let q = wait_status(&node.client(), &id, "SUCCESS", LONG);
    assert!(q.data("channel_trade_no").starts_with("SBX"));
    // Paid before the next kill: the payment is still there, and still paid once.
    node.kill9();
    let node = BinNode::start(data.path(), &[]);
    assert_eq!(admin_pay(&node, &id), 422, "the trade is paid already, not open again");
    assert_eq!(node.client().query_id(&id).data("status"), "SUCCESS");
}

#[test]
fn an_alipay_trade_opened_before_a_restart_is_paid_after_it() {
    let t = TestNode::start_with(|c| {
        if let Some(sim) = c.sim.as_mut() {
            sim.time_scale = 0.001;
        }
    });
    let a = t.client().pay_by("ALIPAY", "RESTART-ALI-1", "12.00");
    let id = a.data("pay_order_no").to_owned();
    let code_path = a.data("code_url").trim_start_matches(&sim_url(&t)).to_owned();
    assert!(code_path.starts_with("/alipay/qr/"), "{code_path}");
    let addr = t.node().addr.to_string();
    let mut t = t;
    t.node.take().unwrap().stop();
    // The same data directory and address, as after a restart (the in-process
    // simulator listens on another port now; its trades' notify_url is the node's).
    let copy = tempfile::tempdir().unwrap();
    copy_dir(t.dir.path(), copy.path());
    let t = TestNode::start_in(copy, |c| {
        c.server.listen = addr;
        if let Some(sim) = c.sim.as_mut() {
            sim.time_scale = 0.001;
        }
    });
    let code_url = format!("{}{code_path}", sim_url(&t));
    let page = ureq::get(&code_url).call().unwrap().into_string().unwrap();
    assert!(page.contains("12.00"), "the simulated Alipay still has the trade: {page}");
    let paid = ureq::post(&code_url).send_string("").unwrap().into_string().unwrap();
    assert!(paid.contains("TRADE_SUCCESS"), "{paid}");
    wait_status(&t.client(), &id, "SUCCESS", LONG);
}
