//! Merchant notifications over real loopback HTTP: signed bodies, the retry schedule,
//! DEAD and resend, the breaker, one merchant not delaying another, the address guard,
//! and delivery surviving kill -9.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use paygate::config::Config;
use paygate_actors::signing::{self, SignType};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// A node whose notifications retry fast: `delays` millis between attempts.
fn fast(delays: &[i64]) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| {
        c.notify.retry_delays_ms = delays.to_vec();
        c.notify.timeout_ms = 2_000;
    }
}

/// Pays `order_no` with `notify_url` and has the sandbox's buyer pay it.
fn paid(client: &Client, order_no: &str, notify_url: &str) -> String {
    let mut p = Client::pay_params(order_no, "12.34");
    p.insert("notify_url".into(), notify_url.into());
    let a = client.call("/api/v1/payment/pay", p);
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    let id = a.data("pay_order_no").to_owned();
    sandbox_pay(&client.base, &id);
    id
}

fn notifications(client: &Client, pay_order_no: &str) -> Vec<Value> {
    let a = client.call("/api/v1/notify/query", params(&[("pay_order_no", pay_order_no)]));
    assert_eq!(a.code(), "SUCCESS", "{a:?}");
    a.json["data"]["notifications"].as_array().unwrap().clone()
}

/// Waits until the order's only notification has `status`.
fn wait_notification(client: &Client, pay_order_no: &str, status: &str) -> Value {
    let mut last = None;
    eventually(WAIT, || {
        let list = notifications(client, pay_order_no);
        last = Some(list.clone());
        list.first().filter(|n| n["status"] == status).cloned()
    })
    .unwrap_or_else(|| panic!("no {status} notification: {last:?}"))
}

fn verify_both(r: &Received, secret: &str, sign_type: SignType) -> BTreeMap<String, String> {
    let fields = r.json();
    assert!(signing::verify(&fields, secret, sign_type), "sign field: {fields:?}");
    let header = r.headers.get("paygate-signature").expect("Paygate-Signature header");
    assert!(signing::verify_payload_signature(secret, header, &r.body, now_secs(), 300), "{header}");
    fields
}

#[test]
fn a_paid_order_is_notified_once_signed_both_ways() {
    let t = TestNode::start();
    let ep = MerchantEndpoint::start(Reply::Status(200, "success\n"));
    let client = t.client();
    let id = paid(&client, "N-PAID", &ep.url);
    let got = ep.wait_for(1, WAIT);
    let fields = verify_both(&got[0], SECRET, SignType::HmacSha256);
    assert_eq!(fields["status"], "SUCCESS");
    assert_eq!(fields["notify_type"], "PAY");
    assert_eq!(fields["amount"], "12.34");
    assert_eq!(fields["currency"], "CNY");
    assert_eq!(fields["order_no"], "N-PAID");
    assert_eq!(fields["pay_order_no"], id);
    assert_eq!(fields["merchant_id"], MERCHANT);
    assert!(!fields["channel_trade_no"].is_empty() && !fields["paid_time"].is_empty(), "{fields:?}");
    assert_eq!(got[0].headers["paygate-notify-id"], fields["notify_id"]);

    let n = wait_notification(&client, &id, "DELIVERED");
    assert_eq!(n["notify_id"], fields["notify_id"].as_str());
    assert_eq!(n["attempts_total"], 1);
    assert_eq!(n["attempts"][0]["http_status"], 200);
    assert_eq!(n["attempts"][0]["answer"], "success\n");
    assert_eq!(n["attempts"][0]["acknowledged"], true);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ep.count(), 1, "an acknowledged notification is not sent again");

    // Closing an unpaid order is a final outcome too.
    let mut p = Client::pay_params("N-CLOSED", "1.00");
    p.insert("notify_url".into(), ep.url.clone());
    let closed = client.call("/api/v1/payment/pay", p).data("pay_order_no").to_owned();
    assert_eq!(client.close_id(&closed).code(), "SUCCESS");
    let got = ep.wait_for(2, WAIT);
    assert_eq!(verify_both(&got[1], SECRET, SignType::HmacSha256)["status"], "CLOSED");
    // An order that is still open owes nothing yet.
    let mut p = Client::pay_params("N-OPEN", "1.00");
    p.insert("notify_url".into(), ep.url.clone());
    let open = client.call("/api/v1/payment/pay", p).data("pay_order_no").to_owned();
    assert!(notifications(&client, &open).is_empty());
    let resend = client.call("/api/v1/notify/resend", params(&[("pay_order_no", &open)]));
    assert_eq!(resend.code(), "ORDER_STATUS_ERROR", "{resend:?}");
    // Another merchant's order is not found.
    let other = Client::new(&t.url, LEGACY_MERCHANT, LEGACY_SECRET);
    let p = params(&[("pay_order_no", &id), ("sign_type", "MD5")]);
    assert_eq!(other.call("/api/v1/notify/query", p).code(), "ORDER_NOT_FOUND");
}

#[test]
fn legacy_merchants_are_signed_with_md5_and_the_default_url_is_used() {
    let ep = MerchantEndpoint::start(Reply::Status(200, "SUCCESS"));
    let url = ep.url.clone();
    let t = TestNode::start_with(move |c| {
        let m = c.merchants.iter_mut().find(|m| m.merchant_id == LEGACY_MERCHANT).unwrap();
        m.allow_private_notify = true;
        m.notify_url = Some(url);
    });
    let client = Client::new(&t.url, LEGACY_MERCHANT, LEGACY_SECRET);
    let mut p = Client::pay_params("N-MD5", "1.00");
    p.insert("sign_type".into(), "MD5".into());
    let id = client.call("/api/v1/payment/pay", p).data("pay_order_no").to_owned();
    sandbox_pay(&t.url, &id);
    let got = ep.wait_for(1, WAIT);
    let fields = verify_both(&got[0], LEGACY_SECRET, SignType::Md5);
    assert_eq!(fields["sign_type"], "MD5");
    assert_eq!(fields["pay_order_no"], id);
}

#[test]
fn failures_follow_the_schedule_then_dead_then_resend_delivers() {
    // A breaker that would open on this test's run of failures is another test's.
    let t = TestNode::start_with(|c| {
        fast(&[300, 600])(c);
        c.notify.breaker_failures = 1_000;
    });
    let ep = MerchantEndpoint::start(Reply::Status(500, "try later"));
    let client = t.client();
    let id = paid(&client, "N-RETRY", &ep.url);
    let got = ep.wait_for(3, WAIT);
    // Delays of 300 and 600 ms, each within ±10%: never early.
    let gap = |i: usize| got[i].at.duration_since(got[i - 1].at);
    assert!(gap(1) >= Duration::from_millis(260), "{:?}", gap(1));
    assert!(gap(2) >= Duration::from_millis(530), "{:?}", gap(2));
    let ids: Vec<String> = got.iter().map(|r| r.json()["notify_id"].clone()).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one notify_id on every attempt: {ids:?}");

    let n = wait_notification(&client, &id, "DEAD");
    assert_eq!(n["attempts_total"], 3);
    assert!(n["next_attempt_time"].is_null());
    for a in n["attempts"].as_array().unwrap() {
        assert_eq!(a["http_status"], 500);
        assert_eq!(a["answer"], "try later");
        assert_eq!(a["acknowledged"], false);
    }
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(ep.count(), 3, "a DEAD notification is not attempted again by itself");
    assert!(metric(&t.url, "paygate_notify_dead_total") >= 1.0);

    // The merchant's endpoint is back: it resends, and the same notify_id arrives.
    ep.set_default(Reply::Status(200, "SUCCESS"));
    let resent = client.call("/api/v1/notify/resend", params(&[("order_no", "N-RETRY")]));
    assert_eq!(resent.code(), "SUCCESS", "{resent:?}");
    let got = ep.wait_for(4, WAIT);
    assert_eq!(got[3].json()["notify_id"], ids[0]);
    let n = wait_notification(&client, &id, "DELIVERED");
    assert_eq!(n["attempts_total"], 4);

    // An operator resends every DEAD notification of a merchant at once.
    ep.set_default(Reply::Status(503, "down"));
    let a = paid(&client, "N-DEAD-A", &ep.url);
    let b = paid(&client, "N-DEAD-B", &ep.url);
    wait_notification(&client, &a, "DEAD");
    wait_notification(&client, &b, "DEAD");
    ep.set_default(Reply::Status(200, "SUCCESS"));
    let answer = ureq::post(&format!("{}/admin/notify/resend", t.url))
        .set("authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .send_string(&format!(r#"{{"merchant_id":"{MERCHANT}"}}"#))
        .unwrap()
        .into_json::<Value>()
        .unwrap();
    assert_eq!(answer["data"]["resent"], 2, "{answer}");
    wait_notification(&client, &a, "DELIVERED");
    wait_notification(&client, &b, "DELIVERED");
    let unauthorized = ureq::post(&format!("{}/admin/notify/resend", t.url)).send_string("{}");
    assert!(matches!(unauthorized, Err(ureq::Error::Status(401, _))));
}

/// A node whose breaker opens after two failures in a row for `open_ms`, one delivery
/// at a time, with the demo merchant renamed `merchant_id` (metrics are one registry
/// for every node in this process), and that merchant's endpoint failing every call.
fn breaker_node(merchant_id: &'static str, open_ms: i64) -> (TestNode, MerchantEndpoint, Client) {
    let t = TestNode::start_with(move |c| {
        c.notify.retry_delays_ms = vec![100; 10];
        c.notify.max_in_flight = 1;
        c.notify.breaker_failures = 2;
        c.notify.breaker_open_ms = open_ms;
        c.merchants.iter_mut().find(|m| m.merchant_id == MERCHANT).unwrap().merchant_id = merchant_id.into();
    });
    let ep = MerchantEndpoint::start(Reply::Status(500, "down"));
    let client = Client::new(&t.url, merchant_id, SECRET);
    (t, ep, client)
}

#[test]
fn an_open_breaker_probes_instead_of_spending_every_schedule() {
    const BRK: &str = "MBREAKER01";
    let (t, ep, client) = breaker_node(BRK, 60_000);
    let ids: Vec<String> = (0..4).map(|i| paid(&client, &format!("N-BRK-{i}"), &ep.url)).collect();
    ep.wait_for(2, WAIT);
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(ep.count(), 2, "after two failures the breaker is open: no more attempts");
    let attempted: usize = ids
        .iter()
        .map(|id| notifications(&client, id).first().map_or(0, |n| n["attempts_total"].as_u64().unwrap() as usize))
        .sum();
    assert_eq!(attempted, 2, "the queued notifications kept their schedules");
    assert_eq!(metric(&t.url, &format!("paygate_notify_breaker_state{{merchant=\"{BRK}\"}}")), 2.0);
    assert_eq!(metric(&t.url, &format!("paygate_notify_backlog{{merchant=\"{BRK}\"}}")), 4.0);
}

#[test]
fn a_slow_merchant_does_not_delay_another() {
    let slow = MerchantEndpoint::start(Reply::Hang(Duration::from_secs(4)));
    let fast_ep = MerchantEndpoint::start(Reply::Status(200, "SUCCESS"));
    let t = TestNode::start_with(|c| {
        c.notify.timeout_ms = 3_000;
        c.merchants.iter_mut().for_each(|m| m.allow_private_notify = true);
    });
    let client = t.client();
    for i in 0..12 {
        paid(&client, &format!("N-SLOW-{i}"), &slow.url);
    }
    slow.wait_for(8, WAIT);
    let started = Instant::now();
    let other = Client::new(&t.url, LEGACY_MERCHANT, LEGACY_SECRET);
    let mut p = Client::pay_params("N-FAST", "1.00");
    p.insert("notify_url".into(), fast_ep.url.clone());
    p.insert("sign_type".into(), "MD5".into());
    let id = other.call("/api/v1/payment/pay", p).data("pay_order_no").to_owned();
    sandbox_pay(&t.url, &id);
    fast_ep.wait_for(1, WAIT);
    // The slow merchant's attempts in flight take 3 s to time out; the other merchant's
    // notification did not wait for any of them.
    assert!(started.elapsed() < Duration::from_millis(2_500), "{:?}", started.elapsed());
    assert_eq!(slow.count(), 8, "at most max_in_flight deliveries to one endpoint at once");
}

#[test]
fn internal_addresses_are_refused_unless_the_merchant_allows_them() {
    let ep = MerchantEndpoint::start(Reply::Status(200, "SUCCESS"));
    let port = ep.url.trim_start_matches("http://127.0.0.1:").trim_end_matches("/notify").to_owned();
    let default_url = format!("http://localhost:{port}/notify");
    let t = TestNode::start_with(move |c| {
        // A name is resolved when used, so configuration cannot refuse it.
        let m = c.merchants.iter_mut().find(|m| m.merchant_id == LEGACY_MERCHANT).unwrap();
        m.notify_url = Some(default_url);
    });
    let legacy = Client::new(&t.url, LEGACY_MERCHANT, LEGACY_SECRET);
    for (i, url) in [
        ep.url.as_str(),
        "http://localhost:9/n",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:80/n",
        "http://10.1.2.3/n",
        "http://192.168.0.1/n",
        "http://[fd00::1]/n",
        "http://224.0.0.1/n",
        "http://0.0.0.0/n",
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = Client::pay_params(&format!("N-SSRF-{i}"), "1.00");
        p.insert("notify_url".into(), url.into());
        p.insert("sign_type".into(), "MD5".into());
        let a = legacy.call("/api/v1/payment/pay", p);
        assert_eq!(a.code(), "INVALID_PARAM", "{url}: {a:?}");
        assert!(a.json["message"].as_str().unwrap().contains("notify_url"), "{a:?}");
    }
    // The demo merchant is allowed its own network.
    assert_eq!(t.client().pay("N-SSRF-OK", "1.00").code(), "SUCCESS");

    // At connection time the name is checked again: the merchant's default URL names
    // localhost, which the guard refuses without calling it.
    let mut p = Client::pay_params("N-SSRF-DEFAULT", "1.00");
    p.insert("sign_type".into(), "MD5".into());
    let id = legacy.call("/api/v1/payment/pay", p).data("pay_order_no").to_owned();
    sandbox_pay(&t.url, &id);
    let p = params(&[("pay_order_no", &id), ("sign_type", "MD5")]);
    let n = eventually(WAIT, || {
        let a = legacy.call("/api/v1/notify/query", p.clone());
        a.json["data"]["notifications"][0].as_object().filter(|n| n["attempts_total"].as_u64() >= Some(1)).cloned()
    })
    .unwrap();
    let error = n["attempts"][0]["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("loopback"), "{n:?}");
    assert_eq!(ep.count(), 0, "nothing reached the internal address");
}

#[test]
fn the_receiver_command_verifies_and_acknowledges() {
    let port = free_port();
    let mut receiver = std::process::Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["receiver", "--listen", &format!("127.0.0.1:{port}"), "--secret", SECRET])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = eventually(WAIT, || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    assert!(up.is_some());
    let t = TestNode::start();
    let client = t.client();
    let id = paid(&client, "N-RECV", &format!("http://127.0.0.1:{port}/"));
    let n = wait_notification(&client, &id, "DELIVERED");
    assert_eq!(n["attempts"][0]["answer"], "SUCCESS");
    let _ = receiver.kill();
    let _ = receiver.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut receiver.stdout.take().unwrap(), &mut out).unwrap();
    let line: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["verified"], true, "{out}");
    assert_eq!(line["notification"]["pay_order_no"], id.as_str());
}

#[test]
fn a_pending_retry_survives_kill_9_and_resumes_at_its_due_time() {
    let env = [("PAYGATE_NOTIFY__RETRY_DELAYS_MS", "[2000, 2000]"), ("PAYGATE_NOTIFY__TIMEOUT_MS", "2000")];
    let data = tempfile::tempdir().unwrap();
    let ep = MerchantEndpoint::start(Reply::Status(500, "not yet"));
    let node = BinNode::start(data.path(), &env);
    let id = paid(&node.client(), "N-KILL", &ep.url);
    ep.wait_for(1, WAIT);
    // The failed attempt is journaled a moment after the answer.
    let n = eventually(WAIT, || {
        let n = notifications(&node.client(), &id);
        n.first().filter(|n| n["attempts_total"] == 1).cloned()
    })
    .unwrap();
    let ms = |v: &Value| {
        let t = time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339);
        (t.unwrap().unix_timestamp_nanos() / 1_000_000) as i64
    };
    let delay = ms(&n["next_attempt_time"]) - ms(&n["attempts"][0]["time"]);
    assert!((1_800..=2_200).contains(&delay), "the configured 2 s ±10%: {delay} ms");
    node.kill9();
    ep.set_default(Reply::Status(200, "SUCCESS"));
    let node = BinNode::start(data.path(), &env);
    let got = ep.wait_for(2, WAIT);
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(1_750), "not before its due time");
    assert_eq!(got[0].json()["notify_id"], got[1].json()["notify_id"]);
    let n = wait_notification(&node.client(), &id, "DELIVERED");
    assert_eq!(n["attempts_total"], 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ep.count(), 2, "nothing skipped, nothing sent twice");
}

#[test]
fn a_delivery_cut_by_kill_9_is_made_again_after_restart() {
    let env = [("PAYGATE_NOTIFY__RETRY_DELAYS_MS", "[500, 500]"), ("PAYGATE_NOTIFY__TIMEOUT_MS", "4000")];
    let data = tempfile::tempdir().unwrap();
    let ep = MerchantEndpoint::start(Reply::Status(200, "SUCCESS"));
    ep.then(&[Reply::Hang(Duration::from_secs(10))]);
    let node = BinNode::start(data.path(), &env);
    let id = paid(&node.client(), "N-CUT", &ep.url);
    ep.wait_for(1, WAIT);
    node.kill9();
    let node = BinNode::start(data.path(), &env);
    let got = ep.wait_for(2, WAIT);
    assert_eq!(got[0].json()["notify_id"], got[1].json()["notify_id"]);
    let n = wait_notification(&node.client(), &id, "DELIVERED");
    assert_eq!(n["attempts"].as_array().unwrap().last().unwrap()["acknowledged"], true);
}

/// Runs `openssl` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (installed by .ci/run)");
    assert!(status.success(), "openssl {args:?}");
}

/// A test CA and a certificate it issued for localhost and 127.0.0.1.
fn test_pki(dir: &std::path::Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=paygate test CA"]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    openssl(dir, &csr);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// An HTTPS endpoint (rustls) that answers SUCCESS; returns its port and a counter of
/// the notifications it read.
fn tls_endpoint(dir: &std::path::Path) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    use std::io::{Read, Write};
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (config, seen) = (config.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), stream);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tls.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nSUCCESS");
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (port, count)
}

#[test]
fn https_endpoints_are_verified_against_the_configured_roots() {
    let pki = tempfile::tempdir().unwrap();
    test_pki(pki.path());
    let (port, count) = tls_endpoint(pki.path());
    let url = format!("https://localhost:{port}/notify");

    let ca = pki.path().join("ca.pem");
    let trusting = TestNode::start_with(move |c| c.notify.ca_file = Some(ca));
    let id = paid(&trusting.client(), "N-TLS", &url);
    let n = wait_notification(&trusting.client(), &id, "DELIVERED");
    assert_eq!(n["attempts"][0]["http_status"], 200);
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Without the CA the certificate is not trusted: no request is sent.
    let strict = TestNode::start_with(fast(&[60_000]));
    let id = paid(&strict.client(), "N-TLS-UNTRUSTED", &url);
    let n = eventually(WAIT, || {
        let list = notifications(&strict.client(), &id);
        list.first().filter(|n| n["attempts_total"] == 1).cloned()
    })
    .unwrap();
    let error = n["attempts"][0]["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.to_ascii_lowercase().contains("certificate"), "{error}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_successful_probe_closes_the_breaker_and_the_queue_drains() {
    const PROBE: &str = "MPROBE01";
    let (t, ep, client) = breaker_node(PROBE, 1_000);
    let ids: Vec<String> = (0..3).map(|i| paid(&client, &format!("N-PROBE-{i}"), &ep.url)).collect();
    let failed = ep.wait_for(2, WAIT);
    ep.set_default(Reply::Status(200, "SUCCESS"));
    let got = ep.wait_for(5, WAIT);
    assert!(got[2].at.duration_since(failed[1].at) >= Duration::from_millis(900), "the probe waited for the open time");
    for id in &ids {
        wait_notification(&client, id, "DELIVERED");
    }
    assert_eq!(metric(&t.url, &format!("paygate_notify_breaker_state{{merchant=\"{PROBE}\"}}")), 0.0);
}

#[test]
fn the_documented_python_receiver_acknowledges_what_it_verifies() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join("notifications.md");
    let readme = std::fs::read_to_string(docs).unwrap();
    let start = readme.find("```python\n").expect("a Python receiver in docs/notifications.md") + "```python\n".len();
    let script = &readme[start..start + readme[start..].find("```").unwrap()];
    assert!(script.lines().count() <= 16, "the receiver stays short");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receiver.py");
    std::fs::write(&path, script.replace("9200", &port.to_string())).unwrap();
    let mut python = std::process::Command::new("python3")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    assert!(eventually(WAIT, || std::net::TcpStream::connect(("127.0.0.1", port)).ok()).is_some());
    let t = TestNode::start();
    let client = t.client();
    let id = paid(&client, "N-PY", &format!("http://127.0.0.1:{port}/"));
    let n = wait_notification(&client, &id, "DELIVERED");
    assert_eq!(n["attempts"][0]["answer"], "SUCCESS");
    let _ = python.kill();
    let _ = python.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut python.stdout.take().unwrap(), &mut out).unwrap();
    assert!(out.contains(&format!("True {id} SUCCESS")), "{out}");
}
