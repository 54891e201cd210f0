//! Exact money: integer minor units inside, decimal strings at the edges.
//!
//! Parsing is deliberately strict: a payment API must not guess what `"1e3"` or
//! `"1.001"` was meant to be.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// ISO 4217 currencies the gateway accepts, with their number of decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Currency {
    /// Chinese yuan (fen = 1/100).
    CNY,
    /// Hong Kong dollar.
    HKD,
    /// US dollar.
    USD,
    /// Euro.
    EUR,
    /// Japanese yen (no minor unit).
    JPY,
}

impl Currency {
    /// Every supported currency.
    pub const ALL: [Currency; 5] = [Currency::CNY, Currency::HKD, Currency::USD, Currency::EUR, Currency::JPY];

    /// Number of decimals of the currency's minor unit.
    pub const fn decimals(self) -> u32 {
        match self {
            Currency::JPY => 0,
            _ => 2,
        }
    }

    /// The ISO 4217 numeric code (UnionPay's `currencyCode`).
    pub const fn numeric(self) -> &'static str {
        match self {
            Currency::CNY => "156",
            Currency::HKD => "344",
            Currency::USD => "840",
            Currency::EUR => "978",
            Currency::JPY => "392",
        }
    }

    /// The ISO code.
    pub const fn code(self) -> &'static str {
        match self {
            Currency::CNY => "CNY",
            Currency::HKD => "HKD",
            Currency::USD => "USD",
            Currency::EUR => "EUR",
            Currency::JPY => "JPY",
        }
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "CNY" => Ok(Currency::CNY),
            "HKD" => Ok(Currency::HKD),
            "USD" => Ok(Currency::USD),
            "EUR" => Ok(Currency::EUR),
            "JPY" => Ok(Currency::JPY),
            _ => Err(MoneyError::UnknownCurrency),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why an amount string was refused. The messages name the rule, for API errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not of the form `123` or `123.45`.
    #[error("must be a plain decimal number such as \"100.00\" (digits, at most one '.', no sign or exponent)")]
    NotDecimal,
    /// Zero or negative.
    #[error("must be greater than zero")]
    NotPositive,
    /// More decimals than the currency has.
    #[error("has more decimals than the currency allows")]
    TooManyDecimals,
    /// Above the configured maximum (or too many digits to be an amount at all).
    #[error("exceeds the maximum amount {max}")]
    TooLarge {
        /// The largest amount accepted, in the currency asked for.
        max: Money,
    },
    /// Not a supported ISO currency.
    #[error("is not a supported currency (CNY, HKD, USD, EUR, JPY)")]
    UnknownCurrency,
}

/// An amount of money in integer minor units of its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

/// The most digits an amount string may have before the decimal point. Keeps every
/// parsed value far inside `i64` minor units whatever the currency.
const MAX_INTEGER_DIGITS: usize = 12;

impl Money {
    /// An amount from minor units (fen for CNY).
    pub const fn from_minor(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    /// Minor units.
    pub const fn minor(self) -> i64 {
        self.minor
    }

    /// The currency.
    pub const fn currency(self) -> Currency {
        self.currency
    }

    /// Parses a positive decimal amount such as `"100.00"` in `currency`, refusing
    /// exponents, signs, spaces, excess decimals and anything above `max_minor`.
    pub fn parse_positive(text: &str, currency: Currency, max_minor: i64) -> Result<Money, MoneyError> {
        let (int_part, frac_part) = match text.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (text, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int_part) || frac_part.is_some_and(|f| !all_digits(f)) {
            return Err(MoneyError::NotDecimal);
        }
        let too_large = MoneyError::TooLarge { max: Money::from_minor(max_minor, currency) };
        if int_part.trim_start_matches('0').len() > MAX_INTEGER_DIGITS {
            return Err(too_large);
        }
        let frac = frac_part.unwrap_or("");
        let decimals = currency.decimals() as usize;
        // Trailing zeros beyond the currency's decimals carry no value ("1.000" is 1.00).
        if frac.len() > decimals && frac.bytes().skip(decimals).any(|b| b != b'0') {
            return Err(MoneyError::TooManyDecimals);
        }
        if frac.len() > 18 {
            return Err(MoneyError::NotDecimal);
        }
        let value = Decimal::from_str(text).map_err(|_| MoneyError::NotDecimal)?;
        let minor = value
            .checked_mul(Decimal::from(10_i64.pow(currency.decimals())))
            .and_then(|d| i64::try_from(d.trunc()).ok())
            .ok_or(too_large)?;
        if minor <= 0 {
            return Err(MoneyError::NotPositive);
        }
        if minor > max_minor {
            return Err(too_large);
        }
        Ok(Money { minor, currency })
    }

    /// The amount as a decimal, for display and fee math.
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.minor, self.currency.decimals())
    }

    /// Adds two amounts of the same currency; `None` on a currency mismatch or overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        Some(Money { minor: self.minor.checked_add(other.minor)?, currency: self.currency })
    }
}

impl fmt::Display for Money {
    /// Always prints the currency's full decimals: `100.00`, `0.01`, `500` (JPY).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Integer arithmetic: every answer prints two amounts, and going through
        // `Decimal` cost more than the rest of rendering them.
        let decimals = self.currency.decimals();
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        match 10u64.checked_pow(decimals) {
            Some(unit) if decimals > 0 => {
                write!(f, "{sign}{}.{:0width$}", abs / unit, abs % unit, width = decimals as usize)
            }
            _ => write!(f, "{sign}{abs}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: i64 = 10_000_000_000; // 100,000,000.00

    #[test]
    fn parses_plain_amounts() {
        assert_eq!(Money::parse_positive("100.00", Currency::CNY, MAX).map(Money::minor), Ok(10_000));
        assert_eq!(Money::parse_positive("0.01", Currency::CNY, MAX).map(Money::minor), Ok(1));
        assert_eq!(Money::parse_positive("7", Currency::CNY, MAX).map(Money::minor), Ok(700));
        assert_eq!(Money::parse_positive("1.5", Currency::CNY, MAX).map(Money::minor), Ok(150));
        assert_eq!(Money::parse_positive("1.500", Currency::CNY, MAX).map(Money::minor), Ok(150));
        assert_eq!(Money::parse_positive("500", Currency::JPY, MAX).map(Money::minor), Ok(500));
    }

    #[test]
    fn refuses_what_is_not_an_amount() {
        use MoneyError::*;
        let cases = [
            ("0", NotPositive),
            ("0.00", NotPositive),
            ("-1", NotDecimal),
            ("+1", NotDecimal),
            ("1.001", TooManyDecimals),
            ("1e3", NotDecimal),
            ("abc", NotDecimal),
            ("", NotDecimal),
            (".5", NotDecimal),
            ("5.", NotDecimal),
            ("1.2.3", NotDecimal),
            (" 1", NotDecimal),
            ("NaN", NotDecimal),
            ("12345678901234567890", TooLarge { max: Money::from_minor(MAX, Currency::CNY) }),
            ("100000000.01", TooLarge { max: Money::from_minor(MAX, Currency::CNY) }),
        ];
        for (text, want) in cases {
            assert_eq!(Money::parse_positive(text, Currency::CNY, MAX), Err(want), "{text:?}");
        }
        assert_eq!(Money::parse_positive("1.5", Currency::JPY, MAX), Err(TooManyDecimals));
    }

    proptest! {
        #[test]
        fn display_round_trips(minor in 1i64..=MAX) {
            let m = Money::from_minor(minor, Currency::CNY);
            let text = m.to_string();
            prop_assert_eq!(Money::parse_positive(&text, Currency::CNY, MAX), Ok(m));
        }

        #[test]
        fn display_prints_what_decimal_prints(minor in any::<i64>(), c in 0usize..Currency::ALL.len()) {
            let currency = Currency::ALL[c];
            let m = Money::from_minor(minor, currency);
            let by_decimal = format!("{:.*}", currency.decimals() as usize, m.to_decimal());
            prop_assert_eq!(m.to_string(), by_decimal);
        }

        #[test]
        fn never_panics_on_any_text(text in ".{0,40}") {
            let _ = Money::parse_positive(&text, Currency::CNY, MAX);
        }
    }
}
