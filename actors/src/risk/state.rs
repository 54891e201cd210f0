//! What risk remembers per key (user, device, IP address, merchant): bounded counters
//! in one concurrent map, keyed by a keyed hash of the key so that the map holds no
//! strings and a hostile key cannot aim at another's entry.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use dashmap::DashMap;

use super::window::{Distinct, Minute, Norm, Period, Sliding, Tally};

/// A key's kind, hashed with it (a user and a device may share an id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keyed {
    /// A merchant's buyer (`user_id`), per merchant.
    User,
    /// A device.
    Device,
    /// An IP address.
    Ip,
    /// A merchant.
    Merchant,
}

/// Everything remembered of one key.
#[derive(Debug, Clone, Default)]
pub struct Tracked {
    /// The last minute.
    pub minute: Minute,
    /// The last hour.
    pub hour: Sliding,
    /// The last day.
    pub day_window: Sliding,
    /// This business day's payments that went ahead (limits).
    pub day: Period,
    /// This month's payments that went ahead (limits).
    pub month: Period,
    /// The usual amount.
    pub norm: Norm,
    /// Distinct users today (devices and addresses).
    pub users: Distinct,
    /// The region of the last payment that had one (users), as an index + 1; 0: none.
    pub region: u16,
    /// When it was last seen, minutes since the epoch (eviction).
    pub seen_min: u32,
}

/// The length of the windows, millis.
pub const HOUR_MS: i64 = 3_600_000;
/// A day, millis.
pub const DAY_MS: i64 = 86_400_000;

impl Tracked {
    /// The payments of the windows before `now`: last minute, hour, day.
    pub fn velocity(&self, now: i64) -> (Tally, (f64, f64), (f64, f64)) {
        (self.minute.total(now), self.hour.estimate(HOUR_MS, now), self.day_window.estimate(DAY_MS, now))
    }

    /// Counts an attempt at `now` in the windows.
    pub fn count_attempt(&mut self, now: i64, amount: i64) {
        self.minute.add(now, amount);
        self.hour.add(HOUR_MS, now, amount);
        self.day_window.add(DAY_MS, now, amount);
        self.seen_min = u32::try_from(now.div_euclid(60_000)).unwrap_or(u32::MAX);
    }
}

/// Every key's state.
pub struct RiskState {
    keys: DashMap<u64, Tracked, BuildHasherDefault<Hashed>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for RiskState {
    fn default() -> Self {
        RiskState { keys: DashMap::default(), hasher: std::collections::hash_map::RandomState::new() }
    }
}

/// The map's hasher: its keys are already keyed hashes ([`RiskState::key`]), and
/// hashing them again cost a tenth of an evaluation.
#[derive(Default)]
pub struct Hashed(u64);

impl Hasher for Hashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are `u64`); anything else is folded in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl RiskState {
    /// The map key of `value` of `kind` (`scope` separates users of different merchants).
    pub fn key(&self, kind: Keyed, scope: &str, value: &(impl Hash + ?Sized)) -> u64 {
        let mut h = self.hasher.build_hasher();
        kind.hash(&mut h);
        scope.hash(&mut h);
        value.hash(&mut h);
        h.finish()
    }

    /// Runs `f` on the state of `key`, made empty if it has none.
    pub fn with<T>(&self, key: u64, f: impl FnOnce(&mut Tracked) -> T) -> T {
        let mut entry = self.keys.entry(key).or_default();
        f(entry.value_mut())
    }

    /// Runs `f` on the state of `key` if it has one.
    pub fn peek<T>(&self, key: u64, f: impl FnOnce(&Tracked) -> T) -> Option<T> {
        self.keys.get(&key).map(|e| f(e.value()))
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Forgets the keys not seen since `before_ms` (month limits need a month).
    pub fn evict(&self, before_ms: i64) -> usize {
        let cutoff = u32::try_from(before_ms.div_euclid(60_000)).unwrap_or(0);
        let before = self.keys.len();
        self.keys.retain(|_, t| t.seen_min >= cutoff);
        before - self.keys.len()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_state_fits_in_four_cache_lines() {
        // Every payment reads and writes up to four keys' state in a map of millions:
        // its size is memory per key and cache misses per payment.
        assert!(std::mem::size_of::<Tracked>() <= 256, "{}", std::mem::size_of::<Tracked>());
    }
}
