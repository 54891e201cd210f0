//! `paygate bench`: the load harness. It starts a node (or targets one) with the sandbox
//! channel, measures a bare-hyper baseline in the same run, drives signed pay / query /
//! close traffic, and reports throughput, latency percentiles, errors by code and the
//! node's RSS. `recovery` times a restart over a large journal; `soak` watches RSS over
//! millions of completed orders.

pub mod baseline;
pub mod generator;
pub mod listing;
pub mod notify;
pub mod recovery;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use self::generator::{Mix, Op, PhaseResult, Target};

/// A child process (node or baseline) killed when dropped.
pub struct Process {
    child: Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
}

impl Process {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `p` quantile (0..=1) of `sorted` samples, nearest rank; the default when empty.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// A free loopback port.
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_listening(child: &mut Child, addr: std::net::SocketAddr, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("process exited during start: {status}"));
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(format!("nothing listening on {addr} after {limit:?}"))
}

/// Starts `paygate serve` on `data_dir` (this same executable).
pub fn spawn_node(config: &Path, data_dir: &Path, extra_env: &[(&str, String)]) -> Result<Process, String> {
    let port = free_port()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        // Beside a node the user runs, whose simulator has the usual port.
        .env("PAYGATE_SIM__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // The query slices ask for every order the pay slices made: room for all of them
    // (about 1.8 KiB each), unless the caller chose a size.
    if std::env::var_os("PAYGATE_ORDERS__READ_CACHE_BYTES").is_none() {
        cmd.env("PAYGATE_ORDERS__READ_CACHE_BYTES", (1u64 << 30).to_string());
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| format!("starting the node: {e}"))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(&mut child, addr, Duration::from_secs(120))?;
    Ok(Process { child, addr })
}

/// Starts the bare-hyper baseline server; with `journal_dir`, the durable floor; with
/// `auth_config`, the authenticated floor; with both and `pay`, the pay floor.
pub fn spawn_baseline(
    workers: usize,
    journal_dir: Option<&Path>,
    auth_config: Option<&Path>,
    pay: bool,
) -> Result<Process, String> {
    let port = free_port()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench-baseline", "--listen", &format!("127.0.0.1:{port}"), "--workers", &workers.to_string()]);
    if let Some(dir) = journal_dir {
        cmd.arg("--journal-dir").arg(dir);
    }
    if let Some(dir) = auth_config {
        cmd.arg("--auth-config").arg(dir);
    }
    if pay {
        cmd.arg("--pay");
    }
    let mut child = cmd.stdout(Stdio::null()).spawn().map_err(|e| format!("starting the baseline: {e}"))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(&mut child, addr, Duration::from_secs(30))?;
    Ok(Process { child, addr })
}

/// CPU time a process has used, nanoseconds: the sum over its threads of
/// `/proc/<pid>/task/<tid>/schedstat` (Linux; 0 where unreadable).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Runs `work` and returns its result with the CPU process `pid` spent meanwhile (0
/// without a process). Threads that ended meanwhile are not counted, which only
/// happens at start-up.
fn cpu_during<T>(pid: Option<u32>, work: impl FnOnce() -> T) -> (T, u64) {
    let before = pid.map(cpu_ns);
    let out = work();
    let spent = match (pid, before) {
        (Some(pid), Some(before)) => cpu_ns(pid).saturating_sub(before),
        _ => 0,
    };
    (out, spent)
}

/// Runs `phase` and adds the CPU process `pid` spent meanwhile, and this process's
/// (the load generator's).
fn with_cpu(pid: Option<u32>, phase: impl FnOnce() -> PhaseResult) -> PhaseResult {
    let ((mut r, server), client) = cpu_during(Some(std::process::id()), || cpu_during(pid, phase));
    r.server_cpu_ns += server;
    r.client_cpu_ns += client;
    r
}

/// Resident and peak resident memory of a process, MiB (Linux /proc).
pub fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// Options of a throughput run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Configuration directory for the node.
    pub config: PathBuf,
    /// Target an already running node instead of starting one.
    pub url: Option<String>,
    /// Measured seconds per phase (over all its rounds).
    pub duration: Duration,
    /// Slices each compared phase is cut into, alternating with what it is compared to.
    pub rounds: u32,
    /// Keep-alive connections the generator holds open.
    pub connections: usize,
    /// Load generator threads.
    pub threads: usize,
    /// Node (and baseline) worker threads; 0: one per core.
    pub workers: usize,
    /// Weights of the mixed phase.
    pub mix: Mix,
    /// Print one JSON object instead of a table.
    pub json: bool,
}

struct Phase {
    name: &'static str,
    result: PhaseResult,
}

/// Runs the baseline, the floors and the node's pay, query and mixed phases; prints
/// the report.
///
/// Every server is up for the whole run and idle outside its own slices. Each compared
/// phase is cut into `rounds` slices that alternate with the slices of what it is
/// compared to (floor with pay; baseline and authenticated floor with query), so a
/// ratio compares measurements seconds apart instead of a minute apart: on a shared
/// machine the CPU available drifts by more than the differences being measured.
///
/// After each pay slice the harness waits until the node has passivated every order
/// the slice created, and charges the CPU of that wait to pay: it is pay's work, and
/// otherwise it would land in whatever slice came next.
pub fn run(opts: &RunOptions) -> Result<(), String> {
    let workers = match opts.workers {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let config =
        crate::config::Config::load(&opts.config, &crate::config::Overrides::default()).map_err(|e| e.to_string())?;
    let merchant = config.merchants.first().ok_or("the configuration has no merchant")?;
    let warmup = Duration::from_secs(1);
    let rounds = opts.rounds.max(1);
    let slice = opts.duration / rounds;
    let run_id = format!("B{}", std::process::id());

    let data = std::env::temp_dir().join(format!("paygate-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let baseline = spawn_baseline(workers, None, None, false)?;
    let floor = spawn_baseline(workers, Some(&data.join("floor")), None, false)?;
    let auth_floor = spawn_baseline(workers, None, Some(&opts.config), false)?;
    let pay_floor = spawn_baseline(workers, Some(&data.join("payfloor")), Some(&opts.config), true)?;
    let node = match &opts.url {
        Some(_) => None,
        None => {
            Some(spawn_node(&opts.config, &data.join("node"), &[("PAYGATE_SERVER__WORKERS", workers.to_string())])?)
        }
    };
    let node_addr = match (&node, &opts.url) {
        (Some(n), _) => n.addr,
        (None, Some(url)) => url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .map_err(|e| format!("--url must be http://host:port ({e})"))?,
        (None, None) => return Err("no node".into()),
    };
    let node_pid = node.as_ref().map(Process::pid);

    // One slice of load: `mix` against the server at `addr` for `length`.
    let drive = |addr, pid, mix, tag: String, length, known: &Arc<Vec<String>>| {
        if !opts.json {
            eprintln!("slice {tag}: {length:.1?} after {warmup:.1?} of warm-up");
        }
        let target = Arc::new(Target {
            addr,
            merchant: merchant.merchant_id.clone(),
            secret: merchant.secret.clone(),
            run: format!("{run_id}{tag}"),
        });
        with_cpu(pid, || rt.block_on(generator::run(target, mix, opts.connections, warmup, length, Arc::clone(known))))
    };
    let none = Arc::default();
    let pay_only = Mix::only(Op::Pay);
    let [mut base, mut floor_r, mut pay_floor_r, mut auth_r, mut pay, mut query] =
        std::array::from_fn(|_| PhaseResult::empty());
    for round in 0..rounds {
        floor_r.merge(drive(floor.addr, Some(floor.pid()), pay_only, format!("f{round}"), slice, &none));
        pay_floor_r.merge(drive(pay_floor.addr, Some(pay_floor.pid()), pay_only, format!("pf{round}"), slice, &none));
        pay.merge(drive(node_addr, node_pid, pay_only, format!("p{round}"), slice, &none));
        let (waited, cpu) = settle(&rt, node_addr, node_pid);
        pay.server_cpu_ns += cpu;
        if !opts.json {
            eprintln!("round {}: the node passivated the pay slice's orders in {waited:.1?}", round + 1);
        }
    }
    let known = Arc::new(pay.created.clone());
    // How many of the query slices' queries read the views: the read cache's misses.
    let mut views_reads = Some((0.0, 0.0));
    for round in 0..rounds {
        base.merge(drive(baseline.addr, Some(baseline.pid()), pay_only, format!("b{round}"), slice, &none));
        auth_r.merge(drive(auth_floor.addr, Some(auth_floor.pid()), pay_only, format!("a{round}"), slice, &none));
        let before = query_reads(&rt, node_addr);
        query.merge(drive(node_addr, node_pid, Mix::only(Op::Query), format!("q{round}"), slice, &known));
        views_reads = match (views_reads, before, query_reads(&rt, node_addr)) {
            (Some((q, m)), Some((q0, m0)), Some((q1, m1))) => Some((q + q1 - q0, m + m1 - m0)),
            _ => None,
        };
    }
    let views_share = views_reads.filter(|(q, _)| *q > 0.0).map(|(q, m)| m / q);
    let mixed = drive(node_addr, node_pid, opts.mix, "m".into(), opts.duration, &known);
    let (rss, peak) = node.as_ref().map_or((0.0, 0.0), |n| rss_mb(n.pid()));
    drop((node, baseline, floor, auth_floor, pay_floor));
    let _ = std::fs::remove_dir_all(&data);

    let phases = [
        Phase { name: "baseline", result: base },
        Phase { name: "floor", result: floor_r },
        Phase { name: "payfloor", result: pay_floor_r },
        Phase { name: "authfloor", result: auth_r },
        Phase { name: "pay", result: pay },
        Phase { name: "query", result: query },
        Phase { name: "mix", result: mixed },
    ];
    report(opts, workers, &phases, Memory { rss, peak }, views_share);
    Ok(())
}

/// Waits (up to a minute) until the node at `addr` has no live order actors, and
/// returns how long that took and the CPU process `pid` spent meanwhile.
fn settle(rt: &tokio::runtime::Runtime, addr: std::net::SocketAddr, pid: Option<u32>) -> (Duration, u64) {
    let started = Instant::now();
    cpu_during(pid, || {
        while started.elapsed() < Duration::from_secs(60) {
            if rt.block_on(live_order_actors(addr)) <= 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        started.elapsed()
    })
}

/// The node's resident memory at the end of a run and at its peak, MiB.
struct Memory {
    rss: f64,
    peak: f64,
}

/// Prints the run's figures; `views_share` is the share of the query slices' queries
/// that read the views (missed the read cache), when the node's metrics could be read.
fn report(opts: &RunOptions, workers: usize, phases: &[Phase], memory: Memory, views_share: Option<f64>) {
    let Memory { rss, peak } = memory;
    let get = |name: &str| phases.iter().find(|p| p.name == name).map(|p| &p.result);
    let rps = |name: &str| get(name).map_or(0.0, PhaseResult::rps);
    let p99 = |name: &str| get(name).map_or(0.0, |r| r.ms(0.99));
    let base = rps("baseline").max(1e-9);
    // The baseline server's CPU per answer over a phase's: what the ratio of throughputs
    // would be if the server had the cores to itself, free of scheduling noise.
    let cpu = |name: &str| get(name).and_then(PhaseResult::server_cpu_us);
    let cpu_ratio = |name: &str| match (cpu("baseline"), cpu(name)) {
        (Some(b), Some(n)) if n > 0.0 => Some(b / n),
        _ => None,
    };
    // The node CPU a pay could cost for pay to reach half the baseline's rate, if the
    // machine gave pay the CPU it gave the baseline (server and generator together):
    // 2 × (baseline's server + generator CPU per answer) − the generator's per pay.
    let client = |name: &str| get(name).and_then(PhaseResult::client_cpu_us);
    let pay_budget = match (cpu("baseline"), client("baseline"), client("pay")) {
        (Some(s), Some(g), Some(gp)) => Some(2.0 * (s + g) - gp),
        _ => None,
    };
    let mut errors = std::collections::BTreeMap::new();
    for p in phases.iter().filter(|p| !matches!(p.name, "baseline" | "floor" | "payfloor" | "authfloor")) {
        for (k, v) in &p.result.errors {
            *errors.entry(format!("{}:{k}", p.name)).or_insert(0u64) += v;
        }
    }
    if opts.json {
        let phase_json: serde_json::Map<String, serde_json::Value> = phases
            .iter()
            .map(|p| {
                let r = &p.result;
                (
                    p.name.to_owned(),
                    json!({"requests": r.requests, "rps": r.rps(), "p50_ms": r.ms(0.5), "p90_ms": r.ms(0.9),
                           "p99_ms": r.ms(0.99), "p999_ms": r.ms(0.999), "errors": r.errors,
                           "server_cpu_us_per_request": r.server_cpu_us(),
                           "generator_cpu_us_per_request": r.client_cpu_us()}),
                )
            })
            .collect();
        let out = json!({
            "pay_rps": rps("pay"), "query_rps": rps("query"), "mix_rps": rps("mix"), "baseline_rps": base,
            "pay_ratio": rps("pay") / base, "query_ratio": rps("query") / base,
            "floor_rps": rps("floor"), "floor_ratio": rps("floor") / base, "pay_to_floor": rps("pay") / rps("floor").max(1e-9),
            "pay_floor_rps": rps("payfloor"), "pay_floor_ratio": rps("payfloor") / base,
            "pay_to_pay_floor": rps("pay") / rps("payfloor").max(1e-9), "pay_cpu_budget_us": pay_budget,
            "auth_floor_rps": rps("authfloor"), "auth_floor_ratio": rps("authfloor") / base,
            "query_to_auth_floor": rps("query") / rps("authfloor").max(1e-9), "auth_floor_cpu_ratio": cpu_ratio("authfloor"),
            "pay_p99_ms": p99("pay"), "query_p99_ms": p99("query"), "errors": errors,
            "query_cpu_ratio": cpu_ratio("query"), "pay_cpu_ratio": cpu_ratio("pay"),
            "query_views_share": views_share,
            "rss_mb": rss, "peak_rss_mb": peak, "connections": opts.connections, "duration_s": opts.duration.as_secs_f64(),
            "rounds": opts.rounds,
            "generator_threads": opts.threads, "node_workers": workers, "phases": phase_json,
        });
        println!("{out}");
        return;
    }
    println!(
        "{} connections, {:?} per phase in {} round(s), {} generator thread(s), {workers} node worker(s)\n",
        opts.connections, opts.duration, opts.rounds, opts.threads
    );
    println!(
        "{:<9} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9}  errors",
        "phase", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9", "cpu µs/rq"
    );
    for p in phases {
        let r = &p.result;
        let errs: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<9} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9}  {}",
            p.name,
            r.requests,
            r.rps(),
            r.ms(0.5),
            r.ms(0.9),
            r.ms(0.99),
            r.ms(0.999),
            r.server_cpu_us().map_or("-".to_owned(), |c| format!("{c:.1}")),
            if errs.is_empty() { "-".to_owned() } else { errs.join(" ") }
        );
    }
    let ratio = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.3}"));
    println!(
        "\npay/baseline = {:.3}   query/baseline = {:.3}   floor/baseline = {:.3}   pay/floor = {:.3}\n\
         payfloor/baseline = {:.3}   pay/payfloor = {:.3}   node CPU a pay may cost for 0.5 × baseline: {} µs\n\
         authfloor/baseline = {:.3}   query/authfloor = {:.3}\n\
         server CPU per request, baseline over: query {}, pay {}, authfloor {}\n\
         queries that read the views (read cache misses): {}\n\
         node RSS {rss:.1} MiB (peak {peak:.1} MiB)",
        rps("pay") / base,
        rps("query") / base,
        rps("floor") / base,
        rps("pay") / rps("floor").max(1e-9),
        rps("payfloor") / base,
        rps("pay") / rps("payfloor").max(1e-9),
        pay_budget.map_or("-".to_owned(), |b| format!("{b:.1}")),
        rps("authfloor") / base,
        rps("query") / rps("authfloor").max(1e-9),
        ratio(cpu_ratio("query")),
        ratio(cpu_ratio("pay")),
        ratio(cpu_ratio("authfloor")),
        views_share.map_or("-".to_owned(), |s| format!("{:.1}%", s * 100.0)),
    );
}

/// The node's `/metrics` text (`None` if it cannot be read).
async fn node_metrics(addr: std::net::SocketAddr) -> Option<String> {
    let url = format!("http://{addr}/metrics");
    let answer = crate::http::client::HttpClient::new()
        .send(hyper::Method::GET, &url, &[], Vec::new(), Duration::from_secs(5))
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&answer.body).into_owned())
}

/// The sum of the samples in `text` of metric `name` whose labels include every one of
/// `labels` (`None` if there is none).
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labelled, value) = rest.rsplit_once(' ')?;
            let fits =
                (labelled.is_empty() || labelled.starts_with('{')) && labels.iter().all(|x| labelled.contains(x));
            value.trim().parse::<f64>().ok().filter(|_| fits)
        })
        .reduce(|a, b| a + b)
}

/// The node's `paygate_live_order_actors` gauge (-1 if it cannot be read).
async fn live_order_actors(addr: std::net::SocketAddr) -> i64 {
    let text = node_metrics(addr).await.unwrap_or_default();
    metric_sum(&text, "paygate_live_order_actors", &[]).map_or(-1, |v| v as i64)
}

/// The queries the node has answered and the reads its read cache missed so far (none
/// until the first is counted).
fn query_reads(rt: &tokio::runtime::Runtime, addr: std::net::SocketAddr) -> Option<(f64, f64)> {
    let text = rt.block_on(node_metrics(addr))?;
    let count = |name, labels: &[&str]| metric_sum(&text, name, labels).unwrap_or(0.0);
    Some((
        count("paygate_http_request_seconds_count", &["path=\"/api/v1/payment/query\""]),
        count("paygate_read_cache_misses_total", &[]),
    ))
}

/// Options of the soak run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Configuration directory.
    pub config: PathBuf,
    /// Orders to complete.
    pub orders: u64,
    /// Keep-alive connections the generator holds open.
    pub connections: usize,
    /// Seconds between RSS samples.
    pub sample: Duration,
    /// Print JSON.
    pub json: bool,
}

/// Drives pay + close until `orders` orders are complete, sampling the node's RSS.
pub fn soak(opts: &SoakOptions) -> Result<(), String> {
    let config =
        crate::config::Config::load(&opts.config, &crate::config::Overrides::default()).map_err(|e| e.to_string())?;
    let merchant = config.merchants.first().ok_or("the configuration has no merchant")?;
    let data = std::env::temp_dir().join(format!("paygate-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let node = spawn_node(&opts.config, &data, &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let target = Arc::new(Target {
        addr: node.addr,
        merchant: merchant.merchant_id.clone(),
        secret: merchant.secret.clone(),
        run: format!("S{}", std::process::id()),
    });
    let mut completed = 0u64;
    let mut samples: Vec<(u64, f64)> = Vec::new();
    let started = Instant::now();
    let mut errors = 0u64;
    while completed < opts.orders {
        // Each slice: pay and close in equal parts, so every created order completes.
        let r = rt.block_on(generator::run(
            Arc::clone(&target),
            Mix { pay: 1, query: 0, close: 1 },
            opts.connections,
            Duration::ZERO,
            opts.sample,
            Arc::default(),
        ));
        completed += r.closed;
        errors += r.errors.values().sum::<u64>();
        let (rss, _) = rss_mb(node.pid());
        let live = rt.block_on(live_order_actors(node.addr));
        samples.push((completed, rss));
        if !opts.json {
            println!("{completed:>10} orders  {rss:>8.1} MiB  {live:>7} live order actors  ({:.0} req/s)", r.rps());
        }
    }
    // The first sample includes start-up growth (caches, pools); flatness is judged after it.
    let steady: Vec<f64> = samples.iter().skip(1).map(|s| s.1).collect();
    let (lo, hi) = steady.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let spread = if steady.is_empty() { 0.0 } else { (hi - lo) / lo.max(1e-9) };
    let stored = std::fs::read_dir(data.join("journal")).map(|d| d.count()).unwrap_or(0);
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    let out = json!({
        "orders": completed, "seconds": started.elapsed().as_secs_f64(), "errors": errors,
        "rss_samples_mb": samples.iter().map(|s| s.1).collect::<Vec<_>>(),
        "steady_min_mb": lo, "steady_max_mb": hi, "steady_spread": spread, "journal_segments": stored,
    });
    if opts.json {
        println!("{out}");
    } else {
        println!("RSS after warm-up: {lo:.1}..{hi:.1} MiB, spread {:.1}%", spread * 100.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn a_metric_is_summed_over_the_samples_with_its_labels() {
        let text = "# TYPE x counter\n\
                    paygate_live_order_actors 3\n\
                    paygate_live_order_actors_peak 9\n\
                    req_count{path=\"/q\",status=\"200\"} 10\n\
                    req_count{path=\"/q\",status=\"400\"} 2\n\
                    req_count{path=\"/p\",status=\"200\"} 7\n";
        assert_eq!(metric_sum(text, "paygate_live_order_actors", &[]), Some(3.0));
        assert_eq!(metric_sum(text, "req_count", &["path=\"/q\""]), Some(12.0));
        assert_eq!(metric_sum(text, "req_count", &[]), Some(19.0));
        assert_eq!(metric_sum(text, "req_count", &["path=\"/x\""]), None);
        assert_eq!(metric_sum(text, "absent", &[]), None);
    }
}
