//! The simulated WeChat Pay API v3 (JSON): every request must carry a valid merchant
//! Authorization header; every answer, 204s and errors included, is signed with the
//! platform key; notifications and `/v3/certificates` carry resources sealed under the
//! merchant's APIv3 key.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::{
    Api, Merchant, MerchantV3, NewRefund, NewTrade, Platform, Refund, RefundStatus, Refusal, Trade, WechatSim,
};
use crate::channels::wechat::bill;
use crate::channels::wechat::v3::wire;
use crate::sim::{answer, Fault, Notification, SimRequest, SimResponse};

/// v3 wants any 2xx.
pub(super) fn acknowledged(status: u16, _body: &[u8]) -> bool {
    (200..300).contains(&status)
}

/// Unix seconds of the wall clock: signatures are checked against real time, whatever
/// the simulated business clock says.
fn wall_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// A successful v3 answer.
enum Reply {
    /// JSON, signed.
    Json(StatusCode, Value),
    /// 204, signed over the empty body.
    NoContent,
    /// A bill file: the one answer v3 does not sign (tradebill gave its hash).
    File(Vec<u8>),
}

type Outcome = Result<Reply, (StatusCode, &'static str, String)>;

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> (StatusCode, &'static str, String) {
    (status, code, message.into())
}

/// v3's status, code and message for a refusal.
fn worded(r: Refusal) -> (StatusCode, &'static str, String) {
    match r {
        Refusal::NotFound => error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在"),
        Refusal::OutTradeNoUsed => error(StatusCode::BAD_REQUEST, "OUT_TRADE_NO_USED", "商户订单号重复"),
        Refusal::Closed => error(StatusCode::BAD_REQUEST, "ORDER_CLOSED", "订单已关闭"),
        Refusal::Paid => error(StatusCode::BAD_REQUEST, "ORDERPAID", "订单已支付"),
        Refusal::NotRefundable => error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "订单状态不允许退款"),
        Refusal::NotEnough => error(StatusCode::FORBIDDEN, "NOT_ENOUGH", "可退金额不足"),
        Refusal::RefundNoReused => {
            error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "out_refund_no was used with another amount")
        }
        Refusal::RefundNotFound => error(StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "退款单不存在"),
    }
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn query_param<'a>(query: &'a str, name: &str) -> &'a str {
    query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).unwrap_or_default()
}

impl WechatSim {
    pub(super) async fn v3_api(self: &Arc<Self>, req: &SimRequest) -> SimResponse {
        let Some(platform) = &self.platform else {
            return answer(StatusCode::NOT_FOUND, "text/plain", "API v3 is not configured in this simulator");
        };
        let mchid =
            req.header("authorization").and_then(wire::Authorization::parse).map(|a| a.mchid).unwrap_or_default();
        let faults = crate::sim::lock(&self.faults).of(&mchid);
        let fault = faults.roll().await;
        match fault {
            Fault::Outage => return answer(StatusCode::SERVICE_UNAVAILABLE, "text/html", "503"),
            Fault::Error => {
                return self.signed(
                    platform,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"code":"SYSTEM_ERROR","message":"系统错误"}),
                    fault,
                )
            }
            Fault::Malformed => return answer(StatusCode::OK, "text/html", "<html>system busy</html>"),
            _ => {}
        }
        let outcome = match self.authenticated(req) {
            Ok((m, v3)) => self.v3_call(req, m, v3),
            Err(e) => Err(e),
        };
        if fault == Fault::Hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        match outcome {
            Ok(Reply::Json(status, v)) => self.signed(platform, status, &v, fault),
            Ok(Reply::NoContent) => self.signed_bytes(platform, StatusCode::NO_CONTENT, Vec::new(), fault),
            Ok(Reply::File(bytes)) => answer(StatusCode::OK, "application/octet-stream", bytes),
            Err((status, code, message)) => {
                self.signed(platform, status, &json!({ "code": code, "message": message }), fault)
            }
        }
    }

    /// The merchant whose Authorization header signs this request.
    fn authenticated(&self, req: &SimRequest) -> Result<(&Merchant, &MerchantV3), (StatusCode, &'static str, String)> {
        let sign_error = |why: &str| error(StatusCode::UNAUTHORIZED, "SIGN_ERROR", why.to_owned());
        let header = req.header("authorization").ok_or_else(|| sign_error("Authorization is missing"))?;
        let auth = wire::Authorization::parse(header).ok_or_else(|| sign_error("Authorization is malformed"))?;
        let m = self.merchants.get(&auth.mchid).ok_or_else(|| sign_error("mchid is not known"))?;
        let v3 = m.v3.as_ref().ok_or_else(|| sign_error("the merchant has no API v3 certificate"))?;
        if auth.serial_no != v3.serial {
            return Err(sign_error("serial_no is not the merchant's certificate"));
        }
        let path_and_query =
            if req.query.is_empty() { req.path.clone() } else { format!("{}?{}", req.path, req.query) };
        if !auth.verify(&v3.public_key, req.method.as_str(), &path_and_query, &req.body) {
            return Err(sign_error("签名错误"));
        }
        Ok((m, v3))
    }

    fn v3_call(self: &Arc<Self>, req: &SimRequest, m: &Merchant, v3: &MerchantV3) -> Outcome {
        let body: Value = if req.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&req.body)
                .map_err(|_| error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "body is not JSON"))?
        };
        let path = req.path.as_str();
        const TRADE: &str = "/v3/pay/transactions/out-trade-no/";
        const TRADE_BY_ID: &str = "/v3/pay/transactions/id/";
        const REFUNDS: &str = "/v3/refund/domestic/refunds";
        match (&req.method, path) {
            (&Method::POST, "/v3/pay/transactions/native") => self.v3_native(m, &body),
            (&Method::POST, p) if p.starts_with(TRADE) && p.ends_with("/close") => {
                let no = p.trim_start_matches(TRADE).trim_end_matches("/close");
                if text(&body, "mchid") != m.mch_id {
                    return Err(error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "mchid"));
                }
                self.close_trade(&m.mch_id, no).map_err(worded)?;
                Ok(Reply::NoContent)
            }
            (&Method::GET, p) if p.starts_with(TRADE) || p.starts_with(TRADE_BY_ID) => {
                if query_param(&req.query, "mchid") != m.mch_id {
                    return Err(error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "mchid"));
                }
                let out_trade_no = match p.strip_prefix(TRADE_BY_ID) {
                    Some(id) => self.out_trade_no_of(&m.mch_id, id).unwrap_or_default(),
                    None => p.trim_start_matches(TRADE).to_owned(),
                };
                let t = self.with_trade(&m.mch_id, &out_trade_no, |t, _| Ok(t.clone())).map_err(worded)?;
                Ok(Reply::Json(StatusCode::OK, transaction(&t)))
            }
            (&Method::POST, REFUNDS) => {
                let fee = body.get("amount").and_then(|a| a.get("refund")).and_then(Value::as_i64).filter(|f| *f > 0);
                let total = body.get("amount").and_then(|a| a.get("total")).and_then(Value::as_i64);
                let (Some(fee), Some(total)) = (fee, total) else {
                    return Err(error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "amount.refund and amount.total"));
                };
                let out_trade_no = text(&body, "out_trade_no");
                let trade_total = self.with_trade(&m.mch_id, out_trade_no, |t, _| Ok(t.total_fee)).map_err(worded)?;
                if trade_total != total {
                    return Err(error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "amount.total is not the order's"));
                }
                let asked = NewRefund {
                    mch_id: &m.mch_id,
                    out_trade_no,
                    out_refund_no: text(&body, "out_refund_no"),
                    fee,
                    notify_url: text(&body, "notify_url"),
                };
                let (t, r) = self.refund_trade(&asked).map_err(worded)?;
                Ok(Reply::Json(StatusCode::OK, refund(&t, &r)))
            }
            (&Method::GET, p) if p.starts_with(REFUNDS) => {
                let no = p.trim_start_matches(REFUNDS).trim_start_matches('/');
                let no: String =
                    form_urlencoded::parse(format!("n={no}").as_bytes()).map(|(_, v)| v.into_owned()).collect();
                let (t, r) = self.find_refund(&m.mch_id, &no).map_err(worded)?;
                Ok(Reply::Json(StatusCode::OK, refund(&t, &r)))
            }
            (&Method::GET, "/v3/bill/tradebill") => {
                let day = query_param(&req.query, "bill_date");
                let rows = self
                    .bill_rows(&m.appid, &m.mch_id, day)
                    .ok_or_else(|| error(StatusCode::BAD_REQUEST, "NO_STATEMENT_EXIST", "账单文件不存在"))?;
                let file = bill::write(&rows);
                // GZIP: the file comes compressed; the hash is the plain file's.
                let gzip = query_param(&req.query, "tar_type") == "GZIP";
                let url = format!(
                    "{}/v3/billdownload/file?token={}.{day}{}",
                    self.core.base_url,
                    m.mch_id,
                    if gzip { ".gz" } else { "" }
                );
                let hash = hex::encode_upper(Sha1::digest(file.as_bytes()));
                Ok(Reply::Json(StatusCode::OK, json!({ "hash_type": "SHA1", "hash_value": hash, "download_url": url })))
            }
            (&Method::GET, "/v3/billdownload/file") => {
                let token = query_param(&req.query, "token");
                let (mch, day) = token.split_once('.').unwrap_or_default();
                let (day, gzip) = match day.strip_suffix(".gz") {
                    Some(day) => (day, true),
                    None => (day, false),
                };
                match self.bill_rows(&m.appid, &m.mch_id, day).filter(|_| mch == m.mch_id) {
                    Some(rows) if gzip => Ok(Reply::File(gzipped(bill::write(&rows).as_bytes()))),
                    Some(rows) => Ok(Reply::File(bill::write(&rows).into_bytes())),
                    None => Err(error(StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "no such bill")),
                }
            }
            (&Method::GET, "/v3/certificates") => self.v3_certificates(v3),
            _ => Err(error(StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", format!("no API {} {path}", req.method))),
        }
    }

    fn v3_native(&self, m: &Merchant, body: &Value) -> Outcome {
        if text(body, "mchid") != m.mch_id || text(body, "appid") != m.appid {
            return Err(error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "appid and mchid must be the caller's"));
        }
        let total = body.get("amount").and_then(|a| a.get("total")).and_then(Value::as_i64).filter(|t| *t > 0);
        let out_trade_no = text(body, "out_trade_no");
        let Some(total) = total.filter(|_| (6..=32).contains(&out_trade_no.len())) else {
            return Err(error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "out_trade_no and amount.total are required"));
        };
        let code_url = self
            .open(&NewTrade {
                appid: &m.appid,
                mch_id: &m.mch_id,
                api: Api::V3,
                out_trade_no,
                total_fee: total,
                body: text(body, "description"),
                notify_url: text(body, "notify_url"),
                expire: wire::parse_rfc3339(text(body, "time_expire")),
            })
            .map_err(worded)?;
        Ok(Reply::Json(StatusCode::OK, json!({ "code_url": code_url })))
    }

    fn v3_certificates(&self, v3: &MerchantV3) -> Outcome {
        let p =
            self.platform.as_ref().ok_or_else(|| error(StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "no platform"))?;
        let (nonce, ciphertext) = wire::encrypt(&v3.api_v3_key, "certificate", p.certificate.as_bytes())
            .ok_or_else(|| error(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_ERROR", "seal"))?;
        let cert = crate::crypto::Certificate::from_pem("sim platform", &p.certificate)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_ERROR", e.to_string()))?;
        let item = json!({
            "serial_no": p.serial,
            "effective_time": wire::rfc3339_beijing(cert.not_before.saturating_mul(1000)),
            "expire_time": wire::rfc3339_beijing(cert.not_after.saturating_mul(1000)),
            "encrypt_certificate": { "algorithm": "AEAD_AES_256_GCM", "nonce": nonce,
                                     "associated_data": "certificate", "ciphertext": ciphertext },
        });
        Ok(Reply::Json(StatusCode::OK, json!({ "data": [item] })))
    }

    fn signed(&self, p: &Platform, status: StatusCode, v: &Value, fault: Fault) -> SimResponse {
        self.signed_bytes(p, status, v.to_string().into_bytes(), fault)
    }

    fn signed_bytes(&self, p: &Platform, status: StatusCode, body: Vec<u8>, fault: Fault) -> SimResponse {
        let signed_body: &[u8] = if fault == Fault::BadSignature { b"not these bytes" } else { &body };
        let headers = wire::signature_headers(&p.key, &p.serial, signed_body, wall_secs());
        let mut r = answer(status, "application/json", body);
        for (k, v) in headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                r.headers_mut().insert(HeaderName::from_static(k), v);
            }
        }
        r
    }

    /// The notification of a paid trade: the transaction sealed under the merchant's
    /// APIv3 key, signed afresh with the platform key on every attempt.
    pub(super) fn v3_notification(&self, m: &Merchant, t: &Trade, now: i64) -> Result<Notification, String> {
        let event = ("TRANSACTION.SUCCESS", "支付成功", "transaction");
        self.v3_event(m, &t.notify_url, event, &transaction(t), now)
    }

    /// A refund's notification: `REFUND.SUCCESS`, `REFUND.ABNORMAL` or `REFUND.CLOSED`.
    pub(super) fn v3_refund_notification(
        &self,
        m: &Merchant,
        t: &Trade,
        r: &Refund,
        now: i64,
    ) -> Result<Notification, String> {
        let (event_type, summary) = match r.status {
            RefundStatus::Success => ("REFUND.SUCCESS", "退款成功"),
            RefundStatus::Abnormal => ("REFUND.ABNORMAL", "退款异常"),
            RefundStatus::Closed => ("REFUND.CLOSED", "退款关闭"),
            RefundStatus::Processing => return Err("a refund in progress is not notified".into()),
        };
        self.v3_event(m, &r.notify_url, (event_type, summary, "refund"), &refund_resource(&m.mch_id, t, r), now)
    }

    /// An event `(event_type, summary, original_type)` about `resource`, sealed under
    /// the merchant's APIv3 key and signed afresh with the platform key on every attempt.
    fn v3_event(
        &self,
        m: &Merchant,
        url: &str,
        (event_type, summary, original_type): (&str, &str, &str),
        resource: &Value,
        now: i64,
    ) -> Result<Notification, String> {
        let (Some(p), Some(v3)) = (&self.platform, &m.v3) else {
            return Err("API v3 is not configured for this merchant".into());
        };
        let (nonce, ciphertext) =
            wire::encrypt(&v3.api_v3_key, original_type, resource.to_string().as_bytes()).ok_or("seal")?;
        let body = json!({
            "id": format!("EV-{}", crate::sim::random_hex(16)),
            "create_time": wire::rfc3339_beijing(now),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": { "original_type": original_type, "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                          "associated_data": original_type, "nonce": nonce },
        })
        .to_string()
        .into_bytes();
        let (key, serial) = (p.key.clone(), p.serial.clone());
        let sign = Arc::new(move |body: &[u8]| wire::signature_headers(&key, &serial, body, wall_secs()));
        Ok(Notification {
            url: url.to_owned(),
            headers: vec![("content-type", "application/json".to_owned())],
            body,
            sign: Some(sign),
        })
    }
}

/// `bytes` gzipped, as WeChat sends a bill asked for with `tar_type=GZIP`.
fn gzipped(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = out.write_all(bytes);
    out.finish().unwrap_or_default()
}

/// A trade as v3 shows it (query answers and notification resources).
fn transaction(t: &Trade) -> Value {
    let mut v = serde_json::Map::new();
    v.extend([
        ("appid".to_owned(), json!(t.appid)),
        ("mchid".to_owned(), json!(t.mch_id)),
        ("out_trade_no".to_owned(), json!(t.out_trade_no)),
        ("trade_type".to_owned(), json!("NATIVE")),
        ("trade_state".to_owned(), json!(t.state.as_str())),
        ("trade_state_desc".to_owned(), json!(t.state.description())),
        ("amount".to_owned(), json!({ "total": t.total_fee, "currency": "CNY" })),
    ]);
    if let Some(paid) = t.paid_at {
        v.extend([
            ("transaction_id".to_owned(), json!(t.transaction_id)),
            ("success_time".to_owned(), json!(wire::rfc3339_beijing(paid))),
            ("bank_type".to_owned(), json!("OTHERS")),
            ("payer".to_owned(), json!({ "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" })),
            (
                "amount".to_owned(),
                json!({ "total": t.total_fee, "payer_total": t.total_fee, "currency": "CNY", "payer_currency": "CNY" }),
            ),
        ]);
    }
    Value::Object(v)
}

/// A refund as v3 answers it.
fn refund(t: &Trade, r: &Refund) -> Value {
    let mut v = json!({
        "refund_id": r.refund_id, "out_refund_no": r.out_refund_no,
        "transaction_id": t.transaction_id, "out_trade_no": t.out_trade_no,
        "channel": "ORIGINAL", "status": r.status.v3(), "user_received_account": "支付用户零钱",
        "create_time": wire::rfc3339_beijing(r.at),
        "amount": { "total": t.total_fee, "refund": r.fee, "payer_total": t.total_fee, "payer_refund": r.fee, "currency": "CNY" },
    });
    if let (Some(at), Some(o)) = (r.success_time(), v.as_object_mut()) {
        o.insert("success_time".into(), json!(wire::rfc3339_beijing(at)));
    }
    v
}

/// A refund as its notification's resource shows it: no appid, `refund_status`.
fn refund_resource(mch_id: &str, t: &Trade, r: &Refund) -> Value {
    let mut v = json!({
        "mchid": mch_id, "out_trade_no": t.out_trade_no, "transaction_id": t.transaction_id,
        "out_refund_no": r.out_refund_no, "refund_id": r.refund_id, "refund_status": r.status.v3(),
        "user_received_account": "支付用户零钱",
        "amount": { "total": t.total_fee, "refund": r.fee, "payer_total": t.total_fee, "payer_refund": r.fee },
    });
    if let (Some(at), Some(o)) = (r.success_time(), v.as_object_mut()) {
        o.insert("success_time".into(), json!(wire::rfc3339_beijing(at)));
    }
    v
}
