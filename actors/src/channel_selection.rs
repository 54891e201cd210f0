//! Channel selection for a new payment: filter, then rank.

use std::sync::Arc;

use crate::channel::{ChannelProfile, ChannelStatus};
use crate::error::{CoreError, ErrorCode};
use crate::money::Money;
use crate::order::PayMethod;

/// Picks the channel for a new payment: enabled, takes the method and the currency,
/// within the single limit, and with room today (`has_room`); the highest weight wins
/// (ties: configuration order).
pub fn select_channel(
    channels: &[Arc<ChannelProfile>],
    method: PayMethod,
    amount: Money,
    has_room: impl Fn(&ChannelProfile) -> bool,
) -> Result<&ChannelProfile, CoreError> {
    channels
        .iter()
        .map(Arc::as_ref)
        .filter(|c| c.status == ChannelStatus::Enabled && c.methods.contains(&method))
        .filter(|c| c.currencies.contains(&amount.currency()))
        .filter(|c| c.single_limit_minor.is_none_or(|limit| amount.minor() <= limit))
        .filter(|c| has_room(c))
        .fold(None::<&ChannelProfile>, |best, c| match best {
            Some(b) if b.weight >= c.weight => Some(b),
            _ => Some(c),
        })
        .ok_or_else(|| why_none(channels, method, amount, has_room))
}

/// Why no channel can take the payment, in words a merchant can act on.
fn why_none(
    channels: &[Arc<ChannelProfile>],
    method: PayMethod,
    amount: Money,
    has_room: impl Fn(&ChannelProfile) -> bool,
) -> CoreError {
    let currency = amount.currency();
    let takes = |c: &&ChannelProfile| c.status == ChannelStatus::Enabled && c.methods.contains(&method);
    let takes_currency: Vec<&ChannelProfile> =
        channels.iter().map(Arc::as_ref).filter(takes).filter(|c| c.currencies.contains(&currency)).collect();
    let highest_limit = takes_currency.iter().map(|c| c.single_limit_minor).try_fold(0i64, |m, l| l.map(|l| m.max(l)));
    let message = match highest_limit {
        _ if takes_currency.is_empty() && channels.iter().map(Arc::as_ref).any(|c| takes(&c)) => {
            format!("no channel takes {currency} payments by pay_method {method}")
        }
        _ if takes_currency.is_empty() => format!("no channel available for pay_method {method}"),
        Some(limit) if amount.minor() > limit => format!(
            "{amount} exceeds the single-payment limit {} of every {method} channel",
            Money::from_minor(limit, currency)
        ),
        _ if takes_currency.iter().all(|c| !has_room(c)) => {
            format!("no {method} channel can take {amount} {currency} more today (daily limits)")
        }
        _ => format!("no channel available for pay_method {method}"),
    };
    CoreError::new(ErrorCode::NoAvailableChannel, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;
    use std::time::Duration;

    fn ch(
        code: &str,
        methods: &[PayMethod],
        weight: u32,
        limit: Option<i64>,
        status: ChannelStatus,
    ) -> Arc<ChannelProfile> {
        Arc::new(ChannelProfile {
            code: code.into(),
            provider: "sandbox".into(),
            methods: methods.to_vec(),
            currencies: vec![Currency::CNY],
            weight,
            status,
            single_limit_minor: limit,
            daily_limit_minor: None,
            fee_rate: rust_decimal::Decimal::ZERO,
            timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn filters_then_ranks_by_weight() {
        let cny = |m| Money::from_minor(m, Currency::CNY);
        let chans = vec![
            ch("a", &[PayMethod::Sandbox], 10, None, ChannelStatus::Enabled),
            ch("b", &[PayMethod::Sandbox], 50, Some(1_000), ChannelStatus::Enabled),
            ch("c", &[PayMethod::Sandbox], 90, None, ChannelStatus::Disabled),
            ch("d", &[PayMethod::Alipay], 99, None, ChannelStatus::Enabled),
        ];
        assert_eq!(select_channel(&chans, PayMethod::Sandbox, cny(500), |_| true).map(|c| c.code.as_str()), Ok("b"));
        assert_eq!(select_channel(&chans, PayMethod::Sandbox, cny(5_000), |_| true).map(|c| c.code.as_str()), Ok("a"));
        let none = select_channel(&chans, PayMethod::WechatPay, cny(5), |_| true).map_err(|e| e.code);
        assert_eq!(none.err(), Some(ErrorCode::NoAvailableChannel));
        // A channel without room today is passed over for the next.
        let full = select_channel(&chans, PayMethod::Sandbox, cny(500), |c| c.code != "b");
        assert_eq!(full.map(|c| c.code.as_str()), Ok("a"));
    }

    #[test]
    fn a_channel_takes_only_its_currencies() {
        let mut hkd_too = (*ch("hk", &[PayMethod::Sandbox], 1, None, ChannelStatus::Enabled)).clone();
        hkd_too.currencies.push(Currency::HKD);
        let chans = vec![ch("cny", &[PayMethod::Sandbox], 90, None, ChannelStatus::Enabled), Arc::new(hkd_too)];
        let pick = |m: Money| select_channel(&chans, PayMethod::Sandbox, m, |_| true).map(|c| c.code.clone());
        assert_eq!(pick(Money::from_minor(700, Currency::CNY)), Ok("cny".into()), "the heavier CNY channel");
        assert_eq!(pick(Money::from_minor(700, Currency::HKD)), Ok("hk".into()), "the only one taking HKD");
        let usd = pick(Money::from_minor(700, Currency::USD)).unwrap_err();
        assert_eq!(usd.code, ErrorCode::NoAvailableChannel);
        assert_eq!(usd.message, "no channel takes USD payments by pay_method SANDBOX");
    }

    #[test]
    fn a_refusal_names_the_limit_that_refused() {
        let cny = |m| Money::from_minor(m, Currency::CNY);
        let chans = vec![
            ch("a", &[PayMethod::Sandbox], 10, Some(5_000_000), ChannelStatus::Enabled),
            ch("b", &[PayMethod::Sandbox], 50, Some(1_000_000), ChannelStatus::Enabled),
        ];
        let why = |amount, room: bool| select_channel(&chans, PayMethod::Sandbox, cny(amount), |_| room).unwrap_err();
        assert_eq!(
            why(6_000_000, true).message,
            "60000.00 exceeds the single-payment limit 50000.00 of every SANDBOX channel"
        );
        assert_eq!(why(500, false).message, "no SANDBOX channel can take 5.00 CNY more today (daily limits)");
        let unlimited = vec![ch("u", &[PayMethod::Sandbox], 1, None, ChannelStatus::Enabled)];
        let full = select_channel(&unlimited, PayMethod::Sandbox, cny(500), |_| false).unwrap_err();
        assert!(full.message.contains("daily limits"), "{}", full.message);
        let off = vec![ch("x", &[PayMethod::Sandbox], 1, None, ChannelStatus::Disabled)];
        let none = select_channel(&off, PayMethod::Sandbox, cny(500), |_| true).unwrap_err();
        assert_eq!(none.message, "no channel available for pay_method SANDBOX");
    }
}
