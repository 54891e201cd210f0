//! Test harness: nodes in-process or as the real binary, on loopback with a real data
//! directory, and a merchant client that signs for real.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use paygate::config::{Config, Overrides};
use paygate::node::Node;
use paygate::storage::segment::{list_segments, read_segment, segment_path, written_len};
use paygate_actors::signing::{self, SignType};
use serde_json::Value;

pub const MERCHANT: &str = "M20240101001";
pub const SECRET: &str = "demo-secret-change-me-0123456789";
pub const LEGACY_MERCHANT: &str = "M20240101002";
pub const LEGACY_SECRET: &str = "legacy-secret-change-me-01234567";
pub const ADMIN_TOKEN: &str = "demo-admin-token";

pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The repository's default configuration on a fresh data directory and a free port.
pub fn test_config(data: &Path) -> Config {
    let mut c = Config::load(
        &config_dir(),
        &Overrides { listen: Some("127.0.0.1:0".into()), data_dir: Some(data.to_path_buf()) },
    )
    .unwrap();
    c.shards.count = 8;
    c.server.workers = 2;
    c.orders.timer_poll_ms = 100;
    c.orders.timer_retry_secs = 1;
    c.storage.cache_bytes = 16 << 20;
    c
}

/// An in-process node with its own data directory.
pub struct TestNode {
    pub node: Option<Node>,
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl TestNode {
    pub fn start() -> TestNode {
        TestNode::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestNode {
        TestNode::start_in(tempfile::tempdir().unwrap(), tweak)
    }

    /// A node on an existing data directory.
    pub fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestNode {
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let node = paygate::node::start(config).unwrap();
        let url = format!("http://{}", node.addr);
        TestNode { node: Some(node), dir, url }
    }

    /// Stops the node and starts a new one on the same data directory.
    pub fn restart(mut self, tweak: impl FnOnce(&mut Config)) -> TestNode {
        if let Some(n) = self.node.take() {
            n.stop();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        TestNode::start_in(dir, tweak)
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().unwrap()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, MERCHANT, SECRET)
    }

    /// Orders in the views, once they show every durable record (they trail the
    /// acknowledgements by a few milliseconds).
    pub fn order_count(&self) -> usize {
        let node = self.node();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !node.caught_up() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(node.caught_up(), "the views did not catch up with the journal");
        node.views.order_count()
    }

    /// Bytes written to the journal (records, not the zeros segments are sized with).
    pub fn journal_bytes(&self) -> u64 {
        journal_bytes(self.dir.path())
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(n) = self.node.take() {
            n.stop();
        }
    }
}

/// Bytes written to the journal under `data`: segments are sized when opened, so their
/// lengths do not change as records arrive.
pub fn journal_bytes(data: &Path) -> u64 {
    let dir = data.join("journal");
    let segments = list_segments(&dir).unwrap_or_default();
    segments.into_iter().map(|n| written_len(&read_segment(&segment_path(&dir, n)).unwrap(), 0) as u64).sum()
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub json: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.json["code"].as_str().unwrap_or("")
    }
    pub fn data(&self, field: &str) -> &str {
        self.json["data"][field].as_str().unwrap_or("")
    }
}

/// POSTs raw bytes; `None` when no answer came (connection refused or cut).
pub fn post_raw(url: &str, body: &[u8]) -> Option<Answer> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let result = agent.post(url).set("content-type", "application/json").send_bytes(body);
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(_) => return None,
    };
    let status = resp.status();
    let text = resp.into_string().ok()?;
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Some(Answer { status, json })
}

/// A merchant client that signs every request.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub merchant: String,
    pub secret: String,
}

pub type Params = BTreeMap<String, String>;

pub fn params(pairs: &[(&str, &str)]) -> Params {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Client {
    pub fn new(base: &str, merchant: &str, secret: &str) -> Client {
        Client { base: base.into(), merchant: merchant.into(), secret: secret.into() }
    }

    /// Adds merchant_id and timestamp (unless present), then signs.
    pub fn sign(&self, mut p: Params) -> Params {
        p.entry("merchant_id".into()).or_insert_with(|| self.merchant.clone());
        p.entry("timestamp".into()).or_insert_with(|| now_secs().to_string());
        let st =
            if p.get("sign_type").map(String::as_str) == Some("MD5") { SignType::Md5 } else { SignType::HmacSha256 };
        let s = signing::sign(&p, &self.secret, st);
        p.insert("sign".into(), s);
        p
    }

    pub fn post_signed(&self, path: &str, p: Params) -> Option<Answer> {
        let body = serde_json::to_vec(&self.sign(p)).unwrap();
        post_raw(&format!("{}{path}", self.base), &body)
    }

    pub fn call(&self, path: &str, p: Params) -> Answer {
        self.post_signed(path, p).expect("no answer")
    }

    pub fn pay_params(order_no: &str, amount: &str) -> Params {
        params(&[("order_no", order_no), ("amount", amount), ("subject", "tea"), ("pay_method", "SANDBOX")])
    }

    /// Pays with `method` (ALIPAY, WECHAT_PAY, …).
    pub fn pay_by(&self, method: &str, order_no: &str, amount: &str) -> Answer {
        let mut p = Client::pay_params(order_no, amount);
        p.insert("pay_method".into(), method.into());
        self.call("/api/v1/payment/pay", p)
    }

    pub fn pay(&self, order_no: &str, amount: &str) -> Answer {
        self.call("/api/v1/payment/pay", Client::pay_params(order_no, amount))
    }

    pub fn query_id(&self, pay_order_no: &str) -> Answer {
        self.call("/api/v1/payment/query", params(&[("pay_order_no", pay_order_no)]))
    }

    pub fn query_no(&self, order_no: &str) -> Answer {
        self.call("/api/v1/payment/query", params(&[("order_no", order_no)]))
    }

    pub fn close_id(&self, pay_order_no: &str) -> Answer {
        self.call("/api/v1/payment/close", params(&[("pay_order_no", pay_order_no)]))
    }
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the order reaches `status`; panics with the last answer otherwise.
pub fn wait_status(client: &Client, pay_order_no: &str, status: &str, limit: Duration) -> Answer {
    let mut last = None;
    eventually(limit, || {
        let a = client.query_id(pay_order_no);
        let done = a.data("status") == status;
        last = Some(a.clone());
        done.then_some(a)
    })
    .unwrap_or_else(|| panic!("order {pay_order_no} never reached {status}: {last:?}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real `paygate` binary serving a data directory.
pub struct BinNode {
    pub child: Child,
    pub url: String,
}

impl BinNode {
    pub fn command(data: &Path, port: u16, env: &[(&str, &str)]) -> Command {
        BinNode::command_with_config(&config_dir(), data, port, env)
    }

    pub fn command_with_config(config: &Path, data: &Path, port: u16, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paygate"));
        cmd.args(["serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            // Tests run side by side: no two simulators on the usual port.
            .env("PAYGATE_SIM__LISTEN", "127.0.0.1:0")
            .env("PAYGATE_SHARDS__COUNT", "8")
            .env("PAYGATE_ORDERS__TIMER_POLL_MS", "100")
            .env("PAYGATE_ORDERS__TIMER_RETRY_SECS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the binary and waits until /healthz answers.
    pub fn start(data: &Path, env: &[(&str, &str)]) -> BinNode {
        BinNode::start_with_config(&config_dir(), data, env)
    }

    /// Starts the binary on another configuration directory.
    pub fn start_with_config(config: &Path, data: &Path, env: &[(&str, &str)]) -> BinNode {
        BinNode::spawn(config, data, env, &[])
    }

    /// Starts the binary with more `serve` arguments.
    pub fn start_with_args(data: &Path, env: &[(&str, &str)], args: &[&str]) -> BinNode {
        BinNode::spawn(&config_dir(), data, env, args)
    }

    fn spawn(config: &Path, data: &Path, env: &[(&str, &str)], args: &[&str]) -> BinNode {
        let port = free_port();
        let child = BinNode::command_with_config(config, data, port, env).args(args).spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let mut node = BinNode { child, url };
        let up = eventually(Duration::from_secs(30), || {
            if let Ok(Some(status)) = node.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = node.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                panic!("paygate exited during start: {status}\n{stderr}");
            }
            ureq::get(&format!("{}/healthz", node.url)).call().ok().map(|_| ())
        });
        assert!(up.is_some(), "paygate did not start");
        node
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, MERCHANT, SECRET)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for BinNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies a directory tree (a stopped node's data directory).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The text a `data:image/png;base64,…` QR code encodes, read back with a QR reader.
pub fn decode_qr(data_uri: &str) -> String {
    let b64 = data_uri.strip_prefix("data:image/png;base64,").expect("a PNG data URI");
    let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
    // Expand the 1-bit image to 8-bit greyscale for the QR reader.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let (w, h) = (info.width as usize, info.height as usize);
    let stride = info.line_size;
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * stride + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    grids[0].decode().unwrap().1
}

/// The in-process channel simulator's base URL.
pub fn sim_url(t: &TestNode) -> String {
    t.node().sim.as_ref().expect("the in-process simulator").base_url.clone()
}

fn sim_json(r: Result<ureq::Response, ureq::Error>) -> Value {
    match r {
        Ok(r) => r.into_json().unwrap(),
        Err(ureq::Error::Status(_, r)) => r.into_json().unwrap(),
        Err(e) => panic!("{e}"),
    }
}

/// POSTs JSON to a simulator control route.
pub fn sim_post(t: &TestNode, path: &str, body: Value) -> Value {
    sim_json(ureq::post(&format!("{}{path}", sim_url(t))).send_json(body))
}

/// GETs a simulator control route.
pub fn sim_get(t: &TestNode, path: &str) -> Value {
    sim_json(ureq::get(&format!("{}{path}", sim_url(t))).call())
}

/// The value of the first Prometheus line starting with `line_start` (0 when absent).
pub fn metric(url: &str, line_start: &str) -> f64 {
    let text = ureq::get(&format!("{url}/metrics")).call().unwrap().into_string().unwrap();
    text.lines().find_map(|l| l.strip_prefix(line_start)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// A channel's reference to our order `id` of `fen` CNY, for calling adapters directly.
pub fn trade_ref(id: &str, fen: i64) -> paygate_actors::ports::TradeRef {
    paygate_actors::ports::TradeRef {
        pay_order_no: paygate_actors::ids::PayOrderNo::parse(id).unwrap(),
        channel_trade_no: None,
        amount: paygate_actors::money::Money::from_minor(fen, paygate_actors::money::Currency::CNY),
        create_time: 0,
    }
}

/// Refund `no` of `fen` CNY on `trade`, asked for at a fixed time (channels that key
/// refunds on time get the same one when asked about it).
pub fn refund_of(trade: paygate_actors::ports::TradeRef, no: &str, fen: i64) -> paygate_actors::ports::ChannelRefund {
    paygate_actors::ports::ChannelRefund {
        trade,
        refund_no: no.into(),
        amount: paygate_actors::money::Money::from_minor(fen, paygate_actors::money::Currency::CNY),
        requested_at: 1_763_870_400_000,
    }
}

/// How a [`MerchantEndpoint`] answers one notification.
#[derive(Debug, Clone)]
pub enum Reply {
    /// An HTTP answer.
    Status(u16, &'static str),
    /// No answer for this long, then the connection is closed.
    Hang(Duration),
}

/// One request a [`MerchantEndpoint`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> BTreeMap<String, String> {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A merchant's notification endpoint on loopback (a plain HTTP/1.1 server on threads):
/// answers by a script, then by a default, and keeps everything it received.
#[derive(Clone)]
pub struct MerchantEndpoint {
    pub url: String,
    script: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Reply>>>,
    default: std::sync::Arc<std::sync::Mutex<Reply>>,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl MerchantEndpoint {
    pub fn start(default: Reply) -> MerchantEndpoint {
        MerchantEndpoint::start_on(0, default)
    }

    pub fn start_on(port: u16, default: Reply) -> MerchantEndpoint {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let url = format!("http://{}/notify", listener.local_addr().unwrap());
        let ep = MerchantEndpoint {
            url,
            script: Default::default(),
            default: std::sync::Arc::new(std::sync::Mutex::new(default)),
            received: Default::default(),
        };
        let server = ep.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || server.serve(stream));
            }
        });
        ep
    }

    /// Answers the next notifications with `replies`, in order.
    pub fn then(&self, replies: &[Reply]) {
        self.script.lock().unwrap().extend(replies.iter().cloned());
    }

    pub fn set_default(&self, reply: Reply) {
        *self.default.lock().unwrap() = reply;
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` notifications arrived.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        eventually(limit, || (self.count() >= n).then(|| self.all()))
            .unwrap_or_else(|| panic!("{} of {n} notifications arrived", self.count()))
    }

    fn serve(&self, stream: std::net::TcpStream) {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let mut headers = BTreeMap::new();
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            self.received.lock().unwrap().push(Received { at: Instant::now(), headers, body });
            let reply = self.script.lock().unwrap().pop_front().unwrap_or_else(|| self.default.lock().unwrap().clone());
            match reply {
                Reply::Status(status, text) => {
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if writer.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
                Reply::Hang(d) => {
                    std::thread::sleep(d);
                    return;
                }
            }
        }
    }
}

/// The admin API's sandbox: the buyer pays `pay_order_no`.
pub fn sandbox_pay(base: &str, pay_order_no: &str) {
    let resp = ureq::post(&format!("{base}/admin/sandbox/orders/{pay_order_no}/pay"))
        .set("authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// What the buyer's browser does with our pay page: read the form, post it.
pub fn submit_front_form(pay_url: &str) -> (u16, String) {
    let (action, form) = front_form(pay_url);
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    match ureq::post(&action).send_form(&pairs) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

/// The form our pay page makes the buyer's browser post: where to, and its fields.
pub fn front_form(pay_url: &str) -> (String, Vec<(String, String)>) {
    let page = ureq::get(pay_url).call().unwrap().into_string().unwrap();
    let action = html_escape::decode_html_entities(&between(&page, "action=\"", "\"")).into_owned();
    let mut form = Vec::new();
    for input in page.split("<input ").skip(1) {
        let name = html_escape::decode_html_entities(&between(input, "name=\"", "\"")).into_owned();
        let value = html_escape::decode_html_entities(&between(input, "value=\"", "\"")).into_owned();
        form.push((name, value));
    }
    (action, form)
}

pub fn between(text: &str, start: &str, end: &str) -> String {
    text.split(start).nth(1).and_then(|r| r.split(end).next()).unwrap_or_default().to_owned()
}

/// `paygate sim` as a process of its own (a provider outlives the node), on its own data
/// directory; killed when dropped.
pub struct StandaloneSim {
    pub base: String,
    child: Child,
    _data: tempfile::TempDir,
}

impl StandaloneSim {
    pub fn start() -> StandaloneSim {
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_paygate"))
            .args(["sim", "--config"])
            .arg(config_dir())
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let up = eventually(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        assert!(up.is_some(), "paygate sim did not start");
        StandaloneSim { base: format!("http://127.0.0.1:{port}"), child, _data: data }
    }

    pub fn post(&self, path: &str, body: Value) -> Value {
        sim_json(ureq::post(&format!("{}{path}", self.base)).send_json(body))
    }

    pub fn get(&self, path: &str) -> Value {
        sim_json(ureq::get(&format!("{}{path}", self.base)).call())
    }
}

impl Drop for StandaloneSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls the admin API with the demo token: the status and the JSON answer (null when
/// the answer has no body).
pub fn admin(t: &TestNode, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let req = ureq::request(method, &format!("{}{path}", t.url)).set("authorization", &format!("Bearer {ADMIN_TOKEN}"));
    let resp = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match resp {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{e}"),
    }
}
