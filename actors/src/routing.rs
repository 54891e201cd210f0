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
        .ok_or_else(|| {
            let currency = amount.currency();
            let takes_currency = channels.iter().any(|c| {
                c.status == ChannelStatus::Enabled && c.methods.contains(&method) && c.currencies.contains(&currency)
            });
            let message = match takes_currency {
                true => format!("no channel available for pay_method {method}"),
                false => format!("no channel takes {currency} payments by pay_method {method}"),
            };
            CoreError::new(ErrorCode::NoAvailableChannel, message)
        })
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
}
