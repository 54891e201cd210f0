//! The simulated UnionPay online gateway 5.1.0 under `/gateway/api`:
//! the front form (`frontTransReq.do`, GET or POST) that opens a consume and shows the
//! buyer a cashier, `queryTrans.do`, `backTransReq.do` for refunds, and
//! `fileTransfer.do` for the day's settlement file. Requests are
//! checked against the merchant's certificate named by certId; answers and
//! notifications are signed with the simulator's signing certificate, issued by its own
//! CA, which they carry in `signPubKeyCert`.

use super::store::{Persisted, SimStore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Method, StatusCode};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::json;
use std::str::FromStr;

use super::{answer, lock, random_hex, Fault, FaultBook, Notification, SimCore, SimRequest, SimResponse};
use crate::channels::alipay::wire::date;
use crate::channels::unionpay::bill::{self, ZmRow};
use crate::channels::unionpay::wire::{self, Params};
use crate::crypto::{Certificate, RsaSigner};

/// UnionPay repeats an unanswered notification a few times, further apart each time.
const RETRIES: [Duration; 5] = [
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(240),
    Duration::from_secs(480),
    Duration::from_secs(960),
];

/// `[sim.unionpay]`.
#[derive(Debug, Clone, Deserialize)]
pub struct UnionPaySimConfig {
    /// UnionPay's signing certificate (PEM), issued by the simulator's CA.
    pub signing_certificate: String,
    /// Its private key (sealed in the file).
    pub signing_private_key: String,
    /// The merchants that may call, with their certificates.
    pub merchants: Vec<UnionPaySimMerchant>,
    /// UnionPay's fee, as a share of each payment.
    #[serde(default = "default_fee_rate")]
    pub fee_rate: String,
}

fn default_fee_rate() -> String {
    "0.006".into()
}

/// One merchant of the simulated gateway.
#[derive(Debug, Clone, Deserialize)]
pub struct UnionPaySimMerchant {
    /// Its merId, which names it in every request and notification.
    pub mer_id: String,
    /// The merchant's signing certificate (PEM); its serial is the certId it sends.
    pub certificate: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Status {
    /// Opened by the front form, not paid.
    Open,
    Paid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refund {
    order_id: String,
    txn_time: String,
    amount: i64,
    query_id: String,
    at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trade {
    mer_id: String,
    order_id: String,
    txn_time: String,
    amount: i64,
    back_url: String,
    front_url: String,
    pay_timeout: Option<i64>,
    status: Status,
    query_id: String,
    paid_at: Option<i64>,
    refunds: Vec<Refund>,
    token: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Book {
    trades: HashMap<String, Trade>,
    tokens: HashMap<String, String>,
    next: u64,
}

/// The simulated UnionPay gateway.
pub struct UnionPaySim {
    core: Arc<SimCore>,
    cert_pem: String,
    cert_id: String,
    key: RsaSigner,
    fee_rate: Decimal,
    merchants: HashMap<String, (String, Certificate)>,
    book: Persisted<Book>,
    faults: Mutex<FaultBook>,
}

fn get<'a>(p: &'a Params, k: &str) -> &'a str {
    p.get(k).map(String::as_str).unwrap_or_default()
}

type Outcome = Result<Params, (&'static str, String)>;

fn fields(pairs: &[(&str, String)]) -> Params {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

impl UnionPaySim {
    /// The gateway for `config`.
    pub fn new(config: &UnionPaySimConfig, core: Arc<SimCore>, store: &SimStore) -> Result<UnionPaySim, String> {
        let cert = Certificate::from_pem("sim.unionpay.signing_certificate", &config.signing_certificate)
            .map_err(|e| e.to_string())?;
        let key = RsaSigner::from_text("sim.unionpay.signing_private_key", &config.signing_private_key)
            .map_err(|e| e.to_string())?;
        let mut merchants = HashMap::new();
        for m in &config.merchants {
            let c = Certificate::from_pem(&format!("sim.unionpay merchant {} certificate", m.mer_id), &m.certificate)
                .map_err(|e| e.to_string())?;
            merchants.insert(c.serial_decimal.clone(), (m.mer_id.clone(), c));
        }
        Ok(UnionPaySim {
            core,
            cert_pem: config.signing_certificate.trim().to_owned(),
            cert_id: cert.serial_decimal,
            key,
            fee_rate: Decimal::from_str(&config.fee_rate).map_err(|e| format!("sim.unionpay.fee_rate: {e}"))?,
            merchants,
            book: store.book("unionpay")?,
            faults: Mutex::default(),
        })
    }

    pub(super) async fn route(self: Arc<Self>, req: SimRequest) -> SimResponse {
        if let Some(answer) = super::control(self.as_ref(), "unionpay", &req) {
            return answer;
        }
        let path = req.path.as_str();
        match (&req.method, path) {
            (_, "/gateway/api/frontTransReq.do") => self.front(&req),
            (&Method::POST, "/gateway/api/queryTrans.do") => self.back(&req, false).await,
            (&Method::POST, "/gateway/api/backTransReq.do") => self.back(&req, true).await,
            (&Method::POST, "/gateway/api/fileTransfer.do") => self.back(&req, false).await,
            (m, p) if p.starts_with("/unionpay/cashier/") => {
                self.cashier(p.trim_start_matches("/unionpay/cashier/"), m == Method::POST)
            }
            _ => answer(StatusCode::NOT_FOUND, "text/plain", "no such route"),
        }
    }

    /// The merchant whose certificate signed `p`, by its certId and merId.
    fn check(&self, p: &Params) -> Result<String, (&'static str, String)> {
        let Some((mer_id, cert)) = self.merchants.get(get(p, "certId")) else {
            return Err(("11", "certId is not a known merchant certificate".into()));
        };
        if mer_id != get(p, "merId") {
            return Err(("11", "certId does not belong to merId".into()));
        }
        if get(p, "version") != wire::VERSION || !wire::verify_with(p, &cert.key) {
            return Err(("11", "验证签名失败".into()));
        }
        Ok(mer_id.clone())
    }

    /// The buyer's browser submits the front form: open the consume, show the cashier.
    fn front(&self, req: &SimRequest) -> SimResponse {
        let mut p = wire::parse_form(req.query.as_bytes());
        p.extend(wire::parse_form(&req.body));
        let opened = self.check(&p).and_then(|mer_id| self.open(&mer_id, &p));
        match opened {
            Ok(token) => self.cashier(&token, false),
            Err((code, msg)) => answer(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", format!("{code}: {msg}")),
        }
    }

    fn open(&self, mer_id: &str, p: &Params) -> Result<String, (&'static str, String)> {
        let order_id = get(p, "orderId");
        let amount: i64 = get(p, "txnAmt").parse().ok().filter(|a| *a > 0).ok_or(("30", "txnAmt".to_owned()))?;
        let valid_id = (8..=40).contains(&order_id.len()) && order_id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid_id || get(p, "txnType") != "01" || get(p, "txnTime").len() != 14 || get(p, "currencyCode") != "156" {
            return Err(("30", "orderId, txnType 01, txnTime and currencyCode 156 are required".into()));
        }
        let mut book = self.book.lock();
        if let Some(t) = book.trades.get(order_id) {
            return if t.txn_time == get(p, "txnTime") && t.amount == amount {
                Ok(t.token.clone())
            } else {
                Err(("12", "重复交易 (orderId used)".into()))
            };
        }
        book.next += 1;
        let token = random_hex(8);
        let trade = Trade {
            mer_id: mer_id.to_owned(),
            order_id: order_id.to_owned(),
            txn_time: get(p, "txnTime").to_owned(),
            amount,
            back_url: get(p, "backUrl").to_owned(),
            front_url: get(p, "frontUrl").to_owned(),
            pay_timeout: crate::channels::wechat::v2::wire::parse_time14(get(p, "payTimeout")),
            status: Status::Open,
            query_id: format!("{}{:07}", get(p, "txnTime"), book.next % 10_000_000),
            paid_at: None,
            refunds: Vec::new(),
            token: token.clone(),
        };
        book.tokens.insert(token.clone(), order_id.to_owned());
        book.trades.insert(order_id.to_owned(), trade);
        Ok(token)
    }

    async fn back(&self, req: &SimRequest, refund: bool) -> SimResponse {
        let faults = lock(&self.faults).of(get(&wire::parse_form(&req.body), "merId"));
        let fault = faults.roll().await;
        match fault {
            Fault::Outage => return answer(StatusCode::SERVICE_UNAVAILABLE, "text/html", "503"),
            Fault::Error => return answer(StatusCode::INTERNAL_SERVER_ERROR, "text/html", "500"),
            Fault::Malformed => return answer(StatusCode::OK, "text/html", "<html>系统繁忙</html>"),
            _ => {}
        }
        let p = wire::parse_form(&req.body);
        let outcome = self.check(&p).and_then(|mer_id| match (refund, get(&p, "txnType")) {
            (true, _) => self.refund(&mer_id, &p),
            (false, "76") => self.settlement_file(&mer_id, &p),
            (false, _) => self.query(&p),
        });
        let mut a = fields(&[
            ("version", wire::VERSION.into()),
            ("encoding", "UTF-8".into()),
            ("bizType", "000201".into()),
            ("accessType", "0".into()),
            ("merId", get(&p, "merId").to_owned()),
            ("orderId", get(&p, "orderId").to_owned()),
            ("txnTime", get(&p, "txnTime").to_owned()),
            ("txnType", get(&p, "txnType").to_owned()),
            ("txnSubType", get(&p, "txnSubType").to_owned()),
            ("signPubKeyCert", self.cert_pem.clone()),
        ]);
        a.retain(|_, v| !v.is_empty());
        match outcome {
            Ok(f) => {
                a.insert("respCode".into(), "00".into());
                a.insert("respMsg".into(), "成功[0000000]".into());
                a.extend(f);
            }
            Err((code, msg)) => {
                a.insert("respCode".into(), code.into());
                a.insert("respMsg".into(), msg);
            }
        }
        wire::sign(&mut a, &self.key, &self.cert_id);
        if fault == Fault::BadSignature {
            a.insert("txnAmt".into(), "1".into());
        }
        if fault == Fault::Hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        answer(StatusCode::OK, "text/plain;charset=UTF-8", wire::raw_answer(&a))
    }

    fn query(&self, p: &Params) -> Outcome {
        let (order_id, txn_time) = (get(p, "orderId"), get(p, "txnTime"));
        let now = self.core.now_ms();
        let book = self.book.lock();
        if let Some(t) = book.trades.get(order_id).filter(|t| t.txn_time == txn_time && t.mer_id == get(p, "merId")) {
            let (code, msg) = match t.status {
                Status::Paid => ("00", "成功[0000000]"),
                Status::Open if t.pay_timeout.is_some_and(|e| now > e) => ("98", "交易已超时"),
                Status::Open => ("05", "交易处理中"),
            };
            return Ok(fields(&[
                ("origRespCode", code.into()),
                ("origRespMsg", msg.into()),
                ("queryId", t.query_id.clone()),
                ("txnAmt", t.amount.to_string()),
                ("currencyCode", "156".into()),
            ]));
        }
        let refund = book
            .trades
            .values()
            .flat_map(|t| t.refunds.iter())
            .find(|r| r.order_id == order_id && r.txn_time == txn_time);
        match refund {
            Some(r) => Ok(fields(&[
                ("origRespCode", "00".into()),
                ("origRespMsg", "成功[0000000]".into()),
                ("queryId", r.query_id.clone()),
                ("txnAmt", r.amount.to_string()),
            ])),
            None => Err(("34", "查无此交易".into())),
        }
    }

    /// The settlement file of `settleDate` (MMDD of this year), once that day has ended.
    fn settlement_file(&self, mer_id: &str, p: &Params) -> Outcome {
        let now = self.core.now_ms();
        let today = date(now);
        let settle = get(p, "settleDate");
        let day = format!(
            "{}-{}-{}",
            today.get(..4).unwrap_or_default(),
            settle.get(..2).unwrap_or_default(),
            settle.get(2..).unwrap_or_default()
        );
        if settle.len() != 4 || get(p, "fileType") != "00" || day >= today {
            return Err(("98", "文件不存在".into()));
        }
        let fee = |fen: i64| (Decimal::from(fen) * self.fee_rate).round().to_i64().unwrap_or(0);
        let mut rows = Vec::new();
        {
            let book = self.book.lock();
            let mut trades: Vec<&Trade> = book.trades.values().filter(|t| t.mer_id == mer_id).collect();
            trades.sort_by_key(|t| t.paid_at);
            for t in trades {
                let row = |time, query_id: &str, order_id: &str, orig: Option<String>, amount, fee| ZmRow {
                    time,
                    query_id: query_id.to_owned(),
                    order_id: order_id.to_owned(),
                    orig_query_id: orig,
                    mer_id: mer_id.to_owned(),
                    amount,
                    fee,
                };
                if let Some(paid) = t.paid_at.filter(|at| date(*at) == day) {
                    rows.push(row(paid, &t.query_id, &t.order_id, None, t.amount, fee(t.amount)));
                }
                for r in t.refunds.iter().filter(|r| date(r.at) == day) {
                    rows.push(row(r.at, &r.query_id, &r.order_id, Some(t.query_id.clone()), r.amount, -fee(r.amount)));
                }
            }
        }
        let name = bill::file_name(day.get(2..).unwrap_or_default().replace('-', "").as_str(), mer_id);
        let content = bill::write(&name, &rows).map_err(|e| ("99", e))?;
        Ok(fields(&[
            ("fileName", name),
            ("fileContent", content),
            ("fileType", "00".into()),
            ("settleDate", settle.to_owned()),
        ]))
    }

    fn refund(&self, mer_id: &str, p: &Params) -> Outcome {
        let amount: i64 = get(p, "txnAmt").parse().ok().filter(|a| *a > 0).ok_or(("30", "txnAmt".to_owned()))?;
        let (order_id, txn_time) = (get(p, "orderId"), get(p, "txnTime"));
        if get(p, "txnType") != "04" || !(8..=40).contains(&order_id.len()) || txn_time.len() != 14 {
            return Err(("30", "txnType 04, orderId and txnTime are required".into()));
        }
        let notification = {
            let mut book = self.book.lock();
            let t = book
                .trades
                .values_mut()
                .find(|t| t.query_id == get(p, "origQryId") && t.mer_id == mer_id)
                .ok_or(("35", "原交易不存在".to_owned()))?;
            if let Some(r) = t.refunds.iter().find(|r| r.order_id == order_id) {
                return if r.amount == amount && r.txn_time == txn_time {
                    Ok(fields(&[("queryId", r.query_id.clone()), ("txnAmt", amount.to_string())]))
                } else {
                    Err(("12", "重复交易".into()))
                };
            }
            if t.status != Status::Paid {
                return Err(("36", "原交易状态不正确".into()));
            }
            if t.refunds.iter().map(|r| r.amount).sum::<i64>() + amount > t.amount {
                return Err(("38", "退货金额超限".into()));
            }
            let query_id = format!("{txn_time}{:07}", t.refunds.len() + 1);
            t.refunds.push(Refund {
                order_id: order_id.to_owned(),
                txn_time: txn_time.to_owned(),
                amount,
                query_id: query_id.clone(),
                at: self.core.now_ms(),
            });
            let n = fields(&[
                ("txnType", "04".into()),
                ("txnSubType", "00".into()),
                ("orderId", order_id.to_owned()),
                ("txnTime", txn_time.to_owned()),
                ("txnAmt", amount.to_string()),
                ("origQryId", t.query_id.clone()),
                ("queryId", query_id.clone()),
            ]);
            (get(p, "backUrl").to_owned(), n, query_id)
        };
        let (url, n, query_id) = notification;
        self.notify(mer_id, url, n);
        Ok(fields(&[("queryId", query_id), ("txnAmt", amount.to_string())]))
    }

    /// Signs `extra` as a notification to merchant `mer_id` and posts it to `url`
    /// until UnionPay's rule (HTTP 200) says it was taken.
    fn notify(&self, mer_id: &str, url: String, extra: Params) {
        if url.is_empty() {
            return;
        }
        let mut n = fields(&[
            ("version", wire::VERSION.into()),
            ("encoding", "UTF-8".into()),
            ("bizType", "000201".into()),
            ("accessType", "0".into()),
            ("merId", mer_id.to_owned()),
            ("currencyCode", "156".into()),
            ("respCode", "00".into()),
            ("respMsg", "成功[0000000]".into()),
            ("traceTime", wire::txn_time(self.core.now_ms()).get(4..).unwrap_or_default().to_owned()),
            ("signPubKeyCert", self.cert_pem.clone()),
        ]);
        n.extend(extra);
        wire::sign(&mut n, &self.key, &self.cert_id);
        let headers = vec![("content-type", "application/x-www-form-urlencoded;charset=UTF-8".to_owned())];
        let notification = Notification { url, headers, body: wire::form(&n).into_bytes(), sign: None };
        super::notify_until_acknowledged(Arc::clone(&self.core), notification, |status, _| status == 200, &RETRIES);
    }

    fn cashier(&self, token: &str, pay: bool) -> SimResponse {
        let Some(order_id) = self.book.lock().tokens.get(token).cloned() else {
            return answer(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "no such payment page");
        };
        let message = if pay {
            self.pay_trade(&order_id).map_or_else(|e| e, |_| "支付成功 — paid".into())
        } else {
            String::new()
        };
        let book = self.book.lock();
        let Some(t) = book.trades.get(&order_id) else {
            return answer(StatusCode::NOT_FOUND, "text/plain", "no such trade");
        };
        let back = if t.status == Status::Paid && !t.front_url.is_empty() {
            format!(
                "<p><a href=\"{}\">返回商户 — back to the merchant</a></p>",
                html_escape::encode_double_quoted_attribute(&t.front_url)
            )
        } else {
            String::new()
        };
        let body = format!(
            "<p>{}</p><p id=\"amount\">¥ {}.{:02}</p><p>status: <b id=\"status\">{}</b></p><p>{}</p>{back}",
            html_escape::encode_text(&t.order_id),
            t.amount / 100,
            t.amount % 100,
            if t.status == Status::Paid { "PAID" } else { "OPEN" },
            html_escape::encode_text(&message),
        );
        let action = format!("/unionpay/cashier/{token}");
        crate::sim::cashier_page("银联在线支付", &body, (t.status == Status::Open).then_some(action.as_str()))
    }

    /// The buyer pays: the consume succeeds and the merchant is notified.
    fn pay_trade(&self, order_id: &str) -> Result<String, String> {
        let now = self.core.now_ms();
        let (mer_id, url, n, query_id) = {
            let mut book = self.book.lock();
            let t = book.trades.get_mut(order_id).ok_or("no such trade")?;
            match t.status {
                Status::Paid => return Ok(t.query_id.clone()),
                Status::Open if t.pay_timeout.is_some_and(|e| now > e) => return Err("the payment timed out".into()),
                Status::Open => {}
            }
            t.status = Status::Paid;
            t.paid_at = Some(now);
            let n = fields(&[
                ("txnType", "01".into()),
                ("txnSubType", "01".into()),
                ("orderId", t.order_id.clone()),
                ("txnTime", t.txn_time.clone()),
                ("txnAmt", t.amount.to_string()),
                ("queryId", t.query_id.clone()),
                ("settleAmt", t.amount.to_string()),
                ("settleCurrencyCode", "156".into()),
                ("settleDate", wire::txn_time(now).get(4..8).unwrap_or_default().to_owned()),
                ("accNo", "6216***********0018".into()),
                ("payType", "0001".into()),
            ]);
            (t.mer_id.clone(), t.back_url.clone(), n, t.query_id.clone())
        };
        self.notify(&mer_id, url, n);
        Ok(query_id)
    }
}

impl super::Controlled for UnionPaySim {
    fn pay(&self, account: Option<&str>, out_trade_no: &str) -> Result<serde_json::Value, String> {
        self.trade(account, out_trade_no).ok_or("no such trade")?;
        self.pay_trade(out_trade_no).map(|query_id| json!({ "queryId": query_id }))
    }

    fn trade(&self, account: Option<&str>, out_trade_no: &str) -> Option<serde_json::Value> {
        let book = self.book.lock();
        let t = book.trades.get(out_trade_no).filter(|t| account.is_none_or(|a| a == t.mer_id))?;
        Some(json!({ "orderId": t.order_id, "txnTime": t.txn_time, "txnAmt": t.amount, "queryId": t.query_id,
                     "status": if t.status == Status::Paid { "PAID" } else { "OPEN" },
                     "refunded": t.refunds.iter().map(|r| r.amount).sum::<i64>() }))
    }

    fn faults(&self) -> &Mutex<FaultBook> {
        &self.faults
    }
}
