//! Channel selection for a new payment (SPEC F4): filter, then rank.

use std::sync::Arc;

use crate::channel::{ChannelProfile, ChannelStatus};
use crate::error::{CoreError, ErrorCode};
use crate::money::Money;
use crate::order::PayMethod;

/// Picks the channel for a new payment: enabled, takes the method, within the single
/// limit, and with room today (`has_room`); the highest weight wins (ties:
/// configuration order).
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
        .filter(|c| c.single_limit_minor.is_none_or(|limit| amount.minor() <= limit))
        .filter(|c| has_room(c))
        .fold(None::<&ChannelProfile>, |best, c| match best {
            Some(b) if b.weight >= c.weight => Some(b),
            _ => Some(c),
        })
        .ok_or_else(|| {
            CoreError::new(ErrorCode::NoAvailableChannel, format!("no channel available for pay_method {method}"))
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
}
