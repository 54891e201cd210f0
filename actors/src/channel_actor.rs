//! One actor per configured channel, the single owner of its circuit breaker and its
//! live statistics (success rate and latency over the latest calls).
//!
//! Owning is not being asked on every call. The actor publishes what routing needs in
//! [`ChannelLive`] (atomics, read lock-free by every request); callers report each
//! call's outcome with `do_send` and never wait for it. Only the actor changes the
//! breaker: it opens it, moves it to half open when the open time has passed (granting
//! the probe permits that callers then take), and closes or reopens it on the probes'
//! outcomes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler, Message, SpawnHandle};

use crate::breaker::{Breaker, BreakerPolicy, BreakerState};
use crate::clock::{Clock, UnixMillis};

/// How many of the latest calls the published success rate and latencies describe.
pub const STATS_WINDOW: usize = 200;

/// How often the statistics are published (the breaker's state is published at once).
const STATS_EVERY: Duration = Duration::from_secs(1);

/// What routing reads of a channel, published by its actor.
#[derive(Debug)]
pub struct ChannelLive {
    breaker: AtomicU8,
    /// While half open: probe calls that may still start.
    probe_permits: AtomicU32,
    /// While open: when the actor will let probes through.
    open_until: AtomicI64,
    enabled: AtomicBool,
    /// Routing weight (the configured one until an operator changes it).
    weight: AtomicU32,
    /// Share of the window's calls that got an answer (yes or no), parts per million.
    success_ppm: AtomicU32,
    latency_p50_us: AtomicU64,
    latency_p95_us: AtomicU64,
    calls_in_window: AtomicU32,
}

impl Default for ChannelLive {
    fn default() -> Self {
        ChannelLive {
            breaker: AtomicU8::new(breaker_code(BreakerState::Closed)),
            probe_permits: AtomicU32::new(0),
            open_until: AtomicI64::new(0),
            enabled: AtomicBool::new(true),
            weight: AtomicU32::new(0),
            success_ppm: AtomicU32::new(1_000_000),
            latency_p50_us: AtomicU64::new(0),
            latency_p95_us: AtomicU64::new(0),
            calls_in_window: AtomicU32::new(0),
        }
    }
}

const fn breaker_code(state: BreakerState) -> u8 {
    match state {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    }
}

/// Whether a call may go to the channel now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed.
    Call,
    /// The breaker is half open and this call holds one of its probe permits: its
    /// outcome decides whether the breaker closes.
    Probe,
    /// The breaker is open, or half open with every probe already out.
    Refused,
}

impl ChannelLive {
    /// What a channel publishes before its actor has run: closed, `enabled` and
    /// `weight` as configured.
    pub fn new(enabled: bool, weight: u32) -> ChannelLive {
        let live = ChannelLive::default();
        live.enabled.store(enabled, Ordering::Relaxed);
        live.weight.store(weight, Ordering::Relaxed);
        live
    }

    /// The breaker's state as last published.
    pub fn breaker(&self) -> BreakerState {
        match self.breaker.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    /// Whether routing may consider the channel: enabled, and its breaker would admit a
    /// call (closed, or half open with a probe permit left).
    pub fn routable(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
            && match self.breaker() {
                BreakerState::Closed => true,
                BreakerState::HalfOpen => self.probe_permits.load(Ordering::Acquire) > 0,
                BreakerState::Open => false,
            }
    }

    /// Asks to call the channel now; a `Probe` takes one of the half-open permits.
    pub fn admit(&self) -> Admission {
        match self.breaker() {
            BreakerState::Closed => Admission::Call,
            BreakerState::Open => Admission::Refused,
            BreakerState::HalfOpen => {
                let took = self.probe_permits.fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
                if took.is_ok() {
                    Admission::Probe
                } else {
                    Admission::Refused
                }
            }
        }
    }

    /// Whether the channel is enabled (operators disable a channel to take it out of
    /// routing without removing it).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Routing weight in force.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Share of the latest calls that got an answer, 0 to 1 (1 before any call).
    pub fn success_rate(&self) -> f64 {
        f64::from(self.success_ppm.load(Ordering::Relaxed)) / 1_000_000.0
    }

    /// Median and 95th percentile latency of the latest calls, microseconds.
    pub fn latency_us(&self) -> (u64, u64) {
        (self.latency_p50_us.load(Ordering::Relaxed), self.latency_p95_us.load(Ordering::Relaxed))
    }

    /// How many calls the success rate and latencies describe.
    pub fn calls_in_window(&self) -> u32 {
        self.calls_in_window.load(Ordering::Relaxed)
    }

    /// While open: when probes will be let through.
    pub fn open_until(&self) -> Option<UnixMillis> {
        (self.breaker() == BreakerState::Open).then(|| self.open_until.load(Ordering::Relaxed))
    }
}

/// How a call to the channel went, as its breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The channel answered (a refusal is an answer: the channel works).
    Answered,
    /// Timeout, transport error, 5xx, a busy code: the channel is failing.
    Failed,
    /// The call was dropped before it finished; it says nothing about the channel.
    Abandoned,
}

/// One call's outcome, reported by its caller without waiting.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Reported {
    /// How it went.
    pub outcome: CallOutcome,
    /// How long it took, microseconds.
    pub latency_us: u64,
    /// Whether it was a half-open probe.
    pub probe: bool,
}

/// What an operator changes of a channel while the node runs (journaled as
/// [`crate::ports::Record::Channel`]); `None` leaves that part as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ChannelSetting {
    /// Enabled for routing, or not.
    pub enabled: Option<bool>,
    /// Routing weight.
    pub weight: Option<u32>,
}

impl ChannelSetting {
    /// `self` with what `later` sets on top.
    pub fn then(self, later: ChannelSetting) -> ChannelSetting {
        ChannelSetting { enabled: later.enabled.or(self.enabled), weight: later.weight.or(self.weight) }
    }
}

/// Applies an operator's setting (already journaled) to the channel.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Adjust(pub ChannelSetting);

/// The channel's actor.
pub struct ChannelActor {
    code: String,
    breaker: Breaker,
    /// The latest calls: answered or not, and latency in microseconds.
    recent: VecDeque<(bool, u64)>,
    live: Arc<ChannelLive>,
    clock: Arc<dyn Clock>,
    /// The timer that moves an open breaker to half open.
    wake: Option<SpawnHandle>,
}

impl ChannelActor {
    /// An actor for channel `code` publishing into `live`.
    pub fn new(code: String, policy: BreakerPolicy, live: Arc<ChannelLive>, clock: Arc<dyn Clock>) -> ChannelActor {
        ChannelActor {
            code,
            breaker: Breaker::new(policy),
            recent: VecDeque::with_capacity(STATS_WINDOW),
            live,
            clock,
            wake: None,
        }
    }

    /// Publishes the breaker as it stands and, while it is open, wakes when probes
    /// may go.
    fn publish_breaker(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        let before = self.live.breaker();
        match self.breaker.open_until() {
            Some(until) if now < until => {
                self.live.open_until.store(until, Ordering::Relaxed);
                self.live.probe_permits.store(0, Ordering::Release);
                self.live.breaker.store(breaker_code(BreakerState::Open), Ordering::Release);
                if let Some(wake) = self.wake.take() {
                    ctx.cancel_future(wake);
                }
                let after = Duration::from_millis(u64::try_from(until - now).unwrap_or(0));
                self.wake = Some(ctx.run_later(after, |act, ctx| {
                    act.wake = None;
                    act.publish_breaker(ctx);
                }));
            }
            _ => {
                // Open with its time passed, or half open: grant what probes it admits.
                let mut granted = 0;
                while self.breaker.state(now) == BreakerState::HalfOpen && self.breaker.admit(now) {
                    granted += 1;
                }
                let state = self.breaker.state(now);
                if state == BreakerState::HalfOpen {
                    self.live.probe_permits.fetch_add(granted, Ordering::AcqRel);
                } else {
                    self.live.probe_permits.store(0, Ordering::Release);
                }
                self.live.breaker.store(breaker_code(state), Ordering::Release);
            }
        }
        let after = self.live.breaker();
        if after != before {
            tracing::warn!(channel = %self.code, from = before.as_str(), to = after.as_str(), "circuit breaker");
            metrics::counter!("paygate_channel_breaker_transitions_total", "channel" => self.code.clone(), "to" => after.as_str())
                .increment(1);
        }
    }

    /// Publishes the success rate and latencies of the latest calls.
    fn publish_stats(&self) {
        let calls = self.recent.len();
        let answered = self.recent.iter().filter(|(ok, _)| *ok).count();
        let ppm = (answered * 1_000_000).checked_div(calls).unwrap_or(1_000_000);
        let mut latencies: Vec<u64> = self.recent.iter().map(|(_, us)| *us).collect();
        latencies.sort_unstable();
        let at = |q: usize| latencies.get((calls * q / 100).min(calls.saturating_sub(1))).copied().unwrap_or(0);
        let (p50, p95) = (at(50), at(95));
        self.live.success_ppm.store(u32::try_from(ppm).unwrap_or(1_000_000), Ordering::Relaxed);
        self.live.latency_p50_us.store(p50, Ordering::Relaxed);
        self.live.latency_p95_us.store(p95, Ordering::Relaxed);
        self.live.calls_in_window.store(u32::try_from(calls).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
}

impl Actor for ChannelActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.publish_breaker(ctx);
        self.publish_stats();
        ctx.run_interval(STATS_EVERY, |act, _| act.publish_stats());
    }
}

impl Handler<Reported> for ChannelActor {
    type Result = ();

    fn handle(&mut self, r: Reported, ctx: &mut Self::Context) {
        let now = self.clock.now_ms();
        if r.outcome == CallOutcome::Abandoned {
            if r.probe {
                self.breaker.release_probe();
                self.publish_breaker(ctx);
            }
            return;
        }
        let answered = r.outcome == CallOutcome::Answered;
        if self.recent.len() >= STATS_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((answered, r.latency_us));
        // While half open only the probes decide; calls let through before the breaker
        // opened say nothing about the channel now.
        let counts = match self.breaker.state(now) {
            BreakerState::Closed => !r.probe,
            BreakerState::HalfOpen => r.probe,
            BreakerState::Open => false,
        };
        if counts {
            self.breaker.record(answered, now);
            self.publish_breaker(ctx);
        }
    }
}

impl Handler<Adjust> for ChannelActor {
    type Result = ();

    fn handle(&mut self, Adjust(setting): Adjust, _: &mut Self::Context) {
        if let Some(on) = setting.enabled {
            self.live.enabled.store(on, Ordering::Relaxed);
        }
        if let Some(weight) = setting.weight {
            self.live.weight.store(weight, Ordering::Relaxed);
        }
    }
}
