//! Times on the wire: RFC 3339 in UTC, and calendar dates for bills.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `2024-01-01T12:00:00.123Z`.
pub fn rfc3339(ms: i64) -> String {
    at(ms).format(&Rfc3339).unwrap_or_default()
}

/// `2024-01-01` (UTC).
pub fn date(ms: i64) -> String {
    let d = at(ms).date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}
