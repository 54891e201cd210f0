//! Channels: their profile, and the handle through which orders call a channel's
//! connector — every call bounded by the channel's timeout and counted in its live
//! statistics. Calls go straight to the connector from the calling order actor: an
//! extra actor hop per call cost more than an in-process connector's whole answer, and
//! the shared state a channel needs (counters; later its breaker and daily limit) is
//! kept in atomics that every caller updates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daily_volume::{business_day, DailyVolume};
use crate::error::CoreError;
use crate::money::Money;
use crate::order::{ChannelNotice, PayMethod};
use crate::ports::{BoxFuture, ChannelConnector, ChannelError, ChannelOrder, ChannelRefund, CreateAccepted, TradeRef};
use crate::refund::RefundState;

/// Whether routing may use a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChannelStatus {
    /// Routable.
    Enabled,
    /// Skipped by routing.
    Disabled,
}

/// A channel's configuration (seed table `channel_config`).
#[derive(Debug, Clone)]
pub struct ChannelProfile {
    /// Unique code, e.g. `sandbox`, `alipay-main`.
    pub code: String,
    /// Which protocol: `sandbox`, `alipay`, `wechat`, `unionpay`, `balance`.
    pub provider: String,
    /// Methods it takes.
    pub methods: Vec<PayMethod>,
    /// Currencies it takes; a payment in another is never routed to it.
    pub currencies: Vec<crate::money::Currency>,
    /// Routing weight.
    pub weight: u32,
    /// Routable or not.
    pub status: ChannelStatus,
    /// Largest single payment, minor units.
    pub single_limit_minor: Option<i64>,
    /// Most it may take on one business day, minor units ([`crate::daily_volume`]).
    pub daily_limit_minor: Option<i64>,
    /// The channel's fee, as a share of each payment (for reconciliation and
    /// lowest-fee routing when it arrives).
    pub fee_rate: rust_decimal::Decimal,
    /// Longest a call may take before its outcome counts as unknown.
    pub timeout: Duration,
}

/// Live counters of one channel.
#[derive(Debug, Default)]
pub struct ChannelStats {
    /// Calls answered.
    pub ok: AtomicU64,
    /// Calls refused by the channel.
    pub rejected: AtomicU64,
    /// Calls with no trustworthy answer (timeouts included).
    pub unknown: AtomicU64,
    /// Sum of call latencies, microseconds.
    pub latency_us_total: AtomicU64,
    /// What it has taken today, against its daily limit.
    pub daily: DailyVolume,
}

impl ChannelStats {
    fn record<T>(&self, outcome: &Result<T, ChannelError>, took: Duration) {
        let counter = match outcome {
            Ok(_) => &self.ok,
            Err(ChannelError::Rejected { .. }) => &self.rejected,
            Err(ChannelError::Unknown(_)) => &self.unknown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.latency_us_total.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// A channel as orders see it: its profile, its connector and its counters.
#[derive(Clone)]
pub struct ChannelHandle {
    /// Configuration.
    pub profile: Arc<ChannelProfile>,
    /// Live counters.
    pub stats: Arc<ChannelStats>,
    /// The provider's protocol: where calls go.
    pub connector: Arc<dyn ChannelConnector>,
}

impl ChannelHandle {
    /// A handle over `connector`.
    pub fn new(profile: ChannelProfile, connector: Arc<dyn ChannelConnector>) -> ChannelHandle {
        ChannelHandle { profile: Arc::new(profile), stats: Arc::default(), connector }
    }

    /// Runs one call, bounded by the channel timeout: no answer in time is an unknown
    /// outcome, never a failure.
    async fn call<T>(&self, call: BoxFuture<Result<T, ChannelError>>) -> Result<T, ChannelError> {
        let timeout = self.profile.timeout;
        let started = Instant::now();
        let outcome = match actix::clock::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(ChannelError::Unknown(format!("no answer within {} ms", timeout.as_millis()))),
        };
        self.stats.record(&outcome, started.elapsed());
        outcome
    }

    /// Opens a trade.
    pub async fn create(&self, order: ChannelOrder) -> Result<CreateAccepted, ChannelError> {
        self.call(self.connector.create_order(order)).await
    }

    /// Where a trade stands.
    pub async fn query(&self, trade: TradeRef) -> Result<ChannelNotice, ChannelError> {
        self.call(self.connector.query_order(trade)).await
    }

    /// Closes an unpaid trade.
    pub async fn close(&self, trade: TradeRef) -> Result<ChannelNotice, ChannelError> {
        self.call(self.connector.close_order(trade)).await
    }

    /// Asks the channel to refund (part of) a paid trade under the refund's own number.
    pub async fn refund(&self, refund: ChannelRefund) -> Result<RefundState, ChannelError> {
        self.call(self.connector.refund(refund)).await
    }

    /// Where a refund stands.
    pub async fn query_refund(&self, refund: ChannelRefund) -> Result<RefundState, ChannelError> {
        self.call(self.connector.query_refund(refund)).await
    }
}

/// Every channel of the node.
#[derive(Clone, Default)]
pub struct ChannelDirectory {
    by_code: Arc<HashMap<String, ChannelHandle>>,
    profiles: Arc<Vec<Arc<ChannelProfile>>>,
}

impl ChannelDirectory {
    /// A directory of started channels.
    pub fn new(handles: Vec<ChannelHandle>) -> ChannelDirectory {
        let profiles = handles.iter().map(|h| h.profile.clone()).collect();
        let by_code = handles.into_iter().map(|h| (h.profile.code.clone(), h)).collect();
        ChannelDirectory { by_code: Arc::new(by_code), profiles: Arc::new(profiles) }
    }

    /// A channel by code.
    pub fn get(&self, code: &str) -> Option<&ChannelHandle> {
        self.by_code.get(code)
    }

    /// Every channel's profile, in configuration order.
    pub fn profiles(&self) -> &[Arc<ChannelProfile>] {
        &self.profiles
    }

    /// The channel for a new payment of `amount` by `method` at `now_ms`: the
    /// routing rules, among the channels whose daily limit still has room for it.
    pub fn select(&self, method: PayMethod, amount: Money, now_ms: i64) -> Result<&ChannelProfile, CoreError> {
        let day = business_day(now_ms);
        crate::channel_selection::select_channel(&self.profiles, method, amount, |p| {
            p.daily_limit_minor.is_none_or(|limit| {
                let used = self.by_code.get(&p.code).map_or(0, |h| h.stats.daily.used(day));
                used.saturating_add(amount.minor()) <= limit
            })
        })
    }

    /// The first channel of a provider (callbacks name the provider, not the channel).
    pub fn by_provider(&self, provider: &str) -> Option<&ChannelHandle> {
        self.profiles.iter().find(|p| p.provider == provider).and_then(|p| self.by_code.get(&p.code))
    }
}
