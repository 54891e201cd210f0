//! Configuration: `config/default.toml`, `config/merchants.toml` and
//! `config/channels.toml`, then `PAYGATE_…` environment variables (`__` separates
//! sections: `PAYGATE_SERVER__LISTEN=0.0.0.0:9000`), then command-line overrides.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use paygate_actors::channel::{ChannelProfile, ChannelStatus};
use paygate_actors::merchant::{AuthPolicy, MerchantProfile};
use paygate_actors::money::{Currency, Money};
use paygate_actors::order::{PayMethod, QueryPolicy};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::secrets::{is_secret_setting, MasterKey, SecretError, SEALED_PREFIX};

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// HTTP.
    pub server: ServerConfig,
    /// Data directory and journal.
    pub storage: StorageConfig,
    /// How orders are spread over actor shards.
    pub shards: ShardsConfig,
    /// Order rules and timers.
    pub orders: OrdersConfig,
    /// Request authentication.
    pub auth: AuthConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// Merchants (`merchants.toml`).
    #[serde(default)]
    pub merchants: Vec<MerchantProfile>,
    /// Channels (`channels.toml`).
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    /// Where the master key is.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// The channel simulator (`sim.toml`).
    #[serde(default)]
    pub sim: Option<crate::sim::SimConfig>,
    /// Notifications to merchants.
    #[serde(default)]
    pub notify: crate::notify::NotifyConfig,
    /// Risk control's rules (`risk.toml`, `[risk]`).
    #[serde(default)]
    pub risk: paygate_actors::risk::rules::RiskRules,
    /// Risk control's block and allow lists as configured (`[[risk_lists]]`).
    #[serde(default)]
    pub risk_lists: Vec<paygate_actors::risk::lists::ListEntry>,
    /// Whether the secrets were opened with the public demo key.
    #[serde(skip)]
    pub demo_master_key: bool,
}

/// Where the master key that opens the sealed secrets comes from.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SecretsConfig {
    /// A file holding the key as 64 hex digits; `PAYGATE_MASTER_KEY` wins over it.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
}

/// HTTP settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: String,
    /// The URL merchants and buyers reach this node at; empty: `http://<listen>`.
    #[serde(default)]
    pub public_url: String,
    /// Worker threads (arbiters); 0: one per core.
    #[serde(default)]
    pub workers: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// How long a client may take to send its request head, seconds.
    pub header_timeout_secs: u64,
    /// Longest a request may wait for its order, seconds.
    pub request_timeout_secs: u64,
    /// Most API requests in progress at once; beyond it requests get 429 RATE_LIMITED.
    pub max_inflight: usize,
    /// The node's request rate over every merchant (`{ rate_per_sec, burst }`); beyond
    /// it requests get 429 RATE_LIMITED with `Retry-After`. Unset: none.
    #[serde(default)]
    pub rate_limit: Option<paygate_actors::rate_limit::RateLimit>,
}

/// Storage settings.
#[derive(Debug, Clone, Deserialize)]
pub struct StorageConfig {
    /// Where the journal and views live.
    pub data_dir: PathBuf,
    /// Journal segment size, bytes ([`SEGMENT_BYTES`]): each segment is sized to it when
    /// opened and read whole at recovery.
    pub segment_bytes: u64,
    /// Most records per group commit.
    pub max_batch: usize,
    /// Most records waiting for the journal writer.
    pub queue: usize,
    /// sled page cache, bytes.
    pub cache_bytes: u64,
    /// Disk kept free beside each new journal segment (for the views, logs and the
    /// operator's own work); below it pays are refused with STORAGE_FULL.
    #[serde(default = "default_reserve_bytes")]
    pub reserve_bytes: u64,
    /// Start even when acknowledged records are missing from the journal (set by
    /// `serve --accept-data-loss`; never from a file).
    #[serde(skip)]
    pub accept_data_loss: bool,
}

fn default_reserve_bytes() -> u64 {
    64 << 20
}

impl Config {
    /// The storage options of this configuration.
    pub fn storage_options(&self) -> crate::storage::StorageOptions {
        crate::storage::StorageOptions {
            data_dir: self.storage.data_dir.clone(),
            segment_bytes: self.storage.segment_bytes,
            max_batch: self.storage.max_batch,
            queue: self.storage.queue,
            cache_bytes: self.storage.cache_bytes,
            reserve_bytes: self.storage.reserve_bytes,
            accept_data_loss: self.storage.accept_data_loss,
            query_policy: self.query_policy(),
        }
    }
}

/// The journal segment sizes a node accepts: below, group commits would each start a
/// segment of their own; above, recovery would hold an unreasonable segment in memory.
pub const SEGMENT_BYTES: std::ops::RangeInclusive<u64> = (64 << 10)..=(1 << 30);

/// How orders are spread over actor shards: each order belongs to one shard by its
/// merchant and order number, and each shard has one supervisor.
#[derive(Debug, Clone, Deserialize)]
pub struct ShardsConfig {
    /// Fixed shard count of the cluster.
    pub count: u16,
}

/// Order rules and timers.
#[derive(Debug, Clone, Deserialize)]
pub struct OrdersConfig {
    /// Largest accepted amount, in major units (e.g. "100000000.00").
    pub max_amount: String,
    /// Longest `expire_minutes` a request may ask for.
    pub max_expire_minutes: u32,
    /// Length of one expire minute in milliseconds: 60000. Tests shorten it to watch
    /// orders expire in seconds.
    #[serde(default = "default_minute_ms")]
    pub minute_ms: u64,
    /// First active query after creation, seconds.
    pub query_first_after_secs: u64,
    /// Between active queries, seconds.
    pub query_interval_secs: u64,
    /// Active queries at most.
    pub query_max_attempts: u8,
    /// How often due timers are polled, milliseconds.
    pub timer_poll_ms: u64,
    /// When an unsettled timer is retried, seconds.
    pub timer_retry_secs: u64,
    /// An idle open order leaves memory after this many seconds.
    pub passivate_idle_secs: u64,
    /// An idle final order leaves memory after this many milliseconds.
    pub passivate_final_ms: u64,
    /// How long a new payment may spend trying channels, milliseconds: once spent, no
    /// further channel is tried, and a channel that did not answer is not given up on
    /// unless asking it and closing its trade fits in what is left.
    #[serde(default = "default_failover_budget_ms")]
    pub failover_budget_ms: u64,
    /// The most bytes the read cache may hold: the last states of orders that left
    /// memory (passivated, or read from the views by a query).
    #[serde(default = "default_read_cache_bytes")]
    pub read_cache_bytes: usize,
    /// How many days after payment an order may be refunded.
    #[serde(default = "default_refund_window_days")]
    pub refund_window_days: u32,
    /// First query of a refund whose outcome is unknown, seconds after it was asked.
    #[serde(default = "default_refund_query_first_after_secs")]
    pub refund_query_first_after_secs: u64,
    /// Between a refund's queries, seconds.
    #[serde(default = "default_refund_query_interval_secs")]
    pub refund_query_interval_secs: u64,
    /// Queries before a refund goes to manual review.
    #[serde(default = "default_refund_query_max_attempts")]
    pub refund_query_max_attempts: u8,
    /// Whether a payment that arrives after its order was closed or expired is refunded
    /// automatically (else it is recorded and flagged for an operator).
    #[serde(default = "yes")]
    pub refund_late_payments: bool,
}

fn yes() -> bool {
    true
}

fn default_refund_window_days() -> u32 {
    365
}

fn default_refund_query_first_after_secs() -> u64 {
    10
}

fn default_refund_query_interval_secs() -> u64 {
    60
}

fn default_refund_query_max_attempts() -> u8 {
    10
}

fn default_failover_budget_ms() -> u64 {
    10_000
}

fn default_read_cache_bytes() -> usize {
    128 << 20
}

/// How signed requests are checked beyond their signature.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthConfig {
    /// Accepted timestamp skew, seconds.
    pub timestamp_window_secs: i64,
}

/// The admin token of the shipped configuration.
pub const DEMO_ADMIN_TOKEN: &str = "demo-admin-token";

/// The admin API.
#[derive(Clone, Deserialize)]
pub struct AdminConfig {
    /// Bearer token for `/admin/…`.
    pub token: String,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminConfig { token: <redacted> }")
    }
}

/// A channel as configured (seed table `channel_config`).
#[derive(Debug, Clone, Deserialize)]
pub struct ChannelConfig {
    /// Unique code.
    pub code: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Protocol: `sandbox` (others arrive with their adapters).
    pub provider: String,
    /// Methods it takes, e.g. `["SANDBOX"]`.
    pub methods: Vec<String>,
    /// Currencies it takes (ISO codes), `["CNY"]` unless configured.
    #[serde(default = "default_currencies")]
    pub currencies: Vec<String>,
    /// Routing weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// ENABLED or DISABLED.
    pub status: ChannelStatus,
    /// Largest single payment, major units.
    #[serde(default)]
    pub single_limit: Option<String>,
    /// Most the channel may take on one business day (Beijing time), major units.
    #[serde(default)]
    pub daily_limit: Option<String>,
    /// The channel's fee as a share of each payment, e.g. "0.006".
    #[serde(default)]
    pub fee_rate: Option<String>,
    /// Call timeout, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// When the channel's circuit breaker opens and how it probes.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Provider-specific settings.
    #[serde(default)]
    pub settings: toml::Table,
}

/// A channel's circuit breaker (`[channels.breaker]`). It opens after
/// `failures_in_a_row` failed calls, or when `failure_rate_pct` of the latest `window`
/// calls failed (once at least `min_calls` were made); it stays open `open_ms`, doubling
/// on each failed probe up to `max_open_ms`, then lets `probes` calls through. A
/// failure is a timeout, a connection error, a 5xx or a provider's busy code, never a
/// business refusal.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failed calls in a row that open it.
    pub failures_in_a_row: u32,
    /// Share of the window's calls, in percent, that opens it.
    pub failure_rate_pct: u32,
    /// How many of the latest calls the rate is taken over.
    pub window: u32,
    /// The fewest calls in the window before the rate counts.
    pub min_calls: u32,
    /// How long it first stays open, milliseconds.
    pub open_ms: i64,
    /// The longest it stays open, milliseconds.
    pub max_open_ms: i64,
    /// Calls let through at once when the open time has passed.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_in_a_row: 5,
            failure_rate_pct: 50,
            window: 20,
            min_calls: 10,
            open_ms: 30_000,
            max_open_ms: 600_000,
            probes: 1,
        }
    }
}

impl BreakerConfig {
    /// The policy the channel's breaker runs.
    pub fn policy(&self) -> paygate_actors::breaker::BreakerPolicy {
        paygate_actors::breaker::BreakerPolicy {
            failures_to_open: self.failures_in_a_row,
            open_ms: self.open_ms,
            max_open_ms: self.max_open_ms,
            probes: self.probes,
            window: self.window,
            min_calls: self.min_calls,
            failure_rate_pct: self.failure_rate_pct,
        }
    }
}

fn default_minute_ms() -> u64 {
    60_000
}

fn default_currencies() -> Vec<String> {
    vec!["CNY".to_owned()]
}

fn default_weight() -> u32 {
    100
}

fn default_timeout_ms() -> u64 {
    3000
}

/// The configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Command-line overrides of the configuration, applied last.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Overrides {
    /// `server.listen`.
    pub listen: Option<String>,
    /// `storage.data_dir`.
    pub data_dir: Option<PathBuf>,
}

/// A configuration file that must be there, readable and TOML.
fn required_file(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    text.parse::<toml::Table>().map(|_| ()).map_err(|e| ConfigError(format!("{}: not valid TOML: {e}", path.display())))
}

impl Config {
    /// Loads the configuration from `dir` (the files above), the environment and `overrides`.
    pub fn load(dir: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let default = dir.join("default.toml");
        if !default.exists() {
            return Err(ConfigError(format!(
                "{} not found (run from the repository root or pass --config)",
                default.display()
            )));
        }
        // A node without merchants or channels answers every request with an error: an
        // unreadable or empty file is a mistake to name now, not a node to serve.
        for name in ["merchants.toml", "channels.toml"] {
            required_file(&dir.join(name))?;
        }
        let mut fig = Figment::new()
            .merge(Toml::file(default))
            .merge(Toml::file(dir.join("merchants.toml")))
            .merge(Toml::file(dir.join("channels.toml")))
            .merge(Toml::file(dir.join("sim.toml")))
            .merge(Toml::file(dir.join("risk.toml")))
            .merge(Env::prefixed("PAYGATE_").split("__").ignore(&["master_key"]));
        if let Some(listen) = &overrides.listen {
            fig = fig.merge(Serialized::default("server.listen", listen));
        }
        if let Some(data) = &overrides.data_dir {
            fig = fig.merge(Serialized::default("storage.data_dir", data));
        }
        let mut config: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        let env_key = std::env::var("PAYGATE_MASTER_KEY").ok();
        let key = MasterKey::resolve(env_key.as_deref(), config.secrets.master_key_file.as_deref())
            .map_err(|e| ConfigError(e.to_string()))?;
        config.open_secrets(&key)?;
        if config.merchants.is_empty() {
            return Err(ConfigError(format!("{} defines no [[merchants]]", dir.join("merchants.toml").display())));
        }
        if config.channels.is_empty() {
            return Err(ConfigError(format!("{} defines no [[channels]]", dir.join("channels.toml").display())));
        }
        config.validate()?;
        Ok(config)
    }

    /// Replaces every sealed secret by its plain text, in memory only. A secret in plain
    /// text in the files is refused: secrets are stored sealed.
    fn open_secrets(&mut self, key: &MasterKey) -> Result<(), ConfigError> {
        let fail = |e: SecretError| ConfigError(e.to_string());
        self.admin.token = key.open("admin.token", &self.admin.token).map_err(fail)?;
        for m in &mut self.merchants {
            m.secret = key.open(&format!("merchant {} secret", m.merchant_id), &m.secret).map_err(fail)?;
        }
        for c in &mut self.channels {
            for (name, value) in c.settings.iter_mut() {
                let toml::Value::String(text) = value else { continue };
                let what = format!("channel {} setting {name}", c.code);
                if text.starts_with(SEALED_PREFIX) {
                    *text = key.open(&what, text).map_err(fail)?;
                } else if is_secret_setting(name) {
                    return Err(fail(SecretError::Plain(what)));
                }
            }
        }
        if let Some(a) = self.sim.as_mut().and_then(|s| s.alipay.as_mut()) {
            a.alipay_private_key = key.open("sim.alipay.alipay_private_key", &a.alipay_private_key).map_err(fail)?;
        }
        if let Some(w) = self.sim.as_mut().and_then(|s| s.wechat.as_mut()) {
            for m in &mut w.merchants {
                m.api_key = key.open(&format!("sim.wechat merchant {} api_key", m.mch_id), &m.api_key).map_err(fail)?;
                if let Some(k) = m.api_v3_key.as_mut() {
                    *k = key.open(&format!("sim.wechat merchant {} api_v3_key", m.mch_id), k).map_err(fail)?;
                }
            }
            if let Some(p) = w.platform.as_mut() {
                p.private_key = key.open("sim.wechat.platform.private_key", &p.private_key).map_err(fail)?;
            }
        }
        if let Some(u) = self.sim.as_mut().and_then(|s| s.unionpay.as_mut()) {
            u.signing_private_key =
                key.open("sim.unionpay.signing_private_key", &u.signing_private_key).map_err(fail)?;
        }
        self.demo_master_key = key.is_demo();
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.risk.check().map_err(ConfigError)?;
        for entry in &self.risk_lists {
            entry
                .clone()
                .canonical()
                .map_err(|e| ConfigError(format!("risk_lists {:?}: {}", entry.value, e.message)))?;
        }
        let limits = std::iter::once(("server.rate_limit".to_owned(), self.server.rate_limit))
            .chain(self.merchants.iter().map(|m| (format!("merchant {} rate_limit", m.merchant_id), m.rate_limit)));
        for (what, limit) in limits {
            if limit.is_some_and(|l| paygate_actors::rate_limit::TokenBucket::new(l).is_none()) {
                return Err(ConfigError(format!(
                    "{what}: rate_per_sec must be a positive number and burst at least 1"
                )));
            }
        }
        if self.shards.count == 0 || self.shards.count > paygate_actors::ids::MAX_SHARDS {
            return Err(ConfigError(format!("shards.count must be 1..={}", paygate_actors::ids::MAX_SHARDS)));
        }
        if !SEGMENT_BYTES.contains(&self.storage.segment_bytes) {
            return Err(ConfigError(format!(
                "storage.segment_bytes must be {}..={} (64 KiB to 1 GiB), not {}",
                SEGMENT_BYTES.start(),
                SEGMENT_BYTES.end(),
                self.storage.segment_bytes
            )));
        }
        self.max_amount(Currency::CNY)?;
        for m in &self.merchants {
            if let Some(method) = m.routing.keys().find(|k| k.parse::<PayMethod>().is_err()) {
                return Err(ConfigError(format!(
                    "merchant {}: routing names {method:?}, not a pay method (ALIPAY, WECHAT_PAY, UNION_PAY, BALANCE, SANDBOX)",
                    m.merchant_id
                )));
            }
        }
        for m in &self.merchants {
            if !paygate_actors::ids::is_valid_external_id(&m.merchant_id) || m.secret.len() < 16 {
                return Err(ConfigError(format!(
                    "merchant {:?}: id must be 1-32 of [A-Za-z0-9_-] and the secret at least 16 characters",
                    m.merchant_id
                )));
            }
        }
        for c in &self.channels {
            c.profile()?;
        }
        self.notify.policy()?;
        for m in &self.merchants {
            let Some(url) = &m.notify_url else { continue };
            let bad = |why: String| ConfigError(format!("merchant {:?}: notify_url {url:?} {why}", m.merchant_id));
            let host = crate::http::ssrf::host_of(url).map_err(bad)?;
            let private = host.parse::<std::net::IpAddr>().ok().and_then(crate::http::ssrf::forbidden);
            if let (Some(why), false) = (private, m.allow_private_notify) {
                return Err(bad(format!("is a {why} address; set allow_private_notify = true to allow it")));
            }
        }
        Ok(())
    }

    /// Why this configuration must not run in production, if it must not: the public
    /// demo master key, or the demo admin token.
    pub fn production_refusal(&self) -> Option<&'static str> {
        if self.demo_master_key {
            return Some(
                "the secrets are sealed with the public demo master key; set PAYGATE_MASTER_KEY \
                 (or secrets.master_key_file) and re-seal them with `paygate secret seal`",
            );
        }
        if self.admin.token == DEMO_ADMIN_TOKEN {
            return Some("admin.token is the demo token; set PAYGATE_ADMIN__TOKEN to a sealed token of your own");
        }
        // Anyone can mark a sandbox order paid (`POST /sandbox/pay/…`), and the built-in
        // simulator pays whatever it is asked to: neither belongs in front of real money.
        if self.channels.iter().any(|c| c.provider == "sandbox") {
            return Some(
                "a channel uses the sandbox provider, which anyone can mark paid; remove it from channels.toml",
            );
        }
        if self.channels.iter().any(|c| c.settings.get("gateway_url").and_then(|v| v.as_str()) == Some("builtin")) {
            return Some(
                "a channel's gateway_url is \"builtin\" (the simulator); point it at the provider's real gateway",
            );
        }
        None
    }

    /// The largest amount in `currency`'s minor units.
    pub fn max_amount(&self, currency: Currency) -> Result<i64, ConfigError> {
        let d =
            Decimal::from_str(&self.orders.max_amount).map_err(|e| ConfigError(format!("orders.max_amount: {e}")))?;
        (d * Decimal::from(10_i64.pow(currency.decimals())))
            .trunc()
            .try_into()
            .map_err(|_| ConfigError("orders.max_amount is out of range".into()))
    }

    /// How signed requests are authenticated.
    pub fn auth_policy(&self) -> AuthPolicy {
        AuthPolicy { timestamp_window_secs: self.auth.timestamp_window_secs, ..AuthPolicy::default() }
    }

    /// The active query policy.
    pub fn query_policy(&self) -> QueryPolicy {
        let o = &self.orders;
        QueryPolicy {
            first_after_ms: (o.query_first_after_secs * 1000) as i64,
            interval_ms: (o.query_interval_secs * 1000) as i64,
            max_attempts: o.query_max_attempts,
            refunds: paygate_actors::refund::RefundPolicy {
                window_ms: i64::from(o.refund_window_days).saturating_mul(86_400_000),
                first_query_after_ms: (o.refund_query_first_after_secs * 1000) as i64,
                query_interval_ms: (o.refund_query_interval_secs * 1000) as i64,
                max_queries: o.refund_query_max_attempts,
                late_payments: o.refund_late_payments,
            },
        }
    }
}

impl ChannelConfig {
    /// The routing profile of this channel.
    pub fn profile(&self) -> Result<ChannelProfile, ConfigError> {
        let err = |what: String| ConfigError(format!("channel {:?}: {what}", self.code));
        let methods = self
            .methods
            .iter()
            .map(|m| PayMethod::from_str(m).map_err(|()| err(format!("unknown method {m:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let currencies = self
            .currencies
            .iter()
            .map(|c| Currency::from_str(c).map_err(|_| err(format!("unknown currency {c:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if currencies.is_empty() {
            return Err(err("currencies must name at least one currency".into()));
        }
        let limit = |name: &str, value: &Option<String>| match value {
            Some(text) => Money::parse_positive(text, Currency::CNY, i64::MAX)
                .map(|m| Some(m.minor()))
                .map_err(|e| err(format!("{name} {e}"))),
            None => Ok(None),
        };
        let fee_rate = match &self.fee_rate {
            Some(text) => rust_decimal::Decimal::from_str(text)
                .ok()
                .filter(|r| (rust_decimal::Decimal::ZERO..rust_decimal::Decimal::ONE).contains(r))
                .ok_or_else(|| err(format!("fee_rate {text:?} must be a decimal from 0 to below 1")))?,
            None => rust_decimal::Decimal::ZERO,
        };
        Ok(ChannelProfile {
            code: self.code.clone(),
            provider: self.provider.clone(),
            methods,
            currencies,
            weight: self.weight,
            status: self.status,
            single_limit_minor: limit("single_limit", &self.single_limit)?,
            daily_limit_minor: limit("daily_limit", &self.daily_limit)?,
            fee_rate,
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}
