//! The UnionPay online gateway 5.1.0 adapter: consume through the front form (the
//! buyer's browser posts our signed form to UnionPay, so the order's pay URL is a page
//! that does so), query, refund and refund query through the back end, the day's
//! settlement file, and verified payment notifications. An answer or notification is believed only when it is signed
//! by the certificate it carries, and that certificate chains to a configured root, is
//! within its validity and names UnionPay's signing identity (every merchant's own
//! certificate chains to the same root).
//! Transport failures, 5xx, the gateway's "busy" codes (03/04/05) and unverifiable
//! answers are unknown outcomes.

pub mod bill;
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
use paygate_actors::refund::Refund;
use paygate_actors::refund::RefundState;

use self::wire::Params;
use crate::crypto::{RsaSigner, TrustStore};
use crate::http::client::HttpClient;

/// What the adapter needs (channel settings in `channels.toml`).
#[derive(Clone)]
pub struct UnionPaySettings {
    /// The merchant id (15 characters).
    pub mer_id: String,
    /// The decimal serial of our signing certificate.
    pub cert_id: String,
    /// Its private key (secret).
    pub signing_key: RsaSigner,
    /// The roots (and intermediates) UnionPay's signing certificate must chain to.
    pub trust: TrustStore,
    /// The identity UnionPay's signing certificate names in its CN
    /// ([`wire::UNIONPAY_SIGNER`] in production).
    pub signer: String,
    /// The gateway, up to `/gateway/api`.
    pub gateway_url: String,
    /// Where the buyer's browser returns when the merchant gave no return_url.
    pub front_url: String,
    /// Our `/callback/unionpay`.
    pub back_url: String,
    /// Longest a call may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for UnionPaySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnionPaySettings")
            .field("mer_id", &self.mer_id)
            .field("cert_id", &self.cert_id)
            .finish_non_exhaustive()
    }
}

/// UnionPay behind the channel interface: its signing certificate and trust store.
pub struct UnionPayConnector {
    /// `unionpay:<mer_id>` ([`ChannelConnector::account`]).
    account: String,
    settings: Arc<UnionPaySettings>,
    http: HttpClient,
}

fn get<'a>(p: &'a Params, k: &str) -> &'a str {
    p.get(k).map(String::as_str).unwrap_or_default()
}

fn now_secs() -> i64 {
    SystemClock.now_ms().div_euclid(1000)
}

/// "System busy" and "processing": the outcome is not known yet.
fn busy(code: &str) -> bool {
    matches!(code, "03" | "04" | "05")
}

/// The fields every request carries, with this transaction's type.
fn base(s: &UnionPaySettings, txn_type: &str, txn_sub_type: &str) -> Params {
    [
        ("version", wire::VERSION),
        ("encoding", "UTF-8"),
        ("txnType", txn_type),
        ("txnSubType", txn_sub_type),
        ("bizType", "000201"),
        ("channelType", "07"),
        ("accessType", "0"),
        ("merId", s.mer_id.as_str()),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// Posts a signed back-end request to `endpoint`; answers the verified answer.
async fn call(s: &UnionPaySettings, http: &HttpClient, endpoint: &str, mut p: Params) -> Result<Params, ChannelError> {
    wire::sign(&mut p, &s.signing_key, &s.cert_id);
    let url = format!("{}/{endpoint}", s.gateway_url);
    let answer = http
        .post(&url, "application/x-www-form-urlencoded;charset=UTF-8", wire::form(&p).into_bytes(), s.timeout)
        .await
        .map_err(|e| crate::channels::unanswered(endpoint, e))?;
    if answer.status >= 500 {
        return Err(crate::channels::bad_status(endpoint, answer.status));
    }
    let text =
        std::str::from_utf8(&answer.body).map_err(|_| ChannelError::unknown(format_args!("{endpoint}: not UTF-8")))?;
    let a = wire::parse_answer(text);
    let believed = match wire::verify(&a, &s.trust, &s.signer, now_secs()) {
        Ok(()) if get(&a, "merId") == s.mer_id => Ok(()),
        Ok(()) => Err(format!("merId {:?} is not ours", get(&a, "merId"))),
        Err(e) => Err(e.to_string()),
    };
    if let Err(why) = believed {
        metrics::counter!("paygate_alerts_total", "kind" => "channel_answer_unverified").increment(1);
        tracing::warn!(endpoint, %why, "UnionPay answer refused");
        return Err(ChannelError::unknown(format_args!("{endpoint}: answer refused: {why}")));
    }
    Ok(a)
}

/// Asks about transaction `order_id` of `txn_time`: its original outcome code and the
/// answer, or `None` when UnionPay has no such transaction.
async fn query(
    s: &UnionPaySettings,
    http: &HttpClient,
    order_id: &str,
    txn_time: &str,
) -> Result<Option<Params>, ChannelError> {
    let mut p = base(s, "00", "00");
    p.insert("orderId".into(), order_id.to_owned());
    p.insert("txnTime".into(), txn_time.to_owned());
    let a = call(s, http, "queryTrans.do", p).await?;
    match get(&a, "respCode") {
        "00" => Ok(Some(a)),
        // 查无此交易: the buyer never submitted the form.
        "34" => Ok(None),
        code if busy(code) => Err(ChannelError::unknown(format_args!("queryTrans: respCode {code}"))),
        code => Err(ChannelError::Rejected { code: code.to_owned(), message: get(&a, "respMsg").to_owned() }),
    }
}

async fn query_order(s: &UnionPaySettings, http: &HttpClient, trade: &TradeRef) -> Result<ChannelNotice, ChannelError> {
    let Some(a) = query(s, http, trade.pay_order_no.as_str(), &wire::txn_time(trade.create_time)).await? else {
        return Ok(ChannelNotice::NotPaid);
    };
    Ok(match get(&a, "origRespCode") {
        "00" => ChannelNotice::Paid {
            channel_trade_no: get(&a, "queryId").to_owned(),
            amount_minor: get(&a, "txnAmt")
                .parse()
                .map_err(|_| ChannelError::unknown("queryTrans: txnAmt is not a number"))?,
        },
        code if busy(code) || code.is_empty() => ChannelNotice::NotPaid,
        _ => ChannelNotice::Failed { reason: format!("{} {}", get(&a, "origRespCode"), get(&a, "origRespMsg")) },
    })
}

impl UnionPayConnector {
    /// A connector calling through `http` (its own pooled client, trusting what the
    /// channel is configured to trust).
    pub fn new(settings: UnionPaySettings, http: HttpClient) -> UnionPayConnector {
        UnionPayConnector { account: format!("unionpay:{}", settings.mer_id), settings: Arc::new(settings), http }
    }

    fn notification(&self, request: &CallbackRequest) -> Params {
        wire::parse_form(&request.body)
    }
}

impl ChannelConnector for UnionPayConnector {
    fn gateway_url(&self) -> &str {
        &self.settings.gateway_url
    }

    fn account(&self) -> &str {
        &self.account
    }

    /// The signed front form, as the GET URL of the form's action with its fields; no
    /// server call is made (UnionPay opens the trade when the buyer submits it).
    fn create_order(&self, order: ChannelOrder) -> BoxFuture<Result<CreateAccepted, ChannelError>> {
        let s = &self.settings;
        let mut p = base(s, "01", "01");
        let fields = [
            ("orderId", order.pay_order_no.to_string()),
            ("txnTime", wire::txn_time(order.create_time)),
            ("txnAmt", order.amount.minor().to_string()),
            ("currencyCode", order.amount.currency().numeric().to_owned()),
            ("frontUrl", order.return_url.clone().unwrap_or_else(|| s.front_url.clone())),
            ("backUrl", s.back_url.clone()),
            ("payTimeout", wire::txn_time(order.expire_time)),
        ];
        p.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
        wire::sign(&mut p, &s.signing_key, &s.cert_id);
        let url = format!("{}/frontTransReq.do?{}", s.gateway_url, wire::form(&p));
        Box::pin(async move { Ok(CreateAccepted { code_url: url, channel_trade_no: None }) })
    }

    fn query_order(&self, trade: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move { query_order(&s, &http, &trade).await })
    }

    /// A consume has no close: it lapses at payTimeout, which we sent as the order's
    /// expiry. Closing is final unless UnionPay already took the money; a payment that
    /// still arrives is kept on the order and flagged for refund.
    fn close_order(&self, trade: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            match query_order(&s, &http, &trade).await? {
                ChannelNotice::NotPaid => Ok(ChannelNotice::Closed),
                other => Ok(other),
            }
        })
    }

    fn refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let Some(orig_qry_id) = refund.trade.channel_trade_no.clone() else {
                return Ok(RefundState::Failed("the payment's queryId is not known".into()));
            };
            let mut p = base(&s, "04", "00");
            let fields = [
                ("orderId", wire::refund_order_id(refund.trade.pay_order_no.as_str(), &refund.refund_no)),
                ("txnTime", wire::txn_time(refund.requested_at)),
                ("txnAmt", refund.amount.minor().to_string()),
                ("currencyCode", refund.amount.currency().numeric().to_owned()),
                ("origQryId", orig_qry_id),
                ("backUrl", s.back_url.clone()),
            ];
            p.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
            let a = call(&s, &http, "backTransReq.do", p).await?;
            Ok(match get(&a, "respCode") {
                // Accepted; UnionPay finishes refunds asynchronously.
                "00" => RefundState::Processing,
                code if busy(code) => return Err(ChannelError::unknown(format_args!("backTransReq: respCode {code}"))),
                code => RefundState::Failed(format!("{code}: {}", get(&a, "respMsg"))),
            })
        })
    }

    fn query_refund(&self, refund: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let order_id = wire::refund_order_id(refund.trade.pay_order_no.as_str(), &refund.refund_no);
            let Some(a) = query(&s, &http, &order_id, &wire::txn_time(refund.requested_at)).await? else {
                return Ok(RefundState::NotFound);
            };
            Ok(match get(&a, "origRespCode") {
                "00" => RefundState::Success,
                code if busy(code) => RefundState::Processing,
                code => RefundState::Failed(format!("{code}: {}", get(&a, "origRespMsg"))),
            })
        })
    }

    /// The settlement file of `date` (`yyyy-MM-dd`) through fileTransfer.do.
    fn download_bill(&self, date: String) -> BoxFuture<Result<Vec<BillLine>, ChannelError>> {
        let (s, http) = (Arc::clone(&self.settings), self.http.clone());
        Box::pin(async move {
            let (year, settle) = match (date.get(..4), date.get(5..7), date.get(8..10)) {
                (Some(y), Some(m), Some(d)) => (y.to_owned(), format!("{m}{d}")),
                _ => {
                    return Err(ChannelError::Rejected {
                        code: "DATE".into(),
                        message: format!("{date:?} is not yyyy-MM-dd"),
                    })
                }
            };
            let mut p = base(&s, "76", "01");
            p.insert("bizType".into(), "000000".into());
            p.remove("channelType");
            let fields =
                [("txnTime", wire::txn_time(SystemClock.now_ms())), ("fileType", "00".into()), ("settleDate", settle)];
            p.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
            let a = call(&s, &http, "fileTransfer.do", p).await?;
            match get(&a, "respCode") {
                "00" => bill::parse(get(&a, "fileContent"), &year).map_err(ChannelError::unknown),
                // 文件不存在: no file for that day (yet).
                "98" => Ok(Vec::new()),
                code if busy(code) => Err(ChannelError::unknown(format_args!("fileTransfer: respCode {code}"))),
                code => Err(ChannelError::Rejected { code: code.to_owned(), message: get(&a, "respMsg").to_owned() }),
            }
        })
    }

    fn verify_callback(&self, request: &CallbackRequest) -> Option<Verified> {
        let p = self.notification(request);
        let s = &self.settings;
        if let Err(why) = wire::verify(&p, &s.trust, &s.signer, now_secs()) {
            tracing::warn!(order = get(&p, "orderId"), %why, "UnionPay notification refused");
            return None;
        }
        if get(&p, "merId") != s.mer_id {
            tracing::warn!(
                order = get(&p, "orderId"),
                mer_id = get(&p, "merId"),
                "UnionPay notification for another merId refused"
            );
            return None;
        }
        // A refund's result names the refund by its orderId, which is our refund number.
        if get(&p, "txnType") == "04" {
            let refund_order_no = get(&p, "orderId");
            let outcome = match get(&p, "respCode") {
                "00" | "A6" => RefundState::Success,
                code if busy(code) => RefundState::Processing,
                code => RefundState::Failed(format!("{code}: {}", get(&p, "respMsg"))),
            };
            // Genuine, but not a refund this gateway asked for: nothing to apply.
            let Some(pay_order_no) = Refund::order_of(refund_order_no) else {
                return Some(Verified::Informational);
            };
            return Some(Verified::Refund(VerifiedRefund {
                pay_order_no,
                refund_order_no: refund_order_no.to_owned(),
                outcome,
                amount_minor: Some(get(&p, "txnAmt").parse().ok()?),
            }));
        }
        // Consume results only.
        if get(&p, "txnType") != "01" {
            return Some(Verified::Informational);
        }
        let id = PayOrderNo::parse(get(&p, "orderId"))?;
        let notice = match get(&p, "respCode") {
            "00" | "A6" => ChannelNotice::Paid {
                channel_trade_no: get(&p, "queryId").to_owned(),
                amount_minor: get(&p, "txnAmt").parse().ok()?,
            },
            code => ChannelNotice::Failed { reason: format!("{code} {}", get(&p, "respMsg")) },
        };
        Some(Verified::Order(VerifiedCallback { pay_order_no: id, notice }))
    }

    fn unverified_order(&self, request: &CallbackRequest) -> Option<PayOrderNo> {
        let p = self.notification(request);
        (get(&p, "merId") == self.settings.mer_id).then(|| PayOrderNo::parse(get(&p, "orderId"))).flatten()
    }

    fn callback_ack(&self) -> CallbackReply {
        CallbackReply { status: 200, content_type: "text/plain", body: b"ok".to_vec() }
    }

    fn callback_nack(&self) -> CallbackReply {
        CallbackReply { status: 400, content_type: "text/plain", body: b"fail".to_vec() }
    }
}
