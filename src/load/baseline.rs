//! The baselines: a bare hyper server answering a constant JSON body, run as its own
//! process on the same machine, so the load harness can state the node's throughput
//! as a ratio of what plain HTTP reaches here under the same load generator.
//!
//! With a journal directory it is the *durable floor*: the same server, but each
//! request is first appended to the real journal (group commit, fdatasync) and the
//! answer waits for it. Every pay must do at least that much, so the floor bounds
//! what any durable pay can reach on the machine.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::order::OrderEvent;
use paygate_actors::ports::{Journal, Record};

use crate::storage::journal::{JournalHandle, JournalOptions};
use crate::storage::views::Position;

const BODY: &[u8] = br#"{"code":"SUCCESS","message":"success","data":{"status":"PAYING"}}"#;

/// Serves the constant body on `listen` with `workers` threads until killed; with
/// `journal_dir`, only after the request is durable in a journal there.
pub fn serve(listen: &str, workers: usize, journal_dir: Option<&Path>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let journal = match journal_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let opts =
                JournalOptions { dir: dir.to_path_buf(), segment_bytes: 64 << 20, max_batch: 1024, queue: 65536 };
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
            n += 1;
            let conn = n;
            tokio::spawn(async move {
                let seqs = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seq = seqs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    let journal = journal.clone();
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
                        let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
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
