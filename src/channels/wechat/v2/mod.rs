//! The WeChat Pay API v2 adapter (XML; MD5 or HMAC-SHA256 with the API key): native pay
//! (code_url), query, close, refund, refund query, bill download, and payment and refund
//! notifications (the first signed, the second sealed under the API key's MD5). An answer is believed only when its signature checks out; transport
//! failures, 5xx, SYSTEMERROR and unverifiable answers are unknown outcomes.

pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use paygate_actors::clock::Clock;
use paygate_actors::clock::SystemClock;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::order::ChannelNotice;
use paygate_actors::ports::{
    BillLine, BoxFuture, CallbackReply, CallbackRequest, ChannelConnector, ChannelError, ChannelOrder, ChannelRefund,
    CreateAccepted, TradeRef, Verified, VerifiedCallback, VerifiedRefund,
};
use paygate_actors::refund::RefundState;
use paygate_actors::signing::SignType;

use self::wire::Params;
use super::bill;
use crate::http::client::HttpClient;

/// What the adapter needs (channel settings in `channels.toml`).
#[derive(Clone)]
pub struct WechatV2Settings {
    /// The app id (公众账号ID).
    pub appid: String,
    /// The merchant id.
    pub mch_id: String,
    /// The API key (secret).
    pub api_key: String,
    /// MD5 or HMAC-SHA256.
    pub sign_type: SignType,
    /// The API base, e.g. `https://api.mch.weixin.qq.com`.
    pub base_url: String,
    /// Our `/callback/wechat/v2`.
    pub notify_url: String,
    /// Longest a call may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for WechatV2Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatV2Settings")
            .field("appid", &self.appid)
            .field("mch_id", &self.mch_id)
            .finish_non_exhaustive()
    }
}

/// The WeChat Pay v2 connector.
pub struct WechatV2Connector {
    /// `wechat:<mch_id>` ([`ChannelConnector::account`]).
    account: String,
    settings: Arc<WechatV2Settings>,
    http: HttpClient,
}

impl WechatV2Connector {
    /// A connector calling through `http` (its own pooled client, trusting what the
    /// channel is configured to trust).
    pub fn new(settings: WechatV2Settings, http: HttpClient) -> WechatV2Connector {
        WechatV2Connector { account: format!("wechat:{}", settings.mch_id), settings: Arc::new(settings), http }
    }
}

fn get<'a>(p: &'a Params, k: &str) -> &'a str {
    p.get(k).map(String::as_str).unwrap_or_default()
}

/// POSTs a signed document to `path`; returns the verified answer of a call whose
/// return_code and result_code are both SUCCESS.
async fn call(s: &WechatV2Settings, http: &HttpClient, path: &str, mut p: Params) -> Result<Params, ChannelError> {
    p.insert("appid".into(), s.appid.clone());
    p.insert("mch_id".into(), s.mch_id.clone());
    p.insert("nonce_str".into(), wire::nonce());
    wire::sign(&mut p, &s.api_key, s.sign_type);
    let url = format!("{}{path}", s.base_url);
    let answer = http
        .post(&url, "text/xml; charset=utf-8", wire::to_xml(&p).into_bytes(), s.timeout)
        .await
        .map_err(|e| crate::channels::unanswered(path, e))?;
    if answer.status >= 500 {
        return Err(crate::channels::bad_status(path, answer.status));
    }
    let a = wire::from_xml(&answer.body)
        .ok_or_else(|| ChannelError::unknown(format_args!("{path}: the answer is not XML")))?;
    if get(&a, "return_code") != "SUCCESS" {
        // Refused before business (signature, parameters): nothing was done.
        return Err(ChannelError::Rejected { code: "FAIL".into(), message: get(&a, "return_msg").to_owned() });
    }
    if !wire::verify(&a, &s.api_key) || get(&a, "appid") != s.appid || get(&a, "mch_id") != s.mch_id {
        metrics::counter!("paygate_alerts_total", "kind" => "channel_answer_unverified").increment(1);
        return Err(ChannelError::unknown(format_args!("{path}: the answer's signature did not verify")));
    }
    match (get(&a, "result_code"), get(&a, "err_code")) {
        ("SUCCESS", _) => Ok(a),
        (_, "SYSTEMERROR") | (_, "BIZERR_NEED_RETRY") => {
            Err(ChannelError::unknown(format_args!("{path}: {}", get(&a, "err_code"))))
        }
        (_, code) => Err(ChannelError::Rejected { code: code.to_owned(), message: get(&a, "err_code_des").to_owned() }),
    }
}

fn notice_of(a: &Params) -> Option<ChannelNotice> {
    let paid = || {
        Some(ChannelNotice::Paid {
            channel_trade_no: get(a, "transaction_id").to_owned(),
            amount_minor: get(a, "total_fee").parse().ok()?,
        })
    };
    match get(a, "trade_state") {
        "SUCCESS" | "REFUND" => paid(),
        "NOTPAY" | "USERPAYING" => Some(ChannelNotice::NotPaid),
        "CLOSED" | "REVOKED" => Some(ChannelNotice::Closed),
        "PAYERROR" => Some(ChannelNotice::Failed { reason: get(a, "trade_state_desc").to_owned() }),
        _ => None,
    }
}

/// A refund's v2 `refund_status`.
fn refund_state(status: &str) -> RefundState {
    match status {
        "SUCCESS" => RefundState::Success,
        "REFUNDCLOSE" => RefundState::Failed("REFUNDCLOSE: the refund was closed".into()),
        "CHANGE" => RefundState::Abnormal("CHANGE: the buyer's account could not take the refund".into()),
        _ => RefundState::Processing,
    }
}

fn params(pairs: &[(&str, String)]) -> Params {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

async fn query(s: &WechatV2Settings, http: &HttpClient, id: &PayOrderNo) -> Result<ChannelNotice, ChannelError> {
    match call(s, http, "/pay/orderquery", params(&[("out_trade_no", id.to_string())])).await {
        Ok(a) => notice_of(&a).ok_or_else(|| ChannelError::unknown("orderquery: unknown trade_state")),
        // The order never reached WeChat: nobody can pay it.
        Err(e) if e.is_rejected_with("ORDERNOTEXIST") => Ok(ChannelNotice::NotPaid),
        Err(e) => Err(e),
    }
}

impl WechatV2Connector {
    /// A refund notification: not signed, its details sealed in `req_info` under the API
    /// key's MD5. Believed when it names this channel's appid and mch_id, opens under our
    /// key and reads as a refund; what it says is then checked against the refund it
    /// names (the amount) by the order.
    fn verify_refund_notification(&self, p: &Params) -> Option<Verified> {
        let s = &self.settings;
        let opened = (get(p, "return_code") == "SUCCESS" && get(p, "appid") == s.appid && get(p, "mch_id") == s.mch_id)
            .then(|| wire::open_req_info(&s.api_key, get(p, "req_info")))
            .flatten()
            .and_then(|plain| wire::from_xml(&plain));
        let Some(r) = opened else {
            tracing::warn!(
                appid = get(p, "appid"),
                mch_id = get(p, "mch_id"),
                "WeChat Pay refund notification refused: not this channel's, or req_info does not open under its key"
            );
            return None;
        };
        let outcome = match get(&r, "refund_status") {
            "" => return None,
            status => refund_state(status),
        };
        Some(Verified::Refund(VerifiedRefund {
            pay_order_no: PayOrderNo::parse(get(&r, "out_trade_no"))?,
            refund_order_no: get(&r, "out_refund_no").to_owned(),
            outcome,
            amount_minor: Some(get(&r, "refund_fee").parse().ok()?),
        }))
    }
}

impl ChannelConnector for WechatV2Connector {
    fn gateway_url(&self) -> &str {
        &self.settings.base_url
    }

    fn account(&self) -> &str {
        &self.account
    }

    fn create_order(&self, order: ChannelOrder) -> BoxFuture<Result<CreateAccepted, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let p = params(&[
                ("body", order.subject.chars().take(128).collect()),
                ("out_trade_no", order.pay_order_no.to_string()),
                ("total_fee", order.amount.minor().to_string()),
                ("fee_type", order.amount.currency().code().to_owned()),
                ("spbill_create_ip", order.client_ip.clone().unwrap_or_else(|| "127.0.0.1".into())),
                ("notify_url", s.notify_url.clone()),
                ("trade_type", "NATIVE".into()),
                ("product_id", order.pay_order_no.to_string()),
                ("time_start", wire::time14(SystemClock.now_ms())),
                ("time_expire", wire::time14(order.expire_time)),
            ]);
            let a = call(&s, &http, "/pay/unifiedorder", p).await?;
            let code_url = get(&a, "code_url");
            if code_url.is_empty() {
                return Err(ChannelError::unknown("unifiedorder: no code_url in a successful answer"));
            }
            Ok(CreateAccepted { code_url: code_url.to_owned(), channel_trade_no: None })
        })
    }

    fn query_order(&self, trade: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move { query(&s, &http, &trade.pay_order_no).await })
    }

    fn close_order(&self, trade: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            match call(&s, &http, "/pay/closeorder", params(&[("out_trade_no", trade.pay_order_no.to_string())])).await
            {
                Ok(_) => Ok(ChannelNotice::Closed),
                Err(e) if e.is_rejected_with("ORDERCLOSED") => Ok(ChannelNotice::Closed),
                Err(e) if e.is_rejected_with("ORDERPAID") => query(&s, &http, &trade.pay_order_no).await,
                Err(e) => Err(e),
            }
        })
    }

    fn refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let p = params(&[
                ("out_trade_no", refund.trade.pay_order_no.to_string()),
                ("out_refund_no", refund.refund_no.clone()),
                ("total_fee", refund.trade.amount.minor().to_string()),
                ("refund_fee", refund.amount.minor().to_string()),
                ("refund_fee_type", refund.amount.currency().code().to_owned()),
                ("notify_url", s.notify_url.clone()),
            ]);
            match call(&s, &http, "/secapi/pay/refund", p).await {
                // Accepted: WeChat finishes refunds asynchronously.
                Ok(_) => Ok(RefundState::Processing),
                Err(ChannelError::Rejected { code, message }) => Ok(RefundState::Failed(format!("{code}: {message}"))),
                Err(e) => Err(e),
            }
        })
    }

    fn query_refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let (trade, refund_no) = (refund.trade, refund.refund_no);
            let p = params(&[("out_trade_no", trade.pay_order_no.to_string()), ("out_refund_no", refund_no.clone())]);
            let a = match call(&s, &http, "/pay/refundquery", p).await {
                Ok(a) => a,
                Err(e) if e.is_rejected_with("REFUNDNOTEXIST") => return Ok(RefundState::NotFound),
                Err(e) => return Err(e),
            };
            let count: usize = get(&a, "refund_count").parse().unwrap_or(0);
            let status = (0..count)
                .find(|i| get(&a, &format!("out_refund_no_{i}")) == refund_no)
                .map(|i| get(&a, &format!("refund_status_{i}")).to_owned());
            Ok(status.map_or(RefundState::NotFound, |status| refund_state(&status)))
        })
    }

    fn download_bill(&self, date: String) -> BoxFuture<Result<Vec<BillLine>, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let mut p = params(&[("bill_date", date.replace('-', "")), ("bill_type", "ALL".into())]);
            p.insert("appid".into(), s.appid.clone());
            p.insert("mch_id".into(), s.mch_id.clone());
            p.insert("nonce_str".into(), wire::nonce());
            wire::sign(&mut p, &s.api_key, s.sign_type);
            let url = format!("{}/pay/downloadbill", s.base_url);
            let answer = http
                .post(&url, "text/xml; charset=utf-8", wire::to_xml(&p).into_bytes(), s.timeout)
                .await
                .map_err(ChannelError::unknown)?;
            if answer.status >= 500 {
                return Err(ChannelError::unknown(format_args!("downloadbill: HTTP {}", answer.status)));
            }
            // A bill is plain text; a refusal is an XML document.
            if answer.body.starts_with(b"<xml>") {
                let a = wire::from_xml(&answer.body).unwrap_or_default();
                return match get(&a, "return_msg") {
                    "No Bill Exist" => Ok(Vec::new()),
                    msg => {
                        Err(ChannelError::Rejected { code: get(&a, "error_code").to_owned(), message: msg.to_owned() })
                    }
                };
            }
            let text = std::str::from_utf8(&answer.body)
                .map_err(|_| ChannelError::unknown("downloadbill: the bill is not UTF-8"))?;
            bill::parse(text).map_err(ChannelError::unknown)
        })
    }

    fn verify_callback(&self, request: &CallbackRequest) -> Option<Verified> {
        let p = wire::from_xml(&request.body)?;
        let s = &self.settings;
        if p.contains_key("req_info") {
            return self.verify_refund_notification(&p);
        }
        if !wire::verify(&p, &s.api_key) || get(&p, "appid") != s.appid || get(&p, "mch_id") != s.mch_id {
            tracing::warn!(
                order = get(&p, "out_trade_no"),
                appid = get(&p, "appid"),
                mch_id = get(&p, "mch_id"),
                "WeChat Pay notification refused: bad signature, or not this channel's appid and mch_id"
            );
            return None;
        }
        if get(&p, "return_code") != "SUCCESS" {
            return None;
        }
        let id = PayOrderNo::parse(get(&p, "out_trade_no"))?;
        let notice = match get(&p, "result_code") {
            "SUCCESS" => ChannelNotice::Paid {
                channel_trade_no: get(&p, "transaction_id").to_owned(),
                amount_minor: get(&p, "total_fee").parse().ok()?,
            },
            _ => ChannelNotice::Failed { reason: get(&p, "err_code_des").to_owned() },
        };
        Some(Verified::Order(VerifiedCallback { pay_order_no: id, notice }))
    }

    fn unverified_order(&self, request: &CallbackRequest) -> Option<PayOrderNo> {
        PayOrderNo::parse(get(&wire::from_xml(&request.body)?, "out_trade_no"))
    }

    fn callback_ack(&self) -> CallbackReply {
        CallbackReply { status: 200, content_type: "text/xml", body: wire::ACK.to_vec() }
    }

    fn callback_nack(&self) -> CallbackReply {
        CallbackReply { status: 200, content_type: "text/xml", body: wire::NACK.to_vec() }
    }
}
