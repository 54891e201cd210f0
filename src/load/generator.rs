//! The load generator: N keep-alive HTTP/1.1 connections, each sending signed merchant
//! requests back to back for a duration, recording latency and answer codes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use paygate_actors::clock::Clock;
use paygate_actors::clock::SystemClock;
use paygate_actors::signing::{self, SignType};

/// What one request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Create a payment (new order_no each time).
    Pay,
    /// Query a known order.
    Query,
    /// Close one of this connection's own recently created orders.
    Close,
}

/// Relative weights of pay / query / close.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Pay weight.
    pub pay: u32,
    /// Query weight.
    pub query: u32,
    /// Close weight.
    pub close: u32,
}

impl Mix {
    /// Only one kind of request.
    pub fn only(op: Op) -> Mix {
        match op {
            Op::Pay => Mix { pay: 1, query: 0, close: 0 },
            Op::Query => Mix { pay: 0, query: 1, close: 0 },
            Op::Close => Mix { pay: 0, query: 0, close: 1 },
        }
    }

    /// Parses `pay:query:close`, e.g. `2:7:1`.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let parts: Vec<u32> =
            text.split(':').map(|p| p.parse().map_err(|_| format!("bad mix {text:?}"))).collect::<Result<_, _>>()?;
        match parts.as_slice() {
            [pay, query, close] if pay + query + close > 0 => Ok(Mix { pay: *pay, query: *query, close: *close }),
            _ => Err(format!("mix must be pay:query:close with a positive sum, not {text:?}")),
        }
    }

    fn pick(&self, roll: u32) -> Op {
        let total = self.pay + self.query + self.close;
        let r = roll % total.max(1);
        if r < self.pay {
            Op::Pay
        } else if r < self.pay + self.query {
            Op::Query
        } else {
            Op::Close
        }
    }
}

/// Who signs and where to send.
#[derive(Clone)]
pub struct Target {
    /// The node.
    pub addr: SocketAddr,
    /// Merchant id.
    pub merchant: String,
    /// Merchant secret.
    pub secret: String,
    /// Makes this run's order numbers unique.
    pub run: String,
}

/// What a phase measured.
pub struct PhaseResult {
    /// Answers received.
    pub requests: u64,
    /// Measured wall time.
    pub elapsed: Duration,
    /// Latency, microseconds.
    pub latency: Histogram<u64>,
    /// Answer code (or transport failure) → count, for non-SUCCESS answers.
    pub errors: BTreeMap<String, u64>,
    /// pay_order_nos created.
    pub created: Vec<String>,
    /// Orders closed successfully.
    pub closed: u64,
    /// Answers received, the warm-up included.
    pub answered: u64,
    /// CPU the server spent in the phase, warm-up included, nanoseconds; 0 when unknown
    /// (filled in by the caller, which knows the server's process).
    pub server_cpu_ns: u64,
    /// CPU the load generator (this process) spent meanwhile, nanoseconds.
    pub client_cpu_ns: u64,
}

impl PhaseResult {
    /// Nothing measured yet.
    pub fn empty() -> PhaseResult {
        PhaseResult {
            requests: 0,
            elapsed: Duration::ZERO,
            latency: new_histogram(),
            errors: BTreeMap::new(),
            created: Vec::new(),
            closed: 0,
            answered: 0,
            server_cpu_ns: 0,
            client_cpu_ns: 0,
        }
    }

    /// Adds what `other` measured (another connection, or another slice of the phase).
    pub fn merge(&mut self, other: PhaseResult) {
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        let _ = self.latency.add(&other.latency);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.created.extend(other.created);
        self.closed += other.closed;
        self.answered += other.answered;
        self.server_cpu_ns += other.server_cpu_ns;
        self.client_cpu_ns += other.client_cpu_ns;
    }

    /// The server's CPU per answer, microseconds, when known.
    pub fn server_cpu_us(&self) -> Option<f64> {
        (self.server_cpu_ns > 0 && self.answered > 0).then(|| self.server_cpu_ns as f64 / 1000.0 / self.answered as f64)
    }

    /// The load generator's CPU per answer, microseconds, when known.
    pub fn client_cpu_us(&self) -> Option<f64> {
        (self.client_cpu_ns > 0 && self.answered > 0).then(|| self.client_cpu_ns as f64 / 1000.0 / self.answered as f64)
    }

    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Most orders one connection keeps open when its mix also closes orders.
const MAX_OPEN: usize = 8;

struct Conn {
    target: Arc<Target>,
    id: usize,
    seq: u64,
    rng: u64,
    own: Vec<String>,
}

impl Conn {
    fn next_rand(&mut self) -> u64 {
        // xorshift64*: cheap, per connection, good enough to spread queries.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn body(&mut self, op: Op, known: &[String]) -> (&'static str, Vec<u8>) {
        let t = Arc::clone(&self.target);
        let mut p = BTreeMap::new();
        p.insert("merchant_id".to_owned(), t.merchant.clone());
        p.insert("timestamp".to_owned(), (SystemClock.now_ms() / 1000).to_string());
        let path = match op {
            Op::Pay => {
                self.seq += 1;
                p.insert("order_no".to_owned(), format!("{}-{}-{}", t.run, self.id, self.seq));
                p.insert("amount".to_owned(), "1.00".to_owned());
                p.insert("subject".to_owned(), "load test".to_owned());
                p.insert("pay_method".to_owned(), "SANDBOX".to_owned());
                "/api/v1/payment/pay"
            }
            Op::Query => {
                let pick = if known.is_empty() { None } else { known.get(self.next_rand() as usize % known.len()) };
                let id = pick.or_else(|| self.own.last()).cloned().unwrap_or_default();
                p.insert("pay_order_no".to_owned(), id);
                "/api/v1/payment/query"
            }
            Op::Close => {
                p.insert("pay_order_no".to_owned(), self.own.pop().unwrap_or_default());
                "/api/v1/payment/close"
            }
        };
        let sign = signing::sign(&p, &t.secret, SignType::HmacSha256);
        p.insert("sign".to_owned(), sign);
        (path, serde_json::to_vec(&p).unwrap_or_default())
    }
}

/// The string value of `"field":"…"` in a JSON body, without parsing the whole body.
fn field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(body).ok()?;
    let key = format!("\"{name}\":\"");
    let start = text.find(&key)? + key.len();
    let len = text.get(start..)?.find('"')?;
    text.get(start..start + len)
}

/// Runs `connections` connections with `mix` for `duration` (after `warmup`).
pub async fn run(
    target: Arc<Target>,
    mix: Mix,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    known: Arc<Vec<String>>,
) -> PhaseResult {
    let start = Instant::now() + warmup;
    let end = start + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|id| {
            let target = Arc::clone(&target);
            let known = Arc::clone(&known);
            tokio::spawn(async move {
                let conn = Conn { target, id, seq: 0, rng: 0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1), own: Vec::new() };
                drive(conn, mix, start, end, known).await
            })
        })
        .collect();
    let mut total = PhaseResult::empty();
    for t in tasks {
        if let Ok(r) = t.await {
            total.merge(r);
        }
    }
    // The connections ran side by side: the phase lasted `duration`, not their sum.
    total.elapsed = duration;
    total
}

#[allow(clippy::expect_used)]
fn new_histogram() -> Histogram<u64> {
    // Proof: bounds 1..60e6 with 3 significant figures are valid constants (low >= 1,
    // high >= 2 * low, sigfig <= 5), the only conditions under which this can fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid constant histogram bounds")
}

async fn connect(addr: SocketAddr) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn drive(mut conn: Conn, mix: Mix, start: Instant, end: Instant, known: Arc<Vec<String>>) -> PhaseResult {
    let mut r = PhaseResult::empty();
    let host = conn.target.addr.to_string();
    let mut sender = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let Some(s) = sender.as_mut() else {
            sender = connect(conn.target.addr).await;
            if sender.is_none() {
                *r.errors.entry("connect".into()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            continue;
        };
        // Close only orders this connection opened, and keep few open at once, so the
        // mix never sends intended-to-fail requests.
        let op = match mix.pick(conn.next_rand() as u32) {
            Op::Close if conn.own.is_empty() => Op::Pay,
            Op::Pay if mix.close > 0 && conn.own.len() >= MAX_OPEN => Op::Close,
            op => op,
        };
        let (path, body) = conn.body(op, &known);
        let Ok(req) = Request::post(path)
            .header("host", host.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
        else {
            continue;
        };
        let sent = Instant::now();
        let answer = match s.send_request(req).await {
            Ok(resp) => resp.into_body().collect().await.map(|b| b.to_bytes()).ok(),
            Err(_) => None,
        };
        let measured = sent >= start;
        let Some(body) = answer else {
            sender = None;
            if measured {
                *r.errors.entry("transport".into()).or_default() += 1;
            }
            continue;
        };
        r.answered += 1;
        let code = field(&body, "code").unwrap_or("UNPARSEABLE");
        if op == Op::Pay && code == "SUCCESS" {
            if let Some(id) = field(&body, "pay_order_no") {
                conn.own.push(id.to_owned());
                r.created.push(id.to_owned());
            }
        }
        if op == Op::Close && code == "SUCCESS" {
            r.closed += 1;
        }
        if measured {
            r.requests += 1;
            let _ = r.latency.record(sent.elapsed().as_micros().max(1) as u64);
            if code != "SUCCESS" {
                *r.errors.entry(code.to_owned()).or_default() += 1;
            }
        }
    }
    r
}
