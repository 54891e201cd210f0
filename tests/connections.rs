//! Connections that send nothing, or send it too slowly, are closed after the header
//! timeout; connections that keep sending requests are not.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A node whose header timeout is one second.
fn node() -> TestNode {
    TestNode::start_with(|c| c.server.header_timeout_secs = 1)
}

fn connect(t: &TestNode) -> TcpStream {
    let s = TcpStream::connect(t.url.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    s
}

/// Reads until the server closes the connection; how long that took, and what came.
fn until_closed(s: &mut TcpStream) -> (Duration, String) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (started.elapsed(), String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the server kept the connection open ({e}); got {:?}", String::from_utf8_lossy(&got)),
        }
    }
}

fn healthz() -> &'static [u8] {
    b"GET /healthz HTTP/1.1\r\nHost: paygate\r\n\r\n"
}

#[test]
fn a_connection_that_never_finishes_its_headers_is_closed() {
    let t = node();
    let mut s = connect(&t);
    s.write_all(b"POST /api/v1/payment/query HTTP/1.1\r\nHost: paygate\r\nX-Slow: ").unwrap();
    let (after, got) = until_closed(&mut s);
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(after >= Duration::from_millis(900), "closed after {after:?}, before the timeout");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_its_last_answer() {
    let t = node();
    let mut s = connect(&t);
    s.write_all(healthz()).unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let (after, _) = until_closed(&mut s);
    assert!(after >= Duration::from_millis(900), "closed after {after:?}, before the timeout");
}

#[test]
fn a_connection_busy_with_requests_stays_open_past_the_timeout() {
    let t = node();
    let mut s = connect(&t);
    let started = Instant::now();
    let mut answers = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        s.write_all(healthz()).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "answer {answers}: {:?}", String::from_utf8_lossy(&buf[..n]));
        answers += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(answers >= 8);
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_refused() {
    let t = node();
    let mut s = connect(&t);
    s.write_all(
        b"POST /api/v1/payment/query HTTP/1.1\r\nHost: paygate\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"merchant_id\":",
    )
    .unwrap();
    let (after, got) = until_closed(&mut s);
    assert!(got.starts_with("HTTP/1.1 400"), "{got:?}");
    assert!(got.contains("INVALID_PARAM") && got.contains("was not received within"), "{got:?}");
    assert!(after >= Duration::from_millis(900), "refused after {after:?}, before the timeout");
}

#[test]
fn a_body_that_arrives_in_pieces_within_the_timeout_is_read_whole() {
    let t = node();
    let client = t.client();
    let paid = client.pay("PIECES-1", "3.21");
    assert_eq!(paid.code(), "SUCCESS");
    let id = paid.data("pay_order_no").to_owned();
    let body = serde_json::to_vec(&client.sign(params(&[("pay_order_no", &id)]))).unwrap();
    let mut s = connect(&t);
    write!(
        s,
        "POST /api/v1/payment/query HTTP/1.1\r\nHost: paygate\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // Three pieces, each its own read at the server: the first, then one that joins it,
    // then one added to the joined two.
    let (first, rest) = body.split_at(body.len() / 3);
    let (second, third) = rest.split_at(rest.len() / 2);
    for piece in [first, second, third] {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    let (_, got) = until_closed(&mut s);
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    let answer: serde_json::Value = serde_json::from_str(got.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
    assert_eq!(answer["code"], "SUCCESS", "{got:?}");
    assert_eq!(answer["data"]["pay_order_no"], id.as_str());
    assert_eq!(answer["data"]["amount"], "3.21");
}

/// A declared body over the limit is refused when the headers arrive: the node does not
/// wait (until the header timeout) for a body it will not take.
#[test]
fn a_declared_body_over_the_limit_is_refused_at_once() {
    let t = TestNode::start_with(|c| c.server.header_timeout_secs = 10);
    let mut s = TcpStream::connect(t.url.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let started = Instant::now();
    s.write_all(b"POST /api/v1/payment/pay HTTP/1.1\r\nHost: paygate\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{\"a\":")
        .unwrap();
    let mut got = vec![0u8; 512];
    let n = s.read(&mut got).expect("an answer before the header timeout");
    let text = String::from_utf8_lossy(&got[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not after the 10 s timeout");
}

/// A channel that answers without end is not read into memory without end: the client
/// stops at its bound and reports an unknown outcome.
#[test]
fn a_channel_answer_over_the_bound_is_refused() {
    use paygate::http::client::{HttpClient, MAX_ANSWER_BYTES};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/gateway", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let len = MAX_ANSWER_BYTES + (1 << 20);
        let _ = s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").as_bytes());
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..len / chunk.len() {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answer = rt.block_on(HttpClient::new().post(&url, "text/plain", b"q".to_vec(), Duration::from_secs(20)));
    let err = answer.expect_err("refused");
    assert!(err.message.contains(&format!("over {MAX_ANSWER_BYTES} bytes")), "{err}");
}
