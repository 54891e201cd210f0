//! The simulated WeChat Pay: one book of merchant trades served through
//! API v2 ([`v2`]: XML under `/wechat`) and API v3 ([`v3`]: JSON under `/v3`), a cashier
//! page behind each code URL, notifications in the API the trade was opened with, on
//! WeChat's retry schedule, and bills from its own trades. A refund is accepted first and
//! carried out a moment later ([`REFUND_TAKES`]), then notified: v2 seals its details in
//! `req_info`, v3 sends `REFUND.SUCCESS`, `REFUND.ABNORMAL` or `REFUND.CLOSED`.

mod v2;
mod v3;

use crate::sim::store::{Persisted, SimStore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Method, StatusCode};
use paygate_actors::signing::SignType;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::json;

use super::{answer, random_hex, FaultBook, SimCore, SimRequest, SimResponse};
use crate::channels::alipay::wire::date;
use crate::channels::wechat::bill::BillRow;
use crate::channels::wechat::v3::wire as v3wire;
use crate::crypto::{RsaSigner, RsaVerifier};

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

/// How long an accepted refund takes to be carried out (scaled by the time scale).
const REFUND_TAKES: Duration = Duration::from_secs(1);

/// `[sim.wechat]`.
#[derive(Debug, Clone, Deserialize)]
pub struct WechatSimConfig {
    /// WeChat's fee, as a share of each payment.
    #[serde(default = "default_fee_rate")]
    pub fee_rate: String,
    /// The merchants that may call, with their keys (the secret ones sealed in the file).
    pub merchants: Vec<WechatSimMerchant>,
    /// The platform certificate and key that sign v3 answers; without it, no v3.
    #[serde(default)]
    pub platform: Option<WechatSimPlatform>,
    /// The CA that issues merchants' API certificates (PEM). With TLS on, a v2 refund
    /// must come over a connection that presented one it issued to that `mch_id` (its
    /// CN); without TLS there is no certificate to ask for.
    #[serde(default)]
    pub merchant_ca: Option<String>,
}

fn default_fee_rate() -> String {
    "0.006".into()
}

/// One merchant account at the simulated WeChat Pay.
#[derive(Debug, Clone, Deserialize)]
pub struct WechatSimMerchant {
    /// The app id its trades are opened under.
    pub appid: String,
    /// Merchant id.
    pub mch_id: String,
    /// API key (v2).
    pub api_key: String,
    /// APIv3 key: 32 characters (v3).
    #[serde(default)]
    pub api_v3_key: Option<String>,
    /// Serial of the merchant API certificate (v3).
    #[serde(default)]
    pub merchant_serial: Option<String>,
    /// Its public key, which checks the merchant's Authorization headers (v3).
    #[serde(default)]
    pub merchant_public_key: Option<String>,
}

/// `[sim.wechat.platform]`: WeChat's own signing certificate for v3.
#[derive(Debug, Clone, Deserialize)]
pub struct WechatSimPlatform {
    /// The certificate's serial, as it is named in `Wechatpay-Serial`.
    pub serial: String,
    /// The certificate (PEM), served by `/v3/certificates`.
    pub certificate: String,
    /// Its private key (sealed in the file).
    pub private_key: String,
}

/// A merchant's v3 credentials.
struct MerchantV3 {
    api_v3_key: [u8; 32],
    serial: String,
    public_key: RsaVerifier,
}

struct Merchant {
    appid: String,
    mch_id: String,
    api_key: String,
    v3: Option<MerchantV3>,
}

struct Platform {
    serial: String,
    certificate: String,
    key: RsaSigner,
}

/// Which API opened a trade, and so speaks its notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Api {
    V2(SignType),
    V3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

    /// WeChat's words for the state (`trade_state_desc`).
    fn description(self) -> &'static str {
        match self {
            State::NotPay => "订单未支付",
            State::Success => "支付成功",
            State::Refund => "订单发生过退款",
            State::Closed => "订单已关闭",
        }
    }
}

/// Where a refund stands at WeChat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum RefundStatus {
    Processing,
    Success,
    Abnormal,
    Closed,
}

impl RefundStatus {
    /// v3's name (v2's differ: [`RefundStatus::v2`]).
    fn v3(self) -> &'static str {
        match self {
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Success => "SUCCESS",
            RefundStatus::Abnormal => "ABNORMAL",
            RefundStatus::Closed => "CLOSED",
        }
    }

    fn v2(self) -> &'static str {
        match self {
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Success => "SUCCESS",
            RefundStatus::Abnormal => "CHANGE",
            RefundStatus::Closed => "REFUNDCLOSE",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refund {
    out_refund_no: String,
    refund_id: String,
    fee: i64,
    /// Unix millis it was accepted.
    at: i64,
    status: RefundStatus,
    /// Unix millis it is carried out, and the status it ends in then.
    settles_at: i64,
    ends: RefundStatus,
    /// Where its outcome is notified (empty: nowhere).
    notify_url: String,
}

impl Refund {
    /// Carries the refund out once its time has come; `true` if it changed.
    fn settle_if_due(&mut self, now: i64) -> bool {
        let due = self.status == RefundStatus::Processing && now >= self.settles_at;
        if due {
            self.status = self.ends;
        }
        due
    }

    /// Unix millis it succeeded.
    fn success_time(&self) -> Option<i64> {
        (self.status == RefundStatus::Success).then_some(self.settles_at)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trade {
    appid: String,
    mch_id: String,
    api: Api,
    out_trade_no: String,
    transaction_id: String,
    total_fee: i64,
    body: String,
    notify_url: String,
    expire: Option<i64>,
    state: State,
    paid_at: Option<i64>,
    refunds: Vec<Refund>,
    token: String,
}

impl Trade {
    fn code_url(&self) -> String {
        format!("weixin://wxpay/bizpayurl?pr={}", self.token)
    }

    /// What its refunds took back (a closed refund gave the money back to the merchant).
    fn refunded(&self) -> i64 {
        self.refunds.iter().filter(|r| r.status != RefundStatus::Closed).map(|r| r.fee).sum()
    }
}

/// What a refund query names: at least one of WeChat's four ids.
#[derive(Default)]
struct RefundKey<'a> {
    out_refund_no: &'a str,
    refund_id: &'a str,
    out_trade_no: &'a str,
    transaction_id: &'a str,
}

/// A trade to open.
struct NewTrade<'a> {
    appid: &'a str,
    mch_id: &'a str,
    api: Api,
    out_trade_no: &'a str,
    total_fee: i64,
    body: &'a str,
    notify_url: &'a str,
    expire: Option<i64>,
}

/// A refund to make.
struct NewRefund<'a> {
    mch_id: &'a str,
    out_trade_no: &'a str,
    out_refund_no: &'a str,
    fee: i64,
    notify_url: &'a str,
}

/// Why the book refused; each API words it its own way.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    NotFound,
    OutTradeNoUsed,
    Closed,
    Paid,
    NotRefundable,
    NotEnough,
    RefundNoReused,
    RefundNotFound,
}

#[derive(Default, Serialize, Deserialize)]
struct Book {
    trades: HashMap<String, Trade>,
    tokens: HashMap<String, String>,
    next: u64,
}

/// The simulated WeChat Pay.
pub struct WechatSim {
    core: Arc<SimCore>,
    merchants: HashMap<String, Merchant>,
    platform: Option<Platform>,
    fee_rate: Decimal,
    book: Persisted<Book>,
    faults: Mutex<FaultBook>,
}

impl WechatSim {
    /// The simulator for `config`.
    pub fn new(config: &WechatSimConfig, core: Arc<SimCore>, store: &SimStore) -> Result<WechatSim, String> {
        let fee_rate = Decimal::from_str(&config.fee_rate).map_err(|e| format!("sim.wechat.fee_rate: {e}"))?;
        let mut merchants = HashMap::new();
        for m in &config.merchants {
            let what = |field: &str| format!("sim.wechat merchant {} {field}", m.mch_id);
            let v3 = match (&m.api_v3_key, &m.merchant_serial, &m.merchant_public_key) {
                (Some(k), Some(serial), Some(public)) => Some(MerchantV3 {
                    api_v3_key: v3wire::api_v3_key(k)
                        .ok_or_else(|| format!("{} must be 32 bytes", what("api_v3_key")))?,
                    serial: serial.clone(),
                    public_key: RsaVerifier::from_text(&what("merchant_public_key"), public)
                        .map_err(|e| e.to_string())?,
                }),
                (None, None, None) => None,
                _ => {
                    return Err(format!(
                        "{}: api_v3_key, merchant_serial and merchant_public_key go together",
                        what("v3")
                    ))
                }
            };
            let merchant =
                Merchant { appid: m.appid.clone(), mch_id: m.mch_id.clone(), api_key: m.api_key.clone(), v3 };
            merchants.insert(m.mch_id.clone(), merchant);
        }
        let platform = match &config.platform {
            Some(p) => Some(Platform {
                serial: p.serial.clone(),
                certificate: p.certificate.clone(),
                key: RsaSigner::from_text("sim.wechat.platform.private_key", &p.private_key)
                    .map_err(|e| e.to_string())?,
            }),
            None => None,
        };
        // "wechat/2": refunds carry their status; a book of an older build is left unread.
        let book = store.book("wechat/2")?;
        Ok(WechatSim { core, merchants, platform, fee_rate, book, faults: Mutex::default() })
    }

    pub(super) async fn route(self: Arc<Self>, req: SimRequest) -> SimResponse {
        if let Some(answer) = super::control(self.as_ref(), "wechat", &req) {
            return answer;
        }
        let path = req.path.as_str();
        match (&req.method, path) {
            (&Method::POST, p) if p.starts_with("/wechat/pay/") || p.starts_with("/wechat/secapi/") => {
                self.v2_api(p.trim_start_matches("/wechat"), &req).await
            }
            (_, p) if p.starts_with("/v3/") => self.v3_api(&req).await,
            (m, p) if p.starts_with("/wechat/cashier/") => {
                self.cashier(p.trim_start_matches("/wechat/cashier/"), m == Method::POST)
            }
            _ => answer(StatusCode::NOT_FOUND, "text/plain", "no such route"),
        }
    }

    /// Opens a trade, or answers the code URL of the same trade opened before.
    fn open(&self, n: &NewTrade<'_>) -> Result<String, Refusal> {
        let mut book = self.book.lock();
        if let Some(t) = book.trades.get(n.out_trade_no) {
            return match t.state {
                State::NotPay if t.total_fee == n.total_fee => Ok(t.code_url()),
                State::NotPay => Err(Refusal::OutTradeNoUsed),
                State::Closed => Err(Refusal::Closed),
                _ => Err(Refusal::Paid),
            };
        }
        book.next += 1;
        let token = random_hex(8);
        let trade = Trade {
            appid: n.appid.to_owned(),
            mch_id: n.mch_id.to_owned(),
            api: n.api,
            out_trade_no: n.out_trade_no.to_owned(),
            // WeChat's are 28 digits: 42000, a shard, the day, a sequence.
            transaction_id: format!(
                "42000{:03}{}{:012}",
                book.next % 1000,
                date(self.core.now_ms()).replace('-', ""),
                book.next
            ),
            total_fee: n.total_fee,
            body: n.body.to_owned(),
            notify_url: n.notify_url.to_owned(),
            expire: n.expire,
            state: State::NotPay,
            paid_at: None,
            refunds: Vec::new(),
            token: token.clone(),
        };
        let code_url = trade.code_url();
        book.tokens.insert(token, n.out_trade_no.to_owned());
        book.trades.insert(n.out_trade_no.to_owned(), trade);
        Ok(code_url)
    }

    /// Runs `f` on merchant `mch_id`'s trade `out_trade_no`, closing it first if it expired.
    fn with_trade<T>(
        &self,
        mch_id: &str,
        out_trade_no: &str,
        f: impl FnOnce(&mut Trade, i64) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let now = self.core.now_ms();
        let mut book = self.book.lock();
        let t = book.trades.get_mut(out_trade_no).filter(|t| t.mch_id == mch_id).ok_or(Refusal::NotFound)?;
        if t.state == State::NotPay && t.expire.is_some_and(|e| now > e) {
            t.state = State::Closed;
        }
        for r in &mut t.refunds {
            r.settle_if_due(now);
        }
        f(t, now)
    }

    fn close_trade(&self, mch_id: &str, out_trade_no: &str) -> Result<(), Refusal> {
        self.with_trade(mch_id, out_trade_no, |t, _| match t.state {
            State::NotPay | State::Closed => {
                t.state = State::Closed;
                Ok(())
            }
            _ => Err(Refusal::Paid),
        })
    }

    /// Accepts a refund of `fee` under `out_refund_no`, to be carried out a moment later
    /// and then notified; repeating the same refund answers it again.
    fn refund_trade(self: &Arc<Self>, n: &NewRefund<'_>) -> Result<(Trade, Refund), Refusal> {
        let ends = match crate::sim::lock(&self.faults).peek(n.mch_id).refund_outcome.as_deref() {
            Some("ABNORMAL") => RefundStatus::Abnormal,
            Some("CLOSED") => RefundStatus::Closed,
            _ => RefundStatus::Success,
        };
        let takes = self.core.scaled(REFUND_TAKES);
        let (t, r, fresh) = self.with_trade(n.mch_id, n.out_trade_no, |t, now| {
            if let Some(r) = t.refunds.iter().find(|r| r.out_refund_no == n.out_refund_no) {
                return if r.fee == n.fee { Ok((t.clone(), r.clone(), false)) } else { Err(Refusal::RefundNoReused) };
            }
            if !matches!(t.state, State::Success | State::Refund) {
                return Err(Refusal::NotRefundable);
            }
            if t.refunded() + n.fee > t.total_fee {
                return Err(Refusal::NotEnough);
            }
            let refund = Refund {
                out_refund_no: n.out_refund_no.to_owned(),
                refund_id: format!("503{}{:02}", t.transaction_id.get(5..).unwrap_or_default(), t.refunds.len() + 1),
                fee: n.fee,
                at: now,
                status: RefundStatus::Processing,
                settles_at: now.saturating_add(i64::try_from(takes.as_millis()).unwrap_or(i64::MAX)),
                ends,
                notify_url: n.notify_url.to_owned(),
            };
            t.refunds.push(refund.clone());
            t.state = State::Refund;
            Ok((t.clone(), refund, true))
        })?;
        if fresh {
            let (sim, mch_id, out_trade_no) = (Arc::clone(self), n.mch_id.to_owned(), n.out_trade_no.to_owned());
            let out_refund_no = n.out_refund_no.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(takes).await;
                sim.carry_out_refund(&mch_id, &out_trade_no, &out_refund_no);
            });
        }
        Ok((t, r))
    }

    /// The refund's time has come: it ends as it was set to, and its outcome is notified
    /// in the API the trade was opened with. (After a restart, a refund due meanwhile is
    /// carried out when next looked at, without a notification: queries find it.)
    fn carry_out_refund(&self, mch_id: &str, out_trade_no: &str, out_refund_no: &str) {
        // with_trade carries out every refund whose time has come, this one among them.
        let settled = self.with_trade(mch_id, out_trade_no, |t, now| {
            let r = t.refunds.iter().find(|r| r.out_refund_no == out_refund_no).ok_or(Refusal::RefundNotFound)?;
            Ok((t.clone(), r.clone(), now))
        });
        let Ok((t, r, now)) = settled else { return };
        let Some(m) = self.merchants.get(mch_id).filter(|_| !r.notify_url.is_empty()) else { return };
        let notification = match t.api {
            Api::V2(_) => Ok(self.v2_refund_notification(m, &t, &r)),
            Api::V3 => self.v3_refund_notification(m, &t, &r, now),
        };
        match notification {
            Ok(n) => self.send(t.api, n),
            Err(e) => tracing::warn!(error = %e, "simulator: refund notification not sent"),
        }
    }

    /// Posts a notification on WeChat's retry schedule until the API's rule says taken.
    fn send(&self, api: Api, n: super::Notification) {
        let acknowledged = match api {
            Api::V2(_) => v2::acknowledged,
            Api::V3 => v3::acknowledged,
        };
        super::notify_until_acknowledged(Arc::clone(&self.core), n, acknowledged, &RETRIES);
    }

    /// The trade holding refund `out_refund_no` of merchant `mch_id`.
    fn find_refund(&self, mch_id: &str, out_refund_no: &str) -> Result<(Trade, Refund), Refusal> {
        let by = RefundKey { out_refund_no, ..RefundKey::default() };
        self.refunds_of(mch_id, &by).and_then(|(t, mut r)| r.pop().map(|r| (t, r)).ok_or(Refusal::RefundNotFound))
    }

    /// The out_trade_no of `mch_id`'s trade `transaction_id`.
    fn out_trade_no_of(&self, mch_id: &str, transaction_id: &str) -> Option<String> {
        let book = self.book.lock();
        let t = book.trades.values().find(|t| t.mch_id == mch_id && t.transaction_id == transaction_id)?;
        Some(t.out_trade_no.clone())
    }

    /// A trade and its refunds that `by` names: any one of WeChat's four ids will do (a
    /// refund's own ids pick that refund, a trade's ids all of its refunds).
    fn refunds_of(&self, mch_id: &str, by: &RefundKey<'_>) -> Result<(Trade, Vec<Refund>), Refusal> {
        let now = self.core.now_ms();
        let mut book = self.book.lock();
        for r in book.trades.values_mut().filter(|t| t.mch_id == mch_id).flat_map(|t| t.refunds.iter_mut()) {
            r.settle_if_due(now);
        }
        let refund_matches = |r: &Refund| {
            (!by.out_refund_no.is_empty() && r.out_refund_no == by.out_refund_no)
                || (!by.refund_id.is_empty() && r.refund_id == by.refund_id)
        };
        let names_refund = !by.out_refund_no.is_empty() || !by.refund_id.is_empty();
        let t = book
            .trades
            .values()
            .filter(|t| t.mch_id == mch_id)
            .find(|t| match names_refund {
                true => t.refunds.iter().any(refund_matches),
                false => {
                    (!by.out_trade_no.is_empty() && t.out_trade_no == by.out_trade_no)
                        || (!by.transaction_id.is_empty() && t.transaction_id == by.transaction_id)
                }
            })
            .ok_or(Refusal::RefundNotFound)?;
        let refunds: Vec<Refund> = t.refunds.iter().filter(|r| !names_refund || refund_matches(r)).cloned().collect();
        match refunds.is_empty() {
            true => Err(Refusal::RefundNotFound),
            false => Ok((t.clone(), refunds)),
        }
    }

    /// The bill of `day` (`yyyy-MM-dd`) for `mch_id`: `None` until the day has ended.
    fn bill_rows(&self, appid: &str, mch_id: &str, day: &str) -> Option<Vec<BillRow>> {
        if day.len() != 10 || day >= date(self.core.now_ms()).as_str() {
            return None;
        }
        let fee = |fen: i64| (Decimal::from(fen) * self.fee_rate).round().to_i64().unwrap_or(0);
        let book = self.book.lock();
        let mut trades: Vec<&Trade> = book.trades.values().filter(|t| t.mch_id == mch_id).collect();
        trades.sort_by_key(|t| t.paid_at);
        let mut rows = Vec::new();
        for t in trades {
            let row = |time: i64, refund: Option<(String, i64)>, fee_fen: i64| BillRow {
                time,
                appid: appid.to_owned(),
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
            for r in t.refunds.iter().filter(|r| date(r.at) == day && r.status != RefundStatus::Closed) {
                rows.push(row(r.at, Some((r.out_refund_no.clone(), r.fee)), -fee(r.fee)));
            }
        }
        Some(rows)
    }

    fn cashier(&self, token: &str, pay: bool) -> SimResponse {
        let Some(out) = self.book.lock().tokens.get(token).cloned() else {
            return answer(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "二维码已失效 (no such code)");
        };
        let message = if pay {
            self.pay_trade(&out).map_or_else(|e| format!("支付失败 — {e}"), |_| "支付成功 — paid".into())
        } else {
            String::new()
        };
        let book = self.book.lock();
        let Some(t) = book.trades.get(&out) else {
            return answer(StatusCode::NOT_FOUND, "text/plain", "no such trade");
        };
        let body = format!(
            "<p>{}</p><p id=\"amount\">¥ {}.{:02}</p><p>trade_state: <b id=\"status\">{}</b></p><p>{}</p>",
            html_escape::encode_text(&t.body),
            t.total_fee / 100,
            t.total_fee % 100,
            t.state.as_str(),
            html_escape::encode_text(&message),
        );
        let action = format!("/wechat/cashier/{token}");
        crate::sim::cashier_page("微信支付", &body, (t.state == State::NotPay).then_some(action.as_str()))
    }

    /// The buyer pays: the trade succeeds and the merchant is notified in the API the
    /// trade was opened with.
    fn pay_trade(&self, out_trade_no: &str) -> Result<String, String> {
        let now = self.core.now_ms();
        let paid = {
            let mut book = self.book.lock();
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
            t.clone()
        };
        let m = self.merchants.get(&paid.mch_id).ok_or("no such merchant")?;
        let notification = match paid.api {
            Api::V2(sign_type) => self.v2_notification(m, &paid, sign_type, now),
            Api::V3 => self.v3_notification(m, &paid, now)?,
        };
        if !paid.notify_url.is_empty() {
            self.send(paid.api, notification);
        }
        Ok(paid.transaction_id)
    }
}

impl super::Controlled for WechatSim {
    fn pay(&self, account: Option<&str>, out_trade_no: &str) -> Result<serde_json::Value, String> {
        self.trade(account, out_trade_no).ok_or("no such trade")?;
        self.pay_trade(out_trade_no).map(|id| json!({ "transaction_id": id }))
    }

    fn trade(&self, account: Option<&str>, out_trade_no: &str) -> Option<serde_json::Value> {
        let book = self.book.lock();
        let t = book.trades.get(out_trade_no).filter(|t| account.is_none_or(|a| a == t.mch_id))?;
        Some(json!({ "out_trade_no": t.out_trade_no, "transaction_id": t.transaction_id,
                     "trade_state": t.state.as_str(), "total_fee": t.total_fee,
                     "refunded_fee": t.refunded(), "api": if t.api == Api::V3 { "v3" } else { "v2" },
                     "refunds": t.refunds.iter().map(|r| json!({
                         "out_refund_no": r.out_refund_no, "refund_id": r.refund_id, "refund_fee": r.fee,
                         "status": r.status.v3() })).collect::<Vec<_>>() }))
    }

    fn faults(&self) -> &Mutex<FaultBook> {
        &self.faults
    }
}
