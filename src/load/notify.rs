//! `paygate bench notify`: N orders paid through the sandbox, their notifications
//! delivered to a receiver in this process; deliveries per second and the time from an
//! order's payment to its notification's arrival — then the same while another
//! merchant's endpoint is dead (accepts connections and never answers), which must not
//! slow the healthy merchant down.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper_util::rt::TokioIo;
use paygate_actors::clock::Clock;
use paygate_actors::clock::SystemClock;
use paygate_actors::merchant::MerchantProfile;
use paygate_actors::signing;
use serde_json::{json, Value};

use super::{percentile, spawn_node};
use crate::config::{Config, Overrides};
use crate::http::client::HttpClient;

/// Options of the notify run.
#[derive(Debug, Clone)]
pub struct NotifyBenchOptions {
    /// Configuration directory.
    pub config: PathBuf,
    /// Orders per phase.
    pub orders: u64,
    /// Requests in flight while paying.
    pub connections: usize,
    /// Print JSON.
    pub json: bool,
}

/// What the receiver saw: per notify_id, the millis from payment to arrival.
#[derive(Default)]
struct Seen {
    latencies_ms: Vec<i64>,
    ids: HashSet<String>,
    duplicates: u64,
    last_at: Option<Instant>,
}

/// A receiver that answers SUCCESS and times each notification from its `paid_time`.
async fn receiver(seen: Arc<Mutex<Seen>>) -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let url = format!("http://{}/notify", listener.local_addr().map_err(|e| e.to_string())?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let arrived = SystemClock.now_ms();
                        let fields: BTreeMap<String, String> = serde_json::from_slice(&body).unwrap_or_default();
                        let paid = fields.get("paid_time").and_then(|t| crate::time_fmt::parse_rfc3339(t));
                        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                        let id = fields.get("notify_id").cloned().unwrap_or_default();
                        if s.ids.insert(id) {
                            if let Some(paid) = paid {
                                s.latencies_ms.push(arrived - paid);
                            }
                        } else {
                            s.duplicates += 1;
                        }
                        s.last_at = Some(Instant::now());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"SUCCESS"))))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(url)
}

/// An endpoint that takes connections and never answers.
async fn dead_endpoint() -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let url = format!("http://{}/notify", listener.local_addr().map_err(|e| e.to_string())?);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    Ok(url)
}

/// A copy of `config` whose merchants may all be notified on loopback.
fn loopback_config(config: &Path, into: &Path) -> Result<(), String> {
    std::fs::create_dir_all(into).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(config).map_err(|e| e.to_string())?.flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), into.join(entry.file_name())).map_err(|e| e.to_string())?;
        }
    }
    let path = into.join("merchants.toml");
    let mut table: toml::Table =
        std::fs::read_to_string(&path).map_err(|e| e.to_string())?.parse().map_err(|e| format!("{e}"))?;
    if let Some(toml::Value::Array(merchants)) = table.get_mut("merchants") {
        for m in merchants.iter_mut().filter_map(|m| m.as_table_mut()) {
            m.insert("allow_private_notify".into(), toml::Value::Boolean(true));
        }
    }
    std::fs::write(&path, toml::to_string(&table).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

/// Creates `n` orders of `merchant` notifying `url` and has the sandbox pay each.
async fn pay_orders(
    base: &str,
    admin_token: &str,
    merchant: &MerchantProfile,
    url: &str,
    run: &str,
    n: u64,
    connections: usize,
) -> Result<u64, String> {
    let client = HttpClient::new();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (client, next, errors) = (client.clone(), Arc::clone(&next), Arc::clone(&errors));
        let (base, token, url, run) = (base.to_owned(), admin_token.to_owned(), url.to_owned(), run.to_owned());
        let merchant = merchant.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let mut p = BTreeMap::new();
                for (k, v) in [
                    ("merchant_id", merchant.merchant_id.clone()),
                    ("order_no", format!("{run}-{i}")),
                    ("amount", "1.00".to_owned()),
                    ("subject", "bench".to_owned()),
                    ("pay_method", "SANDBOX".to_owned()),
                    ("notify_url", url.clone()),
                    ("timestamp", (SystemClock.now_ms() / 1000).to_string()),
                    ("sign_type", merchant.sign_type().as_str().to_owned()),
                ] {
                    p.insert(k.to_owned(), v);
                }
                let sign = signing::sign(&p, &merchant.secret, merchant.sign_type());
                p.insert("sign".to_owned(), sign);
                let body = serde_json::to_vec(&p).unwrap_or_default();
                let paid = async {
                    let a = client
                        .post(&format!("{base}/api/v1/payment/pay"), "application/json", body, Duration::from_secs(30))
                        .await?;
                    let v: Value = serde_json::from_slice(&a.body).map_err(|e| e.to_string())?;
                    let id = v
                        .pointer("/data/pay_order_no")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("pay refused: {v}"))?
                        .to_owned();
                    let auth = format!("Bearer {token}");
                    let a = client
                        .send(
                            hyper::Method::POST,
                            &format!("{base}/admin/sandbox/orders/{id}/pay"),
                            &[("authorization", auth.as_str())],
                            Vec::new(),
                            Duration::from_secs(30),
                        )
                        .await?;
                    (a.status == 200).then_some(()).ok_or_else(|| format!("sandbox pay answered {}", a.status))
                };
                if paid.await.is_err() {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(errors.load(std::sync::atomic::Ordering::Relaxed))
}

/// Waits until `n` distinct notifications arrived or nothing arrived for 10 s.
async fn wait_delivered(seen: &Mutex<Seen>, n: u64) {
    loop {
        let (count, last) = {
            let s = seen.lock().unwrap_or_else(|p| p.into_inner());
            (s.ids.len() as u64, s.last_at)
        };
        if count >= n || last.is_some_and(|l| l.elapsed() > Duration::from_secs(10)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One phase's figures for the healthy merchant.
#[derive(serde::Serialize)]
struct Phase {
    orders: u64,
    pay_errors: u64,
    delivered: usize,
    duplicates: u64,
    deliveries_per_sec: f64,
    paid_to_delivered_ms: Percentiles,
}

#[derive(serde::Serialize)]
struct Percentiles {
    p50: i64,
    p99: i64,
    max: i64,
}

fn summary(seen: &Mutex<Seen>, orders: u64, pay_errors: u64, started: Instant) -> Phase {
    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut l = s.latencies_ms.clone();
    l.sort_unstable();
    let span = s.last_at.map_or(0.0, |t| t.duration_since(started).as_secs_f64());
    Phase {
        orders,
        pay_errors,
        delivered: s.ids.len(),
        duplicates: s.duplicates,
        deliveries_per_sec: if span > 0.0 { s.ids.len() as f64 / span } else { 0.0 },
        paid_to_delivered_ms: Percentiles {
            p50: percentile(&l, 0.5),
            p99: percentile(&l, 0.99),
            max: percentile(&l, 1.0),
        },
    }
}

/// Runs both phases on a fresh node.
pub fn run(opts: &NotifyBenchOptions) -> Result<(), String> {
    let config = Config::load(&opts.config, &Overrides::default()).map_err(|e| e.to_string())?;
    let healthy = config.merchants.first().ok_or("the configuration has no merchant")?.clone();
    let other = config.merchants.get(1).ok_or("the dead-endpoint phase needs a second merchant")?.clone();
    let work = std::env::temp_dir().join(format!("paygate-bench-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let config_dir = work.join("config");
    loopback_config(&opts.config, &config_dir)?;
    let node = spawn_node(&config_dir, &work.join("data"), &[])?;
    let base = format!("http://{}", node.addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(async {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let url = receiver(Arc::clone(&seen)).await?;
        let started = Instant::now();
        let errors =
            pay_orders(&base, &config.admin.token, &healthy, &url, "NB1", opts.orders, opts.connections).await?;
        wait_delivered(&seen, opts.orders - errors).await;
        let alone = summary(&seen, opts.orders, errors, started);

        let seen = Arc::new(Mutex::new(Seen::default()));
        let url = receiver(Arc::clone(&seen)).await?;
        let dead = dead_endpoint().await?;
        let half = opts.connections.div_ceil(2);
        let started = Instant::now();
        let (errors, dead_errors) = tokio::join!(
            pay_orders(&base, &config.admin.token, &healthy, &url, "NB2", opts.orders, half),
            pay_orders(&base, &config.admin.token, &other, &dead, "NB3", opts.orders, half),
        );
        let errors = errors?;
        dead_errors?;
        wait_delivered(&seen, opts.orders - errors).await;
        let beside_dead = summary(&seen, opts.orders, errors, started);
        Ok::<_, String>((alone, beside_dead))
    });
    drop(node);
    let _ = std::fs::remove_dir_all(&work);
    let (alone, beside_dead) = result?;
    if opts.json {
        println!("{}", json!({ "alone": alone, "beside_a_dead_endpoint": beside_dead }));
    } else {
        for (name, p) in [("alone", &alone), ("beside a dead endpoint", &beside_dead)] {
            let l = &p.paid_to_delivered_ms;
            println!(
                "{name:>24}: {} of {} delivered ({} duplicates), {:.0} deliveries/s, paid→delivered p50 {} ms, p99 {} ms, max {} ms",
                p.delivered, p.orders, p.duplicates, p.deliveries_per_sec, l.p50, l.p99, l.max,
            );
        }
    }
    Ok(())
}
