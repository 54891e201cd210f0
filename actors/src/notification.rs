//! A notification to a merchant (回调通知): the aggregate that owns its delivery state,
//! and its retry schedule.
//!
//! ```text
//! PENDING ──(acknowledged)──► DELIVERED
//!    │ ▲ (failed: next attempt scheduled)
//!    └─┘
//!    └───(schedule exhausted)──► DEAD ──(resend)──► PENDING
//! ```
//! A notification comes into being in the journal record of the order change it
//! reports (the order's `NotifyDue` event: an outbox in the same commit), so no order
//! change can be acknowledged while its notification is forgotten. Every attempt is
//! journaled as [`NotifyEvent`]s decided by [`Notification::handle`].
//!
//! Its `notify_id` is the same on every attempt. Notifications of one order carry the
//! order's record `sequence`, and are delivered in that order (a later one waits while
//! an earlier one is pending), so a merchant never sees an older state after a newer
//! one unless an operator resends an old one; `sequence` lets it tell.

use crate::clock::UnixMillis;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::PayOrderNo;
use crate::money::Money;
use crate::order::{NotifyType, Order};
use crate::signing::{self, SignType};
use crate::time_fmt::Rfc3339;

/// Where a notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotifyStatus {
    /// Waiting for its next attempt.
    Pending,
    /// The merchant acknowledged it.
    Delivered,
    /// Every scheduled attempt failed; an operator or the merchant may resend it.
    Dead,
}

impl NotifyStatus {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            NotifyStatus::Pending => "PENDING",
            NotifyStatus::Delivered => "DELIVERED",
            NotifyStatus::Dead => "DEAD",
        }
    }
}

/// When the attempts after the first are made: each delay counts from the previous
/// attempt and is moved by up to ±`jitter` of itself, so the notifications of one
/// outage do not all come back at the same instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrySchedule {
    /// Delay before the 2nd, 3rd, … attempt, millis. Its length + 1 is how many
    /// attempts a notification gets before it is DEAD.
    pub delays_ms: Vec<i64>,
    /// Fraction of a delay it may move either way (0.1: ±10%).
    pub jitter: f64,
}

impl Default for RetrySchedule {
    /// At once, then 1 s, 5 s, 30 s, 2 min, 10 min, 30 min (the seeds' schedule), then
    /// 1 h, 2 h, 6 h, 15 h (Alipay's tail): about 25 hours in all, ±10% each.
    fn default() -> Self {
        const S: i64 = 1_000;
        const M: i64 = 60 * S;
        const H: i64 = 60 * M;
        RetrySchedule { delays_ms: vec![S, 5 * S, 30 * S, 2 * M, 10 * M, 30 * M, H, 2 * H, 6 * H, 15 * H], jitter: 0.1 }
    }
}

impl RetrySchedule {
    /// The delay after the `attempts`-th failed attempt (1-based) with jitter drawn as
    /// `unit` ∈ [0, 1); `None` when that was the last attempt.
    pub fn delay_after(&self, attempts: u32, unit: f64) -> Option<i64> {
        let base = *self.delays_ms.get(usize::try_from(attempts).ok()?.checked_sub(1)?)?;
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Some(((base.max(0) as f64) * factor).round() as i64)
    }

    /// How many attempts a notification gets.
    pub fn attempts(&self) -> usize {
        self.delays_ms.len() + 1
    }
}

/// The most bytes of a merchant's answer kept on an attempt.
pub const ANSWER_KEPT: usize = 256;
/// The most attempts a notification's state keeps (the journal has all of them).
pub const ATTEMPTS_KEPT: usize = 64;

/// One delivery attempt and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it started.
    pub at: UnixMillis,
    /// The HTTP status, when the merchant answered.
    pub http_status: Option<u16>,
    /// How long it took, millis.
    pub latency_ms: u32,
    /// The first [`ANSWER_KEPT`] bytes of the answer (lossy UTF-8).
    pub answer: String,
    /// Why it failed without an answer (timeout, connection refused, refused address).
    pub error: Option<String>,
    /// Whether the merchant acknowledged: 2xx and a body of `SUCCESS`.
    pub acknowledged: bool,
}

impl Attempt {
    /// An attempt that got an HTTP answer with `body`.
    pub fn answered(at: i64, latency_ms: u32, http_status: u16, body: &[u8]) -> Attempt {
        let acknowledged = (200..300).contains(&http_status)
            && std::str::from_utf8(body).is_ok_and(|b| b.trim().eq_ignore_ascii_case("SUCCESS"));
        Attempt { at, http_status: Some(http_status), latency_ms, answer: kept(body), error: None, acknowledged }
    }

    /// An attempt that got no answer, because of `error`.
    pub fn failed(at: i64, latency_ms: u32, error: impl Into<String>) -> Attempt {
        let mut error: String = error.into();
        truncate(&mut error, ANSWER_KEPT);
        Attempt { at, http_status: None, latency_ms, answer: String::new(), error: Some(error), acknowledged: false }
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

fn kept(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(body.get(..ANSWER_KEPT).unwrap_or(body)).into_owned();
    truncate(&mut text, ANSWER_KEPT);
    text
}

/// A notification and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Same on every attempt: `<pay_order_no>-<sequence>`, and `-<refund index>` for a
    /// refund's.
    pub notify_id: String,
    /// What it reports.
    pub notify_type: NotifyType,
    /// The merchant told.
    pub merchant_id: String,
    /// The order it concerns.
    pub pay_order_no: PayOrderNo,
    /// The order's record sequence that caused it: later states have higher ones.
    pub sequence: u64,
    /// The refund's or the order's `notify_url`; `None`: the merchant's default.
    pub url: Option<String>,
    /// The body's fields, as of the change (without `timestamp`, `sign_type`, `sign`,
    /// which each attempt adds).
    pub fields: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Where it stands.
    pub status: NotifyStatus,
    /// When the next attempt is due (pending only).
    pub due: Option<UnixMillis>,
    /// Attempts since it was created or last resent: where it is in the schedule.
    pub round_attempts: u32,
    /// Attempts ever made.
    pub total_attempts: u32,
    /// The latest [`ATTEMPTS_KEPT`] attempts, oldest first.
    pub attempts: Vec<Attempt>,
    /// Its record sequence: 1 for the order record that made it, +1 per own record.
    pub version: u64,
}

/// What happened to a notification. Journaled, then applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotifyEvent {
    /// An attempt was made.
    Attempted {
        /// What the attempt got: status, answer or transport error, latency.
        attempt: Attempt,
    },
    /// The next attempt is due at `due`.
    Scheduled {
        /// When it is due.
        due: UnixMillis,
    },
    /// → DELIVERED.
    Delivered {
        /// When.
        at: UnixMillis,
    },
    /// → DEAD.
    Died {
        /// When.
        at: UnixMillis,
    },
    /// → PENDING, due at once, with a fresh schedule.
    Resent {
        /// When.
        at: UnixMillis,
    },
}

/// What is asked of a notification.
#[derive(Debug, Clone, PartialEq)]
pub enum NotifyCommand {
    /// Record an attempt; `jitter_unit` ∈ [0, 1) draws the next delay's jitter.
    RecordAttempt {
        /// What the attempt got: status, answer or transport error, latency.
        attempt: Attempt,
        /// The jitter draw.
        jitter_unit: f64,
    },
    /// Send it again now, whatever its state.
    Resend {
        /// When the merchant asked: the next attempt is due then.
        now: UnixMillis,
    },
}

/// An event that cannot follow the notification's state: a bug or a damaged journal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("notification {notify_id}: {event} cannot follow status {status:?}")]
pub struct NotifyViolation {
    /// The notification's id.
    pub notify_id: String,
    /// The status the event was applied to.
    pub status: NotifyStatus,
    /// The offending event.
    pub event: &'static str,
}

/// A notification's body and headers as one attempt sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The JSON body.
    pub body: Vec<u8>,
    /// The `Paygate-Signature` header: `t=<unix>,v1=<hex>`.
    pub signature_header: String,
}

impl Notification {
    /// The id of the notification of `pay_order_no`'s record `sequence` (about its
    /// refund `refund_order_no`, if any).
    pub fn id_for(pay_order_no: &PayOrderNo, sequence: u64, refund_order_no: Option<&str>) -> String {
        match refund_order_no.and_then(|r| r.get(r.len().saturating_sub(2)..)) {
            Some(index) => format!("{}-{sequence}-{index}", pay_order_no.as_str()),
            None => format!("{}-{sequence}", pay_order_no.as_str()),
        }
    }

    /// The notification `order` (as its record `order.seq` left it) owes, made at `at`:
    /// of its payment, or of its refund `refund_order_no`.
    pub fn for_order(order: &Order, notify_type: NotifyType, refund_order_no: Option<&str>, at: i64) -> Notification {
        let mut fields = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            if !v.is_empty() {
                fields.insert(k.to_owned(), v);
            }
        };
        let refund = refund_order_no.and_then(|no| order.refunds.iter().find(|r| r.refund_order_no == no));
        let notify_id =
            Notification::id_for(&order.pay_order_no, order.seq, refund.map(|r| r.refund_order_no.as_str()));
        let currency = order.spec.amount.currency();
        put("notify_id", notify_id.clone());
        put("notify_type", notify_type.as_str().to_owned());
        put("merchant_id", order.spec.merchant_id.clone());
        put("order_no", order.spec.order_no.clone());
        put("pay_order_no", order.pay_order_no.as_str().to_owned());
        put("amount", order.spec.amount.to_string());
        put("currency", currency.code().to_owned());
        put("pay_method", order.spec.pay_method.as_str().to_owned());
        put("channel", order.channel.clone());
        put("channel_trade_no", order.channel_trade_no.clone().unwrap_or_default());
        put("paid_time", order.paid_time.map(|t| Rfc3339(t).to_string()).unwrap_or_default());
        put("create_time", Rfc3339(order.create_time).to_string());
        put("update_time", Rfc3339(order.update_time).to_string());
        put("refunded_amount", Money::from_minor(order.refunded_minor, currency).to_string());
        put("fail_reason", order.failure.clone().unwrap_or_default());
        put("sequence", order.seq.to_string());
        let url = match refund {
            // A refund's notification: `status` is the refund's, the order's is beside it.
            Some(r) => {
                put("status", r.status.as_str().to_owned());
                put("order_status", order.status.as_str().to_owned());
                put("refund_order_no", r.refund_order_no.clone());
                put("refund_no", r.spec.refund_no.clone());
                put("refund_amount", Money::from_minor(r.spec.amount_minor, currency).to_string());
                put("refund_time", r.finish_time.map(|t| Rfc3339(t).to_string()).unwrap_or_default());
                put("refund_failure", r.failure.clone().unwrap_or_default());
                r.spec.notify_url.clone().or_else(|| order.spec.notify_url.clone())
            }
            None => {
                put("status", order.status.as_str().to_owned());
                order.spec.notify_url.clone()
            }
        };
        Notification {
            notify_id,
            notify_type,
            merchant_id: order.spec.merchant_id.clone(),
            pay_order_no: order.pay_order_no.clone(),
            sequence: order.seq,
            url,
            fields,
            created_at: at,
            status: NotifyStatus::Pending,
            due: Some(at),
            round_attempts: 0,
            total_attempts: 0,
            attempts: Vec::new(),
            version: 1,
        }
    }

    /// Decides the events `cmd` causes under `schedule`.
    pub fn handle(&self, cmd: NotifyCommand, schedule: &RetrySchedule) -> Vec<NotifyEvent> {
        match cmd {
            NotifyCommand::RecordAttempt { attempt, jitter_unit } => {
                if self.status != NotifyStatus::Pending {
                    return Vec::new();
                }
                let at = attempt.at;
                let outcome = if attempt.acknowledged {
                    NotifyEvent::Delivered { at }
                } else {
                    match schedule.delay_after(self.round_attempts.saturating_add(1), jitter_unit) {
                        Some(delay) => NotifyEvent::Scheduled { due: at.saturating_add(delay) },
                        None => NotifyEvent::Died { at },
                    }
                };
                vec![NotifyEvent::Attempted { attempt }, outcome]
            }
            NotifyCommand::Resend { now } => vec![NotifyEvent::Resent { at: now }],
        }
    }

    /// Applies one event; refuses one that cannot follow the current state.
    pub fn apply(&mut self, event: &NotifyEvent) -> Result<(), NotifyViolation> {
        let (status, pending) = (self.status, self.status == NotifyStatus::Pending);
        let violation = |event| NotifyViolation { notify_id: self.notify_id.clone(), status, event };
        match event {
            NotifyEvent::Attempted { attempt } => {
                if !pending {
                    return Err(violation("Attempted"));
                }
                self.round_attempts = self.round_attempts.saturating_add(1);
                self.total_attempts = self.total_attempts.saturating_add(1);
                if self.attempts.len() >= ATTEMPTS_KEPT {
                    self.attempts.remove(0);
                }
                self.attempts.push(attempt.clone());
            }
            NotifyEvent::Scheduled { due } => {
                if !pending {
                    return Err(violation("Scheduled"));
                }
                self.due = Some(*due);
            }
            NotifyEvent::Delivered { .. } | NotifyEvent::Died { .. } => {
                if !pending {
                    return Err(violation("Delivered/Died"));
                }
                self.status = match event {
                    NotifyEvent::Delivered { .. } => NotifyStatus::Delivered,
                    _ => NotifyStatus::Dead,
                };
                self.due = None;
            }
            NotifyEvent::Resent { at } => {
                self.status = NotifyStatus::Pending;
                self.due = Some(*at);
                self.round_attempts = 0;
            }
        }
        debug_assert_eq!(self.due.is_some(), self.status == NotifyStatus::Pending);
        Ok(())
    }

    /// The body and signature header of an attempt at `now_secs`, signed with the
    /// merchant's `secret` as its own requests are (`sign`), and over the raw body
    /// (`Paygate-Signature`).
    pub fn render(&self, secret: &str, sign_type: SignType, now_secs: i64) -> Rendered {
        let mut params: BTreeMap<&str, String> = self.fields.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        params.insert("timestamp", now_secs.to_string());
        params.insert("sign_type", sign_type.as_str().to_owned());
        let sign = signing::sign(&params, secret, sign_type);
        params.insert("sign", sign);
        // A map of strings always serializes.
        let body = serde_json::to_vec(&params).unwrap_or_default();
        let signature_header = signing::payload_signature_header(secret, now_secs, &body);
        Rendered { body, signature_header }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{Currency, Money};
    use crate::order::{OrderEvent, OrderSpec, PayMethod};
    use proptest::prelude::*;

    fn paid_order() -> Order {
        let id = PayOrderNo::parse("P170406720000000000001").unwrap();
        let spec = OrderSpec::new("M1", "o-1", Money::from_minor(1234, Currency::CNY), "Tea", PayMethod::Sandbox);
        let created = OrderEvent::created(id, spec, "sandbox".into(), 1_704_067_200_000, 60_000);
        let mut order = Order::from_created(&created).unwrap();
        order
            .apply(&OrderEvent::Paid { channel_trade_no: "T1".into(), amount_minor: 1234, at: 1_704_067_201_000 })
            .unwrap();
        order.seq = 2;
        order
    }

    #[test]
    fn body_carries_the_order_and_both_signatures_verify() {
        let n = Notification::for_order(&paid_order(), NotifyType::Pay, None, 5);
        assert_eq!(n.notify_id, "P170406720000000000001-2");
        let r = n.render("s3cret", SignType::HmacSha256, 1_704_067_300);
        let params: BTreeMap<String, String> = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(params["status"], "SUCCESS");
        assert_eq!(params["amount"], "12.34");
        assert_eq!(params["paid_time"], "2024-01-01T00:00:01Z");
        assert_eq!(params["notify_type"], "PAY");
        assert!(!params.contains_key("fail_reason"), "empty fields are left out");
        assert!(signing::verify(&params, "s3cret", SignType::HmacSha256));
        assert!(signing::verify_payload_signature("s3cret", &r.signature_header, &r.body, 1_704_067_300, 300));
        assert!(!signing::verify_payload_signature("other", &r.signature_header, &r.body, 1_704_067_300, 300));
        let md5 = n.render("s3cret", SignType::Md5, 1_704_067_300);
        let params: BTreeMap<String, String> = serde_json::from_slice(&md5.body).unwrap();
        assert_eq!(params["sign_type"], "MD5");
        assert!(signing::verify(&params, "s3cret", SignType::Md5));
    }

    #[test]
    fn acknowledgement_is_2xx_and_success() {
        assert!(Attempt::answered(0, 1, 200, b" success\n").acknowledged);
        assert!(Attempt::answered(0, 1, 204, b"SUCCESS").acknowledged);
        assert!(!Attempt::answered(0, 1, 200, b"OK").acknowledged);
        assert!(!Attempt::answered(0, 1, 500, b"SUCCESS").acknowledged);
        let long = vec![b'x'; 1000];
        assert_eq!(Attempt::answered(0, 1, 500, &long).answer.len(), ANSWER_KEPT);
    }

    fn run(n: &mut Notification, cmd: NotifyCommand, s: &RetrySchedule) {
        for e in n.handle(cmd, s) {
            n.apply(&e).unwrap();
        }
    }

    #[test]
    fn follows_the_schedule_then_dies_and_resend_revives() {
        let s = RetrySchedule::default();
        let mut n = Notification::for_order(&paid_order(), NotifyType::Pay, None, 0);
        let mut now = 0;
        let mut delays = Vec::new();
        while n.status == NotifyStatus::Pending {
            now = n.due.unwrap();
            run(
                &mut n,
                NotifyCommand::RecordAttempt { attempt: Attempt::failed(now, 1, "refused"), jitter_unit: 0.5 },
                &s,
            );
            if let Some(due) = n.due {
                delays.push(due - now);
            }
        }
        assert_eq!(delays, s.delays_ms, "no jitter at the middle draw");
        assert_eq!(n.status, NotifyStatus::Dead);
        assert_eq!(n.total_attempts, 11);
        run(&mut n, NotifyCommand::Resend { now: now + 1 }, &s);
        assert_eq!((n.status, n.due, n.round_attempts), (NotifyStatus::Pending, Some(now + 1), 0));
        run(
            &mut n,
            NotifyCommand::RecordAttempt { attempt: Attempt::answered(now + 2, 1, 200, b"SUCCESS"), jitter_unit: 0.0 },
            &s,
        );
        assert_eq!(n.status, NotifyStatus::Delivered);
        assert_eq!(n.total_attempts, 12);
        assert!(n.apply(&NotifyEvent::Scheduled { due: 9 }).is_err(), "a delivered notification is not rescheduled");
    }

    proptest! {
        /// Every delay stays within ±jitter of the schedule, and nothing is attempted
        /// more often than the schedule allows.
        #[test]
        fn jitter_stays_in_bounds(units in proptest::collection::vec(0.0f64..1.0, 10), jitter in 0.0f64..0.5) {
            let s = RetrySchedule { jitter, ..RetrySchedule::default() };
            let mut n = Notification::for_order(&paid_order(), NotifyType::Pay, None, 0);
            for (i, unit) in units.iter().enumerate() {
                let now = n.due.unwrap();
                run(&mut n, NotifyCommand::RecordAttempt { attempt: Attempt::failed(now, 1, "x"), jitter_unit: *unit }, &s);
                let base = s.delays_ms[i] as f64;
                let delay = (n.due.unwrap() - now) as f64;
                prop_assert!(delay >= base * (1.0 - jitter) - 1.0 && delay <= base * (1.0 + jitter) + 1.0);
            }
            let now = n.due.unwrap();
            run(&mut n, NotifyCommand::RecordAttempt { attempt: Attempt::failed(now, 1, "x"), jitter_unit: 0.3 }, &s);
            prop_assert_eq!(n.status, NotifyStatus::Dead);
            prop_assert_eq!(n.total_attempts as usize, s.attempts());
        }
    }
}
