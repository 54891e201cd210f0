//! The WeChat Pay API v3 adapter (JSON; requests signed with the merchant's RSA key in
//! the Authorization header, answers and notifications signed with the platform key,
//! notification resources sealed with the APIv3 key): native pay (code_url), query,
//! close, refund, refund query, the trade bill, and the platform certificates. An answer
//! is believed only when its signature checks out; transport failures, 5xx, 429 and
//! unverifiable answers are unknown outcomes.

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
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::bill;
use crate::crypto::{Certificate, RsaSigner, RsaVerifier};
use crate::http::client::HttpClient;

/// What the adapter needs (channel settings in `channels.toml`).
#[derive(Clone)]
pub struct WechatV3Settings {
    /// The app id the merchant account pays under.
    pub appid: String,
    /// The merchant id.
    pub mchid: String,
    /// Serial of the merchant API certificate whose key signs our requests.
    pub merchant_serial: String,
    /// The merchant API private key (secret).
    pub merchant_key: RsaSigner,
    /// Serial of the platform certificate that signs WeChat's answers.
    pub platform_serial: String,
    /// Its public key.
    pub platform_key: RsaVerifier,
    /// The APIv3 key (secret): opens notification and certificate resources.
    pub api_v3_key: [u8; 32],
    /// The API base, e.g. `https://api.mch.weixin.qq.com`.
    pub base_url: String,
    /// Our `/callback/wechat/v3`.
    pub notify_url: String,
    /// Longest a call may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for WechatV3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatV3Settings")
            .field("appid", &self.appid)
            .field("mchid", &self.mchid)
            .field("platform_serial", &self.platform_serial)
            .finish_non_exhaustive()
    }
}

/// The WeChat Pay v3 connector.
pub struct WechatV3Connector {
    /// `wechat:<mchid>` ([`ChannelConnector::account`]).
    account: String,
    settings: Arc<WechatV3Settings>,
    http: HttpClient,
}

/// A platform certificate from `/v3/certificates`.
#[derive(Debug, Clone)]
pub struct PlatformCertificate {
    /// The serial WeChat names it by.
    pub serial_no: String,
    /// The certificate, read.
    pub certificate: Certificate,
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn now_secs() -> i64 {
    SystemClock.now_ms().div_euclid(1000)
}

/// A verified 2xx answer: status and JSON (`Null` for 204).
struct Answer {
    status: u16,
    json: Value,
}

/// Sends a signed request; answers a 2xx whose signature verified, refuses on a signed
/// 4xx, and treats everything else as unknown.
async fn call(
    s: &WechatV3Settings,
    http: &HttpClient,
    method: hyper::Method,
    path_and_query: &str,
    body: Option<&Value>,
) -> Result<Answer, ChannelError> {
    let body = body.map(Value::to_string).unwrap_or_default().into_bytes();
    let auth = wire::Authorization::sign(
        &s.merchant_key,
        &s.mchid,
        &s.merchant_serial,
        method.as_str(),
        path_and_query,
        &body,
        now_secs(),
    );
    let header = auth.header();
    let headers = [
        ("authorization", header.as_str()),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("user-agent", "paygate"),
    ];
    let url = format!("{}{path_and_query}", s.base_url);
    let answer = http
        .send(method, &url, &headers, body, s.timeout)
        .await
        .map_err(|e| crate::channels::unanswered(path_and_query, e))?;
    // 429: over the rate limit, the request was not taken up.
    if answer.status == 429 {
        return Err(ChannelError::Unavailable(format!("{path_and_query}: HTTP 429")));
    }
    if answer.status >= 500 {
        return Err(crate::channels::bad_status(path_and_query, answer.status));
    }
    if !wire::verify_signed(&answer.headers, &answer.body, &s.platform_serial, &s.platform_key, None) {
        metrics::counter!("paygate_alerts_total", "kind" => "channel_answer_unverified").increment(1);
        return Err(ChannelError::unknown(format_args!("{path_and_query}: the answer's signature did not verify")));
    }
    let json = if answer.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&answer.body)
            .map_err(|_| ChannelError::unknown(format_args!("{path_and_query}: not JSON")))?
    };
    if (200..300).contains(&answer.status) {
        return Ok(Answer { status: answer.status, json });
    }
    match text(&json, "code") {
        "SYSTEM_ERROR" | "FREQUENCY_LIMITED" | "" => {
            Err(ChannelError::unknown(format_args!("{path_and_query}: HTTP {} {}", answer.status, text(&json, "code"))))
        }
        code => Err(ChannelError::Rejected { code: code.to_owned(), message: text(&json, "message").to_owned() }),
    }
}

/// What a transaction (a query answer, or a notification's resource) says.
fn notice_of(t: &Value) -> Option<ChannelNotice> {
    let paid = || {
        Some(ChannelNotice::Paid {
            channel_trade_no: text(t, "transaction_id").to_owned(),
            amount_minor: t.get("amount")?.get("total")?.as_i64()?,
        })
    };
    match text(t, "trade_state") {
        "SUCCESS" | "REFUND" => paid(),
        "NOTPAY" | "USERPAYING" => Some(ChannelNotice::NotPaid),
        "CLOSED" | "REVOKED" => Some(ChannelNotice::Closed),
        "PAYERROR" => Some(ChannelNotice::Failed { reason: text(t, "trade_state_desc").to_owned() }),
        _ => None,
    }
}

fn trade_path(s: &WechatV3Settings, id: &PayOrderNo) -> String {
    format!("/v3/pay/transactions/out-trade-no/{id}?mchid={}", s.mchid)
}

async fn query(s: &WechatV3Settings, http: &HttpClient, id: &PayOrderNo) -> Result<ChannelNotice, ChannelError> {
    match call(s, http, hyper::Method::GET, &trade_path(s, id), None).await {
        Ok(a) => notice_of(&a.json).ok_or_else(|| ChannelError::unknown("query: unknown trade_state")),
        // The order never reached WeChat: nobody can pay it.
        Err(e) if e.is_rejected_with("ORDER_NOT_EXIST") => Ok(ChannelNotice::NotPaid),
        Err(e) => Err(e),
    }
}

/// A refund's status: `status` in answers, `refund_status` in notifications.
fn refund_state(status: &str) -> RefundState {
    match status {
        "SUCCESS" => RefundState::Success,
        "CLOSED" => RefundState::Failed("CLOSED: the refund was closed".into()),
        "ABNORMAL" => RefundState::Abnormal("ABNORMAL: the buyer's account could not take the refund".into()),
        _ => RefundState::Processing,
    }
}

impl WechatV3Connector {
    /// A connector calling through `http` (its own pooled client, trusting what the
    /// channel is configured to trust).
    pub fn new(settings: WechatV3Settings, http: HttpClient) -> WechatV3Connector {
        WechatV3Connector { account: format!("wechat:{}", settings.mchid), settings: Arc::new(settings), http }
    }

    /// The platform certificates WeChat publishes, from a list signed with the platform
    /// key we trust, each sealed under our APIv3 key.
    pub async fn certificates(&self) -> Result<Vec<PlatformCertificate>, ChannelError> {
        let a = call(&self.settings, &self.http, hyper::Method::GET, "/v3/certificates", None).await?;
        let items = a
            .json
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| ChannelError::unknown("certificates: no data"))?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let sealed = item.get("encrypt_certificate").unwrap_or(&Value::Null);
            let pem = wire::decrypt(
                &self.settings.api_v3_key,
                text(sealed, "nonce"),
                text(sealed, "associated_data"),
                text(sealed, "ciphertext"),
            )
            .ok_or_else(|| ChannelError::unknown("certificates: a certificate did not decrypt"))?;
            let pem = String::from_utf8(pem).map_err(|_| ChannelError::unknown("certificates: not PEM"))?;
            let certificate = Certificate::from_pem("platform certificate", &pem).map_err(ChannelError::unknown)?;
            let serial_no = text(item, "serial_no").to_owned();
            if certificate.serial_hex != serial_no {
                return Err(ChannelError::unknown(format_args!("certificates: {serial_no} carries another serial")));
            }
            out.push(PlatformCertificate { serial_no, certificate });
        }
        Ok(out)
    }

    /// The transaction a notification carries, decrypted; `None` unless it opens under
    /// our APIv3 key (which authenticates it, but says nothing about replay).
    fn open_resource(&self, body: &[u8]) -> Option<(Value, Value)> {
        let n: Value = serde_json::from_slice(body).ok()?;
        let r = n.get("resource")?;
        if text(r, "algorithm") != "AEAD_AES_256_GCM" {
            return None;
        }
        let plain = wire::decrypt(
            &self.settings.api_v3_key,
            text(r, "nonce"),
            text(r, "associated_data"),
            text(r, "ciphertext"),
        )?;
        let resource = serde_json::from_slice(&plain).ok()?;
        Some((n, resource))
    }
}

impl ChannelConnector for WechatV3Connector {
    fn gateway_url(&self) -> &str {
        &self.settings.base_url
    }

    fn account(&self) -> &str {
        &self.account
    }

    fn create_order(&self, order: ChannelOrder) -> BoxFuture<Result<CreateAccepted, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let body = json!({
                "appid": s.appid,
                "mchid": s.mchid,
                "description": order.subject.chars().take(127).collect::<String>(),
                "out_trade_no": order.pay_order_no.as_str(),
                "time_expire": wire::rfc3339_beijing(order.expire_time),
                "notify_url": s.notify_url,
                "amount": { "total": order.amount.minor(), "currency": order.amount.currency().code() },
            });
            let a = call(&s, &http, hyper::Method::POST, "/v3/pay/transactions/native", Some(&body)).await?;
            let code_url = text(&a.json, "code_url");
            if code_url.is_empty() {
                return Err(ChannelError::unknown("native: no code_url in a successful answer"));
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
            let path = format!("/v3/pay/transactions/out-trade-no/{}/close", trade.pay_order_no);
            match call(&s, &http, hyper::Method::POST, &path, Some(&json!({ "mchid": s.mchid }))).await {
                Ok(a) if a.status == 204 => Ok(ChannelNotice::Closed),
                Ok(a) => Err(ChannelError::unknown(format_args!("close: HTTP {} where 204 was expected", a.status))),
                // Refused (paid meanwhile, or never opened): ask what the trade is.
                Err(ChannelError::Rejected { .. }) => query(&s, &http, &trade.pay_order_no).await,
                Err(e) => Err(e),
            }
        })
    }

    fn refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let body = json!({
                "out_trade_no": refund.trade.pay_order_no.as_str(),
                "out_refund_no": refund.refund_no,
                "amount": {
                    "refund": refund.amount.minor(),
                    "total": refund.trade.amount.minor(),
                    "currency": refund.amount.currency().code(),
                },
                "notify_url": s.notify_url,
            });
            match call(&s, &http, hyper::Method::POST, "/v3/refund/domestic/refunds", Some(&body)).await {
                Ok(a) => Ok(refund_state(text(&a.json, "status"))),
                Err(ChannelError::Rejected { code, message }) => Ok(RefundState::Failed(format!("{code}: {message}"))),
                Err(e) => Err(e),
            }
        })
    }

    fn query_refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let path = format!(
                "/v3/refund/domestic/refunds/{}",
                form_urlencoded::byte_serialize(refund.refund_no.as_bytes()).collect::<String>()
            );
            match call(&s, &http, hyper::Method::GET, &path, None).await {
                Ok(a) => Ok(refund_state(text(&a.json, "status"))),
                Err(e) if e.is_rejected_with("RESOURCE_NOT_EXISTS") => Ok(RefundState::NotFound),
                Err(e) => Err(e),
            }
        })
    }

    fn download_bill(&self, date: String) -> BoxFuture<Result<Vec<BillLine>, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let path = format!("/v3/bill/tradebill?bill_date={date}&bill_type=ALL");
            let a = match call(&s, &http, hyper::Method::GET, &path, None).await {
                Ok(a) => a,
                Err(e) if e.is_rejected_with("NO_STATEMENT_EXIST") => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let url = text(&a.json, "download_url");
            let (expected, hash_type) = (text(&a.json, "hash_value").to_ascii_lowercase(), text(&a.json, "hash_type"));
            let path = url.strip_prefix(s.base_url.as_str()).filter(|p| p.starts_with('/'));
            let Some(path) = path else {
                return Err(ChannelError::unknown(format_args!(
                    "tradebill: download_url {url:?} is not on the API host"
                )));
            };
            // The file itself is not signed; the signed answer gave its hash.
            let auth =
                wire::Authorization::sign(&s.merchant_key, &s.mchid, &s.merchant_serial, "GET", path, b"", now_secs());
            let header = auth.header();
            let file = http
                .send(hyper::Method::GET, url, &[("authorization", header.as_str())], Vec::new(), s.timeout)
                .await
                .map_err(ChannelError::unknown)?;
            if file.status != 200 {
                return Err(ChannelError::unknown(format_args!("billdownload: HTTP {}", file.status)));
            }
            if hash_type != "SHA1" || hex::encode(Sha1::digest(&file.body)) != expected {
                metrics::counter!("paygate_alerts_total", "kind" => "channel_answer_unverified").increment(1);
                return Err(ChannelError::unknown("billdownload: the file does not match the signed hash"));
            }
            let text = std::str::from_utf8(&file.body)
                .map_err(|_| ChannelError::unknown("billdownload: the bill is not UTF-8"))?;
            bill::parse(text).map_err(ChannelError::unknown)
        })
    }

    fn verify_callback(&self, request: &CallbackRequest) -> Option<Verified> {
        let s = &self.settings;
        if !wire::verify_signed(&request.headers, &request.body, &s.platform_serial, &s.platform_key, Some(now_secs()))
        {
            return None;
        }
        let (notification, t) = self.open_resource(&request.body)?;
        let event = text(&notification, "event_type");
        // A refund's resource carries no appid: the mchid is what names the account.
        let ours = text(&t, "mchid") == s.mchid && (event.starts_with("REFUND.") || text(&t, "appid") == s.appid);
        if !ours {
            tracing::warn!(
                order = text(&t, "out_trade_no"),
                appid = text(&t, "appid"),
                mchid = text(&t, "mchid"),
                "WeChat Pay notification refused: not this channel's appid and mchid"
            );
            return None;
        }
        let id = PayOrderNo::parse(text(&t, "out_trade_no"))?;
        match event {
            "TRANSACTION.SUCCESS" => {
                Some(Verified::Order(VerifiedCallback { pay_order_no: id, notice: notice_of(&t)? }))
            }
            "REFUND.SUCCESS" | "REFUND.ABNORMAL" | "REFUND.CLOSED" => Some(Verified::Refund(VerifiedRefund {
                pay_order_no: id,
                refund_order_no: text(&t, "out_refund_no").to_owned(),
                outcome: refund_state(text(&t, "refund_status")),
                amount_minor: Some(t.get("amount")?.get("refund")?.as_i64()?),
            })),
            _ => None,
        }
    }

    fn unverified_order(&self, request: &CallbackRequest) -> Option<PayOrderNo> {
        // Opening the resource proves only that it was sealed under our APIv3 key; the
        // order it names is asked about, not believed.
        let (_, t) = self.open_resource(&request.body)?;
        PayOrderNo::parse(text(&t, "out_trade_no"))
    }

    fn callback_ack(&self) -> CallbackReply {
        CallbackReply { status: 204, content_type: "application/json", body: Vec::new() }
    }

    fn callback_nack(&self) -> CallbackReply {
        let body = br#"{"code":"FAIL","message":"not accepted"}"#.to_vec();
        CallbackReply { status: 500, content_type: "application/json", body }
    }
}
