//! Channel selection for a new payment: filter, then rank. The order tries the ranked
//! channels in turn while a channel is certainly unavailable (failover).

use std::cmp::{Ordering, Reverse};
use std::sync::Arc;

use crate::channel::{ChannelDirectory, ChannelProfile};
use crate::daily_volume::business_day;
use crate::error::{CoreError, ErrorCode};
use crate::money::Money;
use crate::order::PayMethod;
use crate::strategy::{Route, Strategy};

/// The fewest recent calls before a channel's success rate counts for [`Strategy::Adaptive`].
pub const ADAPTIVE_MIN_CALLS: u32 = 10;

/// What routing reads of each channel's state now.
pub trait ChannelState {
    /// Whether its daily limit has room for `amount` more.
    fn has_room(&self, c: &ChannelProfile, amount: Money) -> bool;
    /// Whether it is enabled and its breaker admits a call.
    fn is_up(&self, c: &ChannelProfile) -> bool;
    /// Its routing weight in force.
    fn weight(&self, c: &ChannelProfile) -> u32;
    /// Its recent success rate (0 to 1), p95 latency in microseconds, and how many
    /// calls these describe.
    fn health(&self, c: &ChannelProfile) -> (f64, u64, u32);
}

/// The node's channels as their actors published them, on one business day.
struct DirectoryState<'a> {
    directory: &'a ChannelDirectory,
    day: i64,
}

impl ChannelState for DirectoryState<'_> {
    fn has_room(&self, c: &ChannelProfile, amount: Money) -> bool {
        c.daily_limit_minor.is_none_or(|limit| {
            let used = self.directory.get(&c.code).map_or(0, |h| h.stats.daily.used(self.day));
            used.saturating_add(amount.minor()) <= limit
        })
    }

    fn is_up(&self, c: &ChannelProfile) -> bool {
        self.directory.get(&c.code).is_some_and(|h| h.live.routable())
    }

    fn weight(&self, c: &ChannelProfile) -> u32 {
        self.directory.get(&c.code).map_or(c.weight, |h| h.live.weight())
    }

    fn health(&self, c: &ChannelProfile) -> (f64, u64, u32) {
        self.directory
            .get(&c.code)
            .map_or((1.0, 0, 0), |h| (h.live.success_rate(), h.live.latency_us().1, h.live.calls_in_window()))
    }
}

impl ChannelDirectory {
    /// The route of a new payment of `amount` by `method` at `now_ms`: the channels
    /// that may take it, in the order `strategy` puts them ([`rank_channels`]). `draw`
    /// (0 to 1) is the random draw [`Strategy::Weighted`] uses.
    pub fn route(
        &self,
        method: PayMethod,
        amount: Money,
        now_ms: i64,
        strategy: Strategy,
        draw: f64,
    ) -> Result<Route, CoreError> {
        let state = DirectoryState { directory: self, day: business_day(now_ms) };
        let ranked = rank_channels(self.profiles(), method, amount, strategy, draw, &state)?;
        let candidates = ranked.into_iter().map(|p| p.code.clone()).collect();
        Ok(Route { strategy, candidates, passed_over: Vec::new() })
    }
}

/// The channels that may take a new payment, in the order `strategy` puts them:
/// taking the method, the currency and the amount, with room today and up. Every one
/// is in the order (the later ones are the fallbacks). Never empty: no channel is an
/// error that says why.
pub fn rank_channels<'a>(
    channels: &'a [Arc<ChannelProfile>],
    method: PayMethod,
    amount: Money,
    strategy: Strategy,
    draw: f64,
    state: &impl ChannelState,
) -> Result<Vec<&'a ChannelProfile>, CoreError> {
    let mut ranked: Vec<&ChannelProfile> = channels
        .iter()
        .map(Arc::as_ref)
        .filter(|c| takes(c, method, amount))
        .filter(|c| state.has_room(c, amount) && state.is_up(c))
        .collect();
    if ranked.is_empty() {
        return Err(why_none(channels, method, amount, |c| state.has_room(c, amount)));
    }
    // Every sort is stable: what compares equal keeps configuration order.
    ranked.sort_by_key(|c| Reverse(state.weight(c)));
    match strategy {
        Strategy::Priority => {}
        Strategy::Weighted => {
            let total: u64 = ranked.iter().map(|c| u64::from(state.weight(c))).sum();
            if total > 0 {
                let mut point = (draw.clamp(0.0, 1.0) * total as f64) as u64;
                let chosen = ranked
                    .iter()
                    .position(|c| {
                        let w = u64::from(state.weight(c));
                        let here = point < w;
                        point = point.saturating_sub(w);
                        here
                    })
                    .unwrap_or(0);
                let first = ranked.remove(chosen);
                ranked.insert(0, first);
            }
        }
        Strategy::LowestFee => ranked.sort_by_key(|c| c.fee_rate),
        Strategy::Adaptive => {
            let score = |c: &ChannelProfile| {
                let (rate, p95, calls) = state.health(c);
                if calls < ADAPTIVE_MIN_CALLS {
                    (1.0, 0)
                } else {
                    (rate, p95)
                }
            };
            ranked.sort_by(|a, b| {
                let ((ra, la), (rb, lb)) = (score(a), score(b));
                rb.partial_cmp(&ra).unwrap_or(Ordering::Equal).then(la.cmp(&lb))
            });
        }
    }
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

    /// A channel state for tests: what is full or down by code, health by code
    /// (healthy and unjudged when not given).
    #[derive(Default)]
    struct Given {
        full: Vec<&'static str>,
        down: Vec<&'static str>,
        health: Vec<(&'static str, (f64, u64, u32))>,
    }

    impl ChannelState for Given {
        fn has_room(&self, c: &ChannelProfile, _: Money) -> bool {
            !self.full.contains(&c.code.as_str())
        }
        fn is_up(&self, c: &ChannelProfile) -> bool {
            c.status == ChannelStatus::Enabled && !self.down.contains(&c.code.as_str())
        }
        fn weight(&self, c: &ChannelProfile) -> u32 {
            c.weight
        }
        fn health(&self, c: &ChannelProfile) -> (f64, u64, u32) {
            self.health.iter().find(|(code, _)| *code == c.code).map_or((1.0, 0, 0), |(_, h)| *h)
        }
    }

    fn codes(
        chans: &[Arc<ChannelProfile>],
        method: PayMethod,
        amount: Money,
        strategy: Strategy,
        draw: f64,
        state: &Given,
    ) -> Result<Vec<String>, CoreError> {
        rank_channels(chans, method, amount, strategy, draw, state).map(|r| r.iter().map(|c| c.code.clone()).collect())
    }

    /// The best channel's code by priority; `full`: channels with no room today.
    fn first(
        chans: &[Arc<ChannelProfile>],
        method: PayMethod,
        amount: Money,
        full: &[&'static str],
    ) -> Result<String, CoreError> {
        let state = Given { full: full.to_vec(), ..Given::default() };
        codes(chans, method, amount, Strategy::Priority, 0.0, &state).map(|r| r[0].clone())
    }

    fn alipay(code: &str, weight: u32, fee: &str) -> Arc<ChannelProfile> {
        let mut c = (*ch(code, &[PayMethod::Alipay], weight, None, ChannelStatus::Enabled)).clone();
        c.fee_rate = fee.parse().unwrap();
        Arc::new(c)
    }

    #[test]
    fn each_strategy_orders_every_eligible_channel() {
        let amount = Money::from_minor(10_000, Currency::CNY);
        let chans = vec![alipay("a", 10, "0.006"), alipay("b", 30, "0.008"), alipay("c", 60, "0.0055")];
        let rank = |strategy, draw, state: &Given| codes(&chans, PayMethod::Alipay, amount, strategy, draw, state);
        let all = Given::default();
        assert_eq!(rank(Strategy::Priority, 0.0, &all).unwrap(), ["c", "b", "a"]);
        assert_eq!(rank(Strategy::LowestFee, 0.0, &all).unwrap(), ["c", "a", "b"]);
        // Weighted: the draw falls in a channel's share of the total weight (100).
        assert_eq!(rank(Strategy::Weighted, 0.0, &all).unwrap(), ["c", "b", "a"]);
        assert_eq!(rank(Strategy::Weighted, 0.65, &all).unwrap(), ["b", "c", "a"]);
        assert_eq!(rank(Strategy::Weighted, 0.95, &all).unwrap(), ["a", "c", "b"]);
        // Adaptive: success rate first, then latency; too few calls to judge is healthy.
        let judged = Given {
            health: vec![("c", (0.50, 1_000, 50)), ("b", (0.99, 9_000, 50)), ("a", (0.99, 2_000, 50))],
            ..Given::default()
        };
        assert_eq!(rank(Strategy::Adaptive, 0.0, &judged).unwrap(), ["a", "b", "c"]);
        let new = Given { health: vec![("c", (0.0, 0, 3)), ("b", (0.9, 0, 50))], ..Given::default() };
        assert_eq!(rank(Strategy::Adaptive, 0.0, &new).unwrap(), ["c", "a", "b"]);
        // Whatever the strategy, a channel down or full is left out.
        let some_out = Given { down: vec!["c"], full: vec!["a"], ..Given::default() };
        for s in Strategy::ALL {
            assert_eq!(rank(s, 0.3, &some_out).unwrap(), ["b"], "{s:?}");
        }
    }

    proptest::proptest! {
        /// Every strategy puts every eligible channel in the order exactly once, and no
        /// other; priority's first is the heaviest.
        #[test]
        fn a_ranking_is_a_permutation_of_the_eligible(
            weights in proptest::collection::vec(0u32..100, 1..20),
            down in proptest::collection::vec(proptest::bool::ANY, 20),
            draw in 0.0f64..1.0,
            strategy in proptest::sample::select(Strategy::ALL.to_vec()),
        ) {
            let names: Vec<&'static str> = (0..weights.len()).map(|i| &*Box::leak(format!("c{i}").into_boxed_str())).collect();
            let chans: Vec<_> = names.iter().zip(&weights).map(|(n, w)| alipay(n, *w, "0.006")).collect();
            let state = Given {
                down: names.iter().zip(&down).filter(|(_, d)| **d).map(|(n, _)| *n).collect(),
                ..Given::default()
            };
            let amount = Money::from_minor(100, Currency::CNY);
            match codes(&chans, PayMethod::Alipay, amount, strategy, draw, &state) {
                Ok(ranked) => {
                    let mut got = ranked.clone();
                    got.sort();
                    let mut eligible: Vec<String> =
                        names.iter().filter(|n| !state.down.contains(n)).map(|n| n.to_string()).collect();
                    eligible.sort();
                    proptest::prop_assert_eq!(got, eligible);
                    if strategy == Strategy::Priority {
                        let heaviest = chans.iter().filter(|c| !state.down.contains(&c.code.as_str())).map(|c| c.weight).max();
                        let first = chans.iter().find(|c| c.code == ranked[0]).map(|c| c.weight);
                        proptest::prop_assert_eq!(first, heaviest);
                    }
                }
                Err(e) => proptest::prop_assert!(names.iter().all(|n| state.down.contains(n)), "{}", e.message),
            }
        }
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
        let ranked = |down: Vec<&'static str>| {
            let state = Given { down, ..Given::default() };
            codes(&chans, PayMethod::Alipay, cny(100), Strategy::Priority, 0.0, &state)
        };
        assert_eq!(ranked(vec![]).unwrap(), ["b", "a", "c"], "by weight, ties in configuration order");
        assert_eq!(ranked(vec!["b"]).unwrap(), ["a", "c"], "a channel down is skipped");
        let down = ranked(vec!["a", "b", "c"]).unwrap_err();
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
        assert_eq!(first(&chans, PayMethod::Sandbox, cny(500), &[]).unwrap(), "b");
        assert_eq!(first(&chans, PayMethod::Sandbox, cny(5_000), &[]).unwrap(), "a");
        let none = first(&chans, PayMethod::WechatPay, cny(5), &[]).map_err(|e| e.code);
        assert_eq!(none.err(), Some(ErrorCode::NoAvailableChannel));
        // A channel without room today is passed over for the next.
        let full = first(&chans, PayMethod::Sandbox, cny(500), &["b"]);
        assert_eq!(full.unwrap(), "a");
    }

    #[test]
    fn a_channel_takes_only_its_currencies() {
        let mut hkd_too = (*ch("hk", &[PayMethod::Sandbox], 1, None, ChannelStatus::Enabled)).clone();
        hkd_too.currencies.push(Currency::HKD);
        let chans = vec![ch("cny", &[PayMethod::Sandbox], 90, None, ChannelStatus::Enabled), Arc::new(hkd_too)];
        let pick = |m: Money| first(&chans, PayMethod::Sandbox, m, &[]);
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
        let why = |amount, room: bool| {
            let full: &[&'static str] = if room { &[] } else { &["a", "b"] };
            first(&chans, PayMethod::Sandbox, cny(amount), full).unwrap_err()
        };
        assert_eq!(
            why(6_000_000, true).message,
            "60000.00 exceeds the single-payment limit 50000.00 of every SANDBOX channel"
        );
        assert_eq!(why(500, false).message, "no SANDBOX channel can take 5.00 CNY more today (daily limits)");
        let unlimited = vec![ch("u", &[PayMethod::Sandbox], 1, None, ChannelStatus::Enabled)];
        let full = first(&unlimited, PayMethod::Sandbox, cny(500), &["u"]).unwrap_err();
        assert!(full.message.contains("daily limits"), "{}", full.message);
        let off = vec![ch("x", &[PayMethod::Sandbox], 1, None, ChannelStatus::Disabled)];
        let none = first(&off, PayMethod::Sandbox, cny(500), &[]).unwrap_err();
        assert_eq!(
            none.message,
            "every SANDBOX channel that takes this payment is failing or disabled; try again shortly"
        );
    }
}
