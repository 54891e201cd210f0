//! `paygate bench list`: N orders of one merchant written through the real journal,
//! all on yesterday's business day (one in a hundred paid, the rest closed, creation
//! times a millisecond apart), then the time a node takes to answer `payment/list` —
//! the newest page, a page filtered by a rare status, pages deep into the listing by
//! cursor — and to stream that day's bill of N lines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use paygate_actors::clock::Clock;
use paygate_actors::clock::SystemClock;
use paygate_actors::merchant::MerchantProfile;
use paygate_actors::money::{Currency, Money};
use paygate_actors::order::{OrderEvent, OrderSpec, PayMethod};
use paygate_actors::signing;
use serde_json::{json, Value};

use super::recovery::{fresh_storage, write_orders};
use super::spawn_node;
use crate::config::{Config, Overrides};
use crate::http::client::HttpClient;

/// Options of the listing run.
#[derive(Debug, Clone)]
pub struct ListBenchOptions {
    /// Configuration directory.
    pub config: PathBuf,
    /// Orders in the merchant's history.
    pub orders: u64,
    /// Print JSON.
    pub json: bool,
}

fn signed_body(merchant: &MerchantProfile, extra: &[(&str, String)]) -> Vec<u8> {
    let mut p = BTreeMap::new();
    p.insert("merchant_id".to_owned(), merchant.merchant_id.clone());
    p.insert("timestamp".to_owned(), (SystemClock.now_ms() / 1000).to_string());
    for (k, v) in extra {
        p.insert((*k).to_owned(), v.clone());
    }
    let sign = signing::sign(&p, &merchant.secret, merchant.sign_type());
    p.insert("sign".to_owned(), sign);
    serde_json::to_vec(&p).unwrap_or_default()
}

/// A bill download: its lines (without the header), size and time to its end.
#[derive(serde::Serialize)]
struct BillTiming {
    lines: usize,
    bytes: usize,
    total_ms: f64,
}

/// Latencies of one kind of request, millis.
#[derive(serde::Serialize)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    n: usize,
}

fn summary(mut samples: Vec<f64>) -> Latency {
    samples.sort_by(f64::total_cmp);
    let at = |p| super::percentile(&samples, p);
    Latency { p50_ms: at(0.5), p99_ms: at(0.99), max_ms: at(1.0), n: samples.len() }
}

/// Writes the history, starts a node on it and times the listings.
pub fn run(opts: &ListBenchOptions) -> Result<(), String> {
    let config = Config::load(&opts.config, &Overrides::default()).map_err(|e| e.to_string())?;
    let merchant = config.merchants.first().ok_or("the configuration has no merchant")?.clone();
    let data = std::env::temp_dir().join(format!("paygate-bench-list-{}", std::process::id()));
    let storage = fresh_storage(&config, &data)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let orders = opts.orders.max(1);
    // Noon of yesterday's business day (UTC+8): the whole history is one finished day.
    let now = SystemClock.now_ms();
    let day = paygate_actors::daily_volume::business_day(now) - 1;
    let yesterday = day * 86_400_000 - 8 * 3_600_000 + 12 * 3_600_000;
    let bill_date = paygate_actors::time_fmt::date(yesterday + 8 * 3_600_000);
    let generated = Instant::now();
    let merchant_id = merchant.merchant_id.clone();
    write_orders(&rt, &storage, orders, move |id, i| {
        let at = yesterday - (orders - i) as i64;
        let amount = Money::from_minor(100, Currency::CNY);
        let spec = OrderSpec {
            expire_minutes: Some(600),
            ..OrderSpec::new(merchant_id.clone(), format!("L{i}"), amount, "listing".to_owned(), PayMethod::Sandbox)
        };
        let mut events = vec![
            OrderEvent::created(id.clone(), spec, "sandbox".into(), at, 600 * 60_000),
            OrderEvent::ChannelAccepted { code_url: format!("sandbox://{id}"), channel_trade_no: None, at },
        ];
        if i % 100 == 0 {
            events.push(OrderEvent::Paid { channel_trade_no: format!("T{i}"), amount_minor: 100, at });
        } else {
            events.push(OrderEvent::Closed { at });
        }
        vec![(1, events)]
    })
    .ok_or("nothing was written")?;
    let generate_secs = generated.elapsed().as_secs_f64();
    storage.close();

    let node = spawn_node(&opts.config, &data, &[])?;
    let url = format!("http://{}/api/v1/payment/list", node.addr);
    // The bill of a million lines is ~200 MiB: more than a channel's answer may be.
    let options = crate::http::client::ClientOptions { max_answer: 1 << 30, ..Default::default() };
    let client = HttpClient::with(&options)?;
    let result = rt.block_on(async {
        let call = |extra: Vec<(&'static str, String)>| {
            let body = signed_body(&merchant, &extra);
            let (client, url) = (client.clone(), url.clone());
            async move {
                let started = Instant::now();
                let a = client.post(&url, "application/json", body, Duration::from_secs(30)).await?;
                let v: Value = serde_json::from_slice(&a.body).map_err(|e| e.to_string())?;
                if v.get("code").and_then(Value::as_str) != Some("SUCCESS") {
                    return Err(format!("listing refused: {v}"));
                }
                Ok::<_, String>((started.elapsed().as_secs_f64() * 1000.0, v))
            }
        };
        let start = ("start_time", "2000-01-01T00:00:00Z".to_owned());
        let mut newest = Vec::new();
        let mut filtered = Vec::new();
        for _ in 0..100 {
            newest.push(call(vec![start.clone(), ("limit", "100".into())]).await?.0);
            let rare = vec![start.clone(), ("limit", "100".into()), ("status", "SUCCESS".into())];
            filtered.push(call(rare).await?.0);
        }
        let mut deep = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..200 {
            let mut extra = vec![start.clone(), ("limit", "100".into())];
            if let Some(c) = &cursor {
                extra.push(("cursor", c.clone()));
            }
            let (ms, v) = call(extra).await?;
            deep.push(ms);
            match v.pointer("/data/next_cursor").and_then(Value::as_str) {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        // The bill: time to its end.
        let body = signed_body(&merchant, &[("bill_date", bill_date.clone())]);
        let bill_url = url.replace("/payment/list", "/bill/download");
        let started = Instant::now();
        let a = client.post(&bill_url, "application/json", body, Duration::from_secs(600)).await?;
        let total_ms = started.elapsed().as_secs_f64() * 1000.0;
        let lines = a.body.iter().filter(|b| **b == b'\n').count();
        if a.status != 200 || lines < 2 {
            return Err(format!("bill: HTTP {} with {lines} lines", a.status));
        }
        let bill = BillTiming { lines: lines - 1, bytes: a.body.len(), total_ms };
        Ok::<_, String>((summary(newest), summary(filtered), summary(deep), bill))
    });
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    let (newest, filtered, deep, bill) = result?;
    if opts.json {
        let out = json!({
            "orders": orders, "generate_s": generate_secs,
            "newest_page_100": newest, "status_filtered_page_100": filtered, "cursor_pages_100": deep,
            "bill": bill,
        });
        println!("{out}");
    } else {
        println!("{orders} orders written in {generate_secs:.1} s; payment/list, 100 a page:");
        for (name, l) in [("newest page", &newest), ("SUCCESS only (1%)", &filtered), ("pages by cursor", &deep)] {
            println!(
                "  {name:>18}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {}",
                l.p50_ms, l.p99_ms, l.max_ms, l.n
            );
        }
        let mib = bill.bytes as f64 / (1 << 20) as f64;
        println!("  the day's bill: {} lines, {mib:.1} MiB, in {:.0} ms", bill.lines, bill.total_ms);
    }
    Ok(())
}
