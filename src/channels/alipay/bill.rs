//! Alipay's trade bill: a zip of GBK CSV files; the detail file has `#` header lines, a
//! column row, one row per trade or refund (each value padded with a trailing tab) and
//! `#` footer totals. Written by the simulator, read by the adapter, so both follow this
//! one description.

use std::io::{Cursor, Read, Write};

use paygate_actors::ports::BillLine;

use super::wire;

/// The detail file's columns, in order.
pub const COLUMNS: [&str; 25] = [
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
];

/// One row of the detail file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRow {
    /// Alipay's trade number.
    pub trade_no: String,
    /// Our order number.
    pub out_trade_no: String,
    /// A refund row (业务类型 退款) rather than a payment (交易).
    pub refund: bool,
    /// What was bought, as the merchant named it.
    pub subject: String,
    /// Unix millis the trade was created.
    pub created: i64,
    /// Unix millis it completed (paid, or refunded).
    pub finished: i64,
    /// The order amount, fen.
    pub order_fen: i64,
    /// What the merchant received: positive for payments, negative for refunds, fen.
    pub net_fen: i64,
    /// The refund request number, for refund rows.
    pub refund_no: String,
    /// Alipay's fee, fen (written negative, as Alipay does; refunds return it).
    pub fee_fen: i64,
}

/// Writes the bill of `date` (`yyyy-MM-dd`) for `account` as Alipay's zip.
pub fn write_zip(account: &str, date: &str, rows: &[BillRow]) -> Result<Vec<u8>, String> {
    let compact = date.replace('-', "");
    let mut csv = String::new();
    csv.push_str("#支付宝交易记录明细查询\n");
    csv.push_str(&format!("#账号：[{account}]\n"));
    csv.push_str(&format!("#起始日期：[{date} 00:00:00]   终止日期：[{date} 23:59:59]\n"));
    csv.push_str("#-----------------------------------------业务明细列表----------------------------------------\n");
    csv.push_str(&COLUMNS.join(","));
    csv.push('\n');
    for r in rows {
        let fields = [
            r.trade_no.clone(),
            r.out_trade_no.clone(),
            if r.refund { "退款" } else { "交易" }.to_owned(),
            r.subject.replace([',', '\n', '\r'], " "),
            wire::timestamp(r.created),
            wire::timestamp(r.finished),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            "buyer***@example.com".to_owned(),
            wire::yuan(r.order_fen),
            wire::signed_yuan(r.net_fen),
            "0.00".into(),
            "0.00".into(),
            "0.00".into(),
            "0.00".into(),
            "0.00".into(),
            String::new(),
            "0.00".into(),
            "0.00".into(),
            r.refund_no.clone(),
            wire::signed_yuan(r.fee_fen),
            "0.00".into(),
            String::new(),
        ];
        let row: Vec<String> = fields.iter().map(|f| format!("{f}\t")).collect();
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    let (trades, refunds) = rows.iter().fold((0, 0), |(t, r), row| if row.refund { (t, r + 1) } else { (t + 1, r) });
    csv.push_str("#-----------------------------------------业务明细列表结束------------------------------------\n");
    csv.push_str(&format!("#交易合计：{trades}笔，退款合计：{refunds}笔\n"));
    let (gbk, _, _) = encoding_rs::GBK.encode(&csv);
    let summary = format!("#支付宝业务汇总查询\n#账号：[{account}]\n#交易合计：{trades}笔，退款合计：{refunds}笔\n");
    let (summary_gbk, _, _) = encoding_rs::GBK.encode(&summary);

    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    let err = |e: zip::result::ZipError| e.to_string();
    zip.start_file(format!("{account}_{compact}_业务明细.csv"), options).map_err(err)?;
    zip.write_all(&gbk).map_err(|e| e.to_string())?;
    zip.start_file(format!("{account}_{compact}_业务明细(汇总).csv"), options).map_err(err)?;
    zip.write_all(&summary_gbk).map_err(|e| e.to_string())?;
    Ok(zip.finish().map_err(err)?.into_inner())
}

/// Reads the detail rows out of a bill zip.
pub fn parse_zip(bytes: &[u8]) -> Result<Vec<BillLine>, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("bill zip: {e}"))?;
    let mut detail = None;
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).map_err(|e| format!("bill zip: {e}"))?;
        let name = file.name().to_owned();
        if name.contains("业务明细") && !name.contains("汇总") {
            let mut raw = Vec::new();
            file.read_to_end(&mut raw).map_err(|e| format!("bill zip: {e}"))?;
            detail = Some(raw);
        }
    }
    let raw = detail.ok_or("bill zip: no detail file")?;
    let (text, _, malformed) = encoding_rs::GBK.decode(&raw);
    if malformed {
        return Err("bill: the detail file is not valid GBK".into());
    }
    parse_detail(&text)
}

/// Reads the rows of a decoded detail file.
pub fn parse_detail(text: &str) -> Result<Vec<BillLine>, String> {
    let mut lines = Vec::new();
    let mut seen_columns = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches(|c: char| c == '\t' || c == ' ')).collect();
        if !seen_columns {
            if fields.first() != Some(&"支付宝交易号") {
                return Err(format!("bill line {}: expected the column row", n + 1));
            }
            seen_columns = true;
            continue;
        }
        let field = |i: usize| fields.get(i).copied().ok_or_else(|| format!("bill line {}: too few columns", n + 1));
        let amount = |i: usize| wire::signed_fen(field(i)?).ok_or_else(|| format!("bill line {}: bad amount", n + 1));
        lines.push(BillLine {
            pay_order_no: field(1)?.to_owned(),
            channel_trade_no: field(0)?.to_owned(),
            amount_minor: amount(12)?,
            fee_minor: amount(22)?.saturating_neg(),
            time: wire::parse_timestamp(field(5)?).ok_or_else(|| format!("bill line {}: bad time", n + 1))?,
        });
    }
    if !seen_columns {
        return Err("bill: no column row".into());
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bill_written_is_read_back_gbk_zip_tabs_and_all() {
        let rows = vec![
            BillRow {
                trade_no: "2026112322001".into(),
                out_trade_no: "P17000000000000001000001".into(),
                refund: false,
                subject: "测试, 商品".into(),
                created: 1_700_000_000_000,
                finished: 1_700_000_060_000,
                order_fen: 8888,
                net_fen: 8888,
                refund_no: String::new(),
                fee_fen: -53,
            },
            BillRow {
                trade_no: "2026112322001".into(),
                out_trade_no: "P17000000000000001000001".into(),
                refund: true,
                subject: "测试".into(),
                created: 1_700_000_000_000,
                finished: 1_700_000_120_000,
                order_fen: 8888,
                net_fen: -1000,
                refund_no: "R1".into(),
                fee_fen: 6,
            },
        ];
        let zip = write_zip("2088000000000001", "2023-11-15", &rows).unwrap();
        let lines = parse_zip(&zip).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].pay_order_no, "P17000000000000001000001");
        assert_eq!((lines[0].amount_minor, lines[0].fee_minor, lines[0].time), (8888, 53, 1_700_000_060_000));
        assert_eq!((lines[1].amount_minor, lines[1].fee_minor), (-1000, -6));
        assert!(parse_zip(b"not a zip").is_err());
        assert!(parse_detail("#only comments\n").is_err());
    }
}
