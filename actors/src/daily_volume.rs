//! A channel's daily limit (seed table `channel_config.daily_limit`): how much it has
//! taken on today's business day (Beijing time), counted as the orders created on it that
//! day which are paid or may still be paid. An order counts from the moment routing gives
//! it the channel, and stops counting when it fails, closes or expires, so abandoned
//! payments do not use up the day.

use std::sync::Mutex;

use crate::order::Order;

const DAY_MS: i64 = 86_400_000;
const BEIJING_MS: i64 = 8 * 3_600_000;

/// The business day (days since 1970-01-01 in Beijing time) of unix millis `ms`.
pub fn business_day(ms: i64) -> i64 {
    ms.saturating_add(BEIJING_MS).div_euclid(DAY_MS)
}

/// What `order` counts against its channel's day: its amount while it is open or paid.
pub fn counted(order: &Order) -> i64 {
    if order.status.is_open() || order.status.is_paid() {
        order.spec.amount.minor()
    } else {
        0
    }
}

/// One channel's volume on the current business day.
#[derive(Debug, Default)]
pub struct DailyVolume {
    /// (business day, minor units counted on it).
    day: Mutex<(i64, i64)>,
}

impl DailyVolume {
    fn with<T>(&self, day: i64, f: impl FnOnce(&mut i64) -> T) -> T {
        let mut g = self.day.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.0 != day {
            // A new day starts from nothing; a change to an older day no longer matters.
            if day < g.0 {
                let mut past = 0;
                return f(&mut past);
            }
            *g = (day, 0);
        }
        f(&mut g.1)
    }

    /// Counted so far on `day`.
    pub fn used(&self, day: i64) -> i64 {
        self.with(day, |used| *used)
    }

    /// Counts `amount` on `day` if that keeps it within `limit`; false if it would not.
    pub fn try_take(&self, day: i64, amount: i64, limit: Option<i64>) -> bool {
        self.with(day, |used| {
            let next = used.saturating_add(amount);
            let fits = limit.is_none_or(|l| next <= l);
            if fits {
                *used = next;
            }
            fits
        })
    }

    /// Adds `delta` (negative when an order stops counting) on `day`.
    pub fn adjust(&self, day: i64, delta: i64) {
        self.with(day, |used| *used = used.saturating_add(delta).max(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_business_day_turns_at_midnight_in_beijing() {
        // 2026-11-23 15:59:59.999 UTC is 23:59:59.999 in Beijing.
        let before = 1_795_449_599_999;
        assert_eq!(business_day(before) + 1, business_day(before + 1));
    }

    #[test]
    fn takes_within_the_limit_only_and_starts_each_day_afresh() {
        let v = DailyVolume::default();
        assert!(v.try_take(10, 6_000, Some(10_000)));
        assert!(!v.try_take(10, 5_000, Some(10_000)), "11,000 would exceed it");
        assert!(v.try_take(10, 4_000, Some(10_000)));
        v.adjust(10, -6_000);
        assert_eq!(v.used(10), 4_000);
        assert!(v.try_take(11, 10_000, Some(10_000)), "a new day");
        v.adjust(10, -4_000);
        assert_eq!(v.used(11), 10_000, "yesterday's changes do not touch today");
        assert!(v.try_take(11, 1, None), "no limit");
    }

    proptest! {
        #[test]
        fn never_exceeds_the_limit_and_never_goes_negative(
            ops in proptest::collection::vec((0i64..3, -5_000i64..5_000), 0..200),
        ) {
            let v = DailyVolume::default();
            let limit = 20_000;
            for (day, amount) in ops {
                if amount >= 0 {
                    v.try_take(day, amount, Some(limit));
                } else {
                    v.adjust(day, amount);
                }
                let used = v.used(day);
                prop_assert!((0..=limit).contains(&used));
            }
        }
    }
}
