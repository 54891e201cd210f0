//! A circuit breaker on one remote endpoint: after repeated failures it stops calling
//! and lets a probe through now and then, so a dead endpoint is not hammered and the
//! work queued for it is not spent on calls that cannot succeed.
//!
//! ```text
//! CLOSED ──(failures_to_open in a row)──► OPEN ──(open time passed)──► HALF_OPEN
//!    ▲                                      ▲                              │
//!    └──────────(probe succeeds)────────────┼──────────────────────────────┤
//!                                           └──────(probe fails)───────────┘
//! ```
//! Each reopening doubles the open time up to a cap. Pure: time is passed in.

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
}

impl Default for BreakerPolicy {
    /// 5 failures in a row; open 30 s, doubling up to 10 min; one probe.
    fn default() -> Self {
        BreakerPolicy { failures_to_open: 5, open_ms: 30_000, max_open_ms: 600_000, probes: 1 }
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
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Breaker {
        let policy = BreakerPolicy {
            failures_to_open: policy.failures_to_open.max(1),
            open_ms: policy.open_ms.max(1),
            max_open_ms: policy.max_open_ms.max(policy.open_ms.max(1)),
            probes: policy.probes.max(1),
        };
        Breaker {
            policy,
            state: BreakerState::Closed,
            failures: 0,
            open_until: 0,
            next_open_ms: policy.open_ms,
            probing: 0,
        }
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
            (BreakerState::Closed, true) => self.failures = 0,
            (BreakerState::Closed, false) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.policy.failures_to_open {
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
    }

    fn open(&mut self, now: i64) {
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
        BreakerPolicy { failures_to_open: 3, open_ms: 1_000, max_open_ms: 4_000, probes: 1 }
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
        fn never_calls_while_open(steps in proptest::collection::vec((any::<bool>(), 0i64..3_000), 1..200)) {
            let mut b = Breaker::new(policy());
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
