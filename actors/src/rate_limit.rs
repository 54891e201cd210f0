//! Token buckets for request rates, one atomic each: a merchant's and the node's.
//!
//! Each bucket is kept as the generic cell rate algorithm's "theoretical arrival time":
//! one number, advanced by one emission interval per request taken, with the burst as
//! how far ahead of now it may run. That is exactly a token bucket of `burst` tokens
//! refilled at `rate` per second, and it takes one compare-and-swap per request, so it
//! can sit on every request without a lock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// A rate and a burst, as configured (`rate_per_sec`, `burst`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct RateLimit {
    /// Requests per second it refills at.
    pub rate_per_sec: f64,
    /// Requests it may take at once after being idle.
    pub burst: u32,
}

/// One bucket.
#[derive(Debug)]
pub struct TokenBucket {
    /// Microseconds between two requests at the configured rate.
    interval_us: i64,
    /// How far the arrival time may run ahead of now: `(burst - 1)` intervals.
    tolerance_us: i64,
    /// When the bucket would next be full again, microseconds on the caller's clock.
    arrival_us: AtomicI64,
}

impl TokenBucket {
    /// A full bucket for `limit`; `None` when the limit allows nothing to be measured (a
    /// rate that is not a positive finite number, or a burst of 0).
    pub fn new(limit: RateLimit) -> Option<TokenBucket> {
        if !(limit.rate_per_sec.is_finite() && limit.rate_per_sec > 0.0) || limit.burst == 0 {
            return None;
        }
        // At least a microsecond: rates above a million per second are not limits.
        let interval_us = ((1e6 / limit.rate_per_sec).round() as i64).max(1);
        let tolerance_us = interval_us.saturating_mul(i64::from(limit.burst) - 1);
        Some(TokenBucket { interval_us, tolerance_us, arrival_us: AtomicI64::new(i64::MIN / 2) })
    }

    /// Takes one request's token at `now_us`; `Err` says how long until one is there.
    pub fn take(&self, now_us: i64) -> Result<(), Duration> {
        let mut current = self.arrival_us.load(Ordering::Relaxed);
        loop {
            let earliest = current.saturating_sub(self.tolerance_us);
            if now_us < earliest {
                let wait = u64::try_from(earliest - now_us).unwrap_or(0);
                return Err(Duration::from_micros(wait));
            }
            let next = current.max(now_us).saturating_add(self.interval_us);
            match self.arrival_us.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bucket(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket::new(RateLimit { rate_per_sec: rate, burst }).unwrap()
    }

    #[test]
    fn a_full_bucket_takes_its_burst_then_refills_at_its_rate() {
        let b = bucket(10.0, 5);
        let now = 1_000_000_000;
        for _ in 0..5 {
            assert_eq!(b.take(now), Ok(()));
        }
        assert_eq!(b.take(now), Err(Duration::from_millis(100)), "the next token in 1/10 s");
        assert!(b.take(now + 99_999).is_err());
        assert_eq!(b.take(now + 100_000), Ok(()));
        assert!(b.take(now + 100_000).is_err(), "one token, one request");
        // Idle long enough, it is full again, and never holds more than its burst.
        let later = now + 10_000_000;
        for _ in 0..5 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn limits_that_mean_nothing_are_refused() {
        for (rate, burst) in [(0.0, 5), (-1.0, 5), (f64::NAN, 5), (f64::INFINITY, 5), (10.0, 0)] {
            assert!(TokenBucket::new(RateLimit { rate_per_sec: rate, burst }).is_none(), "{rate} {burst}");
        }
    }

    proptest! {
        /// Over any span of time, a bucket lets through at most its burst plus what its
        /// rate refills in that span, whatever the pattern of requests.
        #[test]
        fn never_more_than_burst_plus_refill(
            rate in 1u32..1000,
            burst in 1u32..50,
            gaps in proptest::collection::vec(0i64..20_000, 1..400),
        ) {
            let b = bucket(f64::from(rate), burst);
            let start = 5_000_000i64;
            let mut now = start;
            let mut taken = 0u64;
            for gap in gaps {
                now += gap;
                if b.take(now).is_ok() {
                    taken += 1;
                }
            }
            let span_s = (now - start) as f64 / 1e6;
            let allowed = f64::from(burst) + span_s * f64::from(rate) + 1.0;
            prop_assert!(taken as f64 <= allowed, "{taken} taken, at most {allowed}");
        }

        /// Requests spaced at the rate are never refused.
        #[test]
        fn requests_at_the_rate_all_pass(rate in 1u32..1000, burst in 1u32..50, n in 1usize..200) {
            let b = bucket(f64::from(rate), burst);
            let interval = (1e6 / f64::from(rate)).round() as i64;
            for i in 0..n {
                prop_assert!(b.take(1_000_000 + i as i64 * interval).is_ok());
            }
        }
    }
}
