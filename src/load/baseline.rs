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

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use paygate_actors::clock::SystemClock;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::merchant::{AuthPolicy, MerchantDirectory};
use paygate_actors::money::{Currency, Money};
use paygate_actors::order::{ChannelNotice, Order, OrderCommand, OrderEvent, OrderSpec, PayMethod};
use paygate_actors::ports::{Clock, Journal, Record};
use paygate_actors::shared_order::SharedOrder;

use crate::http::api::{authenticate_with, query_answer};
use crate::storage::journal::{JournalHandle, JournalOptions, PROJECT_GATHER};
use crate::storage::views::Position;

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
            code_url: "http://127.0.0.1:8080/sandbox/pay/P179545426626100300000".into(),
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
        Ok(_) => query_answer("http://127.0.0.1:8080", order),
        Err(e) => Bytes::from(format!("{{\"code\":\"{}\"}}", e.code.as_str())),
    }
}

/// Serves the constant body on `listen` with `workers` threads until killed; with
/// `journal_dir`, only after the request is durable in a journal there; with
/// `auth_config`, authenticating each request first.
pub fn serve(
    listen: &str,
    workers: usize,
    journal_dir: Option<&Path>,
    auth_config: Option<&Path>,
) -> Result<(), String> {
    let merchants = match auth_config {
        Some(dir) => {
            let config =
                crate::config::Config::load(dir, &crate::config::Overrides::default()).map_err(|e| e.to_string())?;
            let policy =
                AuthPolicy { timestamp_window_secs: config.auth.timestamp_window_secs, ..AuthPolicy::default() };
            let order = SharedOrder::share(shown_order().ok_or("the floor's order could not be built")?);
            Some(Arc::new((MerchantDirectory::new(config.merchants.clone(), policy), order)))
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let journal = match journal_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let opts = JournalOptions {
                dir: dir.to_path_buf(),
                segment_bytes: 64 << 20,
                max_batch: 1024,
                queue: 65536,
                gather: PROJECT_GATHER,
            };
            let (journal, _threads) =
                JournalHandle::start(opts, Position::default(), None).map_err(|e| e.to_string())?;
            Some(Arc::new(journal))
        }
        None => None,
    };
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("{listen}: {e}"))?;
        let mut n = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let journal = journal.clone();
            let merchants = merchants.clone();
            n += 1;
            let conn = n;
            tokio::spawn(async move {
                let seqs = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seq = seqs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    let journal = journal.clone();
                    let merchants = merchants.clone();
                    async move {
                        // Read the request body like the node does, then answer.
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        if let Some(journal) = journal {
                            // A record the size of a pay's: the request itself as one event.
                            let note = String::from_utf8_lossy(&body).into_owned();
                            let event = OrderEvent::ChannelRejected { reason: note, at: 0 };
                            let Some(id) = PayOrderNo::parse(&format!("P{seq:013}{:04}0000", conn % 10_000)) else {
                                return Ok(Response::new(Full::new(Bytes::from_static(b"{}"))));
                            };
                            let record = Record::Order { pay_order_no: id, seq: 1, events: vec![event] };
                            if journal.append(record).await.is_err() {
                                return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))));
                            }
                        }
                        let answer = match &merchants {
                            Some(m) => authenticated(&m.0, &m.1, &body),
                            None => Bytes::from_static(BODY),
                        };
                        let mut resp = Response::new(Full::new(answer));
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
