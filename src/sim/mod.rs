//! The channel simulator: the providers' gateways on loopback, speaking their wire
//! protocols with their own keys, holding trades, paying them when a
//! "buyer" does, notifying the merchant on the provider's retry schedule, producing
//! bills, and failing on request. `paygate sim` runs it alone; a node whose channels say
//! `gateway_url = "builtin"` runs one in-process.
//!
//! Routes: `/alipay/gateway.do` (the API), `/alipay/qr/{code}` (the cashier a QR code
//! leads to), `/alipay/bill/{token}` (bill files); `/wechat/pay/…` and
//! `/wechat/secapi/pay/refund` (WeChat Pay v2), `/v3/…` (WeChat Pay v3),
//! `/wechat/cashier/{pr}`; `/gateway/api/{frontTransReq,queryTrans,backTransReq}.do`
//! (UnionPay), `/unionpay/cashier/{token}`; control:
//! `POST /sim/{provider}/pay`, `POST /sim/{provider}/faults`, `POST /sim/clock`,
//! `GET /sim/{provider}/trades/{id}`.

pub mod alipay;
pub mod store;
pub mod tls;
pub mod unionpay;
pub mod wechat;

use self::store::SimStore;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::http::client::HttpClient;

/// The simulator's configuration (`[sim]`, in `config/sim.toml`).
#[derive(Debug, Clone, Deserialize)]
pub struct SimConfig {
    /// Where the in-process simulator listens (`paygate sim` takes `--listen`). Unset:
    /// the node's own listen address with port 9100, so a node reachable on the LAN has
    /// a simulator reachable the same way.
    #[serde(default)]
    pub listen: Option<String>,
    /// Serve HTTPS, with a certificate authority made at start (`paygate sim --tls`);
    /// the node's channels on the in-process simulator then trust it.
    #[serde(default)]
    pub tls: bool,
    /// Provider retry delays are multiplied by this (1.0: the providers' own schedule).
    #[serde(default = "one")]
    pub time_scale: f64,
    /// The Alipay gateway, if simulated.
    #[serde(default)]
    pub alipay: Option<alipay::AlipaySimConfig>,
    /// WeChat Pay (API v2, and v3 with a platform certificate), if simulated.
    #[serde(default)]
    pub wechat: Option<wechat::WechatSimConfig>,
    /// The UnionPay gateway, if simulated.
    #[serde(default)]
    pub unionpay: Option<unionpay::UnionPaySimConfig>,
}

fn one() -> f64 {
    1.0
}

/// Injected failures of one provider, set through `POST /sim/{provider}/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every API answer.
    pub latency_ms: u64,
    /// Share of API calls answered HTTP 500.
    pub error_rate: f64,
    /// Share of API calls carried out but never answered (the caller times out).
    pub timeout_rate: f64,
    /// Share of API calls answered with a body that is not the protocol's.
    pub malformed_rate: f64,
    /// Share of API answers whose signature is wrong.
    pub bad_signature_rate: f64,
    /// Every API call answered 503.
    pub outage: bool,
    /// WeChat Pay only: every refund accepted from now on ends `ABNORMAL` (the buyer's
    /// card could not take it) or `CLOSED` instead of `SUCCESS`.
    pub refund_outcome: Option<String>,
    /// Alipay only: closing a trade whose code was never scanned answers
    /// `ACQ.TRADE_NOT_EXIST` and leaves the code payable until the trade expires, as
    /// Alipay may (by default the code stops paying).
    pub unscanned_close_keeps_code: bool,
    /// Only the next this many API calls meet these faults; the ones after are answered
    /// normally (unset: every call until the faults are changed).
    pub calls: Option<u32>,
}

/// A provider's faults: those of every account, and those set for one account alone
/// (an Alipay `app_id`, a WeChat Pay `mch_id`, a UnionPay `merId`), so that one
/// channel can fail while its sibling on the same provider works.
#[derive(Debug, Default)]
pub struct FaultBook {
    every: Faults,
    accounts: std::collections::BTreeMap<String, Faults>,
}

impl FaultBook {
    /// The faults a call by `account` meets, counted against their [`Faults::calls`].
    pub fn of(&mut self, account: &str) -> Faults {
        let faults = match self.accounts.get_mut(account) {
            Some(f) => f,
            None => &mut self.every,
        };
        match &mut faults.calls {
            Some(0) => Faults::default(),
            Some(n) => {
                *n -= 1;
                faults.clone()
            }
            None => faults.clone(),
        }
    }

    /// The faults `account` is under now, uncounted (settings that are not about calls).
    pub fn peek(&self, account: &str) -> &Faults {
        self.accounts.get(account).unwrap_or(&self.every)
    }

    /// Sets the faults of `account`, or of every account (and clears the per-account
    /// ones) when `None`.
    pub fn set(&mut self, account: Option<String>, faults: Faults) {
        match account {
            Some(a) => {
                self.accounts.insert(a, faults);
            }
            None => {
                self.every = faults;
                self.accounts.clear();
            }
        }
    }

    /// The book as the control endpoint shows it: every account's faults, and under
    /// `accounts` those set for one account.
    pub fn view(&self) -> serde_json::Value {
        let mut v = serde_json::json!(self.every);
        if let Some(o) = v.as_object_mut() {
            o.insert("accounts".into(), serde_json::json!(self.accounts));
        }
        v
    }
}

/// The names a faults request may give the account under (one per provider).
const ACCOUNT_FIELDS: [&str; 4] = ["account", "app_id", "mch_id", "merId"];

/// A control request's body: what it asks, and the account it is for if one is named.
fn account_request<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(Option<String>, T), serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_slice(body)?;
    let mut account = None;
    if let Some(o) = value.as_object_mut() {
        for field in ACCOUNT_FIELDS {
            if let Some(v) = o.remove(field) {
                account = Some(serde_json::from_value::<String>(v)?);
            }
        }
    }
    Ok((account, serde_json::from_value(value)?))
}

/// What the faults decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// HTTP 503.
    Outage,
    /// HTTP 500.
    Error,
    /// Carry the call out, never answer.
    Hang,
    /// A body that is not the protocol's.
    Malformed,
    /// A wrong signature.
    BadSignature,
}

impl Faults {
    /// Rolls the dice for one call, after the added latency.
    pub async fn roll(&self) -> Fault {
        if self.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.latency_ms)).await;
        }
        let mut rng = rand::thread_rng();
        let mut hit = |rate: f64| rate > 0.0 && rng.gen::<f64>() < rate;
        if self.outage {
            Fault::Outage
        } else if hit(self.error_rate) {
            Fault::Error
        } else if hit(self.timeout_rate) {
            Fault::Hang
        } else if hit(self.malformed_rate) {
            Fault::Malformed
        } else if hit(self.bad_signature_rate) {
            Fault::BadSignature
        } else {
            Fault::None
        }
    }
}

/// State every provider shares: the clock (which tests may move forward), the outbound
/// client for notifications and the time scale of retry schedules.
pub struct SimCore {
    /// Added to the wall clock, millis.
    offset_ms: AtomicI64,
    /// Notifications.
    pub http: HttpClient,
    /// Retry delays are multiplied by this.
    pub time_scale: f64,
    /// Where the simulator is reached, e.g. `http://127.0.0.1:9100`.
    pub base_url: String,
}

impl SimCore {
    /// Simulated now, unix millis.
    pub fn now_ms(&self) -> i64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        wall.saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// A provider retry delay, scaled.
    pub fn scaled(&self, delay: Duration) -> Duration {
        delay.mul_f64(self.time_scale.clamp(0.0, 1.0e6))
    }
}

/// Locks a mutex; a poisoned one (a panic elsewhere — impossible in release, which
/// aborts) still holds consistent data for a simulator.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running simulator.
pub struct Simulator {
    core: Arc<SimCore>,
    /// The Alipay gateway, when configured.
    pub alipay: Option<Arc<alipay::AlipaySim>>,
    /// WeChat Pay, when configured.
    pub wechat: Option<Arc<wechat::WechatSim>>,
    /// UnionPay, when configured.
    pub unionpay: Option<Arc<unionpay::UnionPaySim>>,
}

/// An HTTP answer of the simulator.
pub type SimResponse = Response<Full<Bytes>>;

/// An answer with a body.
pub fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> SimResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}

/// A simulated provider's cashier page: `title`, the lines of `body` (HTML), and the
/// Pay button posting to `pay_action` while the trade can still be paid.
pub fn cashier_page(title: &str, body: &str, pay_action: Option<&str>) -> SimResponse {
    let button = pay_action
        .map(|action| {
            format!(
                "<form method=\"post\" action=\"{}\"><button type=\"submit\" id=\"pay\">Pay</button></form>",
                html_escape::encode_double_quoted_attribute(action)
            )
        })
        .unwrap_or_default();
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title} (simulated)</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:0 auto;padding:1.5rem 1rem;\
         text-align:center}}button{{width:100%;padding:1rem;font-size:1.2rem;border:0;border-radius:.6rem;\
         background:#07c160;color:#fff}}</style></head><body><h1>{title} — simulated</h1>{body}{button}</body></html>",
        title = html_escape::encode_text(title),
    );
    answer(StatusCode::OK, "text/html; charset=utf-8", page)
}

/// `v` as an `application/json` answer with `status`.
pub fn json_answer(status: StatusCode, v: &serde_json::Value) -> SimResponse {
    answer(status, "application/json", v.to_string())
}

/// A request as the simulator's routes see it.
pub struct SimRequest {
    /// The HTTP method.
    pub method: Method,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The path, without the query.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// The request body, read whole (at most 1 MiB).
    pub body: Bytes,
    /// Over TLS, the subject CN of the client certificate the connection presented, if
    /// it chains to a CA the simulator trusts for clients (a WeChat Pay merchant CA).
    pub client_certificate: Option<String>,
}

impl SimRequest {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A started simulator: where it listens, and its state for in-process use.
pub struct SimHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The URL buyers and channels reach it at (`http://<public host>:<port>`, or
    /// `https://` with TLS).
    pub base_url: String,
    /// With TLS: the CA certificate (PEM) its server certificate chains to.
    pub ca_pem: Option<String>,
    /// Its accounts, trades and faults, for in-process tests and the node.
    pub sim: Arc<Simulator>,
    /// Stops the server (and so closes the simulator's store) once the last handle goes.
    _stop: Arc<StopOnDrop>,
}

struct StopOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Simulator {
    /// Builds the simulator for `base_url`, its trades kept in `store`.
    pub fn new(config: &SimConfig, base_url: String, store: &SimStore) -> Result<Simulator, String> {
        let core = Arc::new(SimCore {
            offset_ms: AtomicI64::new(0),
            http: HttpClient::new(),
            time_scale: config.time_scale,
            base_url,
        });
        let alipay = match &config.alipay {
            Some(c) => Some(Arc::new(alipay::AlipaySim::new(c, Arc::clone(&core), store)?)),
            None => None,
        };
        let wechat = match &config.wechat {
            Some(c) => Some(Arc::new(wechat::WechatSim::new(c, Arc::clone(&core), store)?)),
            None => None,
        };
        let unionpay = match &config.unionpay {
            Some(c) => Some(Arc::new(unionpay::UnionPaySim::new(c, Arc::clone(&core), store)?)),
            None => None,
        };
        Ok(Simulator { core, alipay, wechat, unionpay })
    }

    /// Moves the simulated clock forward.
    pub fn advance(&self, by: Duration) {
        self.core.offset_ms.fetch_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    async fn route(self: Arc<Self>, req: SimRequest) -> SimResponse {
        let path = req.path.clone();
        if path == "/sim/clock" && req.method == Method::POST {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Advance {
                advance_secs: u64,
            }
            return match serde_json::from_slice::<Advance>(&req.body) {
                Ok(a) => {
                    self.advance(Duration::from_secs(a.advance_secs));
                    json_answer(StatusCode::OK, &serde_json::json!({ "now_ms": self.core.now_ms() }))
                }
                Err(e) => json_answer(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e.to_string() })),
            };
        }
        if let (Some(a), true) = (&self.alipay, path.starts_with("/alipay/") || path.starts_with("/sim/alipay/")) {
            return Arc::clone(a).route(req).await;
        }
        let wechat = path.starts_with("/wechat/") || path.starts_with("/v3/") || path.starts_with("/sim/wechat/");
        if let (Some(w), true) = (&self.wechat, wechat) {
            return Arc::clone(w).route(req).await;
        }
        let unionpay =
            path.starts_with("/gateway/api/") || path.starts_with("/unionpay/") || path.starts_with("/sim/unionpay/");
        if let (Some(u), true) = (&self.unionpay, unionpay) {
            return Arc::clone(u).route(req).await;
        }
        answer(StatusCode::NOT_FOUND, "text/plain", "no such simulator route")
    }
}

/// The port the in-process simulator takes unless configured otherwise.
pub const DEFAULT_PORT: u16 = 9100;

/// Binds `listen` and serves the simulator on its own thread and runtime. Its pages and
/// code URLs name `public_host` (scheme and host, e.g. `http://192.168.1.5`) with the
/// port it bound, when given; else the address it bound (loopback for a wildcard).
pub fn start(
    config: &SimConfig,
    listen: &str,
    public_host: Option<&str>,
    store: &SimStore,
) -> Result<SimHandle, String> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("simulator {listen}: {e} (set sim.listen, e.g. PAYGATE_SIM__LISTEN=127.0.0.1:9101)"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let base_url = match public_host {
        Some(host) => format!("{}:{}", host.trim_end_matches('/'), addr.port()),
        None if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        None => format!("http://{addr}"),
    };
    let tls = if config.tls {
        let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        if !addr.ip().is_unspecified() {
            hosts.push(addr.ip().to_string());
        }
        if let Some(host) = base_url.split("://").nth(1).and_then(|rest| rest.rsplit_once(':')).map(|(h, _)| h) {
            hosts.push(host.trim_matches(['[', ']']).to_owned());
        }
        hosts.sort();
        hosts.dedup();
        let client_cas: Vec<&str> = config.wechat.iter().filter_map(|w| w.merchant_ca.as_deref()).collect();
        Some(tls::generate(&hosts, &client_cas)?)
    } else {
        None
    };
    let base_url = match &tls {
        Some(_) => base_url.replacen("http://", "https://", 1),
        None => base_url,
    };
    let ca_pem = tls.as_ref().map(|t| t.ca_pem.clone());
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.server));
    let sim = Arc::new(Simulator::new(config, base_url.clone(), store)?);
    let served = Arc::clone(&sim);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("paygate-sim")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    std::thread::Builder::new()
        .name("paygate-sim".into())
        .spawn(move || {
            rt.block_on(serve(listener, served, acceptor, stopped));
            // Dropping the runtime ends its connections, and with them the last
            // references to the simulator and its store.
            drop(rt);
        })
        .map_err(|e| e.to_string())?;
    Ok(SimHandle { addr, base_url, ca_pem, sim, _stop: Arc::new(StopOnDrop(stop)) })
}

async fn serve(
    listener: std::net::TcpListener,
    sim: Arc<Simulator>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        tracing::error!("simulator: cannot listen");
        return;
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let sim = Arc::clone(&sim);
        match &tls {
            None => {
                tokio::spawn(connection(stream, sim, None));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that does not trust the CA ends here, as with a provider.
                    if let Ok(stream) = acceptor.accept(stream).await {
                        // rustls has checked the chain; what remains is whose it is.
                        let client = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|cert| crate::crypto::subject_common_name(cert.as_ref()));
                        connection(stream, sim, client).await;
                    }
                });
            }
        }
    }
}

/// Serves one connection, plain or TLS (with the CN of the client certificate it
/// presented, if any).
async fn connection<S>(stream: S, sim: Arc<Simulator>, client_certificate: Option<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let sim = Arc::clone(&sim);
        let client_certificate = client_certificate.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = match Limited::new(body, 1 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return Ok::<_, Infallible>(answer(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", "")),
            };
            let headers = parts
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            let req = SimRequest {
                method: parts.method,
                headers,
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or_default().to_owned(),
                body,
                client_certificate,
            };
            Ok(sim.route(req).await)
        }
    });
    // Header names as the providers write them (Wechatpay-Signature, not lowercase).
    let _ = http1::Builder::new().title_case_headers(true).serve_connection(TokioIo::new(stream), service).await;
}

/// A random lowercase hex string of `bytes` bytes.
pub fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes).map(|_| format!("{:02x}", rng.gen::<u8>())).collect()
}

/// Signs a notification body afresh (headers to add), for providers whose signatures
/// carry a time the receiver checks.
pub type Resign = Arc<dyn Fn(&[u8]) -> Vec<(&'static str, String)> + Send + Sync>;

/// A notification to deliver: where, its headers and its body.
pub struct Notification {
    /// The merchant's notify URL.
    pub url: String,
    /// Headers, the content type among them.
    pub headers: Vec<(&'static str, String)>,
    /// The body, exactly as signed.
    pub body: Vec<u8>,
    /// Signs each attempt, when the provider does.
    pub sign: Option<Resign>,
}

/// Posts `n` until an answer is `acknowledged` (the provider's rule for status and
/// body), waiting the scaled `schedule` between attempts (the first attempt is
/// immediate).
pub fn notify_until_acknowledged(
    core: Arc<SimCore>,
    n: Notification,
    acknowledged: fn(u16, &[u8]) -> bool,
    schedule: &'static [Duration],
) {
    tokio::spawn(async move {
        for attempt in 0..=schedule.len() {
            if attempt > 0 {
                let delay = schedule.get(attempt - 1).copied().unwrap_or_default();
                tokio::time::sleep(core.scaled(delay)).await;
            }
            let signed = n.sign.as_ref().map(|sign| sign(&n.body)).unwrap_or_default();
            let headers: Vec<(&str, &str)> = n.headers.iter().chain(&signed).map(|(k, v)| (*k, v.as_str())).collect();
            let answer = core.http.send(Method::POST, &n.url, &headers, n.body.clone(), Duration::from_secs(10)).await;
            if matches!(&answer, Ok(a) if acknowledged(a.status, &a.body)) {
                return;
            }
            tracing::debug!(url = n.url, attempt, "notification not acknowledged");
        }
        tracing::warn!(url = n.url, "notification never acknowledged; giving up as the provider does");
    });
}

/// What the control routes need from a simulated provider.
pub trait Controlled {
    /// The buyer pays `out_trade_no` of `account` (of the account that opened it last,
    /// when `None`); answers the fields to report (the provider's trade number) or why
    /// it cannot be paid.
    fn pay(&self, account: Option<&str>, out_trade_no: &str) -> Result<serde_json::Value, String>;
    /// The provider's view of a trade (chosen as by [`Controlled::pay`]), if it has one.
    fn trade(&self, account: Option<&str>, out_trade_no: &str) -> Option<serde_json::Value>;
    /// Its injected failures.
    fn faults(&self) -> &Mutex<FaultBook>;
}

/// The control routes every provider has, under `/sim/{name}/`: `POST pay`,
/// `GET`/`POST faults`, `GET trades/{out_trade_no}`. `None`: not a control route. A
/// trade may be named with its account (`app_id`, `mch_id`, `merId` or `account`, in
/// the body of `pay` or the query of `trades/…`).
pub fn control(provider: &dyn Controlled, name: &str, req: &SimRequest) -> Option<SimResponse> {
    let rest = req.path.strip_prefix("/sim/")?.strip_prefix(name)?.strip_prefix('/')?;
    let bad =
        |e: serde_json::Error| json_answer(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e.to_string() }));
    Some(match (&req.method, rest) {
        (&Method::POST, "pay") => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Pay {
                out_trade_no: String,
            }
            match account_request::<Pay>(&req.body) {
                Ok((account, p)) if provider.trade(account.as_deref(), &p.out_trade_no).is_none() => {
                    json_answer(StatusCode::NOT_FOUND, &serde_json::json!({ "error": "no such trade" }))
                }
                Ok((account, p)) => match provider.pay(account.as_deref(), &p.out_trade_no) {
                    Ok(paid) => json_answer(StatusCode::OK, &paid),
                    Err(e) => json_answer(StatusCode::CONFLICT, &serde_json::json!({ "error": e })),
                },
                Err(e) => bad(e),
            }
        }
        (&Method::GET, "faults") => json_answer(StatusCode::OK, &lock(provider.faults()).view()),
        (&Method::POST, "faults") => match account_request::<Faults>(&req.body) {
            Ok((account, f)) => {
                let mut book = lock(provider.faults());
                book.set(account, f);
                json_answer(StatusCode::OK, &book.view())
            }
            Err(e) => bad(e),
        },
        (&Method::GET, r) if r.starts_with("trades/") => {
            let account = form_urlencoded::parse(req.query.as_bytes())
                .find(|(k, _)| ACCOUNT_FIELDS.contains(&k.as_ref()))
                .map(|(_, v)| v.into_owned());
            match provider.trade(account.as_deref(), r.trim_start_matches("trades/")) {
                Some(t) => json_answer(StatusCode::OK, &t),
                None => json_answer(StatusCode::NOT_FOUND, &serde_json::json!({ "error": "no such trade" })),
            }
        }
        _ => return None,
    })
}
