//! A circuit breaker on one remote endpoint: after repeated failures it stops calling
//! and lets a probe through now and then, so a dead endpoint is not hammered and the
//! work queued for it is not spent on calls that cannot succeed.
//!
//! ```text
//! CLOSED ──(failures_to_open in a row, or ──► OPEN ──(open time passed)──► HALF_OPEN
//!           a failure rate over the window)
//!    ▲                                      ▲                              │
//!    └──────────(probe succeeds)────────────┼──────────────────────────────┤
//!                                           └──────(probe fails)───────────┘
//! ```
//! Each reopening doubles the open time up to a cap. Pure: time is passed in.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// When a breaker opens and how it probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open the first time, millis.
    pub open_ms: i64,
    /// The longest it stays open after repeated failed probes, millis.
    pub max_open_ms: i64,
    /// Calls admitted at once while half open.
    pub probes: u32,
    /// How many of the latest outcomes the failure rate is taken over; 0: consecutive
    /// failures alone open the breaker.
    #[serde(default)]
    pub window: u32,
    /// The fewest outcomes in the window before its failure rate may open the breaker.
    #[serde(default)]
    pub min_calls: u32,
    /// The failure rate, in percent of the window, that opens the breaker.
    #[serde(default)]
    pub failure_rate_pct: u32,
}

impl Default for BreakerPolicy {
    /// 5 failures in a row; open 30 s, doubling up to 10 min; one probe; no rate window.
    fn default() -> Self {
        BreakerPolicy {
            failures_to_open: 5,
            open_ms: 30_000,
            max_open_ms: 600_000,
            probes: 1,
            window: 0,
            min_calls: 0,
            failure_rate_pct: 100,
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the open time has passed.
    Open,
    /// A few probe calls go through; their outcome closes or reopens the breaker.
    HalfOpen,
}

impl BreakerState {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }

    /// The value of the state gauge: 0 closed, 1 half open, 2 open.
    pub const fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// One endpoint's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: BreakerState,
    failures: u32,
    /// While open: when a probe may go.
    open_until: i64,
    /// The open time the next opening uses.
    next_open_ms: i64,
    /// Probes admitted and not yet reported.
    probing: u32,
    /// While closed: the latest outcomes (true: failed), at most `policy.window`.
    recent: VecDeque<bool>,
    /// How many of `recent` failed.
    recent_failures: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Breaker {
        let policy = BreakerPolicy {
            failures_to_open: policy.failures_to_open.max(1),
            open_ms: policy.open_ms.max(1),
            max_open_ms: policy.max_open_ms.max(policy.open_ms.max(1)),
            probes: policy.probes.max(1),
            window: policy.window,
            min_calls: policy.min_calls.clamp(1, policy.window.max(1)),
            failure_rate_pct: policy.failure_rate_pct.clamp(1, 100),
        };
        Breaker {
            policy,
            state: BreakerState::Closed,
            failures: 0,
            open_until: 0,
            next_open_ms: policy.open_ms,
            probing: 0,
            recent: VecDeque::with_capacity(policy.window as usize),
            recent_failures: 0,
        }
    }

    /// The policy in force (as [`Breaker::new`] bounded it).
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// Probes admitted and not yet reported.
    pub fn probing(&self) -> u32 {
        self.probing
    }

    /// Gives back a probe whose outcome will never come (its call was abandoned), so the
    /// breaker does not wait for it forever.
    pub fn release_probe(&mut self) {
        self.probing = self.probing.saturating_sub(1);
    }

    /// The state as of `now` (an open breaker whose time has passed is half open).
    pub fn state(&self, now: i64) -> BreakerState {
        match self.state {
            BreakerState::Open if now >= self.open_until => BreakerState::HalfOpen,
            s => s,
        }
    }

    /// While open: when the next probe may go.
    pub fn open_until(&self) -> Option<i64> {
        (self.state == BreakerState::Open).then_some(self.open_until)
    }

    /// Asks to make a call at `now`. `true` admits it, and the caller must report its
    /// outcome with [`Breaker::record`].
    pub fn admit(&mut self, now: i64) -> bool {
        if self.state(now) == BreakerState::HalfOpen {
            if self.state == BreakerState::Open {
                self.state = BreakerState::HalfOpen;
                self.probing = 0;
            }
            if self.probing >= self.policy.probes {
                return false;
            }
            self.probing += 1;
            return true;
        }
        self.state == BreakerState::Closed
    }

    /// Reports the outcome of an admitted call at `now`.
    pub fn record(&mut self, ok: bool, now: i64) {
        match (self.state, ok) {
            (BreakerState::Closed, true) => {
                self.failures = 0;
                self.remember(false);
            }
            (BreakerState::Closed, false) => {
                self.failures = self.failures.saturating_add(1);
                self.remember(true);
                if self.failures >= self.policy.failures_to_open || self.rate_exceeded() {
                    self.open(now);
                }
            }
            (BreakerState::HalfOpen, true) => {
                self.state = BreakerState::Closed;
                self.failures = 0;
                self.probing = 0;
                self.next_open_ms = self.policy.open_ms;
            }
            (BreakerState::HalfOpen, false) => {
                self.probing = 0;
                self.open(now);
            }
            // A call admitted before the breaker opened: its outcome changes nothing.
            (BreakerState::Open, _) => {}
        }
        debug_assert!(self.state != BreakerState::Closed || self.failures < self.policy.failures_to_open);
        debug_assert!(self.recent.len() <= self.policy.window as usize);
        debug_assert_eq!(self.recent_failures as usize, self.recent.iter().filter(|f| **f).count());
    }

    /// Adds an outcome to the rate window, dropping the oldest beyond its size.
    fn remember(&mut self, failed: bool) {
        if self.policy.window == 0 {
            return;
        }
        if self.recent.len() >= self.policy.window as usize {
            if let Some(true) = self.recent.pop_front() {
                self.recent_failures -= 1;
            }
        }
        self.recent.push_back(failed);
        self.recent_failures += u32::from(failed);
    }

    /// Whether the window holds enough outcomes and too many of them failed.
    fn rate_exceeded(&self) -> bool {
        let calls = self.recent.len() as u64;
        self.policy.window > 0
            && calls >= u64::from(self.policy.min_calls)
            && u64::from(self.recent_failures) * 100 >= u64::from(self.policy.failure_rate_pct) * calls
    }

    fn open(&mut self, now: i64) {
        // The window describes the calls of one closed period; the next starts afresh.
        self.recent.clear();
        self.recent_failures = 0;
        self.state = BreakerState::Open;
        self.open_until = now.saturating_add(self.next_open_ms);
        self.next_open_ms = self.next_open_ms.saturating_mul(2).min(self.policy.max_open_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy { failures_to_open: 3, open_ms: 1_000, max_open_ms: 4_000, probes: 1, ..BreakerPolicy::default() }
    }

    #[test]
    fn a_failure_rate_over_the_window_opens_it_without_a_run_of_failures() {
        let rated = BreakerPolicy { window: 10, min_calls: 6, failure_rate_pct: 50, ..policy() };
        let mut b = Breaker::new(rated);
        // fail, ok, fail, ok, fail: 3 of 5 failed but fewer than min_calls seen.
        for ok in [false, true, false, true, false] {
            assert!(b.admit(0));
            b.record(ok, 0);
        }
        assert_eq!(b.state(0), BreakerState::Closed, "too few calls to judge a rate");
        assert!(b.admit(0));
        b.record(true, 0);
        assert_eq!(b.state(0), BreakerState::Closed, "3 of 6 is 50%, but the last call succeeded");
        assert!(b.admit(0));
        b.record(false, 0);
        assert_eq!(b.state(0), BreakerState::Open, "4 of 7 failed: over 50%");
        // A window of mostly successes never opens it on a rate.
        let mut b = Breaker::new(rated);
        for i in 0..100 {
            assert!(b.admit(0));
            b.record(i % 3 != 0, 0);
        }
        assert_eq!(b.state(0), BreakerState::Closed, "a third failing stays under 50%");
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut b = Breaker::new(policy());
        for _ in 0..10 {
            assert!(b.admit(0));
            b.record(false, 0);
            assert!(b.admit(0));
            b.record(true, 0);
        }
        assert_eq!(b.state(0), BreakerState::Closed);
        for _ in 0..3 {
            assert!(b.admit(0));
            b.record(false, 0);
        }
        assert_eq!(b.state(0), BreakerState::Open);
        assert!(!b.admit(999));
    }

    #[test]
    fn probes_one_at_a_time_and_backs_off() {
        let mut b = Breaker::new(policy());
        for _ in 0..3 {
            b.admit(0);
            b.record(false, 0);
        }
        assert_eq!(b.open_until(), Some(1_000));
        assert!(b.admit(1_000), "a probe once the open time passed");
        assert!(!b.admit(1_000), "only one probe at a time");
        b.record(false, 1_000);
        assert_eq!(b.open_until(), Some(3_000), "open time doubled");
        assert!(b.admit(3_000));
        b.record(false, 3_000);
        assert_eq!(b.open_until(), Some(7_000), "capped at max_open_ms");
        assert!(b.admit(7_000));
        b.record(true, 7_000);
        assert_eq!(b.state(7_000), BreakerState::Closed);
        for _ in 0..3 {
            b.admit(8_000);
            b.record(false, 8_000);
        }
        assert_eq!(b.open_until(), Some(9_000), "a success resets the open time");
    }

    proptest! {
        /// Whatever the outcomes, an open breaker admits nothing before its time, and a
        /// closed one admits everything.
        #[test]
        fn never_calls_while_open(
            steps in proptest::collection::vec((any::<bool>(), 0i64..3_000), 1..200),
            window in 0u32..20,
            rate in 1u32..=100,
        ) {
            let mut b = Breaker::new(BreakerPolicy { window, min_calls: window / 2, failure_rate_pct: rate, ..policy() });
            let mut now = 0i64;
            for (ok, dt) in steps {
                now += dt;
                let before = b.state(now);
                let admitted = b.admit(now);
                match before {
                    BreakerState::Open => prop_assert!(!admitted),
                    BreakerState::Closed => prop_assert!(admitted),
                    BreakerState::HalfOpen => {}
                }
                if admitted {
                    b.record(ok, now);
                }
                if let Some(until) = b.open_until() {
                    prop_assert!(until > now || b.state(now) == BreakerState::HalfOpen);
                    prop_assert!(until - now <= 4_000);
                }
            }
        }
    }
}
