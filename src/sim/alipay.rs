//! The simulated Alipay open platform: `gateway.do` for precreate,
//! page/wap pay, query, close, refund, refund query and bill URLs; a cashier page for
//! the QR code; RSA2-signed answers and notifications; bills from its own trades.

use super::store::{Persisted, SimStore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Method, StatusCode};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use super::{answer, lock, random_hex, Fault, FaultBook, SimCore, SimRequest, SimResponse};
use crate::channels::alipay::bill::{self, BillRow};
use crate::channels::alipay::wire::{self, Params};
use crate::crypto::{RsaSigner, RsaVerifier};

/// Alipay's notification retry delays (about 8 tries over 25 h).
const RETRIES: [Duration; 7] = [
    Duration::from_secs(4 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(15 * 3600),
];

/// How long a bill download URL works.
const BILL_URL_LIFE_MS: i64 = 30_000;

/// `[sim.alipay]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AlipaySimConfig {
    /// Alipay's private key: signs answers and notifications (sealed in the file).
    pub alipay_private_key: String,
    /// The seller's Alipay account id.
    #[serde(default = "default_seller")]
    pub seller_id: String,
    /// Alipay's fee, as a share of each payment.
    #[serde(default = "default_fee_rate")]
    pub fee_rate: String,
    /// The apps that may call, with the public keys their requests are checked with.
    pub apps: Vec<AlipaySimApp>,
}

fn default_seller() -> String {
    "2088000000000001".into()
}

fn default_fee_rate() -> String {
    "0.006".into()
}

/// One app allowed to call the simulated gateway.
#[derive(Debug, Clone, Deserialize)]
pub struct AlipaySimApp {
    /// Its app_id.
    pub app_id: String,
    /// The public key of its app private key.
    pub app_public_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Status {
    WaitBuyerPay,
    Success,
    Closed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::WaitBuyerPay => "WAIT_BUYER_PAY",
            Status::Success => "TRADE_SUCCESS",
            Status::Closed => "TRADE_CLOSED",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refund {
    out_request_no: String,
    fen: i64,
    at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trade {
    app_id: String,
    out_trade_no: String,
    trade_no: String,
    total_fen: i64,
    subject: String,
    notify_url: String,
    created: i64,
    expire: Option<i64>,
    /// A precreated trade exists for queries only once the buyer scans its code.
    scanned: bool,
    status: Status,
    paid_at: Option<i64>,
    refunds: Vec<Refund>,
    qr_code: String,
}

impl Trade {
    fn refunded_fen(&self) -> i64 {
        self.refunds.iter().map(|r| r.fen).sum()
    }

    fn visible(&self) -> bool {
        self.scanned || self.status != Status::WaitBuyerPay
    }
}

/// Every app's trades. Like Alipay, each app (account) has its own `out_trade_no`s: two
/// accounts of one merchant may each hold a trade under the same number.
#[derive(Default, Serialize, Deserialize)]
struct Book {
    /// By [`trade_key`].
    trades: HashMap<String, Trade>,
    /// QR code token → trade key.
    codes: HashMap<String, String>,
    /// Bill token → the bill it downloads.
    bills: HashMap<String, BillLink>,
    next_trade: u64,
}

/// A bill download URL: whose bill, of which day, working until when.
#[derive(Serialize, Deserialize)]
struct BillLink {
    app_id: String,
    date: String,
    until: i64,
}

/// The book as versions before per-app trades stored it (trades by `out_trade_no`).
#[derive(Default, Serialize, Deserialize)]
struct LegacyBook {
    trades: HashMap<String, Trade>,
    codes: HashMap<String, String>,
    bills: HashMap<String, (String, i64)>,
    next_trade: u64,
}

impl From<&LegacyBook> for Book {
    fn from(old: &LegacyBook) -> Book {
        let codes = old
            .codes
            .iter()
            .filter_map(|(token, out)| old.trades.get(out).map(|t| (token.clone(), trade_key(&t.app_id, out))))
            .collect();
        let trades = old.trades.values().map(|t| (trade_key(&t.app_id, &t.out_trade_no), t.clone())).collect();
        // Bill links live 30 seconds: none worth carrying over.
        Book { trades, codes, bills: HashMap::new(), next_trade: old.next_trade }
    }
}

/// Where a trade is kept: its app's, under its `out_trade_no`.
fn trade_key(app_id: &str, out_trade_no: &str) -> String {
    format!("{app_id}/{out_trade_no}")
}

/// The simulated Alipay gateway.
pub struct AlipaySim {
    core: Arc<SimCore>,
    key: RsaSigner,
    apps: HashMap<String, RsaVerifier>,
    seller_id: String,
    fee_rate: Decimal,
    book: Persisted<Book>,
    faults: Mutex<FaultBook>,
}

/// A business answer: a node's fields, or Alipay's error (code, msg, sub_code, sub_msg).
type Outcome = Result<Map<String, Value>, (&'static str, &'static str, &'static str, String)>;

fn business(sub_code: &'static str, sub_msg: impl Into<String>) -> (&'static str, &'static str, &'static str, String) {
    ("40004", "Business Failed", sub_code, sub_msg.into())
}

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn text<'a>(biz: &'a Value, k: &str) -> &'a str {
    biz.get(k).and_then(Value::as_str).unwrap_or_default()
}

impl AlipaySim {
    /// The gateway for `config`.
    pub fn new(config: &AlipaySimConfig, core: Arc<SimCore>, store: &SimStore) -> Result<AlipaySim, String> {
        let key = RsaSigner::from_text("sim.alipay.alipay_private_key", &config.alipay_private_key)
            .map_err(|e| e.to_string())?;
        let mut apps = HashMap::new();
        for a in &config.apps {
            let v = RsaVerifier::from_text(&format!("sim.alipay app {} public key", a.app_id), &a.app_public_key)
                .map_err(|e| e.to_string())?;
            apps.insert(a.app_id.clone(), v);
        }
        let fee_rate = Decimal::from_str(&config.fee_rate).map_err(|e| format!("sim.alipay.fee_rate: {e}"))?;
        Ok(AlipaySim {
            core,
            key,
            apps,
            seller_id: config.seller_id.clone(),
            fee_rate,
            book: open_book(store)?,
            faults: Mutex::default(),
        })
    }

    pub(super) async fn route(self: Arc<Self>, req: SimRequest) -> SimResponse {
        if let Some(answer) = super::control(self.as_ref(), "alipay", &req) {
            return answer;
        }
        let path = req.path.as_str();
        match (&req.method, path) {
            (_, "/alipay/gateway.do") => self.gateway(&req).await,
            (&Method::GET, p) if p.starts_with("/alipay/qr/") => {
                self.cashier(p.trim_start_matches("/alipay/qr/"), false)
            }
            (&Method::POST, p) if p.starts_with("/alipay/qr/") => {
                self.cashier(p.trim_start_matches("/alipay/qr/"), true)
            }
            (&Method::GET, p) if p.starts_with("/alipay/bill/") => {
                self.bill_file(p.trim_start_matches("/alipay/bill/"))
            }
            _ => answer(StatusCode::NOT_FOUND, "text/plain", "no such route"),
        }
    }

    async fn gateway(&self, req: &SimRequest) -> SimResponse {
        let mut params = wire::parse_form(req.query.as_bytes());
        params.extend(wire::parse_form(&req.body));
        let faults = lock(&self.faults).of(params.get("app_id").map_or("", String::as_str));
        let fault = faults.roll().await;
        match fault {
            Fault::Outage => return answer(StatusCode::SERVICE_UNAVAILABLE, "text/html", "<html>503</html>"),
            Fault::Error => return answer(StatusCode::INTERNAL_SERVER_ERROR, "text/html", "<html>500</html>"),
            Fault::Malformed => return answer(StatusCode::OK, "text/html;charset=utf-8", "<html>系统繁忙</html>"),
            Fault::None | Fault::BadSignature | Fault::Hang => {}
        }
        let method = params.get("method").cloned().unwrap_or_default();
        let outcome = self.call(&method, &params);
        if fault == Fault::Hang {
            // Done at "Alipay", but the answer never arrives: the caller's outcome is unknown.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return answer(StatusCode::GATEWAY_TIMEOUT, "text/html", "");
        }
        if matches!(method.as_str(), "alipay.trade.page.pay" | "alipay.trade.wap.pay") {
            return match outcome {
                Ok(node) => self.cashier(text(&Value::Object(node), "qr_token"), false),
                Err((_, _, sub_code, sub_msg)) => {
                    answer(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", format!("{sub_code}: {sub_msg}"))
                }
            };
        }
        let mut node = Map::new();
        match outcome {
            Ok(mut f) => {
                f.remove("qr_token");
                node.insert("code".into(), json!("10000"));
                node.insert("msg".into(), json!("Success"));
                node.extend(f);
            }
            Err((code, msg, sub_code, sub_msg)) => {
                node.insert("code".into(), json!(code));
                node.insert("msg".into(), json!(msg));
                node.insert("sub_code".into(), json!(sub_code));
                node.insert("sub_msg".into(), json!(sub_msg.replace(['{', '}'], "")));
            }
        }
        let node_json = Value::Object(node).to_string();
        let name = if method.is_empty() { "error".to_owned() } else { method.clone() };
        let body = if fault == Fault::BadSignature {
            let wrong = self.key.sign_base64(b"not these bytes");
            format!("{{\"{}\":{node_json},\"sign\":\"{wrong}\"}}", wire::response_node(&name))
        } else {
            wire::signed_response(&name, &node_json, &self.key)
        };
        answer(StatusCode::OK, "text/html;charset=utf-8", body)
    }

    fn call(&self, method: &str, params: &Params) -> Outcome {
        let app_id = params.get("app_id").cloned().unwrap_or_default();
        let Some(app_key) = self.apps.get(&app_id) else {
            return Err(("40002", "Invalid Arguments", "isv.invalid-app-id", "app_id is not known".into()));
        };
        if !wire::verify_request(params, app_key) {
            return Err(("40002", "Invalid Arguments", "isv.invalid-signature", "the signature did not verify".into()));
        }
        let biz: Value = match params.get("biz_content").map(|b| serde_json::from_str(b)) {
            Some(Ok(v)) => v,
            _ => return Err(("40001", "Missing Required Arguments", "isv.missing-biz-content", "biz_content".into())),
        };
        let notify_url = params.get("notify_url").cloned().unwrap_or_default();
        match method {
            "alipay.trade.precreate" => self.create(&app_id, &biz, notify_url, false),
            "alipay.trade.page.pay" | "alipay.trade.wap.pay" => {
                let product = text(&biz, "product_code");
                let expected: &[&str] = if method == "alipay.trade.page.pay" {
                    &["FAST_INSTANT_TRADE_PAY"]
                } else {
                    // SDKs send either name for the wap product.
                    &["QUICK_WAP_WAY", "QUICK_WAP_PAY"]
                };
                if !expected.contains(&product) {
                    return Err(business("ACQ.INVALID_PARAMETER", format!("product_code {product:?} for {method}")));
                }
                self.create(&app_id, &biz, notify_url, true)
            }
            "alipay.trade.query" => self.query(&app_id, &biz),
            "alipay.trade.close" => self.close(&app_id, &biz),
            "alipay.trade.refund" => self.refund(&app_id, &biz),
            "alipay.trade.fastpay.refund.query" => self.refund_query(&app_id, &biz),
            "alipay.data.dataservice.bill.downloadurl.query" => self.bill_url(&app_id, &biz),
            _ => Err(("40002", "Invalid Arguments", "isv.invalid-method", format!("unknown method {method}"))),
        }
    }

    fn create(&self, app_id: &str, biz: &Value, notify_url: String, scanned: bool) -> Outcome {
        let out_trade_no = text(biz, "out_trade_no");
        if out_trade_no.is_empty() || out_trade_no.len() > 64 {
            return Err(business("ACQ.INVALID_PARAMETER", "out_trade_no"));
        }
        let Some(total_fen) = wire::fen(text(biz, "total_amount")) else {
            return Err(business("ACQ.INVALID_PARAMETER", "total_amount must be 0.01-100000000.00"));
        };
        let now = self.core.now_ms();
        let key = trade_key(app_id, out_trade_no);
        let mut book = self.book.lock();
        if let Some(t) = book.trades.get(&key) {
            return match t.status {
                Status::Success => Err(business("ACQ.TRADE_HAS_SUCCESS", "the trade is paid")),
                Status::Closed => Err(business("ACQ.TRADE_HAS_CLOSE", "the trade is closed")),
                _ if t.total_fen != total_fen => Err(business("ACQ.INVALID_PARAMETER", "total_amount differs")),
                _ => Ok(fields(
                    json!({ "out_trade_no": t.out_trade_no, "qr_code": t.qr_code, "qr_token": code_of(&t.qr_code) }),
                )),
            };
        }
        let token = random_hex(12);
        let qr_code = format!("{}/alipay/qr/{token}", self.core.base_url);
        book.next_trade += 1;
        let trade_no = format!("{}22001{:015}", &wire::date(now).replace('-', ""), book.next_trade);
        let trade = Trade {
            app_id: app_id.to_owned(),
            out_trade_no: out_trade_no.to_owned(),
            trade_no,
            total_fen,
            subject: text(biz, "subject").to_owned(),
            notify_url,
            created: now,
            expire: wire::parse_timestamp(text(biz, "time_expire")),
            scanned,
            status: Status::WaitBuyerPay,
            paid_at: None,
            refunds: Vec::new(),
            qr_code: qr_code.clone(),
        };
        book.codes.insert(token.clone(), key.clone());
        book.trades.insert(key, trade);
        Ok(fields(json!({ "out_trade_no": out_trade_no, "qr_code": qr_code, "qr_token": token })))
    }

    fn query(&self, app_id: &str, biz: &Value) -> Outcome {
        let mut book = self.book.lock();
        let now = self.core.now_ms();
        let t = find(&mut book, app_id, biz).filter(|t| t.visible()).ok_or_else(not_exist)?;
        expire_if_due(t, now);
        let mut f = fields(json!({
            "trade_no": t.trade_no, "out_trade_no": t.out_trade_no, "trade_status": t.status.as_str(),
            "total_amount": wire::yuan(t.total_fen), "buyer_user_id": "2088102177846880",
        }));
        if let Some(paid) = t.paid_at {
            f.insert("receipt_amount".into(), json!(wire::yuan(t.total_fen)));
            f.insert("buyer_pay_amount".into(), json!(wire::yuan(t.total_fen)));
            f.insert("send_pay_date".into(), json!(wire::timestamp(paid)));
        }
        Ok(f)
    }

    fn close(&self, app_id: &str, biz: &Value) -> Outcome {
        let keeps_code = lock(&self.faults).peek(app_id).unscanned_close_keeps_code;
        let mut book = self.book.lock();
        let now = self.core.now_ms();
        let t = find(&mut book, app_id, biz).ok_or_else(not_exist)?;
        expire_if_due(t, now);
        if !t.visible() {
            // Never scanned: nothing to close at Alipay, and the code no longer pays
            // (unless told to behave as Alipay may).
            if !keeps_code {
                t.status = Status::Closed;
            }
            return Err(not_exist());
        }
        if t.status != Status::WaitBuyerPay {
            return Err(business("ACQ.TRADE_STATUS_ERROR", "the trade is not waiting for payment"));
        }
        t.status = Status::Closed;
        Ok(fields(json!({ "trade_no": t.trade_no, "out_trade_no": t.out_trade_no })))
    }

    fn refund(&self, app_id: &str, biz: &Value) -> Outcome {
        let Some(fen) = wire::fen(text(biz, "refund_amount")) else {
            return Err(business("ACQ.INVALID_PARAMETER", "refund_amount"));
        };
        let now = self.core.now_ms();
        let notification;
        let answer;
        {
            let mut book = self.book.lock();
            let t = find(&mut book, app_id, biz).filter(|t| t.visible()).ok_or_else(not_exist)?;
            let request_no = match text(biz, "out_request_no") {
                "" => t.out_trade_no.clone(),
                n => n.to_owned(),
            };
            if let Some(done) = t.refunds.iter().find(|r| r.out_request_no == request_no) {
                if done.fen != fen {
                    return Err(business("ACQ.INVALID_PARAMETER", "this out_request_no was used with another amount"));
                }
                return Ok(fields(json!({
                    "trade_no": t.trade_no, "out_trade_no": t.out_trade_no, "refund_fee": wire::yuan(t.refunded_fen()),
                    "fund_change": "N", "gmt_refund_pay": wire::timestamp(done.at),
                })));
            }
            if t.status != Status::Success {
                return Err(business("ACQ.TRADE_STATUS_ERROR", "the trade is not paid"));
            }
            if t.refunded_fen() + fen > t.total_fen {
                return Err(business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "more than the refundable amount"));
            }
            t.refunds.push(Refund { out_request_no: request_no.clone(), fen, at: now });
            if t.refunded_fen() == t.total_fen {
                t.status = Status::Closed;
            }
            answer = fields(json!({
                "trade_no": t.trade_no, "out_trade_no": t.out_trade_no, "refund_fee": wire::yuan(t.refunded_fen()),
                "fund_change": "Y", "gmt_refund_pay": wire::timestamp(now),
            }));
            let mut n = self.notification(t, now);
            n.insert("refund_fee".into(), wire::yuan(t.refunded_fen()));
            n.insert("gmt_refund".into(), wire::timestamp(now));
            n.insert("out_biz_no".into(), request_no);
            notification = (t.notify_url.clone(), n);
        }
        self.send(notification.0, notification.1);
        Ok(answer)
    }

    fn refund_query(&self, app_id: &str, biz: &Value) -> Outcome {
        let mut book = self.book.lock();
        let t = find(&mut book, app_id, biz).filter(|t| t.visible()).ok_or_else(not_exist)?;
        let request_no = match text(biz, "out_request_no") {
            "" => t.out_trade_no.clone(),
            n => n.to_owned(),
        };
        let mut f =
            fields(json!({ "trade_no": t.trade_no, "out_trade_no": t.out_trade_no, "out_request_no": request_no }));
        if let Some(r) = t.refunds.iter().find(|r| r.out_request_no == request_no) {
            f.insert("refund_amount".into(), json!(wire::yuan(r.fen)));
            f.insert("total_amount".into(), json!(wire::yuan(t.total_fen)));
            f.insert("refund_status".into(), json!("REFUND_SUCCESS"));
        }
        Ok(f)
    }

    fn bill_url(&self, app_id: &str, biz: &Value) -> Outcome {
        let date = text(biz, "bill_date");
        if text(biz, "bill_type") != "trade" || wire::parse_timestamp(&format!("{date} 00:00:00")).is_none() {
            return Err(business("ACQ.INVALID_PARAMETER", "bill_type must be trade and bill_date yyyy-MM-dd"));
        }
        let now = self.core.now_ms();
        // A day's bill exists once the day has ended (Beijing time).
        if date >= wire::date(now).as_str() {
            return Err(business("BILL_NOT_EXIST", "the bill of that date is not ready"));
        }
        let token = random_hex(16);
        let link = BillLink { app_id: app_id.to_owned(), date: date.to_owned(), until: now + BILL_URL_LIFE_MS };
        self.book.lock().bills.insert(token.clone(), link);
        Ok(fields(json!({ "bill_download_url": format!("{}/alipay/bill/{token}", self.core.base_url) })))
    }

    fn bill_file(&self, token: &str) -> SimResponse {
        let now = self.core.now_ms();
        let book = self.book.lock();
        let Some(BillLink { app_id, date, .. }) = book.bills.get(token).filter(|l| l.until >= now) else {
            return answer(StatusCode::NOT_FOUND, "text/plain", "the link has expired");
        };
        let date = date.as_str();
        let fee = |fen: i64| -> i64 { (Decimal::from(fen) * self.fee_rate).round().to_i64().unwrap_or(0) };
        let mut rows = Vec::new();
        let mut trades: Vec<&Trade> = book.trades.values().filter(|t| &t.app_id == app_id).collect();
        trades.sort_by_key(|t| t.created);
        for t in trades {
            if let Some(paid) = t.paid_at.filter(|p| wire::date(*p) == date) {
                rows.push(BillRow {
                    trade_no: t.trade_no.clone(),
                    out_trade_no: t.out_trade_no.clone(),
                    refund: false,
                    subject: t.subject.clone(),
                    created: t.created,
                    finished: paid,
                    order_fen: t.total_fen,
                    net_fen: t.total_fen,
                    refund_no: String::new(),
                    fee_fen: -fee(t.total_fen),
                });
            }
            for r in t.refunds.iter().filter(|r| wire::date(r.at) == date) {
                rows.push(BillRow {
                    trade_no: t.trade_no.clone(),
                    out_trade_no: t.out_trade_no.clone(),
                    refund: true,
                    subject: t.subject.clone(),
                    created: t.created,
                    finished: r.at,
                    order_fen: t.total_fen,
                    net_fen: -r.fen,
                    refund_no: r.out_request_no.clone(),
                    fee_fen: fee(r.fen),
                });
            }
        }
        match bill::write_zip(&self.seller_id, date, &rows) {
            Ok(zip) => answer(StatusCode::OK, "application/zip", zip),
            Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e),
        }
    }

    /// The buyer's page behind the QR code; `pay` is the buyer pressing Pay.
    fn cashier(&self, token: &str, pay: bool) -> SimResponse {
        let key = {
            let mut book = self.book.lock();
            let Some(id) = book.codes.get(token).cloned() else {
                return answer(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "二维码无效 (no such code)");
            };
            if let Some(t) = book.trades.get_mut(&id) {
                t.scanned = true;
            }
            id
        };
        let message = if pay {
            match self.pay_trade(&key) {
                Ok(_) => "支付成功 — paid".to_owned(),
                Err(e) => format!("无法支付 — {e}"),
            }
        } else {
            String::new()
        };
        let book = self.book.lock();
        let Some(t) = book.trades.get(&key) else {
            return answer(StatusCode::NOT_FOUND, "text/plain", "no such trade");
        };
        let body = format!(
            "<p>{}</p><p id=\"amount\">¥ {}</p><p>status: <b id=\"status\">{}</b></p><p>{}</p>",
            html_escape::encode_text(&t.subject),
            wire::yuan(t.total_fen),
            t.status.as_str(),
            html_escape::encode_text(&message),
        );
        let action = format!("/alipay/qr/{token}");
        crate::sim::cashier_page("支付宝", &body, (t.status == Status::WaitBuyerPay).then_some(action.as_str()))
    }

    /// The buyer pays the trade kept under `key`: it succeeds and the merchant is
    /// notified.
    fn pay_trade(&self, key: &str) -> Result<String, String> {
        let now = self.core.now_ms();
        let (url, params, trade_no) = {
            let mut book = self.book.lock();
            let t = book.trades.get_mut(key).ok_or("no such trade")?;
            expire_if_due(t, now);
            match t.status {
                Status::WaitBuyerPay => {}
                Status::Success => return Ok(t.trade_no.clone()),
                Status::Closed => return Err("the trade is closed".into()),
            }
            t.scanned = true;
            t.status = Status::Success;
            t.paid_at = Some(now);
            (t.notify_url.clone(), self.notification(t, now), t.trade_no.clone())
        };
        self.send(url, params);
        Ok(trade_no)
    }

    fn notification(&self, t: &Trade, now: i64) -> Params {
        let total = wire::yuan(t.total_fen);
        let mut p: Params = [
            ("notify_time", wire::timestamp(now)),
            ("notify_type", "trade_status_sync".into()),
            ("notify_id", random_hex(16)),
            ("app_id", t.app_id.clone()),
            ("charset", "utf-8".into()),
            ("version", "1.0".into()),
            ("trade_no", t.trade_no.clone()),
            ("out_trade_no", t.out_trade_no.clone()),
            ("buyer_id", "2088102177846880".into()),
            ("seller_id", self.seller_id.clone()),
            ("trade_status", t.status.as_str().into()),
            ("total_amount", total.clone()),
            ("receipt_amount", total.clone()),
            ("buyer_pay_amount", total.clone()),
            ("subject", t.subject.clone()),
            ("gmt_create", wire::timestamp(t.created)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(paid) = t.paid_at {
            p.insert("gmt_payment".into(), wire::timestamp(paid));
            p.insert("fund_bill_list".into(), json!([{ "amount": total, "fundChannel": "ALIPAYACCOUNT" }]).to_string());
        }
        // Never send empty fields.
        p.retain(|_, v| !v.is_empty());
        p
    }

    fn send(&self, url: String, mut params: Params) {
        if url.is_empty() {
            return;
        }
        wire::sign_notification(&mut params, &self.key);
        let body = wire::form(&params).into_bytes();
        let headers = vec![("content-type", "application/x-www-form-urlencoded; charset=utf-8".to_owned())];
        let n = super::Notification { url, headers, body, sign: None };
        // Exactly the 7 bytes `success`; anything else is retried.
        super::notify_until_acknowledged(
            Arc::clone(&self.core),
            n,
            |status, body| status == 200 && body == b"success",
            &RETRIES,
        );
    }
}

impl AlipaySim {
    /// The key of the trade `out_trade_no` of `app_id`, or, with no app named, of the
    /// latest trade opened under that number by any app.
    fn key_of(&self, app_id: Option<&str>, out_trade_no: &str) -> Option<String> {
        let book = self.book.lock();
        match app_id {
            Some(app) => Some(trade_key(app, out_trade_no)).filter(|k| book.trades.contains_key(k)),
            None => book
                .trades
                .values()
                .filter(|t| t.out_trade_no == out_trade_no)
                .max_by_key(|t| (t.created, t.trade_no.clone()))
                .map(|t| trade_key(&t.app_id, &t.out_trade_no)),
        }
    }
}

impl super::Controlled for AlipaySim {
    fn pay(&self, account: Option<&str>, out_trade_no: &str) -> Result<Value, String> {
        let key = self.key_of(account, out_trade_no).ok_or("no such trade")?;
        self.pay_trade(&key).map(|trade_no| json!({ "trade_no": trade_no }))
    }

    fn trade(&self, account: Option<&str>, out_trade_no: &str) -> Option<Value> {
        let key = self.key_of(account, out_trade_no)?;
        let book = self.book.lock();
        let t = book.trades.get(&key)?;
        Some(json!({
            "app_id": t.app_id, "out_trade_no": t.out_trade_no, "trade_no": t.trade_no, "status": t.status.as_str(),
            "scanned": t.scanned, "total_amount": wire::yuan(t.total_fen),
            "refunded_amount": wire::yuan(t.refunded_fen()),
        }))
    }

    fn faults(&self) -> &Mutex<FaultBook> {
        &self.faults
    }
}

fn code_of(qr_code: &str) -> &str {
    qr_code.rsplit('/').next().unwrap_or_default()
}

fn not_exist() -> (&'static str, &'static str, &'static str, String) {
    business("ACQ.TRADE_NOT_EXIST", "the trade does not exist")
}

/// The trade of `app_id` a call names, by `out_trade_no` or else Alipay's `trade_no`.
fn find<'a>(book: &'a mut Book, app_id: &str, biz: &Value) -> Option<&'a mut Trade> {
    let by_trade_no = text(biz, "trade_no");
    let key = match text(biz, "out_trade_no") {
        "" => book
            .trades
            .values()
            .find(|t| t.app_id == app_id && t.trade_no == by_trade_no)
            .map(|t| trade_key(app_id, &t.out_trade_no))?,
        o => trade_key(app_id, o),
    };
    book.trades.get_mut(&key)
}

/// The book, carried over from the layout before per-app trades on first start.
fn open_book(store: &SimStore) -> Result<Persisted<Book>, String> {
    let book: Persisted<Book> = store.book("alipay-v2")?;
    let empty = book.lock().trades.is_empty();
    if empty {
        let legacy: Persisted<LegacyBook> = store.book("alipay")?;
        let old = legacy.lock();
        if !old.trades.is_empty() {
            *book.lock() = Book::from(&*old);
        }
    }
    Ok(book)
}

fn expire_if_due(t: &mut Trade, now: i64) {
    if t.status == Status::WaitBuyerPay && t.expire.is_some_and(|e| now > e) {
        t.status = Status::Closed;
    }
}
