//! A refund of (part of) a paid order: its own state machine, owned by its order.
//!
//! ```text
//! REFUNDING ──(channel: done)──────► SUCCESS
//!     │ ├────(channel: refused)────► FAILED
//!     │ └─(outcome unknown: queried on a schedule with the same refund number)
//!     └──(queries exhausted)──► MANUAL_REVIEW ──(channel: done / refused)──► SUCCESS | FAILED
//! ```
//! A refund lives in its order's state and its events in its order's records: the
//! order's actor is then the one owner of the invariant that successful and in-flight
//! refunds never exceed what was paid ([`crate::order::Order`] checks it on every
//! request and every applied event). An unknown outcome is never sent as a new refund:
//! it keeps its `refund_order_no` (the channel's out_request_no / out_refund_no) and is
//! settled by the channel's notification or by queries.
//!
//! A payment the channel took after the order was closed or expired (a late payment) is
//! the buyer's money we have no order for: with [`RefundPolicy::late_payments`] the order
//! refunds it at once, by itself ([`RefundEvent::LateRequested`]). Such a refund returns
//! that payment, not the order's, so it holds nothing of the order's paid amount.

use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::ids::PayOrderNo;

/// Where a refund stands at the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundState {
    /// Done.
    Success,
    /// Accepted, not finished.
    Processing,
    /// Refused or failed.
    Failed(String),
    /// Taken from the merchant but not delivered to the buyer (WeChat's ABNORMAL: the
    /// buyer's card was closed): someone must act, so the refund goes to manual review
    /// with its amount held.
    Abnormal(String),
    /// The channel has no refund by this number (a query's answer): the ask never
    /// reached it, so it may be asked again under the same number.
    NotFound,
}

/// Where a refund stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefundStatus {
    /// Asked of the channel; not settled yet. Its amount is held.
    Refunding,
    /// Refunded.
    Success,
    /// Refused or failed at the channel; its amount is released.
    Failed,
    /// Not settled after every scheduled query: an operator must look. Its amount stays
    /// held, and a late answer from the channel still settles it.
    ManualReview,
}

impl RefundStatus {
    /// Every status.
    pub const ALL: [RefundStatus; 4] =
        [RefundStatus::Refunding, RefundStatus::Success, RefundStatus::Failed, RefundStatus::ManualReview];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Refunding => "REFUNDING",
            RefundStatus::Success => "SUCCESS",
            RefundStatus::Failed => "FAILED",
            RefundStatus::ManualReview => "MANUAL_REVIEW",
        }
    }

    /// Whether the refund's amount counts against what may still be refunded.
    pub const fn holds_amount(self) -> bool {
        !matches!(self, RefundStatus::Failed)
    }

    /// Still waiting for the channel's verdict.
    pub const fn is_open(self) -> bool {
        matches!(self, RefundStatus::Refunding | RefundStatus::ManualReview)
    }
}

/// What the merchant asked for. Two requests with the same `refund_no` are the same
/// request exactly when their specs are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundSpec {
    /// The merchant's refund number, unique per merchant.
    pub refund_no: String,
    /// How much, minor units of the order's currency.
    pub amount_minor: i64,
    /// Why (shown at the channel where it takes one).
    pub reason: Option<String>,
    /// Where the refund's outcome is posted (else the order's, else the merchant's).
    pub notify_url: Option<String>,
}

/// A refund: what was asked, where it stands, and when it moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// Ours: the order's number with `R` for `P` and a two-digit index. The channel
    /// knows the refund by it.
    pub refund_order_no: String,
    /// What the merchant asked for.
    pub spec: RefundSpec,
    /// Where it stands.
    pub status: RefundStatus,
    /// When it was asked for (channels that key a refund on its time need it).
    pub create_time: UnixMillis,
    /// The last change.
    pub update_time: UnixMillis,
    /// When it succeeded or failed.
    pub finish_time: Option<UnixMillis>,
    /// Why it failed or went to review.
    pub failure: Option<String>,
    /// Queries made at the channel so far.
    pub query_attempts: u8,
    /// The channel trade of the late payment this refund returns, when it returns one
    /// (asked for by the order itself) rather than part of the order's payment.
    pub late_payment: Option<String>,
}

/// What happened to a refund. Journaled inside its order's record, then applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundEvent {
    /// The refund exists and holds its amount.
    Requested {
        /// What the merchant asked for.
        spec: RefundSpec,
        /// When.
        at: UnixMillis,
    },
    /// → SUCCESS.
    Succeeded {
        /// When.
        at: UnixMillis,
    },
    /// → FAILED.
    Failed {
        /// Why.
        reason: String,
        /// When.
        at: UnixMillis,
    },
    /// A query was made at the channel.
    QueryAttempted {
        /// When.
        at: UnixMillis,
    },
    /// → MANUAL_REVIEW.
    SentToReview {
        /// Why.
        reason: String,
        /// When.
        at: UnixMillis,
    },
    /// The refund of a late payment exists: the order asks for it by itself.
    LateRequested {
        /// What the refund is, as if a merchant had asked (its `refund_no` is ours).
        spec: RefundSpec,
        /// The late payment's channel trade.
        channel_trade_no: String,
        /// When.
        at: UnixMillis,
    },
}

impl RefundEvent {
    /// The event's name, for invariant reports.
    pub const fn name(&self) -> &'static str {
        match self {
            RefundEvent::Requested { .. } => "Refund.Requested",
            RefundEvent::Succeeded { .. } => "Refund.Succeeded",
            RefundEvent::Failed { .. } => "Refund.Failed",
            RefundEvent::QueryAttempted { .. } => "Refund.QueryAttempted",
            RefundEvent::SentToReview { .. } => "Refund.SentToReview",
            RefundEvent::LateRequested { .. } => "Refund.LateRequested",
        }
    }
}

/// When refunds whose outcome is unknown are queried, and how long a paid order may be
/// refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPolicy {
    /// How long after payment a refund may be asked for, millis.
    pub window_ms: i64,
    /// First query after the request, millis.
    pub first_query_after_ms: i64,
    /// Between queries, millis.
    pub query_interval_ms: i64,
    /// Queries before the refund goes to manual review.
    pub max_queries: u8,
    /// Whether a payment that arrives after the order was closed or expired is refunded
    /// at once, by the order itself.
    pub late_payments: bool,
}

impl Default for RefundPolicy {
    /// A year to refund; queries at 10 s, then every minute, 10 in all; late payments
    /// refunded.
    fn default() -> Self {
        RefundPolicy {
            window_ms: 365 * 24 * 3_600_000,
            first_query_after_ms: 10_000,
            query_interval_ms: 60_000,
            max_queries: 10,
            late_payments: true,
        }
    }
}

/// The most refunds one order may have (its refund numbers have two digits).
pub const MAX_REFUNDS: usize = 99;

impl Refund {
    /// The `index`-th (0-based) refund number of `pay_order_no`: `R` + its digits + two
    /// digits.
    pub fn number(pay_order_no: &PayOrderNo, index: usize) -> String {
        let digits = pay_order_no.as_str().get(1..).unwrap_or_default();
        format!("R{digits}{:02}", index + 1)
    }

    /// The order a refund number belongs to.
    pub fn order_of(refund_order_no: &str) -> Option<PayOrderNo> {
        let digits = refund_order_no.strip_prefix('R')?;
        let order = digits.get(..digits.len().checked_sub(2)?)?;
        digits.get(digits.len() - 2..).filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?;
        PayOrderNo::parse(&format!("P{order}"))
    }

    /// The refund `Requested` brings into being.
    pub fn requested(refund_order_no: String, spec: RefundSpec, at: i64) -> Refund {
        Refund {
            refund_order_no,
            spec,
            status: RefundStatus::Refunding,
            create_time: at,
            update_time: at,
            finish_time: None,
            failure: None,
            query_attempts: 0,
            late_payment: None,
        }
    }

    /// Applies one event (not `Requested`); `false` when it cannot follow the state.
    pub fn apply(&mut self, event: &RefundEvent) -> bool {
        let at = match event {
            RefundEvent::Requested { .. } | RefundEvent::LateRequested { .. } => return false,
            RefundEvent::Succeeded { at } | RefundEvent::Failed { at, .. } => {
                if !self.status.is_open() {
                    return false;
                }
                self.finish_time = Some(*at);
                match event {
                    RefundEvent::Failed { reason, .. } => {
                        self.status = RefundStatus::Failed;
                        self.failure = Some(reason.clone());
                    }
                    _ => self.status = RefundStatus::Success,
                }
                *at
            }
            RefundEvent::QueryAttempted { at } => {
                if !self.status.is_open() {
                    return false;
                }
                self.query_attempts = self.query_attempts.saturating_add(1);
                *at
            }
            RefundEvent::SentToReview { reason, at } => {
                if self.status != RefundStatus::Refunding {
                    return false;
                }
                self.status = RefundStatus::ManualReview;
                self.failure = Some(reason.clone());
                *at
            }
        };
        self.update_time = self.update_time.max(at);
        true
    }

    /// When a refund of unknown outcome is next queried.
    pub fn next_query(&self, policy: &RefundPolicy) -> Option<i64> {
        (self.status == RefundStatus::Refunding && self.query_attempts < policy.max_queries).then(|| {
            self.create_time
                .saturating_add(policy.first_query_after_ms)
                .saturating_add(i64::from(self.query_attempts).saturating_mul(policy.query_interval_ms))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_name_their_order() {
        let id = PayOrderNo::parse("P170406720000000010000").unwrap();
        let r = Refund::number(&id, 0);
        assert_eq!(r, "R17040672000000001000001");
        assert_eq!(Refund::order_of(&r), Some(id.clone()));
        assert_eq!(Refund::order_of(&Refund::number(&id, 98)), Some(id));
        for bad in ["", "R", "R01", "X17040672000000001000001", "R1704067200000000100000x", "R170406720000000010000"] {
            assert_eq!(Refund::order_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn settles_once_and_review_still_settles() {
        let spec = RefundSpec { refund_no: "r1".into(), amount_minor: 5, reason: None, notify_url: None };
        let mut r = Refund::requested("R1".into(), spec, 0);
        assert!(r.apply(&RefundEvent::QueryAttempted { at: 1 }));
        assert!(r.apply(&RefundEvent::SentToReview { reason: "no answer".into(), at: 2 }));
        assert_eq!(r.next_query(&RefundPolicy::default()), None, "review is for people");
        assert!(r.apply(&RefundEvent::Succeeded { at: 3 }));
        assert_eq!((r.status, r.finish_time), (RefundStatus::Success, Some(3)));
        assert!(!r.apply(&RefundEvent::Failed { reason: "late".into(), at: 4 }), "a settled refund stays settled");
    }
}
