//! The simulated WeChat Pay API v2 (CHANNELS.md §2): unifiedorder (NATIVE), orderquery,
//! closeorder, refund, refundquery and downloadbill under `/wechat`, answers and
//! notifications signed with the merchant's API key in the sign type it uses, a cashier
//! page behind each code URL, and bills from its own trades.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Method, StatusCode};
use paygate_actors::signing::SignType;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;

use super::{answer, lock, random_hex, Fault, Faults, SimCore, SimRequest, SimResponse};
use crate::channels::alipay::wire::date;
use crate::channels::wechat::v2::bill::{self, BillRow};
use crate::channels::wechat::v2::wire::{self, Params};

/// WeChat's notification retry delays.
const RETRIES: [Duration; 15] = [
    Duration::from_secs(15),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(180),
    Duration::from_secs(600),
    Duration::from_secs(1200),
    Duration::from_secs(1800),
    Duration::from_secs(1800),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(6 * 3600),
];

/// `[sim.wechat]`.
#[derive(Debug, Clone, Deserialize)]
pub struct WechatSimConfig {
    /// WeChat's fee, as a share of each payment.
    #[serde(default = "default_fee_rate")]
    pub fee_rate: String,
    /// The merchants that may call, with their API keys (sealed in the file).
    pub merchants: Vec<WechatSimMerchant>,
}

fn default_fee_rate() -> String {
    "0.006".into()
}

/// One merchant account at the simulated WeChat Pay.
#[derive(Debug, Clone, Deserialize)]
pub struct WechatSimMerchant {
    /// App id.
    pub appid: String,
    /// Merchant id.
    pub mch_id: String,
    /// API key.
    pub api_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotPay,
    Success,
    Refund,
    Closed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::NotPay => "NOTPAY",
            State::Success => "SUCCESS",
            State::Refund => "REFUND",
            State::Closed => "CLOSED",
        }
    }
}

#[derive(Debug, Clone)]
struct Trade {
    mch_id: String,
    sign_type: SignType,
    out_trade_no: String,
    transaction_id: String,
    total_fee: i64,
    body: String,
    notify_url: String,
    expire: Option<i64>,
    state: State,
    paid_at: Option<i64>,
    refunds: Vec<(String, i64, i64)>,
    token: String,
}

#[derive(Default)]
struct Book {
    trades: HashMap<String, Trade>,
    tokens: HashMap<String, String>,
    next: u64,
}

/// The simulated WeChat Pay v2 API.
pub struct WechatSim {
    core: Arc<SimCore>,
    merchants: HashMap<String, WechatSimMerchant>,
    fee_rate: Decimal,
    book: Mutex<Book>,
    faults: Mutex<Faults>,
}

type Answer = Result<Params, (&'static str, String)>;

fn get<'a>(p: &'a Params, k: &str) -> &'a str {
    p.get(k).map(String::as_str).unwrap_or_default()
}

fn fields(pairs: &[(&str, String)]) -> Params {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

fn acknowledged(body: &[u8]) -> bool {
    wire::from_xml(body).is_some_and(|p| get(&p, "return_code") == "SUCCESS")
}

impl WechatSim {
    /// The API for `config`.
    pub fn new(config: &WechatSimConfig, core: Arc<SimCore>) -> Result<WechatSim, String> {
        let fee_rate = Decimal::from_str(&config.fee_rate).map_err(|e| format!("sim.wechat.fee_rate: {e}"))?;
        let merchants = config.merchants.iter().map(|m| (m.mch_id.clone(), m.clone())).collect();
        Ok(WechatSim { core, merchants, fee_rate, book: Mutex::default(), faults: Mutex::default() })
    }

    pub(super) async fn route(self: Arc<Self>, req: SimRequest) -> SimResponse {
        if let Some(answer) = super::control(self.as_ref(), "wechat", &req) {
            return answer;
        }
        let path = req.path.as_str();
        match (&req.method, path) {
            (&Method::POST, p) if p.starts_with("/wechat/pay/") || p.starts_with("/wechat/secapi/") => {
                self.api(p.trim_start_matches("/wechat"), &req.body).await
            }
            (m, p) if p.starts_with("/wechat/cashier/") => {
                self.cashier(p.trim_start_matches("/wechat/cashier/"), m == Method::POST)
            }
            _ => answer(StatusCode::NOT_FOUND, "text/plain", "no such route"),
        }
    }

    async fn api(&self, path: &str, body: &[u8]) -> SimResponse {
        let faults = lock(&self.faults).clone();
        let fault = faults.roll().await;
        match fault {
            Fault::Outage => return answer(StatusCode::SERVICE_UNAVAILABLE, "text/html", "503"),
            Fault::Error => return answer(StatusCode::INTERNAL_SERVER_ERROR, "text/html", "500"),
            Fault::Malformed => return answer(StatusCode::OK, "text/html", "<html>system busy</html>"),
            _ => {}
        }
        let Some(req) = wire::from_xml(body) else {
            return xml(&fields(&[("return_code", "FAIL".into()), ("return_msg", "XML格式错误".into())]));
        };
        let Some(m) = self.merchants.get(get(&req, "mch_id")).filter(|m| m.appid == get(&req, "appid")) else {
            return xml(&fields(&[("return_code", "FAIL".into()), ("return_msg", "appid和mch_id不匹配".into())]));
        };
        let (Some(sign_type), true) = (wire::sign_type_of(&req), wire::verify(&req, &m.api_key)) else {
            return xml(&fields(&[("return_code", "FAIL".into()), ("return_msg", "签名错误".into())]));
        };
        if path == "/pay/downloadbill" {
            return self.bill(&req);
        }
        let outcome = match path {
            "/pay/unifiedorder" => self.unified_order(&req, sign_type),
            "/pay/orderquery" => self.query(&req),
            "/pay/closeorder" => self.close(&req),
            "/secapi/pay/refund" => self.refund(&req),
            "/pay/refundquery" => self.refund_query(&req),
            _ => Err(("PARAM_ERROR", format!("unknown API {path}"))),
        };
        let mut a = fields(&[
            ("return_code", "SUCCESS".into()),
            ("return_msg", "OK".into()),
            ("appid", m.appid.clone()),
            ("mch_id", m.mch_id.clone()),
            ("nonce_str", wire::nonce()),
        ]);
        match outcome {
            Ok(f) => {
                a.insert("result_code".into(), "SUCCESS".into());
                a.extend(f);
            }
            Err((code, des)) => {
                a.insert("result_code".into(), "FAIL".into());
                a.insert("err_code".into(), code.into());
                a.insert("err_code_des".into(), des);
            }
        }
        let key = if fault == Fault::BadSignature { "not-the-api-key" } else { m.api_key.as_str() };
        wire::sign(&mut a, key, sign_type);
        if fault == Fault::Hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        xml(&a)
    }

    fn unified_order(&self, req: &Params, sign_type: SignType) -> Answer {
        let out = get(req, "out_trade_no");
        let total_fee: i64 =
            get(req, "total_fee").parse().ok().filter(|f| *f > 0).ok_or(("PARAM_ERROR", "total_fee".to_owned()))?;
        if out.is_empty() || get(req, "trade_type") != "NATIVE" {
            return Err(("PARAM_ERROR", "out_trade_no and trade_type NATIVE are required".into()));
        }
        let mut book = lock(&self.book);
        if let Some(t) = book.trades.get(out) {
            return match t.state {
                State::NotPay if t.total_fee == total_fee => Ok(fields(&[
                    ("trade_type", "NATIVE".into()),
                    ("prepay_id", format!("wx{}", t.token)),
                    ("code_url", format!("weixin://wxpay/bizpayurl?pr={}", t.token)),
                ])),
                State::NotPay => Err(("OUT_TRADE_NO_USED", "商户订单号重复".into())),
                State::Closed => Err(("ORDERCLOSED", "订单已关闭".into())),
                _ => Err(("ORDERPAID", "商户订单已支付".into())),
            };
        }
        book.next += 1;
        let token = random_hex(8);
        let trade = Trade {
            mch_id: get(req, "mch_id").to_owned(),
            sign_type,
            out_trade_no: out.to_owned(),
            transaction_id: format!("42000{:014}", book.next),
            total_fee,
            body: get(req, "body").to_owned(),
            notify_url: get(req, "notify_url").to_owned(),
            expire: parse_time14(get(req, "time_expire")),
            state: State::NotPay,
            paid_at: None,
            refunds: Vec::new(),
            token: token.clone(),
        };
        book.tokens.insert(token.clone(), out.to_owned());
        book.trades.insert(out.to_owned(), trade);
        Ok(fields(&[
            ("trade_type", "NATIVE".into()),
            ("prepay_id", format!("wx{token}")),
            ("code_url", format!("weixin://wxpay/bizpayurl?pr={token}")),
        ]))
    }

    fn with_trade<T>(
        &self,
        req: &Params,
        f: impl FnOnce(&mut Trade, i64) -> Result<T, (&'static str, String)>,
    ) -> Result<T, (&'static str, String)> {
        let now = self.core.now_ms();
        let mut book = lock(&self.book);
        let t =
            book.trades.get_mut(get(req, "out_trade_no")).ok_or(("ORDERNOTEXIST", "此交易订单号不存在".to_owned()))?;
        if t.state == State::NotPay && t.expire.is_some_and(|e| now > e) {
            t.state = State::Closed;
        }
        f(t, now)
    }

    fn query(&self, req: &Params) -> Answer {
        self.with_trade(req, |t, _| {
            let mut f = fields(&[
                ("out_trade_no", t.out_trade_no.clone()),
                ("trade_state", t.state.as_str().into()),
                ("total_fee", t.total_fee.to_string()),
                ("trade_type", "NATIVE".into()),
            ]);
            if let Some(paid) = t.paid_at {
                f.insert("transaction_id".into(), t.transaction_id.clone());
                f.insert("time_end".into(), wire::time14(paid));
                f.insert("cash_fee".into(), t.total_fee.to_string());
            }
            Ok(f)
        })
    }

    fn close(&self, req: &Params) -> Answer {
        self.with_trade(req, |t, _| match t.state {
            State::NotPay | State::Closed => {
                t.state = State::Closed;
                Ok(Params::new())
            }
            _ => Err(("ORDERPAID", "订单已支付，不能发起关单".into())),
        })
    }

    fn refund(&self, req: &Params) -> Answer {
        let refund_no = get(req, "out_refund_no").to_owned();
        let fee: i64 =
            get(req, "refund_fee").parse().ok().filter(|f| *f > 0).ok_or(("PARAM_ERROR", "refund_fee".to_owned()))?;
        self.with_trade(req, |t, now| {
            if let Some(r) = t.refunds.iter().find(|r| r.0 == refund_no) {
                return if r.1 == fee {
                    Ok(fields(&[("out_refund_no", refund_no.clone()), ("refund_fee", fee.to_string())]))
                } else {
                    Err(("PARAM_ERROR", "out_refund_no was used with another refund_fee".into()))
                };
            }
            if !matches!(t.state, State::Success | State::Refund) {
                return Err(("TRADE_STATE_ERROR", "订单状态错误".into()));
            }
            if t.refunds.iter().map(|r| r.1).sum::<i64>() + fee > t.total_fee {
                return Err(("NOTENOUGH", "余额不足".into()));
            }
            t.refunds.push((refund_no.clone(), fee, now));
            t.state = State::Refund;
            Ok(fields(&[
                ("transaction_id", t.transaction_id.clone()),
                ("out_refund_no", refund_no.clone()),
                ("refund_fee", fee.to_string()),
            ]))
        })
    }

    fn refund_query(&self, req: &Params) -> Answer {
        self.with_trade(req, |t, _| {
            let wanted = get(req, "out_refund_no");
            let refunds: Vec<_> = t.refunds.iter().filter(|r| wanted.is_empty() || r.0 == wanted).collect();
            if refunds.is_empty() {
                return Err(("REFUNDNOTEXIST", "退款订单查询失败".into()));
            }
            let mut f =
                fields(&[("out_trade_no", t.out_trade_no.clone()), ("refund_count", refunds.len().to_string())]);
            for (i, r) in refunds.iter().enumerate() {
                f.insert(format!("out_refund_no_{i}"), r.0.clone());
                f.insert(format!("refund_fee_{i}"), r.1.to_string());
                f.insert(format!("refund_status_{i}"), "SUCCESS".into());
            }
            Ok(f)
        })
    }

    fn bill(&self, req: &Params) -> SimResponse {
        let compact = get(req, "bill_date");
        let now = self.core.now_ms();
        let today = date(now).replace('-', "");
        if compact.len() != 8 || compact >= today.as_str() {
            return xml(&fields(&[
                ("return_code", "FAIL".into()),
                ("return_msg", "No Bill Exist".into()),
                ("error_code", "20002".into()),
            ]));
        }
        let day = format!(
            "{}-{}-{}",
            compact.get(..4).unwrap_or_default(),
            compact.get(4..6).unwrap_or_default(),
            compact.get(6..).unwrap_or_default()
        );
        let fee = |fen: i64| (Decimal::from(fen) * self.fee_rate).round().to_i64().unwrap_or(0);
        let book = lock(&self.book);
        let mut trades: Vec<&Trade> = book.trades.values().filter(|t| t.mch_id == get(req, "mch_id")).collect();
        trades.sort_by_key(|t| t.paid_at);
        let mut rows = Vec::new();
        for t in trades {
            let row = |time: i64, refund: Option<(String, i64)>, fee_fen: i64| BillRow {
                time,
                appid: get(req, "appid").to_owned(),
                mch_id: t.mch_id.clone(),
                transaction_id: t.transaction_id.clone(),
                out_trade_no: t.out_trade_no.clone(),
                refund,
                total_fen: t.total_fee,
                fee_fen,
                body: t.body.clone(),
            };
            if let Some(paid) = t.paid_at.filter(|p| date(*p) == day) {
                rows.push(row(paid, None, fee(t.total_fee)));
            }
            for (no, fen, at) in t.refunds.iter().filter(|r| date(r.2) == day) {
                rows.push(row(*at, Some((no.clone(), *fen)), -fee(*fen)));
            }
        }
        answer(StatusCode::OK, "text/plain; charset=utf-8", bill::write(&rows))
    }

    fn cashier(&self, token: &str, pay: bool) -> SimResponse {
        let Some(out) = lock(&self.book).tokens.get(token).cloned() else {
            return answer(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "二维码已失效 (no such code)");
        };
        let message = if pay {
            self.pay_trade(&out).map_or_else(|e| format!("支付失败 — {e}"), |_| "支付成功 — paid".into())
        } else {
            String::new()
        };
        let book = lock(&self.book);
        let Some(t) = book.trades.get(&out) else {
            return answer(StatusCode::NOT_FOUND, "text/plain", "no such trade");
        };
        let page = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>微信支付 (simulated)</title></head><body>\
             <h1>微信支付 — simulated</h1><p>{}</p><p>¥ {}.{:02}</p><p>trade_state: {}</p><p>{}</p>\
             <form method=\"post\"><button type=\"submit\">Pay</button></form></body></html>",
            html_escape::encode_text(&t.body),
            t.total_fee / 100,
            t.total_fee % 100,
            t.state.as_str(),
            html_escape::encode_text(&message),
        );
        answer(StatusCode::OK, "text/html; charset=utf-8", page)
    }

    /// The buyer pays: the trade succeeds and the merchant is notified.
    fn pay_trade(&self, out_trade_no: &str) -> Result<String, String> {
        let now = self.core.now_ms();
        let (url, doc, key, sign_type, id) = {
            let mut book = lock(&self.book);
            let t = book.trades.get_mut(out_trade_no).ok_or("no such trade")?;
            if t.state == State::NotPay && t.expire.is_some_and(|e| now > e) {
                t.state = State::Closed;
            }
            match t.state {
                State::NotPay => {}
                State::Closed => return Err("the order is closed".into()),
                _ => return Ok(t.transaction_id.clone()),
            }
            t.state = State::Success;
            t.paid_at = Some(now);
            let m = self.merchants.get(&t.mch_id).ok_or("no such merchant")?;
            let doc = fields(&[
                ("appid", m.appid.clone()),
                ("mch_id", m.mch_id.clone()),
                ("nonce_str", wire::nonce()),
                ("return_code", "SUCCESS".into()),
                ("result_code", "SUCCESS".into()),
                ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into()),
                ("trade_type", "NATIVE".into()),
                ("bank_type", "CMC".into()),
                ("total_fee", t.total_fee.to_string()),
                ("cash_fee", t.total_fee.to_string()),
                ("fee_type", "CNY".into()),
                ("transaction_id", t.transaction_id.clone()),
                ("out_trade_no", t.out_trade_no.clone()),
                ("time_end", wire::time14(now)),
            ]);
            (t.notify_url.clone(), doc, m.api_key.clone(), t.sign_type, t.transaction_id.clone())
        };
        let mut doc = doc;
        wire::sign(&mut doc, &key, sign_type);
        if !url.is_empty() {
            super::notify_until_acknowledged(
                Arc::clone(&self.core),
                url,
                "text/xml; charset=utf-8",
                wire::to_xml(&doc).into_bytes(),
                acknowledged,
                &RETRIES,
            );
        }
        Ok(id)
    }
}

impl super::Controlled for WechatSim {
    fn pay(&self, out_trade_no: &str) -> Result<serde_json::Value, String> {
        self.pay_trade(out_trade_no).map(|id| json!({ "transaction_id": id }))
    }

    fn trade(&self, out_trade_no: &str) -> Option<serde_json::Value> {
        let book = lock(&self.book);
        let t = book.trades.get(out_trade_no)?;
        Some(json!({ "out_trade_no": t.out_trade_no, "transaction_id": t.transaction_id,
                     "trade_state": t.state.as_str(), "total_fee": t.total_fee,
                     "refunded_fee": t.refunds.iter().map(|r| r.1).sum::<i64>() }))
    }

    fn faults(&self) -> &Mutex<Faults> {
        &self.faults
    }
}

fn xml(p: &Params) -> SimResponse {
    answer(StatusCode::OK, "text/xml; charset=utf-8", wire::to_xml(p))
}

fn parse_time14(t: &str) -> Option<i64> {
    if t.len() != 14 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (d, h) = t.split_at(8);
    let text =
        format!("{}-{}-{} {}:{}:{}", d.get(..4)?, d.get(4..6)?, d.get(6..)?, h.get(..2)?, h.get(2..4)?, h.get(4..)?);
    crate::channels::alipay::wire::parse_timestamp(&text)
}
