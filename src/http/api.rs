//! The merchant API: pay, query, close, refunds, listings, the bill.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use paygate_actors::error::{CoreError, CoreResult, ErrorCode};
use paygate_actors::ids::{is_valid_external_id, PayOrderNo};
use paygate_actors::merchant::{MerchantDirectory, MerchantProfile};
use paygate_actors::money::{Currency, Money};
use paygate_actors::notification::Notification;
use paygate_actors::notifier::ResendWhat;
use paygate_actors::order::{LatePayment, Order, OrderSpec, PayMethod, PayScene};
use paygate_actors::order_actor::{OrderRequest, PaySubmission};
use paygate_actors::ports::{ListCursor, ListQuery, StorageError};
use paygate_actors::refund::{Refund, RefundSpec};
use paygate_actors::registry::OrderTarget;
use paygate_actors::shared_order::SharedOrder;
use serde::Serialize;

use super::envelope::{success, success_body, success_bytes, success_from, ApiError, HttpResponse, Shown};
use super::params::{self, optional, required, Params};
use super::App;
use crate::config::{Config, ConfigError};
use crate::time_fmt::Rfc3339;

/// Parses and authenticates a signed request body, and takes the request from the
/// merchant's rate limit (after the signature: a forger cannot spend a merchant's rate).
fn authenticate<'a>(app: &App, body: &'a [u8]) -> Result<(Params<'a>, Arc<MerchantProfile>), ApiError> {
    let (params, merchant) = authenticate_with(&app.merchants, app.clock.now_ms() / 1000, body)?;
    if let Err(wait) = app.merchants.admit(&merchant.merchant_id, app.now_us()) {
        metrics::counter!("paygate_rate_limited_total", "scope" => "merchant", "merchant_id" => merchant.merchant_id.clone())
            .increment(1);
        return Err(ApiError::RateLimited { retry_after: wait, scope: "this merchant's" });
    }
    Ok((params, merchant))
}

/// Parses a signed request body and authenticates it against `merchants` at `now_secs`.
pub fn authenticate_with<'a>(
    merchants: &MerchantDirectory,
    now_secs: i64,
    body: &'a [u8],
) -> Result<(Params<'a>, Arc<MerchantProfile>), CoreError> {
    let params = params::parse(body)?;
    params::require_auth_fields(&params)?;
    let merchant = merchants.authenticate(&params, now_secs)?;
    Ok((params, merchant))
}

/// Bounds how long a request waits for its order.
async fn bounded<T>(app: &App, fut: impl std::future::Future<Output = CoreResult<T>>) -> CoreResult<T> {
    tokio::time::timeout(app.request_timeout, fut).await.unwrap_or_else(|_| {
        Err(CoreError::new(
            ErrorCode::SystemError,
            "the request timed out inside the gateway; repeat the same request to learn its outcome",
        ))
    })
}

/// `POST /api/v1/payment/pay`.
pub async fn pay(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let (params, merchant) = authenticate(app, body)?;
    let spec = pay_spec(&app.limits, &params, &merchant)?;
    notify_url_allowed(app, &merchant, spec.notify_url.as_deref()).await?;
    let expire_minutes = spec.expire_minutes.unwrap_or(merchant.expire_minutes);
    let strategy = app.merchants.strategy(&merchant.merchant_id, spec.pay_method);
    let route = app.channels.route(spec.pay_method, spec.amount, app.clock.now_ms(), strategy, rand::random());
    let target = OrderTarget::Key { merchant_id: spec.merchant_id.clone(), order_no: spec.order_no.clone() };
    let caller = Some(spec.merchant_id.clone());
    let expire_after_ms = i64::from(expire_minutes) * app.minute_ms;
    let buyer_account = buyer_account(&params)?;
    let request = OrderRequest::Pay(Box::new(PaySubmission { spec, route, expire_after_ms, buyer_account }));
    let order = bounded(app, app.router.dispatch(target, request, caller)).await?;
    metrics::counter!("paygate_payments_created_total", "channel" => order.channel.clone()).increment(1);
    Ok(success_from(pay_answer(&app.public_url, &order)))
}

/// Refuses a `notify_url` on an internal address unless `merchant` may be notified there.
async fn notify_url_allowed(app: &App, merchant: &MerchantProfile, url: Option<&str>) -> CoreResult<()> {
    match url {
        Some(url) if !merchant.allow_private_notify => {
            app.url_guard.check(url).await.map_err(|why| CoreError::invalid("notify_url", why))
        }
        _ => Ok(()),
    }
}

/// `POST /api/v1/payment/query`.
pub async fn query(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let (params, merchant) = authenticate(app, body)?;
    let target = order_target(&params, &merchant)?;
    let order = bounded(app, app.router.read(target, Some(&merchant.merchant_id))).await?;
    Ok(success_from(query_answer(&app.public_url, &order)))
}

/// The query answer for `order`'s state. Merchants poll an order until it changes, so
/// it is rendered on the state's first query and kept with the state for the rest.
pub fn query_answer(public_url: &str, order: &SharedOrder) -> Bytes {
    order.answer(|o| success_body(&order_view(public_url, o)))
}

/// `POST /api/v1/payment/close`.
pub async fn close(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let (params, merchant) = authenticate(app, body)?;
    let target = order_target(&params, &merchant)?;
    let caller = Some(merchant.merchant_id.clone());
    let order = bounded(app, app.router.dispatch(target, OrderRequest::Close, caller)).await?;
    Ok(success(&order_view(&app.public_url, &order)))
}

fn order_target(params: &Params, merchant: &MerchantProfile) -> Result<OrderTarget, CoreError> {
    if let Some(id) = params.get("pay_order_no").filter(|v| !v.is_empty()) {
        let id =
            PayOrderNo::parse(id).ok_or_else(|| CoreError::invalid("pay_order_no", "is not a paygate order number"))?;
        return Ok(OrderTarget::Id(id));
    }
    match params.get("order_no").filter(|v| !v.is_empty()) {
        Some(no) if is_valid_external_id(no) => {
            Ok(OrderTarget::Key { merchant_id: merchant.merchant_id.clone(), order_no: no.to_string() })
        }
        Some(_) => Err(CoreError::invalid("order_no", "must be 1-32 characters of A-Z a-z 0-9 _ -")),
        None => Err(CoreError::invalid("pay_order_no", "or order_no is required")),
    }
}

fn url(field: &str, params: &Params) -> Result<Option<String>, CoreError> {
    let v = optional(params, field, 256)?;
    if let Some(u) = &v {
        if !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(char::is_whitespace) {
            return Err(CoreError::invalid(field, "must be an http:// or https:// URL"));
        }
    }
    Ok(v)
}

/// What a pay request may ask for.
#[derive(Debug, Clone)]
pub struct PayLimits {
    /// Largest amount per currency, minor units.
    pub max_amounts: HashMap<Currency, i64>,
    /// Longest order lifetime a request may ask for, minutes.
    pub max_expire_minutes: u32,
}

impl PayLimits {
    /// The limits `config` sets.
    pub fn from_config(config: &Config) -> Result<PayLimits, ConfigError> {
        let max_amounts = Currency::ALL
            .into_iter()
            .map(|c| config.max_amount(c).map(|m| (c, m)))
            .collect::<Result<HashMap<_, _>, _>>()?;
        Ok(PayLimits { max_amounts, max_expire_minutes: config.orders.max_expire_minutes })
    }
}

/// Validates a pay request into the order spec. Every refusal names the field and rule.
pub fn pay_spec(limits: &PayLimits, params: &Params, merchant: &MerchantProfile) -> Result<OrderSpec, CoreError> {
    let order_no = required(params, "order_no")?;
    if !is_valid_external_id(order_no) {
        return Err(CoreError::invalid("order_no", "must be 1-32 characters of A-Z a-z 0-9 _ -"));
    }
    let currency = match optional(params, "currency", 3)? {
        None => Currency::CNY,
        Some(c) => Currency::from_str(&c).map_err(|e| CoreError::invalid("currency", e))?,
    };
    let amount_text = required(params, "amount")?;
    let max = limits.max_amounts.get(&currency).copied().unwrap_or(0);
    let amount = Money::parse_positive(amount_text, currency, max).map_err(|e| CoreError::invalid("amount", e))?;
    let subject = params::text("subject", required(params, "subject")?, 128)?.to_owned();
    let method_text = required(params, "pay_method")?;
    let pay_method = PayMethod::from_str(method_text).map_err(|()| {
        let all: Vec<&str> = PayMethod::ALL.iter().map(|m| m.as_str()).collect();
        CoreError::invalid("pay_method", format_args!("must be one of {}", all.join(", ")))
    })?;
    let pay_scene = scene(params, pay_method)?;
    let expire_minutes = match optional(params, "expire_minutes", 5)? {
        None => None,
        Some(text) => {
            let max = limits.max_expire_minutes;
            let minutes =
                text.parse::<u32>().ok().filter(|m| (1..=max).contains(m) && text.bytes().all(|b| b.is_ascii_digit()));
            Some(minutes.ok_or_else(|| {
                CoreError::invalid("expire_minutes", format_args!("must be a whole number from 1 to {max}"))
            })?)
        }
    };
    let client_ip = optional(params, "client_ip", 45)?;
    if let Some(ip) = &client_ip {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(CoreError::invalid("client_ip", "must be an IPv4 or IPv6 address"));
        }
    }
    Ok(OrderSpec {
        merchant_id: merchant.merchant_id.clone(),
        order_no: order_no.to_owned(),
        amount,
        subject,
        body: optional(params, "body", 512)?,
        notify_url: url("notify_url", params)?,
        return_url: url("return_url", params)?,
        pay_method,
        pay_scene,
        expire_minutes,
        client_ip,
        device_id: optional(params, "device_id", 64)?,
        user_id: optional(params, "user_id", 64)?,
    })
}

/// The buyer's card or payment account (`buyer_account`): a token or fingerprint that
/// names it, for risk control's lists. A card number is refused, so that none is sent,
/// kept or logged here.
pub fn buyer_account(params: &Params) -> Result<Option<String>, CoreError> {
    let account = optional(params, "buyer_account", 64)?;
    if account.as_deref().is_some_and(is_card_number) {
        return Err(CoreError::invalid(
            "buyer_account",
            "looks like a card number; send the token or fingerprint your card vault gives for it",
        ));
    }
    Ok(account)
}

/// Whether `text` is a payment card number: 12-19 digits (spaces and dashes allowed
/// between them) whose Luhn check digit is right.
fn is_card_number(text: &str) -> bool {
    let digits: Vec<u32> = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_digit(10))
        .collect::<Option<_>>()
        .unwrap_or_default();
    if !(12..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        // Every second digit from the right doubled, its digits summed.
        .map(|(i, &d)| if i % 2 == 1 { d * 2 - if d > 4 { 9 } else { 0 } } else { d })
        .sum();
    sum.is_multiple_of(10)
}

/// The `pay_scene` asked for, which `method` must offer; absent means the method's first.
fn scene(params: &Params, method: PayMethod) -> Result<PayScene, CoreError> {
    let offered = PayScene::offered_by(method);
    let names = || offered.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    match params.get("pay_scene").filter(|v| !v.is_empty()) {
        None => offered.first().copied().ok_or_else(|| CoreError::invalid("pay_method", "offers no pay_scene")),
        Some(text) => PayScene::from_str(text)
            .ok()
            .filter(|s| offered.contains(s))
            .ok_or_else(|| CoreError::invalid("pay_scene", format_args!("for {method} must be one of {}", names()))),
    }
}

/// Where the buyer goes to pay: the channel's own page for a page scene, else our hosted
/// cashier page (which shows the channel's code).
pub fn pay_url<'a>(public_url: &'a str, order: &'a Order) -> PayUrl<'a> {
    match (order.spec.pay_scene.is_page(), &order.code_url) {
        // UnionPay's front form must be posted by the buyer's browser: our page does it.
        (true, Some(url)) if order.spec.pay_method != PayMethod::UnionPay => PayUrl::Channel(url),
        _ => PayUrl::Hosted { public_url, id: &order.pay_order_no },
    }
}

/// An order's `pay_url`, written into the answer without being built first.
#[derive(Debug, Clone, Copy)]
pub enum PayUrl<'a> {
    /// The channel's own page.
    Channel(&'a str),
    /// Our cashier page for the order.
    Hosted {
        /// How buyers reach this node.
        public_url: &'a str,
        /// The order.
        id: &'a PayOrderNo,
    },
}

impl fmt::Display for PayUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayUrl::Channel(url) => f.write_str(url),
            PayUrl::Hosted { public_url, id } => write!(f, "{public_url}/h5/{id}"),
        }
    }
}

/// The channel's code to scan, when the scene is one (a page URL is not a code).
fn scan_code(order: &Order) -> Option<&str> {
    order.code_url.as_deref().filter(|_| !order.spec.pay_scene.is_page())
}

/// The pay answer.
#[derive(Serialize)]
struct PayView<'a> {
    pay_order_no: &'a str,
    order_no: &'a str,
    status: &'static str,
    amount: Shown<Money>,
    currency: &'static str,
    channel: &'a str,
    pay_scene: &'static str,
    pay_url: Shown<PayUrl<'a>>,
    code_url: Option<&'a str>,
    qr_code: Option<String>,
    expire_time: Shown<Rfc3339>,
}

/// The pay answer for `order`, its QR code rendered from the order's code URL. Sent
/// once, not kept, so not shrunk to fit.
pub fn pay_answer(public_url: &str, order: &Order) -> Bytes {
    success_bytes(&pay_view(public_url, order))
}

fn pay_view<'a>(public_url: &'a str, order: &'a Order) -> PayView<'a> {
    PayView {
        pay_order_no: order.pay_order_no.as_str(),
        order_no: &order.spec.order_no,
        status: order.status.as_str(),
        amount: Shown(order.spec.amount),
        currency: order.spec.amount.currency().code(),
        channel: &order.channel,
        pay_scene: order.spec.pay_scene.as_str(),
        pay_url: Shown(pay_url(public_url, order)),
        code_url: scan_code(order),
        qr_code: scan_code(order).and_then(super::qr),
        expire_time: Shown(Rfc3339(order.expire_time)),
    }
}

/// The order as the query and close answers show it.
#[derive(Serialize)]
pub struct OrderView<'a> {
    pay_order_no: &'a str,
    order_no: &'a str,
    merchant_id: &'a str,
    amount: Shown<Money>,
    currency: &'static str,
    status: &'static str,
    channel: &'a str,
    pay_method: &'static str,
    pay_scene: &'static str,
    subject: &'a str,
    channel_trade_no: Option<&'a str>,
    pay_url: Shown<PayUrl<'a>>,
    refunded_amount: Shown<Money>,
    create_time: Shown<Rfc3339>,
    update_time: Shown<Rfc3339>,
    expire_time: Shown<Rfc3339>,
    paid_time: Option<Shown<Rfc3339>>,
    #[serde(skip_serializing_if = "LatePayments::is_empty")]
    late_payments: LatePayments<'a>,
}

/// Payments the channel took after the order was final, shown without copying them.
pub struct LatePayments<'a>(&'a [LatePayment], Currency);

impl LatePayments<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for LatePayments<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Late<'a> {
            channel_trade_no: &'a str,
            amount: Shown<Money>,
            time: Shown<Rfc3339>,
        }
        s.collect_seq(self.0.iter().map(|p| Late {
            channel_trade_no: &p.channel_trade_no,
            amount: Shown(Money::from_minor(p.amount_minor, self.1)),
            time: Shown(Rfc3339(p.at)),
        }))
    }
}

/// The order as the query and close answers show it; `public_url` is how buyers reach
/// this node.
pub fn order_view<'a>(public_url: &'a str, order: &'a Order) -> OrderView<'a> {
    let refunded = Money::from_minor(order.refunded_minor, order.spec.amount.currency());
    OrderView {
        pay_order_no: order.pay_order_no.as_str(),
        order_no: &order.spec.order_no,
        merchant_id: &order.spec.merchant_id,
        amount: Shown(order.spec.amount),
        currency: order.spec.amount.currency().code(),
        status: order.status.as_str(),
        channel: &order.channel,
        pay_method: order.spec.pay_method.as_str(),
        pay_scene: order.spec.pay_scene.as_str(),
        subject: &order.spec.subject,
        channel_trade_no: order.channel_trade_no.as_deref(),
        pay_url: Shown(pay_url(public_url, order)),
        refunded_amount: Shown(refunded),
        create_time: Shown(Rfc3339(order.create_time)),
        update_time: Shown(Rfc3339(order.update_time)),
        expire_time: Shown(Rfc3339(order.expire_time)),
        paid_time: order.paid_time.map(|t| Shown(Rfc3339(t))),
        late_payments: LatePayments(&order.late_payments, order.spec.amount.currency()),
    }
}

/// One attempt as the notify APIs show it.
#[derive(Serialize)]
struct AttemptView<'a> {
    time: Shown<Rfc3339>,
    http_status: Option<u16>,
    latency_ms: u32,
    answer: &'a str,
    error: Option<&'a str>,
    acknowledged: bool,
}

/// A notification as the notify APIs show it.
#[derive(Serialize)]
pub struct NotificationView<'a> {
    notify_id: &'a str,
    notify_type: &'static str,
    status: &'static str,
    sequence: u64,
    order_status: Option<&'a str>,
    url: Option<&'a str>,
    create_time: Shown<Rfc3339>,
    next_attempt_time: Option<Shown<Rfc3339>>,
    attempts_total: u32,
    attempts: Vec<AttemptView<'a>>,
}

/// How `n` is shown; `default_url` is its merchant's, used when the order named none.
pub fn notification_view<'a>(n: &'a Notification, default_url: Option<&'a str>) -> NotificationView<'a> {
    NotificationView {
        notify_id: &n.notify_id,
        notify_type: n.notify_type.as_str(),
        status: n.status.as_str(),
        sequence: n.sequence,
        order_status: n.fields.get("status").map(String::as_str),
        url: n.url.as_deref().or(default_url),
        create_time: Shown(Rfc3339(n.created_at)),
        next_attempt_time: n.due.map(|t| Shown(Rfc3339(t))),
        attempts_total: n.total_attempts,
        attempts: n
            .attempts
            .iter()
            .map(|a| AttemptView {
                time: Shown(Rfc3339(a.at)),
                http_status: a.http_status,
                latency_ms: a.latency_ms,
                answer: &a.answer,
                error: a.error.as_deref(),
                acknowledged: a.acknowledged,
            })
            .collect(),
    }
}

/// The merchant's order a signed notify request names.
async fn notified_order(app: &App, params: &Params<'_>, merchant: &MerchantProfile) -> CoreResult<Arc<SharedOrder>> {
    let target = order_target(params, merchant)?;
    bounded(app, app.router.read(target, Some(&merchant.merchant_id))).await
}

/// `POST /api/v1/notify/query`: an order's notifications with their attempts.
pub async fn notify_query(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let (params, merchant) = authenticate(app, body)?;
    let order = notified_order(app, &params, &merchant).await?;
    let list = app.notifications.of_order(&order.pay_order_no).map_err(StorageError::into_core)?;
    let views: Vec<_> = list.iter().map(|n| notification_view(n, merchant.notify_url.as_deref())).collect();
    Ok(success(&serde_json::json!({
        "pay_order_no": order.pay_order_no.as_str(),
        "order_no": order.spec.order_no,
        "notifications": views,
    })))
}

/// `POST /api/v1/notify/resend`: sends the order's latest notification again now.
pub async fn notify_resend(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let (params, merchant) = authenticate(app, body)?;
    let order = notified_order(app, &params, &merchant).await?;
    let what = ResendWhat::Latest(order.pay_order_no.clone());
    let resent = bounded(app, app.notifier.resend(&merchant.merchant_id, what)).await?;
    let Some(n) = resent.last() else {
        return Err(CoreError::new(
            ErrorCode::OrderStatusError,
            format!(
                "order {} is {} and has no notification yet: one is sent when the order reaches a final state",
                order.pay_order_no, order.status
            ),
        )
        .into());
    };
    Ok(success(&notification_view(n, merchant.notify_url.as_deref())))
}

/// A refund as the refund APIs show it.
#[derive(Serialize)]
pub struct RefundView<'a> {
    refund_order_no: &'a str,
    refund_no: &'a str,
    pay_order_no: &'a str,
    order_no: &'a str,
    merchant_id: &'a str,
    refund_amount: Shown<Money>,
    currency: &'static str,
    status: &'static str,
    reason: Option<&'a str>,
    failure: Option<&'a str>,
    create_time: Shown<Rfc3339>,
    update_time: Shown<Rfc3339>,
    finish_time: Option<Shown<Rfc3339>>,
    order_status: &'static str,
    order_amount: Shown<Money>,
    refunded_amount: Shown<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    late_payment: Option<&'a str>,
}

/// How `refund` of `order` is shown.
pub fn refund_view<'a>(order: &'a Order, refund: &'a Refund) -> RefundView<'a> {
    let currency = order.spec.amount.currency();
    RefundView {
        refund_order_no: &refund.refund_order_no,
        refund_no: &refund.spec.refund_no,
        pay_order_no: order.pay_order_no.as_str(),
        order_no: &order.spec.order_no,
        merchant_id: &order.spec.merchant_id,
        refund_amount: Shown(Money::from_minor(refund.spec.amount_minor, currency)),
        currency: currency.code(),
        status: refund.status.as_str(),
        reason: refund.spec.reason.as_deref(),
        failure: refund.failure.as_deref(),
        create_time: Shown(Rfc3339(refund.create_time)),
        update_time: Shown(Rfc3339(refund.update_time)),
        finish_time: refund.finish_time.map(|t| Shown(Rfc3339(t))),
        order_status: order.status.as_str(),
        order_amount: Shown(order.spec.amount),
        refunded_amount: Shown(Money::from_minor(order.refunded_minor, currency)),
        late_payment: refund.late_payment.as_deref(),
    }
}

/// The refund numbers this node took most recently, by (merchant, refund_no) → their
/// order: what the views' index may not show yet (it trails the journal by
/// milliseconds, and a merchant asks right away), and the reservation that keeps two
/// concurrent requests from using one number on two orders. Bounded: once full it is
/// cleared, long after the views caught up with its entries.
#[derive(Default)]
pub struct RecentRefunds(dashmap::DashMap<(String, String), PayOrderNo>);

/// Entries [`RecentRefunds`] holds before it starts again.
const RECENT_REFUNDS: usize = 65_536;

impl RecentRefunds {
    /// Reserves `refund_no` for `order`; `false` when it names a refund of another order.
    pub fn reserve(&self, app: &App, merchant_id: &str, refund_no: &str, order: &PayOrderNo) -> CoreResult<bool> {
        if let Some(known) = self.order_of(app, merchant_id, refund_no)? {
            return Ok(known == *order);
        }
        if self.0.len() >= RECENT_REFUNDS {
            self.0.clear();
        }
        let key = (merchant_id.to_owned(), refund_no.to_owned());
        Ok(*self.0.entry(key).or_insert_with(|| order.clone()) == *order)
    }

    /// Lets a number go that no refund was recorded under.
    fn release(&self, merchant_id: &str, refund_no: &str, order: &PayOrderNo) {
        self.0.remove_if(&(merchant_id.to_owned(), refund_no.to_owned()), |_, o| o == order);
    }

    /// The order whose refund `refund_no` names: from the views, else from what this
    /// node just took.
    fn order_of(&self, app: &App, merchant_id: &str, refund_no: &str) -> CoreResult<Option<PayOrderNo>> {
        let store = &app.router.context().store;
        let found = store.find_refund(merchant_id, refund_no).map_err(StorageError::into_core)?;
        match found.as_deref().and_then(Refund::order_of) {
            Some(order) => Ok(Some(order)),
            None => Ok(self.0.get(&(merchant_id.to_owned(), refund_no.to_owned())).map(|o| o.value().clone())),
        }
    }
}

/// A merchant's refund number, as the refund APIs accept it.
fn refund_no<'a>(params: &'a Params) -> Result<&'a str, CoreError> {
    let no = required(params, "refund_no")?;
    if !is_valid_external_id(no) {
        return Err(CoreError::invalid("refund_no", "must be 1-32 characters of A-Z a-z 0-9 _ -"));
    }
    Ok(no)
}

/// `POST /api/v1/refund/apply`: refunds part or all of a paid order. The same request
/// again answers the same refund.
pub async fn refund_apply(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let (params, merchant) = authenticate(app, body)?;
    let target = order_target(&params, &merchant)?;
    let refund_no = refund_no(&params)?.to_owned();
    let amount_text = required(&params, "refund_amount")?;
    let reason = match optional(&params, "reason", 256)? {
        Some(r) => Some(params::text("reason", &r, 256)?.to_owned()),
        None => None,
    };
    let notify_url = url("notify_url", &params)?;
    notify_url_allowed(app, &merchant, notify_url.as_deref()).await?;
    let caller = Some(merchant.merchant_id.as_str());
    let order = bounded(app, app.router.read(target, caller)).await?;
    let currency = order.spec.amount.currency();
    let max = app.limits.max_amounts.get(&currency).copied().unwrap_or(0);
    let amount =
        Money::parse_positive(amount_text, currency, max).map_err(|e| CoreError::invalid("refund_amount", e))?;
    // A refund number names one refund of the merchant, whatever the order.
    let merchant_id = merchant.merchant_id.clone();
    if !app.recent_refunds.reserve(app, &merchant_id, &refund_no, &order.pay_order_no)? {
        return Err(CoreError::new(
            ErrorCode::IdempotencyConflict,
            format!("refund_no {refund_no} was used for another order"),
        )
        .into());
    }
    let spec = RefundSpec { refund_no: refund_no.clone(), amount_minor: amount.minor(), reason, notify_url };
    let id = order.pay_order_no.clone();
    let refunded = bounded(
        app,
        app.router.dispatch(OrderTarget::Id(id.clone()), OrderRequest::Refund(spec), Some(merchant_id.clone())),
    )
    .await;
    let order = refunded.inspect_err(|_| app.recent_refunds.release(&merchant_id, &refund_no, &id))?;
    let refund = order.refund(&refund_no).ok_or_else(|| CoreError::system("the refund was not recorded"))?;
    Ok(success(&refund_view(&order, refund)))
}

/// `POST /api/v1/refund/query`: a refund by `refund_order_no`, or by `refund_no` (with
/// its order's `order_no` or `pay_order_no`, or alone).
pub async fn refund_query(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let (params, merchant) = authenticate(app, body)?;
    let not_found = || CoreError::new(ErrorCode::OrderNotFound, "no such refund");
    let (target, by_number) = match (params.get("refund_order_no").filter(|v| !v.is_empty()), params.get("refund_no")) {
        (Some(no), _) => {
            let order = Refund::order_of(no)
                .ok_or_else(|| CoreError::invalid("refund_order_no", "is not a paygate refund number"))?;
            (OrderTarget::Id(order), Some(no.to_string()))
        }
        (None, Some(_)) => {
            let no = refund_no(&params)?;
            let named = params.get("pay_order_no").or(params.get("order_no")).is_some_and(|v| !v.is_empty());
            if named {
                (order_target(&params, &merchant)?, None)
            } else {
                let order = app.recent_refunds.order_of(app, &merchant.merchant_id, no)?.ok_or_else(not_found)?;
                (OrderTarget::Id(order), None)
            }
        }
        (None, None) => return Err(CoreError::invalid("refund_order_no", "or refund_no is required").into()),
    };
    let order = bounded(app, app.router.read(target, Some(&merchant.merchant_id))).await?;
    let refund = match &by_number {
        Some(no) => order.refunds.iter().find(|r| r.refund_order_no == *no),
        None => params.get("refund_no").and_then(|no| order.refund(no)),
    };
    let refund = refund.ok_or_else(not_found)?;
    Ok(success(&refund_view(&order, refund)))
}

/// The most records one listing page answers.
const LIST_MAX: usize = 100;

/// A listing's parameters: the creation-time range, an optional status among
/// `statuses`, the page size and where to continue.
fn list_query(
    params: &Params,
    merchant: &MerchantProfile,
    statuses: &[&'static str],
    now_ms: i64,
) -> Result<ListQuery, CoreError> {
    let time = |field: &'static str| -> Result<Option<i64>, CoreError> {
        optional(params, field, 40)?
            .map(|t| {
                crate::time_fmt::parse_rfc3339(&t)
                    .ok_or_else(|| CoreError::invalid(field, "must be an RFC 3339 time, e.g. 2024-01-01T00:00:00Z"))
            })
            .transpose()
    };
    let from_ms = time("start_time")?.ok_or_else(|| CoreError::invalid("start_time", "is required"))?;
    // Without an end the range is open; one starting in the future is then empty, not
    // an error (only an end the merchant gave can be before the start).
    let to_ms = match time("end_time")? {
        Some(to_ms) if to_ms <= from_ms => return Err(CoreError::invalid("end_time", "must be after start_time")),
        Some(to_ms) => to_ms,
        None => (now_ms + 1).max(from_ms),
    };
    let status =
        match optional(params, "status", 32)? {
            None => None,
            Some(s) => {
                Some(statuses.iter().copied().find(|known| *known == s).ok_or_else(|| {
                    CoreError::invalid("status", format_args!("must be one of {}", statuses.join(", ")))
                })?)
            }
        };
    let limit = match optional(params, "limit", 3)? {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=LIST_MAX).contains(l))
            .ok_or_else(|| CoreError::invalid("limit", format_args!("must be 1 to {LIST_MAX}")))?,
    };
    let after = optional(params, "cursor", 128)?.map(|c| decode_cursor(&c)).transpose()?;
    Ok(ListQuery { merchant_id: merchant.merchant_id.clone(), from_ms, to_ms, status, after, limit })
}

fn encode_cursor(c: &ListCursor) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}.{}", c.time, c.id))
}

fn decode_cursor(text: &str) -> Result<ListCursor, CoreError> {
    use base64::Engine;
    let bad = || CoreError::invalid("cursor", "is not a cursor this API gave");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (time, id) = raw.split_once('.').ok_or_else(bad)?;
    let time = time.parse().map_err(|_| bad())?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    Ok(ListCursor { time, id: id.to_owned() })
}

/// `POST /api/v1/payment/list`: the merchant's orders created in a time range, newest
/// first, optionally of one status; `next_cursor` continues the listing.
pub async fn payment_list(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let (params, merchant) = authenticate(app, body)?;
    let statuses: Vec<&'static str> = paygate_actors::order::OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
    let query = list_query(&params, &merchant, &statuses, app.clock.now_ms())?;
    let page = app.router.context().store.list_orders(&query).map_err(StorageError::into_core)?;
    let orders: Vec<_> = page.items.iter().map(|o| order_view(&app.public_url, o)).collect();
    Ok(success(&serde_json::json!({ "orders": orders, "next_cursor": page.next.as_ref().map(encode_cursor) })))
}

/// `POST /api/v1/refund/list`: the merchant's refunds asked for in a time range, newest
/// first, optionally of one status; `next_cursor` continues the listing.
pub async fn refund_list(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let (params, merchant) = authenticate(app, body)?;
    let statuses: Vec<&'static str> = paygate_actors::refund::RefundStatus::ALL.iter().map(|s| s.as_str()).collect();
    let query = list_query(&params, &merchant, &statuses, app.clock.now_ms())?;
    let page = app.router.context().store.list_refunds(&query).map_err(StorageError::into_core)?;
    let refunds: Vec<_> = page
        .items
        .iter()
        .filter_map(|(order, no)| {
            order.refunds.iter().find(|r| r.refund_order_no == *no).map(|r| refund_view(order, r))
        })
        .collect();
    Ok(success(&serde_json::json!({ "refunds": refunds, "next_cursor": page.next.as_ref().map(encode_cursor) })))
}

/// Lines read from the views per step of a bill, and the size a chunk of the file
/// reaches before it is sent.
const BILL_STEP: usize = 1_000;
const BILL_CHUNK: usize = 64 * 1024;

/// The columns of a bill file.
const BILL_COLUMNS: [&str; 17] = [
    "type",
    "bill_date",
    "pay_order_no",
    "order_no",
    "refund_order_no",
    "refund_no",
    "channel",
    "channel_trade_no",
    "pay_method",
    "status",
    "currency",
    "amount",
    "refund_amount",
    "fee",
    "create_time",
    "finish_time",
    "reason",
];

/// One line of a bill file.
fn bill_line(
    item: &paygate_actors::ports::BillItem,
    date: &str,
    channels: &paygate_actors::channel::ChannelDirectory,
) -> [String; 17] {
    use paygate_actors::ports::BillItem;
    let shown = |ms: Option<i64>| ms.map(|t| Rfc3339(t).to_string()).unwrap_or_default();
    match item {
        BillItem::Payment(o) => {
            let currency = o.spec.amount.currency();
            // What the payment came to that day: refunds since are lines of their own.
            let paid = o.status.is_paid();
            let status = if paid { "SUCCESS" } else { o.status.as_str() };
            let fee = match (paid, channels.get(&o.channel)) {
                // The channel's share, rounded half away from zero to a minor unit.
                (true, Some(c)) => {
                    let exact = rust_decimal::Decimal::from(o.spec.amount.minor()) * c.profile.fee_rate;
                    let minor = exact.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
                    Money::from_minor(i64::try_from(minor.mantissa()).unwrap_or(0), currency).to_string()
                }
                _ => Money::from_minor(0, currency).to_string(),
            };
            [
                "PAY".into(),
                date.into(),
                o.pay_order_no.as_str().into(),
                o.spec.order_no.clone(),
                String::new(),
                String::new(),
                o.channel.clone(),
                o.channel_trade_no.clone().unwrap_or_default(),
                o.spec.pay_method.as_str().into(),
                status.into(),
                currency.code().into(),
                o.spec.amount.to_string(),
                String::new(),
                fee,
                shown(Some(o.create_time)),
                shown(o.paid_time.or(Some(o.update_time))),
                o.failure.clone().unwrap_or_default(),
            ]
        }
        BillItem::Refund(o, no) => {
            let currency = o.spec.amount.currency();
            let r = o.refunds.iter().find(|r| r.refund_order_no == *no);
            [
                "REFUND".into(),
                date.into(),
                o.pay_order_no.as_str().into(),
                o.spec.order_no.clone(),
                no.clone(),
                r.map(|r| r.spec.refund_no.clone()).unwrap_or_default(),
                o.channel.clone(),
                o.channel_trade_no.clone().unwrap_or_default(),
                o.spec.pay_method.as_str().into(),
                r.map_or("", |r| r.status.as_str()).into(),
                currency.code().into(),
                o.spec.amount.to_string(),
                r.map(|r| Money::from_minor(r.spec.amount_minor, currency).to_string()).unwrap_or_default(),
                Money::from_minor(0, currency).to_string(),
                shown(r.map(|r| r.create_time)),
                shown(r.and_then(|r| r.finish_time)),
                r.and_then(|r| r.failure.clone().or_else(|| r.spec.reason.clone())).unwrap_or_default(),
            ]
        }
    }
}

/// `POST /api/v1/bill/download`: the merchant's bill of a business day that has ended —
/// every payment and refund that reached its final state that day — as CSV, streamed.
pub async fn bill_download(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let (params, merchant) = authenticate(app, body)?;
    let date = required(&params, "bill_date")?.to_owned();
    let day = crate::time_fmt::parse_date(&date)
        .ok_or_else(|| CoreError::invalid("bill_date", "must be a date as YYYY-MM-DD"))?;
    if day >= paygate_actors::daily_volume::business_day(app.clock.now_ms()) {
        return Err(CoreError::invalid(
            "bill_date",
            format_args!("{date} has not ended (business days end at 00:00 UTC+8)"),
        )
        .into());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let store = std::sync::Arc::clone(&app.router.context().store);
    let channels = app.channels.clone();
    let merchant_id = merchant.merchant_id.clone();
    let file = format!("attachment; filename=\"bill-{merchant_id}-{date}.csv\"");
    tokio::task::spawn_blocking(move || {
        let mut csv = csv::Writer::from_writer(ChunkSink { chunk: Vec::with_capacity(BILL_CHUNK), tx });
        let _ = csv.write_record(BILL_COLUMNS);
        let mut after: Option<String> = None;
        loop {
            let page = match store.bill(&merchant_id, day, after.as_deref(), BILL_STEP) {
                Ok(page) => page,
                Err(e) => {
                    // The answer has begun: a cut-short file is the only way to say so.
                    tracing::error!(error = %e, %merchant_id, day, "reading the bill failed; the file is cut short");
                    return;
                }
            };
            for item in &page.items {
                if csv.write_record(bill_line(item, &date, &channels)).is_err() {
                    return; // the merchant went away
                }
            }
            match page.next {
                Some(next) => after = Some(next.id),
                None => break,
            }
        }
        if let Ok(mut sink) = csv.into_inner() {
            sink.send();
        }
    });
    let mut resp = super::envelope::streamed("text/csv; charset=utf-8", rx);
    if let Ok(v) = hyper::header::HeaderValue::from_str(&file) {
        resp.headers_mut().insert(hyper::header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Where a bill file is written: bytes gather into chunks, each sent to the answer as it
/// fills (waiting while the merchant reads slower than we write).
struct ChunkSink {
    chunk: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
}

impl ChunkSink {
    fn send(&mut self) -> bool {
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(BILL_CHUNK));
        chunk.is_empty() || self.tx.blocking_send(Bytes::from(chunk)).is_ok()
    }
}

impl std::io::Write for ChunkSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.chunk.extend_from_slice(buf);
        if self.chunk.len() >= BILL_CHUNK && !self.send() {
            return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the merchant went away"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_card_number_is_told_from_a_token() {
        for card in ["4111111111111111", "4111 1111 1111 1111", "5500-0000-0000-0004", "6212345678901265"] {
            assert!(super::is_card_number(card), "{card}");
        }
        for token in ["4111111111111112", "tok_4111111111111111", "12345", "62123456789012650000", ""] {
            assert!(!super::is_card_number(token), "{token}");
        }
    }
}
