//! A paygate node: storage recovered, actors started across worker arbiters, HTTP
//! serving. [`start`] runs it on its own thread (the binary and the tests share it).

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use actix::{Actor, Arbiter, System};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use paygate_actors::channel::{ChannelDirectory, ChannelHandle};
use paygate_actors::clock::Clock;
use paygate_actors::clock::SystemClock;
use paygate_actors::ids::ShardId;
use paygate_actors::merchant::MerchantDirectory;
use paygate_actors::notifier::{MerchantNotifier, NotifierContext, NotifierDirectory};
use paygate_actors::order_actor::{OrderActor, OrderContext, Passivation};
use paygate_actors::order_router::OrderRouter;
use paygate_actors::ports::{ChannelConnector, Journal, NotifyStore};
use paygate_actors::registry::Registry;
use paygate_actors::shard::ShardSupervisor;
use paygate_actors::signing::SignType;
use paygate_actors::timers::TimerActor;

use crate::channels::alipay::{AlipayConnector, AlipaySettings};
use crate::channels::unionpay::{UnionPayConnector, UnionPaySettings};
use crate::channels::wechat::v2::{WechatV2Connector, WechatV2Settings};
use crate::channels::wechat::v3::{WechatV3Connector, WechatV3Settings};
use crate::config::{ChannelConfig, Config};
use crate::crypto::{Certificate, RsaSigner, RsaVerifier, TrustStore};
use crate::http::App;
use crate::sandbox::{Sandbox, SandboxConnector, SandboxSettings};
use crate::storage::journal::JournalHandle;
use crate::storage::views::Views;
use crate::storage::{RecoveryReport, Storage};
use paygate_actors::daily_volume::business_day;

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data directory cannot be opened or recovered.
    #[error(transparent)]
    Storage(#[from] crate::storage::OpenError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for (`server.listen`).
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The node thread died during start.
    #[error("the node stopped while starting")]
    Aborted,
}

/// A running node.
pub struct Node {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How buyers and merchants reach it.
    pub public_url: String,
    /// The sandbox provider, when configured.
    pub sandbox: Option<Arc<Sandbox>>,
    /// The in-process channel simulator, when a channel uses it.
    pub sim: Option<crate::sim::SimHandle>,
    /// What recovery did on start.
    pub recovery: RecoveryReport,
    /// The views (for inspection in tests and tools).
    pub views: Arc<Views>,
    /// Live order actors.
    pub registry: Arc<Registry<OrderActor>>,
    /// Dropped when the node stops, with the journal handle it holds.
    app: Option<Arc<App>>,
    /// Dropped when the node stops, so the journal's threads can finish.
    journal: Option<JournalHandle>,
    storage_threads: Vec<JoinHandle<()>>,
    /// Released last, once the journal and views are closed.
    _lock: Arc<crate::storage::lock::DataDirLock>,
    system: System,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    /// A graceful stop: no new connections, the requests being handled finish (for at
    /// most `limit`), then the node stops. Every acknowledged write was durable before
    /// its answer, so nothing depends on this; it spares clients a reset mid-request.
    pub fn drain_and_stop(self, limit: Duration) {
        let left = self.app.as_ref().map_or(0, |app| app.drain(limit));
        if left > 0 {
            tracing::warn!(left, "stopping with requests still running after {limit:?}");
        }
        self.stop();
    }

    /// Stops the node and waits for its actors to end.
    pub fn stop(mut self) {
        self.system.stop();
        self.join();
    }

    /// Waits until the node stops (signal or [`Node::stop`] elsewhere).
    pub fn wait(mut self) {
        self.join();
    }

    /// Whether the views show every durable record (they trail acknowledgements by a
    /// few milliseconds).
    pub fn caught_up(&self) -> bool {
        self.journal.as_ref().is_some_and(JournalHandle::caught_up)
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The actors are gone with the system; with these last handles the writer ends,
        // and the projector after the last batch is in the views.
        self.app = None;
        self.journal = None;
        let deadline = std::time::Instant::now() + STORAGE_CLOSE;
        while self.storage_threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        for t in self.storage_threads.drain(..).filter(|t| t.is_finished()) {
            let _ = t.join();
        }
        if let Err(e) = self.views.flush() {
            tracing::warn!(error = %e, "flushing views failed");
        }
    }
}

/// How long a stopping node waits for the journal's threads to finish.
const STORAGE_CLOSE: Duration = Duration::from_secs(10);

fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => {
                describe_metrics();
                spawn_metrics_upkeep(h.clone());
                Some(h)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .clone()
}

/// Every metric family the node exports, with its unit and what it counts: the
/// `# HELP` and `# TYPE` lines of `/metrics`.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("paygate_alerts_total", "Events an operator should look at, by kind");
    describe_counter!("paygate_callbacks_total", "Provider callbacks, by provider and result");
    describe_counter!("paygate_callback_reconciles_total", "Channel queries caused by callbacks that did not verify");
    describe_counter!("paygate_risk_decisions_total", "Risk control's decisions on new payments, by decision");
    describe_counter!("paygate_risk_rule_hits_total", "Risk rules that fired, by rule id");
    describe_counter!("paygate_rate_limited_total", "Requests refused by a rate limit, by scope (node, merchant)");
    describe_counter!("paygate_payments_created_total", "Payments created");
    describe_counter!("paygate_refunds_total", "Refunds settled, by outcome");
    describe_counter!("paygate_pages_total", "Pages shown to buyers, by page");
    describe_counter!(
        "paygate_read_cache_misses_total",
        "Order reads answered from the views: neither in memory nor in the read cache"
    );
    describe_counter!(
        "paygate_channel_calls_total",
        "Calls to payment channels, by channel and outcome (ok, rejected, unknown, unavailable, breaker_open)"
    );
    describe_counter!(
        "paygate_channel_breaker_transitions_total",
        "A channel's circuit breaker changing state, by new state"
    );
    describe_gauge!("paygate_channel_breaker_state", "A channel's circuit breaker: 0 closed, 1 half open, 2 open");
    describe_gauge!("paygate_channel_success_ratio", "Share of a channel's latest calls that got an answer");
    describe_gauge!("paygate_channel_latency_p50_seconds", "Median latency of a channel's latest calls");
    describe_gauge!("paygate_channel_latency_p95_seconds", "95th percentile latency of a channel's latest calls");
    describe_gauge!("paygate_channel_enabled", "1 while a channel is enabled for routing");
    describe_counter!("paygate_notify_attempts_total", "Merchant notification attempts, by outcome");
    describe_counter!("paygate_notify_delivered_total", "Merchant notifications acknowledged");
    describe_counter!("paygate_notify_dead_total", "Merchant notifications given up after every retry");
    describe_gauge!("paygate_storage_full", "1 while the journal's disk is too full to take writes");
    describe_gauge!("paygate_read_cache_orders", "Orders in the read cache");
    describe_gauge!("paygate_live_order_actors", "Order actors in memory");
    describe_gauge!("paygate_api_requests_in_flight", "Merchant API requests being handled");
    describe_gauge!("paygate_notify_backlog", "Merchant notifications waiting, by merchant");
    describe_gauge!("paygate_notify_breaker_state", "A merchant endpoint's breaker: 0 closed, 1 half open, 2 open");
    describe_histogram!("paygate_http_request_seconds", Unit::Seconds, "Merchant API requests, by endpoint and status");
    describe_histogram!("paygate_journal_fsync_seconds", Unit::Seconds, "Journal fdatasync calls");
    describe_histogram!("paygate_journal_append_seconds", Unit::Seconds, "From a record's append to its fsync");
    describe_histogram!("paygate_journal_batch_records", Unit::Count, "Records per group commit");
    describe_histogram!("paygate_views_project_seconds", Unit::Seconds, "Applying a batch of records to the views");
    describe_histogram!("paygate_notify_attempt_seconds", Unit::Seconds, "Merchant notification attempts");
}

/// How often histogram samples are folded into their summaries.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Folds the recorder's histogram samples into their distributions every few seconds.
/// A recorder installed without its HTTP exporter keeps every sample until someone
/// does this, so without it a node that is never scraped grows by 8 bytes per request.
fn spawn_metrics_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(METRICS_UPKEEP);
        handle.run_upkeep();
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics upkeep not started; histograms grow until scraped");
    }
}

struct Started {
    addr: SocketAddr,
    public_url: String,
    sandbox: Option<Arc<Sandbox>>,
    sim: Option<crate::sim::SimHandle>,
    registry: Arc<Registry<OrderActor>>,
    app: Arc<App>,
    system: System,
}

/// Starts a node; returns once it is serving.
pub fn start(config: Config) -> Result<Node, StartError> {
    // The recorder first: what registers its metrics once while the node is built (risk
    // control's decision counters) must find it installed, or it counts into nothing.
    metrics_handle();
    let mut storage = Storage::open(&config.storage_options())?;
    let listener = std::net::TcpListener::bind(&config.server.listen)
        .map_err(|source| StartError::Listen { addr: config.server.listen.clone(), source })?;
    let addr =
        listener.local_addr().map_err(|source| StartError::Listen { addr: config.server.listen.clone(), source })?;
    let views = Arc::clone(&storage.views);
    let recovery = storage.report.clone();
    let journal = storage.journal.clone();
    let lock = Arc::clone(&storage.lock);
    let storage_threads = std::mem::take(&mut storage.threads);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Started, StartError>>();
    let thread = std::thread::Builder::new()
        .name("paygate-node".into())
        .spawn(move || {
            let system = System::new();
            system.block_on(async move {
                let started = build(config, storage, listener, addr);
                let failed = started.is_err();
                let _ = ready_tx.send(started);
                if failed {
                    System::current().stop();
                }
            });
            if let Err(e) = system.run() {
                tracing::error!(error = %e, "actor system ended with an error");
            }
        })
        .map_err(|_| StartError::Aborted)?;
    let started = ready_rx.recv().map_err(|_| StartError::Aborted)??;
    Ok(Node {
        addr: started.addr,
        public_url: started.public_url,
        sandbox: started.sandbox,
        sim: started.sim,
        recovery,
        views,
        journal: Some(journal),
        storage_threads,
        _lock: lock,
        registry: started.registry,
        app: Some(started.app),
        system: started.system,
        thread: Some(thread),
    })
}

/// Builds the actors and servers inside the running actor system.
fn build(
    config: Config,
    storage: Storage,
    listener: std::net::TcpListener,
    addr: SocketAddr,
) -> Result<Started, StartError> {
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    };
    // Worker arbiters run until the system stops them.
    let handles: Vec<_> = (0..workers).map(|_| Arbiter::new().handle()).collect();
    let pick = |i: usize| handles.get(i % handles.len().max(1)).cloned().unwrap_or_else(Arbiter::current);
    let public_url = match config.server.public_url.trim_end_matches('/') {
        "" => format!("http://{addr}"),
        url => url.to_owned(),
    };

    let mut sandbox = None;
    let mut channel_handles = Vec::new();
    let builtin = config.channels.iter().any(|c| setting(c, "gateway_url") == Some(BUILTIN));
    let sim = match (&config.sim, builtin) {
        (Some(sim_config), true) => {
            let store = crate::sim::store::SimStore::open(&config.storage.data_dir.join("sim"))
                .map_err(crate::config::ConfigError)?;
            // A node on an ephemeral port (tests, harnesses) gets an ephemeral simulator.
            let port = if config.server.listen.ends_with(":0") { 0 } else { crate::sim::DEFAULT_PORT };
            let listen =
                sim_config.listen.clone().unwrap_or_else(|| std::net::SocketAddr::new(addr.ip(), port).to_string());
            let public_host = public_host(&config.server.public_url);
            Some(
                crate::sim::start(sim_config, &listen, public_host.as_deref(), &store)
                    .map_err(crate::config::ConfigError)?,
            )
        }
        (None, true) => {
            return Err(crate::config::ConfigError(
                "a channel uses the builtin gateway but [sim] is not configured".into(),
            )
            .into())
        }
        _ => None,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    for c in &config.channels {
        let connector: Arc<dyn ChannelConnector> = match c.provider.as_str() {
            "alipay" => Arc::new(AlipayConnector::new(alipay_from(c, sim.as_ref(), &public_url)?, client(c, &sim)?)),
            "wechat_v2" => {
                Arc::new(WechatV2Connector::new(wechat_v2_from(c, sim.as_ref(), &public_url)?, client(c, &sim)?))
            }
            "wechat_v3" => {
                Arc::new(WechatV3Connector::new(wechat_v3_from(c, sim.as_ref(), &public_url)?, client(c, &sim)?))
            }
            "unionpay" => {
                Arc::new(UnionPayConnector::new(unionpay_from(c, sim.as_ref(), &public_url)?, client(c, &sim)?))
            }
            "sandbox" => {
                let s = Arc::new(sandbox_from(c, &config.storage.data_dir)?);
                s.attach(format!("http://{addr}/callback/sandbox"), format!("{public_url}/sandbox/pay/"), pick(0));
                sandbox = Some(Arc::clone(&s));
                Arc::new(SandboxConnector(s))
            }
            other => {
                tracing::warn!(channel = %c.code, provider = other, "no adapter for this provider yet; channel skipped");
                continue;
            }
        };
        // What operators set while earlier runs of the node were up, over the configuration.
        let setting = storage
            .views
            .channel_setting(&c.code)
            .map_err(|e| crate::storage::OpenError::Inconsistent(format!("channel settings: {e}")))?;
        let policy = c.breaker.policy();
        channel_handles.push(ChannelHandle::start(c.profile()?, setting, connector, policy, Arc::clone(&clock)));
    }
    // Today's volumes, as the recovered views hold them, so a restart does not reopen
    // daily limits.
    let today = business_day(SystemClock.now_ms());
    let volumes = storage
        .views
        .day_volumes(today)
        .map_err(|e| crate::storage::OpenError::Inconsistent(format!("daily volumes: {e}")))?;
    for h in &channel_handles {
        h.stats.daily.adjust(today, volumes.get(&h.profile.code).copied().unwrap_or(0));
    }
    let channels = ChannelDirectory::new(channel_handles);

    let auth = config.auth_policy();
    let merchants = MerchantDirectory::new(config.merchants.clone(), auth);
    // Routing operators changed while earlier runs of the node were up, over the
    // configuration.
    for m in &config.merchants {
        let changed = storage
            .views
            .routing(&m.merchant_id)
            .map_err(|e| crate::storage::OpenError::Inconsistent(format!("routing: {e}")))?;
        for (method, strategy) in changed {
            merchants.set_strategy(&m.merchant_id, method, strategy);
        }
    }

    let registry = Arc::new(Registry::with_read_cache(config.orders.read_cache_bytes));
    let views: Arc<Views> = Arc::clone(&storage.views);
    let journal: Arc<dyn Journal> = Arc::new(storage.journal.clone());
    let nc = Arc::new(NotifierContext {
        journal: Arc::clone(&journal),
        store: Arc::clone(&views) as Arc<dyn NotifyStore>,
        transport: crate::notify::transport(&config.notify)?,
        clock: Arc::clone(&clock),
        policy: config.notify.policy()?,
        jitter: Arc::new(rand::random::<f64>),
    });
    let notifier = NotifierDirectory::start(nc, merchants.profiles().cloned(), |i, actor| {
        MerchantNotifier::start_in_arbiter(&pick(i), move |_| actor)
    });
    let oc = Arc::new(OrderContext {
        journal,
        store: views,
        channels: channels.clone(),
        clock: Arc::clone(&clock),
        registry: Arc::clone(&registry),
        query_policy: config.query_policy(),
        passivation: Passivation {
            idle: Duration::from_secs(config.orders.passivate_idle_secs),
            final_idle: Duration::from_millis(config.orders.passivate_final_ms),
        },
        notifier: notifier.clone(),
        failover_budget: Duration::from_millis(config.orders.failover_budget_ms),
        risk: Arc::new(risk_engine(&config, &storage.views)?),
    });
    let shards = (0..config.shards.count)
        .map(|n| {
            let oc = Arc::clone(&oc);
            ShardSupervisor::start_in_arbiter(&pick(usize::from(n)), move |_| ShardSupervisor::new(ShardId(n), oc))
        })
        .collect();
    let router = OrderRouter::new(oc, shards);
    TimerActor::new(
        router.clone(),
        Duration::from_millis(config.orders.timer_poll_ms),
        Duration::from_secs(config.orders.timer_retry_secs),
    )
    .start();

    let app = Arc::new(App {
        router,
        merchants,
        notifier,
        notifications: Arc::clone(&storage.views) as Arc<dyn NotifyStore>,
        url_guard: Default::default(),
        recent_refunds: Default::default(),
        channels,
        clock,
        sandbox: sandbox.clone(),
        simulator: sim.as_ref().map(|sim| {
            let simulated = config.channels.iter().filter(|c| setting(c, "gateway_url") == Some(BUILTIN));
            (sim.base_url.clone(), simulated.map(|c| c.code.clone()).collect())
        }),
        public_url: public_url.clone(),
        admin_token: config.admin.token.clone(),
        admin_changes: tokio::sync::Mutex::new(()),
        max_body: config.server.max_body_bytes,
        limits: crate::http::api::PayLimits::from_config(&config)?,
        minute_ms: config.orders.minute_ms.max(1) as i64,
        request_timeout: Duration::from_secs(config.server.request_timeout_secs),
        header_timeout: Duration::from_secs(config.server.header_timeout_secs),
        metrics: metrics_handle(),
        inflight: Default::default(),
        max_inflight: config.server.max_inflight,
        rate: config.server.rate_limit.and_then(paygate_actors::rate_limit::TokenBucket::new),
        started: std::time::Instant::now(),
        reconcile_gate: Default::default(),
        active: Default::default(),
        stopping: Default::default(),
        stop_accepting: Default::default(),
    });
    // The acceptor runs on the system arbiter; connections are served by the workers.
    actix_rt::spawn(crate::http::serve(listener, Arc::clone(&app), handles.clone()));
    tracing::info!(%addr, workers, shards = config.shards.count, "paygate is serving");
    Ok(Started { addr, public_url, sandbox, sim, registry, app, system: System::current() })
}

/// The `gateway_url` that means "the simulator this node runs".
const BUILTIN: &str = "builtin";

/// The scheme and host of a configured public URL (`http://192.168.1.5:8080/` →
/// `http://192.168.1.5`): where the buyer's phone reaches this machine.
fn public_host(public_url: &str) -> Option<String> {
    let uri: hyper::Uri = public_url.trim().parse().ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.host()?))
}

fn setting<'a>(c: &'a ChannelConfig, name: &str) -> Option<&'a str> {
    c.settings.get(name).and_then(|v| v.as_str())
}

/// A channel's `gateway_url`; `builtin` is the in-process simulator's `sim_path`.
fn gateway_url(
    c: &ChannelConfig,
    sim: Option<&crate::sim::SimHandle>,
    sim_path: &str,
) -> Result<String, crate::config::ConfigError> {
    let err = |what: &str| crate::config::ConfigError(format!("channel {:?}: settings.gateway_url {what}", c.code));
    match (setting(c, "gateway_url").ok_or_else(|| err("is required"))?, sim) {
        (BUILTIN, Some(sim)) => Ok(format!("{}{sim_path}", sim.base_url)),
        (BUILTIN, None) => Err(err("is builtin but no simulator runs")),
        (url, _) => Ok(url.to_owned()),
    }
}

/// The HTTP(S) client of a channel: the webpki roots, plus the CAs of its `ca_file`
/// setting, plus the simulator's CA when it calls the in-process simulator over TLS.
fn client(
    c: &ChannelConfig,
    sim: &Option<crate::sim::SimHandle>,
) -> Result<crate::http::client::HttpClient, crate::config::ConfigError> {
    let builtin = setting(c, "gateway_url") == Some(BUILTIN);
    let identity = match (setting(c, "client_certificate"), setting(c, "client_private_key")) {
        (Some(certificate), Some(key)) => Some(crate::http::client::ClientIdentity {
            certificate_pem: certificate.to_owned(),
            private_key_pem: key.to_owned(),
        }),
        (None, None) => None,
        _ => return Err(setting_error(c, "client_certificate and client_private_key go together")),
    };
    let options = crate::http::client::ClientOptions {
        ca_file: setting(c, "ca_file").map(std::path::PathBuf::from),
        ca_pem: sim.as_ref().filter(|_| builtin).and_then(|s| s.ca_pem.clone()),
        identity,
        ..Default::default()
    };
    crate::http::client::HttpClient::with(&options).map_err(|e| setting_error(c, format!("TLS: {e}")))
}

/// Risk control as configured, with what operators changed since (kept by the views),
/// and the state of the payments of the last month counted again, so that a restart is
/// not a way around velocity rules or limits.
fn risk_engine(
    config: &Config,
    views: &crate::storage::views::Views,
) -> Result<paygate_actors::risk::RiskEngine, crate::storage::OpenError> {
    use paygate_actors::risk::lists::Lists;
    use paygate_actors::risk::{Policy, RiskEngine, RiskInput};
    let fail = |what: String| crate::storage::OpenError::Inconsistent(format!("risk control: {what}"));
    let stored = views.risk().map_err(|e| fail(e.to_string()))?;
    let rules = match &stored.rules {
        Some(json) => serde_json::from_str(json).map_err(|e| fail(format!("the rules operators set: {e}")))?,
        None => config.risk.clone(),
    };
    // Checked when the configuration was read.
    let mut lists = Lists::new(config.risk_lists.iter().filter_map(|e| e.clone().canonical().ok()));
    for (entry, added) in stored.lists {
        if added {
            lists.insert(entry);
        } else {
            lists.remove(&entry);
        }
    }
    let engine = RiskEngine::new(Policy::new(rules, lists, stored.version).map_err(fail)?);
    let now = SystemClock.now_ms();
    let month_ago = now - 32 * 86_400_000;
    let payments = views
        .risk_history(month_ago, |t| {
            let input = RiskInput {
                merchant_id: &t.merchant_id,
                amount: t.amount,
                user_id: t.user_id.as_deref(),
                device_id: t.device_id.as_deref(),
                client_ip: t.client_ip,
                account: None,
                now_ms: t.at,
            };
            engine.replay(&input, t.decision, t.went_ahead);
        })
        .map_err(|e| fail(e.to_string()))?;
    tracing::info!(payments, keys = engine.state().len(), "risk control counted the last month again");
    Ok(engine)
}

/// A channel setting that is wrong, named with its channel.
fn setting_error(c: &ChannelConfig, what: impl std::fmt::Display) -> crate::config::ConfigError {
    crate::config::ConfigError(format!("channel {:?}: settings.{what}", c.code))
}

/// A setting the channel cannot do without.
fn required<'a>(c: &'a ChannelConfig, name: &str) -> Result<&'a str, crate::config::ConfigError> {
    setting(c, name).ok_or_else(|| setting_error(c, format_args!("{name} is required")))
}

/// A required private key.
fn signer(c: &ChannelConfig, name: &str) -> Result<RsaSigner, crate::config::ConfigError> {
    RsaSigner::from_text(name, required(c, name)?).map_err(|e| setting_error(c, e))
}

/// A required public key.
fn verifier(c: &ChannelConfig, name: &str) -> Result<RsaVerifier, crate::config::ConfigError> {
    RsaVerifier::from_text(name, required(c, name)?).map_err(|e| setting_error(c, e))
}

/// The channel's `notify_url`, by default this node's `/callback/{path}`.
fn notify_url(c: &ChannelConfig, public_url: &str, path: &str) -> String {
    setting(c, "notify_url").map_or_else(|| format!("{public_url}/callback/{path}"), str::to_owned)
}

fn alipay_from(
    c: &ChannelConfig,
    sim: Option<&crate::sim::SimHandle>,
    public_url: &str,
) -> Result<AlipaySettings, crate::config::ConfigError> {
    Ok(AlipaySettings {
        app_id: required(c, "app_id")?.to_owned(),
        seller_id: setting(c, "seller_id").map(str::to_owned),
        gateway_url: gateway_url(c, sim, "/alipay/gateway.do")?,
        app_private_key: signer(c, "app_private_key")?,
        alipay_public_key: verifier(c, "alipay_public_key")?,
        notify_url: notify_url(c, public_url, "alipay"),
        timeout: Duration::from_millis(c.timeout_ms),
    })
}

fn wechat_v2_from(
    c: &ChannelConfig,
    sim: Option<&crate::sim::SimHandle>,
    public_url: &str,
) -> Result<WechatV2Settings, crate::config::ConfigError> {
    let base_url = gateway_url(c, sim, "/wechat")?.trim_end_matches('/').to_owned();
    let sign_type = match setting(c, "sign_type").unwrap_or("HMAC-SHA256") {
        "MD5" => SignType::Md5,
        "HMAC-SHA256" => SignType::HmacSha256,
        other => return Err(setting_error(c, format!("sign_type {other:?} must be MD5 or HMAC-SHA256"))),
    };
    Ok(WechatV2Settings {
        appid: required(c, "appid")?.to_owned(),
        mch_id: required(c, "mch_id")?.to_owned(),
        api_key: required(c, "api_key")?.to_owned(),
        sign_type,
        base_url,
        notify_url: notify_url(c, public_url, "wechat/v2"),
        timeout: Duration::from_millis(c.timeout_ms),
    })
}

fn wechat_v3_from(
    c: &ChannelConfig,
    sim: Option<&crate::sim::SimHandle>,
    public_url: &str,
) -> Result<WechatV3Settings, crate::config::ConfigError> {
    // The platform's key: from its certificate (whose serial it is), or WeChat's
    // public-key mode (a key and the serial WeChat names it by).
    let (platform_serial, platform_key) = match setting(c, "platform_certificate") {
        Some(pem) => {
            let cert = Certificate::from_pem("platform_certificate", pem).map_err(|e| setting_error(c, e))?;
            if setting(c, "platform_serial").is_some_and(|s| s != cert.serial_hex) {
                return Err(setting_error(
                    c,
                    format!("platform_serial is not the certificate's ({})", cert.serial_hex),
                ));
            }
            (cert.serial_hex, cert.key)
        }
        None => (required(c, "platform_serial")?.to_owned(), verifier(c, "platform_public_key")?),
    };
    Ok(WechatV3Settings {
        appid: required(c, "appid")?.to_owned(),
        mchid: required(c, "mchid")?.to_owned(),
        merchant_serial: required(c, "merchant_serial")?.to_owned(),
        merchant_key: signer(c, "merchant_private_key")?,
        platform_serial,
        platform_key,
        api_v3_key: crate::channels::wechat::v3::wire::api_v3_key(required(c, "api_v3_key")?)
            .ok_or_else(|| setting_error(c, "api_v3_key must be 32 bytes"))?,
        base_url: gateway_url(c, sim, "")?.trim_end_matches('/').to_owned(),
        notify_url: notify_url(c, public_url, "wechat/v3"),
        timeout: Duration::from_millis(c.timeout_ms),
    })
}

fn unionpay_from(
    c: &ChannelConfig,
    sim: Option<&crate::sim::SimHandle>,
    public_url: &str,
) -> Result<UnionPaySettings, crate::config::ConfigError> {
    let signing = Certificate::from_pem("signing_certificate", required(c, "signing_certificate")?)
        .map_err(|e| setting_error(c, e))?;
    let signing_key = signer(c, "signing_private_key")?;
    if signing_key.verifier() != signing.key {
        return Err(setting_error(c, "signing_private_key is not the key of signing_certificate"));
    }
    let roots = Certificate::bundle_from_pem("trusted_roots", required(c, "trusted_roots")?)
        .map_err(|e| setting_error(c, e))?;
    let intermediates = match setting(c, "trusted_intermediates") {
        Some(pem) => Certificate::bundle_from_pem("trusted_intermediates", pem).map_err(|e| setting_error(c, e))?,
        None => Vec::new(),
    };
    Ok(UnionPaySettings {
        mer_id: required(c, "mer_id")?.to_owned(),
        cert_id: signing.serial_decimal,
        signing_key,
        trust: TrustStore::new(roots, intermediates).map_err(|e| setting_error(c, e))?,
        signer: setting(c, "signer_identity").unwrap_or(crate::channels::unionpay::wire::UNIONPAY_SIGNER).to_owned(),
        gateway_url: gateway_url(c, sim, "/gateway/api")?.trim_end_matches('/').to_owned(),
        front_url: setting(c, "front_url").map_or_else(|| format!("{public_url}/"), str::to_owned),
        back_url: notify_url(c, public_url, "unionpay"),
        timeout: Duration::from_millis(c.timeout_ms),
    })
}

fn sandbox_from(c: &ChannelConfig, data_dir: &std::path::Path) -> Result<Sandbox, crate::config::ConfigError> {
    let secret = required(c, "notify_secret")?;
    let settings = SandboxSettings {
        latency_ms: c.settings.get("latency_ms").and_then(|v| v.as_integer()).unwrap_or(0).max(0) as u64,
        error_rate: c.settings.get("error_rate").and_then(|v| v.as_float()).unwrap_or(0.0),
        hang_rate: c.settings.get("hang_rate").and_then(|v| v.as_float()).unwrap_or(0.0),
    };
    settings.validate().map_err(|e| setting_error(c, e))?;
    let store = crate::sim::store::SimStore::open(&data_dir.join("sandbox")).map_err(crate::config::ConfigError)?;
    Sandbox::new(secret.to_owned(), settings, &store).map_err(crate::config::ConfigError)
}

#[cfg(test)]
mod tests {
    use super::public_host;

    #[test]
    fn the_public_host_is_the_public_url_without_port_or_path() {
        assert_eq!(public_host("http://192.168.1.5:8080/").as_deref(), Some("http://192.168.1.5"));
        assert_eq!(public_host("https://pay.example.com/gw").as_deref(), Some("https://pay.example.com"));
        assert_eq!(public_host("http://[::1]:8080").as_deref(), Some("http://[::1]"));
        assert_eq!(public_host("http://[::1]").as_deref(), Some("http://[::1]"));
        assert_eq!(public_host(""), None);
        assert_eq!(public_host("not a url"), None);
    }
}
