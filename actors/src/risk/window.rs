//! The bounded counters risk keeps per key: payments over sliding windows, totals over
//! calendar periods, an amount's running norm, and distinct users up to a cap. Each is a
//! few fixed-size numbers, whatever the traffic.

/// A count and an amount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Payments.
    pub count: u32,
    /// Their amount, minor units.
    pub amount: i64,
}

/// The last minute, exactly to within one bucket: six buckets of ten seconds, so the
/// payments of the last 50–60 seconds are counted (a burst is never split). Counts and
/// amounts are kept in separate arrays: a key's state is read on every payment, and the
/// fewer cache lines it spans, the faster risk decides.
#[derive(Debug, Clone, Copy, Default)]
pub struct Minute {
    /// Which ten-second bucket (of the unix epoch) the newest slot holds.
    newest: i64,
    counts: [u32; MINUTE_SLOTS],
    amounts: [i64; MINUTE_SLOTS],
}

const MINUTE_SLOTS: usize = 6;
const MINUTE_SLOT_MS: i64 = 10_000;

impl Minute {
    fn slot_of(bucket: i64) -> usize {
        usize::try_from(bucket.rem_euclid(MINUTE_SLOTS as i64)).unwrap_or(0)
    }

    /// Drops the buckets that fell out of the window at `now`.
    fn roll(&mut self, now: i64) {
        let bucket = now.div_euclid(MINUTE_SLOT_MS);
        if bucket <= self.newest {
            return;
        }
        let stale = (bucket - self.newest).min(MINUTE_SLOTS as i64);
        for b in (bucket - stale + 1)..=bucket {
            let slot = Self::slot_of(b);
            if let (Some(c), Some(a)) = (self.counts.get_mut(slot), self.amounts.get_mut(slot)) {
                (*c, *a) = (0, 0);
            }
        }
        self.newest = bucket;
    }

    /// Counts a payment of `amount` at `now`.
    pub fn add(&mut self, now: i64, amount: i64) {
        self.roll(now);
        // A payment stamped before the newest bucket (clocks of two threads) counts in it.
        let slot = Self::slot_of(self.newest);
        if let (Some(c), Some(a)) = (self.counts.get_mut(slot), self.amounts.get_mut(slot)) {
            *c = c.saturating_add(1);
            *a = a.saturating_add(amount);
        }
    }

    /// The payments of the window ending at `now`.
    pub fn total(&self, now: i64) -> Tally {
        let mut w = *self;
        w.roll(now);
        Tally {
            count: w.counts.iter().fold(0u32, |acc, c| acc.saturating_add(*c)),
            amount: w.amounts.iter().fold(0i64, |acc, a| acc.saturating_add(*a)),
        }
    }
}

/// A sliding window of `size` approximated from two fixed ones: the current window's
/// payments plus the previous window's weighted by how much of it the sliding window
/// still covers (the usual sliding-window counter: exact at the boundary, off by at most
/// the previous window's uneven spread in between).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sliding {
    /// Which window (of the unix epoch, in units of its size) the current one is.
    index: i64,
    /// The current window's count and the previous one's.
    counts: [u32; 2],
    /// Their amounts.
    amounts: [i64; 2],
}

impl Sliding {
    fn roll(&mut self, size: i64, now: i64) {
        let index = now.div_euclid(size);
        if index <= self.index {
            return;
        }
        let [count, _] = self.counts;
        let [amount, _] = self.amounts;
        (self.counts, self.amounts) =
            if index == self.index + 1 { ([0, count], [0, amount]) } else { ([0, 0], [0, 0]) };
        self.index = index;
    }

    /// Counts a payment of `amount` at `now` in a window of `size` millis.
    pub fn add(&mut self, size: i64, now: i64, amount: i64) {
        self.roll(size, now);
        let [count, _] = &mut self.counts;
        *count = count.saturating_add(1);
        let [sum, _] = &mut self.amounts;
        *sum = sum.saturating_add(amount);
    }

    /// The estimated count and amount of the `size` millis ending at `now`.
    pub fn estimate(&self, size: i64, now: i64) -> (f64, f64) {
        let mut w = *self;
        w.roll(size, now);
        let into = now.rem_euclid(size) as f64 / size as f64;
        let weight = 1.0 - into;
        let ([count, previous_count], [amount, previous_amount]) = (w.counts, w.amounts);
        (f64::from(previous_count) * weight + f64::from(count), previous_amount as f64 * weight + amount as f64)
    }
}

/// A total over a calendar period (a business day, a month), numbered by the caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct Period {
    id: i32,
    count: u32,
    amount: i64,
}

impl Period {
    /// The total of period `id` so far.
    pub fn of(&self, id: i32) -> Tally {
        if self.id == id {
            Tally { count: self.count, amount: self.amount }
        } else {
            Tally::default()
        }
    }

    /// Counts a payment of `amount` in period `id`.
    pub fn add(&mut self, id: i32, amount: i64) {
        if self.id != id {
            *self = Period { id, count: 0, amount: 0 };
        }
        self.count = self.count.saturating_add(1);
        self.amount = self.amount.saturating_add(amount);
    }

    /// Takes back a payment of `amount` counted in period `id` (nothing once the
    /// period is over).
    pub fn remove(&mut self, id: i32, amount: i64) {
        if self.id == id {
            self.count = self.count.saturating_sub(1);
            self.amount = self.amount.saturating_sub(amount);
        }
    }
}

/// What amounts are usual for a key: an exponentially weighted mean and variance of the
/// logarithm of the amount (amounts spread over orders of magnitude; their logarithm is
/// closer to normal), so recent behaviour counts most and one outlier does not stick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Norm {
    mean: f32,
    var: f32,
    n: u32,
}

/// How much one new amount moves the norm (about the last 20 payments count).
const NORM_ALPHA: f32 = 0.1;

impl Norm {
    fn log(amount: i64) -> f32 {
        (amount.max(0) as f32).ln_1p()
    }

    /// Payments seen so far.
    pub fn count(&self) -> u32 {
        self.n
    }

    /// How many deviations `amount` lies above the norm (0 below it, or with fewer than
    /// two payments seen). A deviation is never taken below a tenth of the log scale, so
    /// a key that always paid the same amount does not make the next cent a wild outlier.
    pub fn z(&self, amount: i64) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let sd = self.var.max(0.0).sqrt().max(0.1);
        f64::from(((Self::log(amount) - self.mean) / sd).max(0.0))
    }

    /// Learns `amount`.
    pub fn add(&mut self, amount: i64) {
        let x = Self::log(amount);
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let d = x - self.mean;
            self.mean += NORM_ALPHA * d;
            self.var = (1.0 - NORM_ALPHA) * (self.var + NORM_ALPHA * d * d);
        }
        self.n = self.n.saturating_add(1);
    }
}

/// Distinct users seen with a key in one day, counted exactly up to [`DISTINCT_CAP`]:
/// rules ask "more than N", and beyond the cap the answer does not change. The first few
/// are kept in the key's own entry, so the usual device or address with one or two users
/// costs no second memory access; the rest spill to the heap.
#[derive(Debug, Clone, Default)]
pub struct Distinct {
    day: i32,
    /// How many users are held: the first in `inline`, the rest in `more`.
    held: u32,
    inline: [u32; DISTINCT_INLINE],
    more: Option<Box<[u32; DISTINCT_CAP - DISTINCT_INLINE]>>,
}

/// Distinct users counted per key and day at most; thresholds must stay below it.
pub const DISTINCT_CAP: usize = 64;

const DISTINCT_INLINE: usize = 4;

impl Distinct {
    fn inline(&self) -> &[u32] {
        self.inline.get(..(self.held as usize).min(DISTINCT_INLINE)).unwrap_or_default()
    }

    fn more(&self) -> &[u32] {
        let spilled = (self.held as usize).saturating_sub(DISTINCT_INLINE);
        self.more.as_deref().and_then(|m| m.get(..spilled)).unwrap_or_default()
    }

    /// Distinct users of day `day` so far.
    pub fn count(&self, day: i32) -> usize {
        if self.day == day {
            self.held as usize
        } else {
            0
        }
    }

    /// Whether `user` (a hash) is among them.
    pub fn contains(&self, day: i32, user: u32) -> bool {
        self.day == day && (self.inline().contains(&user) || self.more().contains(&user))
    }

    /// Notes `user` (a hash) on day `day`.
    pub fn add(&mut self, day: i32, user: u32) {
        if self.day != day {
            // The spill stays allocated: a key that had many users is likely to again.
            (self.day, self.held) = (day, 0);
        }
        let at = self.held as usize;
        if at >= DISTINCT_CAP || self.contains(day, user) {
            return;
        }
        let slot = match at.checked_sub(DISTINCT_INLINE) {
            None => self.inline.get_mut(at),
            Some(spilled) => {
                self.more.get_or_insert_with(|| Box::new([0; DISTINCT_CAP - DISTINCT_INLINE])).get_mut(spilled)
            }
        };
        if let Some(slot) = slot {
            *slot = user;
            self.held += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_minute_counts_a_burst_whatever_boundary_it_straddles() {
        for start in [0, 9_999, 10_000, 59_999, 123_456] {
            let mut m = Minute::default();
            for i in 0..20 {
                m.add(1_000_000 + start + i * 100, 5);
            }
            let t = m.total(1_000_000 + start + 2_000);
            assert_eq!((t.count, t.amount), (20, 100), "start {start}");
        }
        let mut m = Minute::default();
        m.add(1_000_000, 5);
        assert_eq!(m.total(1_000_000 + 50_000).count, 1, "still in the window");
        assert_eq!(m.total(1_000_000 + 61_000).count, 0, "out of it");
        assert_eq!(m.total(1_000_000 + 10_000_000).count, 0, "long gone");
    }

    #[test]
    fn a_sliding_window_weighs_the_previous_one_by_what_it_still_covers() {
        let hour = 3_600_000;
        let mut w = Sliding::default();
        for _ in 0..10 {
            w.add(hour, 10 * hour + 1_000, 100);
        }
        assert_eq!(w.estimate(hour, 10 * hour + 2_000), (10.0, 1000.0));
        // A quarter into the next hour, three quarters of the last one still count.
        let (count, amount) = w.estimate(hour, 11 * hour + hour / 4);
        assert!((count - 7.5).abs() < 1e-9 && (amount - 750.0).abs() < 1e-6, "{count} {amount}");
        assert_eq!(w.estimate(hour, 13 * hour).0, 0.0);
    }

    #[test]
    fn a_period_restarts_with_the_next_one() {
        let mut p = Period::default();
        p.add(7, 100);
        p.add(7, 50);
        assert_eq!(p.of(7), Tally { count: 2, amount: 150 });
        assert_eq!(p.of(8), Tally::default());
        p.add(8, 1);
        assert_eq!(p.of(8), Tally { count: 1, amount: 1 });
        p.add(8, 40);
        p.remove(8, 40);
        p.remove(7, 1);
        assert_eq!(p.of(8), Tally { count: 1, amount: 1 }, "taken back in its own period only");
        assert_eq!(p.of(7), Tally::default());
    }

    #[test]
    fn an_amount_far_above_the_norm_stands_out_and_a_usual_one_does_not() {
        let mut n = Norm::default();
        assert_eq!(n.z(1_000_000), 0.0, "no history, no judgement");
        for a in [1_000, 1_200, 900, 1_100, 1_000, 950, 1_050, 1_000] {
            n.add(a);
        }
        assert!(n.z(1_000) < 1.0, "{}", n.z(1_000));
        assert!(n.z(500) == 0.0, "below the norm is not an anomaly");
        assert!(n.z(100_000) > 5.0, "{}", n.z(100_000));
    }

    #[test]
    fn distinct_users_are_counted_once_a_day_up_to_the_cap() {
        let mut d = Distinct::default();
        for u in [1, 2, 2, 3] {
            d.add(10, u);
        }
        assert_eq!(d.count(10), 3);
        assert!(d.contains(10, 2) && !d.contains(11, 2));
        assert_eq!(d.count(11), 0);
        for u in 0..1_000 {
            d.add(11, u);
        }
        assert_eq!(d.count(11), DISTINCT_CAP);
        assert!(d.contains(11, 2) && d.contains(11, 63) && !d.contains(11, 64), "inline and spilled");
        d.add(12, 9);
        assert_eq!((d.count(12), d.contains(12, 2), d.contains(12, 9)), (1, false, true), "a new day starts empty");
    }

    proptest! {
        /// The minute never counts a payment older than a minute, and always counts
        /// every payment of the last 50 seconds.
        #[test]
        fn the_minute_is_exact_to_a_bucket(gaps in proptest::collection::vec(0i64..30_000, 1..60)) {
            let mut m = Minute::default();
            let mut now = 5_000_000i64;
            let mut times = Vec::new();
            for gap in gaps {
                now += gap;
                m.add(now, 1);
                times.push(now);
            }
            let count = i64::from(m.total(now).count);
            let within_50 = times.iter().filter(|t| now - **t < 50_000).count() as i64;
            let within_60 = times.iter().filter(|t| now - **t < 60_000).count() as i64;
            prop_assert!(within_50 <= count && count <= within_60, "{within_50} <= {count} <= {within_60}");
        }
    }
}
