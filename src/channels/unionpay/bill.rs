//! UnionPay's merchant settlement file for a day (fileTransfer.do, fileType 00): a zip,
//! zlib-compressed then base64 in `fileContent`, holding the transaction file
//! `INN{yyMMdd}88ZM_{merId}`. Each line is one transaction in fixed-width fields, one
//! space between fields, in the order and widths of UnionPay's file interface
//! specification ([`LAYOUT`]). Amounts are fen: `txnAmt` twelve digits; the merchant
//! fee and the settlement amount a `C` (credit to the merchant) or `D` (debit) and twelve
//! digits. Written by the simulator, read by the adapter.

use std::io::{Cursor, Read, Write};

use base64::Engine;
use paygate_actors::ports::BillLine;

/// Field names and widths of a transaction line.
pub const LAYOUT: [(&str, usize); 41] = [
    ("tradeCode", 3),
    ("acqInsCode", 11),
    ("sendInsCode", 11),
    ("traceNo", 6),
    ("txnTime", 10),
    ("accNo", 19),
    ("txnAmt", 12),
    ("merCatCode", 4),
    ("termType", 2),
    ("queryId", 21),
    ("oldPayType", 2),
    ("orderId", 32),
    ("payCardType", 2),
    ("origTraceNo", 6),
    ("origTxnTime", 10),
    ("merCharge", 13),
    ("settleAmt", 13),
    ("payType", 4),
    ("groupMerId", 15),
    ("txnType", 2),
    ("txnSubType", 2),
    ("bizType", 6),
    ("accType", 2),
    ("billType", 4),
    ("billNo", 32),
    ("interactMode", 1),
    ("origQryId", 21),
    ("merId", 15),
    ("splitMode", 1),
    ("subMerId", 15),
    ("subMerAbbr", 32),
    ("subMerAmt", 13),
    ("settleNetAmt", 13),
    ("termId", 8),
    ("merReserved", 32),
    ("discountAmt", 13),
    ("invoiceAmt", 13),
    ("installmentFee", 12),
    ("installmentNum", 2),
    ("tradeMedia", 1),
    ("reserved", 131),
];

/// One transaction of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZmRow {
    /// Unix millis of the transaction.
    pub time: i64,
    /// UnionPay's id of this transaction.
    pub query_id: String,
    /// The merchant's order id (for a refund, the refund's).
    pub order_id: String,
    /// For a refund, the consume it refunds.
    pub orig_query_id: Option<String>,
    /// The merchant.
    pub mer_id: String,
    /// Amount, fen (always positive).
    pub amount: i64,
    /// UnionPay's fee, fen (positive: charged; negative: returned).
    pub fee: i64,
}

fn signed(fen: i64) -> String {
    format!("{}{:012}", if fen < 0 { 'D' } else { 'C' }, fen.unsigned_abs())
}

fn parse_signed(text: &str) -> Option<i64> {
    let (sign, digits) = text.split_at_checked(1)?;
    let n: i64 = digits.trim().parse().ok()?;
    match sign {
        "C" => Some(n),
        "D" => Some(-n),
        _ => None,
    }
}

/// One line of the file.
pub fn line(r: &ZmRow) -> String {
    let refund = r.orig_query_id.is_some();
    let mmddhhmmss = super::wire::txn_time(r.time).get(4..).unwrap_or_default().to_owned();
    let value = |name: &str| -> String {
        match name {
            "tradeCode" => (if refund { "S30" } else { "S22" }).into(),
            "txnTime" => mmddhhmmss.clone(),
            "accNo" => "6216***********0018".into(),
            "txnAmt" => format!("{:012}", r.amount),
            "queryId" => r.query_id.clone(),
            "orderId" => r.order_id.clone(),
            // The merchant pays the fee on a consume and is given it back on a refund;
            // it is credited the amount net of the fee, or debited the refund.
            "merCharge" => signed(-r.fee),
            "settleAmt" => signed(if refund { -r.amount } else { r.amount }),
            "settleNetAmt" => signed(if refund { -r.amount + r.fee } else { r.amount - r.fee }),
            "txnType" => (if refund { "04" } else { "01" }).into(),
            "txnSubType" => (if refund { "00" } else { "01" }).into(),
            "bizType" => "000201".into(),
            "origQryId" => r.orig_query_id.clone().unwrap_or_default(),
            "merId" => r.mer_id.clone(),
            _ => String::new(),
        }
    };
    LAYOUT.iter().map(|(name, width)| format!("{:<width$.width$}", value(name))).collect::<Vec<_>>().join(" ")
}

/// The fields of a line by name.
fn fields(line: &str) -> Option<std::collections::HashMap<&'static str, &str>> {
    let mut out = std::collections::HashMap::new();
    let mut at = 0usize;
    for (name, width) in LAYOUT {
        // The last field may be cut short by trailing-space trimming.
        let end = (at + width).min(line.len());
        out.insert(name, line.get(at..end)?.trim());
        at = end + 1;
    }
    Some(out)
}

/// The file's name for `yymmdd` and merchant.
pub fn file_name(yymmdd: &str, mer_id: &str) -> String {
    format!("INN{yymmdd}88ZM_{mer_id}")
}

/// `fileContent` for a file of `rows`: base64 of the zlib-compressed zip.
pub fn write(name: &str, rows: &[ZmRow]) -> Result<String, String> {
    let err = |e: &dyn std::fmt::Display| format!("settlement file: {e}");
    let text: String = rows.iter().map(|r| line(r) + "\r\n").collect();
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    zip.start_file(name, zip::write::SimpleFileOptions::default()).map_err(|e| err(&e))?;
    zip.write_all(text.as_bytes()).map_err(|e| err(&e))?;
    let zipped = zip.finish().map_err(|e| err(&e))?.into_inner();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&zipped).map_err(|e| err(&e))?;
    let compressed = z.finish().map_err(|e| err(&e))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(compressed))
}

/// One transaction as read.
struct Parsed {
    refund: bool,
    query_id: String,
    order_id: String,
    orig_query_id: String,
    amount: i64,
    fee: i64,
    time: i64,
}

/// Reads `fileContent` into bill lines; `year` completes the lines' `MMDDhhmmss` times.
/// A refund names the consume it refunds by its queryId; when that consume is in the
/// same file, the line carries its order.
pub fn parse(file_content: &str, year: &str) -> Result<Vec<BillLine>, String> {
    let compressed = base64::engine::general_purpose::STANDARD
        .decode(file_content.trim())
        .map_err(|e| format!("settlement file: not base64 ({e})"))?;
    let mut zipped = Vec::new();
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .take(64 << 20)
        .read_to_end(&mut zipped)
        .map_err(|e| format!("settlement file: not zlib ({e})"))?;
    let mut archive = zip::ZipArchive::new(Cursor::new(zipped)).map_err(|e| format!("settlement file: {e}"))?;
    let mut text = String::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).map_err(|e| format!("settlement file: {e}"))?;
        if file.name().contains("ZM_") {
            file.by_ref().take(256 << 20).read_to_string(&mut text).map_err(|e| format!("settlement file: {e}"))?;
        }
    }
    let mut read = Vec::new();
    for (n, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |what: &str| format!("settlement file: line {}: {what}", n + 1);
        let f = fields(l).ok_or_else(|| bad("too short"))?;
        let get = |k: &str| f.get(k).copied().unwrap_or_default();
        read.push(Parsed {
            refund: get("txnType") == "04",
            query_id: get("queryId").to_owned(),
            order_id: get("orderId").to_owned(),
            orig_query_id: get("origQryId").to_owned(),
            amount: get("txnAmt").parse().map_err(|_| bad("txnAmt"))?,
            fee: -parse_signed(get("merCharge")).ok_or_else(|| bad("merCharge"))?,
            time: super::wire::parse_txn_time(&format!("{year}{}", get("txnTime"))).ok_or_else(|| bad("txnTime"))?,
        });
    }
    let consume_of = |query_id: &str| {
        read.iter().find(|r| !r.refund && r.query_id == query_id).map(|r| r.order_id.clone()).unwrap_or_default()
    };
    Ok(read
        .iter()
        .map(|r| BillLine {
            pay_order_no: if r.refund { consume_of(&r.orig_query_id) } else { r.order_id.clone() },
            channel_trade_no: if r.refund { r.orig_query_id.clone() } else { r.query_id.clone() },
            amount_minor: if r.refund { -r.amount } else { r.amount },
            fee_minor: r.fee,
            time: r.time,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(query_id: &str, order_id: &str, orig: Option<&str>, amount: i64, fee: i64) -> ZmRow {
        ZmRow {
            time: 1_795_449_600_000,
            query_id: query_id.into(),
            order_id: order_id.into(),
            orig_query_id: orig.map(str::to_owned),
            mer_id: "777290058110048".into(),
            amount,
            fee,
        }
    }

    #[test]
    fn a_line_has_every_field_at_its_place() {
        let l = line(&row("512611231200000000001", "P179545426626100300000", None, 1234, 7));
        let width: usize = LAYOUT.iter().map(|(_, w)| w).sum::<usize>() + LAYOUT.len() - 1;
        assert_eq!(l.len(), width);
        let f = fields(&l).unwrap();
        assert_eq!((f["tradeCode"], f["txnAmt"], f["txnType"]), ("S22", "000000001234", "01"));
        assert_eq!(
            (f["merCharge"], f["settleAmt"], f["settleNetAmt"]),
            ("D000000000007", "C000000001234", "C000000001227")
        );
        assert_eq!(f["orderId"], "P179545426626100300000");
    }

    #[test]
    fn round_trips_payments_and_refunds_through_the_compressed_zip() {
        let rows = [
            row("512611231200000000001", "P179545426626100300000", None, 10_000, 60),
            row("512611231300000000001", "R1", Some("512611231200000000001"), 3_000, -18),
        ];
        let content = write(&file_name("261123", "777290058110048"), &rows).unwrap();
        let lines = parse(&content, "2026").unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0].pay_order_no.as_str(), lines[0].amount_minor, lines[0].fee_minor),
            ("P179545426626100300000", 10_000, 60)
        );
        assert_eq!(
            (lines[1].pay_order_no.as_str(), lines[1].amount_minor, lines[1].fee_minor),
            ("P179545426626100300000", -3_000, -18)
        );
        assert_eq!(lines[1].channel_trade_no, "512611231200000000001");
        assert_eq!(lines[0].time, 1_795_449_600_000);
        assert!(parse("not base64!", "2026").is_err());
    }
}
