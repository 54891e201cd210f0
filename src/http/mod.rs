//! The HTTP server (hyper 1, HTTP/1.1 keep-alive): one accept loop per worker arbiter,
//! all sharing one listening socket.

pub mod admin;
pub mod api;
pub mod callback;
pub mod client;
pub mod envelope;
pub mod pages;
pub mod params;
pub mod reconcile_gate;
pub mod ssrf;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use paygate_actors::channel::ChannelDirectory;
use paygate_actors::clock::Clock;
use paygate_actors::merchant::MerchantDirectory;
use paygate_actors::order_router::OrderRouter;
use paygate_actors::ports::CallbackRequest;
use serde_json::json;

use self::envelope::{json_response, with_body, ApiError, HttpResponse};
use crate::sandbox::Sandbox;

/// The OpenAPI document of the merchant API (kept true by `tests/openapi.rs`).
const OPENAPI: &str = include_str!("openapi.json");

/// Everything a request handler needs.
pub struct App {
    /// Orders.
    pub router: OrderRouter,
    /// Who may call, and how their requests are authenticated.
    pub merchants: MerchantDirectory,
    /// The merchants' delivery actors.
    pub notifier: paygate_actors::notifier::NotifierDirectory,
    /// Notifications as the views hold them.
    pub notifications: Arc<dyn paygate_actors::ports::NotifyStore>,
    /// Checks merchants' notify URLs at pay time.
    pub url_guard: ssrf::UrlGuard,
    /// Refunds answered in the last moments, by (merchant, refund_no): the views' refund
    /// index trails the journal by milliseconds, and a merchant asks right away.
    pub recent_refunds: api::RecentRefunds,
    /// The configured channels: what routing picks from, and their live statistics.
    pub channels: ChannelDirectory,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The sandbox provider, when configured.
    pub sandbox: Option<Arc<Sandbox>>,
    /// The built-in simulator's address, and the channels that use it: their buyers pay
    /// at its cashier pages, which the hosted cashier links.
    pub simulator: Option<(String, std::collections::HashSet<String>)>,
    /// How merchants and buyers reach this node.
    pub public_url: String,
    /// Admin bearer token.
    pub admin_token: String,
    /// Held while an operator's change is journaled and applied, so changes take
    /// effect in the order the journal keeps them (and a restart replays).
    pub admin_changes: tokio::sync::Mutex<()>,
    /// Largest request body.
    pub max_body: usize,
    /// What a pay request may ask for.
    pub limits: api::PayLimits,
    /// Length of one expire minute, millis (60000; shorter only in tests).
    pub minute_ms: i64,
    /// Longest a request waits for its order.
    pub request_timeout: Duration,
    /// Client header read timeout.
    pub header_timeout: Duration,
    /// Prometheus rendering.
    pub metrics: Option<PrometheusHandle>,
    /// API requests being handled now.
    pub inflight: AtomicUsize,
    /// Most API requests handled at once; beyond it the answer is 429, not a queue.
    pub max_inflight: usize,
    /// The node's request rate over every merchant ([`paygate_actors::rate_limit`]).
    pub rate: Option<paygate_actors::rate_limit::TokenBucket>,
    /// What rate limits measure time from (monotonic).
    pub started: std::time::Instant,
    /// Bounds the channel queries that unverifiable callbacks cause.
    pub reconcile_gate: reconcile_gate::ReconcileGate,
    /// Requests of any kind being handled now (what a graceful stop waits for).
    pub active: AtomicUsize,
    /// Set once the node is stopping: answers close their connections. Read on every
    /// request, so a plain flag; the acceptor is woken by `stop_accepting`.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Wakes the acceptor to stop (it holds the permit if it was not waiting yet).
    pub stop_accepting: tokio::sync::Notify,
}

impl App {
    /// Stops accepting connections and waits, at most `limit`, for the requests being
    /// handled to finish; answers how many were still running.
    pub fn drain(&self, limit: Duration) -> usize {
        self.stopping.store(true, Ordering::Release);
        self.stop_accepting.notify_one();
        let deadline = std::time::Instant::now() + limit;
        while self.active.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.active.load(Ordering::Acquire)
    }
}

/// Holds one of the node's in-flight API slots.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<'a> Slot<'a> {
    fn hold(counter: &'a AtomicUsize) -> Slot<'a> {
        counter.fetch_add(1, Ordering::AcqRel);
        Slot(counter)
    }
}

impl App {
    /// Microseconds since the node started: the clock of rate limits.
    pub fn now_us(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    fn admit(&self) -> Result<Slot<'_>, ApiError> {
        if let Some(Err(wait)) = self.rate.as_ref().map(|b| b.take(self.now_us())) {
            metrics::counter!("paygate_rate_limited_total", "scope" => "node").increment(1);
            return Err(ApiError::RateLimited { retry_after: wait, scope: "the node's" });
        }
        if self.inflight.fetch_add(1, Ordering::AcqRel) >= self.max_inflight {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::Core(paygate_actors::error::CoreError::overloaded()));
        }
        Ok(Slot(&self.inflight))
    }
}

impl App {
    /// Samples what lives in actors and atomics into gauges, just before a scrape.
    fn record_gauges(&self) {
        let oc = self.router.context();
        metrics::gauge!("paygate_live_order_actors").set(oc.registry.live_orders() as f64);
        metrics::gauge!("paygate_api_requests_in_flight").set(self.inflight.load(Ordering::Relaxed) as f64);
        let cache = &oc.registry.read_cache;
        metrics::gauge!("paygate_read_cache_orders").set(cache.len() as f64);
        metrics::counter!("paygate_read_cache_misses_total").absolute(cache.misses());
        for p in self.channels.profiles() {
            let Some(ch) = self.channels.get(&p.code) else { continue };
            let s = &ch.stats;
            let counters = [
                ("ok", &s.ok),
                ("rejected", &s.rejected),
                ("unknown", &s.unknown),
                ("unavailable", &s.unavailable),
                ("breaker_open", &s.breaker_open),
            ];
            for (outcome, counter) in counters {
                metrics::counter!("paygate_channel_calls_total", "channel" => p.code.clone(), "outcome" => outcome)
                    .absolute(counter.load(Ordering::Relaxed));
            }
            let live = &ch.live;
            let (p50, p95) = live.latency_us();
            let code = p.code.clone();
            metrics::gauge!("paygate_channel_breaker_state", "channel" => code.clone()).set(live.breaker().gauge());
            metrics::gauge!("paygate_channel_success_ratio", "channel" => code.clone()).set(live.success_rate());
            metrics::gauge!("paygate_channel_latency_p50_seconds", "channel" => code.clone()).set(p50 as f64 / 1e6);
            metrics::gauge!("paygate_channel_latency_p95_seconds", "channel" => code.clone()).set(p95 as f64 / 1e6);
            metrics::gauge!("paygate_channel_enabled", "channel" => code).set(if live.enabled() { 1.0 } else { 0.0 });
        }
    }
}

/// A QR data URI for `text` (`None`, logged, if it cannot be encoded).
pub fn qr(text: &str) -> Option<String> {
    match crate::qr::png_data_uri(text) {
        Ok(uri) => Some(uri),
        Err(e) => {
            tracing::warn!(error = %e, "QR rendering failed");
            None
        }
    }
}

/// Accepts connections on `listener` and hands them to `workers` in turn, until the
/// arbiter stops. One acceptor, not one per worker: with a shared listener a burst of
/// new connections lands on whichever worker happens to be awake (perf showed one
/// worker at 87% CPU and the other at 27%), and a connection never moves afterwards.
pub async fn serve(listener: std::net::TcpListener, app: Arc<App>, workers: Vec<actix_rt::ArbiterHandle>) {
    let listener = match listener.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(listener)) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve on the listener");
            return;
        }
    };
    for turn in 0usize.. {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = app.stop_accepting.notified() => {
                tracing::info!("stopping: no new connections");
                return;
            }
        };
        let stream = match accepted.and_then(|(s, _)| s.into_std()) {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = Arc::clone(&app);
        let connection = async move {
            match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => serve_connection(stream, app).await,
                Err(e) => tracing::warn!(error = %e, "cannot adopt a connection"),
            }
        };
        let spawned = match workers.get(turn % workers.len().max(1)) {
            Some(worker) => worker.spawn(connection),
            None => {
                tokio::task::spawn_local(connection);
                true
            }
        };
        if !spawned {
            tracing::warn!("a worker arbiter has stopped; connection dropped");
        }
    }
}

/// Serves one connection. A connection that does not complete a request's headers within
/// `header_timeout` (slowloris) is closed by hyper, and so is one idle that long after
/// its last answer.
async fn serve_connection(stream: tokio::net::TcpStream, app: Arc<App>) {
    let _ = stream.set_nodelay(true);
    let header_timeout = app.header_timeout;
    let service = service_fn(move |req| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(route(&app, req).await) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Reads a request's body, refusing one that does not arrive within the header timeout:
/// hyper's timeout covers only the headers, so a body sent slowly enough would otherwise
/// hold its connection (and an API slot) for good. A body that came with its headers,
/// the usual case, is read without arming a timer.
async fn read_body(app: &App, req: Request<Incoming>) -> Result<(hyper::http::request::Parts, Bytes), ApiError> {
    tokio::time::timeout(app.header_timeout, read_whole_body(app, req)).await.unwrap_or_else(|_| {
        Err(ApiError::Core(paygate_actors::error::CoreError::invalid(
            "body",
            format_args!("was not received within {} s", app.header_timeout.as_secs_f64()),
        )))
    })
}

async fn read_whole_body(app: &App, req: Request<Incoming>) -> Result<(hyper::http::request::Parts, Bytes), ApiError> {
    let (parts, mut body) = req.into_parts();
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body as u64) {
        // Refused at once; what has already arrived is read so the client sees the 413
        // rather than a reset, but nothing waits for a body that is slow or never sent.
        let _ = tokio::time::timeout(REFUSED_BODY_GRACE, drain(body, app.max_body)).await;
        return Err(ApiError::TooLarge(app.max_body));
    }
    let mut collected = bytes::BytesMut::with_capacity(declared.map_or(1024, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::Core(paygate_actors::error::CoreError::invalid("body", format_args!("could not be read ({e})")))
        })?;
        let Ok(data) = frame.into_data() else { continue };
        if collected.len() + data.len() > app.max_body {
            drain(body, app.max_body).await;
            return Err(ApiError::TooLarge(app.max_body));
        }
        collected.extend_from_slice(&data);
    }
    Ok((parts, collected.freeze()))
}

/// How long a refused body is read before the 413 goes out anyway.
const REFUSED_BODY_GRACE: Duration = Duration::from_millis(200);

/// Reads and drops the rest of a refused body (up to a bound), so the client is still
/// reading when the 413 arrives instead of meeting a reset connection.
async fn drain(body: Incoming, limit: usize) {
    let _ = Limited::new(body, limit.saturating_mul(16)).collect().await;
}

/// The merchant API's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Endpoint {
    Pay,
    Query,
    Close,
    NotifyQuery,
    NotifyResend,
    RefundApply,
    RefundQuery,
    PaymentList,
    RefundList,
    BillDownload,
}

impl Endpoint {
    const ALL: [Endpoint; 10] = [
        Endpoint::Pay,
        Endpoint::Query,
        Endpoint::Close,
        Endpoint::NotifyQuery,
        Endpoint::NotifyResend,
        Endpoint::RefundApply,
        Endpoint::RefundQuery,
        Endpoint::PaymentList,
        Endpoint::RefundList,
        Endpoint::BillDownload,
    ];

    /// The endpoint at `path`, if it is one.
    fn at(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::Pay => "/api/v1/payment/pay",
            Endpoint::Query => "/api/v1/payment/query",
            Endpoint::Close => "/api/v1/payment/close",
            Endpoint::NotifyQuery => "/api/v1/notify/query",
            Endpoint::NotifyResend => "/api/v1/notify/resend",
            Endpoint::RefundApply => "/api/v1/refund/apply",
            Endpoint::RefundQuery => "/api/v1/refund/query",
            Endpoint::PaymentList => "/api/v1/payment/list",
            Endpoint::RefundList => "/api/v1/refund/list",
            Endpoint::BillDownload => "/api/v1/bill/download",
        }
    }
}

thread_local! {
    /// Latency histograms by (endpoint, status), looked up once per thread: building a
    /// labelled key per request cost more than the rest of a query's bookkeeping.
    static REQUEST_SECONDS: std::cell::RefCell<std::collections::HashMap<(Endpoint, u16), metrics::Histogram>> =
        std::cell::RefCell::default();
}

fn record_request(endpoint: Endpoint, status: StatusCode, seconds: f64) {
    REQUEST_SECONDS.with(|cache| {
        cache
            .borrow_mut()
            .entry((endpoint, status.as_u16()))
            .or_insert_with(|| {
                let path = endpoint.path();
                metrics::histogram!("paygate_http_request_seconds", "path" => path, "status" => status.as_u16().to_string())
            })
            .record(seconds);
    });
}

async fn route(app: &App, req: Request<Incoming>) -> HttpResponse {
    let _active = Slot::hold(&app.active);
    let started = std::time::Instant::now();
    let method = req.method().clone();
    // A `Uri` clone shares the request's bytes; the path is not copied.
    let uri = req.uri().clone();
    let endpoint = Endpoint::at(uri.path());
    // A browser that follows a wrong link gets a page, an API client the envelope.
    let browser = endpoint.is_none()
        && req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
    let result = match endpoint {
        Some(endpoint) => api_call(app, req, &method, endpoint).await,
        None => dispatch(app, req, &method, uri.path()).await,
    };
    let mut resp = match result {
        Err(ApiError::NotFound) if browser => pages::not_found("There is no page at this address."),
        other => other.unwrap_or_else(ApiError::into_response),
    };
    if let Some(endpoint) = endpoint {
        record_request(endpoint, resp.status(), started.elapsed().as_secs_f64());
    }
    if app.stopping.load(Ordering::Acquire) {
        resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    }
    resp
}

/// A merchant API call: POST only, within the node's in-flight limit.
async fn api_call(
    app: &App,
    req: Request<Incoming>,
    method: &Method,
    endpoint: Endpoint,
) -> Result<HttpResponse, ApiError> {
    if method != Method::POST {
        return Err(ApiError::MethodNotAllowed("POST"));
    }
    let _slot = app.admit()?;
    let (_, body) = read_body(app, req).await?;
    match endpoint {
        Endpoint::Pay => api::pay(app, &body).await,
        Endpoint::Query => api::query(app, &body).await,
        Endpoint::Close => api::close(app, &body).await,
        Endpoint::NotifyQuery => api::notify_query(app, &body).await,
        Endpoint::NotifyResend => api::notify_resend(app, &body).await,
        Endpoint::RefundApply => api::refund_apply(app, &body).await,
        Endpoint::RefundQuery => api::refund_query(app, &body).await,
        Endpoint::PaymentList => api::payment_list(app, &body).await,
        Endpoint::RefundList => api::refund_list(app, &body).await,
        Endpoint::BillDownload => api::bill_download(app, &body).await,
    }
}

/// Everything but the merchant API.
async fn dispatch(app: &App, req: Request<Incoming>, method: &Method, path: &str) -> Result<HttpResponse, ApiError> {
    let post = method == Method::POST;
    let get = method == Method::GET;
    match path {
        // Alive: the process answers (a full disk does not make it dead: reads go on).
        "/healthz" if get => {
            let storage = if app.router.context().journal.writable().is_ok() { "ok" } else { "full" };
            Ok(json_response(StatusCode::OK, &json!({ "status": "ok", "storage": storage })))
        }
        // Ready for writes: a load balancer sends pays elsewhere while the disk is full.
        "/readyz" if get => Ok(match app.router.context().journal.writable() {
            Ok(()) => json_response(StatusCode::OK, &json!({ "status": "ready", "storage": "ok" })),
            Err(_) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "status": "not_ready", "storage": "full", "reason": "the journal's disk is full; reads go on" }),
            ),
        }),
        "/openapi.json" if get => Ok(with_body(StatusCode::OK, "application/json", OPENAPI)),
        "/metrics" if get => {
            app.record_gauges();
            let text = app.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default();
            Ok(with_body(StatusCode::OK, "text/plain; version=0.0.4", text))
        }
        _ => {
            if let Some(provider) = path.strip_prefix("/callback/") {
                if !post {
                    return Err(ApiError::MethodNotAllowed("POST"));
                }
                let (parts, body) = read_body(app, req).await?;
                let headers = parts
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect();
                return callback::handle(app, provider, CallbackRequest { headers, body: body.to_vec() }).await;
            }
            if path == "/admin/notify/resend" {
                if !post {
                    return Err(ApiError::MethodNotAllowed("POST"));
                }
                let (parts, body) = read_body(app, req).await?;
                return admin::notify_resend(app, &parts.headers, &body).await;
            }
            if path == "/admin/channels" || path.starts_with("/admin/channels/") {
                let code = path.strip_prefix("/admin/channels/").filter(|c| !c.is_empty());
                let (parts, body) = read_body(app, req).await?;
                return admin::channels(app, method, code, &parts.headers, &body).await;
            }
            if let Some(merchant_id) =
                path.strip_prefix("/admin/merchants/").and_then(|rest| rest.strip_suffix("/routing"))
            {
                let (parts, body) = read_body(app, req).await?;
                return admin::routing(app, method, merchant_id, &parts.headers, &body).await;
            }
            if let Some(rest) = path.strip_prefix("/admin/risk").filter(|r| r.is_empty() || r.starts_with('/')) {
                let (parts, body) = read_body(app, req).await?;
                return admin::risk(app, method, rest.trim_start_matches('/'), &parts.headers, &body).await;
            }
            if let Some(rest) = path.strip_prefix("/admin/sandbox/") {
                let (parts, body) = read_body(app, req).await?;
                return admin::sandbox(app, method, rest, &parts.headers, &body).await;
            }
            if let Some(rest) = path.strip_prefix("/h5/") {
                if !get {
                    return Err(ApiError::MethodNotAllowed("GET"));
                }
                return Ok(match rest.strip_suffix("/status") {
                    Some(id) => pages::cashier_status(app, id, req.uri().query().unwrap_or_default()).await,
                    None => pages::cashier(app, rest).await,
                });
            }
            if let Some(id) = path.strip_prefix("/sandbox/pay/") {
                return match *method {
                    Method::GET => Ok(pages::sandbox_cashier(app, id, false).await),
                    Method::POST => Ok(pages::sandbox_cashier(app, id, true).await),
                    _ => Err(ApiError::MethodNotAllowed("GET, POST")),
                };
            }
            // Where UnionPay sends the buyer back (its default frontUrl), and anyone who
            // opens the node's address.
            if path == "/" {
                return match *method {
                    Method::GET | Method::POST => Ok(pages::landing(app, req).await),
                    _ => Err(ApiError::MethodNotAllowed("GET, POST")),
                };
            }
            Err(ApiError::NotFound)
        }
    }
}
