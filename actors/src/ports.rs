//! Ports: what the core needs from the outside world, as traits. The adapters in the
//! `paygate` crate implement them (journal + sled, channel connectors, the system
//! clock); tests implement them with fakes.

use crate::clock::UnixMillis;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::channel_actor::ChannelSetting;
use crate::ids::{PayOrderNo, ShardId};
use crate::money::Money;
use crate::notification::{Attempt, Notification, NotifyEvent};
use crate::order::{ChannelNotice, Order, OrderEvent, PayScene};
use crate::refund::RefundState;

/// A boxed, sendable future: the shape of every asynchronous port method.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One journal record: what one entity decided, made durable as a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Events of one payment order.
    Order {
        /// The order.
        pay_order_no: PayOrderNo,
        /// The order's record sequence: 1 for its first record, then +1 each time.
        seq: u64,
        /// What happened, in order.
        events: Vec<OrderEvent>,
    },
    /// Delivery events of one notification to a merchant (its creation is the
    /// `NotifyDue` event in an order record).
    Notify {
        /// The order it concerns (where its shard and its `notify_id` come from).
        pay_order_no: PayOrderNo,
        /// The notification.
        notify_id: String,
        /// The notification's record sequence: 2 for its first own record, then +1.
        version: u64,
        /// What happened, in order.
        events: Vec<NotifyEvent>,
    },
    /// An operator's change to a channel: effective at once, and on every start after.
    Channel {
        /// The channel's code.
        code: String,
        /// What was set.
        setting: ChannelSetting,
    },
    /// An operator's change of how a merchant's payments by one method are routed:
    /// effective from the next payment, and on every start after.
    Routing {
        /// The merchant.
        merchant_id: String,
        /// The pay method.
        method: crate::order::PayMethod,
        /// The strategy from now on.
        strategy: crate::strategy::Strategy,
    },
    /// An operator's change to risk control's rules or lists: effective from the next
    /// payment, and on every start after.
    Risk {
        /// What changed.
        change: crate::risk::RiskChange,
    },
}

impl Record {
    /// The shard whose sequence numbers the record: its order's, or shard 0 for an
    /// operator's setting (which belongs to no order).
    pub fn shard(&self) -> ShardId {
        match self {
            Record::Order { pay_order_no, .. } | Record::Notify { pay_order_no, .. } => pay_order_no.shard(),
            Record::Channel { .. } | Record::Routing { .. } | Record::Risk { .. } => ShardId(0),
        }
    }
}

/// Storage refused or failed a read or write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The disk has no room for the journal: writes are refused until space is freed,
    /// reads go on. Nothing acknowledged is affected.
    #[error("storage full: {0}")]
    Full(String),
    /// Anything else: the node cannot promise durability for this request.
    #[error("storage: {0}")]
    Failed(String),
}

impl StorageError {
    /// A failure described by `e`.
    pub fn failed(e: impl std::fmt::Display) -> StorageError {
        StorageError::Failed(e.to_string())
    }

    /// The API's answer: `STORAGE_FULL`, or `SYSTEM_ERROR` with the detail in the log.
    pub fn into_core(self) -> crate::error::CoreError {
        match self {
            StorageError::Full(_) => crate::error::CoreError::storage_full(),
            StorageError::Failed(_) => {
                tracing::error!(error = %self, "storage failed");
                crate::error::CoreError::system("storage is unavailable")
            }
        }
    }
}

/// Where a record stands in the journal's order of appends in this process: the views
/// show a record once [`Journal::is_projected`] says so for its ticket.
pub type Ticket = u64;

/// The journal: the source of truth.
///
/// A record is acknowledged once it is on disk (fsync'd); the derived views (snapshot,
/// indexes, timers) follow shortly after. Whoever acknowledges a change to a caller must
/// therefore answer reads of that order itself until the views have caught up: an order
/// actor stays live until its last ticket is projected.
pub trait Journal: Send + Sync + 'static {
    /// Appends `record`. Resolves once the record is durable, with its ticket.
    fn append(&self, record: Record) -> BoxFuture<Result<Ticket, StorageError>>;
    /// Whether the views show the record with `ticket` (and every record before it).
    fn is_projected(&self, ticket: Ticket) -> bool;
    /// Whether appends are being taken now; checked before work that an append must
    /// follow (opening a channel trade), so a full disk refuses a pay before it starts.
    fn writable(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Where a listing continues: the creation time and id of the last record it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    /// When.
    pub time: UnixMillis,
    /// The record's id (pay_order_no or refund_order_no).
    pub id: String,
}

/// Which of a merchant's records a listing wants, newest first.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Whose.
    pub merchant_id: String,
    /// Created at or after.
    pub from_ms: UnixMillis,
    /// Created before.
    pub to_ms: UnixMillis,
    /// Only records in this status (its wire name).
    pub status: Option<&'static str>,
    /// Continue below this record.
    pub after: Option<ListCursor>,
    /// At most this many.
    pub limit: usize,
}

/// A page of a listing; `next` continues it when more may follow.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The records.
    pub items: Vec<T>,
    /// Where the next page starts.
    pub next: Option<ListCursor>,
}

/// A line of a merchant's daily bill: a payment or a refund that reached its final
/// state that day.
#[derive(Debug, Clone)]
pub enum BillItem {
    /// A payment (SUCCESS, FAILED, CLOSED or EXPIRED), as its order is now.
    Payment(Order),
    /// A refund (SUCCESS or FAILED), with its order.
    Refund(Order, String),
}

/// Read side of the derived views: snapshots, the order index and timers.
pub trait OrderStore: Send + Sync + 'static {
    /// The latest snapshot of an order.
    fn load(&self, pay_order_no: &PayOrderNo) -> Result<Option<Order>, StorageError>;
    /// The order a merchant's `order_no` names.
    fn find(&self, merchant_id: &str, order_no: &str) -> Result<Option<PayOrderNo>, StorageError>;
    /// The refund (its `refund_order_no`) a merchant's `refund_no` names.
    fn find_refund(&self, merchant_id: &str, refund_no: &str) -> Result<Option<String>, StorageError>;
    /// A merchant's orders by creation time, newest first.
    fn list_orders(&self, query: &ListQuery) -> Result<Page<Order>, StorageError>;
    /// A merchant's refunds by creation time, newest first, each with its order.
    fn list_refunds(&self, query: &ListQuery) -> Result<Page<(Order, String)>, StorageError>;
    /// Up to `limit` lines of a merchant's bill for business `day`, after the line
    /// `after` names (the `next` of the previous call), in a stable order.
    fn bill(
        &self,
        merchant_id: &str,
        day: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<BillItem>, StorageError>;
    /// Orders whose timer is due at or before `now` (unix millis), earliest first.
    fn due_timers(&self, now: i64, limit: usize) -> Result<Vec<PayOrderNo>, StorageError>;
    /// The highest id millisecond journaled so far, for the id generators.
    fn id_high_water(&self) -> u64;
    /// The payments risk control sent to review (and let go ahead), newest first.
    fn under_review(&self, limit: usize) -> Result<Vec<Order>, StorageError> {
        let _ = limit;
        Ok(Vec::new())
    }
}

/// What the channel needs to open a trade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOrder {
    /// Our id, used as the channel's out_trade_no.
    pub pay_order_no: PayOrderNo,
    /// How much, in the order's currency.
    pub amount: Money,
    /// Shown to the buyer.
    pub subject: String,
    /// When the order was created (UnionPay keys a trade on it).
    pub create_time: UnixMillis,
    /// When the channel should stop accepting payment.
    pub expire_time: UnixMillis,
    /// Buyer's IP, when known.
    pub client_ip: Option<String>,
    /// Which product: a code to scan, or a page at the channel.
    pub scene: PayScene,
    /// Where the channel's page sends the buyer back to, when the merchant gave one.
    pub return_url: Option<String>,
}

/// Names a trade at the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeRef {
    /// Our id.
    pub pay_order_no: PayOrderNo,
    /// The channel's trade number, if known.
    pub channel_trade_no: Option<String>,
    /// The order amount.
    pub amount: Money,
    /// When the order was created (some channels key queries on it).
    pub create_time: UnixMillis,
}

impl TradeRef {
    /// The reference to an order's trade.
    pub fn of(order: &Order) -> TradeRef {
        TradeRef {
            pay_order_no: order.pay_order_no.clone(),
            channel_trade_no: order.channel_trade_no.clone(),
            amount: order.spec.amount,
            create_time: order.create_time,
        }
    }
}

/// The channel accepted a new trade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateAccepted {
    /// What the buyer scans or opens.
    pub code_url: String,
    /// The channel's trade number, if given at creation.
    pub channel_trade_no: Option<String>,
}

/// A channel call did not succeed. The distinction matters for money: only a
/// `Rejected` answer may fail an order; `Unknown` leaves it to be settled by query;
/// `Unavailable` is the one failure after which another channel may be tried at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The channel answered and definitively refused: a business answer, the channel
    /// itself is working.
    #[error("channel refused: {code}: {message}")]
    Rejected {
        /// The channel's code.
        code: String,
        /// The channel's message.
        message: String,
    },
    /// No trustworthy answer: timeout, a lost connection, 5xx other than 503, a busy
    /// code after which the call may still have been carried out, an unverifiable answer.
    #[error("channel outcome unknown: {0}")]
    Unknown(String),
    /// Certainly not carried out: the channel could not be reached (connection refused,
    /// TLS handshake failed), answered 503, or its circuit breaker is open so it was
    /// not called at all.
    #[error("channel unavailable: {0}")]
    Unavailable(String),
}

impl ChannelError {
    /// An unknown outcome, because of `what`.
    pub fn unknown(what: impl std::fmt::Display) -> ChannelError {
        ChannelError::Unknown(what.to_string())
    }

    /// Whether the call says the channel is failing (for its circuit breaker): anything
    /// but an answer, whether yes or no.
    pub fn is_failure(&self) -> bool {
        !matches!(self, ChannelError::Rejected { .. })
    }

    /// Whether the channel definitively refused with `code`.
    pub fn is_rejected_with(&self, code: &str) -> bool {
        matches!(self, ChannelError::Rejected { code: c, .. } if c == code)
    }
}

/// A refund request at the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRefund {
    /// The paid trade.
    pub trade: TradeRef,
    /// Our refund number (`refund_order_no`): the channel's out_request_no /
    /// out_refund_no, the same on every ask and query of this refund.
    pub refund_no: String,
    /// How much to refund.
    pub amount: Money,
    /// When the refund was first asked for: channels that key a refund on its
    /// time (UnionPay's txnTime) need the same value again to ask about it.
    pub requested_at: UnixMillis,
}

/// An inbound callback as received over HTTP.
#[derive(Debug, Clone, Default)]
pub struct CallbackRequest {
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
}

/// What a callback whose signature checked out says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// News of an order, to apply.
    Order(VerifiedCallback),
    /// A refund's outcome, to apply to the refund it names.
    Refund(VerifiedRefund),
    /// Genuine, but about nothing an order holds: acknowledged, and it changes nothing.
    Informational,
}

/// A refund notification whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRefund {
    /// The order refunded.
    pub pay_order_no: PayOrderNo,
    /// Our refund number, as the channel knows the refund.
    pub refund_order_no: String,
    /// What the channel says of it.
    pub outcome: RefundState,
    /// The amount refunded, minor units, when the notification says: checked against the
    /// refund's own (an unsigned notification must at least agree with what we asked).
    pub amount_minor: Option<i64>,
}

/// A callback whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCallback {
    /// The order it concerns.
    pub pay_order_no: PayOrderNo,
    /// What it says.
    pub notice: ChannelNotice,
}

/// The exact HTTP answer a provider expects to a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackReply {
    /// HTTP status.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// One line of a channel's bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillLine {
    /// Our id.
    pub pay_order_no: String,
    /// The channel's trade number.
    pub channel_trade_no: String,
    /// Payment (positive) or refund (negative), minor units.
    pub amount_minor: i64,
    /// Channel fee, minor units.
    pub fee_minor: i64,
    /// When.
    pub time: UnixMillis,
}

/// A channel connector: one payment provider's protocol behind one interface.
pub trait ChannelConnector: Send + Sync + 'static {
    /// Where its calls go, for operators to see; empty for a channel served in process.
    fn gateway_url(&self) -> &str {
        ""
    }
    /// The provider account it opens trades under, e.g. `alipay:<app_id>`,
    /// `wechat:<mch_id>` (API v2 and v3 alike), `unionpay:<merId>`: channels with the
    /// same account share trade numbers. Empty: not known, taken as the same account as
    /// every other unknown one of its provider.
    fn account(&self) -> &str {
        ""
    }
    /// Opens a trade.
    fn create_order(&self, order: ChannelOrder) -> BoxFuture<Result<CreateAccepted, ChannelError>>;
    /// Asks where a trade stands.
    fn query_order(&self, trade: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>>;
    /// Closes an unpaid trade; answers where the trade stands afterwards (a trade that
    /// was paid meanwhile answers `Paid`).
    fn close_order(&self, trade: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>>;
    /// Refunds part or all of a paid trade.
    fn refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>>;
    /// Asks where a refund stands.
    fn query_refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>>;
    /// The bill of a day (`yyyy-MM-dd`).
    fn download_bill(&self, date: String) -> BoxFuture<Result<Vec<BillLine>, ChannelError>>;
    /// Checks an inbound callback's signature and reads it. `None`: not trustworthy.
    fn verify_callback(&self, request: &CallbackRequest) -> Option<Verified>;
    /// The order a callback names, read without trusting it: when the callback cannot be
    /// verified, the node asks the channel about that order instead of ignoring it.
    fn unverified_order(&self, request: &CallbackRequest) -> Option<PayOrderNo> {
        let _ = request;
        None
    }
    /// The answer that tells the provider a callback was taken.
    fn callback_ack(&self) -> CallbackReply;
    /// The answer that tells the provider to retry.
    fn callback_nack(&self) -> CallbackReply;
}

/// Read side of the notifications the views keep.
pub trait NotifyStore: Send + Sync + 'static {
    /// A merchant's pending notifications, earliest due first.
    fn pending(&self, merchant_id: &str, limit: usize) -> Result<Vec<Notification>, StorageError>;
    /// A merchant's dead notifications.
    fn dead(&self, merchant_id: &str, limit: usize) -> Result<Vec<Notification>, StorageError>;
    /// Every notification of an order, oldest first.
    fn of_order(&self, pay_order_no: &PayOrderNo) -> Result<Vec<Notification>, StorageError>;
}

/// One HTTP attempt to deliver a notification.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Where to.
    pub url: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The `Paygate-Signature` header.
    pub signature_header: String,
    /// The notification's id (sent as a header too, for logs at the merchant).
    pub notify_id: String,
    /// Whether the merchant may be reached at private addresses (else they are refused
    /// when connecting, whatever DNS says then).
    pub allow_private: bool,
}

/// Delivers notifications to merchants over HTTP(S).
pub trait NotifyTransport: Send + Sync + 'static {
    /// POSTs `outgoing` and says what came of it; never fails otherwise (a transport
    /// error is a failed [`Attempt`]). `started` is the attempt's unix millis.
    fn deliver(&self, outgoing: Outgoing, started: i64) -> BoxFuture<Attempt>;
}
