//! `paygate bench recovery`: writes a journal of N events through the real journal
//! (group commit, projection), then times a restart of the node on it until the first
//! successful answer — once with the views up to date, once with them deleted so the
//! whole journal is replayed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paygate_actors::ids::{IdGenerator, PayOrderNo, ShardId};
use paygate_actors::money::{Currency, Money};
use paygate_actors::order::{OrderEvent, OrderSpec, PayMethod, QueryPolicy};
use paygate_actors::ports::{Journal, Record};
use paygate_actors::signing::{self, SignType};
use serde_json::json;

use super::spawn_node;
use crate::config::{Config, Overrides};
use crate::http::client::HttpClient;
use crate::storage::{Storage, StorageOptions};

/// Options of the recovery run.
#[derive(Debug, Clone)]
pub struct RecoveryOptions {
    /// Configuration directory.
    pub config: PathBuf,
    /// Journal events to generate (two per order: created, accepted).
    pub events: u64,
    /// Print JSON.
    pub json: bool,
}

fn spec(merchant: &str, i: u64) -> OrderSpec {
    OrderSpec {
        expire_minutes: Some(600),
        ..OrderSpec::new(
            merchant.to_owned(),
            format!("R{i}"),
            Money::from_minor(100 + (i % 1000) as i64, Currency::CNY),
            "recovery".to_owned(),
            PayMethod::Sandbox,
        )
    }
}

/// Opens a fresh data directory at `data` with `config`'s storage settings.
pub fn fresh_storage(config: &Config, data: &std::path::Path) -> Result<Storage, String> {
    let _ = std::fs::remove_dir_all(data);
    Storage::open(&StorageOptions {
        data_dir: data.to_path_buf(),
        segment_bytes: config.storage.segment_bytes,
        max_batch: config.storage.max_batch,
        queue: config.storage.queue,
        cache_bytes: config.storage.cache_bytes,
        reserve_bytes: 0,
        accept_data_loss: false,
        query_policy: QueryPolicy::default(),
    })
    .map_err(|e| e.to_string())
}

/// Writes `orders` orders through the real journal, 512 writers at once: order `i`'s
/// records are `records(id, i)` (each a `seq` and its events). Answers the first
/// order written (its id and `i`).
pub fn write_orders(
    rt: &tokio::runtime::Runtime,
    storage: &Storage,
    orders: u64,
    records: impl Fn(&PayOrderNo, u64) -> Vec<(u64, Vec<OrderEvent>)> + Send + Sync + 'static,
) -> Option<(PayOrderNo, u64)> {
    let writers = 512u64;
    let now = paygate_actors::clock::Clock::now_ms(&paygate_actors::clock::SystemClock);
    let journal = Arc::new(storage.journal.clone());
    let records = Arc::new(records);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (journal, records) = (Arc::clone(&journal), Arc::clone(&records));
            tasks.push(tokio::spawn(async move {
                let mut ids = IdGenerator::new(ShardId(w as u16), 0);
                let mut first = None;
                let mut i = w;
                while i < orders {
                    let id = ids.next(now as u64);
                    for (seq, events) in records(&id, i) {
                        journal.append(Record::Order { pay_order_no: id.clone(), seq, events }).await?;
                    }
                    first.get_or_insert((id, i));
                    i += writers;
                }
                Ok::<_, paygate_actors::ports::StorageError>(first)
            }));
        }
        let mut first = None;
        for t in tasks {
            if let Ok(Ok(Some(f))) = t.await {
                first.get_or_insert(f);
            }
        }
        first
    })
}

/// Generates the journal and times the restarts.
pub fn run(opts: &RecoveryOptions) -> Result<(), String> {
    let config = Config::load(&opts.config, &Overrides::default()).map_err(|e| e.to_string())?;
    let merchant = config.merchants.first().ok_or("the configuration has no merchant")?.clone();
    let data = std::env::temp_dir().join(format!("paygate-recovery-{}", std::process::id()));
    let storage = fresh_storage(&config, &data)?;
    let orders = opts.events.div_ceil(2);
    let now = paygate_actors::clock::Clock::now_ms(&paygate_actors::clock::SystemClock);
    let generated = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let merchant_id = merchant.merchant_id.clone();
    let first_id = write_orders(&rt, &storage, orders, move |id, i| {
        let created = OrderEvent::created(id.clone(), spec(&merchant_id, i), "sandbox".into(), now, 600 * 60_000);
        let accepted =
            OrderEvent::ChannelAccepted { code_url: format!("sandbox://{id}"), channel_trade_no: None, at: now };
        vec![(1, vec![created]), (2, vec![accepted])]
    });
    let generate_secs = generated.elapsed().as_secs_f64();
    let (first_id, first_no) = first_id.ok_or("nothing was written")?;
    storage.close();
    // Blocks in use, not lengths: segments are sized ahead of their records.
    let journal_bytes: u64 = std::fs::read_dir(data.join("journal"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).sum()
        })
        .unwrap_or(0);

    let time_to_answer = |label: &str| -> Result<f64, String> {
        let started = Instant::now();
        let node = spawn_node(&opts.config, &data, &[])?;
        let client = HttpClient::new();
        let mut p = BTreeMap::new();
        p.insert("merchant_id".to_owned(), merchant.merchant_id.clone());
        p.insert("order_no".to_owned(), format!("R{first_no}"));
        p.insert("timestamp".to_owned(), (now / 1000).to_string());
        let sign = signing::sign(&p, &merchant.secret, SignType::HmacSha256);
        p.insert("sign".to_owned(), sign);
        let body = serde_json::to_vec(&p).map_err(|e| e.to_string())?;
        let url = format!("http://{}/api/v1/payment/query", node.addr);
        let answered = rt.block_on(async {
            loop {
                if let Ok(a) = client.post(&url, "application/json", body.clone(), Duration::from_secs(5)).await {
                    if a.status == 200
                        && a.body.windows(first_id.as_str().len()).any(|w| w == first_id.as_str().as_bytes())
                    {
                        return Ok(started.elapsed());
                    }
                }
                if started.elapsed() > Duration::from_secs(600) {
                    return Err(format!("{label}: no answer after 600 s"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })?;
        drop(node);
        Ok(answered.as_secs_f64() * 1000.0)
    };
    let warm_ms = time_to_answer("views up to date")?;
    std::fs::remove_dir_all(data.join("views")).map_err(|e| e.to_string())?;
    let rebuild_ms = time_to_answer("views rebuilt")?;
    let _ = std::fs::remove_dir_all(&data);
    let out = json!({
        "events": orders * 2, "orders": orders, "journal_mb": journal_bytes as f64 / (1 << 20) as f64,
        "generate_s": generate_secs, "events_per_s_written": (orders * 2) as f64 / generate_secs,
        "restart_to_first_answer_ms": warm_ms, "rebuild_to_first_answer_ms": rebuild_ms,
    });
    if opts.json {
        println!("{out}");
    } else {
        println!(
            "{} events ({} orders, {:.1} MiB journal) written in {generate_secs:.1} s\n\
             restart to first answer, views up to date: {warm_ms:.0} ms\n\
             restart to first answer, views deleted (full replay): {rebuild_ms:.0} ms",
            orders * 2,
            orders,
            journal_bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
