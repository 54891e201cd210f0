//! The command line: `paygate serve`, `paygate client …` (signs and sends merchant API
//! requests) and `paygate sandbox …` (drives the sandbox channel of a running node).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use paygate_actors::clock::Clock;
use paygate_actors::clock::SystemClock;
use paygate_actors::signing::{self, SignType};
use serde_json::Value;

use crate::config::{Config, Overrides};
use crate::http::client::HttpClient;

/// paygate: a payment gateway.
#[derive(Debug, Parser)]
#[command(
    name = "paygate",
    version,
    about,
    after_help = "A node (`paygate serve`) serves the merchant API, the hosted cashier (/h5/<pay_order_no>) \
                  and /metrics on server.listen (http://127.0.0.1:8080 by default), and the built-in channel \
                  simulator, where buyers of the demo channels pay, on port 9100 (sim.listen). It prints \
                  every address when it starts."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (embedded storage, configured channels and merchants).
    Serve {
        /// Configuration directory.
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// Listen address (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (overrides storage.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Refuse to start with the public demo master key or the demo admin token.
        #[arg(long)]
        production: bool,
        /// Start even though acknowledged records are missing from the journal (its tail
        /// was lost): the views are rebuilt from what is left and those orders are gone.
        /// Only after `paygate journal verify` and a failed restore.
        #[arg(long)]
        accept_data_loss: bool,
    },
    /// Inspect the journal of a stopped node.
    Journal(JournalArgs),
    /// Seal a secret for the configuration files, or make a new master key.
    Secret(SecretArgs),
    /// Risk control's score: make a labelled synthetic history, or fit the model's
    /// weights to a labelled history.
    Risk(RiskArgs),
    /// Run the channel simulator alone (the providers' gateways on loopback), for a
    /// gateway whose channels point at it.
    Sim {
        /// Configuration directory (reads sim.toml and the master key settings).
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: String,
        /// Where the simulated providers keep their trades across restarts.
        #[arg(long, default_value = "sim-data")]
        data_dir: PathBuf,
        /// Serve HTTPS with a CA made at start, written to <data-dir>/ca.pem: give that
        /// file to a channel as its `ca_file` setting.
        #[arg(long)]
        tls: bool,
    },
    /// Sign and send a merchant API request.
    Client(ClientArgs),
    /// A merchant-side notification receiver: verifies both signatures, answers
    /// SUCCESS and prints each notification as a JSON line.
    Receiver {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9200")]
        listen: String,
        /// The merchant's secret (default: the demo merchant's, from the configuration).
        #[arg(long, env = "PAYGATE_MERCHANT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// The merchant whose secret the configuration holds.
        #[arg(long, default_value = "M20240101001")]
        merchant_id: String,
        /// Configuration directory.
        #[arg(long, default_value = "config")]
        config: PathBuf,
    },
    /// Tell the sandbox channel of a running node to pay, fail or hang an order.
    Sandbox(SandboxArgs),
    /// Load harness: throughput and latency against a same-run baseline; `recovery`
    /// and `soak` modes.
    Bench(BenchArgs),
    /// The bare hyper server the load harness uses as its baseline.
    #[command(hide = true)]
    BenchBaseline {
        /// Listen address.
        #[arg(long)]
        listen: String,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Make each request durable in a journal here before answering (the durable floor).
        #[arg(long)]
        journal_dir: Option<PathBuf>,
        /// Authenticate each request against this configuration's merchants and answer
        /// with the node's query view of one order in memory (the authenticated floor).
        #[arg(long)]
        auth_config: Option<PathBuf>,
        /// With both of the above: take each request as a pay, journal its new order
        /// and answer as the node answers a pay, QR code included (the pay floor).
        #[arg(long)]
        pay: bool,
    },
}

/// `paygate bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Configuration directory (the node's, and the merchant that signs).
    #[arg(long, default_value = "config", global = true)]
    pub config: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Slices each phase is cut into, alternating with the slices it is compared to
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32, global = true)]
    pub connections: usize,
    /// Load generator threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Node and baseline worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Weights pay:query:close of the mixed phase.
    #[arg(long, default_value = "2:7:1")]
    pub mix: String,
    /// Target a running node instead of starting one (http://host:port).
    #[arg(long)]
    pub url: Option<String>,
    /// Another measurement instead of throughput.
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
}

/// Other measurements.
#[derive(Debug, Subcommand)]
pub enum BenchMode {
    /// Write a journal of N events, then time restarts to the first answer.
    Recovery {
        /// Events in the journal.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// Pay N orders through the sandbox and time their notifications to a local
    /// receiver, alone and beside another merchant's dead endpoint.
    Notify {
        /// Orders per phase.
        #[arg(long, default_value_t = 2_000)]
        orders: u64,
    },
    /// Write a merchant history of N orders, then time payment/list on it.
    List {
        /// Orders in the history.
        #[arg(long, default_value_t = 1_000_000)]
        orders: u64,
    },
    /// Complete N orders (pay + close) and watch the node's RSS.
    Soak {
        /// Orders to complete.
        #[arg(long, default_value_t = 5_000_000)]
        orders: u64,
        /// Seconds between RSS samples.
        #[arg(long, default_value_t = 10)]
        sample_secs: u64,
    },
}

/// Runs `paygate bench …`.
pub fn bench(args: BenchArgs) -> CliResult {
    match args.mode {
        None => crate::load::run(&crate::load::RunOptions {
            config: args.config,
            url: args.url,
            duration: Duration::from_secs(args.duration.max(1)),
            rounds: args.rounds.max(1),
            connections: args.connections.max(1),
            threads: args.threads.max(1),
            workers: args.workers,
            mix: crate::load::generator::Mix::parse(&args.mix)?,
            json: args.json,
        }),
        Some(BenchMode::Recovery { events }) => crate::load::recovery::run(&crate::load::recovery::RecoveryOptions {
            config: args.config,
            events,
            json: args.json,
        }),
        Some(BenchMode::Notify { orders }) => crate::load::notify::run(&crate::load::notify::NotifyBenchOptions {
            config: args.config,
            orders: orders.max(1),
            connections: args.connections.max(1),
            json: args.json,
        }),
        Some(BenchMode::List { orders }) => crate::load::listing::run(&crate::load::listing::ListBenchOptions {
            config: args.config,
            orders,
            json: args.json,
        }),
        Some(BenchMode::Soak { orders, sample_secs }) => crate::load::soak(&crate::load::SoakOptions {
            config: args.config,
            orders,
            connections: args.connections.max(1),
            sample: Duration::from_secs(sample_secs.max(1)),
            json: args.json,
        }),
    }
}

/// Where and as whom the client talks.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The node's URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// Configuration directory to read the merchant's secret from.
    #[arg(long, default_value = "config", global = true)]
    pub config: PathBuf,
    /// Merchant id (default: the first merchant in merchants.toml).
    #[arg(long, global = true)]
    pub merchant: Option<String>,
    /// Merchant secret (default: from merchants.toml).
    #[arg(long, env = "PAYGATE_CLIENT_SECRET", hide_env_values = true, global = true)]
    pub secret: Option<String>,
    /// Signature scheme.
    #[arg(long, default_value = "HMAC-SHA256", global = true)]
    pub sign_type: String,
    /// Print the qr_code data URI in full.
    #[arg(long, global = true)]
    pub full: bool,
    /// The request.
    #[command(subcommand)]
    pub action: ClientAction,
}

/// Merchant API requests.
#[derive(Debug, Subcommand)]
pub enum ClientAction {
    /// Create a payment.
    Pay {
        /// Amount, e.g. 1.00.
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// Merchant order number (default: generated).
        #[arg(long)]
        order_no: Option<String>,
        /// ALIPAY, WECHAT_PAY, UNION_PAY, BALANCE or SANDBOX.
        #[arg(long, default_value = "SANDBOX")]
        method: String,
        /// Shown to the buyer.
        #[arg(long, default_value = "paygate demo")]
        subject: String,
        /// ISO currency.
        #[arg(long)]
        currency: Option<String>,
        /// Order lifetime.
        #[arg(long)]
        expire_minutes: Option<u32>,
        /// Where results are posted.
        #[arg(long)]
        notify_url: Option<String>,
        /// Where the buyer returns.
        #[arg(long)]
        return_url: Option<String>,
    },
    /// Read an order.
    Query(OrderRef),
    /// Close an unpaid order.
    Close(OrderRef),
    /// Refund part or all of a paid order.
    Refund {
        /// The order to refund, by either number.
        #[command(flatten)]
        order: OrderRef,
        /// Your refund number (default: generated); the same number again is the same refund.
        #[arg(long)]
        refund_no: Option<String>,
        /// How much, e.g. 1.00.
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        /// Where the refund's outcome is posted.
        #[arg(long)]
        notify_url: Option<String>,
    },
    /// Read a refund by our number or yours.
    #[group(required = true, multiple = false)]
    RefundQuery {
        /// Our refund number (R…).
        #[arg(long)]
        refund_order_no: Option<String>,
        /// Your refund number.
        #[arg(long)]
        refund_no: Option<String>,
    },
    /// List your orders (or refunds) created in a time range, newest first.
    List {
        /// Refunds instead of orders.
        #[arg(long)]
        refunds: bool,
        /// Created at or after (RFC 3339; default: 24 hours ago).
        #[arg(long)]
        start_time: Option<String>,
        /// Created before (RFC 3339; default: now).
        #[arg(long)]
        end_time: Option<String>,
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// At most this many (1 to 100).
        #[arg(long)]
        limit: Option<u32>,
        /// The previous page's next_cursor.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Download your bill of a day that has ended (CSV on standard output).
    Bill {
        /// The business day, YYYY-MM-DD.
        #[arg(long)]
        date: String,
    },
    /// An order's notifications to the merchant, with every attempt.
    NotifyQuery(OrderRef),
    /// Send an order's latest notification again now.
    NotifyResend(OrderRef),
}

/// Names an order: by our number or the merchant's, one of the two.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct OrderRef {
    /// Our order number.
    #[arg(long)]
    pub pay_order_no: Option<String>,
    /// The merchant's order number.
    #[arg(long)]
    pub order_no: Option<String>,
}

/// Sandbox control.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// The node's URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Admin token (default: admin.token from the configuration).
    #[arg(long, env = "PAYGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Configuration directory.
    #[arg(long, default_value = "config")]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub action: SandboxAction,
}

/// Sandbox actions.
#[derive(Debug, Subcommand)]
pub enum SandboxAction {
    /// The buyer pays the order.
    Pay {
        /// pay_order_no.
        id: String,
    },
    /// The payment fails.
    Fail {
        /// pay_order_no.
        id: String,
        /// Why.
        #[arg(long, default_value = "declined")]
        reason: String,
    },
    /// The sandbox stops answering about this order.
    Hang {
        /// pay_order_no.
        id: String,
    },
    /// Set injected latency and error rates.
    Settings {
        /// Added latency.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Share of calls failing with an unknown outcome.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Share of calls never answered.
        #[arg(long, default_value_t = 0.0)]
        hang_rate: f64,
    },
}

/// A CLI failure, printed to stderr.
pub type CliResult = Result<(), String>;

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

/// Writes to standard output. A reader that went away (`| head`) is not an error: the
/// command ends quietly, as Unix tools do.
pub fn out(bytes: &[u8]) -> CliResult {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("standard output: {e}")),
        _ => Ok(()),
    }
}

/// Sends a request to the node; a node that does not answer at all is named with how to
/// start one.
async fn ask_node(
    base: &str,
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<crate::http::client::Answer, String> {
    HttpClient::new().send(method, url, headers, body, Duration::from_secs(30)).await.map_err(|e| {
        format!(
            "the node at {base} is not reachable ({e}). Start one with `cargo run --release -- serve` \
             (or `paygate serve`), or point --url at a running node"
        )
    })
}

fn print_answer(status: u16, body: &[u8], full: bool) -> CliResult {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(body)))?;
    if !full {
        if let Some(Value::String(qr)) = value.pointer_mut("/data/qr_code") {
            if qr.len() > 64 {
                let short: String = qr.chars().take(48).collect();
                *qr = format!("{short}… ({} bytes; --full prints it)", qr.len());
            }
        }
    }
    out(format!("{}\n", serde_json::to_string_pretty(&value).unwrap_or_default()).as_bytes())?;
    match value.get("code").and_then(Value::as_str) {
        Some("SUCCESS") => Ok(()),
        _ => Err(format!("HTTP {status}")),
    }
}

/// Runs `paygate client …`.
pub fn client(args: ClientArgs) -> CliResult {
    let config = Config::load(&args.config, &Overrides::default());
    let unusable = |e: &crate::config::ConfigError| format!("{e} (or pass --merchant and --secret)");
    let merchant = match (&args.merchant, &config) {
        (Some(m), _) => m.clone(),
        (None, Ok(c)) => {
            c.merchants.first().map(|m| m.merchant_id.clone()).ok_or("no merchant configured; pass --merchant")?
        }
        (None, Err(e)) => return Err(unusable(e)),
    };
    let secret = match (&args.secret, &config) {
        (Some(s), _) => s.clone(),
        (None, Ok(c)) => c
            .merchants
            .iter()
            .find(|m| m.merchant_id == merchant)
            .map(|m| m.secret.clone())
            .ok_or_else(|| format!("merchant {merchant} is not in the configuration; pass --secret"))?,
        (None, Err(e)) => return Err(unusable(e)),
    };
    let sign_type = SignType::parse(&args.sign_type).ok_or("--sign-type must be HMAC-SHA256 or MD5")?;
    let now_ms = SystemClock.now_ms();
    let mut p = BTreeMap::new();
    p.insert("merchant_id".to_owned(), merchant);
    p.insert("timestamp".to_owned(), (now_ms / 1000).to_string());
    if sign_type != SignType::HmacSha256 {
        p.insert("sign_type".to_owned(), sign_type.as_str().to_owned());
    }
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            p.insert(k.to_owned(), v);
        }
    };
    let path = match &args.action {
        ClientAction::Pay { .. } => "payment/pay",
        ClientAction::Query(_) => "payment/query",
        ClientAction::Close(_) => "payment/close",
        ClientAction::NotifyQuery(_) => "notify/query",
        ClientAction::Refund { .. } => "refund/apply",
        ClientAction::List { refunds: true, .. } => "refund/list",
        ClientAction::List { refunds: false, .. } => "payment/list",
        ClientAction::Bill { .. } => "bill/download",
        ClientAction::RefundQuery { .. } => "refund/query",
        ClientAction::NotifyResend(_) => "notify/resend",
    };
    let path = match args.action {
        ClientAction::Pay { amount, order_no, method, subject, currency, expire_minutes, notify_url, return_url } => {
            put("order_no", Some(order_no.unwrap_or_else(|| format!("CLI{now_ms}"))));
            put("amount", Some(amount));
            put("pay_method", Some(method));
            put("subject", Some(subject));
            put("currency", currency);
            put("expire_minutes", expire_minutes.map(|m| m.to_string()));
            put("notify_url", notify_url);
            put("return_url", return_url);
            path
        }
        ClientAction::Refund { order, refund_no, amount, reason, notify_url } => {
            put("pay_order_no", order.pay_order_no);
            put("order_no", order.order_no);
            put("refund_no", Some(refund_no.unwrap_or_else(|| format!("RF{now_ms}"))));
            put("refund_amount", Some(amount));
            put("reason", reason);
            put("notify_url", notify_url);
            path
        }
        ClientAction::List { start_time, end_time, status, limit, cursor, .. } => {
            let day_ago = paygate_actors::time_fmt::Rfc3339(now_ms - 86_400_000).to_string();
            put("start_time", Some(start_time.unwrap_or(day_ago)));
            put("end_time", end_time);
            put("status", status);
            put("limit", limit.map(|l| l.to_string()));
            put("cursor", cursor);
            path
        }
        ClientAction::Bill { date } => {
            put("bill_date", Some(date));
            path
        }
        ClientAction::RefundQuery { refund_order_no, refund_no } => {
            put("refund_order_no", refund_order_no);
            put("refund_no", refund_no);
            path
        }
        ClientAction::Query(r)
        | ClientAction::Close(r)
        | ClientAction::NotifyQuery(r)
        | ClientAction::NotifyResend(r) => {
            put("pay_order_no", r.pay_order_no);
            put("order_no", r.order_no);
            path
        }
    };
    let sign = signing::sign(&p, &secret, sign_type);
    p.insert("sign".to_owned(), sign);
    let body = serde_json::to_vec(&p).map_err(|e| e.to_string())?;
    let url = format!("{}/api/v1/{path}", args.url.trim_end_matches('/'));
    let base = args.url.trim_end_matches('/');
    let headers = [("content-type", "application/json")];
    let answer = runtime()?.block_on(ask_node(base, hyper::Method::POST, &url, &headers, body))?;
    if answer.status == 200 && answer.header("content-type").is_some_and(|t| t.starts_with("text/csv")) {
        return out(&answer.body);
    }
    print_answer(answer.status, &answer.body, args.full)
}

/// Runs `paygate sandbox …`.
pub fn sandbox(args: SandboxArgs) -> CliResult {
    let token = match args.token {
        Some(t) => t,
        None => Config::load(&args.config, &Overrides::default()).map_err(|e| e.to_string())?.admin.token,
    };
    let base = args.url.trim_end_matches('/');
    let (path, body) = match args.action {
        SandboxAction::Pay { id } => (format!("orders/{id}/pay"), Value::Null),
        SandboxAction::Fail { id, reason } => (format!("orders/{id}/fail"), serde_json::json!({ "reason": reason })),
        SandboxAction::Hang { id } => (format!("orders/{id}/hang"), Value::Null),
        SandboxAction::Settings { latency_ms, error_rate, hang_rate } => (
            "settings".to_owned(),
            serde_json::json!({ "latency_ms": latency_ms, "error_rate": error_rate, "hang_rate": hang_rate }),
        ),
    };
    let auth = format!("Bearer {token}");
    let url = format!("{base}/admin/sandbox/{path}");
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let answer = runtime()?.block_on(ask_node(base, hyper::Method::POST, &url, &headers, body))?;
    print_answer(answer.status, &answer.body, true)
}

/// `paygate risk`.
#[derive(Debug, Args)]
pub struct RiskArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RiskCommand,
}

/// Risk subcommands.
#[derive(Debug, Subcommand)]
pub enum RiskCommand {
    /// Write a labelled synthetic history (CSV: the score's features and `label`); the
    /// same seed makes the same file (docs/risk.md says how it is made).
    Synth {
        /// Payments.
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        /// The share of them that is fraud.
        #[arg(long, default_value_t = 0.03)]
        fraud_rate: f64,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where to write it.
        #[arg(long, default_value = "history.csv")]
        out: PathBuf,
    },
    /// Fit the score's weights to a labelled history, report the held-out AUC and
    /// confusion matrix, and write the `[risk.model]` section for risk.toml.
    Train {
        /// The history (CSV with a header of feature names and `label`).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the `[risk.model]` section.
        #[arg(long, default_value = "risk-model.toml")]
        out: PathBuf,
        /// The share of rows held out to judge the fit.
        #[arg(long, default_value_t = 0.2)]
        holdout: f64,
        /// Seed of the shuffle that picks the held-out rows.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The score from which a payment goes to review.
        #[arg(long, default_value_t = 0.8)]
        review_at: f64,
        /// The score from which a payment is denied.
        #[arg(long, default_value_t = 0.98)]
        deny_at: f64,
    },
}

/// `paygate risk …`.
pub fn risk(args: RiskArgs) -> Result<(), String> {
    use crate::risk_train::{model_toml, synth, train, Synth};
    match args.command {
        RiskCommand::Synth { rows, fraud_rate, seed, out } => {
            let csv = synth(Synth { rows, fraud_rate, seed })?;
            std::fs::write(&out, csv).map_err(|e| format!("{}: {e}", out.display()))?;
            println!("wrote {rows} payments ({fraud_rate} fraud, seed {seed}) to {}", out.display());
            Ok(())
        }
        RiskCommand::Train { input, out, holdout, seed, review_at, deny_at } => {
            let text = std::fs::read_to_string(&input).map_err(|e| format!("{}: {e}", input.display()))?;
            let t = train(&text, holdout, seed, review_at, deny_at)?;
            let (tp, fp, tn, fn_) = t.confusion;
            println!("fitted on {} rows, judged on {} held out", t.rows.0, t.rows.1);
            println!("held-out AUC: {:.4}", t.auc);
            println!("at review_at = {review_at}:        flagged   passed");
            println!("  fraud                  {tp:>9} {fn_:>8}");
            println!("  legitimate             {fp:>9} {tn:>8}");
            std::fs::write(&out, model_toml(&t, &input.display().to_string()))
                .map_err(|e| format!("{}: {e}", out.display()))?;
            println!("wrote the [risk.model] section to {}", out.display());
            Ok(())
        }
    }
}

/// `paygate secret`.
#[derive(Debug, Args)]
pub struct SecretArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SecretCommand,
}

/// `paygate journal …`.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: JournalCommand,
}

/// Journal subcommands.
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Check every record's checksum and sequence, and the views against the journal,
    /// changing nothing; exits 1 when a node would refuse to start on it.
    Verify {
        /// Configuration directory (for storage.data_dir).
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// Data directory (overrides storage.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// `paygate journal verify`: the report on stdout; an error when the journal is not sound.
pub fn journal(args: JournalArgs) -> Result<(), String> {
    match args.command {
        JournalCommand::Verify { config, data_dir } => {
            let config = Config::load(&config, &Overrides { listen: None, data_dir }).map_err(|e| e.to_string())?;
            let report = crate::storage::Storage::verify(&config.storage.data_dir, config.storage.cache_bytes)
                .map_err(|e| e.to_string())?;
            print!("{report}");
            match report.is_sound() {
                true => Ok(()),
                false => Err(format!("the journal in {} is not sound", config.storage.data_dir.display())),
            }
        }
    }
}

/// Secret subcommands.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print a new random master key (64 hex digits) for PAYGATE_MASTER_KEY or a key file.
    NewKey,
    /// Re-seal every sealed value in the configuration files under another master key:
    /// from PAYGATE_MASTER_KEY, --from-key-file or the demo key, to --to-key-file. The
    /// files are rewritten only once every value has opened.
    Reseal {
        /// Configuration directory.
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// A file holding the current master key (default: PAYGATE_MASTER_KEY, else the demo key).
        #[arg(long)]
        from_key_file: Option<PathBuf>,
        /// A file holding the new master key (`paygate secret new-key > key`).
        #[arg(long)]
        to_key_file: PathBuf,
    },
    /// Seal a value (read from stdin, so it stays out of shell history) under the master
    /// key from PAYGATE_MASTER_KEY, --key-file, or the demo key; prints `enc:v1:…`.
    Seal {
        /// A file holding the master key.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

/// `paygate secret …`.
pub fn secret(args: SecretArgs) -> Result<(), String> {
    use std::io::Read;

    use crate::secrets::MasterKey;
    match args.command {
        SecretCommand::NewKey => {
            let mut key = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            out(format!("{}\n", hex::encode(key)).as_bytes())?;
        }
        SecretCommand::Reseal { config, from_key_file, to_key_file } => {
            let env_key = std::env::var("PAYGATE_MASTER_KEY").ok();
            let from = MasterKey::resolve(env_key.as_deref(), from_key_file.as_deref()).map_err(|e| e.to_string())?;
            let to = MasterKey::resolve(None, Some(&to_key_file)).map_err(|e| e.to_string())?;
            let mut files = Vec::new();
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&config)
                .map_err(|e| format!("{}: {e}", config.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            entries.sort();
            // Every file is re-sealed in memory first: a value that does not open leaves
            // all of them as they were.
            for path in entries {
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let name = path.display().to_string();
                let (resealed, count) =
                    crate::secrets::reseal_text(&text, &from, &to, &name).map_err(|e| e.to_string())?;
                if count > 0 {
                    files.push((path, resealed, count));
                }
            }
            for (path, text, count) in &files {
                let tmp = path.with_extension("toml.resealing");
                std::fs::write(&tmp, text)
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                out(format!("{}: {count} values re-sealed\n", path.display()).as_bytes())?;
            }
        }
        SecretCommand::Seal { key_file } => {
            let env_key = std::env::var("PAYGATE_MASTER_KEY").ok();
            let key = MasterKey::resolve(env_key.as_deref(), key_file.as_deref()).map_err(|e| e.to_string())?;
            if key.is_demo() {
                eprintln!("paygate: sealing with the PUBLIC demo key: fine for the demo configuration only");
            }
            let mut value = String::new();
            std::io::stdin().read_to_string(&mut value).map_err(|e| e.to_string())?;
            let value = value.strip_suffix('\n').unwrap_or(&value);
            out(format!("{}\n", key.seal(value)).as_bytes())?;
        }
    }
    Ok(())
}

/// `paygate sim`: serves the simulator until killed.
pub fn sim(config: &std::path::Path, listen: &str, data_dir: &std::path::Path, tls: bool) -> CliResult {
    let config = Config::load(config, &Overrides::default()).map_err(|e| e.to_string())?;
    let mut sim_config = config.sim.ok_or("the configuration has no [sim] section (config/sim.toml)")?;
    sim_config.tls |= tls;
    let store = crate::sim::store::SimStore::open(data_dir)?;
    let handle = crate::sim::start(&sim_config, listen, None, &store)?;
    println!("paygate sim listening on {}", handle.base_url);
    if let Some(pem) = &handle.ca_pem {
        let path = data_dir.join("ca.pem");
        std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("  its CA (trust it with a channel's ca_file setting): {}", path.display());
    }
    if handle.sim.alipay.is_some() {
        println!("  Alipay gateway: {}/alipay/gateway.do", handle.base_url);
    }
    loop {
        std::thread::park();
    }
}

/// Runs `paygate receiver`.
pub fn receiver(listen: &str, secret: Option<String>, merchant_id: &str, config: &std::path::Path) -> CliResult {
    let secret = match secret {
        Some(s) => s,
        None => Config::load(config, &Overrides::default())
            .map_err(|e| format!("{e}; or pass --secret"))?
            .merchants
            .into_iter()
            .find(|m| m.merchant_id == merchant_id)
            .map(|m| m.secret)
            .ok_or_else(|| format!("merchant {merchant_id} is not in the configuration; pass --secret"))?,
    };
    crate::receiver::run(listen, secret)
}
