//! The Alipay open-platform adapter (RSA2): precreate (QR), query, close, refund, refund
//! query, bill download and verified notifications. Every request is signed with the
//! app's private key; no response is believed before its signature checks out with the
//! Alipay public key. A timeout, a 5xx, a system error or an unverifiable answer is an
//! unknown outcome, never a failure.

pub mod bill;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use paygate_actors::clock::Clock;
use paygate_actors::clock::SystemClock;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::order::{ChannelNotice, PayScene};
use paygate_actors::ports::{
    BillLine, BoxFuture, CallbackReply, CallbackRequest, ChannelConnector, ChannelError, ChannelOrder, ChannelRefund,
    CreateAccepted, TradeRef, Verified, VerifiedCallback, VerifiedRefund,
};
use paygate_actors::refund::RefundState;
use serde_json::{json, Value};

use self::wire::Params;
use crate::crypto::{RsaSigner, RsaVerifier};
use crate::http::client::HttpClient;

/// What the adapter needs (channel settings in `channels.toml`).
#[derive(Debug, Clone)]
pub struct AlipaySettings {
    /// The app's id at Alipay.
    pub app_id: String,
    /// The merchant's partner id (`2088…`), when configured: a notification must name it
    /// as `seller_id`, or it concerns another merchant's trade.
    pub seller_id: Option<String>,
    /// The gateway, e.g. `https://openapi.alipay.com/gateway.do`.
    pub gateway_url: String,
    /// Signs our requests.
    pub app_private_key: RsaSigner,
    /// Checks Alipay's answers and notifications.
    pub alipay_public_key: RsaVerifier,
    /// Where Alipay posts notifications (our `/callback/alipay`).
    pub notify_url: String,
    /// Longest a call may take.
    pub timeout: Duration,
}

/// Alipay behind the channel interface: one pooled HTTPS client, the app's keys.
pub struct AlipayConnector {
    /// `alipay:<app_id>` ([`ChannelConnector::account`]).
    account: String,
    settings: Arc<AlipaySettings>,
    http: HttpClient,
}

impl AlipayConnector {
    /// A connector calling through `http` (its own pooled client, trusting what the
    /// channel is configured to trust).
    pub fn new(settings: AlipaySettings, http: HttpClient) -> AlipayConnector {
        AlipayConnector { account: format!("alipay:{}", settings.app_id), settings: Arc::new(settings), http }
    }
}

fn text(node: &Value, field: &str) -> String {
    node.get(field).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// Calls `method` with `biz` and returns the verified response node of a successful
/// call (code 10000).
/// The signed common parameters of a call to `method` with `biz` as biz_content.
fn signed_params(s: &AlipaySettings, method: &str, biz: &Value, return_url: Option<&str>) -> Params {
    let mut params: Params = [
        ("app_id", s.app_id.as_str()),
        ("method", method),
        ("format", "JSON"),
        ("charset", "utf-8"),
        ("version", "1.0"),
        ("notify_url", s.notify_url.as_str()),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    params.insert("timestamp".into(), wire::timestamp(SystemClock.now_ms()));
    params.insert("biz_content".into(), biz.to_string());
    if let Some(url) = return_url {
        params.insert("return_url".into(), url.to_owned());
    }
    wire::sign_request(&mut params, &s.app_private_key);
    params
}

/// Sets the trade's price: `total_amount` in the order's currency, and for any currency
/// but CNY its `trans_currency` (Alipay's pricing currency for cross-border trades).
fn priced(biz: &mut Value, amount: paygate_actors::money::Money) {
    // Every caller passes a json! object; `IndexMut` would panic on anything else.
    let Some(fields) = biz.as_object_mut() else { return };
    fields.insert("total_amount".into(), Value::String(amount.to_string()));
    if amount.currency() != paygate_actors::money::Currency::CNY {
        fields.insert("trans_currency".into(), Value::String(amount.currency().code().to_owned()));
    }
}

/// Page and wap pay are not server calls: the buyer's browser opens the gateway with a
/// signed request, so the order's pay_url is that request as a GET URL.
fn page_pay_url(s: &AlipaySettings, order: &ChannelOrder) -> String {
    let (method, product) = match order.scene {
        PayScene::Wap => ("alipay.trade.wap.pay", "QUICK_WAP_WAY"),
        _ => ("alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY"),
    };
    let mut biz = json!({
        "out_trade_no": order.pay_order_no.as_str(),
        "subject": order.subject,
        "product_code": product,
        "time_expire": wire::timestamp(order.expire_time),
    });
    priced(&mut biz, order.amount);
    let params = signed_params(s, method, &biz, order.return_url.as_deref());
    let sep = if s.gateway_url.contains('?') { '&' } else { '?' };
    format!("{}{sep}{}", s.gateway_url, wire::form(&params))
}

async fn call(s: &AlipaySettings, http: &HttpClient, method: &str, biz: Value) -> Result<Value, ChannelError> {
    let params = signed_params(s, method, &biz, None);
    let answer = http
        .post(
            &s.gateway_url,
            "application/x-www-form-urlencoded;charset=utf-8",
            wire::form(&params).into_bytes(),
            s.timeout,
        )
        .await
        .map_err(|e| crate::channels::unanswered(method, e))?;
    if answer.status >= 500 {
        return Err(crate::channels::bad_status(method, answer.status));
    }
    let body = std::str::from_utf8(&answer.body)
        .map_err(|_| ChannelError::unknown(format_args!("{method}: answer is not UTF-8")))?;
    let Some(node) = wire::verified_node(body, method, &s.alipay_public_key) else {
        metrics::counter!("paygate_alerts_total", "kind" => "channel_answer_unverified").increment(1);
        return Err(ChannelError::unknown(format_args!("{method}: the answer's signature did not verify")));
    };
    let (code, sub_code) = (text(&node, "code"), text(&node, "sub_code"));
    match code.as_str() {
        "10000" => Ok(node),
        // Service unavailable, or a system error: the same call may be repeated.
        "20000" => Err(ChannelError::unknown(format_args!("{method}: {code} {}", text(&node, "sub_msg")))),
        _ if sub_code == "ACQ.SYSTEM_ERROR" => Err(ChannelError::unknown(format_args!("{method}: {sub_code}"))),
        _ => Err(ChannelError::Rejected {
            code: if sub_code.is_empty() { code } else { sub_code },
            message: match text(&node, "sub_msg") {
                m if m.is_empty() => text(&node, "msg"),
                m => m,
            },
        }),
    }
}

/// Where a trade stands, from its `trade_status` and amounts.
fn notice(status: &str, trade_no: &str, total_amount: &str, refunded: bool) -> Option<ChannelNotice> {
    let paid =
        || Some(ChannelNotice::Paid { channel_trade_no: trade_no.to_owned(), amount_minor: wire::fen(total_amount)? });
    match status {
        "WAIT_BUYER_PAY" => Some(ChannelNotice::NotPaid),
        "TRADE_SUCCESS" | "TRADE_FINISHED" => paid(),
        // Closed after a full refund: it was paid.
        "TRADE_CLOSED" if refunded => paid(),
        "TRADE_CLOSED" => Some(ChannelNotice::Closed),
        _ => None,
    }
}

impl ChannelConnector for AlipayConnector {
    fn gateway_url(&self) -> &str {
        &self.settings.gateway_url
    }

    fn account(&self) -> &str {
        &self.account
    }

    fn create_order(&self, order: ChannelOrder) -> BoxFuture<Result<CreateAccepted, ChannelError>> {
        if order.scene.is_page() {
            let url = page_pay_url(&self.settings, &order);
            return Box::pin(async move { Ok(CreateAccepted { code_url: url, channel_trade_no: None }) });
        }
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let mut biz = json!({
                "out_trade_no": order.pay_order_no.as_str(),
                "subject": order.subject,
                "time_expire": wire::timestamp(order.expire_time),
            });
            priced(&mut biz, order.amount);
            let node = call(&s, &http, "alipay.trade.precreate", biz).await?;
            let qr = text(&node, "qr_code");
            if qr.is_empty() {
                return Err(ChannelError::unknown("alipay.trade.precreate: no qr_code in a successful answer"));
            }
            Ok(CreateAccepted { code_url: qr, channel_trade_no: None })
        })
    }

    fn query_order(&self, trade: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move { query(&s, &http, &trade.pay_order_no).await })
    }

    fn close_order(&self, trade: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let biz = json!({ "out_trade_no": trade.pay_order_no.as_str() });
            match call(&s, &http, "alipay.trade.close", biz).await {
                Ok(_) => Ok(ChannelNotice::Closed),
                // Never scanned: Alipay holds no trade, and with time_expire set none
                // can be paid after the order's expiry.
                Err(e) if e.is_rejected_with("ACQ.TRADE_NOT_EXIST") => Ok(ChannelNotice::Closed),
                // Paid or closed meanwhile: ask which.
                Err(e) if e.is_rejected_with("ACQ.TRADE_STATUS_ERROR") => query(&s, &http, &trade.pay_order_no).await,
                Err(e) => Err(e),
            }
        })
    }

    fn refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let biz = json!({
                "out_trade_no": refund.trade.pay_order_no.as_str(),
                "refund_amount": wire::yuan(refund.amount.minor()),
                "out_request_no": refund.refund_no,
            });
            match call(&s, &http, "alipay.trade.refund", biz).await {
                Ok(_) => Ok(RefundState::Success),
                Err(ChannelError::Rejected { code, message }) => Ok(RefundState::Failed(format!("{code}: {message}"))),
                Err(e) => Err(e),
            }
        })
    }

    fn query_refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let biz = json!({ "out_trade_no": refund.trade.pay_order_no.as_str(), "out_request_no": refund.refund_no });
            let node = call(&s, &http, "alipay.trade.fastpay.refund.query", biz).await?;
            // Code 10000 alone only means the query ran; without refund_status Alipay
            // has no refund by this out_request_no (it never arrived, or was refused).
            Ok(match text(&node, "refund_status").as_str() {
                "REFUND_SUCCESS" => RefundState::Success,
                "" => RefundState::NotFound,
                _ => RefundState::Processing,
            })
        })
    }

    fn download_bill(&self, date: String) -> BoxFuture<Result<Vec<BillLine>, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let biz = json!({ "bill_type": "trade", "bill_date": date });
            let node = match call(&s, &http, "alipay.data.dataservice.bill.downloadurl.query", biz).await {
                Ok(node) => node,
                Err(e) if e.is_rejected_with("BILL_NOT_EXIST") => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let url = text(&node, "bill_download_url");
            let file =
                http.send(hyper::Method::GET, &url, &[], Vec::new(), s.timeout).await.map_err(ChannelError::unknown)?;
            if file.status != 200 {
                return Err(ChannelError::unknown(format_args!("bill download: HTTP {}", file.status)));
            }
            bill::parse_zip(&file.body).map_err(ChannelError::unknown)
        })
    }

    fn verify_callback(&self, request: &CallbackRequest) -> Option<Verified> {
        let p = wire::parse_form(&request.body);
        let s = &self.settings;
        let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
        let refused = if !wire::verify_notification(&p, &s.alipay_public_key) {
            Some("the signature does not verify with the Alipay public key")
        } else if get("app_id") != s.app_id {
            Some("app_id is not this channel's")
        } else if s.seller_id.as_deref().is_some_and(|seller| get("seller_id") != seller) {
            Some("seller_id is not this channel's")
        } else {
            None
        };
        if let Some(why) = refused {
            tracing::warn!(order = get("out_trade_no"), app_id = get("app_id"), why, "Alipay notification refused");
            return None;
        }
        let id = PayOrderNo::parse(p.get("out_trade_no")?)?;
        // A refund's notification names the refund by the out_request_no it was asked
        // with (here out_biz_no): the refund is done.
        if let Some(refund) = p.get("out_biz_no").filter(|_| p.contains_key("gmt_refund")) {
            return Some(Verified::Refund(VerifiedRefund {
                pay_order_no: id,
                refund_order_no: refund.clone(),
                outcome: RefundState::Success,
                // refund_fee here is the trade's total refunded so far, not this refund's.
                amount_minor: None,
            }));
        }
        let refunded = p.contains_key("refund_fee") || p.contains_key("gmt_refund");
        let notice = notice(get("trade_status"), get("trade_no"), get("total_amount"), refunded)?;
        Some(Verified::Order(VerifiedCallback { pay_order_no: id, notice }))
    }

    fn unverified_order(&self, request: &CallbackRequest) -> Option<PayOrderNo> {
        PayOrderNo::parse(wire::parse_form(&request.body).get("out_trade_no")?)
    }

    fn callback_ack(&self) -> CallbackReply {
        CallbackReply { status: 200, content_type: "text/plain", body: b"success".to_vec() }
    }

    fn callback_nack(&self) -> CallbackReply {
        CallbackReply { status: 200, content_type: "text/plain", body: b"fail".to_vec() }
    }
}

async fn query(s: &AlipaySettings, http: &HttpClient, id: &PayOrderNo) -> Result<ChannelNotice, ChannelError> {
    match call(s, http, "alipay.trade.query", json!({ "out_trade_no": id.as_str() })).await {
        Ok(node) => notice(&text(&node, "trade_status"), &text(&node, "trade_no"), &text(&node, "total_amount"), false)
            .ok_or_else(|| ChannelError::unknown("alipay.trade.query: unknown trade_status")),
        // Not scanned yet: the buyer has not paid.
        Err(e) if e.is_rejected_with("ACQ.TRADE_NOT_EXIST") => Ok(ChannelNotice::NotPaid),
        Err(e) => Err(e),
    }
}
