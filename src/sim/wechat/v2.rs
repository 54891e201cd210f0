//! The simulated WeChat Pay API v2 (XML, signed with the merchant's API key in the sign
//! type the call used): unifiedorder (NATIVE), orderquery, closeorder, refund,
//! refundquery and downloadbill under `/wechat`.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use paygate_actors::signing::SignType;

use super::{Api, Merchant, NewRefund, NewTrade, Refund, RefundKey, Refusal, Trade, WechatSim};
use crate::channels::alipay::wire::timestamp;
use crate::channels::wechat::bill;
use crate::channels::wechat::v2::wire::{self, Params};
use crate::sim::{answer, Fault, Notification, SimRequest, SimResponse};

type Answer = Result<Params, (&'static str, String)>;

fn get<'a>(p: &'a Params, k: &str) -> &'a str {
    p.get(k).map(String::as_str).unwrap_or_default()
}

fn fields(pairs: &[(&str, String)]) -> Params {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

fn xml(p: &Params) -> SimResponse {
    answer(StatusCode::OK, "text/xml; charset=utf-8", wire::to_xml(p))
}

/// v2 wants HTTP 200 and `return_code` SUCCESS.
pub(super) fn acknowledged(status: u16, body: &[u8]) -> bool {
    status == 200 && wire::from_xml(body).is_some_and(|p| get(&p, "return_code") == "SUCCESS")
}

/// v2's err_code and err_code_des for a refusal.
fn worded(r: Refusal) -> (&'static str, String) {
    let (code, des) = match r {
        Refusal::NotFound => ("ORDERNOTEXIST", "此交易订单号不存在"),
        Refusal::OutTradeNoUsed => ("OUT_TRADE_NO_USED", "商户订单号重复"),
        Refusal::Closed => ("ORDERCLOSED", "订单已关闭"),
        Refusal::Paid => ("ORDERPAID", "商户订单已支付"),
        Refusal::NotRefundable => ("TRADE_STATE_ERROR", "订单状态错误"),
        Refusal::NotEnough => ("NOTENOUGH", "余额不足"),
        Refusal::RefundNoReused => ("PARAM_ERROR", "out_refund_no was used with another refund_fee"),
        Refusal::RefundNotFound => ("REFUNDNOTEXIST", "退款订单查询失败"),
    };
    (code, des.to_owned())
}

impl WechatSim {
    pub(super) async fn v2_api(self: &Arc<Self>, path: &str, request: &SimRequest) -> SimResponse {
        let body = &request.body;
        let mch_id = wire::from_xml(body).map(|p| get(&p, "mch_id").to_owned()).unwrap_or_default();
        let faults = crate::sim::lock(&self.faults).of(&mch_id);
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
            return self.v2_bill(&req);
        }
        // Over TLS, the secapi calls need the merchant's API certificate (mutual TLS).
        let tls = self.core.base_url.starts_with("https://");
        if tls && path.starts_with("/secapi/") && request.client_certificate.as_deref() != Some(m.mch_id.as_str()) {
            let why = "请使用商户API证书: this API needs the merchant's API certificate (mutual TLS)";
            return xml(&fields(&[("return_code", "FAIL".into()), ("return_msg", why.into())]));
        }
        let outcome = match path {
            "/pay/unifiedorder" => self.v2_unified_order(&req, sign_type),
            "/pay/orderquery" => self.v2_query(&req),
            "/pay/closeorder" => {
                self.close_trade(&m.mch_id, get(&req, "out_trade_no")).map(|()| Params::new()).map_err(worded)
            }
            "/secapi/pay/refund" => self.v2_refund(&req),
            "/pay/refundquery" => self.v2_refund_query(&req),
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

    fn v2_unified_order(&self, req: &Params, sign_type: SignType) -> Answer {
        let total_fee: i64 =
            get(req, "total_fee").parse().ok().filter(|f| *f > 0).ok_or(("PARAM_ERROR", "total_fee".to_owned()))?;
        let out_trade_no = get(req, "out_trade_no");
        if out_trade_no.is_empty() || get(req, "trade_type") != "NATIVE" {
            return Err(("PARAM_ERROR", "out_trade_no and trade_type NATIVE are required".into()));
        }
        let code_url = self
            .open(&NewTrade {
                appid: get(req, "appid"),
                mch_id: get(req, "mch_id"),
                api: Api::V2(sign_type),
                out_trade_no,
                total_fee,
                body: get(req, "body"),
                notify_url: get(req, "notify_url"),
                expire: wire::parse_time14(get(req, "time_expire")),
            })
            .map_err(worded)?;
        let token = code_url.rsplit('=').next().unwrap_or_default();
        Ok(fields(&[
            ("trade_type", "NATIVE".into()),
            ("prepay_id", format!("wx{token}")),
            ("code_url", code_url.clone()),
        ]))
    }

    fn v2_query(&self, req: &Params) -> Answer {
        // By out_trade_no or, as WeChat allows, by transaction_id alone.
        let out_trade_no = match get(req, "out_trade_no") {
            "" => self.out_trade_no_of(get(req, "mch_id"), get(req, "transaction_id")).unwrap_or_default(),
            no => no.to_owned(),
        };
        self.with_trade(get(req, "mch_id"), &out_trade_no, |t, _| {
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
        .map_err(worded)
    }

    fn v2_refund(self: &Arc<Self>, req: &Params) -> Answer {
        let fee: i64 =
            get(req, "refund_fee").parse().ok().filter(|f| *f > 0).ok_or(("PARAM_ERROR", "refund_fee".to_owned()))?;
        let refund = NewRefund {
            mch_id: get(req, "mch_id"),
            out_trade_no: get(req, "out_trade_no"),
            out_refund_no: get(req, "out_refund_no"),
            fee,
            notify_url: get(req, "notify_url"),
        };
        let (t, r) = self.refund_trade(&refund).map_err(worded)?;
        Ok(fields(&[
            ("transaction_id", t.transaction_id),
            ("out_refund_no", r.out_refund_no),
            ("refund_id", r.refund_id),
            ("refund_fee", r.fee.to_string()),
        ]))
    }

    fn v2_refund_query(&self, req: &Params) -> Answer {
        let by = RefundKey {
            out_refund_no: get(req, "out_refund_no"),
            refund_id: get(req, "refund_id"),
            out_trade_no: get(req, "out_trade_no"),
            transaction_id: get(req, "transaction_id"),
        };
        let (t, refunds) = self.refunds_of(get(req, "mch_id"), &by).map_err(worded)?;
        let mut f = fields(&[
            ("out_trade_no", t.out_trade_no.clone()),
            ("transaction_id", t.transaction_id.clone()),
            ("total_fee", t.total_fee.to_string()),
            ("cash_fee", t.total_fee.to_string()),
            ("refund_count", refunds.len().to_string()),
        ]);
        for (i, r) in refunds.iter().enumerate() {
            f.insert(format!("out_refund_no_{i}"), r.out_refund_no.clone());
            f.insert(format!("refund_id_{i}"), r.refund_id.clone());
            f.insert(format!("refund_fee_{i}"), r.fee.to_string());
            f.insert(format!("refund_status_{i}"), r.status.v2().into());
            if let Some(at) = r.success_time() {
                f.insert(format!("refund_success_time_{i}"), timestamp(at));
            }
        }
        Ok(f)
    }

    fn v2_bill(&self, req: &Params) -> SimResponse {
        let compact = get(req, "bill_date");
        let day = format!(
            "{}-{}-{}",
            compact.get(..4).unwrap_or_default(),
            compact.get(4..6).unwrap_or_default(),
            compact.get(6..).unwrap_or_default()
        );
        match self.bill_rows(get(req, "appid"), get(req, "mch_id"), &day).filter(|_| compact.len() == 8) {
            Some(rows) => answer(StatusCode::OK, "text/plain; charset=utf-8", bill::write(&rows)),
            None => xml(&fields(&[
                ("return_code", "FAIL".into()),
                ("return_msg", "No Bill Exist".into()),
                ("error_code", "20002".into()),
            ])),
        }
    }

    /// A refund's notification: unsigned, its details sealed in `req_info` under the
    /// API key's MD5.
    pub(super) fn v2_refund_notification(&self, m: &Merchant, t: &Trade, r: &Refund) -> Notification {
        let mut details = fields(&[
            ("out_refund_no", r.out_refund_no.clone()),
            ("out_trade_no", t.out_trade_no.clone()),
            ("refund_account", "REFUND_SOURCE_RECHARGE_FUNDS".into()),
            ("refund_fee", r.fee.to_string()),
            ("refund_id", r.refund_id.clone()),
            ("refund_recv_accout", "支付用户零钱".into()),
            ("refund_request_source", "API".into()),
            ("refund_status", r.status.v2().into()),
            ("settlement_refund_fee", r.fee.to_string()),
            ("settlement_total_fee", t.total_fee.to_string()),
            ("total_fee", t.total_fee.to_string()),
            ("transaction_id", t.transaction_id.clone()),
        ]);
        if let Some(at) = r.success_time() {
            details.insert("success_time".into(), timestamp(at));
        }
        let req_info = wire::seal_req_info(&m.api_key, wire::document("root", &details).as_bytes());
        let doc = fields(&[
            ("return_code", "SUCCESS".into()),
            ("appid", m.appid.clone()),
            ("mch_id", m.mch_id.clone()),
            ("nonce_str", wire::nonce()),
            ("req_info", req_info),
        ]);
        Notification {
            url: r.notify_url.clone(),
            headers: vec![("content-type", "text/xml; charset=utf-8".to_owned())],
            body: wire::to_xml(&doc).into_bytes(),
            sign: None,
        }
    }

    /// The signed XML notification of a paid trade.
    pub(super) fn v2_notification(&self, m: &Merchant, t: &Trade, sign_type: SignType, now: i64) -> Notification {
        let mut doc = fields(&[
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
        wire::sign(&mut doc, &m.api_key, sign_type);
        Notification {
            url: t.notify_url.clone(),
            headers: vec![("content-type", "text/xml; charset=utf-8".to_owned())],
            body: wire::to_xml(&doc).into_bytes(),
            sign: None,
        }
    }
}
