//! Channels: their profile, and the handle through which orders call a channel's
//! connector — every call bounded by the channel's timeout, admitted by its circuit
//! breaker and reported to its actor ([`crate::channel_actor`]). Calls go straight to
//! the connector from the calling order actor: an extra actor hop per call cost more
//! than an in-process connector's whole answer. The channel actor owns the breaker
//! and the statistics; callers read what it publishes and report without waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};

use crate::breaker::BreakerPolicy;
use crate::channel_actor::{Adjust, Admission, CallOutcome, ChannelActor, ChannelLive, ChannelSetting, Reported};
use crate::clock::Clock;
use crate::daily_volume::DailyVolume;
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

/// A channel's configuration.
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
    /// Routable or not, as configured (operators may change it while the node runs:
    /// [`ChannelLive::enabled`] is the state in force).
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
    /// Calls certainly not carried out: the channel could not be reached or answered
    /// 503.
    pub unavailable: AtomicU64,
    /// Calls not made because the channel's breaker was open.
    pub breaker_open: AtomicU64,
    /// What it has taken today, against its daily limit.
    pub daily: DailyVolume,
}

impl ChannelStats {
    fn record<T>(&self, outcome: &Result<T, ChannelError>) {
        let counter = match outcome {
            Ok(_) => &self.ok,
            Err(ChannelError::Rejected { .. }) => &self.rejected,
            Err(ChannelError::Unknown(_)) => &self.unknown,
            Err(ChannelError::Unavailable(_)) => &self.unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A channel as orders see it: its profile, its connector, its counters and what its
/// actor publishes.
#[derive(Clone)]
pub struct ChannelHandle {
    /// Configuration.
    pub profile: Arc<ChannelProfile>,
    /// Live counters.
    pub stats: Arc<ChannelStats>,
    /// The provider's protocol: where calls go.
    pub connector: Arc<dyn ChannelConnector>,
    /// The breaker and statistics, as the channel's actor publishes them.
    pub live: Arc<ChannelLive>,
    actor: Addr<ChannelActor>,
}

/// Reports a call's outcome to the channel actor once, and reports it abandoned if the
/// call is dropped before it finishes (so a probe permit is never lost).
struct Report<'a> {
    actor: &'a Addr<ChannelActor>,
    probe: bool,
    started: Instant,
    sent: bool,
}

impl Report<'_> {
    fn send(&mut self, outcome: CallOutcome) {
        self.sent = true;
        let latency_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.actor.do_send(Reported { outcome, latency_us, probe: self.probe });
    }
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.send(CallOutcome::Abandoned);
        }
    }
}

impl ChannelHandle {
    /// A handle over `connector`, with the channel's actor started on the current
    /// arbiter (so: from inside a running actix system).
    /// `setting` is what operators have set since (journaled), over the configuration.
    pub fn start(
        profile: ChannelProfile,
        setting: ChannelSetting,
        connector: Arc<dyn ChannelConnector>,
        breaker: BreakerPolicy,
        clock: Arc<dyn Clock>,
    ) -> ChannelHandle {
        let enabled = setting.enabled.unwrap_or(profile.status == ChannelStatus::Enabled);
        let live = Arc::new(ChannelLive::new(enabled, setting.weight.unwrap_or(profile.weight)));
        let actor = ChannelActor::new(profile.code.clone(), breaker, Arc::clone(&live), clock).start();
        ChannelHandle { profile: Arc::new(profile), stats: Arc::default(), connector, live, actor }
    }

    /// Applies an operator's setting, once journaled (effective as soon as the
    /// channel's actor has handled it).
    pub fn adjust(&self, setting: ChannelSetting) {
        self.actor.do_send(Adjust(setting));
    }

    /// Runs one call, bounded by the channel timeout (no answer in time is an unknown
    /// outcome, never a failure), and reports how it went to the channel's actor.
    async fn call<T>(&self, call: BoxFuture<Result<T, ChannelError>>, probe: bool) -> Result<T, ChannelError> {
        let timeout = self.profile.timeout;
        let mut report = Report { actor: &self.actor, probe, started: Instant::now(), sent: false };
        let outcome = match actix::clock::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(ChannelError::Unknown(format!("no answer within {} ms", timeout.as_millis()))),
        };
        self.stats.record(&outcome);
        let failed = outcome.as_ref().err().is_some_and(ChannelError::is_failure);
        report.send(if failed { CallOutcome::Failed } else { CallOutcome::Answered });
        outcome
    }

    /// Opens a trade, if the channel's breaker admits the call; if not, the channel is
    /// not called and the answer is `Unavailable`.
    pub async fn create(&self, order: ChannelOrder) -> Result<CreateAccepted, ChannelError> {
        let probe = match self.live.admit() {
            Admission::Call => false,
            Admission::Probe => true,
            Admission::Refused => {
                self.stats.breaker_open.fetch_add(1, Ordering::Relaxed);
                return Err(ChannelError::Unavailable("circuit breaker open".into()));
            }
        };
        self.call(self.connector.create_order(order), probe).await
    }

    /// Where a trade stands.
    pub async fn query(&self, trade: TradeRef) -> Result<ChannelNotice, ChannelError> {
        self.call(self.connector.query_order(trade), false).await
    }

    /// Closes an unpaid trade.
    pub async fn close(&self, trade: TradeRef) -> Result<ChannelNotice, ChannelError> {
        self.call(self.connector.close_order(trade), false).await
    }

    /// Asks the channel to refund (part of) a paid trade under the refund's own number.
    pub async fn refund(&self, refund: ChannelRefund) -> Result<RefundState, ChannelError> {
        self.call(self.connector.refund(refund), false).await
    }

    /// Where a refund stands.
    pub async fn query_refund(&self, refund: ChannelRefund) -> Result<RefundState, ChannelError> {
        self.call(self.connector.query_refund(refund), false).await
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

    /// The channels of a provider, in configuration order (callbacks name the
    /// provider, not the channel).
    pub fn of_provider<'a>(&'a self, provider: &'a str) -> impl Iterator<Item = &'a ChannelHandle> + 'a {
        self.profiles.iter().filter(move |p| p.provider == provider).filter_map(|p| self.by_code.get(&p.code))
    }
}
