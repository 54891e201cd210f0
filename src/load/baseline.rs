//! The baselines: a bare hyper server answering a constant JSON body, run as its own
//! process on the same machine, so the load harness can state the node's throughput
//! as a ratio of what plain HTTP reaches here under the same load generator.
//!
//! With a journal directory it is the *durable floor*: the same server, but each
//! request is first appended to the real journal (group commit, fdatasync) and the
//! answer waits for it. Every pay must do at least that much, so the floor bounds
//! what any durable pay can reach on the machine.
//!
//! With a configuration it is the *authenticated floor*: each request is parsed and
//! authenticated as the node does it (JSON, signature, timestamp, single-use nonce) and
//! answered with one order in memory through the node's own query answer (kept with the
//! order's state, as for an order a merchant polls). Every query must do at least that
//! much (and find its order), so this floor bounds what any authenticated query can
//! reach.
//!
//! With both and `pay`, it is the *pay floor*: each request is authenticated and
//! validated as a pay as the node does it, becomes a new order whose creation and
//! acceptance are journaled as one record (group commit, fdatasync), and is answered
//! after that through the node's own pay answer, with the QR code every pay answer carries.
//! That is the least a pay must do; the node also checks the order number is new,
//! evaluates risk, routes, opens the trade at the channel and keeps its views and
//! actors, none of which the floor does, so the floor bounds what any pay can reach.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use paygate_actors::clock::Clock;
use paygate_actors::clock::SystemClock;
use paygate_actors::ids::{IdGenerator, PayOrderNo, ShardId};
use paygate_actors::merchant::MerchantDirectory;
use paygate_actors::money::{Currency, Money};
use paygate_actors::order::{ChannelNotice, Order, OrderCommand, OrderEvent, OrderSpec, PayMethod};
use paygate_actors::ports::{Journal, Record};
use paygate_actors::shared_order::SharedOrder;

use crate::http::api::{authenticate_with, pay_answer, pay_spec, query_answer, PayLimits};
use crate::storage::journal::{JournalEnd, JournalHandle, JournalOptions, PROJECT_GATHER};

/// Where the floors say their orders can be paid (never visited).
const PUBLIC_URL: &str = "http://127.0.0.1:8080";

const BODY: &[u8] = br#"{"code":"SUCCESS","message":"success","data":{"status":"PAYING"}}"#;

/// The order the authenticated floor shows: a paid sandbox order, built once.
fn shown_order() -> Option<Order> {
    let spec = OrderSpec::new(
        "M20240101001",
        "ORD20240101123456",
        Money::from_minor(1234, Currency::CNY),
        "tea",
        PayMethod::Sandbox,
    );
    let id = PayOrderNo::parse("P179545426626100300000")?;
    let now = SystemClock.now_ms();
    let mut order = Order::from_created(&OrderEvent::created(id, spec, "sandbox".into(), now, 1_800_000))?;
    let trade = "SBX179545426626100300000".to_owned();
    let steps = [
        OrderCommand::Accept {
            code_url: format!("{PUBLIC_URL}/sandbox/pay/P179545426626100300000"),
            channel_trade_no: Some(trade.clone()),
        },
        OrderCommand::Notice(ChannelNotice::Paid { channel_trade_no: trade, amount_minor: 1234 }),
    ];
    for step in steps {
        for event in order.handle(step, now).ok()? {
            order.apply(&event).ok()?;
        }
    }
    Some(order)
}

/// Authenticates `body` as the node does; answers with `order` as the node answers a
/// query, or with the error.
fn authenticated(merchants: &MerchantDirectory, order: &SharedOrder, body: &[u8]) -> Bytes {
    match authenticate_with(merchants, SystemClock.now_ms() / 1000, body) {
        Ok(_) => query_answer(PUBLIC_URL, order),
        Err(e) => refusal(&e),
    }
}

fn refusal(e: &paygate_actors::error::CoreError) -> Bytes {
    Bytes::from(format!("{{\"code\":\"{}\"}}", e.code.as_str()))
}

/// What the pay floor needs: the node's merchants and limits, a journal and ids.
struct PayFloor {
    merchants: MerchantDirectory,
    limits: PayLimits,
    journal: Arc<JournalHandle>,
    ids: std::sync::Mutex<IdGenerator>,
    minute_ms: i64,
}

impl PayFloor {
    /// Does the least a pay must do with `body` (see the module's documentation).
    async fn pay(&self, body: &[u8]) -> Bytes {
        let now = SystemClock.now_ms();
        let (record, order) = match self.order(body, now) {
            Ok(made) => made,
            Err(e) => return refusal(&e),
        };
        match self.journal.append(record).await {
            Ok(_) => pay_answer(PUBLIC_URL, &order),
            Err(_) => Bytes::from_static(b"{}"),
        }
    }

    /// The new order `body` asks for, accepted as the sandbox accepts it, and the
    /// record that journals it.
    fn order(&self, body: &[u8], now: i64) -> Result<(Record, Order), paygate_actors::error::CoreError> {
        let (params, merchant) = authenticate_with(&self.merchants, now / 1000, body)?;
        let spec = pay_spec(&self.limits, &params, &merchant)?;
        let id = {
            let mut ids = self.ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            ids.next(u64::try_from(now).unwrap_or_default())
        };
        let expire_ms = i64::from(spec.expire_minutes.unwrap_or(merchant.expire_minutes)) * self.minute_ms;
        let created = OrderEvent::created(id.clone(), spec, "sandbox".into(), now, expire_ms);
        let bad = || paygate_actors::error::CoreError::system("the floor's order could not be built");
        let mut order = Order::from_created(&created).ok_or_else(bad)?;
        let accept = OrderCommand::Accept {
            code_url: format!("{PUBLIC_URL}/sandbox/pay/{id}"),
            channel_trade_no: Some(format!("SBX{}", id.as_str().get(1..).unwrap_or_default())),
        };
        let mut events = vec![created];
        for event in order.handle(accept, now)? {
            order.apply(&event).map_err(|_| bad())?;
            events.push(event);
        }
        Ok((Record::Order { pay_order_no: id, seq: 1, events }, order))
    }
}

/// What the server does with each request before it answers.
#[derive(Clone)]
enum Work {
    /// Nothing: the baseline.
    Constant,
    /// Journals the request: the durable floor.
    Durable(Arc<JournalHandle>),
    /// Authenticates it and answers a kept query answer: the authenticated floor.
    Authenticated(Arc<(MerchantDirectory, Arc<SharedOrder>)>),
    /// The pay floor.
    Pay(Arc<PayFloor>),
}

impl Work {
    async fn answer(&self, body: &[u8], conn: u64, seq: u64) -> Bytes {
        match self {
            Work::Constant => Bytes::from_static(BODY),
            Work::Durable(journal) => {
                // A record the size of a pay's: the request itself as one event.
                let note = String::from_utf8_lossy(body).into_owned();
                let event = OrderEvent::ChannelRejected { reason: note, at: 0 };
                let Some(id) = PayOrderNo::parse(&format!("P{seq:013}{:04}0000", conn % 10_000)) else {
                    return Bytes::from_static(b"{}");
                };
                let record = Record::Order { pay_order_no: id, seq: 1, events: vec![event] };
                match journal.append(record).await {
                    Ok(_) => Bytes::from_static(BODY),
                    Err(_) => Bytes::from_static(b"{}"),
                }
            }
            Work::Authenticated(m) => authenticated(&m.0, &m.1, body),
            Work::Pay(floor) => floor.pay(body).await,
        }
    }
}

/// Starts a journal in `dir` as the node's, without views.
fn start_journal(dir: &Path) -> Result<Arc<JournalHandle>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let opts = JournalOptions {
        dir: dir.to_path_buf(),
        segment_bytes: 64 << 20,
        max_batch: 1024,
        queue: 65536,
        gather: PROJECT_GATHER,
        reserve_bytes: 0,
    };
    let (journal, _threads) = JournalHandle::start(opts, JournalEnd::default(), None).map_err(|e| e.to_string())?;
    Ok(Arc::new(journal))
}

/// Serves on `listen` with `workers` threads until killed: the constant body; with
/// `journal_dir`, only after the request is durable in a journal there; with
/// `auth_config`, authenticating each request first; with both and `pay`, as the pay
/// floor.
pub fn serve(
    listen: &str,
    workers: usize,
    journal_dir: Option<&Path>,
    auth_config: Option<&Path>,
    pay: bool,
) -> Result<(), String> {
    let config = match auth_config {
        Some(dir) => {
            Some(crate::config::Config::load(dir, &crate::config::Overrides::default()).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let work = match (journal_dir, config, pay) {
        (None, None, false) => Work::Constant,
        (Some(dir), None, false) => Work::Durable(start_journal(dir)?),
        (None, Some(config), false) => {
            let order = SharedOrder::share(shown_order().ok_or("the floor's order could not be built")?);
            Work::Authenticated(Arc::new((
                MerchantDirectory::new(config.merchants.clone(), config.auth_policy()),
                order,
            )))
        }
        (Some(dir), Some(config), true) => Work::Pay(Arc::new(PayFloor {
            merchants: MerchantDirectory::new(config.merchants.clone(), config.auth_policy()),
            limits: PayLimits::from_config(&config).map_err(|e| e.to_string())?,
            journal: start_journal(dir)?,
            ids: std::sync::Mutex::new(IdGenerator::new(ShardId(0), 0)),
            minute_ms: config.orders.minute_ms.max(1) as i64,
        })),
        _ => return Err("the pay floor needs a journal directory and a configuration, and only it does".into()),
    };
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("{listen}: {e}"))?;
        let mut n = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let work = work.clone();
            n += 1;
            let conn = n;
            tokio::spawn(async move {
                let seqs = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seq = seqs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    let work = work.clone();
                    async move {
                        // Read the request body like the node does, then answer.
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let mut resp = Response::new(Full::new(work.answer(&body, conn, seq).await));
                        resp.headers_mut()
                            .insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
