//! Channels: their profile, and the actor that owns one channel's connector, its call
//! timeouts and live statistics (and, later, its circuit breaker and daily limit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, Addr, Context, Handler, Message, ResponseActFuture, WrapFuture};

use crate::order::{ChannelNotice, PayMethod};
use crate::ports::{
    BoxFuture, ChannelConnector, ChannelError, ChannelOrder, ChannelRefund, CreateAccepted, RefundState, TradeRef,
};

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
    /// Routing weight.
    pub weight: u32,
    /// Routable or not.
    pub status: ChannelStatus,
    /// Largest single payment, minor units.
    pub single_limit_minor: Option<i64>,
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

/// The actor owning one channel.
pub struct ChannelActor {
    profile: Arc<ChannelProfile>,
    connector: Arc<dyn ChannelConnector>,
    stats: Arc<ChannelStats>,
}

impl Actor for ChannelActor {
    type Context = Context<Self>;
}

/// A call to a channel. Calls run concurrently; each is bounded by the channel timeout.
pub struct ChannelCall<T: 'static>(CallFn<T>);

type CallFn<T> = Box<dyn FnOnce(&dyn ChannelConnector) -> BoxFuture<Result<T, ChannelError>> + Send>;

impl<T: 'static> Message for ChannelCall<T> {
    type Result = Result<T, ChannelError>;
}

impl<T: Send + 'static> Handler<ChannelCall<T>> for ChannelActor {
    type Result = ResponseActFuture<Self, Result<T, ChannelError>>;

    fn handle(&mut self, msg: ChannelCall<T>, _: &mut Context<Self>) -> Self::Result {
        let call = (msg.0)(self.connector.as_ref());
        let timeout = self.profile.timeout;
        let started = Instant::now();
        let fut = async move {
            match actix::clock::timeout(timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(ChannelError::Unknown(format!("no answer within {} ms", timeout.as_millis()))),
            }
        };
        Box::pin(fut.into_actor(self).map(move |outcome, act, _| {
            act.stats.record(&outcome, started.elapsed());
            outcome
        }))
    }
}

/// A started channel: its profile, actor and counters.
#[derive(Clone)]
pub struct ChannelHandle {
    /// Configuration.
    pub profile: Arc<ChannelProfile>,
    /// Live counters.
    pub stats: Arc<ChannelStats>,
    /// The connector, for callback verification (synchronous, no actor hop).
    pub connector: Arc<dyn ChannelConnector>,
    addr: Addr<ChannelActor>,
}

impl ChannelHandle {
    /// Starts the channel's actor in the current arbiter.
    pub fn start(profile: ChannelProfile, connector: Arc<dyn ChannelConnector>) -> ChannelHandle {
        let profile = Arc::new(profile);
        let stats = Arc::new(ChannelStats::default());
        let addr =
            ChannelActor { profile: profile.clone(), connector: connector.clone(), stats: stats.clone() }.start();
        ChannelHandle { profile, stats, connector, addr }
    }

    async fn call<T: Send + 'static>(&self, f: CallFn<T>) -> Result<T, ChannelError> {
        self.addr
            .send(ChannelCall(f))
            .await
            .unwrap_or_else(|_| Err(ChannelError::Unknown("channel actor unavailable".into())))
    }

    /// Opens a trade.
    pub async fn create(&self, order: ChannelOrder) -> Result<CreateAccepted, ChannelError> {
        self.call(Box::new(move |c| c.create_order(order))).await
    }

    /// Where a trade stands.
    pub async fn query(&self, trade: TradeRef) -> Result<ChannelNotice, ChannelError> {
        self.call(Box::new(move |c| c.query_order(trade))).await
    }

    /// Closes an unpaid trade.
    pub async fn close(&self, trade: TradeRef) -> Result<ChannelNotice, ChannelError> {
        self.call(Box::new(move |c| c.close_order(trade))).await
    }

    /// Refunds.
    pub async fn refund(&self, refund: ChannelRefund) -> Result<RefundState, ChannelError> {
        self.call(Box::new(move |c| c.refund(refund))).await
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

    /// The first channel of a provider (callbacks name the provider, not the channel).
    pub fn by_provider(&self, provider: &str) -> Option<&ChannelHandle> {
        self.profiles.iter().find(|p| p.provider == provider).and_then(|p| self.by_code.get(&p.code))
    }
}
