//! WeChat Pay's trade bill (v2 `/pay/downloadbill` and v3 `/v3/bill/tradebill`,
//! bill_type ALL): UTF-8 text, a column row, one row per payment or refund with every
//! value prefixed by a backtick, then a totals block. Written by the simulator, read by
//! the adapter.

use paygate_actors::ports::BillLine;

use crate::channels::alipay::wire::{parse_timestamp, signed_fen, signed_yuan, timestamp, yuan};

/// The column row.
pub const HEADER: &str =
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,\
付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,\
商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";

/// One row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRow {
    /// Unix millis of the payment or refund.
    pub time: i64,
    /// App and merchant ids.
    pub appid: String,
    /// Merchant id.
    pub mch_id: String,
    /// WeChat's transaction id.
    pub transaction_id: String,
    /// Our order number.
    pub out_trade_no: String,
    /// For refund rows: the refund number and amount (fen).
    pub refund: Option<(String, i64)>,
    /// The order amount, fen.
    pub total_fen: i64,
    /// WeChat's fee, fen (negative on refund rows: returned).
    pub fee_fen: i64,
    /// The product description.
    pub body: String,
}

/// The bill text of `rows`.
pub fn write(rows: &[BillRow]) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    let (mut paid, mut refunded, mut fees) = (0i64, 0i64, 0i64);
    for r in rows {
        let (state, refund_no, refund_fen) = match &r.refund {
            Some((no, fen)) => ("REFUND", no.as_str(), *fen),
            None => ("SUCCESS", "", 0),
        };
        paid += if r.refund.is_none() { r.total_fen } else { 0 };
        refunded += refund_fen;
        fees += r.fee_fen;
        let fields = [
            timestamp(r.time),
            r.appid.clone(),
            r.mch_id.clone(),
            "0".into(),
            String::new(),
            r.transaction_id.clone(),
            r.out_trade_no.clone(),
            "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
            "NATIVE".into(),
            state.into(),
            "CMC".into(),
            "CNY".into(),
            yuan(if r.refund.is_some() { 0 } else { r.total_fen }),
            "0.00".into(),
            if r.refund.is_some() { format!("50000{}", r.transaction_id) } else { String::new() },
            refund_no.into(),
            yuan(refund_fen),
            "0.00".into(),
            if r.refund.is_some() { "ORIGINAL".into() } else { String::new() },
            if r.refund.is_some() { "SUCCESS".into() } else { String::new() },
            r.body.replace([',', '`', '\n', '\r'], " "),
            String::new(),
            signed_yuan(r.fee_fen),
            "0.60%".into(),
            yuan(r.total_fen),
            yuan(refund_fen),
            String::new(),
        ];
        let row: Vec<String> = fields.iter().map(|f| format!("`{f}")).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out.push_str("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\n");
    out.push_str(&format!(
        "`{},`{},`{},`0.00,`{},`{},`{}\n",
        rows.len(),
        yuan(paid),
        yuan(refunded),
        signed_yuan(fees),
        yuan(paid),
        yuan(refunded)
    ));
    out
}

/// Reads the rows of a bill.
pub fn parse(text: &str) -> Result<Vec<BillLine>, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.trim_start_matches('\u{feff}').starts_with("交易时间,") => {}
        _ => return Err("bill: no column row".into()),
    }
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.starts_with("总交易单数") {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(|v| v.trim().trim_start_matches('`')).collect();
        let bad = |what: &str| format!("bill row {}: {what}", n + 1);
        let field = |i: usize| f.get(i).copied().ok_or_else(|| bad("too few columns"));
        let amount = |i: usize| field(i).and_then(|v| signed_fen(v).ok_or_else(|| bad("bad amount")));
        let refund = field(9)? == "REFUND";
        out.push(BillLine {
            pay_order_no: field(6)?.to_owned(),
            channel_trade_no: field(5)?.to_owned(),
            amount_minor: if refund { -amount(16)? } else { amount(12)? },
            fee_minor: amount(22)?,
            time: parse_timestamp(field(0)?).ok_or_else(|| bad("bad time"))?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bill_written_is_read_back() {
        let row = BillRow {
            time: 1_700_000_000_000,
            appid: "wx1".into(),
            mch_id: "1900000001".into(),
            transaction_id: "4200000001".into(),
            out_trade_no: "P17000000000000001000001".into(),
            refund: None,
            total_fen: 1234,
            fee_fen: 7,
            body: "茶, tea".into(),
        };
        let refund = BillRow { refund: Some(("R1".into(), 234)), fee_fen: -1, ..row.clone() };
        let lines = parse(&write(&[row, refund])).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].amount_minor, lines[0].fee_minor, lines[0].time), (1234, 7, 1_700_000_000_000));
        assert_eq!((lines[1].amount_minor, lines[1].fee_minor), (-234, -1));
        assert!(parse("garbage").is_err());
        assert_eq!(signed_fen("-0.05"), Some(-5));
        assert_eq!(signed_fen("1.5"), None);
    }
}
