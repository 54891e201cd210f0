//! Channel selection for a new payment: filter, then rank. The order tries the ranked
//! channels in turn while a channel is certainly unavailable (failover).

use std::sync::Arc;

use crate::channel::{ChannelDirectory, ChannelProfile};
use crate::daily_volume::business_day;
use crate::error::{CoreError, ErrorCode};
use crate::money::Money;
use crate::order::PayMethod;

impl ChannelDirectory {
    /// The channels that may take a new payment of `amount` by `method` at `now_ms`,
    /// best first: [`rank_channels`] over the channels whose daily limit still has room
    /// for it and whose breaker admits a call.
    pub fn candidates(&self, method: PayMethod, amount: Money, now_ms: i64) -> Result<Vec<String>, CoreError> {
        let day = business_day(now_ms);
        let has_room = |p: &ChannelProfile| {
            p.daily_limit_minor.is_none_or(|limit| {
                let used = self.get(&p.code).map_or(0, |h| h.stats.daily.used(day));
                used.saturating_add(amount.minor()) <= limit
            })
        };
        let is_up = |p: &ChannelProfile| self.get(&p.code).is_some_and(|h| h.live.routable());
        let weight = |p: &ChannelProfile| self.get(&p.code).map_or(p.weight, |h| h.live.weight());
        let ranked = rank_channels(self.profiles(), method, amount, Live { has_room, is_up, weight })?;
        Ok(ranked.into_iter().map(|p| p.code.clone()).collect())
    }
}

/// What routing reads of each channel's state today.
pub struct Live<R, U, W> {
    /// Whether its daily limit has room for the payment.
    pub has_room: R,
    /// Whether it is enabled and its breaker admits a call.
    pub is_up: U,
    /// Its routing weight in force.
    pub weight: W,
}

/// The channels that may take a new payment, best first: enabled, taking the method
/// and the currency, within the single limit, with room today and up; ranked by
/// weight, highest first (ties: configuration order). Never empty: no channel is an
/// error that says why.
pub fn rank_channels<R, U, W>(
    channels: &[Arc<ChannelProfile>],
    method: PayMethod,
    amount: Money,
    live: Live<R, U, W>,
) -> Result<Vec<&ChannelProfile>, CoreError>
where
    R: Fn(&ChannelProfile) -> bool,
    U: Fn(&ChannelProfile) -> bool,
    W: Fn(&ChannelProfile) -> u32,
{
    let mut ranked: Vec<&ChannelProfile> = channels
        .iter()
        .map(Arc::as_ref)
        .filter(|c| takes(c, method, amount))
        .filter(|c| (live.has_room)(c) && (live.is_up)(c))
        .collect();
    if ranked.is_empty() {
        return Err(why_none(channels, method, amount, live.has_room));
    }
    // Stable: equal weights keep configuration order.
    ranked.sort_by_key(|c| std::cmp::Reverse((live.weight)(c)));
    Ok(ranked)
}

/// Whether a channel takes such a payment at all, whatever its state today (enabled
/// or not is state: operators change it while the node runs).
fn takes(c: &ChannelProfile, method: PayMethod, amount: Money) -> bool {
    c.methods.contains(&method)
        && c.currencies.contains(&amount.currency())
        && c.single_limit_minor.is_none_or(|limit| amount.minor() <= limit)
}

/// Why no channel can take the payment, in words a merchant can act on.
fn why_none(
    channels: &[Arc<ChannelProfile>],
    method: PayMethod,
    amount: Money,
    has_room: impl Fn(&ChannelProfile) -> bool,
) -> CoreError {
    let currency = amount.currency();
    let offers = |c: &&ChannelProfile| c.methods.contains(&method);
    let takes_currency: Vec<&ChannelProfile> =
        channels.iter().map(Arc::as_ref).filter(offers).filter(|c| c.currencies.contains(&currency)).collect();
    let highest_limit = takes_currency.iter().map(|c| c.single_limit_minor).try_fold(0i64, |m, l| l.map(|l| m.max(l)));
    let message = match highest_limit {
        _ if takes_currency.is_empty() && channels.iter().map(Arc::as_ref).any(|c| offers(&c)) => {
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
        _ if takes_currency.iter().any(|c| takes(c, method, amount)) => {
            format!("every {method} channel that takes this payment is failing or disabled; try again shortly")
        }
        _ => format!("no channel available for pay_method {method}"),
    };
    CoreError::new(ErrorCode::NoAvailableChannel, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelStatus;
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

    /// The best channel's code, with every channel up.
    fn first(
        chans: &[Arc<ChannelProfile>],
        method: PayMethod,
        amount: Money,
        has_room: impl Fn(&ChannelProfile) -> bool,
    ) -> Result<&str, CoreError> {
        let is_up = |c: &ChannelProfile| c.status == ChannelStatus::Enabled;
        let live = Live { has_room, is_up, weight: |c: &ChannelProfile| c.weight };
        rank_channels(chans, method, amount, live).map(|r| r[0].code.as_str())
    }

    #[test]
    fn ranks_every_eligible_channel_by_weight_and_skips_those_down() {
        let cny = |m| Money::from_minor(m, Currency::CNY);
        let chans = vec![
            ch("a", &[PayMethod::Alipay], 10, None, ChannelStatus::Enabled),
            ch("b", &[PayMethod::Alipay], 50, None, ChannelStatus::Enabled),
            ch("c", &[PayMethod::Alipay], 10, None, ChannelStatus::Enabled),
            ch("d", &[PayMethod::Sandbox], 99, None, ChannelStatus::Enabled),
        ];
        let codes = |up: &dyn Fn(&ChannelProfile) -> bool| {
            let live = Live { has_room: |_: &ChannelProfile| true, is_up: up, weight: |c: &ChannelProfile| c.weight };
            rank_channels(&chans, PayMethod::Alipay, cny(100), live)
                .map(|r| r.iter().map(|c| c.code.as_str()).collect::<Vec<_>>())
        };
        assert_eq!(codes(&|_| true), Ok(vec!["b", "a", "c"]), "by weight, ties in configuration order");
        assert_eq!(codes(&|c| c.code != "b"), Ok(vec!["a", "c"]), "a channel down is skipped");
        let down = codes(&|_| false).unwrap_err();
        assert_eq!(down.code, ErrorCode::NoAvailableChannel);
        assert_eq!(
            down.message,
            "every ALIPAY channel that takes this payment is failing or disabled; try again shortly"
        );
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
        assert_eq!(first(&chans, PayMethod::Sandbox, cny(500), |_| true), Ok("b"));
        assert_eq!(first(&chans, PayMethod::Sandbox, cny(5_000), |_| true), Ok("a"));
        let none = first(&chans, PayMethod::WechatPay, cny(5), |_| true).map_err(|e| e.code);
        assert_eq!(none.err(), Some(ErrorCode::NoAvailableChannel));
        // A channel without room today is passed over for the next.
        let full = first(&chans, PayMethod::Sandbox, cny(500), |c| c.code != "b");
        assert_eq!(full, Ok("a"));
    }

    #[test]
    fn a_channel_takes_only_its_currencies() {
        let mut hkd_too = (*ch("hk", &[PayMethod::Sandbox], 1, None, ChannelStatus::Enabled)).clone();
        hkd_too.currencies.push(Currency::HKD);
        let chans = vec![ch("cny", &[PayMethod::Sandbox], 90, None, ChannelStatus::Enabled), Arc::new(hkd_too)];
        let pick = |m: Money| first(&chans, PayMethod::Sandbox, m, |_| true).map(str::to_owned);
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
        let why = |amount, room: bool| first(&chans, PayMethod::Sandbox, cny(amount), |_| room).unwrap_err();
        assert_eq!(
            why(6_000_000, true).message,
            "60000.00 exceeds the single-payment limit 50000.00 of every SANDBOX channel"
        );
        assert_eq!(why(500, false).message, "no SANDBOX channel can take 5.00 CNY more today (daily limits)");
        let unlimited = vec![ch("u", &[PayMethod::Sandbox], 1, None, ChannelStatus::Enabled)];
        let full = first(&unlimited, PayMethod::Sandbox, cny(500), |_| false).unwrap_err();
        assert!(full.message.contains("daily limits"), "{}", full.message);
        let off = vec![ch("x", &[PayMethod::Sandbox], 1, None, ChannelStatus::Disabled)];
        let none = first(&off, PayMethod::Sandbox, cny(500), |_| true).unwrap_err();
        assert_eq!(
            none.message,
            "every SANDBOX channel that takes this payment is failing or disabled; try again shortly"
        );
    }
}
