//! The payment order aggregate: the one place that enforces the order state machine.
//!
//! ```text
//! PENDING ─► PAYING ─► SUCCESS ─► PARTIALLY_REFUNDED ─► REFUNDED
//!    │          │  └─► FAILED         └──────────────────┘
//!    └──────────┴────► CLOSED | EXPIRED
//! ```
//! [`Order::handle`] decides the events a command causes; [`Order::apply`] evolves
//! the state from one event. Final states never go backwards: a late or out-of-order
//! signal is recorded (as an event) and answered, never applied against the machine.

use crate::clock::UnixMillis;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, ErrorCode};
use crate::ids::PayOrderNo;
use crate::money::Money;
use crate::refund::{Refund, RefundEvent, RefundPolicy, RefundSpec, RefundState, MAX_REFUNDS};
use crate::strategy::Route;

/// How the buyer pays: picks the family of channels that can take the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PayMethod {
    /// Alipay.
    Alipay,
    /// WeChat Pay.
    WechatPay,
    /// UnionPay online gateway.
    UnionPay,
    /// The internal balance account.
    Balance,
    /// The built-in sandbox channel.
    Sandbox,
}

impl PayMethod {
    /// Every method, in wire order.
    pub const ALL: [PayMethod; 5] =
        [PayMethod::Alipay, PayMethod::WechatPay, PayMethod::UnionPay, PayMethod::Balance, PayMethod::Sandbox];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PayMethod::Alipay => "ALIPAY",
            PayMethod::WechatPay => "WECHAT_PAY",
            PayMethod::UnionPay => "UNION_PAY",
            PayMethod::Balance => "BALANCE",
            PayMethod::Sandbox => "SANDBOX",
        }
    }
}

impl FromStr for PayMethod {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        PayMethod::ALL.into_iter().find(|m| m.as_str() == s).ok_or(())
    }
}

impl fmt::Display for PayMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of a method's products the buyer pays with (the optional `pay_scene`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum PayScene {
    /// A code the buyer scans (the default).
    #[default]
    Qr,
    /// A desktop browser page at the channel (Alipay page pay, UnionPay front form).
    Web,
    /// A mobile browser page at the channel (Alipay wap pay).
    Wap,
    /// WeChat's own name for its scan-to-pay product.
    Native,
}

impl PayScene {
    /// Every scene, in wire order.
    pub const ALL: [PayScene; 4] = [PayScene::Qr, PayScene::Web, PayScene::Wap, PayScene::Native];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PayScene::Qr => "QR",
            PayScene::Web => "WEB",
            PayScene::Wap => "WAP",
            PayScene::Native => "NATIVE",
        }
    }

    /// The scenes `method` offers; the first is what an absent `pay_scene` means.
    pub fn offered_by(method: PayMethod) -> &'static [PayScene] {
        match method {
            PayMethod::Alipay => &[PayScene::Qr, PayScene::Web, PayScene::Wap],
            PayMethod::WechatPay => &[PayScene::Qr, PayScene::Native],
            PayMethod::UnionPay => &[PayScene::Web],
            PayMethod::Balance | PayMethod::Sandbox => &[PayScene::Qr],
        }
    }

    /// True when the buyer is sent to a page at the channel rather than shown a code:
    /// the channel's URL is then the order's pay_url.
    pub const fn is_page(self) -> bool {
        matches!(self, PayScene::Web | PayScene::Wap)
    }
}

impl FromStr for PayScene {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        PayScene::ALL.into_iter().find(|m| m.as_str() == s).ok_or(())
    }
}

/// Where an order stands; final states never change (refunds move a paid order on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Recorded by us; the channel has not confirmed the trade yet.
    Pending,
    /// Submitted to the channel; waiting for the buyer.
    Paying,
    /// Paid.
    Success,
    /// The channel refused or the payment failed.
    Failed,
    /// Closed by the merchant before payment.
    Closed,
    /// Not paid before its expire time.
    Expired,
    /// Paid, and part of it refunded.
    PartiallyRefunded,
    /// Paid, and all of it refunded.
    Refunded,
}

impl OrderStatus {
    /// Every status.
    pub const ALL: [OrderStatus; 8] = [
        OrderStatus::Pending,
        OrderStatus::Paying,
        OrderStatus::Success,
        OrderStatus::Failed,
        OrderStatus::Closed,
        OrderStatus::Expired,
        OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Paying => "PAYING",
            OrderStatus::Success => "SUCCESS",
            OrderStatus::Failed => "FAILED",
            OrderStatus::Closed => "CLOSED",
            OrderStatus::Expired => "EXPIRED",
            OrderStatus::PartiallyRefunded => "PARTIALLY_REFUNDED",
            OrderStatus::Refunded => "REFUNDED",
        }
    }

    /// Still waiting for the buyer: the only states a payment can still arrive in.
    pub const fn is_open(self) -> bool {
        matches!(self, OrderStatus::Pending | OrderStatus::Paying)
    }

    /// Money was received (and possibly refunded since).
    pub const fn is_paid(self) -> bool {
        matches!(self, OrderStatus::Success | OrderStatus::PartiallyRefunded | OrderStatus::Refunded)
    }

    /// Nothing more can happen to the order except recorded late signals.
    pub const fn is_final(self) -> bool {
        matches!(self, OrderStatus::Failed | OrderStatus::Closed | OrderStatus::Expired | OrderStatus::Refunded)
    }

    /// Position in the lifecycle; an order's rank never decreases.
    const fn rank(self) -> u8 {
        match self {
            OrderStatus::Pending => 0,
            OrderStatus::Paying => 1,
            OrderStatus::Success | OrderStatus::Failed | OrderStatus::Closed | OrderStatus::Expired => 2,
            OrderStatus::PartiallyRefunded => 3,
            OrderStatus::Refunded => 4,
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the merchant asked for. Immutable after creation; two pay requests with the
/// same `(merchant_id, order_no)` are the same request exactly when their specs are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSpec {
    /// The merchant.
    pub merchant_id: String,
    /// The merchant's order number, unique per merchant.
    pub order_no: String,
    /// How much, in the order's currency.
    pub amount: Money,
    /// Short description shown to the buyer.
    pub subject: String,
    /// Longer description.
    pub body: Option<String>,
    /// Where payment results are posted.
    pub notify_url: Option<String>,
    /// Where the buyer returns after paying.
    pub return_url: Option<String>,
    /// The requested method.
    pub pay_method: PayMethod,
    /// The method's product, one of [`PayScene::offered_by`] the method.
    pub pay_scene: PayScene,
    /// Requested lifetime; `None` means the merchant's default.
    pub expire_minutes: Option<u32>,
    /// Buyer's IP, for risk.
    pub client_ip: Option<String>,
    /// Buyer's device, for risk.
    pub device_id: Option<String>,
    /// Buyer's user id at the merchant, for risk.
    pub user_id: Option<String>,
}

impl OrderSpec {
    /// A spec with only what every order needs: the default scene, no buyer or risk
    /// details, the merchant's default lifetime. Set the rest with struct update syntax.
    pub fn new(
        merchant_id: impl Into<String>,
        order_no: impl Into<String>,
        amount: Money,
        subject: impl Into<String>,
        pay_method: PayMethod,
    ) -> OrderSpec {
        OrderSpec {
            merchant_id: merchant_id.into(),
            order_no: order_no.into(),
            amount,
            subject: subject.into(),
            body: None,
            notify_url: None,
            return_url: None,
            pay_method,
            pay_scene: PayScene::default(),
            expire_minutes: None,
            client_ip: None,
            device_id: None,
            user_id: None,
        }
    }
}

/// A payment that arrived after the order stopped taking payments. Kept on the order and
/// flagged for refund: money is never silently dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatePayment {
    /// The channel's trade number.
    pub channel_trade_no: String,
    /// What was paid, in minor units.
    pub amount_minor: i64,
    /// When we learned of it.
    pub at: UnixMillis,
}

/// The state of one payment order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Our id.
    pub pay_order_no: PayOrderNo,
    /// What the merchant asked for.
    pub spec: OrderSpec,
    /// Where the order is in its lifecycle.
    pub status: OrderStatus,
    /// The channel code that carries the order.
    pub channel: String,
    /// When.
    pub create_time: UnixMillis,
    /// The last change.
    pub update_time: UnixMillis,
    /// When an unpaid order expires.
    pub expire_time: UnixMillis,
    /// When it was paid.
    pub paid_time: Option<UnixMillis>,
    /// The channel's trade number, once known.
    pub channel_trade_no: Option<String>,
    /// What the buyer scans or opens to pay (the channel's code URL).
    pub code_url: Option<String>,
    /// Why the order failed.
    pub failure: Option<String>,
    /// Total refunded, minor units.
    pub refunded_minor: i64,
    /// Active queries made at the channel so far.
    pub query_attempts: u8,
    /// Payments that arrived after the order closed, flagged for refund.
    pub late_payments: Vec<LatePayment>,
    /// How its channel was chosen (orders created before routes were kept have none).
    pub route: Option<Route>,
    /// Channels whose trade of this order was given up on before the order's channel
    /// opened one (failover after an unknown outcome): a payment there is refunded.
    pub abandoned: Vec<String>,
    /// The channel of each late payment taken on an abandoned trade, by its trade
    /// number (the others were taken by the order's own channel).
    pub late_payment_channels: BTreeMap<String, String>,
    /// What risk control decided (orders created before it existed have nothing).
    pub risk: Option<crate::risk::Assessment>,
    /// An operator's verdict on a payment risk control sent to review: approved or not.
    pub review: Option<bool>,
    /// Refunds, in the order they were asked for (see [`crate::refund`]).
    pub refunds: Vec<Refund>,
    /// Journal sequence of the last record applied to this order.
    pub seq: u64,
}

/// A signal about the trade from the channel: a verified callback or a query answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelNotice {
    /// The buyer paid.
    Paid {
        /// The channel's trade number.
        channel_trade_no: String,
        /// The amount the channel says was paid, in minor units.
        amount_minor: i64,
    },
    /// The payment failed at the channel.
    Failed {
        /// The channel's reason.
        reason: String,
    },
    /// The channel closed the trade unpaid.
    Closed,
    /// Still waiting for the buyer.
    NotPaid,
}

/// What a command asks of an order. Channel outcomes arrive as commands too: the
/// aggregate decides what they mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// The channel accepted the trade and gave the code URL.
    Accept {
        /// What the buyer scans.
        code_url: String,
        /// The channel's trade number, if it gave one now.
        channel_trade_no: Option<String>,
    },
    /// The create call's outcome is unknown (timeout, 5xx): the trade may exist.
    MarkSubmitted,
    /// The channel definitively refused the trade.
    Reject {
        /// The channel's reason.
        reason: String,
    },
    /// A verified signal about the trade at the order's channel.
    Notice(ChannelNotice),
    /// A verified signal from `channel`, which may be one whose trade was abandoned.
    NoticeFrom {
        /// The channel that sent it.
        channel: String,
        /// What it says.
        notice: ChannelNotice,
    },
    /// The merchant closes the order (after the channel closed it).
    Close,
    /// The expiry timer fired (after the channel confirmed the trade unpaid and closed).
    Expire,
    /// An active query was made.
    RecordQueryAttempt,
    /// The merchant asks for a refund (a repeat of the same request changes nothing).
    RequestRefund {
        /// What it asks for.
        spec: RefundSpec,
        /// How long after payment a refund may be asked for, millis.
        window_ms: i64,
    },
    /// What the channel said of a refund (its answer, a query's, a notification's).
    RefundOutcome {
        /// Which refund.
        refund_order_no: String,
        /// What the channel said.
        outcome: RefundState,
        /// The amount the channel says it refunded, when it says.
        amount_minor: Option<i64>,
    },
    /// An operator resolves the payment's review (a repeat of the same verdict changes
    /// nothing; the other verdict is refused).
    ResolveReview {
        /// Approved, or rejected.
        approved: bool,
    },
    /// Refund the late payment the channel took as trade `channel_trade_no` (once).
    RefundLatePayment {
        /// The late payment's channel trade.
        channel_trade_no: String,
    },
    /// A refund's outcome was queried; after `max_queries` it goes to manual review.
    RecordRefundQuery {
        /// Which refund.
        refund_order_no: String,
        /// Queries before review.
        max_queries: u8,
    },
}

/// What a notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NotifyType {
    /// A payment's final outcome: SUCCESS, FAILED, CLOSED or EXPIRED.
    Pay,
    /// A refund's outcome: SUCCESS or FAILED.
    Refund,
}

impl NotifyType {
    /// The wire name (`notify_type`).
    pub const fn as_str(self) -> &'static str {
        match self {
            NotifyType::Pay => "PAY",
            NotifyType::Refund => "REFUND",
        }
    }
}

/// What happened to an order. Journaled, then applied; never edited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    /// The order exists.
    Created {
        /// Our id.
        pay_order_no: PayOrderNo,
        /// What the merchant asked for.
        spec: Box<OrderSpec>,
        /// The channel chosen by routing.
        channel: String,
        /// When.
        at: UnixMillis,
        /// When it expires unless paid.
        expire_time: UnixMillis,
    },
    /// PENDING → PAYING with a code URL (or a PAYING order learned its URL on retry).
    ChannelAccepted {
        /// What the buyer scans.
        code_url: String,
        /// The channel's trade number, if known.
        channel_trade_no: Option<String>,
        /// When.
        at: UnixMillis,
    },
    /// PENDING → PAYING with the channel's answer unknown.
    ChannelSubmitted {
        /// When.
        at: UnixMillis,
    },
    /// The channel refused the trade: → FAILED.
    ChannelRejected {
        /// The channel's reason.
        reason: String,
        /// When.
        at: UnixMillis,
    },
    /// → SUCCESS.
    Paid {
        /// The channel's trade number.
        channel_trade_no: String,
        /// Paid amount, minor units (always the order amount).
        amount_minor: i64,
        /// When.
        at: UnixMillis,
    },
    /// The payment failed: → FAILED.
    PaymentFailed {
        /// The channel's reason.
        reason: String,
        /// When.
        at: UnixMillis,
    },
    /// → CLOSED.
    Closed {
        /// When.
        at: UnixMillis,
    },
    /// → EXPIRED.
    Expired {
        /// When.
        at: UnixMillis,
    },
    /// An active query was made.
    QueryAttempted {
        /// When.
        at: UnixMillis,
    },
    /// A payment arrived after the order stopped taking payments; flagged for refund.
    LatePaymentRecorded {
        /// The late payment.
        payment: LatePayment,
    },
    /// An out-of-order signal, recorded and not applied.
    SignalIgnored {
        /// What the signal said.
        signal: String,
        /// When.
        at: UnixMillis,
    },
    /// Something happened to one of the order's refunds; a success moves the order to
    /// PARTIALLY_REFUNDED or REFUNDED.
    Refund {
        /// Which refund.
        refund_order_no: String,
        /// What happened.
        event: RefundEvent,
    },
    /// The outbox: the merchant is owed a notification of the state this record leaves
    /// the order in ([`crate::notification::Notification::for_order`]). Journaled in
    /// the same record as the change, so neither is durable without the other.
    NotifyDue {
        /// What the notification reports.
        notify_type: NotifyType,
        /// The refund it reports (REFUND notifications).
        refund_order_no: Option<String>,
        /// When.
        at: UnixMillis,
    },
    /// How the order's channel was chosen (in the record that creates the order).
    /// Late among the events: journals written before it existed stay readable.
    Routed {
        /// The strategy, the candidates in order and those passed over.
        route: Route,
        /// When.
        at: UnixMillis,
    },
    /// A trade opened for this order at `channel` was given up on before the order's
    /// own channel was tried: the call's outcome was unknown, then the channel said the
    /// trade was unpaid and closed it. In the record that creates the order.
    TradeAbandoned {
        /// The channel.
        channel: String,
        /// When.
        at: UnixMillis,
    },
    /// A payment was taken on an abandoned trade after all: flagged and refunded at
    /// that channel, like a late payment, whatever the order's status.
    AbandonedTradePaid {
        /// The abandoned trade's channel.
        channel: String,
        /// The payment.
        payment: LatePayment,
    },
    /// What risk control decided of the payment, in the record that creates the order.
    RiskAssessed {
        /// The decision, the rules that made it and their version.
        assessment: crate::risk::Assessment,
        /// When.
        at: UnixMillis,
    },
    /// Risk control refused the payment: → FAILED, before any channel was asked.
    RiskRejected {
        /// When.
        at: UnixMillis,
    },
    /// An operator resolved the review risk control sent the payment to.
    ReviewResolved {
        /// Approved (it stands), or rejected (it is closed or refunded).
        approved: bool,
        /// When.
        at: UnixMillis,
    },
}

/// An event that cannot follow the state it is applied to: a bug or a damaged journal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("order {pay_order_no}: event {event} cannot follow status {status}")]
pub struct InvariantViolation {
    /// The order.
    pub pay_order_no: String,
    /// The current status.
    pub status: OrderStatus,
    /// The offending event's name.
    pub event: &'static str,
}

/// When an order still waiting for its buyer is queried at the channel (补单).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryPolicy {
    /// First query after creation, millis.
    pub first_after_ms: i64,
    /// Between queries, millis.
    pub interval_ms: i64,
    /// How many queries at most.
    pub max_attempts: u8,
    /// The refund window, and when refunds of unknown outcome are queried.
    pub refunds: RefundPolicy,
}

impl Default for QueryPolicy {
    /// At 60 s, then every 5 minutes, up to 5 times.
    fn default() -> Self {
        QueryPolicy { first_after_ms: 60_000, interval_ms: 300_000, max_attempts: 5, refunds: RefundPolicy::default() }
    }
}

/// What a due timer asks of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerAction {
    /// Query the channel, then expire if unpaid.
    Expire,
    /// Query the channel (active query).
    Query,
    /// Ask the channel where a refund of unknown outcome stands.
    RefundQuery(String),
}

impl OrderEvent {
    fn name(&self) -> &'static str {
        match self {
            OrderEvent::Created { .. } => "Created",
            OrderEvent::ChannelAccepted { .. } => "ChannelAccepted",
            OrderEvent::ChannelSubmitted { .. } => "ChannelSubmitted",
            OrderEvent::ChannelRejected { .. } => "ChannelRejected",
            OrderEvent::Paid { .. } => "Paid",
            OrderEvent::PaymentFailed { .. } => "PaymentFailed",
            OrderEvent::Closed { .. } => "Closed",
            OrderEvent::Expired { .. } => "Expired",
            OrderEvent::QueryAttempted { .. } => "QueryAttempted",
            OrderEvent::LatePaymentRecorded { .. } => "LatePaymentRecorded",
            OrderEvent::SignalIgnored { .. } => "SignalIgnored",
            OrderEvent::Refund { event, .. } => event.name(),
            OrderEvent::NotifyDue { .. } => "NotifyDue",
            OrderEvent::Routed { .. } => "Routed",
            OrderEvent::TradeAbandoned { .. } => "TradeAbandoned",
            OrderEvent::AbandonedTradePaid { .. } => "AbandonedTradePaid",
            OrderEvent::RiskAssessed { .. } => "RiskAssessed",
            OrderEvent::RiskRejected { .. } => "RiskRejected",
            OrderEvent::ReviewResolved { .. } => "ReviewResolved",
        }
    }

    /// The `Created` event of a new order that expires `expire_after_ms` from `now`.
    pub fn created(
        pay_order_no: PayOrderNo,
        spec: OrderSpec,
        channel: String,
        now: i64,
        expire_after_ms: i64,
    ) -> OrderEvent {
        let expire_time = now.saturating_add(expire_after_ms);
        OrderEvent::Created { pay_order_no, spec: Box::new(spec), channel, at: now, expire_time }
    }
}

impl Order {
    /// The order a `Created` event brings into being.
    pub fn from_created(event: &OrderEvent) -> Option<Order> {
        let OrderEvent::Created { pay_order_no, spec, channel, at, expire_time } = event else {
            return None;
        };
        Some(Order {
            pay_order_no: pay_order_no.clone(),
            spec: spec.as_ref().clone(),
            status: OrderStatus::Pending,
            channel: channel.clone(),
            create_time: *at,
            update_time: *at,
            expire_time: *expire_time,
            paid_time: None,
            channel_trade_no: None,
            code_url: None,
            failure: None,
            refunded_minor: 0,
            query_attempts: 0,
            late_payments: Vec::new(),
            route: None,
            abandoned: Vec::new(),
            late_payment_channels: BTreeMap::new(),
            risk: None,
            review: None,
            refunds: Vec::new(),
            seq: 0,
        })
    }

    /// Evolves `state` (none before creation) by one event.
    pub fn evolve(state: Option<Order>, event: &OrderEvent) -> Result<Order, InvariantViolation> {
        match state {
            None => Order::from_created(event).ok_or(InvariantViolation {
                pay_order_no: String::new(),
                status: OrderStatus::Pending,
                event: event.name(),
            }),
            Some(mut order) => {
                order.apply(event)?;
                Ok(order)
            }
        }
    }

    /// The outbox events owed for `events`, which took this order from `before` to its
    /// state: decided with the change, so the record that makes an order final (or a
    /// refund settled) also makes its notification due. Each kind is one arm here.
    pub fn notifications_due(&self, before: Option<OrderStatus>, events: &[OrderEvent], now: i64) -> Vec<OrderEvent> {
        use OrderStatus::*;
        let due = |notify_type, refund_order_no| OrderEvent::NotifyDue { notify_type, refund_order_no, at: now };
        let mut out = Vec::new();
        if let (Pending | Paying, Success | Failed | Closed | Expired) = (before.unwrap_or(Pending), self.status) {
            out.push(due(NotifyType::Pay, None));
        }
        for event in events {
            if let OrderEvent::Refund {
                refund_order_no,
                event: RefundEvent::Succeeded { .. } | RefundEvent::Failed { .. },
            } = event
            {
                out.push(due(NotifyType::Refund, Some(refund_order_no.clone())));
            }
        }
        out
    }

    /// Decides the events `cmd` causes at `now` (unix millis). No events means the
    /// command was already satisfied (idempotent repeat).
    pub fn handle(&self, cmd: OrderCommand, now: i64) -> Result<Vec<OrderEvent>, CoreError> {
        use OrderStatus::*;
        let status = self.status;
        let events = match cmd {
            OrderCommand::Accept { code_url, channel_trade_no } => match status {
                Pending => vec![OrderEvent::ChannelAccepted { code_url, channel_trade_no, at: now }],
                Paying if self.code_url.is_none() => {
                    vec![OrderEvent::ChannelAccepted { code_url, channel_trade_no, at: now }]
                }
                _ => vec![],
            },
            OrderCommand::MarkSubmitted => match status {
                Pending => vec![OrderEvent::ChannelSubmitted { at: now }],
                _ => vec![],
            },
            OrderCommand::Reject { reason } => match status {
                Pending => vec![OrderEvent::ChannelRejected { reason, at: now }],
                Paying if self.code_url.is_none() => {
                    vec![OrderEvent::ChannelRejected { reason, at: now }]
                }
                _ => vec![],
            },
            OrderCommand::Notice(notice) => self.decide_notice(notice, now)?,
            OrderCommand::NoticeFrom { channel, notice } if channel == self.channel => {
                self.decide_notice(notice, now)?
            }
            OrderCommand::NoticeFrom { channel, notice } if self.abandoned.contains(&channel) => {
                self.decide_abandoned_notice(channel, notice, now)?
            }
            OrderCommand::NoticeFrom { channel, .. } => {
                return Err(CoreError::new(
                    ErrorCode::ChannelError,
                    format!("channel {channel} holds no trade of order {}", self.pay_order_no),
                ))
            }
            OrderCommand::Close => match status {
                Pending | Paying => vec![OrderEvent::Closed { at: now }],
                Closed => vec![],
                _ => {
                    return Err(CoreError::new(
                        ErrorCode::OrderStatusError,
                        format!("order is {status} and can no longer be closed"),
                    ))
                }
            },
            OrderCommand::Expire => match status {
                Pending | Paying if now >= self.expire_time => {
                    vec![OrderEvent::Expired { at: now }]
                }
                _ => vec![],
            },
            OrderCommand::RecordQueryAttempt => match status {
                Pending | Paying => vec![OrderEvent::QueryAttempted { at: now }],
                _ => vec![],
            },
            OrderCommand::RequestRefund { spec, window_ms } => self.decide_refund(spec, window_ms, now)?,
            OrderCommand::ResolveReview { approved } => match self.review {
                Some(verdict) if verdict == approved => vec![],
                Some(verdict) => {
                    return Err(CoreError::new(
                        ErrorCode::OrderStatusError,
                        format!("the review was {} already", if verdict { "approved" } else { "rejected" }),
                    ))
                }
                None if self.sent_to_review() => vec![OrderEvent::ReviewResolved { approved, at: now }],
                None => {
                    return Err(CoreError::new(
                        ErrorCode::OrderStatusError,
                        "risk control did not send this payment to review",
                    ))
                }
            },
            OrderCommand::RefundOutcome { refund_order_no, outcome, amount_minor } => {
                let Some(refund) = self.refunds.iter().find(|r| r.refund_order_no == refund_order_no) else {
                    return Err(CoreError::new(ErrorCode::OrderNotFound, format!("no refund {refund_order_no}")));
                };
                if let Some(claimed) = amount_minor.filter(|a| *a != refund.spec.amount_minor) {
                    return Err(CoreError::new(
                        ErrorCode::ChannelError,
                        format!(
                            "channel reports {claimed} minor units refunded for refund {refund_order_no} of {}",
                            refund.spec.amount_minor
                        ),
                    ));
                }
                let event = match outcome {
                    _ if !refund.status.is_open() => None,
                    RefundState::Success => Some(RefundEvent::Succeeded { at: now }),
                    RefundState::Failed(reason) => Some(RefundEvent::Failed { reason, at: now }),
                    RefundState::Abnormal(reason) if refund.status == crate::refund::RefundStatus::Refunding => {
                        Some(RefundEvent::SentToReview { reason, at: now })
                    }
                    RefundState::Abnormal(_) | RefundState::Processing | RefundState::NotFound => None,
                };
                event.map(|event| OrderEvent::Refund { refund_order_no, event }).into_iter().collect()
            }
            OrderCommand::RefundLatePayment { channel_trade_no } => self.decide_late_refund(channel_trade_no, now),
            OrderCommand::RecordRefundQuery { refund_order_no, max_queries } => {
                match self.refunds.iter().find(|r| r.refund_order_no == refund_order_no) {
                    Some(r) if r.status == crate::refund::RefundStatus::Refunding => {
                        let mut events = vec![OrderEvent::Refund {
                            refund_order_no: refund_order_no.clone(),
                            event: RefundEvent::QueryAttempted { at: now },
                        }];
                        if r.query_attempts.saturating_add(1) >= max_queries {
                            let reason = format!("no outcome from the channel after {max_queries} queries");
                            let event = RefundEvent::SentToReview { reason, at: now };
                            events.push(OrderEvent::Refund { refund_order_no, event });
                        }
                        events
                    }
                    _ => vec![],
                }
            }
        };
        Ok(events)
    }

    /// What paid refunds and refunds in flight hold of the amount paid, minor units
    /// (refunds of late payments return those payments, not the order's).
    pub fn refund_held_minor(&self) -> i64 {
        self.refunds
            .iter()
            .filter(|r| r.late_payment.is_none() && r.status.holds_amount())
            .map(|r| r.spec.amount_minor)
            .sum()
    }

    /// Whether a refund `refund_order_no` asking `spec` would be this order's next one:
    /// the next number, and a `refund_no` not used yet.
    fn is_next_refund(&self, refund_order_no: &str, spec: &RefundSpec) -> bool {
        self.refund(&spec.refund_no).is_none()
            && refund_order_no == Refund::number(&self.pay_order_no, self.refunds.len())
    }

    /// Whether risk control sent the payment to review and let it go ahead.
    pub fn sent_to_review(&self) -> bool {
        self.risk.as_ref().is_some_and(|r| r.decision == crate::risk::Decision::Review) && !self.refused_by_risk()
    }

    /// Whether risk control refused the payment (no channel ever saw it).
    pub fn refused_by_risk(&self) -> bool {
        self.status == OrderStatus::Failed
            && self.channel.is_empty()
            && self.risk.as_ref().is_some_and(|r| r.decision != crate::risk::Decision::Allow)
    }

    /// The channel that took late payment `channel_trade_no`: the order's own, or the
    /// one whose abandoned trade it was paid on.
    pub fn late_payment_channel(&self, channel_trade_no: &str) -> &str {
        self.late_payment_channels.get(channel_trade_no).unwrap_or(&self.channel)
    }

    /// Whether the late payment the channel took as `channel_trade_no` has its refund.
    fn refunds_late_payment(&self, channel_trade_no: &str) -> bool {
        self.refunds.iter().any(|r| r.late_payment.as_deref() == Some(channel_trade_no))
    }

    /// The refund of late payment `channel_trade_no`, unless it has one or the order is
    /// out of refund numbers (then an operator returns it: it stays flagged).
    fn decide_late_refund(&self, channel_trade_no: String, now: i64) -> Vec<OrderEvent> {
        let Some(late) = self.late_payments.iter().find(|p| p.channel_trade_no == channel_trade_no) else {
            return vec![];
        };
        if self.refunds_late_payment(&channel_trade_no) || self.refunds.len() >= MAX_REFUNDS {
            return vec![];
        }
        let refund_order_no = Refund::number(&self.pay_order_no, self.refunds.len());
        let reason = match self.late_payment_channels.get(&channel_trade_no) {
            Some(channel) => format!("paid on the trade at {channel} given up on: returned automatically"),
            None => format!("paid after the order was {}: returned automatically", self.status),
        };
        let spec = RefundSpec {
            refund_no: format!("AUTO-{refund_order_no}"),
            amount_minor: late.amount_minor,
            reason: Some(reason),
            notify_url: None,
        };
        vec![OrderEvent::Refund {
            refund_order_no,
            event: RefundEvent::LateRequested { spec, channel_trade_no, at: now },
        }]
    }

    /// The refund the merchant's `refund_no` names.
    pub fn refund(&self, refund_no: &str) -> Option<&Refund> {
        self.refunds.iter().find(|r| r.spec.refund_no == refund_no)
    }

    fn decide_refund(&self, spec: RefundSpec, window_ms: i64, now: i64) -> Result<Vec<OrderEvent>, CoreError> {
        use OrderStatus::*;
        if let Some(existing) = self.refund(&spec.refund_no) {
            if existing.spec == spec {
                return Ok(vec![]);
            }
            return Err(CoreError::new(
                ErrorCode::IdempotencyConflict,
                format!("refund_no {} was used before with other parameters", spec.refund_no),
            ));
        }
        match self.status {
            Success | PartiallyRefunded => {}
            Refunded => {
                return Err(CoreError::new(ErrorCode::RefundExceedsPaid, "the order is refunded in full already"));
            }
            status => {
                return Err(CoreError::new(
                    ErrorCode::OrderStatusError,
                    format!("order is {status}; only a paid order can be refunded"),
                ));
            }
        }
        if spec.amount_minor <= 0 {
            return Err(CoreError::invalid("refund_amount", "must be greater than zero"));
        }
        if self.paid_time.is_some_and(|paid| now > paid.saturating_add(window_ms)) {
            return Err(CoreError::new(
                ErrorCode::OrderStatusError,
                format!("the refund window ({} days after payment) has passed", window_ms / 86_400_000),
            ));
        }
        if self.refunds.len() >= MAX_REFUNDS {
            return Err(CoreError::new(
                ErrorCode::OrderStatusError,
                format!("an order takes at most {MAX_REFUNDS} refunds"),
            ));
        }
        let paid = self.spec.amount.minor();
        let held = self.refund_held_minor();
        if held.checked_add(spec.amount_minor).is_none_or(|total| total > paid) {
            let currency = self.spec.amount.currency();
            return Err(CoreError::new(
                ErrorCode::RefundExceedsPaid,
                format!(
                    "refunds would exceed the amount paid: {} paid, {} refunded or being refunded",
                    Money::from_minor(paid, currency),
                    Money::from_minor(held, currency)
                ),
            ));
        }
        let refund_order_no = Refund::number(&self.pay_order_no, self.refunds.len());
        Ok(vec![OrderEvent::Refund { refund_order_no, event: RefundEvent::Requested { spec, at: now } }])
    }

    /// Refuses a payment of another amount than the order's.
    fn check_paid_amount(&self, amount_minor: i64) -> Result<(), CoreError> {
        if amount_minor == self.spec.amount.minor() {
            return Ok(());
        }
        Err(CoreError::new(
            ErrorCode::ChannelError,
            format!("channel reports {amount_minor} minor units paid for an order of {}", self.spec.amount.minor()),
        ))
    }

    /// What `channel`, whose trade was abandoned, says: only a payment matters (the
    /// trade was closed, so it should never come), and it is never the order's.
    fn decide_abandoned_notice(
        &self,
        channel: String,
        notice: ChannelNotice,
        now: i64,
    ) -> Result<Vec<OrderEvent>, CoreError> {
        let ChannelNotice::Paid { channel_trade_no, amount_minor } = notice else {
            return Ok(vec![]);
        };
        self.check_paid_amount(amount_minor)?;
        if self.late_payments.iter().any(|p| p.channel_trade_no == channel_trade_no) {
            return Ok(vec![]);
        }
        Ok(vec![OrderEvent::AbandonedTradePaid {
            channel,
            payment: LatePayment { channel_trade_no, amount_minor, at: now },
        }])
    }

    fn decide_notice(&self, notice: ChannelNotice, now: i64) -> Result<Vec<OrderEvent>, CoreError> {
        use OrderStatus::*;
        let status = self.status;
        Ok(match notice {
            ChannelNotice::Paid { channel_trade_no, amount_minor } => {
                self.check_paid_amount(amount_minor)?;
                // Already counted: the payment that settled the order, or a late one on file.
                let known = (status.is_paid() && self.channel_trade_no.as_deref() == Some(channel_trade_no.as_str()))
                    || self.late_payments.iter().any(|p| p.channel_trade_no == channel_trade_no);
                match status {
                    Pending | Paying => vec![OrderEvent::Paid { channel_trade_no, amount_minor, at: now }],
                    _ if known => vec![],
                    _ => vec![OrderEvent::LatePaymentRecorded {
                        payment: LatePayment { channel_trade_no, amount_minor, at: now },
                    }],
                }
            }
            ChannelNotice::Failed { reason } => match status {
                Pending | Paying => vec![OrderEvent::PaymentFailed { reason, at: now }],
                Failed => vec![],
                _ => vec![OrderEvent::SignalIgnored { signal: format!("FAILED: {reason}"), at: now }],
            },
            ChannelNotice::Closed => match status {
                Pending | Paying => vec![OrderEvent::Closed { at: now }],
                Closed | Expired => vec![],
                _ => vec![OrderEvent::SignalIgnored { signal: "CLOSED".into(), at: now }],
            },
            ChannelNotice::NotPaid => vec![],
        })
    }

    /// Applies one event. Refuses events that cannot follow the current state, so a
    /// damaged journal or a bug is found rather than folded into the state.
    pub fn apply(&mut self, event: &OrderEvent) -> Result<(), InvariantViolation> {
        use OrderStatus::*;
        let status = self.status;
        let violation =
            || InvariantViolation { pay_order_no: self.pay_order_no.to_string(), status, event: event.name() };
        let at = match event {
            OrderEvent::Created { .. } => return Err(violation()),
            OrderEvent::ChannelAccepted { code_url, channel_trade_no, at } => {
                if !(status == Pending || (status == Paying && self.code_url.is_none())) {
                    return Err(violation());
                }
                self.status = Paying;
                self.code_url = Some(code_url.clone());
                if channel_trade_no.is_some() {
                    self.channel_trade_no.clone_from(channel_trade_no);
                }
                *at
            }
            OrderEvent::ChannelSubmitted { at } => {
                if status != Pending {
                    return Err(violation());
                }
                self.status = Paying;
                *at
            }
            OrderEvent::ChannelRejected { reason, at } | OrderEvent::PaymentFailed { reason, at } => {
                if !status.is_open() {
                    return Err(violation());
                }
                self.status = Failed;
                self.failure = Some(reason.clone());
                *at
            }
            OrderEvent::Paid { channel_trade_no, amount_minor, at } => {
                if !status.is_open() || *amount_minor != self.spec.amount.minor() {
                    return Err(violation());
                }
                self.status = Success;
                self.channel_trade_no = Some(channel_trade_no.clone());
                self.paid_time = Some(*at);
                *at
            }
            OrderEvent::Closed { at } => {
                if !status.is_open() {
                    return Err(violation());
                }
                self.status = Closed;
                *at
            }
            OrderEvent::Expired { at } => {
                if !status.is_open() {
                    return Err(violation());
                }
                self.status = Expired;
                *at
            }
            OrderEvent::QueryAttempted { at } => {
                if !status.is_open() {
                    return Err(violation());
                }
                self.query_attempts = self.query_attempts.saturating_add(1);
                *at
            }
            OrderEvent::LatePaymentRecorded { payment } => {
                if status.is_open() {
                    return Err(violation());
                }
                self.late_payments.push(payment.clone());
                payment.at
            }
            OrderEvent::SignalIgnored { at, .. } => *at,
            // The notification is the outbox's business; the order itself is unchanged.
            OrderEvent::NotifyDue { .. } => return Ok(()),
            // Only where the order is created, once.
            OrderEvent::Routed { route, at } => {
                if status != Pending || self.route.is_some() {
                    return Err(violation());
                }
                self.route = Some(route.clone());
                *at
            }
            OrderEvent::RiskAssessed { assessment, at } => {
                if status != Pending || self.risk.is_some() {
                    return Err(violation());
                }
                self.risk = Some(assessment.clone());
                *at
            }
            OrderEvent::RiskRejected { at } => {
                let refused = self.risk.as_ref().is_some_and(|r| r.decision != crate::risk::Decision::Allow);
                if status != Pending || !refused {
                    return Err(violation());
                }
                self.status = Failed;
                let reason = self.risk.as_ref().map_or("", |r| r.reason.as_str());
                self.failure = Some(format!("refused by risk control ({reason})"));
                *at
            }
            OrderEvent::TradeAbandoned { channel, at } => {
                if status != Pending || *channel == self.channel || self.abandoned.contains(channel) {
                    return Err(violation());
                }
                self.abandoned.push(channel.clone());
                *at
            }
            OrderEvent::ReviewResolved { approved, at } => {
                if self.review.is_some() || !self.sent_to_review() {
                    return Err(violation());
                }
                self.review = Some(*approved);
                *at
            }
            OrderEvent::AbandonedTradePaid { channel, payment } => {
                let known = self.late_payments.iter().any(|p| p.channel_trade_no == payment.channel_trade_no);
                if !self.abandoned.contains(channel) || known {
                    return Err(violation());
                }
                self.late_payments.push(payment.clone());
                self.late_payment_channels.insert(payment.channel_trade_no.clone(), channel.clone());
                payment.at
            }
            OrderEvent::Refund { refund_order_no, event } => match self.apply_refund(refund_order_no, event) {
                Some(at) => at,
                None => {
                    return Err(InvariantViolation {
                        pay_order_no: self.pay_order_no.to_string(),
                        status,
                        event: event.name(),
                    })
                }
            },
        };
        self.update_time = self.update_time.max(at);
        debug_assert!(self.status.rank() >= status.rank(), "status went backwards");
        Ok(())
    }

    /// Applies a refund's event: `None` when it cannot follow the state. The order's
    /// refunded amount and status follow its successful refunds, and what its refunds
    /// hold never exceeds what was paid.
    fn apply_refund(&mut self, refund_order_no: &str, event: &RefundEvent) -> Option<i64> {
        use OrderStatus::*;
        let paid = self.spec.amount.minor();
        let at = match event {
            RefundEvent::Requested { spec, at } => {
                let fits = self.refund_held_minor().checked_add(spec.amount_minor).is_some_and(|t| t <= paid);
                let fresh = self.is_next_refund(refund_order_no, spec);
                if !matches!(self.status, Success | PartiallyRefunded) || spec.amount_minor <= 0 || !fits || !fresh {
                    return None;
                }
                self.refunds.push(Refund::requested(refund_order_no.to_owned(), spec.clone(), *at));
                *at
            }
            RefundEvent::LateRequested { spec, channel_trade_no, at } => {
                let late = self.late_payments.iter().find(|p| p.channel_trade_no == *channel_trade_no)?;
                let once = !self.refunds_late_payment(channel_trade_no);
                if late.amount_minor != spec.amount_minor || !once || !self.is_next_refund(refund_order_no, spec) {
                    return None;
                }
                let mut refund = Refund::requested(refund_order_no.to_owned(), spec.clone(), *at);
                refund.late_payment = Some(channel_trade_no.clone());
                self.refunds.push(refund);
                *at
            }
            _ => {
                let refund = self.refunds.iter_mut().find(|r| r.refund_order_no == refund_order_no)?;
                if !refund.apply(event) {
                    return None;
                }
                if let (RefundEvent::Succeeded { .. }, None) = (event, &refund.late_payment) {
                    self.refunded_minor = self.refunded_minor.checked_add(refund.spec.amount_minor)?;
                    self.status = if self.refunded_minor >= paid { Refunded } else { PartiallyRefunded };
                }
                refund.update_time
            }
        };
        debug_assert!(self.refund_held_minor() <= paid, "refunds hold more than was paid");
        Some(at)
    }

    /// When the order next needs attention (expiry, an active query, a refund's
    /// query), unix millis.
    pub fn next_timer(&self, policy: &QueryPolicy) -> Option<i64> {
        let order = self
            .status
            .is_open()
            .then(|| self.next_query_time(policy).map_or(self.expire_time, |q| q.min(self.expire_time)));
        let refunds = self.refunds.iter().filter_map(|r| r.next_query(&policy.refunds));
        order.into_iter().chain(refunds).min()
    }

    fn next_query_time(&self, policy: &QueryPolicy) -> Option<i64> {
        (self.query_attempts < policy.max_attempts).then(|| {
            self.create_time
                .saturating_add(policy.first_after_ms)
                .saturating_add(i64::from(self.query_attempts).saturating_mul(policy.interval_ms))
        })
    }

    /// What a timer firing at `now` should do, if anything.
    pub fn due_action(&self, now: i64, policy: &QueryPolicy) -> Option<TimerAction> {
        if self.status.is_open() {
            if now >= self.expire_time {
                return Some(TimerAction::Expire);
            }
            if self.next_query_time(policy).is_some_and(|q| now >= q) {
                return Some(TimerAction::Query);
            }
        }
        self.refunds
            .iter()
            .find(|r| r.next_query(&policy.refunds).is_some_and(|q| now >= q))
            .map(|r| TimerAction::RefundQuery(r.refund_order_no.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;
    use proptest::prelude::*;

    fn spec(amount: i64) -> OrderSpec {
        OrderSpec {
            expire_minutes: Some(30),
            ..OrderSpec::new("M1", "O1", Money::from_minor(amount, Currency::CNY), "tea", PayMethod::Sandbox)
        }
    }

    fn new_order(amount: i64) -> Order {
        let id = PayOrderNo::parse("P170406720000000010000").unwrap();
        Order::from_created(&OrderEvent::created(id, spec(amount), "sandbox".into(), 1_000, 30 * 60_000)).unwrap()
    }

    fn run(order: &mut Order, cmd: OrderCommand, now: i64) -> Result<usize, CoreError> {
        let events = order.handle(cmd, now)?;
        for e in &events {
            order.apply(e).unwrap();
        }
        Ok(events.len())
    }

    fn refund_spec(no: &str, amount: i64) -> RefundSpec {
        RefundSpec { refund_no: no.into(), amount_minor: amount, reason: None, notify_url: None }
    }

    fn ask_refund(no: &str, amount: i64) -> OrderCommand {
        OrderCommand::RequestRefund { spec: refund_spec(no, amount), window_ms: 365 * 86_400_000 }
    }

    /// The channel's answer about the order's `index`-th refund.
    fn outcome(index: usize, outcome: RefundState) -> OrderCommand {
        let id = PayOrderNo::parse("P170406720000000010000").unwrap();
        OrderCommand::RefundOutcome { refund_order_no: Refund::number(&id, index), outcome, amount_minor: None }
    }

    fn paid(trade: &str, amount: i64) -> OrderCommand {
        OrderCommand::Notice(ChannelNotice::Paid { channel_trade_no: trade.into(), amount_minor: amount })
    }

    #[test]
    fn only_a_payment_sent_to_review_takes_one_verdict() {
        let assessed = |decision| OrderEvent::RiskAssessed {
            assessment: crate::risk::Assessment {
                decision,
                rules: vec!["anomaly.user_amount".into()],
                reason: "UNUSUAL_PAYMENT".into(),
                score_ppm: 0,
                version: 0,
            },
            at: 1_000,
        };
        let resolve = |approved| OrderCommand::ResolveReview { approved };
        let mut o = new_order(100);
        o.apply(&assessed(crate::risk::Decision::Review)).unwrap();
        assert!(o.sent_to_review());
        assert_eq!(run(&mut o, resolve(false), 2_000).unwrap(), 1);
        assert_eq!(o.review, Some(false));
        assert_eq!(run(&mut o, resolve(false), 3_000).unwrap(), 0, "a repeat changes nothing");
        assert_eq!(run(&mut o, resolve(true), 3_000).unwrap_err().code, ErrorCode::OrderStatusError);
        let again = OrderEvent::ReviewResolved { approved: true, at: 4_000 };
        assert!(o.apply(&again).is_err(), "a second verdict cannot be applied");

        let mut allowed = new_order(100);
        allowed.apply(&assessed(crate::risk::Decision::Allow)).unwrap();
        assert_eq!(run(&mut allowed, resolve(true), 2_000).unwrap_err().code, ErrorCode::OrderStatusError);
        assert!(allowed.apply(&OrderEvent::ReviewResolved { approved: true, at: 2_000 }).is_err());
        // A review that refused the payment (review = "deny") has nothing to resolve.
        let mut refused = new_order(100);
        refused.channel.clear();
        refused.apply(&assessed(crate::risk::Decision::Review)).unwrap();
        refused.apply(&OrderEvent::RiskRejected { at: 1_000 }).unwrap();
        assert_eq!(run(&mut refused, resolve(true), 2_000).unwrap_err().code, ErrorCode::OrderStatusError);
    }

    #[test]
    fn a_payment_on_an_abandoned_trade_is_refunded_at_its_channel_whatever_the_order_does() {
        let mut o = new_order(100);
        let abandon = |channel: &str| OrderEvent::TradeAbandoned { channel: channel.into(), at: 1 };
        assert!(o.clone().apply(&abandon("sandbox")).is_err(), "the order's own channel is never abandoned");
        o.apply(&abandon("other")).unwrap();
        assert!(o.clone().apply(&abandon("other")).is_err(), "once");
        let from = |channel: &str, trade: &str| OrderCommand::NoticeFrom {
            channel: channel.into(),
            notice: ChannelNotice::Paid { channel_trade_no: trade.into(), amount_minor: 100 },
        };
        // Still waiting for its own payment: the abandoned trade's is not it.
        run(&mut o, from("other", "T-OTHER"), 2).unwrap();
        assert_eq!((o.status, o.late_payment_channel("T-OTHER")), (OrderStatus::Pending, "other"));
        assert_eq!(run(&mut o, from("other", "T-OTHER"), 3), Ok(0), "told twice, recorded once");
        run(&mut o, OrderCommand::RefundLatePayment { channel_trade_no: "T-OTHER".into() }, 4).unwrap();
        let reason = o.refunds[0].spec.reason.clone().unwrap_or_default();
        assert!(reason.contains("given up on"), "{reason}");
        run(&mut o, from("sandbox", "T-OWN"), 5).unwrap();
        assert_eq!((o.status, o.late_payment_channel("T-OWN")), (OrderStatus::Success, "sandbox"));
        assert_eq!(run(&mut o, from("third", "T-3"), 6).unwrap_err().code, ErrorCode::ChannelError);
        let foreign = OrderEvent::AbandonedTradePaid {
            channel: "third".into(),
            payment: LatePayment { channel_trade_no: "T-3".into(), amount_minor: 100, at: 7 },
        };
        assert!(o.apply(&foreign).is_err(), "only a channel the order abandoned");
        let late_abandon = OrderEvent::TradeAbandoned { channel: "fourth".into(), at: 8 };
        assert!(o.apply(&late_abandon).is_err(), "only where the order is created");
    }

    #[test]
    fn a_late_payment_is_refunded_once_and_leaves_the_order_as_it_was() {
        let mut o = new_order(100);
        run(&mut o, OrderCommand::Close, 2).unwrap();
        run(&mut o, paid("LATE-T", 100), 3).unwrap();
        assert_eq!((o.status, o.late_payments.len()), (OrderStatus::Closed, 1));
        let late = || OrderCommand::RefundLatePayment { channel_trade_no: "LATE-T".into() };
        assert_eq!(run(&mut o, late(), 4), Ok(1));
        assert_eq!(run(&mut o, late(), 5), Ok(0), "one refund per late payment");
        let r = &o.refunds[0];
        assert_eq!((r.late_payment.as_deref(), r.spec.amount_minor), (Some("LATE-T"), 100));
        assert_eq!(r.spec.refund_no, format!("AUTO-{}", r.refund_order_no));
        assert_eq!(o.refund_held_minor(), 0, "it returns the late payment, not the order's");
        run(&mut o, outcome(0, RefundState::Success), 6).unwrap();
        assert_eq!((o.status, o.refunded_minor), (OrderStatus::Closed, 0));
        let due =
            o.notifications_due(Some(OrderStatus::Closed), &o.handle(outcome(0, RefundState::Success), 7).unwrap(), 7);
        assert!(due.is_empty(), "settled already");
        // A merchant cannot refund a closed order by hand.
        assert_eq!(run(&mut o, ask_refund("r1", 1), 8).unwrap_err().code, ErrorCode::OrderStatusError);
        assert_eq!(
            run(&mut o, OrderCommand::RefundLatePayment { channel_trade_no: "NONE".into() }, 9),
            Ok(0),
            "no such late payment"
        );
    }

    #[test]
    fn an_abnormal_refund_goes_to_review_and_a_notification_must_agree_on_the_amount() {
        let mut o = new_order(100);
        run(&mut o, paid("T1", 100), 2).unwrap();
        run(&mut o, ask_refund("r1", 40), 3).unwrap();
        let no = o.refunds[0].refund_order_no.clone();
        let said = |outcome, amount| OrderCommand::RefundOutcome {
            refund_order_no: no.clone(),
            outcome,
            amount_minor: amount,
        };
        let e = run(&mut o, said(RefundState::Success, Some(41)), 4).unwrap_err();
        assert_eq!(e.code, ErrorCode::ChannelError);
        assert_eq!(o.refunds[0].status, crate::refund::RefundStatus::Refunding, "untouched");
        run(&mut o, said(RefundState::Abnormal("card closed".into()), Some(40)), 5).unwrap();
        assert_eq!(o.refunds[0].status, crate::refund::RefundStatus::ManualReview);
        assert_eq!(o.refund_held_minor(), 40, "held while an operator looks");
        assert_eq!(run(&mut o, said(RefundState::NotFound, None), 6), Ok(0));
        run(&mut o, said(RefundState::Success, Some(40)), 7).unwrap();
        assert_eq!((o.status, o.refunded_minor), (OrderStatus::PartiallyRefunded, 40));
    }

    #[test]
    fn happy_path_to_refunded() {
        let mut o = new_order(10_000);
        run(&mut o, OrderCommand::Accept { code_url: "sandbox://x".into(), channel_trade_no: None }, 2).unwrap();
        assert_eq!(o.status, OrderStatus::Paying);
        run(&mut o, paid("T1", 10_000), 3).unwrap();
        assert_eq!((o.status, o.paid_time), (OrderStatus::Success, Some(3)));
        assert_eq!(run(&mut o, paid("T1", 10_000), 4), Ok(0), "duplicate callback is a no-op");
        run(&mut o, ask_refund("r1", 4_000), 5).unwrap();
        assert_eq!(o.status, OrderStatus::Success, "a refund in flight is not a refund yet");
        let over = run(&mut o, ask_refund("r2", 6_001), 6);
        assert_eq!(over.map_err(|e| e.code), Err(ErrorCode::RefundExceedsPaid), "the one in flight holds its amount");
        run(&mut o, outcome(0, RefundState::Success), 6).unwrap();
        assert_eq!((o.status, o.refunded_minor), (OrderStatus::PartiallyRefunded, 4_000));
        assert_eq!(run(&mut o, ask_refund("r1", 4_000), 7), Ok(0), "the same request again is the same refund");
        let conflict = run(&mut o, ask_refund("r1", 3_000), 7);
        assert_eq!(conflict.map_err(|e| e.code), Err(ErrorCode::IdempotencyConflict));
        run(&mut o, ask_refund("r2", 6_000), 7).unwrap();
        run(&mut o, outcome(1, RefundState::Failed("refused".into())), 8).unwrap();
        assert_eq!(o.status, OrderStatus::PartiallyRefunded, "a failed refund releases its amount");
        run(&mut o, ask_refund("r3", 6_000), 9).unwrap();
        run(&mut o, outcome(2, RefundState::Success), 10).unwrap();
        assert_eq!((o.status, o.refunded_minor), (OrderStatus::Refunded, 10_000));
        assert_eq!(run(&mut o, outcome(2, RefundState::Failed("late".into())), 11), Ok(0), "settled stays settled");
    }

    #[test]
    fn refunds_only_of_paid_orders_within_the_window() {
        let mut o = new_order(100);
        assert_eq!(run(&mut o, ask_refund("r1", 1), 2).map_err(|e| e.code), Err(ErrorCode::OrderStatusError));
        run(&mut o, paid("T1", 100), 3).unwrap();
        let late = OrderCommand::RequestRefund { spec: refund_spec("r1", 1), window_ms: 10 };
        assert_eq!(run(&mut o, late, 14).map_err(|e| e.code), Err(ErrorCode::OrderStatusError));
        assert_eq!(run(&mut o, ask_refund("r1", 0), 4).map_err(|e| e.code), Err(ErrorCode::InvalidParam));
    }

    #[test]
    fn an_unknown_refund_is_queried_then_reviewed_and_still_settles() {
        let mut policy = QueryPolicy::default();
        policy.refunds.max_queries = 2;
        let mut o = new_order(100);
        run(&mut o, paid("T1", 100), 3).unwrap();
        run(&mut o, ask_refund("r1", 50), 10).unwrap();
        let no = o.refunds[0].refund_order_no.clone();
        let first = 10 + policy.refunds.first_query_after_ms;
        assert_eq!(o.next_timer(&policy), Some(first));
        assert_eq!(o.due_action(first, &policy), Some(TimerAction::RefundQuery(no.clone())));
        let query = || OrderCommand::RecordRefundQuery { refund_order_no: no.clone(), max_queries: 2 };
        run(&mut o, query(), first).unwrap();
        run(&mut o, query(), first + policy.refunds.query_interval_ms).unwrap();
        assert_eq!(o.refunds[0].status, crate::refund::RefundStatus::ManualReview);
        assert_eq!(o.next_timer(&policy), None);
        assert_eq!(run(&mut o, ask_refund("r2", 51), 20).map_err(|e| e.code), Err(ErrorCode::RefundExceedsPaid));
        run(&mut o, outcome(0, RefundState::Success), 30).unwrap();
        assert_eq!((o.status, o.refunded_minor), (OrderStatus::PartiallyRefunded, 50));
    }

    #[test]
    fn late_closed_after_success_is_recorded_not_applied() {
        let mut o = new_order(100);
        run(&mut o, paid("T1", 100), 2).unwrap();
        assert_eq!(run(&mut o, OrderCommand::Notice(ChannelNotice::Closed), 3), Ok(1));
        assert_eq!(o.status, OrderStatus::Success);
        assert_eq!(run(&mut o, OrderCommand::Close, 4).map_err(|e| e.code), Err(ErrorCode::OrderStatusError));
    }

    #[test]
    fn payment_after_close_is_flagged_for_refund_once() {
        let mut o = new_order(100);
        run(&mut o, OrderCommand::Close, 2).unwrap();
        assert_eq!(run(&mut o, paid("T9", 100), 3), Ok(1));
        assert_eq!(run(&mut o, paid("T9", 100), 4), Ok(0));
        assert_eq!((o.status, o.late_payments.len()), (OrderStatus::Closed, 1));
    }

    #[test]
    fn wrong_amount_changes_nothing() {
        let mut o = new_order(100);
        let err = run(&mut o, paid("T1", 99), 2).unwrap_err();
        assert_eq!(err.code, ErrorCode::ChannelError);
        assert_eq!(o.status, OrderStatus::Pending);
    }

    #[test]
    fn expiry_and_query_timers() {
        let policy = QueryPolicy::default();
        let mut o = new_order(100);
        assert_eq!(o.next_timer(&policy), Some(1_000 + 60_000));
        assert_eq!(o.due_action(30_000, &policy), None);
        assert_eq!(o.due_action(61_000, &policy), Some(TimerAction::Query));
        run(&mut o, OrderCommand::RecordQueryAttempt, 61_000).unwrap();
        assert_eq!(o.next_timer(&policy), Some(1_000 + 60_000 + 300_000));
        assert_eq!(run(&mut o, OrderCommand::Expire, 500_000), Ok(0), "not yet due");
        assert_eq!(o.due_action(1_000 + 1_800_000, &policy), Some(TimerAction::Expire));
        run(&mut o, OrderCommand::Expire, 1_000 + 1_800_000).unwrap();
        assert_eq!((o.status, o.next_timer(&policy)), (OrderStatus::Expired, None));
    }

    fn any_command() -> impl Strategy<Value = OrderCommand> {
        prop_oneof![
            Just(OrderCommand::Accept { code_url: "u".into(), channel_trade_no: None }),
            Just(OrderCommand::MarkSubmitted),
            Just(OrderCommand::Reject { reason: "no".into() }),
            Just(OrderCommand::Close),
            Just(OrderCommand::Expire),
            Just(OrderCommand::RecordQueryAttempt),
            Just(OrderCommand::Notice(ChannelNotice::Closed)),
            Just(OrderCommand::Notice(ChannelNotice::NotPaid)),
            Just(OrderCommand::Notice(ChannelNotice::Failed { reason: "f".into() })),
            (0usize..3, 99i64..=101).prop_map(|(t, a)| paid(["T1", "T2", "T3"][t], a)),
            (0usize..4, 1i64..=120).prop_map(|(n, a)| ask_refund(["r1", "r2", "r3", "r4"][n], a)),
            (0usize..4, 0usize..5).prop_map(|(i, o)| outcome(
                i,
                [
                    RefundState::Success,
                    RefundState::Processing,
                    RefundState::Failed("f".into()),
                    RefundState::Abnormal("a".into()),
                    RefundState::NotFound
                ][o]
                    .clone()
            )),
            (0usize..3)
                .prop_map(|t| OrderCommand::RefundLatePayment { channel_trade_no: ["T1", "T2", "T3"][t].into() }),
            (0usize..4).prop_map(|i| OrderCommand::RecordRefundQuery {
                refund_order_no: Refund::number(&PayOrderNo::parse("P170406720000000010000").unwrap(), i),
                max_queries: 2,
            }),
        ]
    }

    fn any_event() -> impl Strategy<Value = OrderEvent> {
        prop_oneof![
            Just(OrderEvent::ChannelAccepted { code_url: "u".into(), channel_trade_no: None, at: 5 }),
            Just(OrderEvent::ChannelSubmitted { at: 5 }),
            Just(OrderEvent::ChannelRejected { reason: "r".into(), at: 5 }),
            (99i64..=101).prop_map(|a| OrderEvent::Paid { channel_trade_no: "T".into(), amount_minor: a, at: 5 }),
            Just(OrderEvent::PaymentFailed { reason: "r".into(), at: 5 }),
            Just(OrderEvent::Closed { at: 5 }),
            Just(OrderEvent::Expired { at: 5 }),
            Just(OrderEvent::QueryAttempted { at: 5 }),
            Just(OrderEvent::LatePaymentRecorded {
                payment: LatePayment { channel_trade_no: "L".into(), amount_minor: 100, at: 5 }
            }),
            (0usize..4, -5i64..=120).prop_map(|(i, a)| OrderEvent::Refund {
                refund_order_no: Refund::number(&PayOrderNo::parse("P170406720000000010000").unwrap(), i),
                event: RefundEvent::Requested { spec: refund_spec(["r1", "r2", "r1", "r3"][i], a), at: 5 },
            }),
            (0usize..4, 0usize..4).prop_map(|(i, e)| OrderEvent::Refund {
                refund_order_no: Refund::number(&PayOrderNo::parse("P170406720000000010000").unwrap(), i),
                event: [
                    RefundEvent::Succeeded { at: 5 },
                    RefundEvent::Failed { reason: "f".into(), at: 5 },
                    RefundEvent::QueryAttempted { at: 5 },
                    RefundEvent::SentToReview { reason: "r".into(), at: 5 },
                ][e]
                    .clone(),
            }),
        ]
    }

    fn check_step(before: &Order, after: &Order) -> Result<(), TestCaseError> {
        prop_assert!(after.status.rank() >= before.status.rank(), "{:?} -> {:?}", before.status, after.status);
        if before.status.is_final() {
            prop_assert_eq!(after.status, before.status, "a final state moved");
        }
        if before.status.is_paid() {
            prop_assert!(after.status.is_paid(), "a paid order lost its payment");
        }
        prop_assert_eq!(&after.spec, &before.spec, "the order's request changed");
        prop_assert!(after.refunded_minor >= before.refunded_minor);
        prop_assert!(after.refunded_minor <= after.spec.amount.minor());
        // The paid-amount invariant: what refunds hold never exceeds what was paid, and
        // the refunded amount is exactly the successful refunds.
        prop_assert!(after.refund_held_minor() <= after.spec.amount.minor());
        let succeeded: i64 = after
            .refunds
            .iter()
            .filter(|r| r.late_payment.is_none() && r.status == crate::refund::RefundStatus::Success)
            .map(|r| r.spec.amount_minor)
            .sum();
        prop_assert_eq!(after.refunded_minor, succeeded);
        // A late payment is refunded at most once, and exactly: its own amount.
        for late in &after.late_payments {
            let refunds: Vec<_> =
                after.refunds.iter().filter(|r| r.late_payment.as_ref() == Some(&late.channel_trade_no)).collect();
            prop_assert!(refunds.len() <= 1, "late payment {} refunded twice", late.channel_trade_no);
            prop_assert!(refunds.iter().all(|r| r.spec.amount_minor == late.amount_minor));
        }
        prop_assert!(after.refunds.iter().all(|r| r.late_payment.is_none() || !after.status.is_open()));
        prop_assert!(after.refunds.len() >= before.refunds.len());
        prop_assert!(after.update_time >= before.update_time);
        Ok(())
    }

    proptest! {
        #[test]
        fn commands_never_move_a_final_state_backwards(cmds in prop::collection::vec(any_command(), 0..40)) {
            let mut order = new_order(100);
            for (i, cmd) in cmds.into_iter().enumerate() {
                let now = 1_000 + (i as i64) * 120_000;
                let before = order.clone();
                if let Ok(events) = order.handle(cmd, now) {
                    for e in &events {
                        // Whatever handle decides, apply must accept.
                        prop_assert!(order.apply(e).is_ok(), "handle produced an event apply refuses: {e:?}");
                    }
                }
                check_step(&before, &order)?;
            }
        }

        #[test]
        fn apply_refuses_what_would_break_the_machine(events in prop::collection::vec(any_event(), 0..40)) {
            let mut order = new_order(100);
            for e in events {
                let before = order.clone();
                if order.apply(&e).is_err() {
                    prop_assert_eq!(&order, &before, "a refused event changed the order");
                }
                check_step(&before, &order)?;
            }
        }
    }
}
