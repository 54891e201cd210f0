//! Times on the wire: RFC 3339 in UTC, and calendar dates for bills.

use std::fmt;

use time::OffsetDateTime;

/// The whole second of unix millis `ms`, and the millis within it; the epoch where
/// `time` cannot represent the instant.
fn at(ms: i64) -> (OffsetDateTime, u16) {
    // Whole seconds in i64, not nanoseconds in i128: this runs four times per answer.
    match OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) {
        Ok(second) => (second, ms.rem_euclid(1000) as u16),
        Err(_) => (OffsetDateTime::UNIX_EPOCH, 0),
    }
}

/// Unix millis shown as RFC 3339 in UTC: `2024-01-01T12:00:00.123Z`, the fraction
/// without trailing zeros and absent on a whole second (as `time`'s `Rfc3339` writes
/// it). Written straight into the output, so an answer's times cost no allocation;
/// a year outside 0..=9999, which RFC 3339 cannot show, shows as nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub i64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, millis) = at(self.0);
        let year = t.year();
        if !(0..=9999).contains(&year) {
            return Ok(());
        }
        let (month, day) = (u8::from(t.month()), t.day());
        let (hour, minute, second) = (t.hour(), t.minute(), t.second());
        write!(f, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}")?;
        let (mut fraction, mut digits) = (millis, 3usize);
        if fraction != 0 {
            while fraction % 10 == 0 {
                fraction /= 10;
                digits -= 1;
            }
            write!(f, ".{fraction:0digits$}")?;
        }
        f.write_str("Z")
    }
}

/// `2024-01-01T12:00:00.123Z`.
pub fn rfc3339(ms: i64) -> String {
    Rfc3339(ms).to_string()
}

/// `2024-01-01` (UTC).
pub fn date(ms: i64) -> String {
    let d = at(ms).0.date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Reads an RFC 3339 time (any offset) into unix millis.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Reads a calendar date `YYYY-MM-DD` into its day number: days since 1970-01-01.
pub fn parse_date(text: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(text, &format).ok()?;
    Some(i64::from(date.to_julian_day() - time::Date::from_ordinal_date(1970, 1).ok()?.to_julian_day()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dates_and_times_are_read_back() {
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("2024-01-01"), Some(19_723));
        assert_eq!(parse_date("2024-13-01"), None);
        assert_eq!(parse_rfc3339(&rfc3339(1_704_067_200_123)), Some(1_704_067_200_123));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
    use time::format_description::well_known;

    /// The instant as `time` builds it from nanoseconds: the reference.
    fn reference(ms: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap()
    }

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_704_110_400_123), "2024-01-01T12:00:00.123Z");
        assert_eq!(rfc3339(1_704_110_400_120), "2024-01-01T12:00:00.12Z");
        assert_eq!(rfc3339(1_704_110_400_100), "2024-01-01T12:00:00.1Z");
        assert_eq!(rfc3339(1_704_110_400_007), "2024-01-01T12:00:00.007Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    proptest! {
        #[test]
        fn writes_what_the_time_crate_writes(ms in -62_167_219_200_000i64..=253_402_300_799_999) {
            let by_time = reference(ms).format(&well_known::Rfc3339).unwrap();
            prop_assert_eq!(rfc3339(ms), by_time);
        }

        #[test]
        fn never_panics(ms in any::<i64>()) {
            let _ = rfc3339(ms);
        }
    }
}
