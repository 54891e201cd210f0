//! The sandbox channel: an in-process payment provider behind the channel port.
//!
//! It keeps trades like a real provider, and a test or a person tells it to pay, fail
//! or never answer an order (admin endpoint, the sandbox cashier page, or directly in
//! tests). Payments reach the gateway as signed HTTP callbacks to `/callback/sandbox`,
//! retried until acknowledged: the same path a real provider's notification takes.
//! Latency, an error rate and a no-answer rate can be injected on every call.
//!
//! Its trades are kept in a store under the data directory ([`crate::sim::store`]):
//! a payment, failure, close or refund is durable before it is reported, an opened
//! trade within half a second; a callback not yet acknowledged when the node stopped is
//! sent again when it starts, as a provider that never restarted would keep sending it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use actix::clock::sleep;
use dashmap::DashMap;
use paygate_actors::clock::Clock;
use paygate_actors::clock::SystemClock;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::money::Money;
use paygate_actors::order::ChannelNotice;
use paygate_actors::ports::{
    BillLine, BoxFuture, CallbackReply, CallbackRequest, ChannelConnector, ChannelError, ChannelOrder, ChannelRefund,
    CreateAccepted, TradeRef, Verified, VerifiedCallback,
};
use paygate_actors::refund::RefundState;
use paygate_actors::signing::{self, SignType};
use serde::{Deserialize, Serialize};

use crate::http::client::HttpClient;
use crate::sim::store::{SimStore, Table};

/// Injected faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Added to every call, milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of calls (0..=1) that fail with an unknown outcome, like a 5xx.
    #[serde(default)]
    pub error_rate: f64,
    /// Share of calls (0..=1) that never answer (the caller's timeout decides).
    #[serde(default)]
    pub hang_rate: f64,
}

impl SandboxSettings {
    /// Checks the rates are probabilities.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [("error_rate", self.error_rate), ("hang_rate", self.hang_rate)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1"));
            }
        }
        if self.latency_ms > 600_000 {
            return Err("latency_ms must be at most 600000".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum TradeStatus {
    Open,
    Paid,
    Failed(String),
    Closed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trade {
    amount: Money,
    subject: String,
    status: TradeStatus,
    trade_no: String,
    hang: bool,
    paid_at: Option<i64>,
    refunds: HashMap<String, i64>,
    /// The gateway acknowledged the callback of the trade's outcome.
    #[serde(default)]
    notified: bool,
}

/// A control request the sandbox refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// No trade with that id.
    #[error("the sandbox has no trade {0}")]
    UnknownTrade(String),
    /// The trade is not waiting for payment.
    #[error("trade {0} is not open for payment")]
    NotOpen(String),
}

/// The sandbox provider.
pub struct Sandbox {
    trades: DashMap<String, Trade>,
    stored: Table<Trade>,
    settings: RwLock<SandboxSettings>,
    secret: String,
    /// Where callbacks go (`…/callback/sandbox`), known once the node is listening.
    notify_url: OnceLock<String>,
    /// Base of the sandbox cashier page the code URL points to.
    cashier_url: OnceLock<String>,
    spawner: OnceLock<actix_rt::ArbiterHandle>,
    client: HttpClient,
    next_trade: AtomicU64,
    clock: SystemClock,
}

/// Callback retry delays: quick first, then backing off, like a real provider.
const NOTIFY_DELAYS_MS: [u64; 8] = [0, 500, 1_000, 2_000, 5_000, 15_000, 60_000, 300_000];

impl Sandbox {
    /// A sandbox signing its callbacks with `secret`, keeping its trades in `store`.
    pub fn new(secret: String, settings: SandboxSettings, store: &SimStore) -> Result<Sandbox, String> {
        let start = SystemClock.now_ms().max(0) as u64;
        let stored = store.table::<Trade>("sandbox")?;
        Ok(Sandbox {
            trades: stored.all().into_iter().collect(),
            stored,
            settings: RwLock::new(settings),
            secret,
            notify_url: OnceLock::new(),
            cashier_url: OnceLock::new(),
            spawner: OnceLock::new(),
            client: HttpClient::new(),
            next_trade: AtomicU64::new(start),
            clock: SystemClock,
        })
    }

    /// Wires the sandbox to its node: where to send callbacks, where the cashier page
    /// is, and the arbiter that runs callback deliveries.
    /// Callbacks of outcomes the gateway had not acknowledged are sent again.
    pub fn attach(self: &Arc<Self>, notify_url: String, cashier_url: String, spawner: actix_rt::ArbiterHandle) {
        let _ = self.notify_url.set(notify_url);
        let _ = self.cashier_url.set(cashier_url);
        let _ = self.spawner.set(spawner);
        let unacknowledged: Vec<(String, Vec<u8>)> = self
            .trades
            .iter()
            .filter(|t| !t.notified && matches!(t.status, TradeStatus::Paid | TradeStatus::Failed(_)))
            .map(|t| (t.key().clone(), self.notification(t.key(), t.value())))
            .collect();
        for (id, body) in unacknowledged {
            self.deliver(id, body);
        }
    }

    /// Current fault settings.
    pub fn settings(&self) -> SandboxSettings {
        self.settings.read().map(|s| *s).unwrap_or_default()
    }

    /// Replaces the fault settings.
    pub fn set_settings(&self, settings: SandboxSettings) -> Result<(), String> {
        settings.validate()?;
        if let Ok(mut s) = self.settings.write() {
            *s = settings;
        }
        Ok(())
    }

    /// The buyer pays: the trade succeeds and a callback is sent.
    pub fn pay(self: &Arc<Self>, id: &str) -> Result<(), SandboxError> {
        self.settle(id, TradeStatus::Paid)
    }

    /// The payment fails: a FAILED callback is sent.
    pub fn fail(self: &Arc<Self>, id: &str, reason: &str) -> Result<(), SandboxError> {
        self.settle(id, TradeStatus::Failed(reason.to_owned()))
    }

    /// From now on, every call about this trade goes unanswered.
    pub fn hang(&self, id: &str) -> Result<(), SandboxError> {
        let mut t = self.trades.get_mut(id).ok_or_else(|| SandboxError::UnknownTrade(id.to_owned()))?;
        t.hang = true;
        self.stored.put(id, &t);
        Ok(())
    }

    /// What the sandbox cashier page shows: amount and subject of an open trade.
    pub fn describe(&self, id: &str) -> Option<(Money, String, bool)> {
        self.trades.get(id).map(|t| (t.amount, t.subject.clone(), t.status == TradeStatus::Open))
    }

    fn settle(self: &Arc<Self>, id: &str, to: TradeStatus) -> Result<(), SandboxError> {
        let body = {
            let mut t = self.trades.get_mut(id).ok_or_else(|| SandboxError::UnknownTrade(id.to_owned()))?;
            if t.status != TradeStatus::Open {
                return Err(SandboxError::NotOpen(id.to_owned()));
            }
            t.status = to;
            if t.status == TradeStatus::Paid {
                t.paid_at = Some(self.clock.now_ms());
            }
            // The buyer was told: the outcome survives a crash from here on.
            self.stored.put_durably(id, &t);
            self.notification(id, &t)
        };
        self.deliver(id.to_owned(), body);
        Ok(())
    }

    fn notification(&self, id: &str, t: &Trade) -> Vec<u8> {
        let (status, reason) = match &t.status {
            TradeStatus::Paid => ("SUCCESS", String::new()),
            TradeStatus::Failed(r) => ("FAILED", r.clone()),
            TradeStatus::Closed => ("CLOSED", String::new()),
            TradeStatus::Open => ("WAITING", String::new()),
        };
        let mut p: BTreeMap<String, String> = BTreeMap::new();
        p.insert("pay_order_no".into(), id.to_owned());
        p.insert("trade_no".into(), t.trade_no.clone());
        p.insert("trade_status".into(), status.into());
        p.insert("amount_minor".into(), t.amount.minor().to_string());
        p.insert("reason".into(), reason);
        p.insert("notify_time".into(), self.clock.now_ms().to_string());
        let sign = signing::sign(&p, &self.secret, SignType::HmacSha256);
        p.insert("sign".into(), sign);
        serde_json::to_vec(&p).unwrap_or_default()
    }

    /// Posts a callback until the gateway answers `success`, then remembers that it did.
    fn deliver(self: &Arc<Self>, id: String, body: Vec<u8>) {
        let (Some(url), Some(spawner)) = (self.notify_url.get().cloned(), self.spawner.get()) else {
            tracing::warn!("sandbox is not attached to a node; callback not sent");
            return;
        };
        let sandbox = Arc::clone(self);
        spawner.spawn(async move {
            for delay in NOTIFY_DELAYS_MS {
                sleep(Duration::from_millis(delay)).await;
                match sandbox.client.post(&url, "application/json", body.clone(), Duration::from_secs(5)).await {
                    Ok(a) if a.status == 200 && a.body.as_ref() == b"success" => {
                        if let Some(mut t) = sandbox.trades.get_mut(&id) {
                            t.notified = true;
                            sandbox.stored.put(&id, &t);
                        }
                        return;
                    }
                    Ok(a) => tracing::info!(status = a.status, "sandbox callback not acknowledged; will retry"),
                    Err(e) => tracing::info!(error = %e, "sandbox callback failed; will retry"),
                }
            }
            tracing::warn!("sandbox callback abandoned after all retries");
        });
    }

    /// Applies the injected faults; `hang` forces no answer for this call.
    async fn faults(&self, hang: bool) -> Result<(), ChannelError> {
        let s = self.settings();
        if s.latency_ms > 0 {
            sleep(Duration::from_millis(s.latency_ms)).await;
        }
        if hang || (s.hang_rate > 0.0 && rand::random::<f64>() < s.hang_rate) {
            std::future::pending::<()>().await;
        }
        if s.error_rate > 0.0 && rand::random::<f64>() < s.error_rate {
            return Err(ChannelError::Unknown("sandbox: injected error (HTTP 503)".into()));
        }
        Ok(())
    }

    fn hangs(&self, id: &PayOrderNo) -> bool {
        self.trades.get(id.as_str()).is_some_and(|t| t.hang)
    }

    fn code_url(&self, id: &str) -> String {
        let base = self.cashier_url.get().map_or("sandbox://pay/", String::as_str);
        format!("{base}{id}")
    }

    fn notice(t: &Trade) -> ChannelNotice {
        match &t.status {
            TradeStatus::Open => ChannelNotice::NotPaid,
            TradeStatus::Paid => {
                ChannelNotice::Paid { channel_trade_no: t.trade_no.clone(), amount_minor: t.amount.minor() }
            }
            TradeStatus::Failed(reason) => ChannelNotice::Failed { reason: reason.clone() },
            TradeStatus::Closed => ChannelNotice::Closed,
        }
    }
}

/// The sandbox as a channel connector (an `Arc` so futures can own it).
#[derive(Clone)]
pub struct SandboxConnector(pub Arc<Sandbox>);

impl ChannelConnector for SandboxConnector {
    fn create_order(&self, order: ChannelOrder) -> BoxFuture<Result<CreateAccepted, ChannelError>> {
        let s = Arc::clone(&self.0);
        Box::pin(async move {
            let id = order.pay_order_no.as_str().to_owned();
            // The trade exists at the provider even if its answer is then lost.
            if let dashmap::Entry::Vacant(slot) = s.trades.entry(id.clone()) {
                let trade = Trade {
                    amount: order.amount,
                    subject: order.subject.clone(),
                    status: TradeStatus::Open,
                    trade_no: format!("SBX{:017}", s.next_trade.fetch_add(1, Ordering::Relaxed)),
                    hang: false,
                    paid_at: None,
                    refunds: HashMap::new(),
                    notified: false,
                };
                s.stored.put(&id, &trade);
                slot.insert(trade);
            }
            s.faults(s.hangs(&order.pay_order_no)).await?;
            let existing = s.trades.get(&id).map(|t| (t.amount, t.trade_no.clone()));
            match existing {
                Some((amount, _)) if amount != order.amount => Err(ChannelError::Rejected {
                    code: "OUT_TRADE_NO_USED".into(),
                    message: "the trade exists with another amount".into(),
                }),
                Some((_, trade_no)) => {
                    Ok(CreateAccepted { code_url: s.code_url(&id), channel_trade_no: Some(trade_no) })
                }
                None => Err(ChannelError::Unknown("trade vanished".into())),
            }
        })
    }

    fn query_order(&self, trade: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>> {
        let s = Arc::clone(&self.0);
        Box::pin(async move {
            s.faults(s.hangs(&trade.pay_order_no)).await?;
            Ok(s.trades.get(trade.pay_order_no.as_str()).map_or(ChannelNotice::NotPaid, |t| Sandbox::notice(&t)))
        })
    }

    fn close_order(&self, trade: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>> {
        let s = Arc::clone(&self.0);
        Box::pin(async move {
            s.faults(s.hangs(&trade.pay_order_no)).await?;
            let id = trade.pay_order_no.as_str();
            let notice = match s.trades.get_mut(id) {
                None => return Ok(ChannelNotice::Closed),
                Some(mut t) => {
                    if t.status == TradeStatus::Open {
                        t.status = TradeStatus::Closed;
                    }
                    Sandbox::notice(&t)
                }
            };
            if notice == ChannelNotice::Closed {
                // A closed trade needs nothing more from the sandbox (queries of unknown
                // trades answer "not paid", closes answer "closed"): forgetting it keeps
                // the in-process provider's memory flat over long runs.
                s.trades.remove(id);
                s.stored.remove_durably(id);
            }
            Ok(notice)
        })
    }

    fn refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        let s = Arc::clone(&self.0);
        Box::pin(async move {
            s.faults(s.hangs(&refund.trade.pay_order_no)).await?;
            let Some(mut t) = s.trades.get_mut(refund.trade.pay_order_no.as_str()) else {
                return Err(ChannelError::Rejected { code: "TRADE_NOT_EXIST".into(), message: "no such trade".into() });
            };
            if t.status != TradeStatus::Paid {
                return Err(ChannelError::Rejected { code: "TRADE_STATUS_ERROR".into(), message: "not paid".into() });
            }
            if let Some(&done) = t.refunds.get(&refund.refund_no) {
                return if done == refund.amount.minor() {
                    Ok(RefundState::Success)
                } else {
                    Err(ChannelError::Rejected { code: "REFUND_NO_USED".into(), message: "other amount".into() })
                };
            }
            let refunded: i64 = t.refunds.values().sum();
            if refunded + refund.amount.minor() > t.amount.minor() {
                return Err(ChannelError::Rejected { code: "REFUND_EXCEEDS".into(), message: "exceeds paid".into() });
            }
            t.refunds.insert(refund.refund_no, refund.amount.minor());
            s.stored.put_durably(refund.trade.pay_order_no.as_str(), &t);
            Ok(RefundState::Success)
        })
    }

    fn query_refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        let s = Arc::clone(&self.0);
        let (trade, refund_no) = (refund.trade, refund.refund_no);
        Box::pin(async move {
            s.faults(s.hangs(&trade.pay_order_no)).await?;
            let known = s.trades.get(trade.pay_order_no.as_str()).is_some_and(|t| t.refunds.contains_key(&refund_no));
            Ok(if known { RefundState::Success } else { RefundState::NotFound })
        })
    }

    fn download_bill(&self, date: String) -> BoxFuture<Result<Vec<BillLine>, ChannelError>> {
        let s = Arc::clone(&self.0);
        Box::pin(async move {
            s.faults(false).await?;
            let lines = s
                .trades
                .iter()
                .filter_map(|e| {
                    let t = e.value();
                    let at = t.paid_at?;
                    (crate::time_fmt::date(at) == date).then(|| BillLine {
                        pay_order_no: e.key().clone(),
                        channel_trade_no: t.trade_no.clone(),
                        amount_minor: t.amount.minor(),
                        fee_minor: 0,
                        time: at,
                    })
                })
                .collect();
            Ok(lines)
        })
    }

    fn verify_callback(&self, request: &CallbackRequest) -> Option<Verified> {
        let p: BTreeMap<String, String> = serde_json::from_slice(&request.body).ok()?;
        if !signing::verify(&p, &self.0.secret, SignType::HmacSha256) {
            return None;
        }
        let pay_order_no = PayOrderNo::parse(p.get("pay_order_no")?)?;
        let notice = match p.get("trade_status")?.as_str() {
            "SUCCESS" => ChannelNotice::Paid {
                channel_trade_no: p.get("trade_no")?.clone(),
                amount_minor: p.get("amount_minor")?.parse().ok()?,
            },
            "FAILED" => ChannelNotice::Failed { reason: p.get("reason").cloned().unwrap_or_default() },
            "CLOSED" => ChannelNotice::Closed,
            _ => return None,
        };
        Some(Verified::Order(VerifiedCallback { pay_order_no, notice }))
    }

    fn callback_ack(&self) -> CallbackReply {
        CallbackReply { status: 200, content_type: "text/plain", body: b"success".to_vec() }
    }

    fn callback_nack(&self) -> CallbackReply {
        CallbackReply { status: 400, content_type: "text/plain", body: b"fail".to_vec() }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use paygate_actors::ids::{IdGenerator, ShardId};
    use paygate_actors::money::Currency;
    use paygate_actors::order::PayScene;

    use super::*;

    const SECRET: &str = "sandbox-test-secret-0123456789";

    fn open(dir: &std::path::Path) -> Arc<Sandbox> {
        let store = SimStore::open(dir).unwrap();
        Arc::new(Sandbox::new(SECRET.into(), SandboxSettings::default(), &store).unwrap())
    }

    /// A gateway that acknowledges one callback and hands its body over.
    fn one_callback() -> (String, std::sync::mpsc::Receiver<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/callback/sandbox", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\"sign\"") {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nsuccess").unwrap();
            tx.send(String::from_utf8_lossy(&got).into_owned()).unwrap();
        });
        (url, rx)
    }

    #[test]
    fn a_payment_whose_callback_was_never_acknowledged_is_sent_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let id = IdGenerator::new(ShardId(3), 0).next(1_700_000_000_000);
        let order = ChannelOrder {
            pay_order_no: id.clone(),
            amount: Money::from_minor(250, Currency::CNY),
            subject: "tea".into(),
            create_time: 1_700_000_000_000,
            expire_time: 1_700_001_800_000,
            client_ip: None,
            scene: PayScene::Qr,
            return_url: None,
        };
        let system = actix_rt::System::new();
        system.block_on(async {
            let sandbox = open(dir.path());
            SandboxConnector(Arc::clone(&sandbox)).create_order(order).await.unwrap();
            // Paid, but the node went down before any callback could reach it.
            sandbox.pay(id.as_str()).unwrap();
        });
        let (url, callbacks) = one_callback();
        system.block_on(async {
            let sandbox = open(dir.path());
            sandbox.attach(url, "http://127.0.0.1:1/sandbox/pay/".into(), actix_rt::Arbiter::current());
            let body = loop {
                if let Ok(body) = callbacks.try_recv() {
                    break body;
                }
                actix_rt::time::sleep(Duration::from_millis(10)).await;
            };
            assert!(body.contains(id.as_str()) && body.contains("\"trade_status\":\"SUCCESS\""), "{body}");
            // Acknowledged now: remembered, so a later start sends nothing again.
            while !sandbox.trades.get(id.as_str()).is_some_and(|t| t.notified) {
                actix_rt::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
}
